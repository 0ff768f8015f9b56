//! What `shimgate run` does before it starts a program under the socket
//! shim: makes sure the shim can see the program's calls (fail closed, not
//! silently open), finds the preload library and checks no one else could
//! have changed it, and asks the running `up` for the split.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shimgate_wire::shimsock::{MAX_LINE, Reply, Request, Split};

use crate::config::ConfigDir;

/// The preload library's file name, next to the `shimgate` executable.
pub const LIBRARY: &str = "libshimgate_preload.so";

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} is statically linked: a preloaded library cannot see its connections, so it would reach the network past the VPN. The network-driver shim (TUN mode, not in this version yet) is the way for such programs; meanwhile use the SOCKS port if it can (ALL_PROXY=socks5h://127.0.0.1:1080). --force runs it anyway."
    )]
    Static(PathBuf),
    #[error(
        "{0} is a Go program: Go makes its own system calls and has its own resolver, so a preloaded library cannot see its connections. The network-driver shim (TUN mode, not in this version yet) is the way for such programs; meanwhile most Go programs honour ALL_PROXY=socks5h://127.0.0.1:1080. --force runs it anyway."
    )]
    Go(PathBuf),
    #[error(
        "the socket shim library {0} is missing: it is built with the workspace (`cargo build --release` puts it next to `shimgate`); install the two together"
    )]
    NoLibrary(PathBuf),
    #[error(
        "refusing to load {path}: {why}. Anyone who can change it could run code in every program started with `shimgate run`"
    )]
    UnsafeLibrary { path: PathBuf, why: String },
    #[error("shimgate up is not running for {dir} ({source}): start it first with `shimgate up`")]
    NotUp {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("shimgate up gave an unexpected answer on its shim socket: {0}")]
    BadAnswer(String),
}

/// How deep `#!` interpreters may nest (the kernel's own limit).
const MAX_SCRIPT_DEPTH: usize = 4;

/// Why a program cannot be intercepted, if it cannot.
pub fn check_program(program: &Path) -> Result<(), LaunchError> {
    check_at_depth(program, 0)
}

fn check_at_depth(program: &Path, depth: usize) -> Result<(), LaunchError> {
    let read_error = |source| LaunchError::Read {
        path: program.to_owned(),
        source,
    };
    let mut head = Vec::new();
    std::fs::File::open(program)
        .and_then(|f| f.take(256).read_to_end(&mut head))
        .map_err(read_error)?;
    if let Some(script) = head.strip_prefix(b"#!") {
        // A script: what matters is its interpreter (`env NAME` looked up).
        let line = script.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let Some(interp) = words.next() else {
            return Ok(());
        };
        let is_env = Path::new(interp).file_name() == Some(OsStr::new("env"));
        let interp = match words.find(|w| !w.starts_with('-')) {
            Some(name) if is_env => {
                find_program(OsStr::new(name)).unwrap_or_else(|_| PathBuf::from(interp))
            }
            _ => PathBuf::from(interp),
        };
        if depth >= MAX_SCRIPT_DEPTH {
            return Ok(());
        }
        return check_at_depth(&interp, depth + 1);
    }
    let data = std::fs::read(program).map_err(read_error)?;
    match elf::inspect(&data) {
        Some(elf::Kind::Static) => Err(LaunchError::Static(program.to_owned())),
        Some(elf::Kind::Go) => Err(LaunchError::Go(program.to_owned())),
        Some(elf::Kind::Dynamic) | None => Ok(()),
    }
}

/// `name` as the shell would find it (on `PATH` unless it has a slash).
pub fn find_program(name: &OsStr) -> Result<PathBuf, LaunchError> {
    let not_found = || LaunchError::NotFound(name.to_string_lossy().into_owned());
    let as_path = Path::new(name);
    if as_path.components().count() > 1 || name.to_string_lossy().contains('/') {
        return as_path
            .is_file()
            .then(|| as_path.to_owned())
            .ok_or_else(not_found);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
        .ok_or_else(not_found)
}

/// The preload library next to `exe`, if only its owner (this user or
/// root) can change it or any directory above it (a sticky directory such
/// as /tmp excepted: no one else can replace what is in it).
pub fn library(exe: &Path) -> Result<PathBuf, LaunchError> {
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let path = dir.join(LIBRARY);
    if !path.exists() {
        return Err(LaunchError::NoLibrary(path));
    }
    let path = std::fs::canonicalize(&path).map_err(|source| LaunchError::Read {
        path: path.clone(),
        source,
    })?;
    // ld.so splits LD_PRELOAD at spaces and colons.
    if path.to_string_lossy().contains([' ', ':']) {
        return Err(LaunchError::UnsafeLibrary {
            why: "its path has a space or a colon, which LD_PRELOAD would split".into(),
            path,
        });
    }
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    for p in path.ancestors().map(Path::to_path_buf) {
        let meta = std::fs::metadata(&p).map_err(|source| LaunchError::Read {
            path: p.clone(),
            source,
        })?;
        let why = if meta.uid() != me && meta.uid() != 0 {
            Some(format!("{} belongs to uid {}", p.display(), meta.uid()))
        } else if meta.mode() & 0o022 != 0 && !(meta.is_dir() && meta.mode() & 0o1000 != 0) {
            Some(format!(
                "{} is writable by others (mode {:o})",
                p.display(),
                meta.mode() & 0o7777
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(LaunchError::UnsafeLibrary { path, why });
        }
    }
    Ok(path)
}

/// The split from the `up` serving `dir`; with `all`, every address and
/// name but loopback ones.
pub fn split(dir: &ConfigDir, all: bool) -> Result<Split, LaunchError> {
    let not_up = |source| LaunchError::NotUp {
        dir: dir.root().to_owned(),
        source,
    };
    let mut sock = UnixStream::connect(dir.shim_socket()).map_err(not_up)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(not_up)?;
    sock.write_all(Request::Split.encode().as_bytes())
        .map_err(not_up)?;
    let mut line = String::new();
    BufReader::new(sock.take(MAX_LINE as u64))
        .read_line(&mut line)
        .map_err(not_up)?;
    let mut split = match Reply::parse(&line) {
        Ok(Reply::Split(s)) => s,
        _ => return Err(LaunchError::BadAnswer(line.trim_end().to_owned())),
    };
    if all {
        split.nets = vec!["0.0.0.0/0".into(), "::/0".into()];
        split.domains = vec![".".into()];
    }
    Ok(split)
}

/// Reading just enough of an ELF file to know whether a preloaded library
/// would see its calls.
mod elf {
    pub enum Kind {
        /// Has an interpreter (ld.so), which loads the preload library.
        Dynamic,
        /// No interpreter: nothing loads a library into it.
        Static,
        /// A Go program (its build-info section): raw system calls, its own
        /// resolver, whether or not it is dynamically linked.
        Go,
    }

    const PT_INTERP: u32 = 3;

    /// `None` if `data` is not a 64- or 32-bit little-endian ELF file.
    pub fn inspect(data: &[u8]) -> Option<Kind> {
        if data.get(..4)? != b"\x7fELF" || *data.get(5)? != 1 {
            return None;
        }
        let wide = match data.get(4)? {
            2 => true,
            1 => false,
            _ => return None,
        };
        let bytes = |at: usize, n: usize| data.get(at..at.checked_add(n)?);
        let u16_at = |at: usize| Some(u16::from_le_bytes(bytes(at, 2)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(bytes(at, 4)?.try_into().ok()?));
        let word_at = |at: usize| -> Option<usize> {
            if wide {
                usize::try_from(u64::from_le_bytes(bytes(at, 8)?.try_into().ok()?)).ok()
            } else {
                Some(u32_at(at)? as usize)
            }
        };
        let (phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx) = if wide {
            (
                word_at(0x20)?,
                word_at(0x28)?,
                u16_at(0x36)?,
                u16_at(0x38)?,
                u16_at(0x3a)?,
                u16_at(0x3c)?,
                u16_at(0x3e)?,
            )
        } else {
            (
                word_at(0x1c)?,
                word_at(0x20)?,
                u16_at(0x2a)?,
                u16_at(0x2c)?,
                u16_at(0x2e)?,
                u16_at(0x30)?,
                u16_at(0x32)?,
            )
        };
        // Section names, for Go's build-info section.
        let section = |i: usize| shoff.checked_add(i.checked_mul(usize::from(shentsize))?);
        // sh_name is a section header's first field; sh_offset follows sh_flags and sh_addr.
        let sh_offset = if wide { 0x18 } else { 0x10 };
        let strtab =
            section(usize::from(shstrndx)).and_then(|s| word_at(s.checked_add(sh_offset)?));
        let is_go = (0..usize::from(shnum)).any(|i| {
            let name = section(i)
                .and_then(u32_at)
                .zip(strtab)
                .and_then(|(n, base)| data.get(base.checked_add(n as usize)?..));
            name.is_some_and(|n| {
                n.starts_with(b".go.buildinfo\0") || n.starts_with(b".note.go.buildid\0")
            })
        });
        if is_go {
            return Some(Kind::Go);
        }
        let interp = (0..usize::from(phnum)).any(|i| {
            i.checked_mul(usize::from(phentsize))
                .and_then(|o| phoff.checked_add(o))
                .and_then(u32_at)
                == Some(PT_INTERP)
        });
        Some(if interp { Kind::Dynamic } else { Kind::Static })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_programs_and_scripts_pass() {
        let sh = find_program(OsStr::new("sh")).unwrap();
        check_program(&sh).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/usr/bin/env sh\necho hi\n").unwrap();
        check_program(&script).unwrap();
        assert!(matches!(
            find_program(OsStr::new("no-such-program-here")),
            Err(LaunchError::NotFound(_))
        ));
    }

    #[test]
    fn junk_is_not_elf() {
        assert!(elf::inspect(b"").is_none());
        assert!(elf::inspect(b"\x7fELF").is_none());
        let mut head = b"\x7fELF\x02\x01".to_vec();
        head.resize(64, 0xff);
        // Offsets far past the end: no panic, read as static.
        assert!(matches!(elf::inspect(&head), Some(elf::Kind::Static)));
    }
}
