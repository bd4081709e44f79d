//! `p11audit show` and `p11audit report` on a real log: SoftHSM driven through the built shim
//! by two child processes (this test binary re-executed, as in workflows.rs):
//!
//! - "worker": six logins with a wrong PIN (a burst), the right login, an EC key pair made and
//!   used for three signatures, an AES key with a hostile label made and destroyed, logout,
//!   close, finalize;
//! - "crasher": C_Initialize, a session, a wrong-PIN login whose outcome is still waiting when
//!   the process ends with `_exit` (no C_Finalize, no atexit): an intent without outcome and a
//!   process that attached and never closed.
//!
//! Both children run once per test process; every test reads the same log.

mod common;
use common::*;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Mutex, OnceLock};

const MARK: &str = "P11AUDIT-SHOW-REPORT-RESULT ";
const WRONG_PIN: &str = "Wrong-canary-Rt8";
const SIGN_LABEL: &str = "sr-sign";
const SIGN_ID: [u8; 2] = [0x5e, 0x01];
/// A label that would drive a terminal if printed raw: ESC, an OSC title, BEL, a C1 CSI.
const DOOMED_LABEL: &str = "sr-doomed\u{1b}]0;pwned\u{7}\u{9b}2J";
const WRONG_LOGINS: usize = 6;
const SIGNATURES: usize = 3;

// =============================================================================================
// The children

#[test]
fn show_report_child() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return; // Only a re-executed child does anything.
    };
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::Attribute;
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let (p11, s) = cryptoki_rw_session();
    let pin = |p: &str| AuthPin::new(p.into());
    print_marked(MARK, &serde_json::json!({ "pid": std::process::id() }));

    if role == "crasher" {
        let r = s.login(UserType::User, Some(&pin(WRONG_PIN)));
        assert!(r.is_err(), "the wrong PIN was accepted");
        // End now: the C_Login outcome (allowed to wait) is never written, nor a close.
        std::io::Write::flush(&mut std::io::stdout()).unwrap();
        // SAFETY: ends the process; nothing after this runs.
        unsafe { libc::_exit(0) };
    }

    for _ in 0..WRONG_LOGINS {
        let r = s.login(UserType::User, Some(&pin(WRONG_PIN)));
        assert!(r.is_err(), "the wrong PIN was accepted");
    }
    s.login(UserType::User, Some(&pin(USER_PIN)))
        .expect("login");
    let (_, private) = session_p256_pair(&s, SIGN_LABEL, &SIGN_ID);
    for i in 0..SIGNATURES {
        let digest = [i as u8; 32];
        let sig = s.sign(&Mechanism::Ecdsa, private, &digest).expect("sign");
        assert_eq!(sig.len(), 64);
    }
    let doomed = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(16.into()),
                Attribute::Label(DOOMED_LABEL.as_bytes().to_vec()),
                Attribute::Encrypt(true),
            ],
        )
        .expect("generate AES key");
    s.destroy_object(doomed).expect("destroy AES key");
    s.logout().expect("logout");
    s.close().expect("close session");
    p11.finalize().expect("C_Finalize");
}

// =============================================================================================
// The parent

struct Run {
    fx: Fixture,
    worker: u32,
    crasher: u32,
}

static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_temp_dirs() {
    if let Ok(dirs) = CLEANUP.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let fx = Fixture::new();
        CLEANUP.lock().unwrap().push(fx.dir.path().to_path_buf());
        // SAFETY: registers a plain extern "C" function with no arguments.
        unsafe { libc::atexit(remove_temp_dirs) };
        let mut env = fx.env();
        env.push(("P11AUDIT_TEST_MODULE", shim_library().into()));
        let child = |role: &str| {
            let done = run_with_timeout(
                child_command("show_report_child", ROLE_VAR, role, &env),
                fx.dir.path(),
                role,
            );
            assert!(done.status.success(), "{role} failed\n{}", done.dump());
            done.marked_json(MARK, role)["pid"].as_u64().unwrap() as u32
        };
        let worker = child("worker");
        let crasher = child("crasher");
        Run {
            fx,
            worker,
            crasher,
        }
    })
}

fn records() -> Vec<Value> {
    run().fx.records()
}

/// `p11audit CMD --key-file KEY ARGS... LOG`.
fn p11audit(cmd: &str, args: &[&str], log: &Path) -> Output {
    p11audit_on_log(cmd, &run().fx.key, args, log)
}

/// Runs p11audit on the shared log; it must exit with `status`. Returns stdout.
#[track_caller]
fn ok_run(cmd: &str, args: &[&str], status: i32) -> String {
    let out = p11audit(cmd, args, &run().fx.log);
    assert_eq!(out.status.code(), Some(status), "{}", output_text(&out));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The data lines of human `show` output (without the header).
fn show_lines(args: &[&str]) -> Vec<String> {
    let out = ok_run("show", args, 0);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("SEQ "), "{out}");
    lines.map(str::to_string).collect()
}

/// The seqs of the records `show --json ARGS` prints; each line must be a line of the log.
fn json_seqs(args: &[&str]) -> Vec<u64> {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = ok_run("show", &full, 0);
    let log = std::fs::read_to_string(&run().fx.log).unwrap();
    let log_lines: BTreeSet<&str> = log.lines().collect();
    out.lines()
        .map(|l| {
            assert!(log_lines.contains(l), "not a line of the log: {l}");
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// The calls of the workload's operations that a prepare call's outcome is joined with.
fn continues(init: &str, function: &str) -> bool {
    match init {
        "C_SignInit" => ["C_Sign", "C_SignUpdate", "C_SignFinal"].contains(&function),
        "C_VerifyInit" => ["C_Verify", "C_VerifyUpdate", "C_VerifyFinal"].contains(&function),
        "C_FindObjectsInit" => ["C_FindObjects", "C_FindObjectsFinal"].contains(&function),
        _ => false,
    }
}

/// The seqs of the calls (intent and outcome together, or a prepare outcome and the first call
/// of its operation in the same process and session) for which `pick(first, rec)` holds,
/// computed from the parsed log: what `show --json` must print.
fn expected_seqs(pick: impl Fn(&Value, Option<&Value>) -> bool) -> Vec<u64> {
    let recs = records();
    let by_seq = |s: u64| &recs[s as usize];
    let mut joined: BTreeSet<u64> = BTreeSet::new();
    let mut out = Vec::new();
    let mut pairs: Vec<(u64, &Value)> = Vec::new();
    for r in &recs {
        if let Some(i) = r.get("intent").and_then(Value::as_u64) {
            pairs.push((i, r));
        }
    }
    for (at, p) in recs.iter().enumerate() {
        let prepared = p["ev"] == "outcome"
            && p.get("intent").is_none()
            && p["rv"] == "CKR_OK"
            && p["fn"].as_str().is_some_and(|f| f.ends_with("Init"));
        if !prepared {
            continue;
        }
        let op = recs[at + 1..].iter().find(|r| {
            r["ev"] == "outcome"
                && r["pid"] == p["pid"]
                && r["session"] == p["session"]
                && continues(p["fn"].as_str().unwrap(), r["fn"].as_str().unwrap_or(""))
        });
        if let Some(op) = op {
            pairs.push((p["seq"].as_u64().unwrap(), op));
        }
    }
    for (i, r) in pairs {
        joined.insert(i);
        joined.insert(r["seq"].as_u64().unwrap());
        if pick(by_seq(i), Some(r)) {
            out.push(i);
            out.push(r["seq"].as_u64().unwrap());
        }
    }
    for r in &recs {
        let seq = r["seq"].as_u64().unwrap();
        if joined.contains(&seq) {
            continue;
        }
        let intent_only = r["ev"] == "intent";
        if (intent_only && pick(r, None)) || (!intent_only && pick(r, Some(r))) {
            out.push(seq);
        }
    }
    out.sort_unstable();
    out
}

fn names(v: &Value, label: &str) -> bool {
    let hit = |o: &Value| o["label"] == label;
    hit(&v["key"]) || hit(&v["key2"]) || v["created"].as_array().is_some_and(|c| c.iter().any(hit))
}

// =============================================================================================
// show

#[test]
fn sign_calls_show_mechanism_key_lengths_rv_and_duration() {
    let lines = show_lines(&["--fn", "C_SignInit", "--fn", "C_Sign"]);
    // Each sign is one line and one record: the C_Sign outcome, which tells its C_SignInit (a
    // prepare call) and counts the length query. Either name selects it.
    assert_eq!(lines.len(), SIGNATURES, "{lines:#?}");
    assert_eq!(show_lines(&["--fn", "C_SignInit"]), lines);
    let recs = records();
    for l in &lines {
        let seq = l.split_whitespace().next().unwrap();
        let o: usize = seq
            .parse()
            .unwrap_or_else(|_| panic!("not one record: {l}"));
        assert_eq!(recs[o]["fn"], "C_Sign");
        assert_eq!(recs[o]["init"]["fn"], "C_SignInit");
        assert_eq!(recs[o]["len_queries"], 1);
        // The line starts at the init.
        assert!(l.contains(recs[o]["init"]["ts"].as_str().unwrap()), "{l}");
        for want in [
            " C_Sign ",
            "after C_SignInit",
            "CKR_OK",
            "mech CKM_ECDSA",
            "key \"sr-sign\" id 5e01 (CKO_PRIVATE_KEY CKK_EC)",
            &format!(" {} ", run().worker),
            "user ",
            "in 32",
            "out 64",
            "(after 1 length query)",
        ] {
            assert!(l.contains(want), "no {want:?} in {l}");
        }
        // The duration is the C_Sign's.
        let dur = recs[o]["dur_us"].as_u64().unwrap();
        assert!(l.contains(&p11audit::reader::format_duration(dur)), "{l}");
    }
}

#[test]
fn filters_select_exactly_the_expected_records() {
    // A call is selected by its function, or for a prepare call joined with its operation's
    // first call or told in it, by either function.
    let is_fn = |f: &'static str| {
        move |first: &Value, rec: Option<&Value>| {
            first["fn"] == f || rec.is_some_and(|r| r["fn"] == f || r["init"]["fn"] == f)
        }
    };
    assert_eq!(
        json_seqs(&["--fn", "C_SignInit"]),
        expected_seqs(is_fn("C_SignInit"))
    );
    assert_eq!(
        json_seqs(&["--fn", "C_Sign"]),
        expected_seqs(is_fn("C_Sign"))
    );
    let logins = expected_seqs(is_fn("C_Login"));
    assert_eq!(json_seqs(&["--fn", "c_login"]), logins);
    // Six wrong logins by the worker, one by the crasher (whose outcome is missing).
    let wrong = expected_seqs(|_, o| o.is_some_and(|o| o["rv"] == "CKR_PIN_INCORRECT"));
    assert_eq!(wrong.len(), 2 * WRONG_LOGINS, "{wrong:?}");
    assert_eq!(json_seqs(&["--rv", "CKR_PIN_INCORRECT"]), wrong);
    assert_eq!(
        show_lines(&["--rv", "CKR_PIN_INCORRECT"]).len(),
        WRONG_LOGINS
    );

    let failures = expected_seqs(|_, o| match o {
        None => true,
        Some(o) => o["ev"] == "gap" || o.get("rv").is_some_and(|rv| rv != "CKR_OK"),
    });
    assert_eq!(json_seqs(&["--failures"]), failures);
    // The crasher's login intent is among them, shown as without outcome.
    let lines = show_lines(&["--failures", "--pid", &run().crasher.to_string()]);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("C_Login") && lines[0].contains("NO OUTCOME"),
        "{}",
        lines[0]
    );

    let by_key =
        expected_seqs(|f, o| names(f, SIGN_LABEL) || o.is_some_and(|o| names(o, SIGN_LABEL)));
    // The key pair's generation (intent and outcome), and each sign's record.
    assert_eq!(by_key.len(), SIGNATURES + 2, "{by_key:?}");
    assert_eq!(json_seqs(&["--key", SIGN_LABEL]), by_key);
    // The same calls by hex id (both keys of the pair carry it).
    assert_eq!(json_seqs(&["--key", "5E01"]), by_key);

    let crasher = run().crasher;
    let by_pid = expected_seqs(|f, _| f["pid"].as_u64() == Some(u64::from(crasher)));
    assert!(!by_pid.is_empty());
    assert_eq!(json_seqs(&["--pid", &crasher.to_string()]), by_pid);

    // Filters combine: the worker's failed logins only.
    let worker = run().worker;
    let both = expected_seqs(|f, o| {
        f["pid"].as_u64() == Some(u64::from(worker))
            && f["fn"] == "C_Login"
            && o.is_some_and(|o| o["rv"] != "CKR_OK")
    });
    assert_eq!(both.len(), 2 * WRONG_LOGINS);
    assert_eq!(
        json_seqs(&[
            "--pid",
            &worker.to_string(),
            "--fn",
            "C_Login",
            "--failures"
        ]),
        both
    );
    let uid = unsafe { libc::getuid() }.to_string();
    assert_eq!(json_seqs(&["--uid", &uid]).len(), records().len());
    assert!(json_seqs(&["--uid", "4242424"]).is_empty());
}

#[test]
fn time_filters() {
    let recs = records();
    let first = recs[0]["ts"].as_str().unwrap();
    let day = &first[..10];
    assert_eq!(
        json_seqs(&["--since", day, "--until", day]).len(),
        recs.len()
    );
    assert!(json_seqs(&["--until", "2000-01-01"]).is_empty());
    // From the worker's first sign on (its C_SignInit, which starts the call): no
    // C_Initialize of the worker.
    let sign = recs
        .iter()
        .find(|r| r["init"]["fn"] == "C_SignInit")
        .unwrap();
    let ts = sign["init"]["ts"].as_str().unwrap();
    let from = json_seqs(&["--since", ts]);
    assert!(from.contains(&sign["seq"].as_u64().unwrap()));
    assert!(!from.contains(&0));
    let out = p11audit("show", &["--since", "yesterday"], &run().fx.log);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
}

#[test]
fn json_lines_are_the_log_bytes_and_verify() {
    let fx = &run().fx;
    let out = p11audit("show", &["--json"], &fx.log);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(
        out.stdout,
        std::fs::read(&fx.log).unwrap(),
        "show --json is not the log"
    );
    let copy = fx.dir.path().join("shown.jsonl");
    std::fs::write(&copy, &out.stdout).unwrap();
    let v = p11audit_verify(&fx.key, &["--no-state"], &copy);
    // Intact, its end not checked (--no-state): exit 3.
    assert_eq!(v.status.code(), Some(3), "{}", output_text(&v));
    assert!(String::from_utf8_lossy(&out.stderr).contains("verified: chain intact"));

    // A selection: lines byte-identical to log lines, in log order.
    let seqs = json_seqs(&["--fn", "C_GenerateKeyPair"]);
    assert_eq!(seqs.len(), 2, "intent and outcome");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn hostile_label_is_escaped() {
    for out in [ok_run("show", &[], 0), ok_run("report", &[], 0)] {
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{9b}'));
        assert!(
            out.contains("sr-doomed\\x1b]0;pwned\\x07\\u{9b}2J"),
            "{out}"
        );
    }
    let json = ok_run("report", &["--json"], 0);
    assert!(!json.contains('\u{9b}') && json.contains("\\u009b"));
}

// =============================================================================================
// report

fn report_json(args: &[&str]) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    serde_json::from_str(&ok_run("report", &full, 0)).expect("one JSON document")
}

fn key<'a>(r: &'a Value, label: &str, class: &str) -> &'a Value {
    r["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"]["label"] == label && k["key"]["class"] == class)
        .unwrap_or_else(|| panic!("no {label} {class} in {:#}", r["keys"]))
}

#[test]
fn report_lists_keys_uses_and_lifecycle() {
    let r = report_json(&[]);
    assert_eq!(r["verification"]["intact"], true);
    assert_eq!(r["verification"]["state_checked"], true);
    assert_eq!(r["records"].as_u64(), Some(records().len() as u64));
    let exe = std::env::current_exe().unwrap();
    let uid = u64::from(unsafe { libc::getuid() });

    let k = key(&r, SIGN_LABEL, "CKO_PRIVATE_KEY");
    assert_eq!(k["key"]["id"]["hex"], "5e01");
    let sign = k["used_for"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["function"] == "C_Sign")
        .unwrap();
    assert_eq!(sign["mechanism"], "CKM_ECDSA");
    assert_eq!(sign["ok"].as_u64(), Some(SIGNATURES as u64));
    assert_eq!(sign["length_queries"].as_u64(), Some(SIGNATURES as u64));
    assert_eq!(sign["failed"].as_u64(), Some(0));
    let by = &k["used_by"][0];
    assert_eq!(by["uid"].as_u64(), Some(uid));
    assert_eq!(by["exe"], exe.to_str().unwrap());
    let life = &k["lifecycle"][0];
    assert_eq!(life["event"], "generated");
    assert_eq!(life["first"]["function"], "C_GenerateKeyPair");
    assert_eq!(life["first"]["pid"].as_u64(), Some(u64::from(run().worker)));
    // The public half was generated too, and never used for signing.
    let public = key(&r, SIGN_LABEL, "CKO_PUBLIC_KEY");
    assert_eq!(public["lifecycle"][0]["event"], "generated");

    let doomed = key(&r, DOOMED_LABEL, "CKO_SECRET_KEY");
    let events: Vec<&str> = doomed["lifecycle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["generated", "destroyed"]);
    assert_eq!(r["lifecycle_totals"]["destroyed"].as_u64(), Some(1));
    assert_eq!(r["lifecycle_totals"]["generated"].as_u64(), Some(3));

    let human = ok_run("report", &[], 0);
    assert!(human.starts_with("VERIFIED: chain intact"), "{human}");
    for want in [
        "\"sr-sign\" id 5e01 (CKO_PRIVATE_KEY CKK_EC)",
        "C_Sign",
        "length queries 3",
        &format!("uid {uid}"),
        "destroyed",
    ] {
        assert!(human.contains(want), "no {want:?} in:\n{human}");
    }
}

#[test]
fn report_counts_logins_bursts_sessions_and_unclean_closes() {
    let r = report_json(&[]);
    let (worker, crasher) = (u64::from(run().worker), u64::from(run().crasher));
    let l = &r["logins"];
    let user = l["per_user_type"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_type"] == "CKU_USER")
        .unwrap();
    assert_eq!(user["ok"].as_u64(), Some(1));
    // The crasher's failed login has no outcome: not counted as a result.
    assert_eq!(user["failed"].as_u64(), Some(WRONG_LOGINS as u64));
    assert_eq!(l["failed_total"].as_u64(), Some(WRONG_LOGINS as u64));
    assert_eq!(l["pin_locked"].as_u64(), Some(0));
    let f = &l["failed"][0];
    assert_eq!(f["rv"], "CKR_PIN_INCORRECT");
    assert_eq!(f["pid"].as_u64(), Some(worker));
    assert_eq!(f["count"].as_u64(), Some(WRONG_LOGINS as u64));
    // Six failures within a second: one burst from the pid, one from the uid.
    let bursts = l["bursts"].as_array().unwrap();
    assert_eq!(bursts.len(), 2, "{bursts:#?}");
    assert!(bursts
        .iter()
        .any(|b| b["by"] == "pid" && b["id"].as_u64() == Some(worker)));
    assert!(bursts
        .iter()
        .all(|b| b["failures"].as_u64() == Some(WRONG_LOGINS as u64)));

    let procs = r["processes"].as_array().unwrap();
    let p = |pid| {
        procs
            .iter()
            .find(|p| p["pid"].as_u64() == Some(pid))
            .unwrap()
    };
    assert_eq!(p(worker)["sessions_opened"].as_u64(), Some(1));
    assert_eq!(p(worker)["sessions_closed"].as_u64(), Some(1));
    assert_eq!(p(worker)["closed"].as_u64(), Some(1));
    assert_eq!(p(crasher)["sessions_opened"].as_u64(), Some(1));
    assert_eq!(p(crasher)["closed"].as_u64(), Some(0));

    let unclean = &r["unclean_closes"];
    assert_eq!(unclean["count"].as_u64(), Some(1));
    assert_eq!(unclean["list"][0]["pid"].as_u64(), Some(crasher));
    let w = &r["without_outcome"];
    assert_eq!(w["count"].as_u64(), Some(1));
    assert_eq!(w["list"][0]["function"], "C_Login");
    assert_eq!(w["list"][0]["pid"].as_u64(), Some(crasher));
    assert_eq!(r["gaps"]["count"].as_u64(), Some(0));

    let human = ok_run("report", &[], 0);
    for want in [
        "CKU_USER  ok 1  failed 6",
        "failed logins: 6; PIN locked (CKR_PIN_LOCKED): 0",
        "BURSTS",
        &format!("6 failed logins from pid {worker}"),
        "UNCLEAN CLOSES",
        &format!("pid {crasher}"),
        "CALLS WITHOUT OUTCOME",
    ] {
        assert!(human.contains(want), "no {want:?} in:\n{human}");
    }

    // A period before the log: nothing in it.
    let empty = report_json(&["--until", "2000-01-01"]);
    assert_eq!(empty["records"].as_u64(), Some(0));
    assert_eq!(empty["keys"].as_array().unwrap().len(), 0);
    assert_eq!(empty["verification"]["intact"], true);
}

// =============================================================================================
// A log that does not verify

#[test]
fn tampered_log_is_reported_as_not_verified() {
    let fx = &run().fx;
    let bytes = std::fs::read(&fx.log).unwrap();
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    let middle = lines.len() / 2;
    let mut tampered: Vec<u8> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let mut l = l.to_vec();
        if i == middle {
            let at = l.len() / 2;
            l[at] ^= 0x01;
        }
        tampered.extend_from_slice(&l);
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tampered.jsonl");
    std::fs::write(&log, &tampered).unwrap();
    std::fs::copy(fx.state(), dir.path().join("tampered.jsonl.state")).unwrap();

    let out = p11audit("report", &[], &log);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("NOT VERIFIED: the log did not verify: altered at ")
            && first.contains(&format!(":{} (seq {middle})", middle + 1)),
        "{text}"
    );
    assert!(
        text.contains(&format!("covers only the {middle} record(s)")),
        "{text}"
    );

    let out = p11audit("report", &["--json"], &log);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verification"]["intact"], false);
    assert_eq!(v["verification"]["problem"]["kind"], "altered");
    assert_eq!(v["records"].as_u64(), Some(middle as u64));

    let out = p11audit("show", &["--json"], &log);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did NOT verify: altered"), "{err}");
    // What was read before the problem is still shown, exactly.
    assert_eq!(out.stdout, lines[..middle].concat());
}
