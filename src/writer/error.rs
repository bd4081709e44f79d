//! The writer's errors. Each is worded for the one `p11audit:` stderr line that says what went
//! wrong and what to do, and names the file it is about.

use crate::writer::own_files::{owner_text, UntrustedFile};
use std::io;
use std::path::PathBuf;

/// Why the writer cannot open a chain, or cannot append to it (and so refuses to log).
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("{0} (P11AUDIT_LOG)")]
    Untrusted(#[from] UntrustedFile),

    #[error("the directory of the audit log {} does not exist (P11AUDIT_LOG): create it or point P11AUDIT_LOG elsewhere", log.display())]
    NoDirectory { log: PathBuf },

    #[error("P11AUDIT_KEY_FILE is not set and no chain exists yet at {}: set P11AUDIT_KEY_FILE to a key made by `p11audit keygen` to start one", log.display())]
    NoKeyFile { log: PathBuf },

    #[error("{0}")]
    KeyFile(#[from] KeyFileError),

    #[error("audit state file {} is unusable ({why}); refusing to log so that no history is overwritten: restore it, or start a new chain deliberately (see README)", state.display())]
    StateUnusable { state: PathBuf, why: &'static str },

    #[error("audit state file {} is empty, so p11audit did not make it; move it away (and find out who made it) so that p11audit creates it (P11AUDIT_LOG)", state.display())]
    StateEmpty { state: PathBuf },

    #[error("audit log {} is not the file the state file {} belongs to (it was replaced or the state points at another log); refusing to log", log.display(), state.display())]
    NotItsLog { log: PathBuf, state: PathBuf },

    #[error("audit log {} has content but its state file {} is empty or missing; refusing to start a new chain over it: restore the state file, or move the log away to start a new chain deliberately", log.display(), state.display())]
    LogWithoutState { log: PathBuf, state: PathBuf },

    #[error("audit log {} was deleted or replaced while in use; refusing to log to a file that no longer has a name", log.display())]
    LogUnlinked { log: PathBuf },

    #[error("audit log {} is empty, but the state file records {state_size} bytes: it was truncated, or deleted and created again; refusing to log", log.display())]
    LogEmptied { log: PathBuf, state_size: u64 },

    #[error("audit log {} is shorter ({size} bytes) than the state file records ({state_size} bytes): it was truncated; refusing to log", log.display())]
    LogTruncated {
        log: PathBuf,
        size: u64,
        state_size: u64,
    },

    #[error("audit log {} has {extra} bytes past the last record the state knows; refusing to log", log.display())]
    LogTooFarAhead { log: PathBuf, extra: u64 },

    #[error("audit log {} has a line after byte {offset} that is not the next record of the chain (seq {seq}); refusing to log", log.display())]
    LogNotTheChain { log: PathBuf, offset: u64, seq: u64 },

    #[error("a rotation of audit log {} was interrupted and its old file is gone; refusing to log", log.display())]
    RotationOldFileGone { log: PathBuf },

    #[error("cannot finish rotating audit log {}: the old file is neither there nor at {}; refusing to log", log.display(), rotated.display())]
    RotationLost { log: PathBuf, rotated: PathBuf },

    #[error("cannot rotate audit log {} ({step}): {source}; refusing to log until it can", log.display())]
    Rotation {
        log: PathBuf,
        step: &'static str,
        source: io::Error,
    },

    /// A system call on one of the writer's files failed: "cannot {action} {path}{context}".
    #[error("cannot {action} {}{context}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        context: &'static str,
        source: io::Error,
    },

    #[error("the Merkle tree of audit log {} holds {} records, as many as its frontier can; refusing to log: start a new chain", log.display(), crate::tlog::tree::MAX_SIZE)]
    TreeFull { log: PathBuf },

    #[error("checkpoint key {} cannot be used (P11AUDIT_CHECKPOINT_KEY): {why}", path.display())]
    CheckpointKey { path: PathBuf, why: String },

    #[error("refusing to sign a checkpoint of audit log {}: {why}; p11audit never signs two inconsistent checkpoints, and refuses to log until this is resolved: the log and its state were replaced by an older pair, or the log was started again under the same checkpoint key", log.display())]
    CheckpointRefused { log: PathBuf, why: String },

    #[error("internal error while writing")]
    Internal,
}

impl WriterError {
    /// `WriterError::Io` for `action` ("write audit log") on `path`.
    pub(super) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WriterError::Io {
            action,
            path: path.into(),
            context: "",
            source,
        }
    }
}

/// Why the key file that starts a chain (`P11AUDIT_KEY_FILE`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {} (P11AUDIT_KEY_FILE): {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },

    #[error("key file {} is not a regular file (P11AUDIT_KEY_FILE): point P11AUDIT_KEY_FILE at a file made by `p11audit keygen`", path.display())]
    NotRegular { path: PathBuf },

    #[error("key file {} is owned by {}, not by this process's uid {euid} or root: its owner knows the chain key and could forge the log; make a new key as uid {euid} with `p11audit keygen` (P11AUDIT_KEY_FILE)", path.display(), owner_text(*owner))]
    OwnedByAnother {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },

    #[error("key file {} is accessible by group or others (mode {mode:04o}); run `chmod 0400 {}` (P11AUDIT_KEY_FILE)", path.display(), path.display())]
    OpenToOthers { path: PathBuf, mode: u32 },

    #[error("key file {} does not hold 64 hex characters (P11AUDIT_KEY_FILE): make one with `p11audit keygen`", path.display())]
    NotAKey { path: PathBuf },
}
