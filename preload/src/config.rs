//! What `shimgate run` put in this process's environment: where `up`'s shim
//! socket is and which destinations go through the VPN. Read once.

use std::ffi::CString;
use std::sync::OnceLock;

use crate::proto::{Reply, SOCKET_ENV, SPLIT_ENV, Split};

pub struct Config {
    pub socket: CString,
    pub split: Split,
}

static CONFIG: OnceLock<Option<Config>> = OnceLock::new();

/// `None` when this library was loaded without `shimgate run` (then it
/// passes every call through).
pub fn get() -> Option<&'static Config> {
    CONFIG
        .get_or_init(|| {
            let socket = std::env::var_os(SOCKET_ENV)?;
            let split = std::env::var(SPLIT_ENV).ok()?;
            let Ok(Reply::Split(split)) = Reply::parse(&split) else {
                return None;
            };
            Some(Config {
                socket: CString::new(std::os::unix::ffi::OsStringExt::into_vec(socket)).ok()?,
                split,
            })
        })
        .as_ref()
}
