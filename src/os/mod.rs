//! What the audit writer needs from the OS that std does not offer: a shared mapping of the
//! state file, and a robust, process-shared mutex inside it.
//!
//! Why: an `flock` per append costs two syscalls, a `pwrite` of the state one more (plus an inode
//! timestamp update). With the state file mapped `MAP_SHARED` in every writer and a
//! `PTHREAD_PROCESS_SHARED | PTHREAD_MUTEX_ROBUST` mutex in it, an uncontended append costs no
//! syscall besides its one `write` to the log. Robustness is what
//! makes `kill -9` safe: the kernel marks the mutex of a thread that dies holding it, and the
//! next locker gets `EOWNERDEAD` and recovers (see `writer::audit_log`).
//!
//! The byte copies below (`read`, `write`, `zero`) are only sound to use while holding the
//! mutex (or, before anyone can use the mutex, an exclusive `flock`), which is how
//! `writer::audit_log` uses them; every writer in every process follows the same rule. The `*_u64`
//! methods are atomic and need no lock: the writer uses them for the header's counters, some
//! of which (the lost-record count) are updated without the mutex.

pub(crate) mod identity;
pub(crate) mod lock;
pub(crate) mod process;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A `MAP_SHARED`, read-write mapping of the first `len` bytes of a file. `memmap2` makes and
/// unmaps it; every access goes through a raw pointer into it (`MmapRaw`, which hands out no
/// references), because other processes change the same bytes: byte copies are serialized by
/// the robust mutex inside it and the u64 fields are only accessed atomically (see the module
/// comment).
pub(crate) struct SharedFileMap {
    map: memmap2::MmapRaw,
}

/// How the mutex was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Locked {
    Clean,
    /// Its previous owner died holding it: the protected data may be half-updated. Call
    /// `mark_consistent` once it is repaired (or known to be as good as it gets).
    OwnerDied,
}

impl SharedFileMap {
    /// Maps `len` bytes of `file` (which must be at least that long: touching a page past the
    /// end of the file raises SIGBUS, which is why nobody may truncate a state file in use).
    pub fn new(file: &File, len: usize) -> io::Result<SharedFileMap> {
        // `map_raw`: PROT_READ | PROT_WRITE, MAP_SHARED, at offset 0.
        let map = memmap2::MmapOptions::new().len(len).map_raw(file)?;
        Ok(SharedFileMap { map })
    }

    /// The first mapped byte (page-aligned).
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    fn check(&self, off: usize, n: usize) {
        assert!(
            off.checked_add(n).is_some_and(|end| end <= self.map.len()),
            "shared map access out of range"
        );
    }

    /// Copies `out.len()` bytes from offset `off`.
    pub fn read(&self, off: usize, out: &mut [u8]) {
        self.check(off, out.len());
        // SAFETY: in range (checked); serialized by the mutex (module comment).
        unsafe { std::ptr::copy_nonoverlapping(self.base().add(off), out.as_mut_ptr(), out.len()) }
    }

    /// Copies `data` to offset `off`.
    pub fn write(&self, off: usize, data: &[u8]) {
        self.check(off, data.len());
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base().add(off), data.len()) }
    }

    /// Fills `n` bytes at `off` with zeros.
    pub fn zero(&self, off: usize, n: usize) {
        self.check(off, n);
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_bytes(self.base().add(off), 0, n) }
    }

    fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8);
        assert!(off.is_multiple_of(8), "unaligned shared u64");
        // SAFETY: in range, 8-aligned (the mapping is page-aligned), and only ever accessed as
        // an atomic u64 by every writer.
        unsafe { &*self.base().add(off).cast::<AtomicU64>() }
    }

    /// An atomic u64 load, in this host's byte order (the state file never leaves its host).
    pub fn load_u64(&self, off: usize) -> u64 {
        self.atomic_u64(off).load(Ordering::Acquire)
    }

    pub fn store_u64(&self, off: usize, value: u64) {
        self.atomic_u64(off).store(value, Ordering::Release)
    }

    /// An atomic wrapping add; the value before.
    pub fn fetch_add_u64(&self, off: usize, n: u64) -> u64 {
        self.atomic_u64(off).fetch_add(n, Ordering::AcqRel)
    }

    /// Stores `new` if the value is `current`; whether it did.
    pub fn compare_exchange_u64(&self, off: usize, current: u64, new: u64) -> bool {
        self.atomic_u64(off)
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// `msync(MS_SYNC)`: the mapped page is on disk when this returns.
    pub fn sync(&self) -> io::Result<()> {
        self.map.flush()
    }

    fn mutex(&self, off: usize) -> *mut libc::pthread_mutex_t {
        self.check(off, std::mem::size_of::<libc::pthread_mutex_t>());
        assert!(off.is_multiple_of(8), "unaligned shared mutex");
        // SAFETY: in range (checked above).
        unsafe { self.base().add(off).cast() }
    }

    /// Initializes a robust, process-shared mutex at `off`. Only while no process can be using
    /// it (the writer holds an exclusive `flock` and the state file is new or from an earlier
    /// boot).
    pub fn init_robust_mutex(&self, off: usize) -> io::Result<()> {
        let m = self.mutex(off);
        // SAFETY: attr is initialized before use and destroyed after; m points into the mapping.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            check_rc(libc::pthread_mutexattr_init(&mut attr))?;
            let rc = (|| {
                check_rc(libc::pthread_mutexattr_setpshared(
                    &mut attr,
                    libc::PTHREAD_PROCESS_SHARED,
                ))?;
                check_rc(libc::pthread_mutexattr_setrobust(
                    &mut attr,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))?;
                std::ptr::write_bytes(
                    m.cast::<u8>(),
                    0,
                    std::mem::size_of::<libc::pthread_mutex_t>(),
                );
                check_rc(libc::pthread_mutex_init(m, &attr))
            })();
            libc::pthread_mutexattr_destroy(&mut attr);
            rc
        }
    }

    /// Locks the mutex at `off`, waiting at most `timeout` (a writer that hangs while holding it
    /// must not hang every other process forever: the caller fails closed instead).
    pub fn lock_robust_mutex(&self, off: usize, timeout: Duration) -> io::Result<Locked> {
        let m = self.mutex(off);
        // SAFETY: m points at a mutex initialized by `init_robust_mutex` (the writer checks the
        // file's header and boot id before using it).
        let rc = unsafe { libc::pthread_mutex_trylock(m) };
        let rc = if rc == libc::EBUSY {
            let mut now: libc::timespec = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid out-pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
            let mut deadline = now;
            deadline.tv_sec += timeout.as_secs() as libc::time_t;
            deadline.tv_nsec += timeout.subsec_nanos() as libc::c_long;
            if deadline.tv_nsec >= 1_000_000_000 {
                deadline.tv_sec += 1;
                deadline.tv_nsec -= 1_000_000_000;
            }
            // SAFETY: as above; deadline is a valid timespec.
            unsafe { libc::pthread_mutex_timedlock(m, &deadline) }
        } else {
            rc
        };
        match rc {
            0 => Ok(Locked::Clean),
            libc::EOWNERDEAD => Ok(Locked::OwnerDied),
            rc => Err(io::Error::from_raw_os_error(rc)),
        }
    }

    /// After `Locked::OwnerDied`: the protected data is consistent again.
    pub fn mark_consistent(&self, off: usize) {
        // SAFETY: the caller holds the mutex (it was returned OwnerDied).
        unsafe { libc::pthread_mutex_consistent(self.mutex(off)) };
    }

    pub fn unlock_robust_mutex(&self, off: usize) {
        // SAFETY: the caller holds the mutex.
        unsafe { libc::pthread_mutex_unlock(self.mutex(off)) };
    }
}

fn check_rc(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), or `None` if it cannot be read. A state
/// file's mutex from an earlier boot may have been saved locked by a thread that no longer
/// exists (power loss mid-append); the writer re-initializes it when the boot id changed.
pub(crate) fn boot_id() -> Option<[u8; 36]> {
    let text = std::fs::read("/proc/sys/kernel/random/boot_id").ok()?;
    text.get(..36)?.try_into().ok()
}

/// Reserves disk space for `len` bytes at `offset` of `file` without changing its size
/// (`fallocate` with `FALLOC_FL_KEEP_SIZE`). Appends into reserved space skip the filesystem's
/// per-block allocation: on ext4 that made a 1.2 KB append about 0.3 µs faster, and a 4 KiB one
/// three times faster (docs/PERFORMANCE.md).
pub fn preallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    loop {
        // SAFETY: fallocate on a valid open descriptor; no memory is passed.
        let rc =
            unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The effective uid of this process: the owner every file the writer creates gets, and the
/// only owner it accepts for the files it adopts.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// The name of user `uid` from the password database, for messages; `None` if it has none.
pub(crate) fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain data, filled in by getpwuid_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid out-pointers and a buffer of the length given; the strings getpwuid_r
    // stores point into `buf`, which outlives their use below.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Renames `from` to `to` unless something is at `to` (`renameat2` with `RENAME_NOREPLACE`),
/// failing with `AlreadyExists` then. On a file system without that flag, a hard link and an
/// unlink do the same, also without ever replacing a file.
pub(crate) fn rename_no_replace(from: &std::path::Path, to: &std::path::Path) -> io::Result<()> {
    let Err(e) = renameat2(from, to, libc::RENAME_NOREPLACE) else {
        return Ok(());
    };
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(e),
    }
}

/// Swaps the files at `a` and `b` in one step (`renameat2` with `RENAME_EXCHANGE`): both must
/// exist. Unlike a rename over an existing file, which ext4 makes start writing the renamed
/// file's data back at once (its `auto_da_alloc` heuristic, milliseconds on a busy disk), an
/// exchange costs what a rename of a name to a free place costs.
pub(crate) fn exchange(a: &std::path::Path, b: &std::path::Path) -> io::Result<()> {
    renameat2(a, b, libc::RENAME_EXCHANGE)
}

/// `renameat2(from, to, flags)`, both paths relative to the working directory.
fn renameat2(from: &std::path::Path, to: &std::path::Path, flags: libc::c_uint) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
