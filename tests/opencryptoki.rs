//! opencryptoki's soft token (Debian 12: opencryptoki 3.8.1, `libpkcs11_sw.so`), directly and
//! through the shim, compared call by call (tests/matrix): a provider whose slots belong to a
//! daemon (pkcsslotd) and whose token the application initializes itself (C_InitToken with the
//! default SO PIN 87654321, then C_SetPIN and C_InitPIN).
//!
//! opencryptoki 3.8.1 compiles its paths in: /etc/opencryptoki/opencryptoki.conf, the token
//! directory /var/lib/opencryptoki/swtok, the lock directory /var/lock/opencryptoki, the
//! daemon's socket /var/run/pkcsslotd.socket, and shared memory named after them. No
//! environment variable moves them. So each run is a process of this binary started by
//! `unshare --mount --ipc --pid --fork --kill-child`: in its own mount namespace it puts private
//! directories over those paths and tmpfs over /run, /dev/shm and /var/log, starts its own
//! pkcsslotd, and runs the driver (a further child). Whatever happens, the namespace's first
//! process exiting ends every process in it, pkcsslotd included, and the host's opencryptoki
//! files are never touched. That takes root (CAP_SYS_ADMIN), and so does pkcsslotd itself:
//! without root these tests fail when CI is set and are skipped with a notice otherwise.

mod common;
mod matrix;

use common::*;
use matrix::daemon::{die_with_parent, is_root, run_tool, wait_until, Daemon};
use matrix::{Runs, RunsCell};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const PROVIDER: &str = "opencryptoki";
const OCK_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so";
const PKCSSLOTD: &str = "/usr/sbin/pkcsslotd";
/// The soft token's slot in the private opencryptoki.conf.
const SLOT: u64 = 3;
/// What `C_InitToken` of a new soft token takes as the SO PIN.
const DEFAULT_SO_PIN: &str = "87654321";
/// Set in the namespace's first process: the directory to build the private opencryptoki in.
const NAMESPACE_ENV: &str = "P11AUDIT_TEST_OCK_NAMESPACE";
/// Set in the namespace's first process: the module the driver loads.
const DRIVER_MODULE_ENV: &str = "P11AUDIT_TEST_OCK_DRIVER_MODULE";

#[test]
fn opencryptoki_driver() {
    matrix::driver();
}

/// Why opencryptoki cannot run here, if it cannot.
fn unavailable_reason() -> Option<String> {
    for f in [OCK_MODULE, PKCSSLOTD] {
        if !Path::new(f).exists() {
            return Some(format!("{f} is missing: run scripts/install-deps.sh"));
        }
    }
    if let Some(p) = matrix::missing_program(&["unshare", "mount"]) {
        return Some(format!("{p} is not on PATH"));
    }
    if !is_root() {
        return Some(
            "opencryptoki 3.8.1's paths are compiled in, so a private instance needs a mount \
             namespace, and that needs root"
                .into(),
        );
    }
    None
}

/// The namespace's first process: a private opencryptoki under NAMESPACE_ENV's directory,
/// pkcsslotd, and one driver run whose result it prints again for the parent.
#[test]
fn opencryptoki_namespace() {
    let Some(dir) = std::env::var_os(NAMESPACE_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let module = std::env::var_os(DRIVER_MODULE_ENV).expect(DRIVER_MODULE_ENV);
    let mount = |args: &[&str], target: &str| {
        run_tool(
            Command::new("mount").args(args).arg(target),
            &format!("mount {target}"),
        );
    };
    // /var/run and /var/lock are symbolic links into /run on Debian 12. The library makes
    // /var/log/opencryptoki at C_Initialize: that too stays in the namespace.
    for target in ["/run", "/dev/shm", "/var/log"] {
        mount(&["-t", "tmpfs", "tmpfs"], target);
    }
    let (etc, lib) = (dir.join("etc"), dir.join("lib"));
    let lock = Path::new("/run/lock/opencryptoki");
    for d in [&etc, &lib.join("swtok/TOK_OBJ"), &lock.join("swtok")] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    std::fs::write(
        etc.join("opencryptoki.conf"),
        format!("version opencryptoki-3.1\nslot {SLOT}\n{{\nstdll = libpkcs11_sw.so\n}}\n"),
    )
    .expect("write opencryptoki.conf");
    // The package's layout (its tmpfiles.d): root:pkcs11, 0770.
    for d in [
        lib.as_path(),
        &lib.join("swtok"),
        &lib.join("swtok/TOK_OBJ"),
        lock,
        &lock.join("swtok"),
    ] {
        run_tool(
            Command::new("chown").arg("root:pkcs11").arg(d),
            "chown root:pkcs11",
        );
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o770)).expect("chmod");
    }
    let bind = |from: &Path, to: &str| mount(&["--bind", &from.to_string_lossy()], to);
    bind(&etc, "/etc/opencryptoki");
    bind(&lib, "/var/lib/opencryptoki");

    let log = dir.join("pkcsslotd.log");
    let mut cmd = Command::new(PKCSSLOTD);
    cmd.arg("-f");
    let mut slotd = Daemon::start("pkcsslotd", cmd, &log);
    wait_until("pkcsslotd", || {
        slotd.assert_running(&log);
        Path::new("/run/pkcsslotd.socket").exists()
    });
    // The driver's set-up and, for the run through the shim, the shim's configuration.
    let env: Vec<(&'static str, OsString)> = [
        matrix::SETUP_ENV,
        "P11AUDIT_MODULE",
        "P11AUDIT_LOG",
        "P11AUDIT_KEY_FILE",
    ]
    .into_iter()
    .filter_map(|k| std::env::var_os(k).map(|v| (k, v)))
    .collect();
    let cmd = child_command("opencryptoki_driver", matrix::MODULE_ENV, &module, &env);
    let result = run_child_ok(cmd, dir, "driver").marked_json(matrix::MARKER, "the driver");
    slotd.assert_running(&log);
    drop(slotd);
    print_marked(matrix::MARKER, &result);
}

/// One run of the driver against `module` in a namespace of its own.
fn run(fx: &Fixture, module: &Path, through_shim: bool, what: &str) -> Value {
    let dir = fx.dir.path().join(what);
    std::fs::create_dir_all(&dir).expect("run dir");
    let mut env: Vec<(&'static str, OsString)> = vec![
        (DRIVER_MODULE_ENV, module.into()),
        (
            matrix::SETUP_ENV,
            json!({"slot": SLOT, "prefix": "ock", "init_so_pin": DEFAULT_SO_PIN, "premade_aes": false})
                .to_string()
                .into(),
        ),
    ];
    if through_shim {
        env.extend(matrix::shim_env(fx, OCK_MODULE));
    }
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--ipc",
        "--pid",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
    ])
    .arg(std::env::current_exe().expect("current_exe"))
    .args([
        "opencryptoki_namespace",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ]);
    set_env(&mut cmd, &env);
    cmd.env(NAMESPACE_ENV, &dir);
    // unshare, and through --kill-child the whole namespace, dies with this thread.
    die_with_parent(&mut cmd);
    run_child_ok(cmd, &dir, what).marked_json(matrix::MARKER, what)
}

fn runs() -> Option<&'static Runs> {
    static RUNS: RunsCell = RunsCell::new();
    matrix::runs_once(&RUNS, PROVIDER, OCK_MODULE, unavailable_reason, run)
}

#[test]
fn opencryptoki_workload_through_the_shim_matches_direct() {
    let Some(runs) = runs() else { return };
    matrix::assert_same_both_ways(runs, PROVIDER);
    // What opencryptoki 3.8.1's soft token does (the direct run defines it).
    let d = &runs.direct;
    assert_eq!(matrix::rv_of(d, "C_InitToken"), "CKR_OK");
    assert_eq!(matrix::rv_of(d, "wrong PIN"), "CKR_PIN_INCORRECT");
    assert_eq!(matrix::rv_of(d, "RSA: verify"), "CKR_OK");
    assert_eq!(
        matrix::rv_of(d, "RSA: verify a forged signature"),
        "CKR_SIGNATURE_INVALID"
    );
    assert_eq!(matrix::rv_of(d, "AES: decrypt"), "CKR_OK");
    // Debian's 3.8.1 soft token has no elliptic curves.
    assert_eq!(
        matrix::rv_of(d, "EC: generate key pair"),
        "CKR_MECHANISM_INVALID"
    );
}

#[test]
fn opencryptoki_signatures_verify_with_openssl() {
    let Some(runs) = runs() else { return };
    matrix::assert_signatures_verify(runs, "rsa-pkcs1-sha256");
}

/// The chain verifies (`p11audit verify`), every call has its outcome record, and the records
/// name opencryptoki's keys: class, key type and label, as generated and as used.
#[test]
fn opencryptoki_log_verifies_and_names_the_keys() {
    let Some(runs) = runs() else { return };
    matrix::assert_log_describes_run(runs, PROVIDER);
}

#[test]
fn opencryptoki_log_holds_no_secrets() {
    let Some(runs) = runs() else { return };
    matrix::assert_no_secrets(runs);
}
