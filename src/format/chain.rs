//! The HMAC chain of format v1: key evolution and per-record MACs.
//!
//! K_0 comes from the key file; K_{i+1} = HMAC-SHA256(K_i, "p11audit/v1 evolve");
//! mac_i = HMAC-SHA256(K_i, P_i) where P_i is record i's line up to `,"mac":"`.
//! See docs/FORMAT.md.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

type HmacSha256 = Hmac<Sha256>;

/// The label every key evolution step authenticates.
pub(crate) const EVOLVE_LABEL: &[u8] = b"p11audit/v1 evolve";
/// `prev` of the record with seq 0.
pub const ZERO_MAC_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One chain key K_i. Wiped from memory when dropped or replaced.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct ChainKey([u8; 32]);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

/// Why key text could not be read as a chain key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParseError;

impl std::fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("expected exactly 64 hexadecimal characters (32 bytes), optionally followed by one newline")
    }
}

impl ChainKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ChainKey(bytes)
    }

    /// Parses key-file text: 64 hex characters, one trailing newline allowed.
    pub fn from_hex_text(text: &str) -> Result<Self, KeyParseError> {
        let trimmed = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(text);
        let mut out = [0u8; 32];
        if trimmed.len() != 64 || decode_hex_into(trimmed.as_bytes(), &mut out).is_none() {
            out.zeroize();
            return Err(KeyParseError);
        }
        Ok(ChainKey(out))
    }

    /// Only for tests: a key in a `String` is not wiped (see `push_hex`).
    #[cfg(test)]
    fn to_hex(&self) -> String {
        hex_lower(&self.0)
    }

    /// Appends the key in lowercase hex to `out` (no temporary copy to wipe).
    pub(crate) fn push_hex(&self, out: &mut Vec<u8>) {
        push_hex_lower(out, &self.0);
    }

    /// The first 16 bytes of the key's SHA-256: enough to tell that a key read back is the one
    /// stored, and nothing from which the key can be found.
    pub fn fingerprint(&self) -> [u8; 16] {
        use sha2::Digest;
        let digest = Sha256::digest(self.0);
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        out
    }

    /// Whether `other` is the same key, taking the same time whichever bytes differ: a
    /// comparison that stopped at the first difference would tell, by its timing, how much of a
    /// guessed key is right.
    pub(crate) fn ct_eq(&self, other: &ChainKey) -> bool {
        let differing_bits = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // Keeps the compiler from turning the fold back into an early-exit comparison.
        std::hint::black_box(differing_bits) == 0
    }

    /// K_{i+1} from K_i. The old key is overwritten in place.
    pub fn evolve(&mut self) {
        let mut next = hmac(&self.0, EVOLVE_LABEL);
        self.0.copy_from_slice(&next);
        next.zeroize();
    }

    /// mac_i = HMAC-SHA256(K_i, P_i).
    pub fn mac(&self, payload: &[u8]) -> [u8; 32] {
        hmac(&self.0, payload)
    }

    /// mac_i = HMAC-SHA256(K_i, P_i), then K_i becomes K_{i+1}: what the writer does for every
    /// record. Both HMACs are keyed with K_i, so the key's inner and outer pad blocks are
    /// hashed once for the two (two SHA-256 compressions saved per record).
    pub(crate) fn mac_then_evolve(&mut self, payload: &[u8]) -> [u8; 32] {
        let keyed =
            <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        let mut mac = keyed.clone();
        mac.update(payload);
        let mut evolve = keyed;
        evolve.update(EVOLVE_LABEL);
        let mut next: [u8; 32] = evolve.finalize().into_bytes().into();
        self.0.copy_from_slice(&next);
        next.zeroize();
        mac.finalize().into_bytes().into()
    }
}

fn hmac(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Lowercase hex of `bytes`: the only hex the format writes.
pub fn hex_lower(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// Appends `bytes` in lowercase hex to `out`.
pub(crate) fn push_hex_lower(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + 2 * bytes.len(), 0);
    // Cannot fail: the room for the digits was just made.
    let _ = base16ct::lower::encode(bytes, &mut out[start..]);
}

/// Appends `bytes` in lowercase hex to the string `out` (mac_i as the writer keeps it, `\u00xx`
/// escapes).
pub(crate) fn push_hex_lower_str(out: &mut String, bytes: &[u8]) {
    let mut digits = [0u8; 64];
    for chunk in bytes.chunks(digits.len() / 2) {
        // Cannot fail: a chunk's digits fit in `digits`.
        if let Ok(hex) = base16ct::lower::encode_str(chunk, &mut digits) {
            out.push_str(hex);
        }
    }
}

/// Decodes hex (either case) into `out`; None unless `hex` is exactly 2*out.len() hex digits.
/// Constant-time in the digits (the chain key is decoded with it on every append).
pub(crate) fn decode_hex_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    (hex.len() == 2 * out.len() && base16ct::mixed::decode(hex, out).is_ok()).then_some(())
}

/// True if `s` is exactly 64 lowercase hex characters (the form of `mac` and `prev`).
pub(crate) fn is_mac_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_accepts_one_trailing_newline_only() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert!(ChainKey::from_hex_text(hex).is_ok());
        assert!(ChainKey::from_hex_text(&format!("{hex}\n")).is_ok());
        assert!(ChainKey::from_hex_text(&format!("{hex}\n\n")).is_err());
        assert!(ChainKey::from_hex_text(&hex[..62]).is_err());
        assert!(ChainKey::from_hex_text(&hex.replace('a', "g")).is_err());
        assert_eq!(ChainKey::from_hex_text(hex).unwrap().to_hex(), hex);
    }

    #[test]
    fn evolve_matches_rfc4231_style_hmac() {
        // Independent check: K1 = HMAC-SHA256(K0, label) computed with the hmac crate directly.
        let k0 = [7u8; 32];
        let mut key = ChainKey::from_bytes(k0);
        key.evolve();
        let mut m = <HmacSha256 as Mac>::new_from_slice(&k0).unwrap();
        m.update(b"p11audit/v1 evolve");
        let expect: [u8; 32] = m.finalize().into_bytes().into();
        assert_eq!(key, ChainKey::from_bytes(expect));
        assert_ne!(key, ChainKey::from_bytes(k0));
    }

    #[test]
    fn mac_then_evolve_is_mac_and_evolve() {
        let mut a = ChainKey::from_bytes([9; 32]);
        let mut b = a.clone();
        for payload in [&b""[..], b"x", &[0u8; 1000]] {
            let expect = a.mac(payload);
            a.evolve();
            assert_eq!(b.mac_then_evolve(payload), expect);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn ct_eq_is_true_only_for_the_same_key() {
        let key = ChainKey::from_bytes([5; 32]);
        assert!(key.ct_eq(&key.clone()));
        for at in [0, 17, 31] {
            let mut bytes = [5u8; 32];
            bytes[at] ^= 0x80;
            assert!(!key.ct_eq(&ChainKey::from_bytes(bytes)), "byte {at}");
        }
    }

    #[test]
    fn mac_hex_shape() {
        assert!(is_mac_hex(ZERO_MAC_HEX));
        assert!(!is_mac_hex(&ZERO_MAC_HEX.replace('0', "A")));
        assert!(!is_mac_hex("00"));
    }

    #[test]
    fn hex_decoding_takes_every_hex_digit_and_nothing_else() {
        for a in 0u8..=255 {
            for b in 0u8..=255 {
                let pair = [a, b];
                let mut out = [0u8; 1];
                let expected = std::str::from_utf8(&pair)
                    .ok()
                    .filter(|s| s.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|s| u8::from_str_radix(s, 16).ok());
                let got = decode_hex_into(&pair, &mut out).map(|_| out[0]);
                assert_eq!(got, expected, "{pair:?}");
            }
        }
        assert!(decode_hex_into(b"abc", &mut [0u8; 1]).is_none());
    }
}
