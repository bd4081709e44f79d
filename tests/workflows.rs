//! End-to-end workflows against real SoftHSM, once directly and once through the built
//! `libp11audit.so`, then checks of the log the shimmed run wrote: that it tells the story,
//! holds no secrets in any common encoding, recomputes under an independent implementation of
//! the v1 chain, and that `p11audit verify` locates tampering.
//!
//! One process can load SoftHSM only once, and the shim reads its configuration at
//! `C_Initialize`, so each run is a child process: this test binary re-executed with
//! `--exact workflow_child` and `P11AUDIT_TEST_ROLE` set. The child drives the module with the
//! `cryptoki` crate and prints its results as one marked JSON line on stdout. Both runs happen
//! once per test process (on first use) and every test below reads them.

mod common;
use common::*;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

const MODULE_VAR: &str = "P11AUDIT_TEST_MODULE";
const MARK: &str = "P11AUDIT-WORKFLOW-RESULT ";

// Secrets the shimmed run uses. Like USER_PIN and SO_PIN they are shaped so that finding them
// in the log cannot be chance.
const NEW_PIN: &str = "New-canary-Jm4v";
const WRONG_PIN: &str = "Wrong-canary-Rt8";
const PLAINTEXT: &[u8] = b"attack at dawn, canary 7f3e";
const DATA_VALUE: &[u8] = b"data-object-canary-Lp5s";
/// GCM IV: not secret, but the format promises never to write IVs.
const GCM_IV: [u8; 12] = [
    0x9c, 0x3b, 0x71, 0xe2, 0x05, 0xd8, 0x4f, 0xa6, 0x13, 0xbe, 0x62, 0xc9,
];
const GCM_AAD: &[u8] = b"wf-aad-canary-Vb2";
const CBC_IV: [u8; 16] = [
    0x5e, 0x21, 0xc7, 0x88, 0x3a, 0xf4, 0x10, 0x6d, 0xb9, 0x47, 0xe0, 0x2c, 0x95, 0x7b, 0xd3, 0x08,
];
const NEW_TOKEN_LABEL: &str = "wf-fresh-token";

/// The imported AES-256 key: a distinctive pattern.
fn aes_key_value() -> Vec<u8> {
    (0u8..32).map(|i| 0xa5 ^ i.wrapping_mul(37)).collect()
}

/// The imported HMAC key.
fn hmac_key_value() -> Vec<u8> {
    (0u8..32)
        .map(|i| 0x3c ^ i.wrapping_mul(91).rotate_left(3))
        .collect()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

// =============================================================================================
// The child: runs the workflows against whatever module MODULE_VAR names.

/// What a child reports: `results` must be equal for the direct and the shimmed run;
/// `observed` holds run-specific values (signatures, wrapped keys, random bytes) that the log
/// must not contain.
#[derive(Default)]
struct Report {
    results: BTreeMap<String, String>,
    observed: BTreeMap<String, String>,
}

impl Report {
    fn put(&mut self, step: &str, value: impl Into<String>) {
        let old = self.results.insert(step.to_string(), value.into());
        assert!(old.is_none(), "step {step} recorded twice");
    }

    fn step(&mut self, step: &str, r: cryptoki::error::Result<String>) {
        let v = match r {
            Ok(v) => v,
            Err(e) => err_name(&e),
        };
        self.put(step, v);
    }

    fn observe(&mut self, what: &str, bytes: &[u8]) {
        self.observed.insert(what.to_string(), hex(bytes));
    }
}

/// `ERR:CKR_PIN_INCORRECT` for a PKCS#11 error, else the error's debug form.
fn err_name(e: &cryptoki::error::Error) -> String {
    match e {
        cryptoki::error::Error::Pkcs11(rv, _) => {
            let camel = format!("{rv:?}");
            let mut s = String::from("ERR:CKR");
            for c in camel.chars() {
                if c.is_ascii_uppercase() {
                    s.push('_');
                }
                s.push(c.to_ascii_uppercase());
            }
            s
        }
        other => format!("ERR:{other:?}"),
    }
}

fn ok<T>(r: cryptoki::error::Result<T>) -> cryptoki::error::Result<String> {
    r.map(|_| "ok".to_string())
}

#[test]
fn workflow_child() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return; // Only a re-executed child runs the workflows.
    };
    let module = std::env::var(MODULE_VAR).expect("child needs the module path");
    let report = run_workflows(Path::new(&module));
    let out = serde_json::json!({
        "role": role,
        "results": report.results,
        "observed": report.observed,
    });
    print_marked(MARK, &out);
}

fn run_workflows(module: &Path) -> Report {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};

    let mut r = Report::default();
    let p11 = Pkcs11::new(module).expect("load module");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");

    let slots = p11.get_slots_with_initialized_token().expect("slot list");
    assert_eq!(slots.len(), 1, "the fixture makes exactly one token");
    let slot = slots[0];
    let mechs = p11.get_mechanism_list(slot).expect("mechanism list");
    let mut mech_ids: Vec<u64> = mechs
        .iter()
        .map(|m| cryptoki_sys::CK_MECHANISM_TYPE::from(*m))
        .collect();
    mech_ids.sort_unstable();
    r.put("mechanism_list", format!("{mech_ids:?}"));
    r.step(
        "mechanism_info_sha256_rsa",
        p11.get_mechanism_info(slot, cryptoki::mechanism::MechanismType::SHA256_RSA_PKCS)
            .map(|i| format!("{i:?}")),
    );
    let info = p11.get_token_info(slot).expect("token info");
    r.put("token_label", info.label().to_string());

    token_lifecycle(&p11, &mut r);
    main_token(&p11, slot, &mut r);

    r.step("finalize", ok(p11.finalize()));
    r
}

/// C_InitToken on the free slot, then InitPIN, SetPIN, SO and user logins with right and
/// wrong PINs.
fn token_lifecycle(p11: &cryptoki::context::Pkcs11, r: &mut Report) {
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let pin = |s: &str| AuthPin::new(s.into());

    let free = p11
        .get_all_slots()
        .expect("all slots")
        .into_iter()
        .find(|s| {
            p11.get_token_info(*s)
                .map(|t| !t.token_initialized())
                .unwrap_or(false)
        })
        .expect("SoftHSM always offers one free slot");
    r.step(
        "init_token",
        ok(p11.init_token(free, &pin(SO_PIN), NEW_TOKEN_LABEL)),
    );
    r.step(
        "new_token_label",
        p11.get_token_info(free).map(|t| t.label().to_string()),
    );
    let s = p11.open_rw_session(free).expect("session on the new token");
    r.step(
        "new_so_login_wrong",
        ok(s.login(UserType::So, Some(&pin(WRONG_PIN)))),
    );
    r.step(
        "new_so_login",
        ok(s.login(UserType::So, Some(&pin(SO_PIN)))),
    );
    r.step("new_init_pin", ok(s.init_pin(&pin(USER_PIN))));
    r.step("new_so_logout", ok(s.logout()));
    r.step(
        "new_user_pin_initialized",
        p11.get_token_info(free)
            .map(|t| t.user_pin_initialized().to_string()),
    );
    r.step(
        "new_user_login",
        ok(s.login(UserType::User, Some(&pin(USER_PIN)))),
    );
    r.step("new_set_pin", ok(s.set_pin(&pin(USER_PIN), &pin(NEW_PIN))));
    r.step("new_user_logout", ok(s.logout()));
    r.step(
        "new_user_login_old_pin",
        ok(s.login(UserType::User, Some(&pin(USER_PIN)))),
    );
    r.step(
        "new_user_login_new_pin",
        ok(s.login(UserType::User, Some(&pin(NEW_PIN)))),
    );
    r.step("new_user_logout_2", ok(s.logout()));
    r.step("new_close_session", ok(s.close()));
}

fn main_token(p11: &cryptoki::context::Pkcs11, slot: cryptoki::slot::Slot, r: &mut Report) {
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let pin = |s: &str| AuthPin::new(s.into());

    let s = p11
        .open_rw_session(slot)
        .expect("session on the fixture token");
    // SO in and out, then the user: first with a wrong PIN.
    r.step("so_login", ok(s.login(UserType::So, Some(&pin(SO_PIN)))));
    r.step("so_logout", ok(s.logout()));
    r.step(
        "user_login_wrong",
        ok(s.login(UserType::User, Some(&pin(WRONG_PIN)))),
    );
    r.step(
        "user_login",
        ok(s.login(UserType::User, Some(&pin(USER_PIN)))),
    );
    r.step(
        "user_login_again",
        ok(s.login(UserType::User, Some(&pin(USER_PIN)))),
    );

    let k = objects(&s, r);
    let g = generate(&s, r);
    wrap_and_derive(&s, &k, &g, r);
    encrypt_decrypt(&s, &k, r);
    digest(&s, &k, r);
    sign_verify(&s, &k, &g, r);
    random(&s, r);

    r.step("user_logout", ok(s.logout()));
    r.step("close_session", ok(s.close()));
}

/// Handles of the imported keys.
struct Imported {
    aes: cryptoki::object::ObjectHandle,
    hmac: cryptoki::object::ObjectHandle,
}

/// Handles of the generated keys.
struct Generated {
    aes: cryptoki::object::ObjectHandle,
    ec_pub: cryptoki::object::ObjectHandle,
    ec_priv: cryptoki::object::ObjectHandle,
    ec2_pub: cryptoki::object::ObjectHandle,
    ec2_priv: cryptoki::object::ObjectHandle,
    rsa_pub: cryptoki::object::ObjectHandle,
    rsa_priv: cryptoki::object::ObjectHandle,
}

fn cbc(iv: [u8; 16]) -> cryptoki::mechanism::Mechanism<'static> {
    cryptoki::mechanism::Mechanism::AesCbcPad(iv)
}

/// Create, copy, get/set attributes, find, destroy.
fn objects(s: &cryptoki::session::Session, r: &mut Report) -> Imported {
    use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};

    let data = s
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(false),
            Attribute::Label(b"wf-data".to_vec()),
            Attribute::Application(b"p11audit-workflows".to_vec()),
            Attribute::Value(DATA_VALUE.to_vec()),
        ])
        .expect("create data object");
    let aes = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Label(b"wf-imported-aes".to_vec()),
            Attribute::Id(vec![0xa1, 0x01]),
            Attribute::Value(aes_key_value()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ])
        .expect("import AES key");
    let hmac = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Label(b"wf-hmac".to_vec()),
            Attribute::Id(vec![0x4d]),
            Attribute::Value(hmac_key_value()),
            Attribute::Sign(true),
            Attribute::Verify(true),
        ])
        .expect("import HMAC key");

    r.step(
        "data_attributes",
        s.get_attributes(
            data,
            &[
                AttributeType::Class,
                AttributeType::Label,
                AttributeType::Application,
                AttributeType::Value,
            ],
        )
        .map(|a| format!("{a:?}")),
    );
    r.step(
        "aes_attributes",
        s.get_attributes(
            aes,
            &[
                AttributeType::Class,
                AttributeType::KeyType,
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::ValueLen,
                AttributeType::Sensitive,
                AttributeType::Local,
            ],
        )
        .map(|a| format!("{a:?}")),
    );
    // The application may read a non-sensitive key's value; the log still must not hold it.
    r.step(
        "aes_value_read_back",
        s.get_attributes(aes, &[AttributeType::Value])
            .map(|a| (a == vec![Attribute::Value(aes_key_value())]).to_string()),
    );

    r.step(
        "set_attribute",
        ok(s.update_attributes(data, &[Attribute::Label(b"wf-data-renamed".to_vec())])),
    );
    r.step(
        "label_after_set",
        s.get_attributes(data, &[AttributeType::Label])
            .map(|a| format!("{a:?}")),
    );

    let copy = s.copy_object(aes, &[Attribute::Label(b"wf-aes-copy".to_vec())]);
    r.step(
        "copy_object",
        ok(copy.as_ref().map(|_| ()).map_err(clone_err)),
    );
    if let Ok(copy) = copy {
        r.step(
            "copy_attributes",
            s.get_attributes(copy, &[AttributeType::Label, AttributeType::Id])
                .map(|a| format!("{a:?}")),
        );
        let a = s.encrypt(&cbc(CBC_IV), aes, PLAINTEXT);
        let b = s.encrypt(&cbc(CBC_IV), copy, PLAINTEXT);
        r.step(
            "copy_encrypts_like_original",
            a.and_then(|a| b.map(|b| (a == b).to_string())),
        );
        r.step("destroy_copy", ok(s.destroy_object(copy)));
    }

    let count = |t: &[Attribute]| s.find_objects(t).map(|v| v.len().to_string());
    r.step(
        "find_imported",
        count(&[Attribute::Label(b"wf-imported-aes".to_vec())]),
    );
    r.step(
        "find_copy_after_destroy",
        count(&[Attribute::Label(b"wf-aes-copy".to_vec())]),
    );
    r.step(
        "find_secret_keys",
        count(&[Attribute::Class(ObjectClass::SECRET_KEY)]),
    );
    r.step("destroy_data", ok(s.destroy_object(data)));
    r.step(
        "find_data_after_destroy",
        count(&[Attribute::Class(ObjectClass::DATA)]),
    );
    Imported { aes, hmac }
}

fn generate(s: &cryptoki::session::Session, r: &mut Report) -> Generated {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType};

    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"wf-aes-gen".to_vec()),
                Attribute::Id(vec![0xa2]),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
            ],
        )
        .expect("generate AES-256");
    r.step(
        "gen_aes_attributes",
        s.get_attributes(
            aes,
            &[
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Local,
                AttributeType::Sensitive,
                AttributeType::Label,
            ],
        )
        .map(|a| format!("{a:?}")),
    );

    let ec_pair = |label: &str, id: u8| {
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::EcParams(P256_OID.to_vec()),
                Attribute::Verify(true),
                Attribute::Label(format!("{label}-pub").into_bytes()),
                Attribute::Id(vec![id]),
            ],
            &[
                Attribute::Token(false),
                Attribute::Sign(true),
                Attribute::Derive(true),
                Attribute::Sensitive(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(vec![id]),
            ],
        )
    };
    let (ec_pub, ec_priv) = ec_pair("wf-ec", 0xec).expect("generate EC P-256");
    let (ec2_pub, ec2_priv) = ec_pair("wf-ec2", 0xed).expect("generate second EC P-256");
    r.step(
        "gen_ec_attributes",
        s.get_attributes(
            ec_priv,
            &[
                AttributeType::Class,
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::Label,
                AttributeType::Id,
            ],
        )
        .map(|a| format!("{a:?}")),
    );

    let (rsa_pub, rsa_priv) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                Attribute::Verify(true),
                Attribute::Encrypt(true),
                Attribute::Wrap(true),
                Attribute::Label(b"wf-rsa-pub".to_vec()),
                Attribute::Id(vec![0x52, 0x53]),
            ],
            &[
                Attribute::Token(false),
                Attribute::Sign(true),
                Attribute::Decrypt(true),
                Attribute::Unwrap(true),
                Attribute::Sensitive(true),
                Attribute::Label(b"wf-rsa".to_vec()),
                Attribute::Id(vec![0x52, 0x53]),
            ],
        )
        .expect("generate RSA-2048");
    r.step(
        "gen_rsa_attributes",
        s.get_attributes(
            rsa_pub,
            &[
                AttributeType::KeyType,
                AttributeType::ModulusBits,
                AttributeType::PublicExponent,
                AttributeType::Label,
            ],
        )
        .map(|a| format!("{a:?}")),
    );
    Generated {
        aes,
        ec_pub,
        ec_priv,
        ec2_pub,
        ec2_priv,
        rsa_pub,
        rsa_priv,
    }
}

fn wrap_and_derive(s: &cryptoki::session::Session, k: &Imported, g: &Generated, r: &mut Report) {
    use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
    use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
    use cryptoki::mechanism::{Mechanism, MechanismType};
    use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};

    let unwrap_template = |label: &str| {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    };
    let same_cipher = |a: cryptoki::object::ObjectHandle,
                       b: cryptoki::object::ObjectHandle|
     -> cryptoki::error::Result<String> {
        let x = s.encrypt(&cbc(CBC_IV), a, PLAINTEXT)?;
        let y = s.encrypt(&cbc(CBC_IV), b, PLAINTEXT)?;
        Ok((x == y).to_string())
    };

    // AES key wrap (RFC 3394) of the imported key under the generated one.
    match s.wrap_key(&Mechanism::AesKeyWrap, g.aes, k.aes) {
        Ok(wrapped) => {
            r.put("aes_kw_wrapped_len", wrapped.len().to_string());
            r.observe("aes_kw_wrapped", &wrapped);
            let u = s.unwrap_key(
                &Mechanism::AesKeyWrap,
                g.aes,
                &wrapped,
                &unwrap_template("wf-unwrapped-kw"),
            );
            r.step(
                "aes_kw_unwrap",
                ok(u.as_ref().map(|_| ()).map_err(clone_err)),
            );
            if let Ok(u) = u {
                r.step("aes_kw_unwrapped_matches", same_cipher(k.aes, u));
            }
        }
        Err(e) => r.put("aes_kw_wrapped_len", err_name(&e)),
    }

    // RSA-OAEP (SHA-1, as SoftHSM 2.6 requires) wrap of the generated AES key.
    let oaep = || {
        Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
            MechanismType::SHA1,
            PkcsMgfType::MGF1_SHA1,
            PkcsOaepSource::empty(),
        ))
    };
    match s.wrap_key(&oaep(), g.rsa_pub, g.aes) {
        Ok(wrapped) => {
            r.put("oaep_wrapped_len", wrapped.len().to_string());
            r.observe("oaep_wrapped", &wrapped);
            let u = s.unwrap_key(
                &oaep(),
                g.rsa_priv,
                &wrapped,
                &unwrap_template("wf-unwrapped-oaep"),
            );
            r.step("oaep_unwrap", ok(u.as_ref().map(|_| ()).map_err(clone_err)));
            if let Ok(u) = u {
                r.step("oaep_unwrapped_matches", same_cipher(g.aes, u));
            }
        }
        Err(e) => r.put("oaep_wrapped_len", err_name(&e)),
    }

    // ECDH: A's private with B's public and B's private with A's public give the same key.
    let point = |h| -> cryptoki::error::Result<Vec<u8>> {
        match s.get_attributes(h, &[AttributeType::EcPoint])?.pop() {
            Some(Attribute::EcPoint(p)) => Ok(p),
            other => panic!("expected CKA_EC_POINT, got {other:?}"),
        }
    };
    let derive = |base, other_pub, label: &str| -> cryptoki::error::Result<_> {
        let pt = point(other_pub)?;
        let params = Ecdh1DeriveParams::new(EcKdf::null(), &pt);
        s.derive_key(
            &Mechanism::Ecdh1Derive(params),
            base,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Sensitive(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
    };
    let a = derive(g.ec_priv, g.ec2_pub, "wf-ecdh-a");
    let b = derive(g.ec2_priv, g.ec_pub, "wf-ecdh-b");
    r.step(
        "ecdh_derive_a",
        ok(a.as_ref().map(|_| ()).map_err(clone_err)),
    );
    r.step(
        "ecdh_derive_b",
        ok(b.as_ref().map(|_| ()).map_err(clone_err)),
    );
    if let (Ok(a), Ok(b)) = (a, b) {
        r.step(
            "ecdh_shared_key_agrees",
            s.encrypt(&cbc(CBC_IV), a, PLAINTEXT)
                .and_then(|c| s.decrypt(&cbc(CBC_IV), b, &c))
                .map(|p| (p == PLAINTEXT).to_string()),
        );
    }
}

fn encrypt_decrypt(s: &cryptoki::session::Session, k: &Imported, r: &mut Report) {
    use cryptoki::mechanism::aead::GcmParams;
    use cryptoki::mechanism::Mechanism;

    let split = 10;
    // AES-CBC-PAD, single-part and multi-part.
    let single = s.encrypt(&cbc(CBC_IV), k.aes, PLAINTEXT);
    r.step(
        "cbc_encrypt",
        single.as_ref().map(|c| hex(c)).map_err(clone_err),
    );
    if let Ok(c) = &single {
        r.step(
            "cbc_decrypt",
            s.decrypt(&cbc(CBC_IV), k.aes, c)
                .map(|p| (p == PLAINTEXT).to_string()),
        );
    }
    let multi = (|| -> cryptoki::error::Result<Vec<u8>> {
        s.encrypt_init(&cbc(CBC_IV), k.aes)?;
        let mut out = s.encrypt_update(&PLAINTEXT[..split])?;
        out.extend(s.encrypt_update(&PLAINTEXT[split..])?);
        out.extend(s.encrypt_final()?);
        Ok(out)
    })();
    r.step(
        "cbc_encrypt_multi",
        multi.as_ref().map(|c| hex(c)).map_err(clone_err),
    );
    if let Ok(c) = &multi {
        r.step(
            "cbc_decrypt_multi",
            (|| -> cryptoki::error::Result<String> {
                s.decrypt_init(&cbc(CBC_IV), k.aes)?;
                let mut out = s.decrypt_update(&c[..7])?;
                out.extend(s.decrypt_update(&c[7..])?);
                out.extend(s.decrypt_final()?);
                Ok((out == PLAINTEXT).to_string())
            })(),
        );
    }

    // AES-GCM (96-bit IV, AAD, 128-bit tag), single-part and multi-part.
    let gcm_once = |f: &dyn Fn(&Mechanism) -> cryptoki::error::Result<Vec<u8>>| {
        let mut iv = GCM_IV;
        let params = GcmParams::new(&mut iv, GCM_AAD, 128.into()).expect("GCM params");
        f(&Mechanism::AesGcm(params))
    };
    let single = gcm_once(&|m| s.encrypt(m, k.aes, PLAINTEXT));
    r.step(
        "gcm_encrypt",
        single.as_ref().map(|c| hex(c)).map_err(clone_err),
    );
    if let Ok(c) = &single {
        r.step(
            "gcm_decrypt",
            gcm_once(&|m| s.decrypt(m, k.aes, c)).map(|p| (p == PLAINTEXT).to_string()),
        );
        let mut bad = c.clone();
        bad[0] ^= 1;
        r.step(
            "gcm_decrypt_tampered",
            gcm_once(&|m| s.decrypt(m, k.aes, &bad)).map(|_| "accepted".to_string()),
        );
    }
    let multi = gcm_once(&|m| {
        s.encrypt_init(m, k.aes)?;
        let mut out = s.encrypt_update(&PLAINTEXT[..split])?;
        out.extend(s.encrypt_update(&PLAINTEXT[split..])?);
        out.extend(s.encrypt_final()?);
        Ok(out)
    });
    r.step(
        "gcm_encrypt_multi",
        multi.as_ref().map(|c| hex(c)).map_err(clone_err),
    );
    if let Ok(c) = &multi {
        r.step(
            "gcm_decrypt_multi",
            gcm_once(&|m| {
                s.decrypt_init(m, k.aes)?;
                let mut out = s.decrypt_update(&c[..split])?;
                out.extend(s.decrypt_update(&c[split..])?);
                out.extend(s.decrypt_final()?);
                Ok(out)
            })
            .map(|p| (p == PLAINTEXT).to_string()),
        );
    }
}

fn clone_err(e: &cryptoki::error::Error) -> cryptoki::error::Error {
    match e {
        cryptoki::error::Error::Pkcs11(rv, f) => cryptoki::error::Error::Pkcs11(*rv, *f),
        _ => cryptoki::error::Error::InvalidValue,
    }
}

fn digest(s: &cryptoki::session::Session, k: &Imported, r: &mut Report) {
    use cryptoki::mechanism::Mechanism;
    r.step(
        "digest",
        s.digest(&Mechanism::Sha256, PLAINTEXT).map(|d| hex(&d)),
    );
    r.step(
        "digest_multi",
        (|| {
            s.digest_init(&Mechanism::Sha256)?;
            s.digest_update(&PLAINTEXT[..5])?;
            s.digest_update(&PLAINTEXT[5..])?;
            s.digest_final().map(|d| hex(&d))
        })(),
    );
    r.step(
        "digest_key",
        (|| {
            s.digest_init(&Mechanism::Sha256)?;
            s.digest_key(k.aes)?;
            s.digest_final().map(|d| hex(&d))
        })(),
    );
}

fn sign_verify(s: &cryptoki::session::Session, k: &Imported, g: &Generated, r: &mut Report) {
    use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
    use cryptoki::mechanism::{Mechanism, MechanismType};

    let pss = || {
        Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: 32.into(),
        })
    };
    let hashed = sha256(PLAINTEXT);
    let mut tampered = PLAINTEXT.to_vec();
    tampered[0] ^= 0x20;

    struct Case<'a> {
        name: &'a str,
        mech: Mechanism<'a>,
        sign_key: cryptoki::object::ObjectHandle,
        verify_key: cryptoki::object::ObjectHandle,
        data: &'a [u8],
    }
    let cases = [
        Case {
            name: "rsa_pkcs",
            mech: Mechanism::Sha256RsaPkcs,
            sign_key: g.rsa_priv,
            verify_key: g.rsa_pub,
            data: PLAINTEXT,
        },
        Case {
            name: "rsa_pss",
            mech: pss(),
            sign_key: g.rsa_priv,
            verify_key: g.rsa_pub,
            data: PLAINTEXT,
        },
        // Raw ECDSA signs a hash. SoftHSM 2.6.1 has no CKM_ECDSA_SHA256 and refuses
        // multi-part raw ECDSA: the multi-part attempt records that refusal, which must be the
        // same through the shim.
        Case {
            name: "ecdsa",
            mech: Mechanism::Ecdsa,
            sign_key: g.ec_priv,
            verify_key: g.ec_pub,
            data: &hashed,
        },
        Case {
            name: "hmac",
            mech: Mechanism::Sha256Hmac,
            sign_key: k.hmac,
            verify_key: k.hmac,
            data: PLAINTEXT,
        },
    ];
    for c in &cases {
        let n = c.name;
        let deterministic = matches!(n, "rsa_pkcs" | "hmac");
        let sig = s.sign(&c.mech, c.sign_key, c.data);
        match &sig {
            Ok(sig) => {
                r.put(&format!("{n}_sign_len"), sig.len().to_string());
                r.observe(&format!("{n}_sig"), sig);
                if n == "hmac" {
                    r.put("hmac_value", hex(sig));
                }
                r.step(
                    &format!("{n}_verify"),
                    ok(s.verify(&c.mech, c.verify_key, c.data, sig)),
                );
                let mut wrong = c.data.to_vec();
                wrong[0] ^= 0x20;
                r.step(
                    &format!("{n}_verify_wrong_data"),
                    ok(s.verify(&c.mech, c.verify_key, &wrong, sig)),
                );
            }
            Err(e) => r.put(&format!("{n}_sign_len"), err_name(e)),
        }
        let multi = (|| {
            s.sign_init(&c.mech, c.sign_key)?;
            s.sign_update(&c.data[..4])?;
            s.sign_update(&c.data[4..])?;
            s.sign_final()
        })();
        match &multi {
            Ok(m) => {
                r.put(&format!("{n}_sign_multi_len"), m.len().to_string());
                if deterministic {
                    if let Ok(sig) = &sig {
                        r.put(&format!("{n}_multi_equals_single"), (m == sig).to_string());
                    }
                }
                r.step(
                    &format!("{n}_verify_multi"),
                    ok((|| {
                        s.verify_init(&c.mech, c.verify_key)?;
                        s.verify_update(&c.data[..9])?;
                        s.verify_update(&c.data[9..])?;
                        s.verify_final(m)
                    })()),
                );
                r.step(
                    &format!("{n}_verify_multi_wrong_data"),
                    ok((|| {
                        s.verify_init(&c.mech, c.verify_key)?;
                        s.verify_update(&tampered)?;
                        s.verify_final(m)
                    })()),
                );
            }
            Err(e) => r.put(&format!("{n}_sign_multi_len"), err_name(e)),
        }
    }
}

fn random(s: &cryptoki::session::Session, r: &mut Report) {
    r.step("seed_random", ok(s.seed_random(b"wf-seed")));
    let a = s.generate_random_vec(32);
    let b = s.generate_random_vec(32);
    match (&a, &b) {
        (Ok(a), Ok(b)) => {
            r.put("random_len", format!("{} {}", a.len(), b.len()));
            r.put("random_differs", (a != b).to_string());
            r.observe("random_a", a);
            r.observe("random_b", b);
        }
        (Err(e), _) | (_, Err(e)) => r.put("random_len", err_name(e)),
    }
}

// =============================================================================================
// The parent: runs the two children once and shares what they did.

struct Run {
    fixture: Fixture,
    results: BTreeMap<String, String>,
    observed: BTreeMap<String, String>,
}

struct Runs {
    direct: Run,
    shim: Run,
}

/// Temporary directories to remove at exit (the shared runs live in a static, never dropped).
static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_temp_dirs() {
    if let Ok(dirs) = CLEANUP.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn run_child(role: &str, module: &Path) -> Run {
    let fixture = Fixture::new();
    let mut env = fixture.env();
    env.push((MODULE_VAR, module.into()));
    let what = format!("child-{role}");
    let done = run_child_ok(
        child_command("workflow_child", ROLE_VAR, role, &env),
        fixture.dir.path(),
        &what,
    );
    let v = done.marked_json(MARK, &what);
    let map = |k: &str| -> BTreeMap<String, String> {
        serde_json::from_value(v[k].clone()).expect("string map")
    };
    Run {
        results: map("results"),
        observed: map("observed"),
        fixture,
    }
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Result<Runs, String>> = OnceLock::new();
    let r = RUNS.get_or_init(|| {
        let shim = shim_library();
        // The two children are independent: run them side by side.
        let direct = std::thread::spawn(|| run_child("direct", Path::new(SOFTHSM)));
        let shimmed = std::thread::spawn(move || run_child("shim", &shim));
        let (d, s) = (direct.join(), shimmed.join());
        let mut dirs = Vec::new();
        for r in [&d, &s].into_iter().flatten() {
            dirs.push(r.fixture.dir.path().to_path_buf());
        }
        if !dirs.is_empty() {
            CLEANUP.lock().unwrap().extend(dirs);
            // SAFETY: registers a plain extern "C" function with no arguments.
            unsafe { libc::atexit(remove_temp_dirs) };
        }
        let why = |e: Box<dyn std::any::Any + Send>| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_string())
        };
        match (d, s) {
            (Ok(direct), Ok(shim)) => Ok(Runs { direct, shim }),
            (Err(e), _) => Err(format!("direct run: {}", why(e))),
            (_, Err(e)) => Err(format!("shimmed run: {}", why(e))),
        }
    });
    match r {
        Ok(r) => r,
        Err(e) => panic!("the workflow runs failed:\n{e}"),
    }
}

fn log_text() -> String {
    std::fs::read_to_string(&runs().shim.fixture.log).expect("read the shim's log")
}

fn records() -> Vec<Value> {
    runs().shim.fixture.records()
}

// =============================================================================================
// 1. The shim changes nothing an application can see.

#[test]
fn direct_and_shimmed_workflows_agree() {
    let runs = runs();
    let (d, s) = (&runs.direct.results, &runs.shim.results);
    assert!(
        !runs.direct.fixture.log.exists(),
        "the direct run wrote an audit log: it did not load SoftHSM directly"
    );

    // Every step ran in both, with the same result.
    let mut diffs = Vec::new();
    for key in d.keys().chain(s.keys()) {
        if d.get(key) != s.get(key) && !diffs.iter().any(|(k, _, _)| k == key) {
            diffs.push((key.clone(), d.get(key).cloned(), s.get(key).cloned()));
        }
    }
    assert!(
        diffs.is_empty(),
        "direct and shimmed runs differ (step, direct, shim):\n{}",
        diffs
            .iter()
            .map(|(k, a, b)| format!("  {k}: {a:?} vs {b:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // And the results are the right ones (so agreement is not agreement on a failure).
    let expect = |step: &str, want: &str| {
        assert_eq!(
            d.get(step).map(String::as_str),
            Some(want),
            "step {step} (direct run; the shimmed run agrees)"
        );
    };
    let expected_errors = [
        ("new_so_login_wrong", "ERR:CKR_PIN_INCORRECT"),
        ("user_login_wrong", "ERR:CKR_PIN_INCORRECT"),
        ("new_user_login_old_pin", "ERR:CKR_PIN_INCORRECT"),
        ("user_login_again", "ERR:CKR_USER_ALREADY_LOGGED_IN"),
        // SoftHSM 2.6.1 reports a failed GCM tag check as a general error.
        ("gcm_decrypt_tampered", "ERR:CKR_GENERAL_ERROR"),
        // SoftHSM 2.6.1 refuses C_SignUpdate for raw ECDSA this way.
        ("ecdsa_sign_multi_len", "ERR:CKR_OPERATION_NOT_INITIALIZED"),
    ];
    for (step, want) in expected_errors {
        expect(step, want);
    }
    let signature_invalid = d
        .iter()
        .filter(|(k, _)| k.contains("wrong_data"))
        .collect::<Vec<_>>();
    // rsa_pkcs, rsa_pss and hmac single- and multi-part, ecdsa single-part.
    assert_eq!(signature_invalid.len(), 7, "{signature_invalid:?}");
    for (k, v) in &signature_invalid {
        assert_eq!(v.as_str(), "ERR:CKR_SIGNATURE_INVALID", "step {k}");
    }
    for (k, v) in d {
        let expected_err = expected_errors.iter().any(|(s, _)| s == k) || k.contains("wrong_data");
        assert!(
            expected_err || !v.starts_with("ERR:"),
            "step {k} failed: {v}"
        );
        if v == "false" {
            panic!("step {k} checked false");
        }
    }
    for step in [
        "init_token",
        "new_so_login",
        "new_init_pin",
        "new_set_pin",
        "new_user_login_new_pin",
        "so_login",
        "user_login",
        "copy_object",
        "destroy_copy",
        "aes_kw_unwrap",
        "oaep_unwrap",
        "ecdh_derive_a",
        "rsa_pkcs_verify",
        "rsa_pss_verify_multi",
        "ecdsa_verify",
        "hmac_verify_multi",
        "seed_random",
        "finalize",
    ] {
        expect(step, "ok");
    }
    for step in [
        "aes_value_read_back",
        "copy_encrypts_like_original",
        "aes_kw_unwrapped_matches",
        "oaep_unwrapped_matches",
        "ecdh_shared_key_agrees",
        "cbc_decrypt",
        "cbc_decrypt_multi",
        "gcm_decrypt",
        "gcm_decrypt_multi",
        "rsa_pkcs_multi_equals_single",
        "hmac_multi_equals_single",
        "random_differs",
        "new_user_pin_initialized",
    ] {
        expect(step, "true");
    }
    expect("new_token_label", NEW_TOKEN_LABEL);
    expect("find_imported", "1");
    expect("find_copy_after_destroy", "0");
    expect("find_data_after_destroy", "0");
    expect("aes_kw_wrapped_len", "40");
    expect("oaep_wrapped_len", "256");
    expect("rsa_pkcs_sign_len", "256");
    expect("rsa_pss_sign_len", "256");
    expect("ecdsa_sign_len", "64");
    expect("random_len", "32 32");
    expect("digest", &hex(&sha256(PLAINTEXT)));
    expect("digest_multi", &hex(&sha256(PLAINTEXT)));
    expect("digest_key", &hex(&sha256(&aes_key_value())));
    expect(
        "hmac_value",
        &hex(&hmac_sha256(&hmac_key_value(), PLAINTEXT)),
    );
    // Multi-part output equals single-part output for the deterministic modes.
    assert_eq!(d["cbc_encrypt"], d["cbc_encrypt_multi"]);
    assert_eq!(d["gcm_encrypt"], d["gcm_encrypt_multi"]);
    assert_eq!(d["gcm_encrypt"].len(), 2 * (PLAINTEXT.len() + 16));
    assert!(d["label_after_set"].contains(&format!("{:?}", b"wf-data-renamed")));
}

// =============================================================================================
// 2. The log tells the story.

fn fn_ev<'a>(recs: &'a [Value], f: &str, ev: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["fn"] == f && r["ev"] == ev)
        .collect()
}

fn mech(r: &Value) -> &Value {
    &r["mechanism"]["type"]
}

fn template_label(template: &Value) -> Option<&str> {
    template
        .as_array()?
        .iter()
        .find(|a| a["type"] == "CKA_LABEL")?["value"]
        .as_str()
}

#[test]
fn shim_log_verifies() {
    let out = runs().shim.fixture.assert_verifies("the shim's log");
    assert!(out.starts_with("OK: chain intact"), "{out}");
}

#[test]
fn log_tells_the_story_of_signing() {
    let recs = records();
    // The RSA PKCS#1 v1.5 key: C_SignInit is a prepare call, with no intent; its outcome, or
    // the outcome that tells it (`init`), names the key and mechanism.
    assert!(
        fn_ev(&recs, "C_SignInit", "intent").is_empty(),
        "a prepare call has no intent"
    );
    assert!(
        recs.iter().any(|r| r["init"]["fn"] == "C_SignInit"),
        "no C_SignInit told in its operation's first outcome"
    );
    let with_inits = outcomes_with_told_inits(&recs);
    let init_outcomes: Vec<_> = fn_ev(&with_inits, "C_SignInit", "outcome")
        .into_iter()
        .filter(|r| *mech(r) == "CKM_SHA256_RSA_PKCS")
        .collect();
    assert!(
        !init_outcomes.is_empty(),
        "no C_SignInit outcome with CKM_SHA256_RSA_PKCS"
    );
    for r in &init_outcomes {
        assert_eq!(r["rv"], "CKR_OK", "{r}");
        assert!(r.get("intent").is_none(), "{r}");
        assert_eq!(r["key"]["label"], "wf-rsa", "{r}");
        assert_eq!(r["key"]["id"]["hex"], "5253", "{r}");
        assert_eq!(r["key"]["class"], "CKO_PRIVATE_KEY", "{r}");
        assert_eq!(r["key"]["key_type"], "CKK_RSA", "{r}");
        assert_eq!(r["login"], "user", "{r}");
    }

    // One C_Sign outcome: the signature handed out, counting the length query before it.
    let signs: Vec<_> = fn_ev(&recs, "C_Sign", "outcome")
        .into_iter()
        .filter(|r| *mech(r) == "CKM_SHA256_RSA_PKCS")
        .collect();
    assert_eq!(
        signs.len(),
        1,
        "cryptoki signs once: length query + sign: {signs:?}"
    );
    let returned = signs[0];
    assert_eq!(returned["out"], "returned", "{returned}");
    assert_eq!(returned["out_len"], 256, "{returned}");
    assert_eq!(returned["len_queries"], 1, "{returned}");
    assert_eq!(returned["rv"], "CKR_OK", "{returned}");
    assert_eq!(returned["key"]["label"], "wf-rsa", "{returned}");
    assert_eq!(returned["key"]["id"]["hex"], "5253", "{returned}");
    assert_eq!(returned["in_len"], PLAINTEXT.len(), "{returned}");
    // Multi-part: updates and the final carry the key and mechanism too.
    let updates: Vec<_> = fn_ev(&recs, "C_SignUpdate", "outcome")
        .into_iter()
        .filter(|r| *mech(r) == "CKM_SHA256_RSA_PKCS")
        .collect();
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert!(updates.iter().all(|r| r["key"]["label"] == "wf-rsa"));
    let finals: Vec<_> = fn_ev(&recs, "C_SignFinal", "outcome")
        .into_iter()
        .filter(|r| *mech(r) == "CKM_SHA256_RSA_PKCS")
        .collect();
    assert_eq!(
        finals
            .iter()
            .map(|r| (r["out"].as_str(), r["len_queries"].as_u64()))
            .collect::<Vec<_>>(),
        [(Some("returned"), Some(1))]
    );

    // Verification verdicts: one good, one CKR_SIGNATURE_INVALID per single-part case.
    let verifies: Vec<_> = fn_ev(&recs, "C_Verify", "outcome")
        .into_iter()
        .filter(|r| *mech(r) == "CKM_SHA256_RSA_PKCS")
        .collect();
    let rvs: Vec<_> = verifies.iter().map(|r| r["rv"].as_str()).collect();
    assert_eq!(rvs, [Some("CKR_OK"), Some("CKR_SIGNATURE_INVALID")]);
    for r in &verifies {
        assert_eq!(r["key"]["label"], "wf-rsa-pub", "{r}");
        assert_eq!(r["sig_len"], 256, "{r}");
    }

    // ECDSA and HMAC are named and tied to their keys as well.
    for (m, label) in [("CKM_ECDSA", "wf-ec"), ("CKM_SHA256_HMAC", "wf-hmac")] {
        let s: Vec<_> = fn_ev(&recs, "C_Sign", "outcome")
            .into_iter()
            .filter(|r| *mech(r) == m)
            .collect();
        assert!(!s.is_empty(), "no C_Sign outcome for {m}");
        assert!(s.iter().all(|r| r["key"]["label"] == label), "{m}: {s:?}");
        assert!(s.iter().any(|r| r["out"] == "returned"), "{m}: {s:?}");
    }
}

#[test]
fn log_shows_generated_keys() {
    let recs = records();
    let gen_intents = fn_ev(&recs, "C_GenerateKey", "intent");
    let aes = gen_intents
        .iter()
        .find(|r| template_label(&r["template"]) == Some("wf-aes-gen"))
        .unwrap_or_else(|| {
            panic!("no C_GenerateKey intent with label wf-aes-gen: {gen_intents:?}")
        });
    assert_eq!(*mech(aes), "CKM_AES_KEY_GEN", "{aes}");
    let tmpl = aes["template"].as_array().unwrap();
    let value_len = tmpl.iter().find(|a| a["type"] == "CKA_VALUE_LEN").unwrap();
    assert_eq!(value_len["value"], 32, "{aes}");
    let outcome = fn_ev(&recs, "C_GenerateKey", "outcome")
        .into_iter()
        .find(|r| r["intent"] == aes["seq"])
        .expect("outcome of the AES generation");
    assert_eq!(outcome["rv"], "CKR_OK", "{outcome}");
    let created = outcome["created"].as_array().expect("created handles");
    assert_eq!(created.len(), 1, "{outcome}");
    let aes_handle = created[0]["handle"].as_u64().unwrap();
    assert_eq!(created[0]["label"], "wf-aes-gen", "{outcome}");
    assert_eq!(created[0]["key_type"], "CKK_AES", "{outcome}");

    // The new handle is then used under its label.
    let used = recs
        .iter()
        .filter(|r| r["key"]["handle"].as_u64() == Some(aes_handle))
        .collect::<Vec<_>>();
    assert!(
        !used.is_empty(),
        "generated AES key handle {aes_handle} never appears as a key"
    );
    assert!(
        used.iter().any(|r| r["key"]["label"] == "wf-aes-gen"),
        "{used:?}"
    );

    for (label, m, pub_label) in [
        ("wf-ec", "CKM_EC_KEY_PAIR_GEN", "wf-ec-pub"),
        ("wf-rsa", "CKM_RSA_PKCS_KEY_PAIR_GEN", "wf-rsa-pub"),
    ] {
        let intent = fn_ev(&recs, "C_GenerateKeyPair", "intent")
            .into_iter()
            .find(|r| template_label(&r["template2"]) == Some(label))
            .unwrap_or_else(|| panic!("no C_GenerateKeyPair intent for {label}"));
        assert_eq!(*mech(intent), m, "{intent}");
        assert_eq!(
            template_label(&intent["template"]),
            Some(pub_label),
            "{intent}"
        );
        let outcome = fn_ev(&recs, "C_GenerateKeyPair", "outcome")
            .into_iter()
            .find(|r| r["intent"] == intent["seq"])
            .expect("outcome");
        assert_eq!(outcome["rv"], "CKR_OK", "{outcome}");
        assert_eq!(
            outcome["created"].as_array().map(Vec::len),
            Some(2),
            "{outcome}"
        );
    }
    let rsa = fn_ev(&recs, "C_GenerateKeyPair", "intent")
        .into_iter()
        .find(|r| template_label(&r["template2"]) == Some("wf-rsa"))
        .unwrap();
    let bits = rsa["template"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "CKA_MODULUS_BITS")
        .unwrap();
    assert_eq!(bits["value"], 2048, "{rsa}");
    let ec = fn_ev(&recs, "C_GenerateKeyPair", "intent")
        .into_iter()
        .find(|r| template_label(&r["template2"]) == Some("wf-ec"))
        .unwrap();
    let params = ec["template"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "CKA_EC_PARAMS")
        .unwrap();
    assert_eq!(params["value"]["hex"], hex(&P256_OID), "{ec}");

    // Imported, copied, unwrapped and derived keys appear with their templates and handles;
    // CKA_VALUE only as a length.
    let create = fn_ev(&recs, "C_CreateObject", "intent")
        .into_iter()
        .find(|r| template_label(&r["template"]) == Some("wf-imported-aes"))
        .expect("C_CreateObject intent of the imported key");
    let value = create["template"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "CKA_VALUE")
        .expect("CKA_VALUE listed");
    assert_eq!(value["len"], 32, "{create}");
    assert!(value.get("value").is_none(), "CKA_VALUE written: {create}");
    for (f, label) in [
        ("C_CopyObject", "wf-aes-copy"),
        ("C_UnwrapKey", "wf-unwrapped-kw"),
        ("C_UnwrapKey", "wf-unwrapped-oaep"),
        ("C_DeriveKey", "wf-ecdh-a"),
    ] {
        let intent = fn_ev(&recs, f, "intent")
            .into_iter()
            .find(|r| template_label(&r["template"]) == Some(label))
            .unwrap_or_else(|| panic!("no {f} intent with label {label}"));
        let outcome = fn_ev(&recs, f, "outcome")
            .into_iter()
            .find(|r| r["intent"] == intent["seq"])
            .unwrap_or_else(|| panic!("no outcome for {intent}"));
        assert_eq!(outcome["rv"], "CKR_OK", "{outcome}");
        assert_eq!(
            outcome["created"].as_array().map(Vec::len),
            Some(1),
            "{outcome}"
        );
    }
    // Wrapping names both keys.
    let wrap = fn_ev(&recs, "C_WrapKey", "intent")
        .into_iter()
        .find(|r| *mech(r) == "CKM_AES_KEY_WRAP")
        .expect("C_WrapKey intent with CKM_AES_KEY_WRAP");
    assert_eq!(wrap["key"]["label"], "wf-aes-gen", "{wrap}");
    assert_eq!(wrap["key2"]["label"], "wf-imported-aes", "{wrap}");
    let derive = fn_ev(&recs, "C_DeriveKey", "intent")
        .into_iter()
        .find(|r| template_label(&r["template"]) == Some("wf-ecdh-a"))
        .unwrap();
    assert_eq!(*mech(derive), "CKM_ECDH1_DERIVE", "{derive}");
    assert_eq!(derive["key"]["label"], "wf-ec", "{derive}");
    // cryptoki passes CKA_EC_POINT as SoftHSM returns it: a DER OCTET STRING of the 65-byte point.
    assert_eq!(derive["mechanism"]["params"]["public_len"], 67, "{derive}");
    // DigestKey names the key it digests.
    let dk = fn_ev(&recs, "C_DigestKey", "intent");
    assert_eq!(dk.len(), 1, "{dk:?}");
    assert_eq!(dk[0]["key2"]["label"], "wf-imported-aes", "{}", dk[0]);
}

#[test]
fn log_tells_the_story_of_logins() {
    let recs = records();
    let logins = fn_ev(&recs, "C_Login", "outcome");
    // Per run: new token SO wrong, SO, user, user old PIN (wrong), user new PIN; main token SO,
    // user wrong, user, user again.
    let rvs: Vec<_> = logins
        .iter()
        .map(|r| {
            (
                r["user_type"].as_str().unwrap_or("?"),
                r["rv"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        rvs,
        [
            ("CKU_SO", "CKR_PIN_INCORRECT"),
            ("CKU_SO", "CKR_OK"),
            ("CKU_USER", "CKR_OK"),
            ("CKU_USER", "CKR_PIN_INCORRECT"),
            ("CKU_USER", "CKR_OK"),
            ("CKU_SO", "CKR_OK"),
            ("CKU_USER", "CKR_PIN_INCORRECT"),
            ("CKU_USER", "CKR_OK"),
            ("CKU_USER", "CKR_USER_ALREADY_LOGGED_IN"),
        ]
    );
    let states: Vec<_> = logins.iter().map(|r| r["login"].as_str()).collect();
    assert_eq!(
        states,
        [
            Some("public"),
            Some("so"),
            Some("user"),
            Some("public"),
            Some("user"),
            Some("so"),
            Some("public"),
            Some("user"),
            Some("user"),
        ],
        "login state after each C_Login"
    );
    // Each outcome follows its intent, which records the state before the call.
    let intents = fn_ev(&recs, "C_Login", "intent");
    assert_eq!(intents.len(), logins.len());
    for (i, o) in intents.iter().zip(&logins) {
        assert_eq!(o["intent"], i["seq"], "{o}");
        assert_eq!(o["user_type"], i["user_type"], "{o}");
        assert!(o["session"].is_u64() && o["slot"].is_u64(), "{o}");
        assert!(o["token"]["label"].is_string(), "{o}");
    }
    // The token's identity is on the records of the fixture token.
    let main_user = &logins[7];
    assert_eq!(
        main_user["token"]["label"], "p11audit-c-test",
        "{main_user}"
    );
    let new_tok = &logins[1];
    assert_eq!(new_tok["token"]["label"], NEW_TOKEN_LABEL, "{new_tok}");

    // Token initialisation and PIN changes are there, in order, and succeeded.
    for f in ["C_InitToken", "C_InitPIN", "C_SetPIN"] {
        let o = fn_ev(&recs, f, "outcome");
        assert_eq!(o.len(), 1, "{f}: {o:?}");
        assert_eq!(o[0]["rv"], "CKR_OK", "{}", o[0]);
        assert_eq!(fn_ev(&recs, f, "intent").len(), 1, "{f}");
    }
    let init = fn_ev(&recs, "C_InitToken", "intent")[0];
    assert_eq!(init["token"]["label"], NEW_TOKEN_LABEL, "{init}");
    // Logouts bring the state back to public.
    let logouts = fn_ev(&recs, "C_Logout", "outcome");
    assert!(!logouts.is_empty());
    for o in &logouts {
        assert_eq!(o["rv"], "CKR_OK", "{o}");
        assert_eq!(o["login"], "public", "{o}");
    }
    // The wrong PIN shows as it is written, for grep-based monitoring.
    let text = log_text();
    assert!(
        text.contains(r#""ev":"outcome","fn":"C_Login","rv":"CKR_PIN_INCORRECT""#),
        "no C_Login outcome with \"rv\":\"CKR_PIN_INCORRECT\""
    );
    // Process lifecycle: start, attach ... close.
    assert_eq!(recs[0]["ev"], "start");
    assert!(recs.iter().any(|r| r["ev"] == "attach"));
    assert_eq!(
        recs.last().unwrap()["ev"],
        "close",
        "{}",
        recs.last().unwrap()
    );
}

#[test]
fn close_session_records_name_their_token() {
    // Closing a session is a giving-up call: its record must still say which slot and token
    // the session belonged to (it may log the token out, when it was the last session).
    let recs = records();
    let closes = fn_ev(&recs, "C_CloseSession", "outcome");
    assert_eq!(closes.len(), 2, "{closes:?}");
    let labels = [NEW_TOKEN_LABEL, "p11audit-c-test"];
    for (r, label) in closes.iter().zip(labels) {
        assert_eq!(r["rv"], "CKR_OK", "{r}");
        assert!(r["session"].is_u64(), "{r}");
        assert!(
            r["slot"].is_u64(),
            "C_CloseSession record without its slot: {r}"
        );
        assert_eq!(
            r["token"]["label"], label,
            "C_CloseSession record without its token: {r}"
        );
    }
}

#[test]
fn log_summarizes_mechanism_parameters_without_their_bytes() {
    let recs = records();
    // Every call's outcome, also an init told in its operation's first outcome.
    let calls = outcomes_with_told_inits(&recs);
    let text = log_text();

    let pss: Vec<_> = calls
        .iter()
        .filter(|r| *mech(r) == "CKM_SHA256_RSA_PKCS_PSS")
        .collect();
    // SignInit, Sign, VerifyInit, Verify ... single- and multi-part.
    assert!(pss.len() >= 10, "{pss:?}");
    for r in &pss {
        let p = &r["mechanism"]["params"];
        assert_eq!(p["hash"], "CKM_SHA256", "{r}");
        assert_eq!(p["mgf"], "CKG_MGF1_SHA256", "{r}");
        assert_eq!(p["salt_len"], 32, "{r}");
    }
    assert!(pss
        .iter()
        .any(|r| r["fn"] == "C_SignInit" && r["key"]["label"] == "wf-rsa"));

    let gcm: Vec<_> = calls.iter().filter(|r| *mech(r) == "CKM_AES_GCM").collect();
    assert!(gcm.len() >= 10, "{gcm:?}");
    for r in &gcm {
        let m = &r["mechanism"];
        assert_eq!(m["params"]["tag_bits"], 128, "{r}");
        assert_eq!(m["params"]["iv_len"], GCM_IV.len(), "{r}");
        assert_eq!(m["params"]["aad_len"], GCM_AAD.len(), "{r}");
        let params = m["params"].as_object().unwrap();
        assert!(
            params
                .keys()
                .all(|k| ["tag_bits", "iv_len", "aad_len"].contains(&k.as_str())),
            "unexpected GCM parameter member: {r}"
        );
    }
    for init in ["C_EncryptInit", "C_DecryptInit"] {
        assert!(
            gcm.iter()
                .any(|r| r["fn"] == init && r["key"]["label"] == "wf-imported-aes"),
            "{init} with GCM"
        );
    }
    let gcm_enc: Vec<_> = gcm
        .iter()
        .filter(|r| r["fn"] == "C_Encrypt" && r["out"] == "returned")
        .collect();
    assert_eq!(gcm_enc.len(), 1, "{gcm_enc:?}");
    assert_eq!(gcm_enc[0]["out_len"], PLAINTEXT.len() + 16);
    // The IV and AAD bytes are nowhere (GCM_IV and CBC_IV are also in the secret scan).
    assert!(!text.contains(&hex(&GCM_IV)));
    assert!(!text.contains(std::str::from_utf8(GCM_AAD).unwrap()));

    let oaep = recs
        .iter()
        .find(|r| *mech(r) == "CKM_RSA_PKCS_OAEP" && r["fn"] == "C_WrapKey")
        .expect("OAEP wrap record");
    assert_eq!(oaep["mechanism"]["params"]["hash"], "CKM_SHA_1", "{oaep}");
    assert_eq!(
        oaep["mechanism"]["params"]["mgf"], "CKG_MGF1_SHA1",
        "{oaep}"
    );

    // CBC has a bare IV parameter: its length only.
    let cbc = recs
        .iter()
        .find(|r| *mech(r) == "CKM_AES_CBC_PAD")
        .expect("CBC-PAD record");
    assert_eq!(cbc["mechanism"]["param_len"], 16, "{cbc}");
    assert!(cbc["mechanism"].get("params").is_none(), "{cbc}");

    // Random: requested length, never the bytes.
    let rnd = fn_ev(&recs, "C_GenerateRandom", "outcome");
    assert_eq!(rnd.len(), 2);
    assert!(rnd
        .iter()
        .all(|r| r["out_len"] == 32 && r["rv"] == "CKR_OK"));
}

// =============================================================================================
// 3. Secrets are in no encoding in the log or the state file.

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 of the complete 3-byte groups of `b` (no padding, trailing partial group dropped).
fn b64_full_groups(b: &[u8], alphabet: &[u8; 64]) -> String {
    let mut s = String::new();
    for g in b.chunks_exact(3) {
        let n = (u32::from(g[0]) << 16) | (u32::from(g[1]) << 8) | u32::from(g[2]);
        for shift in [18, 12, 6, 0] {
            s.push(alphabet[((n >> shift) & 63) as usize] as char);
        }
    }
    s
}

/// The base64 texts that any base64 encoding of a buffer containing `secret` must contain,
/// for each of the 3 alignments: encode with 0, 1, 2 prefix bytes, and drop the group that
/// holds the prefix and the partial group at the end.
fn b64_needles(secret: &[u8], alphabet: &[u8; 64]) -> Vec<String> {
    (0..3)
        .map(|k| {
            let mut buf = vec![0u8; k];
            buf.extend_from_slice(secret);
            let enc = b64_full_groups(&buf, alphabet);
            let skip = if k == 0 { 0 } else { 4 };
            enc[skip.min(enc.len())..].to_string()
        })
        .collect()
}

fn encodings(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("raw".to_string(), secret.to_vec()),
        ("hex".to_string(), hex(secret).into_bytes()),
        ("HEX".to_string(), hex(secret).to_uppercase().into_bytes()),
    ];
    for (name, alphabet) in [("base64", B64_STD), ("base64url", B64_URL)] {
        for (k, n) in b64_needles(secret, alphabet).into_iter().enumerate() {
            assert!(n.len() >= 12, "needle too short to be meaningful");
            out.push((format!("{name}/align{k}"), n.into_bytes()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn base64_helper_matches_known_vectors() {
    assert_eq!(b64_full_groups(b"foobar", B64_STD), "Zm9vYmFy");
    assert_eq!(b64_full_groups(b"foob", B64_STD), "Zm9v");
    assert_eq!(b64_full_groups(&[0xfb, 0xff, 0xbf], B64_URL), "-_-_");
    assert_eq!(b64_full_groups(&[0xfb, 0xff, 0xbf], B64_STD), "+/+/");
    // Each alignment's needle is found in the standard encoding of the secret at that offset.
    let secret = b"0123456789abcdefghij";
    for (k, needle) in b64_needles(secret, B64_STD).iter().enumerate() {
        for pre in 0..3usize {
            let mut buf = vec![b'x'; pre];
            buf.extend_from_slice(secret);
            let enc = b64_full_groups(&buf, B64_STD);
            assert_eq!(
                enc.contains(needle.as_str()),
                pre == k,
                "align {k}, prefix {pre}"
            );
        }
    }
}

#[test]
fn log_and_state_hold_no_secrets() {
    let run = &runs().shim;
    let log = std::fs::read(&run.fixture.log).expect("log");
    let state = std::fs::read(run.fixture.state()).expect("state");
    assert!(log.len() > 10_000, "suspiciously short log");

    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("user PIN".into(), USER_PIN.as_bytes().to_vec()),
        ("SO PIN".into(), SO_PIN.as_bytes().to_vec()),
        ("new PIN".into(), NEW_PIN.as_bytes().to_vec()),
        ("wrong PIN".into(), WRONG_PIN.as_bytes().to_vec()),
        ("imported AES key".into(), aes_key_value()),
        ("imported HMAC key".into(), hmac_key_value()),
        ("plaintext".into(), PLAINTEXT.to_vec()),
        ("data object value".into(), DATA_VALUE.to_vec()),
        ("GCM IV".into(), GCM_IV.to_vec()),
        ("CBC IV".into(), CBC_IV.to_vec()),
        ("GCM AAD".into(), GCM_AAD.to_vec()),
        ("SHA-256 of the plaintext".into(), sha256(PLAINTEXT)),
        ("SHA-256 of the AES key".into(), sha256(&aes_key_value())),
        (
            "HMAC of the plaintext".into(),
            hmac_sha256(&hmac_key_value(), PLAINTEXT),
        ),
    ];
    let from_hex = |h: &str| -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    };
    for step in ["cbc_encrypt", "gcm_encrypt"] {
        secrets.push((format!("{step} output"), from_hex(&run.results[step])));
    }
    for (what, h) in &run.observed {
        secrets.push((what.clone(), from_hex(h)));
    }
    assert!(run.observed.len() >= 8, "{:?}", run.observed.keys());

    let mut found = Vec::new();
    for (what, secret) in &secrets {
        for (enc, needle) in encodings(secret) {
            for (file, hay) in [("log", &log), ("state", &state)] {
                if contains(hay, &needle) {
                    found.push(format!("{what} ({enc}) in the {file}"));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "secrets written:\n  {}",
        found.join("\n  ")
    );
}

// =============================================================================================
// 4. The chain, recomputed with hmac/sha2 directly.

fn hmac_raw(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

fn is_ts(ts: &str) -> bool {
    // YYYY-MM-DDTHH:MM:SS.ffffffZ
    let b = ts.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 27
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26)
        && b[26] == b'Z'
}

#[test]
fn timestamp_shape_check_works() {
    assert!(is_ts("2026-11-26T03:12:45.123456Z"));
    assert!(!is_ts("2026-11-26T03:12:45.12345Z"));
    assert!(!is_ts("2026-11-26 03:12:45.123456Z"));
    assert!(!is_ts("2026-11-26T03:12:45.123456+00:00"));
}

#[test]
fn chain_recomputes_independently() {
    let f = &runs().shim.fixture;
    let key_text = std::fs::read_to_string(&f.key).expect("key file");
    let key_hex = key_text.strip_suffix('\n').unwrap_or(&key_text);
    assert_eq!(key_hex.len(), 64, "key file shape");
    let mut k: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&key_hex[i..i + 2], 16).expect("hex key"))
        .collect();

    let log = std::fs::read(&f.log).expect("log");
    assert_eq!(log.last(), Some(&b'\n'), "log ends in a newline");
    let lines: Vec<&[u8]> = log[..log.len() - 1].split(|&b| b == b'\n').collect();
    assert!(lines.len() > 100, "{} lines", lines.len());
    let marker: &[u8] = b",\"mac\":\"";
    let mut prev = "0".repeat(64);
    for (i, line) in lines.iter().enumerate() {
        let at = line
            .windows(marker.len())
            .rposition(|w| w == marker)
            .unwrap_or_else(|| panic!("line {}: no mac member", i + 1));
        let payload = &line[..at];
        let tail = std::str::from_utf8(&line[at + marker.len()..]).expect("ascii tail");
        // The mac is the last member: 64 lowercase hex and the closing `"}`.
        let mac = tail
            .strip_suffix("\"}")
            .unwrap_or_else(|| panic!("line {}: mac is not the last member: {tail}", i + 1));
        assert!(
            mac.len() == 64 && mac.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "line {}: mac {mac:?}",
            i + 1
        );
        assert_eq!(mac, hex(&hmac_raw(&k, payload)), "line {}: mac", i + 1);

        let v: Value = serde_json::from_slice(line)
            .unwrap_or_else(|e| panic!("line {} is not JSON: {e}", i + 1));
        assert_eq!(v["v"], 1, "line {}", i + 1);
        assert_eq!(v["seq"].as_u64(), Some(i as u64), "line {}", i + 1);
        assert_eq!(v["prev"].as_str(), Some(prev.as_str()), "line {}", i + 1);
        assert_eq!(v["mac"].as_str(), Some(mac), "line {}", i + 1);
        let ts = v["ts"].as_str().unwrap_or_default();
        assert!(is_ts(ts), "line {}: ts {ts:?}", i + 1);
        let prefix = format!("{{\"v\":1,\"seq\":{i},\"prev\":\"{prev}\",");
        assert!(
            line.starts_with(prefix.as_bytes()),
            "line {}: does not start with {prefix}",
            i + 1
        );

        prev = mac.to_string();
        k = hmac_raw(&k, b"p11audit/v1 evolve").to_vec();
    }

    // The state file (INTERNALS.md §1.1): a 4096-byte page; the u64 at byte 32 says which slot
    // (512 bytes at 1024 or 1536) holds the current state as text.
    let file = std::fs::read(f.state()).expect("state file");
    assert_eq!(file.len(), 4096, "state file size");
    assert!(file.starts_with(b"p11audit-state v2\n"), "state file magic");
    let active = u64::from_ne_bytes(file[32..40].try_into().unwrap());
    let slot = &file[[1024, 1536][active as usize]..][..512];
    let text_len = slot.iter().position(|&b| b == 0).unwrap_or(512);
    let other = &file[[1536, 1024][active as usize]..][..512];
    assert!(
        other.iter().all(|&b| b == 0),
        "the other slot (an older key) is wiped"
    );
    let state = String::from_utf8(slot[..text_len].to_vec()).expect("state text");
    let field = |name: &str| -> String {
        state
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("state has no {name} line:\n{state}"))
            .to_string()
    };
    assert_eq!(field("key"), hex(&k), "state key is K_n");
    assert_eq!(
        field("seq").parse::<u64>().ok(),
        Some(lines.len() as u64),
        "state seq is n"
    );
    assert_eq!(field("prev"), prev, "state prev is the last mac");
    assert_eq!(
        field("log_size").parse::<u64>().ok(),
        Some(log.len() as u64),
        "state log_size"
    );
}

// =============================================================================================
// 5. Tampering with a real log.

struct LogCopy {
    _dir: tempfile::TempDir,
    log: PathBuf,
}

/// The shim's log as lines (each with its newline), for editing.
fn log_lines() -> Vec<Vec<u8>> {
    std::fs::read(&runs().shim.fixture.log)
        .expect("log")
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// Writes `lines` as COPY with the real state beside it as COPY.state.
fn copy_with(lines: &[Vec<u8>]) -> LogCopy {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("copy.jsonl");
    std::fs::write(&log, lines.concat()).expect("write copy");
    std::fs::copy(
        runs().shim.fixture.state(),
        dir.path().join("copy.jsonl.state"),
    )
    .expect("copy state");
    LogCopy { _dir: dir, log }
}

/// `p11audit verify --json --key-file K COPY`: exit code and report.
fn verify_copy(c: &LogCopy) -> (Option<i32>, Value) {
    let out = p11audit_verify(&runs().shim.fixture.key, &["--json"], &c.log);
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "verify --json printed no JSON ({e}):\n{}",
            output_text(&out)
        )
    });
    (out.status.code(), report)
}

fn assert_problem(lines: &[Vec<u8>], kind: &str, line: usize) {
    let c = copy_with(lines);
    let (code, report) = verify_copy(&c);
    assert_eq!(code, Some(1), "exit status for {kind}: {report}");
    assert_eq!(report["intact"], false, "{report}");
    assert_eq!(report["problem"]["kind"], kind, "{report}");
    assert_eq!(report["problem"]["line"], line, "{report}");
    assert_eq!(
        report["problem"]["file"].as_str(),
        Some(c.log.to_str().unwrap()),
        "{report}"
    );
}

/// A middle line index (0-based) well away from both ends.
fn middle(lines: &[Vec<u8>]) -> usize {
    assert!(lines.len() > 20, "{} lines", lines.len());
    lines.len() / 2
}

#[test]
fn tamper_untouched_copy_verifies() {
    let c = copy_with(&log_lines());
    let (code, report) = verify_copy(&c);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["intact"], true, "{report}");
    assert_eq!(report["state_checked"], true, "{report}");
    assert_eq!(report["closed_cleanly"], true, "{report}");
    assert_eq!(report["summary"]["records"], log_lines().len(), "{report}");
}

#[test]
fn tamper_altered_byte() {
    let mut lines = log_lines();
    let m = middle(&lines);
    // Change one digit of the timestamp: still valid JSON, so only the mac can tell.
    let at = lines[m]
        .windows(7)
        .position(|w| w == b"\"ts\":\"2")
        .expect("ts member")
        + 6
        + 18; // inside the seconds field
    let b = lines[m][at];
    assert!(b.is_ascii_digit(), "{}", String::from_utf8_lossy(&lines[m]));
    lines[m][at] = if b == b'9' { b'0' } else { b + 1 };
    assert!(serde_json::from_slice::<Value>(&lines[m][..lines[m].len() - 1]).is_ok());
    assert_problem(&lines, "altered", m + 1);
}

#[test]
fn tamper_deleted_line() {
    let mut lines = log_lines();
    let m = middle(&lines);
    lines.remove(m);
    assert_problem(&lines, "missing", m + 1);
}

#[test]
fn tamper_inserted_copy_of_earlier_line() {
    let mut lines = log_lines();
    let m = middle(&lines);
    let earlier = lines[3].clone();
    lines.insert(m, earlier);
    assert_problem(&lines, "inserted", m + 1);
}

#[test]
fn tamper_swapped_lines() {
    let mut lines = log_lines();
    let m = middle(&lines);
    lines.swap(m, m + 1);
    assert_problem(&lines, "reordered", m + 1);
}

#[test]
fn tamper_cut_last_three_lines() {
    let mut lines = log_lines();
    let n = lines.len();
    lines.truncate(n - 3);
    assert_problem(&lines, "truncated", n - 3);
}

#[test]
fn tamper_torn_last_line() {
    let mut lines = log_lines();
    let n = lines.len();
    let last = lines.last_mut().unwrap();
    let half = last.len() / 2;
    last.truncate(half);
    assert!(!last.contains(&b'\n'));
    // The state was stored after that record's write completed: half of it was cut off.
    assert_problem(&lines, "truncated", n);
}

/// C_GetTokenInfo records name the token the application was told about, from the answer
/// itself (the workflow reads the new token's info right after initializing it).
#[test]
fn token_info_records_name_the_token() {
    let recs = records();
    let infos: Vec<&Value> = fn_ev(&recs, "C_GetTokenInfo", "outcome")
        .into_iter()
        .filter(|r| r["rv"] == "CKR_OK")
        .collect();
    assert!(!infos.is_empty(), "no successful C_GetTokenInfo record");
    for r in &infos {
        assert!(r["slot"].is_u64(), "{r}");
        assert!(r["token"]["label"].is_string(), "{r}");
        assert!(r["token"]["serial"].is_string(), "{r}");
    }
    assert!(
        infos
            .iter()
            .any(|r| r["token"]["label"] == NEW_TOKEN_LABEL
                || r["token"]["label"] == "p11audit-c-test"),
        "{infos:?}"
    );
}
