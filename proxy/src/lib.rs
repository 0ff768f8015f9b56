//! The shimgate device side: the SOCKS5 proxy that puts programs on the VPN,
//! the pool of mTLS HTTP/2 connections to the gateway that carries their
//! tunnels, enrollment, and certificate renewal.
//!
//! - [`config`]: the config directory, `config.toml`, the device's files.
//! - [`tls`]: TLS client settings, including the CA pin used at enrollment.
//! - [`client`]: one HTTP/2 connection to the gateway, and JSON calls on it.
//! - [`enroll`]: `shimgate enroll CODE`.
//! - [`pool`]: the long-lived connections; opens tunnels; reconnects.
//! - [`socks`]: the SOCKS5 server; peer destinations go to [`peer`].
//! - [`udp`]: SOCKS5 UDP ASSOCIATE, datagrams over one stream to the gateway.
//! - [`pac`]: the PAC file served on the SOCKS port, from the routes the
//!   gateway's policy gives this device.
//! - [`peer`]: peer-to-peer sessions: dialling a peer (direct, else relay),
//!   the peer listener, exported services, `peers.json`, ping.
//! - [`listener`]: the peer listener, open while this device exports something.
//! - [`control`]: the control stream to the gateway (announce, offers,
//!   relay requests, revoked peers).
//! - [`status`]: `status.json`, which `up` writes and `shimgate status` reads.
//! - [`renew`]: renewing the device certificate before it expires.
//! - [`up`]: `shimgate up`, all of the above together.
//!
//! The `shimgate` binary lives in `shimgate-cli`.

pub mod client;
pub mod config;
pub mod control;
pub mod enroll;
pub mod listener;
pub mod pac;
pub mod peer;
pub mod pool;
pub mod renew;
pub mod socks;
pub mod status;
pub mod tls;
pub mod udp;
pub mod up;
