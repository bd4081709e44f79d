//! `p11audit verify` and `p11audit keygen`, run as a program.

use p11audit::format::chain::{ChainKey, ZERO_MAC_HEX};
use p11audit::format::line::seal_into;
use p11audit::format::state::ChainState;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const KEY_HEX: &str = "5b0c1d2e3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8d9ea";

fn key() -> ChainKey {
    ChainKey::from_hex_text(KEY_HEX).unwrap()
}

fn body(pid: u32, ev: &str, func: &str, exe: &str) -> String {
    format!(
        r#"{{"ts":"2026-11-26T03:12:45.{pid:06}Z","host":"h","pid":{pid},"tid":1,"uid":0,"exe":"{exe}","ev":"{ev}","fn":"{func}","rv":"CKR_OK","dur_us":3}}"#
    )
}

/// Sealed lines (each with its newline) and the state after the last one.
fn chain(bodies: &[String]) -> (Vec<Vec<u8>>, ChainState) {
    let bytes: Vec<Vec<u8>> = bodies.iter().map(|b| b.clone().into_bytes()).collect();
    chain_of_bytes(&bytes)
}

fn standard() -> Vec<String> {
    vec![
        body(10, "start", "C_Initialize", "/usr/bin/tool"),
        body(10, "attach", "C_Initialize", "/usr/bin/tool"),
        body(10, "intent", "C_Sign", "/usr/bin/tool"),
        body(10, "outcome", "C_Sign", "/usr/bin/tool"),
        body(11, "attach", "C_Initialize", "/usr/bin/other"),
        body(11, "outcome", "C_Logout", "/usr/bin/other"),
        body(10, "close", "C_Finalize", "/usr/bin/tool"),
    ]
}

struct Fixture {
    dir: tempfile::TempDir,
    key: PathBuf,
    log: PathBuf,
}

impl Fixture {
    /// A key file and `log` holding `lines` in `order`, with `log.state` for the full chain.
    fn new(lines: &[Vec<u8>], order: &[usize], state: &ChainState) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k0");
        std::fs::write(&key, format!("{KEY_HEX}\n")).unwrap();
        let log = dir.path().join("log");
        let bytes: Vec<u8> = order.iter().flat_map(|&i| lines[i].clone()).collect();
        std::fs::write(&log, bytes).unwrap();
        std::fs::write(
            dir.path().join("log.state"),
            p11audit::format::state::encode_file(Some(state)),
        )
        .unwrap();
        Fixture { dir, key, log }
    }

    /// `p11audit verify --key-file KEY EXTRA... LOG`, which must exit with `status`.
    #[track_caller]
    fn verify(&self, extra: &[&str], status: i32) -> Ran {
        let mut args: Vec<&OsStr> =
            vec!["verify".as_ref(), "--key-file".as_ref(), self.key.as_ref()];
        args.extend(extra.iter().map(OsStr::new));
        args.push(self.log.as_ref());
        p11audit(&args, status)
    }
}

/// What a run of p11audit printed.
struct Ran {
    out: String,
    err: String,
}

/// Runs `p11audit ARGS...` and checks its exit status (the message shows both streams).
#[track_caller]
fn p11audit<S: AsRef<OsStr>>(args: &[S], status: i32) -> Ran {
    let o = Command::new(env!("CARGO_BIN_EXE_p11audit"))
        .args(args)
        .output()
        .unwrap();
    let ran = Ran {
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert_eq!(
        o.status.code(),
        Some(status),
        "--- stdout ---\n{}--- stderr ---\n{}",
        ran.out,
        ran.err
    );
    ran
}

#[track_caller]
fn assert_contains_all(text: &str, wanted: &[&str]) {
    for want in wanted {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
}

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

#[test]
fn intact_chain_exits_0_with_summary() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &all(7), &st);
    let out = f.verify(&[], 0).out;
    assert!(out.starts_with("OK: chain intact\n"), "{out}");
    assert_contains_all(
        &out,
        &[
            "closed cleanly: yes",
            "attached without close: pid 11",
            "next seq 7",
            "records:   7 (seq 0..6)",
            "/usr/bin/other",
            "C_Sign",
        ],
    );
}

#[test]
fn altered_record_exits_1_and_names_line_and_seq() {
    let (mut lines, st) = chain(&standard());
    let line = &mut lines[3];
    let at = line.len() - 80;
    line[at] ^= 0x01;
    let f = Fixture::new(&lines, &all(7), &st);
    let out = f.verify(&[], 1).out;
    let expect = format!("FAIL: altered at {}:4 (seq 3): ", f.log.display());
    assert!(out.starts_with(&expect), "{out}");
    assert_contains_all(&out, &["records:   3 (seq 0..2) (before the problem)"]);
}

#[test]
fn json_report_parses_and_names_the_problem() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &[0, 1, 2, 4, 5, 6], &st);
    let v: serde_json::Value = serde_json::from_str(&f.verify(&["--json"], 1).out).unwrap();
    assert_eq!(v["intact"], false);
    assert_eq!(v["problem"]["kind"], "missing");
    assert_eq!(v["problem"]["line"], 4);
    assert_eq!(v["problem"]["seq"], 4);
    assert_eq!(v["problem"]["file"], f.log.to_str().unwrap());
    assert_eq!(v["summary"]["records"], 3);
    assert_eq!(v["summary"]["per_fn"]["C_Sign"], 1);

    let f = Fixture::new(&lines, &all(7), &st);
    let v: serde_json::Value = serde_json::from_str(&f.verify(&["--json"], 0).out).unwrap();
    assert_eq!(v["intact"], true);
    assert_eq!(v["problem"], serde_json::Value::Null);
    assert_eq!(v["closed_cleanly"], true);
    assert_eq!(v["unclosed_pids"], serde_json::json!([11]));
}

#[test]
fn reordered_and_inserted() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &[0, 1, 3, 2, 4, 5, 6], &st);
    assert_contains_all(
        &f.verify(&[], 1).out,
        &["FAIL: reordered at ", ":3 (seq 3): "],
    );

    let f = Fixture::new(&lines, &[0, 1, 2, 3, 4, 2, 5, 6], &st);
    let out = f.verify(&[], 1).out;
    assert_contains_all(&out, &[":6 (seq 2): "]);
    assert!(out.starts_with("FAIL: inserted at "), "{out}");
}

#[test]
fn truncation_uses_the_default_state_unless_told_otherwise() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &all(5), &st);
    let out = f.verify(&[], 1).out;
    assert!(out.starts_with("FAIL: truncated at "), "{out}");
    assert_contains_all(&out, &[":5 (seq 4): ", "2 more record(s)"]);

    let out = f.verify(&["--no-state"], 3).out;
    assert_contains_all(&out, &["not checked (--no-state)"]);

    // An explicit state for exactly these five records.
    let (_, st5) = chain(&standard()[..5]);
    let p = f.dir.path().join("other.state");
    std::fs::write(&p, p11audit::format::state::encode_file(Some(&st5))).unwrap();
    f.verify(&["--state", p.to_str().unwrap()], 0);

    // Without a state file beside the log, the end is not checked.
    std::fs::remove_file(f.dir.path().join("log.state")).unwrap();
    assert_contains_all(&f.verify(&[], 3).out, &["not found"]);
}

#[test]
fn a_state_file_without_the_chains_key_does_not_hide_a_cut_tail() {
    let (lines, _) = chain(&standard());
    // Five of the seven records kept, beside a state for exactly those five: seq and prev read
    // from the log, the check line computed, but a key that is not K_5.
    let (_, mut forged) = chain(&standard()[..5]);
    forged.key = ChainKey::from_bytes([0x11; 32]);
    forged.log_ino = 1;
    let f = Fixture::new(&lines, &all(5), &forged);
    let out = f.verify(&[], 1).out;
    assert!(out.starts_with("FAIL: truncated at "), "{out}");
    assert_contains_all(&out, &["key is not K_5", "forged or corrupt"]);
    // The same state in the text form of format v1.
    std::fs::write(f.dir.path().join("log.state"), forged.encode()).unwrap();
    let out = f.verify(&[], 1).out;
    assert_contains_all(&out, &["key is not K_5", "forged or corrupt"]);
    // With the key a writer would have stored, the same state verifies the same log.
    let (_, genuine) = chain(&standard()[..5]);
    std::fs::write(f.dir.path().join("log.state"), genuine.encode()).unwrap();
    f.verify(&[], 0);
}

#[test]
fn torn_last_line() {
    let (mut lines, _) = chain(&standard());
    let n = lines[6].len();
    lines[6].truncate(n - 10);
    // The state of the six complete records: a writer was cut short in its seventh write.
    let (_, st6) = chain(&standard()[..6]);
    let f = Fixture::new(&lines, &all(7), &st6);
    let out = f.verify(&[], 1).out;
    assert!(
        out.starts_with(&format!(
            "FAIL: torn_last_line at {}:7 (seq 6): ",
            f.log.display()
        )),
        "{out}"
    );
}

/// Records cut off the end, then a fragment of a later line appended (no newline), beside the
/// state of the whole log: still a truncation, not a harmless torn write.
#[test]
fn junk_after_a_cut_tail_does_not_hide_the_cut() {
    let (lines, st) = chain(&standard());
    let mut kept: Vec<Vec<u8>> = lines[..4].to_vec();
    kept.push(lines[5][..100].to_vec());
    let f = Fixture::new(&kept, &all(5), &st);
    let out = f.verify(&[], 1).out;
    assert!(
        out.starts_with(&format!(
            "FAIL: truncated at {}:5 (seq 3): ",
            f.log.display()
        )),
        "{out}"
    );
    assert_contains_all(&out, &["3 more record(s)", "is torn"]);
    // Without the state nothing says records are missing: a torn write.
    let out = f.verify(&["--no-state"], 1).out;
    assert!(out.starts_with("FAIL: torn_last_line at "), "{out}");
}

#[test]
fn chain_across_files() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &[4, 5, 6], &st);
    let first = f.dir.path().join("log.1");
    std::fs::write(&first, lines[..4].concat()).unwrap();
    p11audit(
        &[
            "verify".as_ref(),
            "--key-file".as_ref(),
            f.key.as_os_str(),
            first.as_os_str(),
            f.log.as_os_str(),
        ],
        0,
    );
    // Given only the newest file, the start of the chain is missing.
    let out = f.verify(&[], 1).out;
    assert!(out.starts_with("FAIL: missing at "), "{out}");
}

#[test]
fn control_characters_from_the_log_are_escaped() {
    let bodies = vec![
        body(1, "attach", "C_Initialize", r"/tmp/\u001b[2J\u0007evil"),
        body(
            1,
            "outcome",
            r"C_\u001b]0;x\u0007Sign",
            r"/tmp/\u001b[2J\u0007evil",
        ),
    ];
    let (lines, st) = chain(&bodies);
    let f = Fixture::new(&lines, &all(2), &st);
    let out = f.verify(&[], 0).out;
    assert!(!out.bytes().any(|b| b == 0x1b || b == 0x07), "{out}");
    assert_contains_all(&out, &[r"/tmp/\x1b[2J\x07evil"]);
}

#[test]
fn usage_and_io_errors_exit_2() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &all(7), &st);
    // No FILE.
    p11audit(
        &["verify".as_ref(), "--key-file".as_ref(), f.key.as_os_str()],
        2,
    );
    // --state and --no-state together.
    f.verify(&["--no-state", "--state", "x"], 2);
    // Missing key file.
    let ran = p11audit(
        &[
            "verify".as_ref(),
            "--key-file".as_ref(),
            "/nonexistent/k0".as_ref(),
            f.log.as_os_str(),
        ],
        2,
    );
    assert!(ran.err.starts_with("p11audit: "), "{}", ran.err);
    assert!(ran.out.is_empty());
    // Bad key text.
    std::fs::write(&f.key, "not a key\n").unwrap();
    assert_contains_all(&f.verify(&[], 2).err, &["64 hexadecimal"]);
    std::fs::write(&f.key, format!("{KEY_HEX}\n")).unwrap();
    // Missing log file.
    let ran = p11audit(
        &[
            "verify".as_ref(),
            "--no-state".as_ref(),
            "--key-file".as_ref(),
            f.key.as_os_str(),
            f.dir.path().join("nope").as_os_str(),
        ],
        2,
    );
    assert!(ran.err.starts_with("p11audit: "), "{}", ran.err);
    // Corrupt state.
    std::fs::write(f.dir.path().join("log.state"), b"garbage").unwrap();
    assert_contains_all(&f.verify(&[], 2).err, &["--no-state"]);
    f.verify(&["--no-state"], 3);
    // Unknown subcommand.
    p11audit(&["frobnicate"], 2);
}

#[test]
fn help_mentions_subcommands_and_exit_status() {
    let out = p11audit(&["--help"], 0).out;
    assert_contains_all(&out, &["keygen", "verify", "Exit status"]);
    for cmd in ["verify", "show", "report"] {
        let out = p11audit(&[cmd, "--help"], 0).out;
        assert_contains_all(
            &out,
            &["\n  3  every record verified, but the end of the chain was not checked"],
        );
    }
    assert_contains_all(
        &p11audit(&["verify", "--help"], 0).out,
        &["no_state_file", "no_state_option", "state_behind_log"],
    );
}

fn keygen(path: &Path, status: i32) -> Ran {
    p11audit(&["keygen".as_ref(), path.as_os_str()], status)
}

#[test]
fn keygen_writes_a_0400_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k0");
    keygen(&p, 0);
    let meta = std::fs::metadata(&p).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o400);
    let content = std::fs::read_to_string(&p).unwrap();
    assert_eq!(content.len(), 65);
    assert!(content.ends_with('\n'));
    assert!(content[..64]
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    assert!(ChainKey::from_hex_text(&content).is_ok());

    // A second run refuses and leaves the key alone.
    assert_contains_all(&keygen(&p, 2).err, &["refusing to overwrite"]);
    assert_eq!(std::fs::read_to_string(&p).unwrap(), content);

    // Two keys differ.
    let q = dir.path().join("k1");
    keygen(&q, 0);
    assert_ne!(std::fs::read_to_string(&q).unwrap(), content);

    // A key from keygen verifies a chain sealed with it.
    let k = ChainKey::from_hex_text(&content).unwrap();
    let mut line = Vec::new();
    seal_into(
        &mut line,
        &k,
        0,
        ZERO_MAC_HEX,
        &body(1, "start", "C_Initialize", "/x"),
    );
    let log = dir.path().join("log");
    std::fs::write(&log, line).unwrap();
    // Intact; no state file beside it, so its end is not checked: 3.
    p11audit(
        &[
            "verify".as_ref(),
            "--key-file".as_ref(),
            p.as_os_str(),
            log.as_os_str(),
        ],
        3,
    );

    // A directory that does not exist is an I/O error.
    keygen(&dir.path().join("no/such/dir/k"), 2);
}

// ---- verdicts a reader can trust ----------------------------------------------------------------------------------

/// `p11audit verify|show|report --key-file KEY EXTRA... LOG`, which must exit with `status`.
#[track_caller]
fn on_log(cmd: &str, f: &Fixture, extra: &[&str], status: i32) -> Ran {
    let mut args: Vec<&OsStr> = vec![cmd.as_ref(), "--key-file".as_ref(), f.key.as_ref()];
    args.extend(extra.iter().map(OsStr::new));
    args.push(f.log.as_ref());
    p11audit(&args, status)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// 62 records: `standard()` (a `close` at seq 6), then 55 signatures by another process.
fn sixty_two() -> Vec<String> {
    let mut bodies = standard();
    bodies.extend((0..55).map(|_| body(12, "outcome", "C_Sign", "/usr/bin/third")));
    bodies
}

/// Every record verified but the end of the chain not checked is exit status 3,
/// and the output says which case it is: the tail cut at a `close` and the state file deleted,
/// `--no-state`, an older state (next seq 25) beside a log of 62 records. `show` and `report`
/// say the same and exit the same. A problem found comes first (exit 1).
#[test]
fn an_end_that_was_not_checked_exits_3_and_says_why() {
    let bodies = sixty_two();
    let (lines, st) = chain(&bodies);
    const AS_FAR: &str = "INTACT AS FAR AS IT GOES: every record verified, but the end of the chain was not checked: ";

    // Cut after the close at seq 6, the state deleted.
    let f = Fixture::new(&lines, &all(7), &st);
    std::fs::remove_file(f.dir.path().join("log.state")).unwrap();
    let out = f.verify(&[], 3).out;
    assert!(
        out.starts_with(&format!("{AS_FAR}there is no state file")),
        "{out}"
    );
    assert_contains_all(&out, &["log.state not found", "closed cleanly: not known"]);
    assert!(!out.contains("closed cleanly: yes"), "{out}");
    assert!(!out.contains("OK: chain intact"), "{out}");
    let v = json(&f.verify(&["--json"], 3).out);
    assert_eq!(
        (&v["intact"], &v["exit_status"], &v["end_unchecked"]),
        (&true.into(), &3.into(), &"no_state_file".into()),
        "{v}"
    );
    let err = on_log("show", &f, &[], 3).err;
    assert_contains_all(
        &err,
        &[
            "verified as far as it goes",
            "there is no state file",
            "state: none (",
        ],
    );
    let out = on_log("report", &f, &[], 3).out;
    assert!(
        out.starts_with("VERIFIED AS FAR AS IT GOES: chain intact, 7 records (seq 0..6), but its end was not checked: there is no state file"),
        "{out}"
    );
    assert_contains_all(&out, &["state: none ("]);

    // The whole log beside its state: checked (0); with --no-state: 3, named.
    let f = Fixture::new(&lines, &all(62), &st);
    assert!(f.verify(&[], 0).out.starts_with("OK: chain intact\n"));
    let out = f.verify(&["--no-state"], 3).out;
    assert!(
        out.starts_with(&format!("{AS_FAR}--no-state was given")),
        "{out}"
    );
    assert_eq!(
        json(&f.verify(&["--no-state", "--json"], 3).out)["end_unchecked"],
        "no_state_option"
    );
    assert_contains_all(
        &on_log("show", &f, &["--no-state"], 3).err,
        &["--no-state was given", "state: not checked (--no-state)"],
    );
    on_log("report", &f, &["--no-state"], 3);
    on_log("show", &f, &[], 0);
    on_log("report", &f, &[], 0);

    // An older state: next seq 25, beside the 62 records.
    let (_, st25) = chain(&bodies[..25]);
    let f = Fixture::new(&lines, &all(62), &st25);
    let out = f.verify(&[], 3).out;
    assert!(
        out.starts_with(&format!(
            "{AS_FAR}the state file is behind the log: it vouches for the log up to seq 24 (its next seq is 25), the log goes on to seq 61, 37 record(s) later"
        )),
        "{out}"
    );
    assert_contains_all(
        &out,
        &["(next seq 25), behind the log, which goes on to seq 61"],
    );
    let v = json(&f.verify(&["--json"], 3).out);
    assert_eq!(v["end_unchecked"], "state_behind_log", "{v}");
    assert_eq!(
        (&v["state_next_seq"], &v["next_seq"]),
        (&25.into(), &62.into())
    );
    assert_contains_all(
        &on_log("show", &f, &[], 3).err,
        &[
            "the state file is behind the log",
            "behind the log, which goes on to seq 61",
        ],
    );
    let out = on_log("report", &f, &[], 3).out;
    assert_contains_all(
        &out,
        &[
            "VERIFIED AS FAR AS IT GOES",
            "the state file is behind the log",
            "behind the log, which goes on to seq 61",
        ],
    );
    let v = json(&on_log("report", &f, &["--json"], 3).out);
    assert_eq!(v["verification"]["exit_status"], 3, "{v}");
    assert_eq!(
        v["verification"]["end_unchecked"], "state_behind_log",
        "{v}"
    );

    // A problem comes first: an altered record with the state behind, or with none.
    let mut altered = lines.clone();
    let at = altered[40].len() - 80;
    altered[40][at] ^= 1;
    let f = Fixture::new(&altered, &all(62), &st25);
    assert!(f.verify(&[], 1).out.starts_with("FAIL: altered at "));
    assert_eq!(json(&f.verify(&["--json"], 1).out)["exit_status"], 1);
    on_log("show", &f, &[], 1);
    on_log("report", &f, &[], 1);
    f.verify(&["--no-state"], 1);
}

/// Sealed lines for bodies of any bytes (each `{...}`), as whoever holds K_0 can make them,
/// and the state after the last one.
fn chain_of_bytes(bodies: &[Vec<u8>]) -> (Vec<Vec<u8>>, ChainState) {
    let mut k = key();
    let mut prev = ZERO_MAC_HEX.to_string();
    let mut lines = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let mut line = format!(r#"{{"v":1,"seq":{i},"prev":"{prev}","#).into_bytes();
        line.extend_from_slice(&b[1..b.len() - 1]);
        prev = p11audit::format::chain::hex_lower(&k.mac(&line));
        line.extend_from_slice(format!(r#","mac":"{prev}"}}"#).as_bytes());
        line.push(b'\n');
        k.evolve();
        lines.push(line);
    }
    let state = ChainState {
        next_seq: bodies.len() as u64,
        prev_mac: prev,
        key: k,
        log_dev: 0,
        log_ino: 0,
        log_size: 0,
        lost_reported: 0,
        tree: None,
    };
    (lines, state)
}

/// Lines crafted with K_0 and sealed, which JSON readers read in two ways (a
/// member twice, a lone surrogate, bytes that are not UTF-8 in a member verify does not use),
/// are malformed: verify names the line (exit 1), and show and report stop before it.
#[test]
fn lines_read_two_ways_are_malformed_for_verify_show_and_report() {
    let sign = body(10, "outcome", "C_Sign", "/usr/bin/tool");
    let with = |extra: &[u8]| {
        let mut b = sign.as_bytes()[..sign.len() - 1].to_vec();
        b.extend_from_slice(extra);
        b.push(b'}');
        b
    };
    for (extra, why) in [
        (
            &br#","slot":1,"slot":2"#[..],
            r#"the member name "slot" appears twice"#,
        ),
        (
            br#","key":{"handle":1,"label":"a"},"key":{"handle":2,"label":"b"}"#,
            r#""key" appears twice"#,
        ),
        (
            br#","out":"returned","out":"withheld""#,
            r#""out" appears twice"#,
        ),
        (br#","note":"a","note":"b""#, r#""note" appears twice"#),
        (
            br#","created":[{"handle":1}],"created":[]"#,
            r#""created" appears twice"#,
        ),
        (
            br#","created":[{"handle":1,"label":"a","label":"b"}]"#,
            r#""label" appears twice"#,
        ),
        (br#","note":"\ud800""#, "lone surrogate"),
        (
            br#","key":{"handle":1,"label":"x\udc00"}"#,
            "lone surrogate",
        ),
        (b",\"note\":\"caf\xe9\"", "not UTF-8"),
        (b",\"vendor\":{\"x\":\"\xff\xfe\"}", "not UTF-8"),
    ] {
        let mut bodies: Vec<Vec<u8>> = standard().into_iter().map(String::into_bytes).collect();
        bodies[3] = with(extra);
        let (lines, st) = chain_of_bytes(&bodies);
        let what = String::from_utf8_lossy(extra);
        // What another reader makes of the line, were it accepted: serde_json takes the last
        // of two members, and refuses the rest (as jq does).
        let as_value = serde_json::from_slice::<serde_json::Value>(&lines[3]);
        if extra.starts_with(br#","slot""#) {
            assert_eq!(as_value.unwrap()["slot"], 2, "{what}");
        }
        let f = Fixture::new(&lines, &all(7), &st);
        let out = f.verify(&[], 1).out;
        let first = out.lines().next().unwrap();
        assert!(
            first.starts_with(&format!(
                "FAIL: malformed at {}:4 (seq 3): ",
                f.log.display()
            )),
            "{what}: {out}"
        );
        assert!(first.contains(why), "{what}: {why} not in {first}");
        assert_contains_all(&out, &["records:   3 (seq 0..2) (before the problem)"]);
        let v = json(&f.verify(&["--json"], 1).out);
        assert_eq!(
            (&v["problem"]["kind"], &v["problem"]["line"]),
            (&"malformed".into(), &4.into()),
            "{what}"
        );
        // show prints only the verified lines before it, byte for byte, and says why it stopped.
        let shown = on_log("show", &f, &["--json"], 1);
        assert_eq!(shown.out.as_bytes(), lines[..3].concat(), "{what}");
        assert_contains_all(&shown.err, &["did NOT verify: malformed at ", ":4 (seq 3)"]);
        let report = on_log("report", &f, &[], 1).out;
        assert!(
            report.starts_with("NOT VERIFIED: the log did not verify: malformed at "),
            "{what}: {report}"
        );
    }
}

/// Two programs whose paths differ only in a byte that is not UTF-8 (`display()`
/// made both `/opt/a\u{fffd}`) are recorded as `{"hex": …}` and read apart by verify, show and
/// report, which print the byte as `\xNN`; the JSON keeps the hex.
#[test]
fn exe_paths_that_are_not_utf8_are_read_apart() {
    let hexed = |pid: u32, ev: &str, func: &str, hex: &str| {
        body(pid, ev, func, "/placeholder").replace(
            r#""exe":"/placeholder""#,
            &format!(r#""exe":{{"hex":"{hex}"}}"#),
        )
    };
    let bodies = vec![
        hexed(20, "attach", "C_Initialize", "2f6f70742f61ff"),
        hexed(21, "attach", "C_Initialize", "2f6f70742f61fe"),
        hexed(20, "outcome", "C_Sign", "2f6f70742f61ff"),
        body(22, "attach", "C_Initialize", r"/opt/a\\xff"),
    ];
    let (lines, st) = chain(&bodies);
    let f = Fixture::new(&lines, &all(4), &st);
    let out = f.verify(&[], 0).out;
    assert_contains_all(
        &out,
        &[
            "processes: 3",
            "pid 20              2 record(s)  /opt/a\\xff\n",
            "pid 21              1 record(s)  /opt/a\\xfe\n",
            "pid 22              1 record(s)  /opt/a\\\\xff\n",
        ],
    );
    assert!(!out.contains('\u{fffd}'), "{out}");
    let v = json(&f.verify(&["--json"], 0).out);
    assert_eq!(
        v["summary"]["processes"][0]["exe"]["hex"], "2f6f70742f61ff",
        "{v}"
    );
    assert_eq!(v["summary"]["processes"][2]["exe"], r"/opt/a\xff", "{v}");

    let shown = on_log("show", &f, &[], 0).out;
    for (pid, exe) in [
        (20, r"/opt/a\xff "),
        (21, r"/opt/a\xfe "),
        (22, r"/opt/a\\xff "),
    ] {
        assert!(
            shown
                .lines()
                .any(|l| l.contains(&format!(" {pid} ")) && l.contains(exe)),
            "pid {pid} with {exe} not in\n{shown}"
        );
    }
    let report = on_log("report", &f, &[], 0).out;
    assert_contains_all(&report, &[r"/opt/a\xff", r"/opt/a\xfe", r"/opt/a\\xff"]);
    let v = json(&on_log("report", &f, &["--json"], 0).out);
    let exes: Vec<&serde_json::Value> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["exe"])
        .collect();
    assert_eq!(
        exes,
        [
            &serde_json::json!({"hex": "2f6f70742f61ff"}),
            &serde_json::json!({"hex": "2f6f70742f61fe"}),
            &serde_json::json!(r"/opt/a\xff"),
        ],
        "{v}"
    );
}
