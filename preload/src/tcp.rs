//! TCP `connect()` to a VPN destination, with the far end's true answer.
//!
//! The program's own socket is what ends up connected, to `up`: first it
//! is pointed at `up`'s hold address, where a socket filter drops every SYN
//! (so it sits in SYN_SENT: not writable, no error, as while a real far end
//! is being reached); `up` dials through the gateway and, once the far end
//! has answered, connects to the program's socket from the hold address (a
//! TCP simultaneous open), which completes its handshake. Readiness
//! (poll, select, epoll in either mode) is the kernel's own. A refusal is
//! written on the request's connection before `up` ends the socket, and
//! `getsockopt(SO_ERROR)` or a second `connect()` hands the program that
//! errno. See ARCHITECTURE.md, "The socket shim".

use std::net::SocketAddr;
use std::time::Duration;

use libc::c_int;

use crate::config::Config;
use crate::control::{Control, errno};
use crate::proto::{Reply, Request};
use crate::state::{self, Table, Tracked};
use crate::{real, say, sockaddr};

/// The TCP sockets being carried.
pub static FLOWS: Table<Flow> = Table::new();

pub enum Outcome {
    /// `up` is still dialling; its answer will come on this connection.
    Waiting(Control),
    /// Connected (or the error was handed over): nothing more to tell.
    Settled,
    /// Refused with this errno, not yet handed to the program.
    Failed(c_int),
}

pub struct Flow {
    /// The address the program connected to (a fake one for a VPN name).
    pub to: SocketAddr,
    pub outcome: Outcome,
    file: (u64, u64),
}

impl Tracked for Flow {
    fn file(&self) -> (u64, u64) {
        self.file
    }

    /// Same destination, already settled (the answer, if any, stays with
    /// the original).
    fn duplicate(&self) -> Flow {
        Flow {
            to: self.to,
            outcome: Outcome::Settled,
            file: self.file,
        }
    }

    fn release(&mut self, first: c_int, last: c_int) {
        let ours = matches!(&self.outcome, Outcome::Waiting(c) if (first..=last).contains(&c.fd()));
        if ours
            && let Outcome::Waiting(c) =
                std::mem::replace(&mut self.outcome, Outcome::Failed(libc::ECONNABORTED))
        {
            c.disown();
        }
    }
}

/// How long a blocking `connect()` waits for `up` (which gives up on the
/// far end sooner).
const BLOCKING_WAIT: Duration = Duration::from_secs(120);
/// From `up`'s "ok" to the handshake it then makes on loopback.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// The result of `connect()` for the program's socket `fd` of address
/// family `domain`: `Err(errno)` includes `EINPROGRESS`.
pub fn connect(config: &Config, fd: c_int, domain: c_int, to: SocketAddr) -> Result<(), c_int> {
    if let Some(again) = again(fd) {
        return again;
    }
    let file = state::file_of(fd).ok_or(libc::EBADF)?;
    let hold = hold_for(config, domain).ok_or(libc::ENETUNREACH)?;
    // SAFETY: fcntl on the program's descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(errno());
    }
    let blocking = flags & libc::O_NONBLOCK == 0;
    let restore = || {
        if blocking {
            // SAFETY: as above, putting back the program's own flags.
            unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
        }
    };
    if blocking {
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    }
    let started = real_connect(fd, hold, domain);
    if started != Err(libc::EINPROGRESS) {
        restore();
        // Already connected, already connecting, a bad descriptor: what
        // the kernel said is the program's answer.
        return Err(started.err().unwrap_or(libc::ECONNABORTED));
    }
    let from = match local_addr(fd) {
        Ok(a) => a,
        Err(e) => {
            disconnect(fd);
            restore();
            return Err(e);
        }
    };
    let request = Request::Connect {
        to: sockaddr::unmapped(to),
        from: sockaddr::unmapped(from),
    };
    let control = match Control::send(&config.socket, &request) {
        Ok(c) => c,
        Err(_) => {
            disconnect(fd);
            restore();
            say::refused(&to.to_string(), say::NOT_RUNNING);
            return Err(libc::ECONNREFUSED);
        }
    };
    if !blocking {
        FLOWS.insert(
            fd,
            Flow {
                to,
                outcome: Outcome::Waiting(control),
                file,
            },
        );
        return Err(libc::EINPROGRESS);
    }
    restore();
    let answer = control.answer(BLOCKING_WAIT);
    drop(control);
    match answer {
        Ok(Some(Reply::Ok)) => {
            FLOWS.insert(
                fd,
                Flow {
                    to,
                    outcome: Outcome::Settled,
                    file,
                },
            );
            wait_connected(fd)
        }
        Ok(Some(Reply::Refused { errno, reason })) => {
            disconnect(fd);
            say::refused(&to.to_string(), &reason);
            Err(refusal(errno))
        }
        _ => {
            disconnect(fd);
            Err(libc::ECONNABORTED)
        }
    }
}

/// `connect()` again on a socket being carried: what the kernel would say
/// (`EALREADY` while connecting, `EISCONN` once connected, or the error).
fn again(fd: c_int) -> Option<Result<(), c_int>> {
    FLOWS.on(fd, |flow| match settle(flow) {
        Some(errno) => Err(errno),
        None => match flow.outcome {
            Outcome::Waiting(_) => Err(libc::EALREADY),
            _ => Err(libc::EISCONN),
        },
    })
}

/// The error `getsockopt(SO_ERROR)` reports for a carried socket, in place
/// of the kernel's, if `up` has refused it.
pub fn pending_error(fd: c_int) -> Option<c_int> {
    FLOWS.on(fd, settle).flatten()
}

/// Takes `up`'s answer if it has come; returns a refusal's errno once.
fn settle(flow: &mut Flow) -> Option<c_int> {
    if let Outcome::Waiting(control) = &flow.outcome {
        flow.outcome = match control.answer(Duration::ZERO) {
            Ok(None) => return None,
            Ok(Some(Reply::Ok)) => Outcome::Settled,
            Ok(Some(Reply::Refused { errno, reason })) => {
                say::refused(&flow.to.to_string(), &reason);
                Outcome::Failed(refusal(errno))
            }
            _ => Outcome::Failed(libc::ECONNABORTED),
        };
    }
    match flow.outcome {
        Outcome::Failed(errno) => {
            flow.outcome = Outcome::Settled;
            Some(errno)
        }
        _ => None,
    }
}

/// A refusal's errno as `up` sent it, if it is one (`0` would read as
/// success); otherwise `ECONNREFUSED`.
fn refusal(errno: c_int) -> c_int {
    refusal_or(errno, libc::ECONNREFUSED)
}

/// `errno` as `up` sent it, if it is one; otherwise `fallback`.
pub fn refusal_or(errno: c_int, fallback: c_int) -> c_int {
    if (1..4096).contains(&errno) {
        errno
    } else {
        fallback
    }
}

/// Where the program's socket waits: the hold address of its family (an
/// IPv6 socket without an IPv6 one uses the IPv4 one, v4-mapped).
fn hold_for(config: &Config, domain: c_int) -> Option<SocketAddr> {
    let holds = &config.split.hold;
    match domain {
        libc::AF_INET => holds.iter().find(|h| h.is_ipv4()).copied(),
        libc::AF_INET6 => holds
            .iter()
            .find(|h| h.is_ipv6())
            .or_else(|| holds.first())
            .copied(),
        _ => None,
    }
}

fn real_connect(fd: c_int, to: SocketAddr, domain: c_int) -> Result<(), c_int> {
    let connect = real::CONNECT.get().ok_or(libc::ENOSYS)?;
    let (storage, len) = sockaddr::raw(to, domain);
    // SAFETY: a valid sockaddr of `len` bytes.
    let rc = unsafe { connect(fd, (&raw const storage).cast(), len) };
    if rc == 0 { Ok(()) } else { Err(errno()) }
}

/// Ends a connection attempt (connect to AF_UNSPEC), leaving the socket
/// as a fresh one, as after a failed connect.
fn disconnect(fd: c_int) {
    // SAFETY: all-zero is a valid sockaddr; AF_UNSPEC is 0.
    let unspec: libc::sockaddr = unsafe { std::mem::zeroed() };
    if let Some(connect) = real::CONNECT.get() {
        // SAFETY: a valid sockaddr of its own size.
        unsafe {
            connect(
                fd,
                &unspec,
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        };
    }
}

/// The socket's local address.
pub fn local_addr(fd: c_int) -> Result<SocketAddr, c_int> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: a buffer of `len` bytes (getsockname is not one we export).
    let rc = unsafe { libc::getsockname(fd, (&raw mut storage).cast(), &mut len) };
    if rc != 0 {
        return Err(errno());
    }
    // SAFETY: the kernel wrote `len` bytes of a sockaddr of this family.
    unsafe { sockaddr::read((&raw const storage).cast(), len) }.ok_or(libc::EINVAL)
}

/// An int socket option, read with the real getsockopt.
pub fn int_option(fd: c_int, name: c_int) -> Result<c_int, c_int> {
    let getsockopt = real::GETSOCKOPT.get().ok_or(libc::ENOSYS)?;
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: an int-sized buffer.
    let rc = unsafe {
        getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 { Ok(value) } else { Err(errno()) }
}

/// A blocking connect returns once the handshake `up` makes is done.
fn wait_connected(fd: c_int) -> Result<(), c_int> {
    let deadline = std::time::Instant::now() + HANDSHAKE_WAIT;
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = c_int::try_from(left.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 && errno() == libc::EINTR {
            continue;
        }
        if ready <= 0 {
            return Err(libc::ETIMEDOUT);
        }
        return match int_option(fd, libc::SO_ERROR)? {
            0 => Ok(()),
            e => Err(e),
        };
    }
}
