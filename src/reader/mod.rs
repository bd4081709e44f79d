//! Reading logs: the files of a chain in order ([`fileset`]), the verifier behind
//! `p11audit verify` ([`verify`]), and for people `p11audit show` (one line per call, [`show`])
//! and `p11audit report` (what happened over a period, [`report`]). show and report read the
//! files once, verifying the chain as they go, and only ever see records that verified.
//!
//! What show and report share: the view of a record both read (`view`), escaping text that came
//! from the log before it reaches a terminal (`text`), aligned columns (`table`), a progress
//! line (`progress`), and time: reading record times and command-line times, a period (here).
//!
//! Logs are attacker-controlled input (whoever can append can write any label, exe path or
//! note), so everything taken from a record is escaped before it is printed, and memory is
//! bounded whatever the log holds.

#![forbid(unsafe_code)]

pub mod fileset;
mod progress;
pub mod report;
pub mod show;
mod table;
#[cfg(test)]
mod testlog;
mod text;
pub mod tree_check;
pub mod verify;
mod view;

pub use progress::Progress;
pub use text::{escape, escape_c1_and_del};

use crate::format::record::rfc3339_from_micros;

// ---------------------------------------------------------------------------------------------
// Time

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0i64, |n, &c| {
        n.checked_mul(10)?.checked_add(i64::from(c - b'0'))
    })
}

/// `YYYY-MM-DD` at the start of `b`: (its first microsecond, UTC, since the epoch; rest). The
/// calendar, which months have which days, is the `time` crate's.
fn parse_date(b: &[u8]) -> Option<(i64, &[u8])> {
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&b[..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (month, day) = (u8::try_from(m).ok()?, u8::try_from(d).ok()?);
    let month = time::Month::try_from(month).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, day).ok()?;
    let start = date.midnight().as_utc().unix_timestamp() * 1_000_000;
    Some((start, &b[10..]))
}

/// Parses `HH:MM:SS[.fraction](Z|z|±HH:MM)?` after a date: microseconds into the day, and the
/// zone offset in seconds (None when there is no zone).
fn parse_clock(b: &[u8]) -> Option<(i64, Option<i64>)> {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, mi, s) = (digits(&b[..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &b[8..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        let mut v = digits(&frac[..n])?;
        for _ in n..6 {
            v *= 10;
        }
        for _ in 6..n {
            v /= 10;
        }
        micros = v;
        rest = &frac[n..];
    }
    let zone = match rest {
        [] => None,
        [b'Z' | b'z'] => Some(0),
        [sign @ (b'+' | b'-'), zh1, zh2, b':', zm1, zm2] => {
            let (zh, zm) = (digits(&[*zh1, *zh2])?, digits(&[*zm1, *zm2])?);
            if zh > 23 || zm > 59 {
                return None;
            }
            let off = zh * 3600 + zm * 60;
            Some(if *sign == b'-' { -off } else { off })
        }
        _ => return None,
    };
    Some(((h * 3600 + mi * 60 + s) * 1_000_000 + micros, zone))
}

/// A record's `ts` (RFC 3339, as the writer makes it) as microseconds since the epoch. None if
/// it is not RFC 3339 with a zone.
pub fn parse_ts(ts: &str) -> Option<i64> {
    let (day, rest) = parse_date(ts.as_bytes())?;
    let rest = rest
        .strip_prefix(b"T")
        .or_else(|| rest.strip_prefix(b"t"))?;
    let (clock, zone) = parse_clock(rest)?;
    Some(day + clock - zone? * 1_000_000)
}

/// Which end of a time range a command-line time gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Since,
    Until,
}

/// Parses a `--since`/`--until` value: RFC 3339 (`2026-11-26T03:12:45Z`, with a fraction or a
/// `±HH:MM` offset; without a zone it is UTC), or a date `2026-11-26` (UTC), which as `Since`
/// means the start of that day and as `Until` its end (the whole day is included).
/// Microseconds since the epoch; both ends of a range are inclusive.
pub fn parse_time_arg(text: &str, bound: Bound) -> Result<i64, String> {
    let bad = || {
        format!(
            "{}: not a time; use RFC 3339 (2026-11-26T03:12:45Z, 2026-11-26T04:12:45+01:00) or a date (2026-11-26)",
            escape(text)
        )
    };
    let (day, rest) = parse_date(text.as_bytes()).ok_or_else(bad)?;
    if rest.is_empty() {
        return Ok(match bound {
            Bound::Since => day,
            Bound::Until => day + 86_400_000_000 - 1,
        });
    }
    let rest = match rest {
        [b'T' | b't' | b' ', r @ ..] => r,
        _ => return Err(bad()),
    };
    let (clock, zone) = parse_clock(rest).ok_or_else(bad)?;
    Ok(day + clock - zone.unwrap_or(0) * 1_000_000)
}

/// Microseconds since the epoch as RFC 3339 UTC with microseconds (as in the log).
pub fn format_micros(us: i64) -> String {
    if us < 0 {
        return format!("{us} us before 1970");
    }
    rfc3339_from_micros(us as u64).to_string()
}

/// A duration in microseconds for people: `84us`, `5.63ms`, `1.24s`.
pub fn format_duration(us: u64) -> String {
    if us < 1000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}s", us as f64 / 1_000_000.0)
    }
}

/// An inclusive time range in microseconds since the epoch; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Period {
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl Period {
    pub fn is_open(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }

    /// Whether a record with this `ts` falls in the period. A `ts` that cannot be read is in
    /// no bounded period.
    pub fn contains(&self, ts: &str) -> bool {
        if self.is_open() {
            return true;
        }
        match parse_ts(ts) {
            Some(t) => self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_timestamps_parse_to_micros() {
        // 2026-11-26T03:12:45Z = 1795662765
        assert_eq!(
            parse_ts("2026-11-26T03:12:45.123456Z"),
            Some(1_795_662_765_123_456)
        );
        assert_eq!(
            parse_ts("2026-11-26T03:12:45Z"),
            Some(1_795_662_765_000_000)
        );
        assert_eq!(
            parse_ts("2026-11-26T04:12:45.5+01:00"),
            Some(1_795_662_765_500_000)
        );
        assert_eq!(parse_ts("1970-01-01T00:00:00.000000Z"), Some(0));
        assert_eq!(
            parse_ts("2024-02-29T23:59:59Z"),
            Some(1_709_251_199_000_000)
        );
        for bad in [
            "",
            "2026-11-26",
            "2026-11-26T03:12:45",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-26T03:12:45.Z",
            "2026-11-26T03:12:45Zjunk",
            "x026-11-26T03:12:45Z",
        ] {
            assert_eq!(parse_ts(bad), None, "{bad}");
        }
        // Round trip with the writer's format.
        let t = 1_795_662_765_123_456;
        assert_eq!(parse_ts(&format_micros(t)), Some(t));
    }

    #[test]
    fn every_year_to_9999_reads_back_as_written() {
        // A week less 3 µs: every day of the month and many times of day come up over the years.
        let last = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
        for t in (0..=last).step_by(604_799_999_997).chain([last]) {
            assert_eq!(parse_ts(&format_micros(t)), Some(t), "{}", format_micros(t));
        }
    }

    #[test]
    fn command_line_times_and_dates() {
        let day = 1_795_651_200_000_000; // 2026-11-26T00:00:00Z
        assert_eq!(parse_time_arg("2026-11-26", Bound::Since), Ok(day));
        assert_eq!(
            parse_time_arg("2026-11-26", Bound::Until),
            Ok(day + 86_400_000_000 - 1)
        );
        assert_eq!(
            parse_time_arg("2026-11-26T03:12:45Z", Bound::Until),
            Ok(1_795_662_765_000_000)
        );
        assert_eq!(
            parse_time_arg("2026-11-26T03:12:45", Bound::Since),
            Ok(1_795_662_765_000_000)
        );
        assert_eq!(
            parse_time_arg("2026-11-26 05:12:45+02:00", Bound::Since),
            Ok(1_795_662_765_000_000)
        );
        let err = parse_time_arg("yesterday\x1b[2J", Bound::Since).unwrap_err();
        assert!(err.contains("not a time") && !err.contains('\x1b'), "{err}");
    }

    #[test]
    fn period_bounds_are_inclusive_and_unreadable_ts_is_outside() {
        let p = Period {
            since: parse_time_arg("2026-11-26T03:00:00Z", Bound::Since).ok(),
            until: parse_time_arg("2026-11-26T04:00:00Z", Bound::Until).ok(),
        };
        assert!(p.contains("2026-11-26T03:00:00.000000Z"));
        assert!(p.contains("2026-11-26T04:00:00.000000Z"));
        assert!(!p.contains("2026-11-26T04:00:00.000001Z"));
        assert!(!p.contains("2026-11-26T02:59:59.999999Z"));
        assert!(!p.contains("not a time"));
        assert!(Period::default().contains("not a time"));
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(84), "84us");
        assert_eq!(format_duration(5628), "5.63ms");
        assert_eq!(format_duration(1_240_000), "1.24s");
    }
}
