//! Signed notes (c2sp.org/signed-note): a UTF-8 text ending in a newline, a blank line, then one
//! line per signature, `— <key name> base64(key id || signature)`. Keys: the verifier key
//! `<name>+<8 hex key id>+base64(type || public key)`, and the Go tools' signer key
//! `PRIVATE+KEY+<name>+<8 hex key id>+base64(type || seed)`, where the key id is
//! `SHA-256(name || 0x0A || type || public key)[:4]`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The signature type of plain Ed25519 note signatures.
pub const ALG_ED25519: u8 = 0x01;
/// The signature type of tlog-cosignature's `cosignature/v1` (Ed25519, timestamped).
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// The signature line's prefix: an em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";
const SIGNER_PREFIX: &str = "PRIVATE+KEY+";
/// Readers refuse notes with more signatures than this (as the Go implementation does).
const MAX_SIGNATURES: usize = 100;

/// Why a key, a note or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed verifier key")]
    BadVerifierKey,
    #[error("malformed signer key")]
    BadSignerKey,
    #[error("the key id does not match the key's name and public key")]
    KeyIdMismatch,
    #[error("unsupported signature type {0:#04x}")]
    UnsupportedType(u8),
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("no signature by {0}")]
    NotSignedBy(String),
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
}

/// A valid key name: not empty, no Unicode white space, no `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// `SHA-256(name || 0x0A || type || public key)[:4]`.
pub fn key_id(name: &str, alg: u8, public: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', alg]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A key's text split: its name, its key id and its 33 bytes (type, then key).
type KeyParts<'a> = (&'a str, [u8; 4], Zeroizing<Vec<u8>>);

/// Splits `name+hex id+base64` (after any prefix).
fn split_key(text: &str, bad: NoteError) -> Result<KeyParts<'_>, NoteError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id_hex), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad);
    };
    if !is_valid_key_name(name) || id_hex.len() != 8 {
        return Err(bad);
    }
    let mut id = [0u8; 4];
    base16ct::mixed::decode(id_hex, &mut id).map_err(|_| bad.clone())?;
    if id_hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad);
    }
    let material = Zeroizing::new(BASE64.decode(b64).map_err(|_| bad.clone())?);
    if material.len() != 33 {
        return Err(bad);
    }
    Ok((name, id, material))
}

/// A verifier key: who signs (name), with which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    pub name: String,
    pub id: [u8; 4],
    pub alg: u8,
    pub key: VerifyingKey,
}

impl VerifierKey {
    pub fn new(name: &str, alg: u8, key: VerifyingKey) -> Self {
        VerifierKey {
            name: name.to_string(),
            id: key_id(name, alg, key.as_bytes()),
            alg,
            key,
        }
    }

    /// Reads `<name>+<8 hex>+base64(type || key)` (surrounding white space ignored).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, material) = split_key(text.trim(), NoteError::BadVerifierKey)?;
        let alg = material[0];
        if alg != ALG_ED25519 && alg != ALG_COSIGNATURE_V1 {
            return Err(NoteError::UnsupportedType(alg));
        }
        let public: [u8; 32] = material[1..].try_into().expect("33 bytes");
        let key = VerifyingKey::from_bytes(&public).map_err(|_| NoteError::BadVerifierKey)?;
        if key_id(name, alg, &public) != id {
            return Err(NoteError::KeyIdMismatch);
        }
        Ok(VerifierKey {
            name: name.to_string(),
            id,
            alg,
            key,
        })
    }

    pub fn encode(&self) -> String {
        let mut material = vec![self.alg];
        material.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            base16ct::lower::encode_string(&self.id),
            BASE64.encode(material)
        )
    }
}

/// A signer key, in the Go tools' text form.
pub struct SignerKey {
    pub name: String,
    pub id: [u8; 4],
    pub alg: u8,
    key: SigningKey,
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignerKey({})", self.name)
    }
}

impl SignerKey {
    /// A key made from 32 random bytes (the Ed25519 seed).
    pub fn from_seed(name: &str, alg: u8, seed: &[u8; 32]) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::BadSignerKey);
        }
        let key = SigningKey::from_bytes(seed);
        Ok(SignerKey {
            name: name.to_string(),
            id: key_id(name, alg, key.verifying_key().as_bytes()),
            alg,
            key,
        })
    }

    /// A new key from the operating system's random source.
    pub fn generate(name: &str, alg: u8) -> Result<Self, NoteError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(|_| NoteError::BadSignerKey)?;
        Self::from_seed(name, alg, &seed)
    }

    /// Reads `PRIVATE+KEY+<name>+<8 hex>+base64(type || seed)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix(SIGNER_PREFIX)
            .ok_or(NoteError::BadSignerKey)?;
        let (name, id, material) = split_key(rest, NoteError::BadSignerKey)?;
        let alg = material[0];
        if alg != ALG_ED25519 && alg != ALG_COSIGNATURE_V1 {
            return Err(NoteError::UnsupportedType(alg));
        }
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(material[1..].try_into().expect("33 bytes"));
        let key = Self::from_seed(name, alg, &seed)?;
        if key.id != id {
            return Err(NoteError::KeyIdMismatch);
        }
        Ok(key)
    }

    pub fn encode(&self) -> Zeroizing<String> {
        let mut material = Zeroizing::new(vec![self.alg]);
        material.extend_from_slice(self.key.as_bytes());
        Zeroizing::new(format!(
            "{SIGNER_PREFIX}{}+{}+{}",
            self.name,
            base16ct::lower::encode_string(&self.id),
            BASE64.encode(material.as_slice())
        ))
    }

    pub fn verifier(&self) -> VerifierKey {
        VerifierKey::new(&self.name, self.alg, self.key.verifying_key())
    }

    /// The raw Ed25519 signature of `message`.
    pub(crate) fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// The note signature of `text` (a plain Ed25519 signer key).
    pub fn sign_note(&self, text: &str) -> Result<NoteSignature, NoteError> {
        if self.alg != ALG_ED25519 {
            return Err(NoteError::UnsupportedType(self.alg));
        }
        check_text(text)?;
        Ok(NoteSignature {
            name: self.name.clone(),
            id: self.id,
            signature: self.sign_raw(text.as_bytes()).to_vec(),
        })
    }
}

/// One signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub id: [u8; 4],
    /// The bytes after the key id.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The line, with its newline.
    pub fn line(&self) -> String {
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, BASE64.encode(blob))
    }

    fn parse(line: &str) -> Result<Self, NoteError> {
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or(NoteError::Malformed("a signature line without its em dash"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or(NoteError::Malformed("a signature line without a signature"))?;
        let blob = BASE64
            .decode(b64)
            .map_err(|_| NoteError::Malformed("a signature that is not base64"))?;
        if !is_valid_key_name(name) || blob.len() < 5 {
            return Err(NoteError::Malformed("a malformed signature line"));
        }
        Ok(NoteSignature {
            name: name.to_string(),
            id: blob[..4].try_into().expect("4 bytes"),
            signature: blob[4..].to_vec(),
        })
    }

    /// The signature was made by `key` (name and id match).
    pub fn is_by(&self, key: &VerifierKey) -> bool {
        self.name == key.name && self.id == key.id
    }
}

/// A note text: UTF-8 (a `&str`), ending in a newline, no control characters but newlines.
fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("the text does not end in a newline"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed("a control character in the text"));
    }
    Ok(())
}

/// A note and its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    pub text: String,
    pub signatures: Vec<NoteSignature>,
}

impl SignedNote {
    pub fn parse(message: &str) -> Result<Self, NoteError> {
        if !message.ends_with('\n') {
            return Err(NoteError::Malformed("does not end in a newline"));
        }
        let split = message
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let text = &message[..split + 1];
        check_text(text)?;
        let signatures = message[split + 2..]
            .lines()
            .map(NoteSignature::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if signatures.is_empty() {
            return Err(NoteError::Malformed("no signature"));
        }
        if signatures.len() > MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        Ok(SignedNote {
            text: text.to_string(),
            signatures,
        })
    }

    pub fn encode(&self) -> String {
        let mut out = self.text.clone();
        out.push('\n');
        for s in &self.signatures {
            out.push_str(&s.line());
        }
        out
    }

    /// The signature made by `key` (its name and key id), which must be of type `alg`.
    pub(crate) fn signature_by(
        &self,
        key: &VerifierKey,
        alg: u8,
    ) -> Result<&NoteSignature, NoteError> {
        if key.alg != alg {
            return Err(NoteError::UnsupportedType(key.alg));
        }
        self.signatures
            .iter()
            .find(|s| s.is_by(key))
            .ok_or_else(|| NoteError::NotSignedBy(key.name.clone()))
    }

    /// The note's text is signed by `key` (a plain Ed25519 key).
    pub fn verify(&self, key: &VerifierKey) -> Result<(), NoteError> {
        let sig = self.signature_by(key, ALG_ED25519)?;
        let bytes: [u8; 64] = sig
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| NoteError::BadSignature(key.name.clone()))?;
        key.key
            .verify_strict(self.text.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| NoteError::BadSignature(key.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // golang.org/x/mod/sumdb/note's example key and note.
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn the_go_example_key_signs_the_go_example_note_byte_for_byte() {
        let signer = SignerKey::parse(SKEY).unwrap();
        assert_eq!(signer.verifier().encode(), VKEY);
        assert_eq!(signer.encode().as_str(), SKEY);
        assert_eq!(signer.sign_note(TEXT).unwrap().line(), SIG);
        let note = SignedNote::parse(&format!("{TEXT}\n{SIG}")).unwrap();
        assert_eq!(note.encode(), format!("{TEXT}\n{SIG}"));
        note.verify(&VerifierKey::parse(VKEY).unwrap()).unwrap();
    }

    #[test]
    fn an_altered_note_or_key_is_refused() {
        let vkey = VerifierKey::parse(VKEY).unwrap();
        let altered = format!("{TEXT}\n{SIG}").replace("cryptography", "cryptographY");
        assert_eq!(
            SignedNote::parse(&altered).unwrap().verify(&vkey),
            Err(NoteError::BadSignature("PeterNeumann".into()))
        );
        // Every one-character change of the key is refused (as in the Go tests).
        let mut bytes = VKEY.as_bytes().to_vec();
        for i in 0..bytes.len() {
            bytes[i] = bytes[i].wrapping_add(1);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                assert!(VerifierKey::parse(s).is_err(), "{s} accepted");
            }
            bytes[i] = bytes[i].wrapping_sub(1);
        }
        let other = SignerKey::from_seed("PeterNeumann", ALG_ED25519, &[7; 32]).unwrap();
        let note = SignedNote::parse(&format!("{TEXT}\n{SIG}")).unwrap();
        assert!(note.verify(&other.verifier()).is_err());
        assert!(SignedNote::parse(TEXT).is_err());
        assert!(SignedNote::parse(&format!("{TEXT}\n")).is_err());
    }

    #[test]
    fn the_key_id_is_the_hash_of_name_type_and_key() {
        let key = VerifierKey::parse(VKEY).unwrap();
        let mut input = b"PeterNeumann\n\x01".to_vec();
        input.extend_from_slice(key.key.as_bytes());
        assert_eq!(key.id, Sha256::digest(&input)[..4]);
        assert_eq!(base16ct::lower::encode_string(&key.id), "c74f20a3");
    }
}
