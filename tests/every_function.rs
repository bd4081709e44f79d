//! Every one of the 68 PKCS#11 2.40 functions, through the shim and directly against SoftHSM.
//!
//! One process can load SoftHSM only once (`dlopen` hands back the same instance), so the
//! comparison runs the same driver twice, in two child processes: this test binary re-executes
//! itself with `--exact every_function_driver` and `P11AUDIT_TEST_MODULE` set to SoftHSM in one
//! run and to `libp11audit.so` in the other. Each run gets its own fresh token, made the same
//! way, so handles and results line up.
//!
//! The driver uses the raw C ABI (`dlopen`, `C_GetFunctionList`, `CK_FUNCTION_LIST`) rather than
//! the `cryptoki` crate, so that it can call every function, including the ones SoftHSM answers
//! with `CKR_FUNCTION_NOT_SUPPORTED`, and pass the argument edge cases (NULL buffers, too-small
//! buffers, bad handles, NULL pointers, half-supplied mutex callbacks) a client library would
//! refuse to send. It prints one JSON line: for each call its function, return value and the
//! outputs that are deterministic (no random bytes, RSA-PSS/ECDSA signatures, serials or
//! clocks). The parent compares the two runs call by call, checks the shim's log with
//! `p11audit verify`, and checks that every call made while the shim was configured has its
//! records in the log.
//!
//! Needs `softhsm2-util` and `/usr/lib/softhsm/libsofthsm2.so` (scripts/install-deps.sh).

// CK_ULONG is u64 here and u32 elsewhere: the casts keep the driver portable.
#![allow(clippy::unnecessary_cast)]

/// The note on records of calls the shim answered before it was configured.
const EARLY_NOTE: &str = "answered by p11audit before C_Initialize";

mod common;

use common::raw;
use common::*;
use cryptoki_sys::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_void;
use std::ptr::null_mut;

/// Set in the child processes only: the PKCS#11 module the driver loads.
const MODULE_ENV: &str = "P11AUDIT_TEST_MODULE";
/// Prefix of the driver's one result line on stdout.
const MARKER: &str = "P11AUDIT-EVERY-FUNCTION-RESULT ";
/// Return value recorded when a function table entry is NULL (not a CK_RV any module returns).
const ABSENT: CK_RV = 0xdead_0000_0000_0001;

/// The 68 members of CK_FUNCTION_LIST (PKCS#11 2.40), in table order.
const PKCS11_240: [&str; 68] = [
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
    "C_WaitForSlotEvent",
];

// ---- the parent ---------------------------------------------------------------------------

/// One call as the driver recorded it.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    step: String,
    function: String,
    /// Whether the shim, in this position, has its configuration and so must log the call.
    logged: bool,
    value: Value,
}

fn run_driver(fx: &Fixture, module: &std::path::Path, what: &str) -> Vec<Recorded> {
    let cmd = child_command("every_function_driver", MODULE_ENV, module, &fx.env());
    let what = format!("{what} driver run against {}", module.display());
    let run = run_child_ok(cmd, fx.dir.path(), &what);
    let calls: Vec<Value> = serde_json::from_value(run.marked_json(MARKER, &what))
        .expect("driver result is a list of calls");
    calls
        .into_iter()
        .map(|c| Recorded {
            step: c["step"].as_str().expect("step").to_string(),
            function: c["fn"].as_str().expect("fn").to_string(),
            logged: c["logged"].as_bool().expect("logged"),
            value: c,
        })
        .collect()
}

fn short(v: &Value) -> String {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("step");
        o.remove("logged");
    }
    v.to_string()
}

/// Differences between the direct and the shimmed run, one line each.
/// C_GetInfo's `libraryDescription` and `libraryVersion` name p11audit through the shim
/// (README, "Versions") and SoftHSM directly: checked on every C_GetInfo answer, then taken out
/// so that the rest of each answer is compared like any other call's.
fn library_identity_checked(direct: &mut [Recorded], shim: &mut [Recorded]) {
    let (major_minor, full) = p11audit_version();
    let mut checked = 0;
    for (d, s) in direct.iter_mut().zip(shim.iter_mut()) {
        if d.function != "C_GetInfo" || s.function != "C_GetInfo" {
            continue;
        }
        for (key, own) in [
            ("description", format!("p11audit {full}")),
            ("library", major_minor.clone()),
        ] {
            let taken = |r: &mut Recorded| {
                r.value
                    .get_mut("out")
                    .and_then(|o| o.as_object_mut())
                    .and_then(|o| o.remove(key))
            };
            match (taken(d), taken(s)) {
                (Some(dv), Some(sv)) => {
                    assert_eq!(sv, own, "C_GetInfo's {key} through the shim [{}]", s.step);
                    assert_ne!(dv, own, "SoftHSM's own C_GetInfo {key} [{}]", d.step);
                    checked += 1;
                }
                (None, None) => {}
                (dv, sv) => panic!("C_GetInfo {key} [{}]: direct {dv:?}, shim {sv:?}", d.step),
            }
        }
    }
    assert!(checked >= 2, "no C_GetInfo answer with a library identity");
}

fn differences(direct: &[Recorded], shim: &[Recorded]) -> Vec<String> {
    let mut diffs = Vec::new();
    for (i, (d, s)) in direct.iter().zip(shim).enumerate() {
        if d.value != s.value {
            diffs.push(format!(
                "#{i} {} [{}]\n    direct: {}\n    shim:   {}",
                d.function,
                d.step,
                short(&d.value),
                short(&s.value)
            ));
        }
    }
    if direct.len() != shim.len() {
        diffs.push(format!(
            "the direct run made {} calls, the shimmed run {}; first unmatched: {:?}",
            direct.len(),
            shim.len(),
            direct
                .get(shim.len())
                .or_else(|| shim.get(direct.len()))
                .map(|r| format!("{} [{}]", r.function, r.step))
        ));
    }
    diffs
}

/// Return values per function in one run, for the failure messages and `--nocapture`.
fn support_table(calls: &[Recorded]) -> String {
    let mut by_fn: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for c in calls {
        by_fn
            .entry(c.function.as_str())
            .or_default()
            .insert(c.value["rv"].as_str().unwrap_or("?").to_string());
    }
    PKCS11_240
        .iter()
        .map(|f| {
            let rvs = by_fn
                .get(f)
                .map(|s| s.iter().cloned().collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| "<never called>".into());
            format!("  {f:<24} {rvs}\n")
        })
        .collect()
}

#[test]
fn every_function_matches_softhsm_and_is_logged() {
    // The shim's own list starts with the 2.40 table, in order.
    let shim_names: Vec<&str> = p11audit::shim::FUNCTIONS.iter().map(|(n, _)| *n).collect();
    assert!(
        shim_names.len() >= 68 && shim_names[..68] == PKCS11_240[..],
        "p11audit::shim::FUNCTIONS does not start with the 68 CK_FUNCTION_LIST members in order:\n{:?}",
        &shim_names[..shim_names.len().min(68)]
    );

    let lib = shim_library();
    let direct_fx = Fixture::new();
    let shim_fx = Fixture::new();
    let mut direct = run_driver(&direct_fx, std::path::Path::new(SOFTHSM), "direct");
    let mut shim = run_driver(&shim_fx, &lib, "shim");
    library_identity_checked(&mut direct, &mut shim);
    eprintln!(
        "every_function: {} calls; return values from SoftHSM directly:\n{}",
        direct.len(),
        support_table(&direct)
    );

    // The script reaches every function.
    let called: BTreeSet<&str> = direct.iter().map(|c| c.function.as_str()).collect();
    let never: Vec<&str> = PKCS11_240
        .iter()
        .copied()
        .filter(|f| !called.contains(f))
        .collect();
    assert!(never.is_empty(), "the driver never calls {never:?}");

    // The script does what it means to: the steps with an expected return value get it from
    // SoftHSM directly (otherwise an edge case might silently test something else).
    let unexpected: Vec<String> = direct
        .iter()
        .filter_map(|c| {
            let want = c.value.get("want")?.as_str()?;
            let got = c.value["rv"].as_str()?;
            (want != got).then(|| format!("{} [{}]: want {want}, got {got}", c.function, c.step))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "the script's expectations do not hold against SoftHSM directly (fix the script):\n{}",
        unexpected.join("\n")
    );

    // Same calls, same results.
    let diffs = differences(&direct, &shim);
    assert!(
        diffs.is_empty(),
        "{} call(s) differ between SoftHSM directly and through {}:\n{}\n\nreturn values per function (direct):\n{}",
        diffs.len(),
        lib.display(),
        diffs.join("\n"),
        support_table(&direct)
    );

    // The log is intact.
    shim_fx.assert_verifies("the shim run's log");

    let text = std::fs::read_to_string(&shim_fx.log).expect("read audit log");
    for secret in [USER_PIN, SO_PIN, NEW_USER_PIN, WRONG_PIN] {
        assert!(
            !text.contains(secret),
            "the audit log contains a PIN ({secret})"
        );
    }

    // Every 2.40 function has records, and every call made while the shim was configured has
    // its outcome (and, for acting calls, its intent) in the log.
    let records = shim_fx.records();
    let count = |ev: &str, f: &str| {
        records
            .iter()
            .filter(|r| r["ev"] == ev && r["fn"] == f)
            .count()
    };
    let missing: Vec<&str> = PKCS11_240
        .iter()
        .copied()
        .filter(|f| {
            !records
                .iter()
                .any(|r| r["fn"] == *f || r["init"]["fn"] == *f)
        })
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("no record at all for {missing:?}"));
    }
    for (name, kind) in &p11audit::shim::FUNCTIONS[..68] {
        let calls: Vec<&Recorded> = shim
            .iter()
            .filter(|c| c.function == *name && c.logged)
            .collect();
        let mut outcome_records: Vec<Value> = records
            .iter()
            // Calls answered before configuration are written later, marked by their note;
            // `calls` holds only the calls made after configuration.
            .filter(|r| r["ev"] == "outcome" && r["fn"] == *name && r["note"] != EARLY_NOTE)
            .cloned()
            .collect();
        // A successful *Init told in its operation's first outcome (`init`) has no record of
        // its own. Records that waited are written later than they were made: the calls'
        // order is the order of their times.
        outcome_records.extend(
            records
                .iter()
                .filter(|r| r["ev"] == "outcome" && r["init"]["fn"] == *name)
                .map(|r| serde_json::json!({"rv": "CKR_OK", "ts": r["init"]["ts"]})),
        );
        outcome_records.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
        // A length query followed by another call of its function in its session has no
        // record of its own: that call's outcome counts it (`len_queries`) and stands after it.
        let mut call_records: Vec<Option<&Value>> = Vec::new();
        for r in &outcome_records {
            let counted = r["len_queries"].as_u64().unwrap_or(0);
            call_records.extend(std::iter::repeat_n(None, counted as usize));
            call_records.push(Some(r));
        }
        let outcomes = call_records.len();
        let intents = count("intent", name);
        if outcomes != calls.len() {
            problems.push(format!(
                "{name}: {} call(s) made after configuration, {outcomes} outcome record(s); calls: {:?}",
                calls.len(),
                calls
                    .iter()
                    .map(|c| format!("{} -> {}", c.step, c.value["rv"].as_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
            ));
        } else {
            // One thread: the outcomes of a function are in the order of its calls. Each says
            // what the application got, and a length query or a too-small buffer says so.
            for (c, r) in calls.iter().zip(&call_records) {
                let Some(r) = r else {
                    let length_query = c.value.get("log_out")
                        == Some(&serde_json::json!("length_query"))
                        && c.value["rv"] == "CKR_OK";
                    if !length_query {
                        problems.push(format!(
                            "{name} [{}]: counted as a length query by the next outcome, but it was not one: {}",
                            c.step, c.value
                        ));
                    }
                    continue;
                };
                if r["rv"] != c.value["rv"] {
                    problems.push(format!(
                        "{name} [{}]: returned {}, record says rv {}",
                        c.step, c.value["rv"], r["rv"]
                    ));
                }
                if let Some(want) = c.value.get("log_out") {
                    if r["out"] != *want {
                        problems.push(format!(
                            "{name} [{}]: record says out {}, want {want}",
                            c.step, r["out"]
                        ));
                    }
                }
            }
        }
        let acting = matches!(
            kind,
            p11audit::shim::Kind::Acting | p11audit::shim::Kind::ActingResult
        );
        let want_intents = if acting { outcome_records.len() } else { 0 };
        if intents != want_intents {
            problems.push(format!(
                "{name} ({kind:?}): {intents} intent record(s) for {outcomes} outcome(s)"
            ));
        }
    }
    // The driver's C_GetFunctionList before C_Initialize is written once the shim is configured.
    assert!(
        records
            .iter()
            .any(|r| r["fn"] == "C_GetFunctionList" && r["note"] == EARLY_NOTE),
        "no record of the C_GetFunctionList call made before C_Initialize"
    );
    assert!(
        problems.is_empty(),
        "the audit log does not account for every call ({}):\n{}",
        shim_fx.log.display(),
        problems.join("\n")
    );
}

// ---- the driver ---------------------------------------------------------------------------

const NEW_USER_PIN: &str = "NewPin-canary-Hj4";
const WRONG_PIN: &str = "Wrong-canary-Tt2";
const TOKEN_LABEL: &str = "p11audit every function";
/// Handles no provider hands out in this script.
const BAD_SESSION: CK_SESSION_HANDLE = 0x7ead_beef;
const BAD_OBJECT: CK_OBJECT_HANDLE = 0x7eed_f00d;
const BAD_SLOT: CK_SLOT_ID = 0x7fff_0123;

const AES_KEY: [u8; 32] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];
const HMAC_KEY: [u8; 32] = [0x5a; 32];
const IV: [u8; 16] = [0x42; 16];

fn rv_text(rv: CK_RV) -> String {
    if rv == ABSENT {
        return "<NULL table entry>".into();
    }
    match p11audit::format::names::rv_name(rv as u64) {
        Some(n) => n.to_string(),
        None => format!("{rv:#x}"),
    }
}

fn ul(v: CK_ULONG) -> Value {
    if v == CK_UNAVAILABLE_INFORMATION {
        json!("unavailable")
    } else {
        json!(v)
    }
}

fn padded(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

fn version(v: CK_VERSION) -> String {
    format!("{}.{}", v.major, v.minor)
}

fn mech(t: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: t,
        pParameter: null_mut(),
        ulParameterLen: 0,
    }
}

fn mech_with<T>(t: CK_MECHANISM_TYPE, param: &mut T) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: t,
        pParameter: param as *mut T as *mut c_void,
        ulParameterLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

fn mech_bytes(t: CK_MECHANISM_TYPE, param: &mut [u8]) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: t,
        pParameter: param.as_mut_ptr() as *mut c_void,
        ulParameterLen: param.len() as CK_ULONG,
    }
}

/// An attribute template that owns its values.
#[derive(Default)]
struct Template {
    values: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>,
    attrs: Vec<CK_ATTRIBUTE>,
}

impl Template {
    fn new() -> Self {
        Self::default()
    }
    fn bytes(mut self, t: CK_ATTRIBUTE_TYPE, v: &[u8]) -> Self {
        self.values.push((t, v.to_vec()));
        self
    }
    fn bool(self, t: CK_ATTRIBUTE_TYPE, v: bool) -> Self {
        self.bytes(t, &[v as u8])
    }
    fn ulong(self, t: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> Self {
        self.bytes(t, &v.to_ne_bytes())
    }
    fn text(self, t: CK_ATTRIBUTE_TYPE, v: &str) -> Self {
        self.bytes(t, v.as_bytes())
    }
    /// The CK_ATTRIBUTE array; valid while `self` lives and is not changed.
    fn ptr(&mut self) -> *mut CK_ATTRIBUTE {
        self.attrs = self
            .values
            .iter_mut()
            .map(|(t, v)| CK_ATTRIBUTE {
                type_: *t,
                pValue: v.as_mut_ptr() as *mut c_void,
                ulValueLen: v.len() as CK_ULONG,
            })
            .collect();
        self.attrs.as_mut_ptr()
    }
    fn len(&self) -> CK_ULONG {
        self.values.len() as CK_ULONG
    }
}

/// Calls `$f` from the function list `$fl` (a `*const CK_FUNCTION_LIST`), or gives ABSENT when
/// the table entry is NULL.
macro_rules! raw {
    ($fl:expr, $f:ident ( $($a:expr),* $(,)? )) => {{
        let fl: *const CK_FUNCTION_LIST = $fl;
        // SAFETY: `fl` is the module's function table, valid for the life of the process.
        match unsafe { (*fl).$f } {
            #[allow(unused_unsafe)]
            // SAFETY: the arguments are valid for the call (each call site builds them).
            Some(func) => unsafe { func($($a),*) },
            None => ABSENT,
        }
    }};
}

/// Calls `$f` and records it as step `$step`; evaluates to the CK_RV.
macro_rules! call {
    ($d:expr, $step:expr, $f:ident ( $($a:expr),* $(,)? )) => {{
        let rv = raw!($d.f, $f($($a),*));
        $d.rec(stringify!($f), $step, rv, Value::Null);
        rv
    }};
}

struct Driver {
    f: *const CK_FUNCTION_LIST,
    get_function_list: raw::GetFunctionList,
    calls: Vec<Value>,
    /// The shim has read its configuration (a C_Initialize with valid arguments was made), so
    /// from here on it must log every call.
    configured: bool,
    slots: Vec<CK_SLOT_ID>,
}

impl Driver {
    fn rec(&mut self, function: &'static str, step: &str, rv: CK_RV, out: Value) {
        self.calls.push(json!({
            "fn": function,
            "step": step,
            "rv": rv_text(rv),
            "out": out,
            "logged": self.configured,
        }));
    }

    /// The last recorded call.
    fn last(&mut self) -> &mut Value {
        self.calls.last_mut().expect("a call")
    }

    /// Sets the outputs of the last recorded call.
    fn out(&mut self, out: Value) {
        self.last()["out"] = out;
    }

    /// Adds `key` to the outputs of the last recorded call.
    fn out_also(&mut self, key: &str, value: bool) {
        self.last()["out"][key] = json!(value);
    }

    /// The return value the last call must give against SoftHSM for the script to make sense.
    fn want(&mut self, rv: CK_RV) {
        self.last()["want"] = json!(rv_text(rv));
    }

    /// What the shim's outcome record of the last call must say about its output
    /// (docs/FORMAT.md: `length_query`, `buffer_too_small`).
    fn log_out(&mut self, disposition: &str) {
        self.last()["log_out"] = json!(disposition);
    }

    /// Slots are named by their place in the slot list: SoftHSM derives a token's slot id from
    /// its (random) serial, so the two runs' ids differ.
    fn slot_name(&self, id: CK_SLOT_ID) -> Value {
        match self.slots.iter().position(|&s| s == id) {
            Some(i) => json!(format!("slot#{i}")),
            None => json!(id),
        }
    }

    fn slot_text(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (i, id) in self.slots.iter().enumerate() {
            s = s.replace(&format!("{id:#x}"), &format!("<slot#{i}>"));
        }
        s
    }

    /// The output pattern of PKCS#11 §5.2: a length query (NULL buffer), then a buffer one byte
    /// long (CKR_BUFFER_TOO_SMALL while the operation stays active), then the real call.
    /// Records the bytes only when `deterministic`.
    fn three_step(
        &mut self,
        function: &'static str,
        step: &str,
        deterministic: bool,
        mut f: impl FnMut(*mut u8, *mut CK_ULONG) -> CK_RV,
    ) -> Vec<u8> {
        let mut len: CK_ULONG = 0;
        let rv = f(null_mut(), &mut len);
        self.rec(
            function,
            &format!("{step}: length query"),
            rv,
            json!({ "len": ul(len) }),
        );
        self.want(CKR_OK);
        self.log_out("length_query");
        if rv != CKR_OK || len == CK_UNAVAILABLE_INFORMATION || len > 1 << 20 {
            return Vec::new();
        }
        let full = len;
        if full > 1 {
            let mut small = [0u8; 1];
            let mut l: CK_ULONG = 1;
            let rv = f(small.as_mut_ptr(), &mut l);
            self.rec(
                function,
                &format!("{step}: 1-byte buffer"),
                rv,
                json!({ "len": ul(l) }),
            );
            self.want(CKR_BUFFER_TOO_SMALL);
            self.log_out("buffer_too_small");
        }
        let mut buf = vec![0u8; full as usize];
        let mut l = full;
        let rv = f(buf.as_mut_ptr(), &mut l);
        if rv == CKR_OK {
            buf.truncate(l as usize);
        } else {
            buf.clear();
        }
        let out = if deterministic && rv == CKR_OK {
            json!({ "len": ul(l), "data": hex(&buf) })
        } else {
            json!({ "len": ul(l) })
        };
        self.rec(function, &format!("{step}: full buffer"), rv, out);
        self.want(CKR_OK);
        buf
    }

    /// C_GetAttributeValue twice: lengths (NULL pValue), then values. `show` says which
    /// values are deterministic and are recorded; others are recorded by length. Returns the
    /// values (empty where unavailable).
    fn attributes(
        &mut self,
        step: &str,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        types: &[(CK_ATTRIBUTE_TYPE, bool)],
    ) -> Vec<Vec<u8>> {
        let mut tmpl: Vec<CK_ATTRIBUTE> = types
            .iter()
            .map(|&(t, _)| CK_ATTRIBUTE {
                type_: t,
                pValue: null_mut(),
                ulValueLen: 0,
            })
            .collect();
        let rv = raw!(
            self.f,
            C_GetAttributeValue(session, object, tmpl.as_mut_ptr(), tmpl.len() as CK_ULONG)
        );
        let lens: Vec<Value> = tmpl.iter().map(|a| ul(a.ulValueLen)).collect();
        self.rec(
            "C_GetAttributeValue",
            &format!("{step}: lengths"),
            rv,
            json!({ "lens": lens }),
        );
        let mut values: Vec<Vec<u8>> = tmpl
            .iter()
            .map(|a| {
                if a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen > 1 << 16 {
                    Vec::new()
                } else {
                    vec![0u8; a.ulValueLen as usize]
                }
            })
            .collect();
        for (a, v) in tmpl.iter_mut().zip(values.iter_mut()) {
            a.pValue = if v.is_empty() {
                null_mut()
            } else {
                v.as_mut_ptr() as *mut c_void
            };
            a.ulValueLen = v.len() as CK_ULONG;
        }
        let rv = raw!(
            self.f,
            C_GetAttributeValue(session, object, tmpl.as_mut_ptr(), tmpl.len() as CK_ULONG)
        );
        let shown: Vec<Value> = tmpl
            .iter()
            .zip(&values)
            .zip(types)
            .map(|((a, v), &(_, show))| {
                if show && a.ulValueLen != CK_UNAVAILABLE_INFORMATION {
                    json!(hex(&v[..(a.ulValueLen as usize).min(v.len())]))
                } else {
                    json!({ "len": ul(a.ulValueLen) })
                }
            })
            .collect();
        self.rec(
            "C_GetAttributeValue",
            &format!("{step}: values"),
            rv,
            json!({ "values": shown }),
        );
        for (a, v) in tmpl.iter().zip(values.iter_mut()) {
            if a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
                v.clear();
            } else {
                v.truncate(a.ulValueLen as usize);
            }
        }
        values
    }

    fn session_info(&mut self, step: &str, session: CK_SESSION_HANDLE) {
        // SAFETY: plain data; all-zero is valid.
        let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
        let rv = call!(self, step, C_GetSessionInfo(session, &mut info));
        if rv == CKR_OK {
            let slot = self.slot_name(info.slotID);
            self.out(json!({
                "slot": slot,
                "state": info.state,
                "flags": info.flags,
                "device_error": info.ulDeviceError,
            }));
        }
    }

    fn token_info(&mut self, step: &str, slot: CK_SLOT_ID) {
        // SAFETY: plain data; all-zero is valid.
        let mut t: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        let rv = call!(self, step, C_GetTokenInfo(slot, &mut t));
        if rv == CKR_OK {
            // serialNumber and utcTime differ between tokens and runs: left out.
            self.out(json!({
                "label": padded(&t.label),
                "manufacturer": padded(&t.manufacturerID),
                "model": padded(&t.model),
                "flags": t.flags,
                "sessions": [ul(t.ulMaxSessionCount), ul(t.ulSessionCount)],
                "rw_sessions": [ul(t.ulMaxRwSessionCount), ul(t.ulRwSessionCount)],
                "pin_len": [ul(t.ulMinPinLen), ul(t.ulMaxPinLen)],
                "public_memory": [ul(t.ulTotalPublicMemory), ul(t.ulFreePublicMemory)],
                "private_memory": [ul(t.ulTotalPrivateMemory), ul(t.ulFreePrivateMemory)],
                "hardware": version(t.hardwareVersion),
                "firmware": version(t.firmwareVersion),
            }));
        }
    }

    /// C_CreateObject; returns the handle (0 on failure).
    fn create(&mut self, step: &str, s: CK_SESSION_HANDLE, mut t: Template) -> CK_OBJECT_HANDLE {
        let mut h: CK_OBJECT_HANDLE = 0;
        let rv = call!(self, step, C_CreateObject(s, t.ptr(), t.len(), &mut h));
        self.out(json!({ "handle": h }));
        self.want(CKR_OK);
        if rv == CKR_OK {
            h
        } else {
            0
        }
    }

    /// Runs `f` on `data` in one call with an ample output buffer; records the output bytes
    /// when `deterministic`.
    fn one_shot(
        &mut self,
        function: &'static str,
        step: &str,
        deterministic: bool,
        room: usize,
        f: impl FnOnce(*mut u8, *mut CK_ULONG) -> CK_RV,
    ) -> (CK_RV, Vec<u8>) {
        let mut buf = vec![0u8; room];
        let mut len = room as CK_ULONG;
        let rv = f(buf.as_mut_ptr(), &mut len);
        if rv == CKR_OK {
            buf.truncate(len as usize);
        } else {
            buf.clear();
        }
        let out = if deterministic && rv == CKR_OK {
            json!({ "len": ul(len), "data": hex(&buf) })
        } else {
            json!({ "len": ul(len) })
        };
        self.rec(function, step, rv, out);
        (rv, buf)
    }
}

// Mutex callbacks for C_Initialize. The driver is single-threaded, so they need not lock.
static DUMMY_MUTEX: u8 = 0;
extern "C" fn create_mutex(m: *mut *mut c_void) -> CK_RV {
    if m.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: checked non-NULL; the caller passes a writable pointer.
    unsafe { *m = &DUMMY_MUTEX as *const u8 as *mut c_void };
    CKR_OK
}
extern "C" fn mutex_op(_m: *mut c_void) -> CK_RV {
    CKR_OK
}

fn init_args(create: bool, others: bool, flags: CK_FLAGS) -> CK_C_INITIALIZE_ARGS {
    CK_C_INITIALIZE_ARGS {
        CreateMutex: if create { Some(create_mutex) } else { None },
        DestroyMutex: if others { Some(mutex_op) } else { None },
        LockMutex: if others { Some(mutex_op) } else { None },
        UnlockMutex: if others { Some(mutex_op) } else { None },
        flags,
        pReserved: null_mut(),
    }
}

/// The driver: runs the script against `$P11AUDIT_TEST_MODULE` and prints the result line.
/// Without that variable (a normal `cargo test`) it does nothing.
#[test]
fn every_function_driver() {
    let Ok(module) = std::env::var(MODULE_ENV) else {
        return;
    };
    let get_function_list = raw::load_get_function_list(std::path::Path::new(&module));
    let mut list: *mut CK_FUNCTION_LIST = null_mut();
    // SAFETY: a writable out-pointer.
    let rv = unsafe { get_function_list(&mut list) };
    assert!(
        rv == CKR_OK && !list.is_null(),
        "C_GetFunctionList of {module}: {}",
        rv_text(rv)
    );
    let mut d = Driver {
        f: list,
        get_function_list,
        calls: Vec::new(),
        configured: false,
        slots: Vec::new(),
    };
    d.rec(
        "C_GetFunctionList",
        "dlsym'd, before C_Initialize",
        rv,
        Value::Null,
    );
    d.want(CKR_OK);
    // SAFETY: `list` was checked non-NULL above and points to the module's table.
    let table_version = unsafe { (*list).version };
    d.out(json!({ "version": version(table_version) }));
    script(&mut d);
    print_marked(MARKER, &Value::from(d.calls));
}

fn script(d: &mut Driver) {
    lifecycle_start(d);
    let slot = slots_and_mechanisms(d);
    let s = sessions_and_login(d, slot);
    objects(d, s);
    let keys = keys(d, s);
    encrypt_decrypt(d, s, &keys);
    digest(d, s, &keys);
    sign_verify(d, s, &keys);
    recover(d, s, &keys);
    dual_and_state(d, s, &keys);
    wrap_unwrap(d, s, &keys);
    derive(d, s, &keys);
    random_and_parallel(d, s);
    closing(d, slot, s);
    lifecycle_end(d);
}

fn lifecycle_start(d: &mut Driver) {
    // Before C_Initialize nothing is configured: the shim answers these itself, unlogged.
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    call!(d, "before C_Initialize", C_GetInfo(&mut info));
    d.want(CKR_CRYPTOKI_NOT_INITIALIZED);
    call!(d, "before C_Initialize", C_Finalize(null_mut()));
    d.want(CKR_CRYPTOKI_NOT_INITIALIZED);

    // Mutex callbacks must be all or none; pReserved must be NULL. p11audit does not check
    // that itself: any C_Initialize configures it, and the arguments go to the provider as
    // given (NSS's softokn, for one, takes its parameters in pReserved), so these are
    // SoftHSM's answers, and logged.
    d.configured = true;
    let mut a = init_args(true, false, 0);
    call!(
        d,
        "CreateMutex only",
        C_Initialize(&mut a as *mut _ as *mut c_void)
    );
    d.want(CKR_ARGUMENTS_BAD);
    let mut a = init_args(false, true, CKF_OS_LOCKING_OK);
    call!(
        d,
        "all callbacks but CreateMutex",
        C_Initialize(&mut a as *mut _ as *mut c_void)
    );
    d.want(CKR_ARGUMENTS_BAD);
    let mut a = init_args(false, false, CKF_OS_LOCKING_OK);
    a.pReserved = &mut info as *mut _ as *mut c_void;
    call!(
        d,
        "pReserved not NULL",
        C_Initialize(&mut a as *mut _ as *mut c_void)
    );
    d.want(CKR_ARGUMENTS_BAD);

    call!(d, "NULL arguments", C_Initialize(null_mut()));
    d.want(CKR_OK);
    call!(d, "second time", C_Initialize(null_mut()));
    d.want(CKR_CRYPTOKI_ALREADY_INITIALIZED);
    // Initialized, SoftHSM answers that before it looks at the arguments.
    let mut a = init_args(false, false, CKF_OS_LOCKING_OK);
    a.pReserved = &mut info as *mut _ as *mut c_void;
    call!(
        d,
        "pReserved not NULL, second time",
        C_Initialize(&mut a as *mut _ as *mut c_void)
    );
    d.want(CKR_CRYPTOKI_ALREADY_INITIALIZED);

    // C_GetFunctionList is logged once the shim is configured: call it again, both the
    // exported symbol and the table's own entry.
    let mut again: *mut CK_FUNCTION_LIST = null_mut();
    // SAFETY: a writable out-pointer.
    let rv = unsafe { (d.get_function_list)(&mut again) };
    d.rec(
        "C_GetFunctionList",
        "dlsym'd, after C_Initialize",
        rv,
        Value::Null,
    );
    d.want(CKR_OK);
    let mut again2: *mut CK_FUNCTION_LIST = null_mut();
    call!(d, "through the table", C_GetFunctionList(&mut again2));
    d.want(CKR_OK);
    d.out(json!({ "same_table": std::ptr::eq(again, d.f) && std::ptr::eq(again2, d.f) }));
    call!(d, "NULL", C_GetFunctionList(null_mut()));
    d.want(CKR_ARGUMENTS_BAD);

    let rv = call!(d, "after C_Initialize", C_GetInfo(&mut info));
    d.want(CKR_OK);
    if rv == CKR_OK {
        d.out(json!({
            "cryptoki": version(info.cryptokiVersion),
            "manufacturer": padded(&info.manufacturerID),
            "flags": info.flags,
            "description": padded(&info.libraryDescription),
            "library": version(info.libraryVersion),
        }));
    }
    call!(d, "NULL", C_GetInfo(null_mut()));
    d.want(CKR_ARGUMENTS_BAD);
}

/// Slot list, slot and token info, mechanisms; C_InitToken. Returns the token's slot.
fn slots_and_mechanisms(d: &mut Driver) -> CK_SLOT_ID {
    call!(
        d,
        "NULL count",
        C_GetSlotList(CK_TRUE, null_mut(), null_mut())
    );
    d.want(CKR_ARGUMENTS_BAD);
    let mut n: CK_ULONG = 0;
    call!(
        d,
        "length query",
        C_GetSlotList(CK_TRUE, null_mut(), &mut n)
    );
    d.want(CKR_OK);
    d.out(json!({ "count": n }));
    if n > 1 {
        let mut one: [CK_SLOT_ID; 1] = [0];
        let mut small: CK_ULONG = 1;
        call!(
            d,
            "room for 1",
            C_GetSlotList(CK_TRUE, one.as_mut_ptr(), &mut small)
        );
        d.want(CKR_BUFFER_TOO_SMALL);
        d.out(json!({ "count": small }));
    }
    let mut slots = vec![0 as CK_SLOT_ID; n as usize + 4];
    let mut m = slots.len() as CK_ULONG;
    let rv = call!(d, "all", C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut m));
    d.want(CKR_OK);
    if rv == CKR_OK {
        slots.truncate(m as usize);
    } else {
        slots.clear();
    }
    d.slots = slots.clone();
    let names: Vec<Value> = slots.iter().map(|&s| d.slot_name(s)).collect();
    d.out(json!({ "count": m, "slots": names }));
    let mut all_n: CK_ULONG = 0;
    call!(
        d,
        "tokenPresent false",
        C_GetSlotList(CK_FALSE, null_mut(), &mut all_n)
    );
    d.out(json!({ "count": all_n }));

    for (i, &slot) in slots.iter().enumerate() {
        let mut si: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
        let rv = call!(d, &format!("slot#{i}"), C_GetSlotInfo(slot, &mut si));
        if rv == CKR_OK {
            let desc = d.slot_text(&padded(&si.slotDescription));
            d.out(json!({
                "description": desc,
                "manufacturer": padded(&si.manufacturerID),
                "flags": si.flags,
                "hardware": version(si.hardwareVersion),
                "firmware": version(si.firmwareVersion),
            }));
        }
        d.token_info(&format!("slot#{i}"), slot);
    }
    let mut si: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
    call!(d, "bad slot", C_GetSlotInfo(BAD_SLOT, &mut si));
    d.want(CKR_SLOT_ID_INVALID);
    call!(
        d,
        "NULL",
        C_GetSlotInfo(slots.first().copied().unwrap_or(0), null_mut())
    );
    d.want(CKR_ARGUMENTS_BAD);
    d.token_info("bad slot", BAD_SLOT);
    d.want(CKR_SLOT_ID_INVALID);

    // The token made by new-token.sh is the first slot.
    let slot = slots.first().copied().unwrap_or(BAD_SLOT);

    call!(
        d,
        "NULL count",
        C_GetMechanismList(slot, null_mut(), null_mut())
    );
    d.want(CKR_ARGUMENTS_BAD);
    let mut n: CK_ULONG = 0;
    call!(
        d,
        "length query",
        C_GetMechanismList(slot, null_mut(), &mut n)
    );
    d.want(CKR_OK);
    d.out(json!({ "count": n }));
    let mut one: [CK_MECHANISM_TYPE; 1] = [0];
    let mut small: CK_ULONG = 1;
    call!(
        d,
        "room for 1",
        C_GetMechanismList(slot, one.as_mut_ptr(), &mut small)
    );
    d.want(CKR_BUFFER_TOO_SMALL);
    d.out(json!({ "count": small }));
    let mut mechs = vec![0 as CK_MECHANISM_TYPE; n as usize];
    let mut m = n;
    let rv = call!(
        d,
        "all",
        C_GetMechanismList(slot, mechs.as_mut_ptr(), &mut m)
    );
    d.want(CKR_OK);
    if rv == CKR_OK {
        mechs.truncate(m as usize);
    } else {
        mechs.clear();
    }
    d.out(json!({ "mechanisms": mechs }));
    call!(
        d,
        "bad slot",
        C_GetMechanismList(BAD_SLOT, null_mut(), &mut n)
    );
    d.want(CKR_SLOT_ID_INVALID);
    for &t in &mechs {
        let mut mi: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
        let rv = call!(d, &format!("{t:#x}"), C_GetMechanismInfo(slot, t, &mut mi));
        if rv == CKR_OK {
            d.out(json!([mi.ulMinKeySize, mi.ulMaxKeySize, mi.flags]));
        }
    }
    let mut mi: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
    call!(
        d,
        "vendor mechanism",
        C_GetMechanismInfo(slot, CKM_VENDOR_DEFINED | 0x1234, &mut mi)
    );
    d.want(CKR_MECHANISM_INVALID);
    call!(d, "NULL", C_GetMechanismInfo(slot, CKM_SHA256, null_mut()));
    d.want(CKR_ARGUMENTS_BAD);
    call!(
        d,
        "bad slot",
        C_GetMechanismInfo(BAD_SLOT, CKM_SHA256, &mut mi)
    );
    d.want(CKR_SLOT_ID_INVALID);

    // Re-initialise the token (no session is open): its user PIN is then set again below.
    let mut label = [b' '; 32];
    label[..TOKEN_LABEL.len()].copy_from_slice(TOKEN_LABEL.as_bytes());
    init_token(d, "wrong SO PIN", slot, WRONG_PIN, label.as_mut_ptr());
    d.want(CKR_PIN_INCORRECT);
    init_token(d, "bad slot", BAD_SLOT, SO_PIN, label.as_mut_ptr());
    d.want(CKR_SLOT_ID_INVALID);
    init_token(d, "NULL label", slot, SO_PIN, null_mut());
    d.want(CKR_ARGUMENTS_BAD);
    init_token(d, "re-initialise", slot, SO_PIN, label.as_mut_ptr());
    d.want(CKR_OK);
    d.token_info("after C_InitToken", slot);
    slot
}

fn open(d: &mut Driver, step: &str, slot: CK_SLOT_ID, flags: CK_FLAGS) -> CK_SESSION_HANDLE {
    let mut s: CK_SESSION_HANDLE = 0;
    let rv = call!(
        d,
        step,
        C_OpenSession(slot, flags, null_mut(), None, &mut s)
    );
    d.out(json!({ "session": s }));
    if rv == CKR_OK {
        s
    } else {
        0
    }
}

fn login(d: &mut Driver, step: &str, s: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &str) -> CK_RV {
    let p = pin.as_bytes();
    call!(
        d,
        step,
        C_Login(s, user, p.as_ptr() as *mut _, p.len() as CK_ULONG)
    )
}

fn set_pin(d: &mut Driver, step: &str, s: CK_SESSION_HANDLE, old: &str, new: &str) -> CK_RV {
    let (o, n) = (old.as_bytes(), new.as_bytes());
    call!(
        d,
        step,
        C_SetPIN(
            s,
            o.as_ptr() as *mut _,
            o.len() as CK_ULONG,
            n.as_ptr() as *mut _,
            n.len() as CK_ULONG
        )
    )
}

fn init_token(d: &mut Driver, step: &str, slot: CK_SLOT_ID, so_pin: &str, label: *mut u8) -> CK_RV {
    let p = so_pin.as_bytes();
    call!(
        d,
        step,
        C_InitToken(slot, p.as_ptr() as *mut _, p.len() as CK_ULONG, label)
    )
}

fn init_pin(d: &mut Driver, step: &str, s: CK_SESSION_HANDLE, pin: &str) -> CK_RV {
    let p = pin.as_bytes();
    call!(
        d,
        step,
        C_InitPIN(s, p.as_ptr() as *mut _, p.len() as CK_ULONG)
    )
}

/// C_Verify of `sig` over `data` (the operation was started before).
fn verify(d: &mut Driver, step: &str, s: CK_SESSION_HANDLE, data: &[u8], sig: &[u8]) -> CK_RV {
    call!(
        d,
        step,
        C_Verify(
            s,
            data.as_ptr() as *mut _,
            data.len() as CK_ULONG,
            sig.as_ptr() as *mut _,
            sig.len() as CK_ULONG
        )
    )
}

/// Opens the read-write session the rest of the script uses, logged in as the user.
fn sessions_and_login(d: &mut Driver, slot: CK_SLOT_ID) -> CK_SESSION_HANDLE {
    open(d, "no CKF_SERIAL_SESSION", slot, 0);
    d.want(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    open(d, "bad slot", BAD_SLOT, CKF_SERIAL_SESSION);
    d.want(CKR_SLOT_ID_INVALID);
    call!(
        d,
        "NULL handle",
        C_OpenSession(slot, CKF_SERIAL_SESSION, null_mut(), None, null_mut())
    );
    d.want(CKR_ARGUMENTS_BAD);
    let ro = open(d, "read-only", slot, CKF_SERIAL_SESSION);
    d.want(CKR_OK);
    d.session_info("read-only", ro);
    login(d, "SO with a read-only session open", ro, CKU_SO, SO_PIN);
    d.want(CKR_SESSION_READ_ONLY_EXISTS);
    let mut label = [b' '; 32];
    init_token(d, "with a session open", slot, SO_PIN, label.as_mut_ptr());
    d.want(CKR_SESSION_EXISTS);
    call!(d, "read-only", C_CloseSession(ro));
    d.want(CKR_OK);

    let s = open(d, "read-write", slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    d.want(CKR_OK);
    d.session_info("read-write, public", s);
    d.session_info("bad session", BAD_SESSION);
    d.want(CKR_SESSION_HANDLE_INVALID);
    call!(d, "NULL", C_GetSessionInfo(s, null_mut()));
    d.want(CKR_ARGUMENTS_BAD);

    login(d, "SO, wrong PIN", s, CKU_SO, WRONG_PIN);
    d.want(CKR_PIN_INCORRECT);
    call!(d, "NULL PIN", C_Login(s, CKU_SO, null_mut(), 8));
    d.want(CKR_ARGUMENTS_BAD);
    login(d, "bad session", BAD_SESSION, CKU_SO, SO_PIN);
    d.want(CKR_SESSION_HANDLE_INVALID);
    login(d, "SO", s, CKU_SO, SO_PIN);
    d.want(CKR_OK);
    d.session_info("SO", s);
    call!(d, "NULL PIN", C_InitPIN(s, null_mut(), 8));
    d.want(CKR_ARGUMENTS_BAD);
    init_pin(d, "bad session", BAD_SESSION, USER_PIN);
    d.want(CKR_SESSION_HANDLE_INVALID);
    init_pin(d, "user PIN", s, USER_PIN);
    d.want(CKR_OK);
    d.token_info("after C_InitPIN", slot);
    call!(d, "SO", C_Logout(s));
    d.want(CKR_OK);
    // PKCS#11 says CKR_USER_NOT_LOGGED_IN; SoftHSM 2.6.1 answers CKR_OK. Either is forwarded.
    call!(d, "not logged in", C_Logout(s));
    call!(d, "bad session", C_Logout(BAD_SESSION));
    d.want(CKR_SESSION_HANDLE_INVALID);

    // InitPIN needs the SO.
    init_pin(d, "as public", s, USER_PIN);
    d.want(CKR_USER_NOT_LOGGED_IN);
    login(d, "user, wrong PIN", s, CKU_USER, WRONG_PIN);
    d.want(CKR_PIN_INCORRECT);
    login(d, "bad user type", s, 0x7777, USER_PIN);
    login(d, "user", s, CKU_USER, USER_PIN);
    d.want(CKR_OK);
    login(d, "user again", s, CKU_USER, USER_PIN);
    d.want(CKR_USER_ALREADY_LOGGED_IN);
    d.session_info("user", s);

    set_pin(d, "wrong old PIN", s, WRONG_PIN, NEW_USER_PIN);
    d.want(CKR_PIN_INCORRECT);
    set_pin(d, "bad session", BAD_SESSION, USER_PIN, NEW_USER_PIN);
    d.want(CKR_SESSION_HANDLE_INVALID);
    let pin = USER_PIN.as_bytes();
    call!(
        d,
        "NULL new PIN",
        C_SetPIN(
            s,
            pin.as_ptr() as *mut _,
            pin.len() as CK_ULONG,
            null_mut(),
            8
        )
    );
    d.want(CKR_ARGUMENTS_BAD);
    set_pin(d, "change", s, USER_PIN, NEW_USER_PIN);
    d.want(CKR_OK);
    set_pin(d, "change back", s, NEW_USER_PIN, USER_PIN);
    d.want(CKR_OK);
    d.token_info("after C_SetPIN", slot);
    s
}

fn objects(d: &mut Driver, s: CK_SESSION_HANDLE) {
    let data = d.create(
        "session data object",
        s,
        Template::new()
            .ulong(CKA_CLASS, CKO_DATA)
            .bool(CKA_TOKEN, false)
            .text(CKA_LABEL, "data-1")
            .text(CKA_APPLICATION, "every-function")
            .bytes(CKA_VALUE, b"hello, token"),
    );
    let token_data = d.create(
        "private token data object",
        s,
        Template::new()
            .ulong(CKA_CLASS, CKO_DATA)
            .bool(CKA_TOKEN, true)
            .bool(CKA_PRIVATE, true)
            .text(CKA_LABEL, "data-token")
            .bytes(CKA_VALUE, b"kept on the token"),
    );

    let mut bad = Template::new()
        .text(CKA_LABEL, "no class")
        .bytes(CKA_VALUE, b"x");
    let mut h: CK_OBJECT_HANDLE = 0;
    call!(
        d,
        "no CKA_CLASS",
        C_CreateObject(s, bad.ptr(), bad.len(), &mut h)
    );
    let mut bad = Template::new()
        .ulong(CKA_CLASS, CKO_DATA)
        .bytes(CKA_VENDOR_DEFINED | 0x4321, b"x");
    call!(
        d,
        "unknown attribute",
        C_CreateObject(s, bad.ptr(), bad.len(), &mut h)
    );
    d.want(CKR_ATTRIBUTE_TYPE_INVALID);
    call!(d, "NULL template", C_CreateObject(s, null_mut(), 2, &mut h));
    d.want(CKR_ARGUMENTS_BAD);
    let mut t = Template::new().ulong(CKA_CLASS, CKO_DATA);
    call!(
        d,
        "bad session",
        C_CreateObject(BAD_SESSION, t.ptr(), t.len(), &mut h)
    );
    d.want(CKR_SESSION_HANDLE_INVALID);

    let mut t = Template::new().text(CKA_LABEL, "data-copy");
    let mut copy: CK_OBJECT_HANDLE = 0;
    call!(
        d,
        "data object",
        C_CopyObject(s, data, t.ptr(), t.len(), &mut copy)
    );
    d.want(CKR_OK);
    d.out(json!({ "handle": copy }));
    let mut h2: CK_OBJECT_HANDLE = 0;
    call!(
        d,
        "bad object",
        C_CopyObject(s, BAD_OBJECT, t.ptr(), t.len(), &mut h2)
    );
    d.want(CKR_OBJECT_HANDLE_INVALID);
    let mut t2 = Template::new().ulong(CKA_CLASS, CKO_SECRET_KEY);
    call!(
        d,
        "change the class",
        C_CopyObject(s, data, t2.ptr(), t2.len(), &mut h2)
    );

    d.attributes(
        "copy",
        s,
        copy,
        &[
            (CKA_CLASS, true),
            (CKA_TOKEN, true),
            (CKA_PRIVATE, true),
            (CKA_LABEL, true),
            (CKA_APPLICATION, true),
            (CKA_VALUE, true),
        ],
    );
    d.attributes(
        "token object",
        s,
        token_data,
        &[(CKA_TOKEN, true), (CKA_VALUE, true)],
    );

    // CKR_BUFFER_TOO_SMALL: the attribute's length becomes CK_UNAVAILABLE_INFORMATION.
    let mut two = [0u8; 2];
    let mut tmpl = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: two.as_mut_ptr() as *mut c_void,
        ulValueLen: 2,
    }];
    call!(
        d,
        "2-byte label buffer",
        C_GetAttributeValue(s, copy, tmpl.as_mut_ptr(), 1)
    );
    d.want(CKR_BUFFER_TOO_SMALL);
    d.out(json!({ "len": ul(tmpl[0].ulValueLen) }));
    let mut tmpl = [
        CK_ATTRIBUTE {
            type_: CKA_MODULUS,
            pValue: null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: null_mut(),
            ulValueLen: 0,
        },
    ];
    call!(
        d,
        "CKA_MODULUS of a data object",
        C_GetAttributeValue(s, copy, tmpl.as_mut_ptr(), 2)
    );
    d.want(CKR_ATTRIBUTE_TYPE_INVALID);
    d.out(json!({ "lens": [ul(tmpl[0].ulValueLen), ul(tmpl[1].ulValueLen)] }));
    call!(
        d,
        "bad object",
        C_GetAttributeValue(s, BAD_OBJECT, tmpl.as_mut_ptr(), 2)
    );
    d.want(CKR_OBJECT_HANDLE_INVALID);
    call!(
        d,
        "bad session",
        C_GetAttributeValue(BAD_SESSION, copy, tmpl.as_mut_ptr(), 2)
    );
    d.want(CKR_SESSION_HANDLE_INVALID);
    call!(
        d,
        "NULL template",
        C_GetAttributeValue(s, copy, null_mut(), 2)
    );
    d.want(CKR_ARGUMENTS_BAD);

    let mut t = Template::new().text(CKA_LABEL, "data-renamed");
    call!(d, "label", C_SetAttributeValue(s, copy, t.ptr(), t.len()));
    d.want(CKR_OK);
    d.attributes("renamed copy", s, copy, &[(CKA_LABEL, true)]);
    let mut t = Template::new().ulong(CKA_CLASS, CKO_SECRET_KEY);
    call!(
        d,
        "CKA_CLASS",
        C_SetAttributeValue(s, copy, t.ptr(), t.len())
    );
    call!(
        d,
        "bad object",
        C_SetAttributeValue(s, BAD_OBJECT, t.ptr(), t.len())
    );
    d.want(CKR_OBJECT_HANDLE_INVALID);
    call!(
        d,
        "NULL template",
        C_SetAttributeValue(s, copy, null_mut(), 1)
    );
    d.want(CKR_ARGUMENTS_BAD);

    let mut size: CK_ULONG = 0;
    call!(d, "copy", C_GetObjectSize(s, copy, &mut size));
    d.want(CKR_OK);
    d.out(json!({ "size": ul(size) }));
    call!(d, "bad object", C_GetObjectSize(s, BAD_OBJECT, &mut size));
    d.want(CKR_OBJECT_HANDLE_INVALID);
    call!(d, "NULL size", C_GetObjectSize(s, copy, null_mut()));
    d.want(CKR_ARGUMENTS_BAD);

    // Find: the order in which SoftHSM returns objects is not specified, so the handles found
    // are compared as a set, and each call's count.
    let mut found_obj = [0 as CK_OBJECT_HANDLE; 8];
    let mut count: CK_ULONG = 0;
    call!(
        d,
        "not initialised",
        C_FindObjects(s, found_obj.as_mut_ptr(), 8, &mut count)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    call!(d, "not initialised", C_FindObjectsFinal(s));
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    let mut t = Template::new().ulong(CKA_CLASS, CKO_DATA);
    call!(d, "CKO_DATA", C_FindObjectsInit(s, t.ptr(), t.len()));
    d.want(CKR_OK);
    call!(d, "twice", C_FindObjectsInit(s, t.ptr(), t.len()));
    d.want(CKR_OPERATION_ACTIVE);
    let mut all = BTreeSet::new();
    for (step, max) in [("1 at most", 1), ("the rest", 8), ("none left", 8)] {
        let mut got: CK_ULONG = 0;
        let rv = call!(
            d,
            step,
            C_FindObjects(s, found_obj.as_mut_ptr(), max, &mut got)
        );
        d.want(CKR_OK);
        d.out(json!({ "count": got }));
        if rv == CKR_OK {
            all.extend(found_obj[..got.min(8) as usize].iter().copied());
        }
    }
    call!(
        d,
        "NULL count",
        C_FindObjects(s, found_obj.as_mut_ptr(), 8, null_mut())
    );
    d.want(CKR_ARGUMENTS_BAD);
    call!(d, "CKO_DATA", C_FindObjectsFinal(s));
    d.want(CKR_OK);
    d.out(json!({ "found": all }));
    call!(d, "empty template", C_FindObjectsInit(s, null_mut(), 0));
    d.want(CKR_OK);
    let mut got: CK_ULONG = 0;
    call!(
        d,
        "everything",
        C_FindObjects(s, found_obj.as_mut_ptr(), 8, &mut got)
    );
    d.want(CKR_OK);
    let mut everything: Vec<_> = found_obj[..got.min(8) as usize].to_vec();
    everything.sort();
    d.out(json!({ "found": everything }));
    call!(d, "empty template", C_FindObjectsFinal(s));
    d.want(CKR_OK);
    call!(
        d,
        "bad session",
        C_FindObjectsInit(BAD_SESSION, t.ptr(), t.len())
    );
    d.want(CKR_SESSION_HANDLE_INVALID);
    call!(
        d,
        "bad session",
        C_FindObjects(BAD_SESSION, found_obj.as_mut_ptr(), 8, &mut got)
    );
    d.want(CKR_SESSION_HANDLE_INVALID);
    call!(d, "bad session", C_FindObjectsFinal(BAD_SESSION));
    d.want(CKR_SESSION_HANDLE_INVALID);

    call!(d, "copy", C_DestroyObject(s, copy));
    d.want(CKR_OK);
    call!(d, "copy again", C_DestroyObject(s, copy));
    d.want(CKR_OBJECT_HANDLE_INVALID);
    call!(d, "token object", C_DestroyObject(s, token_data));
    d.want(CKR_OK);
    call!(d, "bad session", C_DestroyObject(BAD_SESSION, data));
    d.want(CKR_SESSION_HANDLE_INVALID);
}

struct Keys {
    /// AES-256 with a fixed value: encrypt, decrypt, wrap, unwrap, derive.
    aes: CK_OBJECT_HANDLE,
    /// Generic secret with a fixed value: HMAC sign/verify, extractable.
    hmac: CK_OBJECT_HANDLE,
    rsa_pub: CK_OBJECT_HANDLE,
    rsa_priv: CK_OBJECT_HANDLE,
    ec: [(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE); 2],
}

fn keys(d: &mut Driver, s: CK_SESSION_HANDLE) -> Keys {
    let aes = d.create(
        "AES key with a fixed value",
        s,
        Template::new()
            .ulong(CKA_CLASS, CKO_SECRET_KEY)
            .ulong(CKA_KEY_TYPE, CKK_AES)
            .bool(CKA_TOKEN, false)
            .bool(CKA_SENSITIVE, false)
            .bool(CKA_EXTRACTABLE, true)
            .bool(CKA_ENCRYPT, true)
            .bool(CKA_DECRYPT, true)
            .bool(CKA_WRAP, true)
            .bool(CKA_UNWRAP, true)
            .bool(CKA_DERIVE, true)
            .text(CKA_LABEL, "aes-fixed")
            .bytes(CKA_VALUE, &AES_KEY),
    );
    let hmac = d.create(
        "HMAC key with a fixed value",
        s,
        Template::new()
            .ulong(CKA_CLASS, CKO_SECRET_KEY)
            .ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET)
            .bool(CKA_TOKEN, false)
            .bool(CKA_SENSITIVE, false)
            .bool(CKA_EXTRACTABLE, true)
            .bool(CKA_SIGN, true)
            .bool(CKA_VERIFY, true)
            .text(CKA_LABEL, "hmac-fixed")
            .bytes(CKA_VALUE, &HMAC_KEY),
    );

    let mut gen = mech(CKM_AES_KEY_GEN);
    let mut t = Template::new()
        .ulong(CKA_VALUE_LEN, 32)
        .bool(CKA_TOKEN, false)
        .bool(CKA_ENCRYPT, true)
        .bool(CKA_DECRYPT, true)
        .text(CKA_LABEL, "aes-generated");
    let mut generated: CK_OBJECT_HANDLE = 0;
    call!(
        d,
        "AES-256",
        C_GenerateKey(s, &mut gen, t.ptr(), t.len(), &mut generated)
    );
    d.want(CKR_OK);
    d.out(json!({ "handle": generated }));
    d.attributes(
        "generated AES key",
        s,
        generated,
        &[
            (CKA_KEY_TYPE, true),
            (CKA_VALUE_LEN, true),
            (CKA_LOCAL, true),
            (CKA_KEY_GEN_MECHANISM, true),
            (CKA_VALUE, false),
        ],
    );
    let mut bad = mech(CKM_RSA_PKCS);
    call!(
        d,
        "key-pair mechanism",
        C_GenerateKey(s, &mut bad, t.ptr(), t.len(), &mut generated)
    );
    d.want(CKR_MECHANISM_INVALID);
    call!(
        d,
        "NULL mechanism",
        C_GenerateKey(s, null_mut(), t.ptr(), t.len(), &mut generated)
    );
    d.want(CKR_ARGUMENTS_BAD);
    call!(
        d,
        "bad session",
        C_GenerateKey(BAD_SESSION, &mut gen, t.ptr(), t.len(), &mut generated)
    );
    d.want(CKR_SESSION_HANDLE_INVALID);
    call!(d, "generated AES key", C_DestroyObject(s, generated));
    d.want(CKR_OK);

    let mut gen = mech(CKM_RSA_PKCS_KEY_PAIR_GEN);
    let mut public = Template::new()
        .bool(CKA_TOKEN, false)
        .ulong(CKA_MODULUS_BITS, 2048)
        .bytes(CKA_PUBLIC_EXPONENT, &[1, 0, 1])
        .bool(CKA_VERIFY, true)
        .bool(CKA_VERIFY_RECOVER, true)
        .bool(CKA_ENCRYPT, true)
        .bool(CKA_WRAP, true)
        .text(CKA_LABEL, "rsa");
    let mut private = Template::new()
        .bool(CKA_TOKEN, false)
        .bool(CKA_PRIVATE, true)
        .bool(CKA_SENSITIVE, true)
        .bool(CKA_EXTRACTABLE, true)
        .bool(CKA_SIGN, true)
        .bool(CKA_SIGN_RECOVER, true)
        .bool(CKA_DECRYPT, true)
        .bool(CKA_UNWRAP, true)
        .text(CKA_LABEL, "rsa");
    let (mut rsa_pub, mut rsa_priv) = (0, 0);
    call!(
        d,
        "RSA 2048",
        C_GenerateKeyPair(
            s,
            &mut gen,
            public.ptr(),
            public.len(),
            private.ptr(),
            private.len(),
            &mut rsa_pub,
            &mut rsa_priv
        )
    );
    d.want(CKR_OK);
    d.out(json!({ "public": rsa_pub, "private": rsa_priv }));
    d.attributes(
        "RSA public key",
        s,
        rsa_pub,
        &[
            (CKA_CLASS, true),
            (CKA_KEY_TYPE, true),
            (CKA_MODULUS_BITS, true),
            (CKA_PUBLIC_EXPONENT, true),
            (CKA_MODULUS, false),
        ],
    );
    d.attributes(
        "RSA private key",
        s,
        rsa_priv,
        &[(CKA_SENSITIVE, true), (CKA_PRIVATE_EXPONENT, false)],
    );
    call!(
        d,
        "NULL private handle",
        C_GenerateKeyPair(
            s,
            &mut gen,
            public.ptr(),
            public.len(),
            private.ptr(),
            private.len(),
            &mut rsa_pub.clone(),
            null_mut()
        )
    );
    d.want(CKR_ARGUMENTS_BAD);

    let mut ec = [(0, 0); 2];
    for (i, pair) in ec.iter_mut().enumerate() {
        let mut gen = mech(CKM_EC_KEY_PAIR_GEN);
        let mut public = Template::new()
            .bool(CKA_TOKEN, false)
            .bytes(CKA_EC_PARAMS, &P256_OID)
            .bool(CKA_VERIFY, true)
            .text(CKA_LABEL, &format!("ec-{i}"));
        let mut private = Template::new()
            .bool(CKA_TOKEN, false)
            .bool(CKA_PRIVATE, true)
            .bool(CKA_SENSITIVE, true)
            .bool(CKA_SIGN, true)
            .bool(CKA_DERIVE, true)
            .text(CKA_LABEL, &format!("ec-{i}"));
        call!(
            d,
            &format!("EC P-256 #{i}"),
            C_GenerateKeyPair(
                s,
                &mut gen,
                public.ptr(),
                public.len(),
                private.ptr(),
                private.len(),
                &mut pair.0,
                &mut pair.1
            )
        );
        d.want(CKR_OK);
        d.out(json!({ "public": pair.0, "private": pair.1 }));
    }
    Keys {
        aes,
        hmac,
        rsa_pub,
        rsa_priv,
        ec,
    }
}

fn encrypt_decrypt(d: &mut Driver, s: CK_SESSION_HANDLE, k: &Keys) {
    let fl = d.f;
    let plain: Vec<u8> = (0u8..32).map(|b| b.wrapping_mul(7)).collect();
    let mut iv = IV;

    let mut cbc = mech_bytes(CKM_AES_CBC, &mut iv);
    let mut out = [0u8; 64];
    let mut len: CK_ULONG = 64;
    call!(
        d,
        "not initialised",
        C_Encrypt(s, plain.as_ptr() as *mut _, 32, out.as_mut_ptr(), &mut len)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    call!(d, "HMAC key", C_EncryptInit(s, &mut cbc, k.hmac));
    // SoftHSM answers CKR_OBJECT_HANDLE_INVALID rather than CKR_KEY_HANDLE_INVALID.
    call!(d, "bad key", C_EncryptInit(s, &mut cbc, BAD_OBJECT));
    call!(d, "NULL mechanism", C_EncryptInit(s, null_mut(), k.aes));
    d.want(CKR_ARGUMENTS_BAD);
    call!(d, "AES-CBC", C_EncryptInit(s, &mut cbc, k.aes));
    d.want(CKR_OK);
    call!(d, "twice", C_EncryptInit(s, &mut cbc, k.aes));
    d.want(CKR_OPERATION_ACTIVE);
    let p = plain.clone();
    let cipher = d.three_step("C_Encrypt", "AES-CBC", true, |o, l| {
        raw!(
            fl,
            C_Encrypt(s, p.as_ptr() as *mut _, p.len() as CK_ULONG, o, l)
        )
    });
    len = 64;
    call!(
        d,
        "after the operation ended",
        C_Encrypt(s, plain.as_ptr() as *mut _, 32, out.as_mut_ptr(), &mut len)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);

    // Multi-part with padding: 16 + 21 bytes in, 48 out.
    let long: Vec<u8> = (0u8..37).collect();
    let mut iv2 = IV;
    let mut pad = mech_bytes(CKM_AES_CBC_PAD, &mut iv2);
    call!(d, "AES-CBC-PAD", C_EncryptInit(s, &mut pad, k.aes));
    d.want(CKR_OK);
    let mut multi = Vec::new();
    for (i, part) in [&long[..16], &long[16..]].into_iter().enumerate() {
        let (rv, bytes) = d.one_shot("C_EncryptUpdate", &format!("part {i}"), true, 64, |o, l| {
            raw!(
                fl,
                C_EncryptUpdate(s, part.as_ptr() as *mut _, part.len() as CK_ULONG, o, l)
            )
        });
        d.want(CKR_OK);
        if rv == CKR_OK {
            multi.extend(bytes);
        }
    }
    let mut l: CK_ULONG = 0;
    call!(d, "length query", C_EncryptFinal(s, null_mut(), &mut l));
    d.want(CKR_OK);
    d.log_out("length_query");
    d.out(json!({ "len": ul(l) }));
    let (_, last) = d.one_shot("C_EncryptFinal", "AES-CBC-PAD", true, 64, |o, l| {
        raw!(fl, C_EncryptFinal(s, o, l))
    });
    multi.extend(last);
    let mut l: CK_ULONG = 64;
    call!(
        d,
        "bad session",
        C_EncryptUpdate(BAD_SESSION, out.as_mut_ptr(), 16, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_SESSION_HANDLE_INVALID);
    call!(
        d,
        "not initialised",
        C_EncryptFinal(s, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);

    // Decrypt both back.
    let mut iv = IV;
    let mut cbc = mech_bytes(CKM_AES_CBC, &mut iv);
    call!(d, "AES-CBC", C_DecryptInit(s, &mut cbc, k.aes));
    d.want(CKR_OK);
    let c = cipher.clone();
    let back = d.three_step("C_Decrypt", "AES-CBC", true, |o, l| {
        raw!(
            fl,
            C_Decrypt(s, c.as_ptr() as *mut _, c.len() as CK_ULONG, o, l)
        )
    });
    d.out(json!({ "len": back.len(), "data": hex(&back), "round_trip": back == plain }));
    call!(d, "AES-CBC", C_DecryptInit(s, &mut cbc, k.aes));
    d.want(CKR_OK);
    let mut l: CK_ULONG = 64;
    call!(
        d,
        "15 bytes of AES-CBC",
        C_Decrypt(s, cipher.as_ptr() as *mut _, 15, out.as_mut_ptr(), &mut l)
    );
    call!(d, "NULL mechanism", C_DecryptInit(s, null_mut(), k.aes));
    d.want(CKR_ARGUMENTS_BAD);
    // SoftHSM answers CKR_OBJECT_HANDLE_INVALID rather than CKR_KEY_HANDLE_INVALID.
    call!(d, "bad key", C_DecryptInit(s, &mut cbc, BAD_OBJECT));

    let mut iv2 = IV;
    let mut pad = mech_bytes(CKM_AES_CBC_PAD, &mut iv2);
    call!(d, "AES-CBC-PAD", C_DecryptInit(s, &mut pad, k.aes));
    d.want(CKR_OK);
    let mut again = Vec::new();
    let split = multi.len().min(20);
    for (i, part) in [&multi[..split], &multi[split..]].into_iter().enumerate() {
        let (rv, bytes) = d.one_shot("C_DecryptUpdate", &format!("part {i}"), true, 96, |o, l| {
            raw!(
                fl,
                C_DecryptUpdate(s, part.as_ptr() as *mut _, part.len() as CK_ULONG, o, l)
            )
        });
        d.want(CKR_OK);
        if rv == CKR_OK {
            again.extend(bytes);
        }
    }
    let mut l: CK_ULONG = 0;
    call!(d, "length query", C_DecryptFinal(s, null_mut(), &mut l));
    d.want(CKR_OK);
    d.log_out("length_query");
    d.out(json!({ "len": ul(l) }));
    let (_, last) = d.one_shot("C_DecryptFinal", "AES-CBC-PAD", true, 64, |o, l| {
        raw!(fl, C_DecryptFinal(s, o, l))
    });
    again.extend(last);
    d.out(json!({ "data": hex(&again), "round_trip": again == long }));
    call!(
        d,
        "not initialised",
        C_DecryptUpdate(s, out.as_mut_ptr(), 16, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    call!(
        d,
        "not initialised",
        C_DecryptFinal(s, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);
}

fn digest(d: &mut Driver, s: CK_SESSION_HANDLE, k: &Keys) {
    use sha2::Digest as _;
    let fl = d.f;
    let data = b"every PKCS#11 function".to_vec();
    let mut sha = mech(CKM_SHA256);
    let mut out = [0u8; 64];
    let mut l: CK_ULONG = 64;
    call!(
        d,
        "not initialised",
        C_Digest(s, data.as_ptr() as *mut _, 8, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    call!(d, "NULL mechanism", C_DigestInit(s, null_mut()));
    d.want(CKR_ARGUMENTS_BAD);
    let mut bad = mech(CKM_AES_CBC);
    call!(d, "AES-CBC", C_DigestInit(s, &mut bad));
    d.want(CKR_MECHANISM_INVALID);
    call!(d, "SHA-256", C_DigestInit(s, &mut sha));
    d.want(CKR_OK);
    let p = data.clone();
    let single = d.three_step("C_Digest", "SHA-256", true, |o, l| {
        raw!(
            fl,
            C_Digest(s, p.as_ptr() as *mut _, p.len() as CK_ULONG, o, l)
        )
    });
    let expected = sha2::Sha256::digest(&data).to_vec();
    d.out(json!({ "data": hex(&single), "is_sha256": single == expected }));

    call!(d, "SHA-256", C_DigestInit(s, &mut sha));
    d.want(CKR_OK);
    call!(
        d,
        "first half",
        C_DigestUpdate(s, data.as_ptr() as *mut _, 10)
    );
    d.want(CKR_OK);
    call!(
        d,
        "second half",
        C_DigestUpdate(
            s,
            data[10..].as_ptr() as *mut _,
            (data.len() - 10) as CK_ULONG
        )
    );
    d.want(CKR_OK);
    call!(d, "AES key", C_DigestKey(s, k.aes));
    d.want(CKR_OK);
    let mut l: CK_ULONG = 64;
    call!(
        d,
        "SHA-256 of data and key",
        C_DigestFinal(s, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_OK);
    call!(
        d,
        "NULL data, no operation",
        C_DigestUpdate(s, null_mut(), 4)
    );
    call!(d, "SHA-256", C_DigestInit(s, &mut sha));
    d.want(CKR_OK);
    call!(
        d,
        "data",
        C_DigestUpdate(s, data.as_ptr() as *mut _, data.len() as CK_ULONG)
    );
    d.want(CKR_OK);
    call!(d, "AES key", C_DigestKey(s, k.aes));
    d.want(CKR_OK);
    let multi = d.three_step("C_DigestFinal", "SHA-256 of data and key", true, |o, l| {
        raw!(fl, C_DigestFinal(s, o, l))
    });
    let mut with_key = data.clone();
    with_key.extend_from_slice(&AES_KEY);
    let expected = sha2::Sha256::digest(&with_key).to_vec();
    d.out(json!({ "data": hex(&multi), "is_sha256_of_data_and_key": multi == expected }));
    call!(
        d,
        "not initialised",
        C_DigestUpdate(s, data.as_ptr() as *mut _, 4)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    call!(d, "not initialised", C_DigestKey(s, k.aes));
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    call!(
        d,
        "not initialised",
        C_DigestFinal(s, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    call!(d, "SHA-256", C_DigestInit(s, &mut sha));
    d.want(CKR_OK);
    call!(d, "bad key", C_DigestKey(s, BAD_OBJECT));
    d.want(CKR_KEY_HANDLE_INVALID);
    // A failed C_DigestKey ends the operation; end it anyway if the module kept it.
    let mut l: CK_ULONG = 64;
    call!(
        d,
        "after a failed C_DigestKey",
        C_DigestFinal(s, out.as_mut_ptr(), &mut l)
    );
    call!(d, "bad session", C_DigestInit(BAD_SESSION, &mut sha));
    d.want(CKR_SESSION_HANDLE_INVALID);
}

fn sign_verify(d: &mut Driver, s: CK_SESSION_HANDLE, k: &Keys) {
    let fl = d.f;
    let data = b"signed by every function".to_vec();
    let mut out = [0u8; 512];

    // HMAC: deterministic, so the MAC itself is compared.
    let mut hmac = mech(CKM_SHA256_HMAC);
    let mut l: CK_ULONG = 512;
    call!(
        d,
        "not initialised",
        C_Sign(s, data.as_ptr() as *mut _, 4, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    call!(d, "NULL mechanism", C_SignInit(s, null_mut(), k.hmac));
    d.want(CKR_ARGUMENTS_BAD);
    call!(d, "HMAC with the AES key", C_SignInit(s, &mut hmac, k.aes));
    call!(d, "HMAC-SHA256", C_SignInit(s, &mut hmac, k.hmac));
    d.want(CKR_OK);
    let p = data.clone();
    let mac = d.three_step("C_Sign", "HMAC-SHA256", true, |o, l| {
        raw!(
            fl,
            C_Sign(s, p.as_ptr() as *mut _, p.len() as CK_ULONG, o, l)
        )
    });
    call!(d, "HMAC-SHA256", C_SignInit(s, &mut hmac, k.hmac));
    d.want(CKR_OK);
    call!(d, "part 1", C_SignUpdate(s, data.as_ptr() as *mut _, 5));
    d.want(CKR_OK);
    call!(
        d,
        "part 2",
        C_SignUpdate(
            s,
            data[5..].as_ptr() as *mut _,
            (data.len() - 5) as CK_ULONG
        )
    );
    d.want(CKR_OK);
    let mac2 = d.three_step("C_SignFinal", "HMAC-SHA256", true, |o, l| {
        raw!(fl, C_SignFinal(s, o, l))
    });
    d.out(json!({ "len": mac2.len(), "data": hex(&mac2), "same_as_single": mac2 == mac }));
    call!(
        d,
        "not initialised",
        C_SignUpdate(s, data.as_ptr() as *mut _, 4)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    let mut l: CK_ULONG = 512;
    call!(
        d,
        "not initialised",
        C_SignFinal(s, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);

    verify(d, "not initialised", s, &data[..4], &mac);
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    call!(d, "HMAC-SHA256", C_VerifyInit(s, &mut hmac, k.hmac));
    d.want(CKR_OK);
    verify(d, "good MAC", s, &data, &mac);
    d.want(CKR_OK);
    let mut bad_mac = mac.clone();
    if let Some(b) = bad_mac.first_mut() {
        *b ^= 1;
    }
    call!(d, "HMAC-SHA256", C_VerifyInit(s, &mut hmac, k.hmac));
    d.want(CKR_OK);
    verify(d, "altered MAC", s, &data, &bad_mac);
    d.want(CKR_SIGNATURE_INVALID);
    call!(d, "HMAC-SHA256", C_VerifyInit(s, &mut hmac, k.hmac));
    d.want(CKR_OK);
    call!(d, "part 1", C_VerifyUpdate(s, data.as_ptr() as *mut _, 5));
    d.want(CKR_OK);
    call!(
        d,
        "part 2",
        C_VerifyUpdate(
            s,
            data[5..].as_ptr() as *mut _,
            (data.len() - 5) as CK_ULONG
        )
    );
    d.want(CKR_OK);
    call!(
        d,
        "good MAC",
        C_VerifyFinal(s, mac.as_ptr() as *mut _, mac.len() as CK_ULONG)
    );
    d.want(CKR_OK);
    call!(d, "HMAC-SHA256", C_VerifyInit(s, &mut hmac, k.hmac));
    d.want(CKR_OK);
    call!(
        d,
        "all",
        C_VerifyUpdate(s, data.as_ptr() as *mut _, data.len() as CK_ULONG)
    );
    d.want(CKR_OK);
    call!(
        d,
        "altered MAC",
        C_VerifyFinal(s, bad_mac.as_ptr() as *mut _, bad_mac.len() as CK_ULONG)
    );
    d.want(CKR_SIGNATURE_INVALID);
    call!(
        d,
        "not initialised",
        C_VerifyUpdate(s, data.as_ptr() as *mut _, 4)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    call!(
        d,
        "not initialised",
        C_VerifyFinal(s, mac.as_ptr() as *mut _, mac.len() as CK_ULONG)
    );
    d.want(CKR_OPERATION_NOT_INITIALIZED);
    // SoftHSM answers CKR_OBJECT_HANDLE_INVALID rather than CKR_KEY_HANDLE_INVALID.
    call!(d, "bad key", C_VerifyInit(s, &mut hmac, BAD_OBJECT));

    // RSA PKCS#1 v1.5: deterministic for a key, but the keys differ between the runs, so
    // lengths and verdicts are compared, and whether single- and multi-part agree.
    let mut rsa = mech(CKM_SHA256_RSA_PKCS);
    call!(d, "SHA256-RSA-PKCS", C_SignInit(s, &mut rsa, k.rsa_priv));
    d.want(CKR_OK);
    let p = data.clone();
    let sig = d.three_step("C_Sign", "SHA256-RSA-PKCS", false, |o, l| {
        raw!(
            fl,
            C_Sign(s, p.as_ptr() as *mut _, p.len() as CK_ULONG, o, l)
        )
    });
    call!(d, "SHA256-RSA-PKCS", C_SignInit(s, &mut rsa, k.rsa_priv));
    d.want(CKR_OK);
    call!(
        d,
        "all",
        C_SignUpdate(s, data.as_ptr() as *mut _, data.len() as CK_ULONG)
    );
    d.want(CKR_OK);
    let (_, sig2) = d.one_shot("C_SignFinal", "SHA256-RSA-PKCS", false, 512, |o, l| {
        raw!(fl, C_SignFinal(s, o, l))
    });
    d.want(CKR_OK);
    let same = !sig.is_empty() && sig2 == sig;
    d.out_also("same_as_single", same);
    call!(d, "public key", C_SignInit(s, &mut rsa, k.rsa_pub));
    call!(d, "SHA256-RSA-PKCS", C_VerifyInit(s, &mut rsa, k.rsa_pub));
    d.want(CKR_OK);
    verify(d, "RSA signature", s, &data, &sig);
    d.want(CKR_OK);
    call!(d, "SHA256-RSA-PKCS", C_VerifyInit(s, &mut rsa, k.rsa_pub));
    d.want(CKR_OK);
    call!(
        d,
        "all",
        C_VerifyUpdate(s, data.as_ptr() as *mut _, data.len() as CK_ULONG)
    );
    d.want(CKR_OK);
    call!(
        d,
        "RSA signature",
        C_VerifyFinal(s, sig2.as_ptr() as *mut _, sig2.len() as CK_ULONG)
    );
    d.want(CKR_OK);
    call!(d, "SHA256-RSA-PKCS", C_VerifyInit(s, &mut rsa, k.rsa_pub));
    d.want(CKR_OK);
    verify(
        d,
        "signature too short",
        s,
        &data,
        &sig[..sig.len().min(10)],
    );
    d.want(CKR_SIGNATURE_LEN_RANGE);

    // ECDSA: randomised; length and verdict only.
    let hash = [0x11u8; 32];
    let mut ecdsa = mech(CKM_ECDSA);
    call!(d, "ECDSA", C_SignInit(s, &mut ecdsa, k.ec[0].1));
    d.want(CKR_OK);
    let (_, esig) = d.one_shot("C_Sign", "ECDSA", false, 512, |o, l| {
        raw!(fl, C_Sign(s, hash.as_ptr() as *mut _, 32, o, l))
    });
    d.want(CKR_OK);
    call!(d, "ECDSA", C_VerifyInit(s, &mut ecdsa, k.ec[0].0));
    d.want(CKR_OK);
    verify(d, "ECDSA signature", s, &hash, &esig);
    d.want(CKR_OK);
}

fn recover(d: &mut Driver, s: CK_SESSION_HANDLE, k: &Keys) {
    let fl = d.f;
    let data = b"recoverable message".to_vec();
    let mut out = [0u8; 512];
    let mut rsa = mech(CKM_RSA_PKCS);
    let mut l: CK_ULONG = 512;
    call!(
        d,
        "not initialised",
        C_SignRecover(
            s,
            data.as_ptr() as *mut _,
            data.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut l
        )
    );
    let rv = call!(d, "RSA-PKCS", C_SignRecoverInit(s, &mut rsa, k.rsa_priv));
    let mut sig = Vec::new();
    if rv == CKR_OK {
        let p = data.clone();
        sig = d.three_step("C_SignRecover", "RSA-PKCS", false, |o, l| {
            raw!(
                fl,
                C_SignRecover(s, p.as_ptr() as *mut _, p.len() as CK_ULONG, o, l)
            )
        });
    } else {
        // Unsupported (or refused): the single call is still forwarded and compared.
        let mut l: CK_ULONG = 512;
        call!(
            d,
            "after C_SignRecoverInit failed",
            C_SignRecover(
                s,
                data.as_ptr() as *mut _,
                data.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut l
            )
        );
        d.out(json!({ "len": ul(l) }));
    }
    call!(
        d,
        "NULL mechanism",
        C_SignRecoverInit(s, null_mut(), k.rsa_priv)
    );
    call!(
        d,
        "bad session",
        C_SignRecoverInit(BAD_SESSION, &mut rsa, k.rsa_priv)
    );

    let rv = call!(d, "RSA-PKCS", C_VerifyRecoverInit(s, &mut rsa, k.rsa_pub));
    if rv == CKR_OK && !sig.is_empty() {
        let sg = sig.clone();
        let back = d.three_step("C_VerifyRecover", "RSA-PKCS", true, |o, l| {
            raw!(
                fl,
                C_VerifyRecover(s, sg.as_ptr() as *mut _, sg.len() as CK_ULONG, o, l)
            )
        });
        d.out_also("round_trip", back == data);
    } else {
        // With no signature to recover from, pass 256 bytes of something: the return value is
        // what is compared.
        let junk = [0x01u8; 256];
        let mut l: CK_ULONG = 512;
        call!(
            d,
            "without a signature",
            C_VerifyRecover(s, junk.as_ptr() as *mut _, 256, out.as_mut_ptr(), &mut l)
        );
        d.out(json!({ "len": ul(l) }));
    }
    call!(
        d,
        "NULL mechanism",
        C_VerifyRecoverInit(s, null_mut(), k.rsa_pub)
    );
    call!(
        d,
        "bad session",
        C_VerifyRecoverInit(BAD_SESSION, &mut rsa, k.rsa_pub)
    );
}

/// One of the operations a dual-function update combines.
#[derive(Clone, Copy)]
enum Op {
    Digest,
    Encrypt,
    Decrypt,
    Sign,
    Verify,
}

impl Op {
    /// Starts the operation: SHA-256, AES-CBC with the AES key, HMAC-SHA256 with the HMAC key.
    fn init(self, d: &mut Driver, step: &str, s: CK_SESSION_HANDLE, k: &Keys) {
        let mut sha = mech(CKM_SHA256);
        let mut hmac = mech(CKM_SHA256_HMAC);
        let mut iv = IV;
        let mut cbc = mech_bytes(CKM_AES_CBC, &mut iv);
        match self {
            Op::Digest => call!(d, step, C_DigestInit(s, &mut sha)),
            Op::Encrypt => call!(d, step, C_EncryptInit(s, &mut cbc, k.aes)),
            Op::Decrypt => call!(d, step, C_DecryptInit(s, &mut cbc, k.aes)),
            Op::Sign => call!(d, step, C_SignInit(s, &mut hmac, k.hmac)),
            Op::Verify => call!(d, step, C_VerifyInit(s, &mut hmac, k.hmac)),
        };
    }

    /// Calls the operation's Final with a 512-byte `buf` (C_VerifyFinal: its first 32 bytes as
    /// the signature): whether it was still active shows in the return value.
    fn end(self, d: &mut Driver, step: &str, s: CK_SESSION_HANDLE, buf: &mut [u8; 512]) {
        let mut l: CK_ULONG = 512;
        match self {
            Op::Digest => call!(d, step, C_DigestFinal(s, buf.as_mut_ptr(), &mut l)),
            Op::Encrypt => call!(d, step, C_EncryptFinal(s, buf.as_mut_ptr(), &mut l)),
            Op::Decrypt => call!(d, step, C_DecryptFinal(s, buf.as_mut_ptr(), &mut l)),
            Op::Sign => call!(d, step, C_SignFinal(s, buf.as_mut_ptr(), &mut l)),
            Op::Verify => call!(d, step, C_VerifyFinal(s, buf.as_mut_ptr(), 32)),
        };
    }
}

type Update =
    fn(*const CK_FUNCTION_LIST, CK_SESSION_HANDLE, &[u8], *mut u8, *mut CK_ULONG) -> CK_RV;

/// A dual-function update called with `part` in, and the output buffer and its length.
macro_rules! dual_update {
    ($f:ident) => {
        |fl, s, part, o, l| {
            raw!(
                fl,
                $f(s, part.as_ptr() as *mut _, part.len() as CK_ULONG, o, l)
            )
        }
    };
}

struct Dual {
    name: &'static str,
    step: &'static str,
    update: Update,
    /// Started in this order (the second Init may be refused: one operation per session).
    start: [Op; 2],
    /// Ended in this order, whichever are still active.
    end: [Op; 2],
}

/// Dual-function updates and operation state: SoftHSM may not support them; what it answers
/// must come back unchanged.
fn dual_and_state(d: &mut Driver, s: CK_SESSION_HANDLE, k: &Keys) {
    let fl = d.f;
    let part = [0x33u8; 16];
    let mut sha = mech(CKM_SHA256);

    let duals = [
        Dual {
            name: "C_DigestEncryptUpdate",
            step: "digest + encrypt",
            update: dual_update!(C_DigestEncryptUpdate),
            start: [Op::Digest, Op::Encrypt],
            end: [Op::Encrypt, Op::Digest],
        },
        Dual {
            name: "C_DecryptDigestUpdate",
            step: "decrypt + digest",
            update: dual_update!(C_DecryptDigestUpdate),
            start: [Op::Decrypt, Op::Digest],
            end: [Op::Decrypt, Op::Digest],
        },
        Dual {
            name: "C_SignEncryptUpdate",
            step: "sign + encrypt",
            update: dual_update!(C_SignEncryptUpdate),
            start: [Op::Sign, Op::Encrypt],
            end: [Op::Encrypt, Op::Sign],
        },
        Dual {
            name: "C_DecryptVerifyUpdate",
            step: "decrypt + verify",
            update: dual_update!(C_DecryptVerifyUpdate),
            start: [Op::Decrypt, Op::Verify],
            end: [Op::Decrypt, Op::Verify],
        },
    ];
    for dual in duals {
        let (name, step, update) = (dual.name, dual.step, dual.update);
        for op in dual.start {
            op.init(d, step, s, k);
        }
        d.one_shot(name, step, true, 64, |o, l| update(fl, s, &part, o, l));
        d.one_shot(name, &format!("{step}, bad session"), true, 64, |o, l| {
            update(fl, BAD_SESSION, &part, o, l)
        });
        d.want(CKR_SESSION_HANDLE_INVALID);
        let mut buf = [0u8; 512];
        for op in dual.end {
            op.end(d, &format!("end {step}"), s, &mut buf);
        }
    }

    // Operation state, with a digest in progress.
    let data = [0x44u8; 40];
    call!(d, "SHA-256", C_DigestInit(s, &mut sha));
    d.want(CKR_OK);
    call!(
        d,
        "40 bytes",
        C_DigestUpdate(s, data.as_ptr() as *mut _, 40)
    );
    d.want(CKR_OK);
    let mut state_len: CK_ULONG = 0;
    let rv = call!(
        d,
        "length query",
        C_GetOperationState(s, null_mut(), &mut state_len)
    );
    d.out(json!({ "len": ul(state_len) }));
    let mut state = Vec::new();
    if rv == CKR_OK && state_len != CK_UNAVAILABLE_INFORMATION && state_len < 1 << 16 {
        // The blob may carry module internals: its length is compared, not its bytes.
        let (rv, st) = d.one_shot(
            "C_GetOperationState",
            "digest state",
            false,
            state_len as usize,
            |o, l| raw!(fl, C_GetOperationState(s, o, l)),
        );
        if rv == CKR_OK {
            state = st;
        }
    } else {
        let mut buf = [0u8; 256];
        let mut l: CK_ULONG = 256;
        call!(
            d,
            "256-byte buffer",
            C_GetOperationState(s, buf.as_mut_ptr(), &mut l)
        );
        d.out(json!({ "len": ul(l) }));
    }
    call!(
        d,
        "NULL length",
        C_GetOperationState(s, null_mut(), null_mut())
    );
    call!(
        d,
        "bad session",
        C_GetOperationState(BAD_SESSION, null_mut(), &mut state_len)
    );
    let mut digest_a = [0u8; 32];
    let mut l: CK_ULONG = 32;
    call!(
        d,
        "after C_GetOperationState",
        C_DigestFinal(s, digest_a.as_mut_ptr(), &mut l)
    );
    d.want(CKR_OK);
    d.out(json!({ "data": hex(&digest_a) }));
    if state.is_empty() {
        state = vec![0x55; 24];
    }
    let rv = call!(
        d,
        "restore",
        C_SetOperationState(s, state.as_mut_ptr(), state.len() as CK_ULONG, 0, 0)
    );
    if rv == CKR_OK {
        let mut digest_b = [0u8; 32];
        let mut l: CK_ULONG = 32;
        call!(
            d,
            "after C_SetOperationState",
            C_DigestFinal(s, digest_b.as_mut_ptr(), &mut l)
        );
        d.out(json!({ "data": hex(&digest_b), "same": digest_b == digest_a }));
    }
    call!(
        d,
        "NULL state",
        C_SetOperationState(s, null_mut(), 24, 0, 0)
    );
    call!(
        d,
        "bad session",
        C_SetOperationState(
            BAD_SESSION,
            state.as_mut_ptr(),
            state.len() as CK_ULONG,
            0,
            0
        )
    );
}

fn wrap_unwrap(d: &mut Driver, s: CK_SESSION_HANDLE, k: &Keys) {
    let fl = d.f;
    // RFC 3394 with fixed keys: the wrapped bytes are compared.
    let mut kw = mech(CKM_AES_KEY_WRAP);
    let wrapped = d.three_step("C_WrapKey", "HMAC key under AES-KW", true, |o, l| {
        raw!(fl, C_WrapKey(s, &mut kw, k.aes, k.hmac, o, l))
    });
    let mut out = [0u8; 64];
    let mut l: CK_ULONG = 64;
    call!(
        d,
        "bad wrapping key",
        C_WrapKey(s, &mut kw, BAD_OBJECT, k.hmac, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_WRAPPING_KEY_HANDLE_INVALID);
    l = 64;
    call!(
        d,
        "bad key",
        C_WrapKey(s, &mut kw, k.aes, BAD_OBJECT, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_KEY_HANDLE_INVALID);
    l = 64;
    call!(
        d,
        "NULL mechanism",
        C_WrapKey(s, null_mut(), k.aes, k.hmac, out.as_mut_ptr(), &mut l)
    );
    d.want(CKR_ARGUMENTS_BAD);
    l = 64;
    call!(
        d,
        "HMAC key cannot wrap",
        C_WrapKey(s, &mut kw, k.hmac, k.aes, out.as_mut_ptr(), &mut l)
    );

    let mut t = Template::new()
        .ulong(CKA_CLASS, CKO_SECRET_KEY)
        .ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET)
        .bool(CKA_TOKEN, false)
        .bool(CKA_SENSITIVE, false)
        .bool(CKA_EXTRACTABLE, true)
        .bool(CKA_SIGN, true)
        .text(CKA_LABEL, "unwrapped");
    let mut unwrapped: CK_OBJECT_HANDLE = 0;
    call!(
        d,
        "AES-KW",
        C_UnwrapKey(
            s,
            &mut kw,
            k.aes,
            wrapped.as_ptr() as *mut _,
            wrapped.len() as CK_ULONG,
            t.ptr(),
            t.len(),
            &mut unwrapped
        )
    );
    d.want(CKR_OK);
    d.out(json!({ "handle": unwrapped }));
    let v = d.attributes(
        "unwrapped key",
        s,
        unwrapped,
        &[(CKA_VALUE, true), (CKA_LABEL, true)],
    );
    d.out_also(
        "round_trip",
        v.first().is_some_and(|v| v[..] == HMAC_KEY[..]),
    );
    let mut junk = wrapped.clone();
    if let Some(b) = junk.last_mut() {
        *b ^= 0x80;
    }
    let mut h: CK_OBJECT_HANDLE = 0;
    call!(
        d,
        "altered wrapped key",
        C_UnwrapKey(
            s,
            &mut kw,
            k.aes,
            junk.as_mut_ptr(),
            junk.len() as CK_ULONG,
            t.ptr(),
            t.len(),
            &mut h
        )
    );
    call!(
        d,
        "bad unwrapping key",
        C_UnwrapKey(
            s,
            &mut kw,
            BAD_OBJECT,
            junk.as_mut_ptr(),
            junk.len() as CK_ULONG,
            t.ptr(),
            t.len(),
            &mut h
        )
    );
    d.want(CKR_UNWRAPPING_KEY_HANDLE_INVALID);
    call!(
        d,
        "NULL wrapped key",
        C_UnwrapKey(s, &mut kw, k.aes, null_mut(), 40, t.ptr(), t.len(), &mut h)
    );
    d.want(CKR_ARGUMENTS_BAD);

    // The RSA private key under AES-KWP: lengths vary with the key, so only the round trip is
    // compared (sign with the unwrapped copy, verify with the original public key).
    let mut kwp = mech(CKM_AES_KEY_WRAP_PAD);
    let (rv, wrapped_rsa) = d.one_shot(
        "C_WrapKey",
        "RSA private key under AES-KWP",
        false,
        4096,
        |o, l| raw!(fl, C_WrapKey(s, &mut kwp, k.aes, k.rsa_priv, o, l)),
    );
    d.want(CKR_OK);
    d.out(Value::Null);
    if rv == CKR_OK {
        let mut t = Template::new()
            .ulong(CKA_CLASS, CKO_PRIVATE_KEY)
            .ulong(CKA_KEY_TYPE, CKK_RSA)
            .bool(CKA_TOKEN, false)
            .bool(CKA_PRIVATE, true)
            .bool(CKA_SIGN, true)
            .text(CKA_LABEL, "rsa-unwrapped");
        let mut copy: CK_OBJECT_HANDLE = 0;
        call!(
            d,
            "RSA private key",
            C_UnwrapKey(
                s,
                &mut kwp,
                k.aes,
                wrapped_rsa.as_ptr() as *mut _,
                wrapped_rsa.len() as CK_ULONG,
                t.ptr(),
                t.len(),
                &mut copy
            )
        );
        d.want(CKR_OK);
        d.out(json!({ "handle": copy }));
        let data = b"signed by the unwrapped key";
        let mut rsa = mech(CKM_SHA256_RSA_PKCS);
        call!(d, "unwrapped RSA key", C_SignInit(s, &mut rsa, copy));
        d.want(CKR_OK);
        let (_, sig) = d.one_shot("C_Sign", "unwrapped RSA key", false, 512, |o, l| {
            raw!(
                fl,
                C_Sign(s, data.as_ptr() as *mut _, data.len() as CK_ULONG, o, l)
            )
        });
        d.want(CKR_OK);
        call!(
            d,
            "original public key",
            C_VerifyInit(s, &mut rsa, k.rsa_pub)
        );
        d.want(CKR_OK);
        verify(d, "signature of the unwrapped key", s, data, &sig);
        d.want(CKR_OK);
    }
}

fn derive(d: &mut Driver, s: CK_SESSION_HANDLE, k: &Keys) {
    // AES-ECB encryption of fixed data under the fixed key: a deterministic derived value.
    let mut text = [0x66u8; 32];
    let mut params = CK_KEY_DERIVATION_STRING_DATA {
        pData: text.as_mut_ptr(),
        ulLen: 32,
    };
    let mut m = mech_with(CKM_AES_ECB_ENCRYPT_DATA, &mut params);
    let mut t = Template::new()
        .ulong(CKA_CLASS, CKO_SECRET_KEY)
        .ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET)
        .bool(CKA_TOKEN, false)
        .bool(CKA_SENSITIVE, false)
        .bool(CKA_EXTRACTABLE, true)
        .ulong(CKA_VALUE_LEN, 32);
    let mut h: CK_OBJECT_HANDLE = 0;
    call!(
        d,
        "AES-ECB-ENCRYPT-DATA",
        C_DeriveKey(s, &mut m, k.aes, t.ptr(), t.len(), &mut h)
    );
    d.want(CKR_OK);
    d.out(json!({ "handle": h }));
    d.attributes(
        "AES-ECB-ENCRYPT-DATA key",
        s,
        h,
        &[(CKA_VALUE, true), (CKA_VALUE_LEN, true)],
    );

    // ECDH both ways: each side's secret is random, but the two must agree.
    let mut points = Vec::new();
    for (i, pair) in k.ec.iter().enumerate() {
        let v = d.attributes(
            &format!("EC public key #{i}"),
            s,
            pair.0,
            &[(CKA_EC_PARAMS, true), (CKA_EC_POINT, false)],
        );
        // CKA_EC_POINT is a DER OCTET STRING; the raw point follows its 2-byte header.
        let point = v.get(1).cloned().unwrap_or_default();
        points.push(if point.len() == 67 && point[0] == 0x04 {
            point[2..].to_vec()
        } else {
            point
        });
    }
    let mut secrets = Vec::new();
    for (i, (mine, theirs)) in [(0usize, 1usize), (1, 0)].into_iter().enumerate() {
        let mut public = points[theirs].clone();
        let mut params = CK_ECDH1_DERIVE_PARAMS {
            kdf: CKD_NULL,
            ulSharedDataLen: 0,
            pSharedData: null_mut(),
            ulPublicDataLen: public.len() as CK_ULONG,
            pPublicData: public.as_mut_ptr(),
        };
        let mut m = mech_with(CKM_ECDH1_DERIVE, &mut params);
        let mut h: CK_OBJECT_HANDLE = 0;
        call!(
            d,
            &format!("ECDH #{i}"),
            C_DeriveKey(s, &mut m, k.ec[mine].1, t.ptr(), t.len(), &mut h)
        );
        d.want(CKR_OK);
        d.out(json!({ "handle": h }));
        let v = d.attributes(&format!("ECDH #{i} secret"), s, h, &[(CKA_VALUE, false)]);
        secrets.push(v.into_iter().next().unwrap_or_default());
    }
    let agree = secrets.len() == 2 && !secrets[0].is_empty() && secrets[0] == secrets[1];
    d.out_also("both_sides_agree", agree);

    let mut h: CK_OBJECT_HANDLE = 0;
    call!(
        d,
        "NULL mechanism",
        C_DeriveKey(s, null_mut(), k.aes, t.ptr(), t.len(), &mut h)
    );
    d.want(CKR_ARGUMENTS_BAD);
    call!(
        d,
        "bad base key",
        C_DeriveKey(s, &mut m, BAD_OBJECT, t.ptr(), t.len(), &mut h)
    );
    d.want(CKR_OBJECT_HANDLE_INVALID);
    let mut sha = mech(CKM_SHA256);
    call!(
        d,
        "digest mechanism",
        C_DeriveKey(s, &mut sha, k.aes, t.ptr(), t.len(), &mut h)
    );
}

fn random_and_parallel(d: &mut Driver, s: CK_SESSION_HANDLE) {
    let seed = [0x77u8; 16];
    call!(d, "16 bytes", C_SeedRandom(s, seed.as_ptr() as *mut _, 16));
    d.want(CKR_OK);
    call!(d, "NULL seed", C_SeedRandom(s, null_mut(), 16));
    d.want(CKR_ARGUMENTS_BAD);
    call!(
        d,
        "bad session",
        C_SeedRandom(BAD_SESSION, seed.as_ptr() as *mut _, 16)
    );
    d.want(CKR_SESSION_HANDLE_INVALID);
    let mut buf = [0u8; 32];
    call!(d, "32 bytes", C_GenerateRandom(s, buf.as_mut_ptr(), 32));
    d.want(CKR_OK);
    call!(d, "NULL buffer", C_GenerateRandom(s, null_mut(), 32));
    d.want(CKR_ARGUMENTS_BAD);
    call!(
        d,
        "bad session",
        C_GenerateRandom(BAD_SESSION, buf.as_mut_ptr(), 32)
    );
    d.want(CKR_SESSION_HANDLE_INVALID);

    call!(d, "session", C_GetFunctionStatus(s));
    d.want(CKR_FUNCTION_NOT_PARALLEL);
    call!(d, "bad session", C_GetFunctionStatus(BAD_SESSION));
    call!(d, "session", C_CancelFunction(s));
    d.want(CKR_FUNCTION_NOT_PARALLEL);
    call!(d, "bad session", C_CancelFunction(BAD_SESSION));

    // Only ever with CKF_DONT_BLOCK: a blocking wait could hang the driver.
    let mut slot: CK_SLOT_ID = 0;
    let rv = call!(
        d,
        "CKF_DONT_BLOCK",
        C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut slot, null_mut())
    );
    if rv == CKR_OK {
        let name = d.slot_name(slot);
        d.out(json!({ "slot": name }));
    }
    call!(
        d,
        "non-NULL pReserved",
        C_WaitForSlotEvent(
            CKF_DONT_BLOCK,
            &mut slot,
            &mut slot as *mut _ as *mut c_void
        )
    );
    call!(
        d,
        "NULL slot",
        C_WaitForSlotEvent(CKF_DONT_BLOCK, null_mut(), null_mut())
    );
}

fn closing(d: &mut Driver, slot: CK_SLOT_ID, s: CK_SESSION_HANDLE) {
    call!(d, "user", C_Logout(s));
    d.want(CKR_OK);
    d.session_info("after C_Logout", s);
    call!(d, "read-write", C_CloseSession(s));
    d.want(CKR_OK);
    call!(d, "again", C_CloseSession(s));
    d.want(CKR_SESSION_HANDLE_INVALID);
    call!(d, "bad session", C_CloseSession(BAD_SESSION));
    d.want(CKR_SESSION_HANDLE_INVALID);
    let a = open(d, "for C_CloseAllSessions", slot, CKF_SERIAL_SESSION);
    d.want(CKR_OK);
    open(
        d,
        "for C_CloseAllSessions",
        slot,
        CKF_SERIAL_SESSION | CKF_RW_SESSION,
    );
    d.want(CKR_OK);
    d.token_info("two sessions open", slot);
    call!(d, "token slot", C_CloseAllSessions(slot));
    d.want(CKR_OK);
    d.session_info("after C_CloseAllSessions", a);
    d.want(CKR_SESSION_HANDLE_INVALID);
    call!(d, "bad slot", C_CloseAllSessions(BAD_SLOT));
    d.want(CKR_SLOT_ID_INVALID);
    d.token_info("all sessions closed", slot);
}

fn lifecycle_end(d: &mut Driver) {
    let mut x = 0u8;
    call!(
        d,
        "non-NULL pReserved",
        C_Finalize(&mut x as *mut u8 as *mut c_void)
    );
    d.want(CKR_ARGUMENTS_BAD);
    call!(d, "NULL", C_Finalize(null_mut()));
    d.want(CKR_OK);
    call!(d, "again", C_Finalize(null_mut()));
    d.want(CKR_CRYPTOKI_NOT_INITIALIZED);
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    call!(d, "after C_Finalize", C_GetInfo(&mut info));
    d.want(CKR_CRYPTOKI_NOT_INITIALIZED);

    // After C_Finalize, a C_Initialize with bad arguments: forwarded, refused by SoftHSM.
    let mut a = init_args(true, false, 0);
    call!(
        d,
        "CreateMutex only, after C_Finalize",
        C_Initialize(&mut a as *mut _ as *mut c_void)
    );
    d.want(CKR_ARGUMENTS_BAD);
    // Application mutex callbacks: SoftHSM may use them (they are no-ops: one thread).
    let mut a = init_args(true, true, CKF_OS_LOCKING_OK);
    call!(
        d,
        "all mutex callbacks",
        C_Initialize(&mut a as *mut _ as *mut c_void)
    );
    d.want(CKR_OK);
    let rv = call!(d, "second initialisation", C_GetInfo(&mut info));
    d.want(CKR_OK);
    if rv == CKR_OK {
        d.out(json!({ "library": version(info.libraryVersion) }));
    }
    let mut n: CK_ULONG = 0;
    call!(
        d,
        "second initialisation",
        C_GetSlotList(CK_TRUE, null_mut(), &mut n)
    );
    d.want(CKR_OK);
    d.out(json!({ "count": n }));
    call!(d, "second initialisation", C_Finalize(null_mut()));
    d.want(CKR_OK);
}
