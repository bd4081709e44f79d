//! A short pass of the benchmark program (examples/p11bench.rs), so that it keeps working: every
//! operation runs directly against SoftHSM and through p11audit, at 1 and 2 threads, and its
//! counts agree with the audit log it produced. No time is asserted (docs/PERFORMANCE.md has the
//! figures and the command that measures them).

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// `cargo test` builds the examples next to the test binaries' directory.
fn p11bench() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let debug_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bench = debug_dir.join("examples").join("p11bench");
    assert!(
        bench.is_file(),
        "{} not built (cargo test builds the examples)",
        bench.display()
    );
    bench
}

fn run_bench(fx: &Fixture, module: &std::path::Path, threads: u32, shim: bool) -> Vec<Value> {
    let mut cmd = Command::new(p11bench());
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
    let what = format!("p11bench shim={shim} threads={threads}");
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
    let help = Command::new(p11bench())
        .arg("--help")
        .output()
        .expect("p11bench --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let expected_ops: Vec<&str> = help
        .lines()
        .find_map(|l| l.strip_prefix("ops: "))
        .expect("--help lists the ops")
        .split_whitespace()
        .collect();
    assert!(expected_ops.len() >= 12, "{help}");
    for threads in [1, 2] {
        let fx = Fixture::new();
        let direct = run_bench(&fx, std::path::Path::new(SOFTHSM), threads, false);
        let shim = run_bench(&fx, &shim_library(), threads, true);
        for rows in [&direct, &shim] {
            let ops: Vec<&str> = rows.iter().map(|r| r["op"].as_str().unwrap()).collect();
            // login+logout runs at 1 thread only (login state belongs to the application).
            let want: Vec<&str> = expected_ops
                .iter()
                .copied()
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
        fx.assert_verifies(&format!("the benchmark's log at {threads} threads"));
    }
}
