//! `shimgate up`: the SOCKS5 proxy, the gateway pool that carries its
//! tunnels, certificate renewal, and the status file, until stopped.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigDir, DeviceConfig};
use crate::pool::{Connector, Pool};
use crate::socks::{self, Credentials};
use crate::status::{Board, Status};
use crate::tls;
use shimgate_wire::workers::Workers;

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "refusing to serve SOCKS on {0} without authentication: anyone who can reach it would be on the VPN. Set socks_user and socks_password (or --socks-user/--socks-password), or listen on 127.0.0.1"
    )]
    OpenProxy(SocketAddr),
    #[error("starting worker threads: {0}")]
    Workers(std::io::Error),
}

/// A running proxy: the address SOCKS clients use, and its status.
pub struct Running {
    pub socks: SocketAddr,
    pub board: Arc<Board>,
}

/// Starts everything and returns once the SOCKS port is bound; the work
/// goes on in tasks until `stop` fires.
pub async fn start(
    dir: &ConfigDir,
    config: &DeviceConfig,
    stop: CancellationToken,
) -> Result<Running, UpError> {
    let auth = match (&config.socks_user, &config.socks_password) {
        (Some(user), Some(password)) => Some(Credentials {
            user: user.clone(),
            password: password.clone(),
        }),
        _ => None,
    };
    if auth.is_none() && !config.listen.ip().is_loopback() {
        return Err(UpError::OpenProxy(config.listen));
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| UpError::Listen {
            addr: config.listen,
            source,
        })?;
    let socks = listener.local_addr().map_err(|source| UpError::Listen {
        addr: config.listen,
        source,
    })?;
    let board = Arc::new(Board::new(
        dir.clone(),
        Status {
            pid: std::process::id(),
            device: config.device.clone(),
            user: config.user.clone(),
            vpn_ip: config.vpn_ip.clone(),
            gateway: config.gateway.clone(),
            socks: socks.to_string(),
            pool: config.pool.max(1),
            since: shimgate_wire::clock::now(),
            ..Status::default()
        },
    ));
    let connector = Arc::new(Connector::new(
        config.gateway.clone(),
        tls::server_name(&config.server_name)?,
        tls::device(dir)?,
    ));
    let workers = Workers::per_cpu().map_err(UpError::Workers)?;
    let pool = Pool::new(connector, config.pool, Arc::clone(&board), workers);
    pool.keep_up(stop.clone());
    tokio::spawn(crate::renew::keep_renewed(
        dir.clone(),
        Arc::clone(&pool),
        stop.clone(),
    ));
    tracing::info!(addr = %socks, gateway = %config.gateway, device = %config.device, "socks5 listening");
    tokio::spawn(socks::serve(listener, pool, auth, stop));
    Ok(Running { socks, board })
}
