//! The fake-address map: VPN names handed to programs as addresses from
//! 198.18.0.0/15 (RFC 2544's benchmarking range) and 2001:2::/48 (RFC
//! 5180's), which stand for the name when a program connects to them, so
//! that the name is resolved by the gateway (socks5h semantics) even for a
//! program that only knows `getaddrinfo` and `connect`.
//!
//! Invariants: a name keeps its addresses for good (programs and resolvers
//! cache them, JVMs for ever), so an address never stands for a second
//! name; the map is written to disk before an address is handed out, so it
//! survives a restart of `up`; it lives in `up`, so every program and its
//! children see one map. Entry `i` of the file (one name per line) is the
//! `i + 1`-th address of each range.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::{Ipv4Net, Ipv6Net};
use shimgate_wire::dest::Host;
use shimgate_wire::shimsock;

pub const FAKE_V4: Ipv4Net = match Ipv4Net::new(shimsock::FAKE_V4.0, shimsock::FAKE_V4.1) {
    Ok(n) => n,
    Err(_) => panic!("a /15 is a valid prefix"),
};
pub const FAKE_V6: Ipv6Net = match Ipv6Net::new(shimsock::FAKE_V6.0, shimsock::FAKE_V6.1) {
    Ok(n) => n,
    Err(_) => panic!("a /48 is a valid prefix"),
};
/// Addresses of the IPv4 range but its first and last.
const CAPACITY: usize = (1 << 17) - 2;

#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("reading the fake-address map {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the fake-address map {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0:?} is not a host name")]
    NotAName(String),
    #[error(
        "all {CAPACITY} fake addresses are handed out; an address is never reused while a program may hold it (remove {0} while no program runs under `shimgate run` to start afresh)"
    )]
    Full(PathBuf),
}

pub struct FakeMap {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    index: HashMap<String, usize>,
    /// By index; `None` for a line that was not a name (its addresses stay
    /// unused, so later names keep theirs).
    names: Vec<Option<String>>,
}

impl FakeMap {
    /// The map in `path` (created 0600 on first use).
    pub fn load(path: &Path) -> Result<FakeMap, FakeError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(FakeError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut inner = Inner::default();
        for line in text.lines() {
            let name = match Host::parse(line) {
                Ok(Host::Name(n)) if !inner.index.contains_key(&n) => Some(n),
                _ => None,
            };
            if let Some(n) = &name {
                inner.index.insert(n.clone(), inner.names.len());
            }
            inner.names.push(name);
        }
        Ok(FakeMap {
            path: path.to_owned(),
            inner: Mutex::new(inner),
        })
    }

    /// The addresses standing for `name`, if it has some already.
    pub fn get(&self, name: &str) -> Option<(Ipv4Addr, Ipv6Addr)> {
        let Ok(Host::Name(name)) = Host::parse(name) else {
            return None;
        };
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.index.get(&name).map(|i| addrs(*i))
    }

    /// The addresses standing for `name`, handed out now if it has none.
    pub fn addrs_for(&self, name: &str) -> Result<(Ipv4Addr, Ipv6Addr), FakeError> {
        let Ok(Host::Name(name)) = Host::parse(name) else {
            return Err(FakeError::NotAName(name.to_owned()));
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = inner.index.get(&name) {
            return Ok(addrs(*i));
        }
        let i = inner.names.len();
        if i >= CAPACITY {
            return Err(FakeError::Full(self.path.clone()));
        }
        self.append(&name)?;
        inner.index.insert(name.clone(), i);
        inner.names.push(Some(name));
        Ok(addrs(i))
    }

    /// The name a fake address stands for.
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        let i = index(ip)?;
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.names.get(i).cloned().flatten()
    }

    fn append(&self, name: &str) -> Result<(), FakeError> {
        let write = || -> std::io::Result<()> {
            let mut file = shimgate_host::files::append_private(&self.path)?;
            file.write_all(format!("{name}\n").as_bytes())?;
            file.sync_data()
        };
        write().map_err(|source| FakeError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

fn addrs(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    let n = i as u32 + 1;
    let v4 = Ipv4Addr::from(u32::from(FAKE_V4.network()) + n);
    let v6 = Ipv6Addr::from(u128::from(FAKE_V6.network()) + u128::from(n));
    (v4, v6)
}

pub use shimgate_wire::shimsock::is_fake;

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The map index of a fake address.
fn index(ip: IpAddr) -> Option<usize> {
    if !is_fake(ip) {
        return None;
    }
    let n = match unmapped(ip) {
        IpAddr::V4(v4) => u32::from(v4) - u32::from(FAKE_V4.network()),
        IpAddr::V6(v6) => u32::try_from(u128::from(v6) - u128::from(FAKE_V6.network())).ok()?,
    };
    (n as usize).checked_sub(1).filter(|i| *i < CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_addresses_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake");
        let map = FakeMap::load(&path).unwrap();
        let (a4, a6) = map.addrs_for("DB.corp.internal.").unwrap();
        assert_eq!(a4, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(a6, "2001:2::1".parse::<Ipv6Addr>().unwrap());
        let (b4, _) = map.addrs_for("web.corp.internal").unwrap();
        assert_eq!(b4, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(map.addrs_for("db.corp.internal").unwrap().0, a4);
        assert!(map.addrs_for("bad name").is_err());
        assert!(map.addrs_for("10.0.0.1").is_err());

        let again = FakeMap::load(&path).unwrap();
        assert_eq!(
            again.name_of(a4.into()).as_deref(),
            Some("db.corp.internal")
        );
        assert_eq!(
            again.name_of(a6.into()).as_deref(),
            Some("db.corp.internal")
        );
        let mapped = IpAddr::V6(b4.to_ipv6_mapped());
        assert_eq!(again.name_of(mapped).as_deref(), Some("web.corp.internal"));
        assert_eq!(again.addrs_for("web.corp.internal").unwrap().0, b4);
        assert_eq!(again.name_of("198.18.0.3".parse().unwrap()), None);
        assert_eq!(again.name_of("198.18.0.0".parse().unwrap()), None);
        assert_eq!(again.name_of("10.0.0.1".parse().unwrap()), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_line_keeps_later_names_where_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake");
        std::fs::write(&path, "a.corp\nnot a name\nc.corp\n").unwrap();
        let map = FakeMap::load(&path).unwrap();
        assert_eq!(
            map.addrs_for("c.corp").unwrap().0,
            Ipv4Addr::new(198, 18, 0, 3)
        );
        assert_eq!(map.name_of("198.18.0.2".parse().unwrap()), None);
        assert_eq!(
            map.addrs_for("d.corp").unwrap().0,
            Ipv4Addr::new(198, 18, 0, 4)
        );
    }
}
