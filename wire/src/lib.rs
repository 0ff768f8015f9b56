//! What the shimgate proxy (device side) and gateway both speak, and the
//! few helpers both binaries need.
//!
//! - [`code`]: the enrollment code an admin hands to a user.
//! - [`tunnel`]: how the gateway reports why it could not open a tunnel, and
//!   the SOCKS5 reply each reason maps to.
//! - [`enroll`]: the JSON messages of enrollment and certificate renewal.
//! - [`identity`]: device names and the SPIFFE-style URI that names a device
//!   in its certificate.
//! - [`h2tuning`]: HTTP/2 settings both ends use for the tunnel.
//! - [`body`]: reading a JSON call's body up to a limit.
//! - [`clock`]: unix time and how it is shown.
//! - [`files`]: writing keys and certificates safely (atomic, 0600).
//! - [`pki`]: PEM loading, fingerprints and the one crypto provider.
//! - [`control`]: the peer-to-peer control plane (announcements, offers,
//!   grants, relay requests).
//! - [`peerlink`]: the Noise-encrypted link between two devices.
//! - [`liveness`]: ending connections to peers that vanished without closing.
//! - [`workers`]: thread-per-core runtimes for the data plane.
//! - [`splice`]: moving bytes between a socket and an HTTP/2 stream, with
//!   flow control and half-close.

pub mod body;
pub mod clock;
pub mod code;
pub mod control;
pub mod enroll;
pub mod files;
pub mod h2tuning;
pub mod identity;
pub mod liveness;
pub mod peerlink;
pub mod pki;
pub mod splice;
pub mod tunnel;
pub mod workers;
