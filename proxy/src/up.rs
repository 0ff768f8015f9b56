//! `shimgate up`: the SOCKS5 proxy and the socket shim's socket, the
//! gateway pool that carries their tunnels, certificate renewal, the PAC
//! file's routes, and the status file, until stopped.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{ConfigDir, DeviceConfig};
use crate::listener::{PeerListener, shared_listener};
use crate::pac::{self, Pac};
use crate::peer::Peers;
use crate::pool::{Connector, Pool};
use crate::socks::{self, Credentials};
use crate::status::{Board, Status};
use crate::tls;
use shimgate_host::workers::Workers;

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] shimgate_wire::pki::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "refusing to serve SOCKS on {0} without authentication: anyone who can reach it would be on the VPN. Set socks_user and socks_password (or --socks-user/--socks-password), or listen on 127.0.0.1"
    )]
    OpenProxy(SocketAddr),
    #[error("cannot listen for peers on {addr}: {source} (set peer_listen in config.toml)")]
    PeerListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Shim(#[from] crate::shim::ShimError),
    #[error("starting worker threads: {0}")]
    Workers(std::io::Error),
    #[error(transparent)]
    Tun(#[from] crate::tun::TunError),
}

/// The peer side: the listener other devices connect to (open while this
/// device exports something), the control stream that announces it, and
/// `peers.json`.
fn start_peers(
    dir: &ConfigDir,
    config: &DeviceConfig,
    pool: &Arc<Pool>,
    board: &Arc<Board>,
    pac: &Arc<Pac>,
    stop: &CancellationToken,
) -> Result<Arc<Peers>, UpError> {
    let (peers, reports) = Peers::new(
        &config.device,
        &config.vpn_domain,
        config.vpn_range,
        config.export_ports(),
    );
    let listener = PeerListener::new(
        config.peer_listen,
        config.peer_advertise.clone(),
        Arc::clone(&peers),
        Arc::clone(pool),
        Arc::clone(board),
        stop.clone(),
    );
    listener
        .follow_exports()
        .map_err(|source| UpError::PeerListen {
            addr: config.peer_listen,
            source,
        })?;
    tokio::spawn(crate::control::keep(
        Arc::clone(&peers),
        Arc::clone(pool),
        Arc::clone(pac),
        dir.clone(),
        listener,
        reports,
        stop.clone(),
    ));
    tokio::spawn(Arc::clone(&peers).publish(dir.clone(), stop.clone()));
    Ok(peers)
}

/// A running proxy: the address SOCKS clients use, and its status.
pub struct Running {
    pub socks: SocketAddr,
    pub board: Arc<Board>,
    /// TUN mode, when on: dropping it undoes its DNS wiring.
    pub tun: Option<crate::tun::Running>,
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
    // A plain bind first: the shared (SO_REUSEPORT) listeners below would
    // otherwise quietly share a port another proxy already holds.
    let listen_error = |source| UpError::Listen {
        addr: config.listen,
        source,
    };
    let socks = std::net::TcpListener::bind(config.listen)
        .and_then(|l| l.local_addr())
        .map_err(listen_error)?;
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
            since: shimgate_host::clock::now(),
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
    let pac = Pac::new(&config.vpn_domain, config.vpn_range, socks);
    tokio::spawn(Arc::clone(&pac).keep_fresh(Arc::clone(&pool), stop.clone()));
    let peers = start_peers(dir, config, &pool, &board, &pac, &stop)?;
    tokio::spawn(crate::renew::keep_renewed(
        dir.clone(),
        Arc::clone(&pool),
        stop.clone(),
    ));
    let shim = Arc::new(crate::shim::Shim {
        pool: Arc::clone(&pool),
        peers: Arc::clone(&peers),
        pac: Arc::clone(&pac),
        fake: crate::fakeaddr::FakeMap::load(&dir.fake_addresses())
            .map_err(crate::shim::ShimError::from)?,
        hold: crate::hold::Hold::open().map_err(crate::shim::ShimError::from)?,
        board: Arc::clone(&board),
        counts: crate::shim::Counts::default(),
        new_names: crate::shim::NewNames::default(),
    });
    crate::shim::start(dir.shim_socket(), Arc::clone(&shim), stop.clone())?;
    let mut tun = None;
    if config.tun {
        let settings = crate::tun::TunSettings {
            name: config.tun_name.clone(),
            allow_overlap: config.tun_allow_overlap,
            dns: config.tun_dns,
            resolv_backup: dir.resolv_backup(),
        };
        tun = Some(
            crate::tun::start(
                &settings,
                config,
                Arc::clone(&shim),
                Arc::clone(&board),
                stop.clone(),
            )
            .await?,
        );
    }
    // One listener per worker: a SOCKS client is accepted and served on the
    // same thread as the gateway connection that carries its tunnel.
    for worker in 0..pool.workers() {
        let (ready, bound) = tokio::sync::oneshot::channel();
        let (pool2, auth, stop) = (Arc::clone(&pool), auth.clone(), stop.clone());
        let (peers, pac) = (Arc::clone(&peers), Arc::clone(&pac));
        pool.spawn_on(worker, async move {
            match shared_listener(socks) {
                Ok(listener) => {
                    let _ = ready.send(Ok(()));
                    socks::serve(listener, pool2, peers, worker, auth, pac, stop).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        });
        bound
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("worker thread stopped")))
            .map_err(listen_error)?;
    }
    tracing::info!(addr = %socks, pac = %pac::url(socks), gateway = %config.gateway, device = %config.device, "socks5 listening");
    Ok(Running { socks, board, tun })
}
