//! What this library knows about the program's descriptors: for each
//! socket it carries to the VPN (a TCP flow in [`crate::tcp`], UDP relays in
//! [`crate::udp`]), where the program thinks it goes. The state follows
//! the descriptor through `dup`/`dup2`/`dup3` and ends with
//! `close`/`close_range`; a descriptor closed in a way we did not see
//! (`fclose`, `closefrom`) and reused for another file is recognised by
//! its (device, inode).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::c_int;

/// A socket's state, kept per descriptor.
pub trait Tracked: Sized {
    /// The socket's (device, inode).
    fn file(&self) -> (u64, u64);
    /// The state a duplicate of the descriptor gets.
    fn duplicate(&self) -> Self;
    /// The program closed descriptors `first..=last`: let go of any of our
    /// connections to `up` among them (their numbers are the program's now).
    fn release(&mut self, first: c_int, last: c_int);
}

/// The state of each descriptor that has some.
pub struct Table<T> {
    map: Mutex<BTreeMap<c_int, T>>,
    /// How many entries there are, so that the program's every `close` does
    /// not take the lock when there are none.
    count: AtomicUsize,
}

/// The (device, inode) of what `fd` refers to.
pub fn file_of(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: all-zero is a valid stat buffer; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid buffer.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    (rc == 0).then_some((st.st_dev, st.st_ino))
}

impl<T: Tracked> Table<T> {
    pub const fn new() -> Table<T> {
        Table {
            map: Mutex::new(BTreeMap::new()),
            count: AtomicUsize::new(0),
        }
    }

    /// Runs `f` under the lock. What `f` returns for dropping is dropped
    /// after it: a dropped connection to `up` closes with the real close.
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<c_int, T>) -> R) -> R {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut map);
        self.count.store(map.len(), Ordering::Relaxed);
        out
    }

    /// The lock itself, held across a fork ([`crate::fork`]).
    pub fn hold(&'static self) -> std::sync::MutexGuard<'static, BTreeMap<c_int, T>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 0
    }

    pub fn insert(&self, fd: c_int, state: T) {
        let _old = self.with(|m| m.insert(fd, state));
    }

    /// Runs `f` on `fd`'s state, if it has some (and it is still that socket).
    pub fn on<R>(&self, fd: c_int, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.is_empty() {
            return None;
        }
        let file = file_of(fd);
        let (out, _stale) = self.with(|m| match m.get_mut(&fd) {
            Some(state) if Some(state.file()) == file => (Some(f(state)), None),
            Some(_) => (None, m.remove(&fd)),
            None => (None, None),
        });
        out
    }

    /// Descriptors `first..=last` are closed.
    pub fn remove(&self, first: c_int, last: c_int) {
        if self.is_empty() {
            return;
        }
        let _gone: Vec<T> = self.with(|m| {
            let fds: Vec<c_int> = m.range(first..=last).map(|(fd, _)| *fd).collect();
            fds.into_iter().filter_map(|fd| m.remove(&fd)).collect()
        });
    }

    /// `to` is now a duplicate of `from`.
    pub fn duplicate(&self, from: c_int, to: c_int) {
        if self.is_empty() {
            return;
        }
        let _old = self.with(|m| match m.get(&from).map(T::duplicate) {
            Some(copy) => m.insert(to, copy),
            None => m.remove(&to),
        });
    }

    pub fn release(&self, first: c_int, last: c_int) {
        if self.is_empty() {
            return;
        }
        self.with(|m| m.values_mut().for_each(|s| s.release(first, last)));
    }
}

/// The program is closing descriptors `first..=last` (before it does).
pub fn closing(first: c_int, last: c_int) {
    crate::tcp::FLOWS.release(first, last);
    crate::udp::SOCKETS.release(first, last);
}

/// The program closed descriptors `first..=last`.
pub fn closed(first: c_int, last: c_int) {
    crate::tcp::FLOWS.remove(first, last);
    crate::udp::SOCKETS.remove(first, last);
}

/// `to` is now a duplicate of `from`.
pub fn duplicated(from: c_int, to: c_int) {
    crate::tcp::FLOWS.duplicate(from, to);
    crate::udp::SOCKETS.duplicate(from, to);
}
