//! Policy evaluation: may this device reach this destination?
//!
//! Rules are (subject) → (destination, ports) allow|deny, from the registry.
//! Default deny. A matching deny wins over any allow. Destinations that are
//! dangerous to reach from inside the gateway (its own loopback, link-local
//! and cloud metadata addresses, unspecified and multicast addresses, its own
//! listening port, the gateway host's own addresses) are refused unless an
//! allow rule names them explicitly: its CIDR lies inside that reserved range,
//! e.g. `127.0.0.1/32`, or is the host address's own `/32` (`/128`).
//!
//! A rule limited to a program or local user on the device (`--program`,
//! `--local-user`) matches only flows whose [`Origin`] (the socket shim's
//! report, the device's word) names them; a flow with no program known (the
//! SOCKS port, peer sessions) matches no such rule. Such rules narrow what an
//! allow opens; a deny limited to a program is no barrier against a user who
//! can use the SOCKS port instead.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use shimgate_registry::{Action, Dest, Ports, Proto, Rule, Subject};
use shimgate_wire::enroll::Routes;
use shimgate_wire::origin::Origin;

use crate::cache::Identity;

/// One destination the gateway is about to dial.
pub struct Target<'a> {
    /// The name the device asked for, when it asked by name.
    pub name: Option<&'a str>,
    pub addr: IpAddr,
    pub port: u16,
    /// TCP, UDP or ICMP (a ping: `port` is 0).
    pub proto: Proto,
    /// The operator mapped this name to this address in the gateway's own
    /// configuration (`--alias`), which counts as naming it explicitly.
    pub alias: bool,
    /// For a peer device: its owner's groups (what `group:NAME` destinations match).
    pub peer_groups: Option<&'a [String]>,
    /// Which program on the device asks, when the device said.
    pub origin: Option<&'a Origin>,
}

/// Ranges the gateway refuses unless a rule names them.
const RESERVED: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    // NAT64 and IPv4-compatible addresses can reach any IPv4 address,
    // loopback and metadata included, past the checks above.
    "64:ff9b::/96",
    "::/96",
    "224.0.0.0/4",
    "ff00::/8",
    "255.255.255.255/32",
];

fn reserved_range(addr: IpAddr) -> Option<IpNet> {
    RESERVED
        .iter()
        .filter_map(|r| r.parse::<IpNet>().ok())
        .find(|net| net.contains(&addr))
}

fn subject_matches(subject: &Subject, who: &Identity) -> bool {
    match subject {
        Subject::Everyone => true,
        Subject::User(u) => *u == who.user_name,
        Subject::Group(g) => who.groups.iter().any(|mine| mine == g),
    }
}

/// `name` is under `suffix` (or is it), ignoring case and a trailing dot.
pub fn domain_matches(suffix: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    let suffix = suffix.trim_end_matches('.');
    name.len() >= suffix.len()
        && name
            .get(name.len() - suffix.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
        && (name.len() == suffix.len()
            || name.as_bytes().get(name.len() - suffix.len() - 1) == Some(&b'.'))
}

fn dest_matches(dest: &Dest, target: &Target) -> bool {
    match dest {
        Dest::Cidr(net) => net.contains(&target.addr),
        Dest::Domain(suffix) => target.name.is_some_and(|n| domain_matches(suffix, n)),
        Dest::PeerGroup(g) => target.peer_groups.is_some_and(|groups| groups.contains(g)),
    }
}

/// Whether the rule's limits to a program or local user (if any) hold for
/// a flow from `origin`.
fn local_matches(rule: &Rule, origin: Option<&Origin>) -> bool {
    if rule.program.is_none() && rule.local_user.is_none() {
        return true;
    }
    let Some(o) = origin else { return false };
    let program = rule
        .program
        .as_ref()
        .is_none_or(|p| o.program.as_deref().is_some_and(|exe| p.matches(exe)));
    let user = rule
        .local_user
        .as_ref()
        .is_none_or(|u| u.matches(o.uid, o.user.as_deref()));
    program && user
}

/// The rules that apply to `who` asking from `origin`.
fn applies(rule: &Rule, who: &Identity, origin: Option<&Origin>) -> bool {
    subject_matches(&rule.subject, who) && local_matches(rule, origin)
}

/// Whether the rule's ports take in a flow to `port` over `proto`. A ping
/// has no port: only a rule for every port speaks of it (one for port 22
/// does not open ping).
fn ports_match(rule: &Rule, port: u16, proto: Proto) -> bool {
    if proto == Proto::Icmp {
        rule.ports.covers(&Ports::all())
    } else {
        rule.ports.contains(port)
    }
}

fn rule_matches(rule: &Rule, who: &Identity, target: &Target) -> bool {
    ports_match(rule, target.port, target.proto)
        && rule.proto.covers(target.proto)
        && applies(rule, who, target.origin)
        && dest_matches(&rule.dest, target)
}

/// Whether the rule's CIDR explicitly names `addr` inside `range`.
fn names_explicitly(rule: &Rule, range: IpNet, addr: IpAddr) -> bool {
    matches!(&rule.dest, Dest::Cidr(net) if range.contains(net) && net.contains(&addr))
}

/// Whether `addr` is one of this machine's own addresses.
fn is_local(addr: IpAddr) -> bool {
    addr.is_loopback()
        || addr.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddr::new(addr, 0)).is_ok()
}

/// Whether deny rule `deny` refuses everything allow rule `allow` opens:
/// every port and protocol, a destination at least as wide, and every
/// program and local user the allow is for.
fn shadows(deny: &Rule, allow: &Rule) -> bool {
    let ports = deny.ports.covers(&allow.ports);
    let protos = deny.proto == Proto::Any || deny.proto == allow.proto;
    let program = deny.program.is_none() || deny.program == allow.program;
    let user = deny.local_user.is_none() || deny.local_user == allow.local_user;
    ports
        && protos
        && program
        && user
        && match (&deny.dest, &allow.dest) {
            (Dest::Cidr(d), Dest::Cidr(a)) => d.contains(a),
            (Dest::Domain(d), Dest::Domain(a)) => domain_matches(d, a),
            _ => false,
        }
}

/// The destinations `who` may reach through the gateway, for the device's
/// PAC file: what its allow rules name, less what a deny rule takes back
/// entirely. Peer-group rules are left out: peers are named under the VPN
/// domain, which devices send to the proxy anyway. A gateway alias is
/// reached by its name, so a domain rule covers it. Ports are not listed:
/// a PAC file routes by host, and the gateway still checks each port. An
/// allow limited to a program is a route for every program (its
/// destination is the VPN's; going direct would leak or fail), and the
/// gateway refuses the others.
pub(crate) fn routes(rules: &[Rule], who: &Identity) -> Routes {
    let mine = || rules.iter().filter(|r| subject_matches(&r.subject, who));
    let (mut domains, mut cidrs) = (BTreeSet::new(), BTreeSet::new());
    for allow in mine().filter(|r| r.action == Action::Allow) {
        if mine().any(|d| d.action == Action::Deny && shadows(d, allow)) {
            continue;
        }
        match &allow.dest {
            Dest::Domain(name) => domains.insert(name.clone()),
            Dest::Cidr(net) => cidrs.insert(net.to_string()),
            Dest::PeerGroup(_) => false,
        };
    }
    Routes {
        domains: domains.into_iter().collect(),
        cidrs: cidrs.into_iter().collect(),
    }
}

/// The rules as they stand for some program of the device, whichever:
/// allows lose their limits to a program or local user, and limited denies
/// (which may not apply) are left out. For routes, which every program
/// shares.
pub fn for_any_program(rules: &[Rule]) -> Vec<Rule> {
    rules
        .iter()
        .filter(|r| r.action == Action::Allow || (r.program.is_none() && r.local_user.is_none()))
        .map(|r| Rule {
            program: None,
            local_user: None,
            ..r.clone()
        })
        .collect()
}

/// Whether some rule could let `who` reach the name `name` on `port` over
/// `proto`, before the name is resolved: an allow rule for the name (or a
/// domain above it), or any allow rule by CIDR (the name might resolve into
/// it), and no deny rule for the name. When not, the gateway refuses without
/// a lookup, so a device learns nothing of which internal names exist and
/// the resolver does no work for a destination that can't be reached.
pub fn could_allow(
    rules: &[Rule],
    who: &Identity,
    origin: Option<&Origin>,
    name: &str,
    port: u16,
    proto: Proto,
) -> bool {
    let mine = || {
        rules.iter().filter(|r| {
            ports_match(r, port, proto) && r.proto.covers(proto) && applies(r, who, origin)
        })
    };
    let names = |r: &Rule| matches!(&r.dest, Dest::Domain(d) if domain_matches(d, name));
    if mine().any(|r| r.action == Action::Deny && names(r)) {
        return false;
    }
    mine().any(|r| r.action == Action::Allow && (names(r) || matches!(r.dest, Dest::Cidr(_))))
}

/// Whether some flow to `name` (any port, either protocol) could be
/// allowed: an allow rule for the name or a domain above it, or any allow
/// rule by CIDR, and no deny rule for the name on every port and both
/// protocols. Asked before the socket shim hands out a fake address.
pub fn could_reach_name(
    rules: &[Rule],
    who: &Identity,
    origin: Option<&Origin>,
    name: &str,
) -> bool {
    let mine = || rules.iter().filter(|r| applies(r, who, origin));
    let names = |r: &Rule| matches!(&r.dest, Dest::Domain(d) if domain_matches(d, name));
    let whole = |r: &Rule| r.proto == Proto::Any && r.ports.covers(&Ports::all());
    if mine().any(|r| r.action == Action::Deny && names(r) && whole(r)) {
        return false;
    }
    mine().any(|r| r.action == Action::Allow && (names(r) || matches!(r.dest, Dest::Cidr(_))))
}

/// The policy decision for one target.
pub fn allows(rules: &[Rule], who: &Identity, target: &Target, own: SocketAddr) -> bool {
    let addr = target.addr.to_canonical();
    let target = Target { addr, ..*target };
    let matching = || rules.iter().filter(|r| rule_matches(r, who, &target));
    if matching().any(|r| r.action == Action::Deny) {
        return false;
    }
    if target.alias {
        return matching().any(|r| r.action == Action::Allow);
    }
    if target.port == own.port() && (addr == own.ip() || is_local(addr)) {
        let exact = IpNet::from(addr);
        return matching().any(|r| r.action == Action::Allow && names_explicitly(r, exact, addr));
    }
    // The gateway host's own addresses guard whatever else listens there
    // (the console, a database, sshd) as loopback does: a broad rule for
    // the network the gateway sits in does not open them.
    let guarded = reserved_range(addr).or_else(|| is_local(addr).then(|| IpNet::from(addr)));
    match guarded {
        Some(range) => {
            matching().any(|r| r.action == Action::Allow && names_explicitly(r, range, addr))
        }
        None => matching().any(|r| r.action == Action::Allow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Identity {
        Identity {
            fingerprint: "f".into(),
            device_id: 1,
            device_name: "laptop".into(),
            user_name: "alice".into(),
            groups: vec!["ops".into()],
            vpn_ip: "100.64.0.1".parse().unwrap(),
            not_after: i64::MAX,
            revoked: false,
            superseded: false,
        }
    }

    fn rule(subject: &str, dest: &str, ports: (u16, u16), action: &str) -> Rule {
        Rule {
            id: 0,
            subject: subject.parse().unwrap(),
            dest: dest.parse().unwrap(),
            ports: Ports::range(ports.0, ports.1).unwrap(),
            proto: Proto::Tcp,
            program: None,
            local_user: None,
            action: action.parse().unwrap(),
            created_by: "test".into(),
            created_at: 0,
        }
    }

    fn at(name: Option<&'static str>, addr: &str, port: u16) -> Target<'static> {
        Target {
            name,
            addr: addr.parse().unwrap(),
            port,
            proto: Proto::Tcp,
            alias: false,
            peer_groups: None,
            origin: None,
        }
    }

    const OWN: &str = "0.0.0.0:8443";

    fn check(rules: &[Rule], t: Target) -> bool {
        allows(rules, &who(), &t, OWN.parse().unwrap())
    }

    #[test]
    fn peer_groups_match_only_peers_of_that_group() {
        fn peer(groups: &[String], port: u16) -> Target<'_> {
            Target {
                peer_groups: Some(groups),
                ..at(Some("bob.vpn.internal"), "100.64.0.2", port)
            }
        }
        let rules = [rule("user:alice", "group:lab", (8000, 8000), "allow")];
        let (lab, sales) = (["lab".to_owned()], ["sales".to_owned()]);
        assert!(check(&rules, peer(&lab, 8000)));
        assert!(!check(&rules, peer(&sales, 8000)));
        assert!(!check(&rules, peer(&lab, 8001)));
        // not a peer: a gateway tunnel to the same name
        assert!(!check(
            &rules,
            at(Some("bob.vpn.internal"), "100.64.0.2", 8000)
        ));
    }

    #[test]
    fn routes_list_what_allow_rules_open_to_this_device() {
        let rules = [
            rule("*", "corp.test", (80, 80), "allow"),
            rule("group:ops", "10.20.0.0/16", (1, 65535), "allow"),
            rule("group:ops", "10.20.0.0/16", (22, 22), "allow"),
            rule("user:bob", "bob-only.test", (80, 80), "allow"),
            rule("group:sales", "192.0.2.0/24", (80, 80), "allow"),
            rule("*", "group:lab", (8000, 8000), "allow"),
            rule("*", "2001:db8::/32", (443, 443), "allow"),
            // taken back entirely by a wider deny
            rule("*", "secret.corp.test", (80, 80), "allow"),
            rule("user:alice", "corp.test", (1, 65535), "deny"),
            // a deny on some ports only leaves the route
            rule("*", "wiki.test", (1, 65535), "allow"),
            rule("*", "wiki.test", (22, 22), "deny"),
            // someone else's deny does not apply
            rule("*", "198.51.100.0/24", (80, 80), "allow"),
            rule("user:bob", "198.51.100.0/24", (1, 65535), "deny"),
        ];
        let r = routes(&rules, &who());
        assert_eq!(r.domains, ["wiki.test"]);
        assert_eq!(
            r.cidrs,
            ["10.20.0.0/16", "198.51.100.0/24", "2001:db8::/32"]
        );
        assert_eq!(routes(&[], &who()), Routes::default());
    }

    #[test]
    fn default_is_deny() {
        assert!(!check(&[], at(None, "192.0.2.10", 80)));
    }

    #[test]
    fn cidr_domain_and_ports() {
        let rules = [
            rule("*", "192.0.2.0/24", (80, 80), "allow"),
            rule("user:alice", "intranet.example", (443, 443), "allow"),
        ];
        assert!(check(&rules, at(None, "192.0.2.10", 80)));
        assert!(!check(&rules, at(None, "192.0.2.10", 81)));
        assert!(!check(&rules, at(None, "198.51.100.1", 80)));
        assert!(check(
            &rules,
            at(Some("wiki.intranet.example"), "198.51.100.1", 443)
        ));
        assert!(check(
            &rules,
            at(Some("INTRANET.example."), "198.51.100.1", 443)
        ));
        assert!(!check(
            &rules,
            at(Some("evilintranet.example"), "198.51.100.1", 443)
        ));
    }

    #[test]
    fn subjects() {
        let rules = [rule("group:ops", "192.0.2.0/24", (1, 65535), "allow")];
        assert!(check(&rules, at(None, "192.0.2.1", 22)));
        let rules = [rule("user:bob", "192.0.2.0/24", (1, 65535), "allow")];
        assert!(!check(&rules, at(None, "192.0.2.1", 22)));
    }

    #[test]
    fn deny_beats_allow() {
        let rules = [
            rule("*", "0.0.0.0/0", (1, 65535), "allow"),
            rule("group:ops", "192.0.2.66/32", (1, 65535), "deny"),
        ];
        assert!(check(&rules, at(None, "192.0.2.65", 22)));
        assert!(!check(&rules, at(None, "192.0.2.66", 22)));
    }

    #[test]
    fn reserved_needs_an_explicit_rule() {
        let broad = [
            rule("*", "0.0.0.0/0", (1, 65535), "allow"),
            rule("*", "::/0", (1, 65535), "allow"),
        ];
        for addr in [
            "64:ff9b::7f00:1",
            "::7f00:1",
            "127.0.0.1",
            "169.254.169.254",
            "::1",
            "0.0.0.0",
            "fe80::1",
            "224.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!check(&broad, at(None, addr, 80)), "{addr}");
        }
        let named = [rule("*", "127.0.0.1/32", (1, 65535), "allow")];
        assert!(check(&named, at(None, "127.0.0.1", 80)));
        assert!(check(&named, at(None, "::ffff:127.0.0.1", 80)));
        assert!(!check(&named, at(None, "127.0.0.2", 80)));
        // A domain rule does not open loopback by itself.
        let by_name = [rule("*", "localhost", (1, 65535), "allow")];
        assert!(!check(&by_name, at(Some("localhost"), "127.0.0.1", 80)));
    }

    #[test]
    fn own_port_needs_the_exact_address() {
        let rules = [rule("*", "127.0.0.0/8", (1, 65535), "allow")];
        assert!(check(&rules, at(None, "127.0.0.1", 8442)));
        assert!(!check(&rules, at(None, "127.0.0.1", 8443)));
        let exact = [rule("*", "127.0.0.1/32", (8443, 8443), "allow")];
        assert!(check(&exact, at(None, "127.0.0.1", 8443)));
    }

    #[test]
    fn names_no_rule_could_allow_are_refused_before_resolution() {
        let rules = [
            rule("*", "intranet.corp", (80, 80), "allow"),
            rule("*", "secret.intranet.corp", (1, 65535), "deny"),
            rule("*", "203.0.113.0/24", (443, 443), "allow"),
        ];
        let could =
            |name: &str, port: u16| could_allow(&rules, &who(), None, name, port, Proto::Tcp);
        assert!(could("intranet.corp", 80));
        assert!(could("wiki.intranet.corp", 80));
        assert!(!could("intranet.corp", 81), "no rule for that port");
        assert!(!could("secret.corp", 80), "no rule for that name");
        assert!(!could("secret.intranet.corp", 80), "denied by name");
        assert!(
            could("anything.example", 443),
            "a CIDR rule might match its address"
        );
        assert!(
            !could_allow(&rules, &who(), None, "intranet.corp", 80, Proto::Udp),
            "TCP rules only"
        );
    }

    #[test]
    fn program_and_local_user_limits() {
        use shimgate_wire::origin::Shim;
        let from = |program: &str, uid: u32, user: &str| Origin {
            shim: Shim::Socket,
            uid: Some(uid),
            user: Some(user.into()),
            program: Some(program.into()),
        };
        let (psql, curl) = (
            from("/usr/bin/psql", 1000, "alice"),
            from("/usr/bin/curl", 1000, "alice"),
        );
        let root_psql = from("/usr/bin/psql", 0, "root");
        let rules = [
            Rule {
                program: Some("psql".parse().unwrap()),
                ..rule("*", "192.0.2.0/24", (5432, 5432), "allow")
            },
            Rule {
                local_user: Some("root".parse().unwrap()),
                ..rule("*", "192.0.2.0/24", (1, 65535), "deny")
            },
        ];
        let asks = |origin: Option<&Origin>| {
            check(
                &rules,
                Target {
                    origin,
                    ..at(None, "192.0.2.7", 5432)
                },
            )
        };
        assert!(asks(Some(&psql)));
        assert!(!asks(Some(&curl)), "another program");
        assert!(!asks(Some(&root_psql)), "a deny for that local user");
        assert!(!asks(None), "no program known (the SOCKS port)");
        assert!(!asks(Some(&Origin::SOCKS)));
        // Before resolution: the same limits.
        let name = |origin: Option<&Origin>| {
            let by_name = [Rule {
                program: Some("/usr/bin/psql".parse().unwrap()),
                ..rule("*", "db.corp", (5432, 5432), "allow")
            }];
            (
                could_allow(&by_name, &who(), origin, "db.corp", 5432, Proto::Tcp),
                could_reach_name(&by_name, &who(), origin, "db.corp"),
            )
        };
        assert_eq!(name(Some(&psql)), (true, true));
        assert_eq!(name(Some(&curl)), (false, false));
        assert_eq!(name(None), (false, false));
        // A deny for one program does not take the route from the others.
        let mut rules = rules.to_vec();
        rules.push(Rule {
            program: Some("curl".parse().unwrap()),
            ..rule("*", "192.0.2.0/24", (1, 65535), "deny")
        });
        assert_eq!(routes(&rules, &who()).cidrs, ["192.0.2.0/24"]);
    }

    #[test]
    fn a_rule_applies_to_each_port_of_its_list() {
        let rules = [Rule {
            ports: "22,80,8000-8100".parse().unwrap(),
            ..rule("*", "192.0.2.0/24", (1, 1), "allow")
        }];
        for (port, allowed) in [
            (22, true),
            (80, true),
            (8050, true),
            (23, false),
            (8101, false),
        ] {
            assert_eq!(
                check(&rules, at(None, "192.0.2.1", port)),
                allowed,
                "port {port}"
            );
        }
        // A deny of some of those ports does not take the whole rule back.
        let mut with_deny = rules.to_vec();
        with_deny.push(rule("*", "192.0.2.0/24", (1, 79), "deny"));
        assert_eq!(routes(&with_deny, &who()).cidrs, ["192.0.2.0/24"]);
        with_deny.push(rule("*", "192.0.2.0/24", (20, 9000), "deny"));
        assert!(
            routes(&with_deny, &who()).cidrs.is_empty(),
            "one deny covers the list"
        );
    }

    /// A rule applies to its protocol only; rules from before UDP mean TCP,
    /// so an upgrade opens nothing.
    #[test]
    fn protocols_are_kept_apart() {
        let udp = |t: Target<'static>| Target {
            proto: Proto::Udp,
            ..t
        };
        let with = |proto: Proto| {
            [Rule {
                proto,
                ..rule("*", "192.0.2.0/24", (53, 53), "allow")
            }]
        };
        let dns = || at(None, "192.0.2.53", 53);
        assert!(check(&with(Proto::Tcp), dns()));
        assert!(!check(&with(Proto::Tcp), udp(dns())));
        assert!(check(&with(Proto::Udp), udp(dns())));
        assert!(!check(&with(Proto::Udp), dns()));
        assert!(check(&with(Proto::Any), dns()) && check(&with(Proto::Any), udp(dns())));
        // A UDP-only deny takes nothing from a TCP allow, and the reverse.
        let mut rules = with(Proto::Any).to_vec();
        rules.push(Rule {
            proto: Proto::Udp,
            ..rule("*", "192.0.2.0/24", (1, 65535), "deny")
        });
        assert!(check(&rules, dns()) && !check(&rules, udp(dns())));
        assert_eq!(routes(&rules, &who()).cidrs, ["192.0.2.0/24"]);
    }

    /// A ping has no port: a rule for some ports says nothing about it, a
    /// rule for every port of `icmp` or `any` does.
    #[test]
    fn pings_follow_whole_port_rules() {
        let ping = || Target {
            proto: Proto::Icmp,
            ..at(None, "192.0.2.7", 0)
        };
        let with = |proto: Proto, ports: (u16, u16)| {
            [Rule {
                proto,
                ..rule("*", "192.0.2.0/24", ports, "allow")
            }]
        };
        assert!(check(&with(Proto::Icmp, (1, 65535)), ping()));
        assert!(check(&with(Proto::Any, (1, 65535)), ping()));
        assert!(!check(&with(Proto::Any, (22, 22)), ping()));
        assert!(!check(&with(Proto::Tcp, (1, 65535)), ping()));
        assert!(!check(
            &with(Proto::Icmp, (1, 65535)),
            at(None, "192.0.2.7", 80)
        ));
        let mut denied = with(Proto::Any, (1, 65535)).to_vec();
        denied.push(Rule {
            proto: Proto::Icmp,
            ..rule("*", "192.0.2.7/32", (1, 65535), "deny")
        });
        assert!(!check(&denied, ping()) && check(&denied, at(None, "192.0.2.7", 80)));
    }

    #[test]
    fn aliases_are_explicit() {
        let rules = [rule("*", "intranet.internal", (80, 80), "allow")];
        let t = Target {
            name: Some("intranet.internal"),
            addr: "127.0.0.1".parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
            alias: true,
            peer_groups: None,
            origin: None,
        };
        assert!(check(&rules, t));
        let t = Target {
            name: Some("intranet.internal"),
            addr: "127.0.0.1".parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
            alias: true,
            peer_groups: None,
            origin: None,
        };
        assert!(!check(&[], t));
    }

    /// Properties over random rule sets and destinations (proptest): the
    /// claims the module documentation makes, checked on inputs nobody
    /// thought to write down.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// The gateway's own port in `OWN`; targets avoid it so that every
        /// case takes the ordinary path (`own_port_needs_the_exact_address`
        /// covers that one).
        const OWN_PORT: u16 = 8443;

        fn subject() -> impl Strategy<Value = Subject> {
            prop_oneof![
                Just(Subject::Everyone),
                Just(Subject::User("alice".into())),
                Just(Subject::User("bob".into())),
                Just(Subject::Group("ops".into())),
                Just(Subject::Group("sales".into())),
            ]
        }

        /// Subjects that apply to `who()` (alice, in ops).
        fn my_subject() -> impl Strategy<Value = Subject> {
            prop_oneof![
                Just(Subject::Everyone),
                Just(Subject::User("alice".into())),
                Just(Subject::Group("ops".into())),
            ]
        }

        /// A random address inside `net`.
        fn inside(net: IpNet, bits: u128) -> IpAddr {
            match net {
                IpNet::V4(n) => {
                    let host = (bits as u32) & !u32::from(n.netmask());
                    IpAddr::V4(std::net::Ipv4Addr::from(u32::from(n.network()) | host))
                }
                IpNet::V6(n) => {
                    let host = bits & !u128::from(n.netmask());
                    IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n.network()) | host))
                }
            }
        }

        fn reserved_addr() -> impl Strategy<Value = IpAddr> {
            (0..RESERVED.len(), any::<u128>())
                .prop_map(|(i, bits)| inside(RESERVED[i].parse().expect("reserved range"), bits))
        }

        /// Addresses from everywhere, weighted towards the interesting
        /// places: reserved ranges, IPv4-mapped IPv6, a few private nets.
        fn addr() -> impl Strategy<Value = IpAddr> {
            let near = [
                "10.0.0.0/24",
                "192.0.2.0/24",
                "2001:db8::/120",
                "100.64.0.0/24",
            ];
            prop_oneof![
                any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
                any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
                reserved_addr(),
                reserved_addr().prop_map(|a| match a {
                    IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                    v6 => v6,
                }),
                (0..near.len(), any::<u128>())
                    .prop_map(move |(i, bits)| inside(near[i].parse().expect("net"), bits)),
            ]
        }

        const NAMES: [&str; 5] = [
            "corp.test",
            "wiki.corp.test",
            "localhost",
            "example.org",
            "bob.vpn.internal",
        ];

        fn net_around(addr: IpAddr, prefix: u8) -> IpNet {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            IpNet::new(addr, prefix % (max + 1))
                .expect("prefix in range")
                .trunc()
        }

        fn dest() -> impl Strategy<Value = Dest> {
            prop_oneof![
                (addr(), any::<u8>()).prop_map(|(a, p)| Dest::Cidr(net_around(a, p))),
                (0..NAMES.len()).prop_map(|i| Dest::Domain(NAMES[i].into())),
                Just(Dest::PeerGroup("lab".into())),
            ]
        }

        fn ports() -> impl Strategy<Value = (u16, u16)> {
            (1..=u16::MAX, 1..=u16::MAX).prop_map(|(a, b)| (a.min(b), a.max(b)))
        }

        fn make(subject: Subject, dest: Dest, (lo, hi): (u16, u16), action: Action) -> Rule {
            Rule {
                id: 0,
                subject,
                dest,
                ports: Ports::range(lo, hi).unwrap(),
                proto: Proto::Tcp,
                program: None,
                local_user: None,
                action,
                created_by: "proptest".into(),
                created_at: 0,
            }
        }

        fn any_rule() -> impl Strategy<Value = Rule> {
            let action = prop_oneof![Just(Action::Allow), Just(Action::Deny)];
            (subject(), dest(), ports(), action).prop_map(|(s, d, p, a)| make(s, d, p, a))
        }

        fn rules() -> impl Strategy<Value = Vec<Rule>> {
            proptest::collection::vec(any_rule(), 0..12)
        }

        /// Name (if asked by name), address, port (never the gateway's own).
        fn target() -> impl Strategy<Value = (Option<&'static str>, IpAddr, u16)> {
            let name = proptest::option::of((0..NAMES.len()).prop_map(|i| NAMES[i]));
            let port = (1..=u16::MAX).prop_filter("not the gateway's port", |p| *p != OWN_PORT);
            (name, addr(), port)
        }

        fn decide(rules: &[Rule], (name, addr, port): (Option<&str>, IpAddr, u16)) -> bool {
            let t = Target {
                name,
                addr,
                port,
                proto: Proto::Tcp,
                alias: false,
                peer_groups: None,
                origin: None,
            };
            check(rules, t)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn default_deny(rules in rules(), t in target()) {
                // Allowed only if some allow rule applies to this device,
                // port and (canonical) address or name.
                let canonical = Target {
                    name: t.0,
                    addr: t.1.to_canonical(),
                    port: t.2,
                    proto: Proto::Tcp,
                    alias: false,
                    peer_groups: None,
                    origin: None,
                };
                let some_allow = rules
                    .iter()
                    .any(|r| r.action == Action::Allow && rule_matches(r, &who(), &canonical));
                prop_assert!(!decide(&rules, t) || some_allow);
                let denies: Vec<Rule> =
                    rules.into_iter().filter(|r| r.action == Action::Deny).collect();
                prop_assert!(!decide(&denies, t));
                prop_assert!(!decide(&[], t));
            }

            #[test]
            fn a_matching_deny_always_wins(
                mut rules in rules(),
                t in target(),
                subject in my_subject(),
                prefix in any::<u8>(),
                by_name in any::<bool>(),
                (below, above) in (any::<u16>(), any::<u16>()),
                at in any::<usize>(),
            ) {
                // A deny naming this device, a range or suffix holding the
                // target and ports around its port, anywhere in the list.
                let dest = match t.0 {
                    Some(name) if by_name => Dest::Domain(name.into()),
                    _ => Dest::Cidr(net_around(t.1.to_canonical(), prefix)),
                };
                let ports = (t.2.saturating_sub(below).max(1), t.2.saturating_add(above));
                let deny = make(subject, dest, ports, Action::Deny);
                let broad = [
                    make(Subject::Everyone, Dest::Cidr("0.0.0.0/0".parse().unwrap()), (1, u16::MAX), Action::Allow),
                    make(Subject::Everyone, Dest::Cidr("::/0".parse().unwrap()), (1, u16::MAX), Action::Allow),
                ];
                rules.extend(broad);
                let at = at % (rules.len() + 1);
                rules.insert(at, deny);
                prop_assert!(!decide(&rules, t));
            }

            #[test]
            fn reserved_ranges_need_an_explicit_rule(
                allows in proptest::collection::vec(any_rule(), 0..12),
                addr in reserved_addr(),
                mapped in any::<bool>(),
                name in proptest::option::of((0..NAMES.len()).prop_map(|i| NAMES[i])),
                port in (1..=u16::MAX).prop_filter("not the gateway's port", |p| *p != OWN_PORT),
            ) {
                let range = reserved_range(addr).expect("generated inside a reserved range");
                // Allow rules only, none of them a CIDR inside the range:
                // everything, every domain, every port, but not by name.
                let mut rules: Vec<Rule> = allows
                    .into_iter()
                    .filter(|r| !matches!(&r.dest, Dest::Cidr(n) if range.contains(n)))
                    .map(|r| Rule { action: Action::Allow, ..r })
                    .collect();
                for (net, n) in [("0.0.0.0/0", None), ("::/0", None), ("0.0.0.0/0", name)] {
                    let dest = match n {
                        Some(n) => Dest::Domain(n.into()),
                        None => Dest::Cidr(net.parse().unwrap()),
                    };
                    rules.push(make(Subject::Everyone, dest, (1, u16::MAX), Action::Allow));
                }
                // The same address, also as IPv4-mapped IPv6 when it is IPv4.
                let asked = match (addr, mapped) {
                    (IpAddr::V4(v4), true) => IpAddr::V6(v4.to_ipv6_mapped()),
                    (a, _) => a,
                };
                prop_assert!(!decide(&rules, (name, asked, port)), "{asked} reached without a rule naming it");
                // Naming it (its own /32 or /128) opens it.
                rules.push(make(Subject::Everyone, Dest::Cidr(IpNet::from(addr)), (port, port), Action::Allow));
                prop_assert!(decide(&rules, (name, asked, port)), "{asked} named explicitly but refused");
            }

            #[test]
            fn rule_order_does_not_matter(rules in rules(), t in target(), turn in any::<usize>()) {
                let decision = decide(&rules, t);
                let mut reversed = rules.clone();
                reversed.reverse();
                prop_assert_eq!(decide(&reversed, t), decision);
                let mut rotated = rules;
                if !rotated.is_empty() {
                    let n = turn % rotated.len();
                    rotated.rotate_left(n);
                }
                prop_assert_eq!(decide(&rotated, t), decision);
            }

            #[test]
            fn more_allows_never_deny_more_denies_never_allow(
                rules in rules(),
                extra in any_rule(),
                t in target(),
            ) {
                let before = decide(&rules, t);
                let mut more = rules;
                more.push(extra.clone());
                let after = decide(&more, t);
                match extra.action {
                    Action::Allow => prop_assert!(after || !before),
                    Action::Deny => prop_assert!(!after || before),
                }
            }
        }
    }
}
