//! The HTTP/2 CONNECT authority a device sends for a tunnel, read as the
//! gateway's server does (`http::uri::Authority`, then
//! `wire::dest::Destination::from_authority`). No input may panic; a name
//! that passes is a plain lowercase DNS name; an address that passes is what
//! the authority said; what passes reads back the same from its own text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_wire::dest::{Destination, Host};

fuzz_target!(|data: &[u8]| {
    // As h2 hands it over: bytes, not necessarily UTF-8.
    let Ok(authority) = http::uri::Authority::try_from(data) else {
        return;
    };
    let Ok(dest) = Destination::from_authority(&authority) else {
        return;
    };
    assert_eq!(Some(dest.port()), authority.port_u16());
    match dest.host() {
        Host::Name(name) => {
            assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
                "{name:?}"
            );
            assert!(!name.ends_with('.') && !name.contains(".."), "{name:?}");
        }
        Host::Ip(ip) => {
            let host = authority.host();
            // Brackets of an IPv6 address, or one trailing dot, are not the address.
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or_else(|| host.strip_suffix('.').unwrap_or(host));
            assert_eq!(bare.parse::<std::net::IpAddr>().ok(), Some(*ip), "{host:?}");
        }
    }
    // As the device would send it again.
    let again: http::uri::Authority = dest
        .to_string()
        .parse()
        .expect("a destination's text is an authority");
    assert_eq!(Destination::from_authority(&again).as_ref(), Ok(&dest));
});
