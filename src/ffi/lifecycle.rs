//! C_Initialize and C_Finalize: configuration, attach and clean close.

use super::call::{bare_record, timed_outcome, write_intent_or_refuse};
use super::{args, guard, runtime, runtime_or_init};
use crate::audit::record::Event;
use cryptoki_sys as ck;
use std::os::raw::c_void;
use std::time::Instant;

/// Checks CK_C_INITIALIZE_ARGS the way PKCS#11 2.40 §5.4 requires: the four mutex callbacks
/// are all supplied or all NULL, and pReserved is NULL. Returns the flags.
///
/// # Safety
/// `init_args` must be NULL or point to a CK_C_INITIALIZE_ARGS.
unsafe fn check_init_args(init_args: *const c_void) -> Result<Option<ck::CK_FLAGS>, ck::CK_RV> {
    // SAFETY: per the caller.
    let Some(a) = (unsafe { args::read(init_args as *const ck::CK_C_INITIALIZE_ARGS) }) else {
        return Ok(None);
    };
    let supplied = [
        a.CreateMutex.is_some(),
        a.DestroyMutex.is_some(),
        a.LockMutex.is_some(),
        a.UnlockMutex.is_some(),
    ];
    if supplied.iter().any(|&s| s != supplied[0]) || !a.pReserved.is_null() {
        return Err(ck::CKR_ARGUMENTS_BAD);
    }
    // With application callbacks and no CKF_OS_LOCKING_OK the library must use the callbacks
    // or fail with CKR_CANT_LOCK. p11audit's own locks are OS locks that never block on the
    // provider, and the decision about the provider's locking is the provider's: the arguments
    // are forwarded unchanged and its answer is returned.
    Ok(Some(a.flags))
}

pub(crate) unsafe extern "C" fn c_initialize(init_args: *mut c_void) -> ck::CK_RV {
    guard(|| {
        // SAFETY: the caller passes NULL or a CK_C_INITIALIZE_ARGS.
        let flags = match unsafe { check_init_args(init_args) } {
            Ok(f) => f,
            Err(rv) => {
                // Answered here, never forwarded; recorded if the shim is configured already.
                super::log_informational("C_Initialize", rv);
                return rv;
            }
        };
        let rt = match runtime_or_init() {
            Ok(rt) => rt,
            Err(msg) => {
                eprintln!("p11audit: {msg}");
                return ck::CKR_GENERAL_ERROR;
            }
        };
        // A forked child (or a second initialization) starts with fresh sessions.
        rt.context.lock().clear();
        let mut attach = bare_record(rt, Event::Attach, Some("C_Initialize"));
        attach.detail.note = Some(format!("provider {}", rt.provider.path.display()));
        let mut intent = bare_record(rt, Event::Intent, Some("C_Initialize"));
        intent.detail.flags = flags.map(|f| f as u64);
        rt.auditor.wait(&attach);
        let intent_seq = match write_intent_or_refuse(rt, &intent) {
            Ok(seq) => seq,
            Err(rv) => return rv,
        };
        let Some(init) = rt.provider.functions.C_Initialize else {
            return ck::CKR_GENERAL_ERROR;
        };
        let started = Instant::now();
        // SAFETY: forwarded as given. No p11audit lock is held: providers may re-enter.
        let rv = unsafe { init(init_args) };
        let mut outcome = timed_outcome(rt, "C_Initialize", rv, started);
        outcome.detail.intent = intent_seq;
        rt.auditor.wait(&outcome);
        rv
    })
}

pub(crate) unsafe extern "C" fn c_finalize(reserved: *mut c_void) -> ck::CK_RV {
    guard(|| {
        let Some(rt) = runtime() else {
            return ck::CKR_CRYPTOKI_NOT_INITIALIZED;
        };
        let Some(fin) = rt.provider.functions.C_Finalize else {
            return ck::CKR_GENERAL_ERROR;
        };
        let started = Instant::now();
        // Giving up: goes ahead even when the log cannot be written.
        // SAFETY: forwarded as given.
        let rv = unsafe { fin(reserved) };
        let outcome = timed_outcome(rt, "C_Finalize", rv, started);
        if rv == ck::CKR_OK {
            rt.context.lock().clear();
            rt.auditor.wait(&outcome);
            let close = bare_record(rt, Event::Close, Some("C_Finalize"));
            // If it cannot be written, the failed append counted it for the next gap record.
            let _ = rt.auditor.write(&close);
        } else {
            rt.auditor.wait(&outcome);
            let _ = rt.auditor.flush(&outcome);
        }
        rv
    })
}
