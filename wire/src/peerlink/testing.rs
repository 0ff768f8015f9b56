//! Test helpers: both ends of a link over an in-memory pipe.

use tokio::io::{DuplexStream, ReadHalf, WriteHalf, duplex, split};

use super::{Link, LinkError, Prologue, initiate, read_session_id, respond};
use crate::control::PeerProto;

pub(super) const KEY: [u8; 32] = [7; 32];

pub(super) type Half = Link<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>;

pub(super) fn prologue(session: u8) -> Prologue<'static> {
    Prologue {
        session_id: [session; 16],
        initiator: "alice",
        responder: "bob",
        port: 8000,
        proto: PeerProto::Tcp,
    }
}

/// Both ends over `a`/`b`; the responder checks the session id it reads.
pub(super) async fn handshake(
    a: DuplexStream,
    b: DuplexStream,
    a_key: [u8; 32],
    b_key: [u8; 32],
    a_session: u8,
    b_session: u8,
) -> (Result<Half, LinkError>, Result<Half, LinkError>) {
    let (pa, pb) = (prologue(a_session), prologue(b_session));
    let (ar, aw) = split(a);
    let (br, bw) = split(b);
    let responder = async {
        let (id, br) = read_session_id(br).await?;
        assert_eq!(
            id, [a_session; 16],
            "the session id travels first, in clear"
        );
        respond(br, bw, &b_key, &pb).await
    };
    tokio::join!(initiate(ar, aw, &a_key, &pa), responder)
}

pub(super) async fn pair(
    a_key: [u8; 32],
    b_key: [u8; 32],
    a_session: u8,
    b_session: u8,
) -> (Result<Half, LinkError>, Result<Half, LinkError>) {
    let (a, b) = duplex(1 << 20);
    handshake(a, b, a_key, b_key, a_session, b_session).await
}
