//! PKCS#11 3.0 workflows against a full 3.x soft token, kryoptic 1.1.0, directly and through
//! the shim, compared: interface negotiation, token and PIN set-up, key generation,
//! message-based AES-GCM encryption and decryption, `C_SessionCancel`, and sign/verify. Then
//! the shim's log: it verifies, it has a record of every call, the message-based records carry
//! the operation's mechanism and key and each message's lengths, and no secret is in it.
//!
//! kryoptic is GPL-3.0-or-later: a test provider only. scripts/build-kryoptic.sh builds it
//! outside the checkout and scripts/test.sh exports its path as P11AUDIT_TEST_KRYOPTIC. Without
//! that variable these tests fail when CI is set (CI=true) and are skipped with a notice
//! otherwise:
//!
//!   P11AUDIT_TEST_KRYOPTIC=$(scripts/build-kryoptic.sh) cargo test --test kryoptic
//!
//! As in tests/interfaces.rs, each run is a child process (this test binary re-executed) that
//! drives the module through the raw C ABI and prints one marked JSON line.

// CK_ULONG is u64 here and u32 elsewhere: the casts keep the driver portable.
#![allow(clippy::unnecessary_cast)]

mod common;

use common::raw::{attr, attr_bytes, mech, os_locking_args, rv_name, FALSE, TRUE};
use common::*;
use cryptoki_sys::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use std::ffi::{c_void, CStr, CString, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::null_mut;
use std::sync::{Mutex, OnceLock};

/// The kryoptic library, exported by scripts/test.sh.
const KRYOPTIC_VAR: &str = "P11AUDIT_TEST_KRYOPTIC";
/// Set in the child processes only: the PKCS#11 module the driver loads.
const MODULE_ENV: &str = "P11AUDIT_TEST_KRYOPTIC_MODULE";
const MARKER: &str = "P11AUDIT-KRYOPTIC-RESULT ";
const EARLY_NOTE: &str = "answered by p11audit before C_Initialize";

/// The slot the kryoptic configuration defines.
const SLOT: CK_SLOT_ID = 42;
const TOKEN_LABEL: &str = "p11audit-kryoptic";
const WRONG_PIN: &str = "Wrong-canary-Rt8";
const USER_NAME: &str = "auditor";
// Secrets, shaped so that finding one in the log cannot be chance.
const PLAINTEXT: &[u8] = b"kryoptic message canary Hq3w, part one|part two Zc8e";
const SPLIT_AT: usize = 32;
const AAD: &[u8] = b"kr-aad-canary-Tn6";
const IV1: [u8; 12] = [
    0x3d, 0x91, 0x5a, 0xe7, 0x08, 0xc4, 0x6b, 0x2f, 0xa1, 0x77, 0x0e, 0xd9,
];
const IV2: [u8; 12] = [
    0x6e, 0x02, 0xb8, 0x4d, 0x93, 0x1a, 0xf5, 0x60, 0x2c, 0xe8, 0x47, 0xbb,
];
const IV3: [u8; 12] = [
    0xc5, 0x3a, 0x80, 0x16, 0xdf, 0x59, 0xa4, 0x0b, 0x72, 0xee, 0x31, 0x95,
];
const SIGNED: &[u8] = b"kryoptic signed data canary Mv2p";

/// The imported AES-256 key: a distinctive pattern.
fn aes_value() -> Vec<u8> {
    (0u8..32).map(|i| 0x5a ^ i.wrapping_mul(29)).collect()
}

/// The imported HMAC key.
fn hmac_value() -> Vec<u8> {
    (0u8..32)
        .map(|i| 0xc3 ^ i.wrapping_mul(53).rotate_left(2))
        .collect()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The kryoptic library to test, or None (with a notice) when a developer runs the tests
/// without it. In CI its absence is a failure: the tests must not silently not run.
fn kryoptic_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(KRYOPTIC_VAR).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{KRYOPTIC_VAR}={} does not exist: run scripts/build-kryoptic.sh",
            p.display()
        );
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    assert!(
        !ci,
        "{KRYOPTIC_VAR} is not set, and CI is: the kryoptic tests must run in CI. \
         scripts/test.sh builds kryoptic with scripts/build-kryoptic.sh and exports it"
    );
    // Written past the test harness's output capture, so that the skip is seen.
    let notice = format!(
        "\nNOTICE: kryoptic tests skipped: {KRYOPTIC_VAR} is not set. Run scripts/test.sh, or \
         {KRYOPTIC_VAR}=$(scripts/build-kryoptic.sh) cargo test --test kryoptic\n"
    );
    let _ = std::io::stderr().write_all(notice.as_bytes());
    None
}

/// A kryoptic configuration with one sqlite token in slot 42, under `dir`; returns the path
/// for KRYOPTIC_CONF.
fn kryoptic_conf(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("token dir");
    let conf = dir.join("kryoptic.toml");
    let db = dir.join("token.sql");
    std::fs::write(
        &conf,
        format!(
            "[[slots]]\nslot = {SLOT}\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
            db.display()
        ),
    )
    .expect("write kryoptic.toml");
    conf
}

// =============================================================================================
// Raw C ABI helpers (children only)

type GetInterfaceList = unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV;
type GetInterface = unsafe extern "C" fn(
    *mut CK_UTF8CHAR,
    *mut CK_VERSION,
    *mut *mut CK_INTERFACE,
    CK_FLAGS,
) -> CK_RV;

/// `C_GetInterfaceList` and `C_GetInterface` of `module` (dlopen'ed, never closed).
fn load_negotiation(module: &str) -> (GetInterfaceList, GetInterface) {
    let c = CString::new(module).expect("module path");
    // SAFETY: a NUL-terminated path; the handle is never closed.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message after a failed dlopen.
        let err = unsafe { CStr::from_ptr(libc::dlerror()) };
        panic!("dlopen {module}: {}", err.to_string_lossy());
    }
    // SAFETY: a live handle and NUL-terminated names.
    let (list, get) = unsafe {
        (
            libc::dlsym(h, c"C_GetInterfaceList".as_ptr()),
            libc::dlsym(h, c"C_GetInterface".as_ptr()),
        )
    };
    assert!(
        !list.is_null() && !get.is_null(),
        "{module} does not export C_GetInterfaceList and C_GetInterface"
    );
    // SAFETY: the PKCS#11 3.0 signatures of these entry points (§5.4).
    unsafe {
        (
            std::mem::transmute::<*mut c_void, GetInterfaceList>(list),
            std::mem::transmute::<*mut c_void, GetInterface>(get),
        )
    }
}

/// `{"name": …, "version": "3.0", "flags": n}` of an interface a module handed out.
fn describe(i: *const CK_INTERFACE) -> Value {
    assert!(!i.is_null(), "NULL interface");
    // SAFETY: a module's CK_INTERFACE with a NUL-terminated name and a table that starts with
    // its CK_VERSION.
    unsafe {
        let name = CStr::from_ptr((*i).pInterfaceName as *const std::ffi::c_char);
        let v = ((*i).pFunctionList as *const CK_VERSION).read_unaligned();
        json!({
            "name": name.to_string_lossy(),
            "version": format!("{}.{}", v.major, v.minor),
            "flags": (*i).flags as u64,
        })
    }
}

fn padded(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

/// The driver's state: the 3.0 table and the calls made so far.
struct Driver {
    f: &'static CK_FUNCTION_LIST_3_0,
    calls: Vec<Value>,
    /// The shim has its configuration (C_Initialize succeeded): from here on it logs.
    configured: bool,
}

impl Driver {
    /// Records a call: `out` (set later with `out`) must be equal direct and through the
    /// shim; `audit` (set with `audit`) is what the shim's record of it must contain.
    fn rec(&mut self, step: &str, function: &str, rv: CK_RV) {
        self.calls.push(json!({
            "step": step,
            "fn": function,
            "rv": rv_name(rv),
            "configured": self.configured,
            "out": null,
        }));
    }

    fn out(&mut self, out: Value) {
        self.calls.last_mut().expect("a call")["out"] = out;
    }

    fn audit(&mut self, expected: Value) {
        self.calls.last_mut().expect("a call")["audit"] = expected;
    }

    /// What the record must contain after a C_SessionCancel (checked by a test of its own).
    fn audit_after_cancel(&mut self, expected: Value) {
        self.calls.last_mut().expect("a call")["audit_after_cancel"] = expected;
    }
}

/// Calls `$name` through the driver's table and records it as `$step`; evaluates to the rv.
macro_rules! call {
    ($d:expr, $step:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        let func = $d.f.$name.expect(stringify!($name));
        #[allow(unused_unsafe)]
        // SAFETY: every pointer argument points to a live local of the size the call expects.
        let rv = unsafe { func($($arg),*) };
        $d.rec($step, stringify!($name), rv);
        rv
    }};
}

/// Fails the driver unless the last call returned CKR_OK.
#[track_caller]
fn want_ok(d: &Driver) {
    let last = d.calls.last().expect("a call");
    assert_eq!(
        last["rv"], "CKR_OK",
        "{} ({}) failed",
        last["step"], last["fn"]
    );
}

/// A secret key's identity as the log should describe it.
fn key_identity(handle: CK_OBJECT_HANDLE, key_type: &str, label: &str) -> Value {
    json!({"handle": handle as u64, "class": "CKO_SECRET_KEY", "key_type": key_type, "label": label})
}

/// The IV and tag of one AES-GCM message, and the generator for its IV.
struct Gcm {
    iv: [u8; 12],
    tag: [u8; 16],
    generator: CK_GENERATOR_FUNCTION,
}

impl Gcm {
    fn new(iv: [u8; 12], tag: [u8; 16], generator: CK_GENERATOR_FUNCTION) -> Gcm {
        Gcm { iv, tag, generator }
    }

    /// Parameters pointing into `self`, for one call.
    fn params(&mut self) -> CK_GCM_MESSAGE_PARAMS {
        CK_GCM_MESSAGE_PARAMS {
            pIv: self.iv.as_mut_ptr(),
            ulIvLen: self.iv.len() as CK_ULONG,
            ulIvFixedBits: 0,
            ivGenerator: self.generator,
            pTag: self.tag.as_mut_ptr(),
            ulTagBits: 128,
        }
    }
}

const GCM_PARAMS_LEN: CK_ULONG = std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;

/// C_EncryptMessage (or C_DecryptMessage) of `data` with `aad`, into a buffer with room for
/// `room` bytes (None: a length query). Returns the output (for a length query, that many
/// zero bytes).
#[allow(clippy::too_many_arguments)]
fn one_message(
    d: &mut Driver,
    step: &str,
    s: CK_SESSION_HANDLE,
    decrypt: bool,
    g: &mut Gcm,
    aad: &[u8],
    data: &[u8],
    room: Option<usize>,
) -> Vec<u8> {
    let mut p = g.params();
    let p = &mut p as *mut CK_GCM_MESSAGE_PARAMS as *mut c_void;
    let (mut aad, mut data) = (aad.to_vec(), data.to_vec());
    let aad_p = if aad.is_empty() {
        null_mut()
    } else {
        aad.as_mut_ptr()
    };
    let (al, dl) = (aad.len() as CK_ULONG, data.len() as CK_ULONG);
    let mut out = vec![0u8; room.unwrap_or(0)];
    let out_p = if room.is_some() {
        out.as_mut_ptr()
    } else {
        null_mut()
    };
    let mut len = out.len() as CK_ULONG;
    let dp = data.as_mut_ptr();
    if decrypt {
        call!(
            d,
            step,
            C_DecryptMessage(s, p, GCM_PARAMS_LEN, aad_p, al, dp, dl, out_p, &mut len)
        );
    } else {
        call!(
            d,
            step,
            C_EncryptMessage(s, p, GCM_PARAMS_LEN, aad_p, al, dp, dl, out_p, &mut len)
        );
    }
    out.resize(len as usize, 0);
    out
}

/// C_EncryptMessageBegin (or C_DecryptMessageBegin) with `aad`.
fn message_begin(
    d: &mut Driver,
    step: &str,
    s: CK_SESSION_HANDLE,
    decrypt: bool,
    g: &mut Gcm,
    aad: &[u8],
) {
    let mut p = g.params();
    let p = &mut p as *mut CK_GCM_MESSAGE_PARAMS as *mut c_void;
    let mut aad = aad.to_vec();
    let al = aad.len() as CK_ULONG;
    if decrypt {
        call!(
            d,
            step,
            C_DecryptMessageBegin(s, p, GCM_PARAMS_LEN, aad.as_mut_ptr(), al)
        );
    } else {
        call!(
            d,
            step,
            C_EncryptMessageBegin(s, p, GCM_PARAMS_LEN, aad.as_mut_ptr(), al)
        );
    }
}

/// C_EncryptMessageNext (or C_DecryptMessageNext) of one part; returns its output.
fn message_part(
    d: &mut Driver,
    step: &str,
    s: CK_SESSION_HANDLE,
    decrypt: bool,
    g: &mut Gcm,
    part: &[u8],
    flags: CK_FLAGS,
) -> Vec<u8> {
    let mut p = g.params();
    let p = &mut p as *mut CK_GCM_MESSAGE_PARAMS as *mut c_void;
    let mut part = part.to_vec();
    let (pp, pl) = (part.as_mut_ptr(), part.len() as CK_ULONG);
    let mut out = vec![0u8; part.len() + 16];
    let mut len = out.len() as CK_ULONG;
    let op = out.as_mut_ptr();
    if decrypt {
        call!(
            d,
            step,
            C_DecryptMessageNext(s, p, GCM_PARAMS_LEN, pp, pl, op, &mut len, flags)
        );
    } else {
        call!(
            d,
            step,
            C_EncryptMessageNext(s, p, GCM_PARAMS_LEN, pp, pl, op, &mut len, flags)
        );
    }
    out.truncate(len as usize);
    out
}

// =============================================================================================
// The driver

#[test]
fn kryoptic_driver() {
    let Ok(module) = std::env::var(MODULE_ENV) else {
        return; // Only a re-executed child runs the driver.
    };
    let mut facts = Map::new();
    let f = negotiate(&module, &mut facts);
    let mut d = Driver {
        f,
        calls: Vec::new(),
        configured: false,
    };

    let mut args = os_locking_args();
    call!(
        d,
        "C_Initialize",
        C_Initialize(&mut args as *mut _ as *mut c_void)
    );
    want_ok(&d);
    d.configured = true;

    // SAFETY: CK_INFO is plain data.
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    call!(d, "C_GetInfo", C_GetInfo(&mut info));
    want_ok(&d);
    let info_v = json!({
        "cryptokiVersion": format!("{}.{}", info.cryptokiVersion.major, info.cryptokiVersion.minor),
        "manufacturerID": padded(&info.manufacturerID),
        "libraryDescription": padded(&info.libraryDescription),
        "libraryVersion": format!("{}.{}", info.libraryVersion.major, info.libraryVersion.minor),
    });
    d.out(info_v.clone());
    facts.insert("info".into(), info_v);

    let s = token_and_login(&mut d);
    let keys = keys(&mut d, s);
    message_encrypt_decrypt(&mut d, s, &keys);
    random_iv_round_trip(&mut d, s, &keys);
    session_cancel(&mut d, s, &keys);
    sign_verify(&mut d, s, &keys);

    call!(
        d,
        "destroy the generated AES key",
        C_DestroyObject(s, keys.aes_gen)
    );
    call!(d, "logout", C_Logout(s));
    call!(d, "close", C_CloseSession(s));
    call!(d, "C_Finalize", C_Finalize(null_mut()));
    want_ok(&d);

    print_marked(MARKER, &json!({ "facts": facts, "calls": d.calls }));
}

/// Interface negotiation before C_Initialize, recorded in `facts`; returns the 3.0 table.
fn negotiate(module: &str, facts: &mut Map<String, Value>) -> &'static CK_FUNCTION_LIST_3_0 {
    let (list, get_fn) = load_negotiation(module);
    let mut n: CK_ULONG = 0;
    // SAFETY: a length query.
    let rv = unsafe { list(null_mut(), &mut n) };
    assert_eq!(
        rv,
        CKR_OK,
        "C_GetInterfaceList length query: {}",
        rv_name(rv)
    );
    let mut buf = vec![
        CK_INTERFACE {
            pInterfaceName: null_mut(),
            pFunctionList: null_mut(),
            flags: 0,
        };
        n as usize
    ];
    // SAFETY: room for n entries.
    let rv = unsafe { list(buf.as_mut_ptr(), &mut n) };
    assert_eq!(rv, CKR_OK, "C_GetInterfaceList: {}", rv_name(rv));
    let listed: Vec<Value> = buf.iter().take(n as usize).map(|i| describe(i)).collect();
    facts.insert("list".into(), json!(listed));

    let get = |name: Option<&str>, version: Option<(u8, u8)>, flags: CK_FLAGS| {
        let name = name.map(|n| CString::new(n).expect("name"));
        let mut v = version.map(|(major, minor)| CK_VERSION { major, minor });
        let mut p: *mut CK_INTERFACE = null_mut();
        // SAFETY: NULL or NUL-terminated name, NULL or readable version, writable out-pointer.
        let rv = unsafe {
            get_fn(
                name.as_ref()
                    .map_or(null_mut(), |n| n.as_ptr() as *mut CK_UTF8CHAR),
                v.as_mut().map_or(null_mut(), |v| v as *mut CK_VERSION),
                &mut p,
                flags,
            )
        };
        (rv, p)
    };
    let mut by = Map::new();
    for (what, name, version, flags) in [
        ("default", None, None, 0),
        ("PKCS 11", Some("PKCS 11"), None, 0),
        ("PKCS 11 2.40", Some("PKCS 11"), Some((2, 40)), 0),
        ("PKCS 11 3.0", Some("PKCS 11"), Some((3, 0)), 0),
        ("PKCS 11 3.1", Some("PKCS 11"), Some((3, 1)), 0),
        ("PKCS 11 3.2", Some("PKCS 11"), Some((3, 2)), 0),
        ("any name 2.40", None, Some((2, 40)), 0),
        ("vendor", Some("Vendor Kryoptic"), None, 0),
        ("fork-safe", Some("PKCS 11"), None, CKF_INTERFACE_FORK_SAFE),
    ] {
        let (rv, p) = get(name, version, flags);
        let got = if rv == CKR_OK {
            describe(p)
        } else {
            Value::Null
        };
        by.insert(what.into(), json!([rv_name(rv), got]));
    }
    // SAFETY: NULL ppInterface must be refused without writing.
    let rv = unsafe { get_fn(null_mut(), null_mut(), null_mut(), 0) };
    by.insert("NULL ppInterface".into(), json!([rv_name(rv), null]));
    facts.insert("get".into(), Value::Object(by));

    let (rv, p) = get(Some("PKCS 11"), Some((3, 0)), 0);
    assert_eq!(
        rv,
        CKR_OK,
        "{module} offers no PKCS 11 3.0 interface: {}",
        rv_name(rv)
    );
    // SAFETY: a 3.0 interface's table is a CK_FUNCTION_LIST_3_0, alive as long as the module.
    let f = unsafe { &*((*p).pFunctionList as *const CK_FUNCTION_LIST_3_0) };
    assert_eq!((f.version.major, f.version.minor), (3, 0));
    f
}

fn token_info(d: &mut Driver, step: &str) {
    // SAFETY: CK_TOKEN_INFO is plain data.
    let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    call!(d, step, C_GetTokenInfo(SLOT, &mut ti));
    let flags = ti.flags
        & (CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_LOGIN_REQUIRED | CKF_RNG);
    d.out(json!({
        "label": padded(&ti.label),
        "manufacturerID": padded(&ti.manufacturerID),
        "model": padded(&ti.model),
        "flags": flags as u64,
    }));
}

/// Slot list, C_InitToken, SO login, C_InitPIN, user login (and the unsupported
/// C_LoginUser). Returns the R/W session, logged in as the user.
fn token_and_login(d: &mut Driver) -> CK_SESSION_HANDLE {
    let mut slots = [0 as CK_SLOT_ID; 8];
    let mut n = slots.len() as CK_ULONG;
    call!(
        d,
        "slot list",
        C_GetSlotList(TRUE, slots.as_mut_ptr(), &mut n)
    );
    want_ok(d);
    d.out(json!(slots[..n as usize]));
    assert!(slots[..n as usize].contains(&SLOT), "slot {SLOT} missing");
    token_info(d, "token info, uninitialized");

    let mut label = [b' '; 32];
    label[..TOKEN_LABEL.len()].copy_from_slice(TOKEN_LABEL.as_bytes());
    let mut so_pin = SO_PIN.as_bytes().to_vec();
    call!(
        d,
        "C_InitToken",
        C_InitToken(
            SLOT,
            so_pin.as_mut_ptr(),
            so_pin.len() as CK_ULONG,
            label.as_mut_ptr()
        )
    );
    want_ok(d);
    d.audit(json!({"slot": SLOT as u64, "token": {"label": TOKEN_LABEL}}));
    token_info(d, "token info, initialized");

    let mut s: CK_SESSION_HANDLE = 0;
    call!(
        d,
        "open R/W session",
        C_OpenSession(
            SLOT,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            null_mut(),
            None,
            &mut s
        )
    );
    want_ok(d);

    let mut pin = USER_PIN.as_bytes().to_vec();
    let mut user = USER_NAME.as_bytes().to_vec();
    call!(
        d,
        "C_LoginUser",
        C_LoginUser(
            s,
            CKU_USER,
            pin.as_mut_ptr(),
            pin.len() as CK_ULONG,
            user.as_mut_ptr(),
            user.len() as CK_ULONG
        )
    );
    d.audit(json!({"user_type": "CKU_USER", "username": USER_NAME, "session": s as u64}));

    call!(
        d,
        "SO login",
        C_Login(s, CKU_SO, so_pin.as_mut_ptr(), so_pin.len() as CK_ULONG)
    );
    want_ok(d);
    call!(
        d,
        "C_InitPIN",
        C_InitPIN(s, pin.as_mut_ptr(), pin.len() as CK_ULONG)
    );
    want_ok(d);
    call!(d, "SO logout", C_Logout(s));
    want_ok(d);
    let mut wrong = WRONG_PIN.as_bytes().to_vec();
    call!(
        d,
        "wrong PIN",
        C_Login(s, CKU_USER, wrong.as_mut_ptr(), wrong.len() as CK_ULONG)
    );
    call!(
        d,
        "user login",
        C_Login(s, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
    );
    want_ok(d);
    // SAFETY: CK_SESSION_INFO is plain data.
    let mut si: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
    call!(d, "session info", C_GetSessionInfo(s, &mut si));
    d.out(json!({"slot": si.slotID as u64, "state": si.state as u64, "flags": si.flags as u64}));
    token_info(d, "token info, PIN set");
    s
}

struct Keys {
    aes_fixed: CK_OBJECT_HANDLE,
    aes_gen: CK_OBJECT_HANDLE,
    hmac: CK_OBJECT_HANDLE,
    ec_pub: CK_OBJECT_HANDLE,
    ec_priv: CK_OBJECT_HANDLE,
    rsa_pub: CK_OBJECT_HANDLE,
    rsa_priv: CK_OBJECT_HANDLE,
}

/// Reads `types` of `h` (each at most 512 bytes) as `{"CKA_…": hex or "unavailable"}`.
fn read_attrs(
    d: &mut Driver,
    step: &str,
    s: CK_SESSION_HANDLE,
    h: CK_OBJECT_HANDLE,
    types: &[(&str, CK_ATTRIBUTE_TYPE)],
) {
    let mut bufs: Vec<Vec<u8>> = types.iter().map(|_| vec![0u8; 512]).collect();
    let mut t: Vec<CK_ATTRIBUTE> = types
        .iter()
        .zip(bufs.iter_mut())
        .map(|((_, ty), b)| CK_ATTRIBUTE {
            type_: *ty,
            pValue: b.as_mut_ptr() as *mut c_void,
            ulValueLen: b.len() as CK_ULONG,
        })
        .collect();
    call!(
        d,
        step,
        C_GetAttributeValue(s, h, t.as_mut_ptr(), t.len() as CK_ULONG)
    );
    let mut out = Map::new();
    for ((name, _), (a, b)) in types.iter().zip(t.iter().zip(&bufs)) {
        let v = if a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
            json!("unavailable")
        } else {
            json!(hex(&b[..a.ulValueLen as usize]))
        };
        out.insert((*name).into(), v);
    }
    d.out(Value::Object(out));
}

fn keys(d: &mut Driver, s: CK_SESSION_HANDLE) -> Keys {
    let secret = CKO_SECRET_KEY;
    let aes = CKK_AES;
    let generic = CKK_GENERIC_SECRET;
    let value = aes_value();
    let hvalue = hmac_value();
    let value_len: CK_ULONG = 32;

    let mut aes_fixed: CK_OBJECT_HANDLE = 0;
    let label = b"kr-fixed-aes";
    let mut t = [
        attr(CKA_CLASS, &secret),
        attr(CKA_KEY_TYPE, &aes),
        attr(CKA_TOKEN, &FALSE),
        attr(CKA_ENCRYPT, &TRUE),
        attr(CKA_DECRYPT, &TRUE),
        attr_bytes(CKA_VALUE, &value),
        attr_bytes(CKA_LABEL, label),
        attr_bytes(CKA_ID, &[0xa1]),
    ];
    call!(
        d,
        "import AES key",
        C_CreateObject(s, t.as_mut_ptr(), t.len() as CK_ULONG, &mut aes_fixed)
    );
    want_ok(d);

    let mut hmac: CK_OBJECT_HANDLE = 0;
    let mut t = [
        attr(CKA_CLASS, &secret),
        attr(CKA_KEY_TYPE, &generic),
        attr(CKA_TOKEN, &FALSE),
        attr(CKA_SIGN, &TRUE),
        attr(CKA_VERIFY, &TRUE),
        attr_bytes(CKA_VALUE, &hvalue),
        attr_bytes(CKA_LABEL, b"kr-hmac"),
    ];
    call!(
        d,
        "import HMAC key",
        C_CreateObject(s, t.as_mut_ptr(), t.len() as CK_ULONG, &mut hmac)
    );
    want_ok(d);

    let mut aes_gen: CK_OBJECT_HANDLE = 0;
    let mut m = mech(CKM_AES_KEY_GEN);
    let mut t = [
        attr(CKA_CLASS, &secret),
        attr(CKA_KEY_TYPE, &aes),
        attr(CKA_VALUE_LEN, &value_len),
        attr(CKA_TOKEN, &FALSE),
        attr(CKA_ENCRYPT, &TRUE),
        attr(CKA_DECRYPT, &TRUE),
        attr_bytes(CKA_LABEL, b"kr-gen-aes"),
    ];
    call!(
        d,
        "generate AES key",
        C_GenerateKey(s, &mut m, t.as_mut_ptr(), t.len() as CK_ULONG, &mut aes_gen)
    );
    want_ok(d);
    d.audit(json!({"mechanism": {"type": "CKM_AES_KEY_GEN"}}));

    let (mut ec_pub, mut ec_priv): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
    let mut m = mech(CKM_EC_KEY_PAIR_GEN);
    let mut public = [
        attr_bytes(CKA_EC_PARAMS, &P256_OID),
        attr(CKA_VERIFY, &TRUE),
        attr(CKA_TOKEN, &TRUE),
        attr_bytes(CKA_LABEL, b"kr-ec"),
        attr_bytes(CKA_ID, &[0xec]),
    ];
    let mut private = [
        attr(CKA_SIGN, &TRUE),
        attr(CKA_TOKEN, &TRUE),
        attr(CKA_PRIVATE, &TRUE),
        attr(CKA_SENSITIVE, &TRUE),
        attr_bytes(CKA_LABEL, b"kr-ec"),
        attr_bytes(CKA_ID, &[0xec]),
    ];
    call!(
        d,
        "generate EC P-256 key pair",
        C_GenerateKeyPair(
            s,
            &mut m,
            public.as_mut_ptr(),
            public.len() as CK_ULONG,
            private.as_mut_ptr(),
            private.len() as CK_ULONG,
            &mut ec_pub,
            &mut ec_priv
        )
    );
    want_ok(d);
    d.audit(json!({"mechanism": {"type": "CKM_EC_KEY_PAIR_GEN"}}));

    let (mut rsa_pub, mut rsa_priv): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
    let bits: CK_ULONG = 2048;
    let mut m = mech(CKM_RSA_PKCS_KEY_PAIR_GEN);
    let mut public = [
        attr(CKA_MODULUS_BITS, &bits),
        attr_bytes(CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
        attr(CKA_VERIFY, &TRUE),
        attr(CKA_TOKEN, &FALSE),
        attr_bytes(CKA_LABEL, b"kr-rsa"),
    ];
    let mut private = [
        attr(CKA_SIGN, &TRUE),
        attr(CKA_TOKEN, &FALSE),
        attr(CKA_SENSITIVE, &TRUE),
        attr_bytes(CKA_LABEL, b"kr-rsa"),
    ];
    call!(
        d,
        "generate RSA 2048 key pair",
        C_GenerateKeyPair(
            s,
            &mut m,
            public.as_mut_ptr(),
            public.len() as CK_ULONG,
            private.as_mut_ptr(),
            private.len() as CK_ULONG,
            &mut rsa_pub,
            &mut rsa_priv
        )
    );
    want_ok(d);

    let common = [
        ("CKA_CLASS", CKA_CLASS),
        ("CKA_KEY_TYPE", CKA_KEY_TYPE),
        ("CKA_LABEL", CKA_LABEL),
        ("CKA_LOCAL", CKA_LOCAL),
    ];
    for (step, h, extra) in [
        (
            "attributes of the imported AES key",
            aes_fixed,
            ("CKA_VALUE_LEN", CKA_VALUE_LEN),
        ),
        (
            "attributes of the generated AES key",
            aes_gen,
            ("CKA_VALUE_LEN", CKA_VALUE_LEN),
        ),
        (
            "attributes of the HMAC key",
            hmac,
            ("CKA_VALUE_LEN", CKA_VALUE_LEN),
        ),
        (
            "attributes of the EC public key",
            ec_pub,
            ("CKA_EC_PARAMS", CKA_EC_PARAMS),
        ),
        (
            "attributes of the EC private key",
            ec_priv,
            ("CKA_EC_PARAMS", CKA_EC_PARAMS),
        ),
        (
            "attributes of the RSA public key",
            rsa_pub,
            ("CKA_MODULUS_BITS", CKA_MODULUS_BITS),
        ),
        (
            "attributes of the RSA private key",
            rsa_priv,
            ("CKA_PUBLIC_EXPONENT", CKA_PUBLIC_EXPONENT),
        ),
    ] {
        let mut types = common.to_vec();
        types.push(extra);
        read_attrs(d, step, s, h, &types);
    }
    Keys {
        aes_fixed,
        aes_gen,
        hmac,
        ec_pub,
        ec_priv,
        rsa_pub,
        rsa_priv,
    }
}

/// Message-based AES-GCM with the imported key and fixed IVs, so ciphertexts and tags are the
/// same in both runs: two single-part messages (one after a length query), one multi-part
/// message, then decryption of all three (the third also in parts) and of a forged one.
fn message_encrypt_decrypt(d: &mut Driver, s: CK_SESSION_HANDLE, k: &Keys) {
    const ENCRYPT: bool = false;
    const DECRYPT: bool = true;
    let fixed = key_identity(k.aes_fixed, "CKK_AES", "kr-fixed-aes");
    let op = json!({"mechanism": {"type": "CKM_AES_GCM"}, "key": fixed});
    // The operation's record members plus more.
    let with = |more: Value| {
        let mut v = op.clone();
        v.as_object_mut()
            .expect("object")
            .extend(more.as_object().expect("object").clone());
        v
    };
    let n = PLAINTEXT.len();

    let mut m = mech(CKM_AES_GCM);
    call!(
        d,
        "message encrypt init",
        C_MessageEncryptInit(s, &mut m, k.aes_fixed)
    );
    want_ok(d);
    d.audit(op.clone());

    // Message 1: a length query, then the message.
    let mut g1 = Gcm::new(IV1, [0; 16], CKG_NO_GENERATE);
    let len = one_message(
        d,
        "message 1: length query",
        s,
        ENCRYPT,
        &mut g1,
        AAD,
        PLAINTEXT,
        None,
    )
    .len();
    want_ok(d);
    d.out(json!(len));
    d.audit(with(
        json!({"in_len": n, "out_len": len, "out": "length_query"}),
    ));
    let ct1 = one_message(
        d,
        "message 1",
        s,
        ENCRYPT,
        &mut g1,
        AAD,
        PLAINTEXT,
        Some(len),
    );
    want_ok(d);
    d.out(json!({"ciphertext": hex(&ct1), "tag": hex(&g1.tag)}));
    d.audit(with(
        json!({"in_len": n, "out_len": ct1.len(), "out": "returned"}),
    ));

    // Message 2: another IV, no AAD, in the same operation.
    let mut g2 = Gcm::new(IV2, [0; 16], CKG_NO_GENERATE);
    let ct2 = one_message(
        d,
        "message 2",
        s,
        ENCRYPT,
        &mut g2,
        &[],
        PLAINTEXT,
        Some(n + 16),
    );
    want_ok(d);
    d.out(json!({"ciphertext": hex(&ct2), "tag": hex(&g2.tag)}));
    d.audit(with(json!({"in_len": n, "out_len": ct2.len()})));

    // Message 3 in two parts.
    let mut g3 = Gcm::new(IV3, [0; 16], CKG_NO_GENERATE);
    message_begin(d, "message 3: begin", s, ENCRYPT, &mut g3, AAD);
    want_ok(d);
    d.audit(op.clone());
    let mut ct3 = Vec::new();
    for (i, (part, flags)) in [
        (&PLAINTEXT[..SPLIT_AT], 0),
        (&PLAINTEXT[SPLIT_AT..], CKF_END_OF_MESSAGE),
    ]
    .into_iter()
    .enumerate()
    {
        let out = message_part(
            d,
            &format!("message 3: part {}", i + 1),
            s,
            ENCRYPT,
            &mut g3,
            part,
            flags,
        );
        want_ok(d);
        d.out(json!(hex(&out)));
        d.audit(with(json!({"in_len": part.len(), "out_len": out.len()})));
        ct3.extend_from_slice(&out);
    }
    d.out(json!({"ciphertext": hex(&ct3), "tag": hex(&g3.tag)}));
    call!(d, "message encrypt final", C_MessageEncryptFinal(s));
    want_ok(d);
    d.audit(op.clone());

    // Decrypt the three.
    call!(
        d,
        "message decrypt init",
        C_MessageDecryptInit(s, &mut m, k.aes_fixed)
    );
    want_ok(d);
    d.audit(op.clone());
    for (step, g, ct, aad) in [
        ("decrypt message 1", &g1, &ct1, AAD),
        ("decrypt message 2", &g2, &ct2, &[][..]),
        ("decrypt message 3 in one", &g3, &ct3, AAD),
    ] {
        let mut g = Gcm::new(g.iv, g.tag, CKG_NO_GENERATE);
        let pt = one_message(d, step, s, DECRYPT, &mut g, aad, ct, Some(ct.len() + 16));
        want_ok(d);
        assert_eq!(pt, PLAINTEXT, "{step}: decrypt(encrypt(x)) != x");
        d.out(json!({"round_trip": pt == PLAINTEXT}));
        d.audit(with(json!({"in_len": ct.len(), "out_len": pt.len()})));
    }
    // Message 3 again, in parts.
    let mut g = Gcm::new(g3.iv, g3.tag, CKG_NO_GENERATE);
    message_begin(d, "decrypt message 3: begin", s, DECRYPT, &mut g, AAD);
    want_ok(d);
    let mut pt = Vec::new();
    for (i, (part, flags)) in [
        (&ct3[..SPLIT_AT], 0),
        (&ct3[SPLIT_AT..], CKF_END_OF_MESSAGE),
    ]
    .into_iter()
    .enumerate()
    {
        let out = message_part(
            d,
            &format!("decrypt message 3: part {}", i + 1),
            s,
            DECRYPT,
            &mut g,
            part,
            flags,
        );
        want_ok(d);
        d.audit(with(json!({"in_len": part.len(), "out_len": out.len()})));
        pt.extend_from_slice(&out);
    }
    assert_eq!(pt, PLAINTEXT, "multi-part decrypt(encrypt(x)) != x");
    d.out(json!({"round_trip": pt == PLAINTEXT}));

    // A forged tag.
    let mut forged = Gcm::new(g1.iv, g1.tag, CKG_NO_GENERATE);
    forged.tag[0] ^= 1;
    one_message(
        d,
        "decrypt a forged message",
        s,
        DECRYPT,
        &mut forged,
        AAD,
        &ct1,
        Some(n + 16),
    );
    assert_ne!(
        d.calls.last().expect("a call")["rv"],
        "CKR_OK",
        "a forged GCM tag was accepted"
    );
    // kryoptic ends the operation when a message fails to decrypt, so this may find none.
    call!(d, "message decrypt final", C_MessageDecryptFinal(s));
}

/// Message-based encryption with a generated key and an IV the token generates: the IV comes
/// back through the parameter, and decrypting with it recovers the plaintext.
fn random_iv_round_trip(d: &mut Driver, s: CK_SESSION_HANDLE, k: &Keys) {
    let key = json!({"key": key_identity(k.aes_gen, "CKK_AES", "kr-gen-aes")});
    let n = PLAINTEXT.len();
    let mut m = mech(CKM_AES_GCM);
    call!(
        d,
        "random IV: encrypt init",
        C_MessageEncryptInit(s, &mut m, k.aes_gen)
    );
    want_ok(d);
    d.audit(key.clone());
    let mut g = Gcm::new([0; 12], [0; 16], CKG_GENERATE_RANDOM);
    let ct = one_message(
        d,
        "random IV: encrypt",
        s,
        false,
        &mut g,
        &[],
        PLAINTEXT,
        Some(n + 16),
    );
    want_ok(d);
    d.out(json!({"ciphertext_len": ct.len(), "iv_generated": g.iv != [0; 12]}));
    let mut expected = key.clone();
    expected["in_len"] = json!(n);
    expected["out_len"] = json!(ct.len());
    d.audit(expected.clone());
    call!(d, "random IV: encrypt final", C_MessageEncryptFinal(s));
    want_ok(d);

    call!(
        d,
        "random IV: decrypt init",
        C_MessageDecryptInit(s, &mut m, k.aes_gen)
    );
    want_ok(d);
    let mut g = Gcm::new(g.iv, g.tag, CKG_NO_GENERATE);
    let pt = one_message(
        d,
        "random IV: decrypt",
        s,
        true,
        &mut g,
        &[],
        &ct,
        Some(ct.len()),
    );
    want_ok(d);
    assert_eq!(pt, PLAINTEXT, "random IV: decrypt(encrypt(x)) != x");
    d.out(json!({"round_trip": pt == PLAINTEXT}));
    d.audit(expected);
    call!(d, "random IV: decrypt final", C_MessageDecryptFinal(s));
    want_ok(d);
}

/// C_SessionCancel ends message-based, search and 2.40 operations; what kryoptic cannot cancel
/// (message-based signing) it says so.
fn session_cancel(d: &mut Driver, s: CK_SESSION_HANDLE, k: &Keys) {
    let mut m = mech(CKM_AES_GCM);
    call!(
        d,
        "cancel: message encrypt init",
        C_MessageEncryptInit(s, &mut m, k.aes_fixed)
    );
    want_ok(d);
    call!(
        d,
        "cancel: message encrypt",
        C_SessionCancel(s, CKF_MESSAGE_ENCRYPT)
    );
    want_ok(d);
    d.audit(json!({"session": s as u64, "flags": CKF_MESSAGE_ENCRYPT as u64}));
    let mut g = Gcm::new(IV2, [0; 16], CKG_NO_GENERATE);
    let room = Some(PLAINTEXT.len() + 16);
    one_message(
        d,
        "cancel: encrypt after cancel",
        s,
        false,
        &mut g,
        &[],
        PLAINTEXT,
        room,
    );
    // The operation is gone, so the record must not describe one.
    d.audit_after_cancel(json!({"mechanism": null, "key": null}));
    call!(
        d,
        "cancel: a new init is allowed",
        C_MessageEncryptInit(s, &mut m, k.aes_gen)
    );
    want_ok(d);
    call!(d, "cancel: its final", C_MessageEncryptFinal(s));
    want_ok(d);

    let mut t: [CK_ATTRIBUTE; 0] = [];
    call!(
        d,
        "cancel: find init",
        C_FindObjectsInit(s, t.as_mut_ptr(), 0)
    );
    want_ok(d);
    call!(d, "cancel: find", C_SessionCancel(s, CKF_FIND_OBJECTS));
    let mut found = [0 as CK_OBJECT_HANDLE; 4];
    let mut n: CK_ULONG = 0;
    call!(
        d,
        "cancel: find after cancel",
        C_FindObjects(s, found.as_mut_ptr(), found.len() as CK_ULONG, &mut n)
    );
    call!(d, "cancel: find final after cancel", C_FindObjectsFinal(s));

    let mut ecdsa = mech(CKM_ECDSA_SHA256);
    call!(d, "cancel: sign init", C_SignInit(s, &mut ecdsa, k.ec_priv));
    want_ok(d);
    call!(d, "cancel: sign", C_SessionCancel(s, CKF_SIGN));
    let mut data = SIGNED.to_vec();
    let mut sig = [0u8; 128];
    let mut sig_len = sig.len() as CK_ULONG;
    call!(
        d,
        "cancel: sign after cancel",
        C_Sign(
            s,
            data.as_mut_ptr(),
            data.len() as CK_ULONG,
            sig.as_mut_ptr(),
            &mut sig_len
        )
    );
    d.audit_after_cancel(json!({"mechanism": null, "key": null}));

    call!(
        d,
        "cancel: message sign (not supported)",
        C_SessionCancel(s, CKF_MESSAGE_SIGN)
    );
    call!(d, "cancel: nothing active", C_SessionCancel(s, CKF_DECRYPT));
    call!(
        d,
        "cancel: bad session",
        C_SessionCancel(0xdead, CKF_ENCRYPT)
    );
}

/// Sign and verify: HMAC (deterministic: the MAC is compared, and checked against an
/// independent HMAC-SHA256), ECDSA and RSA (one-shot and multi-part; lengths compared), forged
/// signatures refused, and message-based signing (which kryoptic 1.1.0 does not implement).
fn sign_verify(d: &mut Driver, s: CK_SESSION_HANDLE, k: &Keys) {
    let mut data = SIGNED.to_vec();
    let dl = data.len() as CK_ULONG;

    for (what, mechanism, sign_key, verify_key, deterministic) in [
        ("HMAC", CKM_SHA256_HMAC, k.hmac, k.hmac, true),
        ("ECDSA", CKM_ECDSA_SHA256, k.ec_priv, k.ec_pub, false),
        ("RSA", CKM_SHA256_RSA_PKCS, k.rsa_priv, k.rsa_pub, false),
    ] {
        let mut m = mech(mechanism);
        call!(
            d,
            &format!("{what}: sign init"),
            C_SignInit(s, &mut m, sign_key)
        );
        want_ok(d);
        let mut len: CK_ULONG = 0;
        call!(
            d,
            &format!("{what}: sign length query"),
            C_Sign(s, data.as_mut_ptr(), dl, null_mut(), &mut len)
        );
        want_ok(d);
        d.out(json!(len as u64));
        let mut sig = vec![0u8; len as usize];
        call!(
            d,
            &format!("{what}: sign"),
            C_Sign(s, data.as_mut_ptr(), dl, sig.as_mut_ptr(), &mut len)
        );
        want_ok(d);
        sig.truncate(len as usize);
        if deterministic {
            assert_eq!(
                sig,
                hmac_sha256(&hmac_value(), SIGNED),
                "HMAC-SHA256 differs from an independent one"
            );
            d.out(json!(hex(&sig)));
        } else {
            d.out(json!(sig.len()));
        }
        d.audit(
            json!({"key": {"handle": sign_key as u64}, "in_len": dl as u64, "out_len": len as u64}),
        );

        // Multi-part.
        call!(
            d,
            &format!("{what}: multi-part sign init"),
            C_SignInit(s, &mut m, sign_key)
        );
        want_ok(d);
        for (i, part) in [&SIGNED[..10], &SIGNED[10..]].into_iter().enumerate() {
            let mut part = part.to_vec();
            call!(
                d,
                &format!("{what}: sign update {}", i + 1),
                C_SignUpdate(s, part.as_mut_ptr(), part.len() as CK_ULONG)
            );
            want_ok(d);
        }
        let mut sig2 = vec![0u8; 512];
        let mut len2 = sig2.len() as CK_ULONG;
        call!(
            d,
            &format!("{what}: sign final"),
            C_SignFinal(s, sig2.as_mut_ptr(), &mut len2)
        );
        want_ok(d);
        sig2.truncate(len2 as usize);
        if deterministic {
            assert_eq!(sig2, sig, "multi-part HMAC differs from one-shot");
        }
        d.out(json!(sig2.len()));

        call!(
            d,
            &format!("{what}: verify init"),
            C_VerifyInit(s, &mut m, verify_key)
        );
        want_ok(d);
        call!(
            d,
            &format!("{what}: verify"),
            C_Verify(
                s,
                data.as_mut_ptr(),
                dl,
                sig.as_mut_ptr(),
                sig.len() as CK_ULONG
            )
        );
        want_ok(d);
        d.audit(json!({"key": {"handle": verify_key as u64}, "in_len": dl as u64, "sig_len": sig.len() as u64}));
        call!(
            d,
            &format!("{what}: multi-part verify init"),
            C_VerifyInit(s, &mut m, verify_key)
        );
        want_ok(d);
        for (i, part) in [&SIGNED[..10], &SIGNED[10..]].into_iter().enumerate() {
            let mut part = part.to_vec();
            call!(
                d,
                &format!("{what}: verify update {}", i + 1),
                C_VerifyUpdate(s, part.as_mut_ptr(), part.len() as CK_ULONG)
            );
            want_ok(d);
        }
        call!(
            d,
            &format!("{what}: verify final"),
            C_VerifyFinal(s, sig2.as_mut_ptr(), sig2.len() as CK_ULONG)
        );
        want_ok(d);
        let mut forged = sig.clone();
        let last = forged.len() - 1;
        forged[last] ^= 0x01;
        call!(
            d,
            &format!("{what}: verify init (forged)"),
            C_VerifyInit(s, &mut m, verify_key)
        );
        want_ok(d);
        call!(
            d,
            &format!("{what}: verify a forged signature"),
            C_Verify(
                s,
                data.as_mut_ptr(),
                dl,
                forged.as_mut_ptr(),
                forged.len() as CK_ULONG
            )
        );
        assert_eq!(
            d.calls.last().expect("a call")["rv"],
            "CKR_SIGNATURE_INVALID",
            "{what}: a forged signature"
        );
    }

    // Message-based signing: not in kryoptic 1.1.0, and the shim must say exactly that.
    let mut m = mech(CKM_ECDSA_SHA256);
    call!(
        d,
        "message sign init",
        C_MessageSignInit(s, &mut m, k.ec_priv)
    );
    let mut sig = [0u8; 128];
    let mut len = sig.len() as CK_ULONG;
    call!(
        d,
        "sign message",
        C_SignMessage(
            s,
            null_mut(),
            0,
            data.as_mut_ptr(),
            dl,
            sig.as_mut_ptr(),
            &mut len
        )
    );
    call!(d, "message sign final", C_MessageSignFinal(s));
    call!(
        d,
        "message verify init",
        C_MessageVerifyInit(s, &mut m, k.ec_pub)
    );
    call!(
        d,
        "verify message",
        C_VerifyMessage(
            s,
            null_mut(),
            0,
            data.as_mut_ptr(),
            dl,
            sig.as_mut_ptr(),
            64
        )
    );
    call!(d, "message verify final", C_MessageVerifyFinal(s));
}

// =============================================================================================
// The parent

/// The module's environment: its configuration, and for the shim the log and key.
fn env_for(fx: &Fixture, conf: &Path, provider: Option<&Path>) -> Vec<(&'static str, OsString)> {
    let mut env = vec![("KRYOPTIC_CONF", conf.as_os_str().to_owned())];
    if let Some(p) = provider {
        env.push(("P11AUDIT_MODULE", p.as_os_str().to_owned()));
        env.push(("P11AUDIT_LOG", fx.log.clone().into()));
        env.push(("P11AUDIT_KEY_FILE", fx.key.clone().into()));
    }
    env
}

fn run_driver(module: &Path, env: &Env, work: &Path, what: &str) -> Value {
    let cmd = child_command("kryoptic_driver", MODULE_ENV, module, env);
    run_child_ok(cmd, work, what).marked_json(MARKER, what)
}

/// `expected` is contained in `actual`: every member of an object equal (recursively), and a
/// null member means the member is absent.
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e.iter().all(|(k, ev)| match a.get(k) {
            Some(av) => !ev.is_null() && contains(av, ev),
            None => ev.is_null(),
        }),
        _ => actual == expected,
    }
}

/// For each call made while the shim could log, in order, its outcome record (same function
/// and return value). A length query counted in the next outcome of its function
/// (`len_queries`, FORMAT.md §5) has no record of its own: it gets one made from the record
/// that counts it, with `"out":"length_query"`, no `out_len` and `counted_in` that record's seq;
/// an init told in its operation's first outcome gets one too (`outcomes_with_told_inits`).
fn find_call_records(records: &[Value], calls: &[Value]) -> Vec<(Value, Value)> {
    let mut outcomes: Vec<Value> = Vec::new();
    for r in outcomes_with_told_inits(records)
        .iter()
        .filter(|r| r["fn"].is_string() && r["note"] != EARLY_NOTE)
    {
        for _ in 0..r["len_queries"].as_u64().unwrap_or(0) {
            let mut counted = r.clone();
            let m = counted.as_object_mut().expect("a record is an object");
            m.remove("len_queries");
            m.remove("out_len");
            m.insert("out".into(), json!("length_query"));
            m.insert("rv".into(), json!("CKR_OK"));
            m.insert("counted_in".into(), r["seq"].clone());
            outcomes.push(counted);
        }
        outcomes.push(r.clone());
    }
    let mut at = 0;
    let mut found = Vec::new();
    for c in calls.iter().filter(|c| c["configured"] == true) {
        let Some(pos) = outcomes[at..]
            .iter()
            .position(|r| r["fn"] == c["fn"] && r["rv"] == c["rv"])
        else {
            panic!(
                "no outcome record for {} ({} -> {}) after seq {:?}",
                c["step"],
                c["fn"],
                c["rv"],
                at.checked_sub(1).map(|i| &outcomes[i]["seq"])
            );
        };
        found.push((c.clone(), outcomes[at + pos].clone()));
        at += pos + 1;
    }
    found
}

/// The two runs, once per test process: kryoptic directly and through the shim, each with a
/// fresh token of its own; the shim's log is in `fx`.
struct Runs {
    fx: Fixture,
    direct: Value,
    through: Value,
}

/// Temporary directories to remove at exit (the runs live in a static, never dropped).
static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_temp_dirs() {
    if let Ok(dirs) = CLEANUP.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The runs, or None when kryoptic is not available to a developer (see kryoptic_library).
fn runs() -> Option<&'static Runs> {
    static RUNS: OnceLock<Result<Option<Runs>, String>> = OnceLock::new();
    let r = RUNS.get_or_init(|| {
        let Some(kryoptic) = kryoptic_library() else {
            return Ok(None);
        };
        let fx = Fixture::new();
        CLEANUP.lock().unwrap().push(fx.dir.path().to_path_buf());
        // SAFETY: registers a plain extern "C" function with no arguments.
        unsafe { libc::atexit(remove_temp_dirs) };
        let run = || {
            let shim = shim_library();
            let direct_conf = kryoptic_conf(&fx.dir.path().join("kryoptic-direct"));
            let shim_conf = kryoptic_conf(&fx.dir.path().join("kryoptic-shim"));
            let mut direct = run_driver(
                &kryoptic,
                &env_for(&fx, &direct_conf, None),
                fx.dir.path(),
                "kryoptic-direct",
            );
            let mut through = run_driver(
                &shim,
                &env_for(&fx, &shim_conf, Some(&kryoptic)),
                fx.dir.path(),
                "kryoptic-shim",
            );
            check_library_identity(&mut direct, &mut through);
            (direct, through)
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok((direct, through)) => Ok(Some(Runs {
                fx,
                direct,
                through,
            })),
            Err(e) => Err(e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())),
        }
    });
    match r {
        Ok(r) => r.as_ref(),
        Err(e) => panic!("the kryoptic runs failed:\n{e}"),
    }
}

fn calls_of(run: &Value) -> &Vec<Value> {
    run["calls"].as_array().expect("calls")
}

#[test]
fn kryoptic_interfaces_through_the_shim_match_direct() {
    let Some(runs) = runs() else { return };
    // What kryoptic 1.1.0 (without pkcs11_3_2) offers, and that the shim offers the same.
    let facts = &runs.direct["facts"];
    assert_eq!(
        facts["list"],
        json!([
            {"name": "PKCS 11", "version": "3.0", "flags": 0},
            {"name": "PKCS 11", "version": "2.40", "flags": 0},
        ]),
        "kryoptic's interfaces"
    );
    assert_eq!(
        facts["get"]["default"][1]["version"], "3.0",
        "kryoptic's default"
    );
    assert_eq!(
        facts["info"]["cryptokiVersion"], "3.0",
        "kryoptic's C_GetInfo"
    );
    assert_eq!(facts["info"]["manufacturerID"], "Kryoptic");
    assert_eq!(
        facts, &runs.through["facts"],
        "interface negotiation or C_GetInfo through the shim differs from kryoptic direct"
    );
    // The negotiation before C_Initialize is in the log.
    let records = runs.fx.records();
    let early: Vec<&Value> = records.iter().filter(|r| r["note"] == EARLY_NOTE).collect();
    for (interface, n) in [("PKCS 11 3.0", 4), ("PKCS 11 2.40", 2)] {
        let got = early
            .iter()
            .filter(|r| {
                r["fn"] == "C_GetInterface" && r["rv"] == "CKR_OK" && r["interface"] == interface
            })
            .count();
        assert_eq!(
            got, n,
            "early C_GetInterface records handing out {interface}: {early:?}"
        );
    }
}

#[test]
fn kryoptic_3_0_workflows_through_the_shim_match_direct() {
    let Some(runs) = runs() else { return };
    // Every call: same return value and the same deterministic output.
    let strip = |v: &Value| -> Vec<Value> {
        calls_of(v)
            .iter()
            .map(|c| json!([c["step"], c["fn"], c["rv"], c["out"]]))
            .collect()
    };
    let (a, b) = (strip(&runs.direct), strip(&runs.through));
    let diffs: Vec<String> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("  direct {x}\n  shim   {y}"))
        .collect();
    assert!(
        diffs.is_empty() && a.len() == b.len(),
        "kryoptic direct and through the shim differ ({} vs {} calls):\n{}",
        a.len(),
        b.len(),
        diffs.join("\n")
    );
    // The workflows did what they say (the direct run defines "right").
    let rv_of = |step: &str| {
        calls_of(&runs.direct)
            .iter()
            .find(|c| c["step"] == step)
            .unwrap_or_else(|| panic!("no step {step}"))["rv"]
            .clone()
    };
    assert_eq!(rv_of("C_LoginUser"), "CKR_FUNCTION_NOT_SUPPORTED");
    assert_eq!(rv_of("wrong PIN"), "CKR_PIN_INCORRECT");
    assert_eq!(rv_of("cancel: message encrypt"), "CKR_OK");
    assert_eq!(
        rv_of("cancel: encrypt after cancel"),
        "CKR_OPERATION_NOT_INITIALIZED"
    );
    assert_eq!(rv_of("cancel: a new init is allowed"), "CKR_OK");
    assert_eq!(
        rv_of("cancel: find after cancel"),
        "CKR_OPERATION_NOT_INITIALIZED"
    );
    assert_eq!(
        rv_of("cancel: sign after cancel"),
        "CKR_OPERATION_NOT_INITIALIZED"
    );
    assert_eq!(rv_of("message sign init"), "CKR_FUNCTION_NOT_SUPPORTED");
}

/// The records the calls' `audit` expectations of `kind` name that do not hold.
fn audit_problems(runs: &Runs, kind: &str) -> Vec<String> {
    let records = check_chain(&runs.fx);
    let mut problems = Vec::new();
    let mut checked = 0;
    for (call, rec) in find_call_records(&records, calls_of(&runs.through)) {
        let Some(expected) = call.get(kind) else {
            continue;
        };
        checked += 1;
        let mut expected = expected.clone();
        if rec.get("counted_in").is_some() {
            // A counted length query's own output length is not in the log.
            if let Some(e) = expected.as_object_mut() {
                e.remove("out_len");
            }
        }
        if !contains(&rec, &expected) {
            problems.push(format!(
                "  {} ({} -> {}): expected {expected}\n    in {rec}",
                call["step"], call["fn"], call["rv"]
            ));
        }
    }
    assert!(checked > 0, "no call has {kind} expectations");
    problems
}

/// The log verifies, has a record of every call in order, and the records say what FORMAT.md
/// promises: message-based calls carry the operation's mechanism and key (from the *Init) and
/// each message's lengths; C_LoginUser its user name; C_InitToken the new label.
#[test]
fn kryoptic_log_describes_the_3_0_calls() {
    let Some(runs) = runs() else { return };
    let problems = audit_problems(runs, "audit");
    assert!(
        problems.is_empty(),
        "{} records do not describe their call as FORMAT.md says:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// After a successful C_SessionCancel the cancelled operation is over: records of calls made
/// on that session before a new *Init must not carry its mechanism and key (there is none).
#[test]
fn kryoptic_session_cancel_ends_the_operation_in_the_records() {
    let Some(runs) = runs() else { return };
    let problems = audit_problems(runs, "audit_after_cancel");
    assert!(
        problems.is_empty(),
        "{} records after C_SessionCancel still describe the cancelled operation:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn kryoptic_log_holds_no_secrets() {
    let Some(runs) = runs() else { return };
    let text = std::fs::read_to_string(&runs.fx.log).expect("log");
    let text = text.to_lowercase();
    let mut secrets: Vec<(String, String)> = vec![
        ("user PIN".into(), USER_PIN.into()),
        ("SO PIN".into(), SO_PIN.into()),
        ("wrong PIN".into(), WRONG_PIN.into()),
        (
            "plaintext".into(),
            String::from_utf8_lossy(&PLAINTEXT[..20]).into(),
        ),
        ("AAD".into(), String::from_utf8_lossy(AAD).into()),
        (
            "signed data".into(),
            String::from_utf8_lossy(&SIGNED[..20]).into(),
        ),
    ];
    for (what, bytes) in [
        ("user PIN", USER_PIN.as_bytes().to_vec()),
        ("SO PIN", SO_PIN.as_bytes().to_vec()),
        ("AES key", aes_value()),
        ("HMAC key", hmac_value()),
        ("plaintext", PLAINTEXT.to_vec()),
        ("IV", IV1.to_vec()),
        ("AAD", AAD.to_vec()),
        ("HMAC", hmac_sha256(&hmac_value(), SIGNED)),
    ] {
        secrets.push((format!("{what} (hex)"), hex(&bytes[..12])));
    }
    for c in calls_of(&runs.through) {
        for k in ["ciphertext", "tag"] {
            if let Some(v) = c["out"][k].as_str() {
                secrets.push((k.into(), v[..24].to_string()));
            }
        }
    }
    for (what, s) in secrets {
        assert!(
            !text.contains(&s.to_lowercase()),
            "the {what} is in the log"
        );
    }
}

/// OpenSC's pkcs11-tool sets up a kryoptic token through the shim: --init-token, --init-pin,
/// a key pair, a listing. Each run is a process of its own on the same chain.
#[test]
fn pkcs11_tool_initializes_a_kryoptic_token_through_the_shim() {
    let Some(kryoptic) = kryoptic_library() else {
        return;
    };
    let fx = Fixture::new();
    let shim = shim_library();
    let conf = kryoptic_conf(&fx.dir.path().join("kryoptic-tool"));
    let env = env_for(&fx, &conf, Some(&kryoptic));
    let tool = |args: &[&str], what: &str| {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.arg("--module")
            .arg(&shim)
            .args(["--slot", &SLOT.to_string()])
            .args(args);
        set_env(&mut cmd, &env);
        run_child_ok(cmd, fx.dir.path(), what)
    };
    tool(
        &["--init-token", "--label", "kr-tool", "--so-pin", SO_PIN],
        "pkcs11-tool --init-token",
    );
    tool(
        &[
            "--init-pin",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            SO_PIN,
            "--new-pin",
            USER_PIN,
        ],
        "pkcs11-tool --init-pin",
    );
    tool(
        &[
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "tool-ec",
            "--id",
            "07",
        ],
        "pkcs11-tool --keypairgen",
    );
    let listed = tool(
        &["--login", "--pin", USER_PIN, "--list-objects"],
        "pkcs11-tool --list-objects",
    );
    assert!(
        listed.stdout.contains("tool-ec"),
        "the key pair is not listed:\n{}",
        listed.dump()
    );

    let records = check_chain(&fx);
    let outcome = |f: &str| {
        records
            .iter()
            .find(|r| r["ev"] == "outcome" && r["fn"] == f)
            .unwrap_or_else(|| panic!("no outcome record of {f}"))
    };
    let init = outcome("C_InitToken");
    assert_eq!(init["rv"], "CKR_OK", "{init}");
    assert_eq!(init["token"]["label"], "kr-tool", "{init}");
    assert_eq!(outcome("C_InitPIN")["rv"], "CKR_OK");
    assert_eq!(outcome("C_GenerateKeyPair")["rv"], "CKR_OK");
    let attaches = records.iter().filter(|r| r["ev"] == "attach").count();
    assert_eq!(attaches, 4, "one attach per pkcs11-tool run");
    let text = std::fs::read_to_string(&fx.log).expect("log");
    for pin in [USER_PIN, SO_PIN] {
        assert!(!text.contains(pin), "a PIN is in the log");
        assert!(
            !text.contains(&hex(pin.as_bytes())),
            "a PIN is in the log (hex)"
        );
    }
}
