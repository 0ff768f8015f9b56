//! UDP to VPN destinations: each (program socket, destination) gets a relay
//! from `up` on loopback; what the program sends to the destination is sent
//! to the relay instead, and what comes from the relay is shown to the
//! program as coming from the destination. A connected UDP socket is
//! connected to its relay, so `send`/`recv`/`read`/`write` on it need no
//! interception. See `proxy/src/shimudp.rs` for the other side.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use libc::{c_int, sockaddr as Sockaddr, socklen_t};

use crate::config::Config;
use crate::control::{Control, errno};
use crate::proto::{Reply, Request};
use crate::state::{Table, Tracked, file_of};
use crate::tcp::{int_option, local_addr, refusal_or};
use crate::{say, sockaddr};

/// The UDP sockets with relays.
pub static SOCKETS: Table<Datagrams> = Table::new();

/// `up` binds a socket and answers at once.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// Destinations one socket may have relays for.
const MAX_RELAYS: usize = 64;
/// A relay's connection to `up` is checked at most this often: a send
/// would otherwise pay a `poll` for it. Within it, a restarted `up`'s
/// relay port is not yet anyone else's.
const ALIVE_EVERY: Duration = Duration::from_millis(100);

struct Relay {
    /// The destination as the program names it.
    to: SocketAddr,
    relay: SocketAddr,
    /// Held open: the relay lasts as long as this connection. A duplicate
    /// descriptor's state has none (the original holds it).
    control: Option<Control>,
    /// When `control` was last seen alive.
    seen: Instant,
}

impl Relay {
    /// Whether `up` still serves it, asked of the kernel now and then.
    fn alive(&mut self) -> bool {
        let Some(control) = &self.control else {
            return false;
        };
        if self.seen.elapsed() < ALIVE_EVERY {
            return true;
        }
        let alive = control.alive();
        if alive {
            self.seen = Instant::now();
        }
        alive
    }
}

pub struct Datagrams {
    file: (u64, u64),
    /// The socket's family (`SO_DOMAIN`), read once: sends and receives
    /// need it for every relay address they write.
    family: c_int,
    relays: Vec<Relay>,
    /// Where `connect` pointed the socket, as the program named it.
    connected: Option<SocketAddr>,
}

impl Tracked for Datagrams {
    fn file(&self) -> (u64, u64) {
        self.file
    }

    fn duplicate(&self) -> Datagrams {
        Datagrams {
            file: self.file,
            family: self.family,
            relays: self
                .relays
                .iter()
                .map(|r| Relay {
                    to: r.to,
                    relay: r.relay,
                    control: None,
                    seen: r.seen,
                })
                .collect(),
            connected: self.connected,
        }
    }

    fn release(&mut self, first: c_int, last: c_int) {
        for r in &mut self.relays {
            let ours = r
                .control
                .as_ref()
                .is_some_and(|c| (first..=last).contains(&c.fd()));
            if ours && let Some(c) = r.control.take() {
                c.disown();
            }
        }
    }
}

/// Whether `fd` is a UDP socket (not, say, an ICMP "ping" socket).
pub fn is_udp(fd: c_int) -> bool {
    int_option(fd, libc::SO_TYPE) == Ok(libc::SOCK_DGRAM)
        && matches!(
            int_option(fd, libc::SO_PROTOCOL),
            Ok(libc::IPPROTO_UDP | libc::IPPROTO_UDPLITE)
        )
}

/// A UDP `connect` the kernel makes (not to a VPN destination): the socket
/// is no longer connected to a relay.
pub fn connected_elsewhere(fd: c_int) {
    SOCKETS.on(fd, |d| d.connected = None);
}

/// What a socket with state knows of `to`: its relay if it has a live one,
/// whether it has room for another, and the socket's family.
struct Cached {
    relay: Option<SocketAddr>,
    full: bool,
    family: c_int,
}

/// `fd`'s relay for `to` if it has a live one. A cached relay whose
/// connection to `up` is gone (`up` restarted, or this descriptor is a
/// duplicate whose original was closed) is dropped, to be asked for again:
/// its port may be anyone's now.
fn cached(fd: c_int, to: SocketAddr) -> Option<Cached> {
    SOCKETS.on(fd, |d| {
        let relay = match d.relays.iter().position(|r| r.to == to) {
            Some(i) if d.relays.get_mut(i).is_some_and(Relay::alive) => {
                d.relays.get(i).map(|r| r.relay)
            }
            Some(i) => {
                d.relays.remove(i);
                None
            }
            None => None,
        };
        if relay.is_none() {
            d.relays.retain_mut(Relay::alive);
        }
        Cached {
            relay,
            full: d.relays.len() >= MAX_RELAYS,
            family: d.family,
        }
    })
}

/// The relay for datagrams from `fd` to `to`, asked of `up` on first use
/// (binding the socket first if it is not bound yet).
pub fn relay_for(config: &Config, fd: c_int, to: SocketAddr) -> Result<SocketAddr, c_int> {
    match cached(fd, to) {
        Some(Cached {
            relay: Some(relay), ..
        }) => return Ok(relay),
        Some(Cached { full: true, .. }) => return Err(libc::ENOBUFS),
        _ => {}
    }
    let domain = int_option(fd, libc::SO_DOMAIN)?;
    let file = file_of(fd).ok_or(libc::EBADF)?;
    let local = bound(fd, domain)?;
    let from = match local.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(loopback(config, domain), local.port()),
        _ => local,
    };
    let request = Request::Udp {
        to: sockaddr::unmapped(to),
        from: sockaddr::unmapped(from),
    };
    let Ok(control) = Control::send(&config.socket, &request) else {
        say::refused(&to.to_string(), say::NOT_RUNNING);
        return Err(libc::ENETUNREACH);
    };
    let relay = match control.answer(ANSWER_WAIT) {
        Ok(Some(Reply::Relay(r))) => r,
        Ok(Some(Reply::Refused { errno, reason })) => {
            say::refused(&to.to_string(), &reason);
            return Err(refusal_or(errno, libc::ENETUNREACH));
        }
        _ => return Err(libc::ENETUNREACH),
    };
    let mut added = Some(Relay {
        to,
        relay,
        control: Some(control),
        seen: Instant::now(),
    });
    // Another thread may have asked for the same one meanwhile: the first
    // stays, ours closes.
    let outcome = SOCKETS.on(fd, |d| match d.relays.iter().find(|r| r.to == to) {
        Some(r) => Ok(r.relay),
        None if d.relays.len() >= MAX_RELAYS => Err(libc::ENOBUFS),
        None => {
            d.relays.extend(added.take());
            Ok(relay)
        }
    });
    match outcome {
        Some(result) => return result,
        None => SOCKETS.insert(
            fd,
            Datagrams {
                file,
                family: domain,
                relays: added.into_iter().collect(),
                connected: None,
            },
        ),
    }
    Ok(relay)
}

/// `connect()` of a UDP socket to a VPN destination: to its relay.
pub fn connect(config: &Config, fd: c_int, to: SocketAddr) -> Result<(), c_int> {
    let relay = relay_for(config, fd, to)?;
    send_to(fd, relay)?;
    SOCKETS.on(fd, |d| d.connected = Some(to));
    Ok(())
}

/// Points `fd` at `relay` with the real connect.
fn send_to(fd: c_int, relay: SocketAddr) -> Result<(), c_int> {
    let connect = crate::real::CONNECT.get().ok_or(libc::ENOSYS)?;
    let domain = int_option(fd, libc::SO_DOMAIN)?;
    let (storage, len) = sockaddr::raw(relay, domain);
    // SAFETY: a valid sockaddr of `len` bytes.
    let rc = unsafe { connect(fd, (&raw const storage).cast(), len) };
    if rc == 0 { Ok(()) } else { Err(errno()) }
}

/// Where `connect` pointed a UDP socket, as the program named it.
pub fn peer(fd: c_int) -> Option<SocketAddr> {
    SOCKETS.on(fd, |d| d.connected).flatten()
}

/// After a receive on `fd` that wrote its source to `addr`: a relay's
/// address becomes the destination it stands for.
///
/// # Safety
/// `addr` is null or holds `*len` bytes; `len` is null or valid.
/// `room` is the buffer's size as the program gave it (the kernel may have
/// set `*len` larger: the address's full size, truncated to `room`).
pub unsafe fn show_source(fd: c_int, addr: *mut Sockaddr, len: *mut socklen_t, room: socklen_t) {
    if addr.is_null() || len.is_null() || SOCKETS.is_empty() {
        return;
    }
    // SAFETY: the kernel wrote min(room, *len) bytes of the source there.
    let Some(from) = (unsafe { sockaddr::read(addr, room.min(*len)) }) else {
        return;
    };
    let from = sockaddr::unmapped(from);
    let Some((Some(to), family)) = SOCKETS.on(fd, |d| {
        let to = d.relays.iter().find(|r| r.relay == from).map(|r| r.to);
        (to, d.family)
    }) else {
        return;
    };
    // SAFETY: the program's buffer of `room` bytes; write() copies no more
    // than *len says on entry, and sets it to the full size.
    unsafe {
        *len = room;
        sockaddr::write(to, family, addr, len);
    }
}

/// The address to send to in place of `to`, if `to` is a VPN destination
/// and `fd` a UDP socket: its relay, as a sockaddr of the socket's family.
pub fn redirect(
    config: &Config,
    fd: c_int,
    to: SocketAddr,
) -> Option<Result<(libc::sockaddr_storage, socklen_t), c_int>> {
    if !config.split.covers(to.ip()) {
        return None;
    }
    // The common case, a destination this socket sent to before: only UDP
    // sockets have state, and it holds the family.
    if let Some(Cached {
        relay: Some(relay),
        family,
        ..
    }) = cached(fd, to)
    {
        return Some(Ok(sockaddr::raw(relay, family)));
    }
    if !is_udp(fd) {
        return None;
    }
    let family = match int_option(fd, libc::SO_DOMAIN) {
        Ok(f) => f,
        Err(e) => return Some(Err(e)),
    };
    // An IPv6 destination from an IPv4 socket is the kernel's to refuse.
    if to.is_ipv6() && family == libc::AF_INET {
        return None;
    }
    Some(relay_for(config, fd, to).map(|relay| sockaddr::raw(relay, family)))
}

/// The socket's local address, binding it to the wildcard first if it is
/// not bound (as its first send would).
fn bound(fd: c_int, domain: c_int) -> Result<SocketAddr, c_int> {
    let local = local_addr(fd)?;
    if local.port() != 0 {
        return Ok(local);
    }
    let any = match domain {
        libc::AF_INET6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    };
    let (storage, len) = sockaddr::raw(any, domain);
    // SAFETY: bind with a valid sockaddr (bind is not one we export).
    if unsafe { libc::bind(fd, (&raw const storage).cast(), len) } != 0 {
        return Err(errno());
    }
    local_addr(fd)
}

/// Where up's relay will see the socket's datagrams come from: loopback
/// of the family the socket sends to the relay in (IPv6 sockets use ::1
/// where `up`'s host has it).
fn loopback(config: &Config, domain: c_int) -> IpAddr {
    let v6 = config.split.hold.iter().any(SocketAddr::is_ipv6);
    match domain {
        libc::AF_INET6 if v6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}
