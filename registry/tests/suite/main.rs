//! The registry test suite. Every test is written once and runs against both backends:
//! SQLite in a temporary directory, and Postgres in a fresh database created through
//! `DATABASE_URL` (and dropped afterwards). Without `DATABASE_URL` the Postgres half fails,
//! unless `SHIMGATE_SKIP_POSTGRES=1` says to skip it.
//!
//! One test binary; a module per registry module it tests (`tokens`, `devices`, ...), the
//! shared setup in `harness`.

mod harness;

mod admins;
mod api_tokens;
mod audit;
mod certs;
mod connect;
mod console_state;
mod devices;
mod invitations;
mod rules;
mod tokens;
mod users;
