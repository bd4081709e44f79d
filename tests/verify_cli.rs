//! `p11audit verify` and `p11audit keygen`, run as a program.

use p11audit::audit::chain::{ChainKey, ZERO_MAC_HEX};
use p11audit::audit::line::seal_into;
use p11audit::audit::state::ChainState;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
        std::fs::write(dir.path().join("log.state"), state.encode()).unwrap();
        Fixture { dir, key, log }
    }

    fn verify(&self, extra: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_p11audit"));
        c.arg("verify").arg("--key-file").arg(&self.key);
        c.args(extra);
        c.arg(&self.log);
        c.output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

#[test]
fn intact_chain_exits_0_with_summary() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &all(7), &st);
    let o = f.verify(&[]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}{}", text(&o.stderr));
    assert!(out.starts_with("OK: chain intact\n"), "{out}");
    assert!(out.contains("closed cleanly: yes"), "{out}");
    assert!(out.contains("attached without close: pid 11"), "{out}");
    assert!(out.contains("next seq 7"), "{out}");
    assert!(out.contains("records:   7 (seq 0..6)"), "{out}");
    assert!(out.contains("/usr/bin/other"), "{out}");
    assert!(out.contains("C_Sign"), "{out}");
}

#[test]
fn altered_record_exits_1_and_names_line_and_seq() {
    let (mut lines, st) = chain(&standard());
    let line = &mut lines[3];
    let at = line.len() - 80;
    line[at] ^= 0x01;
    let f = Fixture::new(&lines, &all(7), &st);
    let o = f.verify(&[]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 1, "{out}");
    let expect = format!("FAIL: altered at {}:4 (seq 3): ", f.log.display());
    assert!(out.starts_with(&expect), "{out}");
    assert!(
        out.contains("records:   3 (seq 0..2) (before the problem)"),
        "{out}"
    );
}

#[test]
fn json_report_parses_and_names_the_problem() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &[0, 1, 2, 4, 5, 6], &st);
    let o = f.verify(&["--json"]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["intact"], false);
    assert_eq!(v["problem"]["kind"], "missing");
    assert_eq!(v["problem"]["line"], 4);
    assert_eq!(v["problem"]["seq"], 4);
    assert_eq!(v["problem"]["file"], f.log.to_str().unwrap());
    assert_eq!(v["summary"]["records"], 3);
    assert_eq!(v["summary"]["per_fn"]["C_Sign"], 1);

    let f = Fixture::new(&lines, &all(7), &st);
    let o = f.verify(&["--json"]);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["intact"], true);
    assert_eq!(v["problem"], serde_json::Value::Null);
    assert_eq!(v["closed_cleanly"], true);
    assert_eq!(v["unclosed_pids"], serde_json::json!([11]));
}

#[test]
fn reordered_and_inserted() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &[0, 1, 3, 2, 4, 5, 6], &st);
    let o = f.verify(&[]);
    assert_eq!(code(&o), 1);
    assert!(
        text(&o.stdout).contains("FAIL: reordered at "),
        "{}",
        text(&o.stdout)
    );
    assert!(text(&o.stdout).contains(":3 (seq 3): "));

    let f = Fixture::new(&lines, &[0, 1, 2, 3, 4, 2, 5, 6], &st);
    let o = f.verify(&[]);
    assert_eq!(code(&o), 1);
    assert!(
        text(&o.stdout).contains(":6 (seq 2): "),
        "{}",
        text(&o.stdout)
    );
    assert!(text(&o.stdout).starts_with("FAIL: inserted at "));
}

#[test]
fn truncation_uses_the_default_state_unless_told_otherwise() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &all(5), &st);
    let o = f.verify(&[]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 1, "{out}");
    assert!(out.starts_with("FAIL: truncated at "), "{out}");
    assert!(out.contains(":5 (seq 4): "), "{out}");
    assert!(out.contains("2 more record(s)"), "{out}");

    let o = f.verify(&["--no-state"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stdout));
    assert!(text(&o.stdout).contains("not checked (--no-state)"));

    // An explicit state for exactly these five records.
    let (_, st5) = chain(&standard()[..5]);
    let p = f.dir.path().join("other.state");
    std::fs::write(&p, st5.encode()).unwrap();
    let o = f.verify(&["--state", p.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o.stdout));

    // Without a state file beside the log, the end is not checked.
    std::fs::remove_file(f.dir.path().join("log.state")).unwrap();
    let o = f.verify(&[]);
    assert_eq!(code(&o), 0);
    assert!(text(&o.stdout).contains("not found"), "{}", text(&o.stdout));
}

#[test]
fn torn_last_line() {
    let (mut lines, st) = chain(&standard());
    let n = lines[6].len();
    lines[6].truncate(n - 10);
    let f = Fixture::new(&lines, &all(7), &st);
    let o = f.verify(&[]);
    assert_eq!(code(&o), 1);
    assert!(
        text(&o.stdout).starts_with(&format!(
            "FAIL: torn_last_line at {}:7 (seq 6): ",
            f.log.display()
        )),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn chain_across_files() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &[4, 5, 6], &st);
    let first = f.dir.path().join("log.1");
    std::fs::write(&first, lines[..4].concat()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_p11audit"))
        .args(["verify", "--key-file"])
        .arg(&f.key)
        .arg(&first)
        .arg(&f.log)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stdout));
    // Given only the newest file, the start of the chain is missing.
    let o = f.verify(&[]);
    assert_eq!(code(&o), 1);
    assert!(text(&o.stdout).starts_with("FAIL: missing at "));
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
    let o = f.verify(&[]);
    assert_eq!(code(&o), 0, "{}", text(&o.stdout));
    assert!(
        !o.stdout.iter().any(|&b| b == 0x1b || b == 0x07),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stdout).contains(r"/tmp/\x1b[2J\x07evil"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn usage_and_io_errors_exit_2() {
    let (lines, st) = chain(&standard());
    let f = Fixture::new(&lines, &all(7), &st);
    let bin = env!("CARGO_BIN_EXE_p11audit");

    // No FILE.
    let o = Command::new(bin)
        .args(["verify", "--key-file"])
        .arg(&f.key)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    // --state and --no-state together.
    assert_eq!(code(&f.verify(&["--no-state", "--state", "x"])), 2);
    // Missing key file.
    let o = Command::new(bin)
        .args(["verify", "--key-file", "/nonexistent/k0"])
        .arg(&f.log)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).starts_with("p11audit: "),
        "{}",
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty());
    // Bad key text.
    std::fs::write(&f.key, "not a key\n").unwrap();
    let o = f.verify(&[]);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("64 hexadecimal"),
        "{}",
        text(&o.stderr)
    );
    std::fs::write(&f.key, format!("{KEY_HEX}\n")).unwrap();
    // Missing log file.
    let o = Command::new(bin)
        .args(["verify", "--no-state", "--key-file"])
        .arg(&f.key)
        .arg(f.dir.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).starts_with("p11audit: "),
        "{}",
        text(&o.stderr)
    );
    // Corrupt state.
    std::fs::write(f.dir.path().join("log.state"), b"garbage").unwrap();
    let o = f.verify(&[]);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("--no-state"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(code(&f.verify(&["--no-state"])), 0);
    // Unknown subcommand.
    assert_eq!(
        code(&Command::new(bin).arg("frobnicate").output().unwrap()),
        2
    );
}

#[test]
fn help_mentions_subcommands_and_exit_status() {
    let o = Command::new(env!("CARGO_BIN_EXE_p11audit"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0);
    let out = text(&o.stdout);
    assert!(out.contains("keygen") && out.contains("verify"), "{out}");
    assert!(out.contains("Exit status"), "{out}");
}

fn keygen(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_p11audit"))
        .arg("keygen")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn keygen_writes_a_0400_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k0");
    let o = keygen(&p);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
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
    let o = keygen(&p);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("refusing to overwrite"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap(), content);

    // Two keys differ.
    let q = dir.path().join("k1");
    assert_eq!(code(&keygen(&q)), 0);
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
    let o = Command::new(env!("CARGO_BIN_EXE_p11audit"))
        .args(["verify", "--key-file"])
        .arg(&p)
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stdout));

    // A directory that does not exist is an I/O error.
    assert_eq!(code(&keygen(&dir.path().join("no/such/dir/k"))), 2);
}
