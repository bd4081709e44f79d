//! p11audit: a PKCS#11 module that forwards every call to the real provider and writes a
//! forward-secure, HMAC-chained audit record for it.
//!
//! Layout (docs/ARCHITECTURE.md):
//! - `shim`: the only place with pointers from the application: the exported entry points, the function list
//!   that generates the wrappers and tables, argument decoding, the per-call flow, and the real
//!   provider;
//! - `format`: the record model and its encoding, line sealing, the chain, the state file's
//!   layout;
//! - `writer`: the auditor and the append (files, rotation, recovery, losses);
//! - `reader`: verify, show and report;
//! - `os`: what the writer needs from the OS that std does not offer;
//! - `config`: the environment and config file to a validated `Config`.
#![deny(unsafe_op_in_unsafe_fn)]
// CK_ULONG is C `unsigned long`: u64 on this target, u32 on others. The `as u64` casts keep
// record values portable.
#![allow(clippy::unnecessary_cast)]

pub mod config;
pub mod format;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod os;
pub mod reader;
pub mod shim;
pub mod tlog;
pub mod writer;

/// Writes one line to stderr and ignores a failure. `eprintln!` panics when stderr is gone (a
/// closed pipe, with SIGPIPE ignored as Python does): a message of p11audit's must never fail
/// the host application's call.
pub fn stderr_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
