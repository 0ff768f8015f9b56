//! The `shimgate` command line: `enroll`, `up`, `run`, `status`, `export`, `peers`, `ping`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use shimgate_host::clock;
use shimgate_proxy::config::{ConfigDir, DeviceConfig, Export};
use shimgate_proxy::enroll::{EnrollOptions, enroll};
use shimgate_proxy::status;
use shimgate_wire::code::EnrollmentCode;
use shimgate_wire::control::PeerProto;
use tokio_util::sync::CancellationToken;

use crate::process::{LogFormat, stop_on_signal};

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
    /// Run a program with its connections to VPN destinations going through the running
    /// `shimgate up`, with no proxy settings: the socket shim (a preloaded library).
    #[command(
        after_help = "Examples:\n  shimgate run -- psql -h db.corp.internal -U app\n  shimgate run -- bash             a shell whose programs (and their children) are on the VPN\n  shimgate run --all -- curl https://example.org/   everything through the gateway\nVPN destinations are those the PAC file sends to the proxy: names under the VPN domain, the VPN\nrange, and the names and networks policy routes to this device; everything else goes out\ndirectly. VPN names are resolved by the gateway, never by this machine's DNS. Statically\nlinked and Go programs cannot be intercepted this way and are refused (--force runs them\nanyway). TCP and UDP are carried (UDP to other devices not yet)."
    )]
    Run {
        /// Send every connection and name through the gateway, not only VPN destinations.
        #[arg(long)]
        all: bool,
        /// Run a program the shim cannot see into (static, Go) anyway, with a warning.
        #[arg(long)]
        force: bool,
        /// The program and its arguments (after `--`).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<OsString>,
    },
    /// Stop the running `shimgate up` (as Ctrl-C would): its SOCKS port, and in TUN mode its
    /// interface, routes and DNS settings, go with it. Also puts back a resolv.conf a crashed
    /// `up --tun` left rewritten. Exit 0 once stopped, or when none was running.
    Down {
        /// Seconds to wait for it to exit.
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
    /// Is the proxy running and connected? Exit 0 connected, 3 not connected, 4 not running.
    Status {
        /// Print the state as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Offer a local service (127.0.0.1:PORT) to other devices; with no port, list what is offered.
    #[command(
        after_help = "Examples:\n  shimgate export 8000            offer 127.0.0.1:8000 as NAME.vpn.internal:8000\n  shimgate export 5353/udp        offer a UDP service on 127.0.0.1:5353\n  shimgate export --remove 8000\n  shimgate export                 list\nA running `shimgate up` picks the change up within a second. Policy on the gateway decides who may connect (a UDP export needs a rule with --proto udp or any)."
    )]
    Export {
        /// Ports to offer: PORT (TCP) or PORT/udp.
        #[arg(value_name = "PORT[/udp]")]
        ports: Vec<Export>,
        /// Stop offering these ports (PORT or PORT/udp).
        #[arg(long = "remove", value_name = "PORT[/udp]")]
        remove: Vec<Export>,
    },
    /// Peers this device has sessions with: path (direct or relayed, and why), bytes, key age.
    Peers {
        /// Print the sessions as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Round trip to another device over a peer session, and the path it took.
    Ping {
        /// A device (NAME, NAME.<vpn domain> or its VPN IP: over a peer session), or any
        /// other address or name (the gateway pings it, where a policy rule allows ICMP).
        peer: String,
        /// How many round trips.
        #[arg(long, short = 'c', default_value_t = 3)]
        count: usize,
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
    /// Where other devices reach this one directly, ADDR:PORT (default from config.toml:
    /// 0.0.0.0:0, any port). Open only while this device exports a service; pin the port
    /// for firewall and NAT rules.
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// TUN mode: every program on this machine reaches the VPN range and the networks
    /// policy routes here with no setting at all (needs root or CAP_NET_ADMIN). The SOCKS
    /// port and `shimgate run` keep working beside it. Default from config.toml (`tun`).
    #[arg(long)]
    tun: bool,
    /// The TUN interface's name (default from config.toml: shimgate0).
    #[arg(long, value_name = "NAME")]
    tun_name: Option<String>,
    /// In TUN mode, also route networks that overlap ones this machine is attached to.
    #[arg(long)]
    allow_overlap: bool,
    /// In TUN mode, how VPN names reach every program: `resolved` (systemd-resolved's
    /// per-link DNS), `resolv-conf` (rewrite /etc/resolv.conf, restored on exit), `off`, or
    /// `auto` (resolved where it runs, else resolv-conf). Default from config.toml: auto.
    #[arg(long, value_name = "MODE")]
    dns: Option<shimgate_proxy::tun::resolver::DnsMode>,
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
                if done.awaiting_approval {
                    println!(
                        "This gateway requires an admin's approval for new devices: `shimgate up` connects once an admin approves {}.",
                        done.device_name
                    );
                }
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
                if let Some(a) = args.peer_listen {
                    config.peer_listen = a;
                }
                config.tun |= args.tun;
                config.tun_allow_overlap |= args.allow_overlap;
                if let Some(mode) = args.dns {
                    config.tun_dns = mode;
                }
                if let Some(name) = args.tun_name {
                    config.tun_name = name;
                }
                if args.socks_user.is_some() {
                    config.socks_user = args.socks_user;
                    config.socks_password = args.socks_password;
                }
                let stop = CancellationToken::new();
                let running = shimgate_proxy::up::start(&dir, &config, stop.clone()).await?;
                tracing::info!("running; Ctrl-C to stop");
                if let Some(tun) = &running.tun {
                    eprintln!(
                        "shimgate: TUN mode on {}, VPN names through DNS: {}",
                        config.tun_name, tun.dns.mode
                    );
                }
                eprintln!(
                    "shimgate: SOCKS5 proxy on {} (Ctrl-C to stop)",
                    running.socks
                );
                stop_on_signal(stop.clone()).await;
                running.board.remove();
                Ok(ExitCode::SUCCESS)
            }
            Command::Run {
                all,
                force,
                command,
            } => run_program(&dir, all, force, &command),
            Command::Down { wait } => {
                match shimgate_proxy::status::stop(&dir, std::time::Duration::from_secs(wait))? {
                    Some(pid) => println!("stopped `shimgate up` (pid {pid})"),
                    None => println!("not running"),
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Status { json } => Ok(show_status(&dir, json)),
            Command::Export { ports, remove } => export(&dir, &ports, &remove),
            Command::Peers { json } => Ok(show_peers(&dir, json)),
            Command::Ping { peer, count } => ping(&dir, &peer, count.max(1)).await,
        }
    }
}

/// `shimgate run`: checks, then replaces this process with the program.
fn run_program(
    dir: &ConfigDir,
    all: bool,
    force: bool,
    command: &[OsString],
) -> anyhow::Result<ExitCode> {
    use shimgate_proxy::launch::{self, LaunchError};
    use shimgate_wire::shimsock::{Reply, SOCKET_ENV, SPLIT_ENV};
    use std::os::unix::process::CommandExt;

    let Some((name, args)) = command.split_first() else {
        anyhow::bail!("give the program to run after `--`");
    };
    let path = launch::find_program(name)?;
    match launch::check_program(&path) {
        Ok(()) => {}
        Err(e @ (LaunchError::Static(_) | LaunchError::Go(_))) if force => {
            eprintln!("shimgate: warning (--force): {e}");
        }
        Err(e) => return Err(e.into()),
    }
    let library = launch::library(&std::env::current_exe()?)?;
    let split = launch::split(dir, all)?;
    let mut preload = library.into_os_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let split_line = Reply::Split(split).encode();
    let err = std::process::Command::new(&path)
        .arg0(name)
        .args(args)
        .env("LD_PRELOAD", preload)
        .env(SOCKET_ENV, dir.shim_socket())
        .env(SPLIT_ENV, split_line.trim_end())
        .exec();
    anyhow::bail!("cannot run {}: {err}", path.display())
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
        if let Ok(addr) = s.socks.parse() {
            println!("  pac:     {}", shimgate_proxy::pac::url(addr));
        }
        println!("  tunnels: {} of {} gateway connections up", s.live, s.pool);
        if let Some(tun) = &s.tun {
            let routes = if tun.routes.is_empty() {
                "none".to_owned()
            } else {
                tun.routes.join(", ")
            };
            println!(
                "  tun:     {} (VPN range and routes: {routes}), {} TCP and {} UDP flows",
                tun.dev, tun.flows, tun.udp_flows
            );
            println!("  dns:     {}", tun.dns);
        }
        match &s.peer_listen {
            Some(addr) => println!("  peers:   listening on {addr}"),
            None => println!("  peers:   not listening (nothing exported)"),
        }
        let shim = s.shim;
        println!(
            "  shim:    {} TCP, {} UDP open for `shimgate run` programs ({} and {} since start)",
            shim.tcp_open, shim.udp_open, shim.tcp_total, shim.udp_total
        );
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

fn export(dir: &ConfigDir, add: &[Export], remove: &[Export]) -> anyhow::Result<ExitCode> {
    let mut config = DeviceConfig::load(dir)?;
    if !add.is_empty() || !remove.is_empty() {
        let mut exports = config.exports.clone();
        exports.extend_from_slice(add);
        exports.retain(|e| e.port != 0 && !remove.contains(e));
        exports.sort_unstable_by_key(|e| (e.proto.as_str(), e.port));
        exports.dedup();
        config.exports = exports;
        config.save(dir)?;
    }
    let exports = config.export_ports();
    if exports.is_empty() {
        println!("This device offers nothing to other devices.");
    } else {
        let all = (exports.tcp.iter().map(|p| (*p, PeerProto::Tcp)))
            .chain(exports.udp.iter().map(|p| (*p, PeerProto::Udp)));
        for (p, proto) in all {
            let udp = if proto == PeerProto::Udp {
                " (UDP)"
            } else {
                ""
            };
            println!(
                "offering 127.0.0.1:{p}{udp} as {}.{}:{p}",
                config.device, config.vpn_domain
            );
        }
        if status::read(dir).is_some() {
            println!("(the running proxy picks changes up within a second)");
        } else {
            println!("(takes effect when `shimgate up` runs)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show_peers(dir: &ConfigDir, json: bool) -> ExitCode {
    let Some(view) = shimgate_proxy::peer::read_view(dir) else {
        println!("not running: start the proxy with `shimgate up`");
        return ExitCode::from(4);
    };
    if json {
        println!("{}", serde_json::to_string(&view).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    if view.is_empty() {
        println!("no peer sessions yet");
    }
    for p in &view {
        let path = match (p.path, &p.why) {
            (Some(path), Some(why)) => format!("{path} ({why})"),
            (Some(path), None) => path.to_string(),
            (None, _) => "no open link".into(),
        };
        let age = p
            .key_age_secs
            .map(|a| format!(", key age {a} s"))
            .unwrap_or_default();
        println!(
            "{}: {} open, {} ended; {path}; sent {} B, received {} B{age}",
            p.peer, p.active, p.ended, p.sent, p.received
        );
    }
    ExitCode::SUCCESS
}

async fn ping(dir: &ConfigDir, peer: &str, count: usize) -> anyhow::Result<ExitCode> {
    let config = DeviceConfig::load(dir)?;
    let tls = shimgate_proxy::tls::device(dir)?;
    let name = shimgate_proxy::tls::server_name(&config.server_name)?;
    let (conn, me) = shimgate_proxy::client::connect_device(&config.gateway, name, tls).await?;
    let (peers, _) = shimgate_proxy::peer::Peers::new(
        &me.device_name,
        &config.vpn_domain,
        config.vpn_range,
        Default::default(),
    );
    // A device: a name under the VPN domain, an address in the VPN range,
    // or a bare device name (`bob`); anything else the gateway pings.
    let device = match shimgate_wire::dest::Host::parse(peer) {
        Ok(h) => peers
            .destination(&h)
            .or_else(|| (!peer.contains(['.', ':'])).then(|| peer.to_owned())),
        Err(_) => Some(peer.to_owned()),
    };
    let Some(target) = device else {
        return ping_through_gateway(&conn, peer, count).await;
    };
    let started = std::time::Instant::now();
    let opened = match peers
        .dial(conn.send.clone(), &target, 0, PeerProto::Tcp)
        .await
    {
        Ok(o) => o,
        Err(e) => {
            println!("ping {peer}: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let setup = started.elapsed();
    let (who, ip, path) = (opened.peer.clone(), opened.peer_ip, opened.path);
    let why = opened.why.clone();
    let times = shimgate_proxy::peer::ping(opened, count).await?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    match why {
        Some(why) => println!(
            "{who} ({ip}): path {path} ({why}); session set up in {:.2} ms",
            ms(setup)
        ),
        None => println!(
            "{who} ({ip}): path {path}; session set up in {:.2} ms",
            ms(setup)
        ),
    }
    for (i, t) in times.iter().enumerate() {
        println!("  reply {}: {:.3} ms", i + 1, ms(*t));
    }
    let total: std::time::Duration = times.iter().sum();
    let min = times.iter().min().copied().unwrap_or_default();
    let max = times.iter().max().copied().unwrap_or_default();
    println!(
        "rtt min/avg/max = {:.3}/{:.3}/{:.3} ms",
        ms(min),
        ms(total / times.len().max(1) as u32),
        ms(max)
    );
    Ok(ExitCode::SUCCESS)
}

/// `shimgate ping HOST` for a host that is no device: `count` echoes the
/// gateway sends (`POST /v1/ping`), each timed from here.
async fn ping_through_gateway(
    conn: &shimgate_proxy::client::Connection,
    host: &str,
    count: usize,
) -> anyhow::Result<ExitCode> {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!("{host}: through the gateway");
    let mut echoed = 0;
    for i in 1..=count {
        let started = std::time::Instant::now();
        let pinged = shimgate_proxy::client::ping_through_gateway(&conn.send, host).await?;
        if pinged.answer == shimgate_wire::ping::ECHOED {
            echoed += 1;
            println!("  reply {i}: {:.3} ms", ms(started.elapsed()));
        } else {
            println!("  no reply {i}: {}", pinged.answer);
        }
    }
    println!("{echoed} of {count} echoed");
    Ok(if echoed == count {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
