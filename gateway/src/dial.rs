//! Turning a tunnel request (a [`Destination`] from a device) into a connected
//! socket: aliases, name resolution on the gateway (socks5h semantics),
//! policy for every candidate address, then connect with a timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use shimgate_registry::{Proto, Rule};
use shimgate_wire::dest::{Destination, Host};
use shimgate_wire::origin::Origin;
use shimgate_wire::tunnel::TunnelError;
use tokio::net::TcpStream;

use crate::cache::Identity;
use crate::policy::{self, Target};

const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `NAME:PORT=IP:PORT` alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub name: String,
    pub port: u16,
    pub target: SocketAddr,
}

impl std::str::FromStr for Alias {
    type Err = String;

    fn from_str(s: &str) -> Result<Alias, String> {
        let bad = || {
            format!(
                "alias {s:?} is not NAME:PORT=IP:PORT (e.g. intranet.internal:80=127.0.0.1:8080)"
            )
        };
        let (from, to) = s.split_once('=').ok_or_else(bad)?;
        let (name, port) = from.rsplit_once(':').ok_or_else(bad)?;
        Ok(Alias {
            name: name.trim_end_matches('.').to_ascii_lowercase(),
            port: port.parse().map_err(|_| bad())?,
            target: to.parse().map_err(|_| bad())?,
        })
    }
}

pub struct Dialer {
    aliases: HashMap<(String, u16), SocketAddr>,
    /// The gateway's own listening address, which policy guards.
    own: SocketAddr,
}

impl Dialer {
    pub fn new(aliases: &[Alias], own: SocketAddr) -> Dialer {
        Dialer {
            aliases: aliases
                .iter()
                .map(|a| ((a.name.clone(), a.port), a.target))
                .collect(),
            own,
        }
    }

    /// Alias names `who`, asking from `origin`, may reach (on the alias's
    /// port): for the routes a device's PAC file sends through the gateway.
    pub fn allowed_aliases(
        &self,
        who: &Identity,
        origin: Option<&Origin>,
        rules: &[Rule],
    ) -> Vec<String> {
        let mut names: Vec<String> = self
            .aliases
            .iter()
            .filter(|((name, port), target)| {
                let t = Target {
                    name: Some(name),
                    addr: target.ip(),
                    port: *port,
                    proto: Proto::Tcp,
                    alias: true,
                    peer_groups: None,
                    origin,
                };
                crate::policy::allows(rules, who, &t, self.own)
            })
            .map(|((name, _), _)| name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The addresses `who`, asking from `origin`, may reach `dest` at over
    /// `proto`: the alias's, or what the name resolves to (socks5h
    /// semantics), each checked against policy. A name no rule could allow is
    /// refused before any lookup. The error is what the device's program will
    /// be told.
    pub async fn allowed(
        &self,
        who: &Identity,
        origin: Option<&Origin>,
        rules: &[Rule],
        dest: &Destination,
        proto: Proto,
    ) -> Result<Vec<SocketAddr>, TunnelError> {
        self.allowed_at(who, origin, rules, dest.host(), dest.port(), proto)
            .await
    }

    /// The addresses `who`, asking from `origin`, may ping at `host`: as
    /// [`Dialer::allowed`], for ICMP, which has no port.
    pub async fn pingable(
        &self,
        who: &Identity,
        origin: Option<&Origin>,
        rules: &[Rule],
        host: &Host,
    ) -> Result<Vec<IpAddr>, TunnelError> {
        let addrs = self
            .allowed_at(who, origin, rules, host, 0, Proto::Icmp)
            .await?;
        Ok(addrs.into_iter().map(|a| a.ip()).collect())
    }

    async fn allowed_at(
        &self,
        who: &Identity,
        origin: Option<&Origin>,
        rules: &[Rule],
        host: &Host,
        port: u16,
        proto: Proto,
    ) -> Result<Vec<SocketAddr>, TunnelError> {
        let name = host.name();
        let alias = name.and_then(|n| self.aliases.get(&(n.to_owned(), port)).copied());
        let candidates: Vec<(IpAddr, SocketAddr)> = match (host, alias) {
            (_, Some(target)) => vec![(target.ip(), target)],
            (Host::Ip(ip), None) => vec![(*ip, SocketAddr::new(*ip, port))],
            (Host::Name(n), None) if !policy::could_allow(rules, who, origin, n, port, proto) => {
                return Err(TunnelError::NotAllowed);
            }
            (Host::Name(n), None) => resolve(n, port)
                .await?
                .into_iter()
                .map(|a| (a.ip(), a))
                .collect(),
        };
        let allowed: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|(ip, _)| {
                let target = Target {
                    name,
                    addr: *ip,
                    port,
                    proto,
                    alias: alias.is_some(),
                    peer_groups: None,
                    origin,
                };
                policy::allows(rules, who, &target, self.own)
            })
            .map(|(_, to)| to)
            .collect();
        if allowed.is_empty() {
            return Err(TunnelError::NotAllowed);
        }
        Ok(allowed)
    }

    /// Whether `name` exists, for `who`: an alias, or a name the resolver
    /// knows; asked only when policy could let `who` reach it (else
    /// `NotAllowed`, and no lookup).
    pub async fn exists(
        &self,
        who: &Identity,
        origin: Option<&Origin>,
        rules: &[Rule],
        name: &str,
    ) -> Result<(), TunnelError> {
        if self.aliases.keys().any(|(n, _)| n == name) {
            // An alias exists for whoever may use it; to anyone else it is
            // as any name policy keeps them from.
            let mine = self
                .allowed_aliases(who, origin, rules)
                .iter()
                .any(|n| n == name);
            return if mine {
                Ok(())
            } else {
                Err(TunnelError::NotAllowed)
            };
        }
        if !policy::could_reach_name(rules, who, origin, name) {
            return Err(TunnelError::NotAllowed);
        }
        resolve(name, 0).await.map(|_| ())
    }

    /// Resolves, checks policy and connects over TCP. The returned error is
    /// what the device's SOCKS client will be told.
    pub async fn dial(
        &self,
        who: &Identity,
        origin: Option<&Origin>,
        rules: &[Rule],
        dest: &Destination,
    ) -> Result<TcpStream, TunnelError> {
        let allowed = self.allowed(who, origin, rules, dest, Proto::Tcp).await?;
        let mut last = TunnelError::HostUnreachable;
        for to in allowed {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
                Ok(Ok(sock)) => {
                    let _ = sock.set_nodelay(true);
                    return Ok(sock);
                }
                Ok(Err(e)) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                        tracing::warn!(dest = %to, error = %e, "out of file descriptors: raise the gateway's open-file limit (ulimit -n / LimitNOFILE)");
                    }
                    last = TunnelError::from_io(&e);
                }
                Err(_) => last = TunnelError::TimedOut,
            }
        }
        Err(last)
    }
}

async fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, TunnelError> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<_> = addrs.collect();
            if addrs.is_empty() {
                Err(TunnelError::UnknownName)
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) if name_does_not_exist(&e) => Err(TunnelError::UnknownName),
        Ok(Err(_)) => Err(TunnelError::HostUnreachable),
        Err(_) => Err(TunnelError::TimedOut),
    }
}

/// Whether a failed lookup means the name does not exist (getaddrinfo's
/// EAI_NONAME or EAI_NODATA), not that the resolver could not be asked. std
/// keeps only getaddrinfo's message: glibc's and musl's texts for those two.
fn name_does_not_exist(e: &std::io::Error) -> bool {
    let text = e.to_string();
    [
        "Name or service not known",
        "No address associated with hostname",
        "Name does not resolve",
    ]
    .iter()
    .any(|m| text.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases() {
        let a: Alias = "intranet.internal:80=127.0.0.1:8080".parse().unwrap();
        assert_eq!(a.port, 80);
        assert_eq!(a.target, "127.0.0.1:8080".parse().unwrap());
        assert!("intranet.internal=127.0.0.1:8080".parse::<Alias>().is_err());
        assert!("x:80=nope".parse::<Alias>().is_err());
    }
}
