//! The control stream (`POST /v1/control`): length-prefixed JSON messages
//! arriving in arbitrary pieces. The first byte picks the direction (what
//! the gateway reads from a device, or a device from the gateway) and the
//! piece size; the rest is the stream. No input may panic, and the decoder
//! must never hand out more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_wire::control::{Decoder, DeviceMsg, GatewayMsg, encode};

fn drain<T: serde::de::DeserializeOwned + serde::Serialize>(
    d: &mut Decoder,
    got: &mut Vec<T>,
) -> bool {
    loop {
        match d.message::<T>() {
            Ok(Some(m)) => got.push(m),
            Ok(None) => return true,
            // The connection is closed on any error: stop feeding it.
            Err(_) => return false,
        }
    }
}

fn run<T: serde::de::DeserializeOwned + serde::Serialize>(piece: usize, stream: &[u8]) {
    let mut d = Decoder::default();
    let mut got: Vec<T> = Vec::new();
    for chunk in stream.chunks(piece) {
        if d.push(chunk).is_err() || !drain(&mut d, &mut got) {
            break;
        }
    }
    // What decoded re-encodes (the gateway forwards parts of it).
    for m in &got {
        let _ = encode(m);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(head >> 1).max(1);
    if head & 1 == 0 {
        run::<DeviceMsg>(piece, stream);
    } else {
        run::<GatewayMsg>(piece, stream);
    }
});
