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
//! symbols never bind to ours (a module that calls its own `C_*` functions by name would
//! otherwise call p11audit's, and audit itself), and it is never `dlclose`d: the host may still
//! hold pointers into it. Only as much of its table is copied as the version it declares
//! guarantees: a 2.40 table is `sizeof(CK_FUNCTION_LIST)` bytes, and some modules report a 3.x
//! version from `C_GetFunctionList` while filling only the 2.40 part.

use cryptoki_sys::{
    CKR_OK, CK_FLAGS, CK_FUNCTION_LIST, CK_FUNCTION_LIST_3_0, CK_FUNCTION_LIST_3_2,
    CK_FUNCTION_LIST_PTR, CK_INTERFACE, CK_RV, CK_ULONG, CK_VERSION,
};
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use std::ffi::CStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why the module `P11AUDIT_MODULE` names cannot be used. Each is worded for one `p11audit:`
/// line on stderr, naming the setting and the fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProviderError {
    #[error("P11AUDIT_MODULE contains a NUL byte: set it to the real module's path")]
    PathHasNul,
    /// `dlopen` failed; `source` says why (the file is missing, not a library, lacks a symbol).
    #[error("cannot load the PKCS#11 module {} (P11AUDIT_MODULE): {source}: point P11AUDIT_MODULE at the real module", .path.display())]
    CannotLoad {
        path: PathBuf,
        source: libloading::Error,
    },
    #[error("{} is not a PKCS#11 module: it has no C_GetFunctionList (P11AUDIT_MODULE): point P11AUDIT_MODULE at the real module", .path.display())]
    NotPkcs11 { path: PathBuf },
    /// The module is p11audit: every call would be forwarded to p11audit again.
    #[error("P11AUDIT_MODULE points at p11audit itself ({}): set it to the real module the shim should forward to", .path.display())]
    IsTheShim { path: PathBuf },
    /// `C_GetFunctionList` returned `rv`, or CKR_OK and no table.
    #[error("the PKCS#11 module {} failed C_GetFunctionList (rv {rv:#x}) (P11AUDIT_MODULE)", .path.display())]
    GetFunctionListFailed { path: PathBuf, rv: CK_RV },
}

/// One "PKCS 11" interface the provider offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OfferedInterface {
    pub(crate) major: u8,
    pub(crate) minor: u8,
    pub(crate) flags: CK_FLAGS,
}

/// The real module: its path, the functions it provides (entries it does not provide are
/// `None`) and the standard interfaces it offers.
pub(crate) struct Provider {
    pub(crate) path: PathBuf,
    /// The richest table: what callers of p11audit's 3.x interfaces are forwarded through.
    pub(crate) functions: CK_FUNCTION_LIST_3_2,
    /// What callers of p11audit's 2.40 table are forwarded through: the 2.x functions of the
    /// table the module's own `C_GetFunctionList` gives, the 3.x ones of `functions`. Modules
    /// may answer differently through their tables: OpenSC's `C_GetInfo` says cryptokiVersion
    /// 2.20 through its 2.x table and 3.0 through its 3.0 one.
    pub(crate) functions_2x: CK_FUNCTION_LIST_3_2,
    /// Its "PKCS 11" interfaces, in its order; just 2.40 for a module without
    /// C_GetInterfaceList.
    pub(crate) interfaces: Vec<OfferedInterface>,
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

/// The function `name` (NUL-terminated) of `library`, None if it has no such symbol or the
/// symbol is NULL.
///
/// # Safety
/// `F` must be the function's type.
unsafe fn function<F: Copy>(library: &Library, name: &[u8]) -> Option<F> {
    // SAFETY: per the caller; `Option<F>` of a function pointer type is a nullable pointer.
    unsafe { library.get::<Option<F>>(name) }
        .ok()
        .and_then(|symbol| *symbol)
}

/// The provider's "PKCS 11" interfaces with their tables, if it has C_GetInterfaceList.
///
/// # Safety
/// `library` is a PKCS#11 module.
unsafe fn standard_interfaces(library: &Library) -> Vec<(OfferedInterface, CK_FUNCTION_LIST_3_2)> {
    type GetInterfaceList = unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV;
    // SAFETY: C_GetInterfaceList has this type (PKCS#11 3.0 §5.4).
    let Some(get) = (unsafe { function::<GetInterfaceList>(library, b"C_GetInterfaceList\0") })
    else {
        return Vec::new();
    };
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

impl Provider {
    /// The table to forward through: `functions_2x` for an application that took a 2.x
    /// interface of p11audit's, else `functions`.
    pub(crate) fn table(&self, for_2x_caller: bool) -> &CK_FUNCTION_LIST_3_2 {
        if for_2x_caller {
            &self.functions_2x
        } else {
            &self.functions
        }
    }

    /// Loads the module at `path`. `own_get_function_list` is this library's entry point,
    /// used to refuse a configuration that points the shim at itself.
    pub(crate) fn load(
        path: &Path,
        own_get_function_list: usize,
    ) -> Result<Provider, ProviderError> {
        if path.as_os_str().as_bytes().contains(&0) {
            return Err(ProviderError::PathHasNul);
        }
        // SAFETY: loading runs the module's initializers, which any use of a PKCS#11 module
        // does; it is the module the configuration names.
        let library =
            unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map_err(|source| {
                ProviderError::CannotLoad {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        // Never unloaded, whatever happens next: the copied tables point into the module for
        // the rest of the process, and a module that has run its initializers may have started
        // threads or registered thread-local destructors that run its code. Those must outlive
        // a host's dlclose of p11audit, so the module is never dlclosed.
        // ManuallyDrop: no allocation that a leak checker would report.
        let library = std::mem::ManuallyDrop::new(library);
        type GetFunctionList = unsafe extern "C" fn(*mut CK_FUNCTION_LIST_PTR) -> CK_RV;
        // SAFETY: C_GetFunctionList has this type in every PKCS#11 version.
        let get = unsafe { function::<GetFunctionList>(&library, b"C_GetFunctionList\0") }
            .ok_or_else(|| ProviderError::NotPkcs11 {
                path: path.to_path_buf(),
            })?;
        if get as *const () as usize == own_get_function_list {
            return Err(ProviderError::IsTheShim {
                path: path.to_path_buf(),
            });
        }
        let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        // SAFETY: we pass a valid out-pointer.
        let rv = unsafe { get(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(ProviderError::GetFunctionListFailed {
                path: path.to_path_buf(),
                rv,
            });
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
        // SAFETY: the library is this PKCS#11 module.
        let standard = unsafe { standard_interfaces(&library) };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The module the integration tests forward to.
    const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

    fn softhsm() -> &'static Path {
        let path = Path::new(SOFTHSM);
        assert!(path.is_file(), "these tests need SoftHSM at {SOFTHSM}");
        path
    }

    #[test]
    fn loads_a_module_and_copies_its_tables() {
        let p = Provider::load(softhsm(), 0).unwrap();
        assert!(p.functions.C_Initialize.is_some() && p.functions_2x.C_Sign.is_some());
        assert!(!p.interfaces.is_empty());
        assert!(p.table(true).C_GetFunctionList.is_some());
    }

    #[test]
    fn refuses_what_is_not_a_usable_module() {
        let e = Provider::load(Path::new("/m\0.so"), 0).err().unwrap();
        assert!(matches!(e, ProviderError::PathHasNul), "{e:?}");

        let missing = Path::new("/nonexistent/libnothing.so");
        let e = Provider::load(missing, 0).err().unwrap();
        assert!(
            matches!(&e, ProviderError::CannotLoad { path, .. } if path == missing),
            "{e:?}"
        );

        // A library every process has, and no PKCS#11 module.
        let libc = Path::new("libc.so.6");
        let e = Provider::load(libc, 0).err().unwrap();
        assert!(
            matches!(&e, ProviderError::NotPkcs11 { path } if path == libc),
            "{e:?}"
        );
    }

    /// Told that the module's C_GetFunctionList is its own, `load` takes the module for
    /// p11audit itself.
    #[test]
    fn refuses_the_shim_itself() {
        // SAFETY: SoftHSM is a PKCS#11 module; the symbol is only compared, never called.
        let library = unsafe { Library::open(Some(softhsm()), RTLD_NOW | RTLD_LOCAL) }.unwrap();
        // Never unloaded, like every provider: the address stays the one `load` finds.
        let library: &'static Library = Box::leak(Box::new(library));
        // SAFETY: as above.
        let own = unsafe { *library.get::<*const ()>(b"C_GetFunctionList\0").unwrap() } as usize;
        let e = Provider::load(softhsm(), own).err().unwrap();
        assert!(
            matches!(&e, ProviderError::IsTheShim { path } if path == softhsm()),
            "{e:?}"
        );
    }
}
