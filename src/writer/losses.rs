//! Records lost, counted in the state file so that the count outlives the process that lost
//! them, and reported by the next append in a `gap` record.

use crate::format::record::{micros_now, Event, Record};
use crate::format::state::layout;
use crate::os::SharedFileMap;

/// Records lost, counted in the state file (`layout::LOST`) so that the count outlives the
/// process that lost them. Whoever notices a loss counts it; the writer reports what no `gap`
/// record has reported yet (`AuditLog::append`).
pub(crate) struct Losses {
    pub(super) map: std::sync::Arc<SharedFileMap>,
    /// `P11AUDIT_SYNC=always`: a count reaches the disk before the call goes on.
    pub(super) durable: bool,
}

impl Losses {
    /// Counts `n` more records as lost, now.
    pub(crate) fn count(&self, n: u64) {
        if n == 0 {
            return;
        }
        // The time first, so that a writer that sees the new count sees a time too. A time
        // already there stays: it is older, and nothing pending was lost before it. Again
        // after the count: a writer that found nothing pending in between cleared it.
        let now = micros_now();
        self.map.compare_exchange_u64(layout::LOST_SINCE, 0, now);
        self.map.fetch_add_u64(layout::LOST, n);
        self.map.compare_exchange_u64(layout::LOST_SINCE, 0, now);
        if self.durable {
            // Best effort: the count is all that is left of these records.
            let _ = self.map.sync();
        }
    }

    /// How many records are counted and not yet reported (a snapshot: a writer may be
    /// reporting them right now).
    pub(crate) fn pending(&self) -> u64 {
        let active = (self.map.load_u64(layout::ACTIVE) as usize).min(1);
        self.map
            .load_u64(layout::LOST)
            .saturating_sub(self.map.load_u64(layout::REPORTED[active]))
    }
}

/// What no gap record up to a state whose REPORTED is `reported` has reported, from the state
/// file's counters in `map`. Caller holds the mutex. (A function of the mapping, not of
/// `Losses`: an append takes no `Arc` of its own.)
pub(super) fn unreported_losses(map: &SharedFileMap, reported: u64) -> Unreported {
    let mut lost = map.load_u64(layout::LOST);
    if lost <= reported {
        // LOST below REPORTED: an OS crash lost the page with LOST after a gap record that
        // reported it reached the log. LOST is raised: it never counts less than was reported.
        while lost < reported && !map.compare_exchange_u64(layout::LOST, lost, reported) {
            lost = map.load_u64(layout::LOST);
        }
        if lost <= reported {
            // Nothing pending: a time left by a writer killed before it cleared it is stale.
            let since = map.load_u64(layout::LOST_SINCE);
            if since != 0 {
                map.compare_exchange_u64(layout::LOST_SINCE, since, 0);
            }
            return Unreported::NONE;
        }
    }
    // The clock, then the count to report: whatever is counted after that was lost after
    // `read_at`.
    let read_at = micros_now();
    let lost = map.load_u64(layout::LOST);
    Unreported {
        lost_total: lost,
        pending: lost.saturating_sub(reported),
        since: map.load_u64(layout::LOST_SINCE),
        read_at,
    }
}

/// The gap record reporting `u` is in the chain: LOST_SINCE goes, or moves to `read_at` if
/// more was counted meanwhile. Caller holds the mutex.
pub(super) fn settle_lost_since(map: &SharedFileMap, u: &Unreported) {
    let remains = map.load_u64(layout::LOST) != u.lost_total;
    let next_since = if remains { u.read_at } else { 0 };
    map.compare_exchange_u64(layout::LOST_SINCE, u.since, next_since);
}

/// What an append reports in its gap record (`unreported_losses`).
pub(super) struct Unreported {
    /// LOST as read: the new state's REPORTED.
    pub(super) lost_total: u64,
    pub(super) pending: u64,
    /// LOST_SINCE as read (µs; 0: not known).
    pub(super) since: u64,
    /// When `lost` was read (µs).
    pub(super) read_at: u64,
}

impl Unreported {
    const NONE: Unreported = Unreported {
        lost_total: 0,
        pending: 0,
        since: 0,
        read_at: 0,
    };
}

/// The body of a `gap` record reporting `lost` records, the first lost at `since` (µs since the
/// epoch; 0: not known), in the name of `template`'s process and thread, now.
pub(super) fn gap_body(template: &Record, lost: u64, since: u64) -> String {
    let mut rec = template.bookkeeping(Event::Gap);
    // Now, not the template's time: the losses may have been counted (by another process)
    // after the template was made, and `since` must not come after `ts`.
    rec.ts = crate::format::record::rfc3339_micros_now();
    rec.detail.lost = Some(lost);
    rec.detail.since =
        (since > 0).then(|| crate::format::record::rfc3339_from_micros(since).to_string());
    rec.to_body()
}

/// The `lost` of a gap record's payload (the line up to its mac); 0 for any other record.
pub(super) fn gap_lost(payload: &[u8]) -> u64 {
    const GAP: &[u8] = br#""ev":"gap""#;
    if !payload.windows(GAP.len()).any(|w| w == GAP) {
        return 0;
    }
    let mut line = payload.to_vec();
    line.push(b'}');
    serde_json::from_slice::<serde_json::Value>(&line)
        .ok()
        .filter(|v| v["ev"] == "gap")
        .and_then(|v| v["lost"].as_u64())
        .unwrap_or(0)
}
