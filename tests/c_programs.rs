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

/// Runs one client through the shim and checks the result and the audit log. `build` gets the
/// work dir and the shim library and returns the program and its arguments.
fn check_client(name: &str, build: impl FnOnce(&Path, &Path) -> (PathBuf, Vec<String>)) {
    let lib = shim_library();
    let fx = Fixture::new();
    let work = fx.dir.path();

    let (exe, args) = build(work, &lib);
    let mut cmd = Command::new(&exe);
    cmd.args(args);
    set_env(&mut cmd, &fx.env());
    let run = run_child_ok(cmd, work, name);
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

    assert_verifies(&fx.key, &fx.log, &format!("the log of {name}"));

    let log_bytes = fs::read(&fx.log).expect("read audit log");
    let log_text = String::from_utf8_lossy(&log_bytes);
    for f in [r#""fn":"C_Login""#, r#""fn":"C_GenerateRandom""#] {
        assert!(
            log_text.contains(f),
            "{name}: log has no {f} record\n{log_text}"
        );
    }

    let state = fx.state();
    assert!(state.is_file(), "{} missing", state.display());
    let state_bytes = fs::read(&state).expect("read state file");
    for (file, bytes) in [(&fx.log, &log_bytes), (&state, &state_bytes)] {
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
        let exe = compile_c(work, "dlopen_client", &["-ldl"]);
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
        let exe = compile_c(
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
    let exe = compile_c(work, "dlopen_client", &["-ldl"]);
    let conf = new_token(&work.join("token"));
    let mut cmd = Command::new(&exe);
    cmd.args([SOFTHSM, USER_PIN]).env("SOFTHSM2_CONF", &conf);
    let run = run_child_ok(cmd, work, "dlopen_client-direct");
    assert!(
        run.stdout.contains("manufacturerID: SoftHSM"),
        "{}",
        run.stdout
    );
}
