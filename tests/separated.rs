//! The separated mode, for real: p11audit as its own user behind p11-kit's RPC, with real users.
//!
//! The test makes a service user, two application users in a clients group, one user outside
//! it and an auditor in an auditors group (unique names per run, removed at the end even when
//! the test fails). The service user owns the SoftHSM token store (0700), the log directory
//! (setgid, 2750, group auditors) and the chain key. The server is started both ways
//! docs/DEPLOYMENT.md describes:
//! 1. `p11-kit server` run as the service user by `setpriv` with CAP_SYS_PTRACE as an ambient
//!    capability, its socket in a directory only the clients group can enter;
//! 2. `systemd-socket-activate --accept --inetd` with the shipped unit's own `ExecStart` line,
//!    `Environment=` names, user and capabilities (read from deploy/p11audit@.service), and
//!    the shipped socket unit's `SocketMode`/`SocketGroup` applied to the socket.
//!
//! Each way, through p11-kit-client.so: an application user makes a P-256 key and signs with
//! pkcs11-tool (OpenSSL checks the signature), with a lying environment and argv[0], and the
//! `C_Sign` records name that user and /usr/bin/pkcs11-tool as `peer`; two users sign at once
//! and each serving process's records name one peer; the shipped p11-kit module file finds the
//! token through p11-kit-proxy.so; a user outside the clients group cannot
//! connect; a client killed with `kill -9` in the middle of an RSA-4096 key generation leaves
//! the serving process's `close`; with the log's file system full, an acting call fails at the
//! client with CKR_GENERAL_ERROR (fail closed across the RPC) and works again once there is
//! room. A server without CAP_SYS_PTRACE records the peer without `exe` and says why on stderr.
//! The application users can open neither the log, its state, the key nor the token store;
//! the auditor can read the log but not the state or the key. `p11audit verify` accepts the
//! chain at the end.
//!
//! Only ECDSA, and RSA and EC key generation, are used: p11-kit 0.24.1 (Debian 12) carries them
//! over its RPC, but not AES-CBC, AES-GCM, ECDH or EdDSA (docs/DEPLOYMENT.md).
//!
//! Needs root (users, setpriv, a tmpfs mount), p11-kit, p11-kit-client.so, systemd's
//! socket activator, pkcs11-tool, OpenSSL and Debian's python3 with PyKCS11; otherwise it prints
//! why and passes without checking anything, except under CI, where it fails.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const CLIENT_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
const P11_KIT_REMOTE: &str = "/usr/libexec/p11-kit/p11-kit-remote";
const P11_KIT_PROXY: &str = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so";
const PKCS11_TOOL: &str = "/usr/bin/pkcs11-tool";
/// Debian's python3, by its path: the test users cannot use one under root's home (pyenv).
const PYTHON: &str = "/usr/bin/python3";
/// The module the shipped unit names (p11-kit loads it from its module directory); the test
/// gives it the one just built.
const UNIT_LIBRARY: &str = "libp11audit.so";
/// The label `common::new_token` gives the token.
const TOKEN_LABEL: &str = "p11audit-c-test";
/// The longest wait for anything the servers do.
const PATIENCE: Duration = Duration::from_secs(60);

fn cannot_run() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: cannot create users, switch to them or mount a tmpfs".into());
    }
    for file in [
        CLIENT_MODULE,
        P11_KIT_PROXY,
        P11_KIT_REMOTE,
        PKCS11_TOOL,
        PYTHON,
        SOFTHSM,
    ] {
        if !Path::new(file).exists() {
            return Some(format!("{file} is not installed"));
        }
    }
    if let Some(why) = missing_command(&[
        "useradd",
        "userdel",
        "groupadd",
        "groupdel",
        "setpriv",
        "p11-kit",
        "systemd-socket-activate",
        "openssl",
    ]) {
        return Some(why);
    }
    let pykcs11 = Command::new(PYTHON)
        .args(["-c", "import PyKCS11"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !pykcs11 {
        return Some("PyKCS11 is not installed for /usr/bin/python3".into());
    }
    None
}

fn runnable(test: &str) -> bool {
    runnable_unless(test, cannot_run())
}

// ---- users and groups ------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

/// The users and groups this run made, removed on drop (also when the test fails).
#[derive(Default)]
struct Accounts {
    users: Vec<String>,
    groups: Vec<String>,
}

impl Accounts {
    fn group(&mut self, name: &str) -> u32 {
        run_ok(Command::new("groupadd").arg(name), "groupadd");
        self.groups.push(name.to_string());
        let out = run_ok(Command::new("getent").args(["group", name]), "getent group");
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        line.split(':')
            .nth(2)
            .and_then(|g| g.trim().parse().ok())
            .unwrap_or_else(|| panic!("no gid in {line:?}"))
    }

    /// A user with a group of its own name and the supplementary groups `groups`.
    fn user(&mut self, name: &str, groups: &[&str], system: bool) -> User {
        let mut cmd = Command::new("useradd");
        cmd.args([
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
        ]);
        if system {
            cmd.arg("--system");
        }
        if !groups.is_empty() {
            cmd.arg("--groups").arg(groups.join(","));
        }
        run_ok(cmd.arg(name), "useradd");
        self.users.push(name.to_string());
        let id = |flag: &str| -> u32 {
            let out = run_ok(Command::new("id").args([flag, name]), "id");
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        User {
            name: name.to_string(),
            uid: id("-u"),
            gid: id("-g"),
        }
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in self.users.iter().rev() {
            // userdel also removes the user's own group.
            let _ = Command::new("userdel").arg(user).status();
            let _ = Command::new("groupdel")
                .arg(user)
                .stderr(Stdio::null())
                .status();
        }
        for group in self.groups.iter().rev() {
            let _ = Command::new("groupdel").arg(group).status();
        }
    }
}

/// `program` run as `user`, with that user's groups and a clean environment.
fn as_user(user: &User, program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--init-groups", "--", program])
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    cmd
}

fn mkdir(path: &Path, uid: u32, gid: u32, mode: u32) -> PathBuf {
    fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    chown(path, uid, gid);
    chmod(path, mode);
    path.to_path_buf()
}

// ---- the log's file system -------------------------------------------------------------------

/// A small tmpfs for the log directory, so that the test can fill it; unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        fs::create_dir(dir).expect("mkdir tmpfs mount point");
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs"])
                .arg(dir),
            "mount a tmpfs for the log",
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }

    /// Fills the file system to the last byte (root's own files next to the log directory),
    /// including the space the writers reserved past the log's end (they reserve up to 1 MiB
    /// ahead, so that appends do not allocate): that is given back first, with a hole punched
    /// past the log's last page. Appends then fail with ENOSPC once the last page is full.
    fn fill(&self, log: &Path) {
        fill_file(&self.filler());
        let f = fs::OpenOptions::new()
            .write(true)
            .open(log)
            .expect("open the log");
        let end = f.metadata().unwrap().len().div_ceil(4096) * 4096;
        // SAFETY: fallocate on an open descriptor; no memory is passed.
        let rc = unsafe {
            use std::os::fd::AsRawFd;
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                end as libc::off_t,
                1 << 30,
            )
        };
        assert_eq!(rc, 0, "punch: {}", std::io::Error::last_os_error());
        fill_file(&self.dir.join("filler2"));
    }

    fn free(&self) {
        fs::remove_file(self.filler()).expect("remove filler");
        fs::remove_file(self.dir.join("filler2")).expect("remove filler2");
    }
}

fn fill_file(path: &Path) {
    let mut f = fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    // The last partial chunk: byte by byte up to the very end.
    while f.write_all(&[0]).is_ok() {}
    let e = f.write_all(&[0]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

// ---- the deployment --------------------------------------------------------------------------

/// Everything on disk, laid out as docs/DEPLOYMENT.md says, under one temporary directory.
struct Site {
    work: PathBuf,
    lib: PathBuf,
    softhsm_conf: PathBuf,
    token_dir: PathBuf,
    log_dir: PathBuf,
    log: PathBuf,
    key: PathBuf,
    conf: PathBuf,
    auditor_key: PathBuf,
    flags: PathBuf,
}

impl Site {
    fn state(&self) -> PathBuf {
        PathBuf::from(format!("{}.state", self.log.display()))
    }

    fn home(&self, user: &User) -> PathBuf {
        self.work.join(format!("home-{}", user.name))
    }

    fn records(&self) -> Vec<Value> {
        parse_records(&fs::read_to_string(&self.log).expect("read the log"))
    }

    /// The records from line `from` on.
    fn records_from(&self, from: usize) -> Vec<Value> {
        self.records().into_iter().skip(from).collect()
    }
}

/// The shipped example configuration, with this site's paths for the module, log and key; its
/// other settings (P11AUDIT_PEER, P11AUDIT_LOG_MODE) as shipped.
fn site_config(site: &Site) -> String {
    let shipped = fs::read_to_string(manifest_dir().join("deploy/separated.conf"))
        .expect("read deploy/separated.conf");
    let mut out = String::new();
    let mut seen = BTreeSet::new();
    for line in shipped.lines() {
        let Some((name, value)) = line.split_once('=').filter(|_| !line.starts_with('#')) else {
            continue;
        };
        let value = match name {
            "P11AUDIT_MODULE" => SOFTHSM.to_string(),
            "P11AUDIT_LOG" => site.log.display().to_string(),
            "P11AUDIT_KEY_FILE" => site.key.display().to_string(),
            _ => value.to_string(),
        };
        seen.insert(name.to_string());
        out.push_str(&format!("{name}={value}\n"));
    }
    for name in [
        "P11AUDIT_MODULE",
        "P11AUDIT_LOG",
        "P11AUDIT_KEY_FILE",
        "P11AUDIT_PEER",
        "P11AUDIT_LOG_MODE",
    ] {
        assert!(seen.contains(name), "deploy/separated.conf lacks {name}");
    }
    assert!(out.contains("P11AUDIT_PEER=stdin\n") && out.contains("P11AUDIT_LOG_MODE=0640\n"));
    out
}

// ---- the shipped units -----------------------------------------------------------------------

/// The settings of a unit file's sections that the test uses: name to values, in order.
fn unit_settings(name: &str) -> BTreeMap<String, Vec<String>> {
    let text = fs::read_to_string(manifest_dir().join("deploy").join(name))
        .unwrap_or_else(|e| panic!("read deploy/{name}: {e}"));
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("deploy/{name}: not a setting: {line}"));
        out.entry(k.to_string()).or_default().push(v.to_string());
    }
    out
}

fn one<'a>(settings: &'a BTreeMap<String, Vec<String>>, name: &str) -> &'a str {
    match settings.get(name).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("the unit should set {name} once, not {other:?}"),
    }
}

/// What the service unit runs and how: its command line, environment names and capabilities.
struct ServiceUnit {
    exec_start: Vec<String>,
    environment: Vec<String>,
    /// setpriv's form: `+sys_ptrace`.
    ambient: Vec<String>,
}

fn service_unit() -> ServiceUnit {
    let s = unit_settings("p11audit@.service");
    assert_eq!(one(&s, "User"), "p11audit");
    assert_eq!(one(&s, "StandardInput"), "socket");
    assert_eq!(one(&s, "StandardOutput"), "socket");
    assert_eq!(one(&s, "NoNewPrivileges"), "yes");
    let exec_start: Vec<String> = one(&s, "ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(
        exec_start.iter().any(|w| w == UNIT_LIBRARY),
        "ExecStart should load {UNIT_LIBRARY}: {exec_start:?}"
    );
    assert!(
        !exec_start.iter().any(|w| w.contains(['"', '\'', '$', '%'])),
        "ExecStart should be plain words: {exec_start:?}"
    );
    let environment = s["Environment"]
        .iter()
        .map(|e| {
            e.split_once('=')
                .expect("Environment=NAME=value")
                .0
                .to_string()
        })
        .collect();
    let ambient: Vec<String> = one(&s, "AmbientCapabilities")
        .split_whitespace()
        .map(|c| {
            let c = c.strip_prefix("CAP_").expect("a CAP_ name");
            format!("+{}", c.to_lowercase())
        })
        .collect();
    assert_eq!(
        one(&s, "CapabilityBoundingSet"),
        one(&s, "AmbientCapabilities"),
        "the service should hold no capability besides the ambient ones"
    );
    ServiceUnit {
        exec_start,
        environment,
        ambient,
    }
}

/// The socket unit's mode and group for the socket.
fn socket_unit() -> (u32, String) {
    let s = unit_settings("p11audit.socket");
    assert_eq!(one(&s, "Accept"), "yes");
    assert_eq!(one(&s, "ListenStream"), "/run/p11audit/pkcs11.sock");
    let mode = u32::from_str_radix(one(&s, "SocketMode"), 8).expect("SocketMode in octal");
    (mode, one(&s, "SocketGroup").to_string())
}

// ---- servers ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    P11KitServer,
    SocketActivate,
    /// `p11-kit server` without CAP_SYS_PTRACE.
    P11KitServerNoCapability,
}

struct Server {
    child: Child,
    socket: PathBuf,
    stderr: PathBuf,
    way: Way,
}

impl Server {
    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stop(mut self) -> String {
        // SAFETY: kill of our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        self.stderr()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `setpriv` switching to the service user, with `ambient` capabilities kept across exec and
/// no other capability possible (the unit's NoNewPrivileges= and CapabilityBoundingSet=).
fn setpriv_service(service: &User, ambient: &[String]) -> Vec<String> {
    let mut args = vec![
        format!("--reuid={}", service.uid),
        format!("--regid={}", service.gid),
        "--init-groups".to_string(),
        "--no-new-privs".to_string(),
    ];
    let mut bounding = "-all".to_string();
    for cap in ambient {
        bounding.push_str(&format!(",{cap}"));
    }
    args.push(format!("--bounding-set={bounding}"));
    if !ambient.is_empty() {
        args.push(format!("--inh-caps={}", ambient.join(",")));
        args.push(format!("--ambient-caps={}", ambient.join(",")));
    }
    args.push("--".into());
    args
}

fn start_server(way: Way, site: &Site, service: &User, clients_gid: u32) -> Server {
    let unit = service_unit();
    let (socket_mode, socket_group) = socket_unit();
    assert_eq!(socket_group, "p11audit-clients");
    let dir = site.work.join(format!("run-{way:?}"));
    let stderr = site.work.join(format!("server-{way:?}.stderr"));
    let mut cmd;
    match way {
        Way::P11KitServer | Way::P11KitServerNoCapability => {
            // p11-kit server binds as the service user: its directory is the service user's,
            // and only the clients group may enter it.
            mkdir(&dir, service.uid, clients_gid, 0o750);
            let ambient = if way == Way::P11KitServer {
                unit.ambient.clone()
            } else {
                Vec::new()
            };
            cmd = Command::new("setpriv");
            cmd.args(setpriv_service(service, &ambient))
                .args(["p11-kit", "server", "-f", "-n"])
                .arg(dir.join("pkcs11.sock"))
                .arg(&site.lib)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("P11AUDIT_CONFIG", &site.conf)
                .env("SOFTHSM2_CONF", &site.softhsm_conf);
        }
        Way::SocketActivate => {
            // As systemd makes /run/p11audit (DirectoryMode=0755, root) and the socket.
            mkdir(&dir, 0, 0, 0o755);
            cmd = Command::new("systemd-socket-activate");
            cmd.args(["--accept", "--inetd", "-l"])
                .arg(dir.join("pkcs11.sock"))
                .env_clear()
                .env("PATH", "/usr/bin:/bin");
            for name in &unit.environment {
                let value = match name.as_str() {
                    "P11AUDIT_CONFIG" => site.conf.clone(),
                    "SOFTHSM2_CONF" => site.softhsm_conf.clone(),
                    other => panic!("the unit sets {other}, which the test does not know"),
                };
                cmd.arg("-E").arg(format!("{name}={}", value.display()));
            }
            cmd.args(["--", "setpriv"])
                .args(setpriv_service(service, &unit.ambient))
                .args(unit.exec_start.iter().map(|w| {
                    if w == UNIT_LIBRARY {
                        site.lib.display().to_string()
                    } else {
                        w.clone()
                    }
                }));
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(site.work.join(format!("server-{way:?}.stdout"))).unwrap())
        .stderr(fs::File::create(&stderr).unwrap());
    let child = cmd.spawn().expect("start the server");
    let socket = dir.join("pkcs11.sock");
    let server = Server {
        child,
        socket,
        stderr,
        way,
    };
    let started = Instant::now();
    while !server.socket.exists() {
        assert!(
            started.elapsed() < PATIENCE,
            "{way:?}: no socket at {}\n{}",
            server.socket.display(),
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SocketGroup= and SocketMode= of the shipped socket unit.
    chown(&server.socket, 0, clients_gid);
    chmod(&server.socket, socket_mode);
    server
}

// ---- clients ---------------------------------------------------------------------------------

/// pkcs11-tool as `user`, through p11-kit-client.so to `server`, started by bash with `argv[0]`
/// set to `fake-name` and an environment that lies about who it is and how p11audit should run.
/// `pid_file` receives the pid of the pkcs11-tool process.
fn pkcs11_tool(
    user: &User,
    server: &Server,
    site: &Site,
    pid_file: &Path,
    args: &[&str],
) -> Command {
    let mut cmd = as_user(user, "/bin/bash");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$1"; shift; exec -a fake-name /usr/bin/pkcs11-tool "$@""#)
        .arg("bash")
        .arg(pid_file)
        .args(["--module", CLIENT_MODULE])
        .args(args)
        .current_dir(site.home(user))
        .env(
            "P11_KIT_SERVER_ADDRESS",
            format!("unix:path={}", server.socket.display()),
        )
        .env("USER", "root")
        .env("LOGNAME", "root")
        .env("HOME", "/root")
        .env("P11AUDIT_PEER", "off")
        .env("P11AUDIT_LOG", "/tmp/not-the-log")
        .env("P11AUDIT_CONFIG", "/nonexistent");
    cmd
}

fn read_pid(path: &Path) -> u32 {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .parse()
        .expect("a pid")
}

/// Makes a P-256 key pair with CKA_ID `id`; signs a SHA-256 hash with CKM_ECDSA; reads the
/// public key back; OpenSSL verifies the signature. Returns the pid of the signing pkcs11-tool.
fn keygen_sign_check(user: &User, server: &Server, site: &Site, id: &str) -> u32 {
    let home = site.home(user);
    let what = |s: &str| format!("{:?} {}: {s}", server.way, user.name);
    run_ok(
        &mut pkcs11_tool(
            user,
            server,
            site,
            &home.join("keygen.pid"),
            &[
                "--login",
                "--pin",
                USER_PIN,
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--id",
                id,
                "--label",
                &format!("separated-{id}"),
            ],
        ),
        &what("pkcs11-tool --keypairgen"),
    );
    fs::write(
        home.join("data"),
        format!("signed by {} via {id}", user.name),
    )
    .unwrap();
    run_ok(
        as_user(user, "openssl")
            .args(["dgst", "-sha256", "-binary", "-out", "hash", "data"])
            .current_dir(&home),
        &what("openssl dgst"),
    );
    let sign_pid = home.join("sign.pid");
    run_ok(
        &mut pkcs11_tool(
            user,
            server,
            site,
            &sign_pid,
            &[
                "--login",
                "--pin",
                USER_PIN,
                "--sign",
                "--mechanism",
                "ECDSA",
                "--signature-format",
                "openssl",
                "--id",
                id,
                "-i",
                "hash",
                "-o",
                "sig",
            ],
        ),
        &what("pkcs11-tool --sign"),
    );
    run_ok(
        &mut pkcs11_tool(
            user,
            server,
            site,
            &home.join("read.pid"),
            &[
                "--read-object",
                "--type",
                "pubkey",
                "--id",
                id,
                "-o",
                "pub.der",
            ],
        ),
        &what("pkcs11-tool --read-object"),
    );
    let out = run_ok(
        as_user(user, "openssl")
            .args([
                "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", "pub.der", "-in",
                "hash", "-sigfile", "sig",
            ])
            .current_dir(&home),
        &what("openssl pkeyutl -verify"),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully"),
        "{}",
        output_text(&out)
    );
    read_pid(&sign_pid)
}

/// A PyKCS11 client: logs in and finds the private key with CKA_ID `KEY_ID`, then
/// - `interleave ME OTHER`: signs, creates ME, waits for OTHER to exist, signs again;
/// - `hold`: signs, then signs again after each line on stdin.
///
/// Each signature's result is printed as a CKR_ name.
const PY_CLIENT: &str = r#"
import os, sys, time
from PyKCS11 import *
lib = PyKCS11Lib()
lib.load(os.environ["CLIENT_MODULE"])
s = lib.openSession(lib.getSlotList(tokenPresent=True)[0], CKF_SERIAL_SESSION | CKF_RW_SESSION)
s.login(os.environ["PIN"])
key = s.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_ID, list(bytes.fromhex(os.environ["KEY_ID"])))])[0]
def sign():
    try:
        s.sign(key, list(range(32)), Mechanism(CKM_ECDSA))
        return "CKR_OK"
    except PyKCS11Error as e:
        return CKR[e.value]
print("pid", os.getpid(), flush=True)
if sys.argv[1] == "interleave":
    first = sign()
    open(sys.argv[2], "w").close()
    for _ in range(3000):
        if os.path.exists(sys.argv[3]):
            break
        time.sleep(0.01)
    print("signed", first, sign(), flush=True)
else:
    print("signed", sign(), flush=True)
    for line in sys.stdin:
        print("signed", sign(), flush=True)
"#;

fn read_line(r: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read the python client");
    line.trim().to_string()
}

struct PyClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl PyClient {
    fn start(user: &User, server: &Server, site: &Site, key_id: &str, args: &[&Path]) -> PyClient {
        let mut child = as_user(user, PYTHON)
            .arg("-c")
            .arg(PY_CLIENT)
            .args(args)
            .current_dir(site.home(user))
            .env("CLIENT_MODULE", CLIENT_MODULE)
            .env(
                "P11_KIT_SERVER_ADDRESS",
                format!("unix:path={}", server.socket.display()),
            )
            .env("PIN", USER_PIN)
            .env("KEY_ID", key_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the python client");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let line = read_line(&mut stdout);
        let pid = line
            .strip_prefix("pid ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("python client said {line:?}"));
        PyClient {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    fn line(&mut self) -> String {
        read_line(&mut self.stdout)
    }

    fn go_on(&mut self) {
        writeln!(self.stdin.as_mut().expect("stdin")).expect("write to the python client");
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for the python client");
        assert!(status.success(), "the python client failed: {status}");
    }
}

// ---- records ---------------------------------------------------------------------------------

fn peer_of(r: &Value) -> Option<&Value> {
    r.get("peer")
}

fn peer_pid(r: &Value) -> Option<u64> {
    peer_of(r).and_then(|p| p["pid"].as_u64())
}

/// The serving processes (record pids) whose peer is the client `client_pid`.
fn serving_pids(records: &[Value], client_pid: u32) -> BTreeSet<u64> {
    records
        .iter()
        .filter(|r| peer_pid(r) == Some(client_pid as u64))
        .map(|r| r["pid"].as_u64().unwrap())
        .collect()
}

/// The one process that served `client_pid`.
fn serving_pid(records: &[Value], client_pid: u32) -> u64 {
    let pids = serving_pids(records, client_pid);
    assert_eq!(
        pids.len(),
        1,
        "client {client_pid} should have been served by one process: {pids:?}"
    );
    *pids.first().unwrap()
}

fn of_process(records: &[Value], pid: u64) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["pid"].as_u64() == Some(pid))
        .collect()
}

/// Every record of every serving process names one peer, the same in all of its records, and
/// every record of a serving process has one (P11AUDIT_PEER=stdin).
fn assert_one_peer_per_process(records: &[Value]) {
    let mut peers: BTreeMap<u64, &Value> = BTreeMap::new();
    for r in records {
        let pid = r["pid"].as_u64().unwrap();
        let peer = peer_of(r).unwrap_or_else(|| panic!("a record without peer: {r}"));
        let first = *peers.entry(pid).or_insert(peer);
        assert_eq!(first, peer, "process {pid} names two peers: {r}");
    }
}

/// The record was written by the serving process (p11-kit-remote as the service user) for
/// `user`'s pkcs11-tool `client_pid`.
fn assert_served(r: &Value, service: &User, user: &User, client_pid: u32, client_exe: &str) {
    let peer = peer_of(r).unwrap_or_else(|| panic!("no peer: {r}"));
    assert_eq!(peer["pid"].as_u64(), Some(client_pid as u64), "{r}");
    assert_eq!(peer["uid"].as_u64(), Some(user.uid as u64), "{r}");
    assert_eq!(peer["gid"].as_u64(), Some(user.gid as u64), "{r}");
    assert_eq!(peer["exe"].as_str(), Some(client_exe), "{r}");
    assert_eq!(r["uid"].as_u64(), Some(service.uid as u64), "{r}");
    assert_eq!(r["exe"].as_str(), Some(P11_KIT_REMOTE), "{r}");
}

fn log_len(site: &Site) -> usize {
    if site.log.exists() {
        line_count(&site.log)
    } else {
        0
    }
}

/// Waits until `found` finds something in the records from line `from` on.
fn wait_for_record<T>(
    site: &Site,
    from: usize,
    what: &str,
    found: impl Fn(&[Value]) -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(t) = found(&site.records_from(from)) {
            return t;
        }
        assert!(started.elapsed() < PATIENCE, "no record of {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- the scenario ----------------------------------------------------------------------------

struct People {
    service: User,
    app1: User,
    app2: User,
    outsider: User,
    auditor: User,
    clients_gid: u32,
}

/// Each user signs through `server`; the records say who.
fn sign_as_each_user(server: &Server, site: &Site, p: &People, ids: [&str; 2]) {
    for (user, id) in [(&p.app1, ids[0]), (&p.app2, ids[1])] {
        let from = log_len(site);
        let sign_pid = keygen_sign_check(user, server, site, id);
        let records = site.records_from(from);
        let signs: Vec<&Value> = records
            .iter()
            .filter(|r| r["fn"] == "C_Sign" && peer_pid(r) == Some(sign_pid as u64))
            .collect();
        assert!(
            signs
                .iter()
                .any(|r| r["ev"] == "outcome" && r["rv"] == "CKR_OK"),
            "{:?}: no C_Sign outcome for {}'s pkcs11-tool (pid {sign_pid})",
            server.way,
            user.name
        );
        for r in signs {
            // argv[0] was "fake-name", USER and LOGNAME said root: the kernel's word stands.
            assert_served(r, &p.service, user, sign_pid, PKCS11_TOOL);
        }
        assert!(
            records.iter().all(|r| peer_of(r).unwrap()["uid"] != 0),
            "a record names root as the peer"
        );
    }
}

/// Two users' clients sign in turns, each in one connection: every serving process names one
/// peer, and each user's C_Sign names that user.
fn two_users_at_once(server: &Server, site: &Site, p: &People, ids: [&str; 2]) {
    let from = log_len(site);
    let flag = |n: u32| site.flags.join(format!("{:?}-{n}", server.way));
    let (f1, f2) = (flag(1), flag(2));
    let mut c1 = PyClient::start(
        &p.app1,
        server,
        site,
        ids[0],
        &[Path::new("interleave"), &f1, &f2],
    );
    let mut c2 = PyClient::start(
        &p.app2,
        server,
        site,
        ids[1],
        &[Path::new("interleave"), &f2, &f1],
    );
    assert_eq!(c1.line(), "signed CKR_OK CKR_OK");
    assert_eq!(c2.line(), "signed CKR_OK CKR_OK");
    let (pid1, pid2) = (c1.pid, c2.pid);
    c1.finish();
    c2.finish();
    let records = site.records_from(from);
    assert_one_peer_per_process(&records);
    let python = fs::canonicalize(PYTHON).unwrap().display().to_string();
    let mut sign_seqs = Vec::new();
    for (user, client) in [(&p.app1, pid1), (&p.app2, pid2)] {
        let serving = serving_pid(&records, client);
        let mine = of_process(&records, serving);
        for r in &mine {
            assert_served(r, &p.service, user, client, &python);
        }
        let seqs: Vec<u64> = mine
            .iter()
            .filter(|r| r["fn"] == "C_Sign" && r["ev"] == "outcome" && r["rv"] == "CKR_OK")
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        // PyKCS11 asks for the length first: one or two C_Sign calls per signature.
        assert!(seqs.len() >= 2, "{}: C_Sign outcomes {seqs:?}", user.name);
        sign_seqs.push((seqs[0], *seqs.last().unwrap()));
    }
    // Each client signed once before and once after the other's first signature, so the two
    // connections were served at the same time and their records interleave in the log.
    let ((first1, last1), (first2, last2)) = (sign_seqs[0], sign_seqs[1]);
    assert!(
        first1 < last2 && first2 < last1,
        "the two connections' signatures do not interleave: {sign_seqs:?}"
    );
}

/// The shipped p11-kit module file, in the user's p11-kit configuration with this server's
/// socket: p11-kit-proxy.so (as GnuTLS and other p11-kit users load modules) shows the token.
fn module_file_works(server: &Server, site: &Site, p: &People) {
    let user = &p.app1;
    let home = site.home(user);
    let modules = home.join(".config/pkcs11/modules");
    fs::create_dir_all(&modules).unwrap();
    let shipped = fs::read_to_string(manifest_dir().join("deploy/p11audit.module")).unwrap();
    assert!(shipped.contains("remote: unix:path=/run/p11audit/pkcs11.sock\n"));
    fs::write(
        modules.join("p11audit.module"),
        shipped.replace(
            "/run/p11audit/pkcs11.sock",
            &server.socket.display().to_string(),
        ),
    )
    .unwrap();
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(home.join(".config")),
        "chown the module file",
    );
    let from = log_len(site);
    let out = run_ok(
        as_user(user, PKCS11_TOOL)
            .args(["--module", P11_KIT_PROXY, "--list-slots"])
            .env("HOME", &home),
        "pkcs11-tool through p11-kit-proxy.so and the module file",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(TOKEN_LABEL),
        "the token is not listed\n{}",
        output_text(&out)
    );
    let records = site.records_from(from);
    assert!(
        !records.is_empty()
            && records
                .iter()
                .all(|r| peer_of(r).unwrap()["uid"].as_u64() == Some(user.uid as u64)),
        "the module file's connection is not {}'s",
        user.name
    );
    fs::remove_dir_all(home.join(".config")).unwrap();
}

/// Users outside the clients group (the outsider, and the auditor too) cannot connect.
fn outsiders_are_refused(server: &Server, site: &Site, p: &People) {
    for user in [&p.outsider, &p.auditor] {
        let out = pkcs11_tool(
            user,
            server,
            site,
            &site.home(user).join("refused.pid"),
            &["--login", "--pin", USER_PIN, "--list-objects"],
        )
        .output()
        .expect("run pkcs11-tool outside the clients group");
        assert!(
            !out.status.success(),
            "{:?}: {}'s pkcs11-tool worked\n{}",
            server.way,
            user.name,
            output_text(&out)
        );
    }
}

/// A client killed with `kill -9` while the serving process generates an RSA-4096 key: the
/// serving process still writes the call's outcome and its `close`.
fn client_killed_mid_call(server: &Server, site: &Site, p: &People, id: &str) {
    let from = log_len(site);
    let pid_file = site.home(&p.app1).join("killed.pid");
    let _ = fs::remove_file(&pid_file);
    let mut tool = pkcs11_tool(
        &p.app1,
        server,
        site,
        &pid_file,
        &[
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "--key-type",
            "rsa:4096",
            "--id",
            id,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start pkcs11-tool");
    // setpriv and bash exec: the child is pkcs11-tool itself.
    let client = tool.id();
    let serving = wait_for_record(site, from, "the RSA key generation's intent", |records| {
        records
            .iter()
            .find(|r| {
                r["ev"] == "intent"
                    && r["fn"] == "C_GenerateKeyPair"
                    && peer_pid(r) == Some(client as u64)
            })
            .map(|r| r["pid"].as_u64().unwrap())
    });
    tool.kill().expect("kill -9 the client");
    let status = tool.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the client was not killed mid-call: {status}"
    );
    let close = wait_for_record(site, from, "the serving process's close", |records| {
        records
            .iter()
            .find(|r| r["ev"] == "close" && r["pid"].as_u64() == Some(serving))
            .cloned()
    });
    assert_eq!(
        close["note"], "the client's connection ended without C_Finalize",
        "{close}"
    );
    assert!(close.get("fn").is_none(), "{close}");
    let records = site.records_from(from);
    let mine = of_process(&records, serving);
    assert_eq!(
        mine.last().copied(),
        Some(&close),
        "the close is not the last record"
    );
    assert!(
        mine.iter()
            .any(|r| r["ev"] == "outcome" && r["fn"] == "C_GenerateKeyPair"),
        "the key generation's outcome is missing"
    );
    assert_verifies(
        &site.key,
        &site.log,
        "the log after a client was killed mid-call",
    );
}

/// With the log's file system full, an acting call fails at the client with
/// CKR_GENERAL_ERROR, and works again once there is room.
fn fails_closed_across_the_rpc(server: &Server, site: &Site, tmpfs: &Tmpfs, p: &People, id: &str) {
    let mut client = PyClient::start(&p.app1, server, site, id, &[Path::new("hold")]);
    assert_eq!(client.line(), "signed CKR_OK");
    tmpfs.fill(&site.log);
    // The log's last page may still have room for a record or two.
    let mut signed_while_full = 0;
    let refused = loop {
        client.go_on();
        let answer = client.line();
        if answer != "signed CKR_OK" || signed_while_full == 20 {
            break answer;
        }
        signed_while_full += 1;
    };
    client.go_on();
    let refused_again = client.line();
    tmpfs.free();
    assert_eq!(refused, "signed CKR_GENERAL_ERROR", "{:?}", server.way);
    assert_eq!(
        refused_again, "signed CKR_GENERAL_ERROR",
        "{:?}",
        server.way
    );
    eprintln!(
        "{:?}: refused with CKR_GENERAL_ERROR after {signed_while_full} signature(s) filled the \
         log's last page",
        server.way
    );
    client.go_on();
    assert_eq!(
        client.line(),
        "signed CKR_OK",
        "{:?}: after the room came back",
        server.way
    );
    client.finish();
}

fn exercise(way: Way, site: &Site, tmpfs: &Tmpfs, p: &People, ids: [&str; 2]) {
    let server = start_server(way, site, &p.service, p.clients_gid);
    sign_as_each_user(&server, site, p, ids);
    two_users_at_once(&server, site, p, ids);
    if way == Way::SocketActivate {
        module_file_works(&server, site, p);
    }
    outsiders_are_refused(&server, site, p);
    silent_client_leaves_no_capability(&server, p);
    client_killed_mid_call(&server, site, p, &format!("{}ff", ids[0]));
    fails_closed_across_the_rpc(&server, site, tmpfs, p, ids[0]);
    let stderr = server.stop();
    // The one thing p11audit had to say: why the refused calls were refused.
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("p11audit:"))
        .collect();
    assert!(
        !said.is_empty() && said.iter().all(|l| l.contains("No space left on device")),
        "{way:?}: p11audit said:\n{stderr}"
    );
}

/// The `p11-kit remote` processes `server` started (its children), by pid.
fn serving_processes(server: &Server) -> BTreeSet<u32> {
    let parent = server.child.id();
    let mut out = BTreeSet::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
        if ppid == Some(parent) && exe.as_deref() == Some(Path::new(P11_KIT_REMOTE)) {
            out.insert(pid);
        }
    }
    out
}

/// `CapEff`, `CapPrm` and `CapAmb` of every thread of `pid`, one line per thread.
fn thread_capabilities(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let caps: Vec<&str> = status
            .lines()
            .filter(|l| {
                l.starts_with("CapEff") || l.starts_with("CapPrm") || l.starts_with("CapAmb")
            })
            .collect();
        out.push(format!("{}: {}", task.path().display(), caps.join(" ")));
    }
    out
}

/// A client that connects and says nothing (not even p11-kit's handshake) cannot keep its
/// serving process holding CAP_SYS_PTRACE: the capability is gone once the module is loaded,
/// before the process reads anything the client sends, in every thread.
fn silent_client_leaves_no_capability(server: &Server, p: &People) {
    let before = serving_processes(server);
    let mut client = as_user(&p.app1, PYTHON)
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.connect(sys.argv[1])\n\
             print('connected', flush=True)\n\
             sys.stdin.read()\n",
        ])
        .arg(&server.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the silent client");
    let mut out = BufReader::new(client.stdout.take().unwrap());
    assert_eq!(read_line(&mut out), "connected", "{:?}", server.way);
    let started = Instant::now();
    let (serving, loaded) = loop {
        let new: Vec<u32> = serving_processes(server)
            .difference(&before)
            .copied()
            .collect();
        if let [pid] = new[..] {
            let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            if maps.contains("libp11audit.so") {
                break (pid, started.elapsed());
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{:?}: no serving process with p11audit loaded for the silent client (new: {new:?})",
            server.way
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // Bit 19 (CAP_SYS_PTRACE) in any of the three sets of any thread.
    let holds = |lines: &[String]| {
        lines.iter().any(|l| {
            l.split_whitespace()
                .filter_map(|w| u64::from_str_radix(w, 16).ok())
                .any(|set| set & (1 << 19) != 0)
        })
    };
    loop {
        let caps = thread_capabilities(serving);
        assert!(
            !caps.is_empty(),
            "{:?}: serving process {serving} is gone",
            server.way
        );
        if !holds(&caps) {
            break;
        }
        assert!(
            started.elapsed() < loaded + PATIENCE,
            "{:?}: serving process {serving} still holds CAP_SYS_PTRACE while its client has \
             sent nothing:\n{}",
            server.way,
            caps.join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(client.stdin.take());
    client.wait().expect("wait for the silent client");
}

/// Without CAP_SYS_PTRACE the peer has no `exe`, and the serving process says why.
fn without_the_capability(site: &Site, p: &People) {
    let server = start_server(
        Way::P11KitServerNoCapability,
        site,
        &p.service,
        p.clients_gid,
    );
    let from = log_len(site);
    let pid_file = site.home(&p.app1).join("nocap.pid");
    run_ok(
        &mut pkcs11_tool(&p.app1, &server, site, &pid_file, &["--list-slots"]),
        "pkcs11-tool --list-slots without the capability",
    );
    let client = read_pid(&pid_file);
    let stderr = server.stop();
    let records = site.records_from(from);
    let serving = serving_pid(&records, client);
    for r in of_process(&records, serving) {
        let peer = peer_of(r).unwrap();
        assert_eq!(peer["uid"].as_u64(), Some(p.app1.uid as u64), "{r}");
        assert!(
            peer.get("exe").is_none(),
            "exe read without the capability: {r}"
        );
    }
    let expected = format!(
        "p11audit: peer pid {client} (uid {}): cannot read /proc/{client}/exe",
        p.app1.uid
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&expected))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line {expected:?} in:\n{stderr}"
    );
    assert!(lines[0].contains("CAP_SYS_PTRACE"), "{}", lines[0]);
}

fn assert_denied(user: &User, what: &str, mut cmd: Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{} could {what}\n{}",
        user.name,
        output_text(&out)
    );
}

fn read_as(user: &User, path: &Path) -> Command {
    let mut cmd = as_user(user, "cat");
    cmd.arg(path);
    cmd
}

fn append_as(user: &User, path: &Path) -> Command {
    let mut cmd = as_user(user, "/bin/sh");
    cmd.args(["-c", r#": >> "$1""#, "sh"]).arg(path);
    cmd
}

/// The application users cannot touch the trail, the key or the token store; the auditor can
/// read the log, but not the state or the key.
fn who_can_open_what(site: &Site, p: &People) {
    for user in [&p.app1, &p.app2] {
        assert_denied(user, "read the log", read_as(user, &site.log));
        assert_denied(user, "read the state", read_as(user, &site.state()));
        assert_denied(user, "read the key", read_as(user, &site.key));
        assert_denied(user, "append to the log", append_as(user, &site.log));
        let mut rm = as_user(user, "rm");
        rm.arg("-f").arg(&site.log);
        assert_denied(user, "remove the log", rm);
        assert_denied(user, "append to the state", append_as(user, &site.state()));
        assert_denied(
            user,
            "create a file in the log directory",
            append_as(user, &site.log_dir.join("mine")),
        );
        assert_denied(
            user,
            "read SoftHSM's configuration",
            read_as(user, &site.softhsm_conf),
        );
        let mut ls = as_user(user, "ls");
        ls.arg(&site.token_dir);
        assert_denied(user, "list the token store", ls);
        // SoftHSM loaded directly, with the service's configuration: no token.
        let out = as_user(user, PKCS11_TOOL)
            .args(["--module", SOFTHSM, "--list-slots"])
            .env("SOFTHSM2_CONF", &site.softhsm_conf)
            .output()
            .unwrap();
        assert!(
            !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains(TOKEN_LABEL),
            "{} opened the token store directly\n{}",
            user.name,
            output_text(&out)
        );
    }
    let a = &p.auditor;
    let out = run_ok(&mut read_as(a, &site.log), "the auditor reads the log");
    assert!(!out.stdout.is_empty());
    assert_denied(a, "read the state", read_as(a, &site.state()));
    assert_denied(a, "read the key", read_as(a, &site.key));
    assert_denied(a, "append to the log", append_as(a, &site.log));
    // The auditor verifies every record with K_0, but cannot check the end against the state.
    let verify = |extra: &[&str]| {
        as_user(a, p11audit_bin())
            .arg("verify")
            .arg("--key-file")
            .arg(&site.auditor_key)
            .args(extra)
            .arg(&site.log_dir)
            .output()
            .unwrap()
    };
    let out = verify(&["--no-state"]);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("state file")
            && String::from_utf8_lossy(&out.stderr).contains("use --no-state"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn separated_mode() {
    if !runnable("separated_mode") {
        return;
    }
    let started = Instant::now();
    let tag = format!("p11t{}", std::process::id());
    // Dropped last: the users' processes are gone by then.
    let mut accounts = Accounts::default();
    let clients = format!("{tag}-clients");
    let auditors = format!("{tag}-auditors");
    let clients_gid = accounts.group(&clients);
    let auditors_gid = accounts.group(&auditors);
    let people = People {
        service: accounts.user(&format!("{tag}-svc"), &[], true),
        app1: accounts.user(&format!("{tag}-app1"), &[&clients], false),
        app2: accounts.user(&format!("{tag}-app2"), &[&clients], false),
        outsider: accounts.user(&format!("{tag}-out"), &[], false),
        auditor: accounts.user(&format!("{tag}-aud"), &[&auditors], false),
        clients_gid,
    };
    let svc = &people.service;

    let tmp = tempfile::tempdir_in("/tmp").expect("tempdir");
    chmod(tmp.path(), 0o755);
    let work = tmp.path().to_path_buf();
    // Unmounted before the temporary directory is removed.
    let tmpfs = Tmpfs::mount(&work.join("logfs"));

    let lib = work.join("libp11audit.so");
    fs::copy(shim_library(), &lib).expect("copy the shim");
    chmod(&lib, 0o755);
    // The token store: the service user's only.
    let token_dir = work.join("token");
    let softhsm_conf = new_token(&token_dir);
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", svc.uid, svc.gid))
            .arg(&token_dir),
        "chown the token store",
    );
    chmod(&token_dir, 0o700);
    // The log directory: the service user's, readable by the auditors; setgid, so that the log
    // gets the auditors group.
    let log_dir = mkdir(&tmpfs.dir.join("log"), svc.uid, auditors_gid, 0o2750);
    let keys = mkdir(&work.join("keys"), svc.uid, svc.gid, 0o700);
    let key = keys.join("chain.key");
    keygen(&key);
    chown(&key, svc.uid, svc.gid);
    let auditor_dir = mkdir(
        &work.join("auditor"),
        people.auditor.uid,
        people.auditor.gid,
        0o700,
    );
    let auditor_key = auditor_dir.join("chain.key");
    fs::copy(&key, &auditor_key).unwrap();
    chown(&auditor_key, people.auditor.uid, people.auditor.gid);
    chmod(&auditor_key, 0o400);
    let flags = mkdir(&work.join("flags"), 0, 0, 0o1777);
    let site = Site {
        work,
        lib,
        softhsm_conf,
        token_dir,
        log: log_dir.join("audit.log"),
        log_dir,
        key,
        conf: tmp.path().join("separated.conf"),
        auditor_key,
        flags,
    };
    fs::write(&site.conf, site_config(&site)).unwrap();
    chmod(&site.conf, 0o644);
    for user in [
        &people.app1,
        &people.app2,
        &people.outsider,
        &people.auditor,
    ] {
        mkdir(&site.home(user), user.uid, user.gid, 0o700);
    }

    exercise(Way::P11KitServer, &site, &tmpfs, &people, ["11", "12"]);
    exercise(Way::SocketActivate, &site, &tmpfs, &people, ["21", "22"]);
    without_the_capability(&site, &people);
    who_can_open_what(&site, &people);

    let records = site.records();
    assert_one_peer_per_process(&records);
    for user in [&people.outsider, &people.auditor] {
        assert!(
            records
                .iter()
                .all(|r| peer_of(r).unwrap()["uid"].as_u64() != Some(user.uid as u64)),
            "a record names {}, who is outside the clients group",
            user.name
        );
    }
    {
        use std::os::unix::fs::MetadataExt;
        let log = fs::metadata(&site.log).unwrap();
        assert_eq!(
            (log.mode() & 0o7777, log.uid(), log.gid()),
            (0o640, svc.uid, auditors_gid)
        );
        let state = fs::metadata(site.state()).unwrap();
        assert_eq!((state.mode() & 0o7777, state.uid()), (0o600, svc.uid));
    }
    assert_verifies(&site.key, &site.log, "the separated log");
    // Every serving process closed, also those whose client went away without C_Finalize.
    let out = p11audit_on_log("report", &site.key, &["--json"], &site.log);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report --json: {e}\n{}", output_text(&out)));
    assert_eq!(
        report["unclean_closes"]["count"], 0,
        "{}",
        report["unclean_closes"]
    );
    eprintln!(
        "separated_mode: {} records, {:.1} s",
        records.len(),
        started.elapsed().as_secs_f64()
    );
}

/// `systemd-analyze verify` accepts the shipped units without a word. Needs systemd-analyze
/// only (not root, not a running systemd).
#[test]
fn shipped_units_pass_systemd_analyze() {
    if !runnable_unless(
        "shipped_units_pass_systemd_analyze",
        missing_command(&["systemd-analyze"]),
    ) {
        return;
    }
    let deploy = manifest_dir().join("deploy");
    let out = run_ok(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(deploy.join("p11audit.socket"))
            .arg(deploy.join("p11audit@.service")),
        "systemd-analyze verify",
    );
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify has remarks:\n{}",
        output_text(&out)
    );
}
