//! The single list of PKCS#11 functions. It generates the forwarding wrappers, the function
//! tables and `FUNCTIONS` (name and audit kind, in table order) together, so nothing can drift.
//!
//! Each entry is `name: Kind (C arguments) { |call| before |call, rv| after }`: `before` runs
//! before the intent is written and the call is forwarded, and says what the record carries;
//! `after` runs once the provider has returned. Entries marked `custom` are written by hand
//! (lifecycle and interface negotiation).
//!
//! Each wrapper exists twice, for p11audit's 2.40 table and for its 3.x tables: a call goes
//! through the provider's table of the same kind as the one the application called through
//! (`Provider::table`), because providers may answer differently per table (OpenSC's
//! `C_GetInfo` says 2.20 through its `C_GetFunctionList` table and 3.0 through its 3.0 one),
//! and one process may hold both (two libraries, each taking its own).

use super::call::{run_call, Call, Kind};
use super::error::ShimError;
use super::{args, lifecycle};
use crate::format::record::{Bytes, MechanismSummary, Named, ObjectIdentity};
use crate::shim::context::{LoginState, Op};
use cryptoki_sys as ck;
use std::os::raw::c_void;
use std::sync::Arc;

macro_rules! pkcs11_functions {
    ($( $name:ident : $kind:ident ( $($arg:ident : $ty:ty),* $(,)? ) $body:tt )*) => {
        $( define_wrapper!($name, $kind, ($($arg : $ty),*), $body); )*

        /// A function table with every entry filled, reporting `version`. `FOR_2X`: the table is
        /// handed to 2.x callers, and its calls go through the provider's 2.x table
        /// (`Provider::table`).
        pub(crate) const fn function_table<const FOR_2X: bool>(
            version: ck::CK_VERSION,
        ) -> ck::CK_FUNCTION_LIST_3_2 {
            ck::CK_FUNCTION_LIST_3_2 { version, $( $name: Some(wrapper_fn!($name, $body, FOR_2X)), )* }
        }

        /// Every function in table order, with its audit kind.
        pub const FUNCTIONS: &[(&str, Kind)] = &[$((stringify!($name), Kind::$kind)),*];
    };
}

macro_rules! define_wrapper {
    ($name:ident, $kind:ident, ($($arg:ident : $ty:ty),*), { custom $path:path }) => {};
    ($name:ident, $kind:ident, ($($arg:ident : $ty:ty),*), { custom_per_table $path:path }) => {};
    ($name:ident, $kind:ident, ($($arg:ident : $ty:ty),*),
     { |$c:ident| $before:block |$c2:ident, $rv:ident| $after:block }) => {
        // One instance per kind of table (`function_table`); both run the same `audited`.
        #[allow(non_snake_case, clippy::too_many_arguments)]
        unsafe extern "C" fn $name<const FOR_2X: bool>($($arg: $ty),*) -> ck::CK_RV {
            #[allow(unused_variables, clippy::too_many_arguments)]
            unsafe fn audited(for_2x: bool, $($arg: $ty),*) -> ck::CK_RV {
                run_call(
                    stringify!($name),
                    Kind::$kind,
                    for_2x,
                    #[allow(unused_unsafe)]
                    |$c: &mut Call| unsafe { $before },
                    // SAFETY: the arguments are passed through unchanged, as the caller gave
                    // them.
                    |f: &ck::CK_FUNCTION_LIST_3_2| match f.$name {
                        Some(func) => unsafe { func($($arg),*) },
                        None => ShimError::NotSupported {
                            function: stringify!($name),
                        }
                        .rv(),
                    },
                    #[allow(unused_unsafe)]
                    |$c2: &mut Call, $rv: ck::CK_RV| unsafe { $after },
                )
            }
            // SAFETY: as the caller's.
            unsafe { audited(FOR_2X, $($arg),*) }
        }
    };
}

/// The entry of `$name` in a table for 2.x callers (`$for_2x` true) or 3.x callers. `custom`
/// entries are the same in both; `custom_per_table` ones take the kind of table too.
macro_rules! wrapper_fn {
    ($name:ident, { custom $path:path }, $for_2x:ident) => {
        $path
    };
    ($name:ident, { custom_per_table $($part:ident)::+ }, $for_2x:ident) => {
        $($part)::+::<$for_2x>
    };
    ($name:ident, { $($t:tt)* }, $for_2x:ident) => {
        $name::<$for_2x>
    };
}

type H = ck::CK_SESSION_HANDLE;
type Obj = ck::CK_OBJECT_HANDLE;
type Ul = ck::CK_ULONG;
type Mech = *mut ck::CK_MECHANISM;
type Attrs = *mut ck::CK_ATTRIBUTE;
type Buf = *mut ck::CK_BYTE;
type UlOut = *mut ck::CK_ULONG;

fn mechanism_type(c: &mut Call, t: ck::CK_MECHANISM_TYPE) {
    let name = crate::format::names::mechanism_name(t as u64);
    c.detail.mechanism = Some(Arc::new(MechanismSummary {
        mechanism: Named::new(name, t as u64),
        param_len: None,
        params: Default::default(),
    }));
}

fn login_state(user: ck::CK_USER_TYPE) -> Option<LoginState> {
    match user {
        ck::CKU_USER => Some(LoginState::User),
        ck::CKU_SO => Some(LoginState::So),
        // CKU_CONTEXT_SPECIFIC authenticates one operation; the session's state is unchanged.
        _ => None,
    }
}

fn after_login(c: &mut Call, user: ck::CK_USER_TYPE, rv: ck::CK_RV) {
    if matches!(rv, ck::CKR_OK | ck::CKR_USER_ALREADY_LOGGED_IN) {
        if let Some(state) = login_state(user) {
            c.set_login(state);
        }
    }
}

/// # Safety
/// `count` must be NULL or readable.
unsafe fn counted(c: &mut Call, count: *const ck::CK_ULONG, rv: ck::CK_RV) {
    if rv == ck::CKR_OK {
        // SAFETY: per the caller.
        c.detail.count = unsafe { args::read(count) }.map(|n| n as u64);
    }
}

/// `major.minor` of a decimal `CARGO_PKG_VERSION_*` (checked at compile time).
const fn version_part(digits: &str) -> u8 {
    let digits = digits.as_bytes();
    let mut value: u32 = 0;
    let mut i = 0;
    while i < digits.len() {
        assert!(digits[i].is_ascii_digit() && value <= 25);
        value = value * 10 + (digits[i] - b'0') as u32;
        i += 1;
    }
    assert!(!digits.is_empty() && value <= 255);
    value as u8
}

/// p11audit's version as CK_INFO carries it; `p11audit --version` prints the same package
/// version from Cargo.toml.
pub(crate) const LIBRARY_VERSION: ck::CK_VERSION = ck::CK_VERSION {
    major: version_part(env!("CARGO_PKG_VERSION_MAJOR")),
    minor: version_part(env!("CARGO_PKG_VERSION_MINOR")),
};

/// `libraryDescription` of C_GetInfo: the name and the full version (CK_VERSION has no
/// patch level).
pub(crate) const LIBRARY_DESCRIPTION: &str = concat!("p11audit ", env!("CARGO_PKG_VERSION"));

/// C_GetInfo describes the library the application loaded, which is p11audit: its
/// `libraryDescription` and `libraryVersion` are p11audit's (as p11-kit's proxy answers with
/// its own). `cryptokiVersion`, `manufacturerID` and `flags` stay the provider's: the first is
/// the interface the call went through (PKCS#11 3.0 §5.4: it differs per table for OpenSC),
/// and applications tell providers apart by the manufacturer to work around their quirks.
///
/// # Safety
/// `info` must be NULL or point to a writable CK_INFO.
unsafe fn library_identity(info: *mut ck::CK_INFO) {
    // SAFETY: per the caller.
    let Some(info) = (unsafe { info.as_mut() }) else {
        return;
    };
    let mut description = [b' '; 32];
    let text = LIBRARY_DESCRIPTION.as_bytes();
    let len = text.len().min(description.len());
    description[..len].copy_from_slice(&text[..len]);
    info.libraryDescription = description;
    info.libraryVersion = LIBRARY_VERSION;
}

/// C_SessionCancel (PKCS#11 3.0 §5.6): the operations named by `flags` are over. Only on
/// CKR_OK: a provider may return CKR_OPERATION_CANCEL_FAILED having cancelled some of them,
/// and then it is not known which.
fn cancelled(c: &mut Call, flags: ck::CK_FLAGS, rv: ck::CK_RV) {
    if rv != ck::CKR_OK {
        return;
    }
    for (flag, op) in [
        (ck::CKF_MESSAGE_ENCRYPT, Op::MessageEncrypt),
        (ck::CKF_MESSAGE_DECRYPT, Op::MessageDecrypt),
        (ck::CKF_MESSAGE_SIGN, Op::MessageSign),
        (ck::CKF_MESSAGE_VERIFY, Op::MessageVerify),
        (ck::CKF_FIND_OBJECTS, Op::Find),
        (ck::CKF_ENCRYPT, Op::Encrypt),
        (ck::CKF_DECRYPT, Op::Decrypt),
        (ck::CKF_DIGEST, Op::Digest),
        (ck::CKF_SIGN, Op::Sign),
        (ck::CKF_SIGN_RECOVER, Op::SignRecover),
        (ck::CKF_VERIFY, Op::Verify),
        (ck::CKF_VERIFY_RECOVER, Op::VerifyRecover),
    ] {
        if flags & flag != 0 {
            c.end_op(op);
        }
    }
}

fn object_handle(c: &mut Call, h: Obj) {
    c.detail.key = Some(Arc::new(ObjectIdentity::handle_only(h as u64)));
}

pkcs11_functions! {
    C_Initialize: Acting (init_args: *mut c_void) { custom_per_table lifecycle::c_initialize }
    C_Finalize: GivingUp (reserved: *mut c_void) { custom_per_table lifecycle::c_finalize }
    C_GetInfo: Informational (info: *mut ck::CK_INFO) { |c| {} |c, rv| {
        if rv == ck::CKR_OK {
            // SAFETY: the provider accepted `info` as a CK_INFO it could write.
            unsafe { library_identity(info) }
        }
    } }
    C_GetFunctionList: Informational (list: *mut *mut ck::CK_FUNCTION_LIST) { custom super::C_GetFunctionList }
    C_GetSlotList: Informational (token_present: ck::CK_BBOOL, slots: *mut ck::CK_SLOT_ID, count: UlOut) {
        |c| {} |c, rv| { counted(c, count, rv) }
    }
    C_GetSlotInfo: Informational (slot: ck::CK_SLOT_ID, info: *mut ck::CK_SLOT_INFO) {
        |c| { c.detail.slot = Some(slot as u64) } |c, rv| {}
    }
    C_GetTokenInfo: Informational (slot: ck::CK_SLOT_ID, info: *mut ck::CK_TOKEN_INFO) {
        |c| { c.detail.slot = Some(slot as u64) } |c, rv| { c.token_info_returned(slot, info, rv) }
    }
    C_GetMechanismList: Informational (slot: ck::CK_SLOT_ID, list: *mut ck::CK_MECHANISM_TYPE, count: UlOut) {
        |c| { c.detail.slot = Some(slot as u64) } |c, rv| { counted(c, count, rv) }
    }
    C_GetMechanismInfo: Informational (slot: ck::CK_SLOT_ID, mech: ck::CK_MECHANISM_TYPE, info: *mut ck::CK_MECHANISM_INFO) {
        |c| { c.detail.slot = Some(slot as u64); mechanism_type(c, mech) } |c, rv| {}
    }
    C_InitToken: Acting (slot: ck::CK_SLOT_ID, pin: *mut ck::CK_UTF8CHAR, pin_len: Ul, label: *mut ck::CK_UTF8CHAR) {
        |c| {
            c.slot(slot);
            // The new label: 32 blank-padded bytes (PKCS#11 2.40 §5.6 C_InitToken).
            if let Some(l) = args::byte_slice(label, 32) {
                c.detail.token = Some(Arc::new(crate::format::record::TokenRef {
                    label: Bytes::from_slice(args::trim_padded(l)),
                    serial: c.detail.token.as_ref().map(|t| t.serial.clone()).unwrap_or_default(),
                }));
            }
        }
        |c, rv| { if rv == ck::CKR_OK { c.token_reinitialized(slot) } }
    }
    C_InitPIN: Acting (session: H, pin: *mut ck::CK_UTF8CHAR, pin_len: Ul) { |c| { c.session(session) } |c, rv| {} }
    C_SetPIN: Acting (session: H, old_pin: *mut ck::CK_UTF8CHAR, old_len: Ul, new_pin: *mut ck::CK_UTF8CHAR, new_len: Ul) {
        |c| { c.session(session) } |c, rv| {}
    }
    C_OpenSession: Acting (slot: ck::CK_SLOT_ID, flags: ck::CK_FLAGS, application: *mut c_void, notify: ck::CK_NOTIFY, session: *mut H) {
        |c| { c.slot(slot); c.detail.flags = Some(flags as u64) }
        |c, rv| { c.session_opened(slot, session, rv) }
    }
    C_CloseSession: GivingUp (session: H) {
        |c| { c.session(session) } |c, rv| { if rv == ck::CKR_OK { c.session_closed(session) } }
    }
    C_CloseAllSessions: GivingUp (slot: ck::CK_SLOT_ID) {
        |c| { c.slot(slot) } |c, rv| { if rv == ck::CKR_OK { c.all_sessions_closed(slot) } }
    }
    C_GetSessionInfo: Informational (session: H, info: *mut ck::CK_SESSION_INFO) { |c| { c.session(session) } |c, rv| {} }
    C_GetOperationState: Result (session: H, state: Buf, state_len: UlOut) {
        // The state blob may hold secrets: only its length is recorded.
        |c| { c.output_buffer(state, state_len); c.session(session) } |c, rv| { let _ = c.output(state, state_len, rv); }
    }
    C_SetOperationState: Acting (session: H, state: Buf, state_len: Ul, enc_key: Obj, auth_key: Obj) {
        |c| {
            c.session(session);
            c.in_len(state_len);
            if enc_key != 0 { c.key(enc_key) }
            if auth_key != 0 { c.key2(auth_key) }
        }
        |c, rv| {}
    }
    C_Login: Acting (session: H, user: ck::CK_USER_TYPE, pin: *mut ck::CK_UTF8CHAR, pin_len: Ul) {
        |c| { c.session(session); c.user_type(user) } |c, rv| { after_login(c, user, rv) }
    }
    C_Logout: GivingUp (session: H) {
        |c| { c.session(session) } |c, rv| { if rv == ck::CKR_OK { c.set_login(LoginState::Public) } }
    }
    C_CreateObject: Acting (session: H, template: Attrs, count: Ul, object: *mut Obj) {
        |c| { c.session(session); c.template(template, count) } |c, rv| { c.created(object, rv) }
    }
    C_CopyObject: Acting (session: H, object: Obj, template: Attrs, count: Ul, new_object: *mut Obj) {
        |c| { c.session(session); c.key(object); c.template(template, count) } |c, rv| { c.created(new_object, rv) }
    }
    C_DestroyObject: Acting (session: H, object: Obj) {
        |c| { c.session(session); c.key(object) } |c, rv| { if rv == ck::CKR_OK { c.forget_key(object) } }
    }
    C_GetObjectSize: Informational (session: H, object: Obj, size: UlOut) {
        |c| { c.session(session); object_handle(c, object) } |c, rv| {}
    }
    C_GetAttributeValue: Result (session: H, object: Obj, template: Attrs, count: Ul) {
        |c| { c.attribute_buffers(template, count); c.session(session); c.key(object) } |c, rv| { c.attributes_read(template, count, rv) }
    }
    C_SetAttributeValue: Acting (session: H, object: Obj, template: Attrs, count: Ul) {
        |c| { c.session(session); c.key(object); c.template(template, count) } |c, rv| { c.forget_key(object) }
    }
    C_FindObjectsInit: Prepare (session: H, template: Attrs, count: Ul) {
        |c| { c.session(session); c.template(template, count); c.starts(Op::Find) } |c, rv| {}
    }
    C_FindObjects: Result (session: H, objects: *mut Obj, max: Ul, found: UlOut) {
        |c| { c.given_buffer(objects.cast(), (max as usize).saturating_mul(std::mem::size_of::<Obj>())); c.session(session); c.within(Op::Find) }
        |c, rv| { c.objects_found(objects, max, found, rv) }
    }
    C_FindObjectsFinal: GivingUp (session: H) { |c| { c.session(session); c.within(Op::Find) } |c, rv| { c.end_op(Op::Find) } }
    C_EncryptInit: Prepare (session: H, mech: Mech, key: Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(key); c.starts(Op::Encrypt) } |c, rv| {}
    }
    C_Encrypt: Result (session: H, data: Buf, data_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Encrypt); c.in_len(data_len) }
        |c, rv| { c.output_final(Some(Op::Encrypt), out, out_len, rv) }
    }
    C_EncryptUpdate: Result (session: H, part: Buf, part_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Encrypt); c.in_len(part_len) }
        |c, rv| { let _ = c.output(out, out_len, rv); c.update_done(Op::Encrypt, rv) }
    }
    C_EncryptFinal: Result (session: H, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Encrypt) } |c, rv| { c.output_final(Some(Op::Encrypt), out, out_len, rv) }
    }
    C_DecryptInit: Prepare (session: H, mech: Mech, key: Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(key); c.starts(Op::Decrypt) } |c, rv| {}
    }
    C_Decrypt: Result (session: H, data: Buf, data_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Decrypt); c.in_len(data_len) }
        |c, rv| { c.output_final(Some(Op::Decrypt), out, out_len, rv) }
    }
    C_DecryptUpdate: Result (session: H, part: Buf, part_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Decrypt); c.in_len(part_len) }
        |c, rv| { let _ = c.output(out, out_len, rv); c.update_done(Op::Decrypt, rv) }
    }
    C_DecryptFinal: Result (session: H, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Decrypt) } |c, rv| { c.output_final(Some(Op::Decrypt), out, out_len, rv) }
    }
    C_DigestInit: Prepare (session: H, mech: Mech) {
        |c| { c.session(session); c.mechanism(mech); c.starts(Op::Digest) } |c, rv| {}
    }
    C_Digest: Result (session: H, data: Buf, data_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Digest); c.in_len(data_len) }
        |c, rv| { c.output_final(Some(Op::Digest), out, out_len, rv) }
    }
    C_DigestUpdate: Result (session: H, part: Buf, part_len: Ul) {
        |c| { c.session(session); c.within(Op::Digest); c.in_len(part_len) } |c, rv| { c.update_done(Op::Digest, rv) }
    }
    // C_DigestKey feeds a key's value into a digest, so it uses a key: acting.
    C_DigestKey: Acting (session: H, key: Obj) {
        |c| { c.session(session); c.within(Op::Digest); c.key2(key) } |c, rv| { c.update_done(Op::Digest, rv) }
    }
    C_DigestFinal: Result (session: H, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Digest) } |c, rv| { c.output_final(Some(Op::Digest), out, out_len, rv) }
    }
    C_SignInit: Prepare (session: H, mech: Mech, key: Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(key); c.starts(Op::Sign) } |c, rv| {}
    }
    C_Sign: Result (session: H, data: Buf, data_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Sign); c.in_len(data_len) }
        |c, rv| { c.output_final(Some(Op::Sign), out, out_len, rv) }
    }
    C_SignUpdate: Result (session: H, part: Buf, part_len: Ul) {
        |c| { c.session(session); c.within(Op::Sign); c.in_len(part_len) } |c, rv| { c.update_done(Op::Sign, rv) }
    }
    C_SignFinal: Result (session: H, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Sign) } |c, rv| { c.output_final(Some(Op::Sign), out, out_len, rv) }
    }
    C_SignRecoverInit: Prepare (session: H, mech: Mech, key: Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(key); c.starts(Op::SignRecover) } |c, rv| {}
    }
    C_SignRecover: Result (session: H, data: Buf, data_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::SignRecover); c.in_len(data_len) }
        |c, rv| { c.output_final(Some(Op::SignRecover), out, out_len, rv) }
    }
    C_VerifyInit: Prepare (session: H, mech: Mech, key: Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(key); c.starts(Op::Verify) } |c, rv| {}
    }
    // The verdict is the result: its record is written before the caller learns it.
    C_Verify: Result (session: H, data: Buf, data_len: Ul, sig: Buf, sig_len: Ul) {
        |c| { c.session(session); c.within(Op::Verify); c.in_len(data_len); c.detail.sig_len = Some(sig_len as u64) }
        |c, rv| { c.verdict(); c.end_op(Op::Verify) }
    }
    C_VerifyUpdate: Result (session: H, part: Buf, part_len: Ul) {
        |c| { c.session(session); c.within(Op::Verify); c.in_len(part_len) } |c, rv| { c.update_done(Op::Verify, rv) }
    }
    C_VerifyFinal: Result (session: H, sig: Buf, sig_len: Ul) {
        |c| { c.session(session); c.within(Op::Verify); c.detail.sig_len = Some(sig_len as u64) }
        |c, rv| { c.verdict(); c.end_op(Op::Verify) }
    }
    C_VerifyRecoverInit: Prepare (session: H, mech: Mech, key: Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(key); c.starts(Op::VerifyRecover) } |c, rv| {}
    }
    C_VerifyRecover: Result (session: H, sig: Buf, sig_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::VerifyRecover); c.detail.sig_len = Some(sig_len as u64) }
        |c, rv| { c.output_final(Some(Op::VerifyRecover), out, out_len, rv) }
    }
    // Dual-function updates record the operation that produces the output.
    C_DigestEncryptUpdate: Result (session: H, part: Buf, part_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Encrypt); c.in_len(part_len) }
        |c, rv| { let _ = c.output(out, out_len, rv); c.update_done(Op::Encrypt, rv); c.update_done(Op::Digest, rv) }
    }
    C_DecryptDigestUpdate: Result (session: H, part: Buf, part_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Decrypt); c.in_len(part_len) }
        |c, rv| { let _ = c.output(out, out_len, rv); c.update_done(Op::Decrypt, rv); c.update_done(Op::Digest, rv) }
    }
    C_SignEncryptUpdate: Result (session: H, part: Buf, part_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Encrypt); c.in_len(part_len) }
        |c, rv| { let _ = c.output(out, out_len, rv); c.update_done(Op::Encrypt, rv); c.update_done(Op::Sign, rv) }
    }
    C_DecryptVerifyUpdate: Result (session: H, part: Buf, part_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::Decrypt); c.in_len(part_len) }
        |c, rv| { let _ = c.output(out, out_len, rv); c.update_done(Op::Decrypt, rv); c.update_done(Op::Verify, rv) }
    }
    C_GenerateKey: Acting (session: H, mech: Mech, template: Attrs, count: Ul, key: *mut Obj) {
        |c| { c.session(session); c.mechanism(mech); c.template(template, count) } |c, rv| { c.created(key, rv) }
    }
    C_GenerateKeyPair: Acting (session: H, mech: Mech, pub_template: Attrs, pub_count: Ul, priv_template: Attrs, priv_count: Ul, pub_key: *mut Obj, priv_key: *mut Obj) {
        |c| { c.session(session); c.mechanism(mech); c.template(pub_template, pub_count); c.template2(priv_template, priv_count) }
        |c, rv| { c.created(pub_key, rv); c.created_private(priv_key, rv) }
    }
    // Uses two keys and hands out key material: intent first, outcome before the bytes.
    C_WrapKey: ActingResult (session: H, mech: Mech, wrapping_key: Obj, key: Obj, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.mechanism(mech); c.key(wrapping_key); c.key2(key) }
        |c, rv| { let _ = c.output(out, out_len, rv); }
    }
    C_UnwrapKey: Acting (session: H, mech: Mech, unwrapping_key: Obj, wrapped: Buf, wrapped_len: Ul, template: Attrs, count: Ul, key: *mut Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(unwrapping_key); c.in_len(wrapped_len); c.template(template, count) }
        |c, rv| { c.created(key, rv) }
    }
    C_DeriveKey: Acting (session: H, mech: Mech, base_key: Obj, template: Attrs, count: Ul, key: *mut Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(base_key); c.template(template, count) }
        |c, rv| { c.created(key, rv) }
    }
    C_SeedRandom: Acting (session: H, seed: Buf, seed_len: Ul) { |c| { c.session(session); c.in_len(seed_len) } |c, rv| {} }
    C_GenerateRandom: Result (session: H, out: Buf, len: Ul) {
        |c| { c.given_buffer(out, len as usize); c.session(session); c.detail.out_len = Some(len as u64) }
        |c, rv| { if rv == ck::CKR_OK { c.output_region(out, len as usize) } }
    }
    C_GetFunctionStatus: Informational (session: H) { |c| { c.session(session) } |c, rv| {} }
    C_CancelFunction: Informational (session: H) { |c| { c.session(session) } |c, rv| {} }
    C_WaitForSlotEvent: Informational (flags: ck::CK_FLAGS, slot: *mut ck::CK_SLOT_ID, reserved: *mut c_void) {
        |c| { c.detail.flags = Some(flags as u64) }
        |c, rv| { if rv == ck::CKR_OK { c.detail.slot = args::read(slot).map(|s| s as u64) } }
    }
    C_GetInterfaceList: Informational (list: *mut ck::CK_INTERFACE, count: UlOut) { custom super::C_GetInterfaceList }
    C_GetInterface: Informational (name: *mut ck::CK_UTF8CHAR, version: *mut ck::CK_VERSION, interface: *mut *mut ck::CK_INTERFACE, flags: ck::CK_FLAGS) {
        custom super::C_GetInterface
    }
    C_LoginUser: Acting (session: H, user: ck::CK_USER_TYPE, pin: *mut ck::CK_UTF8CHAR, pin_len: Ul, username: *mut ck::CK_UTF8CHAR, username_len: Ul) {
        |c| {
            c.session(session);
            c.user_type(user);
            // The user name is identity and is recorded; the PIN is not.
            if (username_len as usize) <= crate::format::redact::MAX_LOGGED_VALUE_BYTES {
                c.detail.username = args::byte_slice(username, username_len as u64).map(Bytes::from_slice);
            }
        }
        |c, rv| { after_login(c, user, rv) }
    }
    C_SessionCancel: GivingUp (session: H, flags: ck::CK_FLAGS) {
        |c| { c.session(session); c.detail.flags = Some(flags as u64) } |c, rv| { cancelled(c, flags, rv) }
    }
    C_MessageEncryptInit: Prepare (session: H, mech: Mech, key: Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(key); c.starts(Op::MessageEncrypt) } |c, rv| {}
    }
    C_EncryptMessage: Result (session: H, param: *mut c_void, param_len: Ul, aad: Buf, aad_len: Ul, plain: Buf, plain_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::MessageEncrypt); c.in_len(plain_len) } |c, rv| { let _ = c.output(out, out_len, rv); }
    }
    C_EncryptMessageBegin: Result (session: H, param: *mut c_void, param_len: Ul, aad: Buf, aad_len: Ul) {
        |c| { c.session(session); c.within(Op::MessageEncrypt) } |c, rv| {}
    }
    C_EncryptMessageNext: Result (session: H, param: *mut c_void, param_len: Ul, plain: Buf, plain_len: Ul, out: Buf, out_len: UlOut, flags: ck::CK_FLAGS) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::MessageEncrypt); c.in_len(plain_len) } |c, rv| { let _ = c.output(out, out_len, rv); }
    }
    C_MessageEncryptFinal: GivingUp (session: H) {
        |c| { c.session(session); c.within(Op::MessageEncrypt) } |c, rv| { c.end_op(Op::MessageEncrypt) }
    }
    C_MessageDecryptInit: Prepare (session: H, mech: Mech, key: Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(key); c.starts(Op::MessageDecrypt) } |c, rv| {}
    }
    C_DecryptMessage: Result (session: H, param: *mut c_void, param_len: Ul, aad: Buf, aad_len: Ul, cipher: Buf, cipher_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::MessageDecrypt); c.in_len(cipher_len) } |c, rv| { let _ = c.output(out, out_len, rv); }
    }
    C_DecryptMessageBegin: Result (session: H, param: *mut c_void, param_len: Ul, aad: Buf, aad_len: Ul) {
        |c| { c.session(session); c.within(Op::MessageDecrypt) } |c, rv| {}
    }
    C_DecryptMessageNext: Result (session: H, param: *mut c_void, param_len: Ul, cipher: Buf, cipher_len: Ul, out: Buf, out_len: UlOut, flags: ck::CK_FLAGS) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::MessageDecrypt); c.in_len(cipher_len) } |c, rv| { let _ = c.output(out, out_len, rv); }
    }
    C_MessageDecryptFinal: GivingUp (session: H) {
        |c| { c.session(session); c.within(Op::MessageDecrypt) } |c, rv| { c.end_op(Op::MessageDecrypt) }
    }
    C_MessageSignInit: Prepare (session: H, mech: Mech, key: Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(key); c.starts(Op::MessageSign) } |c, rv| {}
    }
    C_SignMessage: Result (session: H, param: *mut c_void, param_len: Ul, data: Buf, data_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::MessageSign); c.in_len(data_len) } |c, rv| { let _ = c.output(out, out_len, rv); }
    }
    C_SignMessageBegin: Result (session: H, param: *mut c_void, param_len: Ul) {
        |c| { c.session(session); c.within(Op::MessageSign) } |c, rv| {}
    }
    C_SignMessageNext: Result (session: H, param: *mut c_void, param_len: Ul, data: Buf, data_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.within(Op::MessageSign); c.in_len(data_len) } |c, rv| { let _ = c.output(out, out_len, rv); }
    }
    C_MessageSignFinal: GivingUp (session: H) {
        |c| { c.session(session); c.within(Op::MessageSign) } |c, rv| { c.end_op(Op::MessageSign) }
    }
    C_MessageVerifyInit: Prepare (session: H, mech: Mech, key: Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(key); c.starts(Op::MessageVerify) } |c, rv| {}
    }
    C_VerifyMessage: Result (session: H, param: *mut c_void, param_len: Ul, data: Buf, data_len: Ul, sig: Buf, sig_len: Ul) {
        |c| { c.session(session); c.within(Op::MessageVerify); c.in_len(data_len); c.detail.sig_len = Some(sig_len as u64) }
        |c, rv| { c.verdict() }
    }
    C_VerifyMessageBegin: Result (session: H, param: *mut c_void, param_len: Ul) {
        |c| { c.session(session); c.within(Op::MessageVerify) } |c, rv| {}
    }
    C_VerifyMessageNext: Result (session: H, param: *mut c_void, param_len: Ul, data: Buf, data_len: Ul, sig: Buf, sig_len: Ul) {
        |c| { c.session(session); c.within(Op::MessageVerify); c.in_len(data_len); c.detail.sig_len = Some(sig_len as u64) }
        |c, rv| { if !sig.is_null() { c.verdict() } }
    }
    C_MessageVerifyFinal: GivingUp (session: H) {
        |c| { c.session(session); c.within(Op::MessageVerify) } |c, rv| { c.end_op(Op::MessageVerify) }
    }
    // Creates a key and hands out a ciphertext.
    C_EncapsulateKey: ActingResult (session: H, mech: Mech, public_key: Obj, template: Attrs, count: Ul, out: Buf, out_len: UlOut, key: *mut Obj) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.mechanism(mech); c.key(public_key); c.template(template, count) }
        |c, rv| { let _ = c.output(out, out_len, rv); c.created(key, rv) }
    }
    C_DecapsulateKey: Acting (session: H, mech: Mech, private_key: Obj, template: Attrs, count: Ul, cipher: Buf, cipher_len: Ul, key: *mut Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(private_key); c.template(template, count); c.in_len(cipher_len) }
        |c, rv| { c.created(key, rv) }
    }
    C_VerifySignatureInit: Prepare (session: H, mech: Mech, key: Obj, sig: Buf, sig_len: Ul) {
        |c| { c.session(session); c.mechanism(mech); c.key(key); c.detail.sig_len = Some(sig_len as u64); c.starts(Op::VerifySignature) }
        |c, rv| {}
    }
    C_VerifySignature: Result (session: H, data: Buf, data_len: Ul) {
        |c| { c.session(session); c.within(Op::VerifySignature); c.in_len(data_len) } |c, rv| { c.verdict(); c.end_op(Op::VerifySignature) }
    }
    C_VerifySignatureUpdate: Result (session: H, part: Buf, part_len: Ul) {
        |c| { c.session(session); c.within(Op::VerifySignature); c.in_len(part_len) } |c, rv| { c.update_done(Op::VerifySignature, rv) }
    }
    C_VerifySignatureFinal: Result (session: H) {
        |c| { c.session(session); c.within(Op::VerifySignature) } |c, rv| { c.verdict(); c.end_op(Op::VerifySignature) }
    }
    C_GetSessionValidationFlags: Informational (session: H, flags_type: ck::CK_SESSION_VALIDATION_FLAGS_TYPE, flags: *mut ck::CK_FLAGS) {
        |c| { c.session(session) } |c, rv| {}
    }
    C_AsyncComplete: Result (session: H, function_name: *mut ck::CK_UTF8CHAR, result: *mut ck::CK_ASYNC_DATA) {
        |c| { c.session(session) } |c, rv| { if rv == ck::CKR_OK { c.verdict() } }
    }
    C_AsyncGetID: Informational (session: H, function_name: *mut ck::CK_UTF8CHAR, id: UlOut) { |c| { c.session(session) } |c, rv| {} }
    C_AsyncJoin: Result (session: H, function_name: *mut ck::CK_UTF8CHAR, id: Ul, data: Buf, data_len: Ul) {
        |c| { c.session(session) } |c, rv| { if rv == ck::CKR_OK { c.verdict() } }
    }
    C_WrapKeyAuthenticated: ActingResult (session: H, mech: Mech, wrapping_key: Obj, key: Obj, aad: Buf, aad_len: Ul, out: Buf, out_len: UlOut) {
        |c| { c.output_buffer(out, out_len); c.session(session); c.mechanism(mech); c.key(wrapping_key); c.key2(key) }
        |c, rv| { let _ = c.output(out, out_len, rv); }
    }
    C_UnwrapKeyAuthenticated: Acting (session: H, mech: Mech, unwrapping_key: Obj, wrapped: Buf, wrapped_len: Ul, template: Attrs, count: Ul, aad: Buf, aad_len: Ul, key: *mut Obj) {
        |c| { c.session(session); c.mechanism(mech); c.key(unwrapping_key); c.in_len(wrapped_len); c.template(template, count) }
        |c, rv| { c.created(key, rv) }
    }
}
