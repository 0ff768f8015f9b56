//! What both binaries do around their command: logging (human-readable by
//! default, JSON on request, filtered by `RUST_LOG`, default `info`; on
//! stderr so that command output on stdout stays clean for scripts), the
//! runtime, the allocator and open-file limits, signals, and the one-line
//! report of a failed command.

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let colour = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Colour codes only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (no-color.org): a log written to a file, a
/// pipe, systemd's journal or Docker's log gets plain text.
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The body of both binaries' `main`: logging, a runtime, the command,
/// and a one-line error report on failure.
pub fn main<F>(format: LogFormat, command: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<std::process::ExitCode>>,
{
    init(format);
    tune_allocator();
    raise_fd_limit();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(command));
    result.unwrap_or_else(|e| {
        eprintln!("error: {}", report(e.as_ref()));
        std::process::ExitCode::FAILURE
    })
}

/// Every tunnel is a socket: the usual soft limit of 1,024 open files
/// would cap a gateway near 1,000 tunnels (measured). Raise it to the hard
/// limit the administrator allows.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = lim.rlim_max;
            lim.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!(
                    limit = wanted,
                    "could not raise the open-file limit; connections may be refused early"
                );
            }
        }
    }
}

/// Keeps glibc from returning tunnel buffers to the kernel after every
/// use. HTTP/2 frames are read into fresh buffers of up to a MiB; with
/// glibc's adaptive thresholds each one could be an mmap, page faults and a
/// munmap. Fixed thresholds keep them on the heap (measured: about +15%
/// bulk throughput, docs/BENCHMARKS.md).
///
/// The price was resident memory that only grew (docs/RELIABILITY.md,
/// "Soak"): with a 64 MiB trim threshold each thread's arena kept the pages
/// of its busiest moment, and `malloc_trim` cannot release the top of a
/// thread's arena. So one arena for all threads (the main one, which
/// `malloc_trim` releases fully), and a thread that returns its free pages
/// every 10 s: a few page faults per interval, not per buffer. One arena
/// means one lock for every thread's large allocations; the data plane's are
/// 16–256 KiB buffers, a few thousand per GB moved, and the small ones come
/// from glibc's per-thread cache without the lock (bulk throughput measured
/// unchanged on 2 cores; not measured on many).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
        let trim = || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(10));
                // SAFETY: malloc_trim takes the arena's lock; it may be
                // called from any thread at any time.
                unsafe { libc::malloc_trim(0) };
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(trim)
        {
            tracing::debug!(error = %e, "no malloc-trim thread; free heap pages stay resident");
        }
    }
}

/// Cancels `stop` on SIGINT or SIGTERM, and returns then.
pub async fn stop_on_signal(stop: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    stop.cancel();
}

/// An error and its causes on one line, for the binaries' last word.
/// Causes whose text the message already contains are skipped: many error
/// types print their source in their own message.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn report_skips_repeated_causes() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(report(&e), "outer: disk on fire");
    }
}
