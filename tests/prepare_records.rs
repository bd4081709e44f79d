//! The records of an operation started by a prepare call (docs/FORMAT.md §5), through the built
//! shim in front of SoftHSM: a single-part ECDSA sign with its length query is two records, the
//! `C_SignInit` outcome (no intent) and the `C_Sign` outcome that counts the length query; a
//! length query that no outcome of its function follows gets its own record, also when the
//! process exits without `C_Finalize`; `show` joins the `C_SignInit` outcome with its `C_Sign`
//! and `report` counts the length queries either way.

mod common;

use common::raw::{ok, Module};
use common::*;
use serde_json::Value;

const ROLE: &str = "child_signs";

/// The child: three signs on one session, then an exit without C_Finalize.
#[test]
fn child_signs() {
    if !is_role(ROLE) {
        return;
    }
    let shim = Module::shim();
    shim.initialize();
    let s = shim.open_rw(shim.first_slot());
    let (_, priv_key) = shim.generate_ec(s);
    let data = [0x3cu8; 32];
    // 1. SignInit, C_Sign(NULL), C_Sign.
    assert_eq!(shim.sign_all(s, priv_key, &data).len(), 64);
    // 2. The length query is followed by another function in the session first.
    ok(shim.sign_init(s, priv_key), "C_SignInit");
    let (rv, need) = shim.sign(s, &data, None);
    ok(rv, "C_Sign (length)");
    ok(shim.session_state(s).0, "C_GetSessionInfo");
    let mut sig = vec![0u8; need as usize];
    ok(shim.sign(s, &data, Some(&mut sig)).0, "C_Sign");
    // 3. A length query, then the process exits.
    ok(shim.sign_init(s, priv_key), "C_SignInit");
    ok(shim.sign(s, &data, None).0, "C_Sign (length)");
    print_marked("SIGNED=", &"true");
}

/// `ev fn` and the members that tell how a call was recorded.
fn brief(r: &Value) -> String {
    let mut s = format!(
        "{} {}",
        r["ev"].as_str().unwrap(),
        r["fn"].as_str().unwrap_or("-")
    );
    for member in ["intent", "out", "len_queries"] {
        if let Some(v) = r.get(member) {
            s.push_str(&format!(" {member}={v}"));
        }
    }
    s
}

#[test]
fn a_sign_is_two_records_and_length_queries_are_counted_or_kept() {
    if is_role(ROLE) {
        return;
    }
    let fx = Fixture::new();
    let run = run_child_ok(
        child_command(ROLE, ROLE_VAR, ROLE, &fx.env()),
        fx.dir.path(),
        "signing child",
    );
    assert!(run.stdout.contains("SIGNED=true"), "{}", run.dump());
    fx.assert_verifies("the signing child's log");
    let text = std::fs::read_to_string(&fx.log).unwrap();
    let records = parse_records(&text);
    let lines: Vec<&str> = text.lines().collect();
    let sign_path: Vec<(String, usize)> = records
        .iter()
        .zip(&lines)
        .filter(|(r, _)| {
            matches!(
                r["fn"].as_str(),
                Some("C_SignInit" | "C_Sign" | "C_GetSessionInfo")
            )
        })
        .map(|(r, l)| (brief(r), l.len() + 1))
        .collect();
    let briefs: Vec<&str> = sign_path.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(
        briefs,
        [
            // 1. Two records: the prepare outcome, and the result counting the length query.
            "outcome C_SignInit",
            "outcome C_Sign out=\"returned\" len_queries=1",
            // 2. Another function came first: the length query has its own record.
            "outcome C_SignInit",
            "outcome C_Sign out=\"length_query\"",
            "outcome C_GetSessionInfo",
            "outcome C_Sign out=\"returned\"",
            // 3. At exit, without C_Finalize.
            "outcome C_SignInit",
            "outcome C_Sign out=\"length_query\"",
        ],
        "{text}"
    );
    // The first sign's two records follow each other (one write), and name the same key.
    let first_init = records
        .iter()
        .position(|r| r["fn"] == "C_SignInit")
        .unwrap();
    let (init, sign) = (&records[first_init], &records[first_init + 1]);
    assert_eq!(sign["fn"], "C_Sign", "{text}");
    assert_eq!(init["key"], sign["key"], "{text}");
    assert_eq!(init["mechanism"], sign["mechanism"], "{text}");
    eprintln!(
        "one ECDSA sign with its length query: 2 records, {} bytes",
        sign_path[0].1 + sign_path[1].1
    );

    // show: the prepare outcome joined with its operation's call.
    let show = p11audit_on_log("show", &fx.key, &[], &fx.log);
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    let joined = format!(
        "{}>{}",
        init["seq"].as_u64().unwrap(),
        sign["seq"].as_u64().unwrap()
    );
    let line = show
        .lines()
        .find(|l| l.starts_with(&joined))
        .unwrap_or_else(|| panic!("no line {joined} in:\n{show}"));
    assert!(
        line.contains("C_Sign ") && line.contains("after C_SignInit"),
        "{line}"
    );
    assert!(line.contains("(after 1 length query)"), "{line}");
    // Every C_SignInit is joined: none is shown on its own line...
    assert_eq!(
        show.lines().filter(|l| l.contains("C_SignInit")).count(),
        show.lines()
            .filter(|l| l.contains("after C_SignInit"))
            .count(),
        "a C_SignInit shown on its own:\n{show}"
    );
    // ... and the one whose operation never returned a result is shown with its length query.
    assert_eq!(
        show.lines()
            .filter(|l| l.contains("after C_SignInit"))
            .count(),
        3,
        "{show}"
    );

    // report: three length queries of C_Sign with the key, whichever way each was written.
    let report = p11audit_on_log("report", &fx.key, &["--json"], &fx.log);
    let report: Value = serde_json::from_slice(&report.stdout).expect("report --json");
    let mut uses = Vec::new();
    collect_uses(&report, &mut uses);
    let sign_use = uses
        .iter()
        .find(|u| u["function"] == "C_Sign")
        .unwrap_or_else(|| panic!("no C_Sign use in {report}"));
    assert_eq!(sign_use["length_queries"], 3, "{sign_use}");
    assert_eq!(sign_use["ok"], 2, "{sign_use}");
}

/// Every object with a `length_queries` member (the report's key uses).
fn collect_uses<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if m.contains_key("length_queries") {
                out.push(v);
            }
            m.values().for_each(|x| collect_uses(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_uses(x, out)),
        _ => {}
    }
}
