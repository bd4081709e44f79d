//! The audit record model (format v1) and its JSON body.
//!
//! A `Record` is everything a line holds except `v`, `seq`, `prev` and `mac`, which the writer
//! adds when it seals the record into the chain (see `line.rs`). Members that do not apply are
//! left out. Every value that comes from the application or the provider is either a number,
//! a fixed name, a length, or an allowlisted attribute value (see `redact.rs`); nothing here can
//! carry a PIN, key bytes or data.

use serde::Serialize;
use std::sync::Arc;

/// What a record says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Written before an acting call is forwarded.
    Intent,
    /// The result of a call.
    Outcome,
    /// The first record of a chain (seq 0).
    Start,
    /// A process attached: its first C_Initialize with a good configuration (or the first
    /// after a successful C_Finalize).
    Attach,
    /// A process closed its part of the chain cleanly (C_Finalize or normal exit).
    Close,
    /// Records were lost while the log could not be written.
    Gap,
    /// The last record of a file: the chain goes on in the next file (`next`), and this file is
    /// renamed (`renamed_to`).
    Rotate,
}

/// Who wrote a record: fixed for a process (except pid after fork).
#[derive(Clone, Debug)]
pub struct ProcessIdentity {
    pub host: Arc<str>,
    pub pid: u32,
    pub uid: u32,
    pub exe: ExePath,
}

/// The path of the executable (`exe`), losslessly: written like BYTES, as a JSON string when
/// it is UTF-8 and as `{"hex":"..."}` otherwise, so that two paths that differ in their bytes
/// never read the same (a lossy conversion would turn every byte that is not UTF-8 into U+FFFD).
/// Cheap to clone: every record holds one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExePath(Arc<Bytes>);

impl ExePath {
    /// A path's bytes, as the kernel gave them.
    pub fn from_path(path: &std::path::Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        Self::from_bytes(path.as_os_str().as_bytes())
    }

    pub fn from_bytes(b: &[u8]) -> Self {
        ExePath(Arc::new(Bytes::from_slice(b)))
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<&str> for ExePath {
    fn from(s: &str) -> Self {
        ExePath(Arc::new(Bytes::Text(s.to_string())))
    }
}

impl From<String> for ExePath {
    fn from(s: String) -> Self {
        ExePath(Arc::new(Bytes::Text(s)))
    }
}

impl Serialize for ExePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// A byte string from the application or provider (labels, ids). Written as a JSON string when
/// it is valid UTF-8, else as `{"hex":"..."}`; serde_json escapes control characters, quotes
/// and backslashes, so any bytes give one valid JSON line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bytes {
    Text(String),
    Hex(String),
}

impl Bytes {
    pub fn from_slice(b: &[u8]) -> Self {
        match std::str::from_utf8(b) {
            Ok(s) => Bytes::Text(s.to_string()),
            Err(_) => Bytes::Hex(crate::format::chain::hex_lower(b)),
        }
    }
    /// Always hex (CKA_ID and other binary identifiers).
    pub fn hex(b: &[u8]) -> Self {
        Bytes::Hex(crate::format::chain::hex_lower(b))
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Bytes::Text(t) => s.serialize_str(t),
            Bytes::Hex(h) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", h)?;
                m.end()
            }
        }
    }
}

/// A CK_ULONG-valued constant written by name when known, else as "0x..." hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named(pub std::borrow::Cow<'static, str>);

impl Named {
    pub fn new(name: Option<&'static str>, value: u64) -> Self {
        match name {
            Some(n) => Named(n.into()),
            None => Named(format!("{value:#x}").into()),
        }
    }
}

impl Serialize for Named {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The token a call concerns.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TokenRef {
    pub label: Bytes,
    pub serial: Bytes,
}

/// Identity of a key or other object: handle plus what the provider says of it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Default)]
pub struct ObjectIdentity {
    pub handle: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<Named>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_type: Option<Named>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Bytes>,
}

/// A mechanism and a safe summary of its parameter (never IV, AAD or other parameter bytes).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MechanismSummary {
    #[serde(rename = "type")]
    pub mechanism: Named,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param_len: Option<u64>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<&'static str, ParamValue>,
}

/// One summarized mechanism parameter.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ParamValue {
    Name(Named),
    Number(u64),
}

/// One attribute of a template: its type, its length, and its value only if allowlisted.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AttributeSummary {
    #[serde(rename = "type")]
    pub attr: Named,
    /// ulValueLen as given (or as returned, for C_GetAttributeValue); -1 stands for
    /// CK_UNAVAILABLE_INFORMATION.
    pub len: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<AttributeValue>,
}

/// An allowlisted attribute value.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum AttributeValue {
    Bool(bool),
    Number(u64),
    Name(Named),
    Bytes(Bytes),
}

/// What happened to an output buffer.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputDisposition {
    /// NULL output buffer: the application only asked for the length.
    LengthQuery,
    /// The buffer was too small; the provider reported the length needed.
    BufferTooSmall,
    /// Output was handed to the application.
    Returned,
    /// Output was withheld (wiped): p11audit failed after the provider answered, before the
    /// record was settled (FORMAT.md §7).
    Withheld,
}

/// One audit record, before sealing. Members are written in declaration order.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub ts: Timestamp,
    pub host: Arc<str>,
    pub pid: u32,
    pub tid: u64,
    pub uid: u32,
    pub exe: ExePath,
    pub ev: Event,
    #[serde(rename = "fn", skip_serializing_if = "Option::is_none")]
    pub function: Option<&'static str>,
    #[serde(flatten)]
    pub detail: Detail,
}

/// The members that depend on the call. All optional.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Detail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rv: Option<Named>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dur_us: Option<u64>,
    /// seq of this outcome's intent record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Arc<TokenRef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    /// The session's login state: "public", "user", "so" or "context_specific".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_type: Option<Named>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<Arc<MechanismSummary>>,
    /// The key (or object) the call uses: the operation's key, the wrapping or unwrapping key,
    /// the base key of a derivation, the object copied, destroyed or read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Arc<ObjectIdentity>>,
    /// A second key: the key C_WrapKey wraps, the key C_DigestKey digests, the authentication
    /// key of C_SetOperationState.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key2: Option<Arc<ObjectIdentity>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<Vec<AttributeSummary>>,
    /// The private-key template of C_GenerateKeyPair (`template` is the public one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template2: Option<Vec<AttributeSummary>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_len: Option<u64>,
    /// Length of a signature given to a verify call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig_len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<OutputDisposition>,
    /// Objects returned by C_FindObjects, slots by C_GetSlotList, mechanisms by
    /// C_GetMechanismList.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Objects the call created (C_CreateObject, C_GenerateKey, C_UnwrapKey, ...), with their
    /// identity as the provider reports it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<Arc<ObjectIdentity>>,
    /// Handles C_FindObjects returned (the first 64), so a search links to later use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub found: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<Bytes>,
    /// C_GetInterface: the interface handed out, e.g. "PKCS 11 3.0".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Gap records: records lost, and a time before which none of them was lost (FORMAT.md §3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Rotate records: the name this file is renamed to, and the file the chain goes on in
    /// (file names without their directory, which is the log's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Free-text note for lifecycle events (e.g. why a chain started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Record {
    pub fn new(who: &ProcessIdentity, tid: u64, ev: Event, function: Option<&'static str>) -> Self {
        Record {
            ts: rfc3339_micros_now(),
            host: who.host.clone(),
            pid: who.pid,
            tid,
            uid: who.uid,
            exe: who.exe.clone(),
            ev,
            function,
            detail: Detail::default(),
        }
    }

    /// A record of the audit trail itself (`gap`, `rotate`) by the same process and thread
    /// as `self`, at the same time: no function, no detail.
    pub fn bookkeeping(&self, ev: Event) -> Record {
        Record {
            ts: self.ts,
            host: self.host.clone(),
            pid: self.pid,
            tid: self.tid,
            uid: self.uid,
            exe: self.exe.clone(),
            ev,
            function: None,
            detail: Detail::default(),
        }
    }

    /// The JSON body (`{...}`) the writer seals: the bytes `serde_json::to_string` would give,
    /// written by `encode::push_record`.
    pub fn to_body(&self) -> String {
        let mut body = String::with_capacity(640);
        crate::format::encode::push_record(&mut body, self);
        body
    }
}

/// Now as RFC 3339 UTC with microseconds, e.g. `2026-11-26T03:12:45.123456Z`.
pub fn rfc3339_micros_now() -> Timestamp {
    rfc3339_from_micros(micros_now())
}

/// Now in microseconds since the Unix epoch (0 if the clock is before it).
pub fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Formats microseconds since the epoch as RFC 3339 UTC with microseconds, the form of every
/// record's `ts`: the one place that turns a time into text, for the writer and the readers.
pub fn rfc3339_from_micros(us: u64) -> Timestamp {
    rfc3339_micros(us / 1_000_000, (us % 1_000_000) as u32)
}

/// Formats seconds since the epoch plus microseconds as RFC 3339 UTC, e.g.
/// `2026-11-26T03:12:45.123456Z` (years past 9999 wrap: the four year digits are the year
/// modulo 10000).
///
/// The date comes from the `time` crate's calendar; the digits are put in their fixed places
/// here rather than by `time`'s formatter, which took four times as long (one timestamp per
/// record, on the hot path).
pub fn rfc3339_micros(secs: u64, micros: u32) -> Timestamp {
    // The Gregorian calendar repeats every 400 years, so a time 10,000 years (25 cycles) earlier
    // has the same month, day and time of day, and a year 10,000 less: its four digits are the
    // ones to write. Brought back below `time`'s largest year, 9999, every u64 has a date.
    const TEN_THOUSAND_YEARS: i64 = 25 * 146_097 * 86_400;
    let secs = (secs % TEN_THOUSAND_YEARS as u64) as i64;
    let at = time::UtcDateTime::from_unix_timestamp(secs)
        .or_else(|_| time::UtcDateTime::from_unix_timestamp(secs - TEN_THOUSAND_YEARS))
        // Never: one of the two is in 0000..=9999 (a unit test checks the ends).
        .unwrap_or(time::UtcDateTime::UNIX_EPOCH);
    let (year, month, day) = at.to_calendar_date();
    let (hour, minute, second) = at.as_hms();
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year.unsigned_abs());
    put(5, 2, u8::from(month).into());
    put(8, 2, day.into());
    put(11, 2, hour.into());
    put(14, 2, minute.into());
    put(17, 2, second.into());
    put(20, 6, micros);
    Timestamp(out)
}

/// A record's time stamp, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, kept inline: every record has one, and
/// a `String` was one heap allocation per record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Timestamp([u8; 27]);

impl Timestamp {
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or("0000-00-00T00:00:00.000000Z")
    }
}

impl std::ops::Deref for Timestamp {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for Timestamp {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_micros() {
        assert_eq!(rfc3339_micros(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-26T03:12:45Z = 1795662765
        assert_eq!(
            rfc3339_micros(1_795_662_765, 123_456),
            "2026-11-26T03:12:45.123456Z"
        );
        // leap day 2024-02-29T23:59:59Z = 1709251199
        assert_eq!(
            rfc3339_micros(1_709_251_199, 1),
            "2024-02-29T23:59:59.000001Z"
        );
    }

    /// Past 9999 the year's four digits are the year modulo 10000, as they always were; and no
    /// u64 lacks a time stamp.
    #[test]
    fn timestamps_past_9999_wrap() {
        for (secs, micros, ts) in [
            (253_402_300_799, 999_999, "9999-12-31T23:59:59.999999Z"),
            (253_402_300_800, 0, "0000-01-01T00:00:00.000000Z"),
            (315_569_519_999, 0, "1969-12-31T23:59:59.000000Z"),
            (315_569_520_000, 0, "1970-01-01T00:00:00.000000Z"),
        ] {
            assert_eq!(rfc3339_micros(secs, micros), ts, "{secs}");
        }
        assert_eq!(rfc3339_from_micros(u64::MAX), "6524-01-19T08:01:49.551615Z");
    }

    /// Two programs whose paths differ only in bytes that are not UTF-8 are
    /// recorded differently (`display()` made both `/tmp/a\u{fffd}`), and a UTF-8 path stays
    /// text.
    #[test]
    fn exe_paths_that_are_not_utf8_stay_apart() {
        use std::os::unix::ffi::OsStrExt;
        let path = |b: &[u8]| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b));
        let body = |exe: ExePath| {
            let who = ProcessIdentity {
                host: "h".into(),
                pid: 1,
                uid: 2,
                exe,
            };
            let v: serde_json::Value =
                serde_json::from_str(&Record::new(&who, 3, Event::Attach, None).to_body()).unwrap();
            v["exe"].clone()
        };
        let (a, b) = (path(b"/tmp/a\xff"), path(b"/tmp/a\xfe"));
        assert_eq!(a.display().to_string(), b.display().to_string());
        assert_eq!(
            body(ExePath::from_path(&a)),
            serde_json::json!({"hex": "2f746d702f61ff"})
        );
        assert_eq!(
            body(ExePath::from_path(&b)),
            serde_json::json!({"hex": "2f746d702f61fe"})
        );
        assert_eq!(
            body(ExePath::from_path(&path("/usr/bin/é".as_bytes()))),
            "/usr/bin/é"
        );
    }

    #[test]
    fn body_member_order_and_hostile_label_stay_one_json_line() {
        let who = ProcessIdentity {
            host: "h".into(),
            pid: 1,
            uid: 2,
            exe: "/bin/x".into(),
        };
        let mut r = Record::new(&who, 3, Event::Outcome, Some("C_Sign"));
        r.detail.rv = Some(Named::new(Some("CKR_OK"), 0));
        r.detail.key = Some(Arc::new(ObjectIdentity {
            handle: 5,
            label: Some(Bytes::from_slice(b"a\"b\\c\nd\0e\x1b")),
            id: Some(Bytes::hex(&[0xff, 0x01])),
            ..Default::default()
        }));
        r.detail.token = Some(Arc::new(TokenRef {
            label: Bytes::from_slice(&[0xff, 0xfe]),
            serial: Bytes::from_slice(b"1"),
        }));
        let body = r.to_body();
        assert!(!body.contains('\n'));
        assert!(body.starts_with(r#"{"ts":""#));
        let ev_at = body
            .find(r#""ev":"outcome","fn":"C_Sign","rv":"CKR_OK""#)
            .unwrap();
        assert!(ev_at > body.find(r#""exe":"/bin/x""#).unwrap());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["key"]["label"], "a\"b\\c\nd\0e\x1b");
        assert_eq!(v["key"]["id"]["hex"], "ff01");
        assert_eq!(v["token"]["label"]["hex"], "fffe");
    }
}
