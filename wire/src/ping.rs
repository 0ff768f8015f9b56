//! A ping through the gateway: the device asks the gateway to send one ICMP
//! echo to a destination policy lets it ping (`--proto icmp`), and hears
//! whether the echo came back. TUN mode turns a program's echo request into
//! this call and answers the program only when the far end has.

use serde::{Deserialize, Serialize};

/// `POST` here with a client certificate and a [`PingRequest`]; the answer
/// is a [`Pinged`].
pub const PING_PATH: &str = "/v1/ping";
/// The answer that means the far end echoed.
pub const ECHOED: &str = "echoed";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PingRequest {
    /// An IP address, or a name (one the device's fake addresses stand for).
    pub host: String,
}

/// The gateway's answer: [`ECHOED`], or why not as a
/// [`crate::tunnel::TunnelError`] wire name (`not-allowed`, `timed-out`,
/// `host-unreachable`, ...).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Pinged {
    pub answer: String,
}
