//! The secret record that enrollment tokens, invitations and API tokens share: a random public
//! id (16 bytes, stored and listed as lowercase hex in the `id` column) and a random secret
//! (32 bytes) of which the registry stores only the SHA-256 (the `secret_sha256` column). The
//! secret exists in clear only in what issuing returns, shown once; it is never printed (`Debug`
//! says `<redacted>`) and is checked against the stored hash in constant time.
//!
//! What differs stays with each record: its text form (the enrollment code in
//! `shimgate_wire::code`, the invitation link the console builds, the `sga_` bearer string),
//! its lifetime (expiry, uses, cancellation or revocation) and how a refusal is reported.

use std::fmt;

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use subtle::ConstantTimeEq;

use crate::Result;

/// A record's public id.
pub(crate) type Id = [u8; 16];
/// A record's secret, in clear.
pub(crate) type Secret = [u8; 32];

/// The column that holds the secret's hash, in every table of secret records.
const HASH_COLUMN: &str = "secret_sha256";

/// A freshly generated id and secret, before they are stored.
#[derive(Clone)]
pub(crate) struct Credential {
    pub(crate) id: Id,
    pub(crate) secret: Secret,
}

impl Credential {
    /// A random id and a random secret.
    pub(crate) fn generate() -> Self {
        Self {
            id: rand::random(),
            secret: rand::random(),
        }
    }

    /// The id as stored and listed.
    pub(crate) fn id_hex(&self) -> String {
        id_hex(&self.id)
    }

    /// What the `secret_sha256` column stores.
    pub(crate) fn stored_hash(&self) -> Vec<u8> {
        hash(&self.secret).to_vec()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_struct(f, "Credential", &self.id).finish()
    }
}

/// An id as stored and listed: lowercase hex.
pub(crate) fn id_hex(id: &Id) -> String {
    hex::encode(id)
}

fn hash(secret: &Secret) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Whether `secret` is the one whose hash `stored` is, compared in constant time.
fn verify(stored: &[u8], secret: &Secret) -> bool {
    bool::from(stored.ct_eq(&hash(secret)))
}

/// Whether `secret` is the one whose hash `row`'s `secret_sha256` column holds, compared in
/// constant time.
pub(crate) fn matches(row: &AnyRow, secret: &Secret) -> Result<bool> {
    let stored: Vec<u8> = row.try_get(HASH_COLUMN)?;
    Ok(verify(&stored, secret))
}

/// The start of an issued record's `Debug` form: its id in hex and the secret `<redacted>`;
/// the caller adds the record's other fields and finishes it.
pub(crate) fn debug_struct<'a, 'b>(
    f: &'a mut fmt::Formatter<'b>,
    name: &str,
    id: &Id,
) -> fmt::DebugStruct<'a, 'b> {
    let mut d = f.debug_struct(name);
    d.field("id", &id_hex(id)).field("secret", &"<redacted>");
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_the_sha256_and_checks_it() {
        let c = Credential::generate();
        assert_eq!(c.stored_hash(), Sha256::digest(c.secret).to_vec());
        assert_ne!(c.stored_hash(), c.secret.to_vec());
        assert!(verify(&c.stored_hash(), &c.secret));
        let mut wrong = c.secret;
        wrong[0] ^= 1;
        assert!(!verify(&c.stored_hash(), &wrong));
        assert!(!verify(&c.stored_hash()[..31], &c.secret));
        assert!(!verify(&[], &c.secret));
    }

    #[test]
    fn random_and_never_printed() {
        let (a, b) = (Credential::generate(), Credential::generate());
        assert_ne!(a.id, b.id);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.id_hex(), hex::encode(a.id));
        let shown = format!("{a:?}");
        assert!(shown.contains(&a.id_hex()), "{shown}");
        assert!(!shown.contains(&hex::encode(a.secret)), "{shown}");
    }
}
