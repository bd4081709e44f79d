//! Daemons a provider needs (swtpm, dbus-daemon, tpm2-abrmd, pkcsslotd), each started in a
//! process group of its own that a guard kills when it is dropped, whether the test passed,
//! failed or panicked. The child also gets SIGKILL from the kernel when the thread that started
//! it dies (PR_SET_PDEATHSIG), so not even a test process killed outright leaves one running.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running daemon; dropping it kills its whole process group and reaps it.
pub struct Daemon {
    pub name: String,
    child: Child,
}

impl Daemon {
    /// Starts `cmd` as the leader of a new process group, with stdout and stderr appended to
    /// `log`.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> Daemon {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().expect("dup log");
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon {
            name: name.to_string(),
            child,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Fails the test when the daemon has already exited.
    #[track_caller]
    pub fn assert_running(&mut self, log: &Path) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited ({status}):\n{}",
                self.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pgid = self.pid();
        // SAFETY: signals the process group this guard created (its leader's pid).
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: as above; the group's other members (forked helpers) go too.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Has the kernel SIGKILL `cmd`'s process when the thread that starts it dies
/// (PR_SET_PDEATHSIG), so that a test process killed outright leaves nothing running.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Polls `ready` every 20 ms until it holds; fails the test after READY_TIMEOUT.
#[track_caller]
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "{what} not ready after {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port P with P+1 also free at the time of asking (swtpm's server and control
/// ports). swtpm cannot be told to bind port 0 and report it, so another process may take
/// either port before swtpm binds it: callers retry with a new pair when swtpm fails to start.
pub fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = first.local_addr().expect("local_addr").port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two adjacent free loopback ports in 100 tries");
}

/// Whether something accepts connections on loopback `port`.
pub fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `cmd` to completion (a set-up tool such as tpm2_ptool or pkcsconf), failing the test
/// with its output unless it exits 0; returns its stdout.
#[track_caller]
pub fn run_tool(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
