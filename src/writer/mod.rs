//! Getting records into the file: the auditor (records that may wait, and the write-ahead of
//! records that must be in the file before a call goes on), the files the writer trusts, and
//! the append with its rotation, recovery and lost-record accounting.
#![forbid(unsafe_code)]

pub mod audit_log;
pub(crate) mod auditor;
pub mod checkpoints;
pub mod error;
mod losses;
mod open;
pub mod own_files;
mod recovery;
mod rotation;
#[cfg(test)]
pub(crate) mod testing;
