//! The chain walk: every line checked in one pass against the chain so far (its mac under
//! K_seq, its seq the next one, its `prev` the mac of the record before). The first line that
//! breaks the chain ends the walk and is classified ([`ProblemKind`]); when a later seq turns up
//! early, a bounded look-ahead tells records out of order from records missing.

use super::lines::{Cursor, LineMeta};
use super::state::{self, StateComparison};
use super::strict::{parse_record, Rec};
use super::summary::Tally;
use super::verdict::{range_text, Problem, ProblemKind};
use super::{VerifyIoError, VerifyOptions, VerifyReport};
use crate::format::chain::{is_mac_hex, ChainKey, ZERO_MAC_HEX};
use crate::format::line::split_line;
use std::borrow::Cow;

/// Reads the fixed start `{"v":1,"seq":N,"prev":"<64 hex>",` of a line: (seq, prev).
fn parse_prefix(line: &[u8]) -> Option<(u64, &str)> {
    let rest = line.strip_prefix(b"{\"v\":1,\"seq\":".as_slice())?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let seq: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"prev\":\"".as_slice())?;
    if rest.len() < 66 || &rest[64..66] != b"\"," {
        return None;
    }
    let prev = std::str::from_utf8(&rest[..64]).ok()?;
    is_mac_hex(prev).then_some((seq, prev))
}

/// The chain as verified so far.
pub(super) struct Walk<'o> {
    opts: &'o VerifyOptions,
    /// The expected seq e, and K_e.
    expected: u64,
    key_e: ChainKey,
    /// mac of seq e-1 (zeros for e = 0).
    last_mac: String,
    /// How the state compares with the chain at the state's seq, once the walk got there.
    state_at_its_seq: Option<StateComparison>,
    /// What the verified records hold.
    tally: Tally,
}

impl<'o> Walk<'o> {
    pub(super) fn new(opts: &'o VerifyOptions) -> Self {
        Walk {
            opts,
            expected: 0,
            key_e: opts.key.clone(),
            last_mac: ZERO_MAC_HEX.to_string(),
            state_at_its_seq: opts
                .state
                .as_ref()
                .filter(|st| st.next_seq == 0)
                .map(|st| StateComparison::new(st, ZERO_MAC_HEX, &opts.key)),
            tally: Tally::default(),
        }
    }

    /// The seq expected next: one past the last verified record.
    pub(super) fn next_seq(&self) -> u64 {
        self.expected
    }

    fn problem(
        &self,
        kind: ProblemKind,
        meta: &LineMeta,
        cursor: &Cursor,
        seq: Option<u64>,
        detail: String,
    ) -> Option<Problem> {
        Some(Problem {
            kind,
            file: cursor.path(meta.file_idx).to_path_buf(),
            line: meta.line_no,
            seq,
            detail,
        })
    }

    /// K_s, evolved from K_e when s >= e or from K_0 when s < e.
    fn key_for(&self, s: u64) -> Cow<'_, ChainKey> {
        let (mut key, steps) = if s == self.expected {
            return Cow::Borrowed(&self.key_e);
        } else if s > self.expected {
            (self.key_e.clone(), s - self.expected)
        } else {
            (self.opts.key.clone(), s)
        };
        for _ in 0..steps {
            key.evolve();
        }
        Cow::Owned(key)
    }

    /// Checks one line. Some(problem) stops the walk.
    pub(super) fn check_line(
        &mut self,
        line: &[u8],
        meta: &LineMeta,
        cursor: &mut Cursor,
    ) -> Result<Option<Problem>, VerifyIoError> {
        use ProblemKind::*;
        let e = self.expected;
        let prefix = parse_prefix(line);
        let claimed = prefix.map(|p| p.0);

        if meta.oversized {
            return Ok(self.problem(
                Malformed,
                meta,
                cursor,
                claimed,
                format!(
                    "line is longer than the limit of {} bytes; not verified (expected seq {e})",
                    self.opts.max_line_bytes
                ),
            ));
        }

        let split = split_line(line);
        let split_ok = split.is_some();
        let (Some(split), Some((s, prev))) = (split, prefix) else {
            // Only a line cut short lacks its newline: a last line that has one but is not a
            // record was written that way (or altered), not torn.
            if !meta.newline && cursor.at_end()? {
                return Ok(self.problem(
                    TornLastLine,
                    meta,
                    cursor,
                    claimed,
                    format!(
                        "the last line ({} bytes) is incomplete (no newline): a torn write; expected seq {e}",
                        meta.len
                    ),
                ));
            }
            let why = if line.ends_with(b"\r") {
                "ends in a carriage return (a \\r\\n line ending)"
            } else if !split_ok {
                "does not end in a well-formed \"mac\" member"
            } else {
                "does not start with {\"v\":1,\"seq\":N,\"prev\":\"<mac>\","
            };
            return Ok(self.problem(
                Altered,
                meta,
                cursor,
                claimed,
                format!("line {why}; expected seq {e}"),
            ));
        };

        if s > e && s - e > self.opts.max_seq_jump {
            return Ok(self.problem(
                Altered,
                meta,
                cursor,
                Some(s),
                format!(
                    "line claims seq {s}, more than {} ahead of the expected seq {e}; not checked further",
                    self.opts.max_seq_jump
                ),
            ));
        }

        if !split.is_sealed_by(&self.key_for(s)) {
            if !meta.newline && cursor.at_end()? {
                return Ok(self.problem(
                    TornLastLine,
                    meta,
                    cursor,
                    Some(s),
                    format!(
                        "the last line ({} bytes) has no newline and its mac does not verify: a torn or altered write",
                        meta.len
                    ),
                ));
            }
            let which = if s == e {
                String::new()
            } else {
                format!(" (expected seq {e})")
            };
            return Ok(self.problem(
                Altered,
                meta,
                cursor,
                Some(s),
                format!("mac does not verify under K_{s}: the line was altered{which}"),
            ));
        }

        let rec = match parse_record(line) {
            Ok(r) => r,
            Err(err) => {
                return Ok(self.problem(
                    Malformed,
                    meta,
                    cursor,
                    Some(s),
                    format!("mac verifies but the line is not a valid v1 record: {err}"),
                ))
            }
        };

        if s < e {
            return Ok(self.problem(
                Inserted,
                meta,
                cursor,
                Some(s),
                format!("a record with seq {s}, already verified earlier, appears again where seq {e} was expected"),
            ));
        }
        if s > e {
            return Ok(match self.find_ahead(e, cursor)? {
                Some((idx, line_no)) => {
                    let loc = if idx == meta.file_idx {
                        format!("line {line_no}")
                    } else {
                        format!("{}:{line_no}", cursor.path(idx).display())
                    };
                    self.problem(
                        Reordered,
                        meta,
                        cursor,
                        Some(s),
                        format!("seq {s} appears before seq {e}, which follows at {loc}"),
                    )
                }
                None => {
                    // At the first line of a file after another: a rotated file is gone (or
                    // the end of the one before it).
                    let whole_file = if meta.line_no == 1 && meta.file_idx > 0 {
                        format!(
                            "; it is the first line of its file, so a file between {} and this one (or the end of {0}) is missing",
                            cursor.path(meta.file_idx - 1).display()
                        )
                    } else {
                        String::new()
                    };
                    self.problem(
                        Missing,
                        meta,
                        cursor,
                        Some(s),
                        format!(
                            "{} record(s) missing ({}) before this line, which holds seq {s}{whole_file}",
                            s - e,
                            range_text(e, s - 1)
                        ),
                    )
                }
            });
        }
        if prev != self.last_mac {
            let whose = if e == 0 {
                "64 zeros (seq 0)".to_string()
            } else {
                format!("the mac of seq {}", e - 1)
            };
            return Ok(self.problem(
                Altered,
                meta,
                cursor,
                Some(s),
                format!("mac verifies but \"prev\" is not {whose}: the chain does not link"),
            ));
        }
        if !meta.newline {
            if cursor.at_end()? {
                return Ok(self.problem(
                    TornLastLine,
                    meta,
                    cursor,
                    Some(s),
                    format!("the last record (seq {s}) verifies but its line lacks the final newline: an incomplete write"),
                ));
            }
            return Ok(self.problem(
                Malformed,
                meta,
                cursor,
                Some(s),
                format!(
                    "record seq {s} verifies but its line lacks a newline at the end of its file"
                ),
            ));
        }

        self.accept(s, split.mac, &rec);
        Ok(None)
    }

    /// Looks ahead (bounded) for a line holding seq `e` with a valid mac under K_e.
    fn find_ahead(
        &self,
        e: u64,
        cursor: &mut Cursor,
    ) -> Result<Option<(usize, u64)>, VerifyIoError> {
        let mut buf = Vec::new();
        for _ in 0..self.opts.lookahead_lines {
            let Some(meta) = cursor.next_line(&mut buf)? else {
                break;
            };
            if meta.oversized {
                // Only the start of an oversized line was read: what follows is not a line.
                break;
            }
            if let (Some(split), Some((s, _))) = (split_line(&buf), parse_prefix(&buf)) {
                if s == e && split.is_sealed_by(&self.key_e) {
                    return Ok(Some((meta.file_idx, meta.line_no)));
                }
            }
        }
        Ok(None)
    }

    /// Takes in record `s`, which verified and links, with its `mac`.
    fn accept(&mut self, s: u64, mac: &str, rec: &Rec) {
        self.last_mac.clear();
        self.last_mac.push_str(mac);
        self.key_e.evolve();
        self.expected = s + 1;
        if let Some(st) = &self.opts.state {
            if st.next_seq == self.expected {
                self.state_at_its_seq = Some(StateComparison::new(st, mac, &self.key_e));
            }
        }
        let state_next_seq = self.opts.state.as_ref().map(|st| st.next_seq);
        self.tally.add(s, rec, state_next_seq);
    }

    /// After the last line: does the log end where the state says, and did a writer of this
    /// chain write the state?
    fn check_state(&self, cursor: &Cursor) -> Option<Problem> {
        let st = self.opts.state.as_ref()?;
        state::check_end(
            st,
            self.expected,
            self.state_at_its_seq,
            cursor.end_position(),
        )
    }

    /// The report, after the last line or at `problem`, which ended the walk.
    pub(super) fn finish(self, problem: Option<Problem>, cursor: &Cursor) -> VerifyReport {
        let problem = match problem {
            None => self.check_state(cursor),
            // A writer stores the state only after its write completed, so a torn last line
            // does not excuse a state that disagrees with the records before it (e.g. names
            // later ones: a cut tail with junk appended). That is the problem to report; the
            // torn line is its last line.
            Some(torn) if torn.kind == ProblemKind::TornLastLine => {
                Some(match self.check_state(cursor) {
                    Some(state_problem) => Problem {
                        detail: format!(
                            "{} (the last line, {}, is torn)",
                            state_problem.detail, torn.line
                        ),
                        file: torn.file,
                        line: torn.line,
                        ..state_problem
                    },
                    None => torn,
                })
            }
            other => other,
        };
        let end_unchecked = match problem {
            Some(_) => None,
            None => state::end_unchecked(self.opts, self.expected),
        };
        let exit_status = match (&problem, end_unchecked) {
            (Some(_), _) => 1,
            (None, Some(_)) => 3,
            (None, None) => 0,
        };
        let counted = self.tally.finish();
        VerifyReport {
            end_unchecked,
            exit_status,
            state_next_seq: self.opts.state.as_ref().map(|st| st.next_seq),
            intact: problem.is_none(),
            problem,
            closed_cleanly: counted.closed_cleanly,
            unclosed_pids: counted.unclosed_pids,
            state_checked: self.opts.state.is_some(),
            next_seq: self.expected,
            head_mac: self.last_mac,
            summary: counted.summary,
            unreported_lost: self
                .opts
                .state_counts_lost
                .as_ref()
                .and_then(|u| u.less(counted.lost_past_state)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::format::chain::ChainKey;
    use crate::format::line::seal_into;
    use crate::reader::verify::testchain::{chain, k0, problem, run, sign, signs, write};
    use crate::reader::verify::{verify_files, ProblemKind, VerifyOptions};

    #[test]
    fn altered_byte_in_a_middle_record() {
        let c = chain(&signs(6));
        let mut log = c.all();
        let at = c.lines[..3].iter().map(Vec::len).sum::<usize>() + 150;
        log[at] ^= 0x01;
        let r = run(&[&log], Some(c.state()));
        let p = problem(&r);
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 4, Some(3)));
        assert_eq!(r.summary.records, 3);
        assert_eq!(r.next_seq, 3);
    }

    #[test]
    fn altered_mac_digit_seq_and_non_json() {
        let c = chain(&signs(4));
        // A changed seq: mac checked under the claimed seq's key.
        let mut log = c.all();
        let at = c.lines[0].len() + c.lines[1].len() + br#"{"v":1,"seq":"#.len();
        log[at] = b'3';
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 3, Some(3)));
        // An uppercased mac digit: not a well-formed tail.
        let mut lines = c.lines.clone();
        let n = lines[1].len();
        lines[1][n - 5] = b'A';
        let p = problem(&run(&[&lines.concat()], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 2, Some(1)));
        // A blank line in the middle.
        let log = [c.lines[0].clone(), b"\n".to_vec(), c.lines[1].clone()].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 2, None));
    }

    #[test]
    fn wrong_key_fails_at_the_first_line() {
        let c = chain(&signs(2));
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "log", &c.all());
        let opts = VerifyOptions::new(ChainKey::from_bytes([1; 32]), None);
        let r = verify_files(&[p], &opts).unwrap();
        let p = problem(&r);
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 1, Some(0)));
    }

    #[test]
    fn prev_that_does_not_link_is_altered() {
        // A record sealed with the right key but the wrong prev (a forked chain).
        let c = chain(&signs(3));
        let mut key = k0();
        key.evolve();
        key.evolve();
        let mut forged = Vec::new();
        seal_into(&mut forged, &key, 2, &c.macs[0], &sign(1));
        let log = [c.lines[0].clone(), c.lines[1].clone(), forged].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 3, Some(2)));
        assert!(p.detail.contains("prev"), "{}", p.detail);
    }

    #[test]
    fn deleted_line_is_missing() {
        let c = chain(&signs(6));
        let log = c.joined(&[0, 1, 2, 4, 5]);
        let r = run(&[&log], Some(c.state()));
        let p = problem(&r);
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Missing, 4, Some(4)));
        assert!(p.detail.contains("seq 3"), "{}", p.detail);
        assert_eq!(r.summary.records, 3);
    }

    #[test]
    fn log_starting_after_seq_0_is_missing() {
        let c = chain(&signs(4));
        let p = problem(&run(&[&c.joined(&[2, 3])], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Missing, 1, Some(2)));
        assert!(p.detail.contains("seq 0..1"), "{}", p.detail);
    }

    #[test]
    fn inserted_copy_of_an_earlier_line() {
        let c = chain(&signs(6));
        let log = c.joined(&[0, 1, 2, 3, 1, 4, 5]);
        let p = problem(&run(&[&log], Some(c.state()))).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Inserted, 5, Some(1)));
        // An adjacent duplicate.
        let p = problem(&run(&[&c.joined(&[0, 1, 1, 2])], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Inserted, 3, Some(1)));
    }

    #[test]
    fn swapped_adjacent_lines_are_reordered() {
        let c = chain(&signs(6));
        let log = c.joined(&[0, 1, 3, 2, 4, 5]);
        let r = run(&[&log], Some(c.state()));
        let p = problem(&r);
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Reordered, 3, Some(3))
        );
        assert!(p.detail.contains("line 4"), "{}", p.detail);
        assert_eq!(r.summary.records, 2);
    }

    #[test]
    fn torn_last_line() {
        let c = chain(&signs(4));
        let mut log = c.all();
        log.truncate(log.len() - 30);
        // The state of the three complete records: a writer died in its fourth write.
        let r = run(&[&log], Some(chain(&signs(3)).state()));
        let p = problem(&r);
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::TornLastLine, 4, Some(3))
        );
        assert_eq!(r.summary.records, 3);

        // Only the newline missing: the record verifies but the line is still torn.
        let mut log = c.all();
        log.pop();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::TornLastLine, 4, Some(3))
        );

        // Torn inside the prefix: the seq cannot be read.
        let log = [c.lines[0].clone(), b"{\"v\":1,\"se".to_vec()].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::TornLastLine, 2, None)
        );

        // The same fragment followed by more lines is an alteration, not a torn write.
        let log = [b"{\"v\":1,\"se\n".to_vec(), c.lines[0].clone()].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line), (ProblemKind::Altered, 1));
    }

    #[test]
    fn a_last_line_with_its_newline_is_not_torn() {
        let c = chain(&signs(3));
        // A complete last record with a carriage return before its newline.
        let mut crlf = c.lines[2].clone();
        crlf.insert(crlf.len() - 1, b'\r');
        let log = [c.joined(&[0, 1]), crlf].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 3, Some(2)));
        assert!(p.detail.contains("carriage return"), "{}", p.detail);
        assert!(!p.detail.contains("torn"), "{}", p.detail);

        // A fragment that ends in a newline.
        let log = [c.lines[0].clone(), b"{\"v\":1,\"se\n".to_vec()].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 2, None));
    }

    #[test]
    fn chain_across_two_files() {
        let c = chain(&signs(7));
        let (a, b) = (c.joined(&[0, 1, 2]), c.joined(&[3, 4, 5, 6]));
        let r = run(&[&a, &b], Some(c.state()));
        assert!(r.intact, "{:?}", r.problem);
        assert_eq!(r.summary.records, 7);

        // An empty file in between (just rotated) changes nothing.
        assert!(run(&[&a, b"", &b], Some(c.state())).intact);

        // Line numbers are per file.
        let mut b2 = b.clone();
        b2[c.lines[3].len() + 100] ^= 0x20;
        let p = problem(&run(&[&a, &b2], Some(c.state()))).clone();
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Altered, 2, Some(4)));
        assert!(p.file.ends_with("log.1"));

        // Files in the wrong order: seq 0 turns up a few lines later.
        let p = problem(&run(&[&b, &a], None)).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Reordered, 1, Some(3))
        );
        assert!(p.file.ends_with("log.0") && p.detail.contains("log.1:1"));

        // Truncated: the location is the last line of the last file.
        let p = problem(&run(&[&a, &c.joined(&[3, 4])], Some(c.state()))).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Truncated, 2, Some(4))
        );
        assert!(p.file.ends_with("log.1"));
    }

    #[test]
    fn reordered_across_a_file_boundary() {
        let c = chain(&signs(4));
        let p = problem(&run(&[&c.joined(&[0, 2]), &c.joined(&[1, 3])], None)).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Reordered, 2, Some(2))
        );
        assert!(p.detail.contains("log.1:1"), "{}", p.detail);
    }

    #[test]
    fn absurd_seq_jump_is_altered_without_evolving_that_far() {
        let c = chain(&signs(1));
        let mut far = Vec::new();
        seal_into(&mut far, &k0(), 50_000_000, &c.macs[0], &sign(1));
        let log = [c.lines[0].clone(), far].concat();
        let p = problem(&run(&[&log], None)).clone();
        assert_eq!(
            (p.kind, p.line, p.seq),
            (ProblemKind::Altered, 2, Some(50_000_000))
        );
    }
}
