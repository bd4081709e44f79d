//! `p11audit report`: the audit questions over a period, from one verifying pass.
//!
//! - every key (or other object) used: what for (function, mechanism) and by whom (uid, exe),
//!   with counts;
//! - key lifecycle: generated, imported, copied, derived, unwrapped, attributes changed,
//!   wrapped (exported), destroyed;
//! - logins per user type, failed logins, locked PINs, and bursts of failures (at least
//!   `burst_failures` within `burst_window_us` from one pid or one uid);
//! - sessions per process;
//! - gaps (records lost while the log could not be written: fail-closed refusals are among
//!   them, since a refused call is one whose intent could not be written), processes that
//!   attached and never closed, and intents that have no outcome.
//!
//! Memory holds aggregates, never records: maps keyed by key, process, user type and so on,
//! each bounded (a hostile log with millions of distinct labels fills a map to its bound, after
//! which the report says that a limit was reached). The one record-shaped map, intents waiting
//! for their outcome, is bounded the same way as show's.
//!
//! `model` is what a report holds, `aggregate` builds it from the records as the verifier passes
//! them, `render` writes it for people.

mod aggregate;
mod model;
mod render;

pub use model::{
    Burst, FailedLogins, GapReport, Gaps, KeyRef, KeyReport, LifecycleReport, Logins, PeriodText,
    ProcessReport, Report, Unclean, UncleanProcess, UseReport, UserReport, UserTypeLogins,
    Verification, Who, WithoutOutcome,
};
pub use render::render_human;

use super::{Period, Progress};
use crate::reader::verify::{verify_files_with, VerifyIoError, VerifyOptions};
use aggregate::Aggregator;
use std::ops::ControlFlow;
use std::path::PathBuf;

/// Bound on the distinct keys, processes, failed-login groups and burst windows tracked.
const MAX_AGGREGATES: usize = 100_000;
/// Bound on rows per key (functions and users) and on listed events (gaps, bursts, unclean
/// closes, calls without outcome): the totals stay exact, the lists stop.
const MAX_ROWS: usize = 1_000;
/// Bound on intents waiting for their outcome.
const MAX_PENDING: usize = 65_536;

/// What to report on.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Only records whose `ts` falls in this period are counted.
    pub period: Period,
    /// A burst is at least this many failed logins ...
    pub burst_failures: usize,
    /// ... within this many microseconds, from one pid or one uid.
    pub burst_window_us: i64,
}

impl ReportOptions {
    pub fn new(period: Period) -> Self {
        ReportOptions {
            period,
            burst_failures: 5,
            burst_window_us: 60_000_000,
        }
    }
}

/// Verifies `paths` and aggregates what they say in the same pass. `Err` only when a file
/// cannot be read; a chain that does not verify gives a report of the records before the
/// problem, with the problem in `verification`.
pub fn report(
    paths: &[PathBuf],
    verify: &VerifyOptions,
    opts: &ReportOptions,
    progress: &mut Progress,
) -> Result<Report, VerifyIoError> {
    let mut agg = Aggregator::new(opts);
    let v = verify_files_with(paths, verify, |line, _| {
        progress.record(line.len());
        agg.on_record(line);
        ControlFlow::Continue(())
    })?
    .expect("the visitor never stops the walk");
    progress.finish();
    Ok(agg.finish(Verification::of(&v)))
}

/// Report runs over sealed test logs, for the unit tests of aggregation and rendering.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::reader::testlog::{body, log};

    pub(super) fn run(bodies: &[String], period: Period) -> Report {
        let (_dir, path, vopts) = log(bodies);
        report(
            &[path],
            &vopts,
            &ReportOptions::new(period),
            &mut Progress::new(false, &[]),
        )
        .unwrap()
    }

    pub(super) fn login(secs: u64, pid: u32, uid: u32, rv: &str) -> String {
        body(
            secs,
            pid,
            uid,
            "outcome",
            Some("C_Login"),
            &format!(r#","rv":"{rv}","user_type":"CKU_USER""#),
        )
    }
}
