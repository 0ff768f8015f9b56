//! End-to-end tests of shimgate: real `shimgate-gateway` and `shimgate`
//! processes (built by `cargo build --workspace`, found in the target dir or
//! `$SHIMGATE_BIN_DIR`), origin servers and a SOCKS5 client in this process,
//! curl, Postgres (`DATABASE_URL`) or SQLite registries, and network
//! namespaces (root). `tests/run.sh` sets all of this up.
//!
//! Environment: `DATABASE_URL` (Postgres variants), `SHIMGATE_BIN_DIR`,
//! `SHIMGATE_SKIP_NETNS=1` (skip namespace tests when not root),
//! `SHIMGATE_KEEP_TMP=1` (keep data dirs and databases for a post-mortem).

/// Runs a test body `fn NAME(Backend)` once on SQLite and once on Postgres,
/// as tests `NAME::sqlite` and `NAME::postgres`.
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::harness::Backend::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name($crate::harness::Backend::Postgres)
            }
        }
    };
}

mod harness;

mod abuse;
mod browser;
mod cli_contract;
mod clients;
mod compose;
mod console;
mod demo;
mod enrollment;
mod faults;
mod gateways;
mod multihost;
mod peer;
mod policy;
mod proxy;
mod restart;
mod revoke;
mod shim;
mod socks_protocol;
mod status;
mod tun;
pub(crate) mod udp;
