//! The progress line of show and report on a long run at a terminal.

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A progress line on stderr, for long runs at a terminal: shown only when enabled (stderr is a
/// terminal) and the work has taken more than a second; cleared at the end.
pub struct Progress {
    enabled: bool,
    started: Instant,
    last: Instant,
    total_bytes: u64,
    done_bytes: u64,
    records: u64,
    shown: bool,
}

impl Progress {
    /// Progress over `paths`, shown only if `enabled`.
    pub fn new(enabled: bool, paths: &[PathBuf]) -> Self {
        let total_bytes = if enabled {
            paths
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum()
        } else {
            0
        };
        let now = Instant::now();
        Progress {
            enabled,
            started: now,
            last: now,
            total_bytes,
            done_bytes: 0,
            records: 0,
            shown: false,
        }
    }

    /// Progress that is shown when stderr is a terminal.
    pub fn for_terminal(paths: &[PathBuf]) -> Self {
        Progress::new(std::io::stderr().is_terminal(), paths)
    }

    /// Counts one record whose line (without its newline) was `line_len` bytes.
    pub fn record(&mut self, line_len: usize) {
        if !self.enabled {
            return;
        }
        self.records += 1;
        self.done_bytes += line_len as u64 + 1;
        if !self.records.is_multiple_of(4096) {
            return;
        }
        let now = Instant::now();
        if now - self.started < Duration::from_secs(1)
            || (self.shown && now - self.last < Duration::from_millis(250))
        {
            return;
        }
        self.last = now;
        self.shown = true;
        let pct = (self.done_bytes * 100)
            .checked_div(self.total_bytes)
            .unwrap_or(0)
            .min(100);
        let _ = write!(
            std::io::stderr().lock(),
            "\rp11audit: {pct:3}% read, {} records verified ",
            self.records
        );
    }

    /// Clears the progress line, if one was shown.
    pub fn finish(&mut self) {
        if self.shown {
            self.shown = false;
            let _ = write!(std::io::stderr().lock(), "\r{:60}\r", "");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
