//! The hold address: where the socket shim points a program's socket while
//! `up` opens the way to its destination, and from where `up` then
//! completes it.
//!
//! The hold listener has a socket filter that drops every packet, so a
//! program's SYN to it is never answered: its socket waits in SYN_SENT,
//! neither writable nor failed, as while a real far end is being reached.
//! Where the kernel wants CAP_NET_ADMIN for a socket filter (some do, even
//! for classic BPF), the listener's accept queue is kept full instead: a
//! backlog of 0 and one connection of `up`'s own that is never accepted, so
//! the kernel drops every SYN there, as on any listener whose queue is full.
//! Once the far end has answered, `up` binds another socket to the hold
//! address (SO_REUSEPORT, as the listener) and connects to the program's
//! socket: the two SYNs cross (a TCP simultaneous open, RFC 9293 §3.5), the
//! program's socket becomes connected to `up`, and the program's event loop
//! sees it turn writable as for any connection. A refusal ends it with a
//! reset instead.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The program's side answers our SYN at once (it is on this host).
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Hold {
    /// Held open for their addresses; nothing is ever accepted.
    _listeners: Vec<Held>,
    addrs: Vec<SocketAddr>,
}

/// One hold listener, and what keeps SYNs to it unanswered.
struct Held {
    listener: TcpListener,
    /// With no socket filter: the connection that fills the accept queue.
    _filler: Option<std::net::TcpStream>,
}

/// How a hold listener leaves SYNs unanswered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Drops {
    /// A socket filter where this process may attach one, else a full queue.
    Filter,
    /// A full accept queue.
    FullQueue,
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("cannot open the socket shim's hold address: {0}")]
    Open(std::io::Error),
    #[error("{0} is not a loopback address: refusing to connect there from the hold address")]
    NotLoopback(SocketAddr),
    #[error("completing the program's connection from the hold address: {0}")]
    Complete(std::io::Error),
}

impl Hold {
    /// Listens on 127.0.0.1 and, where the host has it, [::1].
    pub fn open() -> Result<Hold, HoldError> {
        Hold::open_with(Drops::Filter)
    }

    fn open_with(drops: Drops) -> Result<Hold, HoldError> {
        let v4 = listen(IpAddr::V4(Ipv4Addr::LOCALHOST), drops).map_err(HoldError::Open)?;
        let mut listeners = vec![v4];
        if let Ok(v6) = listen(IpAddr::V6(Ipv6Addr::LOCALHOST), drops) {
            listeners.push(v6);
        }
        let addrs = listeners
            .iter()
            .map(|h| h.listener.local_addr())
            .collect::<Result<_, _>>()
            .map_err(HoldError::Open)?;
        Ok(Hold {
            _listeners: listeners,
            addrs,
        })
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A socket bound to the hold address of `program`'s family, to
    /// complete the program's socket at `program` (waiting in SYN_SENT).
    /// Made while the way to the destination opens, so that once the far
    /// end has answered only the connect is left.
    pub fn prepare(&self, program: SocketAddr) -> Result<Completion, HoldError> {
        if !program.ip().is_loopback() {
            return Err(HoldError::NotLoopback(program));
        }
        let hold = self
            .addrs
            .iter()
            .find(|a| a.is_ipv4() == program.is_ipv4())
            .ok_or(HoldError::NotLoopback(program))?;
        let sock = Socket::new(
            Domain::for_address(*hold),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )
        .map_err(HoldError::Complete)?;
        sock.set_reuse_port(true).map_err(HoldError::Complete)?;
        sock.bind(&(*hold).into()).map_err(HoldError::Complete)?;
        Ok(Completion { sock, program })
    }
}

/// One program's connection, about to be completed from the hold address.
pub struct Completion {
    sock: Socket,
    program: SocketAddr,
}

impl Completion {
    /// Connects to the program's socket and returns `up`'s end of it.
    pub async fn connect(self) -> Result<TcpStream, HoldError> {
        match self.sock.connect(&self.program.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(HoldError::Complete(e)),
        }
        let stream = TcpStream::from_std(std::net::TcpStream::from(self.sock))
            .map_err(HoldError::Complete)?;
        // On loopback both handshakes are usually over when connect returns:
        // asking the kernel spares a turn of the event loop.
        if !writable_now(&stream) {
            tokio::time::timeout(COMPLETE_TIMEOUT, stream.writable())
                .await
                .map_err(|_| HoldError::Complete(std::io::ErrorKind::TimedOut.into()))?
                .map_err(HoldError::Complete)?;
        }
        if let Some(e) = stream.take_error().map_err(HoldError::Complete)? {
            return Err(HoldError::Complete(e));
        }
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Ends the program's connection attempt with a reset (it has already
    /// been told why on the shim socket).
    pub async fn reset(self) {
        if let Ok(stream) = self.connect().await {
            let _ = stream.set_zero_linger();
        }
    }
}

/// Whether `stream` is writable (or failed) now, without waiting.
fn writable_now(stream: &TcpStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    ready > 0
}

/// A listener on `ip` that never answers a SYN.
fn listen(ip: IpAddr, drops: Drops) -> std::io::Result<Held> {
    let sock = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.set_reuseport(true)?;
    // The filter goes on before the socket listens, so that no SYN is answered in between.
    let drops = match drops {
        Drops::Filter => match drop_all_packets(&sock) {
            Ok(()) => Drops::Filter,
            Err(e) => {
                tracing::debug!(%ip, error = %e, "no socket filter on the hold listener: its accept queue is kept full instead");
                Drops::FullQueue
            }
        },
        Drops::FullQueue => Drops::FullQueue,
    };
    sock.bind(SocketAddr::new(ip, 0))?;
    match drops {
        Drops::Filter => Ok(Held {
            listener: sock.listen(16)?,
            _filler: None,
        }),
        Drops::FullQueue => {
            let listener = sock.listen(0)?;
            // On loopback, to a listener with room for one: done at once.
            let filler = std::net::TcpStream::connect(listener.local_addr()?)?;
            Ok(Held {
                listener,
                _filler: Some(filler),
            })
        }
    }
}

/// Attaches a classic BPF program of one instruction, `ret #0`: keep no
/// byte of any packet. Needs no privilege.
pub fn drop_all_packets(sock: &impl AsRawFd) -> std::io::Result<()> {
    let mut filter = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: setsockopt with a valid sock_fprog that outlives the call
    // (the kernel copies the program).
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program's socket connecting to the hold address stays unanswered
    /// (not writable, no error) until `up` completes it; then it is
    /// connected to the hold address.
    async fn holds_then_completes(drops: Drops) {
        let hold = Hold::open_with(drops).expect("open the hold address");
        let to = hold.addrs()[0];
        let program = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None)
            .expect("the program's socket");
        match program.connect(&to.into()) {
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            other => panic!("{drops:?}: connect to the hold address: {other:?}"),
        }
        let mut pfd = libc::pollfd {
            fd: program.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, 300) };
        assert_eq!(
            ready, 0,
            "{drops:?}: the SYN was answered (revents {:#x})",
            pfd.revents
        );
        let from = program
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("the program's address");
        let ours = hold
            .prepare(from)
            .expect("prepare")
            .connect()
            .await
            .expect("complete the program's socket");
        assert_eq!(ours.peer_addr().ok(), Some(from));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
        assert_eq!(
            program.take_error().ok().flatten().map(|e| e.to_string()),
            None
        );
        let peer = program.peer_addr().ok().and_then(|a| a.as_socket());
        assert_eq!(peer, Some(to), "{drops:?}: connected to the hold address");
    }

    #[tokio::test]
    async fn a_socket_filter_holds_a_syn_until_completed() {
        holds_then_completes(Drops::Filter).await;
    }

    /// What `up` falls back to where a socket filter needs CAP_NET_ADMIN.
    #[tokio::test]
    async fn a_full_queue_holds_a_syn_until_completed() {
        holds_then_completes(Drops::FullQueue).await;
    }
}
