//! Checks on caller-supplied names and hex strings before they reach the database.

use crate::{Error, Result};

/// Longest user, group or device name accepted.
pub(crate) const MAX_NAME_CHARS: usize = 64;

/// A user, group or device name: 1 to 64 characters, no control characters, no leading or
/// trailing whitespace.
pub(crate) fn name(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(
            what,
            format!("longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid(what, "contains control characters"));
    }
    if s.trim() != s {
        return Err(Error::invalid(what, "has leading or trailing whitespace"));
    }
    Ok(())
}

/// A lowercase hex string of exactly `len` characters (`None`: any non-zero even length up to
/// 128). Uppercase input is accepted and lowercased.
pub(crate) fn hex(what: &'static str, s: &str, len: Option<usize>) -> Result<String> {
    let lower = s.to_ascii_lowercase();
    if !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(what, "not hexadecimal"));
    }
    match len {
        Some(n) if lower.len() != n => Err(Error::invalid(
            what,
            format!("expected {n} hex digits, got {}", lower.len()),
        )),
        None if lower.is_empty() || lower.len() > 128 || !lower.len().is_multiple_of(2) => Err(
            Error::invalid(what, "expected an even number (2 to 128) of hex digits"),
        ),
        _ => Ok(lower),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("user name", "alice").is_ok());
        assert!(name("user name", "Alice's laptop").is_ok());
        assert!(name("user name", "").is_err());
        assert!(name("user name", " alice").is_err());
        assert!(name("user name", "a\nb").is_err());
        assert!(name("user name", &"x".repeat(65)).is_err());
        assert!(name("user name", &"é".repeat(64)).is_ok());
    }

    #[test]
    fn hexes() {
        assert_eq!(hex("serial", "AbCd", None).ok().as_deref(), Some("abcd"));
        assert!(hex("serial", "abc", None).is_err());
        assert!(hex("serial", "", None).is_err());
        assert!(hex("serial", "zz", None).is_err());
        assert!(hex("fingerprint", &"a".repeat(64), Some(64)).is_ok());
        assert!(hex("fingerprint", &"a".repeat(62), Some(64)).is_err());
    }
}
