//! The HTTP/2 CONNECT authority a device sends for a tunnel, split as the
//! gateway's server does (`http::uri::Authority`, then
//! `gateway::dial::Host::parse` on its host and `port_u16`). No input may
//! panic; a name that passes is a plain lowercase DNS name; an address
//! that passes is what the authority said.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_gateway::dial::Host;

fuzz_target!(|data: &[u8]| {
    // As h2 hands it over: bytes, not necessarily UTF-8.
    let Ok(authority) = http::uri::Authority::try_from(data) else {
        return;
    };
    let port = authority.port_u16();
    match Host::parse(authority.host()) {
        Ok(Host::Name(name)) => {
            assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
                "{name:?}"
            );
            assert!(!name.ends_with('.') && !name.contains(".."), "{name:?}");
        }
        Ok(Host::Ip(ip)) => {
            let host = authority.host();
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            assert_eq!(bare.parse::<std::net::IpAddr>().ok(), Some(ip), "{host:?}");
        }
        Err(_) => {}
    }
    // The same text as a full CONNECT URI, as the proxy builds the request.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(uri) = text.parse::<http::Uri>()
        && let Some(a) = uri.authority()
    {
        let _ = (Host::parse(a.host()), a.port_u16());
    }
    let _ = port;
});
