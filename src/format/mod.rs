//! What a record is and how it is written down: the record model and its JSON body, the
//! redaction allowlist, sealing a body into a chained line, the HMAC chain, the state file's
//! layout, and the names of PKCS#11 constants. Shared by the writer and the readers.
#![forbid(unsafe_code)]

pub mod chain;
pub(crate) mod encode;
pub mod line;
pub mod names;
pub mod record;
pub(crate) mod redact;
pub mod state;
