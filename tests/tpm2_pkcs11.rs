//! tpm2-pkcs11 (Debian 12: 1.9.0) on a software TPM, directly and through the shim, compared
//! call by call (tests/matrix): a provider whose keys live in a TPM behind a resource-manager
//! daemon, with its own mechanism limits.
//!
//! Each run gets a stack of its own, started and stopped here: swtpm on two loopback ports
//! (swtpm cannot bind port 0 and report it, so a free pair is picked and swtpm retried on
//! another pair if it loses the race for it), a private D-Bus session bus on a socket in the
//! run's temporary directory, tpm2-abrmd on that bus (tpm2_ptool needs the resource manager:
//! swtpm alone answers "out of memory for object contexts"), and a token made by tpm2_ptool in
//! a store directory of its own, with an AES key made by `tpm2_ptool addkey` (the module has
//! no C_GenerateKey). Every daemon is killed with its process group when the run
//! ends, passed or failed.
//!
//! OpenSC's `pkcs11-tool --test` runs the same way, directly and through the shim.
//!
//! Needs the packages of scripts/install-deps.sh; without them these tests fail when CI is set
//! and are skipped with a notice otherwise.

mod common;
mod matrix;

use common::*;
use matrix::daemon::{accepts, free_port_pair, run_tool, wait_until, Daemon};
use matrix::{Runs, RunsCell};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROVIDER: &str = "tpm2-pkcs11";
const TPM2_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so";
const PROGRAMS: [&str; 5] = [
    "swtpm",
    "dbus-daemon",
    "tpm2-abrmd",
    "tpm2_ptool",
    "tpm2_getrandom",
];
const TOKEN_LABEL: &str = "p11audit-tpm2";
/// tpm2-pkcs11 numbers its slots from 1, the first token of the store in the first.
const SLOT: u64 = 1;
const TCTI: &str = "tabrmd:bus_type=session";
/// How often swtpm is started on a new port pair when it cannot bind the one picked.
const SWTPM_TRIES: usize = 5;

#[test]
fn tpm2_driver() {
    matrix::driver();
}

/// Why tpm2-pkcs11 cannot run here, if it cannot.
fn unavailable_reason() -> Option<String> {
    if !Path::new(TPM2_MODULE).is_file() {
        return Some(format!(
            "{TPM2_MODULE} is missing: run scripts/install-deps.sh"
        ));
    }
    matrix::missing_program(&PROGRAMS)
        .map(|p| format!("{p} is not on PATH: run scripts/install-deps.sh"))
}

/// A running software TPM stack; dropping it stops the daemons, the resource manager first.
struct Tpm2Stack {
    _abrmd: Daemon,
    _bus: Daemon,
    _swtpm: Daemon,
    bus_address: String,
    store: PathBuf,
}

impl Tpm2Stack {
    /// What tpm2-pkcs11 needs in the application's environment to use this stack.
    fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("DBUS_SESSION_BUS_ADDRESS", self.bus_address.clone().into()),
            ("TPM2_PKCS11_TCTI", TCTI.into()),
            ("TPM2_PKCS11_STORE", self.store.clone().into()),
        ]
    }
}

/// swtpm on a free loopback port pair, retried on a new pair when it cannot bind the first;
/// returns it and its server port.
fn start_swtpm(dir: &Path) -> (Daemon, u16) {
    let log = dir.join("swtpm.log");
    for attempt in 1..=SWTPM_TRIES {
        let port = free_port_pair();
        let state = dir.join(format!("tpm-state-{attempt}"));
        std::fs::create_dir_all(&state).expect("swtpm state dir");
        let mut cmd = Command::new("swtpm");
        cmd.args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .args(["--flags", "not-need-init,startup-clear"]);
        let mut swtpm = Daemon::start("swtpm", cmd, &log);
        let mut lost = false;
        wait_until("swtpm", || {
            lost = swtpm.exited().is_some();
            lost || (accepts(port) && accepts(port + 1))
        });
        // Connected, and to this swtpm: one that lost either port to another process exits
        // within milliseconds ("Could not open TCP socket: Address already in use").
        std::thread::sleep(std::time::Duration::from_millis(50));
        if !lost && swtpm.exited().is_none() {
            return (swtpm, port);
        }
    }
    panic!(
        "swtpm did not start in {SWTPM_TRIES} tries:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// swtpm, a private session bus, tpm2-abrmd on it, and a fresh tpm2-pkcs11 store under `dir`
/// with one token.
fn start_stack(dir: &Path) -> Tpm2Stack {
    std::fs::create_dir_all(dir).expect("stack dir");
    let (swtpm, port) = start_swtpm(dir);

    let bus_log = dir.join("dbus-daemon.log");
    let bus_socket = dir.join("bus");
    let bus_address = format!("unix:path={}", bus_socket.display());
    let mut cmd = Command::new("dbus-daemon");
    cmd.args(["--session", "--nofork", "--nopidfile"])
        .arg(format!("--address={bus_address}"));
    let mut bus = Daemon::start("dbus-daemon", cmd, &bus_log);
    wait_until("dbus-daemon", || {
        bus.assert_running(&bus_log);
        bus_socket.exists()
    });

    let abrmd_log = dir.join("tpm2-abrmd.log");
    let mut cmd = Command::new("tpm2-abrmd");
    cmd.args(["--allow-root", "--session"])
        .arg(format!("--tcti=swtpm:host=127.0.0.1,port={port}"))
        .env("DBUS_SESSION_BUS_ADDRESS", &bus_address);
    let mut abrmd = Daemon::start("tpm2-abrmd", cmd, &abrmd_log);
    wait_until("tpm2-abrmd", || {
        abrmd.assert_running(&abrmd_log);
        Command::new("tpm2_getrandom")
            .args(["-T", TCTI, "8"])
            .env("DBUS_SESSION_BUS_ADDRESS", &bus_address)
            .output()
            .is_ok_and(|o| o.status.success())
    });

    let store = dir.join("store");
    std::fs::create_dir_all(&store).expect("store dir");
    let ptool = |args: &[&str], what: &str| {
        let mut cmd = Command::new("tpm2_ptool");
        cmd.args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &bus_address)
            .env("TPM2TOOLS_TCTI", TCTI)
            .env("TPM2_PKCS11_TCTI", TCTI)
            .env("TPM2_PKCS11_STORE", &store);
        run_tool(&mut cmd, what)
    };
    ptool(&["init"], "tpm2_ptool init");
    let (sopin, userpin) = (
        format!("--sopin={}", matrix::SO_PIN),
        format!("--userpin={}", matrix::USER_PIN),
    );
    let label = format!("--label={TOKEN_LABEL}");
    ptool(
        &["addtoken", "--pid=1", &sopin, &userpin, &label],
        "tpm2_ptool addtoken",
    );
    // tpm2-pkcs11 cannot generate an AES key (no C_GenerateKey); its tool can.
    ptool(
        &[
            "addkey",
            &label,
            "--key-label=tpm2-aes",
            "--id=03",
            &userpin,
            "--algorithm=aes256",
        ],
        "tpm2_ptool addkey",
    );
    Tpm2Stack {
        _abrmd: abrmd,
        _bus: bus,
        _swtpm: swtpm,
        bus_address,
        store,
    }
}

/// One run of the driver against `module` on a stack of its own.
fn run(fx: &Fixture, module: &Path, through_shim: bool, what: &str) -> Value {
    let stack = start_stack(&fx.dir.path().join(what));
    let mut env = stack.env();
    env.push((
        matrix::SETUP_ENV,
        json!({"slot": SLOT, "prefix": "tpm2", "init_so_pin": null, "premade_aes": true})
            .to_string()
            .into(),
    ));
    if through_shim {
        env.extend(matrix::shim_env(fx, TPM2_MODULE));
    }
    let cmd = child_command("tpm2_driver", matrix::MODULE_ENV, module, &env);
    run_child_ok(cmd, fx.dir.path(), what).marked_json(matrix::MARKER, what)
}

fn runs() -> Option<&'static Runs> {
    static RUNS: RunsCell = RunsCell::new();
    matrix::runs_once(&RUNS, PROVIDER, TPM2_MODULE, unavailable_reason, run)
}

#[test]
fn tpm2_workload_through_the_shim_matches_direct() {
    let Some(runs) = runs() else { return };
    matrix::assert_same_both_ways(runs, PROVIDER);
    // What tpm2-pkcs11 1.9.0 on swtpm 0.7 does (the direct run defines it).
    let d = &runs.direct;
    let token = &matrix::calls_of(d)
        .iter()
        .find(|c| c["step"] == "token info")
        .expect("token info")["out"];
    assert_eq!(token["label"], TOKEN_LABEL, "{token}");
    assert_eq!(matrix::rv_of(d, "wrong PIN"), "CKR_PIN_INCORRECT");
    assert_eq!(matrix::rv_of(d, "ECDSA: verify"), "CKR_OK");
    assert_eq!(
        matrix::rv_of(d, "ECDSA: verify a forged signature"),
        "CKR_SIGNATURE_INVALID"
    );
    assert_eq!(matrix::rv_of(d, "RSA: verify"), "CKR_OK");
    // tpm2-pkcs11 lists CKM_AES_KEY_GEN but has no C_GenerateKey: the AES key is
    // tpm2_ptool's, and AES-CBC works with it.
    assert_eq!(
        matrix::rv_of(d, "AES: generate key"),
        "CKR_FUNCTION_NOT_SUPPORTED"
    );
    assert_eq!(matrix::rv_of(d, "AES: decrypt"), "CKR_OK");
}

#[test]
fn tpm2_signatures_verify_with_openssl() {
    let Some(runs) = runs() else { return };
    matrix::assert_signatures_verify(runs, "ecdsa-p256-sha256");
    matrix::assert_signatures_verify(runs, "rsa-pkcs1-sha256");
}

/// The chain verifies (`p11audit verify`), every call has its outcome record, and the records
/// name tpm2-pkcs11's keys: class, key type and label, as generated and as used.
#[test]
fn tpm2_log_verifies_and_names_the_keys() {
    let Some(runs) = runs() else { return };
    matrix::assert_log_describes_run(runs, PROVIDER);
}

#[test]
fn tpm2_log_holds_no_secrets() {
    let Some(runs) = runs() else { return };
    matrix::assert_no_secrets(runs);
}

/// OpenSC's `pkcs11-tool --test` on a tpm2-pkcs11 token, directly and through the shim (each on
/// a stack of its own): the same report both ways, and the log verifies.
#[test]
fn pkcs11_tool_test_on_tpm2_matches_through_the_shim() {
    if let Some(reason) = unavailable_reason() {
        matrix::unavailable(PROVIDER, &reason);
        return;
    }
    let fx = Fixture::new();
    matrix::remove_at_exit(fx.dir.path());
    let shim = shim_library();
    let mut reports = Vec::new();
    for (what, module) in [("direct", Path::new(TPM2_MODULE)), ("shim", shim.as_path())] {
        let stack = start_stack(&fx.dir.path().join(format!("tool-{what}")));
        let mut env = stack.env();
        env.extend(matrix::shim_env(&fx, TPM2_MODULE));
        let tool = |args: &[&str], step: &str| {
            let mut cmd = Command::new("pkcs11-tool");
            cmd.arg("--module")
                .arg(module)
                .args(["--slot", &SLOT.to_string(), "--login", "--pin"])
                .arg(matrix::USER_PIN)
                .args(args);
            set_env(&mut cmd, &env);
            run_with_timeout(cmd, fx.dir.path(), &format!("pkcs11-tool {step} {what}"))
        };
        let keygen = [
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--id",
            "07",
            "--label",
            "tool-rsa",
        ];
        let made = tool(&keygen, "--keypairgen");
        assert!(made.status.success(), "{what}: {}", made.dump());
        let run = tool(&["--test"], "--test");
        reports.push((run.status.code(), run.stdout, run.stderr));
    }
    assert_eq!(
        reports[0], reports[1],
        "pkcs11-tool --test differs through the shim"
    );
    // What it reports of tpm2-pkcs11 1.9.0 on swtpm: RSA signatures, verification and PKCS#1
    // decryption work; RSA-OAEP decryption with a label (pkcs11-tool's) is refused by the TPM
    // (TPM_RC_VALUE for the label) and the module returns CKR_GENERAL_ERROR, which ends the run.
    let (code, stdout, stderr) = &reports[0];
    for line in [
        "all 4 signature functions seem to work",
        "SHA256-RSA-PKCS: OK",
    ] {
        assert!(
            stdout.contains(line),
            "pkcs11-tool --test: no {line:?}:\n{stdout}"
        );
    }
    assert_eq!(*code, Some(1), "pkcs11-tool --test:\n{stdout}{stderr}");
    assert!(
        stderr.contains("C_Decrypt failed: rv = CKR_GENERAL_ERROR"),
        "pkcs11-tool --test did not stop at RSA-OAEP decryption:\n{stderr}"
    );
    let records = check_chain(&fx);
    let signed = outcomes_with_told_inits(&records)
        .iter()
        .any(|r| r["fn"] == "C_SignInit" && r["key"]["label"] == "tool-rsa");
    assert!(
        signed,
        "no C_SignInit record names the key pkcs11-tool made"
    );
}
