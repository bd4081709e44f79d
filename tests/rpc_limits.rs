//! What crosses p11-kit's RPC, measured, and p11audit behind it changes none of it.
//!
//! The same probe (the cryptoki crate, as an application) runs three times in child
//! processes: against SoftHSM in process, through `p11-kit-client.so` and `p11-kit server` to
//! bare SoftHSM, and through the same RPC to p11audit in front of SoftHSM. It lists the
//! mechanisms the application is offered and tries one operation per family of mechanisms.
//!
//! Asserted: the RPC to p11audit offers the same mechanisms and gives the same result for
//! every probe as the RPC to bare SoftHSM; its log verifies and names the probe as `peer`; and
//! what the separated deployment relies on crosses (ECDSA, RSA PKCS#1, HMAC, SHA-256, EC key
//! generation, object search). Printed, not asserted (it is p11-kit's, and changes with its
//! version): the table of what the RPC changes against SoftHSM in process, which
//! docs/DEPLOYMENT.md quotes for Debian 12's p11-kit 0.24.1.

mod common;

use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROLE: &str = "P11AUDIT_TEST_RPC_PROBE_MODULE";
const MARKER: &str = "P11AUDIT-RPC-PROBE ";
/// p11-kit's client module, where Debian keeps PKCS#11 modules.
const P11_KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
/// P-256's OID, DER.
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// Ed25519's curve name, DER PrintableString "edwards25519".
const ED25519: &[u8] = b"\x13\x0cedwards25519";

/// What crosses p11-kit 0.24.1's RPC and what p11-kit's separated deployment relies on.
const MUST_CROSS: &[&str] = &[
    "CKM_ECDSA sign",
    "CKM_EC_KEY_PAIR_GEN",
    "CKM_SHA256_RSA_PKCS sign",
    "CKM_RSA_PKCS_PSS sign",
    "CKM_SHA256_HMAC sign",
    "CKM_SHA256 digest",
    "CKM_AES_ECB encrypt",
    "find objects",
];

// ---- the probe (a child process) --------------------------------------------------------------

fn rv_name(r: cryptoki::error::Result<impl Sized>) -> String {
    match r {
        Ok(_) => "CKR_OK".into(),
        Err(cryptoki::error::Error::Pkcs11(rv, _)) => format!("{rv:?}")
            .split('(')
            .next()
            .map(|s| format!("CKR_{}", to_snake_upper(s)))
            .unwrap_or_default(),
        Err(e) => format!("error: {e}"),
    }
}

/// `FunctionNotSupported` -> `FUNCTION_NOT_SUPPORTED`.
fn to_snake_upper(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[test]
fn rpc_probe() {
    let Some(module) = std::env::var_os(ROLE) else {
        return;
    };
    let p11 = Pkcs11::new(PathBuf::from(module)).expect("load module");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let mechanisms: Vec<String> = p11
        .get_mechanism_list(slot)
        .expect("C_GetMechanismList")
        .iter()
        .map(|m| m.to_string())
        .collect();
    let s = p11.open_rw_session(slot).expect("C_OpenSession");
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("C_Login");

    let mut probes: BTreeMap<&str, String> = BTreeMap::new();
    let (ec_pub, ec_priv) = match s.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::EcParams(P256.to_vec()),
            Attribute::Verify(true),
        ],
        &[
            Attribute::Token(false),
            Attribute::Sign(true),
            Attribute::Derive(true),
        ],
    ) {
        Ok(pair) => {
            probes.insert("CKM_EC_KEY_PAIR_GEN", "CKR_OK".into());
            pair
        }
        Err(e) => panic!("EC key generation: {e}"),
    };
    let (_rsa_pub, rsa_priv) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
            ],
            &[Attribute::Token(false), Attribute::Sign(true)],
        )
        .expect("RSA key generation");
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Sign(true),
                Attribute::Wrap(true),
                Attribute::Extractable(true),
            ],
        )
        .expect("AES key generation");
    let hmac = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sign(true),
            Attribute::Value(vec![0x5a; 32]),
        ])
        .expect("HMAC key");
    let data = [0x42u8; 32];
    let pss = PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    };
    let peer_point = s
        .get_attributes(ec_pub, &[AttributeType::EcPoint])
        .ok()
        .and_then(|a| match a.into_iter().next() {
            Some(Attribute::EcPoint(p)) => Some(p),
            _ => None,
        })
        .unwrap_or_default();
    // The point is DER OCTET STRING-wrapped; ECDH takes the bare point.
    let bare_point = peer_point.get(2..).unwrap_or_default().to_vec();
    let derived_template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::ValueLen(32.into()),
    ];
    for (name, rv) in [
        (
            "CKM_ECDSA sign",
            rv_name(s.sign(&Mechanism::Ecdsa, ec_priv, &data)),
        ),
        (
            "CKM_SHA256_RSA_PKCS sign",
            rv_name(s.sign(&Mechanism::Sha256RsaPkcs, rsa_priv, &data)),
        ),
        (
            "CKM_RSA_PKCS_PSS sign",
            rv_name(s.sign(&Mechanism::RsaPkcsPss(pss), rsa_priv, &data)),
        ),
        (
            "CKM_SHA256_RSA_PKCS_PSS sign",
            rv_name(s.sign(&Mechanism::Sha256RsaPkcsPss(pss), rsa_priv, &data)),
        ),
        (
            "CKM_SHA256_HMAC sign",
            rv_name(s.sign(&Mechanism::Sha256Hmac, hmac, &data)),
        ),
        (
            "CKM_SHA224_HMAC sign",
            rv_name(s.sign(&Mechanism::Sha224Hmac, hmac, &data)),
        ),
        (
            "CKM_AES_CMAC sign",
            rv_name(s.sign(&Mechanism::AesCMac, aes, &data)),
        ),
        (
            "CKM_SHA256 digest",
            rv_name(s.digest(&Mechanism::Sha256, &data)),
        ),
        (
            "CKM_SHA224 digest",
            rv_name(s.digest(&Mechanism::Sha224, &data)),
        ),
        (
            "CKM_AES_ECB encrypt",
            rv_name(s.encrypt(&Mechanism::AesEcb, aes, &data)),
        ),
        (
            "CKM_AES_CBC_PAD encrypt",
            rv_name(s.encrypt(&Mechanism::AesCbcPad([7; 16]), aes, &data)),
        ),
        (
            "CKM_AES_GCM encrypt",
            rv_name(
                cryptoki::mechanism::aead::GcmParams::new(&mut [7u8; 12], &[], 128.into())
                    .and_then(|p| s.encrypt(&Mechanism::AesGcm(p), aes, &data)),
            ),
        ),
        (
            "CKM_AES_KEY_WRAP wrap",
            rv_name(s.wrap_key(&Mechanism::AesKeyWrap, aes, hmac)),
        ),
        (
            "CKM_ECDH1_DERIVE derive",
            rv_name(s.derive_key(
                &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &bare_point)),
                ec_priv,
                &derived_template,
            )),
        ),
        (
            "CKM_EC_EDWARDS_KEY_PAIR_GEN",
            rv_name(s.generate_key_pair(
                &Mechanism::EccEdwardsKeyPairGen,
                &[
                    Attribute::Token(false),
                    Attribute::EcParams(ED25519.to_vec()),
                ],
                &[Attribute::Token(false), Attribute::Sign(true)],
            )),
        ),
        (
            "find objects",
            rv_name(s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])),
        ),
        ("C_WaitForSlotEvent", rv_name(p11.get_slot_event())),
    ] {
        probes.insert(name, rv);
    }
    let version = p11
        .get_library_info()
        .map(|i| i.cryptoki_version().to_string());
    print_marked(
        MARKER,
        &json!({ "mechanisms": mechanisms, "probes": probes, "cryptoki": version.ok() }),
    );
}

// ---- the parent -------------------------------------------------------------------------------

/// `p11-kit server` in the foreground for `module`, with the fixture's configuration, on a
/// socket in the fixture's directory; killed on drop.
struct RpcServer {
    child: Child,
    address: OsString,
}

impl RpcServer {
    fn start(fx: &Fixture, module: &Path) -> RpcServer {
        let socket = fx.dir.path().join("rpc.sock");
        let mut cmd = Command::new("p11-kit");
        cmd.args(["server", "-f", "-n"])
            .arg(&socket)
            .arg("--provider")
            .arg(module)
            .arg("pkcs11:token=p11audit-c-test")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(fx.dir.path().join("rpc-server.err")).unwrap());
        set_env(&mut cmd, &fx.env());
        let child = cmd.spawn().expect("start p11-kit server");
        let started = Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "p11-kit server did not create {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut address = OsString::from("unix:path=");
        address.push(&socket);
        RpcServer { child, address }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn probe(fx: &Fixture, module: &Path, server: Option<&RpcServer>, what: &str) -> Value {
    let mut cmd = child_command("rpc_probe", ROLE, module, &fx.env());
    if let Some(server) = server {
        cmd.env("P11_KIT_SERVER_ADDRESS", &server.address);
    }
    run_child_ok(cmd, fx.dir.path(), what).marked_json(MARKER, what)
}

#[test]
fn what_crosses_p11_kit_rpc_crosses_p11audit_unchanged() {
    let missing = (!Path::new(P11_KIT_CLIENT).is_file()).then(|| {
        format!("{P11_KIT_CLIENT} is missing (scripts/install-deps.sh installs p11-kit-modules)")
    });
    if !runnable_unless("what_crosses_p11_kit_rpc", missing) {
        return;
    }
    let client = Path::new(P11_KIT_CLIENT);
    let direct_fx = Fixture::new();
    let direct = probe(
        &direct_fx,
        Path::new(SOFTHSM),
        None,
        "the probe against SoftHSM",
    );
    let bare_fx = Fixture::new();
    let bare = {
        let server = RpcServer::start(&bare_fx, Path::new(SOFTHSM));
        probe(
            &bare_fx,
            client,
            Some(&server),
            "the probe through the RPC to SoftHSM",
        )
    };
    let shim_fx = Fixture::new();
    let shim = {
        let server = RpcServer::start(&shim_fx, &shim_library());
        probe(
            &shim_fx,
            client,
            Some(&server),
            "the probe through the RPC to p11audit",
        )
    };

    // p11audit behind the RPC changes nothing the RPC carries.
    assert_eq!(shim["mechanisms"], bare["mechanisms"], "mechanisms offered");
    assert_eq!(shim["probes"], bare["probes"], "probe results");
    for name in MUST_CROSS {
        assert_eq!(
            shim["probes"][name], "CKR_OK",
            "{name} does not cross: {shim}"
        );
    }
    shim_fx.assert_verifies("the log behind the RPC");
    let probe_exe = std::fs::read_link("/proc/self/exe").unwrap();
    let records = shim_fx.records();
    let signs = records
        .iter()
        .filter(|r| r["fn"] == "C_Sign" && r["ev"] == "outcome" && r["rv"] == "CKR_OK")
        .count();
    assert!(signs >= 3, "{signs} C_Sign outcomes");
    for r in &records {
        assert_eq!(r["peer"]["exe"], probe_exe.to_str().unwrap(), "{r}");
    }

    // What the RPC itself changes, for DEPLOYMENT.md.
    let list = |v: &Value| -> Vec<String> {
        v["mechanisms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    };
    let over_rpc = list(&bare);
    let missing: Vec<String> = list(&direct)
        .into_iter()
        .filter(|m| !over_rpc.contains(m))
        .collect();
    eprintln!(
        "rpc_limits: mechanisms offered: {} in process, {} over p11-kit's RPC; not offered over \
         the RPC: {}",
        direct["mechanisms"].as_array().unwrap().len(),
        over_rpc.len(),
        missing.join(" ")
    );
    eprintln!(
        "rpc_limits: interface version in process {}, over the RPC {}",
        direct["cryptoki"], bare["cryptoki"]
    );
    for (name, in_process) in direct["probes"].as_object().unwrap() {
        eprintln!(
            "rpc_limits: {name:<30} in process {:<28} over the RPC {}",
            in_process.as_str().unwrap(),
            bare["probes"][name].as_str().unwrap()
        );
    }
}
