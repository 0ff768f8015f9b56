//! IP packets as the TUN shim reads and answers them: what a packet from
//! the interface is (a TCP segment of which flow, or something else), and
//! the answers the shim writes itself: a reset for a refused connection, an
//! ICMP destination-unreachable for the rest, as a router would.
//!
//! Everything here reads packets a program on this machine sent, which may
//! be anything: a packet that does not parse is `None`, never a panic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use netstack_smoltcp::smoltcp::phy::ChecksumCapabilities;
use netstack_smoltcp::smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};
use shimgate_wire::tunnel::TunnelError;

/// Hop limit of the packets the shim writes.
const HOP_LIMIT: u8 = 64;
/// Bytes of the offending packet an ICMPv4 error quotes (RFC 792: header + 64 bits).
const ICMPV4_QUOTE: usize = 8;
/// An ICMPv6 error stays within the minimum MTU (RFC 4443 §2.4).
const IPV6_MIN_MTU: usize = 1280;

/// One TCP flow, as the program sees it: its own address and the one it
/// connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub program: SocketAddr,
    pub dest: SocketAddr,
}

/// What a packet from the interface is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    Tcp(Segment),
    /// A UDP datagram of flow `key`.
    Udp {
        key: FlowKey,
        payload: &'a [u8],
    },
    /// An ICMPv4 echo request (ping).
    Echo(Echo<'a>),
    /// An ICMP error (never answered with another, RFC 1122 §3.2.2).
    IcmpError,
    /// Anything else: other ICMP queries, other protocols.
    Other {
        dest: IpAddr,
    },
}

/// The parts of a TCP segment the shim acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub key: FlowKey,
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub fin: bool,
    pub seq: u32,
    pub len: usize,
}

impl Segment {
    /// The sequence number after this segment (SYN and FIN count one).
    pub fn end(&self) -> u32 {
        (self.seq)
            .wrapping_add(self.len as u32)
            .wrapping_add(u32::from(self.syn))
            .wrapping_add(u32::from(self.fin))
    }

    /// A connection attempt: SYN without ACK.
    pub fn is_open(&self) -> bool {
        self.syn && !self.ack && !self.rst
    }
}

/// Reads a packet from the interface; `None` when it is not a well-formed
/// IPv4 or IPv6 packet.
pub fn parse(buf: &[u8]) -> Option<Packet<'_>> {
    let (src, dst, proto, payload) = ip_parts(buf)?;
    match proto {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).ok()?;
            let len = payload.len().checked_sub(usize::from(tcp.header_len()))?;
            Some(Packet::Tcp(Segment {
                key: FlowKey {
                    program: SocketAddr::new(src, tcp.src_port()),
                    dest: SocketAddr::new(dst, tcp.dst_port()),
                },
                syn: tcp.syn(),
                ack: tcp.ack(),
                rst: tcp.rst(),
                fin: tcp.fin(),
                seq: tcp.seq_number().0 as u32,
                len,
            }))
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).ok()?;
            Some(Packet::Udp {
                key: FlowKey {
                    program: SocketAddr::new(src, udp.src_port()),
                    dest: SocketAddr::new(dst, udp.dst_port()),
                },
                payload: udp.payload(),
            })
        }
        IpProtocol::Icmp if payload.first() == Some(&8) => {
            let icmp = Icmpv4Packet::new_checked(payload).ok()?;
            let (IpAddr::V4(src), IpAddr::V4(dst)) = (src, dst) else {
                return None;
            };
            Some(Packet::Echo(Echo {
                src,
                dst,
                ident: icmp.echo_ident(),
                seq: icmp.echo_seq_no(),
                data: icmp.data(),
            }))
        }
        // ICMP types below 128 (v6) and 3, 4, 5, 11, 12 (v4) are errors.
        IpProtocol::Icmp if matches!(payload.first(), Some(3 | 4 | 5 | 11 | 12)) => {
            Some(Packet::IcmpError)
        }
        IpProtocol::Icmpv6 if payload.first().is_some_and(|t| *t < 128) => Some(Packet::IcmpError),
        _ => Some(Packet::Other { dest: dst }),
    }
}

/// Source, destination, protocol and payload of an IPv4 or IPv6 packet.
fn ip_parts(buf: &[u8]) -> Option<(IpAddr, IpAddr, IpProtocol, &[u8])> {
    match buf.first()? >> 4 {
        4 => {
            let p = Ipv4Packet::new_checked(buf).ok()?;
            let repr = Ipv4Repr::parse(&p, &ChecksumCapabilities::default()).ok()?;
            // Fragments carry no whole transport header; treat as "other".
            let payload = if p.more_frags() || p.frag_offset() != 0 {
                &[][..]
            } else {
                let start = usize::from(p.header_len());
                buf.get(start..start + repr.payload_len)?
            };
            let proto = if payload.is_empty() {
                IpProtocol::Unknown(0)
            } else {
                repr.next_header
            };
            Some((
                IpAddr::V4(repr.src_addr),
                IpAddr::V4(repr.dst_addr),
                proto,
                payload,
            ))
        }
        6 => {
            let p = Ipv6Packet::new_checked(buf).ok()?;
            let repr = Ipv6Repr::parse(&p).ok()?;
            let payload = buf.get(40..40 + repr.payload_len)?;
            Some((
                IpAddr::V6(repr.src_addr),
                IpAddr::V6(repr.dst_addr),
                repr.next_header,
                payload,
            ))
        }
        _ => None,
    }
}

/// A ping from a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ident: u16,
    pub seq: u16,
    pub data: &'a [u8],
}

/// The echo reply to `echo`, from its destination.
pub fn echo_reply(echo: &Echo) -> Vec<u8> {
    let icmp = Icmpv4Repr::EchoReply {
        ident: echo.ident,
        seq_no: echo.seq,
        data: echo.data,
    };
    let caps = ChecksumCapabilities::default();
    ip_packet(
        echo.dst.into(),
        echo.src.into(),
        IpProtocol::Icmp,
        icmp.buffer_len(),
        |buf| icmp.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps),
    )
}

/// How the shim answers a connection attempt the far end did not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A TCP reset: the port is closed (the program sees ECONNREFUSED).
    Reset,
    /// ICMP destination unreachable, with why.
    Unreachable(Unreachable),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    Network,
    Host,
    /// Policy forbids it (ICMP "communication administratively prohibited").
    Prohibited,
}

/// The answer a router at the far end would give for a tunnel refusal.
pub fn refusal(e: TunnelError) -> Refusal {
    match e {
        TunnelError::Refused | TunnelError::OverLimit => Refusal::Reset,
        TunnelError::NotAllowed => Refusal::Unreachable(Unreachable::Prohibited),
        TunnelError::NetworkUnreachable
        | TunnelError::AddressNotSupported
        | TunnelError::RegistryLost
        | TunnelError::General => Refusal::Unreachable(Unreachable::Network),
        TunnelError::HostUnreachable | TunnelError::UnknownName | TunnelError::TimedOut => {
            Refusal::Unreachable(Unreachable::Host)
        }
    }
}

/// A reset from `key.dest` to `key.program`. With `ack` it answers a SYN
/// (sequence 0, acknowledging the SYN: RFC 9293 §3.10.7.1); without, it
/// aborts a connection at `seq`, the next byte the program expects.
pub fn reset(key: FlowKey, seq: u32, ack: Option<u32>) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: key.dest.port(),
        dst_port: key.program.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let (src, dst) = (key.dest.ip(), key.program.ip());
    ip_packet(src, dst, IpProtocol::Tcp, tcp.buffer_len(), |buf| {
        tcp.emit(
            &mut TcpPacket::new_unchecked(buf),
            &IpAddress::from(src),
            &IpAddress::from(dst),
            &ChecksumCapabilities::default(),
        );
    })
}

/// A UDP datagram from `key.dest` back to `key.program`.
pub fn datagram(key: FlowKey, payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: key.dest.port(),
        dst_port: key.program.port(),
    };
    let (src, dst) = (key.dest.ip(), key.program.ip());
    ip_packet(src, dst, IpProtocol::Udp, 8 + payload.len(), |buf| {
        udp.emit(
            &mut UdpPacket::new_unchecked(buf),
            &IpAddress::from(src),
            &IpAddress::from(dst),
            payload.len(),
            |out| out.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
    })
}

/// The reset that answers connection attempt `syn`.
pub fn reset_syn(syn: &Segment) -> Vec<u8> {
    reset(syn.key, 0, Some(syn.end()))
}

/// An ICMP destination-unreachable for `original` (a packet from the
/// interface), from its destination back to its source; `None` when
/// `original` does not parse.
pub fn unreachable(original: &[u8], why: Unreachable) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    match original.first()? >> 4 {
        4 => {
            let p = Ipv4Packet::new_checked(original).ok()?;
            let header = Ipv4Repr::parse(&p, &caps).ok()?;
            let start = usize::from(p.header_len());
            let quoted = original.get(start..)?;
            let data = quoted.get(..ICMPV4_QUOTE.min(quoted.len()))?;
            let reason = match why {
                Unreachable::Network => Icmpv4DstUnreachable::NetUnreachable,
                Unreachable::Host => Icmpv4DstUnreachable::HostUnreachable,
                Unreachable::Prohibited => Icmpv4DstUnreachable::CommProhibited,
            };
            let icmp = Icmpv4Repr::DstUnreachable {
                reason,
                header,
                data,
            };
            let (src, dst) = (header.dst_addr, header.src_addr);
            Some(ip_packet(
                src.into(),
                dst.into(),
                IpProtocol::Icmp,
                icmp.buffer_len(),
                |buf| icmp.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps),
            ))
        }
        6 => {
            let p = Ipv6Packet::new_checked(original).ok()?;
            let header = Ipv6Repr::parse(&p).ok()?;
            // IPv6 header + ICMPv6 header + quoted IPv6 header come first.
            let room = IPV6_MIN_MTU - 40 - 8 - 40;
            let quoted = original.get(40..)?;
            let data = quoted.get(..room.min(quoted.len()))?;
            let reason = match why {
                Unreachable::Network => Icmpv6DstUnreachable::NoRoute,
                Unreachable::Host => Icmpv6DstUnreachable::AddrUnreachable,
                Unreachable::Prohibited => Icmpv6DstUnreachable::AdminProhibit,
            };
            let icmp = Icmpv6Repr::DstUnreachable {
                reason,
                header,
                data,
            };
            let (src, dst) = (header.dst_addr, header.src_addr);
            Some(ip_packet(
                src.into(),
                dst.into(),
                IpProtocol::Icmpv6,
                icmp.buffer_len(),
                |buf| icmp.emit(&src, &dst, &mut Icmpv6Packet::new_unchecked(buf), &caps),
            ))
        }
        _ => None,
    }
}

/// An IP packet from `src` to `dst` whose `len`-byte payload `emit` writes.
/// Both addresses are of one family: they come from one packet.
fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    len: usize,
    emit: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let ip = Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: proto,
                payload_len: len,
                hop_limit: HOP_LIMIT,
            };
            let mut buf = vec![0u8; ip.buffer_len() + len];
            let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
            ip.emit(&mut p, &ChecksumCapabilities::default());
            emit(p.payload_mut());
            buf
        }
        (src, dst) => {
            let to_v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a,
                IpAddr::V4(a) => a.to_ipv6_mapped(),
            };
            let ip = Ipv6Repr {
                src_addr: to_v6(src),
                dst_addr: to_v6(dst),
                next_header: proto,
                payload_len: len,
                hop_limit: HOP_LIMIT,
            };
            let mut buf = vec![0u8; ip.buffer_len() + len];
            let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
            ip.emit(&mut p);
            emit(p.payload_mut());
            buf
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn(program: &str, dest: &str) -> Vec<u8> {
        let key = FlowKey {
            program: program.parse().unwrap(),
            dest: dest.parse().unwrap(),
        };
        // A SYN is a reset's mirror image with other flags: build one the
        // same way, then flip it into a SYN from the program.
        let mut pkt = reset(
            FlowKey {
                program: key.dest,
                dest: key.program,
            },
            1000,
            None,
        );
        let start = if key.program.is_ipv4() { 20 } else { 40 };
        let (src, dst) = (key.program.ip(), key.dest.ip());
        let mut tcp = TcpPacket::new_unchecked(&mut pkt[start..]);
        tcp.set_rst(false);
        tcp.set_syn(true);
        tcp.fill_checksum(&IpAddress::from(src), &IpAddress::from(dst));
        pkt
    }

    #[test]
    fn a_syn_parses_and_its_reset_acknowledges_it() {
        for (program, dest) in [
            ("198.51.100.2:40000", "203.0.113.2:8080"),
            ("[2001:db8::2]:40000", "[2001:db8:1::5]:443"),
        ] {
            let pkt = syn(program, dest);
            let Some(Packet::Tcp(seg)) = parse(&pkt) else {
                panic!("not parsed as TCP: {pkt:?}")
            };
            assert!(seg.is_open());
            assert_eq!(seg.seq, 1000);
            assert_eq!(seg.end(), 1001);
            assert_eq!(seg.key.program, program.parse().unwrap());
            let rst = reset_syn(&seg);
            let Some(Packet::Tcp(r)) = parse(&rst) else {
                panic!("reset not parsed")
            };
            assert!(r.rst && r.ack && !r.syn);
            assert_eq!(
                r.key.program, seg.key.dest,
                "reset comes from the destination"
            );
            let start = if seg.key.program.is_ipv4() { 20 } else { 40 };
            let tcp = TcpPacket::new_checked(&rst[start..]).unwrap();
            assert_eq!(tcp.ack_number().0, 1001);
            assert!(tcp.verify_checksum(
                &IpAddress::from(seg.key.dest.ip()),
                &IpAddress::from(seg.key.program.ip())
            ));
        }
    }

    #[test]
    fn unreachable_quotes_the_packet_and_is_not_answered_again() {
        for (program, dest) in [
            ("198.51.100.2:40000", "203.0.113.2:8080"),
            ("[2001:db8::2]:40000", "[2001:db8:1::5]:443"),
        ] {
            let pkt = syn(program, dest);
            let icmp = unreachable(&pkt, Unreachable::Prohibited).expect("an ICMP error");
            assert_eq!(parse(&icmp), Some(Packet::IcmpError));
            let (src, dst, _, payload) = ip_parts(&icmp).unwrap();
            assert_eq!(src, dest.parse::<SocketAddr>().unwrap().ip());
            assert_eq!(dst, program.parse::<SocketAddr>().unwrap().ip());
            // type 3 code 13 (v4), type 1 code 1 (v6)
            assert!(
                matches!(payload[..2], [3, 13] | [1, 1]),
                "{:?}",
                &payload[..2]
            );
        }
    }

    #[test]
    fn a_ping_is_answered_in_kind() {
        let request = Echo {
            src: Ipv4Addr::new(100, 64, 0, 1),
            dst: Ipv4Addr::new(100, 64, 0, 2),
            ident: 7,
            seq: 3,
            data: b"abcdefgh",
        };
        let reply = echo_reply(&request);
        let (src, dst, proto, payload) = ip_parts(&reply).unwrap();
        assert_eq!(
            (src, dst, proto),
            (request.dst.into(), request.src.into(), IpProtocol::Icmp)
        );
        let icmp = Icmpv4Packet::new_checked(payload).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(
            (
                u8::from(icmp.msg_type()),
                icmp.echo_ident(),
                icmp.echo_seq_no()
            ),
            (0, 7, 3)
        );
        assert_eq!(icmp.data(), b"abcdefgh");
        // and a request parses as one
        let mut req = reply.clone();
        req[20] = 8;
        let mut p = Icmpv4Packet::new_unchecked(&mut req[20..]);
        p.fill_checksum();
        assert!(
            matches!(parse(&req), Some(Packet::Echo(e)) if e.seq == 3 && e.data == b"abcdefgh")
        );
    }

    #[test]
    fn a_datagram_round_trips() {
        let key = FlowKey {
            program: "198.51.100.2:5353".parse().unwrap(),
            dest: "203.0.113.2:53".parse().unwrap(),
        };
        let pkt = datagram(key, b"query");
        let Some(Packet::Udp { key: k, payload }) = parse(&pkt) else {
            panic!("not parsed as UDP")
        };
        assert_eq!((k.program, k.dest), (key.dest, key.program));
        assert_eq!(payload, b"query");
    }

    #[test]
    fn hostile_packets_do_not_parse() {
        for junk in [
            &[][..],
            &[0x45][..],
            &[0x60, 0, 0, 0, 0, 20, 6, 64][..],
            &[
                0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
            ][..],
            &[0xff; 60][..],
        ] {
            assert!(parse(junk).is_none(), "{junk:?} parsed");
            assert!(unreachable(junk, Unreachable::Host).is_none());
        }
    }
}
