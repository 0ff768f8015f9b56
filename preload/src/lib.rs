//! The socket shim: `shimgate run` preloads this library (`LD_PRELOAD`)
//! into a program and its children, and it sends the program's connections
//! to VPN destinations through the running `shimgate up`, with no proxy
//! setting in the program. The patent's socket-level shim (US 6,061,796).
//!
//! - [`config`]: what `run` put in the environment (shim socket, split).
//! - [`tcp`]: `connect()` to a VPN destination, with the far end's answer.
//! - [`udp`]: UDP to VPN destinations, through a relay per destination.
//! - [`names`]: `getaddrinfo` for VPN names (fake addresses from `up`),
//!   and reverse lookups of those addresses (the name back).
//! - [`state`]: per-descriptor state, through close/dup/close_range.
//! - [`control`]: one request to `up` on its shim socket.
//! - [`real`]: the C library's own functions behind the ones exported here.
//! - [`sockaddr`]: reading and writing a program's socket addresses.
//! - [`say`]: refusals on the program's terminal.
//! - [`fork`]: this library's locks held across the program's forks.
//!
//! Everything exported is a C function the program calls with arguments
//! this library does not trust; none may unwind into the program, so each
//! body runs under [`guard`]. No async runtime, no threads: the library
//! only makes blocking calls the program asked for, or none.

mod config;
mod control;
mod fork;
mod names;
#[path = "../../wire/src/shimsock.rs"]
#[allow(dead_code)]
mod proto;
mod real;
mod say;
mod sockaddr;
mod state;
mod tcp;
mod udp;

use std::panic::{AssertUnwindSafe, catch_unwind};

use libc::{
    addrinfo, c_char, c_int, c_uint, c_void, size_t, sockaddr as Sockaddr, socklen_t, ssize_t,
};

use control::set_errno;

/// Multipath TCP's protocol number (Linux 5.6+), a TCP for this purpose.
const IPPROTO_MPTCP: c_int = 262;

/// Runs a hook's body; a panic becomes `fail` with errno `EIO` instead of
/// unwinding into C.
fn guard<T>(fail: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        set_errno(libc::EIO);
        fail
    })
}

/// `Err(errno)` as C's `-1` with errno set.
fn c_result(r: Result<(), c_int>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// The real function, or `ENOSYS` if the C library lacks it.
macro_rules! real_or {
    ($f:expr, $fail:expr) => {
        match $f.get() {
            Some(f) => f,
            None => {
                set_errno(libc::ENOSYS);
                return $fail;
            }
        }
    };
}

/// A TCP Fast Open send (`MSG_FASTOPEN`) to a VPN destination: it would
/// connect past the shim, so it fails as on a kernel without Fast Open and
/// the program falls back to `connect`.
fn fast_open_refused(fd: c_int, flags: c_int, to: std::net::SocketAddr) -> bool {
    flags & libc::MSG_FASTOPEN != 0
        && config::get().is_some_and(|c| c.split.covers(to.ip()))
        && tcp::int_option(fd, libc::SO_TYPE) == Ok(libc::SOCK_STREAM)
}

/// # Safety
/// As `connect(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const Sockaddr, len: socklen_t) -> c_int {
    guard(-1, || {
        let real = real_or!(real::CONNECT, -1);
        // SAFETY: the program's (addr, len).
        let to = unsafe { sockaddr::read(addr, len) };
        let (Some(config), Some(to)) = (config::get(), to) else {
            // AF_UNSPEC (disconnect) and the like: no longer at a relay.
            udp::connected_elsewhere(fd);
            // SAFETY: passing the program's arguments through.
            return unsafe { real(fd, addr, len) };
        };
        if !config.split.covers(to.ip()) {
            udp::connected_elsewhere(fd);
            // SAFETY: as above.
            return unsafe { real(fd, addr, len) };
        }
        let ty = tcp::int_option(fd, libc::SO_TYPE);
        let protocol = tcp::int_option(fd, libc::SO_PROTOCOL);
        let domain = tcp::int_option(fd, libc::SO_DOMAIN);
        // An address of the wrong family is the kernel's to refuse.
        let family_fits = matches!(
            (domain, to),
            (Ok(libc::AF_INET), std::net::SocketAddr::V4(_)) | (Ok(libc::AF_INET6), _)
        );
        match (ty, protocol) {
            (Ok(libc::SOCK_STREAM), Ok(libc::IPPROTO_TCP | IPPROTO_MPTCP)) if family_fits => {
                c_result(domain.and_then(|d| tcp::connect(config, fd, d, to)))
            }
            (Ok(libc::SOCK_DGRAM), Ok(libc::IPPROTO_UDP | libc::IPPROTO_UDPLITE))
                if family_fits =>
            {
                c_result(udp::connect(config, fd, to))
            }
            // SAFETY: as above.
            _ => unsafe { real(fd, addr, len) },
        }
    })
}

/// # Safety
/// As `getpeername(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut Sockaddr, len: *mut socklen_t) -> c_int {
    guard(-1, || {
        let real = real_or!(real::GETPEERNAME, -1);
        // SAFETY: passing the program's arguments through; the kernel says
        // whether the socket is connected (ENOTCONN while `up` dials).
        let rc = unsafe { real(fd, addr, len) };
        if rc == 0
            && let Some(to) = tcp::FLOWS.on(fd, |flow| flow.to).or_else(|| udp::peer(fd))
        {
            // The program sees the address it connected to, not `up`'s.
            let family = tcp::int_option(fd, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
            // SAFETY: the real call succeeded, so the buffer and length are valid.
            unsafe { sockaddr::write(to, family, addr, len) };
        }
        rc
    })
}

/// # Safety
/// As `getsockopt(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    guard(-1, || {
        let real = real_or!(real::GETSOCKOPT, -1);
        // SAFETY: passing the program's arguments through.
        let rc = unsafe { real(fd, level, name, value, len) };
        let so_error = rc == 0 && level == libc::SOL_SOCKET && name == libc::SO_ERROR;
        // SAFETY: len is null or the program's length.
        let room = unsafe { len.as_ref() }.copied().unwrap_or(0) as usize;
        if so_error
            && !value.is_null()
            && room >= std::mem::size_of::<c_int>()
            && let Some(errno) = tcp::pending_error(fd)
        {
            // SAFETY: the real call succeeded, so value holds an int.
            unsafe { std::ptr::write_unaligned(value.cast::<c_int>(), errno) };
        }
        rc
    })
}

/// # Safety
/// As `close(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    guard(-1, || {
        let real = real_or!(real::CLOSE, -1);
        state::closing(fd, fd);
        state::closed(fd, fd);
        // SAFETY: passing the program's argument through.
        unsafe { real(fd) }
    })
}

/// # Safety
/// As `close_range(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    guard(-1, || {
        let real = real_or!(real::CLOSE_RANGE, -1);
        let clamp = |v: c_uint| c_int::try_from(v).unwrap_or(c_int::MAX);
        if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
            state::closing(clamp(first), clamp(last));
        }
        // SAFETY: passing the program's arguments through.
        let rc = unsafe { real(first, last, flags) };
        if rc == 0 && flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
            state::closed(clamp(first), clamp(last));
        }
        rc
    })
}

/// # Safety
/// As `dup(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    guard(-1, || {
        let real = real_or!(real::DUP, -1);
        // SAFETY: passing the program's argument through.
        let new = unsafe { real(fd) };
        if new >= 0 {
            state::duplicated(fd, new);
        }
        new
    })
}

/// # Safety
/// As `dup2(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(fd: c_int, to: c_int) -> c_int {
    guard(-1, || {
        let real = real_or!(real::DUP2, -1);
        if fd != to {
            state::closing(to, to);
        }
        // SAFETY: passing the program's arguments through.
        let new = unsafe { real(fd, to) };
        if new >= 0 && new != fd {
            state::duplicated(fd, new);
        }
        new
    })
}

/// # Safety
/// As `dup3(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(fd: c_int, to: c_int, flags: c_int) -> c_int {
    guard(-1, || {
        let real = real_or!(real::DUP3, -1);
        state::closing(to, to);
        // SAFETY: passing the program's arguments through.
        let new = unsafe { real(fd, to, flags) };
        if new >= 0 {
            state::duplicated(fd, new);
        }
        new
    })
}

/// # Safety
/// As `getaddrinfo(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    guard(libc::EAI_SYSTEM, || {
        let real = match real::GETADDRINFO.get() {
            Some(f) => f,
            None => return libc::EAI_SYSTEM,
        };
        if let Some(config) = config::get() {
            // SAFETY: the program's arguments, as getaddrinfo(3) takes them.
            if let Some(rc) = unsafe { names::getaddrinfo(config, node, service, hints, res) } {
                return rc;
            }
        }
        // SAFETY: passing the program's arguments through.
        unsafe { real(node, service, hints, res) }
    })
}

/// # Safety
/// As `getnameinfo(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getnameinfo(
    sa: *const Sockaddr,
    salen: socklen_t,
    host: *mut c_char,
    hostlen: socklen_t,
    serv: *mut c_char,
    servlen: socklen_t,
    flags: c_int,
) -> c_int {
    guard(libc::EAI_SYSTEM, || {
        if let Some(config) = config::get() {
            // SAFETY: the program's arguments, as getnameinfo(3) takes them.
            let ours = unsafe {
                names::getnameinfo(config, sa, salen, host, hostlen, serv, servlen, flags)
            };
            if let Some(rc) = ours {
                return rc;
            }
        }
        let real = real_or!(real::GETNAMEINFO, libc::EAI_SYSTEM);
        // SAFETY: passing the program's arguments through.
        unsafe { real(sa, salen, host, hostlen, serv, servlen, flags) }
    })
}

/// # Safety
/// As `gethostbyaddr_r(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyaddr_r(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> c_int {
    guard(libc::EIO, || {
        if let Some(config) = config::get() {
            // SAFETY: the program's arguments, as gethostbyaddr_r(3) takes them.
            let ours = unsafe {
                names::gethostbyaddr_r(config, addr, len, af, ret, buf, buflen, result, h_errnop)
            };
            if let Some(rc) = ours {
                return rc;
            }
        }
        let real = real_or!(real::GETHOSTBYADDR_R, libc::ENOSYS);
        // SAFETY: passing the program's arguments through.
        unsafe { real(addr, len, af, ret, buf, buflen, result, h_errnop) }
    })
}

/// # Safety
/// As `gethostbyaddr(3)`: a fake address's answer lives in this thread's
/// buffer until its next call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyaddr(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
) -> *mut libc::hostent {
    guard(std::ptr::null_mut(), || {
        if let Some(config) = config::get() {
            // SAFETY: the program's arguments, as gethostbyaddr(3) takes them.
            if let Some(answer) = unsafe { names::gethostbyaddr(config, addr, len, af) } {
                return answer;
            }
        }
        let real = real_or!(real::GETHOSTBYADDR, std::ptr::null_mut());
        // SAFETY: passing the program's arguments through.
        unsafe { real(addr, len, af) }
    })
}

/// # Safety
/// As `gethostbyname2_r(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> c_int {
    guard(libc::EIO, || {
        if let Some(config) = config::get() {
            // SAFETY: the program's arguments, as gethostbyname2_r(3) takes them.
            let ours = unsafe {
                names::gethostbyname2_r(config, name, af, ret, buf, buflen, result, h_errnop)
            };
            if let Some(rc) = ours {
                return rc;
            }
        }
        let real = real_or!(real::GETHOSTBYNAME2_R, libc::ENOSYS);
        // SAFETY: passing the program's arguments through.
        unsafe { real(name, af, ret, buf, buflen, result, h_errnop) }
    })
}

/// # Safety
/// As `gethostbyname_r(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname_r(
    name: *const c_char,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> c_int {
    // SAFETY: the same arguments, for IPv4.
    unsafe { gethostbyname2_r(name, libc::AF_INET, ret, buf, buflen, result, h_errnop) }
}

/// # Safety
/// As `gethostbyname2(3)`: a VPN name's answer lives in this thread's
/// buffer until its next call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, af: c_int) -> *mut libc::hostent {
    guard(std::ptr::null_mut(), || {
        // SAFETY: the program's argument.
        match unsafe { vpn_name(name) } {
            // SAFETY: the program's argument, checked by vpn_name.
            Some(config) => unsafe { names::gethostbyname_here(config, name, af) },
            None => {
                let real = real_or!(real::GETHOSTBYNAME2, std::ptr::null_mut());
                // SAFETY: passing the program's arguments through.
                unsafe { real(name, af) }
            }
        }
    })
}

/// # Safety
/// As `gethostbyname(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut libc::hostent {
    guard(std::ptr::null_mut(), || {
        // SAFETY: the program's argument.
        match unsafe { vpn_name(name) } {
            // SAFETY: as above.
            Some(config) => unsafe { names::gethostbyname_here(config, name, libc::AF_INET) },
            None => {
                let real = real_or!(real::GETHOSTBYNAME, std::ptr::null_mut());
                // SAFETY: passing the program's argument through.
                unsafe { real(name) }
            }
        }
    })
}

/// The config, if `name` is a VPN name.
///
/// # Safety
/// `name` is null or NUL-terminated.
unsafe fn vpn_name(name: *const c_char) -> Option<&'static config::Config> {
    let config = config::get()?;
    // SAFETY: as the caller promises.
    let name = unsafe { name.as_ref().map(|n| std::ffi::CStr::from_ptr(n)) }?;
    config
        .split
        .covers_name(name.to_str().ok()?)
        .then_some(config)
}

/// # Safety
/// As `freeaddrinfo(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn freeaddrinfo(ai: *mut addrinfo) {
    guard((), || {
        // SAFETY: what a getaddrinfo returned.
        if unsafe { names::free(ai) } {
            return;
        }
        if let Some(real) = real::FREEADDRINFO.get() {
            // SAFETY: passing the program's argument through.
            unsafe { real(ai) };
        }
    })
}

/// # Safety
/// As `sendto(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const Sockaddr,
    len: socklen_t,
) -> ssize_t {
    guard(-1, || {
        let real = real_or!(real::SENDTO, -1);
        // SAFETY: the program's (addr, len).
        let to = unsafe { sockaddr::read(addr, len) };
        if to.is_some_and(|to| fast_open_refused(fd, flags, to)) {
            set_errno(libc::EOPNOTSUPP);
            return -1;
        }
        match (config::get(), to) {
            (Some(config), Some(to)) => match udp::redirect(config, fd, to) {
                // SAFETY: the program's buffer, and a valid relay address.
                Some(Ok((relay, rlen))) => unsafe {
                    real(fd, buf, n, flags, (&raw const relay).cast(), rlen)
                },
                Some(Err(e)) => {
                    set_errno(e);
                    -1
                }
                // SAFETY: passing the program's arguments through.
                None => unsafe { real(fd, buf, n, flags, addr, len) },
            },
            // SAFETY: passing the program's arguments through.
            _ => unsafe { real(fd, buf, n, flags, addr, len) },
        }
    })
}

/// # Safety
/// As `sendmsg(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t {
    guard(-1, || {
        let real = real_or!(real::SENDMSG, -1);
        // SAFETY: msg is null or the program's msghdr.
        let Some(m) = (unsafe { msg.as_ref() }) else {
            // SAFETY: passing the program's arguments through.
            return unsafe { real(fd, msg, flags) };
        };
        match redirected(fd, flags, m) {
            // SAFETY: the program's message, its name replaced by the relay's.
            Ok(Some((mut copy, relay))) => unsafe {
                copy.msg_name = (&raw const relay.0).cast_mut().cast();
                copy.msg_namelen = relay.1;
                real(fd, &copy, flags)
            },
            // SAFETY: passing the program's arguments through.
            Ok(None) => unsafe { real(fd, msg, flags) },
            Err(e) => {
                set_errno(e);
                -1
            }
        }
    })
}

/// A message's destination, if it is a VPN one for a UDP socket: a copy of
/// the header and the relay to put in it (`Err`: refused with errno).
#[allow(clippy::type_complexity)]
fn redirected(
    fd: c_int,
    flags: c_int,
    m: &libc::msghdr,
) -> Result<Option<(libc::msghdr, (libc::sockaddr_storage, socklen_t))>, c_int> {
    // SAFETY: the program's (msg_name, msg_namelen).
    let Some(to) = (unsafe { sockaddr::read(m.msg_name.cast(), m.msg_namelen) }) else {
        return Ok(None);
    };
    if fast_open_refused(fd, flags, to) {
        return Err(libc::EOPNOTSUPP);
    }
    let Some(config) = config::get() else {
        return Ok(None);
    };
    match udp::redirect(config, fd, to) {
        Some(Ok(relay)) => Ok(Some((*m, relay))),
        Some(Err(e)) => Err(e),
        None => Ok(None),
    }
}

/// # Safety
/// As `sendmmsg(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    count: c_uint,
    flags: c_int,
) -> c_int {
    guard(-1, || {
        let real = real_or!(real::SENDMMSG, -1);
        if msgs.is_null() {
            // SAFETY: passing the program's arguments through.
            return unsafe { real(fd, msgs, count, flags) };
        }
        // The kernel reads at most UIO_MAXIOV (1024) of them.
        let n = (count as usize).min(1024);
        // SAFETY: the program's array of at least `n` headers.
        let given = unsafe { std::slice::from_raw_parts_mut(msgs, n) };
        let mut relays = Vec::new();
        for (i, m) in given.iter().enumerate() {
            match redirected(fd, flags, &m.msg_hdr) {
                Ok(Some((_, relay))) => relays.push((i, relay)),
                Ok(None) => {}
                Err(e) => {
                    set_errno(e);
                    return -1;
                }
            }
        }
        if relays.is_empty() {
            // SAFETY: passing the program's arguments through.
            return unsafe { real(fd, msgs, count, flags) };
        }
        let mut copy: Vec<libc::mmsghdr> = given.to_vec();
        for (i, relay) in &relays {
            if let Some(m) = copy.get_mut(*i) {
                m.msg_hdr.msg_name = (&raw const relay.0).cast_mut().cast();
                m.msg_hdr.msg_namelen = relay.1;
            }
        }
        // SAFETY: copies of the program's headers (same buffers), with
        // relays' addresses that outlive the call.
        let rc = unsafe { real(fd, copy.as_mut_ptr(), n as c_uint, flags) };
        for (mine, theirs) in copy.iter().zip(given.iter_mut()).take(rc.max(0) as usize) {
            theirs.msg_len = mine.msg_len;
        }
        rc
    })
}

/// # Safety
/// As `recvfrom(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut Sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    guard(-1, || {
        let real = real_or!(real::RECVFROM, -1);
        // SAFETY: len is null or the program's length.
        let room = unsafe { len.as_ref() }.copied().unwrap_or(0);
        // SAFETY: passing the program's arguments through.
        let rc = unsafe { real(fd, buf, n, flags, addr, len) };
        if rc >= 0 {
            // SAFETY: the kernel filled (addr, len) if they were given.
            unsafe { udp::show_source(fd, addr, len, room) };
        }
        rc
    })
}

/// # Safety
/// As `recvmsg(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t {
    guard(-1, || {
        let real = real_or!(real::RECVMSG, -1);
        // SAFETY: msg is null or the program's header.
        let room = unsafe { msg.as_ref() }.map_or(0, |m| m.msg_namelen);
        // SAFETY: passing the program's arguments through.
        let rc = unsafe { real(fd, msg, flags) };
        // SAFETY: msg is the program's header, filled by the kernel.
        if rc >= 0
            && let Some(m) = unsafe { msg.as_mut() }
        {
            // SAFETY: its name buffer of `room` bytes and the kernel's length.
            unsafe { udp::show_source(fd, m.msg_name.cast(), &mut m.msg_namelen, room) };
        }
        rc
    })
}

/// # Safety
/// As `recvmmsg(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    count: c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    guard(-1, || {
        let real = real_or!(real::RECVMMSG, -1);
        // The kernel fills at most UIO_MAXIOV (1024) headers.
        let n = (count as usize).min(1024);
        let rooms: Vec<socklen_t> = if msgs.is_null() {
            Vec::new()
        } else {
            // SAFETY: the program's array of at least `n` headers.
            (0..n)
                .map(|i| unsafe { (*msgs.add(i)).msg_hdr.msg_namelen })
                .collect()
        };
        // SAFETY: passing the program's arguments through.
        let rc = unsafe { real(fd, msgs, count, flags, timeout) };
        for (i, room) in rooms.iter().enumerate().take(rc.max(0) as usize) {
            // SAFETY: the kernel filled the first `rc` headers.
            let m = unsafe { &mut (*msgs.add(i)).msg_hdr };
            // SAFETY: each header's name buffer of `room` bytes.
            unsafe { udp::show_source(fd, m.msg_name.cast(), &mut m.msg_namelen, *room) };
        }
        rc
    })
}
