//! Which program on a device made a flow: the shim that took it and, for
//! the socket shim, the local user and executable `up` learnt from its
//! socket (SO_PEERCRED). The device sends it with every tunnel and UDP
//! association ([`ORIGIN_HEADER`]); the gateway writes it into the flow's
//! audit entry. It is the device's word, as the device's certificate is
//! the gateway's proof of which device spoke.

use std::fmt;

/// Request header carrying an [`Origin`].
pub const ORIGIN_HEADER: &str = "shimgate-origin";
/// Longest program path kept; a longer one is cut.
const MAX_PROGRAM: usize = 256;
/// Longest local user name kept.
const MAX_USER: usize = 32;

/// The shim a flow came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shim {
    Socks,
    Socket,
    /// The network-driver shim: a flow from the TUN interface (TUN mode).
    Tun,
}

impl Shim {
    pub fn as_str(self) -> &'static str {
        match self {
            Shim::Socks => "socks",
            Shim::Socket => "socket",
            Shim::Tun => "tun",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub shim: Shim,
    /// The local user id, when known.
    pub uid: Option<u32>,
    /// The local user's name on the device, when known.
    pub user: Option<String>,
    /// The program's executable, when known.
    pub program: Option<String>,
}

impl Origin {
    pub const SOCKS: Origin = Origin {
        shim: Shim::Socks,
        uid: None,
        user: None,
        program: None,
    };
    /// A TUN flow: the program behind a packet is not known.
    pub const TUN: Origin = Origin {
        shim: Shim::Tun,
        uid: None,
        user: None,
        program: None,
    };

    /// The header value: `shim=socket uid=1000 local-user=alice
    /// program=/usr/bin/psql`. A user name and a program path are cut to
    /// [`MAX_USER`] and [`MAX_PROGRAM`] bytes and lose anything but printable
    /// ASCII other than space (so they stay one header field); an empty one
    /// is left out.
    pub fn encode(&self) -> String {
        let mut out = format!("shim={}", self.shim.as_str());
        if let Some(uid) = self.uid {
            out.push_str(&format!(" uid={uid}"));
        }
        let clean = |text: &str, max: usize| -> String {
            text.chars()
                .filter(|c| c.is_ascii_graphic())
                .take(max)
                .collect()
        };
        for (key, value, max) in [
            ("local-user", &self.user, MAX_USER),
            ("program", &self.program, MAX_PROGRAM),
        ] {
            if let Some(value) = value.as_deref().map(|v| clean(v, max))
                && !value.is_empty()
            {
                out.push_str(&format!(" {key}={value}"));
            }
        }
        out
    }

    /// What a device sent; `None` for anything malformed (the flow is then
    /// audited with its origin unknown, not refused).
    pub fn parse(text: &str) -> Option<Origin> {
        let mut origin = Origin::SOCKS;
        let mut shim = None;
        for field in text.split(' ') {
            match field.split_once('=')? {
                ("shim", "socks") => shim = Some(Shim::Socks),
                ("shim", "socket") => shim = Some(Shim::Socket),
                ("shim", "tun") => shim = Some(Shim::Tun),
                ("uid", uid) => origin.uid = Some(uid.parse().ok()?),
                ("local-user", u) if printable(u, MAX_USER) => origin.user = Some(u.to_owned()),
                ("program", p) if printable(p, MAX_PROGRAM) => origin.program = Some(p.to_owned()),
                _ => return None,
            }
        }
        origin.shim = shim?;
        Some(origin)
    }
}

/// A field value as [`Origin::encode`] writes it: 1 to `max` printable ASCII characters.
fn printable(value: &str, max: usize) -> bool {
    !value.is_empty() && value.len() <= max && value.chars().all(|c| c.is_ascii_graphic())
}

impl fmt::Display for Origin {
    /// As in the audit log's detail.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_values() {
        let o = Origin {
            shim: Shim::Socket,
            uid: Some(1000),
            user: Some("alice".into()),
            program: Some("/usr/bin/psql".into()),
        };
        assert_eq!(
            o.encode(),
            "shim=socket uid=1000 local-user=alice program=/usr/bin/psql"
        );
        assert_eq!(Origin::parse(&o.encode()), Some(o));
        assert_eq!(Origin::parse("shim=socks"), Some(Origin::SOCKS));
        let spaced = Origin {
            shim: Shim::Socket,
            uid: None,
            user: Some(" \n".into()),
            program: Some("/opt/my app/bin\nx".into()),
        };
        assert!(
            !spaced.encode().contains("local-user="),
            "nothing left of the name"
        );
        assert_eq!(
            Origin::parse(&spaced.encode()).and_then(|o| o.program),
            Some("/opt/myapp/binx".into())
        );
        for bad in [
            "",
            "shim=carrier-pigeon",
            "uid=1",
            "shim=socket uid=-1",
            "shim=socket x=y",
            "shim=socket program=",
            "shim=socket local-user=",
            "shim=socket  uid=1",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Origin::parse("shim=tun"), Some(Origin::TUN));
        let long = "a".repeat(1000);
        assert_eq!(Origin::parse(&format!("shim=socket program={long}")), None);
    }
}
