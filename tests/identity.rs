//! Who the records name, as the kernel gives it, with a real client (pkcs11-tool) through
//! p11audit on real SoftHSM:
//! - a process started with a connected Unix socket on stdin (as `p11-kit remote` is) names
//!   the process at the other end as `peer`, whatever that process says about itself;
//! - `P11AUDIT_PEER=auto` takes no peer from a pipe or a file, `off` takes none at all, and
//!   `stdin` refuses to initialize without one;
//! - a process whose login set an audit login id carries it as `auid` and `ses` (root only:
//!   setting `/proc/self/loginuid` needs CAP_AUDIT_CONTROL; elsewhere the case prints why and
//!   passes, except under CI, where it fails).
//!
//! The separated deployment itself, with real users and p11-kit's server, is tests/separated.rs.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// pkcs11-tool through p11audit, printing the module's info (C_Initialize, C_GetInfo,
/// C_Finalize), with `stdin` as its standard input and `peer` as P11AUDIT_PEER.
fn pkcs11_tool_info(fx: &Fixture, stdin: Stdio, peer: Option<&str>, shell: Option<&str>) -> Output {
    let shim = shim_library();
    let mut cmd = match shell {
        // A shell that sets something of the process's own, then becomes pkcs11-tool.
        Some(prefix) => {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                &format!("{prefix} && exec pkcs11-tool --module \"$0\" -I"),
            ])
            .arg(&shim);
            c
        }
        None => {
            let mut c = Command::new("pkcs11-tool");
            c.arg("--module").arg(&shim).arg("-I");
            c
        }
    };
    set_env(&mut cmd, &fx.env());
    if let Some(p) = peer {
        cmd.env("P11AUDIT_PEER", p);
    }
    cmd.stdin(stdin).output().expect("run pkcs11-tool")
}

fn peers(fx: &Fixture) -> Vec<Value> {
    fx.records()
        .into_iter()
        .map(|r| r["peer"].clone())
        .collect()
}

#[test]
fn a_connected_socket_on_stdin_names_its_peer_in_every_record() {
    let fx = Fixture::new();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let out = pkcs11_tool_info(
        &fx,
        Stdio::from(std::os::fd::OwnedFd::from(theirs)),
        None,
        None,
    );
    drop(ours);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fx.assert_verifies("the log of a served client");

    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let records = fx.records();
    assert!(records.len() >= 4, "{records:?}");
    for r in &records {
        // The peer is this test process (the other end of the pair); the record's own
        // identity stays the serving process's.
        assert_eq!(r["peer"]["pid"], std::process::id(), "{r}");
        assert_eq!(r["peer"]["uid"], uid, "{r}");
        assert_eq!(r["peer"]["gid"], gid, "{r}");
        assert_eq!(r["peer"]["exe"], exe.to_str().unwrap(), "{r}");
        assert_eq!(r["exe"], "/usr/bin/pkcs11-tool", "{r}");
        assert_ne!(r["pid"], std::process::id(), "{r}");
    }
}

#[test]
fn auto_takes_no_peer_from_a_pipe_or_a_file_and_off_takes_none() {
    for (what, stdin, peer) in [
        ("a pipe", Stdio::piped(), None),
        (
            "/dev/null",
            Stdio::from(std::fs::File::open("/dev/null").unwrap()),
            None,
        ),
        (
            "a socket with P11AUDIT_PEER=off",
            {
                let (_ours, theirs) = UnixStream::pair().unwrap();
                Stdio::from(std::os::fd::OwnedFd::from(theirs))
            },
            Some("off"),
        ),
    ] {
        let fx = Fixture::new();
        let out = pkcs11_tool_info(&fx, stdin, peer, None);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let peers = peers(&fx);
        assert!(!peers.is_empty(), "{what}: no records");
        assert!(peers.iter().all(Value::is_null), "{what}: {peers:?}");
    }
}

#[test]
fn stdin_refuses_to_initialize_without_a_client() {
    let fx = Fixture::new();
    let out = pkcs11_tool_info(&fx, Stdio::piped(), Some("stdin"), None);
    assert!(
        !out.status.success(),
        "pkcs11-tool succeeded without a client"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("p11audit:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("P11AUDIT_PEER=stdin, but stdin is not a socket"),
        "{stderr}"
    );
    // Nothing was forwarded, so nothing was recorded.
    assert!(!fx.log.exists() || line_count(&fx.log) == 0);

    let fx = Fixture::new();
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let out = pkcs11_tool_info(
        &fx,
        Stdio::from(std::os::fd::OwnedFd::from(theirs)),
        Some("stdin"),
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(peers(&fx).iter().all(|p| p["pid"] == std::process::id()));
}

/// Why the audit login id cannot be set here, if it cannot.
fn cannot_set_loginuid() -> Option<String> {
    let probe = Command::new("sh")
        .args(["-c", "echo 4242 > /proc/self/loginuid"])
        .output()
        .expect("sh");
    (!probe.status.success()).then(|| {
        format!(
            "cannot set /proc/self/loginuid (needs root with CAP_AUDIT_CONTROL and a kernel with \
             audit support): {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        )
    })
}

#[test]
fn a_login_id_is_carried_as_auid_and_ses() {
    if !runnable_unless(
        "a_login_id_is_carried_as_auid_and_ses",
        cannot_set_loginuid(),
    ) {
        return;
    }
    let fx = Fixture::new();
    let session_file = fx.dir.path().join("session");
    // Setting the login id starts a new audit session; the shell saves its id for the check.
    let prefix = format!(
        "echo 4242 > /proc/self/loginuid && cat /proc/self/sessionid > {}",
        session_file.display()
    );
    let out = pkcs11_tool_info(&fx, Stdio::piped(), None, Some(&prefix));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let session: u64 = std::fs::read_to_string(&session_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(session, u64::from(u32::MAX));
    let records = fx.records();
    assert!(!records.is_empty());
    for r in &records {
        assert_eq!(r["auid"], 4242, "{r}");
        assert_eq!(r["ses"], session, "{r}");
        assert_eq!(r["uid"], 0, "{r}");
    }
    // And a process without a login id carries neither (this machine's test runner may have
    // one: then its own id is what must appear).
    let fx = Fixture::new();
    let out = pkcs11_tool_info(&fx, Stdio::piped(), None, None);
    assert!(out.status.success());
    let own = std::fs::read_to_string("/proc/self/loginuid").unwrap();
    let own: u64 = own.trim().parse().unwrap();
    for r in fx.records() {
        if own == u64::from(u32::MAX) {
            assert!(r.get("auid").is_none() && r.get("ses").is_none(), "{r}");
        } else {
            assert_eq!(r["auid"], own, "{r}");
        }
    }
}

/// The capability bits of `/proc/<this process>/status`'s line `name` (e.g. `CapEff`).
const CAPS_OF_SELF: &str = r#"
import sys, PyKCS11
lib = PyKCS11.PyKCS11Lib()
lib.load(sys.argv[1])
lib.getSlotList()
for line in open("/proc/self/status"):
    if line.startswith(("CapEff", "CapPrm", "CapInh", "CapAmb")):
        print(line.strip())
"#;

/// CAP_SYS_PTRACE (linux/capability.h).
const CAP_SYS_PTRACE: u32 = 19;

/// The capabilities of a PyKCS11 client through p11audit, after its C_Initialize, with
/// `stdin` as its standard input: (CapEff, CapPrm, CapAmb) as bit sets.
fn caps_after_initialize(fx: &Fixture, stdin: Stdio) -> (u64, u64, u64) {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", CAPS_OF_SELF]).arg(shim_library());
    set_env(&mut cmd, &fx.env());
    let out = cmd.stdin(stdin).output().expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bits = |name: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    (bits("CapEff"), bits("CapPrm"), bits("CapAmb"))
}

/// A serving process needs CAP_SYS_PTRACE only to read its client's exe, and gives it up
/// once it has; a process without a client keeps every capability it has (p11audit does not
/// change its host's privileges).
#[test]
fn a_serving_process_gives_up_ptrace_once_it_has_read_its_client() {
    // SAFETY: geteuid cannot fail.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root: no CAP_SYS_PTRACE to give up".to_string())
    } else if !Path::new("/usr/lib/python3/dist-packages/PyKCS11").is_dir() {
        Some("python3-pykcs11 is not installed".to_string())
    } else {
        None
    };
    if !runnable_unless("a_serving_process_gives_up_ptrace", why) {
        return;
    }
    let bit = 1u64 << CAP_SYS_PTRACE;
    let fx = Fixture::new();
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let (eff, prm, amb) =
        caps_after_initialize(&fx, Stdio::from(std::os::fd::OwnedFd::from(theirs)));
    assert_eq!(
        (eff & bit, prm & bit, amb & bit),
        (0, 0, 0),
        "{eff:x} {prm:x} {amb:x}"
    );
    assert!(peers(&fx).iter().all(|p| p["pid"] == std::process::id()));

    let fx = Fixture::new();
    let (eff, prm, _) = caps_after_initialize(&fx, Stdio::piped());
    assert_eq!((eff & bit, prm & bit), (bit, bit), "{eff:x} {prm:x}");
}
