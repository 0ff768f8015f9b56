//! The shimgate device side: the SOCKS5 proxy that puts programs on the VPN,
//! the pool of mTLS HTTP/2 connections to the gateway that carries their
//! tunnels, enrollment, and certificate renewal.
//!
//! - [`config`]: the config directory, `config.toml`, the device's files.
//! - [`tls`]: TLS client settings, including the CA pin used at enrollment.
//! - [`client`]: one HTTP/2 connection to the gateway, and JSON calls on it.
//! - [`enroll`]: `shimgate enroll CODE`.
//! - [`pool`]: the long-lived connections; opens tunnels; reconnects.
//! - [`socks`]: the SOCKS5 server.
//! - [`shim`]: the shim socket, `up`'s side of the socket shim (`shimgate
//!   run`): the split, fake addresses, carrying a program's own socket.
//! - [`shimudp`]: the socket shim's UDP relays, one per program socket and
//!   destination.
//! - [`hold`]: the hold address where a shimmed socket waits, and the
//!   simultaneous open that completes it.
//! - [`fakeaddr`]: the persistent map of VPN names to fake addresses.
//! - [`flow`]: where a TCP flow goes (peer session or tunnel), for every shim.
//! - [`launch`]: `shimgate run`'s checks before it starts a program (static
//!   and Go programs refused, the library's ownership, the split).
//! - [`association`]: a UDP association with the gateway, on its stream or
//!   its UDP channel, for every shim's UDP.
//! - [`udp`]: SOCKS5 UDP ASSOCIATE.
//! - [`pac`]: the PAC file served on the SOCKS port, from the routes the
//!   gateway's policy gives this device.
//! - [`peer`]: peer-to-peer sessions: dialling a peer (direct, else relay),
//!   the peer listener, exported services, `peers.json`, ping.
//! - [`listener`]: the peer listener, open while this device exports something.
//! - [`control`]: the control stream to the gateway (announce, offers,
//!   relay requests, revoked peers).
//! - [`tun`]: TUN mode (`up --tun`), the network-driver shim: the
//!   interface, its routes, a userspace TCP stack, SYNs held until the far
//!   end answers.
//! - [`status`]: `status.json`, which `up` writes and `shimgate status` reads.
//! - [`renew`]: renewing the device certificate before it expires.
//! - [`up`]: `shimgate up`, all of the above together.
//!
//! The `shimgate` binary lives in `shimgate-cli`.

pub mod association;
pub mod client;
pub mod config;
pub mod control;
pub mod enroll;
pub mod fakeaddr;
pub mod flow;
pub mod hold;
pub mod launch;
pub mod listener;
pub mod pac;
pub mod peer;
pub mod pool;
pub mod renew;
pub mod shim;
pub mod shimudp;
pub mod socks;
pub mod status;
pub mod tls;
pub mod tun;
pub mod udp;
pub mod up;
