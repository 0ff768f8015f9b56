//! Enrollment and renewal: the JSON bodies both ends read
//! (`shimgate_wire::enroll`) and the CSR the gateway parses from them
//! (`gateway::ca::Csr::parse`). First byte even: the input is a JSON body,
//! tried as every message type, and a request's `csr_pem` is parsed. First
//! byte odd: the rest is the DER of a CSR, wrapped in PEM, so the fuzzer
//! mutates the ASN.1 directly instead of base64 text.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use shimgate_gateway::ca::Csr;
use shimgate_wire::enroll::{
    EnrollRequest, EnrollResponse, ErrorBody, RenewRequest, RenewResponse, Routes, WhoAmI,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            STANDARD.encode(rest)
        );
        let _ = Csr::parse(&pem);
        return;
    }
    // What the gateway reads from a device that has no certificate yet.
    if let Ok(req) = serde_json::from_slice::<EnrollRequest>(rest) {
        let _ = Csr::parse(&req.csr_pem);
    }
    if let Ok(req) = serde_json::from_slice::<RenewRequest>(rest) {
        let _ = Csr::parse(&req.csr_pem);
    }
    // What a device reads from the gateway (or from whoever answers at its address).
    let _ = serde_json::from_slice::<EnrollResponse>(rest);
    let _ = serde_json::from_slice::<RenewResponse>(rest);
    let _ = serde_json::from_slice::<WhoAmI>(rest);
    let _ = serde_json::from_slice::<ErrorBody>(rest);
    if let Ok(routes) = serde_json::from_slice::<Routes>(rest) {
        // The routes go into the PAC file a browser runs: whatever they
        // say, the file stays one function whose strings stay strings.
        let pac = shimgate_proxy::pac::generate(
            "127.0.0.1:1080".parse().expect("address"),
            "vpn.internal",
            shimgate_wire::identity::VpnRange::DEFAULT,
            &routes,
        );
        assert_eq!(pac.matches("function ").count(), 1, "{pac}");
    }
});
