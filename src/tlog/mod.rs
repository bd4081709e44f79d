//! Signed checkpoints over a Merkle tree of the log (docs/FORMAT.md §9), following the C2SP
//! specifications byte for byte so that other tools can check them:
//! - `tree`: the RFC 6962 tree whose leaves are the log's lines, its frontier and consistency
//!   proofs;
//! - `note`: signed notes (c2sp.org/signed-note) and their keys;
//! - `checkpoint`: the checkpoint text (c2sp.org/tlog-checkpoint);
//! - `cosignature`: a witness's `cosignature/v1` (c2sp.org/tlog-cosignature);
//! - `witness`: the witness's decision on a new checkpoint, and its per-origin state.

pub mod checkpoint;
pub mod cosignature;
pub mod note;
pub mod tree;
pub mod witness;
