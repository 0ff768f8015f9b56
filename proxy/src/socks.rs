//! The SOCKS5 server: the shim between programs and the VPN.
//!
//! Each CONNECT becomes a tunnel through the gateway (the name is resolved
//! by the gateway, socks5h-style, even when the client sent an address);
//! the gateway's answer becomes the SOCKS reply code. UDP ASSOCIATE is
//! [`crate::udp`]'s; BIND is answered "command not supported", never left
//! hanging.
//! An HTTP `GET` on the same port gets the PAC file ([`crate::pac`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fast_socks5::server::Socks5ServerProtocol;
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{ReplyError, Socks5Command};
use sha2::{Digest, Sha256};
use shimgate_wire::dest::{DestError, Destination, Host};
use shimgate_wire::origin::Origin;
use shimgate_wire::tunnel::TunnelError;
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::pac::Pac;
use crate::peer::Peers;
use crate::pool::Pool;

/// A SOCKS client has this long to say what it wants.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Username/password a SOCKS client must present (RFC 1929).
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    /// Constant time, lengths included (both sides are hashed first).
    fn check(&self, user: &str, password: &str) -> bool {
        let digest = |s: &str| -> [u8; 32] { Sha256::digest(s.as_bytes()).into() };
        let u = digest(&self.user).ct_eq(&digest(user));
        let p = digest(&self.password).ct_eq(&digest(password));
        bool::from(u & p)
    }
}

/// The reply fast-socks5 sends for `e` (the code is [`TunnelError::socks_reply`]).
pub(crate) fn reply_for(e: TunnelError) -> ReplyError {
    ReplyError::from_u8(e.socks_reply())
}

/// Where a SOCKS request goes. A SOCKS domain is any 1–255 bytes: only a
/// host name or an IP address in text passes (`evil@intranet.internal` once
/// reached the gateway as `intranet.internal`, found by the `socks5` fuzz
/// target), with the rule the gateway applies.
pub fn destination(target: &TargetAddr) -> Result<Destination, DestError> {
    match target {
        TargetAddr::Ip(addr) => Destination::from_addr(*addr),
        TargetAddr::Domain(name, port) => Destination::new(Host::parse(name)?, *port),
    }
}

/// Accepts SOCKS clients on `listener` (one of several sharing the port,
/// one per worker) and serves each on this worker, on one of its slots.
pub async fn serve(
    listener: TcpListener,
    pool: Arc<Pool>,
    peers: Arc<Peers>,
    worker: usize,
    auth: Option<Credentials>,
    pac: Arc<Pac>,
    stop: CancellationToken,
) {
    crate::listener::accept_until(
        "socks",
        &stop,
        || listener.accept(),
        |(sock, peer)| {
            let slot = pool.pick_for(worker);
            let auth = auth.clone();
            let pool = Arc::clone(&pool);
            let peers = Arc::clone(&peers);
            let pac = Arc::clone(&pac);
            tokio::spawn(async move {
                if let Err(e) = handle(sock, peer, pool, peers, slot, auth, &pac).await {
                    tracing::debug!(%peer, error = %e, "socks connection ended with an error");
                }
            });
        },
    )
    .await;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SocksError {
    #[error(transparent)]
    Protocol(#[from] fast_socks5::server::SocksServerError),
    #[error("client too slow to send its request")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Serves one SOCKS client through pool slot `slot`, or a browser asking
/// for the PAC file.
async fn handle(
    sock: TcpStream,
    peer: SocketAddr,
    pool: Arc<Pool>,
    peers: Arc<Peers>,
    slot: usize,
    auth: Option<Credentials>,
    pac: &Pac,
) -> Result<(), SocksError> {
    let _ = sock.set_nodelay(true);
    let local = sock.local_addr()?;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    // SOCKS5 starts with its version byte, 0x05; `G` is an HTTP GET.
    let mut first = [0u8; 1];
    tokio::time::timeout_at(deadline, sock.peek(&mut first))
        .await
        .map_err(|_| SocksError::Timeout)??;
    if first == *b"G" {
        return Ok(pac.answer(sock, peer).await?);
    }
    let request = async {
        let proto = match &auth {
            None => Socks5ServerProtocol::accept_no_auth(sock).await?,
            Some(c) => {
                Socks5ServerProtocol::accept_password_auth(sock, |u, p| c.check(&u, &p))
                    .await?
                    .0
            }
        };
        proto.read_command().await
    };
    let (proto, command, target) = tokio::time::timeout_at(deadline, request)
        .await
        .map_err(|_| SocksError::Timeout)??;
    match command {
        Socks5Command::TCPConnect => {}
        Socks5Command::UDPAssociate => {
            return crate::udp::associate(proto, local, peer, &target, &pool, &peers, slot).await;
        }
        Socks5Command::TCPBind => {
            proto.reply_error(&ReplyError::CommandNotSupported).await?;
            return Ok(());
        }
    }
    let dest = match destination(&target) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(?target, reason = %e, "refused");
            proto.reply_error(&reply_for(e.into())).await?;
            return Ok(());
        }
    };
    match crate::flow::open(&pool, &peers, slot, &dest, &Origin::SOCKS).await {
        Ok(way) => {
            // The reply is at most 22 bytes on a fresh socket, so the single
            // write() fast-socks5 does cannot come up short.
            let sock = proto.reply_success(way.bound()).await?;
            way.carry(sock, &peers).await;
        }
        Err(e) => proto.reply_error(&reply_for(e)).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tunnel_error_maps_to_its_socks_code() {
        for e in TunnelError::ALL {
            assert_eq!(reply_for(e).as_u8(), e.socks_reply(), "{e}");
        }
    }

    /// Regression (fuzz target `socks5`): a domain with userinfo, a path,
    /// a query, a fragment, a port, spaces or nothing at all is refused
    /// instead of reaching the gateway as some other host; an IPv6 address
    /// sent as a domain is an address.
    #[test]
    fn socks_destinations() {
        let dest = |t: TargetAddr| destination(&t).map(|d| d.to_string());
        assert_eq!(
            dest(TargetAddr::Ip("[2001:db8::1]:443".parse().unwrap())).unwrap(),
            "[2001:db8::1]:443"
        );
        assert_eq!(
            dest(TargetAddr::Domain("2001:db8::1".into(), 22)).unwrap(),
            "[2001:db8::1]:22"
        );
        assert_eq!(
            dest(TargetAddr::Domain("Intranet.Internal.".into(), 80)).unwrap(),
            "intranet.internal:80"
        );
        for bad in [
            "bo@b.avpn.intern",
            "evil@intranet.internal",
            "intranet.internal/x",
            "a?b",
            "a#b",
            "a:1",
            "a b",
            "",
            "[::1]",
            "bob.vpn.internal\0",
        ] {
            assert!(dest(TargetAddr::Domain(bad.into(), 80)).is_err(), "{bad:?}");
        }
        assert!(dest(TargetAddr::Ip("192.0.2.1:0".parse().unwrap())).is_err());
    }

    #[test]
    fn credentials() {
        let c = Credentials {
            user: "u".into(),
            password: "p".into(),
        };
        assert!(c.check("u", "p"));
        assert!(!c.check("u", "x"));
        assert!(!c.check("", ""));
    }
}
