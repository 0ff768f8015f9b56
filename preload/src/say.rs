//! Telling the person at the terminal why a connection was refused: on the
//! program's stderr only when that is a terminal (a daemon's fd 2 may be a
//! file or socket it reuses), and once per destination. `up` logs every
//! refusal either way.

use std::collections::BTreeSet;
use std::sync::Mutex;

static TOLD: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Why, when `up` did not answer the shim socket.
pub const NOT_RUNNING: &str = "shimgate up is not running (start it with `shimgate up`)";

/// [`TOLD`]'s lock, held across a fork ([`crate::fork`]).
pub fn hold() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    TOLD.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn refused(what: &str, why: &str) {
    // SAFETY: isatty on a descriptor number.
    if unsafe { libc::isatty(2) } != 1 {
        return;
    }
    let first = TOLD
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(what.to_owned());
    if first {
        let line = format!("shimgate: {what}: {why}\n");
        // SAFETY: writing a live buffer to fd 2; a short write is dropped.
        unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    }
}
