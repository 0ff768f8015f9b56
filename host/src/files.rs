//! Writing files that must never be seen half-written or by other users.
//!
//! Keys and certificates are written to a temporary file in the same
//! directory (created with its final mode, so a secret is never briefly
//! world-readable), fsynced, then renamed over the target, and the directory
//! is fsynced. A full disk or read-only directory leaves the old file intact.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode for private keys and anything else only the owner may read.
pub const SECRET: u32 = 0o600;
/// Mode for certificates and configuration.
pub const PUBLIC: u32 = 0o644;

/// Writes `contents` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        // A leftover temp file (a crash) would keep its old mode, and a
        // planted symlink would redirect the write: start from nothing.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replaces several files as one (a key and its certificate): after a crash
/// at any point, [`finish_replace`] leaves all old or all new contents.
/// Each file is first written in full beside its target as `NAME.next`; the
/// last one written is the commit mark: once it exists, all are complete,
/// and they are renamed over their targets in order, the last one last.
pub fn replace_together(files: &[(&Path, &[u8], u32)]) -> io::Result<()> {
    for (path, contents, mode) in files {
        write_atomic(&next(path), contents, *mode)?;
    }
    let paths: Vec<&Path> = files.iter().map(|f| f.0).collect();
    finish_replace(&paths)
}

/// Completes a [`replace_together`] of `paths` that a crash interrupted
/// (its commit mark exists), or abandons one that had not been committed.
/// Does nothing when none was under way.
pub fn finish_replace(paths: &[&Path]) -> io::Result<()> {
    let Some(last) = paths.last() else {
        return Ok(());
    };
    let committed = next(last).exists();
    for path in paths {
        let pending = next(path);
        let done = if committed {
            fs::rename(&pending, path)
        } else {
            fs::remove_file(&pending)
        };
        match done {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match last.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Where [`replace_together`] puts the new contents of `path` first.
fn next(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".next");
    name.into()
}

/// Whether this process may create files in `dir` (the error says why not:
/// a read-only file system, a permission).
pub fn check_writable(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: access(2) reads a NUL-terminated path and nothing else.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Why a TOML file could not be read. `Missing` is separate so callers can
/// say what creates the file.
#[derive(Debug, thiserror::Error)]
pub enum TomlError {
    #[error("{0} is missing")]
    Missing(String),
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is not valid: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TomlError> {
    let shown = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TomlError::Missing(shown.clone()),
        _ => TomlError::Read {
            path: shown.clone(),
            source,
        },
    })?;
    toml::from_str(&text).map_err(|source| TomlError::Parse {
        path: shown,
        source,
    })
}

pub fn write_toml<T: serde::Serialize>(path: &Path, value: &T, mode: u32) -> io::Result<()> {
    let text = toml::to_string_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, text.as_bytes(), mode)
}

/// Opens `path` for appending, creating it readable only by its owner.
pub fn append_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Creates a directory (and parents) readable only by its owner.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A key and certificate replaced together, interrupted at each step a
    /// crash can stop it: recovery gives the old pair or the new pair.
    #[test]
    fn a_pair_replaced_together_survives_a_crash_at_any_step() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("device.key"), dir.path().join("device.crt"));
        let pair = [key.as_path(), cert.as_path()];
        let read = || (fs::read(&key).unwrap(), fs::read(&cert).unwrap());
        let old = (b"old key".to_vec(), b"old cert".to_vec());
        let new = (b"new key".to_vec(), b"new cert".to_vec());
        let reset = || {
            write_atomic(&key, &old.0, SECRET).unwrap();
            write_atomic(&cert, &old.1, PUBLIC).unwrap();
            let _ = fs::remove_file(next(&key));
            let _ = fs::remove_file(next(&cert));
        };
        // the steps of replace_together, as a crash would leave them, and
        // the pair that recovery must give after each
        type Step<'a> = (&'a str, &'a dyn Fn(), &'a (Vec<u8>, Vec<u8>));
        let steps: [Step; 4] = [
            (
                "the key's .next written",
                &|| write_atomic(&next(&key), &new.0, SECRET).unwrap(),
                &old,
            ),
            (
                "both .next written",
                &|| write_atomic(&next(&cert), &new.1, PUBLIC).unwrap(),
                &new,
            ),
            (
                "the key renamed",
                &|| fs::rename(next(&key), &key).unwrap(),
                &new,
            ),
            (
                "the certificate renamed",
                &|| fs::rename(next(&cert), &cert).unwrap(),
                &new,
            ),
        ];
        for stop_after in 0..steps.len() {
            reset();
            for (_, step, _) in &steps[..=stop_after] {
                step();
            }
            finish_replace(&pair).unwrap();
            let (what, _, expected) = steps[stop_after];
            assert_eq!(&read(), expected, "a crash after: {what}");
            assert!(
                !next(&key).exists() && !next(&cert).exists(),
                "{what}: .next files left"
            );
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, SECRET, "{what}: the key's mode");
        }
        reset();
        replace_together(&[(&key, &new.0, SECRET), (&cert, &new.1, PUBLIC)]).unwrap();
        assert_eq!(read(), new);
    }

    #[test]
    fn secret_is_0600_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_atomic(&p, b"one", SECRET).unwrap();
        write_atomic(&p, b"two", SECRET).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("k.pem");
        assert!(write_atomic(&p, b"x", SECRET).is_err());
        assert!(!p.exists());
    }
}
