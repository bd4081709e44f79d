//! A PKCS#11 module driven through the raw C ABI, as a C application would: `dlopen`,
//! `C_GetFunctionList`, and calls through the `CK_FUNCTION_LIST`, so that tests see exact
//! return values and their own output buffers.

use super::USER_PIN;
use cryptoki_sys as ck;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::null_mut;

pub type GetFunctionList = unsafe extern "C" fn(*mut *mut ck::CK_FUNCTION_LIST) -> ck::CK_RV;

/// Loads `module` with `dlopen(RTLD_NOW | RTLD_LOCAL)` (never closed) and returns its
/// `C_GetFunctionList`.
pub fn load_get_function_list(module: &Path) -> GetFunctionList {
    let path = CString::new(module.as_os_str().as_bytes()).expect("no NUL in the module path");
    // SAFETY: a NUL-terminated path; the handle is kept for the life of the process.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: after a failed dlopen, dlerror returns a NUL-terminated message.
        let err = unsafe { std::ffi::CStr::from_ptr(libc::dlerror()) };
        panic!("dlopen {}: {}", module.display(), err.to_string_lossy());
    }
    // SAFETY: a live handle and a NUL-terminated name.
    let sym = unsafe { libc::dlsym(handle, c"C_GetFunctionList".as_ptr()) };
    assert!(
        !sym.is_null(),
        "{} exports no C_GetFunctionList",
        module.display()
    );
    // SAFETY: C_GetFunctionList has this signature (PKCS#11 2.40 §5.2).
    unsafe { std::mem::transmute::<*mut libc::c_void, GetFunctionList>(sym) }
}

/// Loads `module` and returns its function table, which lives as long as the (never
/// unloaded) module.
pub fn load_function_list(module: &Path) -> &'static ck::CK_FUNCTION_LIST {
    let get = load_get_function_list(module);
    let mut list: *mut ck::CK_FUNCTION_LIST = null_mut();
    // SAFETY: a valid out-pointer.
    ok(unsafe { get(&mut list) }, "C_GetFunctionList");
    assert!(!list.is_null(), "C_GetFunctionList gave a NULL table");
    // SAFETY: checked non-NULL; the module's table, never unloaded.
    unsafe { &*list }
}

/// `CKR_OK` for 0, the hexadecimal value for codes p11audit has no name for.
#[allow(clippy::unnecessary_cast)] // CK_RV is u64 here and u32 elsewhere.
pub fn rv_name(rv: ck::CK_RV) -> String {
    match p11audit::format::names::rv_name(rv as u64) {
        Some(n) => n.to_string(),
        None => format!("{rv:#x}"),
    }
}

#[track_caller]
pub fn ok(rv: ck::CK_RV, what: &str) {
    assert_eq!(rv, ck::CKR_OK, "{what} returned {} ({rv:#x})", rv_name(rv));
}

/// C_Initialize arguments: no mutex callbacks, CKF_OS_LOCKING_OK.
pub fn os_locking_args() -> ck::CK_C_INITIALIZE_ARGS {
    ck::CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: ck::CKF_OS_LOCKING_OK,
        pReserved: null_mut(),
    }
}

/// Calls a function of a `Module`'s table: `p11_call!(m, C_Logout(s))`. Every pointer passed
/// must be valid for the call.
macro_rules! p11_call {
    ($m:expr, $name:ident ( $($arg:expr),* $(,)? )) => {
        // SAFETY: the table is the module's static; the caller passes valid arguments.
        unsafe { ($m.f.$name.expect(stringify!($name)))($($arg),*) }
    };
}
#[allow(unused_imports)]
pub(crate) use p11_call;

pub const FALSE: ck::CK_BBOOL = ck::CK_FALSE as ck::CK_BBOOL;
pub const TRUE: ck::CK_BBOOL = ck::CK_TRUE as ck::CK_BBOOL;

pub fn attr<T>(type_: ck::CK_ATTRIBUTE_TYPE, value: &T) -> ck::CK_ATTRIBUTE {
    ck::CK_ATTRIBUTE {
        type_,
        pValue: value as *const T as *mut _,
        ulValueLen: std::mem::size_of::<T>() as ck::CK_ULONG,
    }
}

pub fn attr_bytes(type_: ck::CK_ATTRIBUTE_TYPE, value: &[u8]) -> ck::CK_ATTRIBUTE {
    ck::CK_ATTRIBUTE {
        type_,
        pValue: value.as_ptr() as *mut _,
        ulValueLen: value.len() as ck::CK_ULONG,
    }
}

/// A mechanism without parameters.
pub fn mech(m: ck::CK_MECHANISM_TYPE) -> ck::CK_MECHANISM {
    ck::CK_MECHANISM {
        mechanism: m,
        pParameter: null_mut(),
        ulParameterLen: 0,
    }
}

/// A module loaded with dlopen. The helpers assert CKR_OK unless they return the CK_RV.
#[derive(Clone, Copy)]
pub struct Module {
    pub f: &'static ck::CK_FUNCTION_LIST,
}

impl Module {
    pub fn load(module: &Path) -> Module {
        Module {
            f: load_function_list(module),
        }
    }

    /// libp11audit.so (`super::shim_library`).
    pub fn shim() -> Module {
        Module::load(&super::shim_library())
    }

    /// C_Initialize with `args` (None: NULL, the application promises one thread at a time).
    pub fn initialize_rv(&self, args: Option<ck::CK_C_INITIALIZE_ARGS>) -> ck::CK_RV {
        match args {
            Some(mut a) => p11_call!(self, C_Initialize(&mut a as *mut _ as *mut _)),
            None => p11_call!(self, C_Initialize(null_mut())),
        }
    }

    /// C_Initialize with CKF_OS_LOCKING_OK.
    pub fn initialize(&self) {
        ok(self.initialize_rv(Some(os_locking_args())), "C_Initialize");
    }

    pub fn finalize(&self) {
        ok(p11_call!(self, C_Finalize(null_mut())), "C_Finalize");
    }

    pub fn first_slot(&self) -> ck::CK_SLOT_ID {
        let mut n: ck::CK_ULONG = 0;
        ok(
            p11_call!(self, C_GetSlotList(TRUE, null_mut(), &mut n)),
            "C_GetSlotList",
        );
        let mut slots = vec![0; n as usize];
        ok(
            p11_call!(self, C_GetSlotList(TRUE, slots.as_mut_ptr(), &mut n)),
            "C_GetSlotList",
        );
        *slots.first().expect("a slot with a token")
    }

    pub fn open_rw(&self, slot: ck::CK_SLOT_ID) -> ck::CK_SESSION_HANDLE {
        let mut s = 0;
        ok(
            p11_call!(
                self,
                C_OpenSession(
                    slot,
                    ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION,
                    null_mut(),
                    None,
                    &mut s
                )
            ),
            "C_OpenSession",
        );
        s
    }

    pub fn close(&self, s: ck::CK_SESSION_HANDLE) {
        ok(p11_call!(self, C_CloseSession(s)), "C_CloseSession");
    }

    /// (rv, state)
    pub fn session_state(&self, s: ck::CK_SESSION_HANDLE) -> (ck::CK_RV, ck::CK_STATE) {
        // SAFETY: plain data.
        let mut info: ck::CK_SESSION_INFO = unsafe { std::mem::zeroed() };
        let rv = p11_call!(self, C_GetSessionInfo(s, &mut info));
        (rv, info.state)
    }

    /// C_Login as the user with USER_PIN.
    pub fn login(&self, s: ck::CK_SESSION_HANDLE) -> ck::CK_RV {
        p11_call!(
            self,
            C_Login(
                s,
                ck::CKU_USER,
                USER_PIN.as_ptr() as *mut _,
                USER_PIN.len() as _
            )
        )
    }

    pub fn logout(&self, s: ck::CK_SESSION_HANDLE) {
        ok(p11_call!(self, C_Logout(s)), "C_Logout");
    }

    /// `n` random bytes.
    pub fn random(&self, s: ck::CK_SESSION_HANDLE, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        ok(
            p11_call!(self, C_GenerateRandom(s, buf.as_mut_ptr(), n as _)),
            "C_GenerateRandom",
        );
        buf
    }

    /// A P-256 key pair as public session objects (usable without login): (public, private).
    pub fn generate_ec(
        &self,
        s: ck::CK_SESSION_HANDLE,
    ) -> (ck::CK_OBJECT_HANDLE, ck::CK_OBJECT_HANDLE) {
        let mut m = mech(ck::CKM_EC_KEY_PAIR_GEN);
        let mut public = [
            attr(ck::CKA_TOKEN, &FALSE),
            attr_bytes(ck::CKA_EC_PARAMS, &super::P256_OID),
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
            p11_call!(
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
    pub fn generate_aes(
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
        let rv = p11_call!(
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

    /// C_SignInit with ECDSA.
    pub fn sign_init(&self, s: ck::CK_SESSION_HANDLE, key: ck::CK_OBJECT_HANDLE) -> ck::CK_RV {
        let mut m = mech(ck::CKM_ECDSA);
        p11_call!(self, C_SignInit(s, &mut m, key))
    }

    /// C_Sign into `out` (None: length query): (rv, reported length).
    pub fn sign(
        &self,
        s: ck::CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> (ck::CK_RV, ck::CK_ULONG) {
        let (ptr, mut len) = match out {
            Some(buf) => (buf.as_mut_ptr(), buf.len() as ck::CK_ULONG),
            None => (null_mut(), 0),
        };
        let rv = p11_call!(
            self,
            C_Sign(s, data.as_ptr() as *mut _, data.len() as _, ptr, &mut len)
        );
        (rv, len)
    }

    /// ECDSA: SignInit + length query + Sign.
    pub fn sign_all(
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

    /// A whole session's work through the shim, as the signing children of the tests do:
    /// initialize, open a read-write session, make an EC key, sign `data` `n` times
    /// (`sign_all`), close, finalize.
    pub fn shim_signs(n: usize, data: &[u8]) {
        let m = Module::shim();
        ok(m.initialize_rv(Some(os_locking_args())), "C_Initialize");
        let s = m.open_rw(m.first_slot());
        let (_, key) = m.generate_ec(s);
        for _ in 0..n {
            m.sign_all(s, key, data);
        }
        m.close(s);
        m.finalize();
    }

    /// ECDSA: VerifyInit (asserted) + Verify (returned).
    pub fn verify(
        &self,
        s: ck::CK_SESSION_HANDLE,
        key: ck::CK_OBJECT_HANDLE,
        data: &[u8],
        sig: &[u8],
    ) -> ck::CK_RV {
        let mut m = mech(ck::CKM_ECDSA);
        ok(
            p11_call!(self, C_VerifyInit(s, &mut m, key)),
            "C_VerifyInit",
        );
        p11_call!(
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
    pub fn count_labelled(&self, s: ck::CK_SESSION_HANDLE, label: &[u8]) -> usize {
        let mut template = [attr_bytes(ck::CKA_LABEL, label)];
        ok(
            p11_call!(self, C_FindObjectsInit(s, template.as_mut_ptr(), 1)),
            "C_FindObjectsInit",
        );
        let mut found = [0 as ck::CK_OBJECT_HANDLE; 16];
        let mut n: ck::CK_ULONG = 0;
        ok(
            p11_call!(
                self,
                C_FindObjects(s, found.as_mut_ptr(), found.len() as _, &mut n)
            ),
            "C_FindObjects",
        );
        ok(p11_call!(self, C_FindObjectsFinal(s)), "C_FindObjectsFinal");
        n as usize
    }
}
