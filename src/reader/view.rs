//! The view of a record that show and report read: the members they use, borrowed from the
//! verified line where they can be, with the values of the format (BYTES, IDENTITY, a
//! mechanism, a token) and how each reads for people.

use super::text::{escape, quote_name};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt::Write as _;

/// BYTES of the format: text, or `{"hex": …}` for bytes that are not UTF-8 (and always for ids).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum ByteStr {
    Text(String),
    Hex { hex: String },
}

/// Read directly (a string, or a map with the one member `hex`) rather than as an untagged
/// enum, which buffers the value and builds an error for every `{"hex": …}`.
impl<'de> Deserialize<'de> for ByteStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteStr;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or {\"hex\": string}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteStr, E> {
                Ok(ByteStr::Text(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<ByteStr, E> {
                Ok(ByteStr::Text(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<ByteStr, A::Error> {
                use serde::de::Error;
                let mut hex: Option<String> = None;
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    if k != "hex" {
                        return Err(A::Error::unknown_field(&k, &["hex"]));
                    }
                    if hex.is_some() {
                        return Err(A::Error::duplicate_field("hex"));
                    }
                    hex = Some(m.next_value()?);
                }
                hex.map(|hex| ByteStr::Hex { hex })
                    .ok_or_else(|| A::Error::missing_field("hex"))
            }
        }
        d.deserialize_any(V)
    }
}

impl ByteStr {
    /// For people: a quoted, escaped label with its [`script_note`], or `hex:…`.
    ///
    /// [`script_note`]: super::text::script_note
    pub fn display(&self) -> String {
        match self {
            ByteStr::Text(t) => quote_name(t),
            ByteStr::Hex { hex } => format!("hex:{}", escape(hex)),
        }
    }

    /// For an id: the hex digits alone (escaped), or the quoted text with its [`script_note`].
    ///
    /// [`script_note`]: super::text::script_note
    pub fn display_hex(&self) -> String {
        match self {
            ByteStr::Hex { hex } => escape(hex),
            ByteStr::Text(t) => quote_name(t),
        }
    }

    /// A path (`exe`) for people, on one line, that tells different paths apart: text as
    /// [`escape`] writes it; for a path that is not UTF-8 (`{"hex": …}`), its UTF-8 runs the same
    /// way and every other byte as `\xNN` (80 to ff, which `escape` never writes: it doubles a
    /// backslash from the text). Hex that is not whole bytes (never in a verified line: verify
    /// refuses it) reads `\{hex:…}`.
    pub fn path_text(&self) -> String {
        let hex = match self {
            ByteStr::Text(t) => return escape(t),
            ByteStr::Hex { hex } => hex,
        };
        let Ok(bytes) = base16ct::mixed::decode_vec(hex) else {
            return format!("\\{{hex:{}}}", escape(hex));
        };
        let mut out = String::new();
        for chunk in bytes.utf8_chunks() {
            out.push_str(&escape(chunk.valid()));
            for b in chunk.invalid() {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
        out
    }
}

/// IDENTITY of the format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Ident {
    #[serde(default)]
    pub handle: Option<u64>,
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub key_type: Option<String>,
    #[serde(default)]
    pub label: Option<ByteStr>,
    #[serde(default)]
    pub id: Option<ByteStr>,
}

impl Ident {
    /// `"label" id 01 (CKO_PRIVATE_KEY CKK_EC)`, or `handle 5` when the provider said nothing.
    pub fn display(&self) -> String {
        let mut s = String::new();
        if let Some(l) = &self.label {
            s.push_str(&l.display());
        }
        if let Some(id) = &self.id {
            if !s.is_empty() {
                s.push(' ');
            }
            let _ = write!(s, "id {}", id.display_hex());
        }
        if s.is_empty() {
            match self.handle {
                Some(h) => {
                    let _ = write!(s, "handle {h}");
                }
                None => s.push_str("(unknown)"),
            }
        }
        let kinds: Vec<String> = [&self.class, &self.key_type]
            .into_iter()
            .flatten()
            .map(|k| escape(k))
            .collect();
        if !kinds.is_empty() {
            let _ = write!(s, " ({})", kinds.join(" "));
        }
        s
    }

    /// Whether `--key WANT` selects this object: its label is WANT, or its id (or a label that
    /// is not UTF-8) is WANT in hex (either case, an optional `0x`).
    pub fn matches(&self, want: &str) -> bool {
        let hex_want = want
            .strip_prefix("0x")
            .or_else(|| want.strip_prefix("0X"))
            .unwrap_or(want)
            .to_ascii_lowercase();
        let is_hex = !hex_want.is_empty() && hex_want.bytes().all(|b| b.is_ascii_hexdigit());
        let hit = |b: &Option<ByteStr>| match b {
            Some(ByteStr::Text(t)) => t == want,
            Some(ByteStr::Hex { hex }) => is_hex && hex.eq_ignore_ascii_case(&hex_want),
            None => false,
        };
        hit(&self.label) || hit(&self.id)
    }
}

/// A mechanism summary.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Mech {
    #[serde(rename = "type")]
    pub mechanism: String,
    #[serde(default)]
    pub param_len: Option<u64>,
    #[serde(default)]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Mech {
    /// `CKM_ECDSA`, or `CKM_RSA_PKCS_PSS(hash=CKM_SHA256 mgf=CKG_MGF1_SHA256 salt_len=32)`.
    pub fn display(&self) -> String {
        let mut s = escape(&self.mechanism);
        if let Some(p) = self.params.as_ref().filter(|p| !p.is_empty()) {
            let parts: Vec<String> = p
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(t) => t.clone(),
                        other => other.to_string(),
                    };
                    format!("{}={}", escape(k), escape(&v))
                })
                .collect();
            let _ = write!(s, "({})", parts.join(" "));
        }
        s
    }
}

/// The members of a record that show and report read. Others (templates, found handles) are
/// skipped. Parsed from a line that has already verified.
///
/// `tid`, `slot` and `flags` are not shown, but a record is one show and report understand only
/// if they are numbers.
#[derive(Debug, Deserialize)]
pub struct RecView<'a> {
    pub seq: u64,
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    pub pid: u32,
    #[allow(dead_code)]
    pub tid: u64,
    pub uid: u32,
    /// Text, or `{"hex": …}` for a path that is not UTF-8: print it with
    /// [`ByteStr::path_text`].
    pub exe: ByteStr,
    #[serde(borrow)]
    pub ev: Cow<'a, str>,
    #[serde(rename = "fn", borrow, default)]
    pub function: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub rv: Option<Cow<'a, str>>,
    #[serde(default)]
    pub dur_us: Option<u64>,
    #[serde(default)]
    pub intent: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    pub slot: Option<u64>,
    #[serde(default)]
    pub token: Option<TokenView>,
    #[serde(default)]
    pub session: Option<u64>,
    #[serde(borrow, default)]
    pub login: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub user_type: Option<Cow<'a, str>>,
    #[serde(default)]
    pub username: Option<ByteStr>,
    #[serde(default)]
    #[allow(dead_code)]
    pub flags: Option<u64>,
    #[serde(default)]
    pub mechanism: Option<Mech>,
    #[serde(default)]
    pub key: Option<Ident>,
    #[serde(default)]
    pub key2: Option<Ident>,
    #[serde(default)]
    pub in_len: Option<u64>,
    #[serde(default)]
    pub out_len: Option<u64>,
    #[serde(default)]
    pub sig_len: Option<u64>,
    #[serde(borrow, default)]
    pub out: Option<Cow<'a, str>>,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub created: Vec<Ident>,
    #[serde(borrow, default)]
    pub interface: Option<Cow<'a, str>>,
    #[serde(default)]
    pub lost: Option<u64>,
    #[serde(borrow, default)]
    pub since: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub note: Option<Cow<'a, str>>,
}

/// The token a record names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenView {
    pub label: ByteStr,
    #[serde(default)]
    pub serial: Option<ByteStr>,
}

impl<'a> RecView<'a> {
    pub fn parse(line: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(line)
    }

    pub fn function(&self) -> Option<&str> {
        self.function.as_deref()
    }

    pub fn rv(&self) -> Option<&str> {
        self.rv.as_deref()
    }

    /// The outcome of a call that failed: an `rv` other than `CKR_OK`.
    pub fn failed(&self) -> bool {
        self.rv().is_some_and(|rv| rv != "CKR_OK")
    }

    /// The objects the record names: `key`, `key2` and `created`.
    pub fn objects(&self) -> impl Iterator<Item = &Ident> {
        self.key
            .iter()
            .chain(self.key2.iter())
            .chain(self.created.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::text::escape_c1_and_del;

    #[test]
    fn identities() {
        let id: Ident = serde_json::from_str(
            r#"{"handle":2,"class":"CKO_PRIVATE_KEY","key_type":"CKK_EC","label":"my\u001bkey","id":{"hex":"0aff"}}"#,
        )
        .unwrap();
        assert_eq!(
            id.display(),
            "\"my\\x1bkey\" id 0aff (CKO_PRIVATE_KEY CKK_EC)"
        );
        assert!(id.matches("my\x1bkey"));
        assert!(id.matches("0AFF") && id.matches("0x0aff") && id.matches("0X0AFF"));
        assert!(!id.matches("0a") && !id.matches("mykey"));
        let bare: Ident = serde_json::from_str(r#"{"handle":7}"#).unwrap();
        assert_eq!(bare.display(), "handle 7");
        let hex_label: Ident =
            serde_json::from_str(r#"{"handle":7,"label":{"hex":"ff00"}}"#).unwrap();
        assert_eq!(hex_label.display(), "hex:ff00");
        assert!(hex_label.matches("ff00"));
    }

    #[test]
    fn bytes_are_text_or_hex() {
        let p = |j: &str| serde_json::from_str::<ByteStr>(j);
        assert_eq!(p(r#""a\u001b""#).unwrap(), ByteStr::Text("a\u{1b}".into()));
        assert_eq!(
            p(r#"{"hex":"ff"}"#).unwrap(),
            ByteStr::Hex { hex: "ff".into() }
        );
        for bad in [
            r#"{}"#,
            r#"{"hex":"a","hex":"b"}"#,
            r#"{"x":"a"}"#,
            "5",
            r#"{"hex":5}"#,
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        // Written back the same way.
        let v = ByteStr::Hex { hex: "ff".into() };
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"hex":"ff"}"#);
    }

    /// `еck` with U+0435 CYRILLIC SMALL LETTER IE, and others that pass for Latin.
    #[test]
    fn script_notes_go_with_text_labels_ids_and_user_names() {
        // The note goes with labels, ids and user names that are text, not with hex.
        let id: Ident =
            serde_json::from_str(r#"{"class":"CKO_SECRET_KEY","label":"\u0435ck","id":"\u0435"}"#)
                .unwrap();
        assert_eq!(
            id.display(),
            "\"\u{435}ck\" [mixed scripts: Latin+Cyrillic] id \"\u{435}\" [script: Cyrillic] \
             (CKO_SECRET_KEY)"
        );
        let user = ByteStr::Text("\u{430}dmin".into());
        assert_eq!(
            user.display(),
            "\"\u{430}dmin\" [mixed scripts: Latin+Cyrillic]"
        );
        assert_eq!(ByteStr::Hex { hex: "d0b5".into() }.display(), "hex:d0b5");
    }

    #[test]
    fn json_keeps_lookalike_labels_as_they_are() {
        // Only text for people is escaped and marked; serialized, a label is its own text.
        for label in [
            "\u{435}ck",
            "ec\u{336}k",
            "eck\u{2800}",
            "eck\u{3000}",
            "eck\u{a0}",
        ] {
            let json = serde_json::to_string(&ByteStr::Text(label.into())).unwrap();
            assert_eq!(json, format!("\"{label}\""));
            assert_eq!(escape_c1_and_del(&json), json);
        }
    }
}
