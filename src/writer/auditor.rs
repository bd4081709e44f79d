//! The in-process side of the audit trail: records that may wait, and records that must be in
//! the file before a call goes on. Records that could not be written are counted in the state
//! file (`writer::Losses`), and the writer reports them in gap records.
//!
//! Records are serialized by the calling thread before it takes the lock; the lock covers only
//! the queue, never a write to the file (see `Auditor`), and is never held across a call into
//! the provider.

use crate::format::record::{ProcessIdentity, Record};
use crate::os::lock::Mutex;
use crate::writer::audit_log::{AuditLog, LogSettings, Losses, WriterError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, MutexGuard};
use std::time::{Duration, Instant};

/// What to do with a call whose record could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Refuse the call (acting) or withhold its output (result). The default.
    Closed,
    /// Forward and hand out anyway; the loss is still counted and reported in a gap record.
    Open,
}

/// Waiting records are written at the latest when this many are queued...
const MAX_WAITING_RECORDS: usize = 256;
/// ...or when they add up to this many bytes.
const MAX_WAITING_BYTES: usize = 64 << 10;

/// A thread whose record another thread is writing spins this long for that write to end before
/// it sleeps. An append takes 2 to 5 µs; going to sleep and being woken costs more than that in
/// system calls and scheduling, on both threads (docs/PERFORMANCE.md). Short, because with more
/// threads than cores a spinning thread takes a core from one with real work. Not in durable
/// mode, where an append waits for the disk.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(5);

/// A record that must be in the file could not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRecorded;

/// What became of the records with tickets `first..end` (written in one append, or lost).
#[derive(Debug, Clone, Copy)]
struct Batch {
    first: u64,
    end: u64,
    /// The seq of the record with ticket `first`; None if the append failed.
    first_seq: Option<u64>,
}

struct Inner {
    /// The log, or None while a thread (the leader) is writing with it, without the lock.
    log: Option<AuditLog>,
    waiting: Vec<String>,
    waiting_bytes: usize,
    /// Every record queued gets a ticket, in queue order: the next one is `queued`.
    queued: u64,
    /// Tickets below this have been written (or lost).
    resolved: u64,
    /// The batches that resolved tickets some thread may still wait for: a leader forgets those
    /// that hold no ticket in `waiting_for`.
    batches: Vec<Batch>,
    /// The tickets of threads that wait (spinning or asleep) for another thread's append.
    waiting_for: Vec<u64>,
    /// Threads asleep waiting for their ticket (they need a wake-up).
    waiters: usize,
    /// Threads in `hold` (before fork): while non-zero, no thread starts a write.
    fork_pending: usize,
    /// The pid `waiting` belongs to: a forked child drops its copy of the parent's queue.
    queue_pid: u32,
    warned: bool,
}

/// The auditor's lock, held (see `Auditor::hold`).
pub struct AuditorHold<'a> {
    inner: MutexGuard<'a, Inner>,
    appended: &'a Condvar,
}

impl Drop for AuditorHold<'_> {
    fn drop(&mut self) {
        self.inner.fork_pending -= 1;
        self.appended.notify_all();
    }
}

/// The audit trail of this process.
///
/// Group commit: a thread whose record must be in the file queues it, and if no other thread
/// is writing, it becomes the leader: it takes everything queued, writes it with one append
/// *without holding the lock*, and wakes the threads whose records it wrote. Threads that queue
/// while a leader writes wait for the next append, which carries all of their records at once.
/// So the lock never covers a `write` or `fdatasync`, and under load several threads' records
/// share one write.
pub struct Auditor {
    inner: Mutex<Inner>,
    /// Signalled after every append (and when the log is handed back).
    appended: Condvar,
    /// Counts appends that ended (the log handed back): what a spinning thread watches.
    appends_ended: AtomicU64,
    /// Whether a waiting thread spins briefly before it sleeps (`SPIN_BEFORE_SLEEP`).
    spin: bool,
    policy: FailurePolicy,
    /// Records lost and not yet reported, by any writer of the log: counted in the state file,
    /// so that a loss outlives this process (the log's next append reports it).
    losses: Losses,
}

impl Auditor {
    /// Opens the log; starts a chain (with a `start` record) if none exists.
    pub fn open(
        settings: &LogSettings,
        who: &ProcessIdentity,
        policy: FailurePolicy,
    ) -> Result<Auditor, WriterError> {
        let log = AuditLog::open(settings, who)?;
        let losses = log.losses();
        Ok(Auditor {
            inner: Mutex::new(Inner {
                log: Some(log),
                waiting: Vec::new(),
                waiting_bytes: 0,
                queued: 0,
                resolved: 0,
                batches: Vec::new(),
                waiting_for: Vec::new(),
                waiters: 0,
                fork_pending: 0,
                queue_pid: crate::os::process::current_pid(),
                warned: false,
            }),
            appended: Condvar::new(),
            appends_ended: AtomicU64::new(0),
            spin: !settings.sync_always,
            policy,
            losses,
        })
    }

    pub fn policy(&self) -> FailurePolicy {
        self.policy
    }

    /// Queues a record that may wait for the next write. When the queue is full, the caller
    /// writes it (or, while another thread writes, waits for that write) until its own record
    /// is written: the queue stays bounded however fast threads make calls (back-pressure), and
    /// no thread is kept writing other threads' records after its own are out.
    pub fn wait(&self, record: &Record) {
        let body = record.to_body();
        let mut inner = self.inner.lock();
        inner.forget_parent_queue();
        let ticket = inner.enqueue(body);
        while (inner.waiting.len() >= MAX_WAITING_RECORDS
            || inner.waiting_bytes >= MAX_WAITING_BYTES)
            && ticket >= inner.resolved
        {
            inner = self.lead_or_wait(inner, ticket, record);
        }
    }

    /// Queues `records` in their order, each as `wait` does. The shim calls it with records it
    /// took from its call context after letting the context's lock go: the auditor's lock is
    /// never taken under it.
    pub fn wait_each(&self, records: Vec<Record>) {
        for record in &records {
            self.wait(record);
        }
    }

    /// Writes `record` (after everything queued before it) and returns its seq once it is in
    /// the file.
    pub fn write(&self, record: &Record) -> Result<u64, NotRecorded> {
        let body = record.to_body();
        let mut inner = self.inner.lock();
        inner.forget_parent_queue();
        let ticket = inner.enqueue(body);
        self.until_resolved(inner, ticket, record)
    }

    /// Counts `n` records that could not even be built (a failure inside p11audit): the next
    /// write reports them in a gap record, as records lost to a failing log are.
    pub fn count_lost(&self, n: u64) {
        self.losses.count(n);
    }

    /// Writes everything queued.
    pub fn flush(&self, who: &Record) -> Result<(), NotRecorded> {
        let mut inner = self.inner.lock();
        inner.forget_parent_queue();
        if inner.queued == inner.resolved && self.losses.pending() == 0 {
            return Ok(());
        }
        if inner.queued == inner.resolved {
            // Only a loss to report (this process's or another's): a gap record on its own.
            return match self.lead(inner, who).batches.last() {
                Some(b) if b.first_seq.is_none() => Err(NotRecorded),
                _ => Ok(()),
            };
        }
        let last = inner.queued - 1;
        self.until_resolved(inner, last, who).map(|_| ())
    }

    /// Leads or waits until `ticket` is resolved; its seq, or NotRecorded.
    fn until_resolved<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        ticket: u64,
        template: &Record,
    ) -> Result<u64, NotRecorded> {
        loop {
            if ticket < inner.resolved {
                return inner.outcome(ticket);
            }
            inner = self.lead_or_wait(inner, ticket, template);
        }
    }

    /// One step towards a record being written: write what is queued if this thread may, else
    /// wait (spinning briefly, then asleep) until the next append ends.
    fn lead_or_wait<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        ticket: u64,
        template: &Record,
    ) -> MutexGuard<'a, Inner> {
        if inner.may_lead() {
            return self.lead(inner, template);
        }
        // Until this thread has the lock back and has read what became of its ticket, the batch
        // that resolves it must be kept.
        inner.waiting_for.push(ticket);
        let mut inner = self.wait_for_append(inner);
        if let Some(at) = inner.waiting_for.iter().position(|&t| t == ticket) {
            inner.waiting_for.swap_remove(at);
        }
        inner
    }

    /// Waits until the append under way ends (or the log is handed back).
    fn wait_for_append<'a>(&'a self, inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        if self.spin && inner.log.is_none() && inner.fork_pending == 0 {
            // Another thread is writing: watch for its append to end without the lock, then
            // look again (the caller loops). Its records may be ours.
            let seen = self.appends_ended.load(Ordering::Acquire);
            drop(inner);
            let start = Instant::now();
            'spin: loop {
                for _ in 0..64 {
                    if self.appends_ended.load(Ordering::Acquire) != seen {
                        break 'spin;
                    }
                    std::hint::spin_loop();
                }
                if start.elapsed() >= SPIN_BEFORE_SLEEP {
                    break;
                }
            }
            let inner = self.inner.lock();
            if self.appends_ended.load(Ordering::Acquire) != seen || inner.may_lead() {
                return inner;
            }
            return self.sleep(inner);
        }
        self.sleep(inner)
    }

    /// Sleeps until the next append ends (or the log is handed back).
    fn sleep<'a>(&'a self, mut inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        inner.waiters += 1;
        let mut inner = Mutex::wait(&self.appended, inner);
        inner.waiters -= 1;
        inner
    }

    /// Takes everything queued and writes it with one append, without holding the lock during
    /// the write. `template` supplies the identity for a gap record (the append starts with
    /// one if records were lost and not yet reported: `Losses`).
    fn lead<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        template: &Record,
    ) -> MutexGuard<'a, Inner> {
        // Every other thread waits for the log to come back.
        let Some(mut log) = inner.log.take() else {
            return inner;
        };
        let bodies = std::mem::take(&mut inner.waiting);
        inner.waiting_bytes = 0;
        let (first, end) = (inner.resolved, inner.queued);
        drop(inner);
        // The log must come back whatever happens: other threads wait for it.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            log.append(&bodies, template)
        }))
        .unwrap_or(Err(WriterError::Internal));
        let mut inner = self.inner.lock();
        inner.log = Some(log);
        // Under the lock, so a thread that saw the old count and then takes the lock sees the
        // log handed back.
        self.appends_ended.fetch_add(1, Ordering::Release);
        let first_seq = match result {
            Ok(done) => Some(done.first_seq + u64::from(done.gap)),
            Err(e) => {
                self.losses.count(end - first);
                if !inner.warned {
                    inner.warned = true;
                    let consequence = match self.policy {
                        FailurePolicy::Closed => {
                            "calls that need a record fail (P11AUDIT_ON_FAILURE=closed)"
                        }
                        FailurePolicy::Open => {
                            "calls go ahead unrecorded (P11AUDIT_ON_FAILURE=open)"
                        }
                    };
                    crate::stderr_line(&format!(
                        "p11audit: {e}; {consequence} until the log can be written again, and a gap record will count the records lost"
                    ));
                }
                None
            }
        };
        // Keep only the batches a waiting thread may still look up (a leader needs its own,
        // pushed next): the list stays as short as the number of threads.
        let Inner {
            batches,
            waiting_for,
            ..
        } = &mut *inner;
        batches.retain(|b| waiting_for.iter().any(|t| (b.first..b.end).contains(t)));
        inner.batches.push(Batch {
            first,
            end,
            first_seq,
        });
        inner.resolved = end;
        // Waiters and a pending fork register under the lock before they sleep, so nobody is
        // missed; and a wake-up is a system call, which the common case (nobody waits) skips.
        if inner.waiters > 0 || inner.fork_pending > 0 {
            self.appended.notify_all();
        }
        inner
    }

    /// Holds the lock until the returned value is dropped: taken before `fork` so that the child
    /// never inherits it held by a thread that does not exist there, nor a log that such a
    /// thread was writing with (it waits for the leader to hand the log back).
    pub fn hold(&self) -> AuditorHold<'_> {
        let mut inner = self.inner.lock();
        // No thread starts a new write while a fork waits (`may_lead`), so this cannot starve.
        inner.fork_pending += 1;
        while inner.log.is_none() {
            inner = Mutex::wait(&self.appended, inner);
        }
        AuditorHold {
            inner,
            appended: &self.appended,
        }
    }
}

impl Inner {
    /// The log is free and no fork is waiting for it.
    fn may_lead(&self) -> bool {
        self.log.is_some() && self.fork_pending == 0
    }

    fn enqueue(&mut self, body: String) -> u64 {
        self.waiting_bytes += body.len();
        self.waiting.push(body);
        self.queued += 1;
        self.queued - 1
    }

    /// What became of a resolved ticket.
    fn outcome(&self, ticket: u64) -> Result<u64, NotRecorded> {
        self.batches
            .iter()
            .rev()
            .find(|b| (b.first..b.end).contains(&ticket))
            .and_then(|b| b.first_seq.map(|s| s + (ticket - b.first)))
            .ok_or(NotRecorded)
    }

    fn forget_parent_queue(&mut self) {
        let pid = crate::os::process::current_pid();
        if self.queue_pid != pid {
            // These records were queued by the parent before fork; the parent writes them.
            // (No thread of the child waits for them: only the forking thread exists here.)
            self.waiting.clear();
            self.waiting_bytes = 0;
            self.queued = 0;
            self.resolved = 0;
            self.batches.clear();
            self.waiters = 0;
            // Threads of the parent that were waiting to fork (`hold`) do not exist here.
            self.fork_pending = 0;
            self.waiting_for.clear();
            self.queue_pid = pid;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::Event;
    use crate::writer::testing::{log_settings, who};
    use std::sync::Arc;

    /// A fail-closed auditor of a new log in `dir`.
    fn fail_closed_auditor(dir: &std::path::Path) -> Auditor {
        Auditor::open(&log_settings(dir, [7; 32]), &who(), FailurePolicy::Closed).unwrap()
    }

    /// A record p11audit could not even build (`count_lost`) is reported by the next write's
    /// gap record, like records lost to a failing log.
    #[test]
    fn records_counted_lost_are_reported_in_a_gap_record() {
        let dir = tempfile::tempdir().unwrap();
        let auditor = fail_closed_auditor(dir.path());
        auditor.count_lost(1);
        let rec = Record::new(&who(), 1, Event::Outcome, Some("C_Sign"));
        auditor.write(&rec).unwrap();
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let gap = &lines[lines.len() - 2];
        assert_eq!(gap["ev"], "gap", "{log}");
        assert_eq!(gap["lost"], 1, "{log}");
        assert_eq!(lines[lines.len() - 1]["fn"], "C_Sign", "{log}");
    }

    /// Threads that write at once all get their own seq, and the batches kept for waiting
    /// threads stay as few as the threads (a leader forgets those nobody waits for), however
    /// long they keep writing.
    #[test]
    fn concurrent_writers_get_distinct_seqs_and_old_batches_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let settings = log_settings(dir.path(), [0x22; 32]);
        let auditor = Arc::new(Auditor::open(&settings, &who(), FailurePolicy::Closed).unwrap());
        const THREADS: usize = 4;
        const WRITES: usize = 2_000;
        let most_kept = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (auditor, most_kept) = (auditor.clone(), most_kept.clone());
                std::thread::spawn(move || {
                    let rec = Record::new(&who(), t as u64, Event::Outcome, Some("C_Sign"));
                    let mut seqs = Vec::with_capacity(WRITES);
                    for i in 0..WRITES {
                        if i % 3 == 0 {
                            auditor.wait(&rec);
                        }
                        seqs.push(auditor.write(&rec).expect("written"));
                        let kept = auditor.inner.lock().batches.len();
                        most_kept.fetch_max(kept, Ordering::Relaxed);
                    }
                    seqs
                })
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "every write has its own seq");
        let kept = most_kept.load(Ordering::Relaxed);
        assert!(
            kept <= THREADS + 1,
            "at most one batch per thread is kept, saw {kept}"
        );
    }

    /// A child forked while two threads of the parent waited to fork (`hold`) inherits a
    /// count of pending forks that only the forking thread's hold, dropped in the child, takes
    /// back. The other is of a thread that does not exist in the child: its writes must not
    /// wait for it.
    #[test]
    fn a_child_does_not_wait_for_forks_of_parent_threads() {
        let dir = tempfile::tempdir().unwrap();
        let settings = log_settings(dir.path(), [0x33; 32]);
        let auditor = Arc::new(Auditor::open(&settings, &who(), FailurePolicy::Closed).unwrap());
        {
            // What the child sees: the parent's queue (another pid), and a second thread of
            // the parent's still counted as about to fork.
            let mut inner = auditor.inner.lock();
            inner.queue_pid = crate::os::process::current_pid().wrapping_add(1);
            inner.fork_pending = 1;
        }
        let (done, result) = std::sync::mpsc::channel();
        let writer = auditor.clone();
        std::thread::spawn(move || {
            let rec = Record::new(&who(), 1, Event::Outcome, Some("C_Sign"));
            let _ = done.send(writer.write(&rec));
        });
        let written = result
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the write finished (it hung waiting for a fork that never comes)");
        assert!(written.is_ok());
    }
}
