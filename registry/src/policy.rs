//! Policy rule vocabulary: who a rule applies to ([`Subject`]), where to ([`Dest`]), and what
//! it does ([`Action`]), with their text forms. Evaluating rules is the gateway's job.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Why a subject, destination or action string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct ParseError {
    what: &'static str,
    input: String,
    reason: String,
}

impl ParseError {
    fn new(what: &'static str, input: &str, reason: impl Into<String>) -> Self {
        ParseError {
            what,
            input: input.to_owned(),
            reason: reason.into(),
        }
    }

    /// What was being parsed ("rule subject", "rule destination", "rule action", "rule protocol",
    /// "port range").
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl From<ParseError> for crate::Error {
    fn from(e: ParseError) -> Self {
        crate::Error::Invalid {
            what: e.what,
            reason: format!("{:?}: {}", e.input, e.reason),
        }
    }
}

/// A rule's ports: one or more ports and ranges. Text: a comma-separated
/// list, `22,53,80,443,5432,8000-8100`, shown as the admin wrote it (less
/// spaces); each port 1–65535, a range's first not above its last.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ports(Vec<(u16, u16)>);

impl Ports {
    /// Every port.
    pub fn all() -> Ports {
        Ports(vec![(1, u16::MAX)])
    }

    /// One range (`lo` at least 1, not above `hi`).
    pub fn range(lo: u16, hi: u16) -> Result<Ports, ParseError> {
        format!("{lo}-{hi}").parse()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port))
    }

    /// Whether every port of `other` is one of these.
    pub fn covers(&self, other: &Ports) -> bool {
        other.0.iter().all(|&(lo, hi)| {
            // Walk `other`'s range through ours (ours may touch or overlap).
            let mut next = u32::from(lo);
            while next <= u32::from(hi) {
                match self
                    .0
                    .iter()
                    .filter(|(a, b)| u32::from(*a) <= next && next <= u32::from(*b))
                    .map(|(_, b)| u32::from(*b))
                    .max()
                {
                    Some(end) => next = end + 1,
                    None => return false,
                }
            }
            true
        })
    }

    /// The lowest and highest port (what the registry's older columns hold).
    pub fn bounds(&self) -> (u16, u16) {
        let lo = self.0.iter().map(|r| r.0).min().unwrap_or(1);
        let hi = self.0.iter().map(|r| r.1).max().unwrap_or(u16::MAX);
        (lo, hi)
    }
}

/// At most this many items in one rule's port list.
const MAX_PORT_ITEMS: usize = 64;

impl FromStr for Ports {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let what = "port list";
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        if items.len() > MAX_PORT_ITEMS {
            return Err(ParseError::new(
                what,
                s,
                format!("more than {MAX_PORT_ITEMS} items"),
            ));
        }
        let port = |item: &str, p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    ParseError::new(
                        what,
                        s,
                        format!("{item:?} is not a port (1-65535) or a range (8000-8100)"),
                    )
                })
        };
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            let (lo, hi) = item.split_once('-').unwrap_or((item, item));
            let (lo, hi) = (port(item, lo)?, port(item, hi)?);
            if lo > hi {
                return Err(ParseError::new(
                    what,
                    s,
                    format!("{item:?}: the first port is above the last"),
                ));
            }
            ranges.push((lo, hi));
        }
        Ok(Ports(ranges))
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// Who a rule applies to. Text: `*`, `user:NAME`, `group:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Everyone,
    User(String),
    Group(String),
}

/// Where a rule applies. Text: a CIDR (`10.0.0.0/8`, `2001:db8::/32`), a bare IP (meaning /32
/// or /128), a domain suffix (`intranet.internal`, matching itself and its subdomains), or
/// `group:NAME` (the devices of that group's members, as peers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dest {
    Cidr(IpNet),
    /// Lowercase, no leading or trailing dot.
    Domain(String),
    /// Peer devices whose owner is in this group.
    PeerGroup(String),
}

/// What a matching rule does. Text: `allow`, `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

/// The protocol a rule applies to. Text: `tcp`, `udp`, `icmp`, `any`. A flow
/// is TCP, UDP or an ICMP echo (a ping, which has no port); `any` covers all
/// three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Proto {
    /// What every rule meant before UDP existed, and the default.
    #[default]
    Tcp,
    Udp,
    Icmp,
    Any,
}

impl Proto {
    /// Whether a rule for `self` applies to a flow of protocol `flow`.
    pub fn covers(self, flow: Proto) -> bool {
        self == Proto::Any || self == flow
    }
}

impl FromStr for Proto {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "icmp" => Ok(Proto::Icmp),
            "any" => Ok(Proto::Any),
            _ => Err(ParseError::new(
                "rule protocol",
                s,
                "expected \"tcp\", \"udp\", \"icmp\" or \"any\"",
            )),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Any => "any",
        })
    }
}

/// A program a rule is limited to (`--program`): an absolute path
/// (`/usr/bin/psql`, matching that executable only) or a bare name (`psql`,
/// matching any executable of that name). Matched against the executable the
/// socket shim reports for a flow, which is the device's word.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Program(String);

/// Longest program a rule may name: what a device's origin keeps of a path.
const MAX_PROGRAM: usize = 256;

impl Program {
    /// Whether a flow made by the executable `exe` (a full path) matches.
    pub fn matches(&self, exe: &str) -> bool {
        if self.0.contains('/') {
            self.0 == exe
        } else {
            exe.rsplit('/').next() == Some(self.0.as_str())
        }
    }
}

impl FromStr for Program {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let what = "rule program";
        let p = s.trim();
        if p.is_empty() || p.len() > MAX_PROGRAM || !p.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ParseError::new(
                what,
                s,
                format!(
                    "expected a path or a program name of at most {MAX_PROGRAM} printable characters, without spaces"
                ),
            ));
        }
        if p.contains('/') && !p.starts_with('/') {
            return Err(ParseError::new(
                what,
                s,
                "a path must be absolute (\"/usr/bin/psql\"); a bare name (\"psql\") matches any directory",
            ));
        }
        Ok(Program(p.to_owned()))
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A local user on the device a rule is limited to (`--local-user`): a
/// numeric uid or a user name, as the device's own accounts know them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocalUser {
    Uid(u32),
    Name(String),
}

impl LocalUser {
    /// Whether a flow made by `uid` (named `name` on the device) matches.
    pub fn matches(&self, uid: Option<u32>, name: Option<&str>) -> bool {
        match self {
            LocalUser::Uid(want) => uid == Some(*want),
            LocalUser::Name(want) => name == Some(want.as_str()),
        }
    }
}

impl FromStr for LocalUser {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let u = s.trim();
        if let Ok(uid) = u.parse::<u32>() {
            return Ok(LocalUser::Uid(uid));
        }
        let first_ok = u.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        let rest_ok = u
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !first_ok || !rest_ok || u.len() > 32 {
            return Err(ParseError::new(
                "rule local user",
                s,
                "expected a uid (1000) or a user name of the device (letters, digits, '_', '-', '.'; at most 32)",
            ));
        }
        Ok(LocalUser::Name(u.to_owned()))
    }
}

impl fmt::Display for LocalUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalUser::Uid(uid) => write!(f, "{uid}"),
            LocalUser::Name(name) => f.write_str(name),
        }
    }
}

fn check_subject_name(input: &str, name: &str) -> Result<String, ParseError> {
    let what = "rule subject";
    if name.is_empty() {
        return Err(ParseError::new(what, input, "the name after ':' is empty"));
    }
    if name.trim() != name {
        return Err(ParseError::new(
            what,
            input,
            "the name has surrounding spaces",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ParseError::new(
            what,
            input,
            "the name contains control characters",
        ));
    }
    Ok(name.to_owned())
}

impl FromStr for Subject {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        if input == "*" {
            return Ok(Subject::Everyone);
        }
        let expected = "expected \"*\" (everyone), \"user:NAME\" or \"group:NAME\"";
        let Some((kind, name)) = input.split_once(':') else {
            return Err(ParseError::new("rule subject", s, expected));
        };
        match kind.to_ascii_lowercase().as_str() {
            "user" => Ok(Subject::User(check_subject_name(s, name)?)),
            "group" => Ok(Subject::Group(check_subject_name(s, name)?)),
            _ => Err(ParseError::new("rule subject", s, expected)),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Everyone => f.write_str("*"),
            Subject::User(name) => write!(f, "user:{name}"),
            Subject::Group(name) => write!(f, "group:{name}"),
        }
    }
}

/// Normalizes and checks a domain suffix: lowercase, one trailing dot dropped, labels of
/// letters, digits, `-` and `_`.
fn parse_domain(input: &str, s: &str) -> Result<String, ParseError> {
    let what = "rule destination";
    let lower = s.to_ascii_lowercase();
    let domain = lower.strip_suffix('.').unwrap_or(&lower);
    if domain.starts_with('.') || domain.starts_with('*') {
        return Err(ParseError::new(
            what,
            input,
            "write the domain without a leading dot or wildcard: \"example.com\" matches \
             example.com and all its subdomains",
        ));
    }
    if domain.len() > 253 {
        return Err(ParseError::new(
            what,
            input,
            "a domain is at most 253 characters",
        ));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(ParseError::new(
                what,
                input,
                "empty label (two dots in a row?)",
            ));
        }
        if label.len() > 63 {
            return Err(ParseError::new(
                what,
                input,
                "a domain label is at most 63 characters",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ParseError::new(
                what,
                input,
                "not a CIDR, an IP address or a domain name (domains use letters, digits, '-' \
                 and '_'; write internationalized names in their xn-- form)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(ParseError::new(
                what,
                input,
                "a domain label cannot start or end with '-'",
            ));
        }
    }
    if domain
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ParseError::new(
            what,
            input,
            "looks like an incomplete IP address; a domain's last label cannot be all digits",
        ));
    }
    Ok(domain.to_owned())
}

impl FromStr for Dest {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let what = "rule destination";
        let s = input.trim();
        if s.is_empty() {
            return Err(ParseError::new(
                what,
                input,
                "empty; expected a CIDR (10.0.0.0/8), an IP address or a domain (intranet.internal)",
            ));
        }
        if s.contains('/') {
            return s
                .parse::<IpNet>()
                .map(|net| Dest::Cidr(net.trunc()))
                .map_err(|_| {
                    ParseError::new(
                        what,
                        input,
                        "not a valid CIDR (e.g. 10.0.0.0/8 or 2001:db8::/32)",
                    )
                });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Dest::Cidr(IpNet::from(ip)));
        }
        if let Some((kind, name)) = s.split_once(':')
            && kind.eq_ignore_ascii_case("group")
        {
            return check_subject_name(input, name).map(Dest::PeerGroup);
        }
        if s.contains(':') {
            return Err(ParseError::new(what, input, "not a valid IPv6 address"));
        }
        parse_domain(input, s).map(Dest::Domain)
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Cidr(net) => write!(f, "{net}"),
            Dest::Domain(domain) => f.write_str(domain),
            Dest::PeerGroup(group) => write!(f, "group:{group}"),
        }
    }
}

impl FromStr for Action {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            _ => Err(ParseError::new(
                "rule action",
                s,
                "expected \"allow\" or \"deny\"",
            )),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// Serialize as the text form, so JSON APIs show `"group:ops"`, `"10.0.0.0/8"`, `"allow"`.
macro_rules! serde_via_text {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_via_text!(Subject, Dest, Action, Proto, Ports, Program, LocalUser);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_and_local_users() {
        let by_path: Program = " /usr/bin/psql ".parse().unwrap();
        assert_eq!(by_path.to_string(), "/usr/bin/psql");
        assert!(by_path.matches("/usr/bin/psql") && !by_path.matches("/opt/psql"));
        let by_name: Program = "psql".parse().unwrap();
        assert!(by_name.matches("/usr/bin/psql") && by_name.matches("/opt/pg/bin/psql"));
        assert!(!by_name.matches("/usr/bin/psql2") && !by_name.matches("/usr/bin/xpsql"));
        for bad in ["", "bin/psql", "my app", "a\tb", &"x".repeat(300)] {
            assert!(bad.parse::<Program>().is_err(), "{bad:?}");
        }
        assert_eq!("1000".parse::<LocalUser>().unwrap(), LocalUser::Uid(1000));
        let alice: LocalUser = "alice".parse().unwrap();
        assert!(alice.matches(Some(1000), Some("alice")) && !alice.matches(Some(1000), None));
        assert!(LocalUser::Uid(0).matches(Some(0), None) && !LocalUser::Uid(0).matches(None, None));
        for bad in ["", "-1", "1x y", "ali ce", "9user", &"a".repeat(40)] {
            assert!(bad.parse::<LocalUser>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn protocols() {
        assert_eq!(roundtrip::<Proto>(" UDP "), "udp");
        assert_eq!(roundtrip::<Proto>("any"), "any");
        assert!(Proto::Any.covers(Proto::Udp) && Proto::Any.covers(Proto::Tcp));
        assert!(Proto::Tcp.covers(Proto::Tcp) && !Proto::Tcp.covers(Proto::Udp));
        assert!(!Proto::Udp.covers(Proto::Tcp));
        assert_eq!(roundtrip::<Proto>("ICMP"), "icmp");
        assert!(Proto::Any.covers(Proto::Icmp) && !Proto::Udp.covers(Proto::Icmp));
        assert_eq!(Proto::default(), Proto::Tcp);
    }

    #[test]
    fn ports() {
        let p: Ports = " 22, 53,80 ,443,5432,8000-8100".parse().unwrap();
        assert_eq!(p.to_string(), "22,53,80,443,5432,8000-8100");
        assert!(p.contains(53) && p.contains(8050) && !p.contains(54) && !p.contains(8101));
        assert_eq!(p.bounds(), (22, 8100));
        assert_eq!(roundtrip::<Ports>("1-65535"), "1-65535");
        for (bad, names) in [
            ("0", "\"0\""),
            ("22,70000", "\"70000\""),
            ("90-80", "\"90-80\""),
            ("80,abc", "\"abc\""),
            ("80,,443", "\"\""),
            ("", "\"\""),
        ] {
            let e = bad.parse::<Ports>().unwrap_err();
            assert!(e.reason().contains(names), "{bad:?}: {e}");
        }
        let many = vec!["1"; MAX_PORT_ITEMS + 1].join(",");
        assert!(many.parse::<Ports>().is_err());
        let all = Ports::all();
        assert!(all.covers(&p) && !p.covers(&all));
        let split: Ports = "1-100,101-200".parse().unwrap();
        assert!(split.covers(&"50-150".parse().unwrap()));
        assert!(!split.covers(&"150-250".parse().unwrap()));
    }

    fn roundtrip<T: FromStr<Err = ParseError> + fmt::Display>(s: &str) -> String {
        match s.parse::<T>() {
            Ok(v) => v.to_string(),
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    #[test]
    fn subjects() {
        assert_eq!("*".parse::<Subject>(), Ok(Subject::Everyone));
        assert_eq!(
            " user:alice ".parse::<Subject>(),
            Ok(Subject::User("alice".into()))
        );
        assert_eq!(
            "group:ops".parse::<Subject>(),
            Ok(Subject::Group("ops".into()))
        );
        assert_eq!(
            "Group:ops".parse::<Subject>(),
            Ok(Subject::Group("ops".into()))
        );
        assert_eq!(
            "user:a:b".parse::<Subject>(),
            Ok(Subject::User("a:b".into()))
        );
        for s in ["*", "user:alice", "group:ops"] {
            assert_eq!(roundtrip::<Subject>(s), s);
        }
        for bad in [
            "",
            "alice",
            "user:",
            "team:ops",
            "**",
            "user: alice",
            "group:a\u{7}",
        ] {
            let err = bad.parse::<Subject>().err();
            assert!(err.is_some(), "{bad:?} should be refused");
        }
        let msg = "alice".parse::<Subject>().err().map(|e| e.to_string());
        assert_eq!(
            msg.as_deref(),
            Some(
                "invalid rule subject \"alice\": expected \"*\" (everyone), \"user:NAME\" or \
                 \"group:NAME\""
            )
        );
    }

    #[test]
    fn dests() {
        assert_eq!(roundtrip::<Dest>("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(roundtrip::<Dest>("2001:db8::/32"), "2001:db8::/32");
        assert_eq!(roundtrip::<Dest>("10.1.2.3"), "10.1.2.3/32");
        assert_eq!(roundtrip::<Dest>("::1"), "::1/128");
        assert_eq!(roundtrip::<Dest>("10.1.2.3/8"), "10.0.0.0/8");
        assert_eq!(roundtrip::<Dest>("intranet.internal"), "intranet.internal");
        assert_eq!(roundtrip::<Dest>("Intranet.Internal."), "intranet.internal");
        assert_eq!(roundtrip::<Dest>("localhost"), "localhost");
        assert_eq!(roundtrip::<Dest>("_srv.example.com"), "_srv.example.com");
        assert_eq!(roundtrip::<Dest>("Group:lab"), "group:lab");
        assert_eq!(
            "group:lab".parse::<Dest>(),
            Ok(Dest::PeerGroup("lab".into()))
        );
        assert_eq!(
            "db.example.com".parse::<Dest>(),
            Ok(Dest::Domain("db.example.com".into()))
        );
        assert!(
            matches!("192.168.0.0/16".parse::<Dest>(), Ok(Dest::Cidr(n)) if n.prefix_len() == 16)
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0",
            "300.1.1.1",
            "2001:db8:::1",
            ".example.com",
            "*.example.com",
            "a..b",
            "exa mple.com",
            "-bad.com",
            "bad-.com",
            "ünicode.de",
            "group:",
            "group: lab",
        ] {
            assert!(bad.parse::<Dest>().is_err(), "{bad:?} should be refused");
        }
        let msg = "*.example.com"
            .parse::<Dest>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("leading dot or wildcard"), "{msg}");
        let msg = "10.0.0.0/33"
            .parse::<Dest>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("not a valid CIDR"), "{msg}");
    }

    #[test]
    fn actions() {
        assert_eq!("allow".parse::<Action>(), Ok(Action::Allow));
        assert_eq!(" DENY ".parse::<Action>(), Ok(Action::Deny));
        assert_eq!(Action::Allow.to_string(), "allow");
        assert_eq!(Action::Deny.to_string(), "deny");
        let msg = "permit".parse::<Action>().err().map(|e| e.to_string());
        assert_eq!(
            msg.as_deref(),
            Some("invalid rule action \"permit\": expected \"allow\" or \"deny\"")
        );
    }

    #[test]
    fn parse_error_converts_to_registry_error() {
        let e: crate::Error = "nope"
            .parse::<Action>()
            .err()
            .map(Into::into)
            .unwrap_or(crate::Error::Corrupt("parse unexpectedly succeeded".into()));
        assert!(
            matches!(
                e,
                crate::Error::Invalid {
                    what: "rule action",
                    ..
                }
            ),
            "{e}"
        );
    }
}
