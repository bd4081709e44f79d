//! `C_Initialize` sequences an application may make, in a child process each (the shim reads
//! its configuration at `C_Initialize`, and a process can load SoftHSM only once):
//! - a second `C_Initialize`, which SoftHSM refuses, changes nothing p11audit knows of the
//!   sessions (their records keep slot, token and login) and is not a new `attach`;
//! - a warning p11audit prints at `C_Initialize` cannot fail it when stderr is gone (a pipe
//!   nobody reads, SIGPIPE ignored, as in a Python program piped into `head`);
//! - the arguments reach the provider as given: NSS's softokn takes its parameter string in
//!   `pReserved` (which PKCS#11 says must be NULL), and works behind p11audit;
//! - a C_Initialize that did not attach (the provider failed it, or its records could not be
//!   written) leaves the next one to write the `attach`, and `report` counts no unclean close.

mod common;

use common::raw::{self, os_locking_args, Module};
use common::*;
use cryptoki_sys as ck;
use serde_json::Value;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;

const ROLE: &str = "P11AUDIT_INITIALIZE_ROLE";
const SECOND: &str = "second_initialize";
const NO_STDERR: &str = "no_stderr";
const SOFTOKN: &str = "softokn";
const RETRIES: &str = "attach_retries";
/// NSS's software token (Debian package libnss3, which libnss3-tools pulls in).
const SOFTOKN_MODULE: &str = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";
/// The parameter string softokn reads from `pReserved`, for the child.
const SOFTOKN_PARAMS_VAR: &str = "P11AUDIT_TEST_SOFTOKN_PARAMS";

/// The child: initializes, opens a logged-in session, calls C_Initialize again, uses the
/// session, and closes everything. Prints each return value.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let shim = Module::shim();
    if role == SOFTOKN {
        let params = std::ffi::CString::new(std::env::var(SOFTOKN_PARAMS_VAR).unwrap()).unwrap();
        let mut args = os_locking_args();
        args.pReserved = params.as_ptr() as *mut _;
        let rv = shim.initialize_rv(Some(args));
        println!("\nC_Initialize rv={rv:#x}");
        if rv == ck::CKR_OK {
            println!("\nslot {}", shim.first_slot());
            shim.finalize();
        }
        return;
    }
    if role == RETRIES {
        attach_retries(shim);
        return;
    }
    let rv = shim.initialize_rv(Some(os_locking_args()));
    println!("\nC_Initialize rv={rv:#x}");
    if role != SECOND || rv != ck::CKR_OK {
        return;
    }
    let s = shim.open_rw(shim.first_slot());
    raw::ok(shim.login(s), "C_Login");
    let again = shim.initialize_rv(Some(os_locking_args()));
    println!("\nsecond C_Initialize rv={again:#x}");
    shim.random(s, 16);
    shim.logout(s);
    shim.close(s);
    shim.finalize();
}

/// The child for `RETRIES`: a C_Initialize that SoftHSM refuses (pReserved not NULL) then one
/// that works; after a C_Finalize, a C_Initialize whose records cannot be written (the log
/// may not grow: RLIMIT_FSIZE) then one that works; a C_Finalize.
fn attach_retries(shim: Module) {
    let mut bad = os_locking_args();
    let mut anything = 0u8;
    bad.pReserved = &mut anything as *mut u8 as *mut _;
    let refused = shim.initialize_rv(Some(bad));
    println!("\nrefused rv={refused:#x}");
    shim.initialize();
    shim.finalize();

    let log = std::env::var_os("P11AUDIT_LOG").unwrap();
    let size = std::fs::metadata(&log).unwrap().len();
    let limit = |bytes: u64| {
        let l = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: a valid rlimit for this process.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &l) }, 0);
    };
    // SAFETY: ignoring SIGXFSZ makes a write past the limit fail with EFBIG instead.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    limit(size);
    let unwritten = shim.initialize_rv(Some(os_locking_args()));
    println!("\nunwritten rv={unwritten:#x}");
    limit(libc::RLIM_INFINITY);
    shim.initialize();
    shim.finalize();
}

fn child_command_for(role: &str, fx: &Fixture) -> std::process::Command {
    child_command("child", ROLE, role, &fx.env())
}

/// The refused second `C_Initialize` is recorded (intent and outcome), is not a second
/// `attach`, and the session's next record still says which token it is on and who is logged
/// in: p11audit forgets its sessions only when the provider does (a `C_Initialize` it accepts).
#[test]
fn a_refused_second_initialize_keeps_what_p11audit_knows_of_the_sessions() {
    let fx = Fixture::new();
    let run = run_child_ok(child_command_for(SECOND, &fx), fx.dir.path(), SECOND);
    assert!(
        run.stdout.contains("\nC_Initialize rv=0x0"),
        "{}",
        run.dump()
    );
    assert!(
        run.stdout.contains("\nsecond C_Initialize rv=0x191"),
        "SoftHSM refuses a second C_Initialize with CKR_CRYPTOKI_ALREADY_INITIALIZED\n{}",
        run.dump()
    );
    let records = check_chain(&fx);
    let count = |ev: &str| records.iter().filter(|r| r["ev"] == ev).count();
    assert_eq!(count("attach"), 1, "one attach per attached process");
    assert_eq!(count("close"), 1);
    let initialize_outcomes: Vec<&Value> = records
        .iter()
        .filter(|r| r["ev"] == "outcome" && r["fn"] == "C_Initialize")
        .collect();
    assert_eq!(initialize_outcomes.len(), 2, "{initialize_outcomes:?}");
    assert_eq!(
        initialize_outcomes[1]["rv"],
        "CKR_CRYPTOKI_ALREADY_INITIALIZED"
    );
    assert!(initialize_outcomes[1]["intent"].is_u64());
    let random = records
        .iter()
        .find(|r| r["ev"] == "outcome" && r["fn"] == "C_GenerateRandom")
        .expect("the C_GenerateRandom outcome");
    assert_eq!(random["login"], "user", "{random}");
    assert!(random["token"]["label"].is_string(), "{random}");
    assert!(random["slot"].is_u64(), "{random}");
}

/// A configuration refused at `C_Initialize` (here a log directory others can write to) says why
/// on stderr. With stderr a pipe whose reader is gone, writing that line fails (EPIPE: the Rust
/// runtime ignores SIGPIPE): `C_Initialize` must still return `CKR_GENERAL_ERROR`, the process
/// must go on, and no log is started.
#[test]
fn initialize_refuses_cleanly_when_its_error_line_cannot_be_written() {
    use std::os::unix::fs::PermissionsExt;
    let mut fx = Fixture::new();
    let open_dir = fx.dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    fx.log = open_dir.join("audit.jsonl");

    // A pipe with its read end closed before the child starts.
    let mut fds = [0; 2];
    // SAFETY: a valid array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);

    let mut cmd = child_command_for(NO_STDERR, &fx);
    cmd.stderr(Stdio::from(write_end)).stdout(Stdio::piped());
    let out = cmd.output().expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child did not exit cleanly: {stdout}"
    );
    assert!(
        stdout.contains("\nC_Initialize rv=0x5"),
        "C_Initialize did not refuse when its error line could not be written: {stdout}"
    );
    assert!(!fx.log.exists(), "a log was started in the open directory");
}

/// softokn refuses a NULL `pReserved` and reads its database settings from it: p11audit hands
/// the arguments over as given, so softokn initializes, shows its slots, and every call is in
/// the log.
#[test]
fn nss_softokn_gets_its_parameters_through_p_reserved() {
    assert!(
        std::path::Path::new(SOFTOKN_MODULE).is_file(),
        "{SOFTOKN_MODULE} is missing: install Debian's libnss3 (scripts/install-deps.sh does)"
    );
    let fx = Fixture::new();
    let db = fx.dir.path().join("nssdb");
    std::fs::create_dir(&db).unwrap();
    let params = format!(
        "configdir='sql:{}' certPrefix='' keyPrefix='' secmod='secmod.db' flags='noModDB'",
        db.display()
    );
    let env = vec![
        ("P11AUDIT_MODULE", SOFTOKN_MODULE.into()),
        ("P11AUDIT_LOG", fx.log.clone().into()),
        ("P11AUDIT_KEY_FILE", fx.key.clone().into()),
        (SOFTOKN_PARAMS_VAR, params.into()),
    ];
    let run = run_child_ok(
        child_command("child", ROLE, SOFTOKN, &env),
        fx.dir.path(),
        SOFTOKN,
    );
    assert!(
        run.stdout.contains("\nC_Initialize rv=0x0"),
        "softokn did not initialize behind p11audit\n{}",
        run.dump()
    );
    assert!(run.stdout.contains("\nslot "), "{}", run.dump());
    let records = check_chain(&fx);
    let outcome = records
        .iter()
        .find(|r| r["ev"] == "outcome" && r["fn"] == "C_Initialize")
        .expect("the C_Initialize outcome");
    assert_eq!(outcome["rv"], "CKR_OK", "{outcome}");
    assert!(records.iter().any(|r| r["ev"] == "close"), "{records:?}");
}

/// Every attachment has its `attach`, and one that did not happen is not counted as a
/// process that never closed.
#[test]
fn a_c_initialize_that_did_not_attach_leaves_the_attach_to_the_next() {
    let fx = Fixture::new();
    let run = run_child_ok(child_command_for(RETRIES, &fx), fx.dir.path(), RETRIES);
    assert!(run.stdout.contains("\nrefused rv=0x7"), "{}", run.dump());
    assert!(run.stdout.contains("\nunwritten rv=0x5"), "{}", run.dump());
    let records = check_chain(&fx);
    let events: Vec<&str> = records
        .iter()
        .filter(|r| ["attach", "close", "gap"].contains(&r["ev"].as_str().unwrap()))
        .map(|r| r["ev"].as_str().unwrap())
        .collect();
    // The refused C_Initialize's attach, the next one's (it attached), its close; then the gap
    // for the records that could not be written, the attach of the C_Initialize that worked,
    // its close.
    assert_eq!(
        events,
        ["attach", "attach", "close", "gap", "attach", "close"],
        "{records:?}"
    );
    let report = p11audit_on_log("report", &fx.key, &["--json"], &fx.log);
    assert!(report.status.success(), "{}", output_text(&report));
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        report["unclean_closes"]["count"].as_u64(),
        Some(0),
        "{}",
        report["unclean_closes"]
    );
}
