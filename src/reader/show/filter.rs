//! Which calls show selects: by when the call started, process, user, function, result,
//! failure, and the objects it names.

use crate::reader::view::{call_began, key_matches, RecView};
use crate::reader::Period;

/// Which calls to show. Empty lists select everything; all given conditions must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The call started in this period (`call_began`: its first record's `ts`, or its told
    /// init's).
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
    /// No condition given: every call is selected.
    pub(super) fn is_empty(&self) -> bool {
        self.period.is_open()
            && self.pids.is_empty()
            && self.uids.is_empty()
            && self.functions.is_empty()
            && self.rvs.is_empty()
            && !self.failures
            && self.keys.is_empty()
    }

    /// Whether the call made of `intent` and `rec` (its outcome, or a record on its own) is
    /// selected. At least one of them is present.
    pub(super) fn matches(&self, intent: Option<&RecView>, rec: Option<&RecView>) -> bool {
        let Some(first) = intent.or(rec) else {
            return false;
        };
        if !self.period.contains(call_began(intent, rec)) {
            return false;
        }
        // A client's records are selected by the client's pid and uid, and by the serving
        // process's.
        let who = first.who();
        if !self.pids.is_empty() && !self.pids.contains(&first.pid) && !self.pids.contains(&who.pid)
        {
            return false;
        }
        if !self.uids.is_empty() && !self.uids.contains(&first.uid) && !self.uids.contains(&who.uid)
        {
            return false;
        }
        // A prepare call joined with its operation's first call, or told in it, is selected by
        // either name.
        if !self.functions.is_empty()
            && !intent
                .into_iter()
                .chain(rec)
                .flat_map(|r| [r.function(), r.init.as_ref().map(|i| &*i.function)])
                .flatten()
                .any(|f| self.functions.iter().any(|w| w.eq_ignore_ascii_case(f)))
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
            if !objects.any(|o| self.keys.iter().any(|k| key_matches(o, k))) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::show::testing::{intent, outcome, run};
    use crate::reader::show::ShowOptions;
    use crate::reader::testlog::body;

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
}
