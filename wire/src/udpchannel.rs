//! The UDP channel: an association's datagrams as UDP packets between the
//! device and the gateway's UDP port, beside the HTTP/2 stream that opened
//! the association ([`crate::datagram`]). A datagram on the stream wakes the
//! HTTP/2 connection's task on both sides and waits behind every other
//! stream's bytes on one TCP connection (a lost segment stalls them all);
//! on the channel it is one packet each way, as on the network it stands in
//! for. The stream stays: it opens and ends the association, and carries
//! its datagrams wherever UDP does not get through.
//!
//! Keys are never sent: both ends derive them from the TLS connection the
//! association was opened on (an RFC 5705 exporter, [`ConnSecret`]) and the
//! association's id, one key per direction. A packet:
//! `id(8) | counter(8) | AES-256-GCM(kind(1) | body) | tag(16)`, the first
//! 16 bytes authenticated as associated data; the nonce is the counter, so
//! each direction's counter only grows, and a receiver takes each counter
//! once ([`ReplayWindow`]): a captured packet sent again is dropped, not
//! delivered to the intranet twice. `kind` 0 is a probe (empty body; the
//! gateway answers each with one), 1 a datagram whose body is a frame
//! without its length: `ATYP | ADDR | PORT | payload`.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use bytes::{Bytes, BytesMut};
use zeroize::Zeroizing;

use crate::datagram::{self, DatagramError};
use crate::dest::Destination;

/// The request header that offers a channel (`1`), and the response header
/// that grants one: `ID PORT`, the id in hex, the gateway's UDP port.
pub const CHANNEL_HEADER: &str = "shimgate-udp-channel";
/// Bytes before the sealed part: the id and the counter.
pub const HEADER: usize = 16;
const TAG: usize = 16;
/// Bytes a packet adds to the datagram's frame.
pub const OVERHEAD: usize = HEADER + 1 + TAG;
/// The largest payload the channel carries (the rest goes on the stream):
/// packet and frame within one UDP datagram.
pub const MAX_PAYLOAD: usize = datagram::MAX_PAYLOAD - OVERHEAD - 1 - 256 - 2;

const EXPORTER_LABEL: &[u8] = b"EXPORTER-shimgate-udp-channel";
const KIND_PROBE: u8 = 0;
const KIND_DATAGRAM: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("a packet shorter than its header and tag")]
    Short,
    #[error(
        "a packet that does not open with this association's key (forged, or another association's)"
    )]
    Forged,
    #[error("a packet whose counter was already taken or is too old (replayed)")]
    Replayed,
    #[error("a packet of unknown kind {0}")]
    Kind(u8),
    #[error("this direction's counter is spent: open a new association")]
    Spent,
    #[error(transparent)]
    Datagram(#[from] DatagramError),
}

/// The secret one TLS connection gives its associations' keys: the same on
/// the device and the gateway, known to nobody else.
pub struct ConnSecret(Zeroizing<[u8; 32]>);

impl ConnSecret {
    /// Exported from an established TLS connection.
    pub fn export<D>(conn: &rustls::ConnectionCommon<D>) -> Option<ConnSecret> {
        let mut out = Zeroizing::new([0u8; 32]);
        conn.export_keying_material(&mut out[..], EXPORTER_LABEL, None)
            .ok()?;
        Some(ConnSecret(out))
    }

    /// A secret from elsewhere than a TLS connection: tests and fuzzing.
    pub fn from_bytes(bytes: [u8; 32]) -> ConnSecret {
        ConnSecret(Zeroizing::new(bytes))
    }

    /// This association's ends: what `side` seals with and what it opens.
    pub fn ends(&self, id: u64, side: Side) -> (Sealer, Opener) {
        let up = self.key(id, b'u');
        let down = self.key(id, b'd');
        let (seal, open) = match side {
            Side::Device => (up, down),
            Side::Gateway => (down, up),
        };
        (
            Sealer {
                id,
                key: seal,
                next: 0,
            },
            Opener {
                id,
                key: open,
                window: ReplayWindow::default(),
            },
        )
    }

    fn key(&self, id: u64, direction: u8) -> LessSafeKey {
        let mac = hmac::Key::new(hmac::HMAC_SHA256, &self.0[..]);
        let mut ctx = hmac::Context::with_key(&mac);
        ctx.update(b"shimgate udp channel v1");
        ctx.update(&[direction]);
        ctx.update(&id.to_be_bytes());
        let tag = ctx.sign();
        // HMAC-SHA256 gives 32 bytes, AES-256's key length.
        let key = UnboundKey::new(&AES_256_GCM, tag.as_ref())
            .unwrap_or_else(|_| unreachable!("a 32-byte key"));
        LessSafeKey::new(key)
    }
}

/// Which end of the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Device,
    Gateway,
}

/// What a packet carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    Probe,
    Datagram(Destination, Bytes),
}

/// The association a packet names, read before any key is looked up.
pub fn packet_id(packet: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(packet.get(..8)?.try_into().ok()?))
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    if let Some(tail) = bytes.get_mut(4..) {
        tail.copy_from_slice(&counter.to_be_bytes());
    }
    Nonce::assume_unique_for_key(bytes)
}

/// Seals one direction's packets.
pub struct Sealer {
    id: u64,
    key: LessSafeKey,
    next: u64,
}

impl Sealer {
    pub fn probe(&mut self) -> Result<Bytes, ChannelError> {
        self.seal(KIND_PROBE, |_| Ok(()))
    }

    /// A datagram to (from the device) or from (from the gateway) `far`.
    pub fn datagram(&mut self, far: &Destination, payload: &[u8]) -> Result<Bytes, ChannelError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(DatagramError::TooLarge(payload.len()).into());
        }
        self.seal(KIND_DATAGRAM, |out| {
            datagram::put_address(far, out);
            out.extend_from_slice(payload);
            Ok(())
        })
    }

    fn seal(
        &mut self,
        kind: u8,
        body: impl FnOnce(&mut BytesMut) -> Result<(), ChannelError>,
    ) -> Result<Bytes, ChannelError> {
        let counter = self.next;
        self.next = counter.checked_add(1).ok_or(ChannelError::Spent)?;
        let mut out = BytesMut::with_capacity(OVERHEAD + 300);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&[kind]);
        body(&mut out)?;
        let (head, sealed) = out.split_at_mut(HEADER);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*head), sealed)
            .map_err(|_| ChannelError::Spent)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out.freeze())
    }
}

/// Opens the other direction's packets, each counter once.
pub struct Opener {
    id: u64,
    key: LessSafeKey,
    window: ReplayWindow,
}

impl Opener {
    pub fn open(&mut self, packet: &[u8]) -> Result<Packet, ChannelError> {
        let (head, rest) = packet.split_at_checked(HEADER).ok_or(ChannelError::Short)?;
        let sealed_len = rest.len().checked_sub(TAG).ok_or(ChannelError::Short)?;
        if packet_id(head) != Some(self.id) {
            return Err(ChannelError::Forged);
        }
        let counter = u64::from_be_bytes(
            head.get(8..16)
                .and_then(|c| c.try_into().ok())
                .ok_or(ChannelError::Short)?,
        );
        if !self.window.fresh(counter) {
            return Err(ChannelError::Replayed);
        }
        let (sealed, tag) = rest.split_at(sealed_len);
        let mut plain = vec![0u8; sealed_len];
        self.key
            .open_separate_gather(nonce(counter), Aad::from(head), sealed, tag, &mut plain)
            .map_err(|_| ChannelError::Forged)?;
        // Only an authentic packet moves the window.
        self.window.take(counter);
        let mut plain = Bytes::from(plain);
        match plain.first().copied() {
            Some(KIND_PROBE) => Ok(Packet::Probe),
            Some(KIND_DATAGRAM) => {
                let _kind = plain.split_to(1);
                let far = datagram::take_address(&mut plain)?;
                Ok(Packet::Datagram(far, plain))
            }
            Some(other) => Err(ChannelError::Kind(other)),
            None => Err(ChannelError::Short),
        }
    }
}

/// The counters taken so far: the highest, and which of the 128 below it
/// (UDP may reorder; what is older than that is dropped).
#[derive(Default)]
pub struct ReplayWindow {
    /// One more than the highest counter taken (0: none yet).
    top: u64,
    /// Bit `i`: counter `top - 1 - i` taken.
    seen: u128,
}

impl ReplayWindow {
    /// Whether `counter` may still be taken.
    pub fn fresh(&self, counter: u64) -> bool {
        if counter >= self.top {
            return true;
        }
        let back = self.top - 1 - counter;
        back < 128 && self.seen & (1u128 << back) == 0
    }

    /// Marks `counter` taken (after [`ReplayWindow::fresh`] and the tag said yes).
    pub fn take(&mut self, counter: u64) {
        if counter >= self.top {
            let shift = counter - self.top + 1;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = counter.saturating_add(1);
        } else {
            let back = self.top - 1 - counter;
            if back < 128 {
                self.seen |= 1u128 << back;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> ConnSecret {
        ConnSecret::from_bytes([byte; 32])
    }

    fn dest(s: &str) -> Destination {
        let uri: http::Uri = s.parse().unwrap();
        Destination::from_authority(uri.authority().unwrap()).unwrap()
    }

    #[test]
    fn both_ways_and_nothing_else() {
        let s = secret(7);
        let (mut dev_seal, mut dev_open) = s.ends(42, Side::Device);
        let (mut gw_seal, mut gw_open) = s.ends(42, Side::Gateway);
        let up = dev_seal.datagram(&dest("192.0.2.53:53"), b"query").unwrap();
        assert_eq!(up.len(), OVERHEAD + 7 + 5);
        assert_eq!(packet_id(&up), Some(42));
        assert_eq!(
            gw_open.open(&up).unwrap(),
            Packet::Datagram(dest("192.0.2.53:53"), Bytes::from_static(b"query"))
        );
        // Sent again: refused, however often.
        assert_eq!(gw_open.open(&up), Err(ChannelError::Replayed));
        let down = gw_seal.probe().unwrap();
        assert_eq!(dev_open.open(&down).unwrap(), Packet::Probe);
        // A direction's own packets do not open as the other's.
        let mut again = s.ends(42, Side::Device).1;
        assert_eq!(again.open(&up), Err(ChannelError::Forged));
        // Another connection's secret, or another association's id.
        let (mut other_seal, _) = secret(8).ends(42, Side::Device);
        let forged = other_seal.datagram(&dest("192.0.2.53:53"), b"x").unwrap();
        let mut fresh = s.ends(42, Side::Gateway).1;
        assert_eq!(fresh.open(&forged), Err(ChannelError::Forged));
        let (mut other_id, _) = s.ends(43, Side::Device);
        let wrong = other_id.probe().unwrap();
        assert_eq!(fresh.open(&wrong), Err(ChannelError::Forged));
        // The forgeries took no counter: the real packet 0 still opens.
        assert!(fresh.open(&up).is_ok());
    }

    #[test]
    fn every_byte_is_authenticated() {
        let s = secret(1);
        let (mut seal, _) = s.ends(9, Side::Device);
        let good = seal
            .datagram(&dest("[2001:db8::1]:5353"), b"payload")
            .unwrap();
        for i in 0..good.len() {
            let mut bad = good.to_vec();
            bad[i] ^= 0x40;
            let (_, mut open) = s.ends(9, Side::Gateway);
            assert!(open.open(&bad).is_err(), "byte {i} flipped");
        }
        for len in 0..OVERHEAD {
            let (_, mut open) = s.ends(9, Side::Gateway);
            assert!(open.open(&good[..len]).is_err(), "cut to {len}");
        }
    }

    #[test]
    fn too_large_for_one_packet() {
        let (mut seal, _) = secret(1).ends(1, Side::Device);
        let far = dest("dns.corp.internal:53");
        assert!(seal.datagram(&far, &vec![0; MAX_PAYLOAD]).unwrap().len() <= datagram::MAX_PAYLOAD);
        assert_eq!(
            seal.datagram(&far, &vec![0; MAX_PAYLOAD + 1]),
            Err(ChannelError::Datagram(DatagramError::TooLarge(
                MAX_PAYLOAD + 1
            )))
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever follows an open association's id, it does not open
            /// and does not panic.
            #[test]
            fn any_bytes_fail_to_open(data in proptest::collection::vec(any::<u8>(), 0..300)) {
                let (_, mut open) = secret(3).ends(5, Side::Gateway);
                let mut packet = 5u64.to_be_bytes().to_vec();
                packet.extend_from_slice(&data);
                prop_assert!(open.open(&packet).is_err());
            }
        }
    }

    #[test]
    fn replay_window_takes_each_counter_once() {
        let mut w = ReplayWindow::default();
        for c in [0, 2, 1, 5, 3, 200, 150, 73] {
            assert!(w.fresh(c), "{c}");
            w.take(c);
            assert!(!w.fresh(c), "{c} again");
        }
        // 100 was never taken and is within 128 of 200; 72 is not.
        assert!(w.fresh(100));
        assert!(!w.fresh(72));
        assert!(!w.fresh(0));
        w.take(u64::MAX - 1);
        assert!(!w.fresh(u64::MAX - 1));
        assert!(w.fresh(u64::MAX));
    }
}
