//! The view of a record that show and report read ([`RecView`]: the members they use,
//! borrowed from the verified line where they can be), and how the format's values (BYTES, an
//! IDENTITY, a mechanism: `crate::format::record`'s types) read for people ([`ForPeople`]).

use super::text::{escape, quote_name};
use crate::format::record::{
    Bytes, MechanismSummary, ObjectIdentity, ParamValue, PeerIdentity, TokenRef,
};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt::Write as _;

/// How a value of the format reads for people, on one line: escaped (see `text.rs`), text
/// labels quoted with their script note, hex as such. A reader's concern, so it lives here and
/// not with the record model.
pub trait ForPeople {
    fn display(&self) -> String;
}

/// A quoted, escaped label with its [`script_note`], or `hex:…`.
///
/// [`script_note`]: super::text::script_note
impl ForPeople for Bytes {
    fn display(&self) -> String {
        match self {
            Bytes::Text(t) => quote_name(t),
            Bytes::Hex(hex) => format!("hex:{}", escape(hex)),
        }
    }
}

/// An id for people: the hex digits alone (escaped), or the quoted text with its
/// [`script_note`].
///
/// [`script_note`]: super::text::script_note
fn id_text(id: &Bytes) -> String {
    match id {
        Bytes::Hex(hex) => escape(hex),
        Bytes::Text(t) => quote_name(t),
    }
}

/// A path (`exe`) for people, on one line, that tells different paths apart: text as
/// [`escape`] writes it; for a path that is not UTF-8 (`{"hex": …}`), its UTF-8 runs the same
/// way and every other byte as `\xNN` (80 to ff, which `escape` never writes: it doubles a
/// backslash from the text). Hex that is not whole bytes (never in a verified line: verify
/// refuses it) reads `\{hex:…}`.
pub fn exe_text(path: &Bytes) -> String {
    let hex = match path {
        Bytes::Text(t) => return escape(t),
        Bytes::Hex(hex) => hex,
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

/// `"label" id 01 (CKO_PRIVATE_KEY CKK_EC)`, or `handle 5` when the provider said nothing.
impl ForPeople for ObjectIdentity {
    fn display(&self) -> String {
        let mut s = String::new();
        if let Some(l) = &self.label {
            s.push_str(&l.display());
        }
        if let Some(id) = &self.id {
            if !s.is_empty() {
                s.push(' ');
            }
            let _ = write!(s, "id {}", id_text(id));
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
            .map(|k| escape(k.as_str()))
            .collect();
        if !kinds.is_empty() {
            let _ = write!(s, " ({})", kinds.join(" "));
        }
        s
    }
}

/// Whether `--key WANT` selects object `o`: its label is WANT, or its id (or a label that is
/// not UTF-8) is WANT in hex (either case, an optional `0x`).
pub fn key_matches(o: &ObjectIdentity, want: &str) -> bool {
    let hex_want = want
        .strip_prefix("0x")
        .or_else(|| want.strip_prefix("0X"))
        .unwrap_or(want)
        .to_ascii_lowercase();
    let is_hex = !hex_want.is_empty() && hex_want.bytes().all(|b| b.is_ascii_hexdigit());
    let hit = |b: &Option<Bytes>| match b {
        Some(Bytes::Text(t)) => t == want,
        Some(Bytes::Hex(hex)) => is_hex && hex.eq_ignore_ascii_case(&hex_want),
        None => false,
    };
    hit(&o.label) || hit(&o.id)
}

/// `CKM_ECDSA`, or `CKM_RSA_PKCS_PSS(hash=CKM_SHA256 mgf=CKG_MGF1_SHA256 salt_len=32)`.
impl ForPeople for MechanismSummary {
    fn display(&self) -> String {
        let mut s = escape(self.mechanism.as_str());
        if !self.params.is_empty() {
            let parts: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        ParamValue::Name(n) => escape(n.as_str()),
                        ParamValue::Number(n) => n.to_string(),
                    };
                    format!("{}={v}", escape(k))
                })
                .collect();
            let _ = write!(s, "({})", parts.join(" "));
        }
        s
    }
}

/// The members of a record that show and report read, parsed from a line that has already
/// verified. Others (`host`, templates, found handles) are skipped.
///
/// How it relates to `format::record::Record`: the writer fills a `Record` and encodes it;
/// a reader parses the line into a `RecView`. The two are separate because a reader wants
/// fewer members, borrowed where it can: show and report parse every verified line a second
/// time, on their measured path (docs/PERFORMANCE.md). But a member's type is the record
/// model's own: `exe` and `username` are [`Bytes`], `token` a [`TokenRef`], `mechanism` a
/// [`MechanismSummary`], `key`, `key2` and `created` [`ObjectIdentity`]s, each `Deserialize`
/// for this. The members that are one word (`ts`, `ev`, `fn`, `rv`, `login`, `user_type`,
/// `out`, ...: a `Timestamp`, `Event`, `Named` or `OutputDisposition` in a `Record`) are
/// borrowed as the text they were written as: no allocation per record, and a name this build
/// does not know reads as it is.
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
    /// Text, or `{"hex": …}` for a path that is not UTF-8: print it with [`exe_text`].
    pub exe: Bytes,
    #[serde(default)]
    pub auid: Option<u32>,
    /// The client the writing process served (`pid`, `uid` and `exe` are the server's).
    #[serde(default)]
    pub peer: Option<PeerIdentity>,
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
    pub token: Option<TokenRef>,
    #[serde(default)]
    pub session: Option<u64>,
    #[serde(borrow, default)]
    pub login: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub user_type: Option<Cow<'a, str>>,
    #[serde(default)]
    pub username: Option<Bytes>,
    #[serde(default)]
    #[allow(dead_code)]
    pub flags: Option<u64>,
    #[serde(default)]
    pub mechanism: Option<MechanismSummary>,
    #[serde(default)]
    pub key: Option<ObjectIdentity>,
    #[serde(default)]
    pub key2: Option<ObjectIdentity>,
    #[serde(default)]
    pub in_len: Option<u64>,
    #[serde(default)]
    pub out_len: Option<u64>,
    #[serde(default)]
    pub sig_len: Option<u64>,
    #[serde(borrow, default)]
    pub out: Option<Cow<'a, str>>,
    #[serde(default)]
    pub len_queries: Option<u64>,
    /// The init that started this call's operation, told in its first outcome.
    #[serde(borrow, default)]
    pub init: Option<InitView<'a>>,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub created: Vec<ObjectIdentity>,
    #[serde(borrow, default)]
    pub interface: Option<Cow<'a, str>>,
    #[serde(default)]
    pub lost: Option<u64>,
    #[serde(borrow, default)]
    pub since: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub note: Option<Cow<'a, str>>,
}

/// A prepare call told in its operation's first outcome (`init`): it returned CKR_OK, in the
/// outcome's session, with the outcome's mechanism and key.
#[derive(Debug, Deserialize)]
pub struct InitView<'a> {
    #[serde(rename = "fn", borrow)]
    pub function: Cow<'a, str>,
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
}

/// When the call made of `intent` and `rec` (its outcome, or a record on its own) began: its
/// first record's time, or for an outcome that tells its init (`init`), the init's, as when
/// the init is a record of its own. At least one of them is present.
pub fn call_began<'r>(intent: Option<&'r RecView>, rec: Option<&'r RecView>) -> &'r str {
    match (intent, rec) {
        (Some(i), _) => &i.ts,
        (None, Some(r)) => r.init.as_ref().map_or(&r.ts, |init| &init.ts),
        (None, None) => "",
    }
}

/// Who acted on a record, as show and report name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who<'r> {
    pub pid: u32,
    pub uid: u32,
    /// `None` for a client whose executable the serving process could not read.
    pub exe: Option<&'r Bytes>,
    /// The audit login id: who logged in, behind `su`, `sudo` or a shared account.
    pub auid: Option<u32>,
    /// The pid of the serving process, for a client.
    pub via: Option<u32>,
}

impl Who<'_> {
    /// The executable for people: escaped, `-` when unknown.
    pub fn exe_text(&self) -> String {
        self.exe.map_or_else(|| "-".to_string(), exe_text)
    }

    /// The executable for a report's tables: `unknown` when the serving process could not
    /// read it (as the writer says of its own).
    pub fn exe_bytes(&self) -> Bytes {
        self.exe
            .cloned()
            .unwrap_or_else(|| Bytes::Text("unknown".into()))
    }
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

    /// The outcome of a prepare call (FORMAT.md §5) that started an operation: an *Init's
    /// outcome with `CKR_OK` and no intent (logs written before *Init calls were prepare ones
    /// give theirs an intent, and they are joined with it instead). Its operation's calls follow
    /// in the same process and session ([`continues_operation`]).
    pub fn is_prepared_operation(&self) -> bool {
        self.ev == "outcome"
            && self.intent.is_none()
            && self.rv() == Some("CKR_OK")
            && self.session.is_some()
            && self
                .function()
                .is_some_and(|f| operation_calls(f).is_some())
    }

    /// The outcome of a call that failed: an `rv` other than `CKR_OK`.
    pub fn failed(&self) -> bool {
        self.rv().is_some_and(|rv| rv != "CKR_OK")
    }

    /// Who acted: the client when the record names one (`peer`), else the writing process.
    pub fn who(&self) -> Who<'_> {
        match &self.peer {
            Some(p) => Who {
                pid: p.pid,
                uid: p.uid,
                exe: p.exe.as_ref(),
                auid: p.auid,
                via: Some(self.pid),
            },
            None => Who {
                pid: self.pid,
                uid: self.uid,
                exe: Some(&self.exe),
                auid: self.auid,
                via: None,
            },
        }
    }

    /// The objects the record names: `key`, `key2` and `created`.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectIdentity> {
        self.key
            .iter()
            .chain(self.key2.iter())
            .chain(self.created.iter())
    }
}

/// The calls that go on with the operation the prepare call `init` starts (PKCS#11 2.40 §5.8 to
/// §5.13, 3.0 §5.13 to §5.16, 3.2 C_VerifySignature*); None if `init` is not a prepare call.
/// Dual-function updates go on with both of their operations.
fn operation_calls(init: &str) -> Option<&'static [&'static str]> {
    Some(match init {
        "C_EncryptInit" => &[
            "C_Encrypt",
            "C_EncryptUpdate",
            "C_EncryptFinal",
            "C_DigestEncryptUpdate",
            "C_SignEncryptUpdate",
        ],
        "C_DecryptInit" => &[
            "C_Decrypt",
            "C_DecryptUpdate",
            "C_DecryptFinal",
            "C_DecryptDigestUpdate",
            "C_DecryptVerifyUpdate",
        ],
        "C_DigestInit" => &[
            "C_Digest",
            "C_DigestUpdate",
            "C_DigestKey",
            "C_DigestFinal",
            "C_DigestEncryptUpdate",
            "C_DecryptDigestUpdate",
        ],
        "C_SignInit" => &[
            "C_Sign",
            "C_SignUpdate",
            "C_SignFinal",
            "C_SignEncryptUpdate",
        ],
        "C_VerifyInit" => &[
            "C_Verify",
            "C_VerifyUpdate",
            "C_VerifyFinal",
            "C_DecryptVerifyUpdate",
        ],
        "C_SignRecoverInit" => &["C_SignRecover"],
        "C_VerifyRecoverInit" => &["C_VerifyRecover"],
        "C_FindObjectsInit" => &["C_FindObjects", "C_FindObjectsFinal"],
        "C_MessageEncryptInit" => &[
            "C_EncryptMessage",
            "C_EncryptMessageBegin",
            "C_EncryptMessageNext",
            "C_MessageEncryptFinal",
        ],
        "C_MessageDecryptInit" => &[
            "C_DecryptMessage",
            "C_DecryptMessageBegin",
            "C_DecryptMessageNext",
            "C_MessageDecryptFinal",
        ],
        "C_MessageSignInit" => &[
            "C_SignMessage",
            "C_SignMessageBegin",
            "C_SignMessageNext",
            "C_MessageSignFinal",
        ],
        "C_MessageVerifyInit" => &[
            "C_VerifyMessage",
            "C_VerifyMessageBegin",
            "C_VerifyMessageNext",
            "C_MessageVerifyFinal",
        ],
        "C_VerifySignatureInit" => &[
            "C_VerifySignature",
            "C_VerifySignatureUpdate",
            "C_VerifySignatureFinal",
        ],
        _ => return None,
    })
}

/// Whether `function` goes on with the operation the prepare call `init` started.
pub fn continues_operation(init: &str, function: &str) -> bool {
    operation_calls(init).is_some_and(|calls| calls.contains(&function))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::{Event, Named, ProcessIdentity, Record};
    use crate::reader::text::escape_c1_and_del;
    use std::sync::Arc;

    fn ident(json: &str) -> ObjectIdentity {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn identities() {
        let id = ident(
            r#"{"handle":2,"class":"CKO_PRIVATE_KEY","key_type":"CKK_EC","label":"my\u001bkey","id":{"hex":"0aff"}}"#,
        );
        assert_eq!(
            id.display(),
            "\"my\\x1bkey\" id 0aff (CKO_PRIVATE_KEY CKK_EC)"
        );
        assert!(key_matches(&id, "my\x1bkey"));
        for want in ["0AFF", "0x0aff", "0X0AFF"] {
            assert!(key_matches(&id, want), "{want}");
        }
        assert!(!key_matches(&id, "0a") && !key_matches(&id, "mykey"));
        assert_eq!(ident(r#"{"handle":7}"#).display(), "handle 7");
        let hex_label = ident(r#"{"handle":7,"label":{"hex":"ff00"}}"#);
        assert_eq!(hex_label.display(), "hex:ff00");
        assert!(key_matches(&hex_label, "ff00"));
        // Never written by p11audit, read as before: an identity without a handle.
        assert_eq!(ident("{}").display(), "(unknown)");
        assert_eq!(
            ident(r#"{"class":"CKO_DATA","extra":[1]}"#).display(),
            "(unknown) (CKO_DATA)"
        );
    }

    #[test]
    fn mechanisms() {
        let m = |json: &str| {
            serde_json::from_str::<MechanismSummary>(json)
                .unwrap()
                .display()
        };
        assert_eq!(m(r#"{"type":"CKM_ECDSA"}"#), "CKM_ECDSA");
        assert_eq!(
            m(
                r#"{"type":"CKM_RSA_PKCS_PSS","param_len":40,"params":{"salt_len":32,"hash":"CKM_SHA256","mgf":"CKG_MGF1_SHA256"}}"#
            ),
            "CKM_RSA_PKCS_PSS(hash=CKM_SHA256 mgf=CKG_MGF1_SHA256 salt_len=32)"
        );
        assert_eq!(
            m(r#"{"type":"0x80000001","params":{"a\u001b":"x\ny"}}"#),
            "0x80000001(a\\x1b=x\\ny)"
        );
    }

    /// The writer's record, sealed, reads back into the same values: one model.
    #[test]
    fn a_written_record_reads_back_as_the_same_values() {
        use crate::format::record::{Bytes, ParamValue, TokenRef};
        let who = ProcessIdentity {
            host: "h".into(),
            pid: 7,
            uid: 0,
            exe: crate::format::record::ExePath::from_bytes(b"/bin/a\xff"),
            auid: None,
            ses: None,
            peer: None,
        };
        let mut r = Record::new(&who, 1, Event::Outcome, Some("C_Sign"));
        r.detail.rv = Some(Named::new(Some("CKR_OK"), 0));
        r.detail.token = Some(Arc::new(TokenRef {
            label: Bytes::from_slice(b"tok\x1b"),
            serial: Bytes::from_slice(b"\xff"),
        }));
        let mut params = std::collections::BTreeMap::new();
        params.insert("hash".into(), ParamValue::Name(Named::new(None, 0x9999)));
        params.insert("salt_len".into(), ParamValue::Number(32));
        r.detail.mechanism = Some(Arc::new(MechanismSummary {
            mechanism: Named::new(Some("CKM_RSA_PKCS_PSS"), 0xd),
            param_len: Some(40),
            params,
        }));
        let key = ObjectIdentity {
            handle: Some(5),
            class: Some(Named::new(Some("CKO_PRIVATE_KEY"), 3)),
            key_type: None,
            label: Some(Bytes::from_slice("\u{435}ck".as_bytes())),
            id: Some(Bytes::hex(&[1, 2])),
        };
        r.detail.key = Some(Arc::new(key.clone()));
        r.detail.key2 = Some(Arc::new(ObjectIdentity::handle_only(6)));
        r.detail.created = vec![Arc::new(key)];
        r.detail.username = Some(Bytes::from_slice(b"admin"));
        let mut line = Vec::new();
        crate::format::line::seal_into(
            &mut line,
            &crate::format::chain::ChainKey::from_bytes([1; 32]),
            3,
            crate::format::chain::ZERO_MAC_HEX,
            &r.to_body(),
        );
        let v = RecView::parse(&line).unwrap();
        assert_eq!(
            (v.seq, v.pid, v.ev.as_ref(), v.rv()),
            (3, 7, "outcome", Some("CKR_OK"))
        );
        assert_eq!(&v.exe, r.exe.bytes());
        assert_eq!(v.token.as_ref(), r.detail.token.as_deref());
        assert_eq!(v.mechanism.as_ref(), r.detail.mechanism.as_deref());
        assert_eq!(v.key.as_ref(), r.detail.key.as_deref());
        assert_eq!(v.key2.as_ref(), r.detail.key2.as_deref());
        let created: Vec<&ObjectIdentity> = r.detail.created.iter().map(|c| &**c).collect();
        assert_eq!(v.created.iter().collect::<Vec<_>>(), created);
        assert_eq!(v.username, r.detail.username);
        assert_eq!(v.ts, r.ts.as_str());
    }

    /// `еck` with U+0435 CYRILLIC SMALL LETTER IE, and others that pass for Latin.
    #[test]
    fn script_notes_go_with_text_labels_ids_and_user_names() {
        // The note goes with labels, ids and user names that are text, not with hex.
        let id = ident(r#"{"class":"CKO_SECRET_KEY","label":"\u0435ck","id":"\u0435"}"#);
        assert_eq!(
            id.display(),
            "\"\u{435}ck\" [mixed scripts: Latin+Cyrillic] id \"\u{435}\" [script: Cyrillic] \
             (CKO_SECRET_KEY)"
        );
        let user = Bytes::Text("\u{430}dmin".into());
        assert_eq!(
            user.display(),
            "\"\u{430}dmin\" [mixed scripts: Latin+Cyrillic]"
        );
        assert_eq!(Bytes::Hex("d0b5".into()).display(), "hex:d0b5");
    }

    #[test]
    fn paths_tell_bytes_apart() {
        assert_eq!(exe_text(&Bytes::Text("/bin/a\u{1b}".into())), "/bin/a\\x1b");
        assert_eq!(exe_text(&Bytes::Hex("2f61ff".into())), "/a\\xff");
        assert_eq!(exe_text(&Bytes::Hex("2f6".into())), "\\{hex:2f6}");
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
            let json = serde_json::to_string(&Bytes::Text(label.into())).unwrap();
            assert_eq!(json, format!("\"{label}\""));
            assert_eq!(escape_c1_and_del(&json), json);
        }
    }
}
