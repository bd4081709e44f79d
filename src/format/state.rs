//! The state file beside the log (`<log>.state`): the writer's only memory of the chain.
//!
//! It holds K_next (the key for the next record), the next seq, the mac of the last record, the
//! identity of the log file and the log size after the last record, in one of two fixed-length
//! text slots of a one-page file that every writer maps; a SHA-256 check line in each slot
//! detects a torn or corrupted state. Its layout is in docs/INTERNALS.md §1.1.

use crate::format::chain::{
    decode_hex_into, hex_lower, is_mac_hex, push_hex_lower, ChainKey, ZERO_MAC_HEX,
};
use crate::tlog::tree::Frontier;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Length of `ChainState::encode`'s output.
const ENCODED_LEN: usize = 341;

/// First line of a state in its text form (a slot of a v2 file, or a whole v1 state file).
const SLOT_MAGIC: &str = "p11audit-state v1";

/// The state file (format v2, docs/INTERNALS.md §1.1): one page holding a header, the writers'
/// shared mutex and two slots. Each slot holds a state in the text form of `encode` (which is
/// what state files of format v1 were); the header says which slot is current. A writer writes
/// the other slot, switches `active` with one atomic store, then wipes the old slot (its key).
pub mod layout {
    pub(crate) const FILE_LEN: usize = 4096;
    pub(crate) const MAGIC: &[u8] = b"p11audit-state v2\n";
    /// u64, 0 or 1: the current slot.
    pub(crate) const ACTIVE: usize = 32;
    /// u64, non-zero when the next writer must check the log against the state before
    /// appending (a writer died holding the mutex, or the file is from an earlier boot).
    pub(crate) const RECOVER: usize = 40;
    /// u64, incremented by every state update: a writer that wrote the last update need not
    /// decode the slot again.
    pub(crate) const GENERATION: usize = 48;
    /// u64, non-zero while a rotation is under way: the seq of the rotate record plus one.
    pub(crate) const ROTATE_SEQ: usize = 56;
    /// 36 bytes: the boot id (`/proc/sys/kernel/random/boot_id`) the mutex was set up in.
    pub(crate) const BOOT_ID: usize = 64;
    pub(crate) const BOOT_ID_LEN: usize = 36;
    /// The robust, process-shared `pthread_mutex_t` (glibc x86-64: 40 bytes).
    pub(crate) const MUTEX: usize = 128;
    /// While a rotation is under way: the name the old file gets (NUL-padded).
    pub(crate) const ROTATE_NAME: usize = 256;
    pub(crate) const ROTATE_NAME_LEN: usize = 256;
    /// u64: records lost by any writer of the chain (an append that failed, a record p11audit
    /// could not build), counted since the state file was made; it only grows. Here, not in
    /// the memory of the process that lost them, so that a process that exits (or dies) before
    /// the log can be written again still has its losses reported, by the next append of any
    /// writer. Added to without the mutex (the failure may be that it could not be had).
    pub const LOST: usize = 512;
    /// u64: no record of those not yet reported was lost before this time, in microseconds
    /// since the Unix epoch (0: nothing pending, or not known).
    pub const LOST_SINCE: usize = 520;
    /// u64 per slot: the value of LOST that the `gap` records up to that slot's state have
    /// reported. It changes with the slot, in the same atomic switch of ACTIVE, so a writer
    /// killed anywhere in an append neither reports the same losses twice nor drops them.
    pub(crate) const REPORTED: [usize; 2] = [528, 536];
    /// u64 per slot: the size of the Merkle tree of the log (docs/FORMAT.md §9) in that slot's
    /// state, plus one; 0: the chain has no tree (a chain started without one). It changes
    /// with the slot, in the same atomic switch of ACTIVE.
    pub(crate) const TREE: [usize; 2] = [544, 552];
    /// u64: the tree size of the last checkpoint signed for this chain (0: none). It only grows.
    pub(crate) const SIGNED_SIZE: usize = 560;
    /// u64: when that checkpoint was signed, in microseconds since the Unix epoch.
    pub(crate) const SIGNED_AT: usize = 568;
    /// Per slot: levels 0 to `TREE_LOW_LEVELS - 1` of the tree's frontier, 32 bytes each (the
    /// root of the complete subtree of 2^L leaves where bit L of the size is set; unused
    /// levels hold anything).
    pub(crate) const TREE_LOW: [usize; 2] = [2048, 2560];
    pub(crate) const TREE_LOW_LEVELS: usize = 16;
    /// Levels `TREE_LOW_LEVELS` to 47 of the frontier, shared by both slots: a state update
    /// that adds fewer than 2^16 leaves writes at most one of them, one the current state does
    /// not use (the carry of the addition clears the levels below it), so the current state's
    /// frontier stays whole until the switch of ACTIVE.
    pub(crate) const TREE_HIGH: usize = 3072;
    pub(crate) const SLOTS: [usize; 2] = [1024, 1536];
    pub(crate) const SLOT_LEN: usize = 512;
}

/// Reads the chain state out of a whole state file (v2 layout).
pub fn decode_file(bytes: &[u8]) -> Result<ChainState, StateError> {
    use layout::*;
    if bytes.is_empty() {
        return Err(StateError::Empty);
    }
    if bytes.starts_with(SLOT_MAGIC.as_bytes()) {
        return Err(StateError::Corrupt(
            "a state file of format v1 (an older p11audit)",
        ));
    }
    if bytes.len() != FILE_LEN {
        return Err(StateError::Corrupt("wrong size for a state file"));
    }
    if !bytes.starts_with(MAGIC) {
        return Err(StateError::Corrupt("unknown state file version"));
    }
    let active = u64_at(bytes, ACTIVE);
    let at = active_slot_offset(active)?;
    let mut state = decode_slot(&bytes[at..at + SLOT_LEN])?;
    let active = (active as usize).min(1);
    state.lost_reported = u64_at(bytes, REPORTED[active]);
    state.tree = read_tree(
        |at, out| out.copy_from_slice(&bytes[at..at + out.len()]),
        active,
        state.next_seq,
    );
    Ok(state)
}

/// The frontier beside slot `active`, read through `read(offset, buffer)`; None if the chain
/// has no tree, or if its size is not `next_seq` (a writer without the tree wrote the state).
pub(crate) fn read_tree(
    read: impl Fn(usize, &mut [u8]),
    active: usize,
    next_seq: u64,
) -> Option<Box<Frontier>> {
    use layout::*;
    let mut word = [0u8; 8];
    read(TREE[active], &mut word);
    let size = u64::from_ne_bytes(word).checked_sub(1)?;
    if size != next_seq {
        return None;
    }
    let mut tree = Box::new(Frontier {
        size,
        ..Frontier::default()
    });
    for (level, hash) in tree.levels.iter_mut().enumerate() {
        let at = match level.checked_sub(TREE_LOW_LEVELS) {
            None => TREE_LOW[active] + 32 * level,
            Some(high) => TREE_HIGH + 32 * high,
        };
        read(at, hash);
    }
    Some(tree)
}

/// The writes that put `tree` beside slot `slot` when `current` is the tree of the current
/// state: the slot's own levels, and of the shared levels those that `tree` uses and
/// `current` does not (`layout::TREE_HIGH`). Each is (offset, bytes); the caller writes them
/// before it switches ACTIVE.
pub(crate) fn tree_writes(
    tree: Option<&Frontier>,
    current_size: Option<u64>,
    slot: usize,
) -> Vec<(usize, &[u8])> {
    use layout::*;
    let Some(tree) = tree else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(TREE_LOW_LEVELS + 1);
    for level in 0..TREE_LOW_LEVELS {
        out.push((TREE_LOW[slot] + 32 * level, &tree.levels[level][..]));
    }
    for level in TREE_LOW_LEVELS..tree.levels.len() {
        let in_new = tree.size >> level & 1 == 1;
        let same_subtree = current_size
            .is_some_and(|c| c >> level & 1 == 1 && c >> (level + 1) == tree.size >> (level + 1));
        if in_new && !same_subtree {
            out.push((
                TREE_HIGH + 32 * (level - TREE_LOW_LEVELS),
                &tree.levels[level][..],
            ));
        }
    }
    out
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Records lost and not yet reported in a `gap` record that a whole state file (v2 layout)
/// counts, and since when (µs since the epoch; 0: not known). None for anything but a state
/// file of this version with a chain in it.
pub(crate) fn unreported_losses(bytes: &[u8]) -> Option<(u64, u64)> {
    let state = decode_file(bytes).ok()?;
    let pending = u64_at(bytes, layout::LOST).saturating_sub(state.lost_reported);
    Some((pending, u64_at(bytes, layout::LOST_SINCE)))
}

/// Where the slot that the header's `active` value names starts.
pub(crate) fn active_slot_offset(active: u64) -> Result<usize, StateError> {
    layout::SLOTS
        .get(active as usize)
        .copied()
        .ok_or(StateError::Corrupt("bad active slot"))
}

/// For the verifier: a state file of format v2, or of format v1 (the bare text form), so that
/// logs whose state file is of either format verify against it.
pub fn decode_any_version(bytes: &[u8]) -> Result<ChainState, StateError> {
    if bytes.starts_with(SLOT_MAGIC.as_bytes()) {
        ChainState::decode(bytes)
    } else {
        decode_file(bytes)
    }
}

/// Reads a whole state file for a reader that does not take part in the locking (a verifier),
/// with the guards a file named on the command line needs: a symbolic link is refused
/// (`O_NOFOLLOW`), a FIFO cannot block the open (`O_NONBLOCK`) and anything but a regular file
/// is refused before it is read, and at most one byte more than a state file of format v2 is
/// read (a device such as /dev/zero would never end). A longer file is an error. The bytes hold
/// the key, so they are wiped when dropped, and the buffer is never grown (no copy is left
/// behind in freed memory).
pub fn read_file_bounded(path: &std::path::Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::new(ErrorKind::InvalidInput, "a symbolic link"),
            _ => e,
        })?;
    if !file.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let limit = layout::FILE_LEN + 1;
    let mut bytes = Zeroizing::new(Vec::with_capacity(limit));
    file.take(limit as u64).read_to_end(&mut bytes)?;
    if bytes.len() > layout::FILE_LEN {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("longer than a state file ({} bytes)", layout::FILE_LEN),
        ));
    }
    Ok(bytes)
}

/// A slot: the text form of `encode`, then zeros. All zeros: no chain yet.
pub(crate) fn decode_slot(slot: &[u8]) -> Result<ChainState, StateError> {
    let end = slot.iter().position(|&b| b == 0).unwrap_or(slot.len());
    if slot[end..].iter().any(|&b| b != 0) {
        return Err(StateError::Corrupt("bytes after the state in its slot"));
    }
    ChainState::decode(&slot[..end])
}

/// Where the `key` line is in the text form (`key `, 64 hex digits, newline): after the magic
/// line and the `seq` (20 digits) and `prev` (64 hex digits) lines; every field has a fixed
/// width.
pub(crate) const KEY_LINE: std::ops::Range<usize> = {
    let start = SLOT_MAGIC.len() + 1 + "seq ".len() + 20 + 1 + "prev ".len() + 64 + 1;
    start..start + "key ".len() + 64 + 1
};

/// The key from its line (`KEY_LINE` of a slot), for a writer that still holds the rest of the
/// state it stored there (the state file's generation says nobody wrote since) and kept no copy
/// of the key.
pub(crate) fn decode_key_line(line: &[u8]) -> Result<ChainKey, StateError> {
    let hex = line
        .strip_prefix(b"key ")
        .and_then(|l| l.strip_suffix(b"\n"))
        .ok_or(StateError::Corrupt("no key where the key belongs"))?;
    let mut key = [0u8; 32];
    let decoded = decode_hex_into(hex, &mut key);
    let chain_key = ChainKey::from_bytes(key);
    key.zeroize();
    decoded
        .map(|_| chain_key)
        .ok_or(StateError::Corrupt("bad key"))
}

/// A whole state file holding `state` in slot 0 (or no chain), with a mutex that the first
/// writer sets up (the boot id is left empty, so it will). For tests and tools.
pub fn encode_file(state: Option<&ChainState>) -> Vec<u8> {
    use layout::*;
    let mut out = vec![0u8; FILE_LEN];
    out[..MAGIC.len()].copy_from_slice(MAGIC);
    if let Some(s) = state {
        let text = s.encode();
        out[SLOTS[0]..SLOTS[0] + text.len()].copy_from_slice(&text);
    }
    out
}

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
    /// The count of lost records (`layout::LOST`) that `gap` records up to here have reported.
    /// Not part of the slot's text: it is kept beside the slot (`layout::REPORTED`), and is 0
    /// in a state decoded from a slot alone.
    pub lost_reported: u64,
    /// The frontier of the Merkle tree of the chain's lines (its size is `next_seq`); None for
    /// a chain without a tree. Not part of the slot's text: it is kept beside the slot
    /// (`layout::TREE`, `TREE_LOW`, `TREE_HIGH`), and is None in a state decoded from a slot
    /// alone.
    pub tree: Option<Box<Frontier>>,
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
            lost_reported: 0,
            tree: Some(Box::default()),
        }
    }

    /// The fixed-length text form. Numbers are zero-padded to 20 digits so every state has the
    /// same length.
    pub fn encode(&self) -> Vec<u8> {
        // By hand rather than format!: once per append, on the hot path.
        fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
            line_with(out, name, |out| out.extend_from_slice(value));
        }
        // The value written straight into `out`: the key's hex is never copied anywhere else.
        fn line_with(out: &mut Vec<u8>, name: &str, push_value: impl FnOnce(&mut Vec<u8>)) {
            out.extend_from_slice(name.as_bytes());
            out.push(b' ');
            push_value(out);
            out.push(b'\n');
        }
        fn padded(n: u64) -> [u8; 20] {
            let mut d = [b'0'; 20];
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(n).as_bytes();
            // u64::MAX has 20 digits, so they always fit.
            d[20 - digits.len()..].copy_from_slice(digits);
            d
        }
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(SLOT_MAGIC.as_bytes());
        out.push(b'\n');
        line(&mut out, "seq", &padded(self.next_seq));
        line(&mut out, "prev", self.prev_mac.as_bytes());
        line_with(&mut out, "key", |out| self.key.push_hex(out));
        line(&mut out, "log_dev", &padded(self.log_dev));
        line(&mut out, "log_ino", &padded(self.log_ino));
        line(&mut out, "log_size", &padded(self.log_size));
        let check = Sha256::digest(&out);
        line_with(&mut out, "check", |out| push_hex_lower(out, &check));
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StateError> {
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
        if lines.next() != Some(SLOT_MAGIC) {
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
            lost_reported: 0,
            tree: None,
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
        b.tree = None;
        b.next_seq = u64::MAX;
        b.log_size = 123456;
        assert_eq!(a.encode().len(), ENCODED_LEN);
        assert_eq!(b.encode().len(), ENCODED_LEN);
        assert_eq!(ChainState::decode(&b.encode()).unwrap(), b);
    }

    #[test]
    fn the_verifier_reads_both_versions() {
        let mut s = ChainState::genesis(ChainKey::from_bytes([5; 32]), 1, 2, 3);
        s.tree = None;
        assert_eq!(decode_any_version(&s.encode()).unwrap(), s);
        assert_eq!(decode_any_version(&encode_file(Some(&s))).unwrap(), s);
        assert!(decode_file(&s.encode()).is_err(), "writers refuse v1");
    }

    #[test]
    fn the_key_alone_is_read_from_its_fixed_place() {
        let state = ChainState {
            next_seq: 12_345,
            prev_mac: "ab".repeat(32),
            key: ChainKey::from_bytes([0x5c; 32]),
            log_dev: 1,
            log_ino: u64::MAX,
            log_size: 99,
            lost_reported: 0,
            tree: None,
        };
        let mut slot = state.encode();
        assert_eq!(decode_key_line(&slot[KEY_LINE]), Ok(state.key.clone()));
        slot[KEY_LINE.end - 3] = b'X';
        assert!(decode_key_line(&slot[KEY_LINE]).is_err());
        assert!(decode_key_line(&[0u8; layout::SLOT_LEN][KEY_LINE]).is_err());
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
