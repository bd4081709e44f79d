//! What verify concludes about a chain: the first problem found, its kind and where; or, when
//! every record verified, why the end of the chain was not checked.

use serde::{Serialize, Serializer};
use std::path::{Path, PathBuf};

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

fn ser_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
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

/// `seq N`, or `seq N..M` for a range of more than one seq.
pub(super) fn range_text(from: u64, to_incl: u64) -> String {
    if from == to_incl {
        format!("seq {from}")
    } else {
        format!("seq {from}..{to_incl}")
    }
}
