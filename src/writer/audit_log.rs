//! The audit file writer: one chain per file, shared by threads and processes.
//!
//! Every writer maps the state file (`<log>.state`, INTERNALS.md §1) and appends holding the
//! robust process-shared mutex in it: it reads the state (from its cache if no other writer
//! wrote since), seals the records with the current key, writes them with one `write` to the
//! `O_APPEND` log, and stores the evolved key in the other slot of the state, wiping the old
//! one. The old key is gone from memory and from the state file once the append returns: that
//! is the forward security. A writer that dies holding the mutex leaves it marked; the next one
//! checks the log against the state and rolls forward over, or cuts off, what it left.

use crate::format::chain::ChainKey;
use crate::format::line::seal_and_evolve_into;
use crate::format::record::{Event, ProcessIdentity, Record};
use crate::format::state::{self, layout, ChainState, StateError};
use crate::os::{Locked, SharedFileMap};
use crate::writer::checkpoints::{CheckpointSettings, Checkpointer};
pub use crate::writer::error::{KeyFileError, WriterError};
pub(crate) use crate::writer::losses::Losses;
use crate::writer::losses::{gap_body, settle_lost_since, unreported_losses};
pub(crate) use crate::writer::open::read_key_file;
pub use crate::writer::open::state_path_for;
use crate::writer::open::{
    map_state_file, open_existing_log, open_log_and_state, refuse_symlink_or_special,
};
use crate::writer::own_files::{FileRole, UntrustedFile};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use zeroize::Zeroize;

/// How the log is opened and written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub log_path: PathBuf,
    /// Needed only to start a chain (no state yet).
    pub key_file: Option<PathBuf>,
    /// Mode for a new log file: 0o600 (default) or 0o640.
    pub log_mode: u32,
    /// `fdatasync` the log before an append returns. (The state file is synced only around a
    /// rotation and after counting lost records: after a crash the next writer rolls forward
    /// over records the state on disk is missing.)
    pub sync_always: bool,
    /// Rotate to a new file when an append would take the log past this size.
    pub rotate_bytes: Option<u64>,
    /// Sign checkpoints of the log's tree (`P11AUDIT_CHECKPOINT_KEY`).
    pub checkpoint: Option<CheckpointSettings>,
}

/// Largest tail (bytes past what the state knows) that recovery will read.
pub(super) const MAX_RECOVERY_BYTES: u64 = 64 << 20;

/// The seqs an append wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first_seq: u64,
    pub last_seq: u64,
    /// The append began with a `gap` record (at `first_seq`) before the records it was given.
    pub gap: bool,
}

/// How long a writer waits for the state file's mutex before it gives up (and fails closed):
/// a writer stopped while holding it must not hang every other process forever.
pub(super) const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a writer `fstat`s its log on the fast path, to notice that the log was deleted,
/// replaced or truncated behind its back. Every append did that once; it costs a syscall, and the
/// shared state already tells a writer everything other writers did.
pub const LOG_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Disk space is reserved past the log's end in steps of this many bytes (or up to the rotation
/// size, if smaller), so that appends do not each allocate blocks.
pub(super) const RESERVE_STEP: u64 = 1 << 20;

/// The open log and state files of one process.
pub struct AuditLog {
    pub(super) settings: LogSettings,
    pub(super) state_path: PathBuf,
    pub(super) log: File,
    /// (st_dev, st_ino) of `log`.
    pub(super) log_id: (u64, u64),
    /// The state file, mapped: its mutex serializes writers in all processes (`os`). Shared
    /// with `Losses`.
    pub(super) shared: std::sync::Arc<SharedFileMap>,
    /// Reused buffer for the sealed lines of one append.
    pub(super) buf: Vec<u8>,
    /// The state this process last stored, the state file's generation then, and the stored
    /// key's fingerprint: if the generation has not moved, nobody else wrote, and only the key
    /// is read back from the slot (and checked against the fingerprint). The cached state's own
    /// key is zeros: no key stays in memory between appends.
    pub(super) cached: Option<(u64, ChainState, [u8; 16])>,
    /// When the log was last checked with `fstat` (None: not yet; the first append checks it).
    pub(super) log_checked: Option<Instant>,
    /// Offset of `log` up to which this process has reserved disk space (`preallocate`).
    pub(super) reserved_to: u64,
    /// The checkpoint key, when this writer signs checkpoints.
    pub(super) checkpointer: Option<Checkpointer>,
    /// Unit tests: the next `fdatasync` fails (after the append's `write`, as with EIO).
    #[cfg(test)]
    pub(super) fail_sync: bool,
    /// Unit tests: records another process counts as lost during the next append (after it
    /// has read the count it reports).
    #[cfg(test)]
    pub(super) lost_during_append: u64,
}

impl AuditLog {
    /// Opens (or starts) the chain at `settings.log_path`. `who` signs the chain-start record
    /// when this call creates the chain.
    pub fn open(settings: &LogSettings, who: &ProcessIdentity) -> Result<AuditLog, WriterError> {
        let log_path = &settings.log_path;
        let state_path = state_path_for(log_path);
        match log_path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                return Err(WriterError::NoDirectory {
                    log: log_path.clone(),
                })
            }
            _ => {}
        }
        refuse_symlink_or_special(log_path, FileRole::Log)?;
        refuse_symlink_or_special(&state_path, FileRole::State)?;
        let (log, state) = open_log_and_state(settings, &state_path)?;
        let log_meta = log
            .metadata()
            .map_err(|e| WriterError::io("stat audit log", log_path, e))?;
        let checkpointer = settings
            .checkpoint
            .as_ref()
            .map(Checkpointer::open)
            .transpose()?;
        let shared = map_state_file(&state, &state_path, log_path, log_meta.len())?;
        let mut me = AuditLog {
            settings: settings.clone(),
            state_path,
            log,
            log_id: (log_meta.dev(), log_meta.ino()),
            shared: std::sync::Arc::new(shared),
            buf: Vec::with_capacity(4096),
            cached: None,
            log_checked: None,
            reserved_to: 0,
            checkpointer,
            #[cfg(test)]
            fail_sync: false,
            #[cfg(test)]
            lost_during_append: 0,
        };
        me.with_lock(|me| me.start_chain_if_new(who, &log_meta))?;
        if me.checkpointer.is_some() {
            me.with_lock(|me| me.refuse_checkpoints_without_tree())?;
        }
        Ok(me)
    }

    /// Runs `f` holding the state file's mutex. If its last owner died holding it, the state
    /// is marked for a log check (`RECOVER`), which the next append does before anything else.
    pub(super) fn with_lock<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, WriterError>,
    ) -> Result<T, WriterError> {
        let how = self
            .shared
            .lock_robust_mutex(layout::MUTEX, LOCK_TIMEOUT)
            .map_err(|e| WriterError::io("lock audit state file", &self.state_path, e))?;
        if how == Locked::OwnerDied {
            self.shared.store_u64(layout::RECOVER, 1);
            // The dead writer may have switched slots without counting it: no writer may trust
            // its cached state now.
            self.bump_generation();
            self.shared.mark_consistent(layout::MUTEX);
        }
        // Unlock even if `f` panics (the panic is caught at the C boundary; the lock must not
        // stay with a thread that goes on running other code).
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        if out.is_err() {
            // A panic may have come between a `write` and storing the state.
            self.log_may_be_ahead();
        }
        self.shared.unlock_robust_mutex(layout::MUTEX);
        out.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    pub(super) fn start_chain_if_new(
        &mut self,
        who: &ProcessIdentity,
        log_meta: &std::fs::Metadata,
    ) -> Result<(), WriterError> {
        match self.read_state() {
            Err(StateError::Empty) => {}
            Ok(_) => return Ok(()),
            Err(StateError::Corrupt(why)) => return Err(self.corrupt_state(why)),
        }
        if log_meta.len() > 0 {
            return Err(WriterError::LogWithoutState {
                log: self.settings.log_path.clone(),
                state: self.state_path.clone(),
            });
        }
        let Some(key_file) = self.settings.key_file.clone() else {
            return Err(WriterError::NoKeyFile {
                log: self.settings.log_path.clone(),
            });
        };
        let key = read_key_file(&key_file)?;
        // The state goes first: if this process dies right after writing the start record,
        // the next writer finds a state and rolls forward over the record, instead of finding
        // a log with content beside an empty state, which it must refuse.
        self.store_state(ChainState::genesis(key, self.log_id.0, self.log_id.1, 0));
        self.shared.store_u64(layout::RECOVER, 0);
        let state = self
            .read_state()
            .map_err(|_| self.corrupt_state("unreadable after writing"))?;
        let mut start = Record::new(who, 0, Event::Start, None);
        start.detail.note = Some("new chain".into());
        self.append_locked(state, None, &[start.to_body()])?;
        Ok(())
    }

    /// The current state: the cached one (with the key read from the slot) if nobody wrote
    /// since, else the active slot decoded.
    pub(super) fn read_state(&mut self) -> Result<ChainState, StateError> {
        let generation = self.shared.load_u64(layout::GENERATION);
        let active = self.shared.load_u64(layout::ACTIVE);
        let at = state::active_slot_offset(active)?;
        if let Some((g, mut state, fingerprint)) = self.cached.take() {
            if g == generation {
                let mut line = [0u8; state::KEY_LINE.end - state::KEY_LINE.start];
                self.shared.read(at + state::KEY_LINE.start, &mut line);
                let key = state::decode_key_line(&line);
                line.zeroize();
                state.key = key?;
                // The slot's check line is not read on this path: this stands in for it.
                if state.key.fingerprint() != fingerprint {
                    return Err(StateError::Corrupt(
                        "its key changed without a state update",
                    ));
                }
                return Ok(state);
            }
        }
        let mut slot = [0u8; layout::SLOT_LEN];
        self.shared.read(at, &mut slot);
        let state = state::decode_slot(&slot);
        slot.zeroize();
        let mut state = state?;
        // `active` is 0 or 1: `active_slot_offset` accepted it.
        state.lost_reported = self.shared.load_u64(layout::REPORTED[active as usize]);
        state.tree = state::read_tree(
            |at, out| self.shared.read(at, out),
            active as usize,
            state.next_seq,
        );
        Ok(state)
    }

    /// Writes `state` to the inactive slot, makes it the active one, and wipes the old slot (the
    /// old key must not outlive the append: forward security).
    ///
    /// The generation moves first: a writer that dies part way through has already told every
    /// other writer not to trust its cached state. This process caches the state without its
    /// key (it reads the key from the slot when it next appends): a process that stays idle
    /// while others append must not keep an old key in its memory (forward security).
    pub(super) fn store_state(&mut self, mut state: ChainState) {
        let generation = self.bump_generation();
        let old = (self.shared.load_u64(layout::ACTIVE) as usize).min(1);
        let new = 1 - old;
        let mut text = state.encode();
        self.shared.zero(layout::SLOTS[new], layout::SLOT_LEN);
        self.shared.write(layout::SLOTS[new], &text);
        text.zeroize();
        self.shared
            .store_u64(layout::REPORTED[new], state.lost_reported);
        let current_tree = self.shared.load_u64(layout::TREE[old]).checked_sub(1);
        for (at, bytes) in state::tree_writes(state.tree.as_deref(), current_tree, new) {
            self.shared.write(at, bytes);
        }
        let tree_word = state.tree.as_ref().map_or(0, |t| t.size + 1);
        self.shared.store_u64(layout::TREE[new], tree_word);
        self.shared.store_u64(layout::ACTIVE, new as u64);
        self.shared.zero(layout::SLOTS[old], layout::SLOT_LEN);
        let fingerprint = state.key.fingerprint();
        // Replacing the key wipes it (ChainKey zeroizes on drop).
        state.key = ChainKey::from_bytes([0; 32]);
        self.cached = Some((generation, state, fingerprint));
    }

    /// `fdatasync` of the log in durable mode.
    pub(super) fn sync_if_durable(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if std::mem::take(&mut self.fail_sync) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        if self.settings.sync_always {
            self.log.sync_data()
        } else {
            Ok(())
        }
    }

    /// Moves the state file's generation on (every writer's cached state becomes stale) and
    /// returns the new value.
    pub(super) fn bump_generation(&self) -> u64 {
        let generation = self.shared.load_u64(layout::GENERATION).wrapping_add(1);
        self.shared.store_u64(layout::GENERATION, generation);
        generation
    }

    pub(super) fn not_its_log(&self) -> WriterError {
        WriterError::NotItsLog {
            log: self.settings.log_path.clone(),
            state: self.state_path.clone(),
        }
    }

    pub(super) fn corrupt_state(&self, why: &'static str) -> WriterError {
        WriterError::StateUnusable {
            state: self.state_path.clone(),
            why,
        }
    }

    /// The records lost and not yet reported, for whoever notices a loss.
    pub(crate) fn losses(&self) -> Losses {
        Losses {
            map: self.shared.clone(),
            durable: self.settings.sync_always,
        }
    }

    /// Appends `bodies` (serialized `Record`s) as consecutive records, with one `write`. If
    /// records were lost and not yet reported (`Losses`), by any writer, a `gap` record saying
    /// how many goes first. `template` gives the identity for that record and for a rotate
    /// record, should this append rotate the log.
    pub fn append(
        &mut self,
        bodies: &[String],
        template: &Record,
    ) -> Result<Appended, WriterError> {
        let (done, checkpoint) = self.with_lock(|me| {
            let recover = me.shared.load_u64(layout::RECOVER) != 0;
            let mut state = me.current_state()?;
            if me.shared.load_u64(layout::ROTATE_SEQ) != 0 {
                // A writer died in the middle of a rotation: finish it (or call it off).
                state = me.resume_rotation(state)?;
            }
            let mut state = me.follow(state)?;
            let check_due = me
                .log_checked
                .is_none_or(|t| t.elapsed() >= LOG_CHECK_INTERVAL);
            if recover || check_due {
                state = me.check_log(state)?;
            }
            // What no gap record has reported yet. Under the mutex: no two appends report the
            // same losses; and the state this append stores says they are reported, in the
            // same atomic switch that puts its records in the chain (`store_state`).
            let unreported = unreported_losses(&me.shared, state.lost_reported);
            let gap = (unreported.pending > 0)
                .then(|| gap_body(template, unreported.pending, unreported.since));
            #[cfg(test)]
            me.losses()
                .count(std::mem::take(&mut me.lost_during_append));
            if gap.is_none() && bodies.is_empty() {
                let nothing = Appended {
                    first_seq: state.next_seq,
                    last_seq: state.next_seq.wrapping_sub(1),
                    gap: false,
                };
                return Ok((nothing, None));
            }
            if let Some(limit) = me.settings.rotate_bytes {
                // Each sealed line adds `v`, `seq`, `prev` and `mac` (about 160 bytes).
                let incoming: u64 = gap.iter().chain(bodies).map(|b| b.len() as u64 + 160).sum();
                if state.log_size > 0 && state.log_size + incoming > limit {
                    state = me.rotate(state, template)?;
                }
            }
            if gap.is_some() {
                state.lost_reported = unreported.lost_total;
            }
            let incoming = bodies.len() as u64 + u64::from(gap.is_some());
            let checkpoint = me.checkpoint_due(&state, incoming, template.ev == Event::Close)?;
            let done = me.append_locked(state, gap.as_deref(), bodies)?;
            if gap.is_some() {
                settle_lost_since(&me.shared, &unreported);
            }
            // The records are in the log: a checkpoint that fails now is said, not reported
            // as their failure.
            let signed = checkpoint
                .then(|| {
                    let size = done.last_seq + 1;
                    me.write_checkpoint(template).map(|note| (note, size))
                })
                .transpose()
                .unwrap_or_else(|e| {
                    crate::stderr_line(&format!("p11audit: {e}"));
                    None
                });
            Ok((done, signed))
        })?;
        // The file is replaced after the lock is released: other writers do not wait for it.
        if let Some((note, size)) = checkpoint {
            if let Err(e) = self.replace_checkpoint_file(&note, size) {
                crate::stderr_line(&format!("p11audit: {e}"));
            }
        }
        Ok(done)
    }

    /// The state, or why it cannot be used.
    pub(super) fn current_state(&mut self) -> Result<ChainState, WriterError> {
        match self.read_state() {
            Ok(s) => Ok(s),
            Err(StateError::Empty) => Err(self.corrupt_state("empty: the chain state was removed")),
            Err(StateError::Corrupt(why)) => Err(self.corrupt_state(why)),
        }
    }

    /// This process's log follows the file `state` names: after another process rotated the
    /// log, the state names the new file at the log's path.
    pub(super) fn follow(&mut self, state: ChainState) -> Result<ChainState, WriterError> {
        if (state.log_dev, state.log_ino) != self.log_id {
            let (log, id) = match open_existing_log(&self.settings.log_path) {
                Ok((log, id)) if id == (state.log_dev, state.log_ino) => (log, id),
                // There, but not a file this writer may append to.
                Err(e @ UntrustedFile::NotRegular { .. })
                | Err(e @ UntrustedFile::OwnedByAnother { .. })
                | Err(e @ UntrustedFile::OpenToOthers { .. }) => return Err(e.into()),
                _ => return Err(self.not_its_log()),
            };
            self.log = log;
            self.log_id = id;
            self.reserved_to = 0;
            self.log_checked = None;
        }
        Ok(state)
    }

    /// Makes sure disk space is reserved for `incoming` bytes at `log_size`. With rotation the
    /// reservation stops at the rotation size, so a rotated file keeps no reserved space worth
    /// mentioning past its end; without it, up to `RESERVE_STEP` past the end. Only an
    /// optimization: if the filesystem cannot reserve (no `fallocate`, or full), the write
    /// allocates as it always did, and fails by itself if it must.
    pub(super) fn reserve(&mut self, log_size: u64, incoming: u64) {
        let end = log_size + incoming;
        if end <= self.reserved_to {
            return;
        }
        let step = match self.settings.rotate_bytes {
            Some(limit) => RESERVE_STEP.min(limit.saturating_sub(log_size)),
            None => RESERVE_STEP,
        };
        let from = log_size.max(self.reserved_to);
        let to = end.max(log_size + step);
        // Whether or not it worked, the next attempt is a step further: a failing filesystem
        // costs one extra system call per step, not one per append.
        self.reserved_to = to;
        let _ = crate::os::preallocate(&self.log, from, to - from);
    }

    /// `msync` of the state file's page; a failure fails the append (fail-closed).
    pub(super) fn sync_state(&self, when: &'static str) -> Result<(), WriterError> {
        self.shared.sync().map_err(|source| WriterError::Io {
            action: "sync audit state file",
            path: self.state_path.clone(),
            context: when,
            source,
        })
    }

    /// Seals and writes `gap` (if any) and `bodies` after `state`, then stores the new state.
    /// Caller holds the lock.
    pub(super) fn append_locked(
        &mut self,
        mut state: ChainState,
        gap: Option<&str>,
        bodies: &[String],
    ) -> Result<Appended, WriterError> {
        let first_seq = state.next_seq;
        self.buf.clear();
        let mut mac = String::with_capacity(64);
        for body in gap.into_iter().chain(bodies.iter().map(String::as_str)) {
            let line_start = self.buf.len();
            seal_and_evolve_into(
                &mut self.buf,
                &mut state.key,
                state.next_seq,
                &state.prev_mac,
                body,
                &mut mac,
            );
            std::mem::swap(&mut state.prev_mac, &mut mac);
            state.next_seq += 1;
            if let Some(tree) = state.tree.as_mut() {
                // The leaf is the line without its newline.
                let line = &self.buf[line_start..self.buf.len() - 1];
                tree.push_line(line).map_err(|_| WriterError::TreeFull {
                    log: self.settings.log_path.clone(),
                })?;
            }
        }
        self.reserve(state.log_size, self.buf.len() as u64);
        // write_all retries EINTR and completes short writes. If it fails partway (ENOSPC after
        // a short write), cut the partial bytes off so no torn line stays in the middle.
        if let Err(e) = self.log.write_all(&self.buf) {
            self.cut_back(state.log_size);
            return Err(WriterError::io(
                "write audit log",
                &self.settings.log_path,
                e,
            ));
        }
        if let Err(e) = self.sync_if_durable() {
            // After a failed fdatasync the kernel may have dropped the pages' error and marked
            // them clean: the records may never reach the disk. They are reported as not
            // written (their calls refused, their output wiped), so they go.
            self.cut_back(state.log_size);
            return Err(WriterError::io(
                "fdatasync audit log",
                &self.settings.log_path,
                e,
            ));
        }
        state.log_size += self.buf.len() as u64;
        let last_seq = state.next_seq - 1;
        // The records are in the log now. Should this process die before the state is stored,
        // the next writer gets EOWNERDEAD and rolls forward over them (see `check_log`).
        self.store_state(state);
        Ok(Appended {
            first_seq,
            last_seq,
            gap: gap.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::micros_now;
    use crate::reader::verify::{verify_files, VerifyOptions};
    use crate::writer::testing::{log_settings, who};
    use std::fs::OpenOptions;
    use std::path::Path;

    const KEY: [u8; 32] = [0x42; 32];

    fn settings(dir: &Path) -> LogSettings {
        log_settings(dir, KEY)
    }

    /// The identity a rotate record would take (these tests never rotate).
    fn template() -> Record {
        Record::new(&who(), 0, Event::Outcome, None)
    }

    fn body(n: u64) -> Vec<String> {
        let mut r = Record::new(&who(), n, Event::Outcome, Some("C_Sign"));
        r.detail.in_len = Some(n);
        vec![r.to_body(), r.to_body()]
    }

    /// The chain verifies against K_0 and the state file, and holds `records` records.
    fn assert_intact(settings: &LogSettings, records: u64) {
        let state = state::decode_file(&std::fs::read(state_path_for(&settings.log_path)).unwrap())
            .unwrap();
        let opts = VerifyOptions::new(ChainKey::from_bytes(KEY), Some(state));
        let report = verify_files(std::slice::from_ref(&settings.log_path), &opts).unwrap();
        assert!(report.intact, "{:?}", report.problem);
        assert_eq!(report.summary.records, records);
    }

    /// Records lost by one writer are reported by the next append of another (as by the next
    /// process, after the one that lost them exited): a `gap` record first, with the count and
    /// since when, and then the count is gone.
    #[test]
    fn losses_outlive_the_writer_that_counted_them() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let before = micros_now();
        {
            let gone = AuditLog::open(&settings, &who()).unwrap();
            gone.losses().count(3);
            gone.losses().count(2);
        }
        let mut later = AuditLog::open(&settings, &who()).unwrap();
        assert_eq!(later.losses().pending(), 5);
        let done = later.append(&body(1), &template()).unwrap();
        assert!(done.gap);
        assert_eq!((done.first_seq, done.last_seq), (1, 3));
        assert_eq!(later.losses().pending(), 0);
        assert_eq!(later.shared.load_u64(layout::LOST_SINCE), 0);
        let text = std::fs::read_to_string(&settings.log_path).unwrap();
        let gap: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(gap["ev"], "gap", "{text}");
        assert_eq!(gap["lost"], 5, "{text}");
        let since = gap["since"].as_str().expect("since");
        let before = micros_text(before);
        assert!(
            before.as_str() <= since && since <= gap["ts"].as_str().unwrap(),
            "since {since} not between {before} and the gap's ts: {text}"
        );
        // Reported once: the next append has no gap record.
        assert!(!later.append(&body(2), &template()).unwrap().gap);
        assert_intact(&settings, 6);
    }

    /// A writer killed after its gap record reached the log, before it stored the state that
    /// says the losses are reported: the next writer rolls forward over the gap record (its
    /// `lost` counts as reported) and does not report the same losses again.
    #[test]
    fn losses_are_reported_once_even_by_a_writer_killed_after_its_write() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let state_path = state_path_for(&settings.log_path);
        let mut dying = AuditLog::open(&settings, &who()).unwrap();
        dying.losses().count(4);
        let before = std::fs::read(&state_path).unwrap();
        assert!(dying.append(&body(1), &template()).unwrap().gap);
        // What its death before `store_state` leaves: the log ahead of the state.
        put_back_stale_state(&state_path, before);
        drop(dying);

        let mut next = AuditLog::open(&settings, &who()).unwrap();
        assert_eq!(
            next.losses().pending(),
            4,
            "the stale state still counts them"
        );
        let done = next.append(&body(2), &template()).unwrap();
        assert!(!done.gap, "the same losses reported again");
        assert_eq!(next.losses().pending(), 0);
        assert_eq!(
            next.shared.load_u64(layout::LOST_SINCE),
            0,
            "nothing pending, yet a time is kept for the next loss"
        );
        // A later loss is dated by itself, not by the losses reported before.
        std::thread::sleep(Duration::from_millis(2));
        let later = micros_now();
        next.losses().count(1);
        assert!(next.append(&body(3), &template()).unwrap().gap);
        let text = std::fs::read_to_string(&settings.log_path).unwrap();
        let gaps = gaps_in(&text);
        assert_eq!(gaps.len(), 2, "{text}");
        assert_eq!(
            (gaps[0]["lost"].as_u64(), gaps[1]["lost"].as_u64()),
            (Some(4), Some(1))
        );
        assert!(
            gaps[1]["since"].as_str().unwrap() >= micros_text(later).as_str(),
            "{text}"
        );
        assert_intact(&settings, 9);
    }

    /// An OS crash can lose the state page with LOST after the log page with the gap record
    /// that reported it reached the disk: rolling forward then makes REPORTED exceed LOST.
    /// Nothing is reported again, no count wraps around, and LOST is raised to REPORTED.
    #[test]
    fn a_lost_count_below_what_was_reported_is_raised_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let state_path = state_path_for(&settings.log_path);
        let mut crashed = AuditLog::open(&settings, &who()).unwrap();
        let before_any_loss = std::fs::read(&state_path).unwrap();
        crashed.losses().count(4);
        assert!(crashed.append(&body(1), &template()).unwrap().gap);
        put_back_stale_state(&state_path, before_any_loss);
        drop(crashed);

        let mut next = AuditLog::open(&settings, &who()).unwrap();
        assert!(!next.append(&body(2), &template()).unwrap().gap);
        assert_eq!(next.shared.load_u64(layout::LOST), 4);
        assert_eq!(next.losses().pending(), 0);
        next.losses().count(1);
        assert!(next.append(&body(3), &template()).unwrap().gap);
        let gaps = gaps_in(&std::fs::read_to_string(&settings.log_path).unwrap());
        assert_eq!(gaps.len(), 2);
        assert_eq!(gaps[1]["lost"], 1);
        assert_intact(&settings, 9);
    }

    /// A writer killed at the very end of a rotation (the state names the new file, ROTATE_SEQ
    /// not yet cleared) leaves nothing for the next writer but to clear it: it must not try the
    /// file steps again (the old file's new name is taken by the old file) and refuse to log.
    #[test]
    fn a_rotation_killed_after_its_last_state_store_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let mut writer = AuditLog::open(&settings, &who()).unwrap();
        writer.append(&body(1), &template()).unwrap();
        let next_seq = writer
            .with_lock(|me| {
                let state = me.current_state()?;
                me.rotate(state, &template())
            })
            .unwrap()
            .next_seq;
        // The log has just been rotated: the new file holds nothing yet.
        assert_eq!(std::fs::metadata(&settings.log_path).unwrap().len(), 0);
        writer.shared.store_u64(layout::ROTATE_SEQ, next_seq);
        writer.shared.store_u64(layout::RECOVER, 1);
        drop(writer);

        let mut next = AuditLog::open(&settings, &who()).unwrap();
        next.append(&body(2), &template()).unwrap();
        assert_eq!(next.shared.load_u64(layout::ROTATE_SEQ), 0);
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.starts_with(&settings.log_path) || {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    name.starts_with("log.") && !name.ends_with(".state")
                }
            })
            .collect();
        files.sort();
        // Rotated names sort by time, before the log's own name.
        files.rotate_left(1);
        let state = state::decode_file(&std::fs::read(state_path_for(&settings.log_path)).unwrap())
            .unwrap();
        let opts = VerifyOptions::new(ChainKey::from_bytes(KEY), Some(state));
        let report = verify_files(&files, &opts).unwrap();
        assert!(report.intact, "{files:?}: {:?}", report.problem);
    }

    /// A writer that follows another's rotation adopts the new file at the log's path only if
    /// it passes the same checks as at open: here the new file was opened to others after the
    /// rotation, and the follower refuses, naming it, instead of appending to it.
    #[test]
    fn a_writer_following_a_rotation_refuses_a_new_file_open_to_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let mut follower = AuditLog::open(&settings, &who()).unwrap();
        follower.append(&body(1), &template()).unwrap();
        let mut rotator = AuditLog::open(&settings, &who()).unwrap();
        rotator
            .with_lock(|me| {
                let state = me.current_state()?;
                me.rotate(state, &template())
            })
            .unwrap();
        std::fs::set_permissions(&settings.log_path, std::fs::Permissions::from_mode(0o666))
            .unwrap();
        let e = follower.append(&body(2), &template()).unwrap_err();
        assert!(
            matches!(
                &e,
                WriterError::Untrusted(UntrustedFile::OpenToOthers { path, mode, .. })
                    if *path == settings.log_path && mode & 0o7777 == 0o666
            ),
            "{e}"
        );
        assert_eq!(std::fs::metadata(&settings.log_path).unwrap().len(), 0);
    }

    /// Puts `stale` (an earlier copy of the state file) back, with RECOVER set as the next
    /// writer's EOWNERDEAD would set it: what a writer that died between its log write and its
    /// state store, or an OS crash that lost the state page, leaves behind.
    fn put_back_stale_state(state_path: &Path, mut stale: Vec<u8>) {
        stale[layout::RECOVER..layout::RECOVER + 8].copy_from_slice(&1u64.to_ne_bytes());
        std::fs::write(state_path, &stale).unwrap();
    }

    fn gaps_in(text: &str) -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["ev"] == "gap")
            .collect()
    }

    fn micros_text(us: u64) -> String {
        crate::format::record::rfc3339_from_micros(us).to_string()
    }

    /// Losses counted while a gap record is being written stay counted for the next one, with
    /// a time no earlier than that writing began (not the time of the losses just reported).
    #[test]
    fn losses_counted_during_a_gap_append_stay_counted() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let mut writer = AuditLog::open(&settings, &who()).unwrap();
        writer.losses().count(2);
        let first_since = writer.shared.load_u64(layout::LOST_SINCE);
        assert_ne!(first_since, 0);
        std::thread::sleep(Duration::from_millis(2));
        let started = micros_now();
        writer.lost_during_append = 1;
        assert!(writer.append(&body(1), &template()).unwrap().gap);
        assert_eq!(writer.losses().pending(), 1, "the loss counted meanwhile");
        let since = writer.shared.load_u64(layout::LOST_SINCE);
        assert!(
            since >= started,
            "since {since}, the append began at {started}"
        );
        writer.append(&body(2), &template()).unwrap();
        let text = std::fs::read_to_string(&settings.log_path).unwrap();
        let gaps = gaps_in(&text);
        let total: u64 = gaps.iter().map(|g| g["lost"].as_u64().unwrap()).sum();
        assert_eq!(total, 3, "every loss reported once: {text}");
        assert_eq!(gaps.len(), 2, "{text}");
        let first = micros_text(first_since);
        assert_eq!(gaps[0]["since"], first.as_str());
        assert!(
            gaps[1]["since"].as_str().unwrap() > first.as_str(),
            "a later gap dated with the first one's time: {text}"
        );
    }

    /// An append whose records reached the file but which then failed (`fdatasync` failing)
    /// reports them not written: they are cut off the log, and the next append seals the same
    /// seqs in their place (not after them, which would break the chain for good).
    #[test]
    fn records_of_an_append_that_failed_after_writing_are_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, template) = (settings(dir.path()), template());
        let mut log = AuditLog::open(&settings, &who()).unwrap();
        // seq 0 is the chain's start record.
        assert_eq!(log.append(&body(1), &template).unwrap().first_seq, 1);
        let size_before = std::fs::metadata(&settings.log_path).unwrap().len();
        log.fail_sync = true;
        assert!(log.append(&body(2), &template).is_err());
        assert_eq!(
            std::fs::metadata(&settings.log_path).unwrap().len(),
            size_before,
            "the failed append's records are gone"
        );
        assert_eq!(log.append(&body(3), &template).unwrap().first_seq, 3);
        assert_intact(&settings, 5);
    }

    /// Between appends a writer keeps no chain key in memory: a process that stays idle while
    /// others append must not hold a key from which the records after it could be forged.
    #[test]
    fn an_idle_writer_holds_no_key_and_follows_other_writers() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, template) = (settings(dir.path()), template());
        let zero = ChainKey::from_bytes([0; 32]);
        let mut a = AuditLog::open(&settings, &who()).unwrap();
        let mut b = AuditLog::open(&settings, &who()).unwrap();
        a.append(&body(1), &template).unwrap();
        let (_, cached, _) = a.cached.as_ref().expect("a caches the state it stored");
        assert_eq!(cached.key, zero);
        for n in 0..5 {
            b.append(&body(n), &template).unwrap();
            assert_eq!(b.cached.as_ref().unwrap().1.key, zero);
        }
        // a's cache is stale (b wrote since): a reads the state b left.
        assert_eq!(a.append(&body(9), &template).unwrap().first_seq, 13);
        // a's cache is current: a reads only the key from the slot.
        assert_eq!(a.append(&body(10), &template).unwrap().first_seq, 15);
        assert_intact(&settings, 17);
    }

    /// A key changed in the state file's slot without a state update (a stray write, a bit
    /// flip) is refused, not used to seal the next records: only the key line is read back on
    /// the fast path, so its fingerprint stands in for the slot's check line.
    #[test]
    fn a_key_altered_in_the_slot_is_refused() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let (settings, template) = (settings(dir.path()), template());
        let mut log = AuditLog::open(&settings, &who()).unwrap();
        log.append(&body(1), &template).unwrap();
        let state_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(state_path_for(&settings.log_path))
            .unwrap();
        let mut active = [0u8; 8];
        state_file
            .read_exact_at(&mut active, layout::ACTIVE as u64)
            .unwrap();
        let at = layout::SLOTS[u64::from_ne_bytes(active) as usize] + state::KEY_LINE.start;
        let mut digit = [0u8; 1];
        let digit_at = (at + "key ".len()) as u64;
        state_file.read_exact_at(&mut digit, digit_at).unwrap();
        digit[0] = if digit[0] == b'0' { b'1' } else { b'0' };
        state_file.write_all_at(&digit, digit_at).unwrap();
        let refused = log.append(&body(2), &template).unwrap_err();
        assert!(
            matches!(refused, WriterError::StateUnusable { why, .. } if why.contains("key changed")),
            "{refused}"
        );
    }
}
