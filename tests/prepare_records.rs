//! The records of an operation started by a prepare call (docs/FORMAT.md §5), through the built
//! shim in front of SoftHSM: a single-part ECDSA sign with its length query is one record, the
//! `C_Sign` outcome that tells the `C_SignInit` (`init`) and counts the length query; an init or
//! a length query that no outcome of its operation or function follows gets its own record, also
//! when the process exits without `C_Finalize`, and so does an init whose sign finds the token's
//! login changed; `show` shows the `C_SignInit` with its `C_Sign`
//! and `report` counts the inits and length queries either way.

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
    // 3. A search ended before any result was asked for: the final tells its init.
    // SAFETY: an empty template (NULL, 0) and a session of this module.
    unsafe {
        ok(
            (shim.f.C_FindObjectsInit.unwrap())(s, std::ptr::null_mut(), 0),
            "C_FindObjectsInit",
        );
        ok(
            (shim.f.C_FindObjectsFinal.unwrap())(s),
            "C_FindObjectsFinal",
        );
    }
    // 4. The token is logged out (through another session) between the init and the sign: the
    //    sign's record would name another login state, so the init gets its own record.
    let other = shim.open_rw(shim.first_slot());
    ok(shim.login(s), "C_Login");
    ok(shim.sign_init(s, priv_key), "C_SignInit");
    shim.logout(other);
    let (rv, _) = shim.sign(s, &data, Some(&mut sig));
    print_marked("LOGGED_OUT_SIGN=", &rv);
    // 5. A length query, then the process exits.
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
    if let Some(init) = r["init"]["fn"].as_str() {
        s.push_str(&format!(" init={init}"));
    }
    s
}

#[test]
fn a_sign_is_one_record_and_inits_and_length_queries_are_told_or_kept() {
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
                Some(
                    "C_SignInit"
                        | "C_Sign"
                        | "C_GetSessionInfo"
                        | "C_FindObjectsInit"
                        | "C_FindObjectsFinal"
                )
            )
        })
        .map(|(r, l)| (brief(r), l.len() + 1))
        .collect();
    let briefs: Vec<&str> = sign_path.iter().map(|(b, _)| b.as_str()).collect();
    // What SoftHSM answers a sign with a private key once the token is logged out.
    let logged_out_rv: u64 = run
        .marked_json("LOGGED_OUT_SIGN=", "the logged-out sign's rv")
        .as_u64()
        .unwrap();
    let logged_out_sign = if logged_out_rv == 0 {
        "outcome C_Sign out=\"returned\"".to_string()
    } else {
        "outcome C_Sign".to_string()
    };
    assert_eq!(
        briefs,
        [
            // 1. One record: the result, telling the init and counting the length query.
            "outcome C_Sign out=\"returned\" len_queries=1 init=C_SignInit",
            // 2. Another function came first: the init and the length query have their own
            //    records.
            "outcome C_SignInit",
            "outcome C_Sign out=\"length_query\"",
            "outcome C_GetSessionInfo",
            "outcome C_Sign out=\"returned\"",
            // 3. The search's final tells its init.
            "outcome C_FindObjectsFinal init=C_FindObjectsInit",
            // 4. The login changed between the init and the sign.
            "outcome C_SignInit",
            logged_out_sign.as_str(),
            // 5. At exit, without C_Finalize.
            "outcome C_SignInit",
            "outcome C_Sign out=\"length_query\"",
        ],
        "{text}"
    );
    // The first sign's record names the key and mechanism the init was given, as the inits
    // with records of their own do (the same key each time), and the init's own time and
    // duration.
    let sign = records.iter().find(|r| r["fn"] == "C_Sign").unwrap();
    let init = records.iter().find(|r| r["fn"] == "C_SignInit").unwrap();
    assert_eq!(init["key"], sign["key"], "{text}");
    assert_eq!(init["mechanism"], sign["mechanism"], "{text}");
    assert_eq!(sign["key"]["class"], "CKO_PRIVATE_KEY", "{text}");
    let told = &sign["init"];
    assert!(
        told["ts"].as_str().unwrap() <= sign["ts"].as_str().unwrap(),
        "{told}"
    );
    assert!(told["dur_us"].is_u64(), "{told}");
    assert!(told.get("tid").is_none(), "the same thread: {told}");
    eprintln!(
        "one ECDSA sign with its length query: 1 record, {} bytes",
        sign_path[0].1
    );

    // show: the init shown with its operation's call, at the init's time.
    let show = p11audit_on_log("show", &fx.key, &[], &fx.log);
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    let seq = sign["seq"].as_u64().unwrap().to_string();
    let line = show
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&seq))
        .unwrap_or_else(|| panic!("no line {seq} in:\n{show}"));
    assert!(line.contains(told["ts"].as_str().unwrap()), "{line}");
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
    // ... one line for each of the four signs, the one whose operation never returned a result
    // with its length query.
    assert_eq!(
        show.lines()
            .filter(|l| l.contains("after C_SignInit"))
            .count(),
        4,
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
    let signed = if logged_out_rv == 0 { 3 } else { 2 };
    assert_eq!(sign_use["ok"], signed, "{sign_use}");
    // Four inits, one told in a C_Sign outcome and three with records of their own.
    let init_use = uses
        .iter()
        .find(|u| u["function"] == "C_SignInit")
        .unwrap_or_else(|| panic!("no C_SignInit use in {report}"));
    assert_eq!(init_use["ok"], 4, "{init_use}");
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
