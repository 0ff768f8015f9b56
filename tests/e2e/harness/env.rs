//! Where the binaries are, free ports, unique names, root checks.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub const GATEWAY_BIN: &str = "shimgate-gateway";
pub const DEVICE_BIN: &str = "shimgate";

/// The directory holding the shimgate binaries: `$SHIMGATE_BIN_DIR`, else
/// the target directory this test binary was built into, else
/// `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHIMGATE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/debug/deps/e2e-HASH -> target/debug
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent().and_then(Path::parent)
        && dir.join(GATEWAY_BIN).is_file()
    {
        return dir.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{name} not found at {}: run `cargo build --workspace` first \
             (or point SHIMGATE_BIN_DIR at the directory holding {GATEWAY_BIN} and {DEVICE_BIN})",
            path.display()
        );
    }
    path
}

/// A TCP port that was free a moment ago on 127.0.0.1, picked below the
/// kernel's ephemeral range (32768+), so that no outgoing connection can
/// take it between now and the moment a child binds it (or re-binds it
/// after a restart).
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ ((std::process::id() as u64) << 7);
    for _ in 0..2000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + (seed.wrapping_add(n.wrapping_mul(7919)) % 12000) as u16;
        let v4 = TcpListener::bind(("127.0.0.1", port)).is_ok();
        // origins and curl may use ::1 too
        let v6 = match TcpListener::bind(("::1", port)) {
            Ok(_) => true,
            // no IPv6 on this machine: only IPv4 matters
            Err(e) => e.kind() == std::io::ErrorKind::AddrNotAvailable,
        };
        if v4 && v6 {
            return port;
        }
    }
    panic!("no free TCP port in 20000..32000 on 127.0.0.1");
}

/// A port on 127.0.0.1 on which nothing listens (for "connection refused").
pub fn closed_port() -> u16 {
    free_port()
}

/// A name unique to this process and call, usable in database, namespace
/// and interface names (lowercase alphanumerics).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{:x}{:x}{n}",
        std::process::id() & 0xffff,
        nanos & 0xfff
    )
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn curl() -> PathBuf {
    which("curl").unwrap_or_else(|| {
        panic!("curl is not installed: `apt-get install curl` (tests/run.sh installs it)")
    })
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
