//! Show as the records stream past: each call's line written as soon as everything before it is
//! decided, an intent held until its outcome comes (or is given up on), and a prepare call's
//! outcome until its operation's first call comes in the same process and session (or the
//! session ends), within bounds.

use super::line::{header, human_line, unreadable_line, NoOutcome};
use super::{ShowError, ShowOptions, ShowSummary};
use crate::reader::verify::VerifyReport;
use crate::reader::view::{continues_operation, RecView};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};

/// One line of output waiting for the calls before it to be decided.
struct Entry {
    /// seq of the entry's first record; entries are in seq order.
    seq: u64,
    /// An intent waiting for its outcome.
    pending: bool,
    /// What to write once decided (empty: nothing).
    text: Vec<u8>,
    /// A pending intent's line, or a pending prepare call's outcome line.
    intent_line: Vec<u8>,
    /// A pending prepare call's outcome (it waits for its operation, not for an outcome).
    prepared: Option<Prepared>,
}

/// A prepare call's outcome waiting for its operation's first call.
struct Prepared {
    pid: u32,
    session: u64,
    function: String,
}

/// The lines decided and waiting, and what was written.
pub(super) struct Stream<'o, W: Write> {
    opts: &'o ShowOptions,
    out: W,
    /// Entries not written yet, in seq order: a waiting intent and everything after it.
    queue: VecDeque<Entry>,
    /// Intents (and prepare outcomes) in the queue waiting for their outcome (operation).
    pending: usize,
    /// The seqs of the pending prepare outcomes, by process and session.
    prepared: HashMap<(u32, u64), Vec<u64>>,
    /// Bytes held in the queue.
    held: usize,
    /// Lines written (with `json`: records), the header apart.
    written: u64,
    without_outcome: u64,
    given_up: u64,
    unreadable: u64,
    /// The first error writing `out`: nothing is written after it.
    error: Option<io::Error>,
}

impl<'o, W: Write> Stream<'o, W> {
    /// Output to `out`, starting with the header line unless `opts.json`.
    pub(super) fn new(opts: &'o ShowOptions, out: W) -> Self {
        let mut stream = Stream {
            opts,
            out,
            queue: VecDeque::new(),
            pending: 0,
            prepared: HashMap::new(),
            held: 0,
            written: 0,
            without_outcome: 0,
            given_up: 0,
            unreadable: 0,
            error: None,
        };
        if !opts.json {
            stream.write(header().as_bytes());
            stream.written = 0;
        }
        stream
    }

    /// The output could not be written: nothing more will be.
    pub(super) fn failed(&self) -> bool {
        self.error.is_some()
    }

    fn write(&mut self, text: &[u8]) {
        if text.is_empty() || self.error.is_some() {
            return;
        }
        match self.out.write_all(text) {
            Ok(()) => self.written += 1,
            Err(e) => self.error = Some(e),
        }
    }

    /// Writes every decided entry at the front.
    fn flush(&mut self) {
        while self.queue.front().is_some_and(|e| !e.pending) {
            let e = self.queue.pop_front().expect("checked");
            self.held -= e.text.len() + e.intent_line.len();
            self.write(&e.text);
        }
    }

    /// Adds a decided entry (written at once if nothing waits before it).
    fn decided(&mut self, seq: u64, text: Vec<u8>) {
        if self.queue.is_empty() {
            self.write(&text);
        } else if !text.is_empty() {
            self.held += text.len();
            self.queue.push_back(Entry {
                seq,
                pending: false,
                text,
                intent_line: Vec::new(),
                prepared: None,
            });
        }
    }

    fn raw(line: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(line.len() + 1);
        v.extend_from_slice(line);
        v.push(b'\n');
        v
    }

    /// Decides the pending intent at `idx` with `outcome` (None: shown without outcome, for
    /// the reason `missing`). Returns, in json mode, the text for the outcome's own line; None
    /// when the intent cannot be read, so the outcome must stand on its own.
    fn decide(
        &mut self,
        idx: usize,
        outcome: Option<(&RecView, &[u8])>,
        missing: Option<NoOutcome>,
    ) -> Option<Vec<u8>> {
        let entry = &mut self.queue[idx];
        let intent_line = std::mem::take(&mut entry.intent_line);
        let seq = entry.seq;
        entry.pending = false;
        let prepared = entry.prepared.take();
        self.pending -= 1;
        self.held -= intent_line.len();
        if let Some(p) = prepared {
            if let Some(seqs) = self.prepared.get_mut(&(p.pid, p.session)) {
                seqs.retain(|&s| s != seq);
                if seqs.is_empty() {
                    self.prepared.remove(&(p.pid, p.session));
                }
            }
            if outcome.is_none() {
                // No call of its operation came: the prepare outcome is a record on its own.
                let text = match RecView::parse(&intent_line) {
                    Ok(pv) if !self.opts.filter.matches(None, Some(&pv)) => Vec::new(),
                    Ok(_) if self.opts.json => Self::raw(&intent_line),
                    Ok(pv) => human_line(None, Some(&pv), None).into_bytes(),
                    Err(e) => {
                        self.unreadable += 1;
                        unreadable_line(seq, &e).into_bytes()
                    }
                };
                self.held += text.len();
                self.queue[idx].text = text;
                return None;
            }
        }
        if missing.is_some() {
            self.without_outcome += 1;
        }
        if missing == Some(NoOutcome::GivenUp) {
            self.given_up += 1;
        }
        let rec = outcome.map(|o| o.0);
        let (text, outcome_text) = match RecView::parse(&intent_line) {
            Ok(iv) if !self.opts.filter.matches(Some(&iv), rec) => (Vec::new(), Some(Vec::new())),
            Ok(_) if self.opts.json => (
                Self::raw(&intent_line),
                Some(outcome.map(|o| Self::raw(o.1)).unwrap_or_default()),
            ),
            Ok(iv) => (
                human_line(Some(&iv), rec, missing).into_bytes(),
                Some(Vec::new()),
            ),
            Err(e) => {
                // Cannot happen for a record that verified; shown rather than hidden.
                self.unreadable += 1;
                let t = if !self.opts.json {
                    unreadable_line(seq, &e).into_bytes()
                } else if self.opts.filter.is_empty() {
                    Self::raw(&intent_line)
                } else {
                    Vec::new()
                };
                (t, None)
            }
        };
        self.held += text.len();
        self.queue[idx].text = text;
        outcome_text
    }

    /// Gives up on the oldest waiting intents while over the bounds (a prepare outcome given
    /// up on is shown on its own).
    fn bound(&mut self) {
        while self.pending > self.opts.max_pending || self.held > self.opts.max_held_bytes {
            let Some(idx) = self.queue.iter().position(|e| e.pending) else {
                break;
            };
            self.decide(idx, None, Some(NoOutcome::GivenUp));
            self.flush();
        }
    }

    /// The queue index of the pending prepare outcome whose operation `view` goes on with.
    fn prepared_for(&self, view: &RecView) -> Option<usize> {
        let (session, function) = (view.session?, view.function()?);
        let seqs = self.prepared.get(&(view.pid, session))?;
        seqs.iter().find_map(|&seq| {
            let idx = self.queue.binary_search_by_key(&seq, |e| e.seq).ok()?;
            let p = self.queue[idx].prepared.as_ref()?;
            continues_operation(&p.function, function).then_some(idx)
        })
    }

    /// The pending prepare outcomes `view` ends without their operation: those of its session
    /// when it closes the session or cancels its operations (`C_SessionCancel`), the one of
    /// the same `*Init` when it is a new one in that session (the operation it started is
    /// over), all of its process's when it closes sessions wholesale or detaches. They are
    /// shown on their own.
    fn end_prepared(&mut self, view: &RecView) {
        let whole_process = matches!(view.function(), Some("C_CloseAllSessions" | "C_Finalize"))
            || matches!(&*view.ev, "close" | "attach");
        let ends: Vec<u64> = if whole_process {
            self.prepared
                .iter()
                .filter(|((pid, _), _)| *pid == view.pid)
                .flat_map(|(_, seqs)| seqs.iter().copied())
                .collect()
        } else if matches!(view.function(), Some("C_CloseSession" | "C_SessionCancel")) {
            let Some(session) = view.session else { return };
            self.prepared
                .get(&(view.pid, session))
                .cloned()
                .unwrap_or_default()
        } else if view.is_prepared_operation() {
            let (Some(session), Some(function)) = (view.session, view.function()) else {
                return;
            };
            let Some(seqs) = self.prepared.get(&(view.pid, session)) else {
                return;
            };
            seqs.iter()
                .copied()
                .filter(|&seq| {
                    self.queue
                        .binary_search_by_key(&seq, |e| e.seq)
                        .ok()
                        .and_then(|idx| self.queue[idx].prepared.as_ref())
                        .is_some_and(|p| p.function == function)
                })
                .collect()
        } else {
            return;
        };
        for seq in ends {
            if let Ok(idx) = self.queue.binary_search_by_key(&seq, |e| e.seq) {
                self.decide(idx, None, None);
            }
        }
        self.flush();
    }

    /// Holds record `seq` (an intent, or a prepare outcome) until what it waits for comes.
    fn hold(&mut self, seq: u64, line: &[u8], prepared: Option<Prepared>) {
        self.pending += 1;
        self.held += line.len();
        self.queue.push_back(Entry {
            seq,
            pending: true,
            text: Vec::new(),
            intent_line: line.to_vec(),
            prepared,
        });
        self.bound();
    }

    /// Takes in record `seq`, which verified, with its `line`.
    pub(super) fn on_record(&mut self, line: &[u8], seq: u64) {
        if self.opts.json && self.opts.filter.is_empty() {
            // Everything is selected: the log passes through as it is.
            self.decided(seq, Self::raw(line));
            return;
        }
        let view = match RecView::parse(line) {
            Ok(v) => v,
            Err(e) => {
                self.unreadable += 1;
                let text = if self.opts.json {
                    if self.opts.filter.is_empty() {
                        Self::raw(line)
                    } else {
                        Vec::new()
                    }
                } else {
                    unreadable_line(seq, &e).into_bytes()
                };
                self.decided(seq, text);
                return;
            }
        };
        if view.ev == "intent" {
            self.hold(seq, line, None);
            return;
        }
        if !self.prepared.is_empty() {
            self.end_prepared(&view);
        }
        if view.ev == "outcome" {
            let joins = match view.intent {
                Some(i) => self
                    .queue
                    .binary_search_by_key(&i, |e| e.seq)
                    .ok()
                    .filter(|&idx| self.queue[idx].pending),
                // It tells its own init: a pending prepare outcome of its operation (one
                // released on its own, then cancelled) is shown on its own.
                None if view.init.is_some() => {
                    if let Some(idx) = self.prepared_for(&view) {
                        self.decide(idx, None, None);
                        self.flush();
                    }
                    None
                }
                None => self.prepared_for(&view),
            };
            if let Some(idx) = joins {
                let joined = self.decide(idx, Some((&view, line)), None);
                self.flush();
                if let Some(outcome_text) = joined {
                    self.decided(seq, outcome_text);
                    return;
                }
            }
            if view.is_prepared_operation() {
                let (pid, session) = (view.pid, view.session.unwrap_or_default());
                self.prepared.entry((pid, session)).or_default().push(seq);
                let function = view.function().unwrap_or_default().to_string();
                self.hold(
                    seq,
                    line,
                    Some(Prepared {
                        pid,
                        session,
                        function,
                    }),
                );
                return;
            }
        }
        let text = if !self.opts.filter.matches(None, Some(&view)) {
            Vec::new()
        } else if self.opts.json {
            Self::raw(line)
        } else {
            human_line(None, Some(&view), None).into_bytes()
        };
        self.decided(seq, text);
    }

    /// After the last verified record; `intact` says whether the log verified to its end.
    pub(super) fn finish(&mut self, intact: bool) {
        let why = if intact {
            NoOutcome::AtEnd
        } else {
            NoOutcome::Unverified
        };
        while let Some(idx) = self.queue.iter().position(|e| e.pending) {
            self.decide(idx, None, Some(why));
            self.flush();
        }
        debug_assert!(self.prepared.is_empty());
        self.flush();
        if self.error.is_none() {
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
    }

    /// What the run did, given the verifier's `report` (None when the walk was stopped).
    pub(super) fn summary(
        mut self,
        report: Option<VerifyReport>,
    ) -> Result<ShowSummary, ShowError> {
        let verify = match self.error.take() {
            // The reader closed the output (`| head`): the rest was not read.
            Some(e) if e.kind() == io::ErrorKind::BrokenPipe => None,
            Some(e) => return Err(ShowError::Output(e)),
            None => report,
        };
        Ok(ShowSummary {
            verify,
            written: self.written,
            without_outcome: self.without_outcome,
            given_up: self.given_up,
            unreadable: self.unreadable,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::reader::show::testing::{intent, outcome, run};
    use crate::reader::show::{show, Filter, ShowOptions};
    use crate::reader::testlog::log;
    use crate::reader::Progress;

    /// The seqs of `show --json`'s lines.
    fn json_seqs(out: &str) -> Vec<u64> {
        out.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    /// An outcome of `f` in session `session` of process `pid`, without intent.
    fn call(secs: u64, pid: u32, session: u64, f: &str) -> String {
        crate::reader::testlog::body(
            secs,
            pid,
            0,
            "outcome",
            Some(f),
            &format!(r#","rv":"CKR_OK","dur_us":7,"session":{session}"#),
        )
    }

    #[test]
    fn prepare_outcomes_join_their_operation_or_stand_alone() {
        let bodies = [
            call(0, 1, 1, "C_SignInit"),        // 0: joined with 3
            call(1, 1, 2, "C_FindObjectsInit"), // 1: its session closes first: alone
            call(2, 2, 1, "C_Sign"),            // 2: another process: on its own
            call(3, 1, 1, "C_Sign"),            // 3
            call(4, 1, 2, "C_CloseSession"),    // 4
            call(5, 1, 1, "C_DigestInit"),      // 5: nothing follows: alone at the end
        ];
        let (out, s) = run(&bodies, &ShowOptions::new(Filter::default(), false));
        let lines: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(
            lines[0].starts_with("0>3 ")
                && lines[0].contains(" C_Sign ")
                && lines[0].contains("after C_SignInit"),
            "{out}"
        );
        for (line, (seq, function)) in lines[1..].iter().zip([
            ("1 ", "C_FindObjectsInit"),
            ("2 ", " C_Sign "),
            ("4 ", "C_CloseSession"),
            ("5 ", "C_DigestInit"),
        ]) {
            assert!(line.starts_with(seq) && line.contains(function), "{out}");
        }
        assert!(!out.contains("NO OUTCOME"), "{out}");
        assert_eq!(s.without_outcome, 0);

        // json with a filter: the prepare outcome's line, and its operation's in log order.
        let f = Filter {
            functions: vec!["C_Sign".into()],
            ..Default::default()
        };
        let (out, _) = run(&bodies, &ShowOptions::new(f, true));
        let seqs = json_seqs(&out);
        assert_eq!(seqs, [0, 2, 3], "{out}");
    }

    #[test]
    fn a_cancel_a_new_init_or_a_told_init_ends_a_pending_prepare_outcome() {
        let told = crate::reader::testlog::body(
            5,
            1,
            0,
            "outcome",
            Some("C_Sign"),
            r#","rv":"CKR_OK","dur_us":7,"session":3,"init":{"fn":"C_SignInit","ts":"2026-01-01T00:00:04.000000Z","dur_us":3}"#,
        );
        let bodies = [
            call(0, 1, 1, "C_SignInit"),      // 0: cancelled: alone
            call(1, 1, 1, "C_SessionCancel"), // 1
            call(1, 1, 1, "C_Sign"),          // 2: not of the cancelled operation: alone
            call(2, 1, 2, "C_DigestInit"),    // 3: a new C_DigestInit follows: alone
            call(3, 1, 2, "C_DigestInit"),    // 4: joined with 5
            call(4, 1, 2, "C_Digest"),        // 5
            call(4, 1, 3, "C_SignInit"),      // 6: its operation's outcome tells another: alone
            told,                             // 7: tells its own init
        ];
        let (out, _) = run(&bodies, &ShowOptions::new(Filter::default(), false));
        let lines: Vec<&str> = out.lines().skip(1).collect();
        let firsts: Vec<&str> = lines
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(firsts, ["0", "1", "2", "3", "4>5", "6", "7"], "{out}");
        assert!(lines[6].contains("after C_SignInit"), "{out}");
        assert!(
            lines[6].contains("00:00:04.000000Z"),
            "the init's time: {out}"
        );
    }

    #[test]
    fn waiting_intents_are_bounded_and_given_up_in_order() {
        let bodies = [
            intent(0, "C_Login"),                  // 0: given up (too many waiting)
            intent(1, "C_SignInit"),               // 1
            intent(2, "C_DestroyObject"),          // 2: never answered
            outcome(3, "C_Login", "CKR_OK", 0),    // 3: on its own line
            outcome(4, "C_SignInit", "CKR_OK", 1), // 4: joined with 1
        ];
        let mut opts = ShowOptions::new(Filter::default(), false);
        opts.max_pending = 2;
        let (out, s) = run(&bodies, &opts);
        let lines: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("0 ") && lines[0].contains("NO OUTCOME"));
        assert!(
            lines[0].contains("too many other calls were waiting"),
            "{}",
            lines[0]
        );
        assert!(lines[1].starts_with("1>4 ") && lines[1].contains("C_SignInit"));
        assert!(lines[2].starts_with("2 ") && lines[2].contains("NO OUTCOME"));
        assert!(
            lines[2].contains("the process may have died"),
            "{}",
            lines[2]
        );
        assert!(lines[3].starts_with("3 ") && lines[3].contains("C_Login"));
        assert!(lines[3].contains("CKR_OK") && lines[3].contains("7us"));
        assert_eq!((s.without_outcome, s.given_up), (2, 1));
        assert!(s.verify.unwrap().intact);

        // Bounding the bytes held has the same effect. (A filter that selects everything:
        // with no filter at all, json passes lines through without holding any.)
        let all = Filter {
            uids: vec![0],
            ..Default::default()
        };
        let mut opts = ShowOptions::new(all, true);
        opts.max_held_bytes = 10;
        let (out, s) = run(&bodies, &opts);
        assert_eq!(s.given_up, 3);
        // Every record once, in log order.
        let seqs = json_seqs(&out);
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn intents_waiting_when_the_log_stops_verifying_say_so() {
        let bodies = [intent(0, "C_Login"), outcome(1, "C_Login", "CKR_OK", 0)];
        let (_dir, path, vopts) = log(&bodies);
        // Cut the outcome's line short, as a torn write would.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 20);
        std::fs::write(&path, bytes).unwrap();
        let mut out = Vec::new();
        let opts = ShowOptions::new(Filter::default(), false);
        let s = show(
            &[path],
            &vopts,
            &opts,
            &mut out,
            &mut Progress::new(false, &[]),
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!s.verify.unwrap().intact);
        assert!(out.contains("NO OUTCOME"), "{out}");
        assert!(out.contains("it may be past the problem"), "{out}");
        assert!(!out.contains("may have died"), "{out}");
    }
}
