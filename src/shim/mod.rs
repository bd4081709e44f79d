//! The C side: exported entry points, the per-call audit flow, and the function tables.
//! This is the only place with pointers from the application.

pub(crate) mod args;
mod call;
pub(crate) mod context;
mod detail;
mod error;
mod fork;
mod functions;
mod lifecycle;
mod output;
pub(crate) mod provider;

pub use call::Kind;
pub use functions::FUNCTIONS;

use crate::config::{Config, PeerMode};
use crate::format::record::{PeerIdentity, ProcessIdentity};
use crate::os::lock::Mutex;
use crate::shim::context::CallContext;
use crate::shim::error::{guard, ShimError};
use crate::shim::provider::{Provider, ProviderError};
use crate::writer::auditor::Auditor;
use cryptoki_sys as ck;
use std::sync::OnceLock;

/// Everything a call needs once p11audit is configured. Created by the first successful
/// `C_Initialize` and kept for the life of the process (the provider is never unloaded).
pub(crate) struct Runtime {
    pub(crate) provider: &'static Provider,
    pub(crate) auditor: Auditor,
    host: std::sync::Arc<str>,
    exe: crate::format::record::ExePath,
    uid: u32,
    login: crate::os::identity::LoginId,
    peer: Option<std::sync::Arc<PeerIdentity>>,
    pub(crate) context: Mutex<CallContext>,
    /// The pid whose `attach` is the last one in the log without a `close` after it (0: none).
    /// A pid, not a flag: a forked child is a new process and attaches on its own.
    pub(crate) attached_pid: std::sync::atomic::AtomicU32,
}

impl Runtime {
    /// Who is calling, with the current pid (which changes in a forked child).
    pub(crate) fn who(&self) -> ProcessIdentity {
        ProcessIdentity {
            host: self.host.clone(),
            pid: crate::os::process::current_pid(),
            uid: self.uid,
            exe: self.exe.clone(),
            auid: self.login.auid,
            ses: self.login.session,
            peer: self.peer.clone(),
        }
    }
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serializes the creation of RUNTIME (OnceLock has no stable fallible init).
static RUNTIME_INIT: Mutex<()> = Mutex::new(());

/// The real module, loaded once (by the first C_GetInterface* or C_Initialize that finds
/// P11AUDIT_MODULE) and never unloaded.
static PROVIDER: OnceLock<Provider> = OnceLock::new();

fn provider_or_load(path: &std::path::Path) -> Result<&'static Provider, ProviderError> {
    if let Some(p) = PROVIDER.get() {
        return Ok(p);
    }
    let loaded = Provider::load(path, C_GetFunctionList as *const () as usize)?;
    Ok(PROVIDER.get_or_init(|| loaded))
}

/// The provider for interface negotiation, which applications do before C_Initialize.
/// None if P11AUDIT_MODULE is unset or unusable: C_Initialize reports that.
fn provider_for_interfaces() -> Option<&'static Provider> {
    if let Some(p) = PROVIDER.get() {
        return Some(p);
    }
    let _guard = RUNTIME_INIT.lock();
    let module = Config::module(&config_sources()).ok()?;
    provider_or_load(&module).ok()
}

/// Where the configuration may come from in this process.
fn config_sources() -> crate::config::Sources {
    // SAFETY: getauxval has no preconditions; AT_SECURE is set for setuid/setgid (and
    // capability-gaining) executions, the secure_getenv condition.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
    crate::config::Sources {
        secure,
        secure_file: crate::config::SECURE_CONFIG_FILE.into(),
    }
}

/// The client connection on stdin, read once, at the first call into the library: for
/// `p11-kit remote`, the `C_GetFunctionList` that follows loading the module, before the RPC
/// handshake and before the provider is loaded. A serving process holds `CAP_SYS_PTRACE` only to
/// read its client's `exe`, and gives it up right here, so that neither p11-kit's handling of
/// the client's messages nor the provider ever runs with it (waiting for the client's
/// `C_Initialize` would let the client choose how long the capability is held, or never send
/// it). The kernel's credentials cannot change for a connection, and the client may exit before
/// the last record is written.
fn stdin_client() -> &'static Result<crate::os::identity::Peer, crate::os::identity::NoPeer> {
    static STDIN_CLIENT: OnceLock<Result<crate::os::identity::Peer, crate::os::identity::NoPeer>> =
        OnceLock::new();
    STDIN_CLIENT.get_or_init(|| {
        let peer = crate::os::identity::stdin_peer();
        if peer.is_ok() {
            if let Err(e) = crate::os::identity::drop_ptrace_capability() {
                // The client is read; keeping the capability would be a risk, not a failure to
                // audit.
                crate::stderr_line(&format!("p11audit: cannot give up CAP_SYS_PTRACE: {e}"));
            }
        }
        peer
    })
}

/// The client this process serves, per `P11AUDIT_PEER` (read by `stdin_client`).
fn client_peer(mode: PeerMode) -> Result<Option<std::sync::Arc<PeerIdentity>>, ShimError> {
    let peer = match (mode, stdin_client()) {
        (PeerMode::Off, _) | (PeerMode::Auto, Err(_)) => return Ok(None),
        (PeerMode::Stdin, Err(e)) => return Err(e.clone().into()),
        (_, Ok(peer)) => peer,
    };
    if let Some(why) = &peer.exe_error {
        crate::stderr_line(&format!(
            "p11audit: peer pid {} (uid {}): {why}",
            peer.pid, peer.uid
        ));
    }
    Ok(Some(std::sync::Arc::new(PeerIdentity {
        pid: peer.pid,
        uid: peer.uid,
        gid: peer.gid,
        exe: peer
            .exe
            .as_deref()
            .map(crate::format::record::Bytes::from_slice),
        auid: peer.login.auid,
        session: peer.login.session,
    })))
}

pub(crate) fn runtime() -> Option<&'static Runtime> {
    RUNTIME.get()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The runtime, created from the environment on first use. Errors are one line for stderr.
pub(crate) fn runtime_or_init() -> Result<&'static Runtime, ShimError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _guard = RUNTIME_INIT.lock();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let config = Config::load(&config_sources())?;
    let provider = provider_or_load(&config.module)?;
    // SAFETY: getuid cannot fail and has no preconditions.
    let uid = unsafe { libc::getuid() };
    // Its bytes, not `display()`: a path that is not UTF-8 is recorded as hex (FORMAT.md §3).
    let exe = std::env::current_exe()
        .map(|p| crate::format::record::ExePath::from_path(&p))
        .unwrap_or_else(|_| "unknown".into());
    let login = crate::os::identity::LoginId::of_self();
    let who = ProcessIdentity {
        host: hostname().into(),
        pid: crate::os::process::current_pid(),
        uid,
        exe,
        auid: login.auid,
        ses: login.session,
        peer: client_peer(config.peer)?,
    };
    let auditor = Auditor::open(&config.log, &who, config.on_failure)?;
    let rt = Runtime {
        provider,
        auditor,
        host: who.host,
        exe: who.exe,
        uid,
        login,
        peer: who.peer,
        context: Mutex::new(CallContext::default()),
        attached_pid: std::sync::atomic::AtomicU32::new(0),
    };
    let serving = rt.peer.is_some();
    let _ = RUNTIME.set(rt);
    if serving {
        // p11-kit remote (0.24, 0.25) leaves SIGPIPE at its default. A client that is gone
        // before its reply is written (killed mid-call) would then kill this process in that
        // write, with the call's outcome still waiting and no `close`. Ignored, the write fails,
        // p11-kit remote returns from its loop and exits, and flush_at_exit writes both.
        crate::os::process::ignore_sigpipe_if_default();
    }
    fork::install_fork_handlers();
    flush_early_calls(RUNTIME.get().expect("just set"));
    // Waiting records reach the file at normal exit even without C_Finalize.
    // SAFETY: flush_at_exit is a plain extern "C" fn that never unwinds.
    unsafe { libc::atexit(flush_at_exit) };
    Ok(RUNTIME.get().expect("just set"))
}

extern "C" fn flush_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(rt) = RUNTIME.get() {
            // Inits and length queries no later outcome told go out on their own, before
            // anything else.
            let held = rt.context.lock().release_all_held();
            rt.auditor.wait_each(held);
            if rt.peer.is_some()
                && rt.attached_pid.load(std::sync::atomic::Ordering::Relaxed)
                    == crate::os::process::current_pid()
            {
                // A process serving one client connection stops using the module when the
                // connection ends: p11-kit remote then exits without C_Finalize (the client
                // was killed, or never finalized). Its `close` says so, after everything that
                // was waiting.
                let mut close = call::bare_record(rt, crate::format::record::Event::Close, None);
                close.detail.note = Some("the client's connection ended without C_Finalize".into());
                if rt.auditor.write(&close).is_ok() {
                    return;
                }
            }
            let rec = call::bare_record(rt, crate::format::record::Event::Outcome, None);
            let _ = rt.auditor.flush(&rec);
        }
    });
}

/// The table handed to PKCS#11 2.40 callers. A 2.40 caller reads only the
/// `CK_FUNCTION_LIST` prefix of this 3.2-sized table (same layout, C-style prefix).
static FUNCTION_LIST_240: ck::CK_FUNCTION_LIST_3_2 =
    functions::function_table::<true>(ck::CK_VERSION {
        major: 2,
        minor: 40,
    });

/// # Safety
/// `list` must be NULL or a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut ck::CK_FUNCTION_LIST) -> ck::CK_RV {
    guard(|| {
        stdin_client();
        let rv = if list.is_null() {
            ck::CKR_ARGUMENTS_BAD
        } else {
            let table =
                &FUNCTION_LIST_240 as *const ck::CK_FUNCTION_LIST_3_2 as *mut ck::CK_FUNCTION_LIST;
            // SAFETY: checked non-NULL; the caller provides a writable pointer.
            unsafe { list.write_unaligned(table) };
            ck::CKR_OK
        };
        log_informational("C_GetFunctionList", rv);
        rv
    })
}

/// A static CK_INTERFACE (it holds pointers to static data only).
struct StaticInterface(ck::CK_INTERFACE);
// SAFETY: the pointers point to immutable statics.
unsafe impl Sync for StaticInterface {}
// SAFETY: as above; the pointed-to data is never freed or changed.
unsafe impl Send for StaticInterface {}

static FUNCTION_LIST_300: ck::CK_FUNCTION_LIST_3_2 =
    functions::function_table::<false>(ck::CK_VERSION { major: 3, minor: 0 });
static FUNCTION_LIST_320: ck::CK_FUNCTION_LIST_3_2 =
    functions::function_table::<false>(ck::CK_VERSION { major: 3, minor: 2 });

/// The interface name PKCS#11 3.0 §5.2 defines for the standard function list.
const PKCS11_INTERFACE_NAME: &[u8] = b"PKCS 11\0";

/// Our table for an interface version the provider offers: each is backed by a p11audit table
/// of the same version (a 3.1 provider gets the 3.0-shaped table, which is all 3.1 defines).
fn table_for(major: u8, minor: u8) -> &'static ck::CK_FUNCTION_LIST_3_2 {
    match (major, minor) {
        (0..=2, _) => &FUNCTION_LIST_240,
        (3, 0..=1) => &FUNCTION_LIST_300,
        _ => &FUNCTION_LIST_320,
    }
}

/// The interfaces p11audit offers: exactly the provider's "PKCS 11" interfaces, with its flags,
/// each backed by our table of the same version. Vendor interfaces are never offered: their
/// functions would bypass the audit. Before a provider can be loaded, just 2.40.
fn interfaces() -> &'static [StaticInterface] {
    static FROM_PROVIDER: OnceLock<Vec<StaticInterface>> = OnceLock::new();
    static FALLBACK: OnceLock<Vec<StaticInterface>> = OnceLock::new();
    let make = |offered: &[crate::shim::provider::OfferedInterface]| -> Vec<StaticInterface> {
        offered
            .iter()
            .map(|i| {
                let table = table_for(i.major, i.minor);
                // Our own table's version must say what the provider's said.
                let table: &'static ck::CK_FUNCTION_LIST_3_2 =
                    if (table.version.major, table.version.minor) == (i.major, i.minor) {
                        table
                    } else {
                        Box::leak(Box::new(ck::CK_FUNCTION_LIST_3_2 {
                            version: ck::CK_VERSION {
                                major: i.major,
                                minor: i.minor,
                            },
                            ..*table
                        }))
                    };
                StaticInterface(ck::CK_INTERFACE {
                    pInterfaceName: PKCS11_INTERFACE_NAME.as_ptr() as *mut ck::CK_UTF8CHAR,
                    pFunctionList: table as *const ck::CK_FUNCTION_LIST_3_2
                        as *mut std::os::raw::c_void,
                    flags: i.flags,
                })
            })
            .collect()
    };
    match provider_for_interfaces() {
        Some(p) => FROM_PROVIDER.get_or_init(|| make(&p.interfaces)),
        None => FALLBACK.get_or_init(|| {
            make(&[crate::shim::provider::OfferedInterface {
                major: 2,
                minor: 40,
                flags: 0,
            }])
        }),
    }
}

/// A call the shim answered itself before it was configured (interface negotiation comes
/// before C_Initialize): kept until the auditor exists, then written.
struct EarlyCall {
    ts: crate::format::record::Timestamp,
    tid: u64,
    function: &'static str,
    rv: ck::CK_RV,
    interface: Option<String>,
}

/// At most this many early calls are kept; more are counted in the first record's note.
const MAX_EARLY_CALLS: usize = 32;
static EARLY_CALLS: Mutex<(Vec<EarlyCall>, u64)> = Mutex::new((Vec::new(), 0));

/// Records an informational call the shim answered itself (`interface`: the one chosen).
pub(crate) fn log_informational_with(
    function: &'static str,
    rv: ck::CK_RV,
    interface: Option<String>,
) {
    if let Some(rt) = runtime() {
        let mut rec = call::bare_record(rt, crate::format::record::Event::Outcome, Some(function));
        rec.detail.rv = Some(call::rv_named(rv));
        rec.detail.interface = interface;
        rt.auditor.wait(&rec);
        return;
    }
    let mut early = EARLY_CALLS.lock();
    if early.0.len() < MAX_EARLY_CALLS {
        let ts = crate::format::record::rfc3339_micros_now();
        early.0.push(EarlyCall {
            ts,
            tid: crate::os::process::current_tid(),
            function,
            rv,
            interface,
        });
    } else {
        early.1 += 1;
    }
}

pub(crate) fn log_informational(function: &'static str, rv: ck::CK_RV) {
    log_informational_with(function, rv, None);
}

/// Writes the early calls once the auditor exists (queued, they go with the next write).
fn flush_early_calls(rt: &Runtime) {
    let (calls, dropped) = std::mem::take(&mut *EARLY_CALLS.lock());
    for c in calls {
        let mut rec =
            call::bare_record(rt, crate::format::record::Event::Outcome, Some(c.function));
        rec.ts = c.ts;
        rec.tid = c.tid;
        rec.detail.rv = Some(call::rv_named(c.rv));
        rec.detail.interface = c.interface;
        rec.detail.note = Some("answered by p11audit before C_Initialize".into());
        rt.auditor.wait(&rec);
    }
    if dropped > 0 {
        let mut rec = call::bare_record(
            rt,
            crate::format::record::Event::Outcome,
            Some("C_GetInterface"),
        );
        rec.detail.note = Some(format!(
            "{dropped} more calls answered before C_Initialize were not kept"
        ));
        rt.auditor.wait(&rec);
    }
}

/// # Safety
/// `list` must be NULL or hold `*count` CK_INTERFACEs; `count` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(
    list: *mut ck::CK_INTERFACE,
    count: *mut ck::CK_ULONG,
) -> ck::CK_RV {
    guard(|| {
        stdin_client();
        let n = interfaces().len() as ck::CK_ULONG;
        let rv = if count.is_null() {
            ck::CKR_ARGUMENTS_BAD
        } else if list.is_null() {
            // SAFETY: checked non-NULL.
            unsafe { count.write_unaligned(n) };
            ck::CKR_OK
        } else {
            // SAFETY: checked non-NULL.
            let room = unsafe { count.read_unaligned() };
            // SAFETY: checked non-NULL.
            unsafe { count.write_unaligned(n) };
            if room < n {
                ck::CKR_BUFFER_TOO_SMALL
            } else {
                for (i, iface) in interfaces().iter().enumerate() {
                    // SAFETY: the caller gave room for `room` >= n entries.
                    unsafe { list.add(i).write_unaligned(iface.0) };
                }
                ck::CKR_OK
            }
        };
        log_informational("C_GetInterfaceList", rv);
        rv
    })
}

/// # Safety
/// `name` must be NULL or NUL-terminated; `version` NULL or readable; `interface` writable.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    name: *mut ck::CK_UTF8CHAR,
    version: *mut ck::CK_VERSION,
    interface: *mut *mut ck::CK_INTERFACE,
    flags: ck::CK_FLAGS,
) -> ck::CK_RV {
    guard(|| {
        stdin_client();
        let mut chosen = None;
        let rv = if interface.is_null() {
            ck::CKR_ARGUMENTS_BAD
        } else {
            // SAFETY: NULL or NUL-terminated per the caller.
            let wanted_name = (!name.is_null())
                .then(|| unsafe { std::ffi::CStr::from_ptr(name as *const std::ffi::c_char) });
            // SAFETY: NULL or readable per the caller.
            let wanted_version = unsafe { args::read(version) };
            let found = interfaces().iter().find(|iface| {
                // SAFETY: pInterfaceName and pFunctionList point to our statics.
                let iname = unsafe {
                    std::ffi::CStr::from_ptr(iface.0.pInterfaceName as *const std::ffi::c_char)
                };
                let iversion = unsafe { (iface.0.pFunctionList as *const ck::CK_VERSION).read() };
                wanted_name.is_none_or(|n| n == iname)
                    && wanted_version
                        .is_none_or(|v| (v.major, v.minor) == (iversion.major, iversion.minor))
                    && iface.0.flags & flags == flags
            });
            match found {
                Some(iface) => {
                    // SAFETY: pFunctionList points to one of our tables.
                    let v = unsafe { (iface.0.pFunctionList as *const ck::CK_VERSION).read() };
                    chosen = Some(format!("PKCS 11 {}.{}", v.major, v.minor));
                    // SAFETY: checked non-NULL.
                    unsafe {
                        interface.write_unaligned(
                            &iface.0 as *const ck::CK_INTERFACE as *mut ck::CK_INTERFACE,
                        )
                    };
                    ck::CKR_OK
                }
                None => ck::CKR_ARGUMENTS_BAD,
            }
        };
        log_informational_with("C_GetInterface", rv, chosen);
        rv
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_is_filled() {
        let t = &FUNCTION_LIST_240;
        assert_eq!((t.version.major, t.version.minor), (2, 40));
        // The table is a sequence of pointer-sized Option<fn> after the version.
        let words = (std::mem::size_of::<ck::CK_FUNCTION_LIST_3_2>() - 8) / 8;
        assert_eq!(
            words,
            FUNCTIONS.len(),
            "the list has one entry per table slot"
        );
        let base = t as *const ck::CK_FUNCTION_LIST_3_2 as *const u8;
        for (i, (name, _)) in FUNCTIONS.iter().enumerate() {
            // SAFETY: reading pointer-sized slots inside the static table.
            let slot = unsafe { (base.add(8 + i * 8) as *const usize).read() };
            assert_ne!(slot, 0, "slot {i} ({name}) is empty");
        }
    }
}
