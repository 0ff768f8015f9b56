//! The encrypted link between two devices, the data plane of peer-to-peer
//! sessions (DESIGN.md "Peer to peer"; the brokering that hands both ends
//! the key comes with the peer issue).
//!
//! Noise `NNpsk0_25519_AESGCM_SHA256`: the 256-bit key the gateway brokered
//! is the PSK, so only the two devices the gateway authenticated can finish
//! the handshake; the ephemeral DH gives forward secrecy even against a
//! later leak of that key. The prologue binds the protocol version, the
//! session id, both device names and the port, so a handshake cannot be
//! moved to another session or service. Afterwards each Noise transport
//! message is one frame (2-byte big-endian length, then the message); its
//! nonce makes replayed, reordered or altered frames fail authentication,
//! which ends the link.
//!
//! AES-256-GCM comes from aws-lc-rs, not snow's RustCrypto default: it is
//! about 5× faster on this CPU (`../shared/STACK.md`).

use std::io;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
const PROLOGUE_TAG: &[u8] = b"shimgate-peer-v1";
/// Largest Noise message, and so largest frame body.
const MAX_MESSAGE: usize = 65535;
const TAG: usize = 16;
/// Largest plaintext one frame carries.
pub const MAX_PAYLOAD: usize = MAX_MESSAGE - TAG;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("peer link: {0}")]
    Io(#[from] io::Error),
    #[error(
        "peer handshake failed (wrong key, another session, or not the peer the gateway named): {0}"
    )]
    Handshake(snow::Error),
    #[error("a peer frame failed authentication (altered, replayed or reordered): link closed")]
    Tampered,
}

/// What both ends must agree on besides the key.
pub struct Prologue<'a> {
    pub session_id: [u8; 16],
    pub initiator: &'a str,
    pub responder: &'a str,
    pub port: u16,
}

impl Prologue<'_> {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(PROLOGUE_TAG);
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

/// AES-256-GCM from aws-lc-rs, in the shape snow wants.
#[derive(Default)]
struct AwsAesGcm {
    key: Option<LessSafeKey>,
}

fn noise_nonce(n: u64) -> Nonce {
    // Noise AESGCM: 32 bits of zeros, then the counter big-endian.
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

impl Cipher for AwsAesGcm {
    fn name(&self) -> &'static str {
        "AESGCM"
    }

    fn set(&mut self, key: &[u8; 32]) {
        self.key = UnboundKey::new(&AES_256_GCM, key)
            .ok()
            .map(LessSafeKey::new);
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let len = plaintext.len();
        let (Some(key), Some(body)) = (&self.key, out.get_mut(..len)) else {
            return 0;
        };
        body.copy_from_slice(plaintext);
        match key.seal_in_place_separate_tag(noise_nonce(nonce), Aad::from(authtext), body) {
            Ok(tag) => match out.get_mut(len..len + TAG) {
                Some(slot) => {
                    slot.copy_from_slice(tag.as_ref());
                    len + TAG
                }
                None => 0,
            },
            Err(_) => 0,
        }
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let key = self.key.as_ref().ok_or(snow::Error::Decrypt)?;
        let len = ciphertext
            .len()
            .checked_sub(TAG)
            .ok_or(snow::Error::Decrypt)?;
        let (body, tag) = ciphertext.split_at(len);
        let plain = out.get_mut(..len).ok_or(snow::Error::Decrypt)?;
        key.open_separate_gather(noise_nonce(nonce), Aad::from(authtext), body, tag, plain)
            .map_err(|_| snow::Error::Decrypt)?;
        Ok(len)
    }
}

struct AwsResolver;

impl CryptoResolver for AwsResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }
    fn resolve_dh(&self, _: &DHChoice) -> Option<Box<dyn Dh>> {
        None
    }
    fn resolve_hash(&self, _: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        matches!(choice, CipherChoice::AESGCM)
            .then(|| Box::new(AwsAesGcm::default()) as Box<dyn Cipher>)
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

/// One established link over `io`.
pub struct PeerLink<S> {
    io: S,
    noise: snow::TransportState,
    frame: Vec<u8>,
}

async fn write_frame<S: AsyncWrite + Unpin>(io: &mut S, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut frame = Vec::with_capacity(2 + message.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    io.write_all(&frame).await
}

/// Reads one frame into `buf`; `Ok(false)` on a clean end of stream before it.
async fn read_frame<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 2];
    match io.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    buf.resize(usize::from(u16::from_be_bytes(len)), 0);
    io.read_exact(buf).await?;
    Ok(true)
}

async fn expect_frame<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(), LinkError> {
    if read_frame(io, buf).await? {
        Ok(())
    } else {
        Err(LinkError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed during the handshake",
        )))
    }
}

/// The requesting device's side: `-> e, psk` then `<- e, ee`.
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    key: &[u8; 32],
    prologue: &Prologue<'_>,
) -> Result<PeerLink<S>, LinkError> {
    let mut hs = handshake_state(key, prologue, true)?;
    let mut msg = vec![0u8; MAX_MESSAGE];
    let n = hs
        .write_message(&[], &mut msg)
        .map_err(LinkError::Handshake)?;
    write_frame(&mut io, &msg[..n]).await?;
    let mut frame = Vec::new();
    expect_frame(&mut io, &mut frame).await?;
    hs.read_message(&frame, &mut msg)
        .map_err(LinkError::Handshake)?;
    let noise = hs.into_transport_mode().map_err(LinkError::Handshake)?;
    Ok(PeerLink { io, noise, frame })
}

/// The exporting device's side.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    key: &[u8; 32],
    prologue: &Prologue<'_>,
) -> Result<PeerLink<S>, LinkError> {
    let mut hs = handshake_state(key, prologue, false)?;
    let mut frame = Vec::new();
    expect_frame(&mut io, &mut frame).await?;
    let mut msg = vec![0u8; MAX_MESSAGE];
    hs.read_message(&frame, &mut msg)
        .map_err(LinkError::Handshake)?;
    let n = hs
        .write_message(&[], &mut msg)
        .map_err(LinkError::Handshake)?;
    write_frame(&mut io, &msg[..n]).await?;
    let noise = hs.into_transport_mode().map_err(LinkError::Handshake)?;
    Ok(PeerLink { io, noise, frame })
}

impl<S: AsyncRead + AsyncWrite + Unpin> PeerLink<S> {
    /// Encrypts and sends `data` (in as many frames as it takes).
    pub async fn send(&mut self, data: &[u8]) -> Result<(), LinkError> {
        let mut msg = vec![0u8; MAX_MESSAGE];
        for chunk in data.chunks(MAX_PAYLOAD) {
            let n = self
                .noise
                .write_message(chunk, &mut msg)
                .map_err(LinkError::Handshake)?;
            write_frame(&mut self.io, &msg[..n]).await?;
        }
        Ok(())
    }

    /// The next frame's plaintext; `None` when the peer closed cleanly.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        if !read_frame(&mut self.io, &mut self.frame).await? {
            return Ok(None);
        }
        let mut plain = vec![0u8; self.frame.len()];
        let n = self
            .noise
            .read_message(&self.frame, &mut plain)
            .map_err(|_| LinkError::Tampered)?;
        plain.truncate(n);
        Ok(Some(plain))
    }

    pub fn into_inner(self) -> S {
        self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{DuplexStream, duplex};

    const KEY: [u8; 32] = [7; 32];

    fn prologue(session: u8) -> Prologue<'static> {
        Prologue {
            session_id: [session; 16],
            initiator: "alice",
            responder: "bob",
            port: 8000,
        }
    }

    async fn pair(
        a_key: [u8; 32],
        b_key: [u8; 32],
        a_session: u8,
        b_session: u8,
    ) -> (
        Result<PeerLink<DuplexStream>, LinkError>,
        Result<PeerLink<DuplexStream>, LinkError>,
    ) {
        let (a, b) = duplex(1 << 20);
        let pa = prologue(a_session);
        let pb = prologue(b_session);
        tokio::join!(initiate(a, &a_key, &pa), respond(b, &b_key, &pb))
    }

    #[tokio::test]
    async fn carries_bytes_both_ways() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (sent, got) = tokio::join!(a.send(&big), async {
            let mut got = Vec::new();
            while got.len() < big.len() {
                got.extend(b.recv().await.unwrap().unwrap());
            }
            got
        });
        sent.unwrap();
        assert_eq!(got, big);
        b.send(b"pong").await.unwrap();
        assert_eq!(a.recv().await.unwrap().unwrap(), b"pong");
        drop(b);
        assert!(
            a.recv().await.unwrap().is_none(),
            "clean close reads as end of stream"
        );
    }

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
    async fn another_session_fails_the_handshake() {
        let (_, b) = pair(KEY, KEY, 1, 2).await;
        assert!(matches!(b, Err(LinkError::Handshake(_))));
    }

    /// A link whose frames pass through a relay the test controls.
    async fn relayed() -> (
        PeerLink<DuplexStream>,
        PeerLink<DuplexStream>,
        DuplexStream,
        DuplexStream,
    ) {
        let (a_io, mut mid_a) = duplex(1 << 20);
        let (mut mid_b, b_io) = duplex(1 << 20);
        let p = prologue(3);
        let relay = async {
            let mut frame = Vec::new();
            read_frame(&mut mid_a, &mut frame).await.unwrap();
            write_frame(&mut mid_b, &frame).await.unwrap();
            read_frame(&mut mid_b, &mut frame).await.unwrap();
            write_frame(&mut mid_a, &frame).await.unwrap();
        };
        let (a, b, ()) = tokio::join!(initiate(a_io, &KEY, &p), respond(b_io, &KEY, &p), relay);
        (a.unwrap(), b.unwrap(), mid_a, mid_b)
    }

    #[tokio::test]
    async fn a_flipped_bit_is_refused() {
        let (mut a, mut b, mut mid_a, mut mid_b) = relayed().await;
        a.send(b"hello").await.unwrap();
        let mut frame = Vec::new();
        read_frame(&mut mid_a, &mut frame).await.unwrap();
        frame[3] ^= 1;
        write_frame(&mut mid_b, &frame).await.unwrap();
        assert!(matches!(b.recv().await, Err(LinkError::Tampered)));
    }

    #[tokio::test]
    async fn a_replayed_frame_is_refused() {
        let (mut a, mut b, mut mid_a, mut mid_b) = relayed().await;
        a.send(b"pay 10").await.unwrap();
        let mut frame = Vec::new();
        read_frame(&mut mid_a, &mut frame).await.unwrap();
        write_frame(&mut mid_b, &frame).await.unwrap();
        assert_eq!(b.recv().await.unwrap().unwrap(), b"pay 10");
        write_frame(&mut mid_b, &frame).await.unwrap();
        assert!(matches!(b.recv().await, Err(LinkError::Tampered)));
    }

    #[test]
    fn aws_cipher_matches_the_noise_nonce_layout() {
        let mut c = AwsAesGcm::default();
        c.set(&KEY);
        let mut out = [0u8; 5 + TAG];
        assert_eq!(c.encrypt(9, b"ad", b"hello", &mut out), 5 + TAG);
        let mut back = [0u8; 5];
        assert_eq!(c.decrypt(9, b"ad", &out, &mut back).unwrap(), 5);
        assert_eq!(&back, b"hello");
        assert!(
            c.decrypt(10, b"ad", &out, &mut back).is_err(),
            "another nonce must fail"
        );
        assert!(
            c.decrypt(9, b"xx", &out, &mut back).is_err(),
            "other associated data must fail"
        );
        assert!(
            c.decrypt(9, b"ad", &out[..4], &mut back).is_err(),
            "short input must fail"
        );
    }
}
