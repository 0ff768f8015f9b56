//! The device's config directory and `config.toml`.
//!
//! ```text
//! CONFIG_DIR/
//!   config.toml     gateway address, device name, SOCKS listen address (written by enroll)
//!   device.key      the device's private key (0600; never leaves the device)
//!   device.crt      its certificate, signed by the gateway's CA
//!   ca.crt          the gateway's CA (pinned at enrollment)
//!   status.json     written by `shimgate up`, read by `shimgate status`
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shimgate_wire::files;

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
    pub fn status(&self) -> PathBuf {
        self.0.join("status.json")
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

    /// Written 0600: it may hold the SOCKS password.
    pub fn save(&self, dir: &ConfigDir) -> std::io::Result<()> {
        files::write_toml(&dir.config(), self, files::SECRET)
    }
}
