//! One request to `shimgate up` on its shim socket: a fresh Unix connection
//! per request, closed with the C library's own `close` (never ours: the
//! descriptor table's lock may be held when one is dropped).

use std::ffi::CStr;
use std::time::Duration;

use libc::c_int;

use crate::proto::{MAX_LINE, Reply, Request};
use crate::real;

/// An open connection to `up`, waiting for its answer.
pub struct Control {
    fd: c_int,
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(close) = real::CLOSE.get() {
            // SAFETY: our own descriptor, closed once.
            unsafe { close(self.fd) };
        }
    }
}

impl Control {
    pub fn fd(&self) -> c_int {
        self.fd
    }

    /// Whether `up` still holds the other end (it never writes after its
    /// answer, so anything readable is the end).
    pub fn alive(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        ready == 0
    }

    /// Lets go of the descriptor without closing it: the program closed it
    /// behind our back and its number may already be the program's again.
    pub fn disown(self) {
        std::mem::forget(self);
    }
}

/// Why `up` could not be asked.
pub struct Unreachable;

impl Control {
    /// Connects to `socket` and sends `request`.
    pub fn send(socket: &CStr, request: &Request) -> Result<Control, Unreachable> {
        let connect = real::CONNECT.get().ok_or(Unreachable)?;
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Unreachable);
        }
        let control = Control { fd };
        // SAFETY: all-zero is a valid sockaddr_un.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.to_bytes();
        if path.len() >= addr.sun_path.len() {
            return Err(Unreachable);
        }
        for (dst, src) in addr.sun_path.iter_mut().zip(path) {
            *dst = *src as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
        // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
        let rc = unsafe {
            connect(
                fd,
                (&raw const addr).cast::<libc::sockaddr>(),
                len as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Unreachable);
        }
        control.write_all(request.encode().as_bytes())?;
        Ok(control)
    }

    fn write_all(&self, mut data: &[u8]) -> Result<(), Unreachable> {
        while !data.is_empty() {
            // SAFETY: writing from a live slice.
            let n = unsafe {
                libc::send(
                    self.fd,
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                return Err(Unreachable);
            }
            data = data.get(n as usize..).unwrap_or_default();
        }
        Ok(())
    }

    /// The answer, waiting up to `wait` for it; `Ok(None)` if it has not
    /// come by then.
    pub fn answer(&self, wait: Duration) -> Result<Option<Reply>, Unreachable> {
        let mut line = Vec::new();
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = c_int::try_from(left.as_millis()).unwrap_or(c_int::MAX);
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready < 0 && errno() == libc::EINTR {
                continue;
            }
            if ready == 0 && line.is_empty() {
                return Ok(None);
            }
            if ready <= 0 {
                return Err(Unreachable);
            }
            let mut buf = [0u8; 512];
            // SAFETY: reading into a live buffer of its own length.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                return Err(Unreachable);
            }
            line.extend_from_slice(buf.get(..n as usize).unwrap_or_default());
            if line.len() > MAX_LINE {
                return Err(Unreachable);
            }
            if line.ends_with(b"\n") {
                let text = std::str::from_utf8(&line).map_err(|_| Unreachable)?;
                return Reply::parse(text).map(Some).map_err(|_| Unreachable);
            }
        }
    }
}

/// One request and its answer.
pub fn ask(socket: &CStr, request: &Request, wait: Duration) -> Result<Reply, Unreachable> {
    Control::send(socket, request)?
        .answer(wait)?
        .ok_or(Unreachable)
}

pub fn errno() -> c_int {
    // SAFETY: the thread's errno location is always valid.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: c_int) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
}
