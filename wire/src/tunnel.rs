//! How a tunnel request fails, end to end.
//!
//! The proxy asks for a tunnel with an HTTP/2 `CONNECT host:port`. The gateway
//! answers `200` or an error status with a [`ERROR_HEADER`] naming a
//! [`TunnelError`]; the proxy turns that into the SOCKS5 reply code a client
//! understands (RFC 1928 §6).

use std::fmt;
use std::io;
use std::str::FromStr;

use http::StatusCode;

/// Response header carrying the reason a tunnel was refused.
pub const ERROR_HEADER: &str = "shimgate-error";
/// Response header carrying the address the gateway dialled from (`ip:port`),
/// reported to the SOCKS client as BND.ADDR.
pub const BOUND_HEADER: &str = "shimgate-bound";

/// Why the gateway could not open a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelError {
    /// Policy forbids this device from reaching the destination.
    NotAllowed,
    NetworkUnreachable,
    /// The host did not answer (or the name's lookup failed for a reason
    /// other than the name not existing).
    HostUnreachable,
    /// The gateway's resolver says the name does not exist. SOCKS has no
    /// code of its own for it: 0x04, as for an unreachable host.
    UnknownName,
    Refused,
    TimedOut,
    AddressNotSupported,
    /// The device is over one of its limits (tunnels open at once, new
    /// tunnels or peer sessions per second): 0x02, as the limits are part of
    /// the gateway's rules.
    OverLimit,
    /// The gateway has not reached its registry for longer than its lease,
    /// so it cannot know about revocations and policy changes: it refuses
    /// new flows until the registry answers again.
    RegistryLost,
    /// Anything else (the gateway's own trouble, a malformed request).
    General,
}

impl TunnelError {
    pub const ALL: [TunnelError; 10] = [
        TunnelError::NotAllowed,
        TunnelError::NetworkUnreachable,
        TunnelError::HostUnreachable,
        TunnelError::UnknownName,
        TunnelError::Refused,
        TunnelError::TimedOut,
        TunnelError::AddressNotSupported,
        TunnelError::OverLimit,
        TunnelError::RegistryLost,
        TunnelError::General,
    ];

    /// The SOCKS5 reply code (RFC 1928 §6).
    pub fn socks_reply(self) -> u8 {
        match self {
            TunnelError::General | TunnelError::RegistryLost => 0x01,
            TunnelError::NotAllowed | TunnelError::OverLimit => 0x02,
            TunnelError::NetworkUnreachable => 0x03,
            TunnelError::HostUnreachable | TunnelError::UnknownName => 0x04,
            TunnelError::Refused => 0x05,
            TunnelError::TimedOut => 0x06,
            TunnelError::AddressNotSupported => 0x08,
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            TunnelError::NotAllowed => StatusCode::FORBIDDEN,
            TunnelError::OverLimit => StatusCode::TOO_MANY_REQUESTS,
            TunnelError::AddressNotSupported => StatusCode::BAD_REQUEST,
            TunnelError::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            TunnelError::General => StatusCode::INTERNAL_SERVER_ERROR,
            TunnelError::RegistryLost => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TunnelError::NotAllowed => "not-allowed",
            TunnelError::NetworkUnreachable => "network-unreachable",
            TunnelError::HostUnreachable => "host-unreachable",
            TunnelError::UnknownName => "unknown-name",
            TunnelError::Refused => "refused",
            TunnelError::TimedOut => "timed-out",
            TunnelError::AddressNotSupported => "address-not-supported",
            TunnelError::OverLimit => "over-limit",
            TunnelError::RegistryLost => "registry-lost",
            TunnelError::General => "general",
        }
    }

    /// The `errno` a program's `connect()` reports for this reason (the
    /// socket shim hands it over as the kernel would).
    pub fn errno(self) -> i32 {
        match self {
            TunnelError::NotAllowed => libc::EACCES,
            TunnelError::NetworkUnreachable => libc::ENETUNREACH,
            TunnelError::HostUnreachable | TunnelError::UnknownName => libc::EHOSTUNREACH,
            TunnelError::Refused => libc::ECONNREFUSED,
            TunnelError::TimedOut => libc::ETIMEDOUT,
            TunnelError::AddressNotSupported => libc::EAFNOSUPPORT,
            TunnelError::OverLimit => libc::ECONNREFUSED,
            TunnelError::RegistryLost => libc::ENETDOWN,
            TunnelError::General => libc::ECONNABORTED,
        }
    }

    /// What the proxy concludes from a gateway response: the header when the
    /// gateway sent one, otherwise the status alone.
    pub fn from_response(status: StatusCode, header: Option<&str>) -> TunnelError {
        if let Some(reason) = header.and_then(|h| h.parse().ok()) {
            return reason;
        }
        match status {
            StatusCode::FORBIDDEN => TunnelError::NotAllowed,
            StatusCode::TOO_MANY_REQUESTS => TunnelError::OverLimit,
            StatusCode::GATEWAY_TIMEOUT => TunnelError::TimedOut,
            StatusCode::BAD_GATEWAY => TunnelError::HostUnreachable,
            _ => TunnelError::General,
        }
    }

    /// Classifies a failed `connect()` on the gateway.
    pub fn from_io(err: &io::Error) -> TunnelError {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => TunnelError::Refused,
            io::ErrorKind::TimedOut => TunnelError::TimedOut,
            io::ErrorKind::HostUnreachable => TunnelError::HostUnreachable,
            io::ErrorKind::NetworkUnreachable => TunnelError::NetworkUnreachable,
            io::ErrorKind::AddrNotAvailable => TunnelError::AddressNotSupported,
            io::ErrorKind::PermissionDenied => TunnelError::NotAllowed,
            _ => TunnelError::General,
        }
    }
}

/// The RFC 1928 name of a SOCKS5 reply code, for messages.
pub fn socks_reply_name(code: u8) -> &'static str {
    match code {
        0x00 => "succeeded",
        0x01 => "general failure",
        0x02 => "not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        _ => "unassigned",
    }
}

impl fmt::Display for TunnelError {
    /// In words, for logs and messages ([`TunnelError::as_str`] is the wire form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TunnelError::NotAllowed => "not allowed by policy",
            TunnelError::NetworkUnreachable => "network unreachable",
            TunnelError::HostUnreachable => "host unreachable",
            TunnelError::UnknownName => "unknown name",
            TunnelError::Refused => "connection refused",
            TunnelError::TimedOut => "timed out",
            TunnelError::AddressNotSupported => "address type not supported",
            TunnelError::OverLimit => "over this device's limit",
            TunnelError::RegistryLost => {
                "the gateway has lost its registry (past its lease: no new connections until it is back)"
            }
            TunnelError::General => "general failure",
        })
    }
}

impl FromStr for TunnelError {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        TunnelError::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socks_codes_match_rfc1928() {
        let codes: Vec<u8> = TunnelError::ALL.iter().map(|e| e.socks_reply()).collect();
        assert_eq!(
            codes,
            [0x02, 0x03, 0x04, 0x04, 0x05, 0x06, 0x08, 0x02, 0x01, 0x01]
        );
    }

    #[test]
    fn every_reason_survives_the_wire() {
        for e in TunnelError::ALL {
            assert_eq!(
                TunnelError::from_response(e.http_status(), Some(e.as_str())),
                e
            );
        }
    }

    #[test]
    fn status_alone_still_maps() {
        assert_eq!(
            TunnelError::from_response(StatusCode::FORBIDDEN, None),
            TunnelError::NotAllowed
        );
        assert_eq!(
            TunnelError::from_response(StatusCode::GATEWAY_TIMEOUT, Some("bogus")),
            TunnelError::TimedOut
        );
        assert_eq!(
            TunnelError::from_response(StatusCode::IM_A_TEAPOT, None),
            TunnelError::General
        );
    }

    #[test]
    fn io_errors_map() {
        let e = |k| TunnelError::from_io(&io::Error::from(k));
        assert_eq!(e(io::ErrorKind::ConnectionRefused), TunnelError::Refused);
        assert_eq!(e(io::ErrorKind::TimedOut), TunnelError::TimedOut);
        assert_eq!(
            e(io::ErrorKind::HostUnreachable),
            TunnelError::HostUnreachable
        );
        assert_eq!(
            e(io::ErrorKind::NetworkUnreachable),
            TunnelError::NetworkUnreachable
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Codes a failed tunnel may produce: never 0x00 (the client would
        /// think it is connected) and never 0x07 (the proxy alone says that,
        /// for BIND and UDP ASSOCIATE).
        const FAILURE_CODES: [u8; 7] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x08];

        fn kind() -> impl Strategy<Value = io::ErrorKind> {
            use io::ErrorKind::*;
            proptest::sample::select(vec![
                NotFound,
                PermissionDenied,
                ConnectionRefused,
                ConnectionReset,
                HostUnreachable,
                NetworkUnreachable,
                ConnectionAborted,
                NotConnected,
                AddrInUse,
                AddrNotAvailable,
                NetworkDown,
                BrokenPipe,
                WouldBlock,
                InvalidInput,
                InvalidData,
                TimedOut,
                Interrupted,
                Unsupported,
                UnexpectedEof,
                OutOfMemory,
                Other,
            ])
        }

        proptest! {
            /// Whatever the gateway (or something pretending to be it)
            /// answers, the SOCKS client gets a failure code RFC 1928 assigns,
            /// and a recognised reason header wins over the status.
            #[test]
            fn any_response_maps_to_an_assigned_failure(status in 100u16..1000, header in proptest::option::of(".{0,30}")) {
                let status = StatusCode::from_u16(status).unwrap();
                let e = TunnelError::from_response(status, header.as_deref());
                prop_assert!(FAILURE_CODES.contains(&e.socks_reply()));
                prop_assert_ne!(socks_reply_name(e.socks_reply()), "unassigned");
                if let Some(named) = header.as_deref().and_then(|h| h.parse::<TunnelError>().ok()) {
                    prop_assert_eq!(e, named);
                }
            }

            /// A reason survives the trip through the gateway's answer
            /// whatever the status it travels with; from the status alone
            /// (no header) the proxy concludes this reason, one that shares
            /// its status, or the general failure, never another reason.
            #[test]
            fn reasons_survive_any_status(i in 0..TunnelError::ALL.len(), status in 100u16..1000) {
                let e = TunnelError::ALL[i];
                let status = StatusCode::from_u16(status).unwrap();
                prop_assert_eq!(TunnelError::from_response(status, Some(e.as_str())), e);
                let by_status = TunnelError::from_response(e.http_status(), None);
                prop_assert!(
                    by_status == e
                        || by_status == TunnelError::General
                        || by_status.http_status() == e.http_status(),
                    "{e:?} by status alone: {by_status:?}"
                );
            }

            /// Every dial error the gateway sees becomes a failure code.
            #[test]
            fn io_errors_map_to_failures(kind in kind()) {
                let e = TunnelError::from_io(&io::Error::from(kind));
                prop_assert!(FAILURE_CODES.contains(&e.socks_reply()));
                prop_assert_eq!(TunnelError::from_response(e.http_status(), Some(e.as_str())), e);
            }
        }
    }
}
