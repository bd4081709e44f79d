//! Loading the real PKCS#11 module and holding a copy of its function table.
//!
//! A module that exports `C_GetInterfaceList` (PKCS#11 3.x) is asked for its "PKCS 11"
//! interfaces; each one's table is copied up to the size its version defines (2.x:
//! CK_FUNCTION_LIST, 3.0 and 3.1: CK_FUNCTION_LIST_3_0, 3.2 and later: CK_FUNCTION_LIST_3_2).
//! Calls are forwarded through the richest of them, or, when the application took p11audit's
//! 2.40 table, through the module's own 2.x table for the 2.x functions (`functions_2x`).
//! Vendor interfaces are ignored: they would hand the application functions p11audit cannot
//! audit.
//!
//! The module is opened with `RTLD_NOW | RTLD_LOCAL` so that its own references to `C_*`
//! symbols never bind to ours (OpenSC issue 2875), and it is never `dlclose`d: the host may
//! still hold pointers into it. Only as much of its table is copied as the version it declares
//! guarantees: a 2.40 table is `sizeof(CK_FUNCTION_LIST)` bytes, and some modules report a 3.x
//! version from `C_GetFunctionList` while filling only the 2.40 part.

use cryptoki_sys::{
    CKR_OK, CK_FLAGS, CK_FUNCTION_LIST, CK_FUNCTION_LIST_3_0, CK_FUNCTION_LIST_3_2,
    CK_FUNCTION_LIST_PTR, CK_INTERFACE, CK_RV, CK_ULONG, CK_VERSION,
};
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The real module: its path and the functions it provides. Entries the module does not
/// provide are `None`.
/// One "PKCS 11" interface the provider offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferedInterface {
    pub major: u8,
    pub minor: u8,
    pub flags: CK_FLAGS,
}

/// The real module: its path, the functions it provides (entries it does not provide are
/// `None`) and the standard interfaces it offers.
pub struct Provider {
    pub path: PathBuf,
    /// The richest table: what callers of p11audit's 3.x interfaces are forwarded through.
    pub functions: CK_FUNCTION_LIST_3_2,
    /// What callers of p11audit's 2.40 table are forwarded through: the 2.x functions of the
    /// table the module's own `C_GetFunctionList` gives, the 3.x ones of `functions`. Modules
    /// may answer differently through their tables: OpenSC's `C_GetInfo` says cryptokiVersion
    /// 2.20 through its 2.x table and 3.0 through its 3.0 one.
    pub functions_2x: CK_FUNCTION_LIST_3_2,
    /// Its "PKCS 11" interfaces, in its order; just 2.40 for a module without
    /// C_GetInterfaceList.
    pub interfaces: Vec<OfferedInterface>,
}

/// Bytes of a table of `version` that a module guarantees to have filled.
fn table_size(major: u8, minor: u8) -> usize {
    match (major, minor) {
        (0..=2, _) => std::mem::size_of::<CK_FUNCTION_LIST>(),
        (3, 0..=1) => std::mem::size_of::<CK_FUNCTION_LIST_3_0>(),
        _ => std::mem::size_of::<CK_FUNCTION_LIST_3_2>(),
    }
}

/// A zero-filled 3.2 table with the first `size` bytes copied from `list`.
///
/// # Safety
/// As for `overlay`.
unsafe fn copy_table(list: *const u8, size: usize) -> CK_FUNCTION_LIST_3_2 {
    // SAFETY: CK_FUNCTION_LIST_3_2 is plain data (a version and optional function pointers),
    // so all-zero bytes are a valid value with every entry None.
    let empty: CK_FUNCTION_LIST_3_2 = unsafe { std::mem::zeroed() };
    // SAFETY: per the caller.
    unsafe { overlay(empty, list, size) }
}

/// `base` with its first `size` bytes copied from `list`.
///
/// # Safety
/// `list` must point to at least `size` readable bytes of a function table, and `size` must not
/// exceed `size_of::<CK_FUNCTION_LIST_3_2>()`.
unsafe fn overlay(
    mut base: CK_FUNCTION_LIST_3_2,
    list: *const u8,
    size: usize,
) -> CK_FUNCTION_LIST_3_2 {
    // SAFETY: per the caller; the 2.40 and 3.0 tables are layout prefixes of the 3.2 table.
    unsafe {
        std::ptr::copy_nonoverlapping(
            list,
            &mut base as *mut CK_FUNCTION_LIST_3_2 as *mut u8,
            size,
        );
    }
    base
}

/// The provider's "PKCS 11" interfaces with their tables, if it has C_GetInterfaceList.
///
/// # Safety
/// `handle` is a live dlopen handle of a PKCS#11 module.
unsafe fn standard_interfaces(
    handle: *mut libc::c_void,
) -> Vec<(OfferedInterface, CK_FUNCTION_LIST_3_2)> {
    // SAFETY: handle is live; the name is a C string.
    let sym = unsafe { libc::dlsym(handle, c"C_GetInterfaceList".as_ptr()) };
    if sym.is_null() {
        return Vec::new();
    }
    type GetInterfaceList = unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV;
    // SAFETY: C_GetInterfaceList has this signature (PKCS#11 3.0 §5.4).
    let get: GetInterfaceList =
        unsafe { std::mem::transmute::<*mut libc::c_void, GetInterfaceList>(sym) };
    let mut count: CK_ULONG = 0;
    // SAFETY: a length query with a valid count pointer.
    if unsafe { get(std::ptr::null_mut(), &mut count) } != CKR_OK || count == 0 || count > 64 {
        return Vec::new();
    }
    // SAFETY: CK_INTERFACE is plain data; zeroed is valid (NULL pointers).
    let mut list: Vec<CK_INTERFACE> = vec![unsafe { std::mem::zeroed() }; count as usize];
    // SAFETY: room for `count` interfaces.
    if unsafe { get(list.as_mut_ptr(), &mut count) } != CKR_OK {
        return Vec::new();
    }
    let mut out = Vec::new();
    for iface in list.iter().take(count as usize) {
        if iface.pInterfaceName.is_null() || iface.pFunctionList.is_null() {
            continue;
        }
        // SAFETY: the module returns NUL-terminated names.
        let name = unsafe { CStr::from_ptr(iface.pInterfaceName as *const std::ffi::c_char) };
        if name.to_bytes() != b"PKCS 11" {
            continue;
        }
        // SAFETY: every function table starts with its CK_VERSION.
        let version = unsafe { (iface.pFunctionList as *const CK_VERSION).read_unaligned() };
        let size = table_size(version.major, version.minor);
        // SAFETY: a table of this version has at least `size` bytes.
        let functions = unsafe { copy_table(iface.pFunctionList as *const u8, size) };
        out.push((
            OfferedInterface {
                major: version.major,
                minor: version.minor,
                flags: iface.flags,
            },
            functions,
        ));
    }
    out
}

// SAFETY: the table holds only function pointers and a version, copied once and never changed.
unsafe impl Sync for Provider {}
unsafe impl Send for Provider {}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call
    // on this thread; we copy it at once.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown error".into()
    } else {
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Provider {
    /// The table to forward through: `functions_2x` for an application that took a 2.x
    /// interface of p11audit's, else `functions`.
    pub fn table(&self, for_2x_caller: bool) -> &CK_FUNCTION_LIST_3_2 {
        if for_2x_caller {
            &self.functions_2x
        } else {
            &self.functions
        }
    }

    /// Loads the module at `path`. `own_get_function_list` is this library's entry point,
    /// used to refuse a configuration that points the shim at itself.
    pub fn load(path: &Path, own_get_function_list: usize) -> Result<Provider, String> {
        let var = "P11AUDIT_MODULE";
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| format!("{var} contains a NUL byte: set it to the real module's path"))?;
        // SAFETY: c_path is a valid C string. The handle is deliberately never closed.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!(
                "cannot load the PKCS#11 module {} ({var}): {}: point {var} at the real module",
                path.display(),
                dl_error()
            ));
        }
        // SAFETY: handle is a live dlopen handle; the name is a valid C string.
        let sym = unsafe { libc::dlsym(handle, c"C_GetFunctionList".as_ptr()) };
        if sym.is_null() {
            return Err(format!(
                "{} is not a PKCS#11 module: it has no C_GetFunctionList ({var}): point {var} at the real module",
                path.display()
            ));
        }
        if sym as usize == own_get_function_list {
            return Err(format!(
                "{var} points at p11audit itself ({}): set it to the real module the shim should forward to",
                path.display()
            ));
        }
        type GetFunctionList = unsafe extern "C" fn(*mut CK_FUNCTION_LIST_PTR) -> CK_RV;
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11 version.
        let get: GetFunctionList =
            unsafe { std::mem::transmute::<*mut libc::c_void, GetFunctionList>(sym) };
        let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        // SAFETY: we pass a valid out-pointer.
        let rv = unsafe { get(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(format!(
                "the PKCS#11 module {} failed C_GetFunctionList (rv {rv:#x}) ({var})",
                path.display()
            ));
        }
        let two_x_size = std::mem::size_of::<CK_FUNCTION_LIST>();
        // SAFETY: C_GetFunctionList hands out a 2.40 table: only its CK_FUNCTION_LIST part is
        // guaranteed, whatever version it reports (some SoftHSM builds say 3.x).
        let mut functions = unsafe { copy_table(list as *const u8, two_x_size) };
        let mut interfaces = vec![OfferedInterface {
            major: 2,
            minor: 40,
            flags: 0,
        }];
        // SAFETY: handle is the live handle of this module.
        let standard = unsafe { standard_interfaces(handle) };
        if !standard.is_empty() {
            interfaces = standard.iter().map(|(i, _)| *i).collect();
            // Forward through the richest table the module offers.
            if let Some((_, richest)) = standard.into_iter().max_by_key(|(i, _)| (i.major, i.minor))
            {
                functions = richest;
            }
        }
        Ok(Provider {
            path: path.to_path_buf(),
            // For a 2.x caller: the 2.x part of the C_GetFunctionList table (its version and
            // functions), and the richest table's 3.x entries, which such a caller cannot
            // reach through its own table but which still lead somewhere.
            // SAFETY: as for `functions` above.
            functions_2x: unsafe { overlay(functions, list as *const u8, two_x_size) },
            functions,
            interfaces,
        })
    }
}
