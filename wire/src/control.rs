//! The peer-to-peer control plane: what a device and the gateway say to
//! each other to broker a session (DESIGN.md "Peer to peer";
//! docs/ARCHITECTURE.md "Peer protocol").
//!
//! - The **control stream** (`POST /v1/control`, kept open both ways): the
//!   device announces its peer endpoints and exported ports
//!   ([`DeviceMsg::Announce`]) and answers offers; the gateway sends offers
//!   ([`GatewayMsg::Offer`]), relay requests and revocations. Each message
//!   is a 4-byte big-endian length and a JSON object, at most
//!   [`MAX_MESSAGE`] bytes.
//! - A **session request** (`POST /v1/peer/session`, JSON
//!   [`SessionRequest`] → [`Grant`]): one round trip; a refusal comes back
//!   the way a refused tunnel does (status + `shimgate-error`).
//! - A **relay stream** (`POST /v1/peer/relay`, header `shimgate-session`):
//!   both devices open one for the same session and the gateway joins them;
//!   it carries the Noise link unchanged.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

pub const CONTROL_PATH: &str = "/v1/control";
pub const SESSION_PATH: &str = "/v1/peer/session";
pub const RELAY_PATH: &str = "/v1/peer/relay";
/// The session a relay stream belongs to (hex).
pub const SESSION_HEADER: &str = "shimgate-session";
/// Largest control message body.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Most endpoints or exports one announcement may list.
pub const MAX_LIST: usize = 64;
/// The VPN's DNS domain unless configured otherwise: bob is `bob.vpn.internal`.
pub const DEFAULT_VPN_DOMAIN: &str = "vpn.internal";

/// The device a host name under the VPN domain names (`bob.vpn.internal` →
/// `bob`; case and a trailing dot ignored), or `None` for any other name.
pub fn device_in_domain(host: &str, domain: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let name = host.strip_suffix(&domain)?.strip_suffix('.')?;
    (!name.is_empty() && !name.contains('.')).then(|| name.to_owned())
}

/// The transport a peer session carries: a TCP byte stream, or UDP
/// datagrams (one link frame per datagram). Absent on the wire means TCP,
/// so a device or gateway that predates UDP reads every message it knew.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PeerProto {
    #[default]
    Tcp,
    Udp,
}

impl PeerProto {
    pub fn is_tcp(&self) -> bool {
        *self == PeerProto::Tcp
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PeerProto::Tcp => "tcp",
            PeerProto::Udp => "udp",
        }
    }
}

impl fmt::Display for PeerProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The local ports a device offers other devices, by transport (sorted,
/// without duplicates or 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exports {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

impl Exports {
    pub fn contains(&self, proto: PeerProto, port: u16) -> bool {
        match proto {
            PeerProto::Tcp => self.tcp.contains(&port),
            PeerProto::Udp => self.udp.contains(&port),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty()
    }
}

impl fmt::Display for Exports {
    /// `8000/tcp 5353/udp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = self
            .tcp
            .iter()
            .map(|p| (p, PeerProto::Tcp))
            .chain(self.udp.iter().map(|p| (p, PeerProto::Udp)));
        for (i, (port, proto)) in all.enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{port}/{proto}")?;
        }
        Ok(())
    }
}

/// A session's single-use id: 16 random bytes, hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    pub fn random() -> SessionId {
        SessionId(rand::random())
    }

    pub fn parse(hex_text: &str) -> Option<SessionId> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(hex_text, &mut out).ok()?;
        Some(SessionId(out))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SessionId, D::Error> {
        let text = <&str>::deserialize(d)?;
        SessionId::parse(text).ok_or_else(|| serde::de::Error::custom("bad session id"))
    }
}

/// A brokered 256-bit session key. It never prints, and its memory is
/// wiped when dropped. The bytes live on the heap and never move: a move of
/// the struct moves a pointer, not a copy of the key that would stay behind
/// on some stack.
pub struct SessionKey(Box<Zeroizing<[u8; 32]>>);

impl SessionKey {
    /// Straight from the system's generator into place: a user-space RNG
    /// would keep the output in its buffer.
    pub fn random() -> Result<SessionKey, aws_lc_rs::error::Unspecified> {
        let mut key = SessionKey::zeroed();
        aws_lc_rs::rand::fill(&mut key.0[..])?;
        Ok(key)
    }

    fn zeroed() -> SessionKey {
        SessionKey(Box::new(Zeroizing::new([0u8; 32])))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Clone for SessionKey {
    fn clone(&self) -> SessionKey {
        let mut copy = SessionKey::zeroed();
        copy.0.copy_from_slice(&self.0[..]);
        copy
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl Serialize for SessionKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(STANDARD.encode(&self.0[..]));
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for SessionKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SessionKey, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        let raw = Zeroizing::new(
            STANDARD
                .decode(text.as_bytes())
                .map_err(|_| serde::de::Error::custom("bad session key"))?,
        );
        let mut key = SessionKey::zeroed();
        if raw.len() != key.0.len() {
            return Err(serde::de::Error::custom("a session key is 32 bytes"));
        }
        key.0.copy_from_slice(&raw);
        Ok(key)
    }
}

/// How a session's bytes travel.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PeerPath {
    Direct,
    Relayed,
}

impl fmt::Display for PeerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerPath::Direct => "direct",
            PeerPath::Relayed => "relayed",
        })
    }
}

/// Device → gateway, on the control stream.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceMsg {
    /// Where this device's peer listener is (the gateway adds the address it
    /// sees the device connect from) and which local ports it offers.
    /// Sent first, and again whenever the exports change.
    Announce {
        listen_port: u16,
        addrs: Vec<SocketAddr>,
        /// TCP ports.
        exports: Vec<u16>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        udp_exports: Vec<u16>,
    },
    /// The device holds the session's key and will answer its handshake.
    Accept { session: SessionId },
    /// The device will not take the session (`reason`: a tunnel error name).
    Decline { session: SessionId, reason: String },
    /// A session this device started has ended: for the audit log.
    Ended {
        session: SessionId,
        path: PeerPath,
        sent: u64,
        received: u64,
        /// Why the direct path was not used, when it was not.
        why: Option<String>,
    },
}

/// Gateway → device, on the control stream.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum GatewayMsg {
    /// Device `from` (of `from_user`) wants `port`: expect a handshake for
    /// `session` under `key` within `expires_in_ms`.
    Offer {
        session: SessionId,
        key: SessionKey,
        from: String,
        from_user: String,
        port: u16,
        #[serde(default, skip_serializing_if = "PeerProto::is_tcp")]
        proto: PeerProto,
        expires_in_ms: u64,
    },
    /// Open a relay stream for `session`: the requester could not reach
    /// this device directly.
    Relay { session: SessionId },
    /// `device` is no longer allowed on the VPN: cut every link with it.
    PeerGone { device: String },
    /// Policy changed: fetch this device's routes again (TUN mode's routes
    /// and the PAC file follow within a second, not at the next poll).
    RoutesChanged,
    /// A message of a later release: ignored, so a newer gateway does not
    /// cut an older device's control stream.
    #[serde(other)]
    Unknown,
}

/// Body of `POST /v1/peer/session`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// A device name, `NAME.<vpn domain>`, or a VPN IP.
    pub peer: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "PeerProto::is_tcp")]
    pub proto: PeerProto,
}

/// The gateway's answer to a session request.
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub session: SessionId,
    pub key: SessionKey,
    /// The peer's device name (it goes into the handshake's prologue).
    pub peer: String,
    pub peer_ip: IpAddr,
    pub port: u16,
    /// Where to try the peer directly, in order.
    pub endpoints: Vec<SocketAddr>,
    pub expires_in_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control message of {0} bytes is larger than the limit ({MAX_MESSAGE})")]
    TooLarge(usize),
    #[error("malformed control message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// One message as it goes on the control stream. The buffer is wiped when
/// dropped: an offer carries a key.
pub fn encode<T: Serialize>(msg: &T) -> Result<Zeroizing<Vec<u8>>, ControlError> {
    let mut out = Zeroizing::new(Vec::with_capacity(MAX_MESSAGE + 4));
    out.extend_from_slice(&[0u8; 4]);
    json_into(&mut out, msg)?;
    let body = out.len() - 4;
    if body > MAX_MESSAGE {
        return Err(ControlError::TooLarge(body));
    }
    let len = (body as u32).to_be_bytes();
    if let Some(head) = out.get_mut(..4) {
        head.copy_from_slice(&len);
    }
    Ok(out)
}

const BUFFER_LIMIT: usize = 4 * (MAX_MESSAGE + 4);

/// A message as a plain JSON body (the grant), wiped when dropped.
pub fn to_json<T: Serialize>(msg: &T) -> Result<Zeroizing<Vec<u8>>, ControlError> {
    let mut out = Zeroizing::new(Vec::with_capacity(MAX_MESSAGE));
    json_into(&mut out, msg)?;
    Ok(out)
}

fn json_into<T: Serialize>(out: &mut Zeroizing<Vec<u8>>, msg: &T) -> Result<(), ControlError> {
    let start = out.len();
    // The buffer was made big enough up front: growing it would leave a
    // copy of the key in freed memory.
    serde_json::to_writer(&mut **out, msg)?;
    if out.len() - start > MAX_MESSAGE {
        return Err(ControlError::TooLarge(out.len() - start));
    }
    Ok(())
}

/// Reassembles messages from a byte stream that arrives in arbitrary pieces.
#[derive(Default)]
pub struct Decoder {
    buf: Zeroizing<Vec<u8>>,
}

impl Decoder {
    /// Appends received bytes; refuses to hold more than a few messages'
    /// worth (call [`Decoder::message`] after each push).
    pub fn push(&mut self, data: &[u8]) -> Result<(), ControlError> {
        if self.buf.len() + data.len() > BUFFER_LIMIT {
            return Err(ControlError::TooLarge(self.buf.len() + data.len()));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete message, if one has arrived.
    pub fn message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, ControlError> {
        let Some(head) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_MESSAGE {
            return Err(ControlError::TooLarge(len));
        }
        let Some(body) = self.buf.get(4..4 + len) else {
            return Ok(None);
        };
        let msg = serde_json::from_slice(body)?;
        self.buf.drain(..4 + len);
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_messages_are_ignored_not_fatal() {
        let mut d = Decoder::default();
        let unknown = br#"{"type":"from_a_later_release","with":{"fields":[1,2]}}"#;
        let routes = br#"{"type":"routes_changed"}"#;
        for body in [&unknown[..], &routes[..]] {
            d.push(&(body.len() as u32).to_be_bytes()).unwrap();
            d.push(body).unwrap();
        }
        assert!(matches!(
            d.message::<GatewayMsg>().unwrap(),
            Some(GatewayMsg::Unknown)
        ));
        assert!(matches!(
            d.message::<GatewayMsg>().unwrap(),
            Some(GatewayMsg::RoutesChanged)
        ));
        let wire = encode(&GatewayMsg::RoutesChanged).unwrap();
        assert!(wire.ends_with(routes));
    }

    #[test]
    fn messages_survive_any_split() {
        let key = SessionKey::random().unwrap();
        let offer = GatewayMsg::Offer {
            session: SessionId([9; 16]),
            key: key.clone(),
            from: "alice".into(),
            from_user: "alice".into(),
            port: 8000,
            proto: PeerProto::Tcp,
            expires_in_ms: 10_000,
        };
        let wire = encode(&offer).unwrap();
        let twice: Vec<u8> = [&wire[..], &wire[..]].concat();
        for cut in [1, 3, 4, 5, wire.len() - 1, wire.len() + 2] {
            let mut d = Decoder::default();
            d.push(&twice[..cut]).unwrap();
            let mut got = Vec::new();
            while let Some(m) = d.message::<GatewayMsg>().unwrap() {
                got.push(m);
            }
            d.push(&twice[cut..]).unwrap();
            while let Some(m) = d.message::<GatewayMsg>().unwrap() {
                got.push(m);
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            match &got[0] {
                GatewayMsg::Offer { key: k, port, .. } => {
                    assert_eq!(k.bytes(), key.bytes());
                    assert_eq!(*port, 8000);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn tcp_is_what_a_message_without_a_protocol_means() {
        let old = r#"{"peer":"bob","port":53}"#;
        let req: SessionRequest = serde_json::from_str(old).unwrap();
        assert_eq!(req.proto, PeerProto::Tcp);
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            old,
            "TCP is not written"
        );
        let udp = SessionRequest {
            proto: PeerProto::Udp,
            ..req
        };
        let text = serde_json::to_string(&udp).unwrap();
        assert_eq!(text, r#"{"peer":"bob","port":53,"proto":"udp"}"#);
        let announce = r#"{"type":"announce","listen_port":1,"addrs":[],"exports":[80]}"#;
        match serde_json::from_str::<DeviceMsg>(announce).unwrap() {
            DeviceMsg::Announce { udp_exports, .. } => assert!(udp_exports.is_empty()),
            other => panic!("{other:?}"),
        }
        let both = Exports {
            tcp: vec![80],
            udp: vec![53],
        };
        assert_eq!(both.to_string(), "80/tcp 53/udp");
        assert!(both.contains(PeerProto::Udp, 53) && !both.contains(PeerProto::Tcp, 53));
    }

    #[test]
    fn oversized_and_garbage_messages_are_errors() {
        let mut d = Decoder::default();
        d.push(&(MAX_MESSAGE as u32 + 1).to_be_bytes()).unwrap();
        assert!(matches!(
            d.message::<DeviceMsg>(),
            Err(ControlError::TooLarge(_))
        ));
        let mut d = Decoder::default();
        d.push(&[0, 0, 0, 3, b'{', b'x', b'}']).unwrap();
        assert!(matches!(
            d.message::<DeviceMsg>(),
            Err(ControlError::Malformed(_))
        ));
        let mut d = Decoder::default();
        let unknown = br#"{"type":"launch_missiles"}"#;
        d.push(&(unknown.len() as u32).to_be_bytes()).unwrap();
        d.push(unknown).unwrap();
        assert!(d.message::<DeviceMsg>().is_err());
        let mut d = Decoder::default();
        assert!(d.push(&vec![0u8; 5 * MAX_MESSAGE]).is_err());
    }

    #[test]
    fn keys_never_print() {
        let key = SessionKey::random().unwrap();
        let text = format!("{key:?}");
        assert!(!text.contains(&STANDARD.encode(key.bytes())));
        assert!(text.contains("redacted"));
    }

    #[test]
    fn session_ids_round_trip_and_reject_garbage() {
        let id = SessionId::random();
        assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        assert_eq!(SessionId::parse("zz"), None);
        assert_eq!(SessionId::parse(&"a".repeat(34)), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn session() -> impl Strategy<Value = SessionId> {
            any::<[u8; 16]>().prop_map(SessionId)
        }

        fn path() -> impl Strategy<Value = PeerPath> {
            prop_oneof![Just(PeerPath::Direct), Just(PeerPath::Relayed)]
        }

        fn device_msg() -> impl Strategy<Value = DeviceMsg> {
            let addr = (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::from((ip, port)));
            prop_oneof![
                (
                    any::<u16>(),
                    proptest::collection::vec(addr, 0..=MAX_LIST),
                    proptest::collection::vec(any::<u16>(), 0..=MAX_LIST),
                    proptest::collection::vec(any::<u16>(), 0..=MAX_LIST),
                )
                    .prop_map(|(listen_port, addrs, exports, udp_exports)| {
                        DeviceMsg::Announce {
                            listen_port,
                            addrs,
                            exports,
                            udp_exports,
                        }
                    }),
                session().prop_map(|session| DeviceMsg::Accept { session }),
                // Any text, escapes and non-ASCII included.
                (session(), "\\PC{0,40}")
                    .prop_map(|(session, reason)| DeviceMsg::Decline { session, reason }),
                (
                    session(),
                    path(),
                    any::<u64>(),
                    any::<u64>(),
                    proptest::option::of(".{0,40}")
                )
                    .prop_map(|(session, path, sent, received, why)| {
                        DeviceMsg::Ended {
                            session,
                            path,
                            sent,
                            received,
                            why,
                        }
                    },),
            ]
        }

        /// Messages have no `PartialEq` (a key inside must not be compared
        /// by accident): compare their JSON.
        fn json<T: Serialize>(m: &T) -> serde_json::Value {
            serde_json::to_value(m).unwrap()
        }

        proptest! {
            /// However TCP cuts a stream of messages, the decoder hands out
            /// the same messages in the same order, and nothing else.
            #[test]
            fn any_split_decodes_to_the_same_messages(
                msgs in proptest::collection::vec(device_msg(), 0..8),
                cuts in proptest::collection::vec(any::<usize>(), 0..16),
            ) {
                let mut stream = Vec::new();
                for m in &msgs {
                    stream.extend_from_slice(&encode(m).unwrap());
                }
                let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
                cuts.push(0);
                cuts.push(stream.len());
                cuts.sort_unstable();
                let mut d = Decoder::default();
                let mut got = Vec::new();
                for piece in cuts.windows(2) {
                    d.push(&stream[piece[0]..piece[1]]).unwrap();
                    while let Some(m) = d.message::<DeviceMsg>().unwrap() {
                        got.push(json(&m));
                    }
                }
                let want: Vec<_> = msgs.iter().map(json).collect();
                prop_assert_eq!(got, want);
            }

            /// An offer's key arrives intact through any split (it is the
            /// one field whose loss would not show until the handshake).
            #[test]
            fn offers_keep_their_key(key in any::<[u8; 32]>(), cut in any::<usize>(), port in any::<u16>()) {
                let mut k = SessionKey::zeroed();
                k.0.copy_from_slice(&key);
                let offer = GatewayMsg::Offer {
                    session: SessionId([1; 16]),
                    key: k,
                    from: "alice".into(),
                    from_user: "alice".into(),
                    port,
                    proto: PeerProto::Udp,
                    expires_in_ms: 1,
                };
                let wire = encode(&offer).unwrap();
                let cut = cut % (wire.len() + 1);
                let mut d = Decoder::default();
                d.push(&wire[..cut]).unwrap();
                let early = d.message::<GatewayMsg>().unwrap();
                prop_assert!(early.is_none() || cut == wire.len());
                d.push(&wire[cut..]).unwrap();
                let got = early.or_else(|| d.message::<GatewayMsg>().unwrap());
                match got {
                    Some(GatewayMsg::Offer { key: k, port: p, .. }) => {
                        prop_assert_eq!(k.bytes(), &key);
                        prop_assert_eq!(p, port);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
                prop_assert!(d.message::<GatewayMsg>().unwrap().is_none());
            }
        }
    }
}
