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

/// The shim a flow came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shim {
    Socks,
    Socket,
}

impl Shim {
    pub fn as_str(self) -> &'static str {
        match self {
            Shim::Socks => "socks",
            Shim::Socket => "socket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub shim: Shim,
    /// The local user id, when known.
    pub uid: Option<u32>,
    /// The program's executable, when known.
    pub program: Option<String>,
}

impl Origin {
    pub const SOCKS: Origin = Origin {
        shim: Shim::Socks,
        uid: None,
        program: None,
    };

    /// The header value: `shim=socket uid=1000 program=/usr/bin/psql`. A
    /// program path is cut to [`MAX_PROGRAM`] bytes and loses anything but
    /// printable ASCII other than space (so it stays one header field).
    pub fn encode(&self) -> String {
        let mut out = format!("shim={}", self.shim.as_str());
        if let Some(uid) = self.uid {
            out.push_str(&format!(" uid={uid}"));
        }
        if let Some(program) = &self.program {
            let clean: String = program
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(MAX_PROGRAM)
                .collect();
            out.push_str(&format!(" program={clean}"));
        }
        out
    }

    /// What a device sent; `None` for anything malformed (the flow is then
    /// audited with its origin unknown, not refused).
    pub fn parse(text: &str) -> Option<Origin> {
        let mut origin = Origin {
            shim: Shim::Socks,
            uid: None,
            program: None,
        };
        let mut shim = None;
        for field in text.split(' ') {
            match field.split_once('=')? {
                ("shim", "socks") => shim = Some(Shim::Socks),
                ("shim", "socket") => shim = Some(Shim::Socket),
                ("uid", uid) => origin.uid = Some(uid.parse().ok()?),
                ("program", p)
                    if !p.is_empty()
                        && p.len() <= MAX_PROGRAM
                        && p.chars().all(|c| c.is_ascii_graphic()) =>
                {
                    origin.program = Some(p.to_owned());
                }
                _ => return None,
            }
        }
        origin.shim = shim?;
        Some(origin)
    }
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
            program: Some("/usr/bin/psql".into()),
        };
        assert_eq!(o.encode(), "shim=socket uid=1000 program=/usr/bin/psql");
        assert_eq!(Origin::parse(&o.encode()), Some(o));
        assert_eq!(Origin::parse("shim=socks"), Some(Origin::SOCKS));
        let spaced = Origin {
            shim: Shim::Socket,
            uid: None,
            program: Some("/opt/my app/bin\nx".into()),
        };
        assert_eq!(
            Origin::parse(&spaced.encode()).and_then(|o| o.program),
            Some("/opt/myapp/binx".into())
        );
        for bad in [
            "",
            "shim=tun",
            "uid=1",
            "shim=socket uid=-1",
            "shim=socket x=y",
            "shim=socket program=",
            "shim=socket  uid=1",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad:?}");
        }
        let long = "a".repeat(1000);
        assert_eq!(Origin::parse(&format!("shim=socket program={long}")), None);
    }
}
