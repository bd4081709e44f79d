//! Raw C arguments to safe Rust values, once, in one place.
//!
//! Every pointer is checked for NULL before it is read, every pointer-and-length pair goes
//! through `byte_slice` (so `from_raw_parts(NULL, 0)` never happens), and only the bytes that
//! are going to be logged (allowlisted attribute values, fixed-size mechanism parameters) are
//! read at all.

use crate::format::names::{mechanism_name, mgf_name};
use crate::format::record::{AttributeSummary, MechanismSummary, Named, ParamValue};
use crate::format::redact::{summarize_attribute, value_is_loggable, UNAVAILABLE};
use cryptoki_sys as ck;
use std::collections::BTreeMap;

/// Templates longer than this are summarized by their first entries only.
pub(crate) const MAX_LOGGED_TEMPLATE: usize = 128;

/// Reads a `T` from `p`, or None if `p` is NULL.
///
/// # Safety
/// `p` must be NULL or point to a readable `T` (alignment not required).
pub(crate) unsafe fn read<T: Copy>(p: *const T) -> Option<T> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-NULL and readable per the caller.
        Some(unsafe { p.read_unaligned() })
    }
}

/// `len` bytes at `p` as a slice: empty for `len == 0`, None for NULL with a non-zero length.
///
/// # Safety
/// If `p` is non-NULL it must point to `len` readable bytes that outlive `'a`.
pub(crate) unsafe fn byte_slice<'a>(p: *const u8, len: u64) -> Option<&'a [u8]> {
    if len == 0 {
        return Some(&[]);
    }
    if p.is_null() || len > isize::MAX as u64 {
        return None;
    }
    // SAFETY: non-NULL, length in range, readable per the caller.
    Some(unsafe { std::slice::from_raw_parts(p, len as usize) })
}

/// Summarizes a mechanism. Only fixed-size parameter structures whose `ulParameterLen` matches
/// are read, and only their non-secret fields (lengths, hash and MGF choices; never an IV, AAD
/// or other parameter bytes).
///
/// # Safety
/// `p` must be NULL or point to a CK_MECHANISM whose `pParameter` (if non-NULL) points to
/// `ulParameterLen` readable bytes.
pub(crate) unsafe fn mechanism(p: *const ck::CK_MECHANISM) -> Option<MechanismSummary> {
    // SAFETY: per the caller.
    let m = unsafe { read(p) }?;
    let mech = m.mechanism as u64;
    let mut params = BTreeMap::new();
    let name = |n: Option<&'static str>, v: u64| ParamValue::Name(Named::new(n, v));
    // SAFETY (for every `param` call): pParameter points to ulParameterLen readable bytes.
    match m.mechanism {
        ck::CKM_RSA_PKCS_PSS
        | ck::CKM_SHA1_RSA_PKCS_PSS
        | ck::CKM_SHA224_RSA_PKCS_PSS
        | ck::CKM_SHA256_RSA_PKCS_PSS
        | ck::CKM_SHA384_RSA_PKCS_PSS
        | ck::CKM_SHA512_RSA_PKCS_PSS => {
            if let Some(pss) = unsafe { param::<ck::CK_RSA_PKCS_PSS_PARAMS>(&m) } {
                params.insert(
                    "hash".into(),
                    name(mechanism_name(pss.hashAlg as u64), pss.hashAlg as u64),
                );
                params.insert("mgf".into(), name(mgf_name(pss.mgf as u64), pss.mgf as u64));
                params.insert("salt_len".into(), ParamValue::Number(pss.sLen as u64));
            }
        }
        ck::CKM_RSA_PKCS_OAEP => {
            if let Some(oaep) = unsafe { param::<ck::CK_RSA_PKCS_OAEP_PARAMS>(&m) } {
                params.insert(
                    "hash".into(),
                    name(mechanism_name(oaep.hashAlg as u64), oaep.hashAlg as u64),
                );
                params.insert(
                    "mgf".into(),
                    name(mgf_name(oaep.mgf as u64), oaep.mgf as u64),
                );
                params.insert(
                    "source_len".into(),
                    ParamValue::Number(oaep.ulSourceDataLen as u64),
                );
            }
        }
        ck::CKM_AES_GCM => {
            if let Some(gcm) = unsafe { param::<ck::CK_GCM_PARAMS>(&m) } {
                params.insert("iv_len".into(), ParamValue::Number(gcm.ulIvLen as u64));
                params.insert("aad_len".into(), ParamValue::Number(gcm.ulAADLen as u64));
                params.insert("tag_bits".into(), ParamValue::Number(gcm.ulTagBits as u64));
            }
        }
        ck::CKM_ECDH1_DERIVE | ck::CKM_ECDH1_COFACTOR_DERIVE => {
            if let Some(ecdh) = unsafe { param::<ck::CK_ECDH1_DERIVE_PARAMS>(&m) } {
                params.insert("kdf".into(), name(kdf_name(ecdh.kdf), ecdh.kdf as u64));
                params.insert(
                    "public_len".into(),
                    ParamValue::Number(ecdh.ulPublicDataLen as u64),
                );
                params.insert(
                    "shared_len".into(),
                    ParamValue::Number(ecdh.ulSharedDataLen as u64),
                );
            }
        }
        _ => {}
    }
    Some(MechanismSummary {
        mechanism: Named::new(mechanism_name(mech), mech),
        param_len: (m.ulParameterLen != 0).then_some(m.ulParameterLen as u64),
        params,
    })
}

fn kdf_name(kdf: ck::CK_EC_KDF_TYPE) -> Option<&'static str> {
    Some(match kdf {
        ck::CKD_NULL => "CKD_NULL",
        ck::CKD_SHA1_KDF => "CKD_SHA1_KDF",
        ck::CKD_SHA224_KDF => "CKD_SHA224_KDF",
        ck::CKD_SHA256_KDF => "CKD_SHA256_KDF",
        ck::CKD_SHA384_KDF => "CKD_SHA384_KDF",
        ck::CKD_SHA512_KDF => "CKD_SHA512_KDF",
        _ => return None,
    })
}

/// The mechanism's parameter as a `T`, if it is present and exactly `sizeof(T)` long.
///
/// # Safety
/// `m.pParameter` must be NULL or point to `m.ulParameterLen` readable bytes.
unsafe fn param<T: Copy>(m: &ck::CK_MECHANISM) -> Option<T> {
    if m.ulParameterLen as usize != std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: per the caller, with the length checked above.
    unsafe { read(m.pParameter as *const T) }
}

/// Summarizes a template: every attribute's type and length, and allowlisted values.
/// `values_valid` says whether `pValue` buffers hold values (false for a length query or an
/// output template before the call). `capacity(i)`, for a template the provider filled, is
/// attribute i's `ulValueLen` as the application gave it: a value the provider reports longer
/// than its buffer is not read (None: the lengths are the application's own).
///
/// # Safety
/// `p` must be NULL or point to `count` CK_ATTRIBUTEs whose `pValue` (if non-NULL) point to
/// `ulValueLen` readable bytes, or to as many as `capacity` says.
pub(crate) unsafe fn template(
    p: *const ck::CK_ATTRIBUTE,
    count: ck::CK_ULONG,
    values_valid: bool,
    capacity: impl Fn(usize) -> Option<ck::CK_ULONG>,
) -> Vec<AttributeSummary> {
    if p.is_null() || count == 0 {
        return Vec::new();
    }
    let n = (count as usize).min(MAX_LOGGED_TEMPLATE);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: i < count, and the array has count entries per the caller.
        let Some(a) = (unsafe { read(p.add(i)) }) else {
            break;
        };
        let len = a.ulValueLen as u64;
        let fits = capacity(i).is_none_or(|cap| a.ulValueLen <= cap);
        let value =
            if values_valid && fits && len != UNAVAILABLE && value_is_loggable(a.type_ as u64, len)
            {
                // SAFETY: pValue points to ulValueLen readable bytes per the caller.
                unsafe { byte_slice(a.pValue as *const u8, len) }
            } else {
                None
            };
        out.push(summarize_attribute(a.type_ as u64, len, value));
    }
    out
}

/// Trims PKCS#11's blank padding from a fixed-width text field.
pub(crate) fn trim_padded(field: &[u8]) -> &[u8] {
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    &field[..end]
}
