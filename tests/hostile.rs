//! Hostile input: bytes from the application and the token that end up in records,
//! and `p11audit verify` run on a log an attacker controls.
//!
//! 1. Labels, ids, application names, token labels and the executable's own path with invalid
//!    UTF-8, quotes, backslashes, newlines, NUL, ESC and other C0/C1 control characters go
//!    through real SoftHSM and the shim: every line stays one valid JSON object, the chain
//!    verifies, and each value round-trips exactly (text decodes to the same string, bytes that
//!    are not UTF-8 appear as {"hex": ...} with the right hex).
//! 2. `p11audit verify` on a 50 MiB line, forged records full of terminal escape sequences,
//!    binary garbage, an empty file, a file of newlines, a line that never ends and a FIFO: no
//!    panic, bounded memory (measured with wait4's ru_maxrss), bounded time, no raw ESC or C1
//!    control in what it prints, and the exit status FORMAT.md §9 documents.
//!
//! The SoftHSM part runs in a child process (this test binary re-executed with
//! P11AUDIT_TEST_ROLE), driving the shim through `dlopen` and the raw function table. The child
//! is started through a hard link to this binary whose name is itself hostile, so the `exe`
//! member of every record carries ESC, a newline, a quote, a backslash and an invalid UTF-8 byte.

mod common;

use common::raw::{attr, attr_bytes, mech, ok, Module, FALSE, TRUE};
use common::*;
use cryptoki_sys as ck;
use p11audit::format::chain::{ChainKey, ZERO_MAC_HEX};
use p11audit::format::line::seal_into;
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

const CHILD: &str = "child";
const MARK: &str = "P11AUDIT-HOSTILE-RESULT ";
/// The shim for a child started from a path outside target/ (`shim_library` looks beside the
/// test binary).
const SHIM_VAR: &str = "P11AUDIT_TEST_SHIM";

// ---- the hostile values ---------------------------------------------------------------------

/// Valid UTF-8 full of what breaks JSON lines and terminals: quote, backslash, CR/LF, tab, NUL,
/// ESC sequences (CSI colour, OSC title), BEL, DEL, C1 controls (NEL, CSI), line/paragraph
/// separators, a bidi override, a BOM, non-ASCII letters and an emoji.
const TEXT_LABEL: &str = "lbl \"q\" back\\slash\nnew\rline\ttab\0nul\u{1b}[31mred\u{1b}]0;title\u{7}\u{7f}del\u{85}nel\u{9b}31mcsi\u{2028}\u{2029}\u{202e}rlo\u{feff}bom \u{e9} \u{6f22}\u{5b57} \u{1f600}";
const TEXT_APPLICATION: &str = "app\u{1}\u{2}\u{1f}\"\\/\u{1b}c";
/// The new label C_SetAttributeValue gives the first data object.
const TEXT_RELABEL: &str = "\u{2028}re\u{0}label\u{1b}[0m\"\\";
/// Not UTF-8: a lone 0xff and 0xfe, an overlong NUL, a UTF-16 surrogate, a code point past
/// U+10FFFF, mixed with ESC, NUL, quote, backslash and newline.
const BIN_LABEL: &[u8] = b"\xff\xfe\x00\x1b[2J\xc0\x80\xed\xa0\x80\"\\\n\xf4\x90\x80\x80end";
const BIN_APPLICATION: &[u8] = b"\x80\x81\n\x00\"";
/// The EC private key's label (not UTF-8) and id.
const BIN_KEY_LABEL: &[u8] = b"key\xff\x1b[1m\n\"\\\x00";
const KEY_ID: &[u8] = b"\x00\n\"\\\x1b\xff\x7f\x9b";

/// Every byte value once: the AES key's CKA_ID (256 bytes, the longest value that is logged).
fn all_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

/// 256 bytes of C0 controls (the longest logged value, each byte escaped as \u00XX in JSON).
fn long_control_label() -> Vec<u8> {
    (0..256).map(|i| (i % 31 + 1) as u8).collect()
}

/// 257 bytes: one past the logging cap, so the record holds its length only.
fn too_long_label() -> Vec<u8> {
    vec![0x1b; 257]
}

/// Token labels: 32 blank-padded bytes. The shim trims trailing blanks and NULs. SoftHSM keeps
/// a token label only up to its first NUL (and pads with NULs), so TOKEN_TEXT has none and
/// TOKEN_BIN has one: C_InitToken's record shows the whole argument, later records what
/// C_GetTokenInfo returns.
const TOKEN_TEXT: &[u8] = b"tok\"\\\n\x1b[1m\x07\x7f\xc2\x9b|\x01";
const TOKEN_BIN: &[u8] = b"\xff\xfetok\x1b\x00\"\\\xc0";

/// A blank-padded field as the shim writes it: trailing blanks and NULs removed.
fn trimmed(field: &[u8]) -> &[u8] {
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    &field[..end]
}

fn padded32(label: &[u8]) -> [u8; 32] {
    let mut out = [b' '; 32];
    out[..label.len()].copy_from_slice(label);
    out
}

/// What a value looks like in a record: text if UTF-8, else {"hex": ...}.
fn logged(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => json!(s),
        Err(_) => json!({ "hex": hex(bytes) }),
    }
}

fn logged_hex(bytes: &[u8]) -> Value {
    json!({ "hex": hex(bytes) })
}

/// A file name with ESC sequences, BEL, a newline, a quote, a backslash, a C1 CSI and a byte
/// that is not UTF-8.
fn hostile_file_name(stem: &str) -> std::ffi::OsString {
    let mut b = stem.as_bytes().to_vec();
    b.extend_from_slice(b"-\x1b[31m\x1b]0;t\x07\n\"\\\xc2\x9b2J\xff");
    std::ffi::OsStr::from_bytes(&b).to_owned()
}

// ---- the child ------------------------------------------------------------------------------

#[test]
fn child() {
    if std::env::var(ROLE_VAR).as_deref() != Ok("hostile") {
        return;
    }
    role_hostile();
}

fn shim_path() -> PathBuf {
    std::env::var_os(SHIM_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(shim_library)
}

/// C_InitToken on the first slot without an initialized token; returns the slot.
fn init_free_token(m: &Module, label: &[u8]) -> ck::CK_SLOT_ID {
    let mut n: ck::CK_ULONG = 0;
    // SAFETY: valid out-pointers throughout.
    unsafe {
        ok(
            (m.f.C_GetSlotList.unwrap())(FALSE, null_mut(), &mut n),
            "C_GetSlotList",
        );
        let mut slots = vec![0; n as usize];
        ok(
            (m.f.C_GetSlotList.unwrap())(FALSE, slots.as_mut_ptr(), &mut n),
            "C_GetSlotList",
        );
        for &slot in &slots[..n as usize] {
            let mut info: ck::CK_TOKEN_INFO = std::mem::zeroed();
            if (m.f.C_GetTokenInfo.unwrap())(slot, &mut info) != ck::CKR_OK
                || info.flags & ck::CKF_TOKEN_INITIALIZED != 0
            {
                continue;
            }
            let mut l = padded32(label);
            ok(
                (m.f.C_InitToken.unwrap())(
                    slot,
                    SO_PIN.as_ptr() as *mut _,
                    SO_PIN.len() as _,
                    l.as_mut_ptr(),
                ),
                "C_InitToken",
            );
            return slot;
        }
    }
    panic!("no free slot");
}

/// The label C_GetTokenInfo reports for `slot` (32 bytes).
fn token_label(m: &Module, slot: ck::CK_SLOT_ID) -> Vec<u8> {
    // SAFETY: plain data and a valid out-pointer.
    let mut info: ck::CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    ok(
        unsafe { (m.f.C_GetTokenInfo.unwrap())(slot, &mut info) },
        "C_GetTokenInfo",
    );
    info.label.to_vec()
}

/// The slot whose token is labelled `label` (the fixture's token: new tokens come and go).
fn slot_labelled(m: &Module, label: &[u8]) -> ck::CK_SLOT_ID {
    let mut n: ck::CK_ULONG = 0;
    // SAFETY: valid out-pointers throughout.
    unsafe {
        ok(
            (m.f.C_GetSlotList.unwrap())(TRUE, null_mut(), &mut n),
            "C_GetSlotList",
        );
        let mut slots = vec![0; n as usize];
        ok(
            (m.f.C_GetSlotList.unwrap())(TRUE, slots.as_mut_ptr(), &mut n),
            "C_GetSlotList",
        );
        for &slot in &slots[..n as usize] {
            let mut info: ck::CK_TOKEN_INFO = std::mem::zeroed();
            ok(
                (m.f.C_GetTokenInfo.unwrap())(slot, &mut info),
                "C_GetTokenInfo",
            );
            if info.label == padded32(label) {
                return slot;
            }
        }
    }
    panic!("no token labelled {}", String::from_utf8_lossy(label));
}

fn create(
    m: &Module,
    s: ck::CK_SESSION_HANDLE,
    tmpl: &mut [ck::CK_ATTRIBUTE],
) -> ck::CK_OBJECT_HANDLE {
    let mut h = 0;
    // SAFETY: a valid template and out-pointer.
    ok(
        unsafe { (m.f.C_CreateObject.unwrap())(s, tmpl.as_mut_ptr(), tmpl.len() as _, &mut h) },
        "C_CreateObject",
    );
    h
}

/// Reads CKA_LABEL and one more attribute (`second`) of `h`.
fn read_two(
    m: &Module,
    s: ck::CK_SESSION_HANDLE,
    h: ck::CK_OBJECT_HANDLE,
    second: ck::CK_ATTRIBUTE_TYPE,
) -> (Vec<u8>, Vec<u8>) {
    let mut a = vec![0u8; 300];
    let mut b = vec![0u8; 300];
    let mut tmpl = [attr_bytes(ck::CKA_LABEL, &a), attr_bytes(second, &b)];
    tmpl[0].pValue = a.as_mut_ptr() as *mut _;
    tmpl[1].pValue = b.as_mut_ptr() as *mut _;
    // SAFETY: buffers of the stated lengths.
    ok(
        unsafe { (m.f.C_GetAttributeValue.unwrap())(s, h, tmpl.as_mut_ptr(), 2) },
        "C_GetAttributeValue",
    );
    a.truncate(tmpl[0].ulValueLen as usize);
    b.truncate(tmpl[1].ulValueLen as usize);
    (a, b)
}

fn role_hostile() {
    let m = Module::load(&shim_path());
    m.initialize();
    let class_data: ck::CK_OBJECT_CLASS = ck::CKO_DATA;

    // Two new tokens with hostile labels, each used at once (a session: the shim fetches the
    // new label with C_GetTokenInfo). SoftHSM offers one free slot per C_Initialize, and gives
    // a token a new slot id when it rescans, hence the re-initialization in between.
    let slot_text = init_free_token(&m, TOKEN_TEXT);
    m.close(m.open_rw(slot_text));
    let label_text = token_label(&m, slot_text);
    m.finalize();
    m.initialize();
    let main_slot = slot_labelled(&m, b"p11audit-c-test");
    let slot_bin = init_free_token(&m, TOKEN_BIN);
    m.close(m.open_rw(slot_bin));
    let label_bin = token_label(&m, slot_bin);

    let s = m.open_rw(main_slot);
    let data_text = create(
        &m,
        s,
        &mut [
            attr(ck::CKA_CLASS, &class_data),
            attr(ck::CKA_TOKEN, &FALSE),
            attr(ck::CKA_PRIVATE, &FALSE),
            attr_bytes(ck::CKA_LABEL, TEXT_LABEL.as_bytes()),
            attr_bytes(ck::CKA_APPLICATION, TEXT_APPLICATION.as_bytes()),
        ],
    );
    let data_bin = create(
        &m,
        s,
        &mut [
            attr(ck::CKA_CLASS, &class_data),
            attr(ck::CKA_TOKEN, &FALSE),
            attr(ck::CKA_PRIVATE, &FALSE),
            attr_bytes(ck::CKA_LABEL, BIN_LABEL),
            attr_bytes(ck::CKA_APPLICATION, BIN_APPLICATION),
        ],
    );
    let long = long_control_label();
    let data_long = create(
        &m,
        s,
        &mut [
            attr(ck::CKA_CLASS, &class_data),
            attr(ck::CKA_TOKEN, &FALSE),
            attr(ck::CKA_PRIVATE, &FALSE),
            attr_bytes(ck::CKA_LABEL, &long),
        ],
    );
    let too_long = too_long_label();
    let data_too_long = create(
        &m,
        s,
        &mut [
            attr(ck::CKA_CLASS, &class_data),
            attr(ck::CKA_TOKEN, &FALSE),
            attr(ck::CKA_PRIVATE, &FALSE),
            attr_bytes(ck::CKA_LABEL, &too_long),
        ],
    );

    // An AES key whose CKA_ID holds every byte value.
    let id = all_bytes();
    let mut aes_mech = mech(ck::CKM_AES_KEY_GEN);
    let len: ck::CK_ULONG = 32;
    let mut tmpl = [
        attr(ck::CKA_TOKEN, &FALSE),
        attr(ck::CKA_PRIVATE, &FALSE),
        attr(ck::CKA_ENCRYPT, &TRUE),
        attr(ck::CKA_VALUE_LEN, &len),
        attr_bytes(ck::CKA_LABEL, TEXT_LABEL.as_bytes()),
        attr_bytes(ck::CKA_ID, &id),
    ];
    let mut aes = 0;
    // SAFETY: valid mechanism, template and out-pointer.
    ok(
        unsafe {
            (m.f.C_GenerateKey.unwrap())(
                s,
                &mut aes_mech,
                tmpl.as_mut_ptr(),
                tmpl.len() as _,
                &mut aes,
            )
        },
        "C_GenerateKey",
    );

    // An EC key pair whose private key has a label that is not UTF-8; sign with it.
    let mut ec_mech = mech(ck::CKM_EC_KEY_PAIR_GEN);
    let mut public = [
        attr(ck::CKA_TOKEN, &FALSE),
        attr_bytes(ck::CKA_EC_PARAMS, &P256_OID),
        attr(ck::CKA_VERIFY, &TRUE),
        attr_bytes(ck::CKA_LABEL, BIN_KEY_LABEL),
        attr_bytes(ck::CKA_ID, KEY_ID),
    ];
    let mut private = [
        attr(ck::CKA_TOKEN, &FALSE),
        attr(ck::CKA_PRIVATE, &FALSE),
        attr(ck::CKA_SENSITIVE, &TRUE),
        attr(ck::CKA_SIGN, &TRUE),
        attr_bytes(ck::CKA_LABEL, BIN_KEY_LABEL),
        attr_bytes(ck::CKA_ID, KEY_ID),
    ];
    let (mut ec_pub, mut ec_priv) = (0, 0);
    // SAFETY: valid mechanism, templates and out-pointers.
    ok(
        unsafe {
            (m.f.C_GenerateKeyPair.unwrap())(
                s,
                &mut ec_mech,
                public.as_mut_ptr(),
                public.len() as _,
                private.as_mut_ptr(),
                private.len() as _,
                &mut ec_pub,
                &mut ec_priv,
            )
        },
        "C_GenerateKeyPair",
    );
    let sig = m.sign_all(s, ec_priv, &[0x42; 32]);
    assert_eq!(sig.len(), 64);

    // Find the first data object by its label, read attributes back, relabel it.
    assert_eq!(
        m.count_labelled(s, TEXT_LABEL.as_bytes()),
        2,
        "the data object and the AES key"
    );
    let (l1, a1) = read_two(&m, s, data_text, ck::CKA_APPLICATION);
    assert_eq!(
        (l1.as_slice(), a1.as_slice()),
        (TEXT_LABEL.as_bytes(), TEXT_APPLICATION.as_bytes())
    );
    let (l2, a2) = read_two(&m, s, data_bin, ck::CKA_APPLICATION);
    assert_eq!((l2.as_slice(), a2.as_slice()), (BIN_LABEL, BIN_APPLICATION));
    let (l3, i3) = read_two(&m, s, aes, ck::CKA_ID);
    assert_eq!(
        (l3.as_slice(), i3.as_slice()),
        (TEXT_LABEL.as_bytes(), id.as_slice())
    );
    let (l4, i4) = read_two(&m, s, ec_priv, ck::CKA_ID);
    assert_eq!((l4.as_slice(), i4.as_slice()), (BIN_KEY_LABEL, KEY_ID));
    let mut relabel = [attr_bytes(ck::CKA_LABEL, TEXT_RELABEL.as_bytes())];
    // SAFETY: a valid template.
    ok(
        unsafe { (m.f.C_SetAttributeValue.unwrap())(s, data_text, relabel.as_mut_ptr(), 1) },
        "C_SetAttributeValue",
    );
    let (l5, _) = read_two(&m, s, data_text, ck::CKA_APPLICATION);
    assert_eq!(l5.as_slice(), TEXT_RELABEL.as_bytes());

    m.close(s);
    m.finalize();
    print_marked(
        MARK,
        &json!({
            "slot_text": slot_text, "slot_bin": slot_bin, "main_slot": main_slot,
            "label_text": hex(&label_text), "label_bin": hex(&label_bin),
            "data_text": data_text, "data_bin": data_bin, "data_long": data_long,
            "data_too_long": data_too_long, "aes": aes, "ec_priv": ec_priv,
        }),
    );
}

// ---- checking records -----------------------------------------------------------------------

/// The attribute `ty` of a record's `member` template.
fn template_attr<'a>(r: &'a Value, member: &str, ty: &str) -> Option<&'a Value> {
    r[member].as_array()?.iter().find(|a| a["type"] == ty)
}

fn find<'a>(records: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    records
        .iter()
        .find(|r| pred(r))
        .unwrap_or_else(|| panic!("no record: {what}"))
}

/// The outcome that names `intent`'s seq.
fn outcome_of<'a>(records: &'a [Value], intent: &Value) -> &'a Value {
    let seq = intent["seq"].as_u64().unwrap();
    find(records, "outcome of an intent", |r| {
        r["intent"].as_u64() == Some(seq)
    })
}

/// Hostile bytes in labels, ids, application names, token labels and the executable path go
/// through SoftHSM and the shim (create, generate, find, sign, read, relabel, init token,
/// open session). Every line of the log is one JSON object with no raw control byte, the chain
/// verifies, and every value round-trips exactly.
#[test]
fn hostile_bytes_round_trip_and_every_line_stays_json() {
    let fx = Fixture::new();
    let work = fx.dir.path();
    // A hard link to this test binary under a hostile name: the shim records it as `exe`.
    let exe_path = work.join(hostile_file_name("exe"));
    let me = std::env::current_exe().unwrap();
    if fs::hard_link(&me, &exe_path).is_err() {
        fs::copy(&me, &exe_path).unwrap();
    }
    let mut cmd = Command::new(&exe_path);
    // libtest panics on an argv[0] that is not UTF-8; the shim reads /proc/self/exe instead.
    cmd.arg0("hostile")
        .args([CHILD, "--exact", "--nocapture", "--test-threads=1"]);
    set_env(&mut cmd, &fx.env());
    cmd.env(ROLE_VAR, "hostile").env(SHIM_VAR, shim_library());
    let run = run_child_ok(cmd, work, "hostile child");
    assert!(run.p11audit_lines().is_empty(), "{}", run.dump());
    let h = run.marked_json(MARK, "hostile child");
    eprintln!("hostile child: {h}");

    // Every line: one JSON object, no raw control byte (JSON escapes all of them), valid UTF-8.
    let bytes = fs::read(&fx.log).unwrap();
    assert!(bytes.ends_with(b"\n"));
    for (i, line) in bytes[..bytes.len() - 1].split(|&b| b == b'\n').enumerate() {
        assert!(
            !line.iter().any(|&b| b < 0x20),
            "line {i} holds a raw control byte: {}",
            String::from_utf8_lossy(line)
        );
        let v: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "line {i} is not JSON ({e}): {}",
                String::from_utf8_lossy(line)
            )
        });
        assert!(v.is_object(), "line {i}");
    }
    let records = check_chain(&fx);

    // The executable path: not UTF-8, so written as hex of its exact bytes (written lossily,
    // U+FFFD for the byte 0xff, another program whose path has 0xfe there would look the same),
    // whole and on one line.
    let exe_bytes = exe_path.as_os_str().as_bytes();
    assert!(std::str::from_utf8(exe_bytes).is_err());
    assert!(
        records.iter().all(|r| r["exe"] == logged(exe_bytes)),
        "exe is {}, expected {}",
        records[0]["exe"],
        logged(exe_bytes)
    );

    // Token labels: in C_InitToken's intent (from the argument) and in later records of that
    // slot (from C_GetTokenInfo).
    let from_hex = |v: &Value| -> Vec<u8> {
        let t = v.as_str().unwrap();
        (0..t.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&t[i..i + 2], 16).unwrap())
            .collect()
    };
    for (slot, label, actual) in [
        (&h["slot_text"], TOKEN_TEXT, from_hex(&h["label_text"])),
        (&h["slot_bin"], TOKEN_BIN, from_hex(&h["label_bin"])),
    ] {
        let init = find(&records, "C_InitToken intent", |r| {
            r["ev"] == "intent" && r["fn"] == "C_InitToken" && r["slot"] == *slot
        });
        assert_eq!(
            init["token"]["label"],
            logged(label),
            "C_InitToken intent: {init}"
        );
        let open = find(&records, "C_OpenSession outcome on the new token", |r| {
            r["ev"] == "outcome" && r["fn"] == "C_OpenSession" && r["slot"] == *slot
        });
        assert_eq!(
            open["token"]["label"],
            logged(trimmed(&actual)),
            "C_OpenSession outcome: {open}"
        );
    }
    assert_eq!(
        trimmed(&from_hex(&h["label_text"])),
        TOKEN_TEXT,
        "SoftHSM kept the whole text label"
    );

    // Data objects: the intent's template and the created object's identity.
    let creates: Vec<&Value> = records
        .iter()
        .filter(|r| r["ev"] == "intent" && r["fn"] == "C_CreateObject")
        .collect();
    assert_eq!(creates.len(), 4);
    let cases: [(&Value, Value, Option<Value>); 4] = [
        (
            &h["data_text"],
            logged(TEXT_LABEL.as_bytes()),
            Some(logged(TEXT_APPLICATION.as_bytes())),
        ),
        (
            &h["data_bin"],
            logged_hex(BIN_LABEL),
            Some(logged_hex(BIN_APPLICATION)),
        ),
        (&h["data_long"], logged(&long_control_label()), None),
        (&h["data_too_long"], Value::Null, None),
    ];
    for (intent, (handle, label, app)) in creates.iter().zip(cases) {
        let l = template_attr(intent, "template", "CKA_LABEL").expect("CKA_LABEL in the template");
        if label.is_null() {
            assert_eq!(l["len"], 257, "{l}");
            assert!(
                l.get("value").is_none(),
                "a value over the cap was logged: {l}"
            );
        } else {
            assert_eq!(l["value"], label, "CKA_LABEL in {intent}");
            assert_eq!(l["len"], text_or_hex_len(&label));
        }
        if let Some(app) = app {
            assert_eq!(
                template_attr(intent, "template", "CKA_APPLICATION").unwrap()["value"],
                app
            );
        }
        let out = outcome_of(&records, intent);
        assert_eq!(out["created"][0]["handle"], *handle);
        // A label over the 256-byte cap is left out of the identity, not cut.
        let want = if label.is_null() {
            &Value::Null
        } else {
            &label
        };
        assert_eq!(
            out["created"][0]["label"], *want,
            "identity of the created object: {out}"
        );
    }

    // The AES key: CKA_ID with every byte value, always hex.
    let gen = find(&records, "C_GenerateKey intent", |r| {
        r["ev"] == "intent" && r["fn"] == "C_GenerateKey"
    });
    assert_eq!(
        template_attr(gen, "template", "CKA_ID").unwrap()["value"],
        logged_hex(&all_bytes())
    );
    assert_eq!(
        template_attr(gen, "template", "CKA_LABEL").unwrap()["value"],
        TEXT_LABEL
    );
    let created = &outcome_of(&records, gen)["created"][0];
    assert_eq!(created["id"], logged_hex(&all_bytes()));
    assert_eq!(created["label"], TEXT_LABEL);

    // The EC key: the private template, then the key's identity on SignInit and Sign.
    let pair = find(&records, "C_GenerateKeyPair intent", |r| {
        r["ev"] == "intent" && r["fn"] == "C_GenerateKeyPair"
    });
    assert_eq!(
        template_attr(pair, "template2", "CKA_LABEL").unwrap()["value"],
        logged_hex(BIN_KEY_LABEL)
    );
    assert_eq!(
        template_attr(pair, "template2", "CKA_ID").unwrap()["value"],
        logged_hex(KEY_ID)
    );
    // The C_Sign outcome tells its C_SignInit (`init`) and names the key it was given.
    let r = find(&records, "C_Sign telling C_SignInit", |r| {
        r["fn"] == "C_Sign" && r["init"]["fn"] == "C_SignInit" && r["key"]["handle"] == h["ec_priv"]
    });
    assert_eq!(r["key"]["label"], logged_hex(BIN_KEY_LABEL), "{r}");
    assert_eq!(r["key"]["id"], logged_hex(KEY_ID), "{r}");

    // Find by label; read back; relabel.
    // C_FindObjectsInit is a prepare call: the C_FindObjects outcome tells it, template included.
    let fo = find(
        &records,
        "C_FindObjects outcome telling C_FindObjectsInit",
        |r| r["fn"] == "C_FindObjects" && r["init"]["fn"] == "C_FindObjectsInit",
    );
    assert_eq!(
        template_attr(&fo["init"], "template", "CKA_LABEL").unwrap()["value"],
        TEXT_LABEL
    );
    let found: Vec<&Value> = fo["found"].as_array().unwrap().iter().collect();
    assert!(
        found.contains(&&h["data_text"]) && found.contains(&&h["aes"]),
        "{fo}"
    );
    let reads: Vec<&Value> = records
        .iter()
        .filter(|r| r["ev"] == "outcome" && r["fn"] == "C_GetAttributeValue")
        .collect();
    let read_of = |handle: &Value, nth: usize| -> &Value {
        reads
            .iter()
            .filter(|r| r["key"]["handle"] == *handle)
            .nth(nth)
            .unwrap_or_else(|| panic!("read {nth} of {handle}"))
    };
    let r = read_of(&h["data_text"], 0);
    assert_eq!(
        template_attr(r, "template", "CKA_LABEL").unwrap()["value"],
        TEXT_LABEL,
        "{r}"
    );
    assert_eq!(
        template_attr(r, "template", "CKA_APPLICATION").unwrap()["value"],
        TEXT_APPLICATION
    );
    assert_eq!(r["key"]["label"], TEXT_LABEL);
    let r = read_of(&h["data_bin"], 0);
    assert_eq!(
        template_attr(r, "template", "CKA_LABEL").unwrap()["value"],
        logged_hex(BIN_LABEL)
    );
    assert_eq!(
        template_attr(r, "template", "CKA_APPLICATION").unwrap()["value"],
        logged_hex(BIN_APPLICATION)
    );
    let r = read_of(&h["aes"], 0);
    assert_eq!(
        template_attr(r, "template", "CKA_ID").unwrap()["value"],
        logged_hex(&all_bytes())
    );
    let set = find(&records, "C_SetAttributeValue intent", |r| {
        r["ev"] == "intent" && r["fn"] == "C_SetAttributeValue"
    });
    assert_eq!(
        template_attr(set, "template", "CKA_LABEL").unwrap()["value"],
        TEXT_RELABEL
    );
    let r = read_of(&h["data_text"], 1);
    assert_eq!(
        template_attr(r, "template", "CKA_LABEL").unwrap()["value"],
        TEXT_RELABEL,
        "{r}"
    );
    assert_eq!(
        r["key"]["label"], TEXT_RELABEL,
        "the relabelled object's identity was refreshed: {r}"
    );

    // The human report prints the hostile exe, escaped, its byte that is not UTF-8 as \xff.
    let out = p11audit_verify(&fx.key, &[], &fx.log);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_no_terminal_controls(&out.stdout, "verify (human) of the hostile log");
    let shown = String::from_utf8_lossy(&out.stdout);
    for want in [r"exe-\x1b[31m", r"\u{9b}2J\xff"] {
        assert!(shown.contains(want), "{want} not in\n{}", output_text(&out));
    }
    assert!(!shown.contains('\u{fffd}'), "{}", output_text(&out));
}

/// How the `len` of an attribute whose value is `v` reads: the byte length.
fn text_or_hex_len(v: &Value) -> Value {
    match v {
        Value::String(s) => json!(s.len()),
        _ => json!(v["hex"].as_str().unwrap().len() / 2),
    }
}

// ---- verify on an attacker's log ------------------------------------------------------------

/// Fails if `out` holds ESC, another C0 control other than newline, DEL, or a C1 control
/// (U+0080..U+009F, which some terminals take as 8-bit escape sequences, e.g. U+009B = CSI).
#[track_caller]
fn assert_no_terminal_controls(out: &[u8], what: &str) {
    assert!(
        !out.contains(&0x1b),
        "{what}: raw ESC in the output:\n{}",
        String::from_utf8_lossy(out)
    );
    if let Some(b) = out.iter().find(|&&b| (b < 0x20 && b != b'\n') || b == 0x7f) {
        panic!(
            "{what}: raw control byte {b:#04x} in the output:\n{}",
            String::from_utf8_lossy(out)
        );
    }
    let text = String::from_utf8_lossy(out);
    if let Some(c) = text.chars().find(|c| ('\u{80}'..='\u{9f}').contains(c)) {
        panic!(
            "{what}: raw C1 control U+{:04X} in the output:\n{text}",
            c as u32
        );
    }
}

/// A key file, and records sealed under it (so verify reaches the fields it prints).
struct Forge {
    dir: tempfile::TempDir,
    key_file: PathBuf,
    key: ChainKey,
}

impl Forge {
    fn new() -> Forge {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("k0");
        keygen(&key_file);
        let key = ChainKey::from_hex_text(&fs::read_to_string(&key_file).unwrap()).unwrap();
        Forge { dir, key_file, key }
    }

    /// Sealed lines for `bodies` from seq 0, and the (seq, mac) to go on from.
    fn seal(&self, bodies: &[Value]) -> (Vec<u8>, String) {
        let mut k = self.key.clone();
        let mut prev = ZERO_MAC_HEX.to_string();
        let mut out = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            prev = seal_into(&mut out, &k, i as u64, &prev, &b.to_string());
            k.evolve();
        }
        (out, prev)
    }

    fn file(&self, name: impl AsRef<OsStr>, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name.as_ref());
        fs::write(&p, bytes).unwrap();
        p
    }
}

fn body(pid: u32, ev: &str, f: &str, exe: &str) -> Value {
    json!({
        "ts": "2026-11-26T03:12:45.000001Z", "host": "h", "pid": pid, "tid": 1, "uid": 0,
        "exe": exe, "ev": ev, "fn": f, "rv": "CKR_OK",
    })
}

/// What a verify run printed, how it ended, and its peak memory.
struct Measured {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    max_rss_kib: u64,
    took: Duration,
}

impl Measured {
    fn dump(&self) -> String {
        format!(
            "exit {:?}, max RSS {} KiB, {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code,
            self.max_rss_kib,
            self.took,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
}

/// Runs `p11audit verify --key-file KEY ARGS...` with its output in files, kills it after
/// `limit` (None), and returns its peak RSS in KiB.
///
/// The peak comes from GNU time (`/usr/bin/time -f %M`), which forks verify from its own small
/// process. Reading ru_maxrss of a child spawned from this test would be wrong: Linux carries
/// the spawning process's peak RSS over exec into the child's ru_maxrss, and this process holds
/// the 100 MiB of test files. Without /usr/bin/time, VmHWM is sampled from /proc while verify
/// runs (the last sample is a lower bound of the peak).
fn verify_measured(key: &Path, args: &[&OsStr], limit: Duration) -> Option<Measured> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let rss = tempfile::NamedTempFile::new().unwrap();
    let gnu_time = Path::new("/usr/bin/time").is_file();
    let mut cmd = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(rss.path())
            .arg(p11audit_bin());
        c
    } else {
        Command::new(p11audit_bin())
    };
    cmd.arg("verify")
        .arg("--key-file")
        .arg(key)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start p11audit verify");
    let status_file = format!("/proc/{}/status", child.id());
    let mut sampled_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if !gnu_time {
            if let Some(kib) = fs::read_to_string(&status_file).ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            }) {
                sampled_kib = kib;
            }
        }
        if started.elapsed() > limit {
            // SAFETY: the process group of our own child (time and verify).
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let stderr = fs::read_to_string(err.path()).unwrap_or_default();
    let max_rss_kib = if gnu_time {
        // GNU time writes "Command exited with non-zero status N" before the number.
        let text = fs::read_to_string(rss.path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.trim().parse().ok())
            .next_back()
            .unwrap_or_else(|| panic!("no RSS from /usr/bin/time: {text:?}"))
    } else {
        sampled_kib
    };
    // GNU time passes verify's exit status on, and exits 128+N if verify died of signal N.
    let code = match status.code() {
        Some(c) if gnu_time && c > 128 => None,
        c => c,
    };
    Some(Measured {
        code,
        stdout: fs::read(out.path()).unwrap(),
        stderr,
        max_rss_kib,
        took: started.elapsed(),
    })
}

#[track_caller]
fn assert_no_panic(m: &Measured, what: &str) {
    assert!(
        !m.stderr.contains("panicked"),
        "{what}: verify panicked\n{}",
        m.dump()
    );
    assert!(
        m.code.is_some(),
        "{what}: verify died from a signal\n{}",
        m.dump()
    );
}

const LINE_MIB: usize = 50;
/// verify's peak RSS on the 50 MiB line must stay below this: it keeps 1 MiB of a line at most.
const VERIFY_RSS_LIMIT_KIB: u64 = 16 * 1024;

/// A 50 MiB line (alone, without a newline; and between valid records), in human and JSON mode:
/// exit 1 with `malformed` (over the line cap) or `torn_last_line`, no panic, and a peak RSS far
/// below the line's size.
#[test]
fn verify_survives_a_50_mib_line_in_bounded_memory() {
    let f = Forge::new();
    let (lines, prev) = f.seal(&[
        body(1, "attach", "C_Initialize", "/bin/x"),
        body(1, "outcome", "C_GetInfo", "/bin/x"),
    ]);
    let mut giant = format!("{{\"v\":1,\"seq\":2,\"prev\":\"{prev}\",\"exe\":\"").into_bytes();
    giant.resize(giant.len() + (LINE_MIB << 20), b'A');
    giant.extend_from_slice(format!("\",\"mac\":\"{}\"}}", "0".repeat(64)).as_bytes());
    let mut middle = lines.clone();
    middle.extend_from_slice(&giant);
    middle.extend_from_slice(b"\n");
    middle.extend_from_slice(&lines);
    let alone = f.file("alone.log", &giant[..giant.len() - 3]);
    let middle = f.file("middle.log", &middle);
    for (log, kinds) in [
        (&alone, ["malformed", "torn_last_line"]),
        (&middle, ["malformed", "malformed"]),
    ] {
        for json_mode in [false, true] {
            let mut args: Vec<&OsStr> = vec![OsStr::new("--no-state")];
            if json_mode {
                args.push(OsStr::new("--json"));
            }
            args.push(log.as_os_str());
            let what = format!("{} (json: {json_mode})", log.display());
            let m = verify_measured(&f.key_file, &args, Duration::from_secs(30))
                .unwrap_or_else(|| panic!("{what}: verify took over 30 s"));
            eprintln!(
                "{what}: exit {:?}, max RSS {} KiB, {:?}",
                m.code, m.max_rss_kib, m.took
            );
            assert_no_panic(&m, &what);
            assert_eq!(m.code, Some(1), "{what}\n{}", m.dump());
            assert!(
                m.max_rss_kib < VERIFY_RSS_LIMIT_KIB,
                "{what}: verify's peak RSS was {} KiB for a {LINE_MIB} MiB line",
                m.max_rss_kib
            );
            let out = String::from_utf8_lossy(&m.stdout);
            assert!(
                kinds.iter().any(|k| out.contains(k)),
                "{what}\n{}",
                m.dump()
            );
            if json_mode {
                let v: Value = serde_json::from_slice(&m.stdout).unwrap();
                assert_eq!(v["summary"]["records"], if log == &middle { 2 } else { 0 });
            }
        }
    }
}

/// Forged records (sealed under the right key, so verify accepts and summarizes them) carry
/// ESC, CSI, OSC, BEL, DEL and C1 sequences in exe, fn, ev, rv, ts and host, and the log's own
/// file name is hostile. Neither the human report nor error messages print any of them raw;
/// the human report shows them escaped. Also: an altered line, and a missing state file with
/// a hostile name (exit 2).
#[test]
fn verify_prints_no_terminal_escapes_from_the_log() {
    let f = Forge::new();
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31m/usr/bin/evil\u{9b}31m\u{7f}\r\n";
    let bodies = vec![
        json!({"ts": "\u{1b}[2K2026", "host": "\u{1b}P+q\u{1b}\\", "pid": 7, "tid": 1, "uid": 0,
               "exe": evil, "ev": "attach", "fn": "C_Initialize"}),
        json!({"ts": "2026\u{9b}1A", "host": "h", "pid": 7, "tid": 1, "uid": 0,
               "exe": evil, "ev": "outcome\u{1b}[8m", "fn": "C_Sign\u{1b}[5m\u{9d}0;x\u{9c}", "rv": "CKR_OK\u{1b}[1A\u{85}"}),
    ];
    let (lines, _) = f.seal(&bodies);
    let log = f.file(hostile_file_name("log"), &lines);

    let human = verify_measured(
        &f.key_file,
        &[OsStr::new("--no-state"), log.as_os_str()],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_no_panic(&human, "human");
    assert_eq!(
        human.code,
        Some(3),
        "the forged chain is valid (its end not checked: --no-state)\n{}",
        human.dump()
    );
    assert_no_terminal_controls(&human.stdout, "verify (human)");
    let text = String::from_utf8_lossy(&human.stdout);
    for shown in [r"\x1b]0;pwned\x07", r"\u{9b}31m", "C_Sign", "outcome"] {
        assert!(text.contains(shown), "{shown:?} not in\n{text}");
    }

    // An altered line (one mac digit changed) and the state file of a hostile name missing.
    let mut altered = lines.clone();
    let at = altered.iter().position(|&b| b == b'\n').unwrap() - 3;
    altered[at] = if altered[at] == b'0' { b'1' } else { b'0' };
    let altered_log = f.file(hostile_file_name("altered"), &altered);
    let m = verify_measured(
        &f.key_file,
        &[OsStr::new("--no-state"), altered_log.as_os_str()],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_no_panic(&m, "altered");
    assert_eq!(m.code, Some(1), "{}", m.dump());
    assert_no_terminal_controls(&m.stdout, "verify (altered)");
    let missing_state = f.dir.path().join(hostile_file_name("state"));
    let m = verify_measured(
        &f.key_file,
        &[
            OsStr::new("--state"),
            missing_state.as_os_str(),
            log.as_os_str(),
        ],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(m.code, Some(2), "{}", m.dump());
    assert!(m.stderr.starts_with("p11audit: "), "{}", m.dump());
    assert_no_terminal_controls(m.stderr.as_bytes(), "verify's error message");
    let missing_log = f.dir.path().join(hostile_file_name("missing"));
    let m = verify_measured(
        &f.key_file,
        &[missing_log.as_os_str()],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(m.code, Some(2), "{}", m.dump());
    assert_no_terminal_controls(m.stderr.as_bytes(), "verify's error message");

    // JSON: no raw ESC (JSON escapes every C0 control).
    let json_out = verify_measured(
        &f.key_file,
        &[
            OsStr::new("--no-state"),
            OsStr::new("--json"),
            log.as_os_str(),
        ],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(json_out.code, Some(3), "{}", json_out.dump());
    assert!(
        !json_out.stdout.contains(&0x1b),
        "raw ESC in --json output\n{}",
        json_out.dump()
    );
    let v: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(
        v["summary"]["processes"][0]["exe"], evil,
        "the JSON report carries the exe exactly"
    );
}

/// The same forged log with --json: C1 controls (U+0080..U+009F) are valid in a JSON string,
/// so serde_json passes them through raw, and terminals that honour 8-bit controls in UTF-8
/// take U+009B as CSI. The report should escape them (\u009b) as it does C0 controls.
#[test]
fn verify_json_escapes_c1_controls() {
    let f = Forge::new();
    let (lines, _) = f.seal(&[body(
        7,
        "attach",
        "C_Initialize",
        "/bin/\u{9b}31mred\u{9d}0;t\u{9c}",
    )]);
    let log = f.file("c1.log", &lines);
    let m = verify_measured(
        &f.key_file,
        &[
            OsStr::new("--no-state"),
            OsStr::new("--json"),
            log.as_os_str(),
        ],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(m.code, Some(3), "{}", m.dump());
    assert_no_terminal_controls(&m.stdout, "verify --json");
}

/// Binary garbage, an empty file, a file of newlines, a line of NULs, a directory and a missing
/// file: exit 1 for content verify can read but not accept, 2 for what it cannot read, and for
/// an empty log exactly what FORMAT.md §9 and the README's Limits say: intact with no state,
/// its end not checked (exit 3: no records; a cut-off tail is only detectable with the state),
/// `truncated` with a state that names records. Never a panic.
#[test]
fn verify_reports_garbage_files_without_panicking() {
    let f = Forge::new();
    let mut garbage = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in garbage.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let (valid, _) = f.seal(&[body(1, "attach", "C_Initialize", "/bin/x")]);
    let mut valid_then_garbage = valid.clone();
    valid_then_garbage.extend_from_slice(&garbage[..4096]);
    let cases: Vec<(&str, PathBuf, i32)> = vec![
        ("binary garbage", f.file("garbage.log", &garbage), 1),
        (
            "a record, then garbage",
            f.file("tail.log", &valid_then_garbage),
            1,
        ),
        ("only newlines", f.file("newlines.log", &[b'\n'; 4096]), 1),
        ("one newline", f.file("newline.log", b"\n"), 1),
        ("NULs", f.file("nul.log", &[0u8; 4096]), 1),
        (
            "a directory without log files",
            {
                let d = f.dir.path().join("no-logs");
                std::fs::create_dir(&d).unwrap();
                std::fs::write(d.join("notes.txt"), b"not a record\n").unwrap();
                d
            },
            2,
        ),
        ("a missing file", f.dir.path().join("nope.log"), 2),
        ("empty, no state", f.file("empty.log", b""), 3),
    ];
    for (what, path, want) in cases {
        for json_mode in [false, true] {
            let mut args: Vec<&OsStr> = vec![OsStr::new("--no-state")];
            if json_mode {
                args.push(OsStr::new("--json"));
            }
            args.push(path.as_os_str());
            let m = verify_measured(&f.key_file, &args, Duration::from_secs(30))
                .unwrap_or_else(|| panic!("{what}: verify took over 30 s"));
            assert_no_panic(&m, what);
            assert_eq!(
                m.code,
                Some(want),
                "{what} (json: {json_mode})\n{}",
                m.dump()
            );
            assert_no_terminal_controls(&m.stdout, what);
            if want == 2 {
                assert!(m.stderr.starts_with("p11audit: "), "{what}\n{}", m.dump());
            } else if json_mode {
                let v: Value = serde_json::from_slice(&m.stdout)
                    .unwrap_or_else(|e| panic!("{what}: --json output is not JSON ({e})"));
                assert_eq!(v["intact"], want == 3, "{what}");
                assert_eq!(v["exit_status"], want, "{what}");
            }
        }
    }
    // An empty log next to a state that names a record: the tail was cut off. (A state built by
    // the library for the chain, with its key K_1, is one a writer would have written.)
    let mut st = p11audit::format::state::ChainState::genesis(f.key.clone(), 0, 0, 0);
    let mut sealed = Vec::new();
    st.prev_mac = seal_into(
        &mut sealed,
        &st.key,
        0,
        ZERO_MAC_HEX,
        &body(1, "attach", "C_Initialize", "/bin/x").to_string(),
    );
    st.key.evolve();
    st.next_seq = 1;
    let empty = f.file("emptied.log", b"");
    f.file(
        "emptied.log.state",
        &p11audit::format::state::encode_file(Some(&st)),
    );
    let m = verify_measured(
        &f.key_file,
        &[OsStr::new("--json"), empty.as_os_str()],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_no_panic(&m, "emptied");
    assert_eq!(m.code, Some(1), "{}", m.dump());
    let v: Value = serde_json::from_slice(&m.stdout).unwrap();
    assert_eq!(v["problem"]["kind"], "truncated", "{}", m.dump());
}

/// A line that never ends: a sparse 64 GiB file without a newline (it takes no disk space), and
/// a symbolic link to /dev/zero. verify keeps at most 1 MiB of a line, and stops at the first
/// problem anyway, so it should report the line as over the limit as soon as it has read past
/// the limit, not read on to its end: within seconds, exit 1.
#[test]
fn verify_gives_up_on_an_endless_line_quickly() {
    let f = Forge::new();
    let sparse = f.dir.path().join("sparse.log");
    fs::File::create(&sparse)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let zero = f.dir.path().join("zero.log");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    // The sparse file is a regular file with an endless first line: a problem (exit 1). The
    // device behind the symlink is not a regular file at all: refused like a FIFO (exit 2).
    for (log, code) in [(&sparse, 1), (&zero, 2)] {
        let m = verify_measured(
            &f.key_file,
            &[OsStr::new("--no-state"), log.as_os_str()],
            Duration::from_secs(15),
        )
        .unwrap_or_else(|| panic!("{}: verify did not finish within 15 s", log.display()));
        assert_no_panic(&m, "endless line");
        assert_eq!(m.code, Some(code), "{}", m.dump());
    }
}

/// A FIFO in place of the log: verify must not block forever in open() waiting for a writer
/// (the writer refuses anything but a regular file; verify should too, with exit 2).
#[test]
fn verify_refuses_a_fifo_instead_of_blocking() {
    let f = Forge::new();
    let fifo = f.dir.path().join("fifo.log");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let m = verify_measured(
        &f.key_file,
        &[OsStr::new("--no-state"), fifo.as_os_str()],
        Duration::from_secs(10),
    )
    .expect("verify blocked on the FIFO for 10 s");
    assert_no_panic(&m, "fifo");
    assert_eq!(m.code, Some(2), "{}", m.dump());
}

/// The state file beside the log gets the guards the log gets: a FIFO must not block verify, a
/// symbolic link (to /dev/zero, which never ends, or even to a valid state file) is not
/// followed, and a regular file longer than a state file is not read to its end. Each is a bad
/// state file: exit 2, within seconds, naming the state file.
#[test]
fn verify_refuses_a_state_file_that_is_not_a_bounded_regular_file() {
    let f = Forge::new();
    let (sealed, _) = f.seal(&[body(1, "attach", "C_Initialize", "/bin/x")]);
    let valid_state = f.file("valid.state", &p11audit::format::state::encode_file(None));

    let fifo_log = f.file("fifo.log", &sealed);
    let fifo = f.dir.path().join("fifo.log.state");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

    let zero_log = f.file("zero.log", &sealed);
    std::os::unix::fs::symlink("/dev/zero", f.dir.path().join("zero.log.state")).unwrap();

    let link_log = f.file("link.log", &sealed);
    std::os::unix::fs::symlink(&valid_state, f.dir.path().join("link.log.state")).unwrap();

    let dangling_log = f.file("dangling.log", &sealed);
    std::os::unix::fs::symlink("/nonexistent", f.dir.path().join("dangling.log.state")).unwrap();

    let long_log = f.file("long.log", &sealed);
    let mut long = p11audit::format::state::encode_file(None);
    long.resize(64 << 20, 0);
    f.file("long.log.state", &long);
    drop(long);

    for (log, why) in [
        (&fifo_log, "not a regular file"),
        (&zero_log, "a symbolic link"),
        (&link_log, "a symbolic link"),
        (&dangling_log, "a symbolic link"),
        (&long_log, "longer than a state file (4096 bytes)"),
    ] {
        let m = verify_measured(&f.key_file, &[log.as_os_str()], Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{}: verify did not finish within 10 s", log.display()));
        assert_no_panic(&m, "state file");
        assert_eq!(m.code, Some(2), "{}", m.dump());
        assert!(
            m.stderr.contains(".log.state: ") && m.stderr.contains(why),
            "{}",
            m.dump()
        );
        // Well under 64 MiB: the long file was not read to its end.
        assert!(m.max_rss_kib < 32 << 10, "{}", m.dump());
    }
}
