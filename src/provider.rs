//! Loading the real PKCS#11 module and holding a copy of its function table.
//!
//! The module is opened with `RTLD_NOW | RTLD_LOCAL` so that its own references to `C_*`
//! symbols never bind to ours (OpenSC issue 2875), and it is never `dlclose`d: the host may
//! still hold pointers into it. Only as much of its table is copied as the version it declares
//! guarantees: a 2.40 table is `sizeof(CK_FUNCTION_LIST)` bytes, and some modules report a 3.x
//! version from `C_GetFunctionList` while filling only the 2.40 part.

use cryptoki_sys::{CKR_OK, CK_FUNCTION_LIST, CK_FUNCTION_LIST_3_2, CK_FUNCTION_LIST_PTR, CK_RV};
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The real module: its path and the functions it provides. Entries the module does not
/// provide are `None`.
pub struct Provider {
    pub path: PathBuf,
    pub functions: CK_FUNCTION_LIST_3_2,
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
        // SAFETY: CK_FUNCTION_LIST_3_2 is plain data (a version and optional function
        // pointers), so all-zero bytes are a valid value with every entry None.
        let mut functions: CK_FUNCTION_LIST_3_2 = unsafe { std::mem::zeroed() };
        // SAFETY: the module guarantees `sizeof(CK_FUNCTION_LIST)` readable bytes at `list`
        // (a 2.40 table); CK_FUNCTION_LIST is a layout prefix of CK_FUNCTION_LIST_3_2.
        unsafe {
            std::ptr::copy_nonoverlapping(
                list as *const u8,
                &mut functions as *mut CK_FUNCTION_LIST_3_2 as *mut u8,
                std::mem::size_of::<CK_FUNCTION_LIST>(),
            );
        }
        Ok(Provider {
            path: path.to_path_buf(),
            functions,
        })
    }
}
