//! The shimgate gateway: its own CA, online registration, the mTLS listener
//! that turns HTTP/2 CONNECT streams into connections to the networks it
//! guards, and the policy that decides which.
//!
//! - [`setup`]: [`init`] a data directory, [`start`] a [`Gateway`] from it.
//! - [`paths`]: the data directory and `gateway.toml`.
//! - [`ca`]: the CA, the server certificate, signing device CSRs.
//! - [`tls`]: TLS 1.3 server configuration and the device certificate check.
//! - [`cache`]: the in-memory view of the registry that hot paths read.
//! - [`server`]: accept loop, per-connection HTTP/2, request dispatch, tunnels;
//!   [`respond`]: answers and request bodies on its streams.
//! - [`enroll`]: enrollment and renewal handlers.
//! - [`auditlog`]: audit entries from the data path, written in order in the background.
//! - [`broker`]: peer sessions: who is online, key brokering, the relay.
//! - [`activity`]: open tunnels and recent peer sessions, for the console.
//! - [`dial`]: aliases, name resolution, connecting.
//! - [`udp`]: UDP associations: datagrams to and from the networks it guards.
//! - [`ping`]: ICMP echoes sent for a device, under policy.
//! - [`dns`]: DNS queries for routed names, asked of the gateway's resolvers.
//! - [`policy`]: who may reach what; [`ratelimit`]: per-address token buckets.
//! - [`console`]: the web console, the JSON API, metrics and health checks.
//!
//! The binaries (`shimgate-gateway`, and the demo) live in `shimgate-cli`.

pub mod activity;
pub mod auditlog;
pub mod broker;
pub mod ca;
pub mod cache;
pub mod console;
pub mod dial;
pub mod dns;
pub mod enroll;
pub mod heartbeat;
pub mod lease;
pub mod paths;
pub mod ping;
pub mod policy;
pub mod ratelimit;
pub mod respond;
pub mod server;
pub mod servercert;
pub mod setup;
pub mod tls;
pub mod udp;
pub mod udpchannel;

pub use setup::{Gateway, init, start};
