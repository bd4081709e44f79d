//! The audit record model, the chain, the file writer and the verifier. No `unsafe` here.
#![forbid(unsafe_code)]

pub mod auditor;
pub mod chain;
pub mod context;
pub mod encode;
pub mod fileset;
pub mod line;
pub mod lock;
pub mod names;
pub mod own_files;
pub mod process;
pub mod query;
pub mod record;
pub mod redact;
pub mod state;
#[cfg(test)]
pub(crate) mod testing;
pub mod verify;
pub mod writer;
