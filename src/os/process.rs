//! This process's pid and the calling thread's id, without a syscall per record.
//!
//! glibc's `getpid` and `gettid` are system calls, and every record needs both (a forked child
//! must notice that it is one). The pid is cached here and refreshed by
//! `refresh_after_fork`, which `shim::fork` calls from its `pthread_atfork` child handler.

use std::sync::atomic::{AtomicU32, Ordering};

/// 0 until first read.
static PID: AtomicU32 = AtomicU32::new(0);

/// The current process id.
pub fn current_pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => refresh_after_fork(),
        pid => pid,
    }
}

/// Re-reads the pid (in a forked child) and returns it.
pub fn refresh_after_fork() -> u32 {
    let pid = std::process::id();
    PID.store(pid, Ordering::Relaxed);
    pid
}

/// The current thread id (`gettid`), for records.
pub fn current_tid() -> u64 {
    // gettid is a system call and every record needs it: keep it per thread, with the pid it
    // was read in, so that a forked child (same thread-local values, new tid) reads it again.
    // A const-initialized Cell of plain integers: no lazy initialization and no destructor, so
    // nothing of p11audit's runs at thread exit, which may come after the host unloaded it.
    thread_local! {
        static TID: std::cell::Cell<(u32, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    let pid = current_pid();
    TID.with(|c| match c.get() {
        (p, tid) if p == pid && tid != 0 => tid,
        _ => {
            // SAFETY: gettid has no preconditions.
            let tid = (unsafe { libc::gettid() }) as u64;
            c.set((pid, tid));
            tid
        }
    })
}

/// Makes a write to a connection whose other end is gone fail with `EPIPE` instead of killing
/// the process, unless the host already chose what `SIGPIPE` does (a handler, or ignoring it).
/// Whether it changed anything.
pub(crate) fn ignore_sigpipe_if_default() -> bool {
    // SAFETY: sigaction with a null new action only reads the current one into `old`.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    if unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) } != 0
        || old.sa_sigaction != libc::SIG_DFL
    {
        return false;
    }
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) != libc::SIG_ERR }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disposition() -> libc::sighandler_t {
        // SAFETY: sigaction with a null new action only reads the current one.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) },
            0
        );
        old.sa_sigaction
    }

    extern "C" fn hosts_handler(_: libc::c_int) {}

    /// SIGPIPE is ignored only where the program left it at its default (as p11-kit remote
    /// does); a program's own choice stands. The Rust test harness ignores SIGPIPE itself, so
    /// each case sets the disposition first, and the harness's is put back at the end.
    #[test]
    fn sigpipe_is_ignored_only_at_its_default() {
        let harness = disposition();
        // SAFETY: valid dispositions for SIGPIPE; no other test in this binary sends one.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        assert!(ignore_sigpipe_if_default());
        assert_eq!(disposition(), libc::SIG_IGN);
        let handler = hosts_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
        unsafe { libc::signal(libc::SIGPIPE, handler) };
        assert!(!ignore_sigpipe_if_default());
        assert_eq!(disposition(), handler);
        unsafe { libc::signal(libc::SIGPIPE, harness) };
    }
}
