//! `p11audit verify`'s human output, and the state line that verify, show and report share.

use super::{EndUnchecked, Problem, UnreportedLost, VerifyReport};
use crate::reader::table::count_table;
use crate::reader::text::escape;
use crate::reader::view::exe_text;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where the state came from, for the report.
pub enum StateSource {
    Disabled,
    NotFound(PathBuf),
    /// The file and its next seq.
    Loaded(PathBuf, u64),
}

/// The state line of `show` and `report`; `unreported`: what the state counts as lost and no
/// gap record in the log reports; `end`: why the end was not checked, if it was not;
/// `next_seq`: the seq after the last verified record.
pub fn state_text(
    source: &StateSource,
    unreported: Option<&UnreportedLost>,
    end: Option<EndUnchecked>,
    next_seq: u64,
) -> String {
    format!("state: {}", state_words(source, unreported, end, next_seq))
}

/// What the state line says after `state:`, for verify, show and report alike.
fn state_words(
    source: &StateSource,
    unreported: Option<&UnreportedLost>,
    end: Option<EndUnchecked>,
    next_seq: u64,
) -> String {
    match source {
        StateSource::Disabled => {
            "not checked (--no-state); the end of the log was not checked".to_string()
        }
        StateSource::NotFound(p) => format!(
            "none ({} not found); the end of the log was not checked",
            path_text(p)
        ),
        StateSource::Loaded(p, n) => {
            let mut s = format!("{} (next seq {n})", path_text(p));
            if end == Some(EndUnchecked::StateBehindLog) {
                let _ = write!(
                    s,
                    ", behind the log, which goes on to seq {}; the end of the log was not checked",
                    next_seq.saturating_sub(1)
                );
            }
            if let Some(u) = unreported {
                let _ = write!(s, "; it counts {}", u.describe());
            }
            s
        }
    }
}

pub fn path_text(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

/// The human report: verdict, close status, state, then the summary.
pub fn render_human(r: &VerifyReport, source: &StateSource) -> String {
    let mut o = String::new();
    match (&r.problem, r.end_unchecked) {
        (None, None) => o.push_str("OK: chain intact\n"),
        (None, Some(why)) => {
            let _ = writeln!(
                o,
                "INTACT AS FAR AS IT GOES: every record verified, but the end of the chain was not checked: {}",
                why.describe(r.state_next_seq, r.next_seq)
            );
        }
        (Some(p), _) => {
            let _ = writeln!(o, "FAIL: {}", problem_text(p));
        }
    }

    let unclosed = if r.unclosed_pids.is_empty() {
        String::new()
    } else {
        let pids: Vec<String> = r.unclosed_pids.iter().map(u32::to_string).collect();
        format!("; attached without close: pid {}", pids.join(", "))
    };
    let upto = if r.intact {
        ""
    } else {
        " (before the problem)"
    };
    let closed = match (r.closed_cleanly, r.intact) {
        // Records after the close may have been cut off.
        (true, true) if r.end_unchecked.is_some() => {
            "not known: the last record present is \"close\", but the end of the log was not checked"
        }
        (true, true) => "yes",
        (true, false) => "yes (the last record before the problem is \"close\")",
        (false, _) if r.summary.records == 0 => "no (no records)",
        (false, true) => "no (the last record is not \"close\")",
        (false, false) => "no (the last record before the problem is not \"close\")",
    };
    let _ = writeln!(o, "closed cleanly: {closed}{unclosed}");

    let _ = writeln!(
        o,
        "state:     {}",
        state_words(source, None, r.end_unchecked, r.next_seq)
    );
    if let (StateSource::Loaded(..), Some(u)) = (source, &r.unreported_lost) {
        let _ = writeln!(o, "           it counts {}", u.describe());
    }

    let s = &r.summary;
    let seqs = match (s.first_seq, s.last_seq) {
        (Some(a), Some(b)) => format!(" (seq {a}..{b})"),
        _ => String::new(),
    };
    let _ = writeln!(o, "records:   {}{seqs}{upto}", s.records);
    if let (Some(first), Some(last)) = (&s.first_ts, &s.last_ts) {
        let _ = writeln!(o, "first:     {}", escape(first));
        let _ = writeln!(o, "last:      {}", escape(last));
    }
    if s.gaps > 0 {
        let _ = writeln!(
            o,
            "gaps:      {} gap record(s), {} record(s) lost by the writer",
            s.gaps, s.lost
        );
    }
    let _ = writeln!(o, "processes: {}", s.process_count);
    for p in &s.processes {
        let _ = writeln!(
            o,
            "  pid {:<8} {:>8} record(s)  {}",
            p.pid,
            p.records,
            exe_text(&p.exe)
        );
    }
    count_table(&mut o, "events:", &s.per_ev);
    count_table(&mut o, "functions:", &s.per_fn);
    count_table(&mut o, "results:", &s.per_rv);
    o
}

/// `show`'s verdict, the line it prints on stderr after the calls: the chain's verdict and the
/// state line.
pub fn show_verdict(r: &VerifyReport, source: &StateSource) -> String {
    let state = state_text(
        source,
        r.unreported_lost.as_ref(),
        r.end_unchecked,
        r.next_seq,
    );
    match (&r.problem, r.end_unchecked) {
        (None, None) => format!(
            "p11audit: verified: chain intact, {} records; {state}",
            r.summary.records,
        ),
        (None, Some(why)) => format!(
            "p11audit: verified as far as it goes: chain intact, {} records, but its end was not checked: {}; {state}",
            r.summary.records,
            why.describe(r.state_next_seq, r.next_seq)
        ),
        (Some(p), _) => format!(
            "p11audit: the log did NOT verify: {}; the output covers only the {} record(s) before the problem",
            problem_text(p),
            r.summary.records
        ),
    }
}

/// The problem found, for people: `altered at FILE:LINE (seq N): detail`. The same words in
/// verify's, show's and report's verdicts.
pub(crate) fn problem_text(p: &Problem) -> String {
    let seq = p.seq.map(|s| format!(" (seq {s})")).unwrap_or_default();
    format!(
        "{} at {}:{}{seq}: {}",
        p.kind,
        path_text(&p.file),
        p.line,
        escape(&p.detail)
    )
}
