//! Many threads and many processes on one chain: every record is written whole, exactly once,
//! in seq order, and the chain verifies.
//!
//! Each scenario runs in child processes (this test binary re-executed with
//! P11AUDIT_TEST_ROLE), because the shim reads its configuration at C_Initialize and SoftHSM can
//! be loaded only once per process. The children use the `cryptoki` crate, as an application
//! would. The expected record counts follow from what the children call: `Session::sign` is
//! C_SignInit (a prepare call: its outcome), C_Sign with a NULL buffer (a length query, counted
//! in the next C_Sign outcome) and C_Sign with the buffer (returned outcome, `len_queries` 1).

mod common;

use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const CHILD_THREADS: &str = "child_threads";
const CHILD_PROCESS: &str = "child_process";
const CHILD_SPINNER: &str = "child_spinner";
/// Sessions the main thread opens, uses and closes while the spinner runs.
const MAIN_ROUNDS: usize = 300;
const READY_VAR: &str = "P11AUDIT_TEST_READY";
const GO_VAR: &str = "P11AUDIT_TEST_GO";

const THREADS: usize = 8;
const SIGNS_PER_THREAD: usize = 500;
const PROCESSES: usize = 4;
const SIGNS_PER_PROCESS: usize = 200;

const DIGEST: [u8; 32] = [0x42; 32];

// ---- children -------------------------------------------------------------------------------

fn client() -> Pkcs11 {
    Pkcs11::new(shim_library()).expect("load the shim")
}

fn initialize(p: &Pkcs11) -> Slot {
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    *p.get_slots_with_token()
        .expect("C_GetSlotList")
        .first()
        .expect("a slot with a token")
}

fn login(s: &Session) {
    s.login(UserType::User, Some(&AuthPin::from(USER_PIN.to_string())))
        .expect("C_Login");
}

/// A P-256 key pair as session objects; returns the private key.
fn generate_ec(s: &Session) -> ObjectHandle {
    let (_public, private) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::EcParams(P256_OID.to_vec()),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
            ],
        )
        .expect("C_GenerateKeyPair");
    private
}

fn sign_n(s: &Session, key: ObjectHandle, n: usize) {
    for i in 0..n {
        let sig = s
            .sign(&Mechanism::Ecdsa, key, &DIGEST)
            .unwrap_or_else(|e| panic!("sign {i}: {e}"));
        assert_eq!(sig.len(), 64, "sign {i}");
    }
}

/// One process, THREADS threads, one session each, SIGNS_PER_THREAD signatures each.
#[test]
fn child_threads() {
    if !is_role(CHILD_THREADS) {
        return;
    }
    let p = client();
    let slot = initialize(&p);
    let main = p.open_rw_session(slot).expect("C_OpenSession");
    login(&main); // logs in every session of this process
    let key = generate_ec(&main); // session objects are visible to all sessions of the process
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let p = p.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let s = p.open_ro_session(slot).expect("C_OpenSession");
                barrier.wait();
                sign_n(&s, key, SIGNS_PER_THREAD);
                s.close().expect("C_CloseSession");
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for t in threads {
        t.join().expect("a signing thread panicked");
    }
    println!("SIGN_SECONDS={:.3}", started.elapsed().as_secs_f64());
    main.logout().expect("C_Logout");
    main.close().expect("C_CloseSession");
    p.finalize().expect("C_Finalize");
}

/// A thread that makes informational calls as fast as it can (their records wait, and fill the
/// queue) while the main thread makes a few calls of its own. Regression: once the queue was
/// full, the main thread had to write it, and the spinner refilled it during each write, so the
/// main thread wrote the spinner's records for ever (seen as `dlclose_and_reload` in faults.rs
/// hanging now and then). A thread now writes until its own record is out, no longer.
#[test]
fn child_spinner() {
    if !is_role(CHILD_SPINNER) {
        return;
    }
    let p = client();
    let slot = initialize(&p);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinner = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut calls = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                p.get_library_info().expect("C_GetInfo");
                calls += 1;
            }
            calls
        })
    };
    for _ in 0..MAIN_ROUNDS {
        let s = p.open_ro_session(slot).expect("C_OpenSession");
        s.generate_random_vec(16).expect("C_GenerateRandom");
        s.close().expect("C_CloseSession");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls = spinner.join().expect("spinner");
    println!("SPINNER_CALLS={calls}");
    p.finalize().expect("C_Finalize");
}

#[test]
fn a_thread_that_floods_the_queue_does_not_stall_the_others() {
    let fx = Fixture::new();
    let run = run_child_ok(
        child_command(CHILD_SPINNER, ROLE_VAR, CHILD_SPINNER, &fx.env()),
        fx.dir.path(),
        "spinner",
    );
    let calls: u64 = run.value_after("SPINNER_CALLS").unwrap().parse().unwrap();
    let records = check_chain(&fx);
    let infos = records.iter().filter(|r| r["fn"] == "C_GetInfo").count() as u64;
    assert_eq!(infos, calls, "every C_GetInfo of the spinner is on record");
    let randoms = records
        .iter()
        .filter(|r| r["fn"] == "C_GenerateRandom" && r["ev"] == "outcome")
        .count();
    assert_eq!(randoms, MAIN_ROUNDS, "and every call of the other thread");
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One of PROCESSES processes started together on a log with no chain yet.
#[test]
fn child_process() {
    if !is_role(CHILD_PROCESS) {
        return;
    }
    let ready = PathBuf::from(std::env::var_os(READY_VAR).expect(READY_VAR));
    let go = PathBuf::from(std::env::var_os(GO_VAR).expect(GO_VAR));
    // Load everything first, so that the processes race from C_Initialize on.
    let p = client();
    fs::write(&ready, b"").expect("write ready file");
    wait_for(&go, "the go file");
    let started = Instant::now();
    let slot = initialize(&p);
    let s = p.open_rw_session(slot).expect("C_OpenSession");
    login(&s);
    let key = generate_ec(&s);
    sign_n(&s, key, SIGNS_PER_PROCESS);
    s.logout().expect("C_Logout");
    s.close().expect("C_CloseSession");
    p.finalize().expect("C_Finalize");
    println!("PROCESS_SECONDS={:.3}", started.elapsed().as_secs_f64());
}

// ---- parent ---------------------------------------------------------------------------------

fn check_child(run: &Finished, what: &str) {
    assert!(run.status.success(), "{what} failed\n{}", run.dump());
    assert!(
        run.p11audit_lines().is_empty(),
        "{what}: the shim complained\n{}",
        run.stderr
    );
}

/// Records per (ev, fn).
fn histogram(records: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut h = BTreeMap::new();
    for r in records {
        let key = (
            r["ev"].as_str().unwrap_or("?").to_string(),
            r["fn"].as_str().unwrap_or("").to_string(),
        );
        *h.entry(key).or_default() += 1;
    }
    h
}

fn expected(rows: &[(&str, &str, usize)]) -> BTreeMap<(String, String), usize> {
    rows.iter()
        .map(|(ev, f, n)| ((ev.to_string(), f.to_string()), *n))
        .collect()
}

/// What one `initialize .. open sessions .. login .. generate .. sign .. finalize` run writes.
fn per_process_records(sessions: usize, signs: usize) -> Vec<(&'static str, &'static str, usize)> {
    vec![
        // cryptoki's Pkcs11::new negotiates before C_Initialize: C_GetInterface, then
        // C_GetFunctionList. The shim answers both itself and writes them once configured.
        ("outcome", "C_GetInterface", 1),
        ("outcome", "C_GetFunctionList", 1),
        ("attach", "C_Initialize", 1),
        ("intent", "C_Initialize", 1),
        ("outcome", "C_Initialize", 1),
        // get_slots_with_token: count, then list.
        ("outcome", "C_GetSlotList", 2),
        ("intent", "C_OpenSession", sessions),
        ("outcome", "C_OpenSession", sessions),
        ("intent", "C_Login", 1),
        ("outcome", "C_Login", 1),
        ("intent", "C_GenerateKeyPair", 1),
        ("outcome", "C_GenerateKeyPair", 1),
        // The signature, telling its C_SignInit and counting its length query.
        ("outcome", "C_Sign", signs),
        ("outcome", "C_Logout", 1),
        ("outcome", "C_CloseSession", sessions),
        ("outcome", "C_Finalize", 1),
        ("close", "C_Finalize", 1),
    ]
}

fn assert_counts(records: &[Value], want: BTreeMap<(String, String), usize>) {
    let got = histogram(records);
    let total: usize = want.values().sum();
    if got != want {
        let keys: BTreeSet<_> = got.keys().chain(want.keys()).collect();
        let diff: Vec<String> = keys
            .into_iter()
            .filter(|k| got.get(*k) != want.get(*k))
            .map(|k| {
                format!(
                    "{:>8} {:<22} got {:>6} want {:>6}",
                    k.0,
                    k.1,
                    got.get(k).copied().unwrap_or(0),
                    want.get(k).copied().unwrap_or(0)
                )
            })
            .collect();
        panic!("record counts differ:\n{}", diff.join("\n"));
    }
    assert_eq!(records.len(), total);
}

/// C_Sign outcomes: all CKR_OK, 64-byte signatures handed out, each counting its length
/// query. Returns the number of signatures handed out per (pid, tid).
fn check_signs(records: &[Value], total: usize) -> BTreeMap<(u64, u64), usize> {
    let signs: Vec<&Value> = records
        .iter()
        .filter(|r| r["ev"] == "outcome" && r["fn"] == "C_Sign")
        .collect();
    assert!(signs.iter().all(|r| r["rv"] == "CKR_OK"));
    let returned: Vec<&&Value> = signs.iter().filter(|r| r["out"] == "returned").collect();
    let queries: u64 = signs.iter().filter_map(|r| r["len_queries"].as_u64()).sum();
    assert_eq!(
        returned.len(),
        total,
        "C_Sign outcomes with \"out\":\"returned\""
    );
    assert_eq!(
        queries, total as u64,
        "length queries counted in C_Sign outcomes (\"len_queries\")"
    );
    assert!(returned.iter().all(|r| r["out_len"] == 64));
    let inits_told = signs
        .iter()
        .filter(|r| r["init"]["fn"] == "C_SignInit" && r["init"].get("tid").is_none())
        .count();
    assert_eq!(
        inits_told, total,
        "C_Sign outcomes telling their thread's C_SignInit (\"init\")"
    );
    let mut per_thread = BTreeMap::new();
    for r in returned {
        let key = (r["pid"].as_u64().unwrap(), r["tid"].as_u64().unwrap());
        *per_thread.entry(key).or_default() += 1;
    }
    per_thread
}

#[test]
fn threads_signing_in_one_process() {
    let fx = Fixture::new();
    let started = Instant::now();
    let run = run_with_timeout(
        child_command(CHILD_THREADS, ROLE_VAR, CHILD_THREADS, &fx.env()),
        fx.dir.path(),
        CHILD_THREADS,
    );
    let elapsed = started.elapsed();
    check_child(&run, CHILD_THREADS);
    let sign_seconds = run.value_after("SIGN_SECONDS").unwrap_or("?");
    eprintln!(
        "{THREADS} threads x {SIGNS_PER_THREAD} signs: child {elapsed:?}, signing {sign_seconds} s"
    );

    let started = Instant::now();
    let records = check_chain(&fx);
    eprintln!(
        "verify and checks of {} records: {:?}",
        records.len(),
        started.elapsed()
    );
    let signs = THREADS * SIGNS_PER_THREAD;
    let mut want = vec![("start", "", 1)];
    want.extend(per_process_records(THREADS + 1, signs));
    assert_counts(&records, expected(&want));
    let per_thread = check_signs(&records, signs);
    assert_eq!(
        per_thread.len(),
        THREADS,
        "signatures by {} threads, expected {THREADS}: {per_thread:?}",
        per_thread.len()
    );
    assert!(
        per_thread.values().all(|&n| n == SIGNS_PER_THREAD),
        "{per_thread:?}"
    );
    let pids: BTreeSet<u64> = records.iter().map(|r| r["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 1, "one process wrote the log");
}

#[test]
fn processes_share_one_chain() {
    let fx = Fixture::new();
    let work = fx.dir.path();
    let go = work.join("go");
    let started = Instant::now();
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            let ready = work.join(format!("ready-{i}"));
            // One token per process, one log for all. SoftHSM 2.6.1's file store is not safe
            // for several processes on one token: run directly (no shim), 4 concurrent
            // `pkcs11-tool --login` on one token fail about one time in four with
            // CKR_GENERAL_ERROR (C_GetTokenInfo, C_Login), CKR_TOKEN_NOT_RECOGNIZED or
            // CKR_USER_PIN_NOT_INITIALIZED, apparently reading token.object while another
            // process rewrites it. The chain is what these processes must share.
            let token = new_token(&work.join(format!("token-{i}")));
            let mut env = fx.env();
            env.retain(|(k, _)| *k != "SOFTHSM2_CONF");
            env.push(("SOFTHSM2_CONF", token.into()));
            env.push((READY_VAR, ready.into()));
            env.push((GO_VAR, go.clone().into()));
            let cmd = child_command(CHILD_PROCESS, ROLE_VAR, CHILD_PROCESS, &env);
            let work = work.to_path_buf();
            std::thread::spawn(move || {
                let what = format!("{CHILD_PROCESS}-{i}");
                let run = run_with_timeout(cmd, &work, &what);
                (what, run)
            })
        })
        .collect();
    // Start them together, once every one has loaded the shim and SoftHSM.
    for i in 0..PROCESSES {
        wait_for(
            &work.join(format!("ready-{i}")),
            &format!("process {i} to load"),
        );
    }
    fs::write(&go, b"").expect("write go file");
    for child in children {
        let (what, run) = child.join().expect("runner thread");
        check_child(&run, &what);
        let secs = run.value_after("PROCESS_SECONDS").unwrap_or("?");
        eprintln!("{what}: {secs} s from C_Initialize to C_Finalize");
    }
    eprintln!(
        "{PROCESSES} processes x {SIGNS_PER_PROCESS} signs: {:?}",
        started.elapsed()
    );

    let records = check_chain(&fx);
    // Exactly one of them created the chain.
    assert_eq!(records[0]["ev"], "start", "seq 0 is the chain start");
    let starts = records.iter().filter(|r| r["ev"] == "start").count();
    assert_eq!(starts, 1, "the chain was started {starts} times");

    let pids_with = |ev: &str| -> Vec<u64> {
        records
            .iter()
            .filter(|r| r["ev"] == ev)
            .map(|r| r["pid"].as_u64().unwrap())
            .collect()
    };
    let attach = pids_with("attach");
    let close = pids_with("close");
    let pids: BTreeSet<u64> = attach.iter().copied().collect();
    assert_eq!(pids.len(), PROCESSES, "distinct attaching pids: {attach:?}");
    assert_eq!(
        attach.len(),
        PROCESSES,
        "one attach per process: {attach:?}"
    );
    assert_eq!(
        close.iter().copied().collect::<BTreeSet<_>>(),
        pids,
        "each process closed"
    );
    assert_eq!(close.len(), PROCESSES, "one close per process: {close:?}");
    let starter = records[0]["pid"].as_u64().unwrap();
    assert!(
        pids.contains(&starter),
        "the chain was started by pid {starter}, not one of {pids:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| pids.contains(&r["pid"].as_u64().unwrap())),
        "a record from a pid that did not attach"
    );

    let signs = PROCESSES * SIGNS_PER_PROCESS;
    let mut want = BTreeMap::new();
    want.insert(("start".to_string(), String::new()), 1);
    for (ev, f, n) in per_process_records(1, SIGNS_PER_PROCESS) {
        *want.entry((ev.to_string(), f.to_string())).or_default() += n * PROCESSES;
    }
    assert_counts(&records, want);
    let per_thread = check_signs(&records, signs);
    let mut per_pid: BTreeMap<u64, usize> = BTreeMap::new();
    for ((pid, _), n) in per_thread {
        *per_pid.entry(pid).or_default() += n;
    }
    assert_eq!(per_pid.keys().copied().collect::<BTreeSet<_>>(), pids);
    assert!(
        per_pid.values().all(|&n| n == SIGNS_PER_PROCESS),
        "{per_pid:?}"
    );
}
