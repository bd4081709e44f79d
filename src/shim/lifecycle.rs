//! C_Initialize and C_Finalize: configuration, attach and clean close.

use super::call::{bare_record, timed_outcome, write_intent_or_refuse};
use super::error::{guard, ShimError};
use super::{args, runtime, runtime_or_init};
use crate::format::record::Event;
use cryptoki_sys as ck;
use std::os::raw::c_void;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The flags of CK_C_INITIALIZE_ARGS, for the intent record.
///
/// The arguments are not checked here: they are forwarded unchanged and the provider's answer
/// is returned, so that it is the provider's own. Providers differ: SoftHSM answers
/// CKR_CRYPTOKI_ALREADY_INITIALIZED before it looks at them, and NSS's softokn takes its
/// parameter string in pReserved, which PKCS#11 2.40 §5.4 says must be NULL. p11audit never
/// uses the mutex callbacks (its own locks are OS locks that never block on the provider).
///
/// # Safety
/// `init_args` must be NULL or point to a CK_C_INITIALIZE_ARGS.
unsafe fn init_flags(init_args: *const c_void) -> Option<ck::CK_FLAGS> {
    // SAFETY: per the caller.
    unsafe { args::read(init_args as *const ck::CK_C_INITIALIZE_ARGS) }.map(|a| a.flags)
}

pub(crate) unsafe extern "C" fn c_initialize<const FOR_2X: bool>(
    init_args: *mut c_void,
) -> ck::CK_RV {
    guard(|| {
        // SAFETY: the caller passes NULL or a CK_C_INITIALIZE_ARGS.
        let flags = unsafe { init_flags(init_args) };
        let rt = match runtime_or_init() {
            Ok(rt) => rt,
            Err(e) => {
                crate::stderr_line(&format!("p11audit: {e}"));
                return e.rv();
            }
        };
        let pid = crate::os::process::current_pid();
        // One `attach` per attachment of a process: a second C_Initialize (which the provider
        // refuses) is not a new one, and `report` would count it as one that never closed.
        let before = rt.attached_pid.swap(pid, Ordering::Relaxed);
        let attaching = before != pid;
        // This call did not attach after all (its attach is not in the file, or the provider
        // failed): the next C_Initialize writes the attach.
        let not_attached = || {
            if attaching {
                rt.attached_pid.store(before, Ordering::Relaxed);
            }
        };
        if attaching {
            let mut attach = bare_record(rt, Event::Attach, Some("C_Initialize"));
            attach.detail.note = Some(format!("provider {}", rt.provider.path.display()));
            rt.auditor.wait(&attach);
        }
        let mut intent = bare_record(rt, Event::Intent, Some("C_Initialize"));
        intent.detail.flags = flags.map(|f| f as u64);
        let intent_seq = match write_intent_or_refuse(rt, &intent) {
            Ok(seq) => seq,
            Err(e) => {
                not_attached();
                return e.rv();
            }
        };
        if intent_seq.is_none() {
            // Fail-open: the attach went with the intent's failed write (counted as lost).
            not_attached();
        }
        let Some(init) = rt.provider.table(FOR_2X).C_Initialize else {
            not_attached();
            return ShimError::ProviderLacks {
                function: "C_Initialize",
            }
            .rv();
        };
        let started = Instant::now();
        // SAFETY: forwarded as given. No p11audit lock is held: providers may re-enter.
        let rv = unsafe { init(init_args) };
        if rv != ck::CKR_OK && rv != ck::CKR_CRYPTOKI_ALREADY_INITIALIZED {
            // The provider is not initialized: the process did not attach (`report` reads an
            // attach followed by its failed C_Initialize the same way).
            not_attached();
        }
        if rv == ck::CKR_OK {
            // The provider starts afresh (in a forked child too): the sessions, logins and
            // operations p11audit knew of are gone. Not before it answered: a refused
            // C_Initialize (CKR_CRYPTOKI_ALREADY_INITIALIZED) leaves them all as they were.
            // What was held for them goes out on its own.
            let held = rt.context.lock().clear();
            rt.auditor.wait_each(held);
        }
        let mut outcome = timed_outcome(rt, "C_Initialize", rv, started);
        outcome.detail.intent = intent_seq;
        rt.auditor.wait(&outcome);
        rv
    })
}

pub(crate) unsafe extern "C" fn c_finalize<const FOR_2X: bool>(reserved: *mut c_void) -> ck::CK_RV {
    guard(|| {
        let Some(rt) = runtime() else {
            return ShimError::NotInitialized.rv();
        };
        let Some(fin) = rt.provider.table(FOR_2X).C_Finalize else {
            return ShimError::ProviderLacks {
                function: "C_Finalize",
            }
            .rv();
        };
        // Inits and length queries no outcome will tell now go out on their own, before the
        // close.
        let held = rt.context.lock().release_all_held();
        rt.auditor.wait_each(held);
        let started = Instant::now();
        // Giving up: goes ahead even when the log cannot be written.
        // SAFETY: forwarded as given.
        let rv = unsafe { fin(reserved) };
        let outcome = timed_outcome(rt, "C_Finalize", rv, started);
        if rv == ck::CKR_OK {
            // Held by another thread since the release above.
            let held = rt.context.lock().clear();
            rt.auditor.wait_each(held);
            rt.auditor.wait(&outcome);
            let close = bare_record(rt, Event::Close, Some("C_Finalize"));
            // If it cannot be written, the failed append counted it for the next gap record.
            let _ = rt.auditor.write(&close);
            rt.attached_pid.store(0, Ordering::Relaxed);
        } else {
            rt.auditor.wait(&outcome);
            let _ = rt.auditor.flush(&outcome);
        }
        rv
    })
}
