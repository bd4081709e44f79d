//! Look-alike labels: keys whose labels print as copies of `eck` (a Cyrillic `е`,
//! a combining stroke, a braille blank, an ideographic or a no-break space, a Greek omicron in
//! `root`, an all-Cyrillic `сек`) are made through the built shim on real SoftHSM, next to a
//! key really named `eck`, and one of them is used. `p11audit show` and `p11audit report` must
//! print none of them so that it reads as its ASCII twin: the blank and combining characters
//! escaped as `\u{…}`, the Cyrillic and Greek letters marked with the scripts they are in. Their
//! `--json` output keeps the labels as they are: `show --json` is the log byte for byte, and
//! `report --json` carries each label's own text.

mod common;
use common::*;

use serde_json::Value;
use std::collections::BTreeSet;

const MARK: &str = "P11AUDIT-LOOKALIKE-RESULT ";
/// The key the others pass for.
const TWIN: &str = "eck";
/// Each look-alike label and how show and report must print it (quoted, as in a key's identity).
const LOOKALIKES: [(&str, &str); 7] = [
    // U+0435 CYRILLIC SMALL LETTER IE for the `e`.
    ("\u{435}ck", "\"\u{435}ck\" [mixed scripts: Latin+Cyrillic]"),
    // U+0336 COMBINING LONG STROKE OVERLAY on the `c`.
    ("ec\u{336}k", r#""ec\u{336}k""#),
    // U+2800 BRAILLE PATTERN BLANK, a symbol that prints blank.
    ("eck\u{2800}", r#""eck\u{2800}""#),
    // U+3000 IDEOGRAPHIC SPACE.
    ("eck\u{3000}", r#""eck\u{3000}""#),
    // U+00A0 NO-BREAK SPACE.
    ("eck\u{a0}", r#""eck\u{a0}""#),
    // U+03BF GREEK SMALL LETTER OMICRON for the first `o` of `root`.
    ("r\u{3bf}ot", "\"r\u{3bf}ot\" [mixed scripts: Latin+Greek]"),
    // All Cyrillic (U+0441 U+0435 U+043A), which prints like `cek`.
    (
        "\u{441}\u{435}\u{43a}",
        "\"\u{441}\u{435}\u{43a}\" [script: Cyrillic]",
    ),
];
/// Characters that must not reach a person's terminal as they are.
const NEVER_RAW: [char; 4] = ['\u{336}', '\u{2800}', '\u{3000}', '\u{a0}'];

// =============================================================================================
// The child

#[test]
fn lookalike_child() {
    if !is_role("lookalike") {
        return; // Only a re-executed child does anything.
    }
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::Attribute;
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let (p11, s) = cryptoki_rw_session();
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("login");
    let labels = std::iter::once(TWIN).chain(LOOKALIKES.iter().map(|(l, _)| *l));
    let mut keys = Vec::new();
    for label in labels {
        let key = s
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(false),
                    Attribute::ValueLen(16.into()),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Encrypt(true),
                ],
            )
            .unwrap_or_else(|e| panic!("generate AES key {label:?}: {e}"));
        keys.push(key);
    }
    // The Cyrillic look-alike is used: it is then named as the key of a call too.
    let ct = s
        .encrypt(&Mechanism::AesCbcPad([7; 16]), keys[1], b"for eck")
        .expect("encrypt with the look-alike");
    assert_eq!(ct.len(), 16);
    s.logout().expect("logout");
    s.close().expect("close session");
    p11.finalize().expect("C_Finalize");
    print_marked(MARK, &serde_json::json!({ "keys": keys.len() }));
}

// =============================================================================================
// The parent

/// Runs the child against a fresh token; the fixture whose log it wrote.
fn run_child() -> Fixture {
    let fx = Fixture::new();
    let mut env = fx.env();
    env.push(("P11AUDIT_TEST_MODULE", shim_library().into()));
    let done = run_child_ok(
        child_command("lookalike_child", ROLE_VAR, "lookalike", &env),
        fx.dir.path(),
        "lookalike child",
    );
    assert_eq!(
        done.marked_json(MARK, "lookalike child")["keys"],
        LOOKALIKES.len() + 1
    );
    fx.assert_verifies("the look-alike log");
    fx
}

/// `p11audit CMD --key-file KEY ARGS... LOG`, which must exit 0; its stdout.
#[track_caller]
fn stdout_of(fx: &Fixture, cmd: &str, args: &[&str]) -> Vec<u8> {
    let out = p11audit_on_log(cmd, &fx.key, args, &fx.log);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    out.stdout
}

/// Checks human output: each look-alike printed only as it must be, never bare; the twin bare.
#[track_caller]
fn assert_told_apart(out: &str, what: &str) {
    for (label, shown) in LOOKALIKES {
        assert!(
            out.contains(shown),
            "{what}: {label:?} is not shown as {shown}:\n{out}"
        );
        // The label's own text in quotes is printed only with the mark after it (or never,
        // when it is escaped).
        let bare = format!("\"{label}\"");
        let marked = if shown.starts_with(&bare) {
            out.matches(shown).count()
        } else {
            0
        };
        assert_eq!(
            out.matches(&bare).count(),
            marked,
            "{what}: {label:?} printed as it is:\n{out}"
        );
    }
    for c in NEVER_RAW {
        assert!(
            !out.contains(c),
            "{what}: U+{:04X} printed as it is:\n{out}",
            c as u32
        );
    }
    // The real `eck` is printed as it is, unmarked.
    assert!(
        out.contains("\"eck\" ") && !out.contains("\"eck\" ["),
        "{what}: the twin is not printed plainly:\n{out}"
    );
}

#[test]
fn lookalike_labels_are_escaped_and_marked_but_json_keeps_them() {
    let fx = run_child();
    let log = std::fs::read(&fx.log).unwrap();

    // The shim logged each label as it is (text, not hex).
    let records = fx.records();
    let created: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["fn"] == "C_GenerateKey" && r["ev"] == "outcome")
        .filter_map(|r| r["created"][0]["label"].as_str())
        .collect();
    for label in std::iter::once(TWIN).chain(LOOKALIKES.iter().map(|(l, _)| *l)) {
        assert!(created.contains(label), "{label:?} not logged: {created:?}");
    }

    // show: the C_GenerateKey lines name each key as created; C_EncryptInit names the
    // Cyrillic look-alike as its key.
    let show = String::from_utf8(stdout_of(&fx, "show", &[])).expect("UTF-8");
    assert_told_apart(&show, "show");
    let init = show
        .lines()
        .find(|l| l.contains("C_EncryptInit"))
        .unwrap_or_else(|| panic!("no C_EncryptInit line:\n{show}"));
    assert!(
        init.contains(&format!("key {}", LOOKALIKES[0].1)),
        "the used key is not marked: {init}"
    );

    // report: each key listed once under KEYS AND OBJECTS.
    let report = String::from_utf8(stdout_of(&fx, "report", &[])).expect("UTF-8");
    assert_told_apart(&report, "report");

    // show --json: the log, byte for byte.
    assert_eq!(
        stdout_of(&fx, "show", &["--json"]),
        log,
        "show --json is not the log"
    );
    let picked = String::from_utf8(stdout_of(
        &fx,
        "show",
        &["--json", "--key", LOOKALIKES[0].0],
    ))
    .expect("UTF-8");
    let log_text = String::from_utf8(log.clone()).unwrap();
    assert!(!picked.is_empty());
    for line in picked.lines() {
        assert!(
            log_text.lines().any(|l| l == line),
            "not a line of the log: {line}"
        );
    }

    // report --json: each label as its own text, with no escape or mark added.
    let json = String::from_utf8(stdout_of(&fx, "report", &["--json"])).expect("UTF-8");
    assert!(
        !json.contains("[mixed scripts") && !json.contains("[script:") && !json.contains("\\u{"),
        "human notation in the JSON:\n{json}"
    );
    let r: Value = serde_json::from_str(&json).expect("one JSON document");
    let labels: BTreeSet<&str> = r["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["key"]["label"].as_str())
        .collect();
    for (label, _) in LOOKALIKES {
        assert!(labels.contains(label), "{label:?} not in {labels:?}");
        // serde_json writes these characters as they are, not as \u escapes.
        assert!(
            json.contains(&format!("\"{label}\"")),
            "{label:?} not written as itself:\n{json}"
        );
    }
}
