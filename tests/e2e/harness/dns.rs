//! A DNS server for rebinding tests: it answers a name's first A query with
//! one address and every later one with another, as an attacker's server
//! would to get a name checked as harmless and then dialled as internal.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const TYPE_A: u16 = 1;
const TYPE_SRV: u16 = 33;
/// Every name's SRV record: priority 0, weight 0, this port, this target.
pub const SRV_PORT: u16 = 5432;
pub const SRV_TARGET: &str = "db.intranet.corp";

pub struct RebindingDns {
    /// A queries answered so far.
    pub a_queries: Arc<AtomicUsize>,
}

impl RebindingDns {
    /// Serves on `sock` (bound where the resolver will ask, e.g. 127.0.0.1:53
    /// inside a namespace) until the process ends.
    pub fn start(sock: UdpSocket, first: Ipv4Addr, then: Ipv4Addr) -> RebindingDns {
        let a_queries = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&a_queries);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if let Some(answer) = answer(&buf[..n], &count, first, then) {
                    let _ = sock.send_to(&answer, from);
                }
            }
        });
        RebindingDns { a_queries }
    }

    pub fn a_queries(&self) -> usize {
        self.a_queries.load(Ordering::SeqCst)
    }
}

/// The reply to one query: `first` to the first A query, `then` to every
/// later one; an SRV query [`SRV_PORT`] on [`SRV_TARGET`]; other types get
/// an empty answer (NOERROR, no records). A name under `.invalid` (RFC
/// 6761) does not exist: NXDOMAIN, whatever the type.
fn answer(query: &[u8], count: &AtomicUsize, first: Ipv4Addr, then: Ipv4Addr) -> Option<Vec<u8>> {
    // the question: labels from offset 12 to a zero byte, then type and class
    let mut end = 12;
    loop {
        let len = *query.get(end)? as usize;
        end += 1 + len;
        if len == 0 {
            break;
        }
    }
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    let question = query.get(12..end + 4)?;
    // the last label: "invalid" is 7 bytes, then the terminating zero
    let nxdomain = end >= 9 && query.get(end - 9..end)? == b"\x07invalid\0";
    let addr = (qtype == TYPE_A && !nxdomain).then(|| match count.fetch_add(1, Ordering::SeqCst) {
        0 => first,
        _ => then,
    });
    let srv = qtype == TYPE_SRV && !nxdomain;
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&query[..2]); // id
    // response, recursion desired + available; RCODE 3 (NXDOMAIN) or 0
    out.extend_from_slice(&[0x81, if nxdomain { 0x83 } else { 0x80 }]);
    let records = u8::from(addr.is_some() || srv);
    out.extend_from_slice(&[0, 1, 0, records, 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if let Some(a) = addr {
        out.extend_from_slice(&[0xc0, 12]); // the name: a pointer to the question's
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 4]); // class IN, TTL 0, 4 bytes
        out.extend_from_slice(&a.octets());
    }
    if srv {
        let mut target = Vec::new();
        for label in SRV_TARGET.split('.') {
            target.push(label.len() as u8);
            target.extend_from_slice(label.as_bytes());
        }
        target.push(0);
        out.extend_from_slice(&[0xc0, 12]);
        out.extend_from_slice(&TYPE_SRV.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0]); // class IN, TTL 0
        out.extend_from_slice(&(6 + target.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]); // priority, weight
        out.extend_from_slice(&SRV_PORT.to_be_bytes());
        out.extend_from_slice(&target);
    }
    Some(out)
}

/// The resolver configuration processes started with `ip netns exec` in
/// namespace `ns` read (it bind-mounts `/etc/netns/NAME/resolv.conf`);
/// removed with the namespace.
pub fn use_nameserver(ns: &str, server: SocketAddr) {
    assert_eq!(server.port(), 53, "resolv.conf takes no port");
    let dir = format!("/etc/netns/{ns}");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {dir}: {e}"));
    std::fs::write(
        format!("{dir}/resolv.conf"),
        format!("nameserver {}\noptions timeout:1 attempts:1\n", server.ip()),
    )
    .expect("write resolv.conf");
}
