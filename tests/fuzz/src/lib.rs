//! What the fuzz targets share.

use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// One current-thread runtime per fuzzing process, for targets that drive
/// async code. Every input ends with an end of stream, so no read waits for
/// a timer: an input that stalls a reader would hang here, and libFuzzer's
/// `-timeout` reports it.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}
