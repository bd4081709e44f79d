//! Signals: "Writes interrupted by signals (EINTR) are retried. Short writes are
//! completed or reported, never left half-done."
//!
//! A child process installs handlers for SIGUSR1 and SIGALRM *without* SA_RESTART, so a signal
//! that arrives while the process is blocked in a system call makes that call fail with EINTR
//! instead of being restarted by the kernel. Then, while it makes thousands of calls through
//! the shim against SoftHSM, it is hit continuously: a second thread sends SIGUSR1 to the
//! calling thread with `pthread_kill` every ~20 us, and an interval timer (`setitimer`,
//! ITIMER_REAL) sends SIGALRM to the process every 50 us. Two such processes write the same log
//! at once (each with its own SoftHSM token), so appends also wait for the state file's mutex
//! and opening the log waits for its `flock` (which a signal interrupts).
//!
//! Every call must return CKR_OK, every call must have its outcome record (and every intent its
//! outcome), and `p11audit verify` must find the log intact with exactly the expected number of
//! records. The same workload runs directly against SoftHSM under the same storm as a control:
//! SoftHSM 2.6.1 handles it (every call succeeds, see `softhsm_directly_under_a_signal_storm`),
//! so any failure through the shim is the shim's.

mod common;

use common::raw::{attr, attr_bytes, os_locking_args, rv_name, Module, FALSE, TRUE};
use common::*;
use cryptoki_sys as ck;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD: &str = "child";
/// "shim" or "direct" (SoftHSM itself).
const LOAD_VAR: &str = "P11AUDIT_TEST_LOAD";
const MARK: &str = "P11AUDIT-SIGNALS-RESULT ";
/// Iterations of the workload per process (at least); each makes 5 calls (more every 64th).
const ITERATIONS: u64 = 3000;
/// How often the interval timer fires.
const TIMER_US: i64 = 50;
/// Pause of the thread that sends SIGUSR1 between two signals.
const KILL_PAUSE: Duration = Duration::from_micros(20);
/// Each kind of signal must have been handled at least this often during a run.
const MIN_SIGNALS: u64 = 1000;

// ---- the child ------------------------------------------------------------------------------

static SIGUSR1_SEEN: AtomicU64 = AtomicU64::new(0);
static SIGALRM_SEEN: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic add: async-signal-safe.
    if sig == libc::SIGUSR1 {
        SIGUSR1_SEEN.fetch_add(1, Ordering::Relaxed);
    } else {
        SIGALRM_SEEN.fetch_add(1, Ordering::Relaxed);
    }
}

/// A handler for `sig` without SA_RESTART: blocking system calls it interrupts fail with EINTR.
fn install_handler(sig: libc::c_int) {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn(c_int).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, null_mut()), 0, "sigaction");
    }
}

fn set_timer(interval_us: i64) {
    let t = libc::timeval {
        tv_sec: 0,
        tv_usec: interval_us,
    };
    let it = libc::itimerval {
        it_interval: t,
        it_value: t,
    };
    // SAFETY: a valid itimerval; the old value is not wanted.
    assert_eq!(
        unsafe { libc::setitimer(libc::ITIMER_REAL, &it, null_mut()) },
        0,
        "setitimer"
    );
}

/// The storm: SIGUSR1 at the calling thread from another thread, SIGALRM from a timer.
struct Storm {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Storm {
    fn start() -> Storm {
        install_handler(libc::SIGUSR1);
        install_handler(libc::SIGALRM);
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // SIGALRM goes to the other threads (the calling one above all), not this one.
            // SAFETY: a valid, initialized signal set.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGALRM);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, null_mut());
            }
            let mut sent = 0u64;
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: `target` is the calling thread, which outlives this one (joined).
                assert_eq!(unsafe { libc::pthread_kill(target, libc::SIGUSR1) }, 0);
                sent += 1;
                std::thread::sleep(KILL_PAUSE);
            }
            sent
        });
        set_timer(TIMER_US);
        Storm {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops both sources; returns how many SIGUSR1 were sent.
    fn stop(mut self) -> u64 {
        set_timer(0);
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("signal thread")
    }
}

/// Counts every call by function name and keeps the ones that did not return CKR_OK.
#[derive(Default)]
struct Calls {
    made: BTreeMap<&'static str, u64>,
    failed: BTreeMap<String, u64>,
}

impl Calls {
    fn note(&mut self, name: &'static str, rv: ck::CK_RV) -> bool {
        *self.made.entry(name).or_default() += 1;
        if rv != ck::CKR_OK {
            *self
                .failed
                .entry(format!("{name} {}", rv_name(rv)))
                .or_default() += 1;
        }
        rv == ck::CKR_OK
    }
}

/// Calls a function of the table and notes it: `call!(m, calls, C_GetInfo(&mut info))`.
macro_rules! call {
    ($m:expr, $calls:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: the module's static table; the arguments are valid for the call.
        let rv = unsafe { ($m.f.$name.expect(stringify!($name)))($($arg),*) };
        $calls.note(stringify!($name), rv)
    }};
}

fn workload(m: &Module, calls: &mut Calls) {
    if !call!(
        m,
        calls,
        C_Initialize(&mut os_locking_args() as *mut _ as *mut _)
    ) {
        return;
    }
    let mut slots = [0 as ck::CK_SLOT_ID; 8];
    let mut n = slots.len() as ck::CK_ULONG;
    call!(m, calls, C_GetSlotList(TRUE, slots.as_mut_ptr(), &mut n));
    assert!(n > 0, "no slot with a token");
    let mut s = 0;
    call!(
        m,
        calls,
        C_OpenSession(
            slots[0],
            ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION,
            null_mut(),
            None,
            &mut s
        )
    );
    let class: ck::CK_OBJECT_CLASS = ck::CKO_DATA;
    // At least ITERATIONS, and on until each kind of signal was handled MIN_SIGNALS times
    // (SoftHSM alone is fast enough to finish ITERATIONS before that).
    let short_of_signals = || {
        SIGUSR1_SEEN.load(Ordering::Relaxed) < MIN_SIGNALS
            || SIGALRM_SEEN.load(Ordering::Relaxed) < MIN_SIGNALS
    };
    let mut i = 0u64;
    while i < ITERATIONS || (short_of_signals() && i < 100 * ITERATIONS) {
        // SAFETY: plain data.
        let mut info: ck::CK_INFO = unsafe { std::mem::zeroed() };
        call!(m, calls, C_GetInfo(&mut info));
        let mut random = [0u8; 16];
        call!(
            m,
            calls,
            C_GenerateRandom(s, random.as_mut_ptr(), random.len() as _)
        );
        let label = format!("storm-{i}");
        let mut tmpl = [
            attr(ck::CKA_CLASS, &class),
            attr(ck::CKA_TOKEN, &FALSE),
            attr(ck::CKA_PRIVATE, &FALSE),
            attr_bytes(ck::CKA_LABEL, label.as_bytes()),
            attr_bytes(ck::CKA_VALUE, &random),
        ];
        let mut h = 0;
        if call!(
            m,
            calls,
            C_CreateObject(s, tmpl.as_mut_ptr(), tmpl.len() as _, &mut h)
        ) {
            let mut got = [0u8; 32];
            let mut read = [attr_bytes(ck::CKA_LABEL, &got)];
            read[0].pValue = got.as_mut_ptr() as *mut _;
            if call!(m, calls, C_GetAttributeValue(s, h, read.as_mut_ptr(), 1)) {
                assert_eq!(&got[..read[0].ulValueLen as usize], label.as_bytes());
            }
            call!(m, calls, C_DestroyObject(s, h));
        }
        if i.is_multiple_of(64) {
            let mut count: ck::CK_ULONG = 0;
            call!(m, calls, C_GetSlotList(TRUE, null_mut(), &mut count));
            // SAFETY: plain data.
            let mut si: ck::CK_SESSION_INFO = unsafe { std::mem::zeroed() };
            call!(m, calls, C_GetSessionInfo(s, &mut si));
        }
        i += 1;
    }
    call!(m, calls, C_CloseSession(s));
    call!(m, calls, C_Finalize(null_mut()));
}

#[test]
fn child() {
    if !is_role(CHILD) {
        return;
    }
    let direct = std::env::var(LOAD_VAR).as_deref() == Ok("direct");
    let m = if direct {
        Module::load(Path::new(SOFTHSM))
    } else {
        Module::shim()
    };
    let mut calls = Calls::default();
    // Module::load called C_GetFunctionList once (the shim records it).
    calls.note("C_GetFunctionList", ck::CKR_OK);
    let storm = Storm::start();
    let started = Instant::now();
    workload(&m, &mut calls);
    let secs = started.elapsed().as_secs_f64();
    let sent = storm.stop();
    print_marked(
        MARK,
        &json!({
            "made": calls.made,
            "failed": calls.failed,
            "sigusr1_sent": sent,
            "sigusr1_seen": SIGUSR1_SEEN.load(Ordering::Relaxed),
            "sigalrm_seen": SIGALRM_SEEN.load(Ordering::Relaxed),
            "seconds": secs,
        }),
    );
}

// ---- the parent -----------------------------------------------------------------------------

fn storm_child(env: &Env, load: &str) -> std::process::Command {
    let mut env = env.to_vec();
    env.push((LOAD_VAR, load.into()));
    child_command(CHILD, ROLE_VAR, CHILD, &env)
}

/// The child's report, after checking that every call returned CKR_OK and that signals really
/// arrived throughout.
fn checked_report(run: &Finished, what: &str) -> Value {
    let r = run.marked_json(MARK, what);
    eprintln!("{what}: {r}");
    assert_eq!(
        r["failed"],
        json!({}),
        "{what}: calls failed under the signal storm\n{}",
        run.dump()
    );
    let made: u64 = r["made"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(made > 5 * ITERATIONS, "{what}: only {made} calls were made");
    // Thousands of each (in practice one per ~50 us of the run).
    for kind in ["sigusr1_seen", "sigalrm_seen"] {
        let seen = r[kind].as_u64().unwrap();
        assert!(
            seen >= MIN_SIGNALS,
            "{what}: only {seen} {kind} over {made} calls"
        );
    }
    r
}

/// The control: the same workload under the same storm, directly on SoftHSM.
#[test]
fn softhsm_directly_under_a_signal_storm() {
    let fx = Fixture::new();
    let run = run_child_ok(storm_child(&fx.env(), "direct"), fx.dir.path(), "direct");
    checked_report(&run, "SoftHSM directly");
    assert!(!fx.log.exists(), "the direct run must not touch the log");
}

/// One process through the shim under the storm: every call succeeds, every call is recorded
/// exactly once, and the chain verifies with the expected number of records. Alone on its log,
/// the process never waits for another writer, so this covers every other blocking point (the
/// log `write`, SoftHSM's own calls).
#[test]
fn one_process_through_the_shim_under_a_signal_storm() {
    storm_through_the_shim(1);
}

/// Two processes on one log under the storm: appends also wait for the state file's mutex
/// (`pthread_mutex_timedlock`, which signals do not interrupt), and opening the log waits for
/// the state file's `flock` (which they do: the writer retries it on EINTR).
#[test]
fn two_processes_on_one_log_under_a_signal_storm() {
    storm_through_the_shim(2);
}

/// `processes` processes through the shim, one log, each under its own storm.
fn storm_through_the_shim(processes: usize) {
    let fx = Fixture::new();
    let work = fx.dir.path();
    let started = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|i| {
            // One token per process (SoftHSM's file store is not safe for several processes on
            // one token: see tests/concurrency.rs), one log for all.
            let token = new_token(&work.join(format!("token-{i}")));
            let env = {
                let mut env = fx.env();
                env.retain(|(k, _)| *k != "SOFTHSM2_CONF");
                env.push(("SOFTHSM2_CONF", token.into()));
                env
            };
            let cmd = storm_child(&env, "shim");
            let work = work.to_path_buf();
            std::thread::spawn(move || {
                let what = format!("shim-{i}");
                let run = run_child_ok(cmd, &work, &what);
                (what, run)
            })
        })
        .collect();
    let mut made: BTreeMap<String, u64> = BTreeMap::new();
    for child in children {
        let (what, run) = child.join().expect("runner thread");
        let r = checked_report(&run, &what);
        assert!(
            run.p11audit_lines().is_empty(),
            "{what}: the shim complained\n{}",
            run.dump()
        );
        for (f, n) in r["made"].as_object().unwrap() {
            *made.entry(f.clone()).or_default() += n.as_u64().unwrap();
        }
    }
    eprintln!(
        "{processes} process(es) under the storm: {:?}",
        started.elapsed()
    );

    // Verifies, whole lines, seq 0..n-1, every intent paired with one outcome.
    let records = check_chain(&fx);
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut intents = 0u64;
    let mut per_ev: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        let ev = r["ev"].as_str().unwrap().to_string();
        if ev == "outcome" {
            *outcomes
                .entry(r["fn"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        if ev == "intent" {
            intents += 1;
        }
        *per_ev.entry(ev).or_default() += 1;
    }
    assert_eq!(outcomes, made, "one outcome record per call");
    let p = processes as u64;
    let calls: u64 = made.values().sum();
    let expected = 1 + 2 * p + calls + intents;
    assert_eq!(
        records.len() as u64,
        expected,
        "records: 1 start + {p} attach + {p} close + {calls} outcomes + {intents} intents; by event: {per_ev:?}"
    );
    assert_eq!(per_ev.get("start"), Some(&1));
    assert_eq!(per_ev.get("attach"), Some(&p));
    assert_eq!(per_ev.get("close"), Some(&p));
    assert_eq!(per_ev.get("gap"), None, "no record was lost");
}
