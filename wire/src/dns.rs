//! DNS messages as TUN mode's responder and the gateway read them: a query
//! a program's stub resolver sent, and the answer written for it; and the
//! call that carries a query for a routed name to the gateway's resolvers.
//! Only what a stub resolver asks is understood (one question, no
//! compression in it). Every query is hostile input: a malformed one is
//! `None`, never a panic.

use std::net::IpAddr;

/// `POST` here with a client certificate and a DNS query as the body (as
/// DNS over HTTPS sends one, RFC 8484's `application/dns-message`): the
/// gateway asks its own resolvers, if policy lets the device reach the
/// name, and answers with their DNS message. For the record types TUN
/// mode's responder does not answer itself (SRV, TXT, MX, ...).
pub const DNS_PATH: &str = "/v1/dns";
/// Largest DNS message either way (EDNS's usual UDP payload size).
pub const MAX_MESSAGE: usize = 4096;

/// Record types the responder answers itself.
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
/// The id a message carries (its first two bytes).
pub fn id(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

/// Response codes.
pub const NOERROR: u8 = 0;
pub const SERVFAIL: u8 = 2;
pub const NXDOMAIN: u8 = 3;
pub const REFUSED: u8 = 5;
/// Seconds a program may keep an answer: a fake address is never reused,
/// and a peer's VPN address rarely changes.
const TTL: u32 = 60;
const HEADER: usize = 12;

/// A standard query with one question.
#[derive(Debug, PartialEq, Eq)]
pub struct Query<'a> {
    pub id: u16,
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    /// The question as sent (name, type, class), echoed in the answer.
    question: &'a [u8],
    recursion_desired: bool,
}

/// Reads a query; `None` for anything that is not a standard query with
/// one question in the Internet class.
pub fn parse(msg: &[u8]) -> Option<Query<'_>> {
    let header = msg.get(..HEADER)?;
    let id = u16::from_be_bytes([header[0], header[1]]);
    let (flags, qdcount) = (header[2], u16::from_be_bytes([header[4], header[5]]));
    // QR = 0 (a query), opcode 0 (standard)
    if flags & 0x80 != 0 || flags & 0x78 != 0 || qdcount != 1 {
        return None;
    }
    let mut at = HEADER;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // 0xC0: a compression pointer, never in a stub's question; 0x40: reserved
        if len > 63 {
            return None;
        }
        let label = std::str::from_utf8(msg.get(at..at + len)?).ok()?;
        labels.push(label.to_ascii_lowercase());
        at += len;
        if at - HEADER > 255 {
            return None;
        }
    }
    let tail = msg.get(at..at + 4)?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    if qclass != 1 {
        return None;
    }
    Some(Query {
        id,
        name: labels.join("."),
        qtype,
        question: msg.get(HEADER..at + 4)?,
        recursion_desired: header[2] & 0x01 != 0,
    })
}

/// The answer to `q`: `rcode`, and one record per address of the type
/// asked (others are left out).
pub fn answer(q: &Query, rcode: u8, addrs: &[IpAddr]) -> Vec<u8> {
    let records: Vec<&IpAddr> = addrs
        .iter()
        .filter(|a| match q.qtype {
            TYPE_A => a.is_ipv4(),
            TYPE_AAAA => a.is_ipv6(),
            _ => false,
        })
        .collect();
    let mut out = Vec::with_capacity(HEADER + q.question.len() + records.len() * 28);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, AA, RD as asked; RA; rcode
    out.push(0x84 | u8::from(q.recursion_desired));
    out.push(0x80 | (rcode & 0x0f));
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(q.question);
    for addr in records {
        // the name: a pointer to the question's
        out.extend_from_slice(&[0xc0, HEADER as u8]);
        let (rtype, data): (u16, Vec<u8>) = match addr {
            IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
            IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn a_query_and_its_answer() {
        let msg = query("Intranet.CORP", TYPE_A);
        let q = parse(&msg).expect("a query");
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype),
            (0x1234, "intranet.corp", TYPE_A)
        );
        let v4: IpAddr = "198.18.0.7".parse().unwrap();
        let v6: IpAddr = "2001:2::7".parse().unwrap();
        let a = answer(&q, NOERROR, &[v4, v6]);
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[3] & 0x0f, NOERROR);
        assert_eq!(
            u16::from_be_bytes([a[6], a[7]]),
            1,
            "one A record, the AAAA left out"
        );
        assert_eq!(&a[a.len() - 4..], &[198, 18, 0, 7]);
        let nx = answer(&q, NXDOMAIN, &[]);
        assert_eq!(
            (nx[3] & 0x0f, u16::from_be_bytes([nx[6], nx[7]])),
            (NXDOMAIN, 0)
        );
    }

    #[test]
    fn hostile_messages_are_not_queries() {
        let mut response = query("a.b", TYPE_A);
        response[2] |= 0x80;
        let mut pointer = query("a.b", TYPE_A);
        pointer[12] = 0xc0;
        let mut two = query("a.b", TYPE_A);
        two[5] = 2;
        let long: Vec<u8> = query(&vec!["x".repeat(63); 5].join("."), TYPE_A);
        for bad in [
            &[][..],
            &[0u8; 11][..],
            &response,
            &pointer,
            &two,
            &long,
            &query("a.b", TYPE_A)[..16],
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
