//! Name lookups for VPN names: `getaddrinfo` answers with the addresses `up`
//! hands out from its fake range (which map back to the name when the
//! program connects), or `EAI_NONAME`; such a name never reaches the
//! device's DNS. Every other name goes to the C library.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use libc::{addrinfo, c_char, c_int};

use crate::config::Config;
use crate::control;
use crate::proto::{Reply, Request};
use crate::{real, say, sockaddr};

/// `up` asks the gateway, which may ask a resolver.
const RESOLVE_WAIT: Duration = Duration::from_secs(15);

/// Lists this library allocated, so `freeaddrinfo` knows whose they are.
static OURS: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

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
    let (v4, v6) = match control::ask(
        &config.socket,
        &Request::Resolve {
            name: name.to_owned(),
        },
        RESOLVE_WAIT,
    ) {
        Ok(Reply::Addrs { v4, v6 }) => (v4, v6),
        Ok(Reply::NoName) => return Some(libc::EAI_NONAME),
        Ok(Reply::Refused { errno, reason }) => {
            say::refused(name, &reason);
            return Some(if errno == libc::EAGAIN {
                libc::EAI_AGAIN
            } else {
                libc::EAI_FAIL
            });
        }
        // Never the local resolver instead: that would leak the name.
        _ => {
            say::refused(
                name,
                "shimgate up is not running (start it with `shimgate up`)",
            );
            return Some(libc::EAI_AGAIN);
        }
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
            OURS.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(list as usize);
            Some(0)
        }
        None => Some(libc::EAI_MEMORY),
    }
}

/// Frees `ai` if this library made it (`false`: the C library's).
///
/// # Safety
/// `ai` is what a `getaddrinfo` returned.
pub unsafe fn free(ai: *mut addrinfo) -> bool {
    let ours = OURS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(ai as usize));
    if !ours {
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
