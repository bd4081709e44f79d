//! Bad configurations: `C_Initialize` returns `CKR_GENERAL_ERROR`, stderr has exactly one line
//! starting `p11audit:` that names the variable involved, the process does not crash, and
//! `C_GetFunctionList` still hands out a table.
//!
//! The shim reads its environment at `C_Initialize` and a process can load SoftHSM only once,
//! so every case runs in a child: this test binary re-executes itself with
//! `--exact child_initialize` and P11AUDIT_TEST_ROLE set. The child drives the shim through
//! `dlopen` and the raw function table (as a C application would), so the exact `CK_RV` is seen,
//! and prints each return value on stdout for the parent to check.
//!
//! Every case starts from a valid configuration with a real SoftHSM token and changes one thing:
//! if the shim ignored the bad setting and forwarded `C_Initialize`, SoftHSM would answer
//! `CKR_OK` and the test would notice.

mod common;

use common::raw;
use common::*;
use cryptoki_sys as ck;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const CHILD: &str = "child_initialize";

const CKR_GENERAL_ERROR: &str = "0x5";
const CKR_OK: &str = "0x0";
const CKR_CRYPTOKI_NOT_INITIALIZED: &str = "0x190";

// ---- the child ------------------------------------------------------------------------------

/// Calls `C_GetFunctionList` and checks that it hands out a usable 2.40 table.
fn function_table(get: raw::GetFunctionList, when: &str) -> &'static ck::CK_FUNCTION_LIST {
    let mut list: *mut ck::CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    let rv = unsafe { get(&mut list) };
    assert_eq!(rv, ck::CKR_OK, "C_GetFunctionList {when} returned {rv:#x}");
    assert!(
        !list.is_null(),
        "C_GetFunctionList {when} gave a NULL table"
    );
    // SAFETY: the shim's table is a static that lives as long as the (never unloaded) library.
    let table: &'static ck::CK_FUNCTION_LIST = unsafe { &*list };
    assert_eq!(
        (table.version.major, table.version.minor),
        (2, 40),
        "table version {when}"
    );
    assert!(
        table.C_Initialize.is_some() && table.C_GetInfo.is_some() && table.C_Finalize.is_some(),
        "C_GetFunctionList {when} gave a table without C_Initialize/C_GetInfo/C_Finalize"
    );
    println!("C_GetFunctionList {when} rv={rv:#x} version=2.40");
    table
}

/// The child: loads the shim as an application would and reports each return value.
#[test]
fn child_initialize() {
    if !is_role(CHILD) {
        return;
    }
    let get = raw::load_get_function_list(&shim_library());

    let table = function_table(get, "before C_Initialize");
    let mut args = raw::os_locking_args();
    // SAFETY: checked Some above; a valid CK_C_INITIALIZE_ARGS.
    let rv = unsafe {
        (table.C_Initialize.unwrap())(&mut args as *mut ck::CK_C_INITIALIZE_ARGS as *mut _)
    };
    println!("C_Initialize rv={rv:#x}");

    // A failed C_Initialize leaves the module usable for another try: the table is still there.
    let table = function_table(get, "after C_Initialize");
    // SAFETY: CK_INFO is plain data; a valid out-pointer.
    let mut info: ck::CK_INFO = unsafe { std::mem::zeroed() };
    let rv_info = unsafe { (table.C_GetInfo.unwrap())(&mut info) };
    println!("C_GetInfo rv={rv_info:#x}");
    if rv == ck::CKR_OK {
        // SAFETY: NULL is the only valid argument.
        let rv_fin = unsafe { (table.C_Finalize.unwrap())(std::ptr::null_mut()) };
        println!("C_Finalize rv={rv_fin:#x}");
    }
}

// ---- the parent -----------------------------------------------------------------------------

/// What the child printed for `function`: "C_Initialize rv=0x5" gives "0x5".
fn rv<'a>(run: &'a Finished, function: &str) -> &'a str {
    let prefix = format!("{function} rv=");
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.split_whitespace().next().unwrap_or(""))
        .unwrap_or_else(|| panic!("child printed no {function} result\n{}", run.dump()))
}

/// Runs the child with exactly `env` as its P11AUDIT_* and SoftHSM configuration.
fn run_child(work: &Path, what: &str, env: &Env) -> Finished {
    let out = run_child_ok(child_command(CHILD, ROLE_VAR, CHILD, env), work, what);
    for when in ["before", "after"] {
        assert!(
            out.stdout
                .contains(&format!("C_GetFunctionList {when} C_Initialize rv=0x0")),
            "{what}: C_GetFunctionList {when} C_Initialize did not return a table\n{}",
            out.dump()
        );
    }
    out
}

/// A valid configuration with a fresh token; tests change one thing in `env`.
struct Case {
    fx: Fixture,
    env: Vec<(&'static str, OsString)>,
}

impl Case {
    fn new() -> Case {
        let fx = Fixture::new();
        let env = fx.env();
        Case { fx, env }
    }

    fn work(&self) -> &Path {
        self.fx.dir.path()
    }

    fn set(&mut self, var: &'static str, value: impl Into<OsString>) -> &mut Self {
        self.unset(var);
        self.env.push((var, value.into()));
        self
    }

    fn unset(&mut self, var: &'static str) -> &mut Self {
        self.env.retain(|(k, _)| *k != var);
        self
    }

    fn log_path(&self) -> PathBuf {
        self.env
            .iter()
            .find(|(k, _)| *k == "P11AUDIT_LOG")
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| self.fx.log.clone())
    }

    /// Runs the child and checks that C_Initialize was refused because of `var`.
    fn expect_refused(&self, what: &str, var: &str) -> Finished {
        let run = run_child(self.work(), what, &self.env);
        assert_eq!(
            rv(&run, "C_Initialize"),
            CKR_GENERAL_ERROR,
            "{what}: C_Initialize should return CKR_GENERAL_ERROR\n{}",
            run.dump()
        );
        // Nothing was configured, so nothing may be forwarded.
        assert_eq!(
            rv(&run, "C_GetInfo"),
            CKR_CRYPTOKI_NOT_INITIALIZED,
            "{what}: after a refused C_Initialize, C_GetInfo should return CKR_CRYPTOKI_NOT_INITIALIZED\n{}",
            run.dump()
        );
        let lines = run.p11audit_lines();
        assert_eq!(
            lines.len(),
            1,
            "{what}: expected exactly one `p11audit:` line on stderr\n{}",
            run.dump()
        );
        assert!(
            lines[0].contains(var),
            "{what}: the `p11audit:` line does not name {var}: {:?}",
            lines[0]
        );
        // A refused configuration starts no chain.
        let log = self.log_path();
        let content = fs::symlink_metadata(&log)
            .ok()
            .filter(|m| m.file_type().is_file())
            .map(|_| fs::read(&log).expect("read log"))
            .unwrap_or_default();
        assert!(
            content.is_empty(),
            "{what}: the refused configuration wrote to {}:\n{}",
            log.display(),
            String::from_utf8_lossy(&content)
        );
        run
    }

    fn expect_ok(&self, what: &str) -> Finished {
        let run = run_child(self.work(), what, &self.env);
        assert_eq!(
            rv(&run, "C_Initialize"),
            CKR_OK,
            "{what}: C_Initialize should succeed\n{}",
            run.dump()
        );
        assert_eq!(rv(&run, "C_GetInfo"), CKR_OK, "{what}\n{}", run.dump());
        assert_eq!(rv(&run, "C_Finalize"), CKR_OK, "{what}\n{}", run.dump());
        assert!(
            run.p11audit_lines().is_empty(),
            "{what}: a valid configuration printed a `p11audit:` line\n{}",
            run.dump()
        );
        run
    }
}

/// The positive control: the driver and the baseline configuration work.
#[test]
fn valid_configuration_initializes() {
    let case = Case::new();
    case.expect_ok("valid");
    case.fx.assert_verifies("the log");
    let recs = case.fx.records();
    assert_eq!(recs[0]["ev"], "start");
    assert!(recs.iter().any(|r| r["ev"] == "attach"));
}

#[test]
fn module_unset() {
    let mut case = Case::new();
    case.unset("P11AUDIT_MODULE");
    case.expect_refused("module_unset", "P11AUDIT_MODULE");
}

#[test]
fn module_empty() {
    let mut case = Case::new();
    case.set("P11AUDIT_MODULE", "");
    case.expect_refused("module_empty", "P11AUDIT_MODULE");
}

#[test]
fn log_unset() {
    let mut case = Case::new();
    case.unset("P11AUDIT_LOG");
    case.expect_refused("log_unset", "P11AUDIT_LOG");
}

#[test]
fn key_file_unset_without_chain() {
    let mut case = Case::new();
    case.unset("P11AUDIT_KEY_FILE");
    case.expect_refused("key_unset_no_chain", "P11AUDIT_KEY_FILE");
}

/// Once a chain exists, the shim works from the state file alone: the key can leave the host.
#[test]
fn key_file_unset_with_existing_chain_is_fine() {
    let mut case = Case::new();
    case.expect_ok("first_run_with_key");
    // Move the key away, as the README tells operators to.
    let away = case.work().join("auditor-copy.key");
    fs::rename(&case.fx.key, &away).expect("move key");
    case.unset("P11AUDIT_KEY_FILE");
    case.expect_ok("second_run_without_key");

    fs::rename(&away, &case.fx.key).expect("restore key for verify");
    case.fx.assert_verifies("the log");
    let recs = case.fx.records();
    let starts = recs.iter().filter(|r| r["ev"] == "start").count();
    let attaches: Vec<_> = recs.iter().filter(|r| r["ev"] == "attach").collect();
    assert_eq!(starts, 1, "exactly one chain start");
    assert_eq!(attaches.len(), 2, "both runs attached to the same chain");
    assert_ne!(attaches[0]["pid"], attaches[1]["pid"]);
}

#[test]
fn provider_missing() {
    let mut case = Case::new();
    let missing = case.work().join("no-such-module.so");
    case.set("P11AUDIT_MODULE", missing);
    case.expect_refused("provider_missing", "P11AUDIT_MODULE");
}

/// A real shared library that is not a PKCS#11 module (no C_GetFunctionList).
#[test]
fn provider_not_pkcs11() {
    let candidates = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
    ];
    let lib = candidates
        .iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or_else(|| panic!("none of {candidates:?} exists: need a non-PKCS#11 .so"));
    let mut case = Case::new();
    case.set("P11AUDIT_MODULE", lib);
    let run = case.expect_refused("provider_not_pkcs11", "P11AUDIT_MODULE");
    assert!(
        run.p11audit_lines()[0].contains("C_GetFunctionList"),
        "the message should say what is missing: {:?}",
        run.p11audit_lines()[0]
    );
}

/// P11AUDIT_MODULE pointing at the shim itself would forward every call to itself.
#[test]
fn provider_is_the_shim_itself() {
    let mut case = Case::new();
    case.set("P11AUDIT_MODULE", shim_library());
    case.expect_refused("provider_is_shim", "P11AUDIT_MODULE");
}

/// Unreadable key files. Tests run as root, and root reads a mode-000 file anyway, so the
/// unreadable key is made two other ways: a path that does not exist, and a directory.
#[test]
fn key_file_missing() {
    let mut case = Case::new();
    let missing = case.work().join("no-such.key");
    case.set("P11AUDIT_KEY_FILE", missing);
    case.expect_refused("key_missing", "P11AUDIT_KEY_FILE");
}

#[test]
fn key_file_is_a_directory() {
    let mut case = Case::new();
    let dir = case.work().join("key-dir");
    fs::create_dir(&dir).expect("mkdir");
    // Owner-only, so the refusal is about reading it, not about its mode.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    case.set("P11AUDIT_KEY_FILE", dir);
    case.expect_refused("key_is_dir", "P11AUDIT_KEY_FILE");
}

/// A FIFO at the key file's path (another user could put one there) must not hang
/// C_Initialize: it is refused as not a regular file.
#[test]
fn key_file_is_a_fifo() {
    let mut case = Case::new();
    let fifo = case.work().join("key.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    fs::set_permissions(&fifo, fs::Permissions::from_mode(0o600)).expect("chmod");
    case.set("P11AUDIT_KEY_FILE", &fifo);
    let run = case.expect_refused("key_fifo", "P11AUDIT_KEY_FILE");
    assert!(
        run.p11audit_lines()[0].contains("is not a regular file"),
        "{}",
        run.dump()
    );
}

#[test]
fn key_file_readable_by_group_and_others() {
    let case = Case::new();
    fs::set_permissions(&case.fx.key, fs::Permissions::from_mode(0o644)).expect("chmod");
    case.expect_refused("key_mode_0644", "P11AUDIT_KEY_FILE");
}

#[test]
fn log_is_a_symlink() {
    let mut case = Case::new();
    let target = case.work().join("elsewhere.jsonl");
    fs::write(&target, b"").expect("create target");
    let link = case.work().join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    case.set("P11AUDIT_LOG", &link);
    case.expect_refused("log_symlink", "P11AUDIT_LOG");
    assert_eq!(
        fs::read(&target).expect("read target").len(),
        0,
        "nothing may be written through the link"
    );
    assert!(fs::symlink_metadata(&link)
        .expect("link still there")
        .file_type()
        .is_symlink());
}

#[test]
fn log_directory_missing() {
    let mut case = Case::new();
    let missing_dir = case.work().join("no-such-dir");
    case.set("P11AUDIT_LOG", missing_dir.join("audit.jsonl"));
    case.expect_refused("log_dir_missing", "P11AUDIT_LOG");
    assert!(
        !missing_dir.exists(),
        "the shim must not create the log directory"
    );
}

#[test]
fn sync_bogus() {
    let mut case = Case::new();
    case.set("P11AUDIT_SYNC", "bogus");
    case.expect_refused("sync_bogus", "P11AUDIT_SYNC");
}

#[test]
fn on_failure_bogus() {
    let mut case = Case::new();
    case.set("P11AUDIT_ON_FAILURE", "sometimes");
    case.expect_refused("on_failure_bogus", "P11AUDIT_ON_FAILURE");
}

/// P11AUDIT_CONFIG names a file with the same settings; the environment overrides it.
#[test]
fn settings_from_a_configuration_file() {
    let mut case = Case::new();
    let file = case.work().join("p11audit.conf");
    let mut text = String::from("# p11audit settings\n");
    for (k, v) in case.env.iter().filter(|(k, _)| k.starts_with("P11AUDIT_")) {
        text.push_str(&format!("{k}={}\n", v.to_string_lossy()));
    }
    text.push_str("P11AUDIT_SYNC=always\n");
    fs::write(&file, text).expect("write config file");
    for var in ["P11AUDIT_MODULE", "P11AUDIT_LOG", "P11AUDIT_KEY_FILE"] {
        case.unset(var);
    }
    case.set("P11AUDIT_CONFIG", file.clone());
    case.expect_ok("config_file");
    case.fx
        .assert_verifies("the log written from file settings");
}

/// An unknown setting in the P11AUDIT_CONFIG file is refused, naming the file and line.
#[test]
fn configuration_file_with_unknown_setting() {
    let mut case = Case::new();
    let file = case.work().join("p11audit.conf");
    fs::write(&file, "P11AUDIT_SYNC=none\nP11AUDIT_BOGUS=1\n").expect("write config file");
    case.set("P11AUDIT_CONFIG", file);
    case.expect_refused("config_file_unknown_setting", "p11audit.conf:2");
}

/// A log directory that a group or others can write to is refused: another user could create
/// the log or its state file first and read the chain key (SECURITY.md). The sticky bit does
/// not help. The `p11audit:` line names the directory, its owner and mode, and the fix, and no
/// file is created in it. Directories only the owner can write to work, whoever may read them.
#[test]
fn log_directory_writable_by_group_or_others_is_refused() {
    let mut case = Case::new();
    let dir = case.work().join("logs");
    fs::create_dir(&dir).expect("mkdir");
    case.set("P11AUDIT_LOG", dir.join("audit.jsonl"));

    for mode in [0o777, 0o1777, 0o770, 0o2770, 0o3770, 0o720] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).expect("chmod");
        let what = format!("log_dir_{mode:04o}");
        let run = case.expect_refused(&what, "P11AUDIT_LOG");
        let line = run.p11audit_lines()[0].to_string();
        for part in [
            format!("the directory {} of the audit log", dir.display()),
            format!("mode {mode:04o}"),
            format!(
                "owner uid {}",
                std::os::unix::fs::MetadataExt::uid(&fs::metadata(&dir).expect("stat"))
            ),
            format!("chmod go-w {}", dir.display()),
        ] {
            assert!(line.contains(&part), "{what}: {line:?} lacks {part:?}");
        }
        let left: Vec<_> = fs::read_dir(&dir).expect("read dir").collect();
        assert!(left.is_empty(), "{what}: files were created: {left:?}");
    }
    for mode in [0o700, 0o750, 0o755, 0o2750] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).expect("chmod");
        let what = format!("log_dir_{mode:04o}");
        case.expect_ok(&what);
    }
    assert_verifies(
        &case.fx.key,
        &dir.join("audit.jsonl"),
        "the log in the owner-only directory",
    );
}

/// A log emptied, or deleted while no process had it open (the shim then creates a new one), is
/// refused, and the message fits what happened. A new file can get the old one's inode number
/// (ext4 reuses freed ones at once) and then looks like the same file, only empty: the message
/// for an empty log names both possibilities.
#[test]
fn log_emptied_or_deleted_while_unused() {
    use std::os::unix::fs::MetadataExt;
    let case = Case::new();
    case.expect_ok("first run");
    fs::File::create(case.log_path()).expect("truncate the log");
    let run = case.expect_refused(
        "log truncated to nothing",
        "is empty, but the state file records",
    );
    assert!(
        run.stderr
            .contains("truncated, or deleted and created again"),
        "{}",
        run.dump()
    );

    let case = Case::new();
    case.expect_ok("first run");
    let inode_before = fs::metadata(case.log_path()).unwrap().ino();
    fs::remove_file(case.log_path()).expect("delete the log");
    let run = run_child(case.work(), "log deleted", &case.env);
    assert_eq!(
        rv(&run, "C_Initialize"),
        CKR_GENERAL_ERROR,
        "{}",
        run.dump()
    );
    let inode_after = fs::metadata(case.log_path()).unwrap().ino();
    let want = if inode_after == inode_before {
        "is empty, but the state file records"
    } else {
        "is not the file the state file"
    };
    let lines = run.p11audit_lines();
    assert!(
        lines.len() == 1 && lines[0].contains(want),
        "log deleted (inode {inode_before} then {inode_after}): want {want:?}\n{}",
        run.dump()
    );
}
