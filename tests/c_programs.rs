//! C programs against the built `libp11audit.so` and real SoftHSM.
//!
//! `tests/c/dlopen_client.c` loads the shim the way applications do (dlopen + dlsym);
//! `tests/c/linked_client.c` is linked directly against it and calls the exported
//! `C_GetFunctionList`, which puts the shim's symbols in the global scope where SoftHSM's own
//! relocations could bind to them (OpenSC issue 2875: calls recurse until the stack runs out).
//! Each program runs under a timeout: a hang is the bug being tested, so it fails the test.
//!
//! Needs `cc`, `softhsm2-util` and `/usr/lib/softhsm/libsofthsm2.so` (scripts/install-deps.sh).

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

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
