//! Fork safety. A program may fork while another of its threads is inside
//! this library holding one of its locks; the child has only the forking
//! thread, so that lock would stay taken for ever and the child's first
//! call into the library would hang. So every lock is taken just before
//! the fork and let go just after, in parent and child alike
//! (`pthread_atfork`). Each lock is held only briefly and never while
//! another is taken, so taking them one after another cannot deadlock.

use std::any::Any;
use std::cell::RefCell;

thread_local! {
    /// The guards the forking thread holds across a fork.
    static HELD: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

extern "C" fn prepare() {
    let guards: Vec<Box<dyn Any>> = vec![
        Box::new(crate::tcp::FLOWS.hold()),
        Box::new(crate::udp::SOCKETS.hold()),
        Box::new(crate::names::allocated()),
        Box::new(crate::say::hold()),
    ];
    HELD.with(|h| *h.borrow_mut() = guards);
}

extern "C" fn release() {
    // Dropped here, in this thread: each guard unlocks its mutex.
    HELD.with(|h| h.borrow_mut().clear());
}

/// Registers the handlers; runs once, when the library is loaded.
extern "C" fn register() {
    // SAFETY: three valid handlers of the signature pthread_atfork wants.
    unsafe { libc::pthread_atfork(Some(prepare), Some(release), Some(release)) };
}

#[used]
#[unsafe(link_section = ".init_array")]
static REGISTER: extern "C" fn() = register;
