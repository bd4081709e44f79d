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
//!
//! `filter` selects calls, `line` writes one call for people, `stream` joins intents with their
//! outcomes and writes lines in order as the verifier passes the records.

mod filter;
mod line;
mod stream;

pub use filter::Filter;

use crate::reader::verify::{verify_files_with, VerifyIoError, VerifyOptions, VerifyReport};
use crate::reader::Progress;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use stream::Stream;

/// Default bound on intents waiting for their outcome.
const DEFAULT_MAX_PENDING: usize = 65_536;
/// Default bound on the bytes held back while the oldest intent waits.
const DEFAULT_MAX_HELD_BYTES: usize = 64 << 20;

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

/// Verifies `paths` and writes the calls `opts` selects to `out` as it goes (with a header
/// line first, unless `opts.json`).
pub fn show<W: Write>(
    paths: &[PathBuf],
    verify: &VerifyOptions,
    opts: &ShowOptions,
    out: W,
    progress: &mut Progress,
) -> Result<ShowSummary, ShowError> {
    let mut stream = Stream::new(opts, out);
    let report = verify_files_with(paths, verify, |line, seq| {
        progress.record(line.len());
        stream.on_record(line, seq);
        if stream.failed() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .map_err(ShowError::Log)?;
    progress.finish();
    if let Some(r) = &report {
        stream.finish(r.intact);
    }
    stream.summary(report)
}

/// Show runs over sealed test logs, for the unit tests of selection, lines and streaming.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::reader::testlog::{body, log};

    pub(super) fn run(bodies: &[String], opts: &ShowOptions) -> (String, ShowSummary) {
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

    pub(super) fn intent(secs: u64, f: &str) -> String {
        body(secs, 1, 0, "intent", Some(f), r#","session":1"#)
    }

    pub(super) fn outcome(secs: u64, f: &str, rv: &str, intent: u64) -> String {
        body(
            secs,
            1,
            0,
            "outcome",
            Some(f),
            &format!(r#","rv":"{rv}","dur_us":7,"intent":{intent},"session":1"#),
        )
    }
}
