//! Putting a gateway together: [`init`] makes a data directory (CA, server
//! certificate, `gateway.toml`) once; [`start`] loads it, binds the listener
//! and returns a [`Gateway`] ready to [`Gateway::run`]. The binaries and the
//! demo build gateways only through these two.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shimgate_host::files;
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
    /// Who is online for peer sessions; brokers and relays them.
    pub(crate) broker: Arc<Broker>,
    /// Tunnels open now, for the console.
    pub(crate) tunnels: crate::sessions::Tunnels,
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
}

impl Default for Options {
    fn default() -> Options {
        Options {
            listen: None,
            aliases: Vec::new(),
            max_connections: crate::server::MAX_CONNECTIONS,
        }
    }
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
    let tls = crate::tls::server_config(dir, Arc::clone(&cache))?;
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
    let audit = crate::auditlog::AuditLog::start(registry.clone());
    let broker = Arc::new(Broker::new(&config.vpn_domain, own, audit));
    let gw = Gateway {
        broker,
        tunnels: Default::default(),
        registry,
        cache,
        ca,
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
    };
    Ok((Arc::new(gw), listener))
}
