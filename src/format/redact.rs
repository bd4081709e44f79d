//! The redaction allowlist: which attribute values may be written, and how.
//!
//! Anything not listed here appears in a record as its type and length only. `CKA_VALUE`,
//! private key components, PINs and data buffers are never listed. Byte-valued entries are
//! capped so a hostile template cannot make records huge.

use crate::format::names::{
    attribute_name, certificate_type_name, key_type_name, mechanism_name, object_class_name,
};
use crate::format::record::{AttributeSummary, AttributeValue, Bytes, Named};
use cryptoki_sys as ck;

/// Longest byte-valued attribute value written; longer values are written as length only.
pub(crate) const MAX_LOGGED_VALUE_BYTES: usize = 256;

/// CK_UNAVAILABLE_INFORMATION as it appears in `ulValueLen`.
pub(crate) const UNAVAILABLE: u64 = ck::CK_UNAVAILABLE_INFORMATION as u64;

enum Shape {
    Bool,
    Class,
    KeyType,
    CertificateType,
    Mechanism,
    Number,
    Text,
    Hex,
}

fn allowlisted(attr: u64) -> Option<Shape> {
    use Shape::*;
    let shape = match attr as ck::CK_ATTRIBUTE_TYPE {
        ck::CKA_TOKEN
        | ck::CKA_PRIVATE
        | ck::CKA_MODIFIABLE
        | ck::CKA_COPYABLE
        | ck::CKA_DESTROYABLE
        | ck::CKA_SENSITIVE
        | ck::CKA_EXTRACTABLE
        | ck::CKA_ALWAYS_SENSITIVE
        | ck::CKA_NEVER_EXTRACTABLE
        | ck::CKA_LOCAL
        | ck::CKA_ENCRYPT
        | ck::CKA_DECRYPT
        | ck::CKA_SIGN
        | ck::CKA_VERIFY
        | ck::CKA_SIGN_RECOVER
        | ck::CKA_VERIFY_RECOVER
        | ck::CKA_WRAP
        | ck::CKA_UNWRAP
        | ck::CKA_DERIVE
        | ck::CKA_WRAP_WITH_TRUSTED
        | ck::CKA_TRUSTED
        | ck::CKA_ALWAYS_AUTHENTICATE => Bool,
        ck::CKA_CLASS => Class,
        ck::CKA_KEY_TYPE => KeyType,
        ck::CKA_CERTIFICATE_TYPE => CertificateType,
        ck::CKA_KEY_GEN_MECHANISM => Mechanism,
        ck::CKA_VALUE_LEN | ck::CKA_MODULUS_BITS | ck::CKA_CERTIFICATE_CATEGORY => Number,
        ck::CKA_LABEL | ck::CKA_APPLICATION => Text,
        ck::CKA_ID
        | ck::CKA_EC_PARAMS
        | ck::CKA_PUBLIC_EXPONENT
        | ck::CKA_OBJECT_ID
        | ck::CKA_CHECK_VALUE => Hex,
        _ => return None,
    };
    Some(shape)
}

fn ulong_of(bytes: &[u8]) -> Option<u64> {
    let arr: [u8; std::mem::size_of::<ck::CK_ULONG>()] = bytes.try_into().ok()?;
    Some(ck::CK_ULONG::from_ne_bytes(arr) as u64)
}

/// The value to write for attribute `attr` whose value bytes are `bytes`, if it is allowlisted
/// and well-formed.
pub(crate) fn attribute_value(attr: u64, bytes: &[u8]) -> Option<AttributeValue> {
    let value = match allowlisted(attr)? {
        Shape::Bool => match bytes {
            [b] => AttributeValue::Bool(*b != 0),
            _ => return None,
        },
        Shape::Class => {
            let v = ulong_of(bytes)?;
            AttributeValue::Name(Named::new(object_class_name(v), v))
        }
        Shape::KeyType => {
            let v = ulong_of(bytes)?;
            AttributeValue::Name(Named::new(key_type_name(v), v))
        }
        Shape::CertificateType => {
            let v = ulong_of(bytes)?;
            AttributeValue::Name(Named::new(certificate_type_name(v), v))
        }
        Shape::Mechanism => {
            let v = ulong_of(bytes)?;
            AttributeValue::Name(Named::new(mechanism_name(v), v))
        }
        Shape::Number => AttributeValue::Number(ulong_of(bytes)?),
        Shape::Text if bytes.len() <= MAX_LOGGED_VALUE_BYTES => {
            AttributeValue::Bytes(Bytes::from_slice(bytes))
        }
        Shape::Hex if bytes.len() <= MAX_LOGGED_VALUE_BYTES => {
            AttributeValue::Bytes(Bytes::hex(bytes))
        }
        Shape::Text | Shape::Hex => return None,
    };
    Some(value)
}

/// Whether `attr`'s value may be read for logging at all (so the FFI layer reads no bytes it
/// will not write).
pub(crate) fn value_is_loggable(attr: u64, len: u64) -> bool {
    allowlisted(attr).is_some() && len <= MAX_LOGGED_VALUE_BYTES as u64
}

/// The summary of one attribute. `bytes` is its value when the caller read it (allowlisted,
/// present, and of a sane length).
pub(crate) fn summarize_attribute(attr: u64, len: u64, bytes: Option<&[u8]>) -> AttributeSummary {
    AttributeSummary {
        attr: Named::new(attribute_name(attr), attr),
        len: if len == UNAVAILABLE {
            -1
        } else {
            i64::try_from(len).unwrap_or(i64::MAX)
        },
        value: bytes.and_then(|b| attribute_value(attr, b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_allowlisted() {
        for secret in [
            ck::CKA_VALUE,
            ck::CKA_PRIVATE_EXPONENT,
            ck::CKA_PRIME_1,
            ck::CKA_PRIME_2,
            ck::CKA_EXPONENT_1,
            ck::CKA_EXPONENT_2,
            ck::CKA_COEFFICIENT,
        ] {
            let s = summarize_attribute(secret as u64, 4, Some(b"\x01\x02\x03\x04"));
            assert_eq!(s.value, None, "{:?}", s.attr);
            assert_eq!(s.len, 4);
            assert!(!value_is_loggable(secret as u64, 4));
        }
    }

    #[test]
    fn allowlisted_values_have_their_shape() {
        let class = (ck::CKO_SECRET_KEY as ck::CK_ULONG).to_ne_bytes();
        let s = summarize_attribute(ck::CKA_CLASS as u64, 8, Some(&class));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"type":"CKA_CLASS","len":8,"value":"CKO_SECRET_KEY"}"#
        );
        let s = summarize_attribute(ck::CKA_SIGN as u64, 1, Some(&[1]));
        assert_eq!(s.value, Some(AttributeValue::Bool(true)));
        let s = summarize_attribute(ck::CKA_ID as u64, 2, Some(&[0xab, 0x01]));
        assert_eq!(
            serde_json::to_string(&s.value).unwrap(),
            r#"{"hex":"ab01"}"#
        );
        // A malformed bool (wrong length) is not guessed at.
        assert_eq!(
            summarize_attribute(ck::CKA_SIGN as u64, 2, Some(&[1, 0])).value,
            None
        );
        assert_eq!(
            summarize_attribute(ck::CKA_LABEL as u64, UNAVAILABLE, None).len,
            -1
        );
        let long = vec![b'a'; MAX_LOGGED_VALUE_BYTES + 1];
        assert_eq!(
            summarize_attribute(ck::CKA_LABEL as u64, long.len() as u64, Some(&long)).value,
            None
        );
    }
}
