//! What a shimgate process needs from the machine it runs on, as opposed to
//! what crosses the wire (`shimgate-wire`): used by the gateway, the device
//! side and the registry alike.
//!
//! - [`clock`]: unix time, how it is shown, durations as people type them.
//! - [`files`]: keys, certificates and configuration written atomically with
//!   the right mode (0600 for secrets), and read back.
//! - [`workers`]: thread-per-core runtimes for the data plane.
//! - [`resolvers`]: the machine's DNS resolvers, and asking them.

pub mod clock;
pub mod files;
pub mod resolvers;
pub mod workers;
