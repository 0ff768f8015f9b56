//! Enrollment and renewal messages, and the other calls a device makes about
//! itself (who it is, where it may go): JSON over HTTP/2 on the gateway's
//! TLS port.

use serde::{Deserialize, Serialize};

/// `POST` here without a client certificate to enroll.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// `POST` here with the current client certificate to get a fresh one.
pub const RENEW_PATH: &str = "/v1/renew";
/// `GET` here with a client certificate: who the gateway thinks you are.
pub const WHOAMI_PATH: &str = "/v1/whoami";
/// `GET` here with a client certificate: the destinations policy lets this
/// device reach through the gateway ([`Routes`]).
pub const ROUTES_PATH: &str = "/v1/routes";
/// Whether a name exists, asked under policy before the socket shim hands
/// a program a fake address for it (`POST`, a [`ResolveRequest`]).
pub const RESOLVE_PATH: &str = "/v1/resolve";
/// Largest request body the gateway reads for these calls.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Serialize, Deserialize)]
pub struct EnrollRequest {
    /// Hex token id from the enrollment code.
    pub token_id: String,
    /// Hex one-time secret from the enrollment code.
    pub secret: String,
    /// The name the device asks for; the gateway may add a suffix.
    pub device_name: String,
    /// PEM certificate signing request; the gateway uses only its public key.
    pub csr_pem: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct EnrollResponse {
    pub device_name: String,
    pub user: String,
    pub vpn_name: String,
    pub vpn_ip: String,
    pub cert_pem: String,
    pub ca_pem: String,
    /// Unix seconds.
    pub not_after: i64,
    /// The gateway requires an admin's approval before this device may connect.
    #[serde(default)]
    pub awaiting_approval: bool,
    /// The DNS domain of the VPN's devices (older gateways leave it out:
    /// theirs is the default).
    #[serde(default)]
    pub vpn_domain: Option<String>,
    /// The deployment's VPN range (older gateways leave it out: theirs is
    /// the default).
    #[serde(default)]
    pub vpn_range: Option<crate::identity::VpnRange>,
}

#[derive(Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct RenewResponse {
    pub cert_pem: String,
    pub not_after: i64,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct WhoAmI {
    pub device_name: String,
    pub user: String,
    pub vpn_ip: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ResolveRequest {
    pub name: String,
}

/// The gateway's answer: `exists`, or why not as a
/// [`crate::tunnel::TunnelError`] wire name (`unknown-name`, `not-allowed`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub answer: String,
    /// For a device's name under the VPN domain: its VPN address, when the
    /// asker may reach it (TUN mode's responder answers with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpn_ip: Option<std::net::Ipv4Addr>,
}

/// What the gateway's allow rules open to one device, for its PAC file.
/// Peer devices are not listed: they are all under the VPN domain.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// Domain suffixes (lowercase, no leading or trailing dot): the name
    /// itself and every name under it.
    pub domains: Vec<String>,
    /// Networks, IPv4 or IPv6, e.g. `10.20.0.0/16`.
    pub cidrs: Vec<String>,
}

/// Body of every non-2xx answer: a sentence for the user.
#[derive(Serialize, Deserialize, Debug)]
pub struct ErrorBody {
    pub error: String,
}
