//! `p11audit verify` and `p11audit keygen`, run as a program.

use p11audit::audit::chain::{ChainKey, ZERO_MAC_HEX};
use p11audit::audit::line::seal_into;
use p11audit::audit::state::ChainState;
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
    let mut k = key();
    let mut prev = ZERO_MAC_HEX.to_string();
    let mut lines = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let mut out = Vec::new();
        prev = seal_into(&mut out, &k, i as u64, &prev, b);
        k.evolve();
        lines.push(out);
    }
    let state = ChainState {
        next_seq: bodies.len() as u64,
        prev_mac: prev,
        key: k,
        log_dev: 0,
        log_ino: 0,
        log_size: 0,
        lost_reported: 0,
    };
    (lines, state)
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
            p11audit::audit::state::encode_file(Some(state)),
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

    let out = f.verify(&["--no-state"], 0).out;
    assert_contains_all(&out, &["not checked (--no-state)"]);

    // An explicit state for exactly these five records.
    let (_, st5) = chain(&standard()[..5]);
    let p = f.dir.path().join("other.state");
    std::fs::write(&p, p11audit::audit::state::encode_file(Some(&st5))).unwrap();
    f.verify(&["--state", p.to_str().unwrap()], 0);

    // Without a state file beside the log, the end is not checked.
    std::fs::remove_file(f.dir.path().join("log.state")).unwrap();
    assert_contains_all(&f.verify(&[], 0).out, &["not found"]);
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
    f.verify(&["--no-state"], 0);
    // Unknown subcommand.
    p11audit(&["frobnicate"], 2);
}

#[test]
fn help_mentions_subcommands_and_exit_status() {
    let out = p11audit(&["--help"], 0).out;
    assert_contains_all(&out, &["keygen", "verify", "Exit status"]);
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
    p11audit(
        &[
            "verify".as_ref(),
            "--key-file".as_ref(),
            p.as_os_str(),
            log.as_os_str(),
        ],
        0,
    );

    // A directory that does not exist is an I/O error.
    keygen(&dir.path().join("no/such/dir/k"), 2);
}
