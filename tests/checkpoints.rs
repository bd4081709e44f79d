//! Signed checkpoints and the witness against the attacks they exist for, on logs written by
//! the shim in front of SoftHSM.
//!
//! Children (this test binary re-executed, role "sign") load the shim, make an EC key and sign
//! CP_SIGNS times, with P11AUDIT_CHECKPOINT_KEY set. The tests then, with the checkpoint
//! verifier key only (no K_0) or with the witness:
//! - a covered line altered, removed, or two covered lines swapped: `verify --vkey` exits 1;
//! - the tail cut after a checkpoint, with no state file: `verify --vkey` reports the
//!   truncation (exit 1);
//! - the log, its state and its checkpoint file put back to an older copy: the witness refuses
//!   the next checkpoint and names the rollback;
//! - the log deleted and a new chain started under the same key: the witness refuses it as a
//!   deleted and restarted log;
//! - a chain rotated across several files: one tree, checked across the files.

mod common;

use common::raw::Module;
use common::*;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CHILD: &str = "child";
const SIGNS_VAR: &str = "CP_SIGNS";
const ORIGIN: &str = "host.example/p11audit";
const DATA: [u8; 32] = [0x5a; 32];

/// Child entry point: does nothing unless re-executed with ROLE_VAR=sign.
#[test]
fn child() {
    if !is_role("sign") {
        return;
    }
    let n: usize = std::env::var(SIGNS_VAR).unwrap().parse().unwrap();
    Module::shim_signs(n, &DATA);
}

/// A fixture whose writers sign checkpoints every `every` (P11AUDIT_CHECKPOINT_EVERY).
struct Signed {
    fx: Fixture,
    checkpoint_key: PathBuf,
    vkey: PathBuf,
    env: Vec<(&'static str, OsString)>,
}

fn p11audit(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(p11audit_bin()).args(args).output().unwrap()
}

impl Signed {
    fn new(every: &str) -> Signed {
        let fx = Fixture::new();
        let checkpoint_key = fx.dir.path().join("checkpoint.key");
        let out = p11audit(&[
            "keygen".as_ref(),
            "--checkpoint".as_ref(),
            ORIGIN.as_ref(),
            checkpoint_key.as_os_str(),
        ]);
        assert!(out.status.success(), "{}", output_text(&out));
        let vkey = PathBuf::from(format!("{}.vkey", checkpoint_key.display()));
        let mut env = fx.env();
        env.push(("P11AUDIT_CHECKPOINT_KEY", checkpoint_key.clone().into()));
        env.push(("P11AUDIT_CHECKPOINT_EVERY", every.into()));
        Signed {
            fx,
            checkpoint_key,
            vkey,
            env,
        }
    }

    fn sign(&self, signs: usize, extra: &[(&'static str, OsString)]) {
        let mut env = self.env.clone();
        env.push((SIGNS_VAR, signs.to_string().into()));
        env.extend_from_slice(extra);
        let run = run_with_timeout(
            child_command(CHILD, ROLE_VAR, "sign", &env),
            self.fx.dir.path(),
            "a signing child",
        );
        assert!(run.status.success(), "{}", run.dump());
    }

    fn checkpoint_file(&self) -> PathBuf {
        PathBuf::from(format!("{}.checkpoint", self.fx.log.display()))
    }

    /// `p11audit verify --vkey VKEY --json EXTRA... TARGET`: exit code and the `tree` report.
    fn verify_vkey(
        &self,
        extra: &[&str],
        target: &Path,
    ) -> (Option<i32>, serde_json::Value, String) {
        let out = Command::new(p11audit_bin())
            .arg("verify")
            .arg("--vkey")
            .arg(&self.vkey)
            .args(extra)
            .arg(target)
            .output()
            .unwrap();
        let json = if extra.contains(&"--json") {
            serde_json::from_slice(&out.stdout).unwrap()
        } else {
            serde_json::Value::Null
        };
        (out.status.code(), json, output_text(&out))
    }
}

fn lines_of(path: &Path) -> Vec<Vec<u8>> {
    fs::read(path)
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    fs::write(path, lines.concat()).unwrap();
}

/// The seqs of the checkpoint records and the sizes they sign.
fn checkpoint_records(log: &Path) -> Vec<(u64, u64)> {
    parse_records(&fs::read_to_string(log).unwrap())
        .iter()
        .filter(|r| r["ev"] == "checkpoint")
        .map(|r| {
            let note = r["checkpoint"].as_str().unwrap();
            let size = note.lines().nth(1).unwrap().parse().unwrap();
            (r["seq"].as_u64().unwrap(), size)
        })
        .collect()
}

#[test]
fn a_covered_line_altered_removed_or_reordered_fails_without_k0() {
    let s = Signed::new("10");
    s.sign(24, &[]);
    let cps = checkpoint_records(&s.fx.log);
    assert!(cps.len() >= 4, "checkpoints every 10 records: {cps:?}");
    assert!(cps.iter().all(|(seq, size)| seq == size), "{cps:?}");
    // The last record is the checkpoint signed when the process closed.
    let lines = lines_of(&s.fx.log);
    assert_eq!(cps.last().unwrap().0 as usize, lines.len() - 1);
    let (code, report, text) = s.verify_vkey(&["--json"], &s.fx.log);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        report["tree"]["covered"],
        (lines.len() - 1) as u64,
        "{text}"
    );
    assert!(report["tree"]["problem"].is_null());
    let (code, _, text) = s.verify_vkey(&[], &s.fx.log);
    assert_eq!(code, Some(0));
    assert!(
        text.contains(&format!("records 0 to {}", lines.len() - 2)),
        "{text}"
    );
    // Both checks, K_0 and the checkpoints.
    let (code, _, text) = s.verify_vkey(&["--key-file", s.fx.key.to_str().unwrap()], &s.fx.log);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("signed checkpoints"), "{text}");

    let dir = s.fx.dir.path().join("copies");
    fs::create_dir(&dir).unwrap();
    let attacked = |name: &str, change: &dyn Fn(&mut Vec<Vec<u8>>)| {
        let log = dir.join(name);
        let mut l = lines.clone();
        change(&mut l);
        write_lines(&log, &l);
        fs::copy(s.checkpoint_file(), dir.join(format!("{name}.checkpoint"))).unwrap();
        let (code, report, text) = s.verify_vkey(&["--json"], &log);
        assert_eq!(code, Some(1), "{name}: {text}");
        report["tree"]["problem"]["kind"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let altered = attacked("altered", &|l| {
        let line = String::from_utf8(l[5].clone()).unwrap();
        l[5] = line.replacen("\"pid\":", "\"pid\":1", 1).into_bytes();
    });
    assert_eq!(altered, "altered");
    assert_eq!(attacked("removed", &|l| drop(l.remove(7))), "altered");
    assert_eq!(attacked("reordered", &|l| l.swap(3, 4)), "altered");
    // With K_0 as well, the chain's own check fails too.
    let (code, _, _) = s.verify_vkey(
        &["--key-file", s.fx.key.to_str().unwrap()],
        &dir.join("altered"),
    );
    assert_eq!(code, Some(1));
}

#[test]
fn a_tail_cut_after_a_checkpoint_is_reported_without_a_state_file() {
    let s = Signed::new("10");
    s.sign(6, &[]);
    let dir = s.fx.dir.path().join("copy");
    fs::create_dir(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let lines = lines_of(&s.fx.log);
    write_lines(&log, &lines[..lines.len() - 3]);
    fs::copy(s.checkpoint_file(), dir.join("audit.jsonl.checkpoint")).unwrap();
    assert!(!dir.join("audit.jsonl.state").exists());
    let (code, report, text) = s.verify_vkey(&["--json"], &log);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(report["tree"]["problem"]["kind"], "truncated", "{text}");
    // The same log whole, without its state file, is covered.
    write_lines(&log, &lines);
    let (code, _, text) = s.verify_vkey(&[], &log);
    assert_eq!(code, Some(0), "{text}");
}

/// `p11audit witness` for the fixture's origin, with `evidence` arguments.
fn witness(s: &Signed, wkey: &Path, evidence: &[&std::ffi::OsStr]) -> Output {
    let state = s.fx.dir.path().join("witness.state");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "witness".as_ref(),
        "--key".as_ref(),
        wkey.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
        "--log-key".as_ref(),
        s.vkey.as_os_str(),
    ];
    args.extend_from_slice(evidence);
    p11audit(&args)
}

fn witness_key(s: &Signed) -> PathBuf {
    let wkey = s.fx.dir.path().join("witness.key");
    let out = p11audit(&[
        "keygen".as_ref(),
        "--witness".as_ref(),
        "witness.example/w1".as_ref(),
        wkey.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    wkey
}

fn with_lines(s: &Signed, wkey: &Path) -> Output {
    let cp = s.checkpoint_file();
    witness(
        s,
        wkey,
        &[
            "--checkpoint".as_ref(),
            cp.as_os_str(),
            "--lines".as_ref(),
            s.fx.log.as_os_str(),
        ],
    )
}

#[test]
fn the_witness_refuses_a_log_and_state_put_back_to_an_older_pair() {
    let s = Signed::new("1000");
    let wkey = witness_key(&s);
    s.sign(3, &[]);
    let out = with_lines(&s, &wkey);
    assert!(out.status.success(), "{}", output_text(&out));
    // The cosignature line: `— witness.example/w1 base64(key id || timestamp || signature)`.
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("\u{2014} witness.example/w1 "), "{line}");
    let backup = s.fx.dir.path().join("backup");
    fs::create_dir(&backup).unwrap();
    let files = [s.fx.log.clone(), s.fx.state(), s.checkpoint_file()];
    for f in &files {
        fs::copy(f, backup.join(f.file_name().unwrap())).unwrap();
    }
    let witnessed_before = checkpoint_records(&s.fx.log).last().unwrap().1;
    s.sign(10, &[]);
    // This time with a consistency proof from `prove`, as a tlog-witness request.
    let proof = p11audit(&[
        "prove".as_ref(),
        "--from".as_ref(),
        witnessed_before.to_string().as_ref(),
        s.fx.log.as_os_str(),
    ]);
    assert!(proof.status.success(), "{}", output_text(&proof));
    let request = s.fx.dir.path().join("request");
    fs::write(&request, &proof.stdout).unwrap();
    let out = witness(&s, &wkey, &["--request".as_ref(), request.as_os_str()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let witnessed = checkpoint_records(&s.fx.log).last().unwrap().1;
    // The older pair (and its checkpoint file) put back, and the host goes on.
    for f in &files {
        fs::copy(backup.join(f.file_name().unwrap()), f).unwrap();
    }
    s.sign(1, &[]);
    let newest = checkpoint_records(&s.fx.log).last().unwrap().1;
    assert!(newest < witnessed, "{newest} < {witnessed}");
    let out = with_lines(&s, &wkey);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains("rollback"), "{text}");
    assert!(out.stdout.is_empty(), "no cosignature");
}

#[test]
fn the_witness_refuses_a_deleted_and_restarted_log() {
    let s = Signed::new("1000");
    let wkey = witness_key(&s);
    s.sign(3, &[]);
    let out = with_lines(&s, &wkey);
    assert!(out.status.success(), "{}", output_text(&out));
    for f in [s.fx.log.clone(), s.fx.state(), s.checkpoint_file()] {
        fs::remove_file(f).unwrap();
    }
    s.sign(8, &[]);
    let out = with_lines(&s, &wkey);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains("deleted and restarted log"), "{text}");
}

#[test]
fn one_tree_across_rotated_files() {
    let s = Signed::new("50");
    s.sign(
        200,
        &[("P11AUDIT_ROTATE_BYTES", (64u64 << 10).to_string().into())],
    );
    let files: Vec<_> = fs::read_dir(s.fx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("audit.jsonl.") && n.len() > "audit.jsonl.checkpoint".len())
        .collect();
    assert!(files.len() >= 2, "rotated at least twice: {files:?}");
    let (code, report, text) = s.verify_vkey(&["--json"], s.fx.dir.path());
    assert_eq!(code, Some(0), "{text}");
    let covered = report["tree"]["covered"].as_u64().unwrap();
    let first_file_records = fs::read_dir(s.fx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| files.iter().any(|f| p.ends_with(f)))
        .map(|p| line_count(&p) as u64)
        .min()
        .unwrap();
    assert!(
        covered > first_file_records,
        "{covered} > {first_file_records}"
    );
    let (code, _, text) =
        s.verify_vkey(&["--key-file", s.fx.key.to_str().unwrap()], s.fx.dir.path());
    assert_eq!(code, Some(0), "{text}");
    // Leaving out the oldest file is noticed: the leaves would not be the seqs.
    let mut names = files.clone();
    names.sort();
    let mut rest: Vec<PathBuf> = names[1..].iter().map(|n| s.fx.dir.path().join(n)).collect();
    rest.push(s.fx.log.clone());
    let out = Command::new(p11audit_bin())
        .args(["verify", "--json", "--vkey"])
        .arg(&s.vkey)
        .args(&rest)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(report["tree"]["problem"]["kind"], "not_from_seq_0");
}

#[test]
fn keygen_writes_an_owner_only_signer_key_and_a_verifier_key_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let s = Signed::new("10");
    let mode = fs::metadata(&s.checkpoint_key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);
    let key = fs::read_to_string(&s.checkpoint_key).unwrap();
    assert!(key.starts_with(&format!("PRIVATE+KEY+{ORIGIN}+")), "{key}");
    let vkey = fs::read_to_string(&s.vkey).unwrap();
    let parts: Vec<&str> = vkey.trim_end().splitn(3, '+').collect();
    assert_eq!(parts[0], ORIGIN);
    assert_eq!(parts[1].len(), 8);
    assert!(parts[1]
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let out = p11audit(&[
        "keygen".as_ref(),
        "--checkpoint".as_ref(),
        ORIGIN.as_ref(),
        s.checkpoint_key.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(fs::read_to_string(&s.checkpoint_key).unwrap(), key);
    assert_eq!(fs::read_to_string(&s.vkey).unwrap(), vkey);
}
