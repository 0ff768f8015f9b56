//! A DNS query a program sends TUN mode's responder (`wire::dns`).
//! No input may panic; a query's answer echoes its id and is not itself
//! taken for a query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_wire::dns;

fuzz_target!(|data: &[u8]| {
    let Some(q) = dns::parse(data) else {
        return;
    };
    assert!(q.name.len() <= 255, "{:?}", q.name);
    let addrs = ["198.18.0.1".parse().unwrap(), "2001:2::1".parse().unwrap()];
    let a = dns::answer(&q, dns::NOERROR, &addrs);
    assert_eq!(a.get(..2), Some(&q.id.to_be_bytes()[..]));
    assert!(dns::parse(&a).is_none(), "an answer read as a query");
});
