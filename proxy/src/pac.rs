//! The PAC file: browsers send VPN destinations to the SOCKS port and
//! everything else direct.
//!
//! VPN destinations are names under the VPN domain (peers), the VPN range,
//! and what the gateway's policy lets this device reach ([`Routes`], asked
//! for at start and every minute). The file is served on the SOCKS port
//! itself: a connection whose first byte is `G` is an HTTP `GET`, not
//! SOCKS5 (which starts with 0x05), so `http://127.0.0.1:1080/proxy.pac`
//! works with nothing more to configure.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::Method;
use ipnet::Ipv4Net;
use shimgate_wire::enroll::{ROUTES_PATH, Routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::pool::Pool;
use shimgate_wire::identity::VpnRange;

/// Where the PAC file is served (`/wpad.dat` is the name WPAD clients ask for).
pub const PATHS: [&str; 2] = ["/proxy.pac", "/wpad.dat"];
const CONTENT_TYPE: &str = "application/x-ns-proxy-autoconfig";
/// Largest request head read; a PAC fetch is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// A client has this long to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// Until the first answer (the pool may still be connecting).
const RETRY_EVERY: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The PAC file's JavaScript for a SOCKS server at `socks`.
///
/// Names and networks come from the gateway and are treated as untrusted:
/// only valid DNS names and IPv4 networks are written, each as a JSON
/// string literal (which is also a JavaScript one). IPv6 networks are left
/// out: `isInNet` is IPv4 only in every PAC engine.
pub fn generate(
    socks: SocketAddr,
    vpn_domain: &str,
    vpn_range: VpnRange,
    routes: &Routes,
) -> String {
    let names: Vec<String> = std::iter::once(vpn_domain)
        .chain(routes.domains.iter().map(String::as_str))
        .filter_map(dns_name)
        .collect();
    // A suffix under another one (`bob.vpn.internal`) adds nothing.
    let mut suffixes: Vec<&String> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let covered = names
            .iter()
            .enumerate()
            .any(|(j, other)| (j < i && other == name) || name.ends_with(&format!(".{other}")));
        if !covered {
            suffixes.push(name);
        }
    }
    let nets: Vec<Ipv4Net> = std::iter::once(vpn_range.net())
        .chain(
            routes
                .cidrs
                .iter()
                .filter_map(|c| c.parse::<Ipv4Net>().ok()),
        )
        .collect();
    let nets = Ipv4Net::aggregate(&nets);
    let literal = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    // "SOCKS" after "SOCKS5": an engine that does not know SOCKS5 fails
    // closed on it instead of skipping to DIRECT, which would leak VPN
    // names to the local resolver.
    let proxy = literal(&format!("SOCKS5 {socks}; SOCKS {socks}"));
    let mut js = String::new();
    let _ = writeln!(
        js,
        "// shimgate: VPN destinations go to the SOCKS5 proxy, everything else DIRECT."
    );
    let _ = writeln!(js, "function FindProxyForURL(url, host) {{");
    let _ = writeln!(js, "  var proxy = {proxy};");
    let _ = writeln!(js, "  host = host.toLowerCase().replace(/\\.$/, \"\");");
    for s in suffixes {
        let (exact, under) = (literal(s), literal(&format!(".{s}")));
        let _ = writeln!(
            js,
            "  if (host == {exact} || dnsDomainIs(host, {under})) return proxy;"
        );
    }
    // isInNet on a name would resolve it locally: only on address literals.
    let _ = writeln!(
        js,
        "  if (/^[0-9]{{1,3}}(\\.[0-9]{{1,3}}){{3}}$/.test(host)) {{"
    );
    for n in &nets {
        let (addr, mask) = (
            literal(&n.network().to_string()),
            literal(&n.netmask().to_string()),
        );
        let _ = writeln!(js, "    if (isInNet(host, {addr}, {mask})) return proxy;");
    }
    let _ = writeln!(js, "  }}");
    let _ = writeln!(js, "  return \"DIRECT\";");
    let _ = writeln!(js, "}}");
    js
}

/// `name` lowercased without a trailing dot, if it is a valid DNS name:
/// labels of 1–63 letters, digits, `-` or `_`, not starting or ending with
/// `-`, at most 253 characters in all.
pub(crate) fn dns_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (name.len() <= 253 && name.split('.').all(label_ok)).then_some(name)
}

/// The PAC URL for a SOCKS server listening on `socks` (an unspecified
/// listen address is reached on loopback).
pub fn url(socks: SocketAddr) -> String {
    let ip = match socks.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!(
        "http://{}{}",
        SocketAddr::new(ip, socks.port()),
        PATHS.first().copied().unwrap_or_default()
    )
}

/// An HTTP answer: status line, content type, body.
#[derive(Debug, PartialEq, Eq)]
struct HttpReply {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl HttpReply {
    fn error(status: &'static str, body: &str) -> HttpReply {
        HttpReply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }
}

/// What to answer to request head `head`; `pac` makes the file.
fn respond(head: &[u8], pac: impl FnOnce() -> String) -> HttpReply {
    let Ok(head) = std::str::from_utf8(head) else {
        return HttpReply::error("400 Bad Request", "not an HTTP request");
    };
    let mut lines = head.split("\r\n").flat_map(|l| l.split('\n'));
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) = (
        request.next(),
        request.next(),
        request.next(),
        request.next(),
    ) else {
        return HttpReply::error("400 Bad Request", "not an HTTP request");
    };
    if !version.starts_with("HTTP/1.") {
        return HttpReply::error("400 Bad Request", "not an HTTP/1 request");
    }
    if method != "GET" {
        return HttpReply::error("405 Method Not Allowed", "only GET is served here");
    }
    // A web page can make a browser send requests here, but it can only read
    // the answer under its own origin's name (DNS rebinding): answer only
    // requests that name this machine by address or as localhost.
    let host = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim());
    if !host.is_some_and(names_this_machine) {
        return HttpReply::error(
            "403 Forbidden",
            "ask for the PAC file by address (http://127.0.0.1:PORT/proxy.pac) or as localhost",
        );
    }
    let path = target.split('?').next().unwrap_or_default();
    if !PATHS.contains(&path) {
        return HttpReply::error(
            "404 Not Found",
            "this is a SOCKS5 proxy; its PAC file is /proxy.pac",
        );
    }
    HttpReply {
        status: "200 OK",
        content_type: CONTENT_TYPE,
        body: pac(),
    }
}

/// The status line a loopback client that sent `received` gets: the head
/// ends where [`Pac::answer`] would end it, then the request is judged as
/// it is. Public only for the fuzz target `pac_head` (tests/fuzz), which
/// cannot reach the private parser otherwise.
#[doc(hidden)]
pub fn status_for(received: &[u8]) -> &'static str {
    let head = find_end(received)
        .and_then(|end| received.get(..end))
        .unwrap_or(received);
    respond(head, String::new).status
}

/// A `Host` header value that is an IP literal or `localhost`, with or without a port.
fn names_this_machine(host: &str) -> bool {
    let bare = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok()
}

/// The current routes, shared by the SOCKS listeners and the refresher.
pub struct Pac {
    vpn_domain: String,
    vpn_range: VpnRange,
    /// The SOCKS listen address, for when the socket cannot say which
    /// address a client reached.
    listen: SocketAddr,
    routes: RwLock<Arc<Routes>>,
    /// Told when the routes change (TUN mode's route keeper waits on it).
    changed: tokio::sync::Notify,
    /// Told when the gateway says policy changed: fetch at once.
    stale: tokio::sync::Notify,
}

impl Pac {
    pub fn new(vpn_domain: &str, vpn_range: VpnRange, listen: SocketAddr) -> Arc<Pac> {
        Arc::new(Pac {
            vpn_domain: vpn_domain.to_owned(),
            vpn_range,
            listen,
            routes: RwLock::new(Arc::new(Routes::default())),
            changed: tokio::sync::Notify::new(),
            stale: tokio::sync::Notify::new(),
        })
    }

    /// What the gateway's policy routes to this device, as last fetched.
    pub fn routes(&self) -> Arc<Routes> {
        match self.routes.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn vpn_domain(&self) -> &str {
        &self.vpn_domain
    }

    pub fn vpn_range(&self) -> VpnRange {
        self.vpn_range
    }

    fn set(&self, routes: Routes) {
        let routes = Arc::new(routes);
        match self.routes.write() {
            Ok(mut r) => *r = routes,
            Err(poisoned) => *poisoned.into_inner() = routes,
        }
        self.changed.notify_one();
    }

    /// Resolves once the routes have changed since the last call returned
    /// (for one waiter).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Has [`Pac::keep_fresh`] fetch the routes now, not at its next round.
    pub fn refresh_now(&self) {
        self.stale.notify_one();
    }

    /// Asks the gateway for this device's routes until `stop` fires: at
    /// once, every few seconds until it answers, then every minute or when
    /// [`Pac::refresh_now`] is called.
    pub async fn keep_fresh(self: Arc<Self>, pool: Arc<Pool>, stop: CancellationToken) {
        loop {
            let wait = match tokio::time::timeout(CALL_TIMEOUT, fetch(&pool)).await {
                Ok(Ok(routes)) => {
                    if *self.routes() != routes {
                        tracing::info!(domains = ?routes.domains, cidrs = ?routes.cidrs, "PAC routes from the gateway");
                        self.set(routes);
                    }
                    REFRESH_EVERY
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot fetch PAC routes from the gateway");
                    RETRY_EVERY
                }
                Err(_) => RETRY_EVERY,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stale.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Answers one HTTP request on a connection of the SOCKS port, then
    /// closes it. Only loopback clients get an answer: the list of where
    /// this device's user may go is theirs, and a browser elsewhere could
    /// not use a SOCKS port that needs a password from a PAC file anyway.
    pub async fn answer(&self, mut sock: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
        let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut sock))
            .await
            .unwrap_or(Ok(Head::TooSlow))?;
        let answer = match head {
            _ if !peer.ip().to_canonical().is_loopback() => HttpReply::error(
                "403 Forbidden",
                "the PAC file is served to this machine only",
            ),
            Head::Complete(head) => respond(&head, || {
                // The address the client reached: what the file must name.
                let socks = sock.local_addr().unwrap_or(self.listen);
                generate(socks, &self.vpn_domain, self.vpn_range, &self.routes())
            }),
            Head::NotHttp => HttpReply::error("400 Bad Request", "not an HTTP request"),
            Head::TooLarge => {
                HttpReply::error("431 Request Header Fields Too Large", "request too large")
            }
            Head::TooSlow => HttpReply::error("408 Request Timeout", "request too slow"),
        };
        let head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
            answer.status,
            answer.content_type,
            answer.body.len()
        );
        sock.write_all(head.as_bytes()).await?;
        sock.write_all(answer.body.as_bytes()).await?;
        sock.shutdown().await
    }
}

/// What came before the blank line that ends a request head.
enum Head {
    /// The head (or all a client sent before it stopped sending).
    Complete(Vec<u8>),
    /// Bytes no HTTP head has: said at once, so that garbage which happens
    /// to start with `G` does not hold the connection until the timeout.
    NotHttp,
    /// Longer than [`MAX_HEAD`].
    TooLarge,
    TooSlow,
}

async fn read_head(sock: &mut TcpStream) -> std::io::Result<Head> {
    let text = |b: &u8| matches!(b, b'\r' | b'\n' | b'\t' | 0x20..=0x7e);
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = sock.read(&mut buf).await?;
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if let Some(end) = find_end(&head) {
            head.truncate(end);
            return Ok(Head::Complete(head));
        }
        if !head.iter().all(text) {
            return Ok(Head::NotHttp);
        }
        if n == 0 {
            return Ok(Head::Complete(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the head ends (before the blank line), if it has.
fn find_end(head: &[u8]) -> Option<usize> {
    let crlf = head.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = head.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    #[error("bad routes answer: {0}")]
    Json(#[from] serde_json::Error),
}

async fn fetch(pool: &Pool) -> Result<Routes, FetchError> {
    let send = pool.any_connection().await?;
    let body = crate::client::call(&send, Method::GET, ROUTES_PATH, None).await?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKS: &str = "127.0.0.1:1080";

    fn pac(domains: &[&str], cidrs: &[&str]) -> String {
        let routes = Routes {
            domains: domains.iter().map(|s| s.to_string()).collect(),
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        };
        generate(
            SOCKS.parse().unwrap(),
            "vpn.internal",
            VpnRange::DEFAULT,
            &routes,
        )
    }

    #[test]
    fn vpn_domain_range_and_routes_go_to_the_proxy() {
        let js = pac(
            &[
                "corp.test",
                "Wiki.Example.",
                "bob.vpn.internal",
                "corp.test",
                "www.corp.test",
            ],
            &["10.20.0.0/16", "192.0.2.7/32"],
        );
        assert!(
            js.contains(r#"var proxy = "SOCKS5 127.0.0.1:1080; SOCKS 127.0.0.1:1080";"#),
            "{js}"
        );
        for s in ["vpn.internal", "corp.test", "wiki.example"] {
            assert!(
                js.contains(&format!(
                    r#"if (host == "{s}" || dnsDomainIs(host, ".{s}")) return proxy;"#
                )),
                "{s}: {js}"
            );
        }
        for (net, mask) in [
            ("100.64.0.0", "255.192.0.0"),
            ("10.20.0.0", "255.255.0.0"),
            ("192.0.2.7", "255.255.255.255"),
        ] {
            assert!(
                js.contains(&format!(
                    r#"if (isInNet(host, "{net}", "{mask}")) return proxy;"#
                )),
                "{net}: {js}"
            );
        }
        // each suffix once, none under another
        assert_eq!(js.matches("dnsDomainIs").count(), 3, "{js}");
        assert!(js.trim_end().ends_with("return \"DIRECT\";\n}"), "{js}");
        // isInNet only inside the address-literal check
        let literal_check = js
            .find("if (/^[0-9]{1,3}(\\.[0-9]{1,3}){3}$/.test(host)) {")
            .unwrap();
        assert!(js.find("isInNet").unwrap() > literal_check);
    }

    #[test]
    fn untrusted_names_and_networks_are_left_out() {
        let js = pac(
            &[
                "evil\"); alert(1); //",
                "a\\b",
                "x</script>",
                "-bad.test",
                "bad-.test",
                "",
                "a..b",
                &"a".repeat(64),
                &format!("{}.test", vec!["a".repeat(63); 4].join(".")),
                "ünïcode.test",
                "line\nbreak",
                "ok.test",
            ],
            &[
                "10.0.0.0/33",
                "not a net",
                "1.2.3.4",
                "2001:db8::/32",
                "10.1.2.3/8",
                "10.9.0.0/16",
            ],
        );
        for bad in [
            "evil", "alert", "a\\b", "script", "bad", "a..b", "aaaa", "code", "break", "2001",
            "33", "1.2.3.4", "10.9",
        ] {
            assert!(!js.contains(bad), "{bad} in {js}");
        }
        assert!(js.contains("\"ok.test\""), "{js}");
        // host bits are dropped, and networks inside others too
        assert!(
            js.contains(r#"isInNet(host, "10.0.0.0", "255.0.0.0")"#),
            "{js}"
        );
        assert_eq!(js.matches("isInNet(").count(), 2, "{js}");
    }

    #[test]
    fn ipv6_listen_address() {
        let js = generate(
            "[::1]:1080".parse().unwrap(),
            "vpn.internal",
            VpnRange::DEFAULT,
            &Routes::default(),
        );
        assert!(
            js.contains(r#""SOCKS5 [::1]:1080; SOCKS [::1]:1080""#),
            "{js}"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            url(SOCKS.parse().unwrap()),
            "http://127.0.0.1:1080/proxy.pac"
        );
        assert_eq!(
            url("0.0.0.0:1081".parse().unwrap()),
            "http://127.0.0.1:1081/proxy.pac"
        );
        assert_eq!(
            url("[::]:1080".parse().unwrap()),
            "http://[::1]:1080/proxy.pac"
        );
    }

    fn answer(head: &str) -> HttpReply {
        respond(head.as_bytes(), || "PAC".into())
    }

    #[test]
    fn http_answers() {
        for path in ["/proxy.pac", "/wpad.dat", "/proxy.pac?x=1"] {
            let a = answer(&format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:1080\r\n"));
            assert_eq!(
                (a.status, a.content_type, a.body.as_str()),
                ("200 OK", CONTENT_TYPE, "PAC"),
                "{path}"
            );
        }
        for host in ["localhost:1080", "LOCALHOST", "[::1]:1080", "127.0.0.1"] {
            let a = answer(&format!("GET /proxy.pac HTTP/1.0\nHost: {host}\n"));
            assert_eq!(a.status, "200 OK", "{host}");
        }
        let status = |head: &str| answer(head).status;
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
            "404 Not Found"
        );
        assert_eq!(
            status("GET /proxy.pac HTTP/1.1\r\nHost: evil.example:1080\r\n"),
            "403 Forbidden"
        );
        assert_eq!(status("GET /proxy.pac HTTP/1.1\r\n"), "403 Forbidden");
        assert_eq!(
            status("GOT /proxy.pac HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
            "405 Method Not Allowed"
        );
        for bad in [
            "",
            "G",
            "GET /proxy.pac",
            "GET /proxy.pac SPDY/3\r\n",
            "GET  /proxy.pac HTTP/1.1",
        ] {
            assert_eq!(status(bad), "400 Bad Request", "{bad:?}");
        }
        assert_eq!(
            respond(b"GET /\xff HTTP/1.1\r\n", String::new).status,
            "400 Bad Request"
        );
    }

    #[test]
    fn head_ends() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some(23));
        assert_eq!(find_end(b"GET / HTTP/1.0\n\n"), Some(14));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
