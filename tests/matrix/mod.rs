//! The provider matrix: one PKCS#11 2.40 workload run against a provider directly and through
//! p11audit, each run a process of its own (this test binary re-executed), then compared call
//! by call. Used by the tests of providers that are not soft tokens of this repository's own
//! choosing (tests/tpm2_pkcs11.rs, tests/opencryptoki.rs).
//!
//! The workload: C_GetInfo, slots, token and mechanism lists; optionally the token's set-up
//! (C_InitToken, SO PIN change, C_InitPIN); a wrong PIN and the user login; SHA-256 digest;
//! random bytes; an EC P-256 key pair with ECDSA, an RSA-2048 key pair with PKCS#1 v1.5 and
//! an AES-256 key with AES-CBC, each as far as the provider goes; a search; clean-up.
//! Each key that signs hands its public key and signature to the parent, which checks them
//! with OpenSSL.

// CK_ULONG is u64 here and u32 elsewhere: the casts keep the driver portable.
#![allow(clippy::unnecessary_cast)]
// Each provider test uses its own part of this module.
#![allow(dead_code)]

pub mod daemon;

use crate::common::raw::{attr, attr_bytes, load_function_list, mech, os_locking_args, rv_name};
use crate::common::raw::{FALSE, TRUE};
use crate::common::{
    check_chain, hex, outcomes_with_told_inits, print_marked, shim_library, Fixture,
};
use cryptoki_sys::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::ffi::c_void;
use std::path::Path;
use std::process::Command;
use std::ptr::null_mut;
use std::sync::OnceLock;

/// Set in the driver processes only: the PKCS#11 module the driver loads.
pub const MODULE_ENV: &str = "P11AUDIT_TEST_MATRIX_MODULE";
/// The driver's set-up, JSON: `{"slot": n, "prefix": "…", "init_so_pin": "…" or null,
/// "premade_aes": bool}`; `premade_aes`: the token holds an AES key labelled `PREFIX-aes`, made
/// by the provider's own tool, for when the provider cannot generate one.
pub const SETUP_ENV: &str = "P11AUDIT_TEST_MATRIX_SETUP";
pub const MARKER: &str = "P11AUDIT-MATRIX-RESULT ";

// Secrets, shaped so that finding one in the log cannot be chance. Eight bytes: opencryptoki's
// soft token takes PINs of 4 to 8 bytes.
pub const USER_PIN: &str = "Qx7!Pn3k";
pub const SO_PIN: &str = "Zw9k!So4";
const WRONG_PIN: &str = "Wr0ng!Rt";
pub const SIGNED: &[u8] = b"matrix signed data canary Mv2p";
/// Three AES blocks: AES-CBC takes whole blocks.
const PLAINTEXT: &[u8] = b"matrix plaintext canary Hq3w, three blocks long.";
const IV: [u8; 16] = [
    0x91, 0x3d, 0xe7, 0x5a, 0xc4, 0x08, 0x2f, 0x6b, 0x77, 0xa1, 0xd9, 0x0e, 0x1a, 0x93, 0x60, 0xf5,
];
/// DER DigestInfo prefix of SHA-256 (RFC 8017 §9.2 note 1), for CKM_RSA_PKCS signatures.
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

fn padded(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

/// The driver's state: the provider's (or the shim's) table, the calls made so far, the keys
/// made and the signatures for OpenSSL.
struct Driver {
    f: &'static CK_FUNCTION_LIST,
    calls: Vec<Value>,
    keys: Vec<Value>,
    signatures: Vec<Value>,
}

impl Driver {
    fn rec(&mut self, step: &str, function: &str, rv: CK_RV) {
        self.calls
            .push(json!({"step": step, "fn": function, "rv": rv_name(rv), "out": null}));
    }

    /// The call's output that must be equal direct and through the shim.
    fn out(&mut self, out: Value) {
        self.calls.last_mut().expect("a call")["out"] = out;
    }

    fn ok(&self) -> bool {
        self.calls.last().expect("a call")["rv"] == "CKR_OK"
    }

    /// Notes a key the shim's records must name: its handle and what it is (an identity, as
    /// FORMAT.md describes it), and whether this run generated it.
    fn key(&mut self, handle: CK_OBJECT_HANDLE, kind: KeyKind, label: &str, generated: bool) {
        let (class, key_type, id) = kind;
        self.keys.push(json!({
            "handle": handle as u64, "class": class, "key_type": key_type, "label": label,
            "id": {"hex": hex(id)}, "generated": generated,
        }));
    }
}

/// A key's class, key type and id.
type KeyKind<'a> = (&'static str, &'static str, &'a [u8]);

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

/// The driver: a test of the including binary calls this; it does nothing unless this process
/// is a re-executed child (MODULE_ENV set).
pub fn driver() {
    let Ok(module) = std::env::var(MODULE_ENV) else {
        return;
    };
    let setup: Value =
        serde_json::from_str(&std::env::var(SETUP_ENV).expect(SETUP_ENV)).expect("setup JSON");
    let slot = setup["slot"].as_u64().expect("slot") as CK_SLOT_ID;
    let prefix = setup["prefix"].as_str().expect("prefix").to_string();
    let mut d = Driver {
        f: load_function_list(Path::new(&module)),
        calls: Vec::new(),
        keys: Vec::new(),
        signatures: Vec::new(),
    };

    let mut args = os_locking_args();
    call!(
        d,
        "C_Initialize",
        C_Initialize(&mut args as *mut _ as *mut c_void)
    );
    want_ok(&d);
    library_and_slot(&mut d, slot);
    if let Some(so_default) = setup["init_so_pin"].as_str() {
        init_token(&mut d, slot, so_default, &prefix);
    }
    let s = open_and_login(&mut d, slot);

    let mut data = SIGNED.to_vec();
    let mut digest = [0u8; 32];
    let mut len = digest.len() as CK_ULONG;
    let mut m = mech(CKM_SHA256);
    call!(d, "digest init", C_DigestInit(s, &mut m));
    want_ok(&d);
    call!(
        d,
        "digest",
        C_Digest(
            s,
            data.as_mut_ptr(),
            data.len() as CK_ULONG,
            digest.as_mut_ptr(),
            &mut len
        )
    );
    want_ok(&d);
    assert_eq!(
        &digest[..len as usize],
        Sha256::digest(SIGNED).as_slice(),
        "SHA-256 differs"
    );
    d.out(json!(hex(&digest[..len as usize])));
    let mut random = [0u8; 32];
    call!(d, "random", C_GenerateRandom(s, random.as_mut_ptr(), 32));
    want_ok(&d);
    assert_ne!(random, [0u8; 32], "32 random bytes all zero");

    let ec = ec_key_pair(&mut d, s, &prefix);
    let rsa = rsa_key_pair(&mut d, s, &prefix);
    let aes = aes_key(&mut d, s, &prefix, setup["premade_aes"] == true);
    find_by_label(&mut d, "RSA keys", s, &format!("{prefix}-rsa"));
    for (what, handle) in [
        ("EC private", ec.map(|k| k.1)),
        ("EC public", ec.map(|k| k.0)),
        ("RSA private", rsa.map(|k| k.1)),
        ("RSA public", rsa.map(|k| k.0)),
        ("AES", aes),
    ] {
        if let Some(h) = handle {
            call!(d, &format!("destroy the {what} key"), C_DestroyObject(s, h));
        }
    }
    call!(d, "logout", C_Logout(s));
    call!(d, "close", C_CloseSession(s));
    call!(d, "C_Finalize", C_Finalize(null_mut()));
    want_ok(&d);
    print_marked(
        MARKER,
        &json!({"calls": d.calls, "keys": d.keys, "signatures": d.signatures}),
    );
}

fn token_info(d: &mut Driver, step: &str, slot: CK_SLOT_ID) {
    // SAFETY: CK_TOKEN_INFO is plain data.
    let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    call!(d, step, C_GetTokenInfo(slot, &mut ti));
    d.out(json!({
        "label": padded(&ti.label),
        "manufacturerID": padded(&ti.manufacturerID),
        "model": padded(&ti.model),
        "flags": ti.flags as u64,
        "pin_len": [ti.ulMinPinLen as u64, ti.ulMaxPinLen as u64],
    }));
}

/// C_GetInfo, the slot list, the token and its mechanisms (with their info).
fn library_and_slot(d: &mut Driver, slot: CK_SLOT_ID) {
    // SAFETY: CK_INFO is plain data.
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    call!(d, "C_GetInfo", C_GetInfo(&mut info));
    want_ok(d);
    d.out(json!({
        "cryptokiVersion": format!("{}.{}", info.cryptokiVersion.major, info.cryptokiVersion.minor),
        "manufacturerID": padded(&info.manufacturerID),
        "libraryDescription": padded(&info.libraryDescription),
        "libraryVersion": format!("{}.{}", info.libraryVersion.major, info.libraryVersion.minor),
    }));
    let mut slots = [0 as CK_SLOT_ID; 16];
    let mut n = slots.len() as CK_ULONG;
    call!(
        d,
        "slot list",
        C_GetSlotList(FALSE, slots.as_mut_ptr(), &mut n)
    );
    want_ok(d);
    d.out(json!(slots[..n as usize]));
    assert!(slots[..n as usize].contains(&slot), "slot {slot} missing");
    token_info(d, "token info", slot);

    let mut n: CK_ULONG = 0;
    call!(
        d,
        "mechanism count",
        C_GetMechanismList(slot, null_mut(), &mut n)
    );
    want_ok(d);
    let mut mechs = vec![0 as CK_MECHANISM_TYPE; n as usize];
    call!(
        d,
        "mechanism list",
        C_GetMechanismList(slot, mechs.as_mut_ptr(), &mut n)
    );
    want_ok(d);
    mechs.truncate(n as usize);
    let names: Vec<String> = mechs
        .iter()
        .map(|&m| {
            p11audit::format::names::mechanism_name(m as u64)
                .map_or_else(|| format!("{m:#x}"), str::to_string)
        })
        .collect();
    d.out(json!(names));
    for m in [
        CKM_EC_KEY_PAIR_GEN,
        CKM_RSA_PKCS_KEY_PAIR_GEN,
        CKM_AES_KEY_GEN,
    ] {
        // SAFETY: CK_MECHANISM_INFO is plain data.
        let mut mi: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
        let name = p11audit::format::names::mechanism_name(m as u64).expect("a named mechanism");
        call!(
            d,
            &format!("mechanism info {name}"),
            C_GetMechanismInfo(slot, m, &mut mi)
        );
        d.out(json!([
            mi.ulMinKeySize as u64,
            mi.ulMaxKeySize as u64,
            mi.flags as u64
        ]));
    }
}

/// C_InitToken with the provider's default SO PIN, the SO PIN changed to SO_PIN, C_InitPIN.
fn init_token(d: &mut Driver, slot: CK_SLOT_ID, so_default: &str, prefix: &str) {
    let name = format!("p11audit-{prefix}");
    let mut label = [b' '; 32];
    label[..name.len()].copy_from_slice(name.as_bytes());
    let mut default = so_default.as_bytes().to_vec();
    let dl = default.len() as CK_ULONG;
    call!(
        d,
        "C_InitToken",
        C_InitToken(slot, default.as_mut_ptr(), dl, label.as_mut_ptr())
    );
    want_ok(d);
    token_info(d, "token info, initialized", slot);
    let mut s: CK_SESSION_HANDLE = 0;
    let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
    call!(
        d,
        "set-up session",
        C_OpenSession(slot, flags, null_mut(), None, &mut s)
    );
    want_ok(d);
    call!(
        d,
        "SO login, default PIN",
        C_Login(s, CKU_SO, default.as_mut_ptr(), dl)
    );
    want_ok(d);
    let mut so = SO_PIN.as_bytes().to_vec();
    let sl = so.len() as CK_ULONG;
    call!(
        d,
        "SO PIN change",
        C_SetPIN(s, default.as_mut_ptr(), dl, so.as_mut_ptr(), sl)
    );
    want_ok(d);
    let mut pin = USER_PIN.as_bytes().to_vec();
    call!(
        d,
        "C_InitPIN",
        C_InitPIN(s, pin.as_mut_ptr(), pin.len() as CK_ULONG)
    );
    want_ok(d);
    call!(d, "SO logout", C_Logout(s));
    want_ok(d);
    call!(d, "set-up session close", C_CloseSession(s));
    want_ok(d);
    token_info(d, "token info, PIN set", slot);
}

/// A R/W session, a wrong PIN, then the user logged in.
fn open_and_login(d: &mut Driver, slot: CK_SLOT_ID) -> CK_SESSION_HANDLE {
    let mut s: CK_SESSION_HANDLE = 0;
    let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
    call!(
        d,
        "open R/W session",
        C_OpenSession(slot, flags, null_mut(), None, &mut s)
    );
    want_ok(d);
    let mut wrong = WRONG_PIN.as_bytes().to_vec();
    call!(
        d,
        "wrong PIN",
        C_Login(s, CKU_USER, wrong.as_mut_ptr(), wrong.len() as CK_ULONG)
    );
    let mut pin = USER_PIN.as_bytes().to_vec();
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
    s
}

/// Reads one attribute of `h` (at most 1024 bytes); None when the call fails.
fn read_attr(
    d: &mut Driver,
    step: &str,
    s: CK_SESSION_HANDLE,
    h: CK_OBJECT_HANDLE,
    ty: CK_ATTRIBUTE_TYPE,
) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    let mut t = [CK_ATTRIBUTE {
        type_: ty,
        pValue: buf.as_mut_ptr() as *mut c_void,
        ulValueLen: buf.len() as CK_ULONG,
    }];
    call!(d, step, C_GetAttributeValue(s, h, t.as_mut_ptr(), 1));
    if !d.ok() {
        return None;
    }
    buf.truncate(t[0].ulValueLen as usize);
    Some(buf)
}

/// Signs SIGNED's `input` with `mechanism` (length query, then the signature), verifies it,
/// and has a forged one refused; returns the signature.
fn sign_and_verify(
    d: &mut Driver,
    what: &str,
    s: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_TYPE,
    (public, private): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE),
    input: &[u8],
) -> Vec<u8> {
    let mut m = mech(mechanism);
    let mut input = input.to_vec();
    let il = input.len() as CK_ULONG;
    call!(
        d,
        &format!("{what}: sign init"),
        C_SignInit(s, &mut m, private)
    );
    want_ok(d);
    let mut len: CK_ULONG = 0;
    call!(
        d,
        &format!("{what}: sign length query"),
        C_Sign(s, input.as_mut_ptr(), il, null_mut(), &mut len)
    );
    want_ok(d);
    d.out(json!(len as u64));
    let mut sig = vec![0u8; len as usize];
    call!(
        d,
        &format!("{what}: sign"),
        C_Sign(s, input.as_mut_ptr(), il, sig.as_mut_ptr(), &mut len)
    );
    want_ok(d);
    sig.truncate(len as usize);
    d.out(json!(sig.len()));

    let mut forged = sig.clone();
    forged[sig.len() / 2] ^= 0x01;
    for (step, signature) in [
        ("verify", &mut sig),
        ("verify a forged signature", &mut forged),
    ] {
        call!(
            d,
            &format!("{what}: {step} init"),
            C_VerifyInit(s, &mut m, public)
        );
        want_ok(d);
        let l = signature.len() as CK_ULONG;
        call!(
            d,
            &format!("{what}: {step}"),
            C_Verify(s, input.as_mut_ptr(), il, signature.as_mut_ptr(), l)
        );
    }
    sig
}

/// A key pair on the token made with `mechanism`, both halves labelled `label` with id `id`,
/// the public half with `public_specific` too; (public, private) when the provider made it.
#[allow(clippy::too_many_arguments)]
fn generate_pair(
    d: &mut Driver,
    what: &str,
    s: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_TYPE,
    key_type: &'static str,
    label: &str,
    id: u8,
    public_specific: &[CK_ATTRIBUTE],
) -> Option<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
    let id = [id];
    let mut public_t = vec![
        attr(CKA_TOKEN, &TRUE),
        attr(CKA_VERIFY, &TRUE),
        attr_bytes(CKA_LABEL, label.as_bytes()),
        attr_bytes(CKA_ID, &id),
    ];
    public_t.extend_from_slice(public_specific);
    let mut private_t = [
        attr(CKA_TOKEN, &TRUE),
        attr(CKA_PRIVATE, &TRUE),
        attr(CKA_SENSITIVE, &TRUE),
        attr(CKA_SIGN, &TRUE),
        attr_bytes(CKA_LABEL, label.as_bytes()),
        attr_bytes(CKA_ID, &id),
    ];
    let (mut public, mut private) = (0, 0);
    let mut m = mech(mechanism);
    call!(
        d,
        &format!("{what}: generate key pair"),
        C_GenerateKeyPair(
            s,
            &mut m,
            public_t.as_mut_ptr(),
            public_t.len() as CK_ULONG,
            private_t.as_mut_ptr(),
            private_t.len() as CK_ULONG,
            &mut public,
            &mut private
        )
    );
    if !d.ok() {
        return None;
    }
    d.key(public, ("CKO_PUBLIC_KEY", key_type, &id), label, true);
    d.key(private, ("CKO_PRIVATE_KEY", key_type, &id), label, true);
    Some((public, private))
}

/// An EC P-256 key pair on the token and an ECDSA signature of SHA-256(SIGNED); returns
/// (public, private) when the provider made the pair.
fn ec_key_pair(
    d: &mut Driver,
    s: CK_SESSION_HANDLE,
    prefix: &str,
) -> Option<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
    let params = crate::common::P256_OID;
    let label = format!("{prefix}-ec");
    let specific = [attr_bytes(CKA_EC_PARAMS, &params)];
    let pair = generate_pair(
        d,
        "EC",
        s,
        CKM_EC_KEY_PAIR_GEN,
        "CKK_EC",
        &label,
        1,
        &specific,
    )?;
    let ec_params = read_attr(d, "EC: public key params", s, pair.0, CKA_EC_PARAMS);
    d.out(json!(ec_params.map(|p| hex(&p))));
    let point = read_attr(d, "EC: public key point", s, pair.0, CKA_EC_POINT).expect("EC point");
    d.out(json!(point.len()));
    let hash = Sha256::digest(SIGNED);
    let sig = sign_and_verify(d, "ECDSA", s, CKM_ECDSA, pair, &hash);
    d.signatures.push(json!({
        "kind": "ecdsa-p256-sha256", "ec_point": hex(&point), "sig": hex(&sig),
    }));
    Some(pair)
}

/// An RSA-2048 key pair on the token and a PKCS#1 v1.5 SHA-256 signature of SIGNED (the
/// DigestInfo made here, signed with CKM_RSA_PKCS, which every RSA provider has).
fn rsa_key_pair(
    d: &mut Driver,
    s: CK_SESSION_HANDLE,
    prefix: &str,
) -> Option<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
    let bits: CK_ULONG = 2048;
    let exponent = [0x01u8, 0x00, 0x01];
    let label = format!("{prefix}-rsa");
    let specific = [
        attr(CKA_MODULUS_BITS, &bits),
        attr_bytes(CKA_PUBLIC_EXPONENT, &exponent),
    ];
    let mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
    let pair = generate_pair(d, "RSA", s, mechanism, "CKK_RSA", &label, 2, &specific)?;
    let modulus = read_attr(d, "RSA: modulus", s, pair.0, CKA_MODULUS).expect("modulus");
    d.out(json!(modulus.len()));
    let e = read_attr(d, "RSA: public exponent", s, pair.0, CKA_PUBLIC_EXPONENT).expect("e");
    d.out(json!(hex(&e)));
    let mut digest_info = SHA256_DIGEST_INFO.to_vec();
    digest_info.extend_from_slice(&Sha256::digest(SIGNED));
    let sig = sign_and_verify(d, "RSA", s, CKM_RSA_PKCS, pair, &digest_info);
    d.signatures.push(json!({
        "kind": "rsa-pkcs1-sha256", "modulus": hex(&modulus), "exponent": hex(&e),
        "sig": hex(&sig),
    }));
    Some(pair)
}

/// An AES-256 key on the token (generated, or when the provider cannot and `premade` says so,
/// the one its tool made), and an AES-CBC round trip. Not AES-CBC-PAD: tpm2-pkcs11 1.9.0 fails
/// its decryption (CKR_GENERAL_ERROR, "Internal buffer too small", whatever the buffer).
fn aes_key(
    d: &mut Driver,
    s: CK_SESSION_HANDLE,
    prefix: &str,
    premade: bool,
) -> Option<CK_OBJECT_HANDLE> {
    let label = format!("{prefix}-aes");
    let len: CK_ULONG = 32;
    let kind = ("CKO_SECRET_KEY", "CKK_AES");
    let id = [0x03u8];
    let mut t = [
        attr(CKA_TOKEN, &TRUE),
        attr(CKA_PRIVATE, &TRUE),
        attr(CKA_SENSITIVE, &TRUE),
        attr(CKA_ENCRYPT, &TRUE),
        attr(CKA_DECRYPT, &TRUE),
        attr(CKA_VALUE_LEN, &len),
        attr_bytes(CKA_LABEL, label.as_bytes()),
        attr_bytes(CKA_ID, &id),
    ];
    let mut key = 0;
    let mut m = mech(CKM_AES_KEY_GEN);
    call!(
        d,
        "AES: generate key",
        C_GenerateKey(s, &mut m, t.as_mut_ptr(), t.len() as CK_ULONG, &mut key)
    );
    if d.ok() {
        d.key(key, (kind.0, kind.1, &id), &label, true);
    } else if premade {
        match find_by_label(d, "AES: the premade key", s, &label)[..] {
            [found] => key = found,
            ref other => panic!("{} objects labelled {label}, not one", other.len()),
        }
        // As the provider's tool stored it (tpm2_ptool keeps --id=03 as the text "03").
        let id = read_attr(d, "AES: the premade key's id", s, key, CKA_ID).expect("CKA_ID");
        d.out(json!(hex(&id)));
        d.key(key, (kind.0, kind.1, &id), &label, false);
    } else {
        return None;
    }
    let mut iv = IV;
    let mut cbc = CK_MECHANISM {
        mechanism: CKM_AES_CBC,
        pParameter: iv.as_mut_ptr() as *mut c_void,
        ulParameterLen: iv.len() as CK_ULONG,
    };
    let mut plain = PLAINTEXT.to_vec();
    let mut ct = vec![0u8; PLAINTEXT.len()];
    let mut ct_len = ct.len() as CK_ULONG;
    call!(d, "AES: encrypt init", C_EncryptInit(s, &mut cbc, key));
    want_ok(d);
    call!(
        d,
        "AES: encrypt",
        C_Encrypt(
            s,
            plain.as_mut_ptr(),
            plain.len() as CK_ULONG,
            ct.as_mut_ptr(),
            &mut ct_len
        )
    );
    want_ok(d);
    ct.truncate(ct_len as usize);
    d.out(json!(ct.len()));
    call!(d, "AES: decrypt init", C_DecryptInit(s, &mut cbc, key));
    want_ok(d);
    let mut back_len: CK_ULONG = 0;
    call!(
        d,
        "AES: decrypt length query",
        C_Decrypt(s, ct.as_mut_ptr(), ct_len, null_mut(), &mut back_len)
    );
    want_ok(d);
    d.out(json!(back_len as u64));
    let mut back = vec![0u8; back_len as usize];
    call!(
        d,
        "AES: decrypt",
        C_Decrypt(s, ct.as_mut_ptr(), ct_len, back.as_mut_ptr(), &mut back_len)
    );
    want_ok(d);
    back.truncate(back_len as usize);
    assert_eq!(back, PLAINTEXT, "AES-CBC round trip");
    Some(key)
}

/// C_FindObjects by label: the objects that carry it (their number is the output compared).
fn find_by_label(
    d: &mut Driver,
    step: &str,
    s: CK_SESSION_HANDLE,
    label: &str,
) -> Vec<CK_OBJECT_HANDLE> {
    let mut t = [attr_bytes(CKA_LABEL, label.as_bytes())];
    call!(
        d,
        &format!("{step}: find init"),
        C_FindObjectsInit(s, t.as_mut_ptr(), 1)
    );
    want_ok(d);
    let mut found = [0 as CK_OBJECT_HANDLE; 8];
    let mut n: CK_ULONG = 0;
    call!(
        d,
        &format!("{step}: find"),
        C_FindObjects(s, found.as_mut_ptr(), found.len() as CK_ULONG, &mut n)
    );
    want_ok(d);
    d.out(json!(n as u64));
    call!(d, &format!("{step}: find final"), C_FindObjectsFinal(s));
    found[..n as usize].to_vec()
}

// =============================================================================================
// The parent's checks

pub fn calls_of(run: &Value) -> &Vec<Value> {
    run["calls"].as_array().expect("calls")
}

/// The calls whose step, function, return value or deterministic output differ between the
/// two runs, one line pair each.
pub fn differences(direct: &Value, through: &Value) -> Vec<String> {
    let strip = |v: &Value| -> Vec<Value> {
        calls_of(v)
            .iter()
            .map(|c| json!([c["step"], c["fn"], c["rv"], c["out"]]))
            .collect()
    };
    let (a, b) = (strip(direct), strip(through));
    let mut diffs: Vec<String> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("  direct {x}\n  shim   {y}"))
        .collect();
    if a.len() != b.len() {
        diffs.push(format!(
            "  {} calls direct, {} through the shim",
            a.len(),
            b.len()
        ));
    }
    diffs
}

/// The return value of `step` in `run`.
pub fn rv_of(run: &Value, step: &str) -> String {
    calls_of(run)
        .iter()
        .find(|c| c["step"] == step)
        .unwrap_or_else(|| panic!("no step {step}"))["rv"]
        .as_str()
        .expect("rv")
        .to_string()
}

/// DER: `tag`, its length, `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// DER INTEGER of an unsigned big-endian number.
fn der_uint(be: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = be.iter().copied().skip_while(|&b| b == 0).collect();
    if v.first().is_none_or(|&b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The DER SubjectPublicKeyInfo and DER signature OpenSSL needs for one of the driver's
/// signatures.
fn openssl_inputs(signature: &Value) -> (Vec<u8>, Vec<u8>) {
    let sig = unhex(signature["sig"].as_str().expect("sig"));
    match signature["kind"].as_str().expect("kind") {
        "ecdsa-p256-sha256" => {
            // CKA_EC_POINT is a DER OCTET STRING around the uncompressed point (X9.62); some
            // providers hand out the bare point.
            let point = unhex(signature["ec_point"].as_str().expect("point"));
            let point = match point.as_slice() {
                [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest.to_vec(),
                _ => point,
            };
            assert!(
                point.len() == 65 && point[0] == 0x04,
                "not an uncompressed P-256 point"
            );
            let id_ec = der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]);
            let algorithm = der(0x30, &[id_ec, crate::common::P256_OID.to_vec()].concat());
            let spki = der(
                0x30,
                &[algorithm, der(0x03, &[&[0u8][..], &point].concat())].concat(),
            );
            // CKM_ECDSA gives r || s (PKCS#11 §2.3.1); OpenSSL wants ECDSA-Sig-Value.
            assert_eq!(sig.len(), 64, "a P-256 signature is 64 bytes");
            let (r, s) = sig.split_at(32);
            (spki, der(0x30, &[der_uint(r), der_uint(s)].concat()))
        }
        "rsa-pkcs1-sha256" => {
            let n = unhex(signature["modulus"].as_str().expect("modulus"));
            let e = unhex(signature["exponent"].as_str().expect("exponent"));
            let rsa_encryption = der(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            );
            let algorithm = der(0x30, &[rsa_encryption, vec![0x05, 0x00]].concat());
            let key = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
            let spki = der(
                0x30,
                &[algorithm, der(0x03, &[&[0u8][..], &key].concat())].concat(),
            );
            (spki, sig)
        }
        other => panic!("unknown signature kind {other}"),
    }
}

/// Whether `openssl dgst -sha256 -verify` accepts `sig` over SIGNED with `spki`.
fn openssl_verifies(dir: &Path, name: &str, spki: &[u8], sig: &[u8]) -> bool {
    let (key, sig_file, data) = (
        dir.join(format!("{name}.pub.der")),
        dir.join(format!("{name}.sig")),
        dir.join(format!("{name}.data")),
    );
    std::fs::write(&key, spki).expect("write key");
    std::fs::write(&sig_file, sig).expect("write signature");
    std::fs::write(&data, SIGNED).expect("write data");
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-keyform", "DER", "-verify"])
        .arg(&key)
        .arg("-signature")
        .arg(&sig_file)
        .arg(&data)
        .output()
        .expect("run openssl");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK")
}

/// Checks every signature of `run` with OpenSSL (and that OpenSSL refuses it with one bit
/// flipped); returns the kinds checked.
pub fn check_signatures_with_openssl(run: &Value, dir: &Path, what: &str) -> Vec<String> {
    let mut kinds = Vec::new();
    for (i, signature) in run["signatures"]
        .as_array()
        .expect("signatures")
        .iter()
        .enumerate()
    {
        let kind = signature["kind"].as_str().expect("kind").to_string();
        let (spki, sig) = openssl_inputs(signature);
        let name = format!("{what}-{i}-{kind}");
        assert!(
            openssl_verifies(dir, &name, &spki, &sig),
            "OpenSSL does not verify the {kind} signature of {what}: {signature}"
        );
        let mut flipped = sig.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert!(
            !openssl_verifies(dir, &format!("{name}-flipped"), &spki, &flipped),
            "OpenSSL accepts a flipped {kind} signature of {what}"
        );
        kinds.push(kind);
    }
    kinds
}

/// What is wrong with how the shim's `records` name the keys of the run `through`: every key
/// it made must appear in the `created` of its C_GenerateKey(Pair) outcome and as the `key` of
/// the outcome of a call that used it, with class, key type, label and id.
pub fn key_naming_problems(records: &[Value], through: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let keys = through["keys"].as_array().expect("keys");
    if keys.is_empty() {
        problems.push("the run made no key".to_string());
    }
    let outcomes = outcomes_with_told_inits(records);
    let names = |identity: &Value, key: &Value| {
        ["handle", "class", "key_type", "label", "id"]
            .iter()
            .all(|k| identity[*k] == key[*k])
    };
    for key in keys {
        let created = key["generated"] == false
            || outcomes.iter().any(|r| {
                matches!(
                    r["fn"].as_str(),
                    Some("C_GenerateKey" | "C_GenerateKeyPair")
                ) && r["rv"] == "CKR_OK"
                    && r["created"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|i| names(i, key)))
            });
        if !created {
            problems.push(format!("no generate outcome names {key} in `created`"));
        }
        let used = outcomes.iter().any(|r| {
            matches!(
                r["fn"].as_str(),
                Some("C_SignInit" | "C_VerifyInit" | "C_EncryptInit" | "C_DecryptInit")
            ) && names(&r["key"], key)
        });
        if !used {
            problems.push(format!("no *Init outcome names {key} as its `key`"));
        }
    }
    problems
}

/// What the log must not contain: the PINs, the plaintext and the data signed.
pub fn secrets_in_log(log_text: &str) -> Vec<&'static str> {
    let text = log_text.to_lowercase();
    let mut found = Vec::new();
    for (what, s) in [
        ("the user PIN", USER_PIN.to_string()),
        ("the SO PIN", SO_PIN.to_string()),
        ("the wrong PIN", WRONG_PIN.to_string()),
        ("the user PIN (hex)", hex(USER_PIN.as_bytes())),
        ("the SO PIN (hex)", hex(SO_PIN.as_bytes())),
        (
            "the plaintext",
            String::from_utf8_lossy(&PLAINTEXT[..20]).into_owned(),
        ),
        ("the plaintext (hex)", hex(&PLAINTEXT[..12])),
        (
            "the signed data",
            String::from_utf8_lossy(&SIGNED[..20]).into_owned(),
        ),
        ("the signed data (hex)", hex(&SIGNED[..12])),
    ] {
        if text.contains(&s.to_lowercase()) {
            found.push(what);
        }
    }
    found
}

/// A provider that cannot run here: a failure under CI (CI=true), where every provider of the
/// matrix must run; otherwise a notice written past the test harness's capture, and the caller
/// skips.
pub fn unavailable(provider: &str, reason: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    assert!(!ci, "{provider} cannot run, and CI is set: {reason}");
    let notice = format!("\nNOTICE: {provider} tests skipped: {reason}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
}

/// The first of `programs` not on PATH.
pub fn missing_program(programs: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    programs
        .iter()
        .find(|p| !std::env::split_paths(&path).any(|d| d.join(p).is_file()))
        .map(|p| p.to_string())
}

/// For each call of `through` after C_Initialize, in order, the shim's outcome record of it
/// (same function and return value); a problem for each call without one. A length query (the
/// workload's steps named "... length query") has no record of its own when the next call of
/// the same function counts it (`len_queries`, FORMAT.md §6); one released on its own (another
/// call came first) is an outcome with `"out":"length_query"`.
pub fn unrecorded_calls(records: &[Value], through: &Value) -> Vec<String> {
    let outcomes: Vec<Value> = outcomes_with_told_inits(records)
        .into_iter()
        .filter(|r| r["fn"].is_string())
        .collect();
    let mut at = 0;
    let mut problems = Vec::new();
    let mut held: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for c in calls_of(through)
        .iter()
        .filter(|c| c["fn"] != "C_Initialize")
    {
        let function = c["fn"].as_str().unwrap_or_default().to_string();
        let length_query = c["rv"] == "CKR_OK"
            && c["step"]
                .as_str()
                .is_some_and(|s| s.ends_with("length query"));
        if length_query {
            *held.entry(function).or_default() += 1;
            continue;
        }
        loop {
            match outcomes[at..]
                .iter()
                .position(|r| r["fn"] == c["fn"] && r["rv"] == c["rv"])
            {
                Some(pos) => {
                    let r = &outcomes[at + pos];
                    at += pos + 1;
                    let waiting = held.get(&function).copied().unwrap_or(0);
                    if waiting > 0 && r["out"] == "length_query" {
                        held.insert(function.clone(), waiting - 1);
                        continue;
                    }
                    let counted = r["len_queries"].as_u64().unwrap_or(0);
                    if counted != waiting {
                        problems.push(format!(
                            "the outcome of {} counts {counted} length queries, not {waiting}",
                            c["step"]
                        ));
                    }
                    held.remove(&function);
                }
                None => problems.push(format!(
                    "no outcome record of {} ({} -> {})",
                    c["step"], c["fn"], c["rv"]
                )),
            }
            break;
        }
    }
    problems
}

/// Directories to remove when the test process exits (the runs live in statics, never dropped).
static AT_EXIT: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_at_exit_dirs() {
    if let Ok(dirs) = AT_EXIT.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Removes `dir` when the process exits.
pub fn remove_at_exit(dir: &Path) {
    let mut dirs = AT_EXIT.lock().expect("at-exit list");
    if dirs.is_empty() {
        // SAFETY: registers a plain extern "C" function with no arguments.
        unsafe { libc::atexit(remove_at_exit_dirs) };
    }
    dirs.push(dir.to_path_buf());
}

/// The message of a caught panic.
pub fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

// =============================================================================================
// The tests' shape: two runs per provider, and what each test asserts of them

/// A provider's two runs, made once per test process: directly and through the shim, whose log
/// is in `fx`.
pub struct Runs {
    pub fx: Fixture,
    pub direct: Value,
    pub through: Value,
}

/// Where a test binary keeps its provider's runs.
pub type RunsCell = OnceLock<Result<Option<Runs>, String>>;

/// The shim's configuration for a run through it: `provider` behind it, the log and key of `fx`.
pub fn shim_env(fx: &Fixture, provider: &str) -> Vec<(&'static str, std::ffi::OsString)> {
    vec![
        ("P11AUDIT_MODULE", provider.into()),
        ("P11AUDIT_LOG", fx.log.clone().into()),
        ("P11AUDIT_KEY_FILE", fx.key.clone().into()),
    ]
}

/// Runs the driver once.
pub type RunOnce = fn(fx: &Fixture, module: &Path, through_shim: bool, what: &str) -> Value;

/// The runs of `provider` (`module` directly, then the shim in front of it), made on first use;
/// None, after `unavailable`, when `unavailable_reason` gives a reason it cannot run here.
pub fn runs_once(
    cell: &'static RunsCell,
    provider: &str,
    module: &str,
    unavailable_reason: fn() -> Option<String>,
    run: RunOnce,
) -> Option<&'static Runs> {
    let r = cell.get_or_init(|| {
        if let Some(reason) = unavailable_reason() {
            unavailable(provider, &reason);
            return Ok(None);
        }
        let go = || {
            let fx = Fixture::new();
            remove_at_exit(fx.dir.path());
            let direct = run(&fx, Path::new(module), false, &format!("{provider}-direct"));
            let through = run(&fx, &shim_library(), true, &format!("{provider}-shim"));
            Runs {
                fx,
                direct,
                through,
            }
        };
        std::panic::catch_unwind(go)
            .map(Some)
            .map_err(|e| panic_text(&*e))
    });
    match r {
        Ok(r) => r.as_ref(),
        Err(e) => panic!("the {provider} runs failed:\n{e}"),
    }
}

/// Every call returned the same and gave the same deterministic output both ways.
#[track_caller]
pub fn assert_same_both_ways(runs: &Runs, provider: &str) {
    // C_GetInfo names p11audit through the shim (README, "Versions"): checked, then compared
    // without its library description and version.
    let (mut direct, mut through) = (runs.direct.clone(), runs.through.clone());
    crate::common::check_library_identity(&mut direct, &mut through);
    let diffs = differences(&direct, &through);
    assert!(
        diffs.is_empty(),
        "{provider} direct and through the shim differ:\n{}",
        diffs.join("\n")
    );
}

/// OpenSSL verifies every signature of both runs, and there is one of `kind` in each.
#[track_caller]
pub fn assert_signatures_verify(runs: &Runs, kind: &str) {
    for (what, run) in [("direct", &runs.direct), ("shim", &runs.through)] {
        let kinds = check_signatures_with_openssl(run, runs.fx.dir.path(), what);
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} signature checked in the {what} run: {kinds:?}"
        );
    }
}

/// The chain verifies (`p11audit verify`), every call has its outcome record, and the records
/// name the provider's keys.
#[track_caller]
pub fn assert_log_describes_run(runs: &Runs, provider: &str) {
    let records = check_chain(&runs.fx);
    let mut problems = unrecorded_calls(&records, &runs.through);
    problems.extend(key_naming_problems(&records, &runs.through));
    assert!(
        problems.is_empty(),
        "the log does not describe the {provider} run:\n{}",
        problems.join("\n")
    );
}

#[track_caller]
pub fn assert_no_secrets(runs: &Runs) {
    let text = std::fs::read_to_string(&runs.fx.log).expect("log");
    let found = secrets_in_log(&text);
    assert!(found.is_empty(), "in the log: {found:?}");
}
