//! The shimgate binaries' command lines, thin layers over the libraries:
//! parse arguments, call the library, print what a person needs to read.
//!
//! - [`device`]: `shimgate` (enroll, up, status, export, peers, ping), over
//!   `shimgate-proxy`.
//! - [`gateway`]: `shimgate-gateway` (init, serve, the admin commands that
//!   work on the registry directly), over `shimgate-gateway`.
//! - [`demo`]: `shimgate-gateway demo`, the whole system in one process; it
//!   needs both sides, which is why it lives here and not in either library.
//! - [`process`]: what both binaries do around their command: logging, the
//!   runtime, the allocator and open-file limits, signals, the last error.

pub mod demo;
pub mod device;
pub mod gateway;
pub mod process;
