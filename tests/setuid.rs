//! A real setuid-root program that loads the shim, run by user `nobody` with a hostile
//! environment (docs/CONFIG.md, "setuid and setgid programs").
//!
//! tests/c/setuid_probe.c, installed root-owned with mode 4755, dlopens the shim and calls
//! C_GetFunctionList and C_Initialize. The environment `nobody` gives it names an "evil"
//! provider (tests/c/evil_module.c, whose constructor creates a marker file as soon as it is
//! loaded), a log, a key and a P11AUDIT_CONFIG file naming the same. In a setuid process the
//! shim must ignore all of them and read only /etc/p11audit.conf, which does not exist here:
//! C_Initialize fails with CKR_GENERAL_ERROR and a `p11audit:` line naming /etc/p11audit.conf,
//! the evil library is never loaded (no marker) and no log is created.
//!
//! The same probe without the setuid bit, run by `nobody` with the same environment, is the
//! control: there the environment counts, the evil library is loaded and the marker appears, so
//! the test would notice a shim that ignored AT_SECURE.
//!
//! Needs root (to install a setuid-root program and to switch to `nobody` with setpriv), a
//! filesystem not mounted nosuid, and no /etc/p11audit.conf (which the test never creates or
//! changes). Otherwise it prints why and passes without checking anything.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const CKR_GENERAL_ERROR: &str = "0x5";

fn skip(why: &str) {
    eprintln!("setuid test SKIPPED: {why}");
}

/// Whether the filesystem holding `dir` honours setuid bits.
fn mounted_suid(dir: &Path) -> bool {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: a NUL-terminated path and a writable statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_flag & libc::ST_NOSUID == 0
}

/// Whether `nobody` can reach `dir`: every directory from / down has o+x.
fn reachable_by_others(dir: &Path) -> bool {
    dir.ancestors().all(|d| {
        fs::metadata(d)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// A fresh directory `nobody` can reach, on a filesystem that honours setuid: under /tmp, else
/// under the target directory. None if neither works.
fn work_dir() -> Option<tempfile::TempDir> {
    let candidates = [
        std::env::temp_dir(),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ];
    for base in candidates {
        if !mounted_suid(&base) || !reachable_by_others(&base) {
            eprintln!(
                "{} is mounted nosuid or not reachable by others",
                base.display()
            );
            continue;
        }
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        return Some(dir);
    }
    None
}

/// A directory anyone may write to (the marker and the log would go there).
fn open_dir(path: &Path) -> PathBuf {
    fs::create_dir(path).expect("mkdir");
    fs::set_permissions(path, fs::Permissions::from_mode(0o777)).expect("chmod");
    path.to_path_buf()
}

/// Runs `probe shim` as nobody:nogroup with no supplementary groups and `env`.
fn as_nobody(probe: &Path, shim: &Path, env: &Env, work: &Path, what: &str) -> Finished {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(probe)
        .arg(shim)
        .current_dir(work);
    set_env(&mut cmd, env);
    run_with_timeout(cmd, work, what)
}

fn value<'a>(run: &'a Finished, key: &str) -> &'a str {
    run.value_after(key)
        .unwrap_or_else(|| panic!("the probe printed no {key}\n{}", run.dump()))
}

#[test]
fn setuid_program_ignores_the_environment() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not running as root: cannot install a setuid-root program");
    }
    if Path::new(p11audit::config::SECURE_CONFIG_FILE).exists() {
        return skip(
            "/etc/p11audit.conf exists on this machine; the test must run without it and never \
             changes it",
        );
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        return skip("setpriv (util-linux) is not installed");
    }
    let Some(dir) = work_dir() else {
        return skip("no directory reachable by nobody on a filesystem that honours setuid");
    };
    let work = dir.path();

    let probe = compile_c(work, "setuid_probe", &["-ldl"]);
    let evil = compile_c(work, "evil_module", &["-shared", "-fPIC"]);
    // The shim where nobody can read it (the build directory may not be reachable).
    let shim = work.join("libp11audit.so");
    fs::copy(shim_library(), &shim).expect("copy the shim");
    for f in [&probe, &evil, &shim] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let markers = open_dir(&work.join("markers"));
    let logs = open_dir(&work.join("logs"));
    let key = logs.join("chain.key");
    keygen(&key);
    let config = work.join("p11audit.conf");
    fs::write(
        &config,
        format!(
            "P11AUDIT_MODULE={}\nP11AUDIT_LOG={}\n",
            evil.display(),
            logs.join("from-config.jsonl").display()
        ),
    )
    .expect("write config");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).expect("chmod");
    let env_with = |marker: &Path, logs: &Path| -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            ("P11AUDIT_MODULE", evil.clone().into()),
            ("P11AUDIT_LOG", logs.join("audit.jsonl").into()),
            ("P11AUDIT_KEY_FILE", key.clone().into()),
            ("P11AUDIT_CONFIG", config.clone().into()),
            ("EVIL_MARKER", marker.into()),
        ]
    };

    // The control: not setuid, so the environment counts and the evil library is loaded (and
    // then refused: it has no C_GetFunctionList).
    let control_marker = markers.join("control");
    let control = as_nobody(
        &probe,
        &shim,
        &env_with(&control_marker, &open_dir(&work.join("control-logs"))),
        work,
        "control-not-setuid",
    );
    assert!(control.status.success(), "{}", control.dump());
    assert_eq!(value(&control, "AT_SECURE"), "0", "{}", control.dump());
    assert_eq!(value(&control, "euid"), "65534", "{}", control.dump());
    assert!(
        control_marker.exists(),
        "control: the evil module was not loaded from P11AUDIT_MODULE, so the setuid run below \
         would prove nothing\n{}",
        control.dump()
    );

    // The real thing: root-owned (we are root), setuid.
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o4755)).expect("chmod 4755");
    let marker = markers.join("setuid");
    let run = as_nobody(&probe, &shim, &env_with(&marker, &logs), work, "setuid");
    assert!(run.status.success(), "{}", run.dump());
    if value(&run, "AT_SECURE") != "1" {
        return skip(&format!(
            "the kernel did not run the probe with privileges (no_new_privs?): {}",
            run.stdout.lines().next().unwrap_or("")
        ));
    }
    assert_eq!(value(&run, "ruid"), "65534", "{}", run.dump());
    assert_eq!(value(&run, "euid"), "0", "{}", run.dump());
    assert_eq!(value(&run, "C_GetFunctionList rv"), "0x0", "{}", run.dump());
    assert_eq!(
        value(&run, "C_Initialize rv"),
        CKR_GENERAL_ERROR,
        "C_Initialize in a setuid program with no /etc/p11audit.conf\n{}",
        run.dump()
    );
    assert!(
        !marker.exists(),
        "the setuid program loaded the module named by P11AUDIT_MODULE\n{}",
        run.dump()
    );
    let left: Vec<_> = fs::read_dir(&logs)
        .expect("read logs dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n != "chain.key")
        .collect();
    assert!(
        left.is_empty(),
        "the setuid program created {left:?} in the log directory"
    );
    let lines = run.p11audit_lines();
    assert_eq!(
        lines.len(),
        1,
        "one `p11audit:` line on stderr\n{}",
        run.dump()
    );
    assert!(
        lines[0].contains("/etc/p11audit.conf") && lines[0].contains("setuid"),
        "the line should name /etc/p11audit.conf and say why: {:?}",
        lines[0]
    );
    eprintln!("setuid probe as nobody: {}", lines[0]);
}
