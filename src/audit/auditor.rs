//! The in-process side of the audit trail: records that may wait, records that must be in the
//! file before a call goes on, failure accounting and gap records.
//!
//! Records are serialized by the calling thread before it takes the lock; the lock covers only
//! the queue and the append. It is never held across a call into the provider.

use super::lock::Mutex;
use super::record::{Event, ProcessIdentity, Record};
use super::writer::{AuditLog, LogSettings, WriterError};

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

/// A record that must be in the file could not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRecorded;

struct Inner {
    log: AuditLog,
    waiting: Vec<String>,
    waiting_bytes: usize,
    /// Records that could not be written since the last successful append.
    lost: u64,
    lost_since: Option<String>,
    /// The pid `waiting` belongs to: a forked child drops its copy of the parent's queue.
    queue_pid: u32,
    warned: bool,
}

/// The auditor's lock, held (see `Auditor::hold`).
pub struct AuditorHold<'a>(#[allow(dead_code)] std::sync::MutexGuard<'a, Inner>);

/// The audit trail of this process.
pub struct Auditor {
    inner: Mutex<Inner>,
    policy: FailurePolicy,
}

impl Auditor {
    /// Opens the log; starts a chain (with a `start` record) if none exists.
    pub fn open(
        settings: &LogSettings,
        who: &ProcessIdentity,
        policy: FailurePolicy,
    ) -> Result<Auditor, WriterError> {
        let log = AuditLog::open(settings, who)?;
        Ok(Auditor {
            inner: Mutex::new(Inner {
                log,
                waiting: Vec::new(),
                waiting_bytes: 0,
                lost: 0,
                lost_since: None,
                queue_pid: crate::audit::process::current_pid(),
                warned: false,
            }),
            policy,
        })
    }

    pub fn policy(&self) -> FailurePolicy {
        self.policy
    }

    /// Queues a record that may wait for the next write.
    pub fn wait(&self, record: &Record) {
        let body = record.to_body();
        let mut inner = self.inner.lock();
        inner.forget_parent_queue();
        inner.waiting_bytes += body.len();
        inner.waiting.push(body);
        if inner.waiting.len() >= MAX_WAITING_RECORDS || inner.waiting_bytes >= MAX_WAITING_BYTES {
            let _ = inner.append(None, record);
        }
    }

    /// Writes `record` (after everything waiting) and returns its seq once it is in the file.
    pub fn write(&self, record: &Record) -> Result<u64, NotRecorded> {
        let body = record.to_body();
        let mut inner = self.inner.lock();
        inner.forget_parent_queue();
        inner.append(Some(body), record)
    }

    /// Writes everything waiting.
    pub fn flush(&self, who: &Record) -> Result<(), NotRecorded> {
        let mut inner = self.inner.lock();
        inner.forget_parent_queue();
        if inner.waiting.is_empty() && inner.lost == 0 {
            return Ok(());
        }
        inner.append(None, who).map(|_| ())
    }

    /// Holds the lock until the returned value is dropped: taken before `fork` so that the child
    /// never inherits it held by a thread that does not exist there.
    pub fn hold(&self) -> AuditorHold<'_> {
        AuditorHold(self.inner.lock())
    }

    /// Counts a call that went ahead unrecorded (giving-up calls, fail-open).
    pub fn count_unrecorded(&self, template: &Record) {
        let mut inner = self.inner.lock();
        inner.note_loss(1, template);
    }
}

impl Inner {
    fn forget_parent_queue(&mut self) {
        let pid = crate::audit::process::current_pid();
        if self.queue_pid != pid {
            // These records were queued by the parent before fork; the parent writes them.
            self.waiting.clear();
            self.waiting_bytes = 0;
            self.lost = 0;
            self.lost_since = None;
            self.queue_pid = pid;
        }
    }

    fn note_loss(&mut self, n: u64, template: &Record) {
        if self.lost == 0 {
            self.lost_since = Some(template.ts.clone());
        }
        self.lost += n;
    }

    /// Appends a gap record (if records were lost), the waiting records and `body`.
    /// `template` supplies the identity for a gap record.
    fn append(&mut self, body: Option<String>, template: &Record) -> Result<u64, NotRecorded> {
        let mut bodies = Vec::with_capacity(self.waiting.len() + 2);
        if self.lost > 0 {
            let mut gap = template.clone();
            gap.ev = Event::Gap;
            gap.function = None;
            gap.detail = Default::default();
            gap.detail.lost = Some(self.lost);
            gap.detail.since = self.lost_since.clone();
            bodies.push(gap.to_body());
        }
        bodies.append(&mut self.waiting);
        self.waiting_bytes = 0;
        let had_body = body.is_some();
        bodies.extend(body);
        match self.log.append(&bodies, template) {
            Ok(done) => {
                self.lost = 0;
                self.lost_since = None;
                Ok(done.last_seq)
            }
            Err(e) => {
                let gap_records = u64::from(self.lost > 0);
                self.note_loss(bodies.len() as u64 - gap_records, template);
                if !self.warned {
                    self.warned = true;
                    eprintln!(
                        "p11audit: {e}; {}",
                        if had_body {
                            "calls that need a record now fail (P11AUDIT_ON_FAILURE)"
                        } else {
                            "records are being lost"
                        }
                    );
                }
                Err(NotRecorded)
            }
        }
    }
}
