//! Why the shim answers a call itself instead of forwarding it, and the one place that says
//! which `CK_RV` each reason gives the application.

use crate::config::ConfigError;
use crate::shim::provider::ProviderError;
use crate::writer::error::WriterError;
use cryptoki_sys as ck;

/// A failure of p11audit's own (not the provider's answer), at the C boundary.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ShimError {
    /// C_Initialize: the configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// C_Initialize: the real module could not be used.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// C_Initialize: the audit log could not be opened.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// C_Initialize: `P11AUDIT_PEER=stdin`, and stdin is not a client's connection.
    #[error("P11AUDIT_PEER=stdin, but {0}: run p11audit with the client's connection on stdin (p11-kit server, or a socket unit with Accept=yes and StandardInput=socket), or set P11AUDIT_PEER=auto")]
    NoPeer(#[from] crate::os::identity::NoPeer),
    /// A call before a successful C_Initialize: nothing can be forwarded yet.
    #[error("C_Initialize has not succeeded")]
    NotInitialized,
    /// A record that must be in the file before the call goes on (an intent) or before its
    /// output reaches the application (an outcome) could not be written, and the failure
    /// policy is fail-closed.
    #[error("an audit record that must be in the file could not be written (fail-closed)")]
    NotRecorded,
    /// The provider's table has no entry for a function every module must have.
    #[error("the provider has no {function}")]
    ProviderLacks { function: &'static str },
    /// The provider's table has no entry for an optional function.
    #[error("the provider does not support {function}")]
    NotSupported { function: &'static str },
    /// p11audit panicked (a bug): no panic may cross into the host application.
    #[error("internal error in p11audit")]
    Panicked,
}

impl ShimError {
    /// What the application gets. `NotInitialized` and `NotSupported` are what a provider
    /// would answer in the same case; every other failure of p11audit is CKR_GENERAL_ERROR,
    /// the one error PKCS#11 allows from every function.
    pub(crate) fn rv(&self) -> ck::CK_RV {
        match self {
            ShimError::NotInitialized => ck::CKR_CRYPTOKI_NOT_INITIALIZED,
            ShimError::NotSupported { .. } => ck::CKR_FUNCTION_NOT_SUPPORTED,
            ShimError::Config(_)
            | ShimError::NoPeer(_)
            | ShimError::Provider(_)
            | ShimError::Writer(_)
            | ShimError::NotRecorded
            | ShimError::ProviderLacks { .. }
            | ShimError::Panicked => ck::CKR_GENERAL_ERROR,
        }
    }
}

/// Runs `f`, turning a panic into `ShimError::Panicked`: no panic may cross the C boundary.
pub(crate) fn guard(f: impl FnOnce() -> ck::CK_RV) -> ck::CK_RV {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| ShimError::Panicked.rv())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_a_provider_would_give_are_not_general_errors() {
        assert_eq!(
            ShimError::NotInitialized.rv(),
            ck::CKR_CRYPTOKI_NOT_INITIALIZED
        );
        assert_eq!(
            ShimError::NotSupported {
                function: "C_SignRecover"
            }
            .rv(),
            ck::CKR_FUNCTION_NOT_SUPPORTED
        );
        for e in [
            ShimError::NotRecorded,
            ShimError::ProviderLacks {
                function: "C_Initialize",
            },
            ShimError::Panicked,
            ShimError::Provider(ProviderError::PathHasNul),
        ] {
            assert_eq!(e.rv(), ck::CKR_GENERAL_ERROR, "{e:?}");
        }
    }
}
