//! Real servers for real clients: a private sshd and a dumb-HTTP git server,
//! on loopback or inside a namespace, plus what running clients against them
//! takes (a marked process tree nothing of which outlives the test).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::env::{unique, which};
use super::netns::can_connect;
use super::proc::{Out, Proc, clean_env, poll, run_input};
use super::unique_body;

const CLIENT_LIMIT: Duration = Duration::from_secs(60);
const READY_LIMIT: Duration = Duration::from_secs(20);

/// A program from `PATH` or `/usr/sbin`, or a panic naming the package to
/// install.
pub fn tool(name: &str, package: &str) -> PathBuf {
    which(name)
        .or_else(|| {
            let sbin = Path::new("/usr/sbin").join(name);
            sbin.is_file().then_some(sbin)
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: `apt-get install {package}` (tests/run.sh installs it)"
            )
        })
}

pub fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

/// A client command with no proxy variables and `HOME` in a temp dir.
pub fn client(program: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    clean_env(&mut cmd, home);
    cmd
}

/// `program`, or `ip netns exec NS program` to run it inside `ns`.
fn command_in(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Marks a command with a unique environment variable, which what it starts
/// inherits (ssh's ProxyCommand, git's remote helper): dropping the mark,
/// panic or not, SIGKILLs every process that still carries it, and their
/// descendants (sshd's per-connection processes leave its process group and
/// overwrite their environment with their title, as the listener does: a
/// server's own pid is given as a root).
pub struct Tagged {
    tag: String,
    /// An unreaped child of ours whose descendants are killed too.
    root: Option<libc::pid_t>,
}

const TAG_VAR: &str = "SHIMGATE_E2E_TAG";

impl Tagged {
    pub fn new(cmd: &mut Command) -> Tagged {
        let tag = unique("client");
        cmd.env(TAG_VAR, &tag);
        Tagged { tag, root: None }
    }

    /// The processes carrying the mark, and all their descendants.
    fn pids(&self) -> Vec<libc::pid_t> {
        let wanted = format!("{TAG_VAR}={}", self.tag);
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        let all: Vec<libc::pid_t> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        let mut found: Vec<libc::pid_t> = all
            .iter()
            .copied()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == wanted.as_bytes()))
            })
            .collect();
        found.extend(self.root.filter(|pid| all.contains(pid)));
        // (pid, ppid, zombie?) from /proc/PID/stat: "pid (comm) state ppid ..."
        let procs: Vec<(libc::pid_t, libc::pid_t, bool)> = all
            .iter()
            .filter_map(|&pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
                let zombie = rest.next()? == "Z";
                let ppid = rest.next()?.parse().ok()?;
                Some((pid, ppid, zombie))
            })
            .collect();
        let mut i = 0;
        while i < found.len() {
            let parent = found[i];
            for &(pid, ppid, _) in &procs {
                if ppid == parent && !found.contains(&pid) {
                    found.push(pid);
                }
            }
            i += 1;
        }
        // the dead, waiting to be reaped, need no killing
        found.retain(|pid| !procs.iter().any(|&(p, _, zombie)| p == *pid && zombie));
        found
    }
}

impl Drop for Tagged {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            // stopped processes cannot fork: look again, then kill them all
            for &pid in &pids {
                // SAFETY: kill(2) on a process that carries this test's mark
                // or descends from one.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
            }
            let mut pids2 = self.pids();
            pids2.extend(pids);
            for pid in pids2 {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("[e2e] processes marked {} still alive", self.tag);
    }
}

/// `run_input` for a client, marked: nothing it started outlives the call.
pub fn run_client(cmd: &mut Command, input: Option<&[u8]>) -> Out {
    let _mark = Tagged::new(cmd);
    run_input(cmd, input, CLIENT_LIMIT)
}

/// A server program, ready once `addr` accepts TCP connections (inside
/// `ns`, if given). It and everything it started are killed on drop, panic
/// or not; its logs are printed on panic.
pub struct Server {
    // dropped first: kills the server's descendants while it is still their parent
    _mark: Tagged,
    proc: Proc,
}

impl Server {
    pub fn start(
        name: &str,
        cmd: &mut Command,
        log_dir: &Path,
        ns: Option<&str>,
        addr: SocketAddr,
    ) -> Server {
        let mut mark = Tagged::new(cmd);
        let proc = Proc::spawn(name, cmd, log_dir);
        mark.root = Some(proc.pid() as libc::pid_t);
        let mut server = Server { _mark: mark, proc };
        poll(
            &format!("{name} to accept TCP connections on {addr} (namespace {ns:?})"),
            READY_LIMIT,
            Duration::from_millis(25),
            || {
                if let Some(status) = server.proc.exited() {
                    panic!("{name} exited ({status}) while starting");
                }
                can_connect(ns, addr).then_some(())
            },
        );
        server
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.proc.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.proc.logs());
        }
        // then `_mark` kills everything, and dropping `proc` reaps the leader
    }
}

/// A private sshd (needs root: it logs clients in as root) with its own
/// host key, and one client key it authorizes; nothing of the system's
/// configuration is read.
pub struct Sshd {
    /// Where sshd listens (inside its namespace, if it has one).
    pub addr: SocketAddr,
    // dropped before `tmp`, whose files it logs on panic
    server: Server,
    tmp: TempDir,
}

impl Sshd {
    /// What [`Sshd::ssh_args`] has the server print.
    pub const MARKER: &str = "hello-through-shimgate";

    /// Starts sshd on `addr`, inside namespace `ns` if given, and waits until
    /// it accepts connections there.
    pub fn start(ns: Option<&str>, addr: SocketAddr) -> Sshd {
        let sshd = tool("sshd", "openssh-server");
        let keygen = tool("ssh-keygen", "openssh-client");
        let tmp = tempdir("sg-e2e-ssh-");
        let d = tmp.path();
        for key in ["host_key", "client_key"] {
            let mut cmd = Command::new(&keygen);
            cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "shimgate-e2e", "-f"])
                .arg(d.join(key));
            run_input(&mut cmd, None, CLIENT_LIMIT).expect_ok();
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let mut config = format!(
            "Port {port}\n\
             ListenAddress {ip}\n\
             HostKey {dir}/host_key\n\
             PidFile none\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             LogLevel VERBOSE\n",
            port = addr.port(),
            ip = addr.ip(),
            dir = d.display()
        );
        std::fs::write(d.join("sshd_config"), &config).unwrap();
        // OpenSSH >= 9.8 would lock the prober's address out for a while
        // after the readiness probes that close before authenticating; older
        // ones lack the option.
        let mut check = Command::new(&sshd);
        check
            .args(["-t", "-o", "PerSourcePenalties=no", "-f"])
            .arg(d.join("sshd_config"));
        if run_input(&mut check, None, CLIENT_LIMIT).ok() {
            config.push_str("PerSourcePenalties no\n");
            std::fs::write(d.join("sshd_config"), &config).unwrap();
        }
        // sshd insists on its privilege separation directory
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut cmd = command_in(ns, &sshd);
        cmd.args(["-D", "-e", "-o", "UsePAM=no", "-o", "StrictModes=no", "-f"])
            .arg(d.join("sshd_config"));
        let server = Server::start("sshd", &mut cmd, d, ns, addr);
        Sshd { addr, server, tmp }
    }

    /// The server's temp dir, fit to be a client's `HOME`.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// ssh's arguments to log in as root and run `echo MARKER`, with no
    /// user or system configuration, no host key check, and the authorized
    /// key. `options` come first, so they win over these (ssh keeps the
    /// first value of an option): `["-o", "ProxyCommand=..."]`, say.
    pub fn ssh_args(&self, options: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec!["-F".into(), "/dev/null".into()];
        args.extend(options.iter().map(|o| o.to_string()));
        for o in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
        ] {
            args.extend(["-o".into(), o.into()]);
        }
        args.extend([
            "-i".into(),
            self.dir()
                .join("client_key")
                .to_str()
                .expect("UTF-8 temp path")
                .to_owned(),
            "-p".into(),
            self.addr.port().to_string(),
            format!("root@{}", self.addr.ip()),
            "echo".into(),
            Self::MARKER.into(),
        ]);
        args
    }

    /// `program` (ssh) with [`Sshd::ssh_args`], as a client with `HOME` at
    /// `home`.
    pub fn ssh_command(&self, program: &Path, home: &Path, options: &[&str]) -> Command {
        let mut cmd = client(program, home);
        cmd.args(self.ssh_args(options));
        cmd
    }

    /// sshd's stderr: "Accepted publickey for root from ADDR" once a login
    /// went through.
    pub fn log(&self) -> String {
        self.server.stderr()
    }
}

/// A bare repository with one commit, served over dumb HTTP (static files,
/// `python3 -m http.server`) at [`GitServer::PATH`]: a git client's smart
/// and dumb protocol probes are plain GETs, which the log shows.
pub struct GitServer {
    /// Where the HTTP server listens (inside its namespace, if it has one).
    pub addr: SocketAddr,
    git: PathBuf,
    content: String,
    // dropped before `tmp`, whose files it logs on panic
    server: Server,
    tmp: TempDir,
}

impl GitServer {
    /// The repository's path in URLs.
    pub const PATH: &str = "/repo.git";
    /// The one commit's subject.
    pub const SUBJECT: &str = "one commit";

    /// Makes the repository and serves it on `addr`, inside namespace `ns`
    /// if given, once it accepts connections there.
    pub fn start(ns: Option<&str>, addr: SocketAddr) -> GitServer {
        let git = tool("git", "git");
        let python = tool("python3", "python3");
        let tmp = tempdir("sg-e2e-git-");
        let d = tmp.path();
        let served = d.join("served");
        std::fs::create_dir_all(d.join("home")).unwrap();
        std::fs::create_dir_all(&served).unwrap();
        let path = |p: &Path| p.to_str().expect("UTF-8 temp path").to_owned();
        let git_run = |args: &[&str]| {
            let mut cmd = git_command(&git, d, args);
            run_client(&mut cmd, None)
        };

        // a bare repository with one commit, prepared for dumb HTTP
        let work = d.join("work");
        let content = unique_body("git");
        git_run(&["init", "-q", &path(&work)]).expect_ok();
        std::fs::write(work.join("README"), &content).unwrap();
        git_run(&["-C", &path(&work), "add", "README"]).expect_ok();
        git_run(&["-C", &path(&work), "commit", "-q", "-m", Self::SUBJECT]).expect_ok();
        let bare = served.join(Self::PATH.trim_start_matches('/'));
        git_run(&["clone", "-q", "--bare", &path(&work), &path(&bare)]).expect_ok();
        git_run(&["-C", &path(&bare), "update-server-info"]).expect_ok();

        let mut cmd = command_in(ns, &python);
        cmd.args(["-u", "-m", "http.server", "--bind"])
            .arg(addr.ip().to_string())
            .arg("--directory")
            .arg(&served)
            .arg(addr.port().to_string());
        let server = Server::start("http.server", &mut cmd, d, ns, addr);
        GitServer {
            addr,
            git,
            content,
            server,
            tmp,
        }
    }

    /// `http://HOST:PORT/repo.git` (`host` bracketed if an IPv6 address).
    pub fn url(&self, host: &str) -> String {
        format!("http://{host}:{}{}", self.addr.port(), Self::PATH)
    }

    /// The committed README's content.
    pub fn content(&self) -> &str {
        &self.content
    }

    /// A temp dir for clones, deleted with the server.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// `git ARGS` as a client: `HOME` in the temp dir, no system config, no
    /// prompts, and an identity to commit with.
    pub fn git_command(&self, args: &[&str]) -> Command {
        git_command(&self.git, self.dir(), args)
    }

    /// Runs [`GitServer::git_command`] to completion, marked.
    pub fn git(&self, args: &[&str]) -> Out {
        run_client(&mut self.git_command(args), None)
    }

    /// The HTTP server's request log.
    pub fn log(&self) -> String {
        self.server.stderr()
    }
}

fn git_command(git: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = client(git, &dir.join("home"));
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args([
            "-c",
            "user.name=shimgate e2e",
            "-c",
            "user.email=e2e@shimgate.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgSign=false",
        ])
        .args(args);
    cmd
}
