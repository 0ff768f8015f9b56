//! Logging for both binaries: human-readable by default, JSON on request,
//! filtered by `RUST_LOG` (default `info`). Logs go to stderr so that
//! command output on stdout stays clean for scripts.

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
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
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
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
    fn report_skips_repeated_causes() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(report(&e), "outer: disk on fire");
    }
}
