//! What this library knows about the program's descriptors: for each TCP
//! socket it is carrying to the VPN, where the program thinks it goes and
//! whether `up` has answered yet. The state follows the descriptor through
//! `dup`/`dup2`/`dup3` and ends with `close`/`close_range`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::c_int;

use crate::control::Control;

pub enum Outcome {
    /// `up` is still dialling; its answer will come on this connection.
    Waiting(Control),
    /// Connected (or the error was handed over): nothing more to tell.
    Settled,
    /// Refused with this errno, not yet handed to the program.
    Failed(c_int),
}

pub struct Flow {
    /// The address the program connected to (a fake one for a VPN name).
    pub to: SocketAddr,
    pub outcome: Outcome,
}

static FLOWS: Mutex<BTreeMap<c_int, Flow>> = Mutex::new(BTreeMap::new());
/// How many flows there are, so that the program's every `close` does not
/// take the lock when there are none.
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn with<T>(f: impl FnOnce(&mut BTreeMap<c_int, Flow>) -> T) -> T {
    let mut flows = FLOWS.lock().unwrap_or_else(|p| p.into_inner());
    let out = f(&mut flows);
    COUNT.store(flows.len(), Ordering::Relaxed);
    out
}

pub fn insert(fd: c_int, flow: Flow) {
    // The replaced flow (a stale one from a descriptor closed behind our
    // back) drops after the lock: its Control closes with the real close.
    let _old = with(|f| f.insert(fd, flow));
}

/// Runs `f` on `fd`'s flow, if it has one.
pub fn on<T>(fd: c_int, f: impl FnOnce(&mut Flow) -> T) -> Option<T> {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    with(|flows| flows.get_mut(&fd).map(f))
}

pub fn remove(fd: c_int) {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    let _gone = with(|f| f.remove(&fd));
}

/// Descriptors `first..=last` are closed.
pub fn remove_range(first: c_int, last: c_int) {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    let _gone: Vec<Flow> = with(|f| {
        let fds: Vec<c_int> = f.range(first..=last).map(|(fd, _)| *fd).collect();
        fds.into_iter().filter_map(|fd| f.remove(&fd)).collect()
    });
}

/// `to` is now a duplicate of `from`: same destination, already settled
/// (the answer, if any, stays with the original).
pub fn duplicate(from: c_int, to: c_int) {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    let _old = with(|f| {
        let dest = f.get(&from).map(|flow| flow.to);
        match dest {
            Some(dest) => f.insert(
                to,
                Flow {
                    to: dest,
                    outcome: Outcome::Settled,
                },
            ),
            None => f.remove(&to),
        }
    });
}
