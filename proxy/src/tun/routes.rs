//! The routes TUN mode adds: the networks policy routes to this device
//! (`GET /v1/routes`, as the PAC file has them), through the interface,
//! kept current as policy changes. The VPN range needs none of its own: it
//! is the prefix of the interface's address.
//!
//! Safety first: a network holding a gateway's address is never routed
//! into the interface (the tunnels would loop into themselves), and one
//! that overlaps a network this machine is attached to is refused, naming
//! both, unless `--allow-overlap`. Every route names the interface, so it
//! goes with the interface when `up` exits or is killed.
//!
//! Routes are set with iproute2's `ip`, which every Linux this runs on has.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(
        "cannot run `{command}`: {source} (TUN mode needs iproute2's `ip`, and systemd's `resolvectl` for --dns resolved)"
    )]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// Runs `ip ARGS`, returning its standard output.
pub async fn ip(args: &[&str]) -> Result<String, RouteError> {
    ip_like("ip", args).await
}

/// Runs a network tool (`ip`, `resolvectl`) with `args`, returning its
/// standard output.
pub async fn ip_like(program: &str, args: &[&str]) -> Result<String, RouteError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|source| RouteError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(RouteError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network this machine is attached to, and the interface it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub net: IpNet,
    pub dev: String,
}

/// The networks of this machine's interfaces (the kernel's own link
/// routes), except those of `ours`.
pub async fn attached(ours: &str) -> Result<Vec<Attached>, RouteError> {
    let mut nets = Vec::new();
    for family in ["-4", "-6"] {
        let json = ip(&[
            "-j", family, "route", "show", "table", "main", "proto", "kernel",
        ])
        .await?;
        let routes: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
        for r in routes {
            let (Some(dst), Some(dev)) = (r["dst"].as_str(), r["dev"].as_str()) else {
                continue;
            };
            if dev == ours {
                continue;
            }
            // A bare address is a /32 or /128.
            let net = dst
                .parse::<IpNet>()
                .or_else(|_| dst.parse::<IpAddr>().map(IpNet::from));
            if let Ok(net) = net {
                nets.push(Attached {
                    net,
                    dev: dev.to_owned(),
                });
            }
        }
    }
    Ok(nets)
}

/// Whether two networks share an address.
pub fn overlap(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Which of the routed networks `cidrs` to route into the interface, and a
/// sentence for each one left out.
pub fn plan(
    cidrs: &[String],
    gateways: &[IpAddr],
    attached: &[Attached],
    allow_overlap: bool,
) -> (BTreeSet<IpNet>, Vec<String>) {
    let mut routes = BTreeSet::new();
    let mut skipped = Vec::new();
    for cidr in cidrs {
        let Ok(net) = cidr.parse::<IpNet>() else {
            skipped.push(format!("{cidr}: not a network"));
            continue;
        };
        let net = net.trunc();
        if let Some(gw) = gateways.iter().find(|g| net.contains(*g)) {
            skipped.push(format!(
                "{net}: not routed into the TUN interface, it holds the gateway's address {gw} (the tunnels would loop)"
            ));
            continue;
        }
        if !allow_overlap && let Some(a) = attached.iter().find(|a| overlap(a.net, net)) {
            skipped.push(format!(
                "{net}: not routed into the TUN interface, it overlaps {} on {} that this machine is attached to (--allow-overlap takes it anyway)",
                a.net, a.dev
            ));
            continue;
        }
        routes.insert(net);
    }
    (routes, skipped)
}

/// The routes this process added through interface `dev`.
pub struct Installed {
    dev: String,
    routes: BTreeSet<IpNet>,
    /// Routes that could not be added, told once each.
    told: BTreeSet<IpNet>,
}

impl Installed {
    pub fn new(dev: &str) -> Installed {
        Installed {
            dev: dev.to_owned(),
            routes: BTreeSet::new(),
            told: BTreeSet::new(),
        }
    }

    pub fn routes(&self) -> &BTreeSet<IpNet> {
        &self.routes
    }

    /// Adds what is wanted and not there, removes what is there and no
    /// longer wanted. A route that cannot be added is reported and left out.
    pub async fn sync(&mut self, want: &BTreeSet<IpNet>) {
        for gone in self.routes.difference(want).copied().collect::<Vec<_>>() {
            let net = gone.to_string();
            match ip(&["route", "del", &net, "dev", &self.dev]).await {
                Ok(_) => tracing::info!(route = %net, dev = %self.dev, "route removed"),
                Err(e) => tracing::warn!(route = %net, error = %e, "cannot remove route"),
            }
            self.routes.remove(&gone);
        }
        for new in want.difference(&self.routes).copied().collect::<Vec<_>>() {
            let net = new.to_string();
            // `add`, not `replace`: a route this machine already has for the
            // same network (static, DHCP) is left alone and reported.
            match ip(&["route", "add", &net, "dev", &self.dev]).await {
                Ok(_) => {
                    tracing::info!(route = %net, dev = %self.dev, "route added");
                    self.routes.insert(new);
                }
                Err(e) => {
                    if self.told.insert(new) {
                        tracing::warn!(route = %net, error = %e, "cannot add route");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(net: &str, dev: &str) -> Attached {
        Attached {
            net: net.parse().unwrap(),
            dev: dev.into(),
        }
    }

    #[test]
    fn gateway_and_attached_networks_are_not_routed() {
        let cidrs = [
            "10.20.0.0/16",
            "203.0.113.0/24",
            "198.51.100.0/25",
            "2001:db8::/32",
            "nonsense",
        ]
        .map(String::from);
        let gw: IpAddr = "203.0.113.1".parse().unwrap();
        let lan = [attached("198.51.100.0/24", "eth0")];
        let (routes, skipped) = plan(&cidrs, &[gw], &lan, false);
        let routes: Vec<String> = routes.iter().map(|n| n.to_string()).collect();
        assert_eq!(routes, ["10.20.0.0/16", "2001:db8::/32"]);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].contains("203.0.113.1"), "{skipped:?}");
        assert!(
            skipped[1].contains("198.51.100.0/25")
                && skipped[1].contains("198.51.100.0/24 on eth0"),
            "{skipped:?}"
        );
        // --allow-overlap takes the overlapping one, never the gateway's
        let (routes, _) = plan(&cidrs, &[gw], &lan, true);
        assert!(routes.contains(&"198.51.100.0/25".parse().unwrap()));
        assert!(!routes.iter().any(|n| n.contains(&gw)));
    }
}
