//! Signed checkpoints of the log's tree (docs/FORMAT.md §9): when one is due, the append that
//! makes it due is followed by a `checkpoint` record carrying the signed note, and
//! `<log>.checkpoint` is replaced with the note. A writer never signs a tree smaller than one
//! it signed before (or a different tree of the same size): c2sp.org/tlog-checkpoint's "never
//! two inconsistent checkpoints".

use crate::format::record::{micros_now, rfc3339_micros_now, Event, Record};
use crate::format::state::{layout, ChainState};
use crate::tlog::checkpoint::Checkpoint;
use crate::tlog::note::{SignedNote, SignerKey, ALG_ED25519};
use crate::writer::audit_log::AuditLog;
use crate::writer::error::{KeyFileError, WriterError};
use crate::writer::open::read_secret_file;
use crate::writer::own_files::{self, owner_text, FileRole};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How often the writer signs a checkpoint (`P11AUDIT_CHECKPOINT_EVERY`), besides when a
/// process closes its part of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointEvery {
    /// After this many records since the last checkpoint.
    Records(u64),
    /// At the first append this many seconds after the last checkpoint.
    Seconds(u64),
}

/// The default: a thousand records. Signing (one Ed25519 signature, about 20 µs, and one
/// small file replaced) then costs well under 0.1 µs per record, and on a busy host no more
/// than a thousand records are sealed by the HMAC chain alone.
pub const DEFAULT_EVERY: CheckpointEvery = CheckpointEvery::Records(1000);

/// `P11AUDIT_CHECKPOINT_KEY` and `P11AUDIT_CHECKPOINT_EVERY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSettings {
    pub key_file: PathBuf,
    pub every: CheckpointEvery,
}

/// The signer of a writer that signs checkpoints.
pub(super) struct Checkpointer {
    key: SignerKey,
    every: CheckpointEvery,
}

/// `<log>.checkpoint`: the newest signed checkpoint of the log.
pub fn checkpoint_path_for(log_path: &Path) -> PathBuf {
    let mut p = log_path.as_os_str().to_owned();
    p.push(".checkpoint");
    PathBuf::from(p)
}

/// Reads the checkpoint key with the key file's trust checks (owner, mode, regular file).
pub(crate) fn read_checkpoint_key(path: &Path) -> Result<SignerKey, WriterError> {
    read_note_key(path, ALG_ED25519).map_err(|why| WriterError::CheckpointKey {
        path: path.to_path_buf(),
        why,
    })
}

/// Reads a signer key of type `alg` (a checkpoint key, or a witness's cosignature key) with
/// the key file's trust checks: a regular file, owned by this uid or root, no group or other
/// access. The error says why it cannot be used.
pub fn read_note_key(path: &Path, alg: u8) -> Result<SignerKey, String> {
    let refused = |why: String| why;
    let text = read_secret_file(path).map_err(|e| {
        refused(match e {
            KeyFileError::Unreadable { source, .. } => source.to_string(),
            KeyFileError::NotRegular { .. } => "not a regular file".into(),
            KeyFileError::OwnedByAnother { owner, euid, .. } => format!(
                "owned by {}, not by this process's uid {euid} or root: its owner could sign checkpoints",
                owner_text(owner)
            ),
            KeyFileError::OpenToOthers { mode, .. } => format!(
                "accessible by group or others (mode {mode:04o}); run `chmod 0400 {}`",
                path.display()
            ),
            KeyFileError::NotAKey { .. } => "not a signer key".into(),
        })
    })?;
    let key = SignerKey::parse(&text).map_err(|e| {
        refused(format!(
            "{e}: make one with `p11audit keygen --checkpoint ORIGIN PATH` (or `--witness NAME PATH`)"
        ))
    })?;
    if key.alg != alg {
        return Err(refused(format!(
            "a key of signature type {:#04x}, not {alg:#04x}",
            key.alg
        )));
    }
    Ok(key)
}

impl Checkpointer {
    pub(super) fn open(settings: &CheckpointSettings) -> Result<Self, WriterError> {
        Ok(Checkpointer {
            key: read_checkpoint_key(&settings.key_file)?,
            every: settings.every,
        })
    }
}

impl AuditLog {
    /// Whether an append of `incoming` records after `state` must be followed by a
    /// checkpoint; an error if it must and this writer may not sign one (it is refused before
    /// anything is written: fail-closed as configured).
    pub(super) fn checkpoint_due(
        &self,
        state: &ChainState,
        incoming: u64,
        closing: bool,
    ) -> Result<bool, WriterError> {
        let Some(signer) = &self.checkpointer else {
            return Ok(false);
        };
        let signed_size = self.shared.load_u64(layout::SIGNED_SIZE);
        let due = closing
            || match signer.every {
                CheckpointEvery::Records(n) => {
                    (state.next_seq + incoming).saturating_sub(signed_size) >= n
                }
                CheckpointEvery::Seconds(s) => {
                    let signed_at = self.shared.load_u64(layout::SIGNED_AT);
                    micros_now().saturating_sub(signed_at) >= s * 1_000_000
                }
            };
        if !due {
            return Ok(false);
        }
        let refuse = |why: String| WriterError::CheckpointRefused {
            log: self.settings.log_path.clone(),
            why,
        };
        let Some(tree) = &state.tree else {
            return Err(refuse(
                "the chain has no Merkle tree (it was started without one)".into(),
            ));
        };
        if tree.size < signed_size {
            return Err(refuse(format!(
                "the log holds {} records but the state file records a checkpoint of {signed_size}",
                tree.size
            )));
        }
        if let Some(last) = self.last_checkpoint_file(&signer.key.name) {
            if tree.size < last.size {
                return Err(refuse(format!(
                    "the log holds {} records but {} holds a checkpoint of {}",
                    tree.size,
                    checkpoint_path_for(&self.settings.log_path).display(),
                    last.size
                )));
            }
            if tree.size == last.size && tree.root() != last.root {
                return Err(refuse(format!(
                    "the log's tree of {} records is not the one {} signed",
                    tree.size,
                    checkpoint_path_for(&self.settings.log_path).display()
                )));
            }
        }
        Ok(true)
    }

    /// A chain started without a tree cannot have checkpoints: said when the log is opened,
    /// rather than at the first checkpoint due.
    pub(super) fn refuse_checkpoints_without_tree(&mut self) -> Result<(), WriterError> {
        if self.current_state()?.tree.is_some() {
            return Ok(());
        }
        Err(WriterError::CheckpointRefused {
            log: self.settings.log_path.clone(),
            why: "the chain has no Merkle tree (it was started without one): unset P11AUDIT_CHECKPOINT_KEY, or start a new chain".into(),
        })
    }

    /// The checkpoint in `<log>.checkpoint`, if it is one for `origin`.
    fn last_checkpoint_file(&self, origin: &str) -> Option<Checkpoint> {
        let path = checkpoint_path_for(&self.settings.log_path);
        let text = std::fs::read_to_string(path).ok()?;
        let note = SignedNote::parse(&text).ok()?;
        Checkpoint::parse(&note.text)
            .ok()
            .filter(|c| c.origin == origin)
    }

    /// Signs the tree as it is now and appends the `checkpoint` record; returns the signed
    /// note, for `<log>.checkpoint`. Caller holds the lock and has checked `checkpoint_due`.
    pub(super) fn write_checkpoint(&mut self, template: &Record) -> Result<String, WriterError> {
        let state = self.current_state()?;
        let (Some(signer), Some(tree)) = (&self.checkpointer, &state.tree) else {
            return Err(WriterError::Internal);
        };
        let body = Checkpoint::new(&signer.key.name, tree.size, tree.root()).body();
        let signature = signer
            .key
            .sign_note(&body)
            .map_err(|_| WriterError::Internal)?;
        let note = SignedNote {
            text: body,
            signatures: vec![signature],
        }
        .encode();
        // Recorded before the note leaves this process: no later writer signs a smaller tree.
        self.shared.store_u64(layout::SIGNED_SIZE, tree.size);
        self.shared.store_u64(layout::SIGNED_AT, micros_now());
        let mut record = template.bookkeeping(Event::Checkpoint);
        record.ts = rfc3339_micros_now();
        record.detail.checkpoint = Some(note.clone());
        self.append_locked(state, None, &[record.to_body()])?;
        Ok(note)
    }

    /// Puts `note` (of a tree of `size` records) in `<log>.checkpoint`, without the lock: it is
    /// written to `<log>.checkpoint.<pid>.<tid>.next` (a file this writer creates, with the
    /// log's mode), which then changes places with `<log>.checkpoint` in one step (or is
    /// renamed to it, if there is none yet), so readers see the old note or the new one. A
    /// note of a larger tree already there, from a writer that signed meanwhile, stays.
    pub(super) fn replace_checkpoint_file(&self, note: &str, size: u64) -> Result<(), WriterError> {
        let path = checkpoint_path_for(&self.settings.log_path);
        let mut next = path.as_os_str().to_owned();
        next.push(format!(
            ".{}.{}.next",
            crate::os::process::current_pid(),
            crate::os::process::current_tid()
        ));
        let next = PathBuf::from(next);
        let failed = |e| WriterError::io("write checkpoint file", &path, e);
        // Left by a thread of this pid and tid that died between creating and placing it.
        let _ = std::fs::remove_file(&next);
        let mut file =
            own_files::create_new(&next, FileRole::Log, self.settings.log_mode).map_err(failed)?;
        file.write_all(note.as_bytes()).map_err(failed)?;
        drop(file);
        let newer_there = self
            .checkpointer
            .as_ref()
            .and_then(|c| self.last_checkpoint_file(&c.key.name))
            .is_some_and(|c| c.size > size);
        let placed = if newer_there {
            Ok(())
        } else {
            match crate::os::exchange(&next, &path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    crate::os::rename_no_replace(&next, &path)
                }
                other => other,
            }
        };
        // `next` now holds the old note (or ours, if it was not placed).
        let _ = std::fs::remove_file(&next);
        placed.map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::ProcessIdentity;
    use crate::format::state;
    use crate::tlog::tree::{leaf_hash, root_of};
    use crate::writer::audit_log::{state_path_for, LogSettings};
    use crate::writer::testing::{log_settings, who};
    use std::os::unix::fs::PermissionsExt;

    fn template() -> Record {
        Record::new(&who(), 0, Event::Outcome, None)
    }

    fn bodies(n: usize) -> Vec<String> {
        let r = Record::new(&who(), 1, Event::Outcome, Some("C_Sign"));
        vec![r.to_body(); n]
    }

    fn with_checkpoints(dir: &Path, every: CheckpointEvery) -> (LogSettings, SignerKey) {
        let key = SignerKey::from_seed("test.example/log", ALG_ED25519, &[9; 32]).unwrap();
        let key_file = dir.join("checkpoint.key");
        std::fs::write(&key_file, key.encode().as_bytes()).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o400)).unwrap();
        let mut settings = log_settings(dir, [0x42; 32]);
        settings.checkpoint = Some(CheckpointSettings { key_file, every });
        (settings, key)
    }

    fn lines(settings: &LogSettings) -> Vec<Vec<u8>> {
        std::fs::read(&settings.log_path)
            .unwrap()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn leaves(lines: &[Vec<u8>]) -> Vec<crate::tlog::tree::Hash> {
        lines.iter().map(|l| leaf_hash(l)).collect()
    }

    fn stored_tree(settings: &LogSettings) -> crate::tlog::tree::Frontier {
        let bytes = std::fs::read(state_path_for(&settings.log_path)).unwrap();
        *state::decode_file(&bytes).unwrap().tree.unwrap()
    }

    #[test]
    fn the_state_holds_the_tree_of_the_lines_also_after_a_roll_forward() {
        let dir = tempfile::tempdir().unwrap();
        let settings = log_settings(dir.path(), [0x42; 32]);
        let mut log = AuditLog::open(&settings, &who()).unwrap();
        for n in 1..40 {
            log.append(&bodies(n % 5 + 1), &template()).unwrap();
        }
        let all = lines(&settings);
        assert_eq!(stored_tree(&settings).root(), root_of(&leaves(&all)));
        // A writer that died after its write and before storing its state: the next one rolls
        // forward over its records, and extends the tree over them.
        let state_path = state_path_for(&settings.log_path);
        let stale = std::fs::read(&state_path).unwrap();
        log.append(&bodies(7), &template()).unwrap();
        drop(log);
        let mut stale = stale;
        stale[layout::RECOVER..layout::RECOVER + 8].copy_from_slice(&1u64.to_ne_bytes());
        std::fs::write(&state_path, &stale).unwrap();
        let mut log = AuditLog::open(&settings, &who()).unwrap();
        log.append(&bodies(1), &template()).unwrap();
        let all = lines(&settings);
        let tree = stored_tree(&settings);
        assert_eq!(tree.size, all.len() as u64);
        assert_eq!(tree.root(), root_of(&leaves(&all)));
    }

    #[test]
    fn checkpoints_are_signed_recorded_and_published() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, key) = with_checkpoints(dir.path(), CheckpointEvery::Records(10));
        let mut log = AuditLog::open(&settings, &who()).unwrap();
        for _ in 0..12 {
            log.append(&bodies(2), &template()).unwrap();
        }
        let all = lines(&settings);
        let records: Vec<(usize, String)> = all
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_slice(l).ok()?;
                (v["ev"] == "checkpoint").then(|| (i, v["checkpoint"].as_str().unwrap().into()))
            })
            .collect();
        assert!(records.len() >= 2, "{} checkpoints", records.len());
        for (seq, text) in &records {
            let note = SignedNote::parse(text).unwrap();
            note.verify(&key.verifier()).unwrap();
            let c = Checkpoint::parse(&note.text).unwrap();
            // The record at seq S signs the tree of the S lines before it.
            assert_eq!(c.size, *seq as u64);
            assert_eq!(c.root, root_of(&leaves(&all[..*seq])));
            assert_eq!(c.origin, "test.example/log");
        }
        let file = std::fs::read_to_string(checkpoint_path_for(&settings.log_path)).unwrap();
        assert_eq!(file, records.last().unwrap().1);
        let mode = std::fs::metadata(checkpoint_path_for(&settings.log_path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A process closing its part of the chain signs at once.
        let close = Record::new(&who(), 0, Event::Close, None);
        let before = records.last().unwrap().0;
        log.append(&[close.to_body()], &close).unwrap();
        let c = log.last_checkpoint_file("test.example/log").unwrap();
        assert_eq!(c.size as usize, lines(&settings).len() - 1);
        assert!(c.size as usize > before);
    }

    #[test]
    fn a_log_and_state_put_back_to_an_older_pair_get_no_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, _) = with_checkpoints(dir.path(), CheckpointEvery::Records(5));
        let state_path = state_path_for(&settings.log_path);
        let mut log = AuditLog::open(&settings, &who()).unwrap();
        log.append(&bodies(6), &template()).unwrap();
        let old_log = std::fs::read(&settings.log_path).unwrap();
        let old_state = std::fs::read(&state_path).unwrap();
        for _ in 0..4 {
            log.append(&bodies(3), &template()).unwrap();
        }
        drop(log);
        // The older pair, copied back over the files (the checkpoint file stays).
        std::fs::write(&settings.log_path, &old_log).unwrap();
        std::fs::write(&state_path, &old_state).unwrap();
        let mut log = AuditLog::open(&settings, &who()).unwrap();
        let err = log.append(&bodies(6), &template()).unwrap_err();
        assert!(
            matches!(err, WriterError::CheckpointRefused { .. }),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&settings.log_path).unwrap(),
            old_log,
            "nothing written"
        );
    }

    #[test]
    fn a_chain_without_a_tree_is_refused_a_checkpoint_key_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, _) = with_checkpoints(dir.path(), DEFAULT_EVERY);
        let plain = LogSettings {
            checkpoint: None,
            ..settings.clone()
        };
        let mut log = AuditLog::open(&plain, &who()).unwrap();
        log.append(&bodies(3), &template()).unwrap();
        drop(log);
        // A chain whose states were stored without a tree (both slots' TREE words zero).
        let state_path = state_path_for(&settings.log_path);
        let mut bytes = std::fs::read(&state_path).unwrap();
        for at in layout::TREE {
            bytes[at..at + 8].copy_from_slice(&0u64.to_ne_bytes());
        }
        std::fs::write(&state_path, &bytes).unwrap();
        AuditLog::open(&plain, &who())
            .unwrap()
            .append(&bodies(1), &template())
            .unwrap();
        let err = AuditLog::open(&settings, &who()).err().expect("refused");
        assert!(
            matches!(err, WriterError::CheckpointRefused { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_checkpoint_key_open_to_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, _) = with_checkpoints(dir.path(), DEFAULT_EVERY);
        let key_file = &settings.checkpoint.as_ref().unwrap().key_file;
        std::fs::set_permissions(key_file, std::fs::Permissions::from_mode(0o440)).unwrap();
        let who: ProcessIdentity = who();
        assert!(matches!(
            AuditLog::open(&settings, &who),
            Err(WriterError::CheckpointKey { .. })
        ));
    }
}
