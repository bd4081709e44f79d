//! `p11audit show`: the records of a log for people, one line per call.
//!
//! An acting call writes an intent record before it is forwarded and an outcome record (whose
//! `intent` member is the intent's seq) after; show joins the two into one line. Lines come in
//! the order calls started (the seq of their first record). An intent whose outcome never
//! appears (the process died, or the outcome was lost) is shown as such.
//!
//! With `json`, the matching records' lines are written unchanged, in log order: with no filter
//! that is the log itself. A call's intent and outcome are selected together.
//!
//! Streaming: records are written as soon as everything before them is decided. Only intents
//! still waiting for their outcome, and the records after the oldest of them, are held; when
//! more than `max_pending` intents wait or more than `max_held_bytes` are held, the oldest
//! waiting intent is given up on and shown as without outcome (its outcome, if it comes later,
//! is shown on its own line).

use super::{escape, format_duration, quote, Period, Progress, RecView};
use crate::reader::verify::{verify_files_with, VerifyIoError, VerifyOptions, VerifyReport};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

/// Default bound on intents waiting for their outcome.
pub const DEFAULT_MAX_PENDING: usize = 65_536;
/// Default bound on the bytes held back while the oldest intent waits.
pub const DEFAULT_MAX_HELD_BYTES: usize = 64 << 20;

/// Which calls to show. Empty lists select everything; all given conditions must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The call started (its first record's `ts`) in this period.
    pub period: Period,
    pub pids: Vec<u32>,
    pub uids: Vec<u32>,
    /// Function names, compared without regard to case.
    pub functions: Vec<String>,
    /// Return values (`CKR_PIN_INCORRECT`, or `0x…` for vendor codes), without regard to case.
    pub rvs: Vec<String>,
    /// Only failures: an `rv` other than `CKR_OK`, an intent without outcome, a `gap`.
    pub failures: bool,
    /// Labels or hex ids of an object the call names (`key`, `key2`, `created`).
    pub keys: Vec<String>,
}

impl Filter {
    /// Whether the call made of `intent` and `rec` (its outcome, or a record on its own) is
    /// selected. At least one of them is present.
    pub fn matches(&self, intent: Option<&RecView>, rec: Option<&RecView>) -> bool {
        let Some(first) = intent.or(rec) else {
            return false;
        };
        if !self.period.contains(&first.ts) {
            return false;
        }
        if !self.pids.is_empty() && !self.pids.contains(&first.pid) {
            return false;
        }
        if !self.uids.is_empty() && !self.uids.contains(&first.uid) {
            return false;
        }
        if !self.functions.is_empty()
            && !first
                .function()
                .is_some_and(|f| self.functions.iter().any(|w| w.eq_ignore_ascii_case(f)))
        {
            return false;
        }
        let rv = rec.and_then(RecView::rv);
        if !self.rvs.is_empty()
            && !rv.is_some_and(|rv| self.rvs.iter().any(|w| w.eq_ignore_ascii_case(rv)))
        {
            return false;
        }
        if self.failures {
            let failed = match rec {
                None => true, // an intent without outcome
                Some(r) => r.failed() || r.ev == "gap",
            };
            if !failed {
                return false;
            }
        }
        if !self.keys.is_empty() {
            let mut objects = intent.into_iter().chain(rec).flat_map(RecView::objects);
            if !objects.any(|o| self.keys.iter().any(|k| o.matches(k))) {
                return false;
            }
        }
        true
    }
}

/// How to show.
#[derive(Debug, Clone)]
pub struct ShowOptions {
    pub filter: Filter,
    /// Write the matching lines unchanged instead of one line per call.
    pub json: bool,
    pub max_pending: usize,
    pub max_held_bytes: usize,
}

impl ShowOptions {
    pub fn new(filter: Filter, json: bool) -> Self {
        ShowOptions {
            filter,
            json,
            max_pending: DEFAULT_MAX_PENDING,
            max_held_bytes: DEFAULT_MAX_HELD_BYTES,
        }
    }
}

/// What a run of show did.
#[derive(Debug)]
pub struct ShowSummary {
    /// The verifier's report; None when the output was closed (e.g. `| head`) and the walk
    /// stopped before the end of the log.
    pub verify: Option<VerifyReport>,
    /// Lines written (with `json`: records).
    pub written: u64,
    /// Intents shown as without outcome.
    pub without_outcome: u64,
    /// Of those, intents given up on because too many were waiting (their outcome may follow).
    pub given_up: u64,
    /// Verified records that are not records show understands (shown as such).
    pub unreadable: u64,
}

/// Why show stopped without a result.
#[derive(Debug)]
pub enum ShowError {
    /// A log file could not be read.
    Log(VerifyIoError),
    /// The output could not be written (other than being closed by the reader).
    Output(io::Error),
}

impl std::fmt::Display for ShowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShowError::Log(e) => e.fmt(f),
            ShowError::Output(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

/// The header of the human output.
pub fn header() -> String {
    row(
        "SEQ", "TIME", "PID", "UID", "EXE", "SESSION", "LOGIN", "FUNCTION", "RESULT", "DURATION",
        "DETAILS",
    )
}

#[allow(clippy::too_many_arguments)]
fn row(
    seq: &str,
    ts: &str,
    pid: &str,
    uid: &str,
    exe: &str,
    session: &str,
    login: &str,
    function: &str,
    result: &str,
    dur: &str,
    details: &str,
) -> String {
    let mut s = format!(
        "{seq:<13} {ts:<27} {pid:>7} {uid:>5} {exe:<20} {session:>7} {login:<6} {function:<20} {result:<22} {dur:>9}"
    );
    if !details.is_empty() {
        s.push_str("  ");
        s.push_str(details);
    }
    s.push('\n');
    s
}

/// Functions whose lines name the token.
const NAMES_TOKEN: &[&str] = &[
    "C_OpenSession",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_Login",
    "C_LoginUser",
];

/// Why an intent is shown without its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoOutcome {
    /// None came before the end of the log.
    AtEnd,
    /// Given up on: too many calls were waiting.
    GivenUp,
    /// The log stopped verifying before an outcome came: it may be past the problem.
    Unverified,
}

/// One call for people. `intent` and `rec` as in [`Filter::matches`]; `missing` when an intent
/// is shown without its outcome.
fn human_line(
    intent: Option<&RecView>,
    rec: Option<&RecView>,
    missing: Option<NoOutcome>,
) -> String {
    let Some(first) = intent.or(rec) else {
        return String::new();
    };
    let main = rec.unwrap_or(first);
    let seq = match (intent, rec) {
        (Some(i), Some(o)) => format!("{}>{}", i.seq, o.seq),
        _ => first.seq.to_string(),
    };
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let result = match (&*main.ev, missing) {
        (_, Some(_)) => "NO OUTCOME".to_string(),
        ("outcome", _) => main.rv().map_or_else(|| "-".to_string(), escape),
        ("gap", _) => "GAP".to_string(),
        (ev, _) => escape(ev),
    };
    let dur = match (missing, main.dur_us) {
        (None, Some(d)) => format_duration(d),
        _ => "-".to_string(),
    };

    let mut d: Vec<String> = Vec::new();
    if let Some(m) = &main.mechanism {
        d.push(format!("mech {}", m.display()));
    }
    if let Some(k) = &main.key {
        d.push(format!("key {}", k.display()));
    }
    if let Some(k) = &main.key2 {
        d.push(format!("key2 {}", k.display()));
    }
    if !main.created.is_empty() {
        let c: Vec<String> = main.created.iter().map(|c| c.display()).collect();
        d.push(format!("created {}", c.join(", ")));
    }
    if let Some(u) = &main.user_type {
        d.push(format!("user {}", escape(u)));
    }
    if let Some(u) = &main.username {
        d.push(format!("username {}", u.display()));
    }
    if let (Some(t), Some(f)) = (&main.token, main.function()) {
        if NAMES_TOKEN.contains(&f) {
            d.push(format!("token {}", t.label.display()));
        }
    }
    for (name, v) in [
        ("in", main.in_len),
        ("out", main.out_len),
        ("sig", main.sig_len),
    ] {
        if let Some(v) = v {
            d.push(format!("{name} {v}"));
        }
    }
    match main.out.as_deref() {
        Some("length_query") => d.push("(length query)".into()),
        Some("buffer_too_small") => d.push("(buffer too small)".into()),
        Some("returned") | None => {}
        Some(other) => d.push(format!("({})", escape(other))),
    }
    if let Some(c) = main.count {
        d.push(format!("count {c}"));
    }
    if let Some(i) = &main.interface {
        d.push(format!("interface {}", quote(i)));
    }
    if let Some(l) = main.lost {
        let since = main
            .since
            .as_deref()
            .map(|s| format!(" since {}", escape(s)))
            .unwrap_or_default();
        d.push(format!("lost {l} record(s){since}"));
    }
    if let Some(n) = &main.note {
        d.push(format!("note {}", quote(n)));
    }
    match missing {
        Some(NoOutcome::AtEnd) => {
            d.push("(no outcome in the log: the process may have died)".into())
        }
        Some(NoOutcome::GivenUp) => d.push(
            "(no outcome while too many other calls were waiting; it may follow on its own line)"
                .into(),
        ),
        Some(NoOutcome::Unverified) => d.push(
            "(no outcome before the log stopped verifying; it may be past the problem)".into(),
        ),
        None => {}
    }
    row(
        &seq,
        &escape(&first.ts),
        &first.pid.to_string(),
        &first.uid.to_string(),
        &first.exe.path_text(),
        &opt(main.session),
        &main
            .login
            .as_deref()
            .map_or_else(|| "-".to_string(), escape),
        &main.function().map_or_else(|| "-".to_string(), escape),
        &result,
        &dur,
        &d.join("  "),
    )
}

/// A record the verifier accepted but show cannot read as a record.
fn unreadable_line(seq: u64, err: &serde_json::Error) -> String {
    format!(
        "{seq:<13} (a verified record show cannot read: {})\n",
        escape(&err.to_string())
    )
}

/// One line of output waiting for the calls before it to be decided.
struct Entry {
    /// seq of the entry's first record; entries are in seq order.
    seq: u64,
    /// An intent waiting for its outcome.
    pending: bool,
    /// What to write once decided (empty: nothing).
    text: Vec<u8>,
    /// A pending intent's line.
    intent_line: Vec<u8>,
}

struct Shower<'o, W: Write> {
    opts: &'o ShowOptions,
    out: W,
    queue: VecDeque<Entry>,
    pending: usize,
    held: usize,
    written: u64,
    without_outcome: u64,
    given_up: u64,
    unreadable: u64,
    error: Option<io::Error>,
}

impl<W: Write> Shower<'_, W> {
    fn write(&mut self, text: &[u8]) {
        if text.is_empty() || self.error.is_some() {
            return;
        }
        match self.out.write_all(text) {
            Ok(()) => self.written += 1,
            Err(e) => self.error = Some(e),
        }
    }

    /// Writes every decided entry at the front.
    fn flush(&mut self) {
        while self.queue.front().is_some_and(|e| !e.pending) {
            let e = self.queue.pop_front().expect("checked");
            self.held -= e.text.len() + e.intent_line.len();
            self.write(&e.text);
        }
    }

    /// Adds a decided entry (written at once if nothing waits before it).
    fn decided(&mut self, seq: u64, text: Vec<u8>) {
        if self.queue.is_empty() {
            self.write(&text);
        } else if !text.is_empty() {
            self.held += text.len();
            self.queue.push_back(Entry {
                seq,
                pending: false,
                text,
                intent_line: Vec::new(),
            });
        }
    }

    fn raw(line: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(line.len() + 1);
        v.extend_from_slice(line);
        v.push(b'\n');
        v
    }

    /// Decides the pending intent at `idx` with `outcome` (None: shown without outcome, for
    /// the reason `missing`). Returns, in json mode, the text for the outcome's own line; None
    /// when the intent cannot be read, so the outcome must stand on its own.
    fn decide(
        &mut self,
        idx: usize,
        outcome: Option<(&RecView, &[u8])>,
        missing: Option<NoOutcome>,
    ) -> Option<Vec<u8>> {
        let entry = &mut self.queue[idx];
        let intent_line = std::mem::take(&mut entry.intent_line);
        let seq = entry.seq;
        entry.pending = false;
        self.pending -= 1;
        self.held -= intent_line.len();
        if missing.is_some() {
            self.without_outcome += 1;
        }
        if missing == Some(NoOutcome::GivenUp) {
            self.given_up += 1;
        }
        let rec = outcome.map(|o| o.0);
        let (text, outcome_text) = match RecView::parse(&intent_line) {
            Ok(iv) if !self.opts.filter.matches(Some(&iv), rec) => (Vec::new(), Some(Vec::new())),
            Ok(_) if self.opts.json => (
                Self::raw(&intent_line),
                Some(outcome.map(|o| Self::raw(o.1)).unwrap_or_default()),
            ),
            Ok(iv) => (
                human_line(Some(&iv), rec, missing).into_bytes(),
                Some(Vec::new()),
            ),
            Err(e) => {
                // Cannot happen for a record that verified; shown rather than hidden.
                self.unreadable += 1;
                let t = if !self.opts.json {
                    unreadable_line(seq, &e).into_bytes()
                } else if self.opts.filter_is_empty() {
                    Self::raw(&intent_line)
                } else {
                    Vec::new()
                };
                (t, None)
            }
        };
        self.held += text.len();
        self.queue[idx].text = text;
        outcome_text
    }

    /// Gives up on the oldest waiting intents while over the bounds.
    fn bound(&mut self) {
        while self.pending > self.opts.max_pending || self.held > self.opts.max_held_bytes {
            let Some(idx) = self.queue.iter().position(|e| e.pending) else {
                break;
            };
            self.decide(idx, None, Some(NoOutcome::GivenUp));
            self.flush();
        }
    }

    fn on_record(&mut self, line: &[u8], seq: u64) {
        if self.opts.json && self.opts.filter_is_empty() {
            // Everything is selected: the log passes through as it is.
            self.decided(seq, Self::raw(line));
            return;
        }
        let view = match RecView::parse(line) {
            Ok(v) => v,
            Err(e) => {
                self.unreadable += 1;
                let text = if self.opts.json {
                    if self.opts.filter_is_empty() {
                        Self::raw(line)
                    } else {
                        Vec::new()
                    }
                } else {
                    unreadable_line(seq, &e).into_bytes()
                };
                self.decided(seq, text);
                return;
            }
        };
        if view.ev == "intent" {
            self.pending += 1;
            self.held += line.len();
            self.queue.push_back(Entry {
                seq,
                pending: true,
                text: Vec::new(),
                intent_line: line.to_vec(),
            });
            self.bound();
            return;
        }
        if view.ev == "outcome" {
            if let Some(i) = view.intent {
                if let Ok(idx) = self.queue.binary_search_by_key(&i, |e| e.seq) {
                    if self.queue[idx].pending {
                        let joined = self.decide(idx, Some((&view, line)), None);
                        self.flush();
                        if let Some(outcome_text) = joined {
                            self.decided(seq, outcome_text);
                            return;
                        }
                    }
                }
            }
        }
        let text = if !self.opts.filter.matches(None, Some(&view)) {
            Vec::new()
        } else if self.opts.json {
            Self::raw(line)
        } else {
            human_line(None, Some(&view), None).into_bytes()
        };
        self.decided(seq, text);
    }

    /// After the last verified record; `intact` says whether the log verified to its end.
    fn finish(&mut self, intact: bool) {
        let why = if intact {
            NoOutcome::AtEnd
        } else {
            NoOutcome::Unverified
        };
        while let Some(idx) = self.queue.iter().position(|e| e.pending) {
            self.decide(idx, None, Some(why));
            self.flush();
        }
        self.flush();
        if self.error.is_none() {
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
    }
}

impl ShowOptions {
    fn filter_is_empty(&self) -> bool {
        let f = &self.filter;
        f.period.is_open()
            && f.pids.is_empty()
            && f.uids.is_empty()
            && f.functions.is_empty()
            && f.rvs.is_empty()
            && !f.failures
            && f.keys.is_empty()
    }
}

/// Verifies `paths` and writes the calls `opts` selects to `out` as it goes (with a header
/// line first, unless `opts.json`).
pub fn show<W: Write>(
    paths: &[PathBuf],
    verify: &VerifyOptions,
    opts: &ShowOptions,
    out: W,
    progress: &mut Progress,
) -> Result<ShowSummary, ShowError> {
    let mut s = Shower {
        opts,
        out,
        queue: VecDeque::new(),
        pending: 0,
        held: 0,
        written: 0,
        without_outcome: 0,
        given_up: 0,
        unreadable: 0,
        error: None,
    };
    if !opts.json {
        s.write(header().as_bytes());
        s.written = 0;
    }
    let report = verify_files_with(paths, verify, |line, seq| {
        progress.record(line.len());
        s.on_record(line, seq);
        if s.error.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .map_err(ShowError::Log)?;
    progress.finish();
    if let Some(r) = &report {
        s.finish(r.intact);
    }
    match s.error.take() {
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ShowSummary {
            verify: None,
            written: s.written,
            without_outcome: s.without_outcome,
            given_up: s.given_up,
            unreadable: s.unreadable,
        }),
        Some(e) => Err(ShowError::Output(e)),
        None => Ok(ShowSummary {
            verify: report,
            written: s.written,
            without_outcome: s.without_outcome,
            given_up: s.given_up,
            unreadable: s.unreadable,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::testlog::{body, log};

    fn run(bodies: &[String], opts: &ShowOptions) -> (String, ShowSummary) {
        let (_dir, path, vopts) = log(bodies);
        let mut out = Vec::new();
        let s = show(
            &[path],
            &vopts,
            opts,
            &mut out,
            &mut Progress::new(false, &[]),
        )
        .unwrap();
        (String::from_utf8(out).unwrap(), s)
    }

    fn intent(secs: u64, f: &str) -> String {
        body(secs, 1, 0, "intent", Some(f), r#","session":1"#)
    }

    fn outcome(secs: u64, f: &str, rv: &str, intent: u64) -> String {
        body(
            secs,
            1,
            0,
            "outcome",
            Some(f),
            &format!(r#","rv":"{rv}","dur_us":7,"intent":{intent},"session":1"#),
        )
    }

    #[test]
    fn waiting_intents_are_bounded_and_given_up_in_order() {
        let bodies = [
            intent(0, "C_Login"),                  // 0: given up (too many waiting)
            intent(1, "C_SignInit"),               // 1
            intent(2, "C_DestroyObject"),          // 2: never answered
            outcome(3, "C_Login", "CKR_OK", 0),    // 3: on its own line
            outcome(4, "C_SignInit", "CKR_OK", 1), // 4: joined with 1
        ];
        let mut opts = ShowOptions::new(Filter::default(), false);
        opts.max_pending = 2;
        let (out, s) = run(&bodies, &opts);
        let lines: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("0 ") && lines[0].contains("NO OUTCOME"));
        assert!(
            lines[0].contains("too many other calls were waiting"),
            "{}",
            lines[0]
        );
        assert!(lines[1].starts_with("1>4 ") && lines[1].contains("C_SignInit"));
        assert!(lines[2].starts_with("2 ") && lines[2].contains("NO OUTCOME"));
        assert!(
            lines[2].contains("the process may have died"),
            "{}",
            lines[2]
        );
        assert!(lines[3].starts_with("3 ") && lines[3].contains("C_Login"));
        assert!(lines[3].contains("CKR_OK") && lines[3].contains("7us"));
        assert_eq!((s.without_outcome, s.given_up), (2, 1));
        assert!(s.verify.unwrap().intact);

        // Bounding the bytes held has the same effect. (A filter that selects everything:
        // with no filter at all, json passes lines through without holding any.)
        let all = Filter {
            uids: vec![0],
            ..Default::default()
        };
        let mut opts = ShowOptions::new(all, true);
        opts.max_held_bytes = 10;
        let (out, s) = run(&bodies, &opts);
        assert_eq!(s.given_up, 3);
        // Every record once, in log order.
        let seqs: Vec<u64> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn json_keeps_log_order_and_selects_intent_with_its_outcome() {
        let bodies = [
            intent(0, "C_Login"),                                             // 0
            body(1, 2, 0, "outcome", Some("C_GetInfo"), r#","rv":"CKR_OK""#), // 1
            intent(2, "C_Login"),                                             // 2
            outcome(3, "C_Login", "CKR_PIN_INCORRECT", 0),                    // 3
            outcome(4, "C_Login", "CKR_OK", 2),                               // 4
        ];
        let seqs = |filter: Filter| {
            let (out, _) = run(&bodies, &ShowOptions::new(filter, true));
            out.lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                        .as_u64()
                        .unwrap()
                })
                .collect::<Vec<u64>>()
        };
        assert_eq!(seqs(Filter::default()), [0, 1, 2, 3, 4]);
        let failures = Filter {
            failures: true,
            ..Default::default()
        };
        assert_eq!(seqs(failures), [0, 3]);
        let ok = Filter {
            rvs: vec!["ckr_ok".into()],
            ..Default::default()
        };
        assert_eq!(seqs(ok), [1, 2, 4]);
        let pid2 = Filter {
            pids: vec![2],
            ..Default::default()
        };
        assert_eq!(seqs(pid2), [1]);
        // The period applies to when the call started (its intent).
        let from_2s = Filter {
            period: Period {
                since: crate::reader::parse_ts("2026-11-26T03:00:02Z"),
                until: None,
            },
            ..Default::default()
        };
        assert_eq!(seqs(from_2s), [2, 4]);
    }

    #[test]
    fn intents_waiting_when_the_log_stops_verifying_say_so() {
        let bodies = [intent(0, "C_Login"), outcome(1, "C_Login", "CKR_OK", 0)];
        let (_dir, path, vopts) = log(&bodies);
        // Cut the outcome's line short, as a torn write would.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 20);
        std::fs::write(&path, bytes).unwrap();
        let mut out = Vec::new();
        let opts = ShowOptions::new(Filter::default(), false);
        let s = show(
            &[path],
            &vopts,
            &opts,
            &mut out,
            &mut Progress::new(false, &[]),
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!s.verify.unwrap().intact);
        assert!(out.contains("NO OUTCOME"), "{out}");
        assert!(out.contains("it may be past the problem"), "{out}");
        assert!(!out.contains("may have died"), "{out}");
    }

    #[test]
    fn gap_and_lifecycle_records_have_lines() {
        let bodies = [
            body(0, 1, 0, "start", None, r#","note":"new chain""#),
            body(
                1,
                1,
                0,
                "gap",
                None,
                r#","lost":3,"since":"2026-11-26T03:00:00.5Z""#,
            ),
        ];
        let (out, _) = run(&bodies, &ShowOptions::new(Filter::default(), false));
        assert!(
            out.contains("start") && out.contains("note \"new chain\""),
            "{out}"
        );
        assert!(
            out.contains("GAP") && out.contains("lost 3 record(s) since 2026-11-26T03:00:00.5Z"),
            "{out}"
        );
        let f = Filter {
            failures: true,
            ..Default::default()
        };
        let (out, _) = run(&bodies, &ShowOptions::new(f, false));
        assert_eq!(out.lines().count(), 2, "{out}");
    }
}
