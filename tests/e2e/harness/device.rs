//! The device fixture: a temp config dir, `enroll`, `up`, `status`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::env::{DEVICE_BIN, bin, free_port};
use super::gateway::{CLI_LIMIT, Gateway};
use super::netns;
use super::proc::{Out, Proc, clean_env, poll, run, wind_down};

const READY_LIMIT: Duration = Duration::from_secs(30);

pub struct Device {
    proc: Option<Proc>,
    pub name: String,
    pub config_dir: PathBuf,
    /// Where `up` listens for SOCKS5.
    pub socks: SocketAddr,
    /// Extra arguments for `up` (e.g. `--socks-user`).
    pub up_args: Vec<String>,
    netns: Option<String>,
    home: PathBuf,
    old_logs: Vec<String>,
    tmp: TempDir,
}

impl Device {
    /// A device with an empty config dir (nothing run yet).
    pub fn new(name: &str) -> Device {
        Device::new_in(
            name,
            None,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()),
        )
    }

    /// A device whose `up` runs in namespace `ns`, listening on `socks`.
    pub fn new_in(name: &str, ns: Option<&str>, socks: SocketAddr) -> Device {
        let tmp = tempfile::Builder::new()
            .prefix("sg-e2e-dev-")
            .tempdir()
            .expect("tempdir");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Device {
            proc: None,
            name: name.to_owned(),
            config_dir: tmp.path().join("config"),
            socks,
            up_args: vec![],
            netns: ns.map(str::to_owned),
            home,
            old_logs: vec![],
            tmp,
        }
    }

    /// Token for `user` at `gw`, enrolled, `up` and connected.
    pub fn enrolled_up(gw: &Gateway, user: &str, name: &str) -> Device {
        let mut dev = Device::enrolled(gw, user, name);
        dev.up();
        dev
    }

    /// Token for `user` at `gw`, enrolled (not up).
    pub fn enrolled(gw: &Gateway, user: &str, name: &str) -> Device {
        let dev = Device::new(name);
        let code = gw.token(user);
        let out = dev.enroll(&code).expect_ok();
        assert!(
            out.stdout.contains(name),
            "`shimgate enroll` should print the device name {name:?}: {out}"
        );
        dev
    }

    fn command(&self, in_netns: bool) -> Command {
        let mut cmd = match (&self.netns, in_netns) {
            (Some(ns), true) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin(DEVICE_BIN));
                c
            }
            _ => Command::new(bin(DEVICE_BIN)),
        };
        clean_env(&mut cmd, &self.home);
        cmd.arg("--config-dir").arg(&self.config_dir);
        cmd
    }

    /// `shimgate enroll CODE --name NAME` (in the device's namespace).
    pub fn enroll(&self, code: &str) -> Out {
        let mut cmd = self.command(true);
        cmd.args(["enroll", code, "--name", &self.name]);
        run(&mut cmd, CLI_LIMIT)
    }

    /// `shimgate ARGS...` with this device's config dir (in its namespace).
    pub fn cli(&self, args: &[&str]) -> Out {
        self.cli_within(args, Duration::from_secs(30))
    }

    /// [`Device::cli`] for a command that may take up to `limit`.
    pub fn cli_within(&self, args: &[&str], limit: Duration) -> Out {
        let mut cmd = self.command(true);
        cmd.args(args);
        run(&mut cmd, limit)
    }

    /// `shimgate status [args]`.
    pub fn status(&self, args: &[&str]) -> Out {
        let mut cmd = self.command(true);
        cmd.arg("status").args(args);
        run(&mut cmd, Duration::from_secs(20))
    }

    /// Starts `up` and waits until `shimgate status` exits 0.
    pub fn up(&mut self) {
        self.spawn_up();
        let start = Instant::now();
        poll(
            "`shimgate status` to exit 0 after `up`",
            READY_LIMIT,
            Duration::from_millis(100),
            || {
                self.proc.as_mut().unwrap().assert_running("starting `up`");
                (self.status(&[]).code() == Some(0)).then_some(())
            },
        );
        eprintln!("[e2e] device {} up after {:?}", self.name, start.elapsed());
    }

    /// Starts `up` and waits only until the SOCKS port accepts TCP
    /// connections (for devices that cannot reach their gateway).
    pub fn up_unconnected(&mut self) {
        self.spawn_up();
        let ns = self.netns.clone();
        let socks = self.socks;
        poll(
            "the SOCKS port of `up` to accept TCP connections",
            READY_LIMIT,
            Duration::from_millis(25),
            || {
                self.proc.as_mut().unwrap().assert_running("starting `up`");
                netns::can_connect(ns.as_deref(), socks).then_some(())
            },
        );
    }

    fn spawn_up(&mut self) {
        assert!(self.proc.is_none(), "device already up");
        let mut cmd = self.command(true);
        cmd.args(["up", "--listen", &self.socks.to_string()]);
        cmd.args(&self.up_args);
        self.proc = Some(Proc::spawn(
            &format!("device-{}", self.name),
            &mut cmd,
            self.tmp.path(),
        ));
    }

    /// Runs `up`, which must exit (refuse to start) within `limit`;
    /// returns its exit status and stderr.
    pub fn up_must_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        self.spawn_up();
        let mut proc = self.proc.take().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = proc.exited() {
                let stderr = std::fs::read_to_string(&proc.stderr).unwrap_or_default();
                self.old_logs.push(proc.logs());
                return (status, stderr);
            }
            if Instant::now() >= deadline {
                let logs = proc.logs();
                drop(proc);
                panic!(
                    "`shimgate up {}` was expected to refuse to start, but still runs after {limit:?}\n{logs}",
                    self.up_args.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running `up`'s process id.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// SIGKILL `up` (a crash) and wait for it.
    pub fn kill(&mut self) {
        let mut proc = self.proc.take().expect("device not up");
        proc.kill();
        self.old_logs.push(proc.logs());
    }

    /// SIGTERM `up` and wait for it.
    pub fn stop(&mut self) {
        let mut proc = self.proc.take().expect("device not up");
        let (_, graceful) = proc.terminate(Duration::from_secs(10));
        assert!(
            graceful,
            "`shimgate up` did not exit within 10 s of SIGTERM\n{}",
            proc.logs()
        );
        self.old_logs.push(proc.logs());
    }

    /// `shimgate down`; the `up` it stopped must have exited by the time
    /// it returns (reaped here, its logs kept).
    pub fn down(&mut self) -> Out {
        let out = self.cli(&["down"]);
        if let Some(mut proc) = self.proc.take() {
            let exited = proc.exited();
            let logs = proc.logs();
            assert!(
                exited.is_some(),
                "`shimgate up` still runs after `shimgate down` returned: {out}\n{logs}"
            );
            self.old_logs.push(logs);
        }
        out
    }

    pub fn assert_running(&mut self, what: &str) {
        if let Some(p) = self.proc.as_mut() {
            p.assert_running(what);
        }
    }

    /// An HTTP/2 connection to the gateway made as this device's proxy makes
    /// it (its certificate, its gateway address and TLS name), on `rt`: for
    /// tests that speak the gateway's protocol themselves.
    pub fn connect_to_gateway(
        &self,
        rt: &tokio::runtime::Runtime,
    ) -> shimgate_proxy::client::Connection {
        use shimgate_proxy::config::{ConfigDir, DeviceConfig};
        let dir = ConfigDir::new(self.config_dir.clone());
        let config = DeviceConfig::load(&dir).expect("the device's config");
        let tls = shimgate_proxy::tls::device(&dir).expect("the device's TLS config");
        let name = shimgate_proxy::tls::server_name(&config.server_name).unwrap();
        let (conn, _) = rt
            .block_on(shimgate_proxy::client::connect_device(
                &config.gateway,
                name,
                tls,
            ))
            .unwrap_or_else(|e| panic!("device {} connects to the gateway: {e}", self.name));
        conn
    }

    pub fn config_toml(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }

    pub fn logs(&self) -> String {
        let mut s = self.old_logs.join("\n");
        if let Some(p) = &self.proc {
            s.push('\n');
            s.push_str(&p.logs());
        }
        s
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let what = format!(
            "device {} (config dir {})",
            self.name,
            self.config_dir.display()
        );
        let logs = std::thread::panicking().then(|| self.logs());
        wind_down(&what, logs, self.proc.take(), &mut self.tmp);
    }
}
