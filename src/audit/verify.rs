//! The chain verifier behind `p11audit verify`.
