//! Opening a link: the session id the initiator sends first, the prologue
//! both ends bind, and the Noise handshake that ends in each direction's
//! key.

use snow::resolvers::{DefaultResolver, FallbackResolver};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use super::cipher::{AwsResolver, Direction};
use super::frame::{Inbox, push_frame};
use super::link::Link;
use super::{HANDSHAKE_TIMEOUT, LinkError, MAX_MESSAGE, PATTERN, SESSION_ID_LEN};
use crate::control::PeerProto;

const PROLOGUE_TAG: &[u8] = b"shimgate-peer-v1";
/// A UDP session's tag: a handshake for one transport can't open the other.
const PROLOGUE_TAG_UDP: &[u8] = b"shimgate-peer-udp-v1";

/// What both ends must agree on besides the key.
pub struct Prologue<'a> {
    pub session_id: [u8; 16],
    pub initiator: &'a str,
    pub responder: &'a str,
    pub port: u16,
    pub proto: PeerProto,
}

impl Prologue<'_> {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(match self.proto {
            PeerProto::Tcp => PROLOGUE_TAG,
            PeerProto::Udp => PROLOGUE_TAG_UDP,
        });
        out.extend_from_slice(&self.session_id);
        for name in [self.initiator, self.responder] {
            // Device names are at most 63 bytes; the length keeps "a"+"bc" and "ab"+"c" apart.
            out.push(name.len().min(255) as u8);
            out.extend_from_slice(name.as_bytes());
        }
        out.extend_from_slice(&self.port.to_be_bytes());
        out
    }
}

fn handshake_state(
    key: &[u8; 32],
    prologue: &Prologue,
    initiator: bool,
) -> Result<snow::HandshakeState, LinkError> {
    let params = PATTERN.parse().map_err(LinkError::Handshake)?;
    let resolver = Box::new(FallbackResolver::new(
        Box::new(AwsResolver),
        Box::new(DefaultResolver),
    ));
    let prologue = prologue.bytes();
    let builder = snow::Builder::with_resolver(params, resolver)
        .psk(0, key)
        .and_then(|b| b.prologue(&prologue))
        .map_err(LinkError::Handshake)?;
    let state = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    };
    state.map_err(LinkError::Handshake)
}

/// Runs the handshake on `rd`/`wr` and returns the two directions: the
/// initiator sends with the first key of the split.
async fn finish<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut hs: snow::HandshakeState,
    initiator: bool,
    rd: &mut Inbox<R>,
    wr: &mut W,
    preface: Option<[u8; SESSION_ID_LEN]>,
) -> Result<(Direction, Direction), LinkError> {
    let mut msg = vec![0u8; MAX_MESSAGE];
    if initiator {
        let n = hs
            .write_message(&[], &mut msg)
            .map_err(LinkError::Handshake)?;
        // Session id and first message in one write: one packet on the wire.
        let mut out = Vec::with_capacity(SESSION_ID_LEN + 2 + n);
        out.extend_from_slice(&preface.unwrap_or_default());
        push_frame(&mut out, msg.get(..n).unwrap_or_default())?;
        wr.write_all(&out).await?;
        let frame = rd.expect_frame().await?;
        hs.read_message(rd.bytes(frame), &mut msg)
            .map_err(LinkError::Handshake)?;
    } else {
        let frame = rd.expect_frame().await?;
        hs.read_message(rd.bytes(frame), &mut msg)
            .map_err(LinkError::Handshake)?;
        let n = hs
            .write_message(&[], &mut msg)
            .map_err(LinkError::Handshake)?;
        let mut out = Vec::with_capacity(2 + n);
        push_frame(&mut out, msg.get(..n).unwrap_or_default())?;
        wr.write_all(&out).await?;
    }
    if !hs.is_handshake_finished() {
        return Err(LinkError::Handshake(snow::Error::State(
            snow::error::StateProblem::HandshakeNotFinished,
        )));
    }
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (i2r, r2i) = (Zeroizing::new(i2r), Zeroizing::new(r2i));
    let (i2r, r2i) = (Direction::new(&i2r)?, Direction::new(&r2i)?);
    Ok(if initiator { (i2r, r2i) } else { (r2i, i2r) })
}

/// The requesting device's side: session id, `-> e, psk`, then `<- e, ee`.
pub async fn initiate<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: R,
    mut wr: W,
    key: &[u8; 32],
    prologue: &Prologue<'_>,
) -> Result<Link<R, W>, LinkError> {
    let hs = handshake_state(key, prologue, true)?;
    let mut rd = Inbox::new(rd);
    let (send, recv) = finish(hs, true, &mut rd, &mut wr, Some(prologue.session_id)).await?;
    Ok(Link::new(rd, wr, send, recv))
}

/// The exporting device's side, step one: which session the initiator
/// claims (within [`HANDSHAKE_TIMEOUT`]). The caller looks up its key and
/// hands both to [`respond`].
pub async fn read_session_id<R: AsyncRead + Unpin>(
    rd: R,
) -> Result<([u8; SESSION_ID_LEN], Inbox<R>), LinkError> {
    let mut rd = Inbox::new(rd);
    let r = tokio::time::timeout(HANDSHAKE_TIMEOUT, rd.take(SESSION_ID_LEN))
        .await
        .map_err(|_| LinkError::Timeout)??;
    let mut id = [0u8; SESSION_ID_LEN];
    id.copy_from_slice(rd.bytes(r));
    Ok((id, rd))
}

/// The exporting device's side, step two: the handshake.
pub async fn respond<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut rd: Inbox<R>,
    mut wr: W,
    key: &[u8; 32],
    prologue: &Prologue<'_>,
) -> Result<Link<R, W>, LinkError> {
    let hs = handshake_state(key, prologue, false)?;
    let handshake = finish(hs, false, &mut rd, &mut wr, None);
    let (send, recv) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| LinkError::Timeout)??;
    Ok(Link::new(rd, wr, send, recv))
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, split};

    use super::*;
    use crate::peerlink::testing::{KEY, pair, prologue};

    #[tokio::test]
    async fn wrong_key_fails_the_handshake() {
        let (a, b) = pair(KEY, [8; 32], 1, 1).await;
        assert!(
            matches!(b, Err(LinkError::Handshake(_))),
            "responder accepted a wrong key"
        );
        assert!(a.is_err());
    }

    #[tokio::test]
    async fn a_tcp_session_cannot_be_opened_as_udp() {
        let (a, b) = duplex(1 << 16);
        let (ar, aw) = split(a);
        let (br, bw) = split(b);
        let udp = Prologue {
            proto: PeerProto::Udp,
            ..prologue(1)
        };
        let responder = async {
            let (_, br) = read_session_id(br).await?;
            respond(br, bw, &KEY, &prologue(1)).await
        };
        let (_, b) = tokio::join!(initiate(ar, aw, &KEY, &udp), responder);
        assert!(matches!(b, Err(LinkError::Handshake(_))));
    }

    #[tokio::test]
    async fn another_session_fails_the_handshake() {
        let (_, b) = pair(KEY, KEY, 1, 2).await;
        assert!(matches!(b, Err(LinkError::Handshake(_))));
    }
}
