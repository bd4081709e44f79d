//! C programs against the built `libp11audit.so` and real SoftHSM.
//!
//! `tests/c/dlopen_client.c` loads the shim the way applications do (dlopen + dlsym);
//! `tests/c/linked_client.c` is linked directly against it and calls the exported
//! `C_GetFunctionList`, which puts the shim's symbols in the global scope where SoftHSM's own
//! relocations could bind to them (OpenSC issue 2875: calls recurse until the stack runs out).
//! Each program runs under a timeout: a hang is the bug being tested, so it fails the test.
//!
//! Needs `cc`, `softhsm2-util` and `/usr/lib/softhsm/libsofthsm2.so` (scripts/install-deps.sh).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// A user PIN that cannot turn up in a log by chance (not hex, not digits), so finding it
/// there means it was written.
const USER_PIN: &str = "Pin-canary-Qx7";
const SO_PIN: &str = "So-canary-Zw9k";
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cdylib built together with the rlib this test links against.
///
/// This test binary is target/<profile>/deps/c_programs-<hash>. `cargo test` compiles the
/// library once with `--crate-type cdylib --crate-type rlib`, so target/<profile>/deps/
/// libp11audit.so is always the one matching this binary; only `cargo build` also copies it up
/// to target/<profile>/libp11audit.so, which may be older. Prefer the first, fall back to the
/// second.
fn shim_library() -> PathBuf {
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

fn p11audit_bin() -> &'static str {
    env!("CARGO_BIN_EXE_p11audit")
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(out.status.success(), "{what} failed\n{}", output_text(&out));
    out
}

/// Compiles one program from tests/c into `out_dir`; `extra` goes after the source (libraries).
fn compile(out_dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let src = manifest_dir().join("tests/c").join(format!("{name}.c"));
    let exe = out_dir.join(name);
    let mut cmd = Command::new("cc");
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-O1", "-g"])
        .arg("-I")
        .arg(manifest_dir().join("tests/c"))
        .arg("-I")
        .arg(manifest_dir().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .args(extra);
    run_ok(&mut cmd, &format!("compiling {}", src.display()));
    exe
}

/// A fresh SoftHSM token made by softhsm/new-token.sh; returns the SOFTHSM2_CONF path.
fn new_token(dir: &Path) -> PathBuf {
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

fn keygen(path: &Path) {
    run_ok(
        Command::new(p11audit_bin()).arg("keygen").arg(path),
        "p11audit keygen",
    );
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with stdout/stderr to files, killing it and failing the test after RUN_TIMEOUT.
fn run_with_timeout(mut cmd: Command, work: &Path, what: &str) -> Finished {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs one client through the shim and checks the result and the audit log. `build` gets the
/// work dir and the shim library and returns the program and its arguments.
fn check_client(name: &str, build: impl FnOnce(&Path, &Path) -> (PathBuf, Vec<String>)) {
    let lib = shim_library();
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();

    let (exe, args) = build(work, &lib);
    let conf = new_token(&work.join("token"));
    let key = work.join("chain.key");
    keygen(&key);
    let log = work.join("audit.log");
    let state = PathBuf::from(format!("{}.state", log.display()));

    let mut cmd = Command::new(&exe);
    cmd.args(args)
        .env("SOFTHSM2_CONF", &conf)
        .env("P11AUDIT_MODULE", SOFTHSM)
        .env("P11AUDIT_LOG", &log)
        .env("P11AUDIT_KEY_FILE", &key)
        .env_remove("P11AUDIT_ON_FAILURE")
        .env_remove("P11AUDIT_SYNC");
    let run = run_with_timeout(cmd, work, name);
    assert!(
        run.status.success(),
        "{name} through {} failed: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        lib.display(),
        run.status,
        run.stdout,
        run.stderr
    );
    for step in [
        "C_Login rv=0x0",
        "C_GenerateRandom rv=0x0",
        "C_Finalize rv=0x0",
    ] {
        assert!(
            run.stdout.contains(step),
            "{name}: no {step:?}\n{}",
            run.stdout
        );
    }

    let verify = Command::new(p11audit_bin())
        .arg("verify")
        .arg("--key-file")
        .arg(&key)
        .arg(&log)
        .output()
        .expect("run p11audit verify");
    assert_eq!(
        verify.status.code(),
        Some(0),
        "p11audit verify rejected the log of {name}\n{}",
        output_text(&verify)
    );

    let log_bytes = fs::read(&log).expect("read audit log");
    let log_text = String::from_utf8_lossy(&log_bytes);
    for f in [r#""fn":"C_Login""#, r#""fn":"C_GenerateRandom""#] {
        assert!(
            log_text.contains(f),
            "{name}: log has no {f} record\n{log_text}"
        );
    }

    assert!(state.is_file(), "{} missing", state.display());
    let state_bytes = fs::read(&state).expect("read state file");
    for (file, bytes) in [(&log, &log_bytes), (&state, &state_bytes)] {
        let text = String::from_utf8_lossy(bytes);
        for secret in [USER_PIN, SO_PIN] {
            assert!(
                !text.contains(secret) && !text.contains(&hex(secret.as_bytes())),
                "{name}: a PIN appears in {}",
                file.display()
            );
        }
    }
}

#[test]
fn dlopen_client_through_shim() {
    check_client("dlopen_client", |work, lib| {
        let exe = compile(work, "dlopen_client", &["-ldl"]);
        let module = lib.to_str().expect("utf-8 path").to_string();
        (exe, vec![module, USER_PIN.to_string()])
    });
}

#[test]
fn linked_client_through_shim() {
    check_client("linked_client", |work, lib| {
        let dir = lib
            .parent()
            .expect("library dir")
            .to_str()
            .expect("utf-8 path");
        let exe = compile(
            work,
            "linked_client",
            &[
                &format!("-L{dir}"),
                "-lp11audit",
                &format!("-Wl,-rpath,{dir}"),
            ],
        );
        (exe, vec![USER_PIN.to_string()])
    });
}

/// The harness itself (compiler, token script, program) against SoftHSM with no shim, so a
/// failure above can be told apart from a broken environment.
#[test]
fn dlopen_client_directly_on_softhsm() {
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let exe = compile(work, "dlopen_client", &["-ldl"]);
    let conf = new_token(&work.join("token"));
    let mut cmd = Command::new(&exe);
    cmd.args([SOFTHSM, USER_PIN]).env("SOFTHSM2_CONF", &conf);
    let run = run_with_timeout(cmd, work, "dlopen_client-direct");
    assert!(
        run.status.success(),
        "dlopen_client on {SOFTHSM} failed: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout.contains("manufacturerID: SoftHSM"),
        "{}",
        run.stdout
    );
}
