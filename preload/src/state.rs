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
    /// The socket's (device, inode): a descriptor closed in a way we did
    /// not see (`fclose`, `closefrom`) and reused for another file is not
    /// this flow.
    pub file: (u64, u64),
}

/// The (device, inode) of what `fd` refers to.
pub fn file_of(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: all-zero is a valid stat buffer; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid buffer.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    (rc == 0).then_some((st.st_dev, st.st_ino))
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

/// Runs `f` on `fd`'s flow, if it has one (and it is still that socket).
pub fn on<T>(fd: c_int, f: impl FnOnce(&mut Flow) -> T) -> Option<T> {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let file = file_of(fd);
    let (out, _stale) = with(|flows| match flows.get_mut(&fd) {
        Some(flow) if Some(flow.file) == file => (Some(f(flow)), None),
        Some(_) => (None, flows.remove(&fd)),
        None => (None, None),
    });
    out
}

/// The program is closing descriptors `first..=last`: any of them that is
/// one of our connections to `up` is let go of (not closed twice), its flow
/// failed.
pub fn release_controls(first: c_int, last: c_int) {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    with(|flows| {
        for flow in flows.values_mut() {
            let ours =
                matches!(&flow.outcome, Outcome::Waiting(c) if (first..=last).contains(&c.fd()));
            if ours
                && let Outcome::Waiting(c) =
                    std::mem::replace(&mut flow.outcome, Outcome::Failed(libc::ECONNABORTED))
            {
                c.disown();
            }
        }
    });
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
        let dest = f.get(&from).map(|flow| (flow.to, flow.file));
        match dest {
            Some((dest, file)) => f.insert(
                to,
                Flow {
                    to: dest,
                    outcome: Outcome::Settled,
                    file,
                },
            ),
            None => f.remove(&to),
        }
    });
}
