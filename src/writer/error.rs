//! The writer's errors, each worded for the `p11audit:` stderr line.

use crate::writer::own_files::UntrustedFile;
use std::path::Path;

/// A writer error, worded for the `p11audit:` stderr line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterError(pub String);

impl std::fmt::Display for WriterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(super) fn err<T>(msg: impl Into<String>) -> Result<T, WriterError> {
    Err(WriterError(msg.into()))
}

impl From<UntrustedFile> for WriterError {
    fn from(e: UntrustedFile) -> WriterError {
        WriterError(format!("{e} (P11AUDIT_LOG)"))
    }
}

pub(super) fn state_unusable(state_path: &Path, why: &str) -> WriterError {
    WriterError(format!(
        "audit state file {} is unusable ({why}); refusing to log so that no history is overwritten: restore it, or start a new chain deliberately (see README)",
        state_path.display()
    ))
}

pub(super) fn not_its_log(log_path: &Path, state_path: &Path) -> WriterError {
    WriterError(format!(
        "audit log {} is not the file the state file {} belongs to (it was replaced or the state points at another log); refusing to log",
        log_path.display(),
        state_path.display()
    ))
}

pub(super) fn log_without_state(log_path: &Path, state_path: &Path) -> WriterError {
    WriterError(format!(
        "audit log {} has content but its state file {} is empty or missing; refusing to start a new chain over it: restore the state file, or move the log away to start a new chain deliberately",
        log_path.display(),
        state_path.display()
    ))
}
