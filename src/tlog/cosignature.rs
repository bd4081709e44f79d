//! Cosignatures (c2sp.org/tlog-cosignature, `cosignature/v1`): a witness's Ed25519 signature of
//! `cosignature/v1\ntime <t>\n` followed by the checkpoint's text, carried in a note signature
//! whose bytes are the key id, the timestamp (u64, big-endian) and the signature. The key id is
//! computed with the signature type 0x04.

use crate::tlog::note::{
    NoteError, NoteSignature, SignedNote, SignerKey, VerifierKey, ALG_COSIGNATURE_V1,
};
use ed25519_dalek::Signature;

/// The signed message for a checkpoint text at `time` (seconds since the epoch).
pub fn message(text: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{text}")
}

/// The cosignature of a checkpoint's text by `key` (a cosignature/v1 key).
pub fn cosign(key: &SignerKey, text: &str, time: u64) -> Result<NoteSignature, NoteError> {
    if key.alg != ALG_COSIGNATURE_V1 {
        return Err(NoteError::UnsupportedType(key.alg));
    }
    let mut signature = time.to_be_bytes().to_vec();
    signature.extend_from_slice(&key.sign_raw(message(text, time).as_bytes()));
    Ok(NoteSignature {
        name: key.name.clone(),
        id: key.id,
        signature,
    })
}

/// Checks `key`'s cosignature on `note`; returns its timestamp.
pub fn verify(note: &SignedNote, key: &VerifierKey) -> Result<u64, NoteError> {
    let sig = note.signature_by(key, ALG_COSIGNATURE_V1)?;
    let bad = || NoteError::BadSignature(key.name.clone());
    if sig.signature.len() != 72 {
        return Err(bad());
    }
    let time = u64::from_be_bytes(sig.signature[..8].try_into().expect("8 bytes"));
    if time > i64::MAX as u64 {
        return Err(bad());
    }
    let bytes: [u8; 64] = sig.signature[8..].try_into().expect("64 bytes");
    key.key
        .verify_strict(
            message(&note.text, time).as_bytes(),
            &Signature::from_bytes(&bytes),
        )
        .map_err(|_| bad())?;
    Ok(time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::note::ALG_ED25519;

    #[test]
    fn the_specification_example_cosignature_carries_its_timestamp() {
        // The cosignature line of tlog-cosignature's example; its message has `time 1679315147`.
        let note = SignedNote::parse(
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\
             \u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n",
        )
        .unwrap();
        let sig = &note.signatures[0];
        assert_eq!(sig.signature.len(), 72);
        assert_eq!(
            u64::from_be_bytes(sig.signature[..8].try_into().unwrap()),
            1679315147
        );
    }

    #[test]
    fn a_cosignature_verifies_and_binds_text_and_time() {
        let witness = SignerKey::from_seed("w.example/1", ALG_COSIGNATURE_V1, &[3; 32]).unwrap();
        let log = SignerKey::from_seed("log.example", ALG_ED25519, &[4; 32]).unwrap();
        let text = "log.example\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let mut note = SignedNote {
            text: text.into(),
            signatures: vec![log.sign_note(text).unwrap()],
        };
        note.signatures
            .push(cosign(&witness, text, 1700000000).unwrap());
        let reread = SignedNote::parse(&note.encode()).unwrap();
        assert_eq!(verify(&reread, &witness.verifier()), Ok(1700000000));
        reread.verify(&log.verifier()).unwrap();
        let mut later = reread.clone();
        later.signatures[1].signature[7] ^= 1;
        assert!(verify(&later, &witness.verifier()).is_err());
        let mut other = reread.clone();
        other.text = text.replace('5', "6");
        assert!(verify(&other, &witness.verifier()).is_err());
        // The key id depends on the type: the same key as a plain note key has another id.
        let plain = SignerKey::from_seed("w.example/1", ALG_ED25519, &[3; 32]).unwrap();
        assert_ne!(plain.id, witness.id);
        assert!(cosign(&plain, text, 1).is_err());
    }
}
