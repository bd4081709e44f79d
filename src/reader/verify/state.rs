//! What verify reads from the writer's state file: whether the log ends where the state says it
//! does, and whether a writer of this chain wrote the state (it holds the chain's key at its
//! seq, which the log does not reveal); why the end went unchecked when it did; and the losses
//! the state counts that no gap record reports yet.

use super::verdict::{range_text, EndUnchecked, Problem, ProblemKind};
use super::VerifyOptions;
use crate::format::chain::ChainKey;
use crate::format::state::ChainState;
use serde::Serialize;
use std::path::PathBuf;

/// The state against the chain at seq `next_seq` of the state (the walk has verified every
/// record before it).
#[derive(Debug, Clone, Copy)]
pub(super) struct StateComparison {
    /// The state's prev is the mac of seq next_seq-1 (64 zeros for next_seq 0).
    prev_matches: bool,
    /// The state's key is K_next_seq, evolved from K_0. Only a writer (or someone holding a
    /// chain key of a seq at or before next_seq) can know it: the check line is an unkeyed
    /// hash anyone can compute, and seq and prev can be read from the log.
    key_matches: bool,
}

impl StateComparison {
    /// `mac` is the mac of seq `state.next_seq - 1` (64 zeros for seq 0), `key` the chain's key
    /// K_next_seq.
    pub(super) fn new(state: &ChainState, mac: &str, key: &ChainKey) -> Self {
        StateComparison {
            prev_matches: state.prev_mac == mac,
            key_matches: state.key.ct_eq(key),
        }
    }
}

/// After the last line: does the log end where the state `st` says, and did a writer of this
/// chain write `st`? `next_seq` is the seq after the last verified record; `at_its_seq` how the
/// state compared with the chain at its seq, if the walk got there; `file` and `line` where a
/// problem with the end is reported.
pub(super) fn check_end(
    st: &ChainState,
    next_seq: u64,
    at_its_seq: Option<StateComparison>,
    (file, line): (PathBuf, u64),
) -> Option<Problem> {
    let e = next_seq;
    let last_seq = e.checked_sub(1);
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
    let Some(at_state) = at_its_seq else {
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
    // last record: the next writer rolls forward over them (INTERNALS.md §1.3), so this is not
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

/// Why the end of a chain whose every record verified (up to `next_seq`) was not checked; None
/// when it was.
pub(super) fn end_unchecked(opts: &VerifyOptions, next_seq: u64) -> Option<EndUnchecked> {
    match &opts.state {
        None if opts.state_not_wanted => Some(EndUnchecked::NoStateOption),
        None => Some(EndUnchecked::NoStateFile),
        // Accepted behind the log (else `check_end` found a problem).
        Some(st) if st.next_seq < next_seq => Some(EndUnchecked::StateBehindLog),
        Some(_) => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::chain::ZERO_MAC_HEX;
    use crate::reader::verify::testchain::{body, chain, k0, problem, run, signs, write};
    use crate::reader::verify::{verify_files, VerifyReport};

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

    /// Every record verified but the end not checked is its own verdict (exit
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
        let dir = tempfile::tempdir().unwrap();
        let log = write(&dir, "log", &c.all());
        let counting = |lost: u64| {
            let mut opts = VerifyOptions::new(k0(), Some(chain(&bodies[..4]).state()));
            opts.state_counts_lost = Some(UnreportedLost { lost, since: None });
            verify_files(std::slice::from_ref(&log), &opts).unwrap()
        };
        // The state counts 7, the gap past it reports 5: 2 are left unreported.
        let r = counting(7);
        assert!(r.intact, "{:?}", r.problem);
        assert_eq!(r.unreported_lost.map(|u| u.lost), Some(2));
        // It counts 5: the gap past it reports them all.
        assert_eq!(counting(5).unreported_lost, None);
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
            tree: None,
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
}
