//! Three hosts in network namespaces (needs root):
//!
//! ```text
//!  sg-dev  198.51.100.2 ──veth── 198.51.100.1  sg-gw  203.0.113.1 ──veth── 203.0.113.2  sg-intra
//!  shimgate up, curl                      shimgate-gateway (no forwarding)        HTTP server :8080
//! ```
//!
//! The device reaches the intranet only through the gateway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::harness::hosts::{GW_DEV_SIDE, GW_INTRA_SIDE, INTRA, gateway_in, three_hosts};
use crate::harness::netns::{self, Netns, veth};
use crate::harness::socks;
use crate::harness::*;
use crate::udp::{Association, To, UdpEcho, association_entry};

#[test]
fn intranet_only_through_the_gateway() {
    if !netns::require_root("multihost::intranet_only_through_the_gateway") {
        return;
    }
    let hosts = three_hosts("intranet page");
    let (web, dns, body) = (&hosts.web, &hosts.dns, hosts.body.clone());
    let (dev_ns, gw_ns) = (&hosts.dev_ns, &hosts.gw_ns);
    let spec = gateway_in(gw_ns, vec![format!("intranet.corp:80={INTRA}:8080")]);
    // a service on the gateway host itself (the console, say), on its intranet side
    let on_gw = SocketAddr::new(GW_INTRA_SIDE.into(), 8080);
    let gw_service = Origin::from_listener(
        netns::bind_in(Some(&gw_ns.name), on_gw),
        Mode::Http {
            body: unique_body("gateway host service"),
        },
    );
    // DNS rebinding: the name first resolves to the intranet, then to the
    // gateway host's loopback, where something listens too
    let gw_loopback = Origin::from_listener(
        netns::bind_in(Some(&gw_ns.name), "127.0.0.1:8080".parse().unwrap()),
        Mode::Http {
            body: unique_body("gateway loopback"),
        },
    );
    let mut gw = Gateway::init_spec(Backend::Sqlite, spec);
    gw.allow("203.0.113.0/24", &[]);
    gw.allow("192.0.2.0/24", &[]);
    gw.serve();

    let socks = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1080);
    let mut dev = Device::new_in("remote-laptop", Some(&dev_ns.name), socks);
    let code = gw.token(USER);
    dev.enroll(&code).expect_ok();
    dev.up();

    let ns = Some(dev_ns.name.as_str());
    let out = curl(
        ns,
        Some("--socks5-hostname"),
        Some(socks),
        "http://intranet.corp/",
    );
    assert!(
        out.ok(),
        "curl --socks5-hostname http://intranet.corp/ (gateway alias) inside sg-dev failed: {out}"
    );
    assert_eq!(out.stdout, body, "wrong page through the alias");

    let url = format!("http://{INTRA}:8080/");
    let out = curl(ns, Some("--socks5-hostname"), Some(socks), &url);
    assert!(
        out.ok(),
        "curl --socks5-hostname {url} inside sg-dev failed: {out}"
    );
    assert_eq!(out.stdout, body, "wrong page through the intranet address");
    web.expect_accepted(2, "origin connections");

    // without the proxy there is no way in
    let direct = curl(ns, None, None, &url);
    assert!(
        !direct.ok(),
        "sg-dev reached the intranet directly: {direct}"
    );
    web.expect_accepted(2, "the intranet saw a direct connection from sg-dev");

    // failures on the gateway's side, with their exact replies (allowed by policy)
    netns::in_netns(ns, || {
        // sg-gw has no route to 192.0.2.0/24
        socks::connect_expect(
            socks,
            Ipv4Addr::new(192, 0, 2, 99),
            80,
            socks::NETWORK_UNREACHABLE,
        );
        // on-link at sg-gw, but nobody there (no ARP answer)
        socks::connect_expect(
            socks,
            Ipv4Addr::new(203, 0, 113, 99),
            80,
            socks::HOST_UNREACHABLE,
        );
        // the gateway host's own address is not opened by the rule for its network
        socks::connect_expect(socks, GW_INTRA_SIDE, 8080, socks::NOT_ALLOWED);
    });
    gw_service.expect_accepted(0, "a broad rule opened the gateway host's own service");

    // the rebinding name: resolved once per request, and the address checked
    // is the one dialled
    let out = curl(
        ns,
        Some("--socks5-hostname"),
        Some(socks),
        "http://rebind.test:8080/",
    );
    assert!(
        out.ok(),
        "curl http://rebind.test:8080/ (resolving to the intranet): {out}"
    );
    assert_eq!(out.stdout, body, "wrong page through the rebinding name");
    assert_eq!(
        dns.a_queries(),
        1,
        "the gateway resolved the name more than once"
    );
    netns::in_netns(ns, || {
        socks::connect_expect(socks, "rebind.test", 8080, socks::NOT_ALLOWED)
    });
    assert_eq!(
        dns.a_queries(),
        2,
        "the second request did not resolve the name again"
    );
    gw_loopback.expect_accepted(0, "a rebinding name reached the gateway host's loopback");
    web.expect_accepted(3, "origin connections");
    gw.allow(&format!("{GW_INTRA_SIDE}/32"), &["--ports", "8080"]);
    let page = poll(
        "a rule naming the gateway host's address to apply",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            netns::in_netns(ns, || match socks::connect(socks, GW_INTRA_SIDE, 8080) {
                Ok((socks::SUCCEEDED, s)) => Some(socks::http_get(s, "gw")),
                _ => None,
            })
        },
    );
    assert!(page.contains("gateway host service"), "{page}");
}

/// A name no rule of the device could allow (not by name, not on that
/// port, not by any CIDR) is refused with 0x02 before any lookup: no DNS
/// query leaves the gateway, so the reply code tells nothing about which
/// internal names exist. Where a CIDR rule might match, the name is
/// resolved and its address checked, as before.
#[test]
fn policy_is_asked_before_the_name_is_resolved() {
    if !netns::require_root("multihost::policy_is_asked_before_the_name_is_resolved") {
        return;
    }
    let hosts = three_hosts("named intranet page");
    let (web, dns, body) = (&hosts.web, &hosts.dns, hosts.body.clone());
    let (dev_ns, gw_ns) = (&hosts.dev_ns, &hosts.gw_ns);
    let spec = gateway_in(gw_ns, vec![]);
    let mut gw = Gateway::init_spec(Backend::Sqlite, spec);
    gw.allow("intranet.corp", &["--ports", "8080"]);
    gw.allow("203.0.113.0/24", &["--ports", "443"]);
    gw.serve();
    let socks = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1080);
    let mut dev = Device::new_in("named-laptop", Some(&dev_ns.name), socks);
    dev.enroll(&gw.token(USER)).expect_ok();
    dev.up();
    let ns = Some(dev_ns.name.as_str());

    netns::in_netns(ns, || {
        // No rule names it, and no CIDR rule covers port 8080.
        socks::connect_expect(socks, "secret.corp", 8080, socks::NOT_ALLOWED);
        // The name is allowed, the port is not.
        socks::connect_expect(socks, "intranet.corp", 8081, socks::NOT_ALLOWED);
    });
    assert_eq!(
        dns.a_queries(),
        0,
        "a name no rule could allow was resolved"
    );

    let page = netns::in_netns(ns, || {
        let s = socks::connect_ok(socks, "intranet.corp", 8080);
        socks::http_get(s, "intranet.corp")
    });
    assert!(page.contains(&body), "{page}");
    assert_eq!(dns.a_queries(), 1, "an allowed name is resolved once");
    web.expect_accepted(1, "origin connections");

    // A CIDR rule might match whatever the name resolves to: it is resolved
    // (now to loopback, which that rule does not open) and then refused.
    netns::in_netns(ns, || {
        socks::connect_expect(socks, "other.corp", 443, socks::NOT_ALLOWED)
    });
    assert_eq!(
        dns.a_queries(),
        2,
        "a name a CIDR rule could allow was not resolved"
    );

    // A name that does not exist: 0x04 (RFC 1928 has no other code), and
    // both logs say so in words.
    netns::in_netns(ns, || {
        socks::connect_expect(socks, "nothere.invalid", 443, socks::HOST_UNREACHABLE)
    });
    for (who, logs) in [("gateway", gw.logs()), ("device", dev.logs())] {
        assert!(
            logs.lines()
                .any(|l| l.contains("nothere.invalid") && l.contains("unknown name")),
            "the {who}'s log does not say the name is unknown:\n{logs}"
        );
    }
}

/// `up` on a non-loopback address refuses to start without SOCKS
/// credentials, and with them, enforces them for clients on the LAN.
///
/// ```text
///  sg-host: gateway 127.0.0.1:8443, web 127.0.0.1:8080, `up --listen 192.0.2.1:1080`
///  sg-lan:  192.0.2.2, curl with/without credentials
/// ```
#[test]
fn lan_listener_requires_and_enforces_credentials() {
    if !netns::require_root("multihost::lan_listener_requires_and_enforces_credentials") {
        return;
    }
    let host = Netns::new("sg-host-");
    let lan = Netns::new("sg-lan-");
    veth(&host, "192.0.2.1/24", &lan, "192.0.2.2/24");

    let body = unique_body("lan");
    let web_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
    let web = Origin::from_listener(
        netns::bind_in(Some(&host.name), web_addr),
        Mode::Http { body: body.clone() },
    );
    let spec = GatewaySpec {
        netns: Some(host.name.clone()),
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8443),
        ..GatewaySpec::localhost()
    };
    let mut gw = Gateway::init_spec(Backend::Sqlite, spec);
    gw.allow("127.0.0.1/32", &[]);
    gw.serve();

    let lan_socks: SocketAddr = "192.0.2.1:1080".parse().unwrap();
    let mut dev = Device::new_in("lan-laptop", Some(&host.name), lan_socks);
    dev.enroll(&gw.token(USER)).expect_ok();

    let (status, stderr) = dev.up_must_exit(Duration::from_secs(15));
    assert!(
        !status.success(),
        "`up --listen {lan_socks}` without credentials exited successfully"
    );
    let msg = stderr.to_lowercase();
    assert!(
        ["socks-user", "socks-password", "credential", "password"]
            .iter()
            .any(|w| msg.contains(w)),
        "`up --listen {lan_socks}` without credentials should say they are needed: {stderr}"
    );

    dev.up_args = ["--socks-user", "lanuser", "--socks-password", "s3cret-pw"]
        .map(String::from)
        .to_vec();
    dev.up();
    let url = format!("http://{web_addr}/");
    let proxy = lan_socks.to_string();
    let lan_ns = Some(lan.name.as_str());

    let out = curl_args(
        lan_ns,
        &[
            "--socks5",
            &proxy,
            "--proxy-user",
            "lanuser:s3cret-pw",
            &url,
        ],
    );
    assert!(
        out.ok(),
        "curl from the LAN with the right credentials failed: {out}"
    );
    assert_eq!(out.stdout, body);

    let out = curl_args(lan_ns, &["--socks5", &proxy, &url]);
    assert!(
        !out.ok(),
        "curl from the LAN without credentials got through: {out}"
    );
    let out = curl_args(
        lan_ns,
        &["--socks5", &proxy, "--proxy-user", "lanuser:wrong", &url],
    );
    assert!(
        !out.ok(),
        "curl from the LAN with a wrong password got through: {out}"
    );
    web.expect_accepted(1, "only the authenticated request may reach the origin");
}

/// Datagrams take the gateway's UDP port when it gets through and the TLS
/// connection when it does not: with UDP to the gateway dropped in sg-dev,
/// an association's datagrams are all answered, none of them on the
/// channel; with it let through again, a new association's go there.
#[test]
fn udp_goes_around_a_blocked_gateway_port() {
    if !netns::require_root("multihost::udp_goes_around_a_blocked_gateway_port") {
        return;
    }
    let hosts = three_hosts("udp");
    let (dev_ns, gw_ns) = (&hosts.dev_ns, &hosts.gw_ns);
    let echo = netns::in_netns(Some(&hosts.intra_ns.name), || {
        let bind = || std::net::UdpSocket::bind((INTRA, 0)).expect("a UDP socket in sg-intra");
        (bind(), bind())
    });
    let echo = UdpEcho::on(echo.0, echo.1);
    let mut gw = Gateway::init_spec(Backend::Sqlite, gateway_in(gw_ns, Vec::new()));
    gw.allow("203.0.113.0/24", &["--proto", "udp"]);
    gw.serve();
    let socks = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1080);
    let mut dev = Device::new_in("udp-laptop", Some(&dev_ns.name), socks);
    dev.enroll(&gw.token(USER)).expect_ok();
    dev.up();
    dev_ns.nft("add table inet sgblock");
    dev_ns.nft("add chain inet sgblock out { type filter hook output priority 0; }");
    dev_ns.nft(&format!(
        "add rule inet sgblock out ip daddr {GW_DEV_SIDE} udp dport {} drop",
        gw.port()
    ));

    let exchange = |count: u64| {
        let a = netns::in_netns(Some(&dev_ns.name), || Association::open(socks));
        for i in 0..count {
            let sent = format!("datagram {i}");
            a.send(To::Addr(echo.addr), sent.as_bytes());
            let (from, got) = a
                .recv(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("no answer to {sent}"));
            assert_eq!((from, got), (echo.addr, sent.into_bytes()));
        }
    };
    exchange(300);
    let (_, by_channel) = association_entry(&gw, 300);
    assert_eq!(
        by_channel, 0,
        "datagrams counted on a channel the network drops"
    );

    dev_ns.nft("delete table inet sgblock");
    exchange(301);
    let (sent, by_channel) = association_entry(&gw, 301);
    assert!(
        by_channel > sent / 2,
        "{by_channel} of {sent} on the channel once UDP gets through"
    );
}
