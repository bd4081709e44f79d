//! `fork`: a child that calls C_Initialize again keeps logging to the same chain under its own
//! pid, and parent and child keep one valid chain.
//!
//! The driver is this test binary re-executed (`--exact fork_driver`, P11AUDIT_TEST_ROLE naming
//! the scenario). It loads the shim with `dlopen` and calls it through the raw function table,
//! works, then calls `fork()`. The forked child calls C_Initialize again (PKCS#11 requires it of
//! a child that wants to use the module), opens a session of its own, logs in, works,
//! finalizes and leaves with `_exit`, so that no test-harness teardown (or anything the parent
//! left buffered) runs there. The parent waits for it under a timeout, goes on working and
//! finalizes. The driver prints its pid, the children's pids and where the log stood at each
//! fork; the test then checks the log:
//! - `p11audit verify` accepts it; seq runs 0..n-1 with each line one whole record; every
//!   intent has its outcome from the same pid and tid (`check_chain`);
//! - it holds records of the parent and of every child, and of no one else;
//! - a child's records carry its pid (and its own thread id), start with the `attach` of its
//!   C_Initialize, and all come after the fork;
//! - nothing is written twice: records the parent had queued when it forked are written by the
//!   parent only, so no (pid, tid, ts, fn, ev) appears twice;
//! - the parent keeps writing to the chain after its children.
//!
//! Two scenarios: one fork from a single-threaded parent, and 20 forks while another thread of
//! the parent signs in a loop, so that a p11audit lock may be held at the moment of fork: a
//! forked child that does not finish within CHILD_TIMEOUT fails the test (with its stacks, if
//! gdb is installed). In the second, SoftHSM is loaded through tests/c/fork_gate.c, a module
//! that forwards every call and keeps fork out of SoftHSM's signing functions: SoftHSM's reset
//! on fork frees the signing operation the other thread is in the middle of (a double free
//! about once in a few thousand forks). Fork still lands anywhere in p11audit.
//!
//! SoftHSM 2.6.1 answers a forked child's C_Initialize with CKR_CRYPTOKI_ALREADY_INITIALIZED
//! unless its configuration says `library.reset_on_fork = true`: the tests run SoftHSM with a
//! copy of the token's softhsm2.conf that does.
//!
//! Needs `cc`, `softhsm2-util` and `/usr/lib/softhsm/libsofthsm2.so` (scripts/install-deps.sh);
//! `gdb` only to show the stacks of a hung child.

mod common;

use common::raw::{ok, os_locking_args, Module};
use common::*;
use cryptoki_sys as ck;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DRIVER: &str = "fork_driver";
const MARK: &str = "P11AUDIT-FORK-RESULT ";
/// Role: fork once from a single-threaded parent.
const ONCE: &str = "once";
/// Role: fork FORKS_WHILE_BUSY times while another thread signs.
const BUSY: &str = "busy";
const FORKS_WHILE_BUSY: usize = 20;
/// The module tests/c/fork_gate.c forwards to.
const GATE_MODULE_VAR: &str = "FORK_GATE_MODULE";
/// How long a forked child may take for its whole run.
const CHILD_TIMEOUT: Duration = Duration::from_secs(15);
/// Informational calls the parent makes just before it forks: their records may wait, so they
/// are queued in the parent at the moment of fork.
const QUEUED: usize = 8;
const DATA: [u8; 32] = [0x5a; 32];

// ---- the driver (child of the test) ---------------------------------------------------------

/// Writes `msg` to stderr with one `write`: usable between `fork` and `_exit`.
fn say(msg: &str) {
    // SAFETY: a valid buffer of that length.
    unsafe { libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len()) };
}

/// What a forked child does, from its C_Initialize to its C_Finalize.
fn child_work(m: Module) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let step = |s: &str| say(&format!("forked child {pid}: {s}\n"));
    step("C_Initialize");
    let rv = m.initialize_rv(Some(os_locking_args()));
    assert_eq!(
        rv,
        ck::CKR_OK,
        "C_Initialize in the forked child returned {} (SoftHSM needs library.reset_on_fork = true)",
        common::raw::rv_name(rv)
    );
    step("C_GetSlotList, C_OpenSession, C_Login");
    let s = m.open_rw(m.first_slot());
    ok(m.login(s), "C_Login");
    step("C_GenerateRandom");
    m.random(s, 32);
    step("C_GenerateKeyPair, C_Sign, C_Verify");
    let (public, private) = m.generate_ec(s);
    let sig = m.sign_all(s, private, &DATA);
    ok(m.verify(s, public, &DATA, &sig), "C_Verify");
    step("C_Logout, C_CloseSession, C_Finalize");
    m.logout(s);
    m.close(s);
    m.finalize();
    step("done");
}

/// Forks. The child runs `work` and leaves with `_exit`: 0 if `work` returned, 101 if it
/// panicked. Returns the child's pid.
fn fork_child(work: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the child only runs `work` (calls into the shim, which must cope with exactly
    // this) and then `_exit`s without running destructors or atexit handlers.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
            Ok(()) => 0,
            Err(_) => 101,
        };
        // SAFETY: ends the child without running anything of the parent's.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// The stacks of a hung process, for the failure message.
fn stacks_of(pid: libc::pid_t) -> String {
    let gdb = Command::new("timeout")
        .args(["20", "gdb", "-nx", "-batch", "-p"])
        .arg(pid.to_string())
        .args(["-ex", "thread apply all bt"])
        .output();
    let mut s = match gdb {
        Ok(out) if !out.stdout.is_empty() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => format!("gdb: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => format!("no gdb ({e})"),
    };
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let wchan = fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
            s.push_str(&format!(
                "\nthread {}: waiting in {wchan}",
                t.file_name().to_string_lossy()
            ));
        }
    }
    s
}

/// Waits for the forked child `pid`; fails unless it exits 0 within CHILD_TIMEOUT. A child
/// that does not finish is deadlocked: its stacks go into the message, then it is killed.
fn wait_child(pid: libc::pid_t, what: &str) {
    let started = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid {pid}: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if started.elapsed() > CHILD_TIMEOUT {
            let stacks = stacks_of(pid);
            // SAFETY: our own child; a valid out-pointer.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!(
                "{what} (pid {pid}) did not finish within {CHILD_TIMEOUT:?}: deadlocked after \
                 fork?\n{stacks}"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let exited_0 = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    assert!(
        exited_0,
        "{what} (pid {pid}) failed: {} (its messages are on stderr)",
        if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exit status {}", libc::WEXITSTATUS(status))
        }
    );
}

/// Forks a child that runs `child_work` and waits for it. Returns its pid and the number of
/// lines in the log just before the fork.
fn fork_and_wait(m: Module, log: &Path, what: &str) -> Value {
    let lines_before = line_count(log);
    let pid = fork_child(|| child_work(m));
    wait_child(pid, what);
    json!({ "pid": pid, "lines_before": lines_before })
}

/// A session logged in as the user and an EC key pair: (session, public, private).
fn session_with_key(
    m: Module,
) -> (
    ck::CK_SESSION_HANDLE,
    ck::CK_OBJECT_HANDLE,
    ck::CK_OBJECT_HANDLE,
) {
    let s = m.open_rw(m.first_slot());
    ok(m.login(s), "C_Login");
    let (public, private) = m.generate_ec(s);
    (s, public, private)
}

fn fork_once(m: Module, log: &Path) -> Value {
    m.initialize();
    let (s, public, private) = session_with_key(m);
    let sig = m.sign_all(s, private, &DATA);
    ok(m.verify(s, public, &DATA, &sig), "C_Verify");
    for _ in 0..QUEUED {
        ok(m.session_state(s).0, "C_GetSessionInfo");
        // Distinct timestamps, so that a record written twice cannot pass for two calls.
        std::thread::sleep(Duration::from_millis(1));
    }
    let fork = fork_and_wait(m, log, "the forked child");

    // The parent goes on with its session and key.
    let sig = m.sign_all(s, private, &DATA);
    ok(m.verify(s, public, &DATA, &sig), "C_Verify after the fork");
    m.random(s, 16);
    m.logout(s);
    m.close(s);
    m.finalize();
    json!({ "forks": [fork], "queued": QUEUED })
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn fork_while_busy(m: Module, log: &Path) -> Value {
    m.initialize();
    let (s, public, private) = session_with_key(m);
    let signer_session = m.open_rw(m.first_slot());
    let stop = AtomicBool::new(false);
    let signed = AtomicUsize::new(0);
    let (forks, (signer_tid, signatures)) = std::thread::scope(|scope| {
        let signer = scope.spawn(|| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            while !stop.load(Ordering::Relaxed) {
                m.sign_all(signer_session, private, &DATA);
                signed.fetch_add(1, Ordering::Relaxed);
            }
            (tid, signed.load(Ordering::Relaxed))
        });
        // Stops the signer also when a fork fails: the scope waits for it before it unwinds.
        let _stop = StopOnDrop(&stop);
        let forks: Vec<Value> = (0..FORKS_WHILE_BUSY)
            .map(|i| {
                // Fork while the signer is at work: after its next signature.
                let before = signed.load(Ordering::Relaxed);
                let deadline = Instant::now() + Duration::from_secs(10);
                while signed.load(Ordering::Relaxed) == before {
                    assert!(Instant::now() < deadline, "the signing thread is stuck");
                    std::hint::spin_loop();
                }
                fork_and_wait(m, log, &format!("forked child {i}"))
            })
            .collect();
        drop(_stop);
        (forks, signer.join().expect("the signing thread panicked"))
    });

    let sig = m.sign_all(s, private, &DATA);
    ok(m.verify(s, public, &DATA, &sig), "C_Verify after the forks");
    m.close(signer_session);
    m.logout(s);
    m.close(s);
    m.finalize();
    json!({
        "forks": forks,
        "queued": 0,
        "signer_tid": signer_tid,
        "signatures": signatures,
    })
}

/// The driver: runs the scenario P11AUDIT_TEST_ROLE names and prints the result line.
#[test]
fn fork_driver() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let log = PathBuf::from(std::env::var_os("P11AUDIT_LOG").expect("P11AUDIT_LOG"));
    let m = Module::shim();
    let mut result = match role.as_str() {
        ONCE => fork_once(m, &log),
        BUSY => fork_while_busy(m, &log),
        other => panic!("unknown role {other}"),
    };
    result["parent"] = json!(std::process::id());
    print_marked(MARK, &result);
}

// ---- the test -------------------------------------------------------------------------------

/// A copy of the fixture's softhsm2.conf with `library.reset_on_fork = true`.
fn reset_on_fork_conf(fx: &Fixture) -> PathBuf {
    let conf = fs::read_to_string(&fx.softhsm_conf).expect("read softhsm2.conf");
    let mut lines: Vec<&str> = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with("library.reset_on_fork"))
        .collect();
    lines.push("library.reset_on_fork = true");
    let path = fx.dir.path().join("softhsm2-reset-on-fork.conf");
    fs::write(&path, lines.join("\n") + "\n").expect("write softhsm2.conf copy");
    path
}

fn u64_of(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// Runs the driver in `role` and checks the log (see the top of the file). Returns the
/// records, the parent's pid and the driver's result.
fn run_scenario(role: &str) -> (Vec<Value>, u64, Value) {
    let fx = Fixture::new();
    let mut env = fx.env();
    env.retain(|(k, _)| *k != "SOFTHSM2_CONF" && *k != "P11AUDIT_MODULE");
    env.push(("SOFTHSM2_CONF", reset_on_fork_conf(&fx).into()));
    if role == BUSY {
        // SoftHSM through tests/c/fork_gate.c, which keeps fork out of SoftHSM's signing
        // functions (see there): SoftHSM's reset on fork cannot cope with a signature in progress.
        let gate = compile_c(
            fx.dir.path(),
            "fork_gate",
            &["-shared", "-fPIC", "-ldl", "-lpthread"],
        );
        env.push(("P11AUDIT_MODULE", gate.into()));
        env.push((GATE_MODULE_VAR, SOFTHSM.into()));
    } else {
        env.push(("P11AUDIT_MODULE", SOFTHSM.into()));
    }
    let what = format!("fork driver ({role})");
    let started = Instant::now();
    let run = run_child_ok(
        child_command(DRIVER, ROLE_VAR, role, &env),
        fx.dir.path(),
        &what,
    );
    eprintln!("{what}: {:?}", started.elapsed());
    let result = run.marked_json(MARK, &what);
    let parent = u64_of(&result["parent"], "parent");
    let forks: Vec<(u64, u64)> = result["forks"]
        .as_array()
        .expect("forks")
        .iter()
        .map(|f| {
            (
                u64_of(&f["pid"], "pid"),
                u64_of(&f["lines_before"], "lines_before"),
            )
        })
        .collect();
    let children: BTreeSet<u64> = forks.iter().map(|&(pid, _)| pid).collect();
    assert_eq!(children.len(), forks.len(), "child pids repeat: {forks:?}");

    let records = check_chain(&fx);
    let dump = || {
        fs::read_to_string(&fx.log).unwrap_or_default() + &format!("--- driver ---\n{}", run.dump())
    };
    let pid_of = |r: &Value| u64_of(&r["pid"], "pid");
    let of = |pid: u64| -> Vec<&Value> { records.iter().filter(|r| pid_of(r) == pid).collect() };
    let count = |recs: &[&Value], ev: &str, f: &str| {
        recs.iter()
            .filter(|r| r["ev"] == ev && r["fn"] == f)
            .count()
    };

    // Exactly the parent and its children wrote, on one chain started once.
    let mut want_pids = children.clone();
    want_pids.insert(parent);
    let pids: BTreeSet<u64> = records.iter().map(pid_of).collect();
    assert_eq!(pids, want_pids, "pids in the log\n{}", dump());
    assert_eq!(records[0]["ev"], "start", "seq 0 starts the chain");
    let starts = records.iter().filter(|r| r["ev"] == "start").count();
    assert_eq!(starts, 1, "the chain was started {starts} times");

    // Nothing written twice.
    let mut seen = BTreeMap::new();
    for r in &records {
        let key = ["pid", "tid", "ts", "fn", "ev"].map(|k| r[k].to_string());
        if let Some(first) = seen.insert(key, r["seq"].clone()) {
            panic!(
                "a record appears twice: seq {first} and {}: {r}\n{}",
                r["seq"],
                dump()
            );
        }
    }

    // Each child: under its own pid and thread id, from its attach on, after the fork.
    let mut last_child_seq = 0;
    for &(pid, lines_before) in &forks {
        let recs = of(pid);
        let first = recs[0];
        assert!(
            first["ev"] == "attach" && first["fn"] == "C_Initialize",
            "the first record of child {pid} is not the attach of its C_Initialize: {first}\n{}",
            dump()
        );
        for r in &recs {
            let seq = u64_of(&r["seq"], "seq");
            assert!(
                seq >= lines_before,
                "child {pid} wrote seq {seq}, but the log had {lines_before} records when it was \
                 forked: {r}"
            );
            assert_eq!(
                u64_of(&r["tid"], "tid"),
                pid,
                "the child's one thread has its pid as thread id: {r}"
            );
            last_child_seq = last_child_seq.max(seq);
        }
        for (ev, f, n) in [
            ("attach", "C_Initialize", 1),
            ("intent", "C_Initialize", 1),
            ("outcome", "C_Login", 1),
            ("outcome", "C_GenerateRandom", 1),
            ("outcome", "C_Finalize", 1),
            ("close", "C_Finalize", 1),
            // The parent's queued informational records are the parent's.
            ("outcome", "C_GetSessionInfo", 0),
        ] {
            assert_eq!(
                count(&recs, ev, f),
                n,
                "child {pid}: {ev} records of {f}\n{}",
                dump()
            );
        }
        for f in ["C_Initialize", "C_Login", "C_GenerateRandom", "C_Finalize"] {
            assert!(
                recs.iter()
                    .any(|r| r["ev"] == "outcome" && r["fn"] == f && r["rv"] == "CKR_OK"),
                "child {pid}: no CKR_OK outcome of {f}"
            );
        }
        assert!(
            recs.iter()
                .any(|r| r["fn"] == "C_Sign" && r["out"] == "returned"),
            "child {pid}: no signature handed out"
        );
    }

    // The parent: attached and closed once, its queued records written once, and still writing
    // after its last child.
    let recs = of(parent);
    assert_eq!(count(&recs, "attach", "C_Initialize"), 1, "parent attach");
    assert_eq!(count(&recs, "close", "C_Finalize"), 1, "parent close");
    assert_eq!(
        count(&recs, "outcome", "C_GetSessionInfo") as u64,
        u64_of(&result["queued"], "queued"),
        "the parent's C_GetSessionInfo records"
    );
    let last_parent_seq = recs.iter().map(|r| u64_of(&r["seq"], "seq")).max().unwrap();
    assert!(
        last_parent_seq > last_child_seq,
        "the parent wrote nothing after its children (last parent seq {last_parent_seq}, last \
         child seq {last_child_seq})"
    );
    (records, parent, result)
}

#[test]
fn forked_child_reinitializes_and_logs_under_its_own_pid() {
    let (records, _, result) = run_scenario(ONCE);
    assert_eq!(result["forks"].as_array().map(Vec::len), Some(1));
    eprintln!("one fork: {} records", records.len());
}

#[test]
fn fork_while_another_thread_signs_does_not_deadlock() {
    let (records, parent, result) = run_scenario(BUSY);
    assert_eq!(
        result["forks"].as_array().map(Vec::len),
        Some(FORKS_WHILE_BUSY)
    );
    // Every signature the signing thread made is in the log once.
    let signer = u64_of(&result["signer_tid"], "signer_tid");
    let signatures = u64_of(&result["signatures"], "signatures");
    assert!(signatures > 0, "the signing thread made no signature");
    let logged = records
        .iter()
        .filter(|r| {
            r["pid"] == parent
                && r["tid"] == signer
                && r["fn"] == "C_Sign"
                && r["out"] == "returned"
        })
        .count() as u64;
    assert_eq!(
        logged, signatures,
        "signatures of the signing thread in the log"
    );
    eprintln!(
        "{FORKS_WHILE_BUSY} forks while signing: {signatures} signatures, {} records",
        records.len()
    );
}
