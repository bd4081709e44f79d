//! Shared by the integration tests: the built library and binary, fresh SoftHSM tokens,
//! chain keys, and running programs under a timeout.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// A user PIN that cannot turn up in a log by chance (not hex, not digits), so finding it
/// there means it was written.
pub const USER_PIN: &str = "Pin-canary-Qx7";
pub const SO_PIN: &str = "So-canary-Zw9k";
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cdylib built together with the rlib this test links against.
///
/// This test binary is target/<profile>/deps/c_programs-<hash>. `cargo test` compiles the
/// library once with `--crate-type cdylib --crate-type rlib`, so target/<profile>/deps/
/// libp11audit.so is always the one matching this binary; only `cargo build` also copies it up
/// to target/<profile>/libp11audit.so, which may be older. Prefer the first, fall back to the
/// second.
pub fn shim_library() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe
        .parent()
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    let candidates = [
        deps.join("libp11audit.so"),
        deps.parent()
            .map(|p| p.join("libp11audit.so"))
            .unwrap_or_default(),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("libp11audit.so not found at {candidates:?}; run `cargo build`"))
        .clone()
}

pub fn p11audit_bin() -> &'static str {
    env!("CARGO_BIN_EXE_p11audit")
}

pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(out.status.success(), "{what} failed\n{}", output_text(&out));
    out
}

/// A fresh SoftHSM token made by softhsm/new-token.sh; returns the SOFTHSM2_CONF path.
pub fn new_token(dir: &Path) -> PathBuf {
    let script = manifest_dir().join("softhsm/new-token.sh");
    let out = run_ok(
        Command::new("bash")
            .arg(&script)
            .arg(dir)
            .arg("p11audit-c-test")
            .arg(SO_PIN)
            .arg(USER_PIN),
        "softhsm/new-token.sh",
    );
    let conf = dir.join("softhsm2.conf");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.trim_end() == format!("export SOFTHSM2_CONF={}", conf.display()),
        "new-token.sh printed {stdout:?}"
    );
    assert!(conf.is_file(), "{} missing", conf.display());
    conf
}

pub fn keygen(path: &Path) {
    run_ok(
        Command::new(p11audit_bin()).arg("keygen").arg(path),
        "p11audit keygen",
    );
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with stdout/stderr to files, killing it and failing the test after RUN_TIMEOUT.
pub fn run_with_timeout(mut cmd: Command, work: &Path, what: &str) -> Finished {
    let out_path = work.join(format!("{what}.stdout"));
    let err_path = work.join(format!("{what}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| {
        let mut s = String::new();
        fs::File::open(p)
            .and_then(|mut f| f.read_to_string(&mut s))
            .map(|_| s)
            .unwrap_or_else(|e| format!("<unreadable: {e}>"))
    };
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    match status {
        Some(status) => Finished {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} did not finish within {RUN_TIMEOUT:?} (calls recursing or deadlocked?)\n\
             --- stdout ---\n{stdout}--- stderr ---\n{stderr}"
        ),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh token, chain key and log path in a temporary directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub softhsm_conf: PathBuf,
    pub key: PathBuf,
    pub log: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let softhsm_conf = new_token(&dir.path().join("token"));
        let key = dir.path().join("chain.key");
        keygen(&key);
        let log = dir.path().join("audit.jsonl");
        Fixture {
            dir,
            softhsm_conf,
            key,
            log,
        }
    }

    pub fn state(&self) -> PathBuf {
        PathBuf::from(format!("{}.state", self.log.display()))
    }

    /// Environment for a process that loads the shim (or SoftHSM directly: the P11AUDIT_*
    /// variables are then simply unused).
    pub fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            ("SOFTHSM2_CONF", self.softhsm_conf.clone().into()),
            ("P11AUDIT_MODULE", SOFTHSM.into()),
            ("P11AUDIT_LOG", self.log.clone().into()),
            ("P11AUDIT_KEY_FILE", self.key.clone().into()),
        ]
    }

    /// `p11audit verify --key-file KEY LOG`: exit code and stdout.
    pub fn verify(&self) -> (Option<i32>, String) {
        let out = Command::new(p11audit_bin())
            .arg("verify")
            .arg("--key-file")
            .arg(&self.key)
            .arg(&self.log)
            .output()
            .expect("run p11audit verify");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Every record of the log, parsed.
    pub fn records(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.log)
            .expect("read audit log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }
}
