//! Enrollment and renewal messages (JSON over HTTP/2 on the gateway's TLS
//! port).

use serde::{Deserialize, Serialize};

/// `POST` here without a client certificate to enroll.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// `POST` here with the current client certificate to get a fresh one.
pub const RENEW_PATH: &str = "/v1/renew";
/// `GET` here with a client certificate: who the gateway thinks you are.
pub const WHOAMI_PATH: &str = "/v1/whoami";
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

/// Body of every non-2xx answer: a sentence for the user.
#[derive(Serialize, Deserialize, Debug)]
pub struct ErrorBody {
    pub error: String,
}
