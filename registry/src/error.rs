//! Error types: [`Error`] for every registry call, [`RedeemError`] for token redemption.

/// Why a registry call failed. Messages never contain secrets or connection URLs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed the operation.
    #[error("registry database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("registry migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database has a migration this build does not know: a newer release migrated it.
    #[error(
        "the registry's schema is newer than this program: its migration {applied} is unknown here \
         (this build knows migrations up to {known}); run the newer release, or upgrade this one"
    )]
    SchemaNewer { applied: i64, known: i64 },
    /// The named thing does not exist.
    #[error("{what} not found: {name}")]
    NotFound { what: &'static str, name: String },
    /// A caller-supplied value is unacceptable.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// The operation would duplicate something that must be unique.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The device is revoked, so the operation is refused.
    #[error("device {0} is revoked")]
    DeviceRevoked(String),
    /// Every address in the VPN range is taken.
    #[error("no free VPN address left in {0} (the VPN range chosen at init)")]
    AddressPoolExhausted(shimgate_wire::identity::VpnRange),
    /// A stored value could not be read back (the database was edited by hand or is damaged).
    #[error("corrupt registry data: {0}")]
    Corrupt(String),
    /// The Postgres change listener lost its connection; notifications may have been missed.
    /// Reload everything; calling `Changes::next` again reconnects.
    #[error("the registry change listener lost its connection; changes may have been missed")]
    ListenerLost,
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(what: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            name: name.into(),
        }
    }

    /// True if this is a database unique-constraint violation.
    pub(crate) fn is_unique_violation(&self) -> bool {
        matches!(self, Error::Db(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// Shorthand for registry results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an enrollment token could not be redeemed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// No such token, or the secret does not match (deliberately indistinguishable).
    #[error("unknown enrollment token")]
    Unknown,
    /// The token is past its expiry time.
    #[error("enrollment token expired")]
    Expired,
    /// Every use of the token has been consumed.
    #[error("enrollment token already used up")]
    UsedUp,
    /// An administrator cancelled the token.
    #[error("enrollment token cancelled")]
    Cancelled,
    /// The registry itself failed.
    #[error(transparent)]
    Db(#[from] Error),
}

impl From<sqlx::Error> for RedeemError {
    fn from(e: sqlx::Error) -> Self {
        RedeemError::Db(Error::Db(e))
    }
}
