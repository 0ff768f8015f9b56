//! A peer listener's first flight: whatever a stranger sends to a device's
//! peer port goes to `read_session_id` and then `respond` (the exporting
//! device's side of the Noise handshake). No input may panic or hang; with
//! a key the stranger does not know, no input may complete the handshake.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_fuzz::runtime;
use shimgate_wire::control::PeerProto;
use shimgate_wire::peerlink::{Prologue, read_session_id, respond};
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(data.len().max(1) + 64);
        client.write_all(data).await.expect("fits the pipe");
        // End of stream after the input: the responder must not wait for more.
        client.shutdown().await.expect("shutdown");
        let Ok((id, rd)) = read_session_id(server).await else {
            return;
        };
        let prologue = Prologue {
            session_id: id,
            initiator: "alice",
            responder: "bob",
            port: 8000,
            proto: PeerProto::Tcp,
        };
        let result = respond(rd, tokio::io::sink(), &[7; 32], &prologue).await;
        assert!(
            result.is_err(),
            "a handshake completed without the initiator's key"
        );
        drop(client);
    });
});
