//! The `shimgate-gateway` command line: `init`, `serve`, and the admin
//! commands that work on the registry directly (so they work whether or not
//! a gateway is running; a running gateway picks changes up within a second).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use shimgate_gateway::ca::Ca;
use shimgate_gateway::console;
use shimgate_gateway::dial::Alias;
use shimgate_gateway::paths::{DataDir, GatewayConfig};
use shimgate_gateway::setup::Limits;
use shimgate_host::{clock, files};
use shimgate_registry::{
    Action, Dest, DeviceStatus, LocalUser, NewAudit, NewRule, NewToken, Ports, Program, Proto,
    Registry, Subject,
};
use shimgate_wire::code::EnrollmentCode;
use shimgate_wire::identity::VpnRange;
use tokio_util::sync::CancellationToken;

use crate::process::{LogFormat, stop_on_signal};

#[derive(Parser)]
#[command(
    name = "shimgate-gateway",
    version,
    about = "The shimgate gateway: authenticates devices, enrolls new ones, and relays their connections into the networks it guards.",
    after_help = "First run:  shimgate-gateway init --name gw.example.org\n            shimgate-gateway serve\n            shimgate-gateway policy add allow --to 10.0.0.0/8 --group staff\n            shimgate-gateway token create --user alice"
)]
pub struct Cli {
    /// Where the CA, the server certificate, gateway.toml and the SQLite registry live.
    #[arg(long, env = "SHIMGATE_GATEWAY_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Registry database: postgres://... or an SQLite file (default: DATA_DIR/registry.db).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the CA and the gateway's server certificate (once per gateway).
    Init(InitArgs),
    /// Run the gateway.
    Serve(ServeArgs),
    /// Apply registry migrations and exit (serve does this too).
    Migrate,
    /// Users and their groups.
    #[command(subcommand)]
    User(UserCommand),
    /// Enrollment tokens (one-time codes that let a device join).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enrolled devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Who may reach what through the gateway (default: nothing).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The audit log: admin actions, enrollments, peer sessions; newest first.
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only actions starting with this, e.g. `peer.` or `device.`.
        #[arg(long)]
        action: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole system on this machine: gateway, an intranet app, two devices.
    Demo(crate::demo::DemoArgs),
    /// Web console administrators.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The gateways serving on this registry (one database, several gateways).
    #[command(subcommand)]
    Gateway(GatewayCommand),
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Every gateway that has served on this registry: address, region, version, devices
    /// online, last heartbeat; one silent for a few seconds is shown down.
    List,
    /// Forget a gateway taken out of service (one still serving comes back with its next
    /// heartbeat).
    Forget {
        /// Its name, as `gateway list` shows it.
        name: String,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Add an administrator and print a one-time password (or read one with --password-stdin).
    Create {
        /// The administrator's sign-in name.
        name: String,
        /// Read the password from standard input instead of making one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Give an administrator a new one-time password (or read one with --password-stdin).
    ResetPassword {
        /// The administrator's sign-in name.
        name: String,
        /// Read the new password from standard input instead of making one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List administrators.
    List,
}

#[derive(Args)]
struct InitArgs {
    /// DNS name devices use for this gateway (repeatable); goes into the server certificate.
    #[arg(long = "name", required = true)]
    names: Vec<String>,
    /// IP address devices may use for this gateway (repeatable).
    #[arg(long = "ip")]
    ips: Vec<IpAddr>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// host:port devices dial (default: the first --name and the listen port).
    #[arg(long)]
    public_addr: Option<String>,
    /// SPIFFE trust domain naming devices (spiffe://DOMAIN/device/NAME).
    #[arg(long, default_value = "shimgate")]
    trust_domain: String,
    /// DNS domain of the VPN's devices for peer-to-peer sessions (bob is bob.DOMAIN).
    #[arg(long, default_value = shimgate_wire::control::DEFAULT_VPN_DOMAIN)]
    vpn_domain: String,
    /// IPv4 network devices' VPN addresses come from, one per deployment (the default is the
    /// RFC 6598 shared range, which Tailscale and carrier-grade NAT also use: pick another,
    /// e.g. 10.99.0.0/16, if your devices sit behind either).
    #[arg(long, default_value_t = VpnRange::DEFAULT)]
    vpn_range: VpnRange,
}

#[derive(Args)]
struct ServeArgs {
    /// Listen address (default: from gateway.toml).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A name only the gateway resolves, NAME:PORT=IP:PORT (repeatable), e.g. intranet.internal:80=10.1.2.3:8080.
    #[arg(long = "alias")]
    aliases: Vec<Alias>,
    /// TLS connections the gateway holds at once (each device keeps a few; tunnels are streams
    /// inside them); past it new ones are closed at once. Raise the open-file limit with it.
    #[arg(long, default_value_t = shimgate_gateway::server::MAX_CONNECTIONS, value_parser = parse_max_connections)]
    max_connections: usize,
    /// Tunnels and UDP associations one device may have open at once.
    #[arg(long, default_value_t = Limits::default().open_per_device, value_parser = parse_max_connections)]
    max_tunnels_per_device: usize,
    /// New tunnels and UDP associations one device may open per second (bursts of twice that).
    #[arg(long, default_value_t = Limits::default().tunnels_per_second, value_parser = clap::value_parser!(u32).range(1..))]
    tunnels_per_second: u32,
    /// Peer session requests one device may make per second (bursts of twice that).
    #[arg(long, default_value_t = Limits::default().peer_sessions_per_second, value_parser = clap::value_parser!(u32).range(1..))]
    peer_sessions_per_second: u32,
    /// UDP datagrams one device may send through the gateway per second, all its associations
    /// together (bursts of twice that); more are dropped and counted.
    #[arg(long, default_value_t = Limits::default().datagrams_per_second, value_parser = clap::value_parser!(u32).range(1..))]
    datagrams_per_second: u32,
    /// Enrollment attempts with one code: this many at once, then one a minute.
    #[arg(long, default_value_t = Limits::default().enroll_attempts_per_token, value_parser = clap::value_parser!(u32).range(1..))]
    enroll_attempts_per_token: u32,
    /// A label for this gateway in `gateway list` (a site or region, e.g. eu-west).
    #[arg(long, default_value = "")]
    region: String,
    /// How long the gateway admits new tunnels and peer sessions without reaching the registry
    /// (open ones go on): the longest a revocation can go unheard during a partition. 30s, 2m...
    #[arg(long, default_value = "60s", value_parser = parse_lease)]
    registry_lease: std::time::Duration,
    #[command(flatten)]
    console: ConsoleArgs,
}

/// Where and how the web console is served.
#[derive(Args, Clone)]
pub struct ConsoleArgs {
    /// Web console address, or `off`.
    #[arg(long = "console", default_value = console::DEFAULT_ADDR, value_parser = parse_console_addr)]
    pub console: ConsoleAddr,
    /// The console's TLS certificate (PEM); needed to serve it on a non-loopback address.
    #[arg(long, requires = "console_tls_key")]
    pub console_tls_cert: Option<PathBuf>,
    /// The console's TLS private key (PEM).
    #[arg(long, requires = "console_tls_cert")]
    pub console_tls_key: Option<PathBuf>,
    /// Serve the console over plain HTTP on a non-loopback address anyway (passwords cross
    /// the network unencrypted).
    #[arg(long)]
    pub insecure_http: bool,
    /// How people reach the console, e.g. https://vpn.example.org (used in invitation links;
    /// default: the address it listens on).
    #[arg(long, value_parser = parse_console_url)]
    pub console_url: Option<String>,
}

fn parse_max_connections(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a number from 1 to 1000000")),
    }
}

fn parse_console_url(s: &str) -> Result<String, String> {
    let ok = (s.starts_with("http://") || s.starts_with("https://"))
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'\\'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not an http:// or https:// URL"))
    }
}

/// `--console`: an address, or `off` (None).
#[derive(Debug, Clone, Copy)]
pub struct ConsoleAddr(pub Option<SocketAddr>);

fn parse_console_addr(s: &str) -> Result<ConsoleAddr, String> {
    if s == "off" {
        return Ok(ConsoleAddr(None));
    }
    s.parse()
        .map(|a| ConsoleAddr(Some(a)))
        .map_err(|e| format!("{s:?} is not ADDRESS:PORT or off: {e}"))
}

impl ConsoleArgs {
    pub fn options(&self) -> Option<console::Options> {
        Some(console::Options {
            addr: self.console.0?,
            tls: self
                .console_tls_cert
                .clone()
                .zip(self.console_tls_key.clone()),
            insecure_http: self.insecure_http,
            public_url: self.console_url.clone(),
        })
    }
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (and put them in groups).
    Add {
        /// The user's name (as policy rules and enrollment codes name them).
        name: String,
        /// A group to put the user in (repeatable); rules can name groups.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// List users and their groups.
    List,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make an enrollment code for a user (the user is created if missing).
    Create {
        /// The user whose device the code enrolls.
        #[arg(long)]
        user: String,
        /// How long the code is valid: 30s, 10m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = clock::parse_duration)]
        expires: i64,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Print only the code.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List tokens (never their secrets).
    List,
    /// Cancel a token by id.
    Cancel {
        /// The token's id, as `token list` shows it.
        id: String,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// List devices.
    List,
    /// Cut a device off now, live tunnels included.
    Revoke {
        /// The device's name, as `device list` shows it.
        name: String,
    },
    /// Let a device that enrolled while approval was required connect.
    Approve {
        /// The device's name, as `device list` shows it.
        name: String,
    },
    /// Whether new devices wait for an admin's approval before they can connect.
    RequireApproval {
        /// on: new devices wait for approval; off: they connect at once.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Add a rule. Example: policy add allow --to 10.0.0.0/8 --ports 22 --group ops
    Add(RuleArgs),
    /// List rules.
    List,
    /// Remove a rule by id.
    Remove {
        /// The rule's id, as `policy list` shows it.
        id: i64,
    },
}

#[derive(Args)]
struct RuleArgs {
    /// allow or deny; a matching deny beats any allow.
    #[arg(value_parser = ["allow", "deny"])]
    action: String,
    /// Destination: CIDR (10.0.0.0/8), IP, domain suffix (intranet.example), a device
    /// (bob.vpn.internal), or group:NAME (the devices of that group's members, as peers).
    #[arg(long)]
    to: Dest,
    /// Ports and ranges: 443, 8000-8100, or a list: 22,53,80,443,5432,8000-8100 (default: all).
    #[arg(long, default_value = "1-65535")]
    ports: Ports,
    /// Protocol the rule applies to: tcp, udp, icmp (ping; no ports) or any (all three).
    #[arg(long, default_value = "tcp")]
    proto: Proto,
    /// Applies to this user's devices.
    #[arg(long, conflicts_with_all = ["group", "everyone"])]
    user: Option<String>,
    /// Applies to devices of this group's members.
    #[arg(long, conflicts_with = "everyone")]
    group: Option<String>,
    /// Applies to everyone (the default).
    #[arg(long)]
    everyone: bool,
    /// Only flows from this program on the device, as `shimgate run` reports it: a path
    /// (/usr/bin/psql) or a name (psql, in any directory). Flows from the SOCKS port have no
    /// program and match no such rule.
    #[arg(long)]
    program: Option<Program>,
    /// Only flows from this local user on the device (a name or a uid), as `shimgate run`
    /// reports it.
    #[arg(long)]
    local_user: Option<LocalUser>,
}

/// Who runs an admin command, for the audit log.
fn operator() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

impl Cli {
    pub fn data_dir(&self) -> DataDir {
        DataDir::new(self.data_dir.clone().unwrap_or_else(DataDir::default_root))
    }

    async fn registry(&self) -> anyhow::Result<Registry> {
        let dir = self.data_dir();
        let url = match &self.database_url {
            Some(u) => u.clone(),
            None => {
                files::create_private_dir(dir.root())
                    .with_context(|| format!("creating {}", dir.root().display()))?;
                // SQLite would only say "unable to open database file".
                files::check_writable(dir.root()).with_context(|| {
                    format!(
                        "the SQLite registry lives in {}, which cannot be written",
                        dir.root().display()
                    )
                })?;
                dir.sqlite_registry().display().to_string()
            }
        };
        let registry = Registry::connect(&url)
            .await
            .context("opening the registry")?;
        registry.migrate().await?;
        Ok(registry)
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let dir = self.data_dir();
        match &self.command {
            Command::Init(args) => init(&dir, args),
            Command::Serve(args) => {
                let registry = self.registry().await?;
                let stop = CancellationToken::new();
                let options = shimgate_gateway::setup::Options {
                    listen: args.listen,
                    aliases: args.aliases.clone(),
                    max_connections: args.max_connections,
                    limits: Limits {
                        open_per_device: args.max_tunnels_per_device,
                        tunnels_per_second: args.tunnels_per_second,
                        peer_sessions_per_second: args.peer_sessions_per_second,
                        datagrams_per_second: args.datagrams_per_second,
                        enroll_attempts_per_token: args.enroll_attempts_per_token,
                    },
                    region: args.region.clone(),
                    registry_lease: args.registry_lease,
                };
                let (gw, listener) = shimgate_gateway::start(&dir, registry, &options).await?;
                if let Some(opts) = args.console.options() {
                    let console = console::start(Arc::clone(&gw), &opts, stop.clone()).await?;
                    println!("web console: {}", console.url);
                }
                tokio::spawn(stop_on_signal(stop.clone()));
                gw.run(listener, stop).await;
                tracing::info!("gateway stopped");
                Ok(())
            }
            Command::Migrate => {
                self.registry().await?;
                println!("registry is up to date");
                Ok(())
            }
            Command::User(cmd) => user(&self.registry().await?, cmd).await,
            Command::Token(cmd) => token(&dir, &self.registry().await?, cmd).await,
            Command::Device(cmd) => device(&self.registry().await?, cmd).await,
            Command::Policy(cmd) => policy(&self.registry().await?, cmd).await,
            Command::Audit {
                limit,
                action,
                json,
            } => show_audit(&self.registry().await?, *limit, action.as_deref(), *json).await,
            Command::Demo(args) => crate::demo::run(args).await,
            Command::Admin(cmd) => admin(&self.registry().await?, cmd).await,
            Command::Gateway(cmd) => gateways(&self.registry().await?, cmd).await,
        }
    }
}

async fn gateways(registry: &Registry, cmd: &GatewayCommand) -> anyhow::Result<()> {
    match cmd {
        GatewayCommand::List => {
            println!(
                "{:<24} {:<26} {:<10} {:<9} {:>7} {:<6} LAST HEARTBEAT",
                "GATEWAY", "ADDRESS", "REGION", "VERSION", "DEVICES", "STATE"
            );
            for g in registry.gateways().await? {
                let beat = &g.heartbeat;
                let up = g.silent_for <= shimgate_gateway::heartbeat::DOWN_AFTER_SECS;
                println!(
                    "{:<24} {:<26} {:<10} {:<9} {:>7} {:<6} {} ({}s ago)",
                    beat.name,
                    beat.address,
                    if beat.region.is_empty() {
                        "-"
                    } else {
                        &beat.region
                    },
                    beat.version,
                    // A gateway that is down holds no device, whatever it last said.
                    if up { beat.devices_online } else { 0 },
                    if up { "up" } else { "down" },
                    clock::show(g.heartbeat_at),
                    g.silent_for.max(0),
                );
            }
        }
        GatewayCommand::Forget { name } => {
            if !registry.forget_gateway(name).await? {
                anyhow::bail!("no gateway named {name} (see `shimgate-gateway gateway list`)");
            }
            println!("forgot gateway {name}");
        }
    }
    Ok(())
}

fn init(dir: &DataDir, args: &InitArgs) -> anyhow::Result<()> {
    let public_addr = args
        .public_addr
        .clone()
        .unwrap_or_else(|| format!("{}:{}", args.names[0], args.listen.port()));
    let config = GatewayConfig {
        listen: args.listen,
        public_addr,
        trust_domain: args.trust_domain.clone(),
        names: args.names.clone(),
        ips: args.ips.clone(),
        aliases: Vec::new(),
        vpn_domain: args.vpn_domain.clone(),
        vpn_range: args.vpn_range,
    };
    let ca = shimgate_gateway::init(dir, &config)?;
    println!("Gateway initialised in {}", dir.root().display());
    println!(
        "  CA fingerprint (SHA-256): {}",
        shimgate_wire::pki::hex(&ca.fingerprint())
    );
    println!("  devices will dial:        {}", config.public_addr);
    println!("  VPN addresses from:       {}", config.vpn_range);
    println!("Next: shimgate-gateway serve");
    Ok(())
}

async fn audit(
    registry: &Registry,
    action: &str,
    target: &str,
    detail: String,
) -> anyhow::Result<()> {
    registry
        .audit(NewAudit {
            at: clock::now(),
            actor: operator(),
            action: action.into(),
            target: target.into(),
            source_addr: None,
            detail,
            gateway: None,
        })
        .await?;
    Ok(())
}

fn password_from(stdin: bool) -> anyhow::Result<(String, bool)> {
    if !stdin {
        return Ok((console::auth::one_time_password(), true));
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    Ok((line.trim_end_matches(['\r', '\n']).to_owned(), false))
}

async fn admin(registry: &Registry, cmd: &AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Create {
            name,
            password_stdin,
        } => {
            let (password, made) = password_from(*password_stdin)?;
            registry.create_admin(name, &password, made).await?;
            audit(registry, "admin.create", name, String::new()).await?;
            if made {
                println!(
                    "admin {name} created; one-time password (shown only now, to be changed at the first sign-in):\n\n  {password}\n"
                );
            } else {
                println!("admin {name} created");
            }
        }
        AdminCommand::ResetPassword {
            name,
            password_stdin,
        } => {
            let (password, made) = password_from(*password_stdin)?;
            registry.set_admin_password(name, &password, made).await?;
            audit(registry, "admin.reset_password", name, String::new()).await?;
            if made {
                println!(
                    "new one-time password for {name} (shown only now, to be changed at the next sign-in):\n\n  {password}\n"
                );
            } else {
                println!("password for {name} changed");
            }
        }
        AdminCommand::List => {
            println!("{:<20} CREATED", "ADMIN");
            for a in registry.list_admins().await? {
                println!("{:<20} {}", a.name, clock::show(a.created_at));
            }
        }
    }
    Ok(())
}

async fn user(registry: &Registry, cmd: &UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { name, groups } => {
            registry.ensure_user(name).await?;
            for g in groups {
                registry.add_to_group(name, g).await?;
            }
            audit(registry, "user.add", name, format!("groups={groups:?}")).await?;
            println!("user {name} added");
        }
        UserCommand::List => {
            println!("{:<20} {:<20} GROUPS", "USER", "CREATED");
            for u in registry.list_users().await? {
                println!(
                    "{:<20} {:<20} {}",
                    u.user.name,
                    clock::show(u.user.created_at),
                    u.groups.join(",")
                );
            }
        }
    }
    Ok(())
}

async fn token(dir: &DataDir, registry: &Registry, cmd: &TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            user,
            expires,
            uses,
            quiet,
        } => {
            let config = GatewayConfig::load(dir)?;
            let ca = Ca::load(dir)?;
            registry.ensure_user(user).await?;
            let issued = registry
                .create_token(NewToken {
                    user: user.clone(),
                    created_by: operator(),
                    expires_at: clock::now() + expires,
                    uses: *uses,
                })
                .await?;
            audit(
                registry,
                "token.create",
                user,
                format!("id={} uses={uses}", issued.id_hex()),
            )
            .await?;
            let code = EnrollmentCode {
                gateway: config.public_addr,
                ca_fingerprint: ca.fingerprint(),
                token_id: issued.id,
                secret: issued.secret,
                expires_at: issued.expires_at,
            };
            if *quiet {
                println!("{code}");
            } else {
                println!(
                    "Enrollment code for {user} (valid until {}, {uses} use(s)):\n",
                    clock::show(issued.expires_at)
                );
                println!("  {code}\n");
                println!("On the device, run:\n\n  shimgate enroll {code}");
            }
        }
        TokenCommand::List => {
            println!(
                "{:<34} {:<14} {:<21} {:<5} STATE",
                "ID", "USER", "EXPIRES", "USES"
            );
            let now = clock::now();
            for t in registry.list_tokens(now).await? {
                let state = if t.cancelled {
                    "cancelled"
                } else if t.expires_at <= now {
                    "expired"
                } else if t.uses_left == 0 {
                    "used"
                } else {
                    "valid"
                };
                println!(
                    "{:<34} {:<14} {:<21} {:<5} {state}",
                    t.id_hex,
                    t.user,
                    clock::show(t.expires_at),
                    t.uses_left
                );
            }
        }
        TokenCommand::Cancel { id } => {
            if !registry.cancel_token(id).await? {
                bail!("no token with id {id}");
            }
            audit(registry, "token.cancel", id, String::new()).await?;
            println!("token {id} cancelled");
        }
    }
    Ok(())
}

async fn device(registry: &Registry, cmd: &DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::List => {
            println!(
                "{:<20} {:<14} {:<15} {:<8} {:<21} {:<21} {:<21} GATEWAY",
                "DEVICE", "USER", "VPN IP", "STATUS", "CREATED", "LAST SEEN", "CERT EXPIRES"
            );
            for d in registry.list_devices().await? {
                let dev = &d.device;
                println!(
                    "{:<20} {:<14} {:<15} {:<8} {:<21} {:<21} {:<21} {}",
                    dev.name,
                    dev.user_name,
                    dev.vpn_ip,
                    match dev.status {
                        DeviceStatus::Active => "active",
                        DeviceStatus::Revoked => "revoked",
                        DeviceStatus::Pending => "pending",
                    },
                    clock::show(dev.created_at),
                    dev.last_seen
                        .map(clock::show)
                        .unwrap_or_else(|| "never".into()),
                    d.cert_not_after
                        .map(clock::show)
                        .unwrap_or_else(|| "-".into()),
                    dev.last_gateway.as_deref().unwrap_or("-"),
                );
            }
        }
        DeviceCommand::Revoke { name } => {
            registry.revoke_device(name, clock::now()).await?;
            audit(registry, "device.revoke", name, String::new()).await?;
            println!("device {name} revoked: its connections are being closed");
        }
        DeviceCommand::Approve { name } => {
            registry.approve_device(name).await?;
            audit(registry, "device.approve", name, String::new()).await?;
            println!("device {name} approved: it may connect");
        }
        DeviceCommand::RequireApproval { state } => {
            let on = state == "on";
            registry.set_require_approval(on).await?;
            audit(registry, "settings.require_approval", state, String::new()).await?;
            println!(
                "new devices {} an admin's approval",
                if on { "now need" } else { "no longer need" }
            );
        }
    }
    Ok(())
}

async fn show_audit(
    registry: &Registry,
    limit: i64,
    action: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    // With a filter, read further back so that `--limit` counts matching entries.
    let scan = if action.is_some() {
        limit.saturating_mul(20)
    } else {
        limit
    };
    let rows = registry.list_audit(scan).await?;
    let matching = rows
        .iter()
        .filter(|r| action.is_none_or(|a| r.action.starts_with(a)))
        .take(usize::try_from(limit).unwrap_or(0));
    for r in matching {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!(
                "{}  {:<20} {:<18} {:<24} {}{}{}",
                clock::show(r.at),
                r.actor,
                r.action,
                r.target,
                r.detail,
                r.source_addr
                    .as_deref()
                    .map(|a| format!(" (from {a})"))
                    .unwrap_or_default(),
                r.gateway
                    .as_deref()
                    .map(|g| format!(" via {g}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

async fn policy(registry: &Registry, cmd: &PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Add(r) => {
            let subject = match (&r.user, &r.group) {
                (Some(u), _) => Subject::User(u.clone()),
                (_, Some(g)) => Subject::Group(g.clone()),
                _ => Subject::Everyone,
            };
            let action: Action = r.action.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let rule = registry
                .add_rule(NewRule {
                    subject,
                    dest: r.to.clone(),
                    ports: r.ports.clone(),
                    proto: r.proto,
                    program: r.program.clone(),
                    local_user: r.local_user.clone(),
                    action,
                    created_by: operator(),
                })
                .await?;
            audit(registry, "policy.add", &rule.id.to_string(), rule.summary()).await?;
            println!("rule {} added: {}", rule.id, rule.summary());
        }
        PolicyCommand::List => {
            println!(
                "{:<5} {:<6} {:<16} {:<28} {:<6} PORTS",
                "ID", "ACTION", "WHO", "TO", "PROTO"
            );
            for r in registry.list_rules().await? {
                println!(
                    "{:<5} {:<6} {:<16} {:<28} {:<6} {}{}",
                    r.id,
                    r.action.to_string(),
                    r.subject.to_string(),
                    r.dest.to_string(),
                    r.proto.to_string(),
                    r.ports,
                    r.local_limits()
                );
            }
        }
        PolicyCommand::Remove { id } => {
            if !registry.remove_rule(*id).await? {
                bail!("no rule with id {id}");
            }
            audit(registry, "policy.remove", &id.to_string(), String::new()).await?;
            println!("rule {id} removed");
        }
    }
    Ok(())
}

/// `--registry-lease`: a duration of at least one second (the heartbeat's period).
fn parse_lease(s: &str) -> Result<std::time::Duration, String> {
    let secs = clock::parse_duration(s)?;
    u64::try_from(secs)
        .ok()
        .filter(|s| *s >= 1)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s}: the lease is at least 1s (gateways renew it every second)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
