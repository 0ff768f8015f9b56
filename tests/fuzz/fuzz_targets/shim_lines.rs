//! What a local program (through the preload library, or any process of
//! the device's user) sends `up` on the shim socket, what `up` answers, and
//! the origin header a device sends the gateway: no input may panic; what
//! parses encodes to one line that parses back the same; the split's
//! questions answer for any name or address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_wire::origin::Origin;
use shimgate_wire::shimsock::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(request) = Request::parse(text) {
        let line = request.encode();
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert_eq!(Request::parse(&line).as_ref(), Ok(&request));
    }
    if let Ok(reply) = Reply::parse(text) {
        let line = reply.encode();
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert_eq!(Reply::parse(&line).as_ref(), Ok(&reply));
        if let Reply::Split(split) = &reply {
            let _ = split.covers_name(text);
            if let Ok(ip) = text.trim().parse() {
                let _ = split.covers(ip);
            }
        }
    }
    if let Some(origin) = Origin::parse(text) {
        assert_eq!(Origin::parse(&origin.encode()), Some(origin));
    }
});
