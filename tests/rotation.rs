//! Rotation (P11AUDIT_ROTATE_BYTES): one chain across files, followed by every process.
//!
//! Children (this test binary re-executed, role "sign") load the shim against SoftHSM, make an
//! EC key and sign ROT_SIGNS times (SignInit, a length query, Sign: four records per round).
//! The tests then look at the directory of the log:
//! - every rotated file `<log>.<time>` ends with a `rotate` record that names the file's new
//!   name and the next file; the next file starts at the next seq, with `prev` the mac before;
//! - `p11audit verify DIR`, `p11audit verify FILES...` in chain order, and `verify` of all the
//!   files concatenated into one all accept the chain, with every seq once;
//! - four processes rotating the same log lose and duplicate nothing;
//! - a missing middle file is reported as records missing at the first line of the file after
//!   the gap, and a missing current log as records missing at the end (the directory's state);
//! - a writer killed in the middle of a rotation (tests/c/crash_at.c, at the `link` that gives
//!   the old file its new name) leaves the rotation for the next writer, which finishes it.

mod common;

use common::raw::Module;
use common::*;
use serde_json::Value;
use std::ffi::OsString;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

const CHILD: &str = "child";
const SIGNS_VAR: &str = "ROT_SIGNS";
const LIMIT: u64 = 64 << 10;
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

fn env_with(fx: &Fixture, conf: &Path, signs: usize) -> Vec<(&'static str, OsString)> {
    let mut env = fx.env();
    env.retain(|(k, _)| *k != "SOFTHSM2_CONF");
    env.push(("SOFTHSM2_CONF", conf.into()));
    env.push(("P11AUDIT_ROTATE_BYTES", LIMIT.to_string().into()));
    env.push((SIGNS_VAR, signs.to_string().into()));
    env
}

fn run_signer(fx: &Fixture, env: &[(&'static str, OsString)], what: &str) -> Finished {
    let run = run_with_timeout(
        child_command(CHILD, ROLE_VAR, "sign", env),
        fx.dir.path(),
        what,
    );
    assert!(run.status.success(), "{what}\n{}", run.dump());
    run
}

/// The log's files in chain order: rotated files by name (their names are UTC times, so they
/// sort), then the log itself.
fn files_in_order(fx: &Fixture) -> Vec<PathBuf> {
    let base = fx.log.file_name().unwrap().to_string_lossy().into_owned();
    let mut rotated: Vec<PathBuf> = fs::read_dir(fx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&format!("{base}.")) && !n.ends_with(".state") && !n.ends_with(".next")
        })
        .collect();
    rotated.sort();
    rotated.push(fx.log.clone());
    rotated
}

fn records(path: &Path) -> Vec<Value> {
    parse_records(&fs::read_to_string(path).unwrap())
}

fn verify_args(key: &Path, args: &[&std::ffi::OsStr]) -> (Option<i32>, Value, String) {
    let out = std::process::Command::new(p11audit_bin())
        .arg("verify")
        .arg("--key-file")
        .arg(key)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v, output_text(&out))
}

/// The checks every rotated set must pass; returns all records in chain order.
fn check_rotated_set(fx: &Fixture, files: &[PathBuf]) -> Vec<Value> {
    let log_name = fx.log.file_name().unwrap().to_string_lossy().into_owned();
    let mut all = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let recs = records(f);
        let size = fs::metadata(f).unwrap().len();
        if i + 1 < files.len() {
            let last = recs.last().expect("a rotated file holds records");
            assert_eq!(
                last["ev"],
                "rotate",
                "{} ends with a rotate record",
                f.display()
            );
            assert_eq!(
                last["renamed_to"].as_str(),
                f.file_name().unwrap().to_str(),
                "the rotate record names the file's new name"
            );
            assert_eq!(last["next"], log_name.as_str(), "and the next file");
            assert!(
                recs[..recs.len() - 1].iter().all(|r| r["ev"] != "rotate"),
                "one rotate record per file, at its end"
            );
            assert!(
                size <= LIMIT + 4096,
                "{} is {size} bytes, past the limit by more than a rotate record",
                f.display()
            );
        }
        if let (Some(prev), Some(first)) = (all.last() as Option<&Value>, recs.first()) {
            assert_eq!(
                first["seq"].as_u64(),
                prev["seq"].as_u64().map(|s| s + 1),
                "{} starts at the next seq",
                f.display()
            );
            assert_eq!(first["prev"], prev["mac"], "{} chains on", f.display());
        }
        all.extend(recs);
    }
    for (i, r) in all.iter().enumerate() {
        assert_eq!(
            r["seq"].as_u64(),
            Some(i as u64),
            "every seq once, in order"
        );
    }

    let (code, report, text) = verify_args(&fx.key, &[fx.dir.path().as_os_str()]);
    assert_eq!(code, Some(0), "verify DIR\n{text}");
    assert_eq!(
        report["summary"]["records"].as_u64(),
        Some(all.len() as u64)
    );
    assert_eq!(report["state_checked"], true, "{text}");

    let args: Vec<&std::ffi::OsStr> = files.iter().map(|p| p.as_os_str()).collect();
    let (code, _, text) = verify_args(&fx.key, &args);
    assert_eq!(code, Some(0), "verify FILES in order\n{text}");

    let joined = fx.dir.path().join("joined.one");
    let bytes: Vec<u8> = files.iter().flat_map(|f| fs::read(f).unwrap()).collect();
    fs::write(&joined, bytes).unwrap();
    let (code, report, text) = verify_args(
        &fx.key,
        &[std::ffi::OsStr::new("--no-state"), joined.as_os_str()],
    );
    // Exit 3: intact, its end not checked (--no-state).
    assert_eq!(code, Some(3), "verify of the files as one\n{text}");
    assert_eq!(
        report["summary"]["records"].as_u64(),
        Some(all.len() as u64)
    );
    fs::remove_file(&joined).unwrap();
    all
}

#[test]
fn one_process_rotates_into_a_chain_of_files() {
    let fx = Fixture::new();
    run_signer(&fx, &env_with(&fx, &fx.softhsm_conf, 300), "signer");
    let files = files_in_order(&fx);
    assert!(
        files.len() >= 4,
        "300 signs at a 64 KiB limit make several files: {files:?}"
    );
    let all = check_rotated_set(&fx, &files);
    let signs = all
        .iter()
        .filter(|r| r["fn"] == "C_Sign" && r["out"] == "returned")
        .count();
    assert_eq!(signs, 300, "every signature is on record");
    eprintln!("{} records in {} files", all.len(), files.len());

    // The current log gone (and with it the newest records): `verify DIR` still finds the
    // chain's state file by name, and reports the records missing at the end.
    let current = files.last().unwrap();
    let away = tempfile::tempdir().unwrap();
    let moved = away.path().join("current-log");
    fs::rename(current, &moved).unwrap();
    let (code, report, text) = verify_args(&fx.key, &[fx.dir.path().as_os_str()]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(report["problem"]["kind"], "truncated", "{text}");
    assert_eq!(report["state_checked"], true, "{text}");
    fs::rename(&moved, current).unwrap();

    // A missing middle file: reported as records missing where the next file starts.
    let gone = &files[files.len() / 2];
    let first_after = records(&files[files.len() / 2 + 1])[0]["seq"].as_u64();
    fs::remove_file(gone).unwrap();
    let (code, report, text) = verify_args(&fx.key, &[fx.dir.path().as_os_str()]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(report["problem"]["kind"], "missing", "{text}");
    assert_eq!(report["problem"]["line"].as_u64(), Some(1), "{text}");
    assert_eq!(report["problem"]["seq"].as_u64(), first_after, "{text}");
    assert_eq!(
        report["problem"]["file"].as_str(),
        files[files.len() / 2 + 1].to_str(),
        "{text}"
    );
    let detail = report["problem"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("first line of its file") && detail.contains("is missing"),
        "the report says a file is missing: {detail}"
    );
}

/// P11AUDIT_LOG_MODE is the mode of every log file p11audit creates, the first and each one a
/// rotation starts, whatever the process's umask: a service run with `UMask=0077` must still
/// give a log-reader group its `0640`.
#[test]
fn log_files_get_the_mode_asked_for_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let fx = Fixture::new();
    let mut env = env_with(&fx, &fx.softhsm_conf, 120);
    env.push(("P11AUDIT_LOG_MODE", "0640".into()));
    let mut cmd = child_command(CHILD, ROLE_VAR, "sign", &env);
    // SAFETY: umask is async-signal-safe and touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        })
    };
    let run = run_with_timeout(cmd, fx.dir.path(), "signer with umask 077");
    assert!(run.status.success(), "{}", run.dump());
    let files = files_in_order(&fx);
    assert!(
        files.len() >= 2,
        "120 signs at a 64 KiB limit rotate: {files:?}"
    );
    for f in &files {
        let mode = fs::metadata(f).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640, "{}: mode {mode:o}", f.display());
    }
    let state = fs::metadata(fx.state()).unwrap().permissions().mode() & 0o7777;
    assert_eq!(state, 0o600, "state file mode {state:o}");
}

/// Bytes of disk the file holds (st_blocks are 512-byte units whatever the filesystem).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

/// The writer reserves disk space past the log's end (fallocate KEEP_SIZE, to spare each append
/// the filesystem's block allocation), never past the rotation size, and never changes a file's
/// size or bytes by doing so.
#[test]
fn space_is_reserved_ahead_of_the_log_but_not_past_the_rotation_size() {
    // Without rotation: space is reserved ahead of the end.
    let fx = Fixture::new();
    let mut env = env_with(&fx, &fx.softhsm_conf, 20);
    env.retain(|(k, _)| *k != "P11AUDIT_ROTATE_BYTES");
    run_signer(&fx, &env, "signer without rotation");
    let size = fs::metadata(&fx.log).unwrap().len();
    let reserved = allocated(&fx.log);
    // Does this filesystem keep space reserved past a file's end? (util-linux fallocate -n)
    let probe = fx.dir.path().join("probe");
    fs::File::create(&probe).unwrap();
    let probed = std::process::Command::new("fallocate")
        .args(["-n", "-l", "1M"])
        .arg(&probe)
        .status()
        .is_ok_and(|s| s.success())
        && allocated(&probe) >= 1 << 20;
    if probed {
        assert!(
            reserved >= size + (512 << 10),
            "a step of 1 MiB is reserved: {reserved} allocated for {size} bytes"
        );
    } else {
        eprintln!(
            "SKIP part: {} cannot reserve space past a file's end",
            fx.dir.path().display()
        );
    }
    let (code, _, text) = verify_args(&fx.key, &[fx.log.as_os_str()]);
    assert_eq!(code, Some(0), "{text}");

    // With rotation: no file holds reserved space past the rotation size.
    let fx = Fixture::new();
    run_signer(
        &fx,
        &env_with(&fx, &fx.softhsm_conf, 200),
        "signer with rotation",
    );
    let files = files_in_order(&fx);
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        let held = allocated(f);
        assert!(
            held <= LIMIT + (16 << 10),
            "{} holds {held} bytes of disk for a rotation size of {LIMIT}",
            f.display()
        );
    }
    check_rotated_set(&fx, &files);
}

#[test]
fn processes_follow_each_others_rotations() {
    const PROCS: usize = 4;
    const SIGNS: usize = 120;
    let fx = Fixture::new();
    let runs: Vec<std::thread::JoinHandle<Finished>> = (0..PROCS)
        .map(|i| {
            // One token per process: SoftHSM's file store is not safe for several processes.
            let conf = new_token(&fx.dir.path().join(format!("token-{i}")));
            let env = env_with(&fx, &conf, SIGNS);
            let cmd = child_command(CHILD, ROLE_VAR, "sign", &env);
            let work = fx.dir.path().to_path_buf();
            std::thread::spawn(move || run_with_timeout(cmd, &work, "signer"))
        })
        .collect();
    for r in runs {
        let run = r.join().unwrap();
        assert!(run.status.success(), "{}", run.dump());
    }
    let files = files_in_order(&fx);
    assert!(files.len() >= 4, "{files:?}");
    let all = check_rotated_set(&fx, &files);
    let mut per_pid = std::collections::BTreeMap::<u64, (usize, usize, usize)>::new();
    for r in &all {
        let e = per_pid.entry(r["pid"].as_u64().unwrap()).or_default();
        match (r["ev"].as_str().unwrap(), r["fn"].as_str()) {
            ("attach", _) => e.0 += 1,
            ("close", _) => e.1 += 1,
            ("outcome", Some("C_Sign")) if r["out"] == "returned" => e.2 += 1,
            _ => {}
        }
    }
    let signers: Vec<_> = per_pid.values().filter(|v| v.2 > 0).collect();
    assert_eq!(signers.len(), PROCS, "{per_pid:?}");
    for v in signers {
        assert_eq!(*v, (1, 1, SIGNS), "attach, close and every signature, once");
    }
}

/// A writer killed at each step of its first rotation; then a new process (which has none of
/// the files open) finishes the rotation and logs on, and the set verifies with nothing lost.
/// - `after:N` with N the write that carries the rotate record is not reachable by count, so
///   `link:1` stands for "record written, state stored, no file step done";
/// - `rename:1`: the old file has its second name, the new file is not at the path yet;
/// - `renamed:1`: the new file is at the path, the state still names the old file.
#[test]
fn a_writer_killed_mid_rotation_is_finished_by_the_next() {
    for point in ["link:1", "rename:1", "renamed:1"] {
        let fx = Fixture::new();
        let lib = compile_c(fx.dir.path(), "crash_at", &["-shared", "-fPIC", "-ldl"]);
        let mut env = env_with(&fx, &fx.softhsm_conf, 300);
        env.push(("LD_PRELOAD", lib.into()));
        env.push(("CRASH_AT", point.into()));
        env.push(("CRASH_AT_LOG", fx.log.clone().into()));
        let run = run_with_timeout(
            child_command(CHILD, ROLE_VAR, "sign", &env),
            fx.dir.path(),
            &format!("signer killed at {point}"),
        );
        assert_eq!(
            run.status.signal(),
            Some(libc::SIGKILL),
            "{point}\n{}",
            run.dump()
        );
        // The old file, by whichever name it has now.
        let old = files_in_order(&fx)
            .into_iter()
            .find(|f| {
                fs::read_to_string(f)
                    .map(|t| {
                        t.lines()
                            .last()
                            .is_some_and(|l| l.contains("\"ev\":\"rotate\""))
                    })
                    .unwrap_or(false)
            })
            .unwrap_or_else(|| panic!("{point}: a file ends with the rotate record"));
        let before = records(&old);

        run_signer(
            &fx,
            &env_with(&fx, &fx.softhsm_conf, 20),
            &format!("{point}: next signer"),
        );
        let files = files_in_order(&fx);
        assert!(files.len() >= 2, "{point}: {files:?}");
        assert_eq!(
            records(&files[0]),
            before,
            "{point}: the old file, renamed, holds exactly what it held"
        );
        assert!(
            !fx.dir.path().join("audit.jsonl.next").exists(),
            "{point}: no leftover .next file"
        );
        check_rotated_set(&fx, &files);
    }
}
