//! The key-theft attack on a shared log directory, made for real with two users.
//!
//! A local user (`nobody`) who may create files in the log's directory makes `audit.jsonl` and
//! `audit.jsonl.state` before the first writer runs, keeps descriptors of both and a shared
//! mapping of the state file, and waits. Then root runs pkcs11-tool through p11audit against
//! real SoftHSM. If the writer adopted those files, the chain key K_0 would appear in the
//! attacker's mapping, and with it the power to forge a log that `verify` accepts. The writer
//! must instead refuse (C_Initialize fails, one `p11audit:` line naming the directory or file,
//! its owner and mode), first because the directory is group-writable, then, with the
//! directory closed, because the files are not its own; and once the operator moves them away
//! it must start a chain in files it created, which the attacker cannot open. At the end, the
//! attacker's descriptors and mapping must have seen no byte at all.
//!
//! Also with two users: a key file owned by another user is refused (its owner knows K_0).
//!
//! Needs root (to switch to `nobody` with setpriv and to chown) and python3 for the attacker;
//! otherwise it prints why and passes without checking anything, except under CI, where it
//! fails.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const NOBODY: u32 = 65534;
/// Debian's python3, by its path: `nobody` cannot use one under root's home (pyenv).
const PYTHON: &str = "/usr/bin/python3";
const NOGROUP: u32 = 65534;

/// Why the test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: cannot act as a second user".into());
    }
    if !Path::new(PYTHON).is_file() {
        return Some(format!("{PYTHON} is not installed"));
    }
    missing_command(&["setpriv", "pkcs11-tool"])
}

fn runnable(test: &str) -> bool {
    runnable_unless(test, cannot_run())
}

/// A fresh directory that `nobody` can reach (mode 0755, under /tmp).
fn reachable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// `cmd` as `nobody:nogroup`, with no supplementary groups.
fn as_nobody(program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        program,
    ]);
    cmd
}

/// The attacker: creates the log and the state file empty (umask 002, so they are
/// group-writable as in a setgid group directory), keeps descriptors of both, maps the state
/// file shared as soon as it has a page (a thread polls for that), prints "ready", and when
/// its stdin closes reports, as JSON, what its descriptors and its mapping see.
const ATTACKER: &str = r#"
import json, mmap, os, sys, threading, time
d = sys.argv[1]
os.umask(0o002)
log = os.open(os.path.join(d, "audit.jsonl"), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
state = os.open(os.path.join(d, "audit.jsonl.state"), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
view = []
done = threading.Event()
def watch():
    while not done.is_set() and not view:
        if os.fstat(state).st_size >= 4096:
            view.append(mmap.mmap(state, 4096, mmap.MAP_SHARED, mmap.PROT_READ))
        time.sleep(0.0005)
watcher = threading.Thread(target=watch)
watcher.start()
print("ready", flush=True)
sys.stdin.read()
done.set()
watcher.join()
def nonzero(b): return sum(1 for x in b if x)
print(json.dumps({
    "log_len": os.fstat(log).st_size, "log_nonzero": nonzero(os.pread(log, 1 << 20, 0)),
    "state_len": os.fstat(state).st_size, "state_nonzero": nonzero(os.pread(state, 1 << 20, 0)),
    "mapped": bool(view), "map_nonzero": nonzero(view[0][:]) if view else 0,
}), flush=True)
"#;

struct Attacker {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Attacker {
    fn start(dir: &Path) -> Attacker {
        let mut child = as_nobody(PYTHON)
            .arg("-c")
            .arg(ATTACKER)
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the attacker");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the attacker");
        assert_eq!(line.trim(), "ready", "the attacker did not get ready");
        Attacker { child, stdout }
    }

    /// Closes its stdin and returns what it saw.
    fn report(mut self) -> Value {
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read the attacker's report");
        assert!(
            self.child.wait().expect("wait").success(),
            "attacker failed"
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

/// pkcs11-tool (a real client) listing slots through p11audit with `log` and `key`: its exit
/// status and its `p11audit:` stderr lines.
fn pkcs11_tool(fx: &Fixture, log: &Path, key: &Path) -> (bool, Vec<String>) {
    let out = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(shim_library())
        .arg("--list-slots")
        .env("SOFTHSM2_CONF", &fx.softhsm_conf)
        .env("P11AUDIT_MODULE", SOFTHSM)
        .env("P11AUDIT_LOG", log)
        .env("P11AUDIT_KEY_FILE", key)
        .stdin(Stdio::null())
        .output()
        .expect("run pkcs11-tool");
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("p11audit:"))
        .map(str::to_string)
        .collect();
    (out.status.success(), lines)
}

/// Runs pkcs11-tool and checks that C_Initialize was refused with one `p11audit:` line holding
/// every part of `expected`.
fn assert_refused(fx: &Fixture, log: &Path, what: &str, expected: &[String]) {
    let (ok, lines) = pkcs11_tool(fx, log, &fx.key);
    assert!(!ok, "{what}: pkcs11-tool succeeded");
    assert_eq!(lines.len(), 1, "{what}: one p11audit line: {lines:?}");
    for part in expected {
        assert!(
            lines[0].contains(part.as_str()),
            "{what}: {:?} lacks {part:?}",
            lines[0]
        );
    }
}

fn moved_away(path: &Path) -> PathBuf {
    let to = PathBuf::from(format!("{}.attacker", path.display()));
    fs::rename(path, &to).expect("move away");
    to
}

#[test]
fn files_made_by_another_user_are_never_written() {
    if !runnable("files_made_by_another_user_are_never_written") {
        return;
    }
    let fx = Fixture::new();
    let base = reachable_dir();
    let dir = base.path().join("logs");
    fs::create_dir(&dir).expect("mkdir");
    chown(&dir, 0, NOGROUP);
    chmod(&dir, 0o2770);
    let log = dir.join("audit.jsonl");
    let state = dir.join("audit.jsonl.state");

    let attacker = Attacker::start(&dir);
    assert_eq!(fs::metadata(&state).unwrap().uid(), NOBODY);

    // 1. The group directory the attack needs is refused outright.
    assert_refused(
        &fx,
        &log,
        "group-writable directory",
        &[
            format!("the directory {}", dir.display()),
            "writable by its group".into(),
            "mode 2770".into(),
            format!("chmod go-w {}", dir.display()),
        ],
    );

    // 2. The directory closed, the attacker's files are still there: refused, file by file.
    chmod(&dir, 0o0750);
    assert_refused(
        &fx,
        &log,
        "the attacker's log",
        &[
            format!("audit log {}", log.display()),
            "owned by uid 65534 (nobody)".into(),
            "mode 0664".into(),
            "move it away".into(),
        ],
    );
    let log_moved = moved_away(&log);
    assert_refused(
        &fx,
        &log,
        "the attacker's state file",
        &[
            format!("audit state file {}", state.display()),
            "owned by uid 65534 (nobody)".into(),
            "mode 0664".into(),
        ],
    );
    let state_moved = moved_away(&state);

    // 3. With them moved away, the writer makes its own files, and the chain starts there.
    let (ok, lines) = pkcs11_tool(&fx, &log, &fx.key);
    assert!(
        ok && lines.is_empty(),
        "pkcs11-tool through p11audit: {lines:?}"
    );
    for (path, mode) in [(&log, 0o600), (&state, 0o600)] {
        let m = fs::metadata(path).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o7777),
            (0, mode),
            "{}",
            path.display()
        );
    }
    assert_verifies(&fx.key, &log, "the chain in the writer's own files");
    let reopened = as_nobody(PYTHON)
        .args(["-c", "import sys; open(sys.argv[1], 'rb')"])
        .arg(&state)
        .stderr(Stdio::piped())
        .output()
        .expect("run python3 as nobody");
    assert!(
        !reopened.status.success()
            && String::from_utf8_lossy(&reopened.stderr).contains("PermissionError"),
        "nobody could open the new state file"
    );

    // 4. Nothing of the chain ever reached the attacker's descriptors or mapping.
    let seen = attacker.report();
    assert_eq!(seen["log_len"], 0, "{seen}");
    assert_eq!(seen["state_len"], 0, "{seen}");
    assert_eq!(seen["mapped"], false, "{seen}");
    for k in ["log_nonzero", "state_nonzero", "map_nonzero"] {
        assert_eq!(seen[k], 0, "{k}: {seen}");
    }
    for moved in [log_moved, state_moved] {
        assert_eq!(fs::metadata(&moved).unwrap().uid(), NOBODY);
    }
}

/// Whoever owns the key file knows K_0, and could forge the whole log: a key file of another
/// user is refused, even with mode 0400.
#[test]
fn a_key_file_of_another_user_is_refused() {
    if !runnable("a_key_file_of_another_user_is_refused") {
        return;
    }
    let fx = Fixture::new();
    let theirs = fx.dir.path().join("their.key");
    fs::copy(&fx.key, &theirs).expect("copy key");
    chmod(&theirs, 0o400);
    chown(&theirs, NOBODY, NOGROUP);
    let (ok, lines) = pkcs11_tool(&fx, &fx.log, &theirs);
    assert!(!ok, "pkcs11-tool succeeded with another user's key");
    assert_eq!(lines.len(), 1, "{lines:?}");
    for part in [
        format!("key file {}", theirs.display()),
        "owned by uid 65534 (nobody)".to_string(),
        "P11AUDIT_KEY_FILE".to_string(),
    ] {
        assert!(lines[0].contains(&part), "{:?} lacks {part:?}", lines[0]);
    }
    assert!(
        fs::read(&fx.log).map(|b| b.is_empty()).unwrap_or(true),
        "a chain was started with another user's key"
    );
}

/// A log directory of the writer's own, inside a directory `nobody` owns: `nobody` could rename
/// the log's directory away and put one of its own in its place between the checks and the
/// opens, so the parent is refused and named.
#[test]
fn a_log_directory_under_another_users_directory_is_refused() {
    if !runnable("a_log_directory_under_another_users_directory_is_refused") {
        return;
    }
    let fx = Fixture::new();
    let base = reachable_dir();
    let theirs = base.path().join("theirs");
    let dir = theirs.join("logs");
    fs::create_dir_all(&dir).expect("mkdir");
    chmod(&dir, 0o700);
    chown(&theirs, NOBODY, NOGROUP);
    chmod(&theirs, 0o755);
    assert_refused(
        &fx,
        &dir.join("audit.jsonl"),
        "a parent of another user",
        &[
            format!("the directory {} above the audit log's", theirs.display()),
            "owned by uid 65534 (nobody)".into(),
        ],
    );
    assert!(
        fs::read_dir(&dir).unwrap().next().is_none(),
        "files were created"
    );
}
