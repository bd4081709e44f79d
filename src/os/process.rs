//! This process's pid without a syscall per record.
//!
//! glibc's `getpid` is a system call, and every record and append needs the pid (records carry
//! it; a forked child must notice that it is one). The pid is cached here and refreshed by
//! `refresh_after_fork`, which the FFI layer calls from its `pthread_atfork` child handler.

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
