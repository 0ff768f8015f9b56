//! What a browser (or anything else) sends to the SOCKS port starting with
//! `G`: the HTTP request head the PAC server answers
//! (`shimgate_proxy::pac::status_for`). No input may panic, and the file is
//! served only for a GET of its path that names this machine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let status = shimgate_proxy::pac::status_for(data);
    if status == "200 OK" {
        let text = String::from_utf8_lossy(data);
        assert!(text.starts_with("GET "), "{text:?}");
        assert!(
            text.contains("/proxy.pac") || text.contains("/wpad.dat"),
            "{text:?}"
        );
    }
});
