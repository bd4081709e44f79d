//! p11calls: times each PKCS#11 call of an operation separately, against any module, so that
//! p11audit's overhead can be split by call (the held outcome of `C_SignInit`, the length
//! query held for the next `C_Sign`, the written outcome of `C_Sign` that tells both).
//!
//!   p11calls --module PATH --pin PIN [--threads N] [--seconds S] [--op NAME]...
//!
//! It makes the calls itself, through the module's function list (p11bench goes through the
//! `cryptoki` crate, which makes the same calls but cannot time them one by one). For every call
//! of every operation it prints one JSON line in p11bench's shape, with `op` as
//! `OPERATION/C_Function` (`/len` marks a length query) and `ops_per_s` the whole operation's
//! rate; `P11BENCH_PER_CALL=1 scripts/bench.sh` alternates it with direct SoftHSM.

use cryptoki_sys as ck;
use std::ffi::{c_void, CString};
use std::ptr;
use std::time::{Duration, Instant};

#[path = "common/bench_args.rs"]
mod bench_args;
use bench_args::parse_args;
const OPS: &[&str] = &[
    "ecdsa_p256_sign",
    "hmac_sha256_64",
    "sha256_1k",
    "aes_cbc_1k",
];
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The module's function list. Its functions are thread-safe (initialized with
/// CKF_OS_LOCKING_OK), and the list lives as long as the process (never dlclosed).
struct Module(&'static ck::CK_FUNCTION_LIST);

/// Panics with the function's name unless `rv` is CKR_OK: a benchmark has nothing to recover.
fn ok(name: &str, rv: ck::CK_RV) {
    assert_eq!(rv, ck::CKR_OK, "{name} returned 0x{rv:x}");
}

impl Module {
    fn load(path: &str) -> Module {
        let c_path = CString::new(path).expect("module path");
        // SAFETY: dlopen/dlsym with NUL-terminated strings; the symbol is the PKCS#11 entry
        // point, whose type is CK_C_GetFunctionList (PKCS#11 3.2 §5.4).
        unsafe {
            let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            assert!(!handle.is_null(), "dlopen {path} failed");
            let sym = libc::dlsym(handle, c"C_GetFunctionList".as_ptr());
            assert!(!sym.is_null(), "{path} has no C_GetFunctionList");
            let get: unsafe extern "C" fn(ck::CK_FUNCTION_LIST_PTR_PTR) -> ck::CK_RV =
                std::mem::transmute(sym);
            let mut list: ck::CK_FUNCTION_LIST_PTR = ptr::null_mut();
            ok("C_GetFunctionList", get(&mut list));
            Module(&*list)
        }
    }
}

/// A template attribute pointing at `value` (which must outlive the call).
fn attr<T>(kind: ck::CK_ATTRIBUTE_TYPE, value: &T) -> ck::CK_ATTRIBUTE {
    ck::CK_ATTRIBUTE {
        type_: kind,
        pValue: value as *const T as *mut c_void,
        ulValueLen: std::mem::size_of::<T>() as ck::CK_ULONG,
    }
}

fn bytes_attr(kind: ck::CK_ATTRIBUTE_TYPE, value: &[u8]) -> ck::CK_ATTRIBUTE {
    ck::CK_ATTRIBUTE {
        type_: kind,
        pValue: value.as_ptr() as *mut c_void,
        ulValueLen: value.len() as ck::CK_ULONG,
    }
}

struct Keys {
    ec: ck::CK_OBJECT_HANDLE,
    hmac: ck::CK_OBJECT_HANDLE,
    aes: ck::CK_OBJECT_HANDLE,
}

/// Session keys (CKA_TOKEN false), usable from every session of this application.
fn make_keys(m: &Module, s: ck::CK_SESSION_HANDLE) -> Keys {
    let (yes, no): (ck::CK_BBOOL, ck::CK_BBOOL) = (ck::CK_TRUE, ck::CK_FALSE);
    let f = m.0;
    let mut ec_pub = 0;
    let mut ec = 0;
    // SAFETY: every pointer passed is to a live local or template for the call's duration.
    unsafe {
        let public = [
            attr(ck::CKA_TOKEN, &no),
            bytes_attr(ck::CKA_EC_PARAMS, P256_OID),
            attr(ck::CKA_VERIFY, &yes),
        ];
        let private = [attr(ck::CKA_TOKEN, &no), attr(ck::CKA_SIGN, &yes)];
        let mut gen = mechanism(ck::CKM_EC_KEY_PAIR_GEN);
        ok(
            "C_GenerateKeyPair",
            f.C_GenerateKeyPair.expect("C_GenerateKeyPair")(
                s,
                &mut gen,
                public.as_ptr() as *mut _,
                public.len() as _,
                private.as_ptr() as *mut _,
                private.len() as _,
                &mut ec_pub,
                &mut ec,
            ),
        );
    }
    let hmac = secret_key(m, s, ck::CKM_GENERIC_SECRET_KEY_GEN, ck::CKA_SIGN);
    let aes = secret_key(m, s, ck::CKM_AES_KEY_GEN, ck::CKA_ENCRYPT);
    Keys { ec, hmac, aes }
}

/// A 32-byte session secret key made by `mechanism`, allowed `usage` (CKA_SIGN, CKA_ENCRYPT).
fn secret_key(
    m: &Module,
    s: ck::CK_SESSION_HANDLE,
    mechanism_type: ck::CK_MECHANISM_TYPE,
    usage: ck::CK_ATTRIBUTE_TYPE,
) -> ck::CK_OBJECT_HANDLE {
    let (yes, no): (ck::CK_BBOOL, ck::CK_BBOOL) = (ck::CK_TRUE, ck::CK_FALSE);
    let len32: ck::CK_ULONG = 32;
    let template = [
        attr(ck::CKA_TOKEN, &no),
        attr(ck::CKA_VALUE_LEN, &len32),
        attr(usage, &yes),
    ];
    let mut gen = mechanism(mechanism_type);
    let mut key = 0;
    // SAFETY: the template, mechanism and out-handle are live locals for the call.
    ok("C_GenerateKey", unsafe {
        m.0.C_GenerateKey.expect("C_GenerateKey")(
            s,
            &mut gen,
            template.as_ptr() as *mut _,
            template.len() as _,
            &mut key,
        )
    });
    key
}

fn mechanism(kind: ck::CK_MECHANISM_TYPE) -> ck::CK_MECHANISM {
    ck::CK_MECHANISM {
        mechanism: kind,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// One operation as applications make it: an *Init, a length query, the call with the buffer.
/// Returns the three calls' durations in µs.
fn run_op(m: &Module, s: ck::CK_SESSION_HANDLE, keys: &Keys, op: &str) -> [f64; 3] {
    let f = m.0;
    let data = [0x5au8; 1024];
    let iv = [0x11u8; 16];
    let mut out = [0u8; 2048];
    let (mut mech, key, input, kind) = match op {
        "ecdsa_p256_sign" => (mechanism(ck::CKM_ECDSA), keys.ec, &data[..32], 's'),
        "hmac_sha256_64" => (mechanism(ck::CKM_SHA256_HMAC), keys.hmac, &data[..64], 's'),
        "sha256_1k" => (mechanism(ck::CKM_SHA256), 0, &data[..], 'd'),
        "aes_cbc_1k" => {
            let mut mech = mechanism(ck::CKM_AES_CBC_PAD);
            mech.pParameter = iv.as_ptr() as *mut c_void;
            mech.ulParameterLen = iv.len() as _;
            (mech, keys.aes, &data[..], 'e')
        }
        other => panic!("unknown op {other}; ops: {}", OPS.join(" ")),
    };
    let (init, call) = match kind {
        's' => (f.C_SignInit.map(Init::Keyed), f.C_Sign),
        'e' => (f.C_EncryptInit.map(Init::Keyed), f.C_Encrypt),
        _ => (f.C_DigestInit.map(Init::Keyless), f.C_Digest),
    };
    let (init, call) = (init.expect("init function"), call.expect("function"));
    let input_ptr = input.as_ptr() as *mut u8;
    let input_len = input.len() as ck::CK_ULONG;
    let mut len: ck::CK_ULONG = 0;
    // SAFETY: the mechanism, input and output buffers outlive the calls; `len` says how much
    // of `out` the module may write (2048 bytes, more than any of these outputs).
    unsafe {
        let t0 = Instant::now();
        let rv = match init {
            Init::Keyed(f) => f(s, &mut mech, key),
            Init::Keyless(f) => f(s, &mut mech),
        };
        ok("init", rv);
        let t1 = Instant::now();
        ok(
            "length query",
            call(s, input_ptr, input_len, ptr::null_mut(), &mut len),
        );
        let t2 = Instant::now();
        len = out.len() as _;
        ok(
            "call",
            call(s, input_ptr, input_len, out.as_mut_ptr(), &mut len),
        );
        let t3 = Instant::now();
        [t1 - t0, t2 - t1, t3 - t2].map(|d| d.as_secs_f64() * 1e6)
    }
}

/// An *Init function: with a key (sign, encrypt) or without (digest).
enum Init {
    Keyed(
        unsafe extern "C" fn(
            ck::CK_SESSION_HANDLE,
            ck::CK_MECHANISM_PTR,
            ck::CK_OBJECT_HANDLE,
        ) -> ck::CK_RV,
    ),
    Keyless(unsafe extern "C" fn(ck::CK_SESSION_HANDLE, ck::CK_MECHANISM_PTR) -> ck::CK_RV),
}

/// The names of the three calls of `op`, as printed.
fn call_names(op: &str) -> [String; 3] {
    let (init, call) = match op {
        "ecdsa_p256_sign" | "hmac_sha256_64" => ("C_SignInit", "C_Sign"),
        "aes_cbc_1k" => ("C_EncryptInit", "C_Encrypt"),
        _ => ("C_DigestInit", "C_Digest"),
    };
    [
        format!("{op}/{init}"),
        format!("{op}/{call}/len"),
        format!("{op}/{call}"),
    ]
}

fn open_session(m: &Module, slot: ck::CK_SLOT_ID) -> ck::CK_SESSION_HANDLE {
    let mut s = 0;
    // SAFETY: `s` is a live local the module writes the handle into.
    ok("C_OpenSession", unsafe {
        m.0.C_OpenSession.expect("C_OpenSession")(
            slot,
            ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION,
            ptr::null_mut(),
            None,
            &mut s,
        )
    });
    s
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args = parse_args("p11calls", OPS);
    let m = Module::load(&args.module);
    let f = m.0;
    let mut slots = [0 as ck::CK_SLOT_ID; 16];
    let mut count = slots.len() as ck::CK_ULONG;
    // SAFETY: the init args, slot array and counts are live locals; the PIN buffer outlives
    // C_Login.
    let setup = unsafe {
        let mut init = ck::CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: ck::CKF_OS_LOCKING_OK,
            pReserved: ptr::null_mut(),
        };
        ok(
            "C_Initialize",
            f.C_Initialize.expect("C_Initialize")(&mut init as *mut _ as *mut c_void),
        );
        ok(
            "C_GetSlotList",
            f.C_GetSlotList.expect("C_GetSlotList")(ck::CK_TRUE, slots.as_mut_ptr(), &mut count),
        );
        assert!(count > 0, "no slot with a token");
        let s = open_session(&m, slots[0]);
        ok(
            "C_Login",
            f.C_Login.expect("C_Login")(
                s,
                ck::CKU_USER,
                args.pin.as_ptr() as *mut u8,
                args.pin.len() as _,
            ),
        );
        s
    };
    let keys = make_keys(&m, setup);
    let deadline = Duration::from_secs_f64(args.seconds);
    for op in &args.ops {
        let start = std::sync::Barrier::new(args.threads);
        let per_thread: Vec<(Vec<[f64; 3]>, f64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..args.threads)
                .map(|_| {
                    let (m, keys, start, slot) = (&m, &keys, &start, slots[0]);
                    scope.spawn(move || {
                        let s = open_session(m, slot);
                        for _ in 0..20 {
                            run_op(m, s, keys, op);
                        }
                        start.wait();
                        let mut times = Vec::with_capacity(100_000);
                        let t0 = Instant::now();
                        while t0.elapsed() < deadline {
                            times.push(run_op(m, s, keys, op));
                        }
                        let secs = t0.elapsed().as_secs_f64();
                        // SAFETY: closes the session this thread opened.
                        ok("C_CloseSession", unsafe {
                            m.0.C_CloseSession.expect("C_CloseSession")(s)
                        });
                        (times, secs)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("bench thread"))
                .collect()
        });
        let ops_per_s: f64 = per_thread
            .iter()
            .map(|(t, secs)| t.len() as f64 / secs)
            .sum();
        let all: Vec<[f64; 3]> = per_thread.into_iter().flat_map(|(t, _)| t).collect();
        for (i, name) in call_names(op).iter().enumerate() {
            let mut lat: Vec<f64> = all.iter().map(|t| t[i]).collect();
            lat.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
            println!(
                "{}",
                serde_json::json!({
                    "op": name,
                    "threads": args.threads,
                    "ops": lat.len(),
                    "ops_per_s": ops_per_s,
                    "median_us": percentile(&lat, 0.5),
                    "p99_us": percentile(&lat, 0.99),
                    "calls_per_op": null,
                    "records_per_op": null,
                    "log_bytes_per_op": null,
                })
            );
        }
    }
    // SAFETY: no call is in flight; the module stays loaded (never dlclosed).
    unsafe {
        f.C_CloseSession.expect("C_CloseSession")(setup);
        f.C_Finalize.expect("C_Finalize")(ptr::null_mut());
    }
}
