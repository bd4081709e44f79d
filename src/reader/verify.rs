//! The chain verifier behind `p11audit verify`.
//!
//! [`verify_files`] reads one or more log files (oldest first) line by line and checks the HMAC
//! chain of format v1 (see `chain.rs` and `line.rs`): every line's mac under K_seq, that seq
//! counts up by one from 0 across all files, and that every `prev` is the mac of the record
//! before. It stops at the first problem and classifies it ([`ProblemKind`]); the [`Summary`]
//! covers the records verified before that point. With a [`ChainState`] it also checks that the
//! log ends where the writer's state says it does (truncation), and that the state holds the
//! chain's key at its seq (a state anyone but a writer wrote cannot vouch for the end).
//!
//! Memory does not grow with the size of the log: one line is held at a time (plus a bounded
//! look-ahead when a record appears early), and a line longer than
//! [`VerifyOptions::max_line_bytes`] is reported rather than buffered.

use crate::format::chain::{hex_lower, is_mac_hex, ChainKey, ZERO_MAC_HEX};
use crate::format::line::split_line;
use crate::format::state::ChainState;
use crate::reader::ByteStr;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// Default cap on the length of one line (without its newline).
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;
/// Default number of lines searched ahead for the expected record when a later one appears.
pub const DEFAULT_LOOKAHEAD_LINES: usize = 64;
/// Default bound on how far ahead of the expected seq a line may claim to be before it is
/// treated as altered instead of evolving the key that far.
pub const DEFAULT_MAX_SEQ_JUMP: u64 = 10_000_000;

/// What to verify against.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// K_0, from the key file.
    pub key: ChainKey,
    /// The writer's state for the last file; `None` skips the truncation check.
    pub state: Option<ChainState>,
    /// Longest line (without its newline) that is read; a longer line is a `Malformed` problem.
    pub max_line_bytes: usize,
    /// How many lines to search ahead for the expected seq before calling a jump `Missing`.
    pub lookahead_lines: usize,
    /// A line claiming a seq more than this far ahead of the expected one is `Altered`.
    pub max_seq_jump: u64,
    /// `state` is None because the caller chose not to use one (`--no-state`), not because
    /// there is none: only says which [`EndUnchecked`] the report names.
    pub state_not_wanted: bool,
}

impl VerifyOptions {
    /// Options with the default limits.
    pub fn new(key: ChainKey, state: Option<ChainState>) -> Self {
        VerifyOptions {
            key,
            state,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            lookahead_lines: DEFAULT_LOOKAHEAD_LINES,
            max_seq_jump: DEFAULT_MAX_SEQ_JUMP,
            state_not_wanted: false,
        }
    }
}

/// A log file could not be opened or read. Not a verification result.
#[derive(Debug)]
pub struct VerifyIoError {
    pub path: PathBuf,
    /// 1-based line being read when the error happened, if any.
    pub line: Option<u64>,
    pub source: io::Error,
}

impl std::fmt::Display for VerifyIoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.path.display(), self.source),
            None => write!(f, "{}: {}", self.path.display(), self.source),
        }
    }
}

impl std::error::Error for VerifyIoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The kind of the first problem found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A line's mac does not verify, it is not a record, or its `prev` does not link.
    Altered,
    /// Records are missing: a later seq appears where the expected one should be.
    Missing,
    /// A record (valid mac) repeats a seq that was already verified.
    Inserted,
    /// A later record appears before the expected one, which follows shortly after.
    Reordered,
    /// The log ends before (or after) where the state file says it does, or the state's key is
    /// not the chain's key at the state's seq (a forged or corrupt state).
    Truncated,
    /// The last line of the last file is incomplete (a torn write).
    TornLastLine,
    /// A line whose mac verifies is still not a valid v1 record (too long, bad JSON, missing
    /// members, missing newline in the middle of the chain), or is one that JSON readers could
    /// read in two ways: not UTF-8, a member name twice in one object, a `\u` escape that is not
    /// UTF-16 (a lone surrogate).
    Malformed,
}

impl ProblemKind {
    /// The snake_case name used in both the human and the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Altered => "altered",
            ProblemKind::Missing => "missing",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Truncated => "truncated",
            ProblemKind::TornLastLine => "torn_last_line",
            ProblemKind::Malformed => "malformed",
        }
    }
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the end of the chain was not checked although every record verified: the log is intact
/// as far as it goes, but records cut off its end would go unnoticed. `p11audit` exits with 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndUnchecked {
    /// No state file was given or found.
    NoStateFile,
    /// The caller chose not to use one (`--no-state`).
    NoStateOption,
    /// The state file is behind the log: the records past it continue the chain from the
    /// state's last record (a writer stopped between its log write and its state write, or
    /// records appended while verify read), but nothing vouches for where the log ends.
    StateBehindLog,
}

impl EndUnchecked {
    /// The snake_case name used in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            EndUnchecked::NoStateFile => "no_state_file",
            EndUnchecked::NoStateOption => "no_state_option",
            EndUnchecked::StateBehindLog => "state_behind_log",
        }
    }

    /// Why, in words: `state_next_seq` is the state's next seq (with a state), `next_seq` the
    /// seq after the last verified record.
    pub fn describe(self, state_next_seq: Option<u64>, next_seq: u64) -> String {
        const UNNOTICED: &str = "records cut off the end of the log would go unnoticed";
        match self {
            EndUnchecked::NoStateFile => format!("there is no state file, so {UNNOTICED}"),
            EndUnchecked::NoStateOption => {
                format!("--no-state was given, so {UNNOTICED}")
            }
            EndUnchecked::StateBehindLog => {
                let n = state_next_seq.unwrap_or(0);
                let last = next_seq.saturating_sub(1);
                let vouches = match n.checked_sub(1) {
                    Some(l) => format!("the log up to seq {l} (its next seq is {n})"),
                    None => "no record (its next seq is 0)".to_string(),
                };
                format!(
                    "the state file is behind the log: it vouches for {vouches}, the log goes on to seq {last}, {} record(s) later, and records cut off after seq {last} would go unnoticed",
                    next_seq.saturating_sub(n)
                )
            }
        }
    }
}

impl std::fmt::Display for EndUnchecked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn ser_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// The first problem found, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The file holding the line (for `Truncated`: the last file).
    #[serde(serialize_with = "ser_path")]
    pub file: PathBuf,
    /// 1-based line number within `file` (for `Truncated`: its last line; 0 if it is empty).
    pub line: u64,
    /// The seq the line claims, when it could be read (for `Truncated`: the last seq present).
    pub seq: Option<u64>,
    /// One sentence for a human. May quote the log: escape it before printing to a terminal.
    pub detail: String,
}

/// One process seen in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessSummary {
    pub pid: u32,
    /// As the record holds it: text, or `{"hex": …}` for a path that is not UTF-8.
    pub exe: ByteStr,
    /// Records this (pid, exe) wrote.
    pub records: u64,
}

/// What the verified records (those before any problem) contain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    /// Number of distinct (pid, exe) pairs.
    pub process_count: u64,
    /// Sorted by pid, then exe.
    pub processes: Vec<ProcessSummary>,
    /// Records per `fn`.
    pub per_fn: BTreeMap<String, u64>,
    /// Records per `rv`.
    pub per_rv: BTreeMap<String, u64>,
    /// Records per `ev`.
    pub per_ev: BTreeMap<String, u64>,
    /// Number of `gap` records, and the sum of their `lost` counts.
    pub gaps: u64,
    pub lost: u64,
}

/// The result of [`verify_files`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// True when no problem was found.
    pub intact: bool,
    /// The first problem, if any.
    pub problem: Option<Problem>,
    /// True when the last verified record is a `close`.
    pub closed_cleanly: bool,
    /// Pids with an `attach` and no later `close`, ascending.
    pub unclosed_pids: Vec<u32>,
    /// Whether a state was compared with the log (it may still be behind the log: see
    /// `end_unchecked`).
    pub state_checked: bool,
    /// None when the end of the chain was checked (or a problem was found); else why not.
    pub end_unchecked: Option<EndUnchecked>,
    /// 0: intact and its end checked; 1: a problem was found; 3: intact as far as it goes, its
    /// end not checked (`end_unchecked`). The exit status of `p11audit verify`.
    pub exit_status: u8,
    /// The state's next seq, when a state was given.
    pub state_next_seq: Option<u64>,
    /// The seq expected after the last verified record.
    pub next_seq: u64,
    /// The mac of the last verified record (64 zeros if none): the chain head.
    pub head_mac: String,
    pub summary: Summary,
    /// Records the state file counts as lost that no `gap` record has reported yet (FORMAT.md
    /// §9), when a state file was read and counts any: `UnreportedLost::less`, filled in by
    /// whoever read the state file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreported_lost: Option<UnreportedLost>,
    /// The `lost` of gap records at or past the state's seq (a state behind the log): they
    /// are reported, though the state does not say so yet (FORMAT.md §8.3, roll-forward).
    #[serde(skip)]
    pub lost_reported_past_state: u64,
}

/// Records lost and not yet reported in a `gap` record, as a state file counts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnreportedLost {
    pub lost: u64,
    /// None of them was lost before this time (RFC 3339), if known.
    pub since: Option<String>,
}

impl UnreportedLost {
    /// From a whole state file's bytes: None if it counts nothing (or is no v2 state file).
    pub fn from_state_file(bytes: &[u8]) -> Option<UnreportedLost> {
        let (lost, since) = crate::format::state::unreported_losses(bytes)?;
        (lost > 0).then(|| UnreportedLost {
            lost,
            since: (since > 0)
                .then(|| crate::format::record::rfc3339_from_micros(since).to_string()),
        })
    }

    /// These less `reported` records that gap records past the state report; None if none is
    /// left.
    pub fn less(&self, reported: u64) -> Option<UnreportedLost> {
        let lost = self.lost.saturating_sub(reported);
        (lost > 0).then(|| UnreportedLost {
            lost,
            since: self.since.clone(),
        })
    }

    /// One line for people: "N record(s) lost and not yet reported in a gap record, none lost
    /// before T (...)".
    pub fn describe(&self) -> String {
        let since = self
            .since
            .as_deref()
            .map(|s| format!(", none lost before {s}"))
            .unwrap_or_default();
        format!(
            "{} record(s) lost and not yet reported in a gap record{since} (the next append to this chain reports them)",
            self.lost
        )
    }
}

/// Verifies the chain across `paths` (oldest first). `Err` only for I/O errors; everything
/// wrong with the content is in the report's `problem`.
pub fn verify_files(
    paths: &[PathBuf],
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyIoError> {
    let report = verify_files_with(paths, opts, |_, _| ControlFlow::Continue(()))?;
    Ok(report.expect("a visitor that never stops"))
}

/// [`verify_files`], calling `visit(line, seq)` for each record as soon as it has verified, in
/// chain order, in the same single pass: `line` is the record's line exactly as in the file,
/// without its newline. Records after the first problem are not visited.
///
/// `Ok(None)` when `visit` returned `Break`: the walk stopped there and nothing was concluded
/// about the rest of the log.
pub fn verify_files_with<F>(
    paths: &[PathBuf],
    opts: &VerifyOptions,
    mut visit: F,
) -> Result<Option<VerifyReport>, VerifyIoError>
where
    F: FnMut(&[u8], u64) -> ControlFlow<()>,
{
    let mut cursor = Cursor::new(paths, opts.max_line_bytes);
    let mut verifier = Verifier::new(opts);
    let mut buf = Vec::new();
    let mut problem = None;
    while let Some(meta) = cursor.next_line(&mut buf)? {
        if let Some(p) = verifier.check_line(&buf, &meta, &mut cursor)? {
            problem = Some(p);
            break;
        }
        if visit(&buf, verifier.expected - 1).is_break() {
            return Ok(None);
        }
    }
    problem = match problem {
        None => verifier.check_state(&cursor),
        // A writer stores the state only after its write completed, so a torn last line does
        // not excuse a state that disagrees with the records before it (e.g. names later
        // ones: a cut tail with junk appended). That is the problem to report; the torn line
        // is its last line.
        Some(torn) if torn.kind == ProblemKind::TornLastLine => {
            Some(match verifier.check_state(&cursor) {
                Some(state_problem) => Problem {
                    detail: format!(
                        "{} (the last line, {}, is torn)",
                        state_problem.detail, torn.line
                    ),
                    file: torn.file,
                    line: torn.line,
                    ..state_problem
                },
                None => torn,
            })
        }
        other => other,
    };
    Ok(Some(verifier.finish(problem)))
}

// ---------------------------------------------------------------------------------------------
// Reading lines

/// Where a line came from and how it ended.
#[derive(Debug, Clone, Copy)]
struct LineMeta {
    file_idx: usize,
    /// 1-based within the file.
    line_no: u64,
    /// The line ended in `\n` (else it ended at end of file).
    newline: bool,
    /// The line was longer than the cap; the buffer holds only its first cap bytes.
    oversized: bool,
    /// Full length of the line without its newline.
    len: u64,
}

/// Reads lines across the files in order, one bounded line at a time.
struct Cursor<'a> {
    paths: &'a [PathBuf],
    /// The file being read (or to be opened next when `reader` is None).
    idx: usize,
    reader: Option<BufReader<File>>,
    /// Lines read from the current (or, at the end, the last) file.
    line_no: u64,
    max_line: usize,
}

impl<'a> Cursor<'a> {
    fn new(paths: &'a [PathBuf], max_line: usize) -> Self {
        Cursor {
            paths,
            idx: 0,
            reader: None,
            line_no: 0,
            max_line,
        }
    }

    fn io_err(&self, idx: usize, line: Option<u64>, source: io::Error) -> VerifyIoError {
        VerifyIoError {
            path: self.paths[idx].clone(),
            line,
            source,
        }
    }

    /// The next line into `buf` (without its newline), or None after the last file.
    fn next_line(&mut self, buf: &mut Vec<u8>) -> Result<Option<LineMeta>, VerifyIoError> {
        loop {
            if self.reader.is_none() {
                if self.idx >= self.paths.len() {
                    return Ok(None);
                }
                // Only regular files: opening a FIFO would block, a device could be endless.
                let path = &self.paths[self.idx];
                match std::fs::metadata(path) {
                    Ok(m) if !m.is_file() => {
                        let e = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
                        return Err(self.io_err(self.idx, None, e));
                    }
                    _ => {}
                }
                let file = File::open(path).map_err(|e| self.io_err(self.idx, None, e))?;
                self.reader = Some(BufReader::with_capacity(64 * 1024, file));
                self.line_no = 0;
            }
            let reader = self.reader.as_mut().expect("opened above");
            match read_bounded_line(reader, buf, self.max_line) {
                Ok(Some((newline, oversized, len))) => {
                    self.line_no += 1;
                    return Ok(Some(LineMeta {
                        file_idx: self.idx,
                        line_no: self.line_no,
                        newline,
                        oversized,
                        len,
                    }));
                }
                Ok(None) => {
                    self.reader = None;
                    self.idx += 1;
                }
                Err(e) => return Err(self.io_err(self.idx, Some(self.line_no + 1), e)),
            }
        }
    }

    /// True if nothing follows the line just read: its file is at its end and every later file
    /// is empty.
    fn at_end(&mut self) -> Result<bool, VerifyIoError> {
        if let Some(reader) = self.reader.as_mut() {
            let more = loop {
                match reader.fill_buf() {
                    Ok(b) => break !b.is_empty(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.io_err(self.idx, Some(self.line_no + 1), e)),
                }
            };
            if more {
                return Ok(false);
            }
        }
        let next = if self.reader.is_some() {
            self.idx + 1
        } else {
            self.idx
        };
        Ok(self.paths.iter().skip(next).all(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.len() == 0)
                .unwrap_or(false)
        }))
    }
}

/// Reads one line into `buf` (without `\n`), keeping at most `cap` bytes of it. Returns
/// (ended in newline, longer than cap, full length), or None at end of input.
fn read_bounded_line<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Option<(bool, bool, u64)>> {
    buf.clear();
    let mut any = false;
    let mut oversized = false;
    let mut len: u64 = 0;
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(any.then_some((false, oversized, len)));
        }
        any = true;
        let (chunk_len, found) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if !oversized {
            let room = cap - buf.len();
            if chunk_len > room {
                buf.extend_from_slice(&avail[..room]);
                oversized = true;
            } else {
                buf.extend_from_slice(&avail[..chunk_len]);
            }
        }
        len += chunk_len as u64;
        r.consume(chunk_len + usize::from(found));
        if found {
            return Ok(Some((true, oversized, len)));
        }
        if oversized {
            // The walk stops at this problem anyway: do not read a huge (or endless) line to
            // its end just to learn its length.
            return Ok(Some((false, true, len)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing a line

/// Reads the fixed start `{"v":1,"seq":N,"prev":"<64 hex>",` of a line: (seq, prev).
fn parse_prefix(line: &[u8]) -> Option<(u64, &str)> {
    let rest = line.strip_prefix(b"{\"v\":1,\"seq\":".as_slice())?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let seq: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"prev\":\"".as_slice())?;
    if rest.len() < 66 || &rest[64..66] != b"\"," {
        return None;
    }
    let prev = std::str::from_utf8(&rest[..64]).ok()?;
    is_mac_hex(prev).then_some((seq, prev))
}

/// The members the verifier reads. All others are read too, to their end, by [`Strict`]: see
/// [`parse_record`].
struct Rec<'a> {
    ts: Cow<'a, str>,
    pid: u32,
    exe: Exe<'a>,
    ev: Cow<'a, str>,
    function: Option<Cow<'a, str>>,
    rv: Option<Cow<'a, str>>,
    lost: Option<u64>,
}

/// Reads a line whose mac verified as a v1 record, refusing what JSON readers could read in
/// two ways, which p11audit never writes:
/// - bytes that are not UTF-8 (one reader stops, another replaces them with U+FFFD);
/// - a member name twice in one object, at any depth (one reader takes the first, another the
///   last, a third refuses the line);
/// - a `\u` escape that is not UTF-16: a lone surrogate such as `\ud800` (jq refuses the line,
///   other readers replace it).
///
/// One pass over the line: every value, also of members the verifier does not use, is parsed
/// to its end (strings decoded, which is where serde_json refuses a lone surrogate), and every
/// object's member names are compared.
fn parse_record(line: &[u8]) -> Result<Rec<'_>, String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "it is not UTF-8 (at byte {} of the line)",
            e.valid_up_to() + 1
        )
    })?;
    let mut names = Vec::with_capacity(48);
    let mut de = serde_json::Deserializer::from_str(text);
    let rec = RecSeed { names: &mut names }
        .deserialize(&mut de)
        .and_then(|rec| de.end().map(|()| rec))
        .map_err(|e| {
            // serde_json's words for a lone surrogate: "lone leading surrogate in hex escape"
            // (also for a trailing one) and "unexpected end of hex escape" (a leading one not
            // followed by a \u escape).
            let e = e.to_string();
            if e.contains("surrogate") || e.contains("end of hex escape") {
                format!("a \\u escape is not UTF-16 (a lone surrogate): {e}")
            } else {
                e
            }
        })?;
    Ok(rec)
}

/// A string value or member name, borrowed from the line when it holds no escape.
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `exe` as a record holds it: text, or `{"hex": "…"}` for a path that is not UTF-8 (FORMAT.md
/// §3). Only that form: lowercase hex of bytes that are not UTF-8, so that every path has one
/// spelling and a text path cannot also be written as hex.
enum Exe<'a> {
    Text(Cow<'a, str>),
    Hex(Cow<'a, str>),
}

impl<'de> Deserialize<'de> for Exe<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Exe<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or {\"hex\": string}")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Exe<'de>, E> {
                Ok(Exe::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Exe<'de>, E> {
                Ok(Exe::Text(Cow::Owned(v.to_string())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Exe<'de>, A::Error> {
                let mut hex: Option<Cow<'de, str>> = None;
                while let Some(Str(k)) = m.next_key::<Str<'de>>()? {
                    if k != "hex" {
                        return Err(de::Error::unknown_field(&k, &["hex"]));
                    }
                    if hex.is_some() {
                        return Err(de::Error::custom("the member name \"hex\" appears twice"));
                    }
                    hex = Some(m.next_value::<Str<'de>>()?.0);
                }
                let hex = hex.ok_or_else(|| de::Error::missing_field("hex"))?;
                let bytes = (hex.len() % 2 == 0
                    && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                .then(|| {
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
                        .collect::<Vec<u8>>()
                });
                match bytes {
                    Some(b) if std::str::from_utf8(&b).is_err() => Ok(Exe::Hex(hex)),
                    Some(_) => Err(de::Error::custom(
                        "exe {\"hex\": …} holds UTF-8: a path that is UTF-8 is written as a string",
                    )),
                    None => Err(de::Error::custom(
                        "exe {\"hex\": …} is not lowercase hex of whole bytes",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads the record object: the members the verifier uses by their type, every other value by
/// [`Strict`]; refuses a member name that appears twice.
struct RecSeed<'s, 'de> {
    /// Member names of the objects being read, outermost first (shared by [`Strict`]).
    names: &'s mut Vec<Cow<'de, str>>,
}

impl<'s, 'de> DeserializeSeed<'de> for RecSeed<'s, 'de> {
    type Value = Rec<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Rec<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

fn twice<E: de::Error>(name: &str) -> E {
    E::custom(format_args!(
        "the member name {name:?} appears twice in one object"
    ))
}

impl<'s, 'de> Visitor<'de> for RecSeed<'s, 'de> {
    type Value = Rec<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a record (a JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Rec<'de>, A::Error> {
        let names = self.names;
        // Present and of their type, though not used: v, seq, prev, host, tid, uid, mac.
        let (mut v, mut seq, mut prev, mut host, mut tid, mut uid, mut mac) = (
            None::<u64>,
            None::<u64>,
            None,
            None,
            None::<u64>,
            None::<u32>,
            None,
        );
        let (mut ts, mut pid, mut exe, mut ev) = (None, None::<u32>, None, None);
        let (mut function, mut rv, mut lost) = (None, None, None::<u64>);
        while let Some(Str(name)) = m.next_key::<Str<'de>>()? {
            if names.contains(&name) {
                return Err(twice(&name));
            }
            match &*name {
                "v" => v = Some(m.next_value()?),
                "seq" => seq = Some(m.next_value()?),
                "prev" => prev = Some(m.next_value::<Str<'de>>()?),
                "ts" => ts = Some(m.next_value::<Str<'de>>()?.0),
                "host" => host = Some(m.next_value::<Str<'de>>()?),
                "pid" => pid = Some(m.next_value()?),
                "tid" => tid = Some(m.next_value()?),
                "uid" => uid = Some(m.next_value()?),
                "exe" => exe = Some(m.next_value::<Exe<'de>>()?),
                "ev" => ev = Some(m.next_value::<Str<'de>>()?.0),
                "fn" => function = m.next_value::<Option<Str<'de>>>()?.map(|s| s.0),
                "rv" => rv = m.next_value::<Option<Str<'de>>>()?.map(|s| s.0),
                "lost" => lost = m.next_value()?,
                "mac" => mac = Some(m.next_value::<Str<'de>>()?),
                _ => m.next_value_seed(Strict { names: &mut *names })?,
            }
            names.push(name);
        }
        fn need<T, E: de::Error>(x: Option<T>, name: &'static str) -> Result<T, E> {
            x.ok_or_else(|| E::missing_field(name))
        }
        // In the order of the members in a record.
        need(v, "v")?;
        need(seq, "seq")?;
        need(prev, "prev")?;
        let ts = need(ts, "ts")?;
        need(host, "host")?;
        let pid = need(pid, "pid")?;
        need(tid, "tid")?;
        need(uid, "uid")?;
        let exe = need(exe, "exe")?;
        let ev = need(ev, "ev")?;
        need(mac, "mac")?;
        Ok(Rec {
            ts,
            pid,
            exe,
            ev,
            function,
            rv,
            lost,
        })
    }
}

/// Any JSON value, read to its end: strings decoded (serde_json refuses a `\u` escape that is
/// not UTF-16 there), and in every object each member name compared with the ones before it.
struct Strict<'s, 'de> {
    names: &'s mut Vec<Cow<'de, str>>,
}

impl<'s, 'de> DeserializeSeed<'de> for Strict<'s, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'s, 'de> Visitor<'de> for Strict<'s, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
        let names = self.names;
        while s
            .next_element_seed(Strict { names: &mut *names })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        let names = self.names;
        let start = names.len();
        while let Some(Str(name)) = m.next_key::<Str<'de>>()? {
            if names[start..].contains(&name) {
                return Err(twice(&name));
            }
            m.next_value_seed(Strict { names: &mut *names })?;
            names.push(name);
        }
        names.truncate(start);
        Ok(())
    }
}

fn count(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(c) => *c += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

fn range_text(from: u64, to_incl: u64) -> String {
    if from == to_incl {
        format!("seq {from}")
    } else {
        format!("seq {from}..{to_incl}")
    }
}

// ---------------------------------------------------------------------------------------------
// The chain walk

/// The state against the chain at seq `next_seq` of the state (the walk has verified every
/// record before it).
#[derive(Debug, Clone, Copy)]
struct StateComparison {
    /// The state's prev is the mac of seq next_seq-1 (64 zeros for next_seq 0).
    prev_matches: bool,
    /// The state's key is K_next_seq, evolved from K_0. Only a writer (or someone holding a
    /// chain key of a seq at or before next_seq) can know it: the check line is an unkeyed
    /// hash anyone can compute, and seq and prev can be read from the log.
    key_matches: bool,
}

impl StateComparison {
    fn new(state: &ChainState, mac: &str, key: &ChainKey) -> Self {
        StateComparison {
            prev_matches: state.prev_mac == mac,
            key_matches: state.key.ct_eq(key),
        }
    }
}

struct Verifier<'o> {
    opts: &'o VerifyOptions,
    /// The expected seq e, and K_e.
    expected: u64,
    key_e: ChainKey,
    /// mac of seq e-1 (zeros for e = 0).
    last_mac: String,
    /// How the state compares with the chain at the state's seq, once the walk got there.
    state_at_its_seq: Option<StateComparison>,
    // Summary material.
    records: u64,
    first_seq: Option<u64>,
    first_ts: Option<String>,
    last_ts: String,
    /// Per pid: records per text exe, and per hex exe.
    processes: BTreeMap<u32, [BTreeMap<String, u64>; 2]>,
    per_fn: BTreeMap<String, u64>,
    per_rv: BTreeMap<String, u64>,
    per_ev: BTreeMap<String, u64>,
    gaps: u64,
    lost: u64,
    lost_past_state: u64,
    open_pids: BTreeSet<u32>,
    last_ev_close: bool,
}

impl<'o> Verifier<'o> {
    fn new(opts: &'o VerifyOptions) -> Self {
        Verifier {
            opts,
            expected: 0,
            key_e: opts.key.clone(),
            last_mac: ZERO_MAC_HEX.to_string(),
            state_at_its_seq: opts
                .state
                .as_ref()
                .filter(|st| st.next_seq == 0)
                .map(|st| StateComparison::new(st, ZERO_MAC_HEX, &opts.key)),
            records: 0,
            first_seq: None,
            first_ts: None,
            last_ts: String::new(),
            processes: BTreeMap::new(),
            per_fn: BTreeMap::new(),
            per_rv: BTreeMap::new(),
            per_ev: BTreeMap::new(),
            gaps: 0,
            lost: 0,
            lost_past_state: 0,
            open_pids: BTreeSet::new(),
            last_ev_close: false,
        }
    }

    fn problem(
        &self,
        kind: ProblemKind,
        meta: &LineMeta,
        cursor: &Cursor,
        seq: Option<u64>,
        detail: String,
    ) -> Option<Problem> {
        Some(Problem {
            kind,
            file: cursor.paths[meta.file_idx].clone(),
            line: meta.line_no,
            seq,
            detail,
        })
    }

    /// K_s, evolved from K_e when s >= e or from K_0 when s < e.
    fn key_for(&self, s: u64) -> Cow<'_, ChainKey> {
        let (mut key, steps) = if s == self.expected {
            return Cow::Borrowed(&self.key_e);
        } else if s > self.expected {
            (self.key_e.clone(), s - self.expected)
        } else {
            (self.opts.key.clone(), s)
        };
        for _ in 0..steps {
            key.evolve();
        }
        Cow::Owned(key)
    }

    /// Checks one line. Some(problem) stops the walk.
    fn check_line(
        &mut self,
        line: &[u8],
        meta: &LineMeta,
        cursor: &mut Cursor,
    ) -> Result<Option<Problem>, VerifyIoError> {
        use ProblemKind::*;
        let e = self.expected;
        let prefix = parse_prefix(line);
        let claimed = prefix.map(|p| p.0);

        if meta.oversized {
            return Ok(self.problem(
                Malformed,
                meta,
                cursor,
                claimed,
                format!(
                    "line is longer than the limit of {} bytes; not verified (expected seq {e})",
                    self.opts.max_line_bytes
                ),
            ));
        }

        let split = split_line(line);
        let split_ok = split.is_some();
        let (Some(split), Some((s, prev))) = (split, prefix) else {
            // Only a line cut short lacks its newline: a last line that has one but is not a
            // record was written that way (or altered), not torn.
            if !meta.newline && cursor.at_end()? {
                return Ok(self.problem(
                    TornLastLine,
                    meta,
                    cursor,
                    claimed,
                    format!(
                        "the last line ({} bytes) is incomplete (no newline): a torn write; expected seq {e}",
                        meta.len
                    ),
                ));
            }
            let why = if line.ends_with(b"\r") {
                "ends in a carriage return (a \\r\\n line ending)"
            } else if !split_ok {
                "does not end in a well-formed \"mac\" member"
            } else {
                "does not start with {\"v\":1,\"seq\":N,\"prev\":\"<mac>\","
            };
            return Ok(self.problem(
                Altered,
                meta,
                cursor,
                claimed,
                format!("line {why}; expected seq {e}"),
            ));
        };

        if s > e && s - e > self.opts.max_seq_jump {
            return Ok(self.problem(
                Altered,
                meta,
                cursor,
                Some(s),
                format!(
                    "line claims seq {s}, more than {} ahead of the expected seq {e}; not checked further",
                    self.opts.max_seq_jump
                ),
            ));
        }

        let mac_ok = hex_lower(&self.key_for(s).mac(split.payload)) == split.mac;
        if !mac_ok {
            if !meta.newline && cursor.at_end()? {
                return Ok(self.problem(
                    TornLastLine,
                    meta,
                    cursor,
                    Some(s),
                    format!(
                        "the last line ({} bytes) has no newline and its mac does not verify: a torn or altered write",
                        meta.len
                    ),
                ));
            }
            let which = if s == e {
                String::new()
            } else {
                format!(" (expected seq {e})")
            };
            return Ok(self.problem(
                Altered,
                meta,
                cursor,
                Some(s),
                format!("mac does not verify under K_{s}: the line was altered{which}"),
            ));
        }

        let rec = match parse_record(line) {
            Ok(r) => r,
            Err(err) => {
                return Ok(self.problem(
                    Malformed,
                    meta,
                    cursor,
                    Some(s),
                    format!("mac verifies but the line is not a valid v1 record: {err}"),
                ))
            }
        };

        if s < e {
            return Ok(self.problem(
                Inserted,
                meta,
                cursor,
                Some(s),
                format!("a record with seq {s}, already verified earlier, appears again where seq {e} was expected"),
            ));
        }
        if s > e {
            return Ok(match self.find_ahead(e, cursor)? {
                Some((idx, line_no)) => {
                    let loc = if idx == meta.file_idx {
                        format!("line {line_no}")
                    } else {
                        format!("{}:{line_no}", cursor.paths[idx].display())
                    };
                    self.problem(
                        Reordered,
                        meta,
                        cursor,
                        Some(s),
                        format!("seq {s} appears before seq {e}, which follows at {loc}"),
                    )
                }
                None => {
                    // At the first line of a file after another: a rotated file is gone (or
                    // the end of the one before it).
                    let whole_file = if meta.line_no == 1 && meta.file_idx > 0 {
                        format!(
                            "; it is the first line of its file, so a file between {} and this one (or the end of {0}) is missing",
                            cursor.paths[meta.file_idx - 1].display()
                        )
                    } else {
                        String::new()
                    };
                    self.problem(
                        Missing,
                        meta,
                        cursor,
                        Some(s),
                        format!(
                            "{} record(s) missing ({}) before this line, which holds seq {s}{whole_file}",
                            s - e,
                            range_text(e, s - 1)
                        ),
                    )
                }
            });
        }
        if prev != self.last_mac {
            let whose = if e == 0 {
                "64 zeros (seq 0)".to_string()
            } else {
                format!("the mac of seq {}", e - 1)
            };
            return Ok(self.problem(
                Altered,
                meta,
                cursor,
                Some(s),
                format!("mac verifies but \"prev\" is not {whose}: the chain does not link"),
            ));
        }
        if !meta.newline {
            if cursor.at_end()? {
                return Ok(self.problem(
                    TornLastLine,
                    meta,
                    cursor,
                    Some(s),
                    format!("the last record (seq {s}) verifies but its line lacks the final newline: an incomplete write"),
                ));
            }
            return Ok(self.problem(
                Malformed,
                meta,
                cursor,
                Some(s),
                format!(
                    "record seq {s} verifies but its line lacks a newline at the end of its file"
                ),
            ));
        }

        self.accept(s, split.mac, &rec);
        Ok(None)
    }

    /// Looks ahead (bounded) for a line holding seq `e` with a valid mac under K_e.
    fn find_ahead(
        &self,
        e: u64,
        cursor: &mut Cursor,
    ) -> Result<Option<(usize, u64)>, VerifyIoError> {
        let mut buf = Vec::new();
        for _ in 0..self.opts.lookahead_lines {
            let Some(meta) = cursor.next_line(&mut buf)? else {
                break;
            };
            if meta.oversized {
                // Only the start of an oversized line was read: what follows is not a line.
                break;
            }
            if let (Some(split), Some((s, _))) = (split_line(&buf), parse_prefix(&buf)) {
                if s == e && hex_lower(&self.key_e.mac(split.payload)) == split.mac {
                    return Ok(Some((meta.file_idx, meta.line_no)));
                }
            }
        }
        Ok(None)
    }

    fn accept(&mut self, s: u64, mac: &str, rec: &Rec) {
        self.last_mac.clear();
        self.last_mac.push_str(mac);
        self.key_e.evolve();
        self.expected = s + 1;
        if let Some(st) = &self.opts.state {
            if st.next_seq == self.expected {
                self.state_at_its_seq = Some(StateComparison::new(st, mac, &self.key_e));
            }
        }

        self.records += 1;
        self.first_seq.get_or_insert(s);
        if self.first_ts.is_none() {
            self.first_ts = Some(rec.ts.to_string());
        }
        self.last_ts.clear();
        self.last_ts.push_str(&rec.ts);
        let [text, hex] = self.processes.entry(rec.pid).or_default();
        match &rec.exe {
            Exe::Text(t) => count(text, t),
            Exe::Hex(h) => count(hex, h),
        }
        if let Some(f) = &rec.function {
            count(&mut self.per_fn, f);
        }
        if let Some(rv) = &rec.rv {
            count(&mut self.per_rv, rv);
        }
        count(&mut self.per_ev, &rec.ev);
        match &*rec.ev {
            "attach" => {
                self.open_pids.insert(rec.pid);
            }
            "close" => {
                self.open_pids.remove(&rec.pid);
            }
            "gap" => {
                self.gaps += 1;
                let lost = rec.lost.unwrap_or(0);
                self.lost = self.lost.saturating_add(lost);
                if self.opts.state.as_ref().is_some_and(|st| s >= st.next_seq) {
                    self.lost_past_state = self.lost_past_state.saturating_add(lost);
                }
            }
            _ => {}
        }
        self.last_ev_close = rec.ev == "close";
    }

    /// After the last line: does the log end where the state says, and did a writer of this
    /// chain write the state?
    fn check_state(&self, cursor: &Cursor) -> Option<Problem> {
        let st = self.opts.state.as_ref()?;
        let e = self.expected;
        let last_seq = e.checked_sub(1);
        let file = cursor.paths.last().cloned().unwrap_or_default();
        let line = cursor.line_no;
        let mk = |detail: String| {
            Some(Problem {
                kind: ProblemKind::Truncated,
                file: file.clone(),
                line,
                seq: last_seq,
                detail,
            })
        };
        let last_text = match last_seq {
            Some(l) => format!("the log ends at seq {l}"),
            None => "the log holds no records".to_string(),
        };
        if st.next_seq > e {
            // The state's key is not checked here: that would take evolving the key over every
            // missing record, and the log fails either way.
            let n = st.next_seq - e;
            return mk(format!(
                "{last_text} but the state expects {n} more record(s) ({}): records missing at the end",
                range_text(e, st.next_seq - 1)
            ));
        }
        // The walk verified every seq below e from 0, so it compared the state at its seq;
        // should it not have, the state cannot vouch for the end either.
        let Some(at_state) = self.state_at_its_seq else {
            return mk(format!(
                "the state (next seq {}) could not be compared with the chain at its seq ({last_text})",
                st.next_seq
            ));
        };
        // seq, prev and the check line of a state can be written by anyone who can read the
        // log; K_next_seq only by a writer (forward security keeps a thief who took a later
        // key from going back). A state with another key cannot vouch for the end of the log.
        if !at_state.key_matches {
            let n = st.next_seq;
            return mk(format!(
                "the state's key is not K_{n}, the chain's key for its next seq {n}: the state file is forged or corrupt and cannot show whether records were cut off the end ({last_text})"
            ));
        }
        // A writer stopped between its log write and its state write (e.g. killed) leaves the
        // state behind a log whose extra records continue the chain from exactly the state's
        // last record: the next writer rolls forward over them (FORMAT.md §8), so this is not
        // a problem. A state behind the log whose mac does not match is.
        // A state at seq 0 is such a state only if a writer wrote it (it names the log's
        // inode); an empty state file (read as "no chain started", inode 0) beside records is not.
        let written_by_a_writer = st.next_seq > 0 || st.log_ino != 0;
        if st.next_seq < e && at_state.prev_matches && written_by_a_writer {
            return None;
        }
        if st.next_seq < e {
            let n = e - st.next_seq;
            let state_last = match st.next_seq.checked_sub(1) {
                Some(l) => format!("seq {l}"),
                None => "no records".to_string(),
            };
            let agrees = match (st.next_seq, at_state.prev_matches) {
                (0, true) => "",
                (0, false) => " (and its prev is not 64 zeros)",
                (_, true) => " (its mac matches the log there)",
                (_, false) => " (and its mac does not match the log there)",
            };
            return mk(format!(
                "state behind log: the state ends at {state_last}{agrees} but {last_text}, {n} record(s) later"
            ));
        }
        if !at_state.prev_matches {
            return mk(format!(
                "{last_text} as the state expects, but its mac is not the state's prev mac: the tail was replaced"
            ));
        }
        None
    }

    fn finish(self, problem: Option<Problem>) -> VerifyReport {
        let processes: Vec<ProcessSummary> = self
            .processes
            .into_iter()
            .flat_map(|(pid, [text, hex])| {
                // In ByteStr's order: text, then hex.
                let text = text.into_iter().map(|(t, n)| (ByteStr::Text(t), n));
                let hex = hex.into_iter().map(|(hex, n)| (ByteStr::Hex { hex }, n));
                text.chain(hex)
                    .map(move |(exe, records)| ProcessSummary { pid, exe, records })
            })
            .collect();
        let summary = Summary {
            records: self.records,
            first_seq: self.first_seq,
            last_seq: self.expected.checked_sub(1).filter(|_| self.records > 0),
            first_ts: self.first_ts,
            last_ts: (self.records > 0).then_some(self.last_ts),
            process_count: processes.len() as u64,
            processes,
            per_fn: self.per_fn,
            per_rv: self.per_rv,
            per_ev: self.per_ev,
            gaps: self.gaps,
            lost: self.lost,
        };
        let end_unchecked = match &self.opts.state {
            _ if problem.is_some() => None,
            None if self.opts.state_not_wanted => Some(EndUnchecked::NoStateOption),
            None => Some(EndUnchecked::NoStateFile),
            // Accepted behind the log (else `check_state` found a problem).
            Some(st) if st.next_seq < self.expected => Some(EndUnchecked::StateBehindLog),
            Some(_) => None,
        };
        let exit_status = match (&problem, end_unchecked) {
            (Some(_), _) => 1,
            (None, Some(_)) => 3,
            (None, None) => 0,
        };
        VerifyReport {
            end_unchecked,
            exit_status,
            state_next_seq: self.opts.state.as_ref().map(|st| st.next_seq),
            intact: problem.is_none(),
            problem,
            closed_cleanly: self.last_ev_close,
            unclosed_pids: self.open_pids.into_iter().collect(),
            state_checked: self.opts.state.is_some(),
            next_seq: self.expected,
            head_mac: self.last_mac,
            summary,
            unreported_lost: None,
            lost_reported_past_state: self.lost_past_state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::line::seal_into;
    use std::io::Write;

    fn k0() -> ChainKey {
        ChainKey::from_bytes([0x42; 32])
    }

    fn body(pid: u32, ev: &str, f: Option<&str>, extra: &str) -> String {
        let f = f.map(|f| format!(r#","fn":"{f}""#)).unwrap_or_default();
        format!(
            r#"{{"ts":"2026-11-26T03:12:45.{pid:06}Z","host":"h","pid":{pid},"tid":1,"uid":0,"exe":"/x","ev":"{ev}"{f}{extra}}}"#
        )
    }

    fn sign(pid: u32) -> String {
        body(
            pid,
            "outcome",
            Some("C_Sign"),
            r#","rv":"CKR_OK","dur_us":3"#,
        )
    }

    /// A chain of the given bodies: one line each (with newline), the macs, and K_n.
    struct Chain {
        lines: Vec<Vec<u8>>,
        macs: Vec<String>,
        key_next: ChainKey,
    }

    fn chain(bodies: &[String]) -> Chain {
        let mut key = k0();
        let mut prev = ZERO_MAC_HEX.to_string();
        let mut lines = Vec::new();
        let mut macs = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            let mut out = Vec::new();
            prev = seal_into(&mut out, &key, i as u64, &prev, b);
            key.evolve();
            lines.push(out);
            macs.push(prev.clone());
        }
        Chain {
            lines,
            macs,
            key_next: key,
        }
    }

    fn signs(n: usize) -> Vec<String> {
        (0..n).map(|i| sign(i as u32 % 3 + 1)).collect()
    }

    impl Chain {
        fn state(&self) -> ChainState {
            ChainState {
                next_seq: self.lines.len() as u64,
                prev_mac: self.macs.last().cloned().unwrap_or(ZERO_MAC_HEX.into()),
                key: self.key_next.clone(),
                log_dev: 0,
                log_ino: 0,
                log_size: 0,
                lost_reported: 0,
            }
        }
        fn joined(&self, order: &[usize]) -> Vec<u8> {
            order.iter().flat_map(|&i| self.lines[i].clone()).collect()
        }
        fn all(&self) -> Vec<u8> {
            self.lines.concat()
        }
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn run(files: &[&[u8]], state: Option<ChainState>) -> VerifyReport {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, b)| write(&dir, &format!("log.{i}"), b))
            .collect();
        verify_files(&paths, &VerifyOptions::new(k0(), state)).unwrap()
    }

    fn problem(r: &VerifyReport) -> &Problem {
        r.problem.as_ref().expect("a problem")
    }

    #[test]
    fn intact_chain_with_lifecycle_and_summary() {
        let bodies = vec![
            body(1, "start", None, ""),
            body(1, "attach", Some("C_Initialize"), ""),
            body(2, "attach", Some("C_Initialize"), ""),
            body(1, "intent", Some("C_Sign"), ""),
            body(
                1,
                "outcome",
                Some("C_Sign"),
                r#","rv":"CKR_OK","dur_us":3,"intent":3"#,
            ),
            body(
                2,
                "outcome",
                Some("C_Login"),
                r#","rv":"CKR_PIN_INCORRECT","dur_us":9"#,
            ),
            body(
                1,
                "gap",
                None,
                r#","lost":7,"since":"2026-11-26T03:12:45.000001Z""#,
            ),
            body(1, "close", Some("C_Finalize"), r#","note":"opaque \u0007""#),
        ];
        let c = chain(&bodies);
        let r = run(&[&c.all()], Some(c.state()));
        assert_eq!(r.problem, None);
        assert!(r.intact && r.state_checked && r.closed_cleanly);
        assert_eq!(r.unclosed_pids, vec![2]);
        assert_eq!(r.next_seq, 8);
        assert_eq!(r.head_mac, c.macs[7]);
        let s = &r.summary;
        assert_eq!(s.records, 8);
        assert_eq!((s.first_seq, s.last_seq), (Some(0), Some(7)));
        assert_eq!(s.first_ts.as_deref(), Some("2026-11-26T03:12:45.000001Z"));
        assert_eq!(s.process_count, 2);
        assert_eq!(s.processes[1].pid, 2);
        assert_eq!(s.processes[1].records, 2);
        assert_eq!(s.per_fn["C_Sign"], 2);
        assert_eq!(s.per_rv["CKR_PIN_INCORRECT"], 1);
        assert_eq!(s.per_ev["attach"], 2);
        assert_eq!((s.gaps, s.lost), (1, 7));
        // The JSON form uses snake_case names.
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["summary"]["per_ev"]["close"], 1);
    }

    #[test]
    fn empty_log_is_intact_and_not_closed() {
        let r = run(&[b""], Some(chain(&[]).state()));
        assert!(r.intact);
        assert!(!r.closed_cleanly);
        assert_eq!(r.summary.records, 0);
        assert_eq!(r.summary.last_seq, None);
    }

    #[test]
    fn altered_byte_in_a_middle_record() {
        let c = chain(&signs(6));
        let mut log = c.all();
        let at = c.lines[..3].iter().map(Vec::len).sum::<usize>() + 150;
        log[at] ^= 0x01;
        let r = run(&[&log], Some(c.state()));
        let p = problem(&r);
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 4, Some(3)));
        assert_eq!(r.summary.records, 3);
        assert_eq!(r.next_seq, 3);
    }

    #[test]
    fn altered_mac_digit_seq_and_non_json() {
        let c = chain(&signs(4));
        // A changed seq: mac checked under the claimed seq's key.
        let mut log = c.all();
        let at = c.lines[0].len() + c.lines[1].len() + br#"{"v":1,"seq":"#.len();
        log[at] = b'3';
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 3, Some(3)));
        // An uppercased mac digit: not a well-formed tail.
        let mut lines = c.lines.clone();
        let n = lines[1].len();
        lines[1][n - 5] = b'A';
        let p = problem(&run(&[&lines.concat()], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 2, Some(1)));
        // A blank line in the middle.
        let log = [c.lines[0].clone(), b"\n".to_vec(), c.lines[1].clone()].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 2, None));
    }

    #[test]
    fn wrong_key_fails_at_the_first_line() {
        let c = chain(&signs(2));
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "log", &c.all());
        let opts = VerifyOptions::new(ChainKey::from_bytes([1; 32]), None);
        let r = verify_files(&[p], &opts).unwrap();
        let p = problem(&r);
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 1, Some(0)));
    }

    #[test]
    fn prev_that_does_not_link_is_altered() {
        // A record sealed with the right key but the wrong prev (a forked chain).
        let c = chain(&signs(3));
        let mut key = k0();
        key.evolve();
        key.evolve();
        let mut forged = Vec::new();
        seal_into(&mut forged, &key, 2, &c.macs[0], &sign(1));
        let log = [c.lines[0].clone(), c.lines[1].clone(), forged].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 3, Some(2)));
        assert!(p.detail.contains("prev"), "{}", p.detail);
    }

    #[test]
    fn deleted_line_is_missing() {
        let c = chain(&signs(6));
        let log = c.joined(&[0, 1, 2, 4, 5]);
        let r = run(&[&log], Some(c.state()));
        let p = problem(&r);
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Missing, 4, Some(4)));
        assert!(p.detail.contains("seq 3"), "{}", p.detail);
        assert_eq!(r.summary.records, 3);
    }

    #[test]
    fn log_starting_after_seq_0_is_missing() {
        let c = chain(&signs(4));
        let p = problem(&run(&[&c.joined(&[2, 3])], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Missing, 1, Some(2)));
        assert!(p.detail.contains("seq 0..1"), "{}", p.detail);
    }

    #[test]
    fn inserted_copy_of_an_earlier_line() {
        let c = chain(&signs(6));
        let log = c.joined(&[0, 1, 2, 3, 1, 4, 5]);
        let p = problem(&run(&[&log], Some(c.state()))).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Inserted, 5, Some(1)));
        // An adjacent duplicate.
        let p = problem(&run(&[&c.joined(&[0, 1, 1, 2])], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Inserted, 3, Some(1)));
    }

    #[test]
    fn swapped_adjacent_lines_are_reordered() {
        let c = chain(&signs(6));
        let log = c.joined(&[0, 1, 3, 2, 4, 5]);
        let r = run(&[&log], Some(c.state()));
        let p = problem(&r);
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Reordered, 3, Some(3))
        );
        assert!(p.detail.contains("line 4"), "{}", p.detail);
        assert_eq!(r.summary.records, 2);
    }

    #[test]
    fn cut_off_tail_is_truncated_only_with_a_state() {
        let c = chain(&signs(6));
        let log = c.joined(&[0, 1, 2, 3]);
        let r = run(&[&log], Some(c.state()));
        let p = problem(&r);
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Truncated, 4, Some(3))
        );
        assert!(p.detail.contains("2 more record(s)"), "{}", p.detail);
        assert!(p.detail.contains("seq 4..5"), "{}", p.detail);
        assert_eq!(r.summary.records, 4);
        let r = run(&[&log], None);
        assert!(r.intact && !r.state_checked);
    }

    /// Issue 15 §2: every record verified but the end not checked is its own verdict (exit
    /// status 3), named by why: no state, a state not wanted, a state behind the log. A
    /// problem comes first; a state at the log's end checks it (0).
    #[test]
    fn an_end_not_checked_is_its_own_verdict() {
        let c = chain(&signs(6));
        let verdict = |r: &VerifyReport| (r.exit_status, r.end_unchecked, r.intact);
        let cut = c.joined(&[0, 1, 2, 3]);

        // The tail cut, the state gone: every record present verifies, the end is unknown.
        let r = run(&[&cut], None);
        assert_eq!(verdict(&r), (3, Some(EndUnchecked::NoStateFile), true));
        assert_eq!(r.state_next_seq, None);
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "log", &cut);
        let mut opts = VerifyOptions::new(k0(), None);
        opts.state_not_wanted = true;
        let r = verify_files(std::slice::from_ref(&p), &opts).unwrap();
        assert_eq!(verdict(&r), (3, Some(EndUnchecked::NoStateOption), true));

        // An older state beside the whole log: accepted (roll-forward), but not the end.
        let r = run(&[&c.all()], Some(chain(&signs(2)).state()));
        assert_eq!(verdict(&r), (3, Some(EndUnchecked::StateBehindLog), true));
        assert_eq!((r.state_next_seq, r.next_seq), (Some(2), 6));
        let words = EndUnchecked::StateBehindLog.describe(r.state_next_seq, r.next_seq);
        assert!(
            words.contains("up to seq 1 (its next seq is 2)")
                && words.contains("goes on to seq 5, 4 record(s) later"),
            "{words}"
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["end_unchecked"], "state_behind_log");
        assert_eq!(j["exit_status"], 3);

        // The state of exactly the log: checked.
        let r = run(&[&c.all()], Some(c.state()));
        assert_eq!(verdict(&r), (0, None, true));
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["end_unchecked"], serde_json::Value::Null);
        assert_eq!(j["exit_status"], 0);

        // A problem takes precedence, with or without a state.
        let mut altered = cut.clone();
        altered[c.lines[0].len() + 100] ^= 1;
        for st in [None, Some(chain(&signs(1)).state())] {
            let r = run(&[&altered], st);
            assert_eq!(verdict(&r), (1, None, false));
        }
    }

    /// Gap records past a state that is behind the log (a writer killed between its write and
    /// its state store) reported losses the state still counts as unreported: they are taken
    /// off what verify says is unreported, and gap records the state already covers are not.
    #[test]
    fn gap_records_past_a_state_behind_the_log_count_as_reported() {
        let gap = |lost: u64| body(9, "gap", None, &format!(r#","lost":{lost}"#));
        let mut bodies = signs(2);
        bodies.push(gap(3));
        bodies.extend(signs(2));
        bodies.push(gap(5));
        let c = chain(&bodies);
        let state_after_first_gap = chain(&bodies[..4]).state();
        let r = run(&[&c.all()], Some(state_after_first_gap));
        assert!(r.intact, "{:?}", r.problem);
        assert_eq!(r.lost_reported_past_state, 5);
        let from_state = UnreportedLost {
            lost: 7,
            since: None,
        };
        let left = from_state.less(r.lost_reported_past_state);
        assert_eq!(left.map(|u| u.lost), Some(2));
        let all_reported = UnreportedLost {
            lost: 5,
            since: None,
        };
        let r = run(&[&c.all()], Some(chain(&bodies[..4]).state()));
        assert_eq!(all_reported.less(r.lost_reported_past_state), None);
    }

    #[test]
    fn replaced_tail_and_state_behind_log() {
        let c = chain(&signs(5));
        let mut st = c.state();
        st.prev_mac = c.macs[0].clone();
        let p = problem(&run(&[&c.all()], Some(st))).clone();
        assert_eq!(p.kind, ProblemKind::Truncated);
        assert!(
            p.detail.contains("not the state's prev mac"),
            "{}",
            p.detail
        );

        // A state behind the log whose mac matches the log there: a writer stopped between
        // its log and state writes; the next writer rolls forward. Intact.
        let older = chain(&signs(3)).state();
        let r = run(&[&c.all()], Some(older));
        assert!(r.intact, "{:?}", r.problem);

        // Behind, but naming a record the log does not have at that seq: a problem.
        let mut other = chain(&signs(3)).state();
        other.prev_mac = c.macs[0].clone();
        let p = problem(&run(&[&c.all()], Some(other))).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Truncated, 5, Some(4))
        );
        assert!(p.detail.contains("state behind log"), "{}", p.detail);
        assert!(p.detail.contains("does not match"), "{}", p.detail);
    }

    /// K_n, evolved from K_0.
    fn key_at(n: u64) -> ChainKey {
        let mut key = k0();
        for _ in 0..n {
            key.evolve();
        }
        key
    }

    #[test]
    fn state_whose_key_is_not_the_chains_key_at_its_seq_is_refused() {
        let c = chain(&signs(6));
        let forged_detail = "the state file is forged or corrupt";
        // The log cut after seq 3, beside a state for exactly that log (seq and prev can be
        // read from the log) with a key that is not K_4: the cut would go unnoticed.
        let cut = c.joined(&[0, 1, 2, 3]);
        let forged_at = |next_seq: u64, prev_mac: &str, key: ChainKey| ChainState {
            next_seq,
            prev_mac: prev_mac.to_string(),
            key,
            log_dev: 0,
            log_ino: 1,
            log_size: 0,
            lost_reported: 0,
        };
        for (what, key) in [
            ("zeros", ChainKey::from_bytes([0; 32])),
            ("K_0", k0()),
            // A thief with the current key K_6 cannot go back to K_4.
            ("a later key", c.key_next.clone()),
        ] {
            let r = run(&[&cut], Some(forged_at(4, &c.macs[3], key)));
            let p = problem(&r);
            assert_eq!(
                (p.kind, p.line, p.seq),
                (ProblemKind::Truncated, 4, Some(3)),
                "{what}"
            );
            assert!(p.detail.contains("key is not K_4"), "{what}: {}", p.detail);
            assert!(p.detail.contains(forged_detail), "{what}: {}", p.detail);
            assert_eq!(r.summary.records, 4, "{what}");
        }
        // The real K_4: the same state is one a writer wrote.
        assert!(run(&[&cut], Some(forged_at(4, &c.macs[3], key_at(4)))).intact);

        // A state behind the log, its prev matching: accepted only with its seq's key.
        let behind = forged_at(2, &c.macs[1], key_at(3));
        let p = problem(&run(&[&c.all()], Some(behind))).clone();
        assert!(p.detail.contains("key is not K_2"), "{}", p.detail);
        assert!(run(&[&c.all()], Some(forged_at(2, &c.macs[1], key_at(2)))).intact);

        // A state at seq 0 naming an inode (what a writer killed before its first state update
        // leaves): accepted beside records only with K_0 and prev of 64 zeros.
        let genesis = forged_at(0, ZERO_MAC_HEX, key_at(1));
        let p = problem(&run(&[&cut], Some(genesis))).clone();
        assert!(p.detail.contains("key is not K_0"), "{}", p.detail);
        assert!(run(&[&cut], Some(forged_at(0, ZERO_MAC_HEX, k0()))).intact);
        let p = problem(&run(&[&cut], Some(forged_at(0, &c.macs[0], k0())))).clone();
        assert!(p.detail.contains("prev is not 64 zeros"), "{}", p.detail);

        // Across rotated files: K_n is the chain's key, whichever file holds seq n-1.
        let (older, current) = (c.joined(&[0, 1, 2]), c.joined(&[3, 4, 5]));
        let mut rotated = c.state();
        assert!(run(&[&older, &current], Some(rotated.clone())).intact);
        rotated.key = key_at(3);
        let p = problem(&run(&[&older, &current], Some(rotated))).clone();
        assert!(p.detail.contains("key is not K_6"), "{}", p.detail);
        assert!(p.file.ends_with("log.1"), "{}", p.file.display());
    }

    #[test]
    fn torn_last_line() {
        let c = chain(&signs(4));
        let mut log = c.all();
        log.truncate(log.len() - 30);
        // The state of the three complete records: a writer died in its fourth write.
        let r = run(&[&log], Some(chain(&signs(3)).state()));
        let p = problem(&r);
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::TornLastLine, 4, Some(3))
        );
        assert_eq!(r.summary.records, 3);

        // Only the newline missing: the record verifies but the line is still torn.
        let mut log = c.all();
        log.pop();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::TornLastLine, 4, Some(3))
        );

        // Torn inside the prefix: the seq cannot be read.
        let log = [c.lines[0].clone(), b"{\"v\":1,\"se".to_vec()].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::TornLastLine, 2, None)
        );

        // The same fragment followed by more lines is an alteration, not a torn write.
        let log = [b"{\"v\":1,\"se\n".to_vec(), c.lines[0].clone()].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line), (ProblemKind::Altered, 1));
    }

    #[test]
    fn torn_last_line_after_a_cut_tail_is_truncated() {
        let c = chain(&signs(8));
        // Four records kept, then the first 100 bytes of a later one (junk without a newline),
        // beside the state of all eight: the state was stored after the eighth write completed.
        let junk = &c.lines[6][..100];
        let log = [c.joined(&[0, 1, 2, 3]), junk.to_vec()].concat();
        let r = run(&[&log], Some(c.state()));
        let p = problem(&r);
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Truncated, 5, Some(3))
        );
        assert!(
            p.detail.contains("4 more record(s) (seq 4..7)"),
            "{}",
            p.detail
        );
        assert!(
            p.detail.contains("the last line, 5, is torn"),
            "{}",
            p.detail
        );
        assert!(p.file.ends_with("log.0"), "{}", p.file.display());
        assert_eq!(r.summary.records, 4);

        // The same cut with a trailing empty file (the current log just after a rotation): the
        // problem is still where the torn line is.
        let r = run(&[&log, b""], Some(c.state()));
        let p = problem(&r);
        assert_eq!((p.kind, p.line), (ProblemKind::Truncated, 5));
        assert!(p.file.ends_with("log.0"), "{}", p.file.display());

        // A state that is not the chain's is reported over a torn line too.
        let mut forged = chain(&signs(4)).state();
        forged.key = k0();
        let p = problem(&run(&[&log], Some(forged))).clone();
        assert_eq!((p.kind, p.line), (ProblemKind::Truncated, 5));
        assert!(p.detail.contains("forged or corrupt"), "{}", p.detail);

        // Without a state, or with the state of the records present, it is a torn write.
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line), (ProblemKind::TornLastLine, 5));
        let p = problem(&run(&[&log], Some(chain(&signs(4)).state()))).clone();
        assert_eq!((p.kind, p.line), (ProblemKind::TornLastLine, 5));
    }

    #[test]
    fn a_last_line_with_its_newline_is_not_torn() {
        let c = chain(&signs(3));
        // A complete last record with a carriage return before its newline.
        let mut crlf = c.lines[2].clone();
        crlf.insert(crlf.len() - 1, b'\r');
        let log = [c.joined(&[0, 1]), crlf].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 3, Some(2)));
        assert!(p.detail.contains("carriage return"), "{}", p.detail);
        assert!(!p.detail.contains("torn"), "{}", p.detail);

        // A fragment that ends in a newline.
        let log = [c.lines[0].clone(), b"{\"v\":1,\"se\n".to_vec()].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 2, None));
    }

    #[test]
    fn chain_across_two_files() {
        let c = chain(&signs(7));
        let (a, b) = (c.joined(&[0, 1, 2]), c.joined(&[3, 4, 5, 6]));
        let r = run(&[&a, &b], Some(c.state()));
        assert!(r.intact, "{:?}", r.problem);
        assert_eq!(r.summary.records, 7);

        // An empty file in between (just rotated) changes nothing.
        assert!(run(&[&a, b"", &b], Some(c.state())).intact);

        // Line numbers are per file.
        let mut b2 = b.clone();
        b2[c.lines[3].len() + 100] ^= 0x20;
        let p = problem(&run(&[&a, &b2], Some(c.state()))).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 2, Some(4)));
        assert!(p.file.ends_with("log.1"));

        // Files in the wrong order: seq 0 turns up a few lines later.
        let p = problem(&run(&[&b, &a], None)).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Reordered, 1, Some(3))
        );
        assert!(p.file.ends_with("log.0") && p.detail.contains("log.1:1"));

        // Truncated: the location is the last line of the last file.
        let p = problem(&run(&[&a, &c.joined(&[3, 4])], Some(c.state()))).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Truncated, 2, Some(4))
        );
        assert!(p.file.ends_with("log.1"));
    }

    #[test]
    fn reordered_across_a_file_boundary() {
        let c = chain(&signs(4));
        let p = problem(&run(&[&c.joined(&[0, 2]), &c.joined(&[1, 3])], None)).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Reordered, 2, Some(2))
        );
        assert!(p.detail.contains("log.1:1"), "{}", p.detail);
    }

    #[test]
    fn a_two_mib_line_is_reported_not_buffered() {
        let c = chain(&signs(3));
        let mut big = br#"{"v":1,"seq":2,"prev":""#.to_vec();
        big.resize(2 << 20, b'x');
        big.push(b'\n');
        let log = [c.lines[0].clone(), c.lines[1].clone(), big].concat();
        let r = run(&[&log], None);
        let p = problem(&r);
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Malformed, 3, None));
        assert!(p.detail.contains("longer than the limit"), "{}", p.detail);
        assert_eq!(r.summary.records, 2);

        // A sealed (valid) record over the limit is also refused.
        let huge = format!(
            r#"{{"ts":"t","host":"h","pid":1,"tid":1,"uid":0,"exe":"/x","ev":"intent","pad":"{}"}}"#,
            "y".repeat(2 << 20)
        );
        let c = chain(&[huge]);
        let p = problem(&run(&[&c.all()], None)).clone();
        assert_eq!((p.kind, p.seq), (ProblemKind::Malformed, Some(0)));
    }

    #[test]
    fn bounded_line_reader() {
        let mut r = io::BufReader::with_capacity(4, &b"abcdefgh\nxy\n\nz"[..]);
        let mut buf = Vec::new();
        // Over the cap: reported as soon as the cap is passed (the reader does not look for
        // the line's end), keeping the first `cap` bytes.
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            Some((false, true, 8))
        );
        assert_eq!(buf, b"abcde");
        // What is left of that line comes next; a caller stops at the oversized line.
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            Some((true, false, 0))
        );
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            Some((true, false, 2))
        );
        assert_eq!(buf, b"xy");
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            Some((true, false, 0))
        );
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            Some((false, false, 1))
        );
        assert_eq!(read_bounded_line(&mut r, &mut buf, 5).unwrap(), None);
    }

    /// Seals `bodies` (each `{...}`, any bytes) as seq 0.. under K_0, as a key holder can.
    fn chain_of_bytes(bodies: &[Vec<u8>]) -> Chain {
        let mut key = k0();
        let mut prev = ZERO_MAC_HEX.to_string();
        let mut lines = Vec::new();
        let mut macs = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            let mut line = format!(r#"{{"v":1,"seq":{i},"prev":"{prev}","#).into_bytes();
            line.extend_from_slice(&b[1..b.len() - 1]);
            prev = hex_lower(&key.mac(&line));
            line.extend_from_slice(format!(r#","mac":"{prev}"}}"#).as_bytes());
            line.push(b'\n');
            key.evolve();
            lines.push(line);
            macs.push(prev.clone());
        }
        Chain {
            lines,
            macs,
            key_next: key,
        }
    }

    /// Each body sealed as seq 2 after two good records: `Some(text)` if verify refuses it as
    /// malformed at line 3 (with `text` in the detail), `None` if the log is intact.
    fn third_line(body: &[u8]) -> Option<String> {
        let bodies = [sign(1).into_bytes(), sign(2).into_bytes(), body.to_vec()];
        let c = chain_of_bytes(&bodies);
        let r = run(&[&c.all()], Some(c.state()));
        let p = r.problem?;
        assert_eq!(
            (p.kind, p.line, p.seq, r.summary.records),
            (ProblemKind::Malformed, 3, Some(2), 2),
            "{}",
            p.detail
        );
        assert!(
            p.detail
                .starts_with("mac verifies but the line is not a valid v1 record"),
            "{}",
            p.detail
        );
        Some(p.detail)
    }

    /// Issue 15 §3: lines sealed with K_0 that JSON readers read in two ways (jq takes the
    /// last of two members of one name, serde's derive refuses the line, a lone surrogate
    /// makes jq refuse it, bytes that are not UTF-8 are dropped or replaced) are malformed,
    /// wherever they are, also in members the verifier does not use; the same lines without
    /// the ambiguity verify.
    #[test]
    fn lines_that_json_readers_could_read_two_ways_are_malformed() {
        let rec = |extra: &str| sign(1).replace(r#","dur_us":3"#, extra).into_bytes();
        let ok = |extra: &str| {
            let body = rec(extra);
            assert_eq!(
                third_line(&body),
                None,
                "{}",
                String::from_utf8_lossy(&body)
            );
        };
        let refused = |extra: &[u8], why: &str| {
            let mut body = rec("");
            body.pop();
            body.extend_from_slice(extra);
            body.push(b'}');
            let detail = third_line(&body)
                .unwrap_or_else(|| panic!("verified: {}", String::from_utf8_lossy(&body)));
            assert!(detail.contains(why), "{why}: {detail}");
        };

        // A member name twice: members verify reads, members it does not, at any depth, and
        // a name spelled with an escape.
        let twice = "appears twice in one object";
        for dup in [
            r#","slot":1,"slot":2"#,
            r#","key":{"handle":1},"key":{"handle":2}"#,
            r#","out":"returned","out":"withheld""#,
            r#","note":"a","note":"b""#,
            r#","created":[],"created":[{"handle":9}]"#,
            r#","ts":"2026-11-26T03:12:46.000000Z""#,
            r#","rv":"CKR_GENERAL_ERROR""#,
            r#","exe":"/y""#,
            r#","slot":1,"slot":2"#,
            r#","key":{"handle":1,"label":"a","label":"b"}"#,
            r#","created":[{"handle":1},{"handle":2,"id":{"hex":"01","hex":"02"}}]"#,
            r#","template":[{"type":"CKA_LABEL","len":1,"value":"x","len":2}]"#,
        ] {
            refused(dup.as_bytes(), twice);
        }
        // The same names in different objects are not duplicates.
        ok(r#","key":{"handle":1,"label":"a"},"key2":{"handle":1,"label":"a"},"slot":1"#);
        ok(r#","created":[{"handle":1,"id":{"hex":"01"}},{"handle":2,"id":{"hex":"01"}}]"#);

        // A \u escape that is not UTF-16: lone surrogates, in values and in names; a pair is
        // one character and verifies.
        for lone in [
            r#","note":"\ud800""#,
            r#","note":"\udc00x""#,
            r#","note":"\ud800\u0041""#,
            r#","note":"\udbff\udbff""#,
            r#","\ud800":1"#,
            r#","key":{"handle":1,"label":"\udfff"}"#,
            r#","template":[{"type":"CKA_LABEL","len":1,"value":"\ud83d"}]"#,
            r#","dur_us":3,"x":["\ud800"]"#,
        ] {
            refused(lone.as_bytes(), "is not UTF-16 (a lone surrogate)");
        }
        ok(r#","note":"\ud83d\ude00 \u00e9 \u0000""#);

        // Bytes that are not UTF-8, in members verify does not read: a stray byte, an
        // overlong encoding, an encoded surrogate, a truncated sequence, in a name.
        for bad in [
            &b",\"note\":\"\xff\""[..],
            b",\"note\":\"\xc0\x80\"",
            b",\"note\":\"\xed\xa0\x80\"",
            b",\"note\":\"\xe2\x82\"",
            b",\"n\xffte\":1",
            b",\"key\":{\"handle\":1,\"label\":\"\xfe\"}",
        ] {
            refused(bad, "not UTF-8");
        }
        ok(",\"note\":\"\u{e9}\u{1f600}\"");
    }

    /// Issue 15 §5: `exe` is text, or `{"hex": …}` for a path that is not UTF-8; the two
    /// paths that `display()` made alike are two processes in the summary. Hex that is not
    /// the canonical form of a path that is not UTF-8 is malformed.
    #[test]
    fn exe_in_hex_is_read_losslessly_and_only_in_its_one_form() {
        let with_exe = |pid: u32, exe: &str| {
            sign(pid)
                .replace(r#""exe":"/x""#, &format!(r#""exe":{exe}"#))
                .into_bytes()
        };
        let bodies = [
            with_exe(1, r#"{"hex":"2f746d702f61ff"}"#),
            with_exe(1, r#"{"hex":"2f746d702f61fe"}"#),
            with_exe(1, r#""/tmp/a""#),
            with_exe(1, r#"{"hex":"2f746d702f61ff"}"#),
        ];
        let c = chain_of_bytes(&bodies);
        let r = run(&[&c.all()], Some(c.state()));
        assert!(r.intact, "{:?}", r.problem);
        let exes: Vec<(ByteStr, u64)> = r
            .summary
            .processes
            .iter()
            .map(|p| (p.exe.clone(), p.records))
            .collect();
        let hex = |h: &str| ByteStr::Hex { hex: h.into() };
        assert_eq!(
            exes,
            vec![
                (ByteStr::Text("/tmp/a".into()), 1),
                (hex("2f746d702f61fe"), 1),
                (hex("2f746d702f61ff"), 2),
            ]
        );
        assert_eq!(r.summary.process_count, 3);
        let j = serde_json::to_value(&r.summary.processes).unwrap();
        assert_eq!(j[1]["exe"]["hex"], "2f746d702f61fe");

        for (exe, why) in [
            (r#"{"hex":"2f746d702f61"}"#, "holds UTF-8"),
            (r#"{"hex":"2F746D702F61FF"}"#, "not lowercase hex"),
            (r#"{"hex":"2f7"}"#, "not lowercase hex"),
            (r#"{"hex":"+f"}"#, "not lowercase hex"),
            (r#"{"hex":"ff","x":1}"#, "unknown field"),
            (r#"{"hex":"ff","hex":"fe"}"#, "twice"),
            (r#"{}"#, "missing field `hex`"),
            (r#"["ff"]"#, "invalid type"),
        ] {
            let detail = third_line(&with_exe(1, exe)).unwrap_or_else(|| panic!("{exe}"));
            assert!(detail.contains(why), "{exe}: {detail}");
        }
    }

    #[test]
    fn valid_mac_but_not_a_record_is_malformed() {
        let c = chain(&[r#"{"ev":"intent"}"#.to_string()]);
        let p = problem(&run(&[&c.all()], None)).clone();
        assert_eq!((p.kind, p.seq), (ProblemKind::Malformed, Some(0)));
        assert!(p.detail.contains("ts"), "{}", p.detail);
    }

    #[test]
    fn absurd_seq_jump_is_altered_without_evolving_that_far() {
        let c = chain(&signs(1));
        let mut far = Vec::new();
        seal_into(&mut far, &k0(), 50_000_000, &c.macs[0], &sign(1));
        let log = [c.lines[0].clone(), far].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Altered, 2, Some(50_000_000))
        );
    }

    #[test]
    fn visitor_sees_each_verified_line_once_in_order_and_can_stop() {
        let c = chain(&signs(6));
        let dir = tempfile::tempdir().unwrap();
        let opts = VerifyOptions::new(k0(), Some(c.state()));
        let seen = |log: &[u8]| {
            let p = write(&dir, "log", log);
            let mut seen: Vec<(u64, Vec<u8>)> = Vec::new();
            let r = verify_files_with(std::slice::from_ref(&p), &opts, |line, seq| {
                seen.push((seq, line.to_vec()));
                ControlFlow::Continue(())
            })
            .unwrap()
            .unwrap();
            (r, seen)
        };
        // Intact: every line, byte for byte (without the newline), with its seq.
        let (r, all) = seen(&c.all());
        assert!(r.intact);
        assert_eq!(r, run(&[&c.all()], Some(c.state())));
        assert_eq!(all.len(), 6);
        for (i, (seq, line)) in all.iter().enumerate() {
            assert_eq!(*seq, i as u64);
            assert_eq!([line.as_slice(), b"\n"].concat(), c.lines[i]);
        }
        // Altered line 4: only the three verified records before it are visited.
        let mut log = c.all();
        log[c.lines[..3].iter().map(Vec::len).sum::<usize>() + 100] ^= 1;
        let (r, some) = seen(&log);
        assert_eq!(r.problem.unwrap().seq, Some(3));
        assert_eq!(some.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 1, 2]);

        // Break stops the walk: no report.
        let p = write(&dir, "log2", &c.all());
        let mut n = 0;
        let r = verify_files_with(std::slice::from_ref(&p), &opts, |_, _| {
            n += 1;
            if n == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert!(r.is_none());
        assert_eq!(n, 2);
    }

    #[test]
    fn unreadable_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = verify_files(
            std::slice::from_ref(&missing),
            &VerifyOptions::new(k0(), None),
        )
        .unwrap_err();
        assert_eq!(err.path, missing);
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
    }
}
