//! Who is behind a process, in the kernel's words: the audit login id and session of a process
//! (`/proc/<pid>/loginuid`, `/proc/<pid>/sessionid`), and the process at the other end of a
//! connected Unix socket on stdin (`SO_PEERCRED`, made race-free with a pidfd).
//!
//! The peer is what `p11-kit remote` serves: `p11-kit server` and systemd's `Accept=yes` both
//! start it with the client's connection on stdin. The client cannot choose what `SO_PEERCRED`
//! says (the kernel records the credentials at `connect`), nor what `/proc/<pid>/exe` links to.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

/// The kernel's "not set" for loginuid and sessionid (`AUDIT_UID_UNSET`, `(u32)-1`): a
/// process that no login started (a daemon, or a kernel without audit support).
const UNSET: u32 = u32::MAX;

/// The audit login id and session of a process: who logged in, which survives `su`, `sudo` and
/// a shared service account. Each is `None` where the kernel has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoginId {
    pub auid: Option<u32>,
    pub session: Option<u32>,
}

impl LoginId {
    /// This process's.
    pub fn of_self() -> LoginId {
        LoginId::in_dir("/proc/self")
    }

    fn in_dir(dir: &str) -> LoginId {
        let read = |name: &str| {
            std::fs::read_to_string(format!("{dir}/{name}"))
                .ok()
                .and_then(|s| parse_id(&s))
        };
        LoginId {
            auid: read("loginuid"),
            session: read("sessionid"),
        }
    }

    /// Through an open `/proc/<pid>` directory (so that the reads are of that process even if
    /// its pid is reused meanwhile: they then fail with ESRCH).
    fn in_proc_dir(dir: &File) -> LoginId {
        let read = |name: &str| {
            read_at(dir, name)
                .ok()
                .and_then(|b| parse_id(&String::from_utf8_lossy(&b)))
        };
        LoginId {
            auid: read("loginuid"),
            session: read("sessionid"),
        }
    }
}

fn parse_id(text: &str) -> Option<u32> {
    text.trim().parse().ok().filter(|&v| v != UNSET)
}

/// The process at the other end of the connection, as the kernel gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// From `SO_PEERCRED`: the credentials the client had when it connected.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `/proc/<pid>/exe`, as bytes; `None` if it could not be read (see `exe_error`).
    pub exe: Option<Vec<u8>>,
    pub login: LoginId,
    /// Why `exe` and `login` are missing or may not be the peer's, for one warning line.
    pub exe_error: Option<String>,
}

impl Peer {
    /// The kernel's credentials of the peer, before its `/proc` entries are read.
    fn from_cred(pid: u32, uid: u32, gid: u32) -> Peer {
        Peer {
            pid,
            uid,
            gid,
            exe: None,
            login: LoginId::default(),
            exe_error: None,
        }
    }
}

/// What stdin is, when it is not a client connection. Each is a reason `auto` takes no peer
/// and `stdin` refuses to start.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoPeer {
    #[error("stdin is not open")]
    Closed,
    #[error("stdin is not a socket")]
    NotSocket,
    #[error("stdin is a socket but not a Unix stream socket")]
    NotUnixStream,
    #[error("stdin is a Unix socket that is not connected")]
    NotConnected,
    #[error("cannot read the peer of stdin: {0}")]
    Unreadable(String),
}

/// The peer of the connected Unix stream socket on stdin.
pub fn stdin_peer() -> Result<Peer, NoPeer> {
    socket_peer(libc::STDIN_FILENO)
}

/// The peer of the connected Unix stream socket `fd`.
pub fn socket_peer(fd: RawFd) -> Result<Peer, NoPeer> {
    // SAFETY: fstat into a zeroed stat buffer; the descriptor is only inspected.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(NoPeer::Closed);
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(NoPeer::NotSocket);
    }
    if sockopt_int(fd, libc::SO_DOMAIN) != Some(libc::AF_UNIX)
        || sockopt_int(fd, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
    {
        return Err(NoPeer::NotUnixStream);
    }
    if !connected(fd) {
        return Err(NoPeer::NotConnected);
    }
    let cred = peer_cred(fd)?;
    // SO_PEERPIDFD (Linux 6.5 and later) is a pidfd of the very process that connected;
    // pidfd_open right after SO_PEERCRED (Linux 5.3 and later, e.g. Debian 12's 6.1) is exact
    // unless the client exited and its pid was reused in between.
    let pin = match peer_pidfd(fd) {
        Some(pidfd) => Pin::Pidfd(pidfd),
        None => pidfd_open(cred.pid as libc::pid_t),
    };
    let mut peer = Peer::from_cred(cred.pid as u32, cred.uid, cred.gid);
    read_proc(&mut peer, &pin);
    Ok(peer)
}

/// What holds the peer's pid to one process while its `/proc` entries are read.
enum Pin {
    Pidfd(OwnedFd),
    /// `pidfd_open` found no process with that pid: the client is gone, and `/proc/<pid>`, if
    /// it exists, is a later process's.
    Gone,
    /// The kernel has no pidfd (before Linux 5.3).
    Unsupported,
}

/// Reads the peer's `exe` and login id through an open `/proc/<pid>`, keeping them only if its
/// pidfd shows the process still alive after the directory was opened: then the directory is
/// that process's, not a later one's with the same pid.
fn read_proc(peer: &mut Peer, pin: &Pin) {
    let exited_message =
        |peer: &Peer| format!("process {} exited before it could be read", peer.pid);
    if let Pin::Gone = pin {
        peer.exe_error = Some(exited_message(peer));
        return;
    }
    let dir = match File::open(format!("/proc/{}", peer.pid)) {
        Ok(d) => d,
        Err(e) => {
            peer.exe_error = Some(format!("cannot open /proc/{}: {e}", peer.pid));
            return;
        }
    };
    match pin {
        Pin::Pidfd(fd) if exited(fd) => {
            peer.exe_error = Some(exited_message(peer));
            return;
        }
        Pin::Unsupported => {
            peer.exe_error = Some("this kernel has no pidfd: the pid could not be pinned".into());
        }
        Pin::Pidfd(_) | Pin::Gone => {}
    }
    // The process's owner: a pid reused by another user's process must not lend its exe.
    if let Ok(meta) = dir.metadata() {
        if meta.uid() != peer.uid {
            peer.exe_error = Some(format!(
                "process {} now belongs to uid {}, not the peer's uid {}",
                peer.pid,
                meta.uid(),
                peer.uid
            ));
            return;
        }
    }
    peer.login = LoginId::in_proc_dir(&dir);
    match readlink_at(&dir, "exe") {
        Ok(exe) => peer.exe = Some(exe),
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EPERM) => format!(
                    "cannot read /proc/{}/exe: {e} (reading another user's exe needs \
                     CAP_SYS_PTRACE)",
                    peer.pid
                ),
                _ => format!("cannot read /proc/{}/exe: {e}", peer.pid),
            };
            peer.exe_error = Some(why);
        }
    }
}

/// A `SOL_SOCKET` option whose value is the plain-data type `T`, starting from `init`.
fn sockopt<T: Copy>(fd: RawFd, opt: libc::c_int, init: T) -> io::Result<T> {
    let mut v = init;
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `v`, a `T` of that size; every option
    // read here (SO_DOMAIN, SO_TYPE, SO_PEERCRED, SO_PEERPIDFD) is an int or a struct ucred,
    // plain data for which any bytes are a value.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut T).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sockopt_int(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    sockopt(fd, opt, 0).ok()
}

/// A listening socket also answers SO_PEERCRED (with its own creator's credentials): only
/// `getpeername` tells a connection.
fn connected(fd: RawFd) -> bool {
    // SAFETY: sockaddr_un is plain data; getpeername writes at most `len` bytes into it.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: as above.
    let rc =
        unsafe { libc::getpeername(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) };
    rc == 0
}

fn peer_cred(fd: RawFd) -> Result<libc::ucred, NoPeer> {
    let none = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let cred =
        sockopt(fd, libc::SO_PEERCRED, none).map_err(|e| NoPeer::Unreadable(e.to_string()))?;
    // An unconnected (listening or never connected) socket has no peer: pid 0.
    if cred.pid <= 0 {
        return Err(NoPeer::NotConnected);
    }
    Ok(cred)
}

/// `SO_PEERPIDFD`: `None` where the kernel does not have it (ENOPROTOOPT before 6.5).
fn peer_pidfd(fd: RawFd) -> Option<OwnedFd> {
    let pidfd: libc::c_int = sockopt(fd, libc::SO_PEERPIDFD, -1).ok()?;
    // SAFETY: on success the kernel handed us a new descriptor, which we now own.
    (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) })
}

fn pidfd_open(pid: libc::pid_t) -> Pin {
    // SAFETY: pidfd_open(pid, 0) returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => Pin::Gone,
            _ => Pin::Unsupported,
        };
    }
    // SAFETY: on success the kernel handed us a descriptor we now own.
    Pin::Pidfd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A pidfd polls readable once its process has exited.
fn exited(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, no wait.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    rc != 0
}

fn read_at(dir: &File, name: &str) -> io::Result<Vec<u8>> {
    let name = CString::new(name).expect("fixed name");
    // SAFETY: openat relative to an open directory, with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and now own.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let mut out = Vec::new();
    file.read_to_end(&mut out)?;
    Ok(out)
}

fn readlink_at(dir: &File, name: &str) -> io::Result<Vec<u8>> {
    let name = CString::new(name).expect("fixed name");
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: readlinkat into a buffer of the length given.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `CAP_SYS_PTRACE` (linux/capability.h): what reading another user's `/proc/<pid>/exe` needs.
const CAP_SYS_PTRACE: u32 = 19;

/// Gives up `CAP_SYS_PTRACE` (effective, permitted, inheritable and ambient) for good, once the
/// client has been read: a serving process holds it only to read its client's `exe`, and
/// nothing after that (p11-kit's RPC, the provider) should be able to inspect other processes
/// with it. Returns whether the process had it. Capabilities are per thread: call it where the
/// serving process is still single-threaded, so that threads made later start without it (the
/// shim calls it at the first call into the library, when `p11-kit remote` has just loaded the
/// module and has not yet read anything from its client).
pub fn drop_ptrace_capability() -> io::Result<bool> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let bit = 1u32 << CAP_SYS_PTRACE;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget fills two Data structs for version 3, for the calling thread (pid 0).
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let held = (data[0].effective | data[0].permitted | data[0].inheritable) & bit != 0;
    // SAFETY: lowering an ambient capability takes no pointers; EINVAL on kernels without
    // ambient capabilities (before 4.3), where there is nothing to lower.
    let ambient = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_IS_SET,
            CAP_SYS_PTRACE as libc::c_ulong,
            0,
            0,
        )
    } == 1;
    if !held && !ambient {
        return Ok(false);
    }
    if ambient {
        // SAFETY: as above.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_LOWER,
                CAP_SYS_PTRACE as libc::c_ulong,
                0,
                0,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    data[0].effective &= !bit;
    data[0].permitted &= !bit;
    data[0].inheritable &= !bit;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: capset with the two Data structs just read, less one capability.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn own_exe() -> Option<Vec<u8>> {
        std::fs::read_link("/proc/self/exe")
            .ok()
            .map(|p| p.as_os_str().as_bytes().to_vec())
    }
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_connected_socket_names_this_process_and_its_exe() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = socket_peer(a.as_raw_fd()).unwrap();
        assert_eq!(peer.pid, std::process::id());
        // SAFETY: getuid/getgid cannot fail.
        assert_eq!(peer.uid, unsafe { libc::getuid() });
        assert_eq!(peer.gid, unsafe { libc::getgid() });
        assert_eq!(peer.exe, own_exe(), "{:?}", peer.exe_error);
        assert_eq!(peer.login, LoginId::of_self());
    }

    #[test]
    fn pidfd_open_pins_the_same_process_as_so_peerpidfd() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_cred(a.as_raw_fd()).unwrap();
        let opened = pidfd_open(cred.pid);
        let Pin::Pidfd(fd) = &opened else {
            panic!("pidfd_open (Linux 5.3+) gave no pidfd");
        };
        assert!(!exited(fd));
        let mut peer = Peer::from_cred(cred.pid as u32, cred.uid, cred.gid);
        read_proc(&mut peer, &opened);
        assert_eq!(peer.exe, own_exe());
    }

    #[test]
    fn an_exited_peer_lends_no_exe() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pidfd = pidfd_open(child.id() as libc::pid_t);
        child.wait().unwrap();
        let Pin::Pidfd(fd) = &pidfd else {
            panic!("pidfd_open (Linux 5.3+) gave no pidfd");
        };
        assert!(exited(fd));
        let mut peer = Peer::from_cred(child.id(), 0, 0);
        read_proc(&mut peer, &pidfd);
        assert_eq!(peer.exe, None);
        assert!(peer.exe_error.is_some());
    }

    /// Without `SO_PEERPIDFD` (before Linux 6.5), a client that is gone by the time of
    /// `pidfd_open` lends nothing, even when its pid already belongs to another process of its
    /// uid (here this test process stands for that one).
    #[test]
    fn a_peer_gone_before_pidfd_open_lends_nothing_even_if_its_pid_is_taken() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id() as libc::pid_t;
        child.wait().unwrap();
        let pin = pidfd_open(gone);
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut peer = Peer::from_cred(std::process::id(), uid, gid);
        read_proc(&mut peer, &pin);
        assert_eq!(peer.exe, None);
        assert_eq!(peer.login, LoginId::default());
        assert!(peer.exe_error.unwrap().contains("exited"));
        assert!(matches!(pin, Pin::Gone), "pidfd_open of a reaped pid");
    }

    #[test]
    fn pipes_files_and_listening_sockets_are_no_peer() {
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(socket_peer(r.as_raw_fd()), Err(NoPeer::NotSocket));
        let f = File::open("/proc/self/status").unwrap();
        assert_eq!(socket_peer(f.as_raw_fd()), Err(NoPeer::NotSocket));
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        assert_eq!(socket_peer(l.as_raw_fd()), Err(NoPeer::NotConnected));
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(socket_peer(u.as_raw_fd()), Err(NoPeer::NotUnixStream));
        assert_eq!(socket_peer(-1), Err(NoPeer::Closed));
    }

    #[test]
    fn unset_ids_read_as_none() {
        assert_eq!(parse_id("4294967295\n"), None);
        assert_eq!(parse_id("1000"), Some(1000));
        assert_eq!(parse_id("x"), None);
    }
}
