//! Shared by the integration tests: the built library and binary, fresh SoftHSM tokens,
//! chain keys, test binaries re-executed as child processes, running programs under a timeout,
//! and checking a log's chain. `raw` drives a PKCS#11 module through the C ABI.
#![allow(dead_code)]

pub mod raw;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// A user PIN that cannot turn up in a log by chance (not hex, not digits), so finding it
/// there means it was written.
pub const USER_PIN: &str = "Pin-canary-Qx7";
pub const SO_PIN: &str = "So-canary-Zw9k";
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// DER OID of P-256 (prime256v1).
pub const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Environment variables for a process that loads the shim: name, value.
pub type Env = [(&'static str, OsString)];

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

pub fn output_text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
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

/// Compiles tests/c/NAME.c into `out_dir`/NAME; `extra` goes after the source (libraries,
/// `-shared`).
pub fn compile_c(out_dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let src = manifest_dir().join("tests/c").join(format!("{name}.c"));
    let out = out_dir.join(name);
    let mut cmd = Command::new("cc");
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-O1", "-g"])
        .arg("-I")
        .arg(manifest_dir().join("tests/c"))
        .arg("-I")
        .arg(manifest_dir().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .args(extra);
    run_ok(&mut cmd, &format!("compiling {}", src.display()));
    out
}

// ---- child processes ------------------------------------------------------------------------

/// Tells a re-executed test binary which child role to play.
pub const ROLE_VAR: &str = "P11AUDIT_TEST_ROLE";

/// Whether this process is a test binary re-executed to play `role` (under ROLE_VAR).
pub fn is_role(role: &str) -> bool {
    std::env::var(ROLE_VAR).as_deref() == Ok(role)
}

/// Gives `cmd` exactly `env` as its p11audit and SoftHSM configuration: the P11AUDIT_* and
/// SOFTHSM2_CONF variables of this process are not passed on.
pub fn set_env<'a>(cmd: &'a mut Command, env: &Env) -> &'a mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("P11AUDIT_") || name == "SOFTHSM2_CONF" {
            cmd.env_remove(&name);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
}

/// This test binary, re-executed to run only the test `test_name`, with `role_var` set to
/// `role` and exactly `env` as its configuration (see `set_env`). The test `test_name` does
/// nothing unless `role_var` is set.
///
/// Children are used because the shim reads its configuration at C_Initialize and a process
/// can load SoftHSM only once.
pub fn child_command(
    test_name: &str,
    role_var: &str,
    role: impl AsRef<OsStr>,
    env: &Env,
) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"]);
    set_env(&mut cmd, env);
    cmd.env(role_var, role);
    cmd
}

/// Prints a child's result for the parent to find with `Finished::marked_json`. The newline
/// first: libtest prints "test NAME ... " without one before the test runs.
pub fn print_marked(marker: &str, result: &impl std::fmt::Display) {
    println!("\n{marker}{result}");
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Status, stdout and stderr, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// The first word after `KEY=` in stdout (libtest may print "test NAME ... " on the same
    /// line before it).
    pub fn value_after(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .find_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..]))
            .and_then(|rest| rest.split_whitespace().next())
    }

    /// The JSON value printed after `marker` (by `print_marked`); fails the test without one.
    pub fn marked_json(&self, marker: &str, what: &str) -> Value {
        let line = self
            .stdout
            .lines()
            .find_map(|l| l.find(marker).map(|at| &l[at + marker.len()..]))
            .unwrap_or_else(|| panic!("{what} printed no result line\n{}", self.dump()));
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("{what}: the result line is not JSON ({e})\n{}", self.dump())
        })
    }

    /// The lines the shim printed on stderr.
    pub fn p11audit_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("p11audit:"))
            .collect()
    }
}

/// Runs `cmd` with stdout/stderr to files in `work` named after `what`, killing it and failing
/// the test after RUN_TIMEOUT.
pub fn run_with_timeout(cmd: Command, work: &Path, what: &str) -> Finished {
    run_with_time_limit(cmd, work, what, RUN_TIMEOUT)
}

/// `run_with_timeout` with another limit than RUN_TIMEOUT, for long runs.
pub fn run_with_time_limit(mut cmd: Command, work: &Path, what: &str, limit: Duration) -> Finished {
    let stem: String = what
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    let out_path = work.join(format!("{stem}.stdout"));
    let err_path = work.join(format!("{stem}.stderr"));
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
        if started.elapsed() > limit {
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
            "{what} did not finish within {limit:?} (calls recursing or deadlocked?)\n\
             --- stdout ---\n{stdout}--- stderr ---\n{stderr}"
        ),
    }
}

/// `run_with_timeout`, failing the test unless `cmd` exits with status 0.
pub fn run_child_ok(cmd: Command, work: &Path, what: &str) -> Finished {
    let run = run_with_timeout(cmd, work, what);
    assert!(run.status.success(), "{what} failed\n{}", run.dump());
    run
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- logs -----------------------------------------------------------------------------------

/// `p11audit verify --key-file KEY EXTRA... LOG`.
pub fn p11audit_verify(key: &Path, extra: &[&str], log: &Path) -> Output {
    p11audit_on_log("verify", key, extra, log)
}

/// `p11audit COMMAND --key-file KEY EXTRA... LOG` (verify, show, report).
pub fn p11audit_on_log(command: &str, key: &Path, extra: &[&str], log: &Path) -> Output {
    Command::new(p11audit_bin())
        .arg(command)
        .arg("--key-file")
        .arg(key)
        .args(extra)
        .arg(log)
        .output()
        .unwrap_or_else(|e| panic!("run p11audit {command}: {e}"))
}

/// Fails the test unless `p11audit verify` finds `log` intact.
pub fn assert_verifies(key: &Path, log: &Path, what: &str) {
    let out = p11audit_verify(key, &[], log);
    assert_eq!(
        out.status.code(),
        Some(0),
        "p11audit verify rejected {what} ({})\n{}",
        log.display(),
        output_text(&out)
    );
}

/// How many lines (records) a log has.
pub fn line_count(log: &Path) -> usize {
    fs::read(log)
        .expect("read log")
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Each line of a log, parsed.
pub fn parse_records(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// The outcome records in log order, with the outcome an init told in its operation's first
/// outcome (`init`, docs/FORMAT.md §5) would have had as a record of its own put just before
/// that outcome: its function, `"rv":"CKR_OK"`, its time and duration, the template or
/// signature length it tells, the outcome's session, mechanism and key, and `told_in` the
/// outcome's seq.
pub fn outcomes_with_told_inits(records: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for r in records.iter().filter(|r| r["ev"] == "outcome") {
        if let Some(init) = r["init"].as_object() {
            let mut told = json!({"ev": "outcome", "rv": "CKR_OK", "told_in": r["seq"]});
            for member in [
                "pid",
                "tid",
                "uid",
                "exe",
                "slot",
                "token",
                "session",
                "login",
                "mechanism",
                "key",
            ] {
                if let Some(v) = r.get(member) {
                    told[member] = v.clone();
                }
            }
            for (member, v) in init {
                told[member] = v.clone();
            }
            out.push(told);
        }
        out.push(r.clone());
    }
    out
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
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("SOFTHSM2_CONF", self.softhsm_conf.clone().into()),
            ("P11AUDIT_MODULE", SOFTHSM.into()),
            ("P11AUDIT_LOG", self.log.clone().into()),
            ("P11AUDIT_KEY_FILE", self.key.clone().into()),
        ]
    }

    /// `p11audit verify --key-file KEY LOG`: exit code and stdout.
    pub fn verify(&self) -> (Option<i32>, String) {
        let out = p11audit_verify(&self.key, &[], &self.log);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Fails the test unless `p11audit verify` finds the log intact; returns its stdout.
    pub fn assert_verifies(&self, what: &str) -> String {
        let (code, out) = self.verify();
        assert_eq!(code, Some(0), "p11audit verify on {what}:\n{out}");
        out
    }

    /// Every record of the log, parsed.
    pub fn records(&self) -> Vec<Value> {
        parse_records(&fs::read_to_string(&self.log).expect("read audit log"))
    }
}

/// Checks the log as bytes and as a chain, and returns its records:
/// - `p11audit verify` exits 0;
/// - every line is one whole record: a JSON object from `{"v":1,"seq":` to `"}` with a 64-hex
///   mac, and the file ends with a newline (no torn or interleaved line);
/// - seq is 0..n-1, each exactly once, in file order;
/// - every outcome that names an intent points back to an earlier intent record of the same
///   function, pid and tid, and every intent has exactly one outcome.
pub fn check_chain(fx: &Fixture) -> Vec<Value> {
    const MAC_MEMBER: &str = ",\"mac\":\"";
    fx.assert_verifies("the log");

    let bytes = fs::read(&fx.log).expect("read log");
    assert!(
        bytes.ends_with(b"\n"),
        "the log does not end with a newline"
    );
    let text = std::str::from_utf8(&bytes).expect("the log is UTF-8");
    let mut records = Vec::new();
    for (i, line) in text.split_terminator('\n').enumerate() {
        let whole = line.starts_with(&format!("{{\"v\":1,\"seq\":{i},"))
            && line.ends_with("\"}")
            && line.rfind(MAC_MEMBER).is_some_and(|at| {
                let mac = &line[at + MAC_MEMBER.len()..line.len() - 2];
                mac.len() == 64 && mac.bytes().all(|b| b.is_ascii_hexdigit())
            });
        assert!(
            whole,
            "line {i} is not one whole record with seq {i}: {line}"
        );
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {i} is not JSON ({e}): {line}"));
        assert_eq!(v["seq"].as_u64(), Some(i as u64), "line {i}");
        records.push(v);
    }

    let mut outcomes_of: HashMap<u64, usize> = HashMap::new();
    for r in &records {
        let Some(intent) = r.get("intent").and_then(Value::as_u64) else {
            continue;
        };
        let seq = r["seq"].as_u64().unwrap();
        assert_eq!(r["ev"], "outcome", "only outcomes name an intent: {r}");
        assert!(intent < seq, "outcome {seq} names a later intent {intent}");
        let i = &records[intent as usize];
        assert_eq!(
            i["ev"], "intent",
            "outcome {seq} names {intent}, not an intent: {i}"
        );
        for k in ["fn", "pid", "tid"] {
            assert_eq!(
                i[k], r[k],
                "outcome {seq} and its intent {intent} differ in {k}"
            );
        }
        *outcomes_of.entry(intent).or_default() += 1;
    }
    for r in records.iter().filter(|r| r["ev"] == "intent") {
        let seq = r["seq"].as_u64().unwrap();
        assert_eq!(
            outcomes_of.get(&seq).copied().unwrap_or(0),
            1,
            "intent {seq} should have exactly one outcome: {r}"
        );
    }
    records
}

/// Writes `bytes` to a new file at `path` with mode 0600, as a file of p11audit's own would be
/// (the writer adopts no log or state file others can write to).
pub fn write_owner_only(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(bytes).expect("write");
}

/// A child's start through the cryptoki client: the module named by P11AUDIT_TEST_MODULE,
/// initialized with OS locking, and a read-write session on the first slot with a token.
pub fn cryptoki_rw_session() -> (cryptoki::context::Pkcs11, cryptoki::session::Session) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    let module = std::env::var("P11AUDIT_TEST_MODULE").expect("module path");
    let p11 = Pkcs11::new(module).expect("load module");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11.get_slots_with_initialized_token().expect("slots")[0];
    let s = p11.open_rw_session(slot).expect("session");
    (p11, s)
}

/// A P-256 key pair as session objects, both halves labelled `label` with id `id`, the
/// private half sensitive and for signing: (public, private).
pub fn session_p256_pair(
    s: &cryptoki::session::Session,
    label: &str,
    id: &[u8],
) -> (
    cryptoki::object::ObjectHandle,
    cryptoki::object::ObjectHandle,
) {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::Attribute;
    s.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::EcParams(P256_OID.to_vec()),
            Attribute::Verify(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ],
        &[
            Attribute::Token(false),
            Attribute::Sign(true),
            Attribute::Sensitive(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ],
    )
    .expect("generate EC key pair")
}

/// `p11audit --version`'s version: `(major.minor, full)`, e.g. `("0.1", "0.1.0")`.
pub fn p11audit_version() -> (String, String) {
    let out = run_ok(
        Command::new(p11audit_bin()).arg("--version"),
        "p11audit --version",
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let full = text
        .trim()
        .strip_prefix("p11audit ")
        .unwrap_or_else(|| panic!("p11audit --version: {text:?}"))
        .to_string();
    let major_minor = full.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
    (major_minor, full)
}

/// Takes `libraryDescription` and `libraryVersion` out of every C_GetInfo answer (an object
/// with them) in `result`, a driver's JSON, and returns them as `(description, version)`.
pub fn take_library_identity(result: &mut Value) -> Vec<(Value, Value)> {
    let mut taken = Vec::new();
    fn walk(v: &mut Value, taken: &mut Vec<(Value, Value)>) {
        match v {
            Value::Object(map) => {
                if let (Some(d), Some(l)) = (
                    map.remove("libraryDescription"),
                    map.remove("libraryVersion"),
                ) {
                    taken.push((d, l));
                }
                map.values_mut().for_each(|v| walk(v, taken));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, taken)),
            _ => {}
        }
    }
    walk(result, &mut taken);
    taken
}

/// C_GetInfo through p11audit names p11audit, at the version `p11audit --version` prints,
/// where the provider named itself: checked on the two runs' answers, which are then taken
/// out so that the rest (cryptokiVersion, manufacturerID, flags) can be compared as equal.
pub fn check_library_identity(direct: &mut Value, through: &mut Value) {
    let (major_minor, full) = p11audit_version();
    let own = (json!(format!("p11audit {full}")), json!(major_minor));
    let direct_ids = take_library_identity(direct);
    let through_ids = take_library_identity(through);
    assert!(
        !through_ids.is_empty(),
        "no C_GetInfo answer through p11audit"
    );
    assert_eq!(direct_ids.len(), through_ids.len(), "C_GetInfo answers");
    for (d, t) in direct_ids.iter().zip(&through_ids) {
        assert_eq!(*t, own, "C_GetInfo through p11audit names p11audit");
        assert_ne!(d.0, own.0, "the provider's own C_GetInfo");
    }
}

/// `chown`, failing the test with the path if it fails.
pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// `chmod`, failing the test with the path if it fails.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Whether `name` is a command the shell finds on PATH.
pub fn command_exists(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The first of `names` that is not a command, as the reason a test cannot run.
pub fn missing_command(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find(|n| !command_exists(n))
        .map(|n| format!("{n} is not installed"))
}

/// Whether the test `test` can run, given why it cannot (`None`: it can). Under CI (CI set)
/// every test must run, so a reason fails the test; elsewhere it prints `TEST SKIPPED: why` and
/// the caller returns without checking anything.
pub fn runnable_unless(test: &str, why_not: Option<String>) -> bool {
    match why_not {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => panic!("{test} cannot run in CI: {why}"),
        Some(why) => {
            eprintln!("{test} SKIPPED: {why}");
            false
        }
    }
}
