//! The mutex p11audit uses: `std::sync::Mutex` without poisoning.
//!
//! std's futex mutex rather than parking_lot: after `fork` the child may have to release a lock
//! it inherited (see `shim::fork`), and std's unlock is an atomic store plus at most a
//! `futex(WAKE)` syscall, with no user-space structure that another (vanished) thread could have
//! been holding. A panic is caught at the C boundary, so a poisoned lock only means a call failed
//! midway, and every operation on the protected data leaves it consistent: poisoning is ignored.

pub struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Self {
        Mutex(std::sync::Mutex::new(value))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits on `cv`, releasing and retaking the lock (poisoning ignored as in `lock`).
    pub fn wait<'a>(
        cv: &std::sync::Condvar,
        guard: std::sync::MutexGuard<'a, T>,
    ) -> std::sync::MutexGuard<'a, T> {
        cv.wait(guard)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}
