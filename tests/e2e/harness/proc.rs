//! Child processes: long-running ones (`Proc`, killed on drop) and one-shot
//! CLI invocations (`run`, bounded by a deadline).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Removes the variables that would make a child pick up state that is not
/// the test's own (the gateway reads `DATABASE_URL` by default!).
pub fn clean_env<'a>(cmd: &'a mut Command, home: &Path) -> &'a mut Command {
    for var in ["DATABASE_URL", "SHIMGATE_GATEWAY_DIR", "SHIMGATE_HOME"] {
        cmd.env_remove(var);
    }
    without_proxy_vars(cmd);
    cmd.env("HOME", home).env("RUST_BACKTRACE", "1")
}

/// Removes the proxy variables curl, git and friends would obey, so a test
/// uses exactly the proxy it names.
pub fn without_proxy_vars(cmd: &mut Command) -> &mut Command {
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A long-running child whose stdout/stderr go to files. Killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

static SPAWNS: AtomicUsize = AtomicUsize::new(0);

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let n = SPAWNS.fetch_add(1, Ordering::Relaxed);
        let stdout = log_dir.join(format!("{name}.{n}.stdout"));
        let stderr = log_dir.join(format!("{name}.{n}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout log"))
            .stderr(File::create(&stderr).expect("create stderr log"));
        eprintln!("[e2e] spawn {name}: {}", show(cmd));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name} ({}): {e}", show(cmd)));
        Proc {
            name: name.to_owned(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("try_wait")
    }

    /// Panics with the logs if the process has exited.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited ({status}) while {what}\n{}",
                self.name,
                self.logs()
            );
        }
    }

    /// SIGTERM, then wait up to `grace`, then SIGKILL. Returns the exit
    /// status and whether it exited within the grace period.
    pub fn terminate(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        let Some(child) = self.child.as_mut() else {
            return (None, true);
        };
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (Some(status), true);
        }
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return (Some(status), true);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        (child.wait().ok(), false)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn logs(&self) -> String {
        format!(
            "----- {} stdout ({}) -----\n{}\n----- {} stderr ({}) -----\n{}\n----- end of {} -----",
            self.name,
            self.stdout.display(),
            tail(&self.stdout, 150),
            self.name,
            self.stderr.display(),
            tail(&self.stderr, 300),
            self.name
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid of our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("<unreadable: {e}>"));
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("... ({skip} earlier lines)\n"));
    }
    out.push_str(&all[skip..].join("\n"));
    out
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains([' ', '"', '\'']) {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// The result of a one-shot command.
#[derive(Debug)]
pub struct Out {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    pub fn ok(&self) -> bool {
        self.status.success()
    }
    /// Panics with everything if the command failed.
    pub fn expect_ok(self) -> Out {
        assert!(self.ok(), "command failed: {self}");
        self
    }
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` -> {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a command to completion; panics if it takes longer than `limit`
/// (after killing it), so a hanging CLI never hangs the suite.
pub fn run(cmd: &mut Command, limit: Duration) -> Out {
    run_input(cmd, None, limit)
}

/// [`run`], with `input` written to the command's standard input (then
/// closed) from another thread; `None`: standard input is `/dev/null`.
pub fn run_input(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Out {
    let cmdline = show(cmd);
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{cmdline}`: {e}"));
    if let (Some(input), Some(mut si)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // a child that exits without reading everything gets EPIPE: ignored
        thread::spawn(move || {
            let _ = si.write_all(&input);
        });
    }
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ro = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&ro.join().unwrap()).into_owned();
            let stderr = String::from_utf8_lossy(&re.join().unwrap()).into_owned();
            panic!(
                "`{cmdline}` did not finish within {limit:?} (killed)\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let out = Out {
        cmdline,
        status,
        stdout: String::from_utf8_lossy(&ro.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&re.join().unwrap()).into_owned(),
    };
    eprintln!(
        "[e2e] $ {} -> {}{}{}",
        out.cmdline,
        out.status,
        indent("stdout", &out.stdout),
        indent("stderr", &out.stderr)
    );
    out
}

fn indent(label: &str, text: &str) -> String {
    let text = text.trim_end();
    if text.is_empty() {
        return String::new();
    }
    let mut s = format!("\n    [{label}]");
    for line in text.lines().take(60) {
        s.push_str("\n    ");
        s.push_str(line);
    }
    s
}

/// Polls `f` every `every` until it returns `Some`, or panics with `what`
/// after `limit`.
pub fn poll<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        thread::sleep(every);
    }
}

/// What a fixture (gateway, device) does when it is dropped: show its logs if
/// the test is failing, stop its process, and keep its temp dir when
/// `SHIMGATE_KEEP_TMP` is set.
/// `logs` is `Some` only while panicking (reading them costs file I/O).
pub fn wind_down(
    what: &str,
    logs: Option<String>,
    proc: Option<Proc>,
    tmp: &mut tempfile::TempDir,
) {
    if let Some(logs) = logs {
        eprintln!("[e2e] {what} logs:\n{logs}");
    }
    if let Some(mut p) = proc {
        p.terminate(Duration::from_secs(3));
    }
    if std::env::var_os("SHIMGATE_KEEP_TMP").is_some()
        && let Ok(fresh) = tempfile::TempDir::new()
    {
        let path = std::mem::replace(tmp, fresh).keep();
        eprintln!("[e2e] keeping {}", path.display());
    }
}
