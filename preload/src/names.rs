//! Name lookups for VPN names: `getaddrinfo` answers with the addresses `up`
//! hands out from its fake range (which map back to the name when the
//! program connects), or `EAI_NONAME`; such a name never reaches the
//! device's DNS. Every other name goes to the C library.
//!
//! Reverse lookups (`getnameinfo`, `gethostbyaddr`, `gethostbyaddr_r`) of
//! a fake address answer with the name `up` handed it out for; one `up`
//! never handed out has no name. Every other address goes to the C library.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::ffi::CStr;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use libc::{addrinfo, c_char, c_int};

use crate::config::Config;
use crate::control;
use crate::proto::{Reply, Request};
use crate::{real, say, sockaddr};

/// `up` asks the gateway, which may ask a resolver.
const RESOLVE_WAIT: Duration = Duration::from_secs(15);
/// `up` answers a reverse lookup from its map at once.
const NAME_WAIT: Duration = Duration::from_secs(5);

/// Lists this library allocated, so `freeaddrinfo` knows whose they are.
static OURS: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

/// [`OURS`], locked (also across a fork: [`crate::fork`]).
pub fn allocated() -> std::sync::MutexGuard<'static, BTreeSet<usize>> {
    OURS.lock().unwrap_or_else(|p| p.into_inner())
}

/// `getaddrinfo` for `node` if it is a VPN name (`None`: not ours).
///
/// # Safety
/// Arguments as for `getaddrinfo(3)`.
pub unsafe fn getaddrinfo(
    config: &Config,
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> Option<c_int> {
    if node.is_null() || res.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string from the program.
    let name = unsafe { CStr::from_ptr(node) }.to_str().ok()?;
    if !config.split.covers_name(name) {
        return None;
    }
    // SAFETY: hints is null or points to an addrinfo.
    let (family, socktype, protocol, flags) = match unsafe { hints.as_ref() } {
        Some(h) => (h.ai_family, h.ai_socktype, h.ai_protocol, h.ai_flags),
        None => (libc::AF_UNSPEC, 0, 0, 0),
    };
    if flags & libc::AI_NUMERICHOST != 0 {
        return Some(libc::EAI_NONAME);
    }
    if ![libc::AF_UNSPEC, libc::AF_INET, libc::AF_INET6].contains(&family) {
        return Some(libc::EAI_FAMILY);
    }
    // SAFETY: service is null or NUL-terminated.
    let port = match unsafe { service_port(service, socktype) } {
        Ok(p) => p,
        Err(e) => return Some(e),
    };
    let (v4, v6) = match lookup(config, name) {
        Ok(a) => a,
        Err(Missing::NoName) => return Some(libc::EAI_NONAME),
        Err(Missing::Refused) => return Some(libc::EAI_FAIL),
        Err(Missing::Later) => return Some(libc::EAI_AGAIN),
    };
    let addrs: Vec<IpAddr> = match family {
        libc::AF_INET => vec![v4.into()],
        libc::AF_INET6 => vec![v6.into()],
        _ => vec![v4.into(), v6.into()],
    };
    let kinds: Vec<(c_int, c_int)> = match socktype {
        0 => vec![
            (libc::SOCK_STREAM, libc::IPPROTO_TCP),
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
        ],
        t => vec![(t, protocol)],
    };
    let canon = (flags & libc::AI_CANONNAME != 0).then_some(name);
    // SAFETY: res is a valid out pointer (checked non-null above).
    match unsafe { build(&addrs, &kinds, port, canon) } {
        Some(list) => {
            unsafe { *res = list };
            allocated().insert(list as usize);
            Some(0)
        }
        None => Some(libc::EAI_MEMORY),
    }
}

/// Why a VPN name has no address.
enum Missing {
    /// It does not exist.
    NoName,
    /// Policy cannot reach it (told on the terminal).
    Refused,
    /// `up` or the gateway cannot say now.
    Later,
}

impl Missing {
    /// What a `*_r` lookup returns and sets `h_errno` to for it. Not found
    /// is a success with no result, as glibc answers it.
    fn codes(self) -> (c_int, c_int) {
        match self {
            Missing::NoName => (0, HOST_NOT_FOUND),
            Missing::Refused => (0, NO_RECOVERY),
            Missing::Later => (libc::EAGAIN, TRY_AGAIN),
        }
    }
}

/// A VPN name's fake addresses, from `up`. Never the local resolver
/// instead: that would leak the name.
fn lookup(config: &Config, name: &str) -> Result<(Ipv4Addr, Ipv6Addr), Missing> {
    // No such name could exist, and it would not make one line.
    if !crate::proto::host_name_ok(name) {
        return Err(Missing::NoName);
    }
    let request = Request::Resolve {
        name: name.to_owned(),
    };
    match control::ask(&config.socket, &request, RESOLVE_WAIT) {
        Ok(Reply::Addrs { v4, v6 }) => Ok((v4, v6)),
        Ok(Reply::NoName) => Err(Missing::NoName),
        Ok(Reply::Refused { errno, reason }) => {
            say::refused(name, &reason);
            Err(if errno == libc::EAGAIN {
                Missing::Later
            } else {
                Missing::Refused
            })
        }
        _ => {
            say::refused(name, say::NOT_RUNNING);
            Err(Missing::Later)
        }
    }
}

/// `h_errno` values (netdb.h).
const HOST_NOT_FOUND: c_int = 1;
const TRY_AGAIN: c_int = 2;
const NO_RECOVERY: c_int = 3;

unsafe extern "C" {
    fn __h_errno_location() -> *mut c_int;
}

/// `gethostbyname2_r` for `name` if it is a VPN name (`None`: not ours):
/// the fake address of family `af`, laid out in the caller's buffer.
///
/// # Safety
/// Arguments as for `gethostbyname2_r(3)`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gethostbyname2_r(
    config: &Config,
    name: *const c_char,
    af: c_int,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    buflen: libc::size_t,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> Option<c_int> {
    if name.is_null() || ret.is_null() || result.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string from the program.
    let text = unsafe { CStr::from_ptr(name) };
    if !config.split.covers_name(text.to_str().ok()?) {
        return None;
    }
    // SAFETY: out pointers from the program (checked non-null above; h_errnop may be null).
    let fail = |errno: c_int, herr: c_int| unsafe {
        *result = std::ptr::null_mut();
        if let Some(h) = h_errnop.as_mut() {
            *h = herr;
        }
        Some(errno)
    };
    // The buffer's room is checked before `up` is asked, so a caller
    // growing its buffer on ERANGE hands out nothing meanwhile.
    let addr_len = match af {
        libc::AF_INET => 4,
        libc::AF_INET6 => 16,
        _ => return fail(libc::EAFNOSUPPORT, NO_RECOVERY),
    };
    let name_bytes = text.to_bytes_with_nul();
    if buf.is_null() || buflen < hostent_room(buf, addr_len, name_bytes.len()) {
        return fail(libc::ERANGE, NETDB_INTERNAL);
    }
    let (v4, v6) = match lookup(config, text.to_str().ok()?) {
        Ok(a) => a,
        Err(missing) => {
            let (errno, herr) = missing.codes();
            return fail(errno, herr);
        }
    };
    let addr: Vec<u8> = match af {
        libc::AF_INET => v4.octets().to_vec(),
        _ => v6.octets().to_vec(),
    };
    // SAFETY: the caller's buffer has the room (checked above) and `ret`.
    unsafe {
        write_hostent(ret, buf, af, &addr, name_bytes);
        *result = ret;
    }
    Some(0)
}

/// Bytes of a caller's buffer at `buf` that [`write_hostent`] takes: four
/// pointers, aligned (aliases: [NULL]; addresses: [addr, NULL]; a spare
/// NULL), then the address, then the name with its NUL.
fn hostent_room(buf: *mut c_char, addr_len: usize, name_len: usize) -> usize {
    let ptr = size_of::<*mut c_char>();
    let align = (buf as usize).wrapping_neg() % ptr;
    align + 4 * ptr + addr_len + name_len
}

/// A one-address answer with no aliases in `ret`, pointing into `buf`.
///
/// # Safety
/// `ret` is writable and `buf` holds [`hostent_room`] writable bytes;
/// `name` ends in its NUL.
unsafe fn write_hostent(
    ret: *mut libc::hostent,
    buf: *mut c_char,
    af: c_int,
    addr: &[u8],
    name: &[u8],
) {
    let ptr = size_of::<*mut c_char>();
    let align = (buf as usize).wrapping_neg() % ptr;
    // SAFETY: within the room the caller has, pointers aligned.
    unsafe {
        let base = buf.add(align);
        let table = base.cast::<*mut c_char>();
        let addr_at = base.add(4 * ptr);
        let name_at = addr_at.add(addr.len());
        std::ptr::copy_nonoverlapping(addr.as_ptr(), addr_at.cast::<u8>(), addr.len());
        std::ptr::copy_nonoverlapping(name.as_ptr(), name_at.cast::<u8>(), name.len());
        *table = std::ptr::null_mut();
        *table.add(1) = addr_at;
        *table.add(2) = std::ptr::null_mut();
        *table.add(3) = std::ptr::null_mut();
        *ret = libc::hostent {
            h_name: name_at,
            h_aliases: table,
            h_addrtype: af,
            h_length: addr.len() as c_int,
            h_addr_list: table.add(1),
        };
    }
}

/// `gethostbyname2` for a VPN name, the answer in this thread's buffer.
///
/// # Safety
/// `name` is NUL-terminated.
pub unsafe fn gethostbyname_here(
    config: &Config,
    name: *const c_char,
    af: c_int,
) -> *mut libc::hostent {
    answer_here(|ret, buf, buflen, result, herr| {
        // SAFETY: this thread's buffers, valid for the call and after it.
        unsafe { gethostbyname2_r(config, name, af, ret, buf, buflen, result, herr) };
    })
}

/// A non-reentrant lookup's answer: `fill` (a `*_r` function) writes it
/// into this thread's buffer, where it stays until this thread's next
/// such lookup; null with `h_errno` set if there is none.
fn answer_here(
    fill: impl FnOnce(
        *mut libc::hostent,
        *mut c_char,
        libc::size_t,
        *mut *mut libc::hostent,
        *mut c_int,
    ),
) -> *mut libc::hostent {
    thread_local! {
        static ANSWER: RefCell<(libc::hostent, [u64; 128])> = const {
            RefCell::new((
                libc::hostent {
                    h_name: std::ptr::null_mut(),
                    h_aliases: std::ptr::null_mut(),
                    h_addrtype: 0,
                    h_length: 0,
                    h_addr_list: std::ptr::null_mut(),
                },
                [0; 128],
            ))
        };
    }
    ANSWER.with(|cell| {
        let Ok(mut answer) = cell.try_borrow_mut() else {
            return std::ptr::null_mut();
        };
        let (ret, buf) = &mut *answer;
        let mut result: *mut libc::hostent = std::ptr::null_mut();
        let mut herr: c_int = 0;
        fill(
            ret,
            buf.as_mut_ptr().cast(),
            std::mem::size_of_val(buf),
            &mut result,
            &mut herr,
        );
        if result.is_null() {
            set_h_errno(herr);
        }
        result
    })
}

/// The IPv4 address an IPv4-mapped IPv6 one stands for.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a reverse lookup of `ip` is `up`'s to answer: a fake address
/// the split sends through the VPN.
fn ours(config: &Config, ip: IpAddr) -> bool {
    crate::proto::is_fake(ip) && config.split.covers(ip)
}

/// The VPN name `up` handed the fake address `ip` out for. Never the local
/// resolver instead: it cannot know.
fn name_of(config: &Config, ip: IpAddr) -> Result<String, Missing> {
    let ip = unmapped(ip);
    match control::ask(&config.socket, &Request::Name { addr: ip }, NAME_WAIT) {
        // A host name's characters only (`Reply::parse` checks).
        Ok(Reply::Name(name)) => Ok(name),
        Ok(Reply::NoName) => Err(Missing::NoName),
        Ok(Reply::Refused { errno, reason }) => {
            say::refused(&ip.to_string(), &reason);
            Err(if errno == libc::EAGAIN {
                Missing::Later
            } else {
                Missing::Refused
            })
        }
        _ => {
            say::refused(&ip.to_string(), say::NOT_RUNNING);
            Err(Missing::Later)
        }
    }
}

/// `getnameinfo` for a fake address (`None`: not ours). The host is the
/// name from `up`. The service is the C library's own (`/etc/services`,
/// or the number with `NI_NUMERICSERV`), as is the number when `up` knows
/// no name and `NI_NAMEREQD` is not set. `NI_NOFQDN` and `NI_IDN` change
/// nothing: a VPN name is not in the local domain, and is ASCII.
///
/// # Safety
/// Arguments as for `getnameinfo(3)`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn getnameinfo(
    config: &Config,
    sa: *const libc::sockaddr,
    salen: libc::socklen_t,
    host: *mut c_char,
    hostlen: libc::socklen_t,
    serv: *mut c_char,
    servlen: libc::socklen_t,
    flags: c_int,
) -> Option<c_int> {
    // No host asked for, or its number: the C library's.
    if host.is_null() || hostlen == 0 || flags & libc::NI_NUMERICHOST != 0 {
        return None;
    }
    // SAFETY: the program's (sa, salen); only a complete address is read.
    let ip = unsafe { sockaddr::read(sa, salen) }?.ip();
    if !ours(config, ip) {
        return None;
    }
    let Some(real) = real::GETNAMEINFO.get() else {
        control::set_errno(libc::ENOSYS);
        return Some(libc::EAI_SYSTEM);
    };
    // The service first, by the C library, which checks the flags and the
    // address as it would (before `up` is asked); NI_NAMEREQD off, as no
    // host is asked of it.
    // SAFETY: the program's address and service buffer, no host buffer.
    let rc = unsafe {
        real(
            sa,
            salen,
            std::ptr::null_mut(),
            0,
            serv,
            servlen,
            flags & !libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return Some(rc);
    }
    match name_of(config, ip) {
        Ok(name) => {
            let name = name.as_bytes();
            if name.len() >= hostlen as usize {
                return Some(libc::EAI_OVERFLOW);
            }
            // SAFETY: the program's host buffer of `hostlen` bytes, which
            // hold the name and its NUL (checked above).
            unsafe {
                std::ptr::copy_nonoverlapping(name.as_ptr(), host.cast::<u8>(), name.len());
                *host.add(name.len()) = 0;
            }
            Some(0)
        }
        Err(Missing::NoName) if flags & libc::NI_NAMEREQD != 0 => Some(libc::EAI_NONAME),
        // The number, as the C library writes it.
        // SAFETY: the program's address and host buffer.
        Err(Missing::NoName) => Some(unsafe {
            real(
                sa,
                salen,
                host,
                hostlen,
                std::ptr::null_mut(),
                0,
                (flags | libc::NI_NUMERICHOST) & !libc::NI_NAMEREQD,
            )
        }),
        Err(Missing::Refused) => Some(libc::EAI_FAIL),
        Err(Missing::Later) => {
            set_h_errno(TRY_AGAIN);
            Some(libc::EAI_AGAIN)
        }
    }
}

/// The address a reverse lookup of (`addr`, `len`, `af`) asks about, if it
/// is `up`'s to answer: the address, and its bytes as the program gave them.
///
/// # Safety
/// `addr` is null or points to `len` readable bytes.
unsafe fn asked(
    config: &Config,
    addr: *const libc::c_void,
    len: libc::socklen_t,
    af: c_int,
) -> Option<(IpAddr, Vec<u8>)> {
    let size = match af {
        libc::AF_INET => 4,
        libc::AF_INET6 => 16,
        _ => return None,
    };
    // A shorter one is the C library's to refuse (EAFNOSUPPORT); bytes
    // past the address are not read, as it does not.
    if addr.is_null() || (len as usize) < size {
        return None;
    }
    let mut bytes = [0u8; 16];
    // SAFETY: `size` readable bytes (checked above), copied unaligned.
    unsafe { std::ptr::copy_nonoverlapping(addr.cast::<u8>(), bytes.as_mut_ptr(), size) };
    let ip = match size {
        4 => IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]),
        _ => IpAddr::from(bytes),
    };
    ours(config, ip).then(|| (ip, bytes.get(..size).unwrap_or_default().to_vec()))
}

/// `gethostbyaddr_r` for a fake address (`None`: not ours): the name from
/// `up` and the address as asked, laid out in the caller's buffer. Not
/// found is a success with no result; `errno` and `h_errno` are set as
/// glibc's DNS lookup leaves them.
///
/// # Safety
/// Arguments as for `gethostbyaddr_r(3)`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gethostbyaddr_r(
    config: &Config,
    addr: *const libc::c_void,
    len: libc::socklen_t,
    af: c_int,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    buflen: libc::size_t,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> Option<c_int> {
    if ret.is_null() || result.is_null() {
        return None;
    }
    // SAFETY: the program's (addr, len).
    let (ip, bytes) = unsafe { asked(config, addr, len, af) }?;
    // SAFETY: out pointers from the program (result checked non-null
    // above; h_errnop may be null).
    let fail = |errno: c_int, herr: c_int| unsafe {
        *result = std::ptr::null_mut();
        if let Some(h) = h_errnop.as_mut() {
            *h = herr;
        }
        set_h_errno(herr);
        control::set_errno(errno);
        Some(errno)
    };
    let name = match name_of(config, ip) {
        Ok(name) => name,
        Err(missing) => {
            let (errno, herr) = missing.codes();
            return fail(errno, herr);
        }
    };
    let Ok(name) = std::ffi::CString::new(name) else {
        return fail(0, HOST_NOT_FOUND);
    };
    let name = name.as_bytes_with_nul();
    if buf.is_null() || buflen < hostent_room(buf, bytes.len(), name.len()) {
        return fail(libc::ERANGE, NETDB_INTERNAL);
    }
    // SAFETY: the caller's buffer has the room (checked above), `ret` and
    // `result` are the caller's (checked non-null above).
    unsafe {
        write_hostent(ret, buf, af, &bytes, name);
        *result = ret;
        if let Some(h) = h_errnop.as_mut() {
            *h = 0;
        }
    }
    control::set_errno(0);
    Some(0)
}

/// `gethostbyaddr` for a fake address (`None`: not ours), the answer in
/// this thread's buffer.
///
/// # Safety
/// `addr` is null or points to `len` readable bytes.
pub unsafe fn gethostbyaddr(
    config: &Config,
    addr: *const libc::c_void,
    len: libc::socklen_t,
    af: c_int,
) -> Option<*mut libc::hostent> {
    // SAFETY: as the caller promises.
    unsafe { asked(config, addr, len, af) }?;
    Some(answer_here(|ret, buf, buflen, result, herr| {
        // SAFETY: the program's address; this thread's buffers.
        unsafe { gethostbyaddr_r(config, addr, len, af, ret, buf, buflen, result, herr) };
    }))
}

/// `netdb.h`'s "see errno".
const NETDB_INTERNAL: c_int = -1;

/// Sets `h_errno`.
pub fn set_h_errno(value: c_int) {
    // SAFETY: the thread's h_errno location is always valid.
    unsafe { *__h_errno_location() = value };
}

/// Frees `ai` if this library made it (`false`: the C library's).
///
/// # Safety
/// `ai` is what a `getaddrinfo` returned.
pub unsafe fn free(ai: *mut addrinfo) -> bool {
    if !allocated().remove(&(ai as usize)) {
        return false;
    }
    // SAFETY: our list, freed once (it left OURS above).
    unsafe { free_list(ai) };
    true
}

/// The port a service names: a number, or a name the C library knows.
unsafe fn service_port(service: *const c_char, socktype: c_int) -> Result<u16, c_int> {
    if service.is_null() {
        return Ok(0);
    }
    // SAFETY: NUL-terminated, from the program.
    let text = unsafe { CStr::from_ptr(service) }
        .to_str()
        .map_err(|_| libc::EAI_SERVICE)?;
    if let Ok(port) = text.parse::<u16>() {
        return Ok(port);
    }
    // A service name: the C library's own lookup, on a numeric host so no
    // resolver is involved.
    let gai = real::GETADDRINFO.get().ok_or(libc::EAI_SYSTEM)?;
    let free = real::FREEADDRINFO.get().ok_or(libc::EAI_SYSTEM)?;
    // SAFETY: all-zero is a valid addrinfo for hints.
    let mut hints: addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_INET;
    hints.ai_socktype = if socktype == 0 {
        libc::SOCK_STREAM
    } else {
        socktype
    };
    hints.ai_flags = libc::AI_NUMERICHOST;
    let mut out: *mut addrinfo = std::ptr::null_mut();
    // SAFETY: valid strings, hints and out pointer.
    let rc = unsafe { gai(c"127.0.0.1".as_ptr(), service, &hints, &mut out) };
    if rc != 0 {
        return Err(rc);
    }
    // SAFETY: on success `out` is a list whose first node has an address.
    let port = unsafe { sockaddr::read((*out).ai_addr, (*out).ai_addrlen) }
        .map(|a| a.port())
        .ok_or(libc::EAI_SERVICE);
    // SAFETY: the list the real getaddrinfo returned.
    unsafe { free(out) };
    port
}

/// An addrinfo list, one node per address and kind, each node allocated
/// together with its sockaddr.
unsafe fn build(
    addrs: &[IpAddr],
    kinds: &[(c_int, c_int)],
    port: u16,
    canon: Option<&str>,
) -> Option<*mut addrinfo> {
    let mut head: *mut addrinfo = std::ptr::null_mut();
    let mut tail: *mut *mut addrinfo = &mut head;
    for ip in addrs {
        for (socktype, protocol) in kinds {
            let family = if ip.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let (storage, len) = sockaddr::raw(SocketAddr::new(*ip, port), family);
            // SAFETY: a zeroed block big enough for the node and its address.
            let node =
                unsafe { libc::calloc(1, size_of::<addrinfo>() + size_of::<libc::sockaddr_in6>()) }
                    .cast::<addrinfo>();
            if node.is_null() {
                // SAFETY: the nodes so far are ours and complete.
                unsafe { free_list(head) };
                return None;
            }
            // SAFETY: node is a fresh, zeroed, suitably sized block.
            unsafe {
                let addr = node.add(1).cast::<libc::sockaddr>();
                std::ptr::copy_nonoverlapping(
                    (&raw const storage).cast::<u8>(),
                    addr.cast::<u8>(),
                    len as usize,
                );
                (*node).ai_family = family;
                (*node).ai_socktype = *socktype;
                (*node).ai_protocol = *protocol;
                (*node).ai_addrlen = len;
                (*node).ai_addr = addr;
                *tail = node;
                tail = &mut (*node).ai_next;
            }
        }
    }
    if let (Some(name), false) = (canon, head.is_null()) {
        let name = std::ffi::CString::new(name).ok()?;
        // SAFETY: strdup of a valid string; the head node is ours.
        unsafe { (*head).ai_canonname = libc::strdup(name.as_ptr()) };
    }
    Some(head)
}

unsafe fn free_list(mut node: *mut addrinfo) {
    while !node.is_null() {
        // SAFETY: nodes `build` allocated.
        unsafe {
            let next = (*node).ai_next;
            libc::free((*node).ai_canonname.cast());
            libc::free(node.cast());
            node = next;
        }
    }
}
