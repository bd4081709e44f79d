//! The audit record model, the chain, the file writer and the verifier. No `unsafe` here.
#![forbid(unsafe_code)]

pub mod chain;
pub mod line;
pub mod state;
pub mod names;
pub mod verify;
