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

/// From the program's socket's completion (or reset) to `up`'s answer, which
/// `up` writes first: only a wait in case it is not readable yet.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// The result of `connect()` for the program's socket `fd` of address
/// family `domain`: `Err(errno)` includes `EINPROGRESS`.
pub fn connect(config: &Config, fd: c_int, domain: c_int, to: SocketAddr) -> Result<(), c_int> {
    let hold = hold_for(config, domain).ok_or(libc::ENETUNREACH)?;
    if let Some(again) = again(fd, hold, domain) {
        return again;
    }
    let file = state::file_of(fd).ok_or(libc::EBADF)?;
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
    wait_blocking(
        fd,
        hold,
        domain,
        Flow {
            to,
            outcome: Outcome::Waiting(control),
            file,
        },
    )
}

/// A blocking `connect()` waits in the kernel's own `connect()` on the
/// socket (connecting to the hold address) until `up` completes or resets
/// it, so that signals, `SA_RESTART` and `SO_SNDTIMEO` act as on a real
/// network. Interrupted (`EINTR`, or `EINPROGRESS` when `SO_SNDTIMEO` ran
/// out), the attempt goes on, as the kernel's would: `flow` is kept, and a
/// later `connect()` or `SO_ERROR` tells how it ended.
fn wait_blocking(fd: c_int, hold: SocketAddr, domain: c_int, mut flow: Flow) -> Result<(), c_int> {
    let waited = real_connect(fd, hold, domain);
    if let Err(e @ (libc::EINTR | libc::EINPROGRESS)) = waited {
        FLOWS.insert(fd, flow);
        return Err(e);
    }
    let Outcome::Waiting(control) = std::mem::replace(&mut flow.outcome, Outcome::Settled) else {
        return waited;
    };
    // `up` answers before it completes or resets the socket; if the kernel
    // gave up first (its SYN timed out), `up` has not answered.
    let answer = control.answer(if waited.is_ok() {
        ANSWER_WAIT
    } else {
        Duration::ZERO
    });
    drop(control);
    match (answer, waited) {
        (Ok(Some(Reply::Ok)), Ok(())) => {
            FLOWS.insert(fd, flow);
            Ok(())
        }
        (Ok(Some(Reply::Refused { errno, reason })), _) => {
            FLOWS.remove(fd, fd);
            disconnect(fd);
            say::refused(&flow.to.to_string(), &reason);
            Err(refusal(errno))
        }
        (_, Err(e)) => {
            FLOWS.remove(fd, fd);
            Err(e)
        }
        _ => {
            FLOWS.remove(fd, fd);
            disconnect(fd);
            Err(libc::ECONNABORTED)
        }
    }
}

/// `connect()` again on a socket being carried: what the kernel would say
/// (`EALREADY` while connecting, `EISCONN` once connected, or the error);
/// on a blocking socket still connecting, the wait, as the kernel's.
fn again(fd: c_int, hold: SocketAddr, domain: c_int) -> Option<Result<(), c_int>> {
    let waiting = FLOWS.on(fd, |flow| match settle(flow) {
        Some(errno) => Err(Err(errno)),
        None => match flow.outcome {
            Outcome::Waiting(_) if is_blocking(fd) => Ok(Flow {
                to: flow.to,
                outcome: std::mem::replace(&mut flow.outcome, Outcome::Settled),
                file: flow.file,
            }),
            Outcome::Waiting(_) => Err(Err(libc::EALREADY)),
            _ => Err(Err(libc::EISCONN)),
        },
    })?;
    Some(match waiting {
        Ok(flow) => wait_blocking(fd, hold, domain, flow),
        Err(answer) => answer,
    })
}

fn is_blocking(fd: c_int) -> bool {
    // SAFETY: fcntl on the program's descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    flags >= 0 && flags & libc::O_NONBLOCK == 0
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
