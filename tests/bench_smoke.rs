//! A short pass of the benchmark programs (examples/p11bench.rs, and examples/p11calls.rs which
//! times each call of an operation), so that they keep working: every operation runs directly
//! against SoftHSM and through p11audit, at 1 and 2 threads, and its counts agree with the audit
//! log it produced. No time is asserted (docs/PERFORMANCE.md has the figures and the commands
//! that measure them).

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// `cargo test` builds the examples next to the test binaries' directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let debug_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bench = debug_dir.join("examples").join(name);
    assert!(
        bench.is_file(),
        "{} not built (cargo test builds the examples)",
        bench.display()
    );
    bench
}

fn p11bench() -> PathBuf {
    example("p11bench")
}

/// The program's ops, from its --help.
fn ops_of(program: &std::path::Path) -> Vec<String> {
    let help = Command::new(program)
        .arg("--help")
        .output()
        .expect("--help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    help.lines()
        .find_map(|l| l.strip_prefix("ops: "))
        .unwrap_or_else(|| panic!("--help lists the ops: {help}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn run_bench(fx: &Fixture, module: &std::path::Path, threads: u32, shim: bool) -> Vec<Value> {
    run_program(&p11bench(), fx, module, threads, shim)
}

fn run_program(
    program: &std::path::Path,
    fx: &Fixture,
    module: &std::path::Path,
    threads: u32,
    shim: bool,
) -> Vec<Value> {
    let mut cmd = Command::new(program);
    cmd.arg("--module")
        .arg(module)
        .args(["--pin", USER_PIN, "--threads", &threads.to_string()])
        .args(["--seconds", "0.05"])
        .env("SOFTHSM2_CONF", &fx.softhsm_conf);
    if shim {
        cmd.env("P11AUDIT_MODULE", SOFTHSM)
            .env("P11AUDIT_LOG", &fx.log)
            .env("P11AUDIT_KEY_FILE", &fx.key);
    }
    let what = format!("{} shim={shim} threads={threads}", program.display());
    let run = run_with_timeout(cmd, fx.dir.path(), &what);
    assert!(run.status.success(), "{what}\n{}", run.dump());
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}")))
        .collect()
}

#[test]
fn every_benchmark_operation_runs_direct_and_through_p11audit() {
    // The operations p11bench knows, from its --help: every one of them must run.
    let expected_ops = ops_of(&p11bench());
    assert!(expected_ops.len() >= 12, "{expected_ops:?}");
    for threads in [1, 2] {
        let fx = Fixture::new();
        let direct = run_bench(&fx, std::path::Path::new(SOFTHSM), threads, false);
        let shim = run_bench(&fx, &shim_library(), threads, true);
        for rows in [&direct, &shim] {
            let ops: Vec<&str> = rows.iter().map(|r| r["op"].as_str().unwrap()).collect();
            // login+logout runs at 1 thread only (login state belongs to the application).
            let want: Vec<&str> = expected_ops
                .iter()
                .map(String::as_str)
                .filter(|op| threads == 1 || *op != "login_logout")
                .collect();
            assert_eq!(ops, want, "threads={threads}");
            for r in rows.iter() {
                assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
                assert_eq!(r["threads"].as_u64(), Some(u64::from(threads)), "{r}");
            }
        }
        for r in &direct {
            assert!(r["calls_per_op"].is_null(), "direct runs have no log: {r}");
        }
        // Through p11audit the counts come from the log: a sign is SignInit, a length query and
        // Sign, and each op wrote records. (Runs this short count a few records of the
        // threads' start and end: hence the margin. In 1 s runs it is below 1%.)
        let by_op = |op: &str| shim.iter().find(|r| r["op"] == op).unwrap();
        for op in [
            "ecdsa_p256_sign",
            "hmac_sha256_64",
            "sha256_1k",
            "aes_cbc_1k",
        ] {
            let calls = by_op(op)["calls_per_op"].as_f64().unwrap();
            assert!((calls - 3.0).abs() < 0.4, "{op}: {calls} calls per op");
        }
        let get_info = by_op("get_info")["calls_per_op"].as_f64().unwrap();
        assert!((get_info - 1.0).abs() < 0.2, "get_info: {get_info}");
        for r in &shim {
            assert!(r["log_bytes_per_op"].as_f64().unwrap() > 100.0, "{r}");
        }
        // A single-part sign with its length query is one record: the C_Sign outcome that
        // tells the C_SignInit and counts the query.
        let records = by_op("ecdsa_p256_sign")["records_per_op"].as_f64().unwrap();
        assert!(
            (records - 1.0).abs() < 0.3,
            "ecdsa_p256_sign: {records} records per op"
        );
        fx.assert_verifies(&format!("the benchmark's log at {threads} threads"));
    }
}

/// p11calls times an operation's three calls one by one: each op gives three rows, in call
/// order, and through p11audit every call it timed is in the log.
#[test]
fn every_per_call_operation_runs_direct_and_through_p11audit() {
    let program = example("p11calls");
    let ops = ops_of(&program);
    assert!(ops.len() >= 4, "{ops:?}");
    for threads in [1, 2] {
        let fx = Fixture::new();
        let direct = run_program(&program, &fx, std::path::Path::new(SOFTHSM), threads, false);
        let shim = run_program(&program, &fx, &shim_library(), threads, true);
        for rows in [&direct, &shim] {
            assert_eq!(rows.len(), 3 * ops.len(), "{rows:?}");
            for (op, calls) in ops.iter().zip(rows.chunks(3)) {
                let names: Vec<&str> = calls.iter().map(|r| r["op"].as_str().unwrap()).collect();
                assert!(names[0].starts_with(&format!("{op}/C_")), "{names:?}");
                assert!(names[0].ends_with("Init"), "{names:?}");
                let call = names[2];
                assert_eq!(names[1], format!("{call}/len"));
                let ops_run = calls[0]["ops"].as_u64().unwrap();
                assert!(ops_run > 0, "{calls:?}");
                for r in calls {
                    assert_eq!(r["ops"].as_u64(), Some(ops_run), "{r}");
                    assert_eq!(r["threads"].as_u64(), Some(u64::from(threads)), "{r}");
                    assert!(r["median_us"].as_f64().unwrap() > 0.0, "{r}");
                }
            }
        }
        // Every timed call is in the log (and the warm-up's too, 20 per thread and op).
        let records = fx.records();
        let outcomes = |function: &str, out: Option<&str>| {
            records
                .iter()
                .filter(|r| r["ev"] == "outcome" && r["fn"] == function)
                .filter(|r| out.is_none_or(|o| r["out"] == o))
                .count() as u64
        };
        for (op, calls) in ops.iter().zip(shim.chunks(3)) {
            let ops_run = calls[0]["ops"].as_u64().unwrap();
            let name = calls[0]["op"].as_str().unwrap();
            let init = name.strip_prefix(&format!("{op}/")).unwrap();
            let call = calls[2]["op"].as_str().unwrap().rsplit('/').next().unwrap();
            // ECDSA and HMAC share C_SignInit and C_Sign: at least this op's calls are there,
            // as records or told in the outcome of their operation's first call (`init`).
            let told_inits = records
                .iter()
                .filter(|r| r["ev"] == "outcome" && r["init"]["fn"] == init)
                .count() as u64;
            assert!(outcomes(init, None) + told_inits >= ops_run, "{op}: {init}");
            // A length query is counted in the next outcome of its call (`len_queries`).
            let counted_queries: u64 = records
                .iter()
                .filter(|r| r["ev"] == "outcome" && r["fn"] == call)
                .filter_map(|r| r["len_queries"].as_u64())
                .sum();
            assert!(
                outcomes(call, Some("length_query")) + counted_queries >= ops_run,
                "{op}: {call}"
            );
            assert!(outcomes(call, Some("returned")) >= ops_run, "{op}: {call}");
        }
        fx.assert_verifies(&format!(
            "the per-call benchmark's log at {threads} threads"
        ));
    }
}

/// An op name neither program knows is refused before any thread starts: a usage error, not a
/// measuring thread that panics while the others wait for it at a barrier for good.
#[test]
fn an_unknown_op_is_refused_at_once() {
    for program in [p11bench(), example("p11calls")] {
        let fx = Fixture::new();
        let mut cmd = Command::new(&program);
        cmd.args(["--module", SOFTHSM, "--pin", USER_PIN, "--op", "no_such_op"])
            .env("SOFTHSM2_CONF", &fx.softhsm_conf);
        let what = format!("{} --op no_such_op", program.display());
        let run = run_with_timeout(cmd, fx.dir.path(), &what);
        assert_eq!(run.status.code(), Some(2), "{}", run.dump());
        assert!(
            run.stderr.contains("unknown op no_such_op"),
            "{}",
            run.dump()
        );
        assert!(run.stdout.is_empty(), "{}", run.dump());
    }
}

/// scripts/bench-upper-bound.sh measures a copy of the source with part of the work cut out.
/// Its edits are matched as text: each must still apply, and apply where it says, or the
/// script would measure something other than what PERFORMANCE.md says it measures.
#[test]
fn the_upper_bound_edits_still_apply() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/bench-upper-bound.sh");
    // (bound, file, text that must be gone from the copy, text that must stay)
    let write_call = "self.log.write_all(&self.buf)";
    let detail_call = "push_detail(&mut m, &r.detail);";
    let cases: [(&str, &[&str], &[&str]); 3] = [
        ("writes", &[write_call], &[detail_call]),
        (
            "records",
            &[detail_call, "push_bytes(m.key(\"exe\"), r.exe.bytes());"],
            &[write_call],
        ),
        ("both", &[write_call, detail_call], &[]),
    ];
    for (bound, gone, kept) in cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg("--check")
            .env("TMPDIR", tmp.path())
            .env("P11BOUND", bound)
            .current_dir(&root);
        let run = run_with_timeout(cmd, tmp.path(), &format!("bench-upper-bound {bound}"));
        assert_eq!(run.status.code(), Some(0), "{}", run.dump());
        let copy = tmp.path().join("p11audit-upper-bound/src");
        let source = std::fs::read_to_string(copy.join("writer/audit_log.rs"))
            .expect("audit_log.rs")
            + &std::fs::read_to_string(copy.join("format/encode.rs")).expect("encode.rs");
        for text in gone {
            assert!(!source.contains(text), "{bound}: {text} still in the copy");
        }
        for text in kept {
            assert!(source.contains(text), "{bound}: {text} gone from the copy");
        }
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg("--check")
        .env("TMPDIR", tmp.path())
        .env("P11BOUND", "everything")
        .current_dir(&root);
    let run = run_with_timeout(cmd, tmp.path(), "bench-upper-bound everything");
    assert_eq!(run.status.code(), Some(2), "{}", run.dump());
}
