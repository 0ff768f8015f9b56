//! The peer-session JSON bodies: a device's `SessionRequest` (read by the
//! gateway) and the gateway's `Grant` (read by the device). Anything either
//! parses or is refused; what parses serialises again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_wire::control::{Grant, SessionRequest, to_json};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<SessionRequest>(data) {
        let back = to_json(&req).expect("a parsed request serialises");
        let again: SessionRequest = serde_json::from_slice(&back).expect("and parses again");
        assert_eq!((again.peer, again.port), (req.peer, req.port));
    }
    if let Ok(grant) = serde_json::from_slice::<Grant>(data) {
        let back = to_json(&grant).expect("a parsed grant serialises");
        let again: Grant = serde_json::from_slice(&back).expect("and parses again");
        assert_eq!(again.key.bytes(), grant.key.bytes());
        assert_eq!(again.session, grant.session);
        assert_eq!(again.endpoints, grant.endpoints);
    }
});
