//! Fork safety: the child must not inherit a p11audit lock held by another thread.
//!
//! `pthread_atfork` handlers take the auditor and context locks in the forking thread just
//! before `fork` and release them right after it, in the parent and in the child. The child then
//! starts with free locks. Holding the auditor lock also means that no thread of the parent holds
//! the state file's mutex at the fork (appends take it only under the auditor lock). The child
//! goes on with the inherited log descriptor and `MAP_SHARED` mapping of the state file (that
//! mutex is process-shared, so parent and child exclude each other through it), and drops the
//! records the parent had queued (the parent writes those).

use super::{runtime, Runtime};
use crate::shim::context::CallContext;
use crate::writer::auditor::AuditorHold;
use std::cell::RefCell;
use std::sync::{MutexGuard, Once};

type Held = (AuditorHold<'static>, MutexGuard<'static, CallContext>);

thread_local! {
    // Only the forking thread touches this, between its prepare and after-fork handlers.
    static HELD_ACROSS_FORK: RefCell<Option<Held>> = const { RefCell::new(None) };
}

extern "C" fn before_fork() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(rt) = runtime() {
            let rt: &'static Runtime = rt;
            // Lock order: auditor, then context. No code path takes the auditor lock while
            // holding the context lock.
            let held = (rt.auditor.hold(), rt.context.lock());
            HELD_ACROSS_FORK.with(|h| *h.borrow_mut() = Some(held));
        }
    });
}

extern "C" fn after_fork_in_parent() {
    let _ = std::panic::catch_unwind(|| HELD_ACROSS_FORK.with(|h| drop(h.borrow_mut().take())));
}

extern "C" fn after_fork_in_child() {
    crate::os::process::refresh_after_fork();
    after_fork_in_parent();
}

/// Registers the handlers once per process.
pub(crate) fn install_fork_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers are extern "C", never unwind, and only take and release locks.
        unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_in_parent),
                Some(after_fork_in_child),
            )
        };
    });
}
