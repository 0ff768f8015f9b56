//! A packet a program on the device writes into the TUN interface, read as
//! TUN mode reads it (`proxy::tun::packet`), and the answers made from it.
//! No input may panic; an answer parses back as what it answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_proxy::tun::packet::{self, Packet, Unreachable};

fuzz_target!(|data: &[u8]| {
    let Some(parsed) = packet::parse(data) else {
        assert!(packet::unreachable(data, Unreachable::Host).is_none() || data.len() >= 20);
        return;
    };
    if !matches!(parsed, Packet::IcmpError)
        && let Some(icmp) = packet::unreachable(data, Unreachable::Prohibited)
    {
        assert_eq!(packet::parse(&icmp), Some(Packet::IcmpError));
    }
    match parsed {
        Packet::Tcp(seg) if seg.is_open() => {
            let Some(Packet::Tcp(rst)) = packet::parse(&packet::reset_syn(&seg)) else {
                panic!("a reset that does not parse");
            };
            assert!(rst.rst && rst.key.program == seg.key.dest);
        }
        Packet::Udp { key, payload } if payload.len() < 60_000 => {
            let back = packet::datagram(key, payload);
            let Some(Packet::Udp { payload: p, .. }) = packet::parse(&back) else {
                panic!("a datagram that does not parse");
            };
            assert_eq!(p, payload);
        }
        Packet::Echo(echo) => {
            assert!(matches!(packet::parse(&packet::echo_reply(&echo)), Some(Packet::Other { .. })));
        }
        _ => {}
    }
});
