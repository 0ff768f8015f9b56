//! The machine's DNS resolvers: the nameservers `/etc/resolv.conf` names,
//! and asking them a query over UDP. TUN mode passes names outside the VPN
//! to the resolvers the device had; the gateway asks its own for the record
//! types of routed names a device's responder does not answer itself.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Where the system resolver's configuration lives.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// How long one server may take to answer.
const WAIT: Duration = Duration::from_secs(5);
/// Largest answer read (EDNS's usual UDP payload size).
const MAX_ANSWER: usize = 4096;

/// The `nameserver` addresses of a resolv.conf, in order.
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

/// The nameservers this machine's resolv.conf names now, on port 53.
pub fn system() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    nameservers(&text)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// `query` to each of `servers` in turn until one answers (an answer
/// carrying the query's id, from that server); `None` when none did.
pub async fn ask(servers: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for server in servers {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(sock) = tokio::net::UdpSocket::bind(local).await else {
            continue;
        };
        // Connected: the kernel drops datagrams from anywhere else.
        if sock.connect(server).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let answered = async {
            let mut buf = vec![0u8; MAX_ANSWER];
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                if buf.get(..2) == Some(id) {
                    buf.truncate(n);
                    return Some(buf);
                }
            }
        };
        if let Ok(Some(answer)) = tokio::time::timeout(WAIT, answered).await {
            return Some(answer);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines() {
        let conf = "# a comment\nsearch corp\nnameserver 192.0.2.53\n  nameserver 2001:db8::53 \nnameserver bogus\noptions timeout:1\n";
        assert_eq!(
            nameservers(conf),
            [
                "192.0.2.53".parse::<IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn an_answer_with_another_id_is_not_taken() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let _ = server.send_to(b"\x99\x99 spoofed", from);
            let _ = server.send_to(&buf[..n], from);
        });
        let answer = ask(&[addr], b"\x12\x34 query").await;
        assert_eq!(answer.as_deref(), Some(&b"\x12\x34 query"[..]));
    }
}
