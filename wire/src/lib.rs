//! What the shimgate device side and gateway speak to each other. Process
//! plumbing (time, files, worker threads) is in `shimgate-host`.
//!
//! - [`dest`]: where a flow goes ([`dest::Destination`]): what every shim
//!   hands the tunnel layer and the gateway dials.
//! - [`dns`]: DNS queries and answers (TUN mode's responder, and names the
//!   gateway resolves for it).
//! - [`datagram`]: UDP datagrams framed on an HTTP/2 stream, with their far end.
//! - [`udpchannel`]: the same datagrams as sealed UDP packets between device
//!   and gateway, keyed from the TLS connection that opened the association.
//! - [`origin`]: which program on a device made a flow (for the audit log).
//! - [`code`]: the enrollment code an admin hands to a user.
//! - [`tunnel`]: how the gateway reports why it could not open a tunnel, and
//!   the SOCKS5 reply each reason maps to.
//! - [`enroll`]: the JSON messages of enrollment and certificate renewal.
//! - [`identity`]: device names and the SPIFFE-style URI that names a device
//!   in its certificate.
//! - [`h2tuning`]: HTTP/2 settings both ends use for the tunnel.
//! - [`body`]: reading a JSON call's body up to a limit.
//! - [`pki`]: PEM loading, fingerprints and the one crypto provider.
//! - [`control`]: the peer-to-peer control plane (announcements, offers,
//!   grants, relay requests).
//! - [`peerlink`]: the Noise-encrypted link between two devices.
//! - [`ping`]: an ICMP echo the gateway sends for a device.
//! - [`liveness`]: ending connections to peers that vanished without closing.
//! - [`splice`]: moving bytes between a socket and an HTTP/2 stream, with
//!   flow control and half-close.
//! - [`shimsock`]: the lines the socket shim (preload library) and
//!   `shimgate up` exchange on the shim socket (`std` only: the preload
//!   crate compiles this file by path).

pub mod body;
pub mod code;
pub mod control;
pub mod datagram;
pub mod dest;
pub mod dns;
pub mod enroll;
pub mod h2tuning;
pub mod identity;
pub mod liveness;
pub mod origin;
pub mod peerlink;
pub mod ping;
pub mod pki;
pub mod shimsock;
pub mod splice;
pub mod tunnel;
pub mod udpchannel;
