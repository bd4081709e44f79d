//! p11audit: a PKCS#11 module that forwards every call to the real provider and writes a
//! forward-secure, HMAC-chained audit record for it.
//!
//! Layout: `ffi` holds the raw pointers of the PKCS#11 boundary (exported entry points,
//! argument decoding, function tables); `provider` loads the real module; `os` wraps the one
//! other unsafe facility, the shared mapping of the state file with its robust mutex; `config`
//! turns the environment into a validated `Config`; `audit` is the record model, chain, writer
//! and verifier in safe Rust.
#![deny(unsafe_op_in_unsafe_fn)]
// CK_ULONG is C `unsigned long`: u64 on this target, u32 on others. The `as u64` casts keep
// record values portable.
#![allow(clippy::unnecessary_cast)]

pub mod audit;
pub mod config;
pub mod ffi;
pub mod fuzzing;
pub mod os;
pub mod provider;

/// Writes one line to stderr and ignores a failure. `eprintln!` panics when stderr is gone (a
/// closed pipe, with SIGPIPE ignored as Python does): a message of p11audit's must never fail
/// the host application's call.
pub fn stderr_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
