//! p11bench: measures PKCS#11 operations against any module, so the same client code measures
//! SoftHSM directly, p11audit in front of SoftHSM, and OpenSC's pkcs11-spy.
//!
//!   p11bench --module PATH --pin PIN [--threads N] [--seconds S] [--op NAME]...
//!
//! Each thread opens its own session. For every operation it prints one JSON line:
//! `{"op","threads","ops","ops_per_s","median_us","p99_us","calls_per_op","records_per_op",
//! "log_bytes_per_op"}`. `calls_per_op` (outcomes and the length queries they count),
//! `records_per_op` and `log_bytes_per_op` are read from the audit log named by P11AUDIT_LOG when
//! it is set (p11audit runs), else they are null. scripts/bench.sh alternates runs and prints
//! the table in docs/PERFORMANCE.md.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::time::{Duration, Instant};

#[path = "common/bench_args.rs"]
mod bench_args;
use bench_args::parse_args;
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OPS: &[&str] = &[
    "get_info",
    "open_close_session",
    "login_logout",
    "sha256_1k",
    "ecdsa_p256_sign",
    "rsa2048_sign",
    "hmac_sha256_64",
    "aes_cbc_1k",
    "aes_gcm_1k",
    "find_by_label",
    "aes_keygen_destroy",
    "aes_keygen_named_destroy",
    "read_key_attributes",
];

/// Keys every thread's session can use: session objects, visible to all sessions of this
/// application until the setup session closes.
struct Keys {
    ec: ObjectHandle,
    rsa: ObjectHandle,
    hmac: ObjectHandle,
    aes: ObjectHandle,
}

fn make_keys(s: &Session) -> Keys {
    let (_, ec) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::EcParams(P256_OID.to_vec()),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(false),
                Attribute::Sign(true),
                Attribute::Label(b"bench-ec".to_vec()),
            ],
        )
        .expect("EC key");
    let (_, rsa) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ModulusBits(2048.into()),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(false),
                Attribute::Sign(true),
                Attribute::Label(b"bench-rsa".to_vec()),
            ],
        )
        .expect("RSA key");
    let hmac = s
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Sign(true),
                Attribute::Label(b"bench-hmac".to_vec()),
            ],
        )
        .expect("HMAC key");
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Label(b"bench-aes".to_vec()),
            ],
        )
        .expect("AES key");
    Keys { ec, rsa, hmac, aes }
}

fn run_op(p11: &Pkcs11, s: &Session, keys: &Keys, op: &str, pin: &AuthPin) {
    let data_1k = [0x5au8; 1024];
    match op {
        "get_info" => {
            p11.get_library_info().expect("C_GetInfo");
        }
        "open_close_session" => {
            let slot = p11.get_slots_with_token().expect("slots")[0];
            drop(p11.open_ro_session(slot).expect("open"));
        }
        "login_logout" => {
            s.login(UserType::User, Some(pin)).expect("login");
            s.logout().expect("logout");
        }
        "sha256_1k" => {
            s.digest(&Mechanism::Sha256, &data_1k).expect("digest");
        }
        "ecdsa_p256_sign" => {
            s.sign(&Mechanism::Ecdsa, keys.ec, &[0x11; 32])
                .expect("ECDSA");
        }
        "rsa2048_sign" => {
            s.sign(&Mechanism::Sha256RsaPkcs, keys.rsa, &[0x22; 32])
                .expect("RSA");
        }
        "hmac_sha256_64" => {
            s.sign(&Mechanism::Sha256Hmac, keys.hmac, &[0x33; 64])
                .expect("HMAC");
        }
        "aes_cbc_1k" => {
            s.encrypt(&Mechanism::AesCbcPad([7; 16]), keys.aes, &data_1k)
                .expect("CBC");
        }
        "aes_gcm_1k" => {
            let mut iv = [9u8; 12];
            let params = GcmParams::new(&mut iv, &[], 128.into()).expect("GCM params");
            s.encrypt(&Mechanism::AesGcm(params), keys.aes, &data_1k)
                .expect("GCM");
        }
        "find_by_label" => {
            let found = s
                .find_objects(&[Attribute::Label(b"bench-aes".to_vec())])
                .expect("find");
            assert_eq!(found.len(), 1);
        }
        "aes_keygen_destroy" => {
            let k = s
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Token(false),
                        Attribute::ValueLen(32.into()),
                        Attribute::Encrypt(true),
                    ],
                )
                .expect("keygen");
            s.destroy_object(k).expect("destroy");
        }
        "aes_keygen_named_destroy" => {
            // A template that names the new key's class, key type, label and id: p11audit
            // takes its identity from the template and reads nothing back.
            let k = s
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
                        Attribute::KeyType(cryptoki::object::KeyType::AES),
                        Attribute::Label(b"bench-keygen".to_vec()),
                        Attribute::Id(vec![0x6b, 0x67]),
                        Attribute::Token(false),
                        Attribute::ValueLen(32.into()),
                        Attribute::Encrypt(true),
                    ],
                )
                .expect("keygen");
            s.destroy_object(k).expect("destroy");
        }
        "read_key_attributes" => {
            // What p11audit reads of every new key (its identity): what that costs SoftHSM.
            let attrs = s
                .get_attributes(
                    keys.aes,
                    &[
                        AttributeType::Class,
                        AttributeType::KeyType,
                        AttributeType::Label,
                        AttributeType::Id,
                    ],
                )
                .expect("get attributes");
            assert_eq!(attrs.len(), 4);
        }
        other => panic!("unknown op {other}; ops: {}", OPS.join(" ")),
    }
}

fn log_position(log: Option<&str>) -> Option<u64> {
    log.and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len())
}

/// Calls and records in the log between two offsets: a call is an outcome record, plus the
/// length queries it counts (`len_queries`) and the init it tells (`init`).
fn calls_and_records_between(log: &str, from: u64, to: u64) -> (u64, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).expect("open log");
    f.seek(SeekFrom::Start(from)).expect("seek");
    let mut buf = Vec::new();
    f.take(to - from).read_to_end(&mut buf).expect("read log");
    let (mut calls, mut records) = (0, 0);
    for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        records += 1;
        if !line.windows(17).any(|w| w == b"\"ev\":\"outcome\",\"f") {
            continue;
        }
        calls += 1;
        if line.windows(8).any(|w| w == b"\"init\":{") {
            calls += 1;
        }
        let marker = b"\"len_queries\":";
        if let Some(at) = line.windows(marker.len()).position(|w| w == marker) {
            let digits = line[at + marker.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            calls += digits;
        }
    }
    (calls, records)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    let args = parse_args("p11bench", OPS);
    let log = std::env::var("P11AUDIT_LOG").ok();
    let p11 = Pkcs11::new(&args.module).expect("load module");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let pin = AuthPin::new(args.pin.clone().into());
    let setup = p11.open_rw_session(slot).expect("session");
    setup.login(UserType::User, Some(&pin)).expect("login");
    let mut keys = make_keys(&setup);

    for op in &args.ops {
        // Login state belongs to the whole application (PKCS#11 2.40 §5.6): login+logout can
        // only be measured from one thread, with the setup session logged out meanwhile.
        let login_op = op == "login_logout";
        if login_op && args.threads > 1 {
            continue;
        }
        if login_op {
            setup.logout().expect("logout before login_logout");
        }
        let deadline = Duration::from_secs_f64(args.seconds);
        // Every thread warms up, then the log's size is read, then all start: no measured call
        // lands in the log before that reading.
        let ready = std::sync::Barrier::new(args.threads + 1);
        let go = std::sync::Barrier::new(args.threads + 1);
        let mut log_before = None;
        let per_thread: Vec<(Vec<f64>, f64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..args.threads)
                .map(|_| {
                    let (p11, keys, pin, ready, go) = (&p11, &keys, &pin, &ready, &go);
                    scope.spawn(move || {
                        let s = p11.open_rw_session(slot).expect("session");
                        // Warm up (key identities cached, code paged in).
                        for _ in 0..20 {
                            run_op(p11, &s, keys, op, pin);
                        }
                        ready.wait();
                        go.wait();
                        let mut lat = Vec::with_capacity(100_000);
                        let t0 = Instant::now();
                        while t0.elapsed() < deadline {
                            let t = Instant::now();
                            run_op(p11, &s, keys, op, pin);
                            lat.push(t.elapsed().as_secs_f64() * 1e6);
                        }
                        (lat, t0.elapsed().as_secs_f64())
                    })
                })
                .collect();
            ready.wait();
            log_before = log_position(log.as_deref());
            go.wait();
            handles
                .into_iter()
                .map(|h| h.join().expect("bench thread"))
                .collect()
        });
        if login_op {
            // Logout invalidated every handle to private objects (PKCS#11 2.40 §5.6
            // C_Logout): log in again and make new keys.
            setup
                .login(UserType::User, Some(&pin))
                .expect("login after login_logout");
            keys = make_keys(&setup);
        }
        let ops_per_s: f64 = per_thread
            .iter()
            .map(|(lat, secs)| lat.len() as f64 / secs)
            .sum();
        let mut all: Vec<f64> = per_thread.into_iter().flat_map(|(lat, _)| lat).collect();
        let ops = all.len() as u64;
        all.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        let log_after = log_position(log.as_deref());
        let (calls_per_op, records_per_op, bytes_per_op) =
            match (log.as_deref(), log_before, log_after) {
                (Some(path), Some(b), Some(a)) if ops > 0 => {
                    let (calls, records) = calls_and_records_between(path, b, a);
                    let per_op = |n: u64| Some(n as f64 / ops as f64);
                    (per_op(calls), per_op(records), per_op(a - b))
                }
                _ => (None, None, None),
            };
        println!(
            "{}",
            serde_json::json!({
                "op": op,
                "threads": args.threads,
                "ops": ops,
                "ops_per_s": ops_per_s,
                "median_us": percentile(&all, 0.5),
                "p99_us": percentile(&all, 0.99),
                "calls_per_op": calls_per_op,
                "records_per_op": records_per_op,
                "log_bytes_per_op": bytes_per_op,
            })
        );
    }
    drop(setup);
    p11.finalize().expect("C_Finalize");
}
