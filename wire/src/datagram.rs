//! UDP on an HTTP/2 stream: one stream per association (`POST /v1/udp`),
//! carrying datagrams framed with their far end, in the spirit of RFC 9298's
//! CONNECT-UDP capsules. Device → gateway: the destination; gateway →
//! device: the source. Every shim's UDP (SOCKS UDP ASSOCIATE now; the socket
//! shim and TUN next) uses this one framing.
//!
//! A frame: `len(2) | ATYP(1) | ADDR | PORT(2) | payload`, where `len` counts
//! what follows it and the address is as in SOCKS5 (RFC 1928 §5): 1 = IPv4
//! (4 bytes), 3 = name (1 length byte, then the name), 4 = IPv6 (16 bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::dest::{DestError, Destination, Host};

/// `POST` here to open a UDP association.
pub const UDP_PATH: &str = "/v1/udp";
/// The largest payload carried: the most one IPv4 UDP datagram holds.
pub const MAX_PAYLOAD: usize = 65_507;

const ATYP_V4: u8 = 1;
const ATYP_NAME: u8 = 3;
const ATYP_V6: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("a datagram of {0} bytes is larger than {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("address type {0} is not IPv4 (1), a name (3) or IPv6 (4)")]
    AddressType(u8),
    #[error("the frame ends inside its address")]
    Truncated,
    #[error(transparent)]
    Destination(#[from] DestError),
}

/// The far end as SOCKS5 encodes it: `ATYP | ADDR | PORT`.
pub fn put_address(dest: &Destination, out: &mut BytesMut) {
    match dest.host() {
        Host::Ip(IpAddr::V4(a)) => {
            out.put_u8(ATYP_V4);
            out.put_slice(&a.octets());
        }
        Host::Ip(IpAddr::V6(a)) => {
            out.put_u8(ATYP_V6);
            out.put_slice(&a.octets());
        }
        Host::Name(n) => {
            // A valid name is at most 253 bytes (`Host::parse`).
            out.put_u8(ATYP_NAME);
            out.put_u8(n.len() as u8);
            out.put_slice(n.as_bytes());
        }
    }
    out.put_u16(dest.port());
}

/// Reads `ATYP | ADDR | PORT` off the front of `buf`.
pub fn take_address(buf: &mut Bytes) -> Result<Destination, DatagramError> {
    if buf.is_empty() {
        return Err(DatagramError::Truncated);
    }
    let host = match buf.get_u8() {
        ATYP_V4 => {
            let octets: [u8; 4] = take(buf)?;
            Host::Ip(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        ATYP_V6 => {
            let octets: [u8; 16] = take(buf)?;
            Host::Ip(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        ATYP_NAME => {
            let [len] = take::<1>(buf)?;
            if buf.len() < usize::from(len) {
                return Err(DatagramError::Truncated);
            }
            let name = buf.split_to(usize::from(len));
            let text = std::str::from_utf8(&name)
                .map_err(|_| DestError::BadHost(String::from_utf8_lossy(&name).into_owned()))?;
            Host::parse(text)?
        }
        other => return Err(DatagramError::AddressType(other)),
    };
    let port = u16::from_be_bytes(take(buf)?);
    Ok(Destination::new(host, port)?)
}

fn take<const N: usize>(buf: &mut Bytes) -> Result<[u8; N], DatagramError> {
    if buf.len() < N {
        return Err(DatagramError::Truncated);
    }
    let mut out = [0; N];
    buf.copy_to_slice(&mut out);
    Ok(out)
}

/// One framed datagram, ready to send on the stream.
pub fn encode(far: &Destination, payload: &[u8]) -> Result<Bytes, DatagramError> {
    let mut out = BytesMut::with_capacity(2 + 1 + 256 + 2 + payload.len());
    encode_into(far, payload, &mut out)?;
    Ok(out.freeze())
}

/// Appends one framed datagram to `out`: several datagrams that arrive
/// together go on the stream as one write (one HTTP/2 frame, one TLS record).
pub fn encode_into(
    far: &Destination,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<(), DatagramError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(DatagramError::TooLarge(payload.len()));
    }
    let start = out.len();
    out.reserve(2 + 1 + 256 + 2 + payload.len());
    out.put_u16(0);
    put_address(far, out);
    out.put_slice(payload);
    // At most 2 + 259 + 65,507 bytes: the length fits in two bytes.
    let len = (out.len() - start - 2) as u16;
    if let Some(head) = out.get_mut(start..start + 2) {
        head.copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// Bytes of framed datagrams gathered for one write before it is sent.
pub const BATCH: usize = 64 * 1024;

/// Splits the stream's bytes into datagrams, however HTTP/2 cut them into
/// DATA frames. A frame whose address is bad is an error for that frame
/// only: the next one is read after it.
#[derive(Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole datagram, if one has arrived.
    pub fn next_datagram(&mut self) -> Option<Result<(Destination, Bytes), DatagramError>> {
        let len = usize::from(u16::from_be_bytes([*self.buf.first()?, *self.buf.get(1)?]));
        if self.buf.len() < 2 + len {
            return None;
        }
        self.buf.advance(2);
        let mut frame = self.buf.split_to(len).freeze();
        Some(take_address(&mut frame).map(|far| (far, frame)))
    }

    /// Bytes held that are not yet a whole datagram.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(s: &str) -> Destination {
        let uri: http::Uri = s.parse().unwrap();
        Destination::from_authority(uri.authority().unwrap()).unwrap()
    }

    #[test]
    fn round_trip_in_any_pieces() {
        let sent = [
            (dest("192.0.2.53:53"), b"query".to_vec()),
            (dest("[2001:db8::1]:5353"), Vec::new()),
            (dest("dns.corp.internal:53"), vec![7; 1200]),
            (dest("192.0.2.1:9"), vec![1; MAX_PAYLOAD]),
        ];
        let mut wire = Vec::new();
        for (d, p) in &sent {
            wire.extend_from_slice(&encode(d, p).unwrap());
        }
        // Appended to one buffer, the same bytes.
        let mut batch = BytesMut::from(&b"earlier"[..]);
        for (d, p) in &sent {
            encode_into(d, p, &mut batch).unwrap();
        }
        assert_eq!(batch.get(7..), Some(&wire[..]));
        for piece in [1, 3, 1000, wire.len()] {
            let mut dec = Decoder::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                dec.push(chunk);
                while let Some(d) = dec.next_datagram() {
                    let (far, payload) = d.unwrap();
                    got.push((far, payload.to_vec()));
                }
            }
            assert_eq!(got, sent, "in pieces of {piece}");
            assert_eq!(dec.pending(), 0);
        }
    }

    #[test]
    fn bad_frames_are_errors_and_the_next_one_reads() {
        assert_eq!(
            encode(&dest("192.0.2.1:9"), &vec![0; MAX_PAYLOAD + 1]),
            Err(DatagramError::TooLarge(MAX_PAYLOAD + 1))
        );
        let good = encode(&dest("192.0.2.1:9"), b"ok").unwrap();
        for bad in [
            &[0, 1, 9][..],                         // unknown address type
            &[0, 4, 1, 192, 0, 2],                  // no port
            &[0, 5, 3, 9, b'a', b'b', b'c'],        // name longer than the frame
            &[0, 7, 1, 192, 0, 2, 1, 0, 0],         // port 0
            &[0, 7, 3, 3, b'a', b' ', b'b', 0, 53], // a name with a space
            &[0, 0],                                // empty
        ] {
            let mut dec = Decoder::default();
            dec.push(bad);
            dec.push(&good);
            assert!(matches!(dec.next_datagram(), Some(Err(_))), "{bad:?}");
            let (far, payload) = dec.next_datagram().unwrap().unwrap();
            assert_eq!((far, &payload[..]), (dest("192.0.2.1:9"), &b"ok"[..]));
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever bytes arrive, decoding never panics and never reads
            /// more than it was given.
            #[test]
            fn any_bytes_decode_without_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
                let mut dec = Decoder::default();
                dec.push(&data);
                let mut frames = 0;
                while dec.next_datagram().is_some() {
                    frames += 1;
                    prop_assert!(frames <= data.len());
                }
                prop_assert!(dec.pending() <= data.len());
            }
        }
    }
}
