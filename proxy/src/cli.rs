//! The `shimgate` command line: `enroll`, `up`, `status`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use shimgate_wire::clock;
use shimgate_wire::code::EnrollmentCode;
use shimgate_wire::logging::LogFormat;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigDir, DeviceConfig};
use crate::enroll::{EnrollOptions, enroll};
use crate::status;

#[derive(Parser)]
#[command(
    name = "shimgate",
    version,
    about = "The shimgate device proxy: a local SOCKS5 server that carries programs' connections over an authenticated, encrypted tunnel to the shimgate gateway.",
    after_help = "First run:  shimgate enroll sg1-...        (the code your admin gave you)\n            shimgate up\n            curl --socks5-hostname 127.0.0.1:1080 http://intranet.example/"
)]
pub struct Cli {
    /// Where this device's key, certificate and config live.
    #[arg(long, env = "SHIMGATE_HOME", global = true)]
    config_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the VPN with an enrollment code from your admin.
    Enroll {
        /// The code (starts with sg1-).
        code: String,
        /// Device name (default: this machine's host name).
        #[arg(long)]
        name: Option<String>,
        /// Replace an existing enrollment in this config dir.
        #[arg(long)]
        force: bool,
    },
    /// Run the SOCKS5 proxy and stay connected to the gateway.
    Up(UpArgs),
    /// Is the proxy running and connected? Exit 0 connected, 3 not connected, 4 not running.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct UpArgs {
    /// SOCKS5 listen address (default from config.toml: 127.0.0.1:1080).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Connections to keep open to the gateway.
    #[arg(long)]
    pool: Option<usize>,
    /// SOCKS5 username (required with a non-loopback --listen).
    #[arg(long, env = "SHIMGATE_SOCKS_USER")]
    socks_user: Option<String>,
    /// SOCKS5 password.
    #[arg(long, env = "SHIMGATE_SOCKS_PASSWORD", hide_env_values = true)]
    socks_password: Option<String>,
}

impl Cli {
    fn dir(&self) -> ConfigDir {
        ConfigDir::new(
            self.config_dir
                .clone()
                .unwrap_or_else(ConfigDir::default_root),
        )
    }

    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let dir = self.dir();
        match self.command {
            Command::Enroll { code, name, force } => {
                let code: EnrollmentCode = code.parse()?;
                let done = enroll(
                    &dir,
                    &code,
                    &EnrollOptions {
                        name,
                        listen: None,
                        force,
                    },
                )
                .await?;
                println!("Enrolled as {} (user {}).", done.device_name, done.user);
                println!("  VPN name: {}", done.vpn_name);
                println!("  VPN IP:   {}", done.vpn_ip);
                println!(
                    "  valid until {} (renewed automatically while `shimgate up` runs)",
                    clock::show(done.not_after)
                );
                println!("  files in {}", dir.root().display());
                println!("Next: shimgate up");
                Ok(ExitCode::SUCCESS)
            }
            Command::Up(args) => {
                let mut config = DeviceConfig::load(&dir)?;
                if let Some(l) = args.listen {
                    config.listen = l;
                }
                if let Some(p) = args.pool {
                    config.pool = p;
                }
                if args.socks_user.is_some() {
                    config.socks_user = args.socks_user;
                    config.socks_password = args.socks_password;
                }
                let stop = CancellationToken::new();
                let running = crate::up::start(&dir, &config, stop.clone()).await?;
                tracing::info!("running; Ctrl-C to stop");
                eprintln!(
                    "shimgate: SOCKS5 proxy on {} (Ctrl-C to stop)",
                    running.socks
                );
                wait_for_signal().await;
                stop.cancel();
                running.board.remove();
                Ok(ExitCode::SUCCESS)
            }
            Command::Status { json } => Ok(show_status(&dir, json)),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

fn show_status(dir: &ConfigDir, json: bool) -> ExitCode {
    let Some(s) = status::read(dir) else {
        if json {
            println!("{{\"running\":false}}");
        } else {
            match DeviceConfig::load(dir) {
                Ok(c) => println!(
                    "not running (device {} enrolled with {}); start it with `shimgate up`",
                    c.device, c.gateway
                ),
                Err(e) => println!("not running: {e}"),
            }
        }
        return ExitCode::from(4);
    };
    if json {
        println!("{}", serde_json::to_string(&s).unwrap_or_default());
    } else {
        let state = if s.connected {
            "connected"
        } else {
            "NOT connected"
        };
        println!(
            "{state} to gateway {} since {}",
            s.gateway,
            clock::show(s.since)
        );
        println!(
            "  device:  {} (user {}, VPN IP {})",
            s.device, s.user, s.vpn_ip
        );
        println!("  socks5:  {}", s.socks);
        println!("  tunnels: {} of {} gateway connections up", s.live, s.pool);
        if let Some(e) = &s.last_error {
            println!("  last error: {e}");
        }
    }
    if s.connected {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
