//! The gateway fixture: a temp data dir, `init`, `serve`, admin commands.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::db::{Backend, Database};
use super::env::{GATEWAY_BIN, bin, free_port};
use super::netns;
use super::proc::{Out, Proc, clean_env, poll, run, wind_down};

pub const CLI_LIMIT: Duration = Duration::from_secs(60);
const READY_LIMIT: Duration = Duration::from_secs(30);

/// How to `init` and `serve` a gateway.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    /// Run `serve` inside this network namespace.
    pub netns: Option<String>,
    pub listen: SocketAddr,
    pub names: Vec<String>,
    pub ips: Vec<String>,
    pub public_addr: Option<String>,
    pub aliases: Vec<String>,
    /// `init --vpn-range` (the default range when absent).
    pub vpn_range: Option<String>,
}

impl GatewaySpec {
    /// `init --name localhost --ip 127.0.0.1 --listen 127.0.0.1:<free port>`.
    pub fn localhost() -> GatewaySpec {
        GatewaySpec {
            netns: None,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()),
            names: vec!["localhost".into()],
            ips: vec!["127.0.0.1".into()],
            public_addr: None,
            aliases: vec![],
            vpn_range: None,
        }
    }

    pub fn vpn_range(mut self, range: impl Into<String>) -> Self {
        self.vpn_range = Some(range.into());
        self
    }

    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.aliases.push(alias.into());
        self
    }
}

pub struct Gateway {
    proc: Option<Proc>,
    pub spec: GatewaySpec,
    pub db: Database,
    pub data_dir: PathBuf,
    home: PathBuf,
    old_logs: Vec<String>,
    tmp: TempDir,
}

impl Gateway {
    /// `init` (and `migrate`) a gateway on 127.0.0.1 with the given backend; not yet serving.
    pub fn init(backend: Backend) -> Gateway {
        Gateway::init_spec(backend, GatewaySpec::localhost())
    }

    pub fn init_spec(backend: Backend, spec: GatewaySpec) -> Gateway {
        Gateway::init_on(Database::create(backend), spec)
    }

    /// `init` (and `migrate`) a gateway whose registry is `db`.
    pub fn init_on(db: Database, spec: GatewaySpec) -> Gateway {
        let tmp = tempfile::Builder::new()
            .prefix("sg-e2e-gw-")
            .tempdir()
            .expect("tempdir");
        let data_dir = tmp.path().join("data");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let gw = Gateway {
            proc: None,
            spec,
            db,
            data_dir,
            home,
            old_logs: vec![],
            tmp,
        };
        let mut args: Vec<String> = vec!["init".into()];
        for n in &gw.spec.names {
            args.extend(["--name".into(), n.clone()]);
        }
        for ip in &gw.spec.ips {
            args.extend(["--ip".into(), ip.clone()]);
        }
        args.extend(["--listen".into(), gw.spec.listen.to_string()]);
        if let Some(p) = &gw.spec.public_addr {
            args.extend(["--public-addr".into(), p.clone()]);
        }
        if let Some(r) = &gw.spec.vpn_range {
            args.extend(["--vpn-range".into(), r.clone()]);
        }
        gw.ok(&args);
        gw.ok(&["migrate"]);
        gw
    }

    /// `init` + `serve`, ready.
    pub fn start(backend: Backend) -> Gateway {
        let mut gw = Gateway::init(backend);
        gw.serve();
        gw
    }

    pub fn port(&self) -> u16 {
        self.spec.listen.port()
    }

    /// The gateway binary with the global flags that select this gateway.
    fn command(&self, in_netns: bool) -> Command {
        let mut cmd = match (&self.spec.netns, in_netns) {
            (Some(ns), true) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin(GATEWAY_BIN));
                c
            }
            _ => Command::new(bin(GATEWAY_BIN)),
        };
        clean_env(&mut cmd, &self.home);
        cmd.arg("--data-dir").arg(&self.data_dir);
        if let Some(url) = &self.db.url {
            cmd.arg("--database-url").arg(url);
        }
        cmd
    }

    /// Runs an admin command (outside any namespace: it only needs the
    /// data dir and the registry).
    pub fn cli<S: AsRef<str>>(&self, args: &[S]) -> Out {
        let mut cmd = self.command(false);
        cmd.args(args.iter().map(|a| a.as_ref()));
        run(&mut cmd, CLI_LIMIT)
    }

    /// Runs an admin command and panics unless it succeeds; returns stdout.
    pub fn ok<S: AsRef<str>>(&self, args: &[S]) -> String {
        self.cli(args).expect_ok().stdout
    }

    /// `token create --user USER --quiet`: one enrollment code.
    pub fn token(&self, user: &str) -> String {
        self.token_with(user, &[])
    }

    pub fn token_with(&self, user: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--user", user, "--quiet"];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        let code = out.trim();
        assert!(
            code.starts_with("sg1-") && !code.contains(char::is_whitespace),
            "`token create --quiet` should print only the code (sg1-...) on one line, got {out:?}"
        );
        code.to_owned()
    }

    /// `policy add allow --to DEST` (+ extra flags).
    pub fn allow(&self, dest: &str, extra: &[&str]) {
        let mut args = vec!["policy", "add", "allow", "--to", dest];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    pub fn deny(&self, dest: &str, extra: &[&str]) {
        let mut args = vec!["policy", "add", "deny", "--to", dest];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    pub fn device_list(&self) -> String {
        self.ok(&["device", "list"])
    }

    /// Starts `serve` (without the web console, whose default port many
    /// gateways can't share) and waits until its port accepts TCP connections.
    pub fn serve(&mut self) {
        self.serve_args(&["--console", "off"]);
    }

    /// Starts `serve` with extra arguments and waits until its port accepts
    /// TCP connections.
    pub fn serve_args(&mut self, extra: &[&str]) {
        assert!(self.proc.is_none(), "gateway already serving");
        let mut cmd = self.command(true);
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.spec.listen.to_string())
            .args(extra);
        for a in &self.spec.aliases {
            cmd.arg("--alias").arg(a);
        }
        let mut proc = Proc::spawn("gateway", &mut cmd, self.tmp.path());
        let addr = self.spec.listen;
        let ns = self.spec.netns.clone();
        let start = Instant::now();
        poll(
            &format!("the gateway to accept TCP connections on {addr}"),
            READY_LIMIT,
            Duration::from_millis(25),
            || {
                proc.assert_running("starting");
                netns::can_connect(ns.as_deref(), addr).then_some(())
            },
        );
        eprintln!(
            "[e2e] gateway ready on {addr} after {:?} (pid {})",
            start.elapsed(),
            proc.pid()
        );
        self.proc = Some(proc);
    }

    /// SIGTERM and wait (the contract: SIGINT/SIGTERM stop it). Panics if it
    /// does not exit within 10 s.
    pub fn stop(&mut self) {
        let mut proc = self.proc.take().expect("gateway not serving");
        let t = Instant::now();
        let (status, graceful) = proc.terminate(Duration::from_secs(10));
        eprintln!("[e2e] gateway stopped in {:?}: {status:?}", t.elapsed());
        assert!(
            graceful,
            "gateway did not exit within 10 s of SIGTERM\n{}",
            proc.logs()
        );
        // keep its logs around for a later dump
        self.old_logs.push(proc.logs());
    }

    /// SIGKILL and wait: a crash, or a power cut of the process.
    pub fn kill(&mut self) {
        let mut proc = self.proc.take().expect("gateway not serving");
        proc.kill();
        eprintln!("[e2e] gateway killed (SIGKILL)");
        self.old_logs.push(proc.logs());
    }

    pub fn logs(&self) -> String {
        let mut s = self.old_logs.join("\n");
        if let Some(p) = &self.proc {
            s.push('\n');
            s.push_str(&p.logs());
        }
        s
    }

    /// The serving process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.data_dir.join("ca.crt")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let what = format!("gateway (data dir {})", self.data_dir.display());
        let logs = std::thread::panicking().then(|| self.logs());
        wind_down(&what, logs, self.proc.take(), &mut self.tmp);
    }
}
