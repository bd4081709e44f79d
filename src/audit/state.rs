//! The state file beside the log (`<log>.state`): the writer's only memory of the chain.
//!
//! It holds K_next (the key for the next record), the next seq, the mac of the last record, the
//! identity of the log file and the log size after the last record. It is a fixed-length text
//! block so that every update is one positioned write of the same length, with a SHA-256 check
//! line that detects a torn or corrupted state. See docs/FORMAT.md.

use super::chain::{decode_hex_into, hex_lower, is_mac_hex, ChainKey, ZERO_MAC_HEX};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

const MAGIC: &str = "p11audit-state v1";

/// The chain position as the state file records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainState {
    /// seq of the next record to be written (0 for a chain with no records yet).
    pub next_seq: u64,
    /// mac of the record next_seq-1 (64 zeros when next_seq is 0).
    pub prev_mac: String,
    /// K_{next_seq}.
    pub key: ChainKey,
    /// st_dev and st_ino of the log file the chain is being written to.
    pub log_dev: u64,
    pub log_ino: u64,
    /// Size in bytes of the log file after the last record.
    pub log_size: u64,
}

/// Why a state file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The state file is empty: no chain has been started.
    Empty,
    /// The file is not a state file of this version, or its check line does not match.
    Corrupt(&'static str),
}

impl ChainState {
    /// A fresh chain about to write seq 0 with key K_0.
    pub fn genesis(key: ChainKey, log_dev: u64, log_ino: u64, log_size: u64) -> Self {
        ChainState {
            next_seq: 0,
            prev_mac: ZERO_MAC_HEX.to_string(),
            key,
            log_dev,
            log_ino,
            log_size,
        }
    }

    /// The fixed-length text form. Numbers are zero-padded to 20 digits so every state has the
    /// same length.
    pub fn encode(&self) -> Vec<u8> {
        let mut key_hex = self.key.to_hex();
        let body = format!(
            "{MAGIC}\nseq {:020}\nprev {}\nkey {}\nlog_dev {:020}\nlog_ino {:020}\nlog_size {:020}\n",
            self.next_seq, self.prev_mac, key_hex, self.log_dev, self.log_ino, self.log_size
        );
        key_hex.zeroize();
        let check = hex_lower(&Sha256::digest(body.as_bytes()));
        let mut out = body.into_bytes();
        out.extend_from_slice(format!("check {check}\n").as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        if bytes.is_empty() {
            return Err(StateError::Empty);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| StateError::Corrupt("not UTF-8"))?;
        let check_at = text
            .rfind("check ")
            .ok_or(StateError::Corrupt("no check line"))?;
        let (body, check_line) = text.split_at(check_at);
        let check = check_line
            .strip_prefix("check ")
            .and_then(|c| c.strip_suffix('\n'));
        if check != Some(hex_lower(&Sha256::digest(body.as_bytes())).as_str()) {
            return Err(StateError::Corrupt(
                "check line does not match (torn or altered state)",
            ));
        }
        let mut lines = body.lines();
        if lines.next() != Some(MAGIC) {
            return Err(StateError::Corrupt("unknown state file version"));
        }
        let mut field = |name: &str| -> Result<&str, StateError> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .ok_or(StateError::Corrupt("missing or misordered field"))
        };
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| StateError::Corrupt("bad number"))
        };
        let next_seq = num(field("seq")?)?;
        let prev_mac = field("prev")?.to_string();
        let key_hex = field("key")?;
        let log_dev = num(field("log_dev")?)?;
        let log_ino = num(field("log_ino")?)?;
        let log_size = num(field("log_size")?)?;
        if !is_mac_hex(&prev_mac) {
            return Err(StateError::Corrupt("bad prev mac"));
        }
        let mut key = [0u8; 32];
        decode_hex_into(key_hex.as_bytes(), &mut key).ok_or(StateError::Corrupt("bad key"))?;
        let key = ChainKey::from_bytes(key);
        Ok(ChainState {
            next_seq,
            prev_mac,
            key,
            log_dev,
            log_ino,
            log_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_with_fixed_length() {
        let a = ChainState::genesis(ChainKey::from_bytes([9; 32]), 1, 2, 0);
        let mut b = a.clone();
        b.next_seq = u64::MAX;
        b.log_size = 123456;
        assert_eq!(a.encode().len(), b.encode().len());
        assert_eq!(ChainState::decode(&b.encode()).unwrap(), b);
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let s = ChainState::genesis(ChainKey::from_bytes([3; 32]), 1, 2, 3).encode();
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 0x01;
            assert!(ChainState::decode(&t).is_err(), "flip at {i} accepted");
        }
        assert_eq!(ChainState::decode(b""), Err(StateError::Empty));
        assert!(ChainState::decode(&s[..s.len() - 5]).is_err());
    }
}
