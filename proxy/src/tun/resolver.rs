//! Wiring TUN mode's DNS responder into the system resolver, and taking it
//! out again.
//!
//! - `resolved`: systemd-resolved's per-link DNS server and routing domains
//!   (`resolvectl dns|domain shimgate0 ...`): only the VPN's names come to
//!   the responder; resolved forgets them with the interface.
//! - `resolv-conf`: for machines and containers without it: /etc/resolv.conf
//!   is rewritten in place (a container's is often a bind mount, which a
//!   rename would not reach), its nameserver lines replaced by the
//!   responder and every other line kept; the original is saved first in
//!   the config dir and written back on exit, or by the next start after a
//!   crash.
//! - `off`: nothing is touched; the responder still answers whoever asks it.
//!
//! The responder sends names outside the VPN to the resolvers the machine
//! had before ([`upstream`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use shimgate_host::resolvers::{self, RESOLV_CONF};

use super::routes;

/// Where the system resolver's configuration is.
/// The line that marks a resolv.conf as ours.
const MARK: &str = "# shimgate up --tun: the VPN's DNS responder; the original is restored on exit";

/// How the responder is wired in (`up --dns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsMode {
    /// `resolved` where systemd-resolved runs, else `resolv-conf`.
    #[default]
    Auto,
    Resolved,
    ResolvConf,
    Off,
}

impl std::str::FromStr for DnsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<DnsMode, String> {
        match s {
            "auto" => Ok(DnsMode::Auto),
            "resolved" => Ok(DnsMode::Resolved),
            "resolv-conf" => Ok(DnsMode::ResolvConf),
            "off" => Ok(DnsMode::Off),
            other => Err(format!(
                "{other:?}: --dns is auto, resolved, resolv-conf or off"
            )),
        }
    }
}

impl std::fmt::Display for DnsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DnsMode::Auto => "auto",
            DnsMode::Resolved => "resolved",
            DnsMode::ResolvConf => "resolv-conf",
            DnsMode::Off => "off",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("cannot {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("telling systemd-resolved about the VPN's DNS: {0}")]
    Resolved(routes::RouteError),
    #[error(
        "/etc/resolv.conf is a symbolic link (managed by systemd-resolved, NetworkManager or resolvconf), which --dns resolv-conf will not write through: use --dns resolved, or --dns off and point the resolver at {0} yourself"
    )]
    Managed(Ipv4Addr),
    #[error("{0} is not a regular file this user owns: not used as resolv.conf's backup")]
    NotOurs(String),
}

/// The wiring in place; dropping it undoes it.
pub struct Wired {
    pub mode: DnsMode,
    /// The saved resolv.conf, for `resolv-conf`.
    backup: Option<PathBuf>,
}

impl Drop for Wired {
    fn drop(&mut self) {
        if let Some(backup) = &self.backup {
            match restore(backup) {
                Ok(()) => tracing::info!("/etc/resolv.conf restored"),
                Err(e) => tracing::error!(error = %e, "cannot restore /etc/resolv.conf"),
            }
        }
    }
}

/// Whether systemd-resolved runs here.
fn resolved_runs() -> bool {
    Path::new("/run/systemd/resolve/io.systemd.Resolve").exists()
}

/// Puts back a resolv.conf a crashed `up` left rewritten, if `backup`
/// holds one. A failure is told, never fatal: it must not keep TUN mode
/// from starting for good.
pub fn recover(backup: &Path) {
    if backup.symlink_metadata().is_err() {
        return;
    }
    match restore(backup) {
        Ok(()) => {
            tracing::warn!(backup = %backup.display(), "restored /etc/resolv.conf left rewritten by an earlier `up --tun` that did not exit cleanly")
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot restore /etc/resolv.conf from an earlier `up --tun`")
        }
    }
}

/// Opens `path` without following a symbolic link, as a regular file this
/// user owns: the backup lives in a config directory another user may
/// control, and root must neither write through a planted link nor copy a
/// planted file into /etc.
fn open_own(
    path: &Path,
    options: &mut std::fs::OpenOptions,
) -> Result<std::fs::File, ResolverError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let not_ours = || ResolverError::NotOurs(path.display().to_string());
    let file = options
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|_| not_ours())?;
    let meta = file.metadata().map_err(|_| not_ours())?;
    // SAFETY: geteuid has no preconditions.
    if !meta.is_file() || meta.uid() != unsafe { libc::geteuid() } {
        return Err(not_ours());
    }
    Ok(file)
}

fn save_backup(path: &Path, original: &str) -> Result<(), ResolverError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = open_own(
        path,
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600),
    )?;
    file.write_all(original.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| ResolverError::File {
            what: "save",
            path: path.display().to_string(),
            source,
        })
}

fn restore(backup: &Path) -> Result<(), ResolverError> {
    use std::io::Read;
    let mut original = Vec::new();
    open_own(backup, std::fs::OpenOptions::new().read(true))?
        .read_to_end(&mut original)
        .map_err(|source| ResolverError::File {
            what: "read",
            path: backup.display().to_string(),
            source,
        })?;
    std::fs::write(RESOLV_CONF, original).map_err(|source| ResolverError::File {
        what: "write",
        path: RESOLV_CONF.into(),
        source,
    })?;
    std::fs::remove_file(backup).map_err(|source| ResolverError::File {
        what: "remove",
        path: backup.display().to_string(),
        source,
    })
}

/// The resolvers this machine had: resolv.conf's nameservers, except the
/// responder itself.
pub fn upstream(responder: Ipv4Addr) -> Vec<SocketAddr> {
    resolvers::system()
        .into_iter()
        .filter(|s| s.ip() != IpAddr::V4(responder))
        .collect()
}

/// resolv.conf with its nameservers replaced by `responder`, other lines kept.
fn rewritten(original: &str, responder: Ipv4Addr) -> String {
    let mut out = format!("{MARK}\nnameserver {responder}\n");
    for line in original.lines() {
        if line.trim_start().starts_with("nameserver") || line == MARK {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Tells systemd-resolved which names go to the responder on `dev` (as
/// routing-only domains: `~corp.example`); again whenever policy's domains
/// change.
pub async fn set_domains(dev: &str, domains: &[String]) -> Result<(), routes::RouteError> {
    let mut args = vec!["domain".to_owned(), dev.to_owned()];
    args.extend(domains.iter().map(|d| format!("~{d}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    routes::ip_like("resolvectl", &args).await.map(|_| ())
}

/// Wires the responder at `responder` in for names under `domains`.
pub async fn wire(
    mode: DnsMode,
    dev: &str,
    responder: Ipv4Addr,
    domains: &[String],
    backup: &Path,
) -> Result<Wired, ResolverError> {
    let managed = Path::new(RESOLV_CONF)
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink());
    let mode = match mode {
        DnsMode::Auto if resolved_runs() => DnsMode::Resolved,
        DnsMode::Auto if managed => {
            tracing::warn!(
                "/etc/resolv.conf is a symbolic link managed by another program and systemd-resolved does not run: VPN names are not wired in (--dns off); point the resolver at {responder} to have them"
            );
            DnsMode::Off
        }
        DnsMode::Auto => DnsMode::ResolvConf,
        DnsMode::ResolvConf if managed => return Err(ResolverError::Managed(responder)),
        other => other,
    };
    match mode {
        DnsMode::Resolved => {
            let addr = responder.to_string();
            routes::ip_like("resolvectl", &["dns", dev, &addr])
                .await
                .map_err(ResolverError::Resolved)?;
            set_domains(dev, domains)
                .await
                .map_err(ResolverError::Resolved)?;
            Ok(Wired { mode, backup: None })
        }
        DnsMode::ResolvConf => {
            let original =
                std::fs::read_to_string(RESOLV_CONF).map_err(|source| ResolverError::File {
                    what: "read",
                    path: RESOLV_CONF.into(),
                    source,
                })?;
            save_backup(backup, &original)?;
            if let Err(source) = std::fs::write(RESOLV_CONF, rewritten(&original, responder)) {
                // Put back whatever part of it was written; where even
                // that fails the backup stays for the next start (whose
                // recovery only warns).
                let _ = restore(backup);
                return Err(ResolverError::File {
                    what: "rewrite",
                    path: RESOLV_CONF.into(),
                    source,
                });
            }
            Ok(Wired {
                mode,
                backup: Some(backup.to_owned()),
            })
        }
        DnsMode::Auto | DnsMode::Off => Ok(Wired {
            mode: DnsMode::Off,
            backup: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_replaced_and_the_rest_kept() {
        let original = "# from DHCP\nsearch corp.example\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions edns0\n";
        let ours = Ipv4Addr::new(100, 127, 255, 254);
        let text = rewritten(original, ours);
        assert_eq!(resolvers::nameservers(&text), [IpAddr::V4(ours)]);
        for kept in ["# from DHCP", "search corp.example", "options edns0"] {
            assert!(text.contains(kept), "{kept} lost:\n{text}");
        }
        // rewriting ours again does not stack marks
        assert_eq!(rewritten(&text, ours), text);
        assert_eq!(resolvers::nameservers(original).len(), 2);
    }
}
