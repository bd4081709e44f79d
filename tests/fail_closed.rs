//! When the audit log cannot be written: acting calls are refused before they reach the
//! provider, result calls hand nothing out, and once writing works again the chain goes on with
//! a `gap` record that says how many records were lost and since when. With
//! P11AUDIT_ON_FAILURE=open the calls go through instead, and the gap is still reported.
//!
//! Writing fails for real: the log lives on a 64 KiB tmpfs that the child fills with a filler
//! file (appends then fail with ENOSPC). If tmpfs cannot be mounted (no CAP_SYS_ADMIN), the child
//! lowers RLIMIT_FSIZE to the log's size instead and ignores SIGXFSZ (appends fail with EFBIG).
//! If neither works the test fails; it never skips. P11AUDIT_TEST_FORCE_RLIMIT=1 in the
//! environment of `cargo test` forces the fallback.
//!
//! Each scenario runs in a child process (the test binary re-executed with
//! P11AUDIT_TEST_ROLE), because the shim reads its configuration at C_Initialize and SoftHSM can
//! be loaded only once per process. The child drives the shim through `dlopen` and the raw
//! function table so that it sees exact return values and its own output buffers.

mod common;

use common::*;
use cryptoki_sys as ck;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROLE_VAR: &str = "P11AUDIT_TEST_ROLE";
const CHILD_CLOSED: &str = "child_disk_full_closed";
const CHILD_OPEN: &str = "child_disk_full_open";
/// How the child makes writing fail: "tmpfs" (fill DISK_FILLER) or "rlimit".
const DISK_VAR: &str = "P11AUDIT_TEST_DISK";
const FILLER_VAR: &str = "P11AUDIT_TEST_FILLER";
const FORCE_RLIMIT_VAR: &str = "P11AUDIT_TEST_FORCE_RLIMIT";

/// Informational records queued before each call that must fail while the disk is full.
///
/// On tmpfs (as on any block filesystem) a full filesystem still accepts writes into the
/// unused tail of the log's last page: up to page size - 1 bytes. Records that may wait are
/// written together with the next record that must be written, in one `write`; queueing this
/// many (each well over 128 bytes: timestamp, host, exe path, session, token) makes that write
/// larger than a page, so it cannot fit in the slack and fails deterministically. The parent
/// checks the premise against the real record sizes.
const PADS: usize = 48;

const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const REFUSED_LABEL: &[u8] = b"made-while-disk-full";
const CONTROL_LABEL: &[u8] = b"made-before-disk-full";
const SIG_PATTERN: u8 = 0xa5;

// ---- raw driver (child side) ----------------------------------------------------------------

type GetFunctionList = unsafe extern "C" fn(*mut *mut ck::CK_FUNCTION_LIST) -> ck::CK_RV;

/// The shim, loaded with dlopen as an application would.
struct Shim {
    f: &'static ck::CK_FUNCTION_LIST,
}

/// Calls a function of the table. Every pointer passed is to a live local of the caller.
macro_rules! call {
    ($shim:expr, $name:ident ( $($arg:expr),* $(,)? )) => {
        // SAFETY: the table is the shim's static; arguments point to live locals.
        unsafe { ($shim.f.$name.expect(stringify!($name)))($($arg),*) }
    };
}

fn attr<T>(type_: ck::CK_ATTRIBUTE_TYPE, value: &T) -> ck::CK_ATTRIBUTE {
    ck::CK_ATTRIBUTE {
        type_,
        pValue: value as *const T as *mut _,
        ulValueLen: std::mem::size_of::<T>() as ck::CK_ULONG,
    }
}

fn attr_bytes(type_: ck::CK_ATTRIBUTE_TYPE, value: &[u8]) -> ck::CK_ATTRIBUTE {
    ck::CK_ATTRIBUTE {
        type_,
        pValue: value.as_ptr() as *mut _,
        ulValueLen: value.len() as ck::CK_ULONG,
    }
}

fn mech(m: ck::CK_MECHANISM_TYPE) -> ck::CK_MECHANISM {
    ck::CK_MECHANISM {
        mechanism: m,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    }
}

#[track_caller]
fn ok(rv: ck::CK_RV, what: &str) {
    assert_eq!(rv, ck::CKR_OK, "{what} returned {rv:#x}");
}

const FALSE: ck::CK_BBOOL = ck::CK_FALSE as ck::CK_BBOOL;
const TRUE: ck::CK_BBOOL = ck::CK_TRUE as ck::CK_BBOOL;

impl Shim {
    fn load() -> Shim {
        let lib = shim_library();
        let c_path = CString::new(lib.as_os_str().as_bytes()).expect("no NUL in path");
        // SAFETY: a valid C string; never closed.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen {} failed", lib.display());
        // SAFETY: a live handle and a valid C string.
        let sym = unsafe { libc::dlsym(handle, c"C_GetFunctionList".as_ptr()) };
        assert!(!sym.is_null(), "no C_GetFunctionList");
        // SAFETY: C_GetFunctionList has this signature.
        let get = unsafe { std::mem::transmute::<*mut libc::c_void, GetFunctionList>(sym) };
        let mut list = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        ok(unsafe { get(&mut list) }, "C_GetFunctionList");
        // SAFETY: the shim's static table.
        Shim {
            f: unsafe { &*list },
        }
    }

    fn initialize(&self) {
        let mut args = ck::CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: ck::CKF_OS_LOCKING_OK,
            pReserved: std::ptr::null_mut(),
        };
        ok(
            call!(self, C_Initialize(&mut args as *mut _ as *mut _)),
            "C_Initialize",
        );
    }

    fn first_slot(&self) -> ck::CK_SLOT_ID {
        let mut n: ck::CK_ULONG = 0;
        ok(
            call!(self, C_GetSlotList(TRUE, std::ptr::null_mut(), &mut n)),
            "C_GetSlotList",
        );
        let mut slots = vec![0; n as usize];
        ok(
            call!(self, C_GetSlotList(TRUE, slots.as_mut_ptr(), &mut n)),
            "C_GetSlotList",
        );
        *slots.first().expect("a slot with a token")
    }

    fn open_rw(&self, slot: ck::CK_SLOT_ID) -> ck::CK_SESSION_HANDLE {
        let mut s = 0;
        ok(
            call!(
                self,
                C_OpenSession(
                    slot,
                    ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION,
                    std::ptr::null_mut(),
                    None,
                    &mut s
                )
            ),
            "C_OpenSession",
        );
        s
    }

    /// (rv, state)
    fn session_state(&self, s: ck::CK_SESSION_HANDLE) -> (ck::CK_RV, ck::CK_STATE) {
        // SAFETY: plain data.
        let mut info: ck::CK_SESSION_INFO = unsafe { std::mem::zeroed() };
        let rv = call!(self, C_GetSessionInfo(s, &mut info));
        (rv, info.state)
    }

    /// Queues PADS informational records (see PADS). Returns how many records that is.
    fn pad(&self, s: ck::CK_SESSION_HANDLE) -> u64 {
        for _ in 0..PADS {
            ok(self.session_state(s).0, "C_GetSessionInfo (pad)");
        }
        PADS as u64
    }

    /// A P-256 key pair as public session objects: usable without login.
    fn generate_ec(
        &self,
        s: ck::CK_SESSION_HANDLE,
    ) -> (ck::CK_OBJECT_HANDLE, ck::CK_OBJECT_HANDLE) {
        let mut m = mech(ck::CKM_EC_KEY_PAIR_GEN);
        let mut public = [
            attr(ck::CKA_TOKEN, &FALSE),
            attr_bytes(ck::CKA_EC_PARAMS, &P256_OID),
            attr(ck::CKA_VERIFY, &TRUE),
        ];
        let mut private = [
            attr(ck::CKA_TOKEN, &FALSE),
            attr(ck::CKA_PRIVATE, &FALSE),
            attr(ck::CKA_SENSITIVE, &TRUE),
            attr(ck::CKA_SIGN, &TRUE),
        ];
        let (mut pub_key, mut priv_key) = (0, 0);
        ok(
            call!(
                self,
                C_GenerateKeyPair(
                    s,
                    &mut m,
                    public.as_mut_ptr(),
                    public.len() as _,
                    private.as_mut_ptr(),
                    private.len() as _,
                    &mut pub_key,
                    &mut priv_key
                )
            ),
            "C_GenerateKeyPair",
        );
        (pub_key, priv_key)
    }

    /// An AES-256 public session key labelled `label`: (rv, handle).
    fn generate_aes(
        &self,
        s: ck::CK_SESSION_HANDLE,
        label: &[u8],
    ) -> (ck::CK_RV, ck::CK_OBJECT_HANDLE) {
        let mut m = mech(ck::CKM_AES_KEY_GEN);
        let len: ck::CK_ULONG = 32;
        let mut template = [
            attr(ck::CKA_TOKEN, &FALSE),
            attr(ck::CKA_PRIVATE, &FALSE),
            attr(ck::CKA_ENCRYPT, &TRUE),
            attr(ck::CKA_VALUE_LEN, &len),
            attr_bytes(ck::CKA_LABEL, label),
        ];
        let mut key = 0;
        let rv = call!(
            self,
            C_GenerateKey(
                s,
                &mut m,
                template.as_mut_ptr(),
                template.len() as _,
                &mut key
            )
        );
        (rv, key)
    }

    fn login(&self, s: ck::CK_SESSION_HANDLE) -> ck::CK_RV {
        call!(
            self,
            C_Login(
                s,
                ck::CKU_USER,
                USER_PIN.as_ptr() as *mut _,
                USER_PIN.len() as _
            )
        )
    }

    fn sign_init(&self, s: ck::CK_SESSION_HANDLE, key: ck::CK_OBJECT_HANDLE) -> ck::CK_RV {
        let mut m = mech(ck::CKM_ECDSA);
        call!(self, C_SignInit(s, &mut m, key))
    }

    /// C_Sign into `out` (None: length query): (rv, reported length).
    fn sign(
        &self,
        s: ck::CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> (ck::CK_RV, ck::CK_ULONG) {
        let (ptr, mut len) = match out {
            Some(buf) => (buf.as_mut_ptr(), buf.len() as ck::CK_ULONG),
            None => (std::ptr::null_mut(), 0),
        };
        let rv = call!(
            self,
            C_Sign(s, data.as_ptr() as *mut _, data.len() as _, ptr, &mut len)
        );
        (rv, len)
    }

    /// SignInit + length query + Sign.
    fn sign_all(
        &self,
        s: ck::CK_SESSION_HANDLE,
        key: ck::CK_OBJECT_HANDLE,
        data: &[u8],
    ) -> Vec<u8> {
        ok(self.sign_init(s, key), "C_SignInit");
        let (rv, len) = self.sign(s, data, None);
        ok(rv, "C_Sign (length)");
        let mut sig = vec![0u8; len as usize];
        let (rv, len) = self.sign(s, data, Some(&mut sig));
        ok(rv, "C_Sign");
        sig.truncate(len as usize);
        sig
    }

    fn verify(
        &self,
        s: ck::CK_SESSION_HANDLE,
        key: ck::CK_OBJECT_HANDLE,
        data: &[u8],
        sig: &[u8],
    ) -> ck::CK_RV {
        let mut m = mech(ck::CKM_ECDSA);
        ok(call!(self, C_VerifyInit(s, &mut m, key)), "C_VerifyInit");
        call!(
            self,
            C_Verify(
                s,
                data.as_ptr() as *mut _,
                data.len() as _,
                sig.as_ptr() as *mut _,
                sig.len() as _
            )
        )
    }

    /// How many objects carry `label`.
    fn count_labelled(&self, s: ck::CK_SESSION_HANDLE, label: &[u8]) -> usize {
        let mut template = [attr_bytes(ck::CKA_LABEL, label)];
        ok(
            call!(self, C_FindObjectsInit(s, template.as_mut_ptr(), 1)),
            "C_FindObjectsInit",
        );
        let mut found = [0 as ck::CK_OBJECT_HANDLE; 16];
        let mut n: ck::CK_ULONG = 0;
        ok(
            call!(
                self,
                C_FindObjects(s, found.as_mut_ptr(), found.len() as _, &mut n)
            ),
            "C_FindObjects",
        );
        ok(call!(self, C_FindObjectsFinal(s)), "C_FindObjectsFinal");
        n as usize
    }
}

// ---- making writes fail (child side) --------------------------------------------------------

enum Disk {
    /// Fill the tmpfs holding the log with this file; delete it to free the space.
    Tmpfs { filler: PathBuf },
    /// Lower RLIMIT_FSIZE to the log's size; restore `saved` to lift it.
    Rlimit { saved: Option<libc::rlimit> },
}

impl Disk {
    fn from_env() -> Disk {
        match std::env::var(DISK_VAR).as_deref() {
            Ok("tmpfs") => Disk::Tmpfs {
                filler: std::env::var_os(FILLER_VAR)
                    .map(PathBuf::from)
                    .expect("P11AUDIT_TEST_FILLER"),
            },
            Ok("rlimit") => Disk::Rlimit { saved: None },
            other => panic!("{DISK_VAR} is {other:?}"),
        }
    }

    fn fill(&mut self, log_len: u64) {
        match self {
            Disk::Tmpfs { filler } => {
                let mut f = fs::File::create(&*filler).expect("create filler");
                let chunk = [0u8; 4096];
                loop {
                    match f.write(&chunk) {
                        Ok(0) => panic!("filler write returned 0"),
                        Ok(_) => continue,
                        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                        Err(e) => panic!("filling the tmpfs: {e}"),
                    }
                }
                let dir = CString::new(filler.parent().unwrap().as_os_str().as_bytes()).unwrap();
                // SAFETY: plain data, valid path and out-pointer.
                let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
                assert_eq!(unsafe { libc::statvfs(dir.as_ptr(), &mut st) }, 0);
                assert_eq!(st.f_bavail, 0, "the tmpfs still has free blocks");
            }
            Disk::Rlimit { saved } => {
                // SAFETY: plain data and valid pointers throughout.
                unsafe {
                    let mut old: libc::rlimit = std::mem::zeroed();
                    assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut old), 0);
                    // Without this, the first write past the limit kills the process.
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let low = libc::rlimit {
                        rlim_cur: log_len as libc::rlim_t,
                        rlim_max: old.rlim_max,
                    };
                    assert_eq!(
                        libc::setrlimit(libc::RLIMIT_FSIZE, &low),
                        0,
                        "neither a tmpfs mount nor RLIMIT_FSIZE can make writes fail here: {}",
                        std::io::Error::last_os_error()
                    );
                    *saved = Some(old);
                }
            }
        }
    }

    fn free(&mut self) {
        match self {
            Disk::Tmpfs { filler } => fs::remove_file(&*filler).expect("remove filler"),
            Disk::Rlimit { saved } => {
                let old = saved.take().expect("fill before free");
                // SAFETY: a valid rlimit.
                assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &old) }, 0);
            }
        }
    }
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).expect("stat log").len()
}

fn line_count(p: &Path) -> usize {
    fs::read(p)
        .expect("read log")
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

// ---- the scenario (child side) --------------------------------------------------------------

fn disk_full_scenario(open: bool) {
    let log = PathBuf::from(std::env::var_os("P11AUDIT_LOG").expect("P11AUDIT_LOG"));
    let shim = Shim::load();
    shim.initialize();
    let slot = shim.first_slot();
    let s = shim.open_rw(slot);
    let (pub_key, priv_key) = shim.generate_ec(s);
    let data = [0x5au8; 32];

    // Some work while the log is writable.
    let sig = shim.sign_all(s, priv_key, &data);
    assert_eq!(sig.len(), 64);
    ok(shim.verify(s, pub_key, &data, &sig), "C_Verify");
    let (rv, _) = shim.generate_aes(s, CONTROL_LABEL);
    ok(rv, "C_GenerateKey (control)");
    // The operation whose result comes due while the disk is full.
    ok(shim.sign_init(s, priv_key), "C_SignInit");
    let (rv, need) = shim.sign(s, &data, None);
    ok(rv, "C_Sign (length)");
    assert_eq!(need, 64);
    let (rv, state) = shim.session_state(s);
    ok(rv, "C_GetSessionInfo");
    assert_eq!(state, ck::CKS_RW_PUBLIC_SESSION);

    // Fill the disk. From here on no append can succeed (see PADS).
    let mut disk = Disk::from_env();
    let lines_at_fill = line_count(&log);
    let size_at_fill = file_len(&log);
    disk.fill(size_at_fill);
    let unchanged = |what: &str| {
        assert_eq!(
            file_len(&log),
            size_at_fill,
            "the log changed while the disk was full ({what})"
        )
    };
    // Records this process produced while the disk was full; all must be counted as lost.
    let mut lost = 0u64;

    // 1. An acting call: C_GenerateKey.
    lost += shim.pad(s);
    let (rv, key) = shim.generate_aes(s, REFUSED_LABEL);
    lost += 1; // its intent
    unchanged("C_GenerateKey");
    if open {
        ok(rv, "C_GenerateKey with P11AUDIT_ON_FAILURE=open");
        assert_ne!(key, 0);
    } else {
        assert_eq!(
            rv,
            ck::CKR_GENERAL_ERROR,
            "C_GenerateKey must be refused when its intent cannot be written"
        );
        assert_eq!(key, 0, "a refused C_GenerateKey returned a handle");
    }

    // 2. An acting call that would succeed: C_Login with the right PIN.
    lost += shim.pad(s);
    let rv = shim.login(s);
    lost += 1; // its intent
    unchanged("C_Login");
    let (rv_info, state) = shim.session_state(s);
    lost += 1; // its (queued) outcome
    ok(rv_info, "C_GetSessionInfo");
    if open {
        ok(rv, "C_Login with P11AUDIT_ON_FAILURE=open");
        assert_eq!(state, ck::CKS_RW_USER_FUNCTIONS);
    } else {
        assert_eq!(
            rv,
            ck::CKR_GENERAL_ERROR,
            "C_Login must be refused when its intent cannot be written"
        );
        assert_eq!(
            state,
            ck::CKS_RW_PUBLIC_SESSION,
            "the refused C_Login reached SoftHSM: the session is logged in"
        );
    }

    // 3. A result call: C_Sign on the operation started before the disk filled.
    lost += shim.pad(s);
    let mut sig_full = [SIG_PATTERN; 64];
    let (rv, len) = shim.sign(s, &data, Some(&mut sig_full));
    lost += 1; // its outcome
    unchanged("C_Sign");
    if open {
        ok(rv, "C_Sign with P11AUDIT_ON_FAILURE=open");
        assert_eq!(len, 64);
    } else {
        assert_eq!(
            rv,
            ck::CKR_GENERAL_ERROR,
            "C_Sign must fail when its outcome cannot be written"
        );
        assert!(
            sig_full.iter().all(|&b| b == 0),
            "C_Sign handed out a signature it could not record: {}",
            hex(&sig_full)
        );
    }

    // Free the space and go on.
    disk.free();
    println!("LINES_AT_FILL={lines_at_fill}");
    println!("LOST_AT_LEAST={lost}");

    let refused_found = shim.count_labelled(s, REFUSED_LABEL);
    if open {
        assert_eq!(refused_found, 1, "the fail-open C_GenerateKey made no key");
        ok(
            shim.verify(s, pub_key, &data, &sig_full),
            "C_Verify of the signature made while the disk was full",
        );
    } else {
        assert_eq!(
            refused_found, 0,
            "the refused C_GenerateKey reached SoftHSM: its key exists"
        );
    }
    assert_eq!(shim.count_labelled(s, CONTROL_LABEL), 1, "control key");
    let (rv, state) = shim.session_state(s);
    ok(rv, "C_GetSessionInfo");
    let want = if open {
        ck::CKS_RW_USER_FUNCTIONS
    } else {
        ck::CKS_RW_PUBLIC_SESSION
    };
    assert_eq!(state, want, "session state after recovery");
    let sig = shim.sign_all(s, priv_key, &data);
    ok(
        shim.verify(s, pub_key, &data, &sig),
        "C_Verify after recovery",
    );
    ok(call!(shim, C_CloseSession(s)), "C_CloseSession");
    ok(call!(shim, C_Finalize(std::ptr::null_mut())), "C_Finalize");
}

#[test]
fn child_disk_full_closed() {
    if std::env::var(ROLE_VAR).as_deref() == Ok(CHILD_CLOSED) {
        disk_full_scenario(false);
    }
}

#[test]
fn child_disk_full_open() {
    if std::env::var(ROLE_VAR).as_deref() == Ok(CHILD_OPEN) {
        disk_full_scenario(true);
    }
}

// ---- the parent -----------------------------------------------------------------------------

/// A 64 KiB tmpfs, unmounted on drop (also when the test fails).
struct SmallTmpfs {
    dir: PathBuf,
}

impl SmallTmpfs {
    fn mount(dir: &Path) -> Result<SmallTmpfs, std::io::Error> {
        fs::create_dir_all(dir)?;
        let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=64k,mode=0700".as_ptr() as *const libc::c_void,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SmallTmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            eprintln!("umount {}: {e}; detaching", self.dir.display());
            // SAFETY: a valid C string.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn value_after<'a>(stdout: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    // libtest may print "test NAME ... " on the same line before the child's first output.
    stdout
        .lines()
        .find_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..]))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the child printed no {key}\n{stdout}"))
}

fn disk_full(open: bool) {
    let fx = Fixture::new();
    let force_rlimit = std::env::var_os(FORCE_RLIMIT_VAR).is_some_and(|v| v == "1");
    let small_dir = fx.dir.path().join("small");
    // Declared after `fx`, so it is unmounted before the temporary directory is removed.
    let mounted = if force_rlimit {
        Err(std::io::Error::other(
            "forced by P11AUDIT_TEST_FORCE_RLIMIT",
        ))
    } else {
        SmallTmpfs::mount(&small_dir)
    };
    let (_tmpfs, method, log) = match mounted {
        Ok(m) => {
            let log = m.dir.join("audit.jsonl");
            (Some(m), "tmpfs", log)
        }
        Err(e) => {
            eprintln!("cannot mount a tmpfs ({e}); making writes fail with RLIMIT_FSIZE instead");
            (None, "rlimit", fx.log.clone())
        }
    };
    let role = if open { CHILD_OPEN } else { CHILD_CLOSED };

    let mut env = fx.env();
    env.retain(|(k, _)| *k != "P11AUDIT_LOG");
    env.push(("P11AUDIT_LOG", log.clone().into()));
    env.push((DISK_VAR, method.into()));
    env.push((FILLER_VAR, small_dir.join("filler").into()));
    if open {
        env.push(("P11AUDIT_ON_FAILURE", "open".into()));
    }
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([role, "--exact", "--nocapture", "--test-threads=1"]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("P11AUDIT_") {
            cmd.env_remove(&name);
        }
    }
    cmd.env(ROLE_VAR, role);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let started = std::time::Instant::now();
    let run = run_with_timeout(cmd, fx.dir.path(), role);
    eprintln!("{role} ({method}): child took {:?}", started.elapsed());
    let dump = format!(
        "status {}\n--- stdout ---\n{}--- stderr ---\n{}",
        run.status, run.stdout, run.stderr
    );
    assert!(run.status.success(), "{role} failed\n{dump}");
    assert!(
        run.stderr.lines().any(|l| l.starts_with("p11audit:")),
        "the shim did not say on stderr that the log cannot be written\n{dump}"
    );
    let lines_at_fill: usize = value_after(&run.stdout, "LINES_AT_FILL").parse().unwrap();
    let lost_at_least: u64 = value_after(&run.stdout, "LOST_AT_LEAST").parse().unwrap();

    let verify = Command::new(p11audit_bin())
        .arg("verify")
        .arg("--key-file")
        .arg(&fx.key)
        .arg(&log)
        .output()
        .expect("run p11audit verify");
    assert_eq!(
        verify.status.code(),
        Some(0),
        "the chain does not verify after the gap\n{}",
        output_text(&verify)
    );

    let text = fs::read_to_string(&log).expect("read log");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert!(
        records.len() > lines_at_fill,
        "nothing written after recovery"
    );

    // The first record written after the space came back is the gap.
    let gap = &records[lines_at_fill];
    assert_eq!(
        gap["ev"], "gap",
        "record {lines_at_fill} (the first after recovery) is not a gap: {gap}"
    );
    let lost = gap["lost"].as_u64().expect("gap has a numeric lost");
    assert!(
        lost >= lost_at_least,
        "gap says {lost} records lost; the child produced at least {lost_at_least} while the disk was full"
    );
    let since = gap["since"].as_str().expect("gap has a since timestamp");
    let last_before = records[lines_at_fill - 1]["ts"].as_str().unwrap();
    let gap_ts = gap["ts"].as_str().unwrap();
    assert!(
        since.len() == last_before.len() && since.ends_with('Z'),
        "since {since:?} is not an RFC 3339 timestamp like {last_before:?}"
    );
    assert!(
        last_before <= since && since <= gap_ts,
        "since {since} should lie between the last record before the fill ({last_before}) and the gap ({gap_ts})"
    );
    let gaps = records.iter().filter(|r| r["ev"] == "gap").count();
    assert_eq!(gaps, 1, "one outage, one gap record");

    // The premise of PADS: the queued records together exceed a page.
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let smallest_info = text
        .lines()
        .filter(|l| l.contains(r#""fn":"C_GetSessionInfo""#))
        .map(str::len)
        .min()
        .expect("C_GetSessionInfo records after recovery");
    assert!(
        smallest_info * PADS > page,
        "{PADS} records of {smallest_info} bytes do not exceed a {page}-byte page"
    );

    let count = |ev: &str, f: &str| {
        records
            .iter()
            .filter(|r| r["ev"] == ev && r["fn"] == f)
            .count()
    };
    let returned_signs = records
        .iter()
        .filter(|r| r["fn"] == "C_Sign" && r["out"] == "returned")
        .count();
    if open {
        // Before the fill, after recovery; the one in between was handed out unrecorded.
        assert_eq!(returned_signs, 2);
    } else {
        // Nothing of the refused calls is in the log: they did not happen.
        assert_eq!(
            count("intent", "C_Login"),
            0,
            "a refused C_Login was logged"
        );
        assert_eq!(
            count("outcome", "C_Login"),
            0,
            "a refused C_Login was logged"
        );
        assert_eq!(
            count("intent", "C_GenerateKey"),
            1,
            "only the control key's C_GenerateKey is in the log"
        );
        assert_eq!(
            returned_signs, 2,
            "only the two signatures handed out are logged"
        );
    }
}

#[test]
fn disk_full_fails_closed() {
    disk_full(false);
}

#[test]
fn disk_full_fail_open_reports_gap() {
    disk_full(true);
}
