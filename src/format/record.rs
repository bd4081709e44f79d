//! The audit record model (format v1) and its JSON body: one model for the writer and the
//! readers.
//!
//! A `Record` is everything a line holds except `v`, `seq`, `prev` and `mac`, which the writer
//! adds when it seals the record into the chain (see `line.rs`). Members that do not apply are
//! left out. Every value that comes from the application or the provider is either a number,
//! a fixed name, a length, or an allowlisted attribute value (see `redact.rs`); nothing here can
//! carry a PIN, key bytes or data.
//!
//! **Writer and readers.** The shim fills a `Record` and the writer encodes it (`to_body`, by
//! the hand-written encoder in `encode.rs`, checked byte for byte against this module's serde
//! derive). The readers (`p11audit show` and `report`) read a verified line into
//! `reader::view::RecView`, a borrowed view of the members they use, whose members are the
//! values defined here: [`Bytes`], [`Named`], [`ObjectIdentity`], [`MechanismSummary`],
//! [`TokenRef`]. Those values are therefore both `Serialize` (how the writer's oracle spells
//! them) and `Deserialize` (how a reader takes them back), so what the writer wrote and what a
//! reader reads are the same type, and a test can compare them.
//!
//! Reading is a little more tolerant than writing: an identity without `handle` and a token
//! without `serial` (never written by p11audit) read as `handle: None` and an empty serial.
//! Members a value does not know are skipped, except in `{"hex": …}`, which takes `hex` alone.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
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
    /// A signed checkpoint of the tree of the lines before it (`checkpoint`, docs/FORMAT.md §9).
    Checkpoint,
}

/// Who wrote a record: fixed for a process (except pid after fork).
#[derive(Clone, Debug)]
pub struct ProcessIdentity {
    pub host: Arc<str>,
    pub pid: u32,
    pub uid: u32,
    pub exe: ExePath,
    /// The audit login id and session (`/proc/self/loginuid`, `/proc/self/sessionid`): who
    /// logged in, through `su`, `sudo` or a shared account. `None` where the kernel has none.
    pub auid: Option<u32>,
    pub ses: Option<u32>,
    /// The client this process serves, when it serves one connection (FORMAT.md §3, `peer`).
    pub peer: Option<Arc<PeerIdentity>>,
}

/// The process at the other end of the connection a serving process (`p11-kit remote`) was
/// started on: `pid`, `uid` and `gid` from `SO_PEERCRED`, the rest from `/proc/<pid>/`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerIdentity {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Left out when the kernel would not give it (see FORMAT.md §3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u32>,
}

/// The path of the executable (`exe`), losslessly: written like BYTES, as a JSON string when
/// it is UTF-8 and as `{"hex":"..."}` otherwise, so that two paths that differ in their bytes
/// never read the same (a lossy conversion would turn every byte that is not UTF-8 into U+FFFD).
/// Cheap to clone: every record holds one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExePath(Arc<Bytes>);

impl ExePath {
    /// A path's bytes, as the kernel gave them.
    pub(crate) fn from_path(path: &std::path::Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        Self::from_bytes(path.as_os_str().as_bytes())
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Self {
        ExePath(Arc::new(Bytes::from_slice(b)))
    }

    pub(crate) fn bytes(&self) -> &Bytes {
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

/// BYTES of the format: a byte string from the application or provider (labels, serials,
/// ids, user names, `exe`). Written as a JSON string when it is valid UTF-8, else as
/// `{"hex":"..."}` (ids always); serde_json escapes control characters, quotes and
/// backslashes, so any bytes give one valid JSON line.
///
/// Ordered text before hex (the readers' tables sort by it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bytes {
    Text(String),
    /// Lowercase hex of the bytes, as written (a reader keeps what the line says).
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

/// The empty text: what a token's serial is when p11audit knows none (and what a reader takes
/// for a token without `serial`).
impl Default for Bytes {
    fn default() -> Self {
        Bytes::Text(String::new())
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

/// Read directly (a string, or a map with the one member `hex`, a string) rather than as an
/// untagged enum, which buffers the value and builds an error for every `{"hex": …}`. A map
/// with any other member, or with `hex` twice, is refused.
impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or {\"hex\": string}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Bytes, E> {
                Ok(Bytes::Text(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Bytes, E> {
                Ok(Bytes::Text(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Bytes, A::Error> {
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
                hex.map(Bytes::Hex)
                    .ok_or_else(|| A::Error::missing_field("hex"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A CK_ULONG-valued constant written by name when known, else as "0x..." hex. The writer's
/// names are `&'static str` from `names.rs`; a reader's are the text of the line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Named(pub Cow<'static, str>);

impl Named {
    pub fn new(name: Option<&'static str>, value: u64) -> Self {
        match name {
            Some(n) => Named(n.into()),
            None => Named(format!("{value:#x}").into()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for Named {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A string, whatever it says (a reader shows a name this build does not know as it is).
impl<'de> Deserialize<'de> for Named {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Named(s.into()))
    }
}

/// The token a call concerns.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRef {
    pub label: Bytes,
    /// Always written (empty when unknown, e.g. for `C_InitToken` on a slot whose token was
    /// never read); a reader takes a missing serial for the empty one.
    #[serde(default)]
    pub serial: Bytes,
}

/// IDENTITY of the format: an object's handle plus what the provider says of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ObjectIdentity {
    /// Always written by p11audit (`handle_only` for an object the provider said nothing
    /// about); `None` only for a line that lacks it, which readers show as an unknown object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<Named>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_type: Option<Named>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Bytes>,
}

impl ObjectIdentity {
    /// An object the provider said nothing about (yet): its handle alone.
    pub(crate) fn handle_only(handle: u64) -> Self {
        ObjectIdentity {
            handle: Some(handle),
            ..Default::default()
        }
    }
}

/// A mechanism and a safe summary of its parameter (never IV, AAD or other parameter bytes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MechanismSummary {
    #[serde(rename = "type")]
    pub mechanism: Named,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param_len: Option<u64>,
    /// Written in key order. The shim's keys are fixed names (`Cow::Borrowed`); a reader's are
    /// the text of the line.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<Cow<'static, str>, ParamValue>,
}

/// One summarized mechanism parameter: a name (`"CKM_SHA256"`) or a number.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ParamValue {
    Name(Named),
    Number(u64),
}

/// A string or a u64, read directly (as `Bytes` is) rather than through serde's
/// untagged buffering.
impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ParamValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a name (string) or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ParamValue, E> {
                Ok(ParamValue::Name(Named(v.to_string().into())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<ParamValue, E> {
                Ok(ParamValue::Name(Named(v.into())))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ParamValue, E> {
                Ok(ParamValue::Number(v))
            }
        }
        d.deserialize_any(V)
    }
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

/// A prepare call (an *Init that returned CKR_OK) told inside the first outcome of the operation
/// it started. Only what the outcome does not already say: the outcome's session, token, login,
/// mechanism and key are the ones the init was given, since the operation keeps them.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FoldedInit {
    #[serde(rename = "fn")]
    pub function: &'static str,
    pub ts: Timestamp,
    /// Only when another thread made the init than the call whose record this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u64>,
    pub dur_us: u64,
    /// C_FindObjectsInit's search template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<Vec<AttributeSummary>>,
    /// C_VerifySignatureInit's signature length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig_len: Option<u64>,
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
    /// `ses`, not `session`: `session` is the PKCS#11 session handle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ses: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Arc<PeerIdentity>>,
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
    /// Length queries (NULL output buffer) of the same function in the same session that came
    /// just before this call and have no record of their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len_queries: Option<u64>,
    /// The successful *Init that started this call's operation in the same session, when this
    /// is the operation's first outcome: the init has no record of its own (FORMAT.md §5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<Box<FoldedInit>>,
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
    /// Checkpoint records: the signed note (c2sp.org/tlog-checkpoint) of the tree of every line
    /// before this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
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
            auid: who.auid,
            ses: who.ses,
            peer: who.peer.clone(),
            ev,
            function,
            detail: Detail::default(),
        }
    }

    /// A record of the audit trail itself (`gap`, `rotate`) by the same process and thread
    /// as `self`, at the same time: no function, no detail. Every member of who wrote it is
    /// `self`'s (written out, a member added to the identity could be forgotten here).
    pub(crate) fn bookkeeping(&self, ev: Event) -> Record {
        Record {
            ev,
            function: None,
            detail: Detail::default(),
            ..self.clone()
        }
    }
}

/// Now as RFC 3339 UTC with microseconds, e.g. `2026-11-26T03:12:45.123456Z`.
pub(crate) fn rfc3339_micros_now() -> Timestamp {
    rfc3339_from_micros(micros_now())
}

/// Now in microseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Formats microseconds since the epoch as RFC 3339 UTC with microseconds, the form of every
/// record's `ts`: the one place that turns a time into text, for the writer and the readers.
pub(crate) fn rfc3339_from_micros(us: u64) -> Timestamp {
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
    pub(crate) fn as_str(&self) -> &str {
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

    /// Past 9999 the year's four digits are the year modulo 10000; and no u64 lacks a time
    /// stamp.
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
    /// recorded differently (a lossy `display()` would make both `/tmp/a\u{fffd}`), and a UTF-8
    /// path stays text.
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
                auid: None,
                ses: None,
                peer: None,
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
    fn bytes_are_text_or_hex() {
        let p = |j: &str| serde_json::from_str::<Bytes>(j);
        assert_eq!(p(r#""a\u001b""#).unwrap(), Bytes::Text("a\u{1b}".into()));
        assert_eq!(p(r#"{"hex":"ff"}"#).unwrap(), Bytes::Hex("ff".into()));
        for bad in [
            r#"{}"#,
            r#"{"hex":"a","hex":"b"}"#,
            r#"{"x":"a"}"#,
            r#"{"hex":"a","x":"a"}"#,
            "5",
            "null",
            r#"{"hex":5}"#,
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        // Written back the same way.
        for json in [r#"{"hex":"ff"}"#, r#""a\u001b""#] {
            assert_eq!(serde_json::to_string(&p(json).unwrap()).unwrap(), json);
        }
        // Text before hex, as the readers' tables sort.
        assert!(Bytes::Text("z".into()) < Bytes::Hex("00".into()));
    }

    /// What readers take that the writer never writes: a token without `serial`, an identity
    /// without `handle`, members they do not know; and what they refuse.
    #[test]
    fn values_read_as_they_always_did() {
        let token: TokenRef = serde_json::from_str(r#"{"label":"t"}"#).unwrap();
        assert_eq!(token.serial, Bytes::Text(String::new()));
        let id: ObjectIdentity = serde_json::from_str(r#"{"label":"k","x":{"y":1}}"#).unwrap();
        assert_eq!(id.handle, None);
        assert_eq!(id.label, Some(Bytes::Text("k".into())));
        let m: MechanismSummary =
            serde_json::from_str(r#"{"type":"0x80000000","params":{"a":"CKM_X","b":7}}"#).unwrap();
        assert_eq!(m.mechanism, Named::new(None, 0x8000_0000));
        assert_eq!(
            m.params["a"],
            ParamValue::Name(Named::new(Some("CKM_X"), 0))
        );
        assert_eq!(m.params["b"], ParamValue::Number(7));
        for bad in [
            r#"{"params":{}}"#,
            r#"{"type":5}"#,
            r#"{"type":"CKM_X","params":{"a":-1}}"#,
            r#"{"type":"CKM_X","params":{"a":true}}"#,
        ] {
            assert!(
                serde_json::from_str::<MechanismSummary>(bad).is_err(),
                "{bad}"
            );
        }
        // Each value the writer encodes reads back as itself.
        let written = ObjectIdentity {
            handle: Some(1),
            class: Some(Named::new(Some("CKO_DATA"), 0)),
            key_type: Some(Named::new(None, 0x8000_0001)),
            label: Some(Bytes::from_slice(b"\xff\"")),
            id: Some(Bytes::hex(b"")),
        };
        let json = serde_json::to_string(&written).unwrap();
        assert_eq!(
            serde_json::from_str::<ObjectIdentity>(&json).unwrap(),
            written
        );
    }

    #[test]
    fn body_member_order_and_hostile_label_stay_one_json_line() {
        let who = ProcessIdentity {
            host: "h".into(),
            pid: 1,
            uid: 2,
            exe: "/bin/x".into(),
            auid: None,
            ses: None,
            peer: None,
        };
        let mut r = Record::new(&who, 3, Event::Outcome, Some("C_Sign"));
        r.detail.rv = Some(Named::new(Some("CKR_OK"), 0));
        r.detail.key = Some(Arc::new(ObjectIdentity {
            handle: Some(5),
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
