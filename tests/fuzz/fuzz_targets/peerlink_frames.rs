//! An established peer link's reader, fed transport frames. A real
//! handshake runs first (initiator and responder in memory), then the
//! responder's reader gets either
//! - raw bytes (first input byte even): any frame stream a man in the
//!   middle could inject; or
//! - frames the initiator really sealed (first byte odd), cut into payloads
//!   of input-chosen sizes, optionally closed, then altered at
//!   input-chosen places.
//!
//! Whatever arrives, the reader returns only data the initiator sent, in
//! order (a prefix of it); an unaltered stream arrives whole and ends with
//! a clean close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_fuzz::runtime;
use shimgate_wire::control::PeerProto;
use shimgate_wire::peerlink::{Prologue, initiate, read_session_id, respond};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

const KEY: [u8; 32] = [7; 32];
/// Session id, frame length and the first Noise message (`e` and the tag
/// of the empty payload) of NNpsk0.
const FIRST_FLIGHT: usize = 16 + 2 + 32 + 16;

const PROLOGUE: Prologue<'static> = Prologue {
    session_id: [1; 16],
    initiator: "alice",
    responder: "bob",
    port: 8000,
    proto: PeerProto::Tcp,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    runtime().block_on(async {
        // initiator -> `out` -> (this code) -> `inject` -> responder
        let (init_w, mut out) = duplex(1 << 20);
        let (mut inject, resp_r) = duplex(1 << 20);
        // responder -> initiator, straight
        let (resp_w, init_r) = duplex(1 << 20);
        let pump = async {
            let mut first = [0u8; FIRST_FLIGHT];
            out.read_exact(&mut first).await.expect("first flight");
            inject.write_all(&first).await.expect("forward");
        };
        let responder = async {
            let (id, rd) = read_session_id(resp_r).await?;
            assert_eq!(id, PROLOGUE.session_id);
            respond(rd, resp_w, &KEY, &PROLOGUE).await
        };
        let (initiator, responder, ()) =
            tokio::join!(initiate(init_r, init_w, &KEY, &PROLOGUE), responder, pump);
        let mut initiator = initiator.expect("initiator handshake");
        let mut responder = responder.expect("responder handshake");

        let mut sent = Vec::new();
        let mut altered = false;
        let mut clean_close = false;
        if mode & 1 == 0 {
            // Raw bytes: nothing was sent, so nothing may be received.
            inject.write_all(rest).await.expect("inject");
            altered = true;
        } else {
            // [n][size]* up to n payloads, then [flips][offset_hi offset_lo xor]*
            let (&count, mut ops) = rest.split_first().unwrap_or((&0, &[]));
            for _ in 0..count % 8 {
                let Some((&size, tail)) = ops.split_first() else {
                    break;
                };
                ops = tail;
                let payload: Vec<u8> = (0..usize::from(size) * 37).map(|i| i as u8).collect();
                initiator.writer.send(&payload).await.expect("seal");
                sent.extend_from_slice(&payload);
            }
            if count & 0x80 != 0 {
                initiator.writer.close().await.expect("close");
                clean_close = true;
            }
            drop(initiator);
            let mut wire = Vec::new();
            out.read_to_end(&mut wire).await.expect("sealed frames");
            for flip in ops.chunks_exact(3) {
                let at = usize::from(u16::from_be_bytes([flip[0], flip[1]]));
                if flip[2] != 0 && !wire.is_empty() {
                    let at = at % wire.len();
                    wire[at] ^= flip[2];
                    altered = true;
                }
            }
            inject.write_all(&wire).await.expect("inject");
        }
        drop(inject);

        let mut got = Vec::new();
        let end = loop {
            match responder.reader.recv().await {
                Ok(Some(d)) => got.extend_from_slice(d),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        assert!(
            sent.starts_with(&got),
            "the reader returned data the initiator never sent"
        );
        if !altered {
            assert_eq!(got, sent, "an unaltered stream arrives whole");
            assert_eq!(end.is_ok(), clean_close, "ends cleanly exactly when closed");
        }
    });
});
