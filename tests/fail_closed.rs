//! When the audit log cannot be written: acting calls are refused before they reach the
//! provider, result calls hand nothing out, and once writing works again the chain goes on with
//! a `gap` record that says how many records were lost and since when. With
//! P11AUDIT_ON_FAILURE=open the calls go through instead, and the gap is still reported.
//!
//! Writing fails for real: the log lives on a 64 KiB tmpfs that the child fills with a filler
//! file (appends then fail with ENOSPC). If tmpfs cannot be mounted (no CAP_SYS_ADMIN), the child
//! lowers RLIMIT_FSIZE to the log's size instead and ignores SIGXFSZ (appends fail with EFBIG).
//! If neither works the test fails; it never skips. P11AUDIT_TEST_FORCE_RLIMIT=1 in the
//! environment of `cargo test` forces the fallback.
//!
//! Each scenario runs in a child process (the test binary re-executed with
//! P11AUDIT_TEST_ROLE), because the shim reads its configuration at C_Initialize and SoftHSM can
//! be loaded only once per process. The child drives the shim through `dlopen` and the raw
//! function table so that it sees exact return values and its own output buffers.

mod common;

use common::raw::{ok, Module};
use common::*;
use cryptoki_sys as ck;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const CHILD_CLOSED: &str = "child_disk_full_closed";
const CHILD_OPEN: &str = "child_disk_full_open";
/// How the child makes writing fail: "tmpfs" (fill DISK_FILLER) or "rlimit".
const DISK_VAR: &str = "P11AUDIT_TEST_DISK";
const FILLER_VAR: &str = "P11AUDIT_TEST_FILLER";
const FORCE_RLIMIT_VAR: &str = "P11AUDIT_TEST_FORCE_RLIMIT";

/// Informational records queued before each call that must fail while the disk is full.
///
/// On tmpfs (as on any block filesystem) a full filesystem still accepts writes into the
/// unused tail of the log's last page: up to page size - 1 bytes. Records that may wait are
/// written together with the next record that must be written, in one `write`; queueing this
/// many (each well over 128 bytes: timestamp, host, exe path, session, token) makes that write
/// larger than a page, so it cannot fit in the slack and fails deterministically. The parent
/// checks the premise against the real record sizes.
const PADS: usize = 48;

const REFUSED_LABEL: &[u8] = b"made-while-disk-full";
const CONTROL_LABEL: &[u8] = b"made-before-disk-full";
const SIG_PATTERN: u8 = 0xa5;

// ---- raw driver (child side) ----------------------------------------------------------------

/// Queues PADS informational records (see PADS). Returns how many records that is.
fn pad(shim: &Module, s: ck::CK_SESSION_HANDLE) -> u64 {
    for _ in 0..PADS {
        ok(shim.session_state(s).0, "C_GetSessionInfo (pad)");
    }
    PADS as u64
}

// ---- making writes fail (child side) --------------------------------------------------------

enum Disk {
    /// Fill the tmpfs holding the log with this file; delete it to free the space.
    Tmpfs { filler: PathBuf },
    /// Lower RLIMIT_FSIZE to the log's size; restore `saved` to lift it.
    Rlimit { saved: Option<libc::rlimit> },
}

impl Disk {
    fn from_env() -> Disk {
        match std::env::var(DISK_VAR).as_deref() {
            Ok("tmpfs") => Disk::Tmpfs {
                filler: std::env::var_os(FILLER_VAR)
                    .map(PathBuf::from)
                    .expect("P11AUDIT_TEST_FILLER"),
            },
            Ok("rlimit") => Disk::Rlimit { saved: None },
            other => panic!("{DISK_VAR} is {other:?}"),
        }
    }

    fn fill(&mut self, log_len: u64) {
        match self {
            Disk::Tmpfs { filler } => {
                let mut f = fs::File::create(&*filler).expect("create filler");
                let chunk = [0u8; 4096];
                loop {
                    match f.write(&chunk) {
                        Ok(0) => panic!("filler write returned 0"),
                        Ok(_) => continue,
                        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                        Err(e) => panic!("filling the tmpfs: {e}"),
                    }
                }
                let dir = CString::new(filler.parent().unwrap().as_os_str().as_bytes()).unwrap();
                // SAFETY: plain data, valid path and out-pointer.
                let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
                assert_eq!(unsafe { libc::statvfs(dir.as_ptr(), &mut st) }, 0);
                assert_eq!(st.f_bavail, 0, "the tmpfs still has free blocks");
            }
            Disk::Rlimit { saved } => {
                // SAFETY: plain data and valid pointers throughout.
                unsafe {
                    let mut old: libc::rlimit = std::mem::zeroed();
                    assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut old), 0);
                    // Without this, the first write past the limit kills the process.
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let low = libc::rlimit {
                        rlim_cur: log_len as libc::rlim_t,
                        rlim_max: old.rlim_max,
                    };
                    assert_eq!(
                        libc::setrlimit(libc::RLIMIT_FSIZE, &low),
                        0,
                        "neither a tmpfs mount nor RLIMIT_FSIZE can make writes fail here: {}",
                        std::io::Error::last_os_error()
                    );
                    *saved = Some(old);
                }
            }
        }
    }

    fn free(&mut self) {
        match self {
            Disk::Tmpfs { filler } => fs::remove_file(&*filler).expect("remove filler"),
            Disk::Rlimit { saved } => {
                let old = saved.take().expect("fill before free");
                // SAFETY: a valid rlimit.
                assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &old) }, 0);
            }
        }
    }
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).expect("stat log").len()
}

// ---- the scenario (child side) --------------------------------------------------------------

/// C_Sign into a 64-byte buffer while the log cannot be written: fail-open hands the signature
/// out, fail-closed refuses the call and wipes the buffer. Returns the buffer.
fn sign_while_full(
    shim: &Module,
    s: ck::CK_SESSION_HANDLE,
    data: &[u8],
    open: bool,
    what: &str,
) -> [u8; 64] {
    let mut sig = [SIG_PATTERN; 64];
    let (rv, len) = shim.sign(s, data, Some(&mut sig));
    if open {
        ok(rv, &format!("{what} with P11AUDIT_ON_FAILURE=open"));
        assert_eq!(len, 64);
    } else {
        assert_eq!(
            rv,
            ck::CKR_GENERAL_ERROR,
            "{what} must fail when its outcome cannot be written"
        );
        assert!(
            sig.iter().all(|&b| b == 0),
            "{what} handed out a signature it could not record: {}",
            hex(&sig)
        );
    }
    sig
}

fn disk_full_scenario(open: bool) {
    let log = PathBuf::from(std::env::var_os("P11AUDIT_LOG").expect("P11AUDIT_LOG"));
    let shim = Module::shim();
    shim.initialize();
    let slot = shim.first_slot();
    let s = shim.open_rw(slot);
    let (pub_key, priv_key) = shim.generate_ec(s);
    let data = [0x5au8; 32];

    // Some work while the log is writable.
    let sig = shim.sign_all(s, priv_key, &data);
    assert_eq!(sig.len(), 64);
    ok(shim.verify(s, pub_key, &data, &sig), "C_Verify");
    let (rv, _) = shim.generate_aes(s, CONTROL_LABEL);
    ok(rv, "C_GenerateKey (control)");
    // The operation whose result comes due while the disk is full.
    ok(shim.sign_init(s, priv_key), "C_SignInit");
    let (rv, need) = shim.sign(s, &data, None);
    ok(rv, "C_Sign (length)");
    assert_eq!(need, 64);
    let (rv, state) = shim.session_state(s);
    ok(rv, "C_GetSessionInfo");
    assert_eq!(state, ck::CKS_RW_PUBLIC_SESSION);

    // Fill the disk. From here on no append can succeed (see PADS).
    let mut disk = Disk::from_env();
    let lines_at_fill = line_count(&log);
    let size_at_fill = file_len(&log);
    disk.fill(size_at_fill);
    let unchanged = |what: &str| {
        assert_eq!(
            file_len(&log),
            size_at_fill,
            "the log changed while the disk was full ({what})"
        )
    };
    // Records this process produced while the disk was full; all must be counted as lost.
    let mut lost = 0u64;

    // 1. An acting call: C_GenerateKey.
    lost += pad(&shim, s);
    let (rv, key) = shim.generate_aes(s, REFUSED_LABEL);
    lost += 1; // its intent
    unchanged("C_GenerateKey");
    if open {
        ok(rv, "C_GenerateKey with P11AUDIT_ON_FAILURE=open");
        assert_ne!(key, 0);
    } else {
        assert_eq!(
            rv,
            ck::CKR_GENERAL_ERROR,
            "C_GenerateKey must be refused when its intent cannot be written"
        );
        assert_eq!(key, 0, "a refused C_GenerateKey returned a handle");
    }

    // 2. An acting call that would succeed: C_Login with the right PIN.
    lost += pad(&shim, s);
    let rv = shim.login(s);
    lost += 1; // its intent
    unchanged("C_Login");
    let (rv_info, state) = shim.session_state(s);
    lost += 1; // its (queued) outcome
    ok(rv_info, "C_GetSessionInfo");
    if open {
        ok(rv, "C_Login with P11AUDIT_ON_FAILURE=open");
        assert_eq!(state, ck::CKS_RW_USER_FUNCTIONS);
    } else {
        assert_eq!(
            rv,
            ck::CKR_GENERAL_ERROR,
            "C_Login must be refused when its intent cannot be written"
        );
        assert_eq!(
            state,
            ck::CKS_RW_PUBLIC_SESSION,
            "the refused C_Login reached SoftHSM: the session is logged in"
        );
    }

    // 3. A result call: C_Sign on the operation started before the disk filled.
    lost += pad(&shim, s);
    let sig_full = sign_while_full(&shim, s, &data, open, "C_Sign");
    lost += 1; // its outcome
    unchanged("C_Sign");

    // 4. A prepare call and its operation's result: C_SignInit goes ahead (nothing is written
    // before a prepare call; its outcome waits), and the C_Sign whose outcome cannot be written
    // is refused with its output wiped, so nothing of the operation reaches the application.
    lost += pad(&shim, s);
    ok(
        shim.sign_init(s, priv_key),
        "C_SignInit while the disk is full (a prepare call)",
    );
    lost += 1; // its outcome, waiting
    sign_while_full(&shim, s, &data, open, "C_Sign after a prepare");
    lost += 1; // its outcome
    unchanged("C_SignInit and C_Sign");

    // Free the space and go on.
    disk.free();
    println!("LINES_AT_FILL={lines_at_fill}");
    println!("LOST_AT_LEAST={lost}");

    let refused_found = shim.count_labelled(s, REFUSED_LABEL);
    if open {
        assert_eq!(refused_found, 1, "the fail-open C_GenerateKey made no key");
        ok(
            shim.verify(s, pub_key, &data, &sig_full),
            "C_Verify of the signature made while the disk was full",
        );
    } else {
        assert_eq!(
            refused_found, 0,
            "the refused C_GenerateKey reached SoftHSM: its key exists"
        );
    }
    assert_eq!(shim.count_labelled(s, CONTROL_LABEL), 1, "control key");
    let (rv, state) = shim.session_state(s);
    ok(rv, "C_GetSessionInfo");
    let want = if open {
        ck::CKS_RW_USER_FUNCTIONS
    } else {
        ck::CKS_RW_PUBLIC_SESSION
    };
    assert_eq!(state, want, "session state after recovery");
    let sig = shim.sign_all(s, priv_key, &data);
    ok(
        shim.verify(s, pub_key, &data, &sig),
        "C_Verify after recovery",
    );
    shim.close(s);
    shim.finalize();
}

#[test]
fn child_disk_full_closed() {
    if is_role(CHILD_CLOSED) {
        disk_full_scenario(false);
    }
}

#[test]
fn child_disk_full_open() {
    if is_role(CHILD_OPEN) {
        disk_full_scenario(true);
    }
}

// ---- the parent -----------------------------------------------------------------------------

/// A 64 KiB tmpfs, unmounted on drop (also when the test fails).
struct SmallTmpfs {
    dir: PathBuf,
}

impl SmallTmpfs {
    fn mount(dir: &Path) -> Result<SmallTmpfs, std::io::Error> {
        fs::create_dir_all(dir)?;
        let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=64k,mode=0700".as_ptr() as *const libc::c_void,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SmallTmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            eprintln!("umount {}: {e}; detaching", self.dir.display());
            // SAFETY: a valid C string.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn disk_full(open: bool) {
    let fx = Fixture::new();
    let force_rlimit = std::env::var_os(FORCE_RLIMIT_VAR).is_some_and(|v| v == "1");
    let small_dir = fx.dir.path().join("small");
    // Declared after `fx`, so it is unmounted before the temporary directory is removed.
    let mounted = if force_rlimit {
        Err(std::io::Error::other(
            "forced by P11AUDIT_TEST_FORCE_RLIMIT",
        ))
    } else {
        SmallTmpfs::mount(&small_dir)
    };
    let (_tmpfs, method, log) = match mounted {
        Ok(m) => {
            let log = m.dir.join("audit.jsonl");
            (Some(m), "tmpfs", log)
        }
        Err(e) => {
            eprintln!("cannot mount a tmpfs ({e}); making writes fail with RLIMIT_FSIZE instead");
            (None, "rlimit", fx.log.clone())
        }
    };
    let role = if open { CHILD_OPEN } else { CHILD_CLOSED };

    let mut env = fx.env();
    env.retain(|(k, _)| *k != "P11AUDIT_LOG");
    env.push(("P11AUDIT_LOG", log.clone().into()));
    env.push((DISK_VAR, method.into()));
    env.push((FILLER_VAR, small_dir.join("filler").into()));
    if open {
        env.push(("P11AUDIT_ON_FAILURE", "open".into()));
    }
    let started = std::time::Instant::now();
    let run = run_child_ok(
        child_command(role, ROLE_VAR, role, &env),
        fx.dir.path(),
        role,
    );
    eprintln!("{role} ({method}): child took {:?}", started.elapsed());
    assert!(
        !run.p11audit_lines().is_empty(),
        "the shim did not say on stderr that the log cannot be written\n{}",
        run.dump()
    );
    // libtest may print "test NAME ... " on the same line before the child's first output.
    let value_after = |key: &str| {
        run.value_after(key)
            .unwrap_or_else(|| panic!("the child printed no {key}\n{}", run.stdout))
    };
    let lines_at_fill: usize = value_after("LINES_AT_FILL").parse().unwrap();
    let lost_at_least: u64 = value_after("LOST_AT_LEAST").parse().unwrap();

    assert_verifies(&fx.key, &log, "the chain after the gap");

    let text = fs::read_to_string(&log).expect("read log");
    let records = parse_records(&text);
    assert!(
        records.len() > lines_at_fill,
        "nothing written after recovery"
    );

    // The first record written after the space came back is the gap.
    let gap = &records[lines_at_fill];
    assert_eq!(
        gap["ev"], "gap",
        "record {lines_at_fill} (the first after recovery) is not a gap: {gap}"
    );
    let lost = gap["lost"].as_u64().expect("gap has a numeric lost");
    assert!(
        lost >= lost_at_least,
        "gap says {lost} records lost; the child produced at least {lost_at_least} while the disk was full"
    );
    let since = gap["since"].as_str().expect("gap has a since timestamp");
    let last_before = records[lines_at_fill - 1]["ts"].as_str().unwrap();
    let gap_ts = gap["ts"].as_str().unwrap();
    assert!(
        since.len() == last_before.len() && since.ends_with('Z'),
        "since {since:?} is not an RFC 3339 timestamp like {last_before:?}"
    );
    assert!(
        last_before <= since && since <= gap_ts,
        "since {since} should lie between the last record before the fill ({last_before}) and the gap ({gap_ts})"
    );
    let gaps = records.iter().filter(|r| r["ev"] == "gap").count();
    assert_eq!(gaps, 1, "one outage, one gap record");

    // The premise of PADS: the queued records together exceed a page.
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let smallest_info = text
        .lines()
        .filter(|l| l.contains(r#""fn":"C_GetSessionInfo""#))
        .map(str::len)
        .min()
        .expect("C_GetSessionInfo records after recovery");
    assert!(
        smallest_info * PADS > page,
        "{PADS} records of {smallest_info} bytes do not exceed a {page}-byte page"
    );

    let count = |ev: &str, f: &str| {
        records
            .iter()
            .filter(|r| r["ev"] == ev && r["fn"] == f)
            .count()
    };
    let returned_signs = records
        .iter()
        .filter(|r| r["fn"] == "C_Sign" && r["out"] == "returned")
        .count();
    // The signs before the fill and after recovery, each C_SignInit told in its C_Sign outcome;
    // those of the signs while the disk was full are counted in the gap, not in the log.
    let told_inits = records
        .iter()
        .filter(|r| r["fn"] == "C_Sign" && r["init"]["fn"] == "C_SignInit")
        .count();
    assert_eq!(
        told_inits, 2,
        "C_SignInit told: the sign before the fill and the one after recovery"
    );
    assert_eq!(
        count("outcome", "C_SignInit"),
        0,
        "every C_SignInit was told in its C_Sign outcome"
    );
    assert_eq!(
        count("intent", "C_SignInit"),
        0,
        "a prepare call has no intent"
    );
    if open {
        // Before the fill, after recovery; those in between were handed out unrecorded.
        assert_eq!(returned_signs, 2);
    } else {
        // Nothing of the refused calls is in the log: they did not happen.
        assert_eq!(
            count("intent", "C_Login"),
            0,
            "a refused C_Login was logged"
        );
        assert_eq!(
            count("outcome", "C_Login"),
            0,
            "a refused C_Login was logged"
        );
        assert_eq!(
            count("intent", "C_GenerateKey"),
            1,
            "only the control key's C_GenerateKey is in the log"
        );
        assert_eq!(
            returned_signs, 2,
            "only the two signatures handed out are logged"
        );
    }
}

#[test]
fn disk_full_fails_closed() {
    disk_full(false);
}

#[test]
fn disk_full_fail_open_reports_gap() {
    disk_full(true);
}

// ---- a process that exits before the log can be written again -------------------------------

const CHILD_EXITS_UNWRITABLE: &str = "child_exits_while_the_log_cannot_be_written";
const CHILD_LATER: &str = "child_a_later_process";
const EXITING_LABEL: &[u8] = b"made-by-a-process-that-exits";

/// Makes the log unwritable (RLIMIT_FSIZE), makes calls, and exits normally with the log still
/// unwritable: nothing it lost can be reported by itself.
#[test]
fn child_exits_while_the_log_cannot_be_written() {
    if !is_role(CHILD_EXITS_UNWRITABLE) {
        return;
    }
    let log = PathBuf::from(std::env::var_os("P11AUDIT_LOG").expect("P11AUDIT_LOG"));
    let shim = Module::shim();
    shim.initialize();
    let s = shim.open_rw(shim.first_slot());
    let mut disk = Disk::Rlimit { saved: None };
    disk.fill(file_len(&log));
    let mut lost = pad(&shim, s);
    let (rv, _) = shim.generate_aes(s, EXITING_LABEL);
    lost += 1; // its intent
    println!("GENERATE_RV={rv}");
    println!("LOST_AT_LEAST={lost}");
    // No C_Finalize: the process ends (its exit handler's flush fails too).
}

#[test]
fn child_a_later_process() {
    if !is_role(CHILD_LATER) {
        return;
    }
    let shim = Module::shim();
    shim.initialize();
    shim.finalize();
}

/// What a process lost is reported even if it exits before the log can be written again: the
/// count is kept in the state file, and the next process to write reports it in a gap record.
/// With P11AUDIT_ON_FAILURE=open that process made a key nobody would otherwise know of.
#[test]
fn losses_of_a_process_that_exits_are_reported_by_the_next() {
    for open in [false, true] {
        let fx = Fixture::new();
        let mut env = fx.env();
        if open {
            env.push(("P11AUDIT_ON_FAILURE", "open".into()));
        }
        let what = format!("{CHILD_EXITS_UNWRITABLE} (open: {open})");
        let run = run_child_ok(
            child_command(
                CHILD_EXITS_UNWRITABLE,
                ROLE_VAR,
                CHILD_EXITS_UNWRITABLE,
                &env,
            ),
            fx.dir.path(),
            &what,
        );
        let generate_rv: ck::CK_RV = run
            .value_after("GENERATE_RV")
            .unwrap_or_else(|| panic!("{}", run.dump()))
            .parse()
            .unwrap();
        let want_rv = if open {
            ck::CKR_OK
        } else {
            ck::CKR_GENERAL_ERROR
        };
        assert_eq!(
            generate_rv,
            want_rv,
            "{what}: C_GenerateKey\n{}",
            run.dump()
        );
        let lost_at_least: u64 = run.value_after("LOST_AT_LEAST").unwrap().parse().unwrap();
        // The one stderr line says which policy applies.
        let policy_line = if open {
            "calls go ahead unrecorded (P11AUDIT_ON_FAILURE=open)"
        } else {
            "calls that need a record fail (P11AUDIT_ON_FAILURE=closed)"
        };
        assert!(
            run.p11audit_lines().iter().any(|l| l.contains(policy_line)),
            "{what}: no line saying {policy_line:?}\n{}",
            run.dump()
        );
        let lines_before = line_count(&fx.log);
        assert!(
            !std::fs::read_to_string(&fx.log)
                .unwrap()
                .contains(r#""ev":"gap""#),
            "{what}: a gap record before the next process ran"
        );
        // Meanwhile `verify` says what the state file counts.
        let out = p11audit_verify(&fx.key, &["--json"], &fx.log);
        assert_eq!(out.status.code(), Some(0), "{what}: {}", output_text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let unreported = v["unreported_lost"]["lost"].as_u64().unwrap_or(0);
        assert!(
            unreported >= lost_at_least,
            "{what}: verify --json shows {unreported} unreported: {v}"
        );
        let out = p11audit_verify(&fx.key, &[], &fx.log);
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("{unreported} record(s) lost and not yet reported")),
            "{what}: {}",
            output_text(&out)
        );
        // `show` names them on its state line (stderr), and `report` does not say that nothing
        // was lost.
        let out = p11audit_on_log("show", &fx.key, &[], &fx.log);
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains(&format!("{unreported} record(s) lost and not yet reported")),
            "{what}: {}",
            output_text(&out)
        );
        let out = p11audit_on_log("report", &fx.key, &[], &fx.log);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "the state file counts {unreported} record(s) lost and not yet reported"
            )) && !text.contains("no record was lost"),
            "{what}: {}",
            output_text(&out)
        );

        run_child_ok(
            child_command(CHILD_LATER, ROLE_VAR, CHILD_LATER, &fx.env()),
            fx.dir.path(),
            CHILD_LATER,
        );
        assert_verifies(&fx.key, &fx.log, &what);
        let out = p11audit_verify(&fx.key, &["--json"], &fx.log);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            v.get("unreported_lost").is_none(),
            "{what}: reported, yet {v}"
        );
        let records = parse_records(&std::fs::read_to_string(&fx.log).unwrap());
        let gap = &records[lines_before];
        assert_eq!(
            gap["ev"], "gap",
            "{what}: the later process's first record: {gap}"
        );
        let lost = gap["lost"].as_u64().expect("lost");
        assert!(
            lost >= lost_at_least,
            "{what}: the gap says {lost} lost; the process that exited lost at least {lost_at_least}"
        );
        assert_eq!(
            lost, unreported,
            "{what}: the gap reports what verify said was unreported"
        );
        assert!(gap["since"].is_string(), "{what}: {gap}");
        assert_eq!(
            records.iter().filter(|r| r["ev"] == "gap").count(),
            1,
            "{what}: reported once"
        );
    }
}
