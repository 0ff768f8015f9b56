//! Putting a gateway together: [`init`] makes a data directory (CA, server
//! certificate, `gateway.toml`) once; [`start`] loads it, binds the listener
//! and returns a [`Gateway`] ready to [`Gateway::run`]. The binaries and the
//! demo build gateways only through these two.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shimgate_host::{clock, files};
use shimgate_registry::Registry;
use shimgate_wire::code::EnrollmentCode;
use tokio::net::TcpListener;

use shimgate_host::workers::Workers;
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;
use crate::ca::{Ca, CaError};
use crate::cache::Cache;
use crate::dial::{Alias, Dialer};
use crate::paths::{ConfigError, DataDir, GatewayConfig};
use crate::ratelimit::{Cap, RateLimit};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("public address {0:?} is not host:port")]
    PublicAddr(String),
    #[error("creating {path}: {source}")]
    Dir { path: String, source: io::Error },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("initialising {dir} failed; nothing was kept: {reason}")]
    RolledBack { dir: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("loading the registry: {0}")]
    Registry(#[from] shimgate_registry::Error),
    #[error(transparent)]
    Tls(#[from] shimgate_wire::pki::TlsError),
    #[error("the server certificate (checked for renewal at start): {0}")]
    ServerCert(#[from] crate::servercert::RenewError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("gateway.toml: {0}")]
    Alias(String),
    #[error("starting worker threads: {0}")]
    Workers(io::Error),
}

/// Everything a running gateway shares between connections.
pub struct Gateway {
    pub(crate) registry: Registry,
    pub(crate) cache: Arc<Cache>,
    pub(crate) ca: Ca,
    /// The data directory (the server certificate is renewed into it).
    pub(crate) dir: DataDir,
    pub(crate) server_cert: Arc<crate::servercert::ServerCert>,
    pub(crate) config: GatewayConfig,
    pub(crate) dialer: Dialer,
    pub(crate) tls: TlsAcceptor,
    /// Where connections run: each on one worker thread, with its streams.
    pub(crate) workers: Workers,
    /// Enrollment attempts per source address.
    pub(crate) enroll_limit: RateLimit,
    /// Connections without a device certificate (yet), per source address.
    pub(crate) unauthenticated: Cap,
    /// Connections refused by `unauthenticated`, for the log.
    pub(crate) refused_per_address: std::sync::atomic::AtomicU64,
    /// Open connections, at most `max_connections`: past it new ones are
    /// closed at once rather than exhausting file descriptors.
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
    pub(crate) max_connections: usize,
    /// Tunnels and UDP associations open per device.
    pub(crate) device_open: Cap<i64>,
    /// Connections open per device; how many devices hold one is the heartbeat's
    /// "devices online".
    pub(crate) device_connections: Cap<i64>,
    /// `serve --region`, for `gateway list`.
    pub(crate) region: String,
    pub(crate) lease: crate::lease::Lease,
    /// New tunnels and UDP associations per device.
    pub(crate) device_tunnels: RateLimit<i64>,
    /// Peer session requests per device.
    pub(crate) device_peer_sessions: RateLimit<i64>,
    /// UDP datagrams per device.
    pub(crate) device_datagrams: Arc<RateLimit<i64>>,
    /// Enrollment attempts per token id.
    pub(crate) token_attempts: RateLimit<[u8; 16]>,
    /// Requests refused for a device limit, for the log.
    pub(crate) over_limit: std::sync::atomic::AtomicU64,
    /// Who is online for peer sessions; brokers and relays them.
    pub(crate) broker: Arc<Broker>,
    /// Tunnels open now, for the console.
    pub(crate) tunnels: crate::activity::Tunnels,
    /// The UDP port associations' channels use, once [`Gateway::run`] has
    /// bound it (never, where it cannot: datagrams then ride the streams).
    pub(crate) channels: std::sync::OnceLock<Arc<crate::udpchannel::Channels>>,
}

/// What `serve` may override of `gateway.toml`, and its limits.
#[derive(Debug, Clone)]
pub struct Options {
    /// Listen address (default: `gateway.toml`'s).
    pub listen: Option<SocketAddr>,
    /// Aliases on top of `gateway.toml`'s.
    pub aliases: Vec<Alias>,
    /// TLS connections held at once; past it new ones are closed at once.
    pub max_connections: usize,
    /// What one device may use.
    pub limits: Limits,
    /// A label for this gateway in `gateway list` (a site, a region), or empty.
    pub region: String,
    /// How long new flows are admitted without the registry ([`crate::lease`]).
    pub registry_lease: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            listen: None,
            aliases: Vec::new(),
            max_connections: crate::server::MAX_CONNECTIONS,
            limits: Limits::default(),
            region: String::new(),
            registry_lease: crate::lease::DEFAULT,
        }
    }
}

/// What one device may use of the gateway, so that one device (a runaway
/// script, a stolen key) cannot take it from the others. The defaults are
/// far above what one person's programs do (and above the benchmark's
/// figures); an admin tightens them with `serve`'s flags.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Tunnels and UDP associations open at once.
    pub open_per_device: usize,
    /// New tunnels and UDP associations per second (bursts of twice that).
    pub tunnels_per_second: u32,
    /// Peer session requests per second (bursts of twice that).
    pub peer_sessions_per_second: u32,
    /// UDP datagrams sent through the gateway per second, all associations
    /// together (bursts of twice that); more are dropped.
    pub datagrams_per_second: u32,
    /// Enrollment attempts with one code: this many at once, then one a minute.
    pub enroll_attempts_per_token: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            open_per_device: 20_000,
            tunnels_per_second: 10_000,
            peer_sessions_per_second: 2_000,
            datagrams_per_second: 200_000,
            enroll_attempts_per_token: 10,
        }
    }
}

/// A token bucket of `per_second`, bursts of twice that.
fn per_second<K: std::hash::Hash + Eq>(per_second: u32) -> RateLimit<K> {
    let per_second = per_second.max(1);
    RateLimit::new(
        per_second.saturating_mul(2),
        Duration::from_secs_f64(1.0 / f64::from(per_second)),
    )
}

/// Creates the data directory, the CA, the server certificate and
/// `gateway.toml`. Refuses to replace an existing CA.
pub fn init(dir: &DataDir, config: &GatewayConfig) -> Result<Ca, InitError> {
    // Checked before anything is written, so a bad address leaves no CA behind.
    let probe = EnrollmentCode {
        gateway: config.public_addr.clone(),
        ca_fingerprint: [0; 32],
        token_id: [0; 16],
        secret: [0; 32],
        expires_at: 0,
    };
    if probe.to_string().parse::<EnrollmentCode>().is_err() {
        return Err(InitError::PublicAddr(config.public_addr.clone()));
    }
    files::create_private_dir(dir.root()).map_err(|source| InitError::Dir {
        path: dir.root().display().to_string(),
        source,
    })?;
    let ca = Ca::generate(&config.trust_domain)?;
    if dir.ca_key().exists() {
        // Another gateway's CA: never touched, never removed.
        return Err(CaError::Exists(dir.root().display().to_string()).into());
    }
    // All or nothing: a disk that fills up half way must not leave a CA
    // without its configuration (the next `init` would refuse to overwrite it).
    let rest = ca
        .save(dir)
        .and_then(|()| ca.issue_server(dir, &config.names, &config.ips))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            config
                .save(dir)
                .map_err(|e| format!("writing {}: {e}", dir.config().display()))
        });
    if let Err(reason) = rest {
        for path in [
            dir.config(),
            dir.server_key(),
            dir.server_cert(),
            dir.ca_cert(),
            dir.ca_key(),
        ] {
            let _ = std::fs::remove_file(path);
        }
        return Err(InitError::RolledBack {
            dir: dir.root().display().to_string(),
            reason,
        });
    }
    Ok(ca)
}

/// Loads everything `serve` (and the demo) needs and binds the listener.
pub async fn start(
    dir: &DataDir,
    registry: Registry,
    options: &Options,
) -> Result<(Arc<Gateway>, TcpListener), StartError> {
    let config = GatewayConfig::load(dir)?;
    let ca = Ca::load(dir)?;
    let cache = Arc::new(Cache::default());
    cache.reload(&registry).await?;
    registry.claim_vpn_range(config.vpn_range).await?;
    crate::servercert::renew_if_due(dir, &ca, &config, clock::now())?;
    let server_cert = crate::servercert::ServerCert::load(dir)?;
    let tls = crate::tls::server_config(dir, Arc::clone(&cache), Arc::clone(&server_cert))?;
    let listen = options.listen.unwrap_or(config.listen);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
    let own = listener.local_addr().map_err(|source| StartError::Listen {
        addr: listen,
        source,
    })?;
    let mut aliases: Vec<Alias> = config
        .aliases
        .iter()
        .map(|a| a.parse().map_err(StartError::Alias))
        .collect::<Result<_, _>>()?;
    aliases.extend_from_slice(&options.aliases);
    tracing::info!(addr = %own, backend = ?registry.backend(), "gateway listening");
    let audit = crate::auditlog::AuditLog::start(registry.clone(), config.name());
    let broker = Arc::new(Broker::new(&config.vpn_domain, own, audit));
    let gw = Gateway {
        broker,
        tunnels: Default::default(),
        channels: Default::default(),
        registry,
        cache,
        ca,
        dir: dir.clone(),
        server_cert,
        dialer: Dialer::new(&aliases, own),
        config,
        tls: TlsAcceptor::from(tls),
        workers: Workers::per_cpu().map_err(StartError::Workers)?,
        // A person retrying a mistyped code is fine; a script is not.
        enroll_limit: RateLimit::new(10, Duration::from_secs(6)),
        unauthenticated: Cap::new(crate::server::UNAUTHENTICATED_PER_ADDRESS),
        refused_per_address: std::sync::atomic::AtomicU64::new(0),
        connections: Arc::new(tokio::sync::Semaphore::new(options.max_connections)),
        max_connections: options.max_connections,
        device_open: Cap::new(options.limits.open_per_device),
        device_connections: Cap::new(usize::MAX),
        region: options.region.clone(),
        lease: crate::lease::Lease::new(options.registry_lease),
        device_tunnels: per_second(options.limits.tunnels_per_second),
        device_peer_sessions: per_second(options.limits.peer_sessions_per_second),
        device_datagrams: Arc::new(per_second(options.limits.datagrams_per_second)),
        token_attempts: RateLimit::new(
            options.limits.enroll_attempts_per_token.max(1),
            Duration::from_secs(60),
        ),
        over_limit: std::sync::atomic::AtomicU64::new(0),
    };
    Ok((Arc::new(gw), listener))
}
