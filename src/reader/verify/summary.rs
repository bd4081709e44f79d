//! Counting what the verified records hold, for the summary of `p11audit verify`: records,
//! their seqs and times, processes (pid and exe), records per function, result and event, gap
//! records and their losses, and the processes that attached and did not close.

use super::strict::{Exe, Rec};
use crate::format::record::Bytes;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One process seen in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessSummary {
    pub pid: u32,
    /// As the record holds it: text, or `{"hex": …}` for a path that is not UTF-8.
    pub exe: Bytes,
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

/// The counts so far, one verified record at a time.
#[derive(Default)]
pub(super) struct Tally {
    records: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
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

/// What the records said, once the walk is over.
pub(super) struct Counted {
    pub(super) summary: Summary,
    /// The last record is a `close`.
    pub(super) closed_cleanly: bool,
    /// Pids with an `attach` and no later `close`, ascending.
    pub(super) unclosed_pids: Vec<u32>,
    /// The `lost` of gap records at or past the state's seq.
    pub(super) lost_past_state: u64,
}

impl Tally {
    /// Counts record `seq`, which verified; `state_next_seq` is the state's next seq, when
    /// there is a state.
    pub(super) fn add(&mut self, seq: u64, rec: &Rec, state_next_seq: Option<u64>) {
        self.records += 1;
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
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
                if state_next_seq.is_some_and(|n| seq >= n) {
                    self.lost_past_state = self.lost_past_state.saturating_add(lost);
                }
            }
            _ => {}
        }
        // The checkpoint a closing process signs follows its `close` record (FORMAT.md §11.3).
        if rec.ev != "checkpoint" {
            self.last_ev_close = rec.ev == "close";
        }
    }

    pub(super) fn finish(self) -> Counted {
        let processes: Vec<ProcessSummary> = self
            .processes
            .into_iter()
            .flat_map(|(pid, [text, hex])| {
                // In Bytes's order: text, then hex.
                let text = text.into_iter().map(|(t, n)| (Bytes::Text(t), n));
                let hex = hex.into_iter().map(|(hex, n)| (Bytes::Hex(hex), n));
                text.chain(hex)
                    .map(move |(exe, records)| ProcessSummary { pid, exe, records })
            })
            .collect();
        let summary = Summary {
            records: self.records,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
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
        Counted {
            summary,
            closed_cleanly: self.last_ev_close,
            unclosed_pids: self.open_pids.into_iter().collect(),
            lost_past_state: self.lost_past_state,
        }
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

#[cfg(test)]
mod tests {
    use crate::reader::verify::testchain::{body, chain, run};

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
}
