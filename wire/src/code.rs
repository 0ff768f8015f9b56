//! The enrollment code: one copy-pasteable string carrying the gateway's
//! address, the SHA-256 fingerprint of the gateway's CA certificate, the
//! token id, the one-time secret and the expiry.
//!
//! Format: `sg1-` followed by unpadded base64url of
//! `expires_at (8, big endian) | ca_fingerprint (32) | token_id (16) |
//! secret (32) | gateway address (UTF-8, rest)` and a 4-byte checksum (the
//! first bytes of SHA-256 over everything before it), so that a mistyped or
//! truncated code is reported as such instead of as a bad token.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::pki::hex;

const PREFIX: &str = "sg1-";
const FIXED: usize = 8 + 32 + 16 + 32;
const CHECKSUM: usize = 4;
/// Longest gateway address accepted (a DNS name of 253 characters plus a port).
const MAX_ADDR: usize = 260;

/// An enrollment code. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentCode {
    /// Where the device reaches the gateway, `host:port`.
    pub gateway: String,
    /// SHA-256 of the gateway CA certificate (DER); the device pins it.
    pub ca_fingerprint: [u8; 32],
    /// Public id of the token; the registry looks the token up by it.
    pub token_id: [u8; 16],
    /// The one-time secret; only its hash is stored by the gateway.
    pub secret: [u8; 32],
    /// Unix seconds after which the gateway refuses the code.
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodeError {
    #[error("not a shimgate enrollment code (it should start with `{PREFIX}`)")]
    WrongPrefix,
    #[error("the enrollment code contains characters that are not base64url: was it copied whole?")]
    BadEncoding,
    #[error("the enrollment code is too short or too long: was it copied whole?")]
    BadLength,
    #[error("the enrollment code's checksum does not match: it was mistyped or truncated")]
    BadChecksum,
    #[error("the gateway address in the enrollment code is not `host:port`")]
    BadAddress,
}

impl EnrollmentCode {
    pub fn token_id_hex(&self) -> String {
        hex(&self.token_id)
    }

    pub fn ca_fingerprint_hex(&self) -> String {
        hex(&self.ca_fingerprint)
    }

    /// The host part of the gateway address (brackets removed for IPv6),
    /// which the gateway's server certificate must name.
    pub fn gateway_host(&self) -> &str {
        host_of(&self.gateway).unwrap_or(&self.gateway)
    }
}

/// Splits `host:port` / `[v6]:port`, checking the port is a number.
fn host_of(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty() && !host.contains(char::is_whitespace)).then_some(host)
}

impl fmt::Debug for EnrollmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentCode")
            .field("gateway", &self.gateway)
            .field("ca_fingerprint", &self.ca_fingerprint_hex())
            .field("token_id", &self.token_id_hex())
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl fmt::Display for EnrollmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(FIXED + self.gateway.len() + CHECKSUM);
        raw.extend_from_slice(&self.expires_at.to_be_bytes());
        raw.extend_from_slice(&self.ca_fingerprint);
        raw.extend_from_slice(&self.token_id);
        raw.extend_from_slice(&self.secret);
        raw.extend_from_slice(self.gateway.as_bytes());
        let sum = Sha256::digest(&raw);
        raw.extend_from_slice(&sum[..CHECKSUM]);
        write!(f, "{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }
}

impl FromStr for EnrollmentCode {
    type Err = CodeError;

    fn from_str(s: &str) -> Result<Self, CodeError> {
        let body = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(CodeError::WrongPrefix)?;
        if body.len() > (FIXED + MAX_ADDR + CHECKSUM) * 4 / 3 + 4 {
            return Err(CodeError::BadLength);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CodeError::BadEncoding)?;
        if raw.len() < FIXED + CHECKSUM + 3 || raw.len() > FIXED + MAX_ADDR + CHECKSUM {
            return Err(CodeError::BadLength);
        }
        let (payload, sum) = raw.split_at(raw.len() - CHECKSUM);
        if Sha256::digest(payload)[..CHECKSUM] != *sum {
            return Err(CodeError::BadChecksum);
        }
        let (fixed, addr) = payload.split_at(FIXED);
        let gateway = std::str::from_utf8(addr).map_err(|_| CodeError::BadAddress)?;
        host_of(gateway).ok_or(CodeError::BadAddress)?;
        let take = |from: usize, to: usize| &fixed[from..to];
        let mut expires = [0u8; 8];
        expires.copy_from_slice(take(0, 8));
        let mut ca_fingerprint = [0u8; 32];
        ca_fingerprint.copy_from_slice(take(8, 40));
        let mut token_id = [0u8; 16];
        token_id.copy_from_slice(take(40, 56));
        let mut secret = [0u8; 32];
        secret.copy_from_slice(take(56, 88));
        Ok(EnrollmentCode {
            gateway: gateway.to_owned(),
            ca_fingerprint,
            token_id,
            secret,
            expires_at: i64::from_be_bytes(expires),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> EnrollmentCode {
        EnrollmentCode {
            gateway: "gw.example.org:8443".into(),
            ca_fingerprint: [7; 32],
            token_id: [1; 16],
            secret: [9; 32],
            expires_at: 1_900_000_000,
        }
    }

    #[test]
    fn round_trips() {
        let code = sample();
        let text = code.to_string();
        assert!(text.starts_with("sg1-"));
        assert!(!text.contains(['+', '/', '=', ' ']));
        assert_eq!(text.parse::<EnrollmentCode>().unwrap(), code);
    }

    #[test]
    fn ipv6_gateway() {
        let code = EnrollmentCode {
            gateway: "[2001:db8::1]:8443".into(),
            ..sample()
        };
        let back: EnrollmentCode = code.to_string().parse().unwrap();
        assert_eq!(back.gateway_host(), "2001:db8::1");
    }

    #[test]
    fn rejects_typos_and_truncation() {
        let text = sample().to_string();
        assert_eq!(
            "sg2-abc".parse::<EnrollmentCode>(),
            Err(CodeError::WrongPrefix)
        );
        let truncated = &text[..text.len() - 3];
        assert!(truncated.parse::<EnrollmentCode>().is_err());
        let mut typo: Vec<char> = text.chars().collect();
        let i = text.len() / 2;
        typo[i] = if typo[i] == 'A' { 'B' } else { 'A' };
        let typo: String = typo.into_iter().collect();
        assert_eq!(typo.parse::<EnrollmentCode>(), Err(CodeError::BadChecksum));
        assert_eq!(
            "sg1-!!!!".parse::<EnrollmentCode>(),
            Err(CodeError::BadEncoding)
        );
    }

    #[test]
    fn debug_hides_secret() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("9, 9"));
        assert!(shown.contains("redacted"));
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(s in "\\PC*") {
            let _ = s.parse::<EnrollmentCode>();
            let _ = format!("sg1-{s}").parse::<EnrollmentCode>();
        }

        #[test]
        fn any_code_round_trips(port in 1u16.., host in "[a-z0-9.-]{1,40}", secret in any::<[u8; 32]>(), exp in any::<i64>()) {
            let code = EnrollmentCode { gateway: format!("{host}:{port}"), secret, expires_at: exp, ..sample() };
            prop_assert_eq!(code.to_string().parse::<EnrollmentCode>().unwrap(), code);
        }

        /// Every field survives, IPv6 gateways and surrounding whitespace
        /// (a paste from a chat window) included.
        #[test]
        fn every_field_round_trips(
            v6 in any::<[u16; 8]>(),
            host in "[a-z][a-z0-9-]{0,30}(\\.[a-z0-9-]{1,20}){0,4}",
            use_v6 in any::<bool>(),
            port in any::<u16>(),
            ca_fingerprint in any::<[u8; 32]>(),
            token_id in any::<[u8; 16]>(),
            secret in any::<[u8; 32]>(),
            expires_at in any::<i64>(),
            pad in "[ \t\r\n]{0,3}",
        ) {
            let gateway = if use_v6 {
                format!("[{}]:{port}", std::net::Ipv6Addr::from(v6))
            } else {
                format!("{host}:{port}")
            };
            let code = EnrollmentCode { gateway, ca_fingerprint, token_id, secret, expires_at };
            let text = format!("{pad}{code}{pad}");
            let back: EnrollmentCode = text.parse().unwrap();
            prop_assert_eq!(back.gateway_host(), code.gateway_host());
            prop_assert_eq!(back, code);
        }

        /// The checksum catches any one mistyped character and any
        /// truncation: a bad code is never taken for a different valid one.
        #[test]
        fn any_typo_or_truncation_is_refused(
            host in "[a-z0-9.-]{1,40}",
            secret in any::<[u8; 32]>(),
            at in any::<usize>(),
            with in proptest::sample::select(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                    .chars()
                    .collect::<Vec<_>>(),
            ),
            keep in any::<usize>(),
        ) {
            let text = EnrollmentCode { gateway: format!("{host}:443"), secret, ..sample() }.to_string();
            let body = PREFIX.len()..text.len();
            let i = body.start + at % body.len();
            let mut typo: Vec<char> = text.chars().collect();
            prop_assume!(typo[i] != with);
            typo[i] = with;
            let typo: String = typo.into_iter().collect();
            prop_assert!(typo.parse::<EnrollmentCode>().is_err(), "{} accepted", typo);
            let cut = keep % text.len();
            prop_assert!(text[..cut].parse::<EnrollmentCode>().is_err());
        }
    }
}
