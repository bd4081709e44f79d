//! PKCS#11 3.x interface negotiation (`C_GetInterfaceList`, `C_GetInterface`) through the shim,
//! with real providers:
//!
//! - SoftHSM 2.6.1, a 2.40 module without `C_GetInterfaceList`: the shim offers exactly one
//!   interface, "PKCS 11" 2.40, and gets every argument edge case of both functions right; the
//!   table it hands out works, and the log holds the negotiation.
//! - OpenSC's `opensc-pkcs11.so`, a real 3.0 module that answers without a card: the shim offers
//!   the same interfaces as the module (versions, flags, default), `C_GetInfo` says 3.0 both
//!   ways, and every 3.0 entry point called through the shim's 3.0 table returns what the module
//!   returns directly. The log verifies and holds a record of each call.
//!
//! A process can load a module only once, and the shim reads its configuration at
//! `C_Initialize`, so every run is a child process: this test binary re-executed with `--exact
//! <driver>` and `P11AUDIT_TEST_IFACE_MODULE` naming the module to load. The driver uses the raw
//! C ABI (`dlopen`, `CK_INTERFACE`, `CK_FUNCTION_LIST_3_0`) so it can pass NULL pointers and
//! too-small buffers, and prints one marked JSON line that the parent reads.
//!
//! Needs softhsm2 and opensc-pkcs11 (scripts/install-deps.sh).

// CK_ULONG is u64 here and u32 elsewhere: the casts keep the driver portable.
#![allow(clippy::unnecessary_cast)]

mod common;

use common::raw::{os_locking_args, rv_name};
use common::*;
use cryptoki_sys::*;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::ffi::{c_void, CStr, CString};
use std::path::Path;
use std::ptr::null_mut;

/// Set in the child processes only: the PKCS#11 module the driver loads.
const MODULE_ENV: &str = "P11AUDIT_TEST_IFACE_MODULE";
/// Prefix of a driver's one result line on stdout.
const MARKER: &str = "P11AUDIT-INTERFACES-RESULT ";
const OPENSC: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";
/// The note on records of calls the shim answered before it was configured.
const EARLY_NOTE: &str = "answered by p11audit before C_Initialize";
/// Written in ppInterface before a call, to see whether a failing call changed it.
const SENTINEL: usize = 0x5e47_1e55;

// =============================================================================================
// Raw C ABI helpers (children only)

/// `dlopen`s `path` (kept open for the life of the process).
fn dlopen(path: &str) -> *mut c_void {
    let c = CString::new(path).expect("module path");
    // SAFETY: a NUL-terminated path; the handle is never closed.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message after a failed dlopen.
        let err = unsafe { CStr::from_ptr(libc::dlerror()) };
        panic!("dlopen {path}: {}", err.to_string_lossy());
    }
    h
}

/// The entry point `name` of the module behind `handle`, as the function type `F`.
///
/// # Safety
/// `F` must be the C signature of `name`.
unsafe fn symbol<F: Copy>(handle: *mut c_void, name: &str) -> Option<F> {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    let c = CString::new(name).expect("symbol name");
    // SAFETY: a live handle and a NUL-terminated name.
    let sym = unsafe { libc::dlsym(handle, c.as_ptr()) };
    // SAFETY: per the caller, F is a function pointer type of this symbol's signature.
    (!sym.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, F>(&sym) })
}

type GetInterfaceList = unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV;
type GetInterface = unsafe extern "C" fn(
    *mut CK_UTF8CHAR,
    *mut CK_VERSION,
    *mut *mut CK_INTERFACE,
    CK_FLAGS,
) -> CK_RV;

struct Negotiation {
    list: GetInterfaceList,
    get: GetInterface,
    get_function_list: common::raw::GetFunctionList,
}

impl Negotiation {
    fn load(module: &str) -> Negotiation {
        let h = dlopen(module);
        // SAFETY: the PKCS#11 3.0 signatures of these entry points (§5.4).
        unsafe {
            Negotiation {
                list: symbol(h, "C_GetInterfaceList")
                    .unwrap_or_else(|| panic!("{module} exports no C_GetInterfaceList")),
                get: symbol(h, "C_GetInterface")
                    .unwrap_or_else(|| panic!("{module} exports no C_GetInterface")),
                get_function_list: symbol(h, "C_GetFunctionList")
                    .unwrap_or_else(|| panic!("{module} exports no C_GetFunctionList")),
            }
        }
    }

    /// The whole interface list (length query, then the list).
    fn all(&self) -> Vec<CK_INTERFACE> {
        let mut n: CK_ULONG = 0;
        // SAFETY: a length query with a writable count.
        let rv = unsafe { (self.list)(null_mut(), &mut n) };
        assert_eq!(rv_name(rv), "CKR_OK", "C_GetInterfaceList length query");
        let mut buf = vec![zeroed_interface(); n as usize];
        // SAFETY: room for n entries.
        let rv = unsafe { (self.list)(buf.as_mut_ptr(), &mut n) };
        assert_eq!(rv_name(rv), "CKR_OK", "C_GetInterfaceList");
        buf.truncate(n as usize);
        buf
    }

    /// `C_GetInterface(name, version, &p, flags)`: the return value and `p` (the sentinel if
    /// the call left it alone).
    fn get(
        &self,
        name: Option<&str>,
        version: Option<(u8, u8)>,
        flags: CK_FLAGS,
    ) -> (CK_RV, *mut CK_INTERFACE) {
        let name = name.map(|n| CString::new(n).expect("name"));
        let mut v = version.map(|(major, minor)| CK_VERSION { major, minor });
        let mut p = SENTINEL as *mut CK_INTERFACE;
        // SAFETY: NULL or NUL-terminated name, NULL or readable version, writable out-pointer.
        let rv = unsafe {
            (self.get)(
                name.as_ref()
                    .map_or(null_mut(), |n| n.as_ptr() as *mut CK_UTF8CHAR),
                v.as_mut().map_or(null_mut(), |v| v as *mut CK_VERSION),
                &mut p,
                flags,
            )
        };
        (rv, p)
    }
}

fn zeroed_interface() -> CK_INTERFACE {
    CK_INTERFACE {
        pInterfaceName: null_mut(),
        pFunctionList: null_mut(),
        flags: 0,
    }
}

/// `{"name": …, "version": "3.0", "flags": n}` of an interface a module handed out.
fn describe(i: &CK_INTERFACE) -> Value {
    assert!(!i.pInterfaceName.is_null(), "interface without a name");
    assert!(
        !i.pFunctionList.is_null(),
        "interface without a function list"
    );
    // SAFETY: a module hands out NUL-terminated names and tables that start with CK_VERSION.
    let name = unsafe { CStr::from_ptr(i.pInterfaceName as *const std::ffi::c_char) };
    // SAFETY: as above.
    let v = unsafe { (i.pFunctionList as *const CK_VERSION).read_unaligned() };
    json!({
        "name": name.to_string_lossy(),
        "version": format!("{}.{}", v.major, v.minor),
        "flags": i.flags as u64,
    })
}

/// The interface `p` points to, described (`p` from a successful C_GetInterface).
fn describe_ptr(p: *mut CK_INTERFACE) -> Value {
    assert!(
        !p.is_null() && p as usize != SENTINEL,
        "C_GetInterface returned CKR_OK without an interface"
    );
    // SAFETY: a module's CK_INTERFACE, valid for the life of the module.
    describe(unsafe { &*p })
}

fn padded(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

/// One call a driver made, in order: the parent compares them and finds them in the log.
struct Calls {
    calls: Vec<Value>,
    /// Whether the shim has its configuration yet (calls before C_Initialize are answered by
    /// the shim and written later with EARLY_NOTE).
    configured: bool,
}

impl Calls {
    fn new() -> Calls {
        Calls {
            calls: Vec::new(),
            configured: false,
        }
    }

    fn rec(&mut self, step: &str, function: &str, rv: CK_RV, out: Value) {
        self.calls.push(json!({
            "step": step,
            "fn": function,
            "rv": rv_name(rv),
            "configured": self.configured,
            "out": out,
        }));
    }
}

// =============================================================================================
// Running the children

/// Runs `driver` in a child that loads `module`, with exactly `env` as its p11audit
/// configuration; returns its result line, parsed.
fn run_driver(driver: &str, module: &Path, env: &Env, work: &Path, what: &str) -> Value {
    let cmd = child_command(driver, MODULE_ENV, module, env);
    run_child_ok(cmd, work, what).marked_json(MARKER, what)
}

/// The environment of `fx` with `module` as the shim's provider.
fn env_for(fx: &Fixture, module: &str) -> Vec<(&'static str, OsString)> {
    let mut env = fx.env();
    for (k, v) in env.iter_mut() {
        if *k == "P11AUDIT_MODULE" {
            *v = module.into();
        }
    }
    env
}

/// Checks that the log has, in order, one outcome record for each call the driver made while
/// the shim could log (`configured`, or answered early and written later with EARLY_NOTE),
/// with the same function and return value. Returns the matched records, one per call.
fn find_call_records<'a>(records: &'a [Value], calls: &[Value]) -> Vec<&'a Value> {
    let outcomes: Vec<&Value> = records
        .iter()
        .filter(|r| r["ev"] == "outcome" && r["fn"].is_string())
        .collect();
    let mut at = 0;
    let mut found = Vec::new();
    for c in calls {
        let function = c["fn"].as_str().expect("fn");
        let rv = c["rv"].as_str().expect("rv");
        let early = !c["configured"].as_bool().expect("configured");
        let pos = outcomes[at..].iter().position(|r| {
            r["fn"] == function && r["rv"] == rv && (r["note"] == EARLY_NOTE) == early
        });
        let Some(pos) = pos else {
            panic!(
                "no outcome record for {} ({function} -> {rv}{}) after record {:?}\nlog:\n{}",
                c["step"],
                if early {
                    ", answered before C_Initialize"
                } else {
                    ""
                },
                outcomes.get(at.wrapping_sub(1)).map(|r| &r["seq"]),
                outcomes
                    .iter()
                    .map(|r| format!(
                        "  seq {} {} {} note={}",
                        r["seq"], r["fn"], r["rv"], r["note"]
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        };
        found.push(outcomes[at + pos]);
        at += pos + 1;
    }
    found
}

// =============================================================================================
// SoftHSM 2.6.1: a 2.40 provider

/// The driver for SoftHSM through the shim: every argument edge case, asserted here; the calls
/// go to the parent, which finds them in the log.
#[test]
fn softhsm_negotiation_driver() {
    let Ok(module) = std::env::var(MODULE_ENV) else {
        return; // Only a re-executed child runs the driver.
    };
    let n = Negotiation::load(&module);
    let mut c = Calls::new();

    // C_GetInterfaceList: length query.
    let mut count: CK_ULONG = 99;
    // SAFETY: writable count.
    let rv = unsafe { (n.list)(null_mut(), &mut count) };
    c.rec(
        "list: length query",
        "C_GetInterfaceList",
        rv,
        json!(count as u64),
    );
    assert_eq!(rv_name(rv), "CKR_OK", "length query");
    assert_eq!(count, 1, "a 2.40 provider gets exactly one interface");

    // A buffer with room for none.
    let mut buf = [zeroed_interface(); 4];
    let mut count: CK_ULONG = 0;
    // SAFETY: a buffer of 4 entries; we claim room for 0.
    let rv = unsafe { (n.list)(buf.as_mut_ptr(), &mut count) };
    c.rec(
        "list: room for 0",
        "C_GetInterfaceList",
        rv,
        json!(count as u64),
    );
    assert_eq!(rv_name(rv), "CKR_BUFFER_TOO_SMALL", "buffer of 0 entries");
    assert_eq!(count, 1, "CKR_BUFFER_TOO_SMALL sets the count needed");
    assert!(
        buf[0].pInterfaceName.is_null(),
        "nothing is written on CKR_BUFFER_TOO_SMALL"
    );

    // NULL, NULL and list, NULL.
    // SAFETY: the shim must reject these without touching anything.
    let rv = unsafe { (n.list)(null_mut(), null_mut()) };
    c.rec("list: NULL, NULL", "C_GetInterfaceList", rv, Value::Null);
    assert_eq!(
        rv_name(rv),
        "CKR_ARGUMENTS_BAD",
        "C_GetInterfaceList(NULL, NULL)"
    );
    // SAFETY: as above.
    let rv = unsafe { (n.list)(buf.as_mut_ptr(), null_mut()) };
    c.rec("list: list, NULL", "C_GetInterfaceList", rv, Value::Null);
    assert_eq!(
        rv_name(rv),
        "CKR_ARGUMENTS_BAD",
        "C_GetInterfaceList(list, NULL)"
    );

    // The full list, in a buffer with room to spare.
    let mut count: CK_ULONG = buf.len() as CK_ULONG;
    // SAFETY: room for 4 entries.
    let rv = unsafe { (n.list)(buf.as_mut_ptr(), &mut count) };
    c.rec("list: full", "C_GetInterfaceList", rv, json!(count as u64));
    assert_eq!(rv_name(rv), "CKR_OK", "full list");
    assert_eq!(count, 1, "full list count");
    assert_eq!(
        describe(&buf[0]),
        json!({"name": "PKCS 11", "version": "2.40", "flags": 0}),
        "the one interface"
    );
    assert!(
        buf[1].pInterfaceName.is_null(),
        "only `count` entries are written"
    );
    let listed_table = buf[0].pFunctionList;

    // C_GetInterface: NULL name and version mean the default, which is the 2.40 interface.
    let (rv, default) = n.get(None, None, 0);
    c.rec("get: default", "C_GetInterface", rv, json!("PKCS 11 2.40"));
    assert_eq!(rv_name(rv), "CKR_OK", "C_GetInterface(NULL, NULL)");
    assert_eq!(
        describe_ptr(default),
        json!({"name": "PKCS 11", "version": "2.40", "flags": 0})
    );
    // SAFETY: describe_ptr checked it.
    assert_eq!(
        unsafe { (*default).pFunctionList },
        listed_table,
        "the default is the listed interface's table"
    );

    for (step, name, version) in [
        ("get: PKCS 11, any version", Some("PKCS 11"), None),
        ("get: any name, 2.40", None, Some((2, 40))),
        ("get: PKCS 11 2.40", Some("PKCS 11"), Some((2, 40))),
    ] {
        let (rv, p) = n.get(name, version, 0);
        c.rec(step, "C_GetInterface", rv, json!("PKCS 11 2.40"));
        assert_eq!(rv_name(rv), "CKR_OK", "{step}");
        assert_eq!(describe_ptr(p)["version"], "2.40", "{step}");
    }

    // What is not offered: 3.0 and 3.2 (SoftHSM 2.6.1 has no 3.x table), a vendor interface,
    // a flag the interface does not have. The module's own convention (and OpenSC's, SoftHSM
    // 2.7's, kryoptic's) for "no such interface" is CKR_ARGUMENTS_BAD: PKCS#11 3.0 §5.4 lists
    // no other code that fits.
    for (step, name, version, flags) in [
        ("get: PKCS 11 3.0", Some("PKCS 11"), Some((3, 0)), 0),
        ("get: PKCS 11 3.2", Some("PKCS 11"), Some((3, 2)), 0),
        ("get: any name, 3.0", None, Some((3, 0)), 0),
        ("get: vendor", Some("Vendor SoftHSM"), None, 0),
        ("get: fork-safe", None, None, CKF_INTERFACE_FORK_SAFE),
    ] {
        let (rv, p) = n.get(name, version, flags);
        c.rec(step, "C_GetInterface", rv, Value::Null);
        assert_eq!(
            rv_name(rv),
            "CKR_ARGUMENTS_BAD",
            "{step}: an interface that is not offered must be refused"
        );
        assert!(
            p as usize == SENTINEL || p.is_null(),
            "{step}: a refused C_GetInterface handed out {p:?}"
        );
    }

    // NULL ppInterface.
    // SAFETY: the shim must reject this without writing.
    let rv = unsafe { (n.get)(null_mut(), null_mut(), null_mut(), 0) };
    c.rec("get: NULL ppInterface", "C_GetInterface", rv, Value::Null);
    assert_eq!(rv_name(rv), "CKR_ARGUMENTS_BAD", "NULL ppInterface");

    // The table handed out works: C_Initialize, C_GetInfo, C_GetSlotList, C_Finalize.
    // SAFETY: the 2.40 interface's pFunctionList is a CK_FUNCTION_LIST.
    let f: &CK_FUNCTION_LIST = unsafe { &*((*default).pFunctionList as *const CK_FUNCTION_LIST) };
    let mut args = os_locking_args();
    // SAFETY: valid initialize args.
    let rv = unsafe { f.C_Initialize.expect("C_Initialize")(&mut args as *mut _ as *mut c_void) };
    c.configured = rv == CKR_OK;
    c.rec(
        "C_Initialize via the interface",
        "C_Initialize",
        rv,
        Value::Null,
    );
    assert_eq!(
        rv_name(rv),
        "CKR_OK",
        "C_Initialize through the 2.40 interface"
    );

    // SAFETY: CK_INFO is plain data.
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    // SAFETY: a writable CK_INFO.
    let rv = unsafe { f.C_GetInfo.expect("C_GetInfo")(&mut info) };
    let v = info.cryptokiVersion;
    c.rec(
        "C_GetInfo",
        "C_GetInfo",
        rv,
        json!(format!("{}.{}", v.major, v.minor)),
    );
    assert_eq!(rv_name(rv), "CKR_OK");
    assert_eq!(
        (v.major, v.minor),
        (2, 40),
        "SoftHSM 2.6.1 is a 2.40 module"
    );
    assert_eq!(padded(&info.manufacturerID), "SoftHSM");
    // The library the application loaded is p11audit: its description and version.
    let (major_minor, full) = p11audit_version();
    assert_eq!(padded(&info.libraryDescription), format!("p11audit {full}"));
    let lv = info.libraryVersion;
    assert_eq!(format!("{}.{}", lv.major, lv.minor), major_minor);

    let mut slots: CK_ULONG = 0;
    // SAFETY: a length query.
    let rv = unsafe { f.C_GetSlotList.expect("C_GetSlotList")(CK_TRUE, null_mut(), &mut slots) };
    c.rec("C_GetSlotList", "C_GetSlotList", rv, json!(slots as u64));
    assert_eq!(rv_name(rv), "CKR_OK");
    assert!(slots >= 1, "the fixture has a token");

    // Negotiation once the shim is configured is logged at once (no note).
    let (rv, p) = n.get(Some("PKCS 11"), None, 0);
    c.rec(
        "get: after C_Initialize",
        "C_GetInterface",
        rv,
        json!("PKCS 11 2.40"),
    );
    assert_eq!(rv_name(rv), "CKR_OK");
    assert_eq!(describe_ptr(p)["version"], "2.40");
    let (rv, _) = n.get(Some("PKCS 11"), Some((3, 0)), 0);
    c.rec(
        "get: 3.0 after C_Initialize",
        "C_GetInterface",
        rv,
        Value::Null,
    );
    assert_eq!(rv_name(rv), "CKR_ARGUMENTS_BAD");

    // SAFETY: NULL reserved.
    let rv = unsafe { f.C_Finalize.expect("C_Finalize")(null_mut()) };
    c.rec("C_Finalize", "C_Finalize", rv, Value::Null);
    assert_eq!(rv_name(rv), "CKR_OK");

    print_marked(MARKER, &json!({ "calls": c.calls }));
}

#[test]
fn softhsm_offers_only_the_2_40_interface_through_the_shim() {
    let fx = Fixture::new();
    let shim = shim_library();
    let result = run_driver(
        "softhsm_negotiation_driver",
        &shim,
        &fx.env(),
        fx.dir.path(),
        "softhsm-shim",
    );
    let calls = result["calls"].as_array().expect("calls");

    let records = check_chain(&fx);
    let matched = find_call_records(&records, calls);
    for (call, rec) in calls.iter().zip(&matched) {
        if call["fn"] != "C_GetInterface" {
            continue;
        }
        if call["rv"] == "CKR_OK" {
            assert_eq!(
                rec["interface"], "PKCS 11 2.40",
                "{}: record {rec}",
                call["step"]
            );
        } else {
            assert!(
                rec.get("interface").is_none(),
                "{}: a refused C_GetInterface names an interface: {rec}",
                call["step"]
            );
        }
    }
    // The early records keep the order of events: find_call_records found them in call order,
    // all before the outcome of C_Initialize.
    let early_get_ok = matched
        .iter()
        .filter(|r| {
            r["fn"] == "C_GetInterface"
                && r["note"] == EARLY_NOTE
                && r["interface"] == "PKCS 11 2.40"
        })
        .count();
    assert_eq!(
        early_get_ok, 4,
        "the four successful C_GetInterface calls before C_Initialize"
    );
}

// =============================================================================================
// OpenSC: a real 3.0 module, no card

/// The PKCS#11 3.0 functions after the 2.40 table and the two negotiation functions, in
/// CK_FUNCTION_LIST_3_0 order.
const FUNCTIONS_3_0: [&str; 22] = [
    "C_LoginUser",
    "C_SessionCancel",
    "C_MessageEncryptInit",
    "C_EncryptMessage",
    "C_EncryptMessageBegin",
    "C_EncryptMessageNext",
    "C_MessageEncryptFinal",
    "C_MessageDecryptInit",
    "C_DecryptMessage",
    "C_DecryptMessageBegin",
    "C_DecryptMessageNext",
    "C_MessageDecryptFinal",
    "C_MessageSignInit",
    "C_SignMessage",
    "C_SignMessageBegin",
    "C_SignMessageNext",
    "C_MessageSignFinal",
    "C_MessageVerifyInit",
    "C_VerifyMessage",
    "C_VerifyMessageBegin",
    "C_VerifyMessageNext",
    "C_MessageVerifyFinal",
];

/// Calls every 3.0 function of `f` on `session` with well-formed arguments (so a failure is
/// about the session, the module's state or support), then a few with NULL pointers.
fn call_3_0_functions(
    c: &mut Calls,
    f: &CK_FUNCTION_LIST_3_0,
    session: CK_SESSION_HANDLE,
    when: &str,
) {
    let mut pin = *b"Pin-canary-Qx7";
    let mut user = *b"auditor";
    let mut data = [0x42u8; 32];
    let mut out = [0u8; 64];
    let mut out_len: CK_ULONG;
    let mut tag = [0u8; 16];
    let mut iv = [7u8; 12];
    let mut aad = *b"aad";
    let mut gcm = CK_GCM_MESSAGE_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: iv.len() as CK_ULONG,
        ulIvFixedBits: 0,
        ivGenerator: CKG_NO_GENERATE,
        pTag: tag.as_mut_ptr(),
        ulTagBits: 128,
    };
    let gcm_p = &mut gcm as *mut CK_GCM_MESSAGE_PARAMS as *mut c_void;
    let gcm_len = std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;
    let mut aes = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let mut ecdsa = CK_MECHANISM {
        mechanism: CKM_ECDSA_SHA256,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let key: CK_OBJECT_HANDLE = 0x77;
    let s = session;
    let dl = data.len() as CK_ULONG;
    let al = aad.len() as CK_ULONG;
    let mut variant = "";
    macro_rules! call {
        ($name:ident ( $($arg:expr),* )) => {{
            out_len = out.len() as CK_ULONG;
            let _ = out_len;
            let rv = match f.$name {
                // SAFETY: every pointer argument points to a live local of the right size.
                Some(func) => unsafe { func($($arg),*) },
                None => panic!("the 3.0 table has no {}", stringify!($name)),
            };
            c.rec(
                &format!("{when}: {}{variant}", stringify!($name)),
                stringify!($name),
                rv,
                Value::Null,
            );
        }};
    }
    call!(C_LoginUser(
        s,
        CKU_USER,
        pin.as_mut_ptr(),
        pin.len() as CK_ULONG,
        user.as_mut_ptr(),
        user.len() as CK_ULONG
    ));
    call!(C_SessionCancel(s, CKF_MESSAGE_ENCRYPT | CKF_FIND_OBJECTS));
    call!(C_MessageEncryptInit(s, &mut aes, key));
    call!(C_EncryptMessage(
        s,
        gcm_p,
        gcm_len,
        aad.as_mut_ptr(),
        al,
        data.as_mut_ptr(),
        dl,
        out.as_mut_ptr(),
        &mut out_len
    ));
    call!(C_EncryptMessageBegin(
        s,
        gcm_p,
        gcm_len,
        aad.as_mut_ptr(),
        al
    ));
    call!(C_EncryptMessageNext(
        s,
        gcm_p,
        gcm_len,
        data.as_mut_ptr(),
        dl,
        out.as_mut_ptr(),
        &mut out_len,
        CKF_END_OF_MESSAGE
    ));
    call!(C_MessageEncryptFinal(s));
    call!(C_MessageDecryptInit(s, &mut aes, key));
    call!(C_DecryptMessage(
        s,
        gcm_p,
        gcm_len,
        aad.as_mut_ptr(),
        al,
        data.as_mut_ptr(),
        dl,
        out.as_mut_ptr(),
        &mut out_len
    ));
    call!(C_DecryptMessageBegin(
        s,
        gcm_p,
        gcm_len,
        aad.as_mut_ptr(),
        al
    ));
    call!(C_DecryptMessageNext(
        s,
        gcm_p,
        gcm_len,
        data.as_mut_ptr(),
        dl,
        out.as_mut_ptr(),
        &mut out_len,
        CKF_END_OF_MESSAGE
    ));
    call!(C_MessageDecryptFinal(s));
    call!(C_MessageSignInit(s, &mut ecdsa, key));
    call!(C_SignMessage(
        s,
        null_mut(),
        0,
        data.as_mut_ptr(),
        dl,
        out.as_mut_ptr(),
        &mut out_len
    ));
    call!(C_SignMessageBegin(s, null_mut(), 0));
    call!(C_SignMessageNext(
        s,
        null_mut(),
        0,
        data.as_mut_ptr(),
        dl,
        out.as_mut_ptr(),
        &mut out_len
    ));
    call!(C_MessageSignFinal(s));
    call!(C_MessageVerifyInit(s, &mut ecdsa, key));
    call!(C_VerifyMessage(
        s,
        null_mut(),
        0,
        data.as_mut_ptr(),
        dl,
        out.as_mut_ptr(),
        64
    ));
    call!(C_VerifyMessageBegin(s, null_mut(), 0));
    call!(C_VerifyMessageNext(
        s,
        null_mut(),
        0,
        data.as_mut_ptr(),
        dl,
        out.as_mut_ptr(),
        64
    ));
    call!(C_MessageVerifyFinal(s));
    // NULL pointers where the module must not dereference them.
    variant = " with NULL pointers";
    call!(C_LoginUser(s, CKU_USER, null_mut(), 0, null_mut(), 0));
    call!(C_MessageEncryptInit(s, null_mut(), key));
    call!(C_EncryptMessage(
        s,
        null_mut(),
        0,
        null_mut(),
        0,
        null_mut(),
        0,
        null_mut(),
        null_mut()
    ));
}

/// The driver for OpenSC, run directly and through the shim: records everything, asserts
/// nothing beyond what the comparison needs.
#[test]
fn opensc_driver() {
    let Ok(module) = std::env::var(MODULE_ENV) else {
        return; // Only a re-executed child runs the driver.
    };
    let n = Negotiation::load(&module);
    let mut c = Calls::new();
    let mut facts = serde_json::Map::new();

    // Negotiation, before C_Initialize as applications do it.
    let list: Vec<Value> = n.all().iter().map(describe).collect();
    c.rec("list", "C_GetInterfaceList", CKR_OK, json!(list));
    facts.insert("list".into(), json!(list));

    let (rv, p) = n.get(None, None, 0);
    let default = (rv == CKR_OK).then(|| describe_ptr(p));
    c.rec("get: default", "C_GetInterface", rv, json!(default));
    facts.insert("default".into(), json!(default));

    let mut versions = serde_json::Map::new();
    for v in [(2, 20), (2, 40), (3, 0), (3, 1), (3, 2)] {
        let (rv, p) = n.get(Some("PKCS 11"), Some(v), 0);
        let got = (rv == CKR_OK).then(|| describe_ptr(p));
        let step = format!("get: PKCS 11 {}.{}", v.0, v.1);
        c.rec(&step, "C_GetInterface", rv, json!(got));
        versions.insert(format!("{}.{}", v.0, v.1), json!([rv_name(rv), got]));
    }
    facts.insert("by_version".into(), Value::Object(versions));

    let (rv, p) = n.get(Some("PKCS 11"), None, CKF_INTERFACE_FORK_SAFE);
    let got = (rv == CKR_OK).then(|| describe_ptr(p));
    c.rec("get: fork-safe", "C_GetInterface", rv, json!(got));
    // SAFETY: NULL ppInterface must be refused without writing.
    let rv = unsafe { (n.get)(null_mut(), null_mut(), null_mut(), 0) };
    c.rec("get: NULL ppInterface", "C_GetInterface", rv, Value::Null);
    // SAFETY: NULL count must be refused without writing.
    let rv = unsafe { (n.list)(null_mut(), null_mut()) };
    c.rec("list: NULL, NULL", "C_GetInterfaceList", rv, Value::Null);
    let mut one = [zeroed_interface(); 1];
    let mut count: CK_ULONG = 0;
    // SAFETY: a buffer of one entry; we claim room for none.
    let rv = unsafe { (n.list)(one.as_mut_ptr(), &mut count) };
    c.rec(
        "list: room for 0",
        "C_GetInterfaceList",
        rv,
        json!(count as u64),
    );

    // The 3.0 interface's table.
    let (rv, p3) = n.get(Some("PKCS 11"), Some((3, 0)), 0);
    assert_eq!(
        rv_name(rv),
        "CKR_OK",
        "{module} offers no PKCS 11 3.0 interface"
    );
    // SAFETY: a 3.0 interface's pFunctionList is a CK_FUNCTION_LIST_3_0.
    let f: &CK_FUNCTION_LIST_3_0 =
        unsafe { &*((*p3).pFunctionList as *const CK_FUNCTION_LIST_3_0) };
    assert_eq!((f.version.major, f.version.minor), (3, 0));

    // SAFETY: NULL init args: the module creates no threads of ours, locking is its own.
    let rv = unsafe { f.C_Initialize.expect("C_Initialize")(null_mut()) };
    c.configured = rv == CKR_OK;
    c.rec("C_Initialize", "C_Initialize", rv, Value::Null);
    assert_eq!(
        rv_name(rv),
        "CKR_OK",
        "C_Initialize of {module} through its 3.0 table"
    );

    let (rv, info_v) = get_info(f.C_GetInfo);
    c.rec("C_GetInfo", "C_GetInfo", rv, info_v.clone());
    facts.insert("info".into(), info_v);

    for present in [CK_FALSE, CK_TRUE] {
        let mut count: CK_ULONG = 0;
        // SAFETY: a length query.
        let rv =
            unsafe { f.C_GetSlotList.expect("C_GetSlotList")(present, null_mut(), &mut count) };
        c.rec(
            &format!("C_GetSlotList(tokenPresent={present})"),
            "C_GetSlotList",
            rv,
            json!(count as u64),
        );
    }

    // No card, so no session can be opened: a made-up handle.
    call_3_0_functions(&mut c, f, 0x1234, "no session");

    // Negotiation after C_Initialize.
    let (rv, p) = n.get(None, None, 0);
    let got = (rv == CKR_OK).then(|| describe_ptr(p));
    c.rec(
        "get: default after C_Initialize",
        "C_GetInterface",
        rv,
        json!(got),
    );

    // SAFETY: NULL reserved.
    let rv = unsafe { f.C_Finalize.expect("C_Finalize")(null_mut()) };
    c.rec("C_Finalize", "C_Finalize", rv, Value::Null);
    c.configured = false;

    // After C_Finalize, through the same table: the module is not initialized.
    call_3_0_functions(&mut c, f, 0x1234, "after C_Finalize");

    // A 2.x caller: the table of C_GetFunctionList. OpenSC answers C_GetInfo per table
    // (cryptokiVersion 2.20 here, 3.0 through its 3.0 table), so p11audit must forward a
    // caller of its 2.40 table through the module's 2.x one.
    let mut list: *mut CK_FUNCTION_LIST = null_mut();
    // SAFETY: a writable out-pointer.
    let rv = unsafe { (n.get_function_list)(&mut list) };
    c.rec(
        "2.x: C_GetFunctionList",
        "C_GetFunctionList",
        rv,
        Value::Null,
    );
    assert!(
        !list.is_null(),
        "C_GetFunctionList of {module} gave no table"
    );
    // SAFETY: checked non-NULL; the module's (or p11audit's) static table.
    let f2: &CK_FUNCTION_LIST = unsafe { &*list };
    // SAFETY: NULL init args.
    let rv = unsafe { f2.C_Initialize.expect("C_Initialize")(null_mut()) };
    c.configured = rv == CKR_OK;
    c.rec("2.x: C_Initialize", "C_Initialize", rv, Value::Null);
    let (rv, info_2x) = get_info(f2.C_GetInfo);
    c.rec("2.x: C_GetInfo", "C_GetInfo", rv, info_2x.clone());
    facts.insert("info_2x".into(), info_2x);
    // One process, both tables (two libraries in one application can each take their own):
    // each table keeps its own behaviour, whichever was handed out last.
    let (rv, info) = get_info(f.C_GetInfo);
    c.rec(
        "mixed: 3.0 table after C_GetFunctionList",
        "C_GetInfo",
        rv,
        info.clone(),
    );
    facts.insert("info_3_0_after_2x".into(), info);
    let (rv, p) = n.get(Some("PKCS 11"), Some((3, 0)), 0);
    let got = (rv == CKR_OK).then(|| describe_ptr(p));
    c.rec(
        "mixed: get PKCS 11 3.0 again",
        "C_GetInterface",
        rv,
        json!(got),
    );
    let (rv, info) = get_info(f2.C_GetInfo);
    c.rec(
        "mixed: 2.x table after C_GetInterface 3.0",
        "C_GetInfo",
        rv,
        info.clone(),
    );
    facts.insert("info_2x_after_3_0".into(), info);
    // SAFETY: NULL reserved.
    let rv = unsafe { f2.C_Finalize.expect("C_Finalize")(null_mut()) };
    c.rec("2.x: C_Finalize", "C_Finalize", rv, Value::Null);
    c.configured = false;

    print_marked(MARKER, &json!({ "calls": c.calls, "facts": facts }));
}

/// `C_GetInfo` through `get_info`: its return value and what it said.
fn get_info(get_info: CK_C_GetInfo) -> (CK_RV, Value) {
    // SAFETY: CK_INFO is plain data.
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    // SAFETY: a writable CK_INFO.
    let rv = unsafe { get_info.expect("C_GetInfo")(&mut info) };
    let v = json!({
        "cryptokiVersion": format!("{}.{}", info.cryptokiVersion.major, info.cryptokiVersion.minor),
        "manufacturerID": padded(&info.manufacturerID),
        "flags": info.flags as u64,
        "libraryDescription": padded(&info.libraryDescription),
        "libraryVersion": format!("{}.{}", info.libraryVersion.major, info.libraryVersion.minor),
    });
    (rv, v)
}

/// The calls without the `configured` marker (which differs in meaning between the runs only
/// in that the direct run has no log): what must be equal.
fn comparable(calls: &Value) -> Vec<Value> {
    calls
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| json!([c["step"], c["fn"], c["rv"], c["out"]]))
        .collect()
}

fn differences(direct: &[Value], shim: &[Value]) -> Vec<String> {
    let mut d: Vec<String> = direct
        .iter()
        .zip(shim)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("  direct {a}\n  shim   {b}"))
        .collect();
    if direct.len() != shim.len() {
        d.push(format!(
            "  {} calls direct, {} through the shim",
            direct.len(),
            shim.len()
        ));
    }
    d
}

#[test]
fn opensc_3_0_through_the_shim_matches_direct() {
    assert!(
        Path::new(OPENSC).is_file(),
        "{OPENSC} missing: install the Debian package opensc-pkcs11 (scripts/install-deps.sh)"
    );
    let fx = Fixture::new();
    let shim = shim_library();
    let mut direct = run_driver(
        "opensc_driver",
        Path::new(OPENSC),
        &[],
        fx.dir.path(),
        "opensc-direct",
    );
    let mut through = run_driver(
        "opensc_driver",
        &shim,
        &env_for(&fx, OPENSC),
        fx.dir.path(),
        "opensc-shim",
    );
    check_library_identity(&mut direct, &mut through);

    // OpenSC is a 3.0 module, and the shim offers what it offers.
    let info = &direct["facts"]["info"];
    assert_eq!(info["cryptokiVersion"], "3.0", "OpenSC's C_GetInfo: {info}");
    // What makes the 2.x phase and the mixed phase tell anything: OpenSC's tables differ.
    for (fact, version) in [
        ("info_2x", "2.20"),
        ("info_3_0_after_2x", "3.0"),
        ("info_2x_after_3_0", "2.20"),
    ] {
        let info = &direct["facts"][fact];
        assert_eq!(info["cryptokiVersion"], version, "OpenSC's {fact}: {info}");
    }
    let list = direct["facts"]["list"].as_array().expect("list");
    assert!(
        list.iter()
            .any(|i| i["name"] == "PKCS 11" && i["version"] == "3.0"),
        "OpenSC offers no PKCS 11 3.0 interface: {list:?}"
    );
    assert!(
        list.iter().all(|i| i["name"] == "PKCS 11"),
        "OpenSC offers a vendor interface, which the shim hides by design: compare only the \
         standard ones: {list:?}"
    );
    assert_eq!(
        direct["facts"], through["facts"],
        "interface negotiation or C_GetInfo through the shim differs from direct"
    );

    let diffs = differences(
        &comparable(&direct["calls"]),
        &comparable(&through["calls"]),
    );
    assert!(
        diffs.is_empty(),
        "{} calls differ between OpenSC direct and through the shim:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    // The 3.0 functions really were reached (and not all refused the same trivial way).
    let calls = through["calls"].as_array().expect("calls");
    for f in FUNCTIONS_3_0 {
        assert!(
            calls
                .iter()
                .any(|c| c["fn"] == f && c["configured"] == true),
            "{f} was not called while the shim was configured"
        );
    }

    // The log verifies and has a record of every call made while the shim could log.
    let records = check_chain(&fx);
    let logged: Vec<Value> = calls
        .iter()
        .filter(|c| {
            c["configured"] == true
                || c["fn"]
                    .as_str()
                    .is_some_and(|f| f.starts_with("C_GetInterface"))
        })
        .cloned()
        .collect();
    let matched = find_call_records(&records, &logged);
    for (call, rec) in logged.iter().zip(&matched) {
        if call["fn"] == "C_LoginUser" {
            assert_eq!(rec["user_type"], "CKU_USER", "{rec}");
            let want = if call["step"].as_str().is_some_and(|s| s.contains("NULL")) {
                ""
            } else {
                "auditor"
            };
            assert_eq!(rec["username"], want, "{}: {rec}", call["step"]);
        }
        if call["fn"] == "C_GetInterface" {
            let handed_out = &call["out"];
            if call["rv"] == "CKR_OK" {
                let want = format!(
                    "{} {}",
                    handed_out["name"].as_str().expect("name"),
                    handed_out["version"].as_str().expect("version")
                );
                assert_eq!(rec["interface"], *want, "{}: {rec}", call["step"]);
            } else {
                assert!(rec.get("interface").is_none(), "{}: {rec}", call["step"]);
            }
        }
    }
    let text = std::fs::read_to_string(&fx.log).expect("log");
    assert!(
        !text.contains(USER_PIN),
        "the PIN given to C_LoginUser is in the log"
    );
    assert!(
        !text.contains(&hex(USER_PIN.as_bytes())),
        "the PIN given to C_LoginUser is in the log (hex)"
    );
}
