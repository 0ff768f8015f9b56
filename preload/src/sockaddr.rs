//! `struct sockaddr` as a program passes it, read without trusting its
//! length or alignment, and written back as the kernel would.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libc::{sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t};

/// The address at `addr` if it is a complete IPv4 or IPv6 one.
///
/// # Safety
/// `addr` must be null or point to `len` readable bytes.
pub unsafe fn read(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || (len as usize) < size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family is readable (checked above); the structs
    // are read unaligned and only when `len` covers them.
    unsafe {
        let family = std::ptr::read_unaligned(addr.cast::<libc::sa_family_t>());
        match i32::from(family) {
            libc::AF_INET if len as usize >= size_of::<sockaddr_in>() => {
                let a = std::ptr::read_unaligned(addr.cast::<sockaddr_in>());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if len as usize >= size_of::<sockaddr_in6>() => {
                let a = std::ptr::read_unaligned(addr.cast::<sockaddr_in6>());
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// `sa` as a sockaddr of `family` (an IPv4 address in an IPv6 socket's
/// family is written v4-mapped), and its length.
pub fn raw(sa: SocketAddr, family: i32) -> (sockaddr_storage, socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: sockaddr_storage = unsafe { std::mem::zeroed() };
    let sa = match (sa, family) {
        (SocketAddr::V4(v4), libc::AF_INET6) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        (SocketAddr::V6(v6), libc::AF_INET) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, v6.port())),
            None => sa,
        },
        _ => sa,
    };
    let len = match sa {
        SocketAddr::V4(a) => {
            let sin = sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and aligned for it.
            unsafe { std::ptr::write((&raw mut storage).cast::<sockaddr_in>(), sin) };
            size_of::<sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast::<sockaddr_in6>(), sin6) };
            size_of::<sockaddr_in6>()
        }
    };
    (storage, len as socklen_t)
}

/// Writes `sa` to a program's buffer as `getpeername` does: truncated to
/// the buffer, `*len` set to the full size.
///
/// # Safety
/// `out` must point to `*len` writable bytes and `len` to a valid length.
pub unsafe fn write(sa: SocketAddr, family: i32, out: *mut sockaddr, len: *mut socklen_t) {
    let (storage, full) = raw(sa, family);
    // SAFETY: the caller's buffer holds *len bytes; we copy no more.
    unsafe {
        let room = (*len).min(full) as usize;
        std::ptr::copy_nonoverlapping((&raw const storage).cast::<u8>(), out.cast::<u8>(), room);
        *len = full;
    }
}

/// The address with an IPv4-mapped IPv6 address read as IPv4.
pub fn unmapped(sa: SocketAddr) -> SocketAddr {
    match sa {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(IpAddr::V4(ip), v6.port()),
            None => sa,
        },
        v4 => v4,
    }
}
