//! The gateway's data directory and its `gateway.toml`.
//!
//! ```text
//! DATA_DIR/
//!   ca.crt  ca.key (0600)          the CA
//!   server.crt  server.key (0600)  the gateway's TLS certificate (chain includes the CA)
//!   gateway.toml                   what `init` decided (listen, public address, names)
//!   registry.db                    the SQLite registry, unless DATABASE_URL names another
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shimgate_host::files;
use shimgate_wire::identity::VpnRange;

#[derive(Clone, Debug)]
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(root: PathBuf) -> DataDir {
        DataDir(root)
    }

    /// `$SHIMGATE_GATEWAY_DIR` is handled by clap; this is the fallback.
    pub fn default_root() -> PathBuf {
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("shimgate-gateway")
    }

    pub fn root(&self) -> &Path {
        &self.0
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.0.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.0.join("server.key")
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("gateway.toml")
    }
    /// The default registry: an SQLite file beside the CA.
    pub fn sqlite_registry(&self) -> PathBuf {
        self.0.join("registry.db")
    }
}

/// `gateway.toml`, written by `init`, read by every other command.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct GatewayConfig {
    /// Where `serve` listens (TLS).
    pub listen: SocketAddr,
    /// `host:port` devices use to reach the gateway; goes into enrollment codes.
    pub public_addr: String,
    /// SPIFFE trust domain of device identities.
    pub trust_domain: String,
    /// DNS names and IPs the server certificate carries.
    pub names: Vec<String>,
    #[serde(default)]
    pub ips: Vec<std::net::IpAddr>,
    /// Names the gateway resolves itself, e.g. an intranet app, each
    /// `NAME:PORT=IP:PORT`. An alias target counts as named explicitly by the
    /// operator, so it may be on loopback.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// DNS domain of the VPN's devices: bob is `bob.<vpn_domain>`.
    #[serde(default = "default_vpn_domain")]
    pub vpn_domain: String,
    /// Where devices' VPN addresses come from; one per deployment, claimed
    /// in the registry by the first gateway that starts.
    #[serde(default)]
    pub vpn_range: VpnRange,
}

fn default_vpn_domain() -> String {
    shimgate_wire::control::DEFAULT_VPN_DOMAIN.to_owned()
}

impl GatewayConfig {
    /// This gateway's name in the registry (`gateway list`, audit entries): the first name of
    /// its certificate (`init --name`), else its public address.
    pub fn name(&self) -> &str {
        self.names.first().unwrap_or(&self.public_addr)
    }

    /// A gateway on this machine only, dialled at `listen` (the demo, tests).
    pub fn local(listen: SocketAddr) -> GatewayConfig {
        GatewayConfig {
            listen,
            public_addr: listen.to_string(),
            trust_domain: "shimgate".into(),
            names: vec!["localhost".into()],
            ips: vec![listen.ip()],
            aliases: Vec::new(),
            vpn_domain: default_vpn_domain(),
            vpn_range: VpnRange::DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no gateway here: {0} is missing. Run `shimgate-gateway init --name HOSTNAME` first (or pass --data-dir)"
    )]
    NotInitialised(String),
    #[error(transparent)]
    File(files::TomlError),
}

impl GatewayConfig {
    pub fn load(dir: &DataDir) -> Result<GatewayConfig, ConfigError> {
        files::read_toml(&dir.config()).map_err(|e| match e {
            files::TomlError::Missing(path) => ConfigError::NotInitialised(path),
            other => ConfigError::File(other),
        })
    }

    pub fn save(&self, dir: &DataDir) -> std::io::Result<()> {
        files::write_toml(&dir.config(), self, files::PUBLIC)
    }
}
