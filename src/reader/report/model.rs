//! What a report holds, as `p11audit report --json` writes it: the verification of the log,
//! and per question the keys, lifecycle events, logins, processes, gaps, unclean closes and
//! calls without outcome.

use crate::format::record::{Bytes, Named, ObjectIdentity, PeerIdentity};
use crate::reader::verify::{EndUnchecked, Problem, UnreportedLost, VerifyReport};
use crate::reader::view::{ForPeople, RecView};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The whole report: one JSON document with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verification: Verification,
    pub period: PeriodText,
    /// Verified records whose `ts` is in the period.
    pub records: u64,
    /// Keys and other objects, by label, id and class.
    pub keys: Vec<KeyReport>,
    /// Lifecycle events of all keys, per event.
    pub lifecycle_totals: BTreeMap<String, u64>,
    pub logins: Logins,
    pub processes: Vec<ProcessReport>,
    pub gaps: Gaps,
    pub unclean_closes: Unclean,
    pub without_outcome: WithoutOutcome,
    /// Verified records this report could not read (never written by p11audit itself).
    pub unreadable_records: u64,
    /// Bounds that were reached: the lists named here are incomplete.
    pub limits_reached: Vec<String>,
}

/// The verifier's verdict on what the report was made from.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub intact: bool,
    /// The first problem found; the report covers only the records before it.
    pub problem: Option<Problem>,
    /// Whether a state file was compared with the log (it may be behind the log: see
    /// `end_unchecked`).
    pub state_checked: bool,
    /// As in `VerifyReport`: None when the end of the chain was checked (or a problem was
    /// found), else why it was not.
    pub end_unchecked: Option<EndUnchecked>,
    /// 0 intact, 1 problem found, 3 intact as far as it goes (its end not checked).
    pub exit_status: u8,
    /// The state's next seq, when a state file was read.
    pub state_next_seq: Option<u64>,
    /// Records verified (in the whole log, not only the period).
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    /// Lost records the state file counts and no gap record reports yet (FORMAT.md §9), when
    /// the caller read a state file that counts any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreported_lost: Option<UnreportedLost>,
    /// The seq after the last verified record.
    #[serde(skip)]
    pub next_seq: u64,
}

impl Verification {
    /// The verdict of `v`, with its summary's extent.
    pub(super) fn of(v: &VerifyReport) -> Self {
        let s = &v.summary;
        Verification {
            intact: v.intact,
            problem: v.problem.clone(),
            state_checked: v.state_checked,
            end_unchecked: v.end_unchecked,
            exit_status: v.exit_status,
            state_next_seq: v.state_next_seq,
            records: s.records,
            first_seq: s.first_seq,
            last_seq: s.last_seq,
            first_ts: s.first_ts.clone(),
            last_ts: s.last_ts.clone(),
            unreported_lost: v.unreported_lost.clone(),
            next_seq: v.next_seq,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PeriodText {
    pub since: Option<String>,
    pub until: Option<String>,
}

/// A key (or other object) as records name it. Handles are only used when the provider gave
/// neither label nor id; they are then qualified by the process.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct KeyRef {
    pub label: Option<Bytes>,
    pub id: Option<Bytes>,
    pub class: Option<Named>,
    pub key_type: Option<Named>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl KeyRef {
    /// The key `ident` names in a record of process `pid`.
    pub(super) fn of(ident: &ObjectIdentity, pid: u32) -> Self {
        let anonymous = ident.label.is_none() && ident.id.is_none();
        KeyRef {
            label: ident.label.clone(),
            id: ident.id.clone(),
            class: ident.class.clone(),
            key_type: ident.key_type.clone(),
            handle: if anonymous { ident.handle } else { None },
            pid: anonymous.then_some(pid),
        }
    }

    /// For people: `"label" id 01 (CKO_PRIVATE_KEY CKK_EC)`.
    pub fn display(&self) -> String {
        let mut s = ObjectIdentity {
            handle: self.handle,
            class: self.class.clone(),
            key_type: self.key_type.clone(),
            label: self.label.clone(),
            id: self.id.clone(),
        }
        .display();
        if let Some(pid) = self.pid {
            let _ = write!(s, " in pid {pid}");
        }
        s
    }
}

/// Who did something, and when (the first time, for counted events).
#[derive(Debug, Clone, Serialize)]
pub struct Who {
    pub seq: u64,
    pub ts: String,
    pub pid: u32,
    pub uid: u32,
    pub exe: Bytes,
    pub function: Option<String>,
    pub mechanism: Option<String>,
}

impl Who {
    /// The process and call of record `r`.
    pub(super) fn of(r: &RecView) -> Self {
        let who = r.who();
        Who {
            seq: r.seq,
            ts: r.ts.to_string(),
            pid: who.pid,
            uid: who.uid,
            exe: who.exe_bytes(),
            function: r.function.as_deref().map(str::to_string),
            mechanism: r
                .mechanism
                .as_ref()
                .map(|m| m.mechanism.as_str().to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    pub key: KeyRef,
    /// Calls naming the key (as `key` or `key2`), length queries counted in an outcome
    /// (`len_queries`) and inits told in one (`init`) included.
    pub calls: u64,
    pub failed: u64,
    pub first_use: Option<String>,
    pub last_use: Option<String>,
    pub used_for: Vec<UseReport>,
    pub used_by: Vec<UserReport>,
    pub lifecycle: Vec<LifecycleReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UseReport {
    /// The function; ` (wrapped)`, ` (digested)` or ` (key2)` when the key was the call's
    /// second key.
    pub function: String,
    pub mechanism: Option<String>,
    /// Calls that returned CKR_OK (length queries apart).
    pub ok: u64,
    pub failed: u64,
    /// Calls that only asked for (or were told) the output length.
    pub length_queries: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserReport {
    pub uid: u32,
    pub exe: Bytes,
    pub calls: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LifecycleReport {
    /// `generated`, `imported`, `copied`, `derived`, `unwrapped`, `decapsulated`,
    /// `encapsulated`, `created`, `attributes changed`, `wrapped`, `destroyed`.
    pub event: String,
    pub count: u64,
    pub first: Who,
    pub last_ts: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Logins {
    pub per_user_type: Vec<UserTypeLogins>,
    /// Failed logins (rv other than CKR_OK and CKR_USER_ALREADY_LOGGED_IN).
    pub failed_total: u64,
    /// Of those, CKR_PIN_LOCKED.
    pub pin_locked: u64,
    /// Failed logins grouped by uid, pid, exe, user type and rv.
    pub failed: Vec<FailedLogins>,
    /// Runs of failures in quick succession from one pid or one uid.
    pub bursts: Vec<Burst>,
    pub burst_rule: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserTypeLogins {
    pub user_type: String,
    pub ok: u64,
    pub failed: u64,
    pub already_logged_in: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedLogins {
    pub uid: u32,
    pub pid: u32,
    pub exe: Bytes,
    pub user_type: String,
    pub rv: String,
    pub count: u64,
    pub first_ts: String,
    pub last_ts: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Burst {
    /// `pid` or `uid`.
    pub by: &'static str,
    pub id: u32,
    /// The exe, for a burst from one pid.
    pub exe: Option<Bytes>,
    pub failures: u64,
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub exe: Bytes,
    pub uid: u32,
    /// The client this process served (`p11-kit remote` behind a socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerIdentity>,
    pub records: u64,
    pub first_ts: String,
    pub last_ts: String,
    /// `attach` and `close` records.
    pub attached: u64,
    pub closed: u64,
    /// Successful C_OpenSession, C_CloseSession, C_CloseAllSessions.
    pub sessions_opened: u64,
    pub sessions_closed: u64,
    pub close_all_sessions: u64,
    pub logins: u64,
    pub failed_logins: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Gaps {
    /// Gap records.
    pub count: u64,
    /// Records lost, summed over the gap records: calls refused because their intent could not
    /// be written (fail-closed), calls that went ahead unrecorded (fail-open, giving-up calls)
    /// and records that were waiting.
    pub lost: u64,
    pub list: Vec<GapReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GapReport {
    pub seq: u64,
    pub ts: String,
    pub pid: u32,
    pub exe: Bytes,
    pub lost: u64,
    pub since: Option<String>,
}

/// Processes with an `attach` and no `close` after it (crashed, killed, or still running).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Unclean {
    pub count: u64,
    pub list: Vec<UncleanProcess>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UncleanProcess {
    pub pid: u32,
    pub uid: u32,
    pub exe: Bytes,
    /// The `ts` of its `attach`.
    pub attached: String,
    pub attach_seq: u64,
    /// `no close in the log`, or `attached again without a close` (the pid was reused).
    pub why: &'static str,
}

/// Intents whose outcome is not in the log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WithoutOutcome {
    pub count: u64,
    /// Intents given up on because too many were waiting; their outcome may be in the log.
    pub given_up: u64,
    pub list: Vec<Who>,
}
