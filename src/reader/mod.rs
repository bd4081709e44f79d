//! Reading logs: the files of a chain in order ([`fileset`]), the verifier behind
//! `p11audit verify` ([`verify`]), and for people `p11audit show` (one line per call) and
//! `p11audit report` (what happened over a period). show and report read the files once,
//! verifying the chain as they go ([`verify::verify_files_with`]), and only ever see records
//! that verified.
//!
//! What show and report share: the view of a record both read ([`RecView`]), time parsing, escaping text
//! that came from the log before it reaches a terminal, and a progress line.
//!
//! Logs are attacker-controlled input (whoever can append can write any label, exe path or
//! note), so everything taken from a record is escaped before it is printed, and memory is
//! bounded whatever the log holds.

#![forbid(unsafe_code)]

pub mod fileset;
pub mod report;
pub mod show;
pub mod verify;

use crate::format::record::rfc3339_from_micros;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Escaping

/// Escapes C0 controls, DEL and backslashes, and as `\u{…}` every character outside ASCII that
/// a terminal interprets, that prints blank or not at all, or that changes how the characters
/// around it are shown ([`shown_escaped`]), so that text from a log prints as one harmless
/// line that reads as it is, and two texts that print the same are the same text.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if shown_escaped(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether [`escape`] writes a character outside ASCII as `\u{…}`: the general categories
/// Other (C*), Separator (Z*) and Mark (M*), that is
/// - controls (Cc: the C1 controls, which terminals interpret, e.g. U+009B = CSI);
/// - format characters (Cf): bidirectional controls (a label with U+202E shows its end first,
///   "Trojan Source"), zero-width spaces and joiners, the soft hyphen, U+FEFF, tags;
/// - spaces other than U+0020 (Zs: U+00A0, U+3000, U+2000..U+200A, …) and the line and
///   paragraph separators (Zl, Zp): `key` and `key\u{a0}` would print alike;
/// - combining marks (Mn, Mc, Me): `ec\u{336}k` prints as a struck-through `eck`, and variation
///   selectors and the combining grapheme joiner print as nothing;
/// - private use (Co) and unassigned code points (Cn, noncharacters included), whose look
///   depends on the font, if they show at all (Cs, surrogates, is never a `char`).
///
/// And the letters and symbols that print blank although their category does not say so
/// ([`prints_blank`]).
fn shown_escaped(c: char) -> bool {
    use unicode_properties::{GeneralCategoryGroup as G, UnicodeGeneralCategory};
    !c.is_ascii()
        && (matches!(
            c.general_category_group(),
            G::Other | G::Separator | G::Mark
        ) || prints_blank(c))
}

/// Letters (Lo) and symbols (So) that print as blank space: the Hangul fillers, U+2800 BRAILLE
/// PATTERN BLANK and U+1D159 MUSICAL SYMBOL NULL NOTEHEAD. `eck\u{2800}` would print as `eck`.
fn prints_blank(c: char) -> bool {
    matches!(
        c,
        '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}' | '\u{2800}' | '\u{1d159}'
    )
}

/// `"text"` with [`escape`] applied and inner quotes escaped.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", escape(s).replace('"', "\\\""))
}

/// A name from the log as a person reads it (a label, an id or a user name that is text):
/// [`quote`]d, followed by [`script_note`] when its letters could pass for another name's.
pub fn quote_name(s: &str) -> String {
    let mut q = quote(s);
    if let Some(note) = script_note(s) {
        q.push(' ');
        q.push_str(&note);
    }
    q
}

/// The scripts with letters that look like Latin ones (`е` U+0435 CYRILLIC SMALL LETTER IE and
/// `e`, `ο` U+03BF GREEK SMALL LETTER OMICRON and `o`), in the order a note names them.
const LOOKALIKE_SCRIPTS: [unicode_script::Script; 3] = [
    unicode_script::Script::Latin,
    unicode_script::Script::Cyrillic,
    unicode_script::Script::Greek,
];

/// A note for a name with Cyrillic or Greek characters, which could pass for a name in Latin
/// letters (or in the other script): `[mixed scripts: Latin+Cyrillic]` when it mixes two or
/// three of Latin, Cyrillic and Greek (`еck` with a Cyrillic `е`), `[script: Cyrillic]` when
/// Cyrillic or Greek is the only one of them (`сек`, all Cyrillic, prints like `cek`). Other
/// scripts, and characters of no script of their own (Common: digits, punctuation; Inherited:
/// combining marks), are not counted. None for a name without Cyrillic or Greek.
pub fn script_note(s: &str) -> Option<String> {
    use unicode_script::UnicodeScript;
    let mut seen = [false; LOOKALIKE_SCRIPTS.len()];
    for c in s.chars() {
        let script = c.script();
        if let Some(i) = LOOKALIKE_SCRIPTS.iter().position(|&l| l == script) {
            seen[i] = true;
        }
    }
    if !seen[1] && !seen[2] {
        return None;
    }
    let names: Vec<&str> = LOOKALIKE_SCRIPTS
        .iter()
        .zip(seen)
        .filter(|&(_, seen)| seen)
        .map(|(s, _)| s.full_name())
        .collect();
    Some(if names.len() > 1 {
        format!("[mixed scripts: {}]", names.join("+"))
    } else {
        format!("[script: {}]", names[0])
    })
}

/// JSON text with DEL and the C1 controls (U+007F..U+009F) escaped as `\u00XX`: serde_json
/// escapes only C0 controls, and a C1 CSI (U+009B) from a hostile log would reach a terminal
/// that reads the JSON. The result is still the same JSON value.
pub fn escape_c1_and_del(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Time

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0i64, |n, &c| {
        n.checked_mul(10)?.checked_add(i64::from(c - b'0'))
    })
}

/// `YYYY-MM-DD` at the start of `b`: (days since the epoch, rest).
fn parse_date(b: &[u8]) -> Option<(i64, &[u8])> {
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&b[..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some((days_from_civil(y, m, d), &b[10..]))
}

/// Parses `HH:MM:SS[.fraction](Z|z|±HH:MM)?` after a date: microseconds into the day, and the
/// zone offset in seconds (None when there is no zone).
fn parse_clock(b: &[u8]) -> Option<(i64, Option<i64>)> {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, mi, s) = (digits(&b[..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &b[8..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        let mut v = digits(&frac[..n])?;
        for _ in n..6 {
            v *= 10;
        }
        for _ in 6..n {
            v /= 10;
        }
        micros = v;
        rest = &frac[n..];
    }
    let zone = match rest {
        [] => None,
        [b'Z' | b'z'] => Some(0),
        [sign @ (b'+' | b'-'), zh1, zh2, b':', zm1, zm2] => {
            let (zh, zm) = (digits(&[*zh1, *zh2])?, digits(&[*zm1, *zm2])?);
            if zh > 23 || zm > 59 {
                return None;
            }
            let off = zh * 3600 + zm * 60;
            Some(if *sign == b'-' { -off } else { off })
        }
        _ => return None,
    };
    Some(((h * 3600 + mi * 60 + s) * 1_000_000 + micros, zone))
}

/// A record's `ts` (RFC 3339, as the writer makes it) as microseconds since the epoch. None if
/// it is not RFC 3339 with a zone.
pub fn parse_ts(ts: &str) -> Option<i64> {
    let (days, rest) = parse_date(ts.as_bytes())?;
    let rest = rest
        .strip_prefix(b"T")
        .or_else(|| rest.strip_prefix(b"t"))?;
    let (clock, zone) = parse_clock(rest)?;
    Some(days * 86_400_000_000 + clock - zone? * 1_000_000)
}

/// Which end of a time range a command-line time gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Since,
    Until,
}

/// Parses a `--since`/`--until` value: RFC 3339 (`2026-11-26T03:12:45Z`, with a fraction or a
/// `±HH:MM` offset; without a zone it is UTC), or a date `2026-11-26` (UTC), which as `Since`
/// means the start of that day and as `Until` its end (the whole day is included).
/// Microseconds since the epoch; both ends of a range are inclusive.
pub fn parse_time_arg(text: &str, bound: Bound) -> Result<i64, String> {
    let bad = || {
        format!(
            "{}: not a time; use RFC 3339 (2026-11-26T03:12:45Z, 2026-11-26T04:12:45+01:00) or a date (2026-11-26)",
            escape(text)
        )
    };
    let (days, rest) = parse_date(text.as_bytes()).ok_or_else(bad)?;
    if rest.is_empty() {
        let start = days * 86_400_000_000;
        return Ok(match bound {
            Bound::Since => start,
            Bound::Until => start + 86_400_000_000 - 1,
        });
    }
    let rest = match rest {
        [b'T' | b't' | b' ', r @ ..] => r,
        _ => return Err(bad()),
    };
    let (clock, zone) = parse_clock(rest).ok_or_else(bad)?;
    Ok(days * 86_400_000_000 + clock - zone.unwrap_or(0) * 1_000_000)
}

/// Microseconds since the epoch as RFC 3339 UTC with microseconds (as in the log).
pub fn format_micros(us: i64) -> String {
    if us < 0 {
        return format!("{us} us before 1970");
    }
    rfc3339_from_micros(us as u64).to_string()
}

/// A duration in microseconds for people: `84us`, `5.63ms`, `1.24s`.
pub fn format_duration(us: u64) -> String {
    if us < 1000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}s", us as f64 / 1_000_000.0)
    }
}

/// An inclusive time range in microseconds since the epoch; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Period {
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl Period {
    pub fn is_open(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }

    /// Whether a record with this `ts` falls in the period. A `ts` that cannot be read is in
    /// no bounded period.
    pub fn contains(&self, ts: &str) -> bool {
        if self.is_open() {
            return true;
        }
        match parse_ts(ts) {
            Some(t) => self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u),
            None => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The view of a record

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
    pub fn display(&self) -> String {
        match self {
            ByteStr::Text(t) => quote_name(t),
            ByteStr::Hex { hex } => format!("hex:{}", escape(hex)),
        }
    }

    /// For an id: the hex digits alone (escaped), or the quoted text with its [`script_note`].
    pub fn display_hex(&self) -> String {
        match self {
            ByteStr::Hex { hex } => escape(hex),
            ByteStr::Text(t) => quote_name(t),
        }
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
#[derive(Debug, Deserialize)]
pub struct RecView<'a> {
    pub seq: u64,
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    pub pid: u32,
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

impl ByteStr {
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
        let bytes: Option<Vec<u8>> = (hex.len() % 2 == 0
            && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
                .collect()
        })
        .flatten();
        let Some(bytes) = bytes else {
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

// ---------------------------------------------------------------------------------------------
// Progress

/// A progress line on stderr, for long runs at a terminal: shown only when enabled (stderr is a
/// terminal) and the work has taken more than a second; cleared at the end.
pub struct Progress {
    enabled: bool,
    started: Instant,
    last: Instant,
    total_bytes: u64,
    done_bytes: u64,
    records: u64,
    shown: bool,
}

impl Progress {
    /// Progress over `paths`, shown only if `enabled`.
    pub fn new(enabled: bool, paths: &[PathBuf]) -> Self {
        let total_bytes = if enabled {
            paths
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum()
        } else {
            0
        };
        let now = Instant::now();
        Progress {
            enabled,
            started: now,
            last: now,
            total_bytes,
            done_bytes: 0,
            records: 0,
            shown: false,
        }
    }

    /// Progress that is shown when stderr is a terminal.
    pub fn for_terminal(paths: &[PathBuf]) -> Self {
        Progress::new(std::io::stderr().is_terminal(), paths)
    }

    /// Counts one record whose line (without its newline) was `line_len` bytes.
    pub fn record(&mut self, line_len: usize) {
        if !self.enabled {
            return;
        }
        self.records += 1;
        self.done_bytes += line_len as u64 + 1;
        if !self.records.is_multiple_of(4096) {
            return;
        }
        let now = Instant::now();
        if now - self.started < Duration::from_secs(1)
            || (self.shown && now - self.last < Duration::from_millis(250))
        {
            return;
        }
        self.last = now;
        self.shown = true;
        let pct = (self.done_bytes * 100)
            .checked_div(self.total_bytes)
            .unwrap_or(0)
            .min(100);
        let _ = write!(
            std::io::stderr().lock(),
            "\rp11audit: {pct:3}% read, {} records verified ",
            self.records
        );
    }

    /// Clears the progress line, if one was shown.
    pub fn finish(&mut self) {
        if self.shown {
            self.shown = false;
            let _ = write!(std::io::stderr().lock(), "\r{:60}\r", "");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Sealed test chains for the unit tests of show and report.
#[cfg(test)]
pub(crate) mod testlog {
    use crate::format::chain::{ChainKey, ZERO_MAC_HEX};
    use crate::format::line::seal_into;
    use crate::reader::verify::VerifyOptions;
    use std::path::PathBuf;

    /// A record body: `ts` is 2026-11-26T03:00:00Z plus `secs`; `extra` is more members,
    /// starting with a comma.
    pub fn body(secs: u64, pid: u32, uid: u32, ev: &str, f: Option<&str>, extra: &str) -> String {
        let f = f.map(|f| format!(r#","fn":"{f}""#)).unwrap_or_default();
        let ts = crate::format::record::rfc3339_micros(1_795_662_000 + secs, 0);
        format!(
            r#"{{"ts":"{ts}","host":"h","pid":{pid},"tid":{pid},"uid":{uid},"exe":"/bin/p{pid}","ev":"{ev}"{f}{extra}}}"#
        )
    }

    /// The bodies sealed into a log file; the options to verify it (no state).
    pub fn log(bodies: &[String]) -> (tempfile::TempDir, PathBuf, VerifyOptions) {
        let k0 = ChainKey::from_bytes([9; 32]);
        let mut key = k0.clone();
        let mut prev = ZERO_MAC_HEX.to_string();
        let mut out = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            prev = seal_into(&mut out, &key, i as u64, &prev, b);
            key.evolve();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, out).unwrap();
        (dir, path, VerifyOptions::new(k0, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_timestamps_parse_to_micros() {
        // 2026-11-26T03:12:45Z = 1795662765
        assert_eq!(
            parse_ts("2026-11-26T03:12:45.123456Z"),
            Some(1_795_662_765_123_456)
        );
        assert_eq!(
            parse_ts("2026-11-26T03:12:45Z"),
            Some(1_795_662_765_000_000)
        );
        assert_eq!(
            parse_ts("2026-11-26T04:12:45.5+01:00"),
            Some(1_795_662_765_500_000)
        );
        assert_eq!(parse_ts("1970-01-01T00:00:00.000000Z"), Some(0));
        assert_eq!(
            parse_ts("2024-02-29T23:59:59Z"),
            Some(1_709_251_199_000_000)
        );
        for bad in [
            "",
            "2026-11-26",
            "2026-11-26T03:12:45",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-26T03:12:45.Z",
            "2026-11-26T03:12:45Zjunk",
            "x026-11-26T03:12:45Z",
        ] {
            assert_eq!(parse_ts(bad), None, "{bad}");
        }
        // Round trip with the writer's format.
        let t = 1_795_662_765_123_456;
        assert_eq!(parse_ts(&format_micros(t)), Some(t));
    }

    #[test]
    fn command_line_times_and_dates() {
        let day = 1_795_651_200_000_000; // 2026-11-26T00:00:00Z
        assert_eq!(parse_time_arg("2026-11-26", Bound::Since), Ok(day));
        assert_eq!(
            parse_time_arg("2026-11-26", Bound::Until),
            Ok(day + 86_400_000_000 - 1)
        );
        assert_eq!(
            parse_time_arg("2026-11-26T03:12:45Z", Bound::Until),
            Ok(1_795_662_765_000_000)
        );
        assert_eq!(
            parse_time_arg("2026-11-26T03:12:45", Bound::Since),
            Ok(1_795_662_765_000_000)
        );
        assert_eq!(
            parse_time_arg("2026-11-26 05:12:45+02:00", Bound::Since),
            Ok(1_795_662_765_000_000)
        );
        let err = parse_time_arg("yesterday\x1b[2J", Bound::Since).unwrap_err();
        assert!(err.contains("not a time") && !err.contains('\x1b'), "{err}");
    }

    #[test]
    fn period_bounds_are_inclusive_and_unreadable_ts_is_outside() {
        let p = Period {
            since: parse_time_arg("2026-11-26T03:00:00Z", Bound::Since).ok(),
            until: parse_time_arg("2026-11-26T04:00:00Z", Bound::Until).ok(),
        };
        assert!(p.contains("2026-11-26T03:00:00.000000Z"));
        assert!(p.contains("2026-11-26T04:00:00.000000Z"));
        assert!(!p.contains("2026-11-26T04:00:00.000001Z"));
        assert!(!p.contains("2026-11-26T02:59:59.999999Z"));
        assert!(!p.contains("not a time"));
        assert!(Period::default().contains("not a time"));
    }

    #[test]
    fn escaping_and_identities() {
        assert_eq!(escape("a\x1b[2J\u{9b}b\\"), "a\\x1b[2J\\u{9b}b\\\\");
        // A right-to-left override and a zero-width space show as what they are.
        assert_eq!(
            escape("key\u{202e}gpj.exe\u{200b}"),
            "key\\u{202e}gpj.exe\\u{200b}"
        );
        assert_eq!(escape("clé ключ 鍵"), "clé ключ 鍵");
        assert_eq!(
            escape("a\u{ad}b\u{fe0f}\u{e0041}"),
            "a\\u{ad}b\\u{fe0f}\\u{e0041}"
        );
        assert_eq!(quote("x\"y\n"), "\"x\\\"y\\n\"");
        assert_eq!(escape_c1_and_del("\"\u{9b}\u{7f}\""), "\"\\u009b\\u007f\"");
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

    #[test]
    fn durations() {
        assert_eq!(format_duration(84), "84us");
        assert_eq!(format_duration(5628), "5.63ms");
        assert_eq!(format_duration(1_240_000), "1.24s");
    }

    // Issue 15 §4: labels that print as copies of `eck`.

    #[test]
    fn braille_blank_prints_escaped() {
        // U+2800 is a symbol (So) that prints as a blank cell.
        assert_eq!(escape("eck\u{2800}"), "eck\\u{2800}");
        assert_eq!(quote("e\u{2800}ck"), "\"e\\u{2800}ck\"");
        // And the other blank-printing letters and symbols.
        for c in ['\u{115f}', '\u{1160}', '\u{3164}', '\u{ffa0}', '\u{1d159}'] {
            assert_eq!(
                escape(&format!("eck{c}")),
                format!("eck\\u{{{:x}}}", c as u32)
            );
        }
    }

    #[test]
    fn ideographic_and_no_break_spaces_print_escaped() {
        assert_eq!(escape("eck\u{3000}"), "eck\\u{3000}");
        assert_eq!(escape("eck\u{a0}"), "eck\\u{a0}");
        assert_eq!(quote("e\u{a0}ck"), "\"e\\u{a0}ck\"");
        // Every space but U+0020, and the line and paragraph separators.
        for c in [
            '\u{1680}', '\u{2000}', '\u{2007}', '\u{200a}', '\u{202f}', '\u{205f}', '\u{2028}',
            '\u{2029}',
        ] {
            assert_eq!(escape(&c.to_string()), format!("\\u{{{:x}}}", c as u32));
        }
        assert_eq!(escape("e ck"), "e ck");
    }

    #[test]
    fn combining_marks_print_escaped() {
        // `ec̶k`: U+0336 COMBINING LONG STROKE OVERLAY strikes through the `c`.
        assert_eq!(escape("ec\u{336}k"), "ec\\u{336}k");
        assert_eq!(quote("ec\u{336}k"), "\"ec\\u{336}k\"");
        // A combining acute (Mn), an enclosing circle (Me), a spacing mark (Mc).
        assert_eq!(
            escape("e\u{301}ck\u{20dd} \u{915}\u{93e}"),
            "e\\u{301}ck\\u{20dd} \u{915}\\u{93e}"
        );
        // A precomposed letter is a letter.
        assert_eq!(escape("\u{e9}ck"), "\u{e9}ck");
    }

    #[test]
    fn format_private_use_and_unassigned_print_escaped() {
        for c in [
            '\u{600}',
            '\u{2062}',
            '\u{2066}',
            '\u{e000}',
            '\u{f8ff}',
            '\u{fdd0}',
            '\u{ffff}',
            '\u{10ffff}',
            '\u{e0001}',
        ] {
            assert_eq!(escape(&c.to_string()), format!("\\u{{{:x}}}", c as u32));
        }
    }

    /// What the hand-written list escaped before general categories took over.
    #[test]
    fn every_character_escaped_before_still_is() {
        let ranges = [
            ('\u{00ad}', '\u{00ad}'),
            ('\u{034f}', '\u{034f}'),
            ('\u{061c}', '\u{061c}'),
            ('\u{115f}', '\u{1160}'),
            ('\u{17b4}', '\u{17b5}'),
            ('\u{180b}', '\u{180f}'),
            ('\u{200b}', '\u{200f}'),
            ('\u{2028}', '\u{202e}'),
            ('\u{2060}', '\u{206f}'),
            ('\u{3164}', '\u{3164}'),
            ('\u{fe00}', '\u{fe0f}'),
            ('\u{feff}', '\u{feff}'),
            ('\u{ffa0}', '\u{ffa0}'),
            ('\u{fff0}', '\u{fff8}'),
            ('\u{1bca0}', '\u{1bca3}'),
            ('\u{1d173}', '\u{1d17a}'),
            ('\u{e0000}', '\u{e0fff}'),
            ('\u{80}', '\u{9f}'),
        ];
        for (a, b) in ranges {
            for c in a..=b {
                assert!(shown_escaped(c), "U+{:04X}", c as u32);
            }
        }
        // Letters, digits and symbols of many scripts still print as they are.
        for text in ["clé ключ 鍵", "κλειδί", "مفتاح", "キー", "🔑", "Zürich-2"]
        {
            assert_eq!(escape(text), text);
        }
    }

    #[test]
    fn cyrillic_ie_in_a_latin_word_is_marked() {
        // `еck` with U+0435 CYRILLIC SMALL LETTER IE.
        assert_eq!(
            quote_name("\u{435}ck"),
            "\"\u{435}ck\" [mixed scripts: Latin+Cyrillic]"
        );
        assert_eq!(quote_name("eck"), "\"eck\"");
        assert_eq!(script_note("eck-2026 é 鍵"), None);
        // All Cyrillic, with letters that look Latin: named too, so `сек` cannot pass for
        // `cek`; digits and punctuation count for no script.
        assert_eq!(
            quote_name("\u{441}\u{435}\u{43a}-1"),
            "\"\u{441}\u{435}\u{43a}-1\" [script: Cyrillic]"
        );
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
    fn greek_omicron_in_a_latin_word_is_marked() {
        // `rοot` with U+03BF GREEK SMALL LETTER OMICRON.
        assert_eq!(
            quote_name("r\u{3bf}ot"),
            "\"r\u{3bf}ot\" [mixed scripts: Latin+Greek]"
        );
        assert_eq!(
            quote_name("\u{3ba}\u{3bb}"),
            "\"\u{3ba}\u{3bb}\" [script: Greek]"
        );
        assert_eq!(
            script_note("\u{435}\u{3bf}x").as_deref(),
            Some("[mixed scripts: Latin+Cyrillic+Greek]")
        );
        // A combining mark (Inherited) is escaped, and counts for no script.
        assert_eq!(
            quote_name("r\u{3bf}\u{301}ot"),
            "\"r\u{3bf}\\u{301}ot\" [mixed scripts: Latin+Greek]"
        );
        assert_eq!(script_note("ro\u{301}ot"), None);
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
