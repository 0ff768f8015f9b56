//! The device's config directory and `config.toml`.
//!
//! ```text
//! CONFIG_DIR/
//!   config.toml     gateway address, device name, SOCKS listen address (written by enroll)
//!   device.key      the device's private key (0600; never leaves the device)
//!   device.crt      its certificate, signed by the gateway's CA
//!   ca.crt          the gateway's CA (pinned at enrollment)
//!   status.json     written by `shimgate up`, read by `shimgate status`
//!   peers.json      written by `shimgate up`, read by `shimgate peers`
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shimgate_host::files;
use shimgate_wire::control::{Exports, PeerProto};
use shimgate_wire::identity::VpnRange;

#[derive(Clone, Debug)]
pub struct ConfigDir(PathBuf);

impl ConfigDir {
    pub fn new(root: PathBuf) -> ConfigDir {
        ConfigDir(root)
    }

    pub fn default_root() -> PathBuf {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("shimgate")
    }

    pub fn root(&self) -> &Path {
        &self.0
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
    pub fn key(&self) -> PathBuf {
        self.0.join("device.key")
    }
    pub fn cert(&self) -> PathBuf {
        self.0.join("device.crt")
    }
    pub fn ca(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
    /// Replaces the device key and certificate as one (a renewal): a crash
    /// part way leaves the old pair or the new, never a mismatch.
    pub fn replace_identity(&self, key_pem: &[u8], cert_pem: &[u8]) -> std::io::Result<()> {
        let (key, cert) = (self.key(), self.cert());
        files::replace_together(&[
            (&key, key_pem, files::SECRET),
            (&cert, cert_pem, files::PUBLIC),
        ])
    }
    /// Completes (or abandons) a [`ConfigDir::replace_identity`] that a crash
    /// interrupted; before the key and certificate are read.
    pub fn finish_replacing_identity(&self) -> std::io::Result<()> {
        files::finish_replace(&[&self.key(), &self.cert()])
    }
    pub fn status(&self) -> PathBuf {
        self.0.join("status.json")
    }
    pub fn peers(&self) -> PathBuf {
        self.0.join("peers.json")
    }
    /// Where `up` listens for the socket shim (`shimgate run`).
    pub fn shim_socket(&self) -> PathBuf {
        self.0.join(shimgate_wire::shimsock::SOCKET_FILE)
    }
    /// The names the socket shim handed out fake addresses for.
    pub fn fake_addresses(&self) -> PathBuf {
        self.0.join("fake-addresses")
    }
    /// The resolv.conf TUN mode rewrote, kept until it is put back.
    pub fn resolv_backup(&self) -> PathBuf {
        self.0.join("resolv.conf.before-tun")
    }
}

pub const DEFAULT_POOL: usize = 2;

/// `127.0.0.1:1080`, where SOCKS clients look first.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1080))
}

fn default_pool() -> usize {
    DEFAULT_POOL
}

/// `config.toml`. Command-line flags override it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DeviceConfig {
    /// The gateway, `host:port`.
    pub gateway: String,
    /// The name the gateway's certificate must carry (the host part of `gateway` by default).
    pub server_name: String,
    /// This device's name, as the gateway registered it.
    pub device: String,
    pub user: String,
    pub vpn_ip: String,
    /// SOCKS5 listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Connections to the gateway (tunnels are spread over them).
    #[serde(default = "default_pool")]
    pub pool: usize,
    /// SOCKS5 username/password; required to listen on a non-loopback address.
    #[serde(default)]
    pub socks_user: Option<String>,
    #[serde(default)]
    pub socks_password: Option<String>,
    /// Where other devices reach this one for peer-to-peer sessions (TCP).
    /// Port 0 picks a free port; the gateway tells peers which.
    #[serde(default = "default_peer_listen")]
    pub peer_listen: SocketAddr,
    /// Extra addresses to announce for the peer listener (e.g. a port
    /// forwarded on a NAT router).
    #[serde(default)]
    pub peer_advertise: Vec<SocketAddr>,
    /// DNS domain of the VPN's devices: `bob.<vpn_domain>` is a peer.
    #[serde(default = "default_vpn_domain")]
    pub vpn_domain: String,
    /// The deployment's VPN range: an address in it is a peer's. Given by
    /// the gateway at enrollment.
    #[serde(default)]
    pub vpn_range: VpnRange,
    /// Local services offered to other devices, each reached at 127.0.0.1:PORT.
    #[serde(default, rename = "export")]
    pub exports: Vec<Export>,
    /// TUN mode: every program on the machine on the VPN (`up --tun`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tun: bool,
    /// The TUN interface's name.
    #[serde(default = "default_tun_name")]
    pub tun_name: String,
    /// In TUN mode, route networks that overlap ones this machine is
    /// attached to (and a VPN range that does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tun_allow_overlap: bool,
    /// In TUN mode, how the DNS responder is wired into the system resolver.
    #[serde(default, with = "dns_mode")]
    pub tun_dns: crate::tun::resolver::DnsMode,
}

/// `tun_dns` in config.toml: `auto`, `resolved`, `resolv-conf` or `off`.
mod dns_mode {
    use crate::tun::resolver::DnsMode;

    pub fn serialize<S: serde::Serializer>(m: &DnsMode, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(m)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DnsMode, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

pub fn default_tun_name() -> String {
    crate::tun::DEFAULT_NAME.to_owned()
}

/// One `[[export]]` entry: `port = 8000`, and `proto = "udp"` for a UDP
/// service (TCP when absent).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    pub port: u16,
    #[serde(default, skip_serializing_if = "PeerProto::is_tcp")]
    pub proto: PeerProto,
}

impl std::str::FromStr for Export {
    type Err = String;

    /// `8000` (TCP), `8000/tcp` or `5353/udp`.
    fn from_str(s: &str) -> Result<Export, String> {
        let (port, proto) = match s.split_once('/') {
            None => (s, PeerProto::Tcp),
            Some((port, "tcp")) => (port, PeerProto::Tcp),
            Some((port, "udp")) => (port, PeerProto::Udp),
            Some(_) => return Err(format!("{s:?}: the protocol after '/' is tcp or udp")),
        };
        match port.parse::<u16>() {
            Ok(0) => Err("port 0 cannot be exported: give the port your service listens on".into()),
            Ok(port) => Ok(Export { port, proto }),
            Err(_) => Err(format!(
                "{s:?} is not PORT or PORT/udp (e.g. 8000, 5353/udp)"
            )),
        }
    }
}

impl std::fmt::Display for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.proto)
    }
}

pub fn default_peer_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

pub fn default_vpn_domain() -> String {
    shimgate_wire::control::DEFAULT_VPN_DOMAIN.to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "this device is not enrolled: {0} is missing. Run `shimgate enroll CODE` first (or pass --config-dir)"
    )]
    NotEnrolled(String),
    #[error(transparent)]
    File(files::TomlError),
}

impl DeviceConfig {
    pub fn load(dir: &ConfigDir) -> Result<DeviceConfig, ConfigError> {
        files::read_toml(&dir.config()).map_err(|e| match e {
            files::TomlError::Missing(path) => ConfigError::NotEnrolled(path),
            other => ConfigError::File(other),
        })
    }

    /// The exported ports by transport, sorted, without duplicates or 0.
    pub fn export_ports(&self) -> Exports {
        let of = |proto: PeerProto| {
            let mut ports: Vec<u16> = self
                .exports
                .iter()
                .filter(|e| e.proto == proto && e.port != 0)
                .map(|e| e.port)
                .collect();
            ports.sort_unstable();
            ports.dedup();
            ports
        };
        Exports {
            tcp: of(PeerProto::Tcp),
            udp: of(PeerProto::Udp),
        }
    }

    /// Written 0600: it may hold the SOCKS password.
    pub fn save(&self, dir: &ConfigDir) -> std::io::Result<()> {
        files::write_toml(&dir.config(), self, files::SECRET)
    }
}
