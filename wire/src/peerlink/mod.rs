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
//!
//! One job a file: `handshake.rs` opens a link (session id, prologue,
//! Noise); `cipher.rs` is AES-256-GCM for snow and for each direction
//! after it; `frame.rs` is the length-prefixed framing and the buffer that
//! reads it; `link.rs` seals and opens typed frames on an established
//! link; `splice.rs` carries a local socket over one.

use std::io;
use std::time::Duration;

mod cipher;
mod frame;
mod handshake;
mod link;
mod splice;
#[cfg(test)]
mod testing;

pub use frame::Inbox;
pub use handshake::{Prologue, initiate, read_session_id, respond};
pub use link::{Link, LinkReader, LinkWriter};
pub use splice::{Moved, splice};

pub const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
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
