//! Recovery: the log checked against the state after a writer died holding the mutex (or on
//! the slow path), rolling forward over whole sealed records it left and cutting off the rest.

use crate::format::line::split_line;
use crate::format::state::{layout, ChainState};
use crate::writer::audit_log::{AuditLog, MAX_RECOVERY_BYTES};
use crate::writer::error::WriterError;
use crate::writer::losses::gap_lost;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Instant;

/// Most records one state update of a roll-forward covers (see `recover`).
const ROLL_FORWARD_STEP: usize = 1 << 15;

impl AuditLog {
    /// The slow path: `fstat` the log, refuse one that lost its name, and roll forward over (or
    /// cut) whatever a writer that died holding the lock left past the state.
    pub(super) fn check_log(&mut self, state: ChainState) -> Result<ChainState, WriterError> {
        let meta = self
            .log
            .metadata()
            .map_err(|e| WriterError::io("stat audit log", &self.settings.log_path, e))?;
        if meta.nlink() == 0 {
            // Deleted, or another file renamed over it: records written now would go to a
            // file nobody can find, and vanish with this process.
            return Err(WriterError::LogUnlinked {
                log: self.settings.log_path.clone(),
            });
        }
        let mut state = state;
        loop {
            let before = state.log_size;
            let more;
            (state, more) = self.recover(&self.log, state, &meta)?;
            if state.log_size != before {
                self.store_state(state.clone());
            }
            if !more {
                break;
            }
        }
        self.shared.store_u64(layout::RECOVER, 0);
        self.log_checked = Some(Instant::now());
        Ok(state)
    }

    /// Checks the log against the state and rolls forward over records a crashed writer wrote
    /// but did not record in the state. A torn last line (an incomplete write) is cut off: it
    /// was never acknowledged to anyone, and appending after it would bury it mid-file.
    ///
    /// It rolls forward over at most `ROLL_FORWARD_STEP` records at a time, and says whether
    /// more are left (the caller stores the state and calls again): the tree's frontier is
    /// safe in the state file only across updates of fewer than 2^16 records (INTERNALS.md
    /// §1.1).
    pub(super) fn recover(
        &self,
        log: &File,
        mut state: ChainState,
        meta: &std::fs::Metadata,
    ) -> Result<(ChainState, bool), WriterError> {
        let log_path = || self.settings.log_path.clone();
        if (meta.dev(), meta.ino()) != (state.log_dev, state.log_ino) {
            return Err(self.not_its_log());
        }
        if meta.len() == 0 && state.log_size > 0 {
            // Deleted and created again is as likely as truncated: a new file may get the old
            // one's inode number (ext4 reuses freed ones at once), so it passes for the same.
            return Err(WriterError::LogEmptied {
                log: log_path(),
                state_size: state.log_size,
            });
        }
        if meta.len() < state.log_size {
            return Err(WriterError::LogTruncated {
                log: log_path(),
                size: meta.len(),
                state_size: state.log_size,
            });
        }
        if meta.len() == state.log_size {
            return Ok((state, false));
        }
        let extra = meta.len() - state.log_size;
        if extra > MAX_RECOVERY_BYTES {
            return Err(WriterError::LogTooFarAhead {
                log: log_path(),
                extra,
            });
        }
        let mut tail = vec![0u8; extra as usize];
        log.read_exact_at(&mut tail, state.log_size)
            .map_err(|source| WriterError::Io {
                action: "read audit log",
                path: log_path(),
                context: " for recovery",
                source,
            })?;
        let mut good = 0usize;
        let mut rolled = 0usize;
        while let Some(nl) = tail[good..].iter().position(|&b| b == b'\n') {
            let line = &tail[good..good + nl];
            let expect_prefix = format!(
                "{{\"v\":1,\"seq\":{},\"prev\":\"{}\",",
                state.next_seq, state.prev_mac
            );
            let ok = split_line(line).filter(|s| {
                s.payload.starts_with(expect_prefix.as_bytes()) && s.is_sealed_by(&state.key)
            });
            let Some(split) = ok else {
                return Err(WriterError::LogNotTheChain {
                    log: log_path(),
                    offset: state.log_size,
                    seq: state.next_seq,
                });
            };
            // A gap record the dead writer wrote reported its losses; its state, which would
            // have said so, was never stored.
            state.lost_reported = state.lost_reported.saturating_add(gap_lost(split.payload));
            state.prev_mac = split.mac.to_string();
            state.key.evolve();
            state.next_seq += 1;
            if let Some(tree) = state.tree.as_mut() {
                tree.push_line(line)
                    .map_err(|_| WriterError::TreeFull { log: log_path() })?;
            }
            state.log_size += nl as u64 + 1;
            good += nl + 1;
            rolled += 1;
            if rolled == ROLL_FORWARD_STEP && good < tail.len() {
                return Ok((state, true));
            }
        }
        if good < tail.len() {
            // An incomplete last line: remove exactly those bytes.
            log.set_len(state.log_size).map_err(|e| {
                WriterError::io("remove a torn last line from audit log", log_path(), e)
            })?;
        }
        Ok((state, false))
    }

    /// An append failed after its `write` began: its bytes were never acknowledged to anyone,
    /// so they are cut off the log (from `log_size`, where the stored state ends). If even that
    /// fails, the next append must deal with them (`log_may_be_ahead`).
    pub(super) fn cut_back(&mut self, log_size: u64) {
        // The cut also frees the space reserved past it.
        self.reserved_to = 0;
        if self.log.set_len(log_size).is_err() {
            self.log_may_be_ahead();
        }
    }

    /// The log may hold bytes the state does not count: a failed append's records or torn line
    /// that could not be cut off, or records written before a panic. Whoever appends next (this
    /// process or another) checks the log first and rolls forward over them or cuts them, as
    /// after a writer that died (INTERNALS.md §1.3), instead of sealing the same seqs again after them.
    pub(super) fn log_may_be_ahead(&mut self) {
        self.shared.store_u64(layout::RECOVER, 1);
        self.log_checked = None;
        self.cached = None;
    }
}
