//! The chain verifier behind `p11audit verify`, and under `show` and `report`.
//!
//! [`verify_files`] reads one or more log files (oldest first) line by line and checks the HMAC
//! chain of format v1 (see `format/chain.rs` and `format/line.rs`): every line's mac under
//! K_seq, that seq counts up by one from 0 across all files, and that every `prev` is the mac
//! of the record before. It stops at the first problem and classifies it ([`ProblemKind`]);
//! the [`Summary`] covers the records verified before that point. With a [`ChainState`] it also
//! checks that the log ends where the writer's state says it does (truncation), and that the
//! state holds the chain's key at its seq (a state anyone but a writer wrote cannot vouch for
//! the end).
//!
//! Memory does not grow with the size of the log: one line is held at a time (plus a bounded
//! look-ahead when a record appears early), and a line longer than
//! [`VerifyOptions::max_line_bytes`] is reported rather than buffered.
//!
//! - `lines`: the files as one run of bounded lines;
//! - `walk`: the chain walk, line by line;
//! - `strict`: a verified line read as a record, in one reading every JSON reader agrees on;
//! - `summary`: what the verified records hold;
//! - `state`: the end of the chain against the state file;
//! - `verdict`: the problem found, or why the end was not checked;
//! - `render`: `p11audit verify`'s human output, and the state line show and report print.

mod lines;
pub mod render;
mod state;
mod strict;
mod summary;
#[cfg(test)]
pub(crate) mod testchain;
mod verdict;
mod walk;

pub use state::UnreportedLost;
pub use summary::{ProcessSummary, Summary};
pub use verdict::{EndUnchecked, Problem, ProblemKind};

use crate::format::chain::ChainKey;
use crate::format::state::ChainState;
use lines::Cursor;
use serde::Serialize;
use std::io;
use std::ops::ControlFlow;
use std::path::PathBuf;
use walk::Walk;

/// Default cap on the length of one line (without its newline).
const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;
/// Default number of lines searched ahead for the expected record when a later one appears.
const DEFAULT_LOOKAHEAD_LINES: usize = 64;
/// Default bound on how far ahead of the expected seq a line may claim to be before it is
/// treated as altered instead of evolving the key that far.
const DEFAULT_MAX_SEQ_JUMP: u64 = 10_000_000;

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
    /// The lost records the state file counts and has not seen reported
    /// ([`UnreportedLost::from_state_file`]); the report names what no gap record in the log
    /// reports either (`VerifyReport::unreported_lost`).
    pub state_counts_lost: Option<UnreportedLost>,
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
            state_counts_lost: None,
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

/// The result of [`verify_files`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// True when no problem was found.
    pub intact: bool,
    /// The first problem, if any.
    pub problem: Option<Problem>,
    /// True when the last verified record is a `close` (or a `close` followed by `checkpoint`
    /// records).
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
    /// §9), when a state file was read and counts any: `state_counts_lost` less the `lost` of
    /// gap records at or past the state's seq (a state behind the log: they are reported,
    /// though the state does not say so yet; INTERNALS.md §1.3, roll-forward).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreported_lost: Option<UnreportedLost>,
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
pub(crate) fn verify_files_with<F>(
    paths: &[PathBuf],
    opts: &VerifyOptions,
    mut visit: F,
) -> Result<Option<VerifyReport>, VerifyIoError>
where
    F: FnMut(&[u8], u64) -> ControlFlow<()>,
{
    let mut cursor = Cursor::new(paths, opts.max_line_bytes);
    let mut walk = Walk::new(opts);
    let mut buf = Vec::new();
    let mut problem = None;
    while let Some(meta) = cursor.next_line(&mut buf)? {
        if let Some(p) = walk.check_line(&buf, &meta, &mut cursor)? {
            problem = Some(p);
            break;
        }
        if visit(&buf, walk.next_seq() - 1).is_break() {
            return Ok(None);
        }
    }
    Ok(Some(walk.finish(problem, &cursor)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::verify::testchain::{chain, k0, run, signs, write};

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
}
