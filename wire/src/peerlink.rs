//! The encrypted link between two devices, the data plane of peer-to-peer
//! sessions (DESIGN.md "Peer to peer"; docs/ARCHITECTURE.md "Peer protocol").
//!
//! The initiator opens with the 16-byte session id in clear (the responder
//! needs it to find the key; it is single use and names nothing secret),
//! then Noise `NNpsk0_25519_AESGCM_SHA256`: the 256-bit key the gateway
//! brokered is the PSK, so only the two devices the gateway authenticated
//! can finish the handshake; the ephemeral DH gives forward secrecy even
//! against a later leak of that key. The prologue binds the protocol
//! version, the session id, both device names and the port, so a handshake
//! cannot be moved to another session or service.
//!
//! After the handshake each direction has its own AES-256-GCM key (Noise's
//! split) and counter nonce, owned by that direction's task, so the two
//! directions run on their own without a lock. A frame is a 2-byte
//! big-endian length, then `seal(kind || payload)` with its 16-byte tag.
//! Kinds: data; rekey (the sender switches to `REKEY(k)` after this frame,
//! as Noise defines it, every [`REKEY_FRAMES`] frames or [`REKEY_AGE`]);
//! close (an authenticated end of stream, so a forged TCP FIN reads as an
//! error, not as the end of the data). Any frame that fails authentication
//! (altered, replayed, reordered, or under the wrong key) ends the link.
//!
//! AES-256-GCM comes from aws-lc-rs, not snow's RustCrypto default: it is
//! about 5× faster on this CPU (`../shared/STACK.md`).

use std::io;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use std::ops::Range;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::control::PeerProto;

pub const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
const PROLOGUE_TAG: &[u8] = b"shimgate-peer-v1";
/// A UDP session's tag: a handshake for one transport can't open the other.
const PROLOGUE_TAG_UDP: &[u8] = b"shimgate-peer-udp-v1";
/// Length of the session id the initiator sends first.
pub const SESSION_ID_LEN: usize = 16;
/// Largest Noise message, and so largest frame body.
const MAX_MESSAGE: usize = 65535;
const TAG: usize = 16;
/// Largest payload one frame carries (one byte goes to the frame kind).
pub const MAX_PAYLOAD: usize = MAX_MESSAGE - TAG - 1;
/// A direction changes its key after this many frames (at most 4 GiB)...
pub const REKEY_FRAMES: u64 = 1 << 16;
/// ...or when its key is this old, whichever comes first.
pub const REKEY_AGE: Duration = Duration::from_secs(600);
/// The responder waits this long for the initiator's first bytes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

const KIND_DATA: u8 = 0;
const KIND_REKEY: u8 = 1;
const KIND_CLOSE: u8 = 2;

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
    #[error("the peer link ended without the peer closing it (cut, or a forged end of stream)")]
    Truncated,
    #[error("the peer took too long to start the handshake")]
    Timeout,
}

impl From<LinkError> for io::Error {
    fn from(e: LinkError) -> io::Error {
        match e {
            LinkError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::ConnectionAborted, other),
        }
    }
}

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

/// One direction's key and nonce counter.
struct Direction {
    key: LessSafeKey,
    nonce: u64,
    frames: u64,
    keyed_at: Instant,
}

impl Direction {
    fn new(raw: &[u8; 32]) -> Result<Direction, LinkError> {
        let key = UnboundKey::new(&AES_256_GCM, raw)
            .map_err(|_| LinkError::Handshake(snow::Error::Decrypt))?;
        Ok(Direction {
            key: LessSafeKey::new(key),
            nonce: 0,
            frames: 0,
            keyed_at: Instant::now(),
        })
    }

    fn next_nonce(&mut self) -> Result<Nonce, LinkError> {
        // The last nonce belongs to REKEY; a link never gets near it.
        if self.nonce >= u64::MAX - 1 {
            return Err(LinkError::Tampered);
        }
        let n = noise_nonce(self.nonce);
        self.nonce += 1;
        self.frames += 1;
        Ok(n)
    }

    /// Noise's REKEY(k): the first 32 bytes of ENCRYPT(k, 2^64-1, "", zeros).
    fn rekey(&mut self) -> Result<(), LinkError> {
        let mut next = Zeroizing::new([0u8; 32]);
        // The tag is not part of the new key.
        let _tag = self
            .key
            .seal_in_place_separate_tag(noise_nonce(u64::MAX), Aad::empty(), &mut next[..])
            .map_err(|_| LinkError::Tampered)?;
        let key = UnboundKey::new(&AES_256_GCM, &next[..]).map_err(|_| LinkError::Tampered)?;
        self.key = LessSafeKey::new(key);
        self.frames = 0;
        self.keyed_at = Instant::now();
        Ok(())
    }

    fn due(&self) -> bool {
        self.frames >= REKEY_FRAMES || self.keyed_at.elapsed() >= REKEY_AGE
    }
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

fn push_frame(out: &mut Vec<u8>, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| io::Error::other("frame too large"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(())
}

/// Bytes received on a link's stream, buffered so that one read can bring
/// in several frames. Starts small (idle links cost little) and grows while
/// reads fill it (a bulk transfer), up to [`READ_BUFFER`].
pub struct Inbox<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> Inbox<R> {
    fn new(io: R) -> Inbox<R> {
        Inbox {
            io,
            buf: vec![0u8; FIRST_READ],
            start: 0,
            end: 0,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    fn bytes(&self, r: Range<usize>) -> &[u8] {
        self.buf.get(r).unwrap_or_default()
    }

    /// Reads once more, with room for at least `want` bytes from the first
    /// unread one; `Ok(false)` at the end of the stream.
    async fn fill(&mut self, want: usize) -> io::Result<bool> {
        if self.start > 0 && (self.end == self.buf.len() || self.buf.len() - self.start < want) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() || self.buf.len() < want {
            let grown = (self.buf.len() * 2).min(READ_BUFFER).max(want);
            self.buf.resize(grown.max(self.buf.len()), 0);
        }
        let room = self.buf.get_mut(self.end..).unwrap_or_default();
        let n = self.io.read(room).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// Exactly `n` bytes, read as needed.
    async fn take(&mut self, n: usize) -> io::Result<Range<usize>> {
        while self.buffered() < n {
            if !self.fill(n).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let r = self.start..self.start + n;
        self.start += n;
        Ok(r)
    }

    /// The length of the next frame's body, if its header is buffered.
    fn next_len(&self) -> Option<usize> {
        let head = self.buf.get(self.start..self.start + 2)?;
        Some(usize::from(u16::from_be_bytes([head[0], head[1]])))
    }

    /// The next frame's body if it is wholly buffered (consumed).
    fn ready_frame(&mut self) -> Option<Range<usize>> {
        let len = self.next_len()?;
        if self.buffered() < 2 + len {
            return None;
        }
        let r = self.start + 2..self.start + 2 + len;
        self.start += 2 + len;
        Some(r)
    }

    /// The next frame's body, reading as needed; `None` at a clean end of
    /// stream between frames.
    async fn frame(&mut self) -> io::Result<Option<Range<usize>>> {
        loop {
            if let Some(r) = self.ready_frame() {
                return Ok(Some(r));
            }
            let want = self.next_len().map_or(2, |len| 2 + len);
            if !self.fill(want).await? {
                return if self.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    async fn expect_frame(&mut self) -> Result<Range<usize>, LinkError> {
        self.frame().await?.ok_or_else(|| {
            LinkError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed during the handshake",
            ))
        })
    }
}

/// An established link: its receiving and sending halves.
pub struct Link<R, W> {
    pub reader: LinkReader<R>,
    pub writer: LinkWriter<W>,
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

/// An inbox's first size, and its largest (several frames per read in bulk).
const FIRST_READ: usize = 16 * 1024;
const READ_BUFFER: usize = 256 * 1024;
/// Plaintext read from the local socket at once, sealed into frames and
/// written with one syscall: starts at [`FIRST_CHUNK`] and doubles while
/// reads fill it (a bulk transfer), up to this.
const SEND_CHUNK: usize = 256 * 1024;
const FIRST_CHUNK: usize = 16 * 1024;

impl<R, W> Link<R, W> {
    fn new(rd: Inbox<R>, wr: W, send: Direction, recv: Direction) -> Link<R, W> {
        Link {
            reader: LinkReader {
                inbox: rd,
                dir: recv,
                closed: false,
            },
            writer: LinkWriter {
                io: wr,
                dir: send,
                out: Vec::new(),
            },
        }
    }
}

/// The receiving half of a link.
pub struct LinkReader<R> {
    inbox: Inbox<R>,
    dir: Direction,
    closed: bool,
}

impl<R: AsyncRead + Unpin> LinkReader<R> {
    /// Authenticates and decrypts the frame at `r` in place; returns its
    /// payload's range if it carries data.
    fn open(&mut self, r: Range<usize>) -> Result<Option<Range<usize>>, LinkError> {
        let nonce = self.dir.next_nonce()?;
        let body = self
            .inbox
            .buf
            .get_mut(r.clone())
            .ok_or(LinkError::Tampered)?;
        let plain = self
            .dir
            .key
            .open_in_place(nonce, Aad::empty(), body)
            .map_err(|_| LinkError::Tampered)?;
        let plain_len = plain.len();
        match plain.first().copied() {
            Some(KIND_DATA) => Ok(Some(r.start + 1..r.start + plain_len)),
            Some(KIND_REKEY) => self.dir.rekey().map(|()| None),
            Some(KIND_CLOSE) => {
                self.closed = true;
                Ok(None)
            }
            _ => Err(LinkError::Tampered),
        }
    }

    /// The next frame, reading as needed; an end of stream without the
    /// peer's close is [`LinkError::Truncated`].
    async fn next_frame(&mut self) -> Result<Range<usize>, LinkError> {
        self.inbox.frame().await?.ok_or(LinkError::Truncated)
    }

    /// The next data payload; `None` once the peer closed the link properly.
    pub async fn recv(&mut self) -> Result<Option<&[u8]>, LinkError> {
        while !self.closed {
            let frame = self.next_frame().await?;
            if let Some(data) = self.open(frame)? {
                return Ok(Some(self.inbox.bytes(data)));
            }
        }
        Ok(None)
    }

    /// Appends to `out` the payload of the next data frame and of every
    /// further one already received (up to `limit` bytes in `out`), so a
    /// bulk transfer writes out several frames at once. `false` once the
    /// peer closed the link properly.
    pub async fn recv_batch(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<bool, LinkError> {
        let mut got = false;
        while !self.closed && !got {
            let frame = self.next_frame().await?;
            if let Some(data) = self.open(frame)? {
                out.extend_from_slice(self.inbox.bytes(data));
                got = true;
            }
        }
        while !self.closed && out.len() < limit {
            let Some(frame) = self.inbox.ready_frame() else {
                break;
            };
            if let Some(data) = self.open(frame)? {
                out.extend_from_slice(self.inbox.bytes(data));
            }
        }
        Ok(got)
    }
}

/// The sending half of a link.
pub struct LinkWriter<W> {
    io: W,
    dir: Direction,
    out: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> LinkWriter<W> {
    fn seal(&mut self, kind: u8, payload: &[u8]) -> Result<(), LinkError> {
        let nonce = self.dir.next_nonce()?;
        let start = self.out.len();
        let len = u16::try_from(1 + payload.len() + TAG).map_err(|_| LinkError::Tampered)?;
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.push(kind);
        self.out.extend_from_slice(payload);
        let body = self.out.get_mut(start + 2..).ok_or(LinkError::Tampered)?;
        let tag = self
            .dir
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), body)
            .map_err(|_| LinkError::Tampered)?;
        self.out.extend_from_slice(tag.as_ref());
        if kind != KIND_REKEY && self.dir.due() {
            self.seal(KIND_REKEY, &[])?;
            self.dir.rekey()?;
        }
        Ok(())
    }

    async fn flush_out(&mut self) -> Result<(), LinkError> {
        self.io.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Encrypts and sends `data`, in as many frames as it takes, with one write.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), LinkError> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            self.seal(KIND_DATA, chunk)?;
        }
        self.flush_out().await
    }

    /// Encrypts `datagram` as one frame of its own (at most [`MAX_PAYLOAD`]
    /// bytes) without sending it yet: several go out together with
    /// [`LinkWriter::flush`].
    pub fn push_datagram(&mut self, datagram: &[u8]) -> Result<(), LinkError> {
        if datagram.len() > MAX_PAYLOAD {
            return Err(LinkError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a datagram larger than a frame",
            )));
        }
        self.seal(KIND_DATA, datagram)
    }

    /// Bytes sealed and not yet sent.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Sends what [`LinkWriter::push_datagram`] sealed, with one write.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        self.flush_out().await
    }

    /// Tells the peer this side is done (authenticated), then half-closes.
    pub async fn close(&mut self) -> Result<(), LinkError> {
        self.seal(KIND_CLOSE, &[])?;
        self.flush_out().await?;
        self.io.shutdown().await?;
        Ok(())
    }
}

/// Bytes moved by [`splice`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// From the local socket into the link.
    pub sent: u64,
    /// From the link into the local socket.
    pub received: u64,
}

/// Moves bytes between a local socket (`plain_rd`/`plain_wr`) and a link
/// until both directions are done; a half-close travels through. An error
/// in either direction ends both. `sent`/`received` count as bytes move,
/// so a live view (`shimgate peers`) can read them.
pub async fn splice<PR, PW, R, W>(
    plain_rd: PR,
    plain_wr: PW,
    link: Link<R, W>,
    sent: &std::sync::atomic::AtomicU64,
    received: &std::sync::atomic::AtomicU64,
) -> Result<Moved, LinkError>
where
    PR: AsyncRead + Unpin,
    PW: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use std::sync::atomic::Ordering::Relaxed;
    let Link {
        mut reader,
        mut writer,
    } = link;
    let up = async {
        let mut plain_rd = plain_rd;
        let mut buf = vec![0u8; FIRST_CHUNK];
        let mut total = 0u64;
        loop {
            let n = plain_rd.read(&mut buf).await?;
            if n == 0 {
                writer.close().await?;
                return Ok::<u64, LinkError>(total);
            }
            writer.send(buf.get(..n).unwrap_or_default()).await?;
            if n == buf.len() && buf.len() < SEND_CHUNK {
                buf.resize(buf.len() * 2, 0);
            }
            total += n as u64;
            sent.fetch_add(n as u64, Relaxed);
        }
    };
    let down = async {
        let mut plain_wr = plain_wr;
        let mut total = 0u64;
        let mut out = Vec::new();
        while reader.recv_batch(&mut out, SEND_CHUNK).await? {
            plain_wr.write_all(&out).await?;
            total += out.len() as u64;
            received.fetch_add(out.len() as u64, Relaxed);
            out.clear();
        }
        plain_wr.shutdown().await?;
        Ok::<u64, LinkError>(total)
    };
    // Both directions until both end; an error in either ends both.
    let (sent, received) = tokio::try_join!(up, down)?;
    Ok(Moved { sent, received })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf, duplex, split};

    const KEY: [u8; 32] = [7; 32];

    type Half = Link<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>;

    fn prologue(session: u8) -> Prologue<'static> {
        Prologue {
            session_id: [session; 16],
            initiator: "alice",
            responder: "bob",
            port: 8000,
            proto: PeerProto::Tcp,
        }
    }

    /// Both ends over `a`/`b`; the responder checks the session id it reads.
    async fn handshake(
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

    async fn pair(
        a_key: [u8; 32],
        b_key: [u8; 32],
        a_session: u8,
        b_session: u8,
    ) -> (Result<Half, LinkError>, Result<Half, LinkError>) {
        let (a, b) = duplex(1 << 20);
        handshake(a, b, a_key, b_key, a_session, b_session).await
    }

    async fn recv_all(r: &mut LinkReader<ReadHalf<DuplexStream>>) -> Result<Vec<u8>, LinkError> {
        let mut got = Vec::new();
        while let Some(d) = r.recv().await? {
            got.extend_from_slice(d);
        }
        Ok(got)
    }

    #[tokio::test]
    async fn carries_bytes_both_ways_and_closes_cleanly() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let send = async {
            a.writer.send(&big).await?;
            a.writer.close().await
        };
        let (sent, got) = tokio::join!(send, recv_all(&mut b.reader));
        sent.unwrap();
        assert_eq!(got.unwrap(), big);
        b.writer.send(b"pong").await.unwrap();
        assert_eq!(a.reader.recv().await.unwrap().unwrap(), b"pong");
    }

    #[tokio::test]
    async fn datagrams_pushed_together_arrive_one_frame_each() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let datagrams: Vec<Vec<u8>> = (0..50u8)
            .map(|i| vec![i; 1 + usize::from(i) * 37])
            .collect();
        for d in &datagrams {
            a.writer.push_datagram(d).unwrap();
        }
        assert!(a.writer.pending() > 0);
        a.writer.flush().await.unwrap();
        assert_eq!(a.writer.pending(), 0);
        for d in &datagrams {
            assert_eq!(b.reader.recv().await.unwrap().unwrap(), &d[..]);
        }
        assert!(a.writer.push_datagram(&vec![0; MAX_PAYLOAD + 1]).is_err());
    }

    #[tokio::test]
    async fn an_end_of_stream_without_close_is_an_error() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (a, mut b) = (a.unwrap(), b.unwrap());
        drop(a);
        assert!(matches!(b.reader.recv().await, Err(LinkError::Truncated)));
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

    /// A link whose bytes pass through a middle the test controls.
    async fn relayed() -> (Half, Half, DuplexStream, DuplexStream) {
        let (a_io, mut mid_a) = duplex(1 << 20);
        let (mut mid_b, b_io) = duplex(1 << 20);
        let relay = async {
            let mut id = [0u8; SESSION_ID_LEN];
            mid_a.read_exact(&mut id).await.unwrap();
            mid_b.write_all(&id).await.unwrap();
            forward(&mut mid_a, &mut mid_b, None).await;
            forward(&mut mid_b, &mut mid_a, None).await;
        };
        let (links, ()) = tokio::join!(handshake_direct(a_io, b_io), relay);
        let (a, b) = links;
        (a.unwrap(), b.unwrap(), mid_a, mid_b)
    }

    async fn handshake_direct(
        a: DuplexStream,
        b: DuplexStream,
    ) -> (Result<Half, LinkError>, Result<Half, LinkError>) {
        handshake(a, b, KEY, KEY, 3, 3).await
    }

    async fn forward(
        from: &mut DuplexStream,
        to: &mut DuplexStream,
        flip: Option<usize>,
    ) -> Vec<u8> {
        let mut len = [0u8; 2];
        from.read_exact(&mut len).await.unwrap();
        let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
        from.read_exact(&mut frame).await.unwrap();
        if let Some(i) = flip {
            frame[i] ^= 1;
        }
        to.write_all(&(frame.len() as u16).to_be_bytes())
            .await
            .unwrap();
        to.write_all(&frame).await.unwrap();
        frame
    }

    #[tokio::test]
    async fn a_flipped_bit_is_refused() {
        let (mut a, mut b, mut mid_a, mut mid_b) = relayed().await;
        a.writer.send(b"hello").await.unwrap();
        forward(&mut mid_a, &mut mid_b, Some(3)).await;
        assert!(matches!(b.reader.recv().await, Err(LinkError::Tampered)));
    }

    #[tokio::test]
    async fn a_replayed_frame_is_refused() {
        let (mut a, mut b, mut mid_a, mut mid_b) = relayed().await;
        a.writer.send(b"pay 10").await.unwrap();
        let frame = forward(&mut mid_a, &mut mid_b, None).await;
        assert_eq!(b.reader.recv().await.unwrap().unwrap(), b"pay 10");
        mid_b
            .write_all(&(frame.len() as u16).to_be_bytes())
            .await
            .unwrap();
        mid_b.write_all(&frame).await.unwrap();
        assert!(matches!(b.reader.recv().await, Err(LinkError::Tampered)));
    }

    #[tokio::test]
    async fn keys_change_on_schedule_and_both_ends_follow() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let frames = REKEY_FRAMES as usize + 10;
        let chunk = [5u8; 16];
        let send = async {
            for _ in 0..frames {
                a.writer.send(&chunk).await?;
            }
            a.writer.close().await
        };
        let (sent, got) = tokio::join!(send, recv_all(&mut b.reader));
        sent.unwrap();
        assert_eq!(got.unwrap().len(), frames * chunk.len());
        assert!(
            a.writer.dir.frames < REKEY_FRAMES,
            "the sender rekeyed ({} frames under the current key)",
            a.writer.dir.frames
        );
    }

    #[tokio::test]
    async fn a_batch_holds_every_frame_already_received() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        for i in 0..5u8 {
            a.writer.send(&[i; 1000]).await.unwrap();
        }
        a.writer.close().await.unwrap();
        // all five frames and the close are in the pipe before the first read
        let mut out = Vec::new();
        assert!(b.reader.recv_batch(&mut out, 1 << 20).await.unwrap());
        assert_eq!(out.len(), 5000, "one batch, five frames");
        assert_eq!(&out[4000..], &[4u8; 1000][..]);
        out.clear();
        assert!(!b.reader.recv_batch(&mut out, 1 << 20).await.unwrap());
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn splice_carries_a_stream_and_counts_it() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (a, b) = (a.unwrap(), b.unwrap());
        let (mut app_a, sock_a) = duplex(1 << 16);
        let (mut app_b, sock_b) = duplex(1 << 16);
        let (ra, wa) = split(sock_a);
        let (rb, wb) = split(sock_b);
        let counters = [
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
        ];
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let client = async {
            app_a.write_all(&data).await.unwrap();
            app_a.shutdown().await.unwrap();
            let mut back = Vec::new();
            app_a.read_to_end(&mut back).await.unwrap();
            back
        };
        let server = async {
            let mut got = Vec::new();
            app_b.read_to_end(&mut got).await.unwrap();
            app_b.write_all(&got[..10]).await.unwrap();
            app_b.shutdown().await.unwrap();
            got
        };
        let (back, got, ma, mb) = tokio::join!(
            client,
            server,
            splice(ra, wa, a, &counters[0], &counters[1]),
            splice(rb, wb, b, &counters[2], &counters[3]),
        );
        assert_eq!(got, data);
        assert_eq!(back, data[..10]);
        let (ma, mb) = (ma.unwrap(), mb.unwrap());
        assert_eq!((ma.sent, ma.received), (1_000_000, 10));
        assert_eq!((mb.sent, mb.received), (10, 1_000_000));
        assert_eq!(
            counters[0].load(std::sync::atomic::Ordering::Relaxed),
            1_000_000
        );
    }

    /// Checked against snow's own AESGCM (RustCrypto), not against itself:
    /// the same key, nonce and data give the same bytes, at nonces whose
    /// big-endian layout a wrong byte order or offset would change, and our
    /// per-direction REKEY gives the key snow's REKEY gives.
    #[test]
    fn aws_cipher_agrees_with_snows_aesgcm() {
        let mut theirs = DefaultResolver
            .resolve_cipher(&CipherChoice::AESGCM)
            .expect("snow's AESGCM");
        theirs.set(&KEY);
        let mut ours = AwsAesGcm::default();
        ours.set(&KEY);
        for nonce in [0, 1, 9, 0x0102_0304_0506_0708, (1 << 40) + 5, u64::MAX - 1] {
            let (mut a, mut b) = ([0u8; 11 + TAG], [0u8; 11 + TAG]);
            assert_eq!(ours.encrypt(nonce, b"ad", b"hello noise", &mut a), 11 + TAG);
            assert_eq!(
                theirs.encrypt(nonce, b"ad", b"hello noise", &mut b),
                11 + TAG
            );
            assert_eq!(a, b, "nonce {nonce:#x}");
            let mut back = [0u8; 11];
            assert_eq!(theirs.decrypt(nonce, b"ad", &a, &mut back).unwrap(), 11);
            assert_eq!(&back, b"hello noise");
        }
        let mut direction = Direction::new(&KEY).unwrap();
        direction.rekey().unwrap();
        theirs.rekey();
        let mut body = *b"after rekey";
        let tag = direction
            .key
            .seal_in_place_separate_tag(noise_nonce(3), Aad::empty(), &mut body)
            .unwrap();
        let mut expected = [0u8; 11 + TAG];
        theirs.encrypt(3, &[], b"after rekey", &mut expected);
        assert_eq!(&expected[..11], &body);
        assert_eq!(&expected[11..], tag.as_ref());
    }

    #[test]
    fn aws_cipher_refuses_what_it_must() {
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
