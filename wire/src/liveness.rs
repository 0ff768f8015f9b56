//! Noticing a peer that vanished without closing its connection.
//!
//! A host that loses power, a cut cable or a NAT that forgot the flow sends
//! no FIN or RST: an idle TCP connection to it stays open forever, and one
//! with data in flight retransmits for about 15 minutes. Whatever is joined
//! to such a connection (a SOCKS client, a tunnel, a device's "online"
//! state at the gateway) waits as long. TCP keepalive probes an idle
//! connection; `TCP_USER_TIMEOUT` bounds how long sent data (or a probe)
//! may go unacknowledged; together they end the connection within
//! [`DEAD_PEER_TIMEOUT`] whatever it was doing.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// How long a connection may go without any sign of life from the other
/// end before the kernel ends it (with `ETIMEDOUT`).
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(20);
/// Idle seconds before the first keepalive probe, then seconds between probes.
const KEEPALIVE_IDLE: libc::c_int = 10;
const KEEPALIVE_INTERVAL: libc::c_int = 5;
const KEEPALIVE_PROBES: libc::c_int = 2;

/// Makes a vanished peer end `sock` within [`DEAD_PEER_TIMEOUT`], idle or
/// not. For long-lived connections between hosts: device ↔ gateway and
/// device ↔ device.
pub fn detect_dead_peer(sock: &impl AsRawFd) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let user_timeout = libc::c_int::try_from(DEAD_PEER_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    set(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE)?;
    set(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        KEEPALIVE_INTERVAL,
    )?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, user_timeout)
}

/// A long-lived connection between hosts as both binaries set it up: no
/// Nagle delay (control messages and handshakes are small and latency-bound),
/// and [`detect_dead_peer`]. A failure is logged, not fatal: the connection
/// still works, it just notices a vanished peer late.
pub fn prepare(sock: &tokio::net::TcpStream) {
    let _ = sock.set_nodelay(true);
    if let Err(e) = detect_dead_peer(sock) {
        tracing::debug!(error = %e, "could not set TCP keepalive / user timeout");
    }
}

fn set(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is a socket the caller holds open for the duration of the
    // call; the option value is a live c_int of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(fd: libc::c_int, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a live socket, a c_int-sized out buffer and its length.
        let r = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        value
    }

    #[test]
    fn the_kernel_takes_the_options() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        detect_dead_peer(&sock).unwrap();
        let fd = sock.as_raw_fd();
        assert_eq!(get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(
            get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            KEEPALIVE_IDLE
        );
        assert_eq!(
            get(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
            DEAD_PEER_TIMEOUT.as_millis() as libc::c_int
        );
    }
}
