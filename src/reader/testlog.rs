//! Sealed test chains for the unit tests of show and report.

use crate::reader::verify::testchain::{chain, k0};
use crate::reader::verify::VerifyOptions;
use std::path::PathBuf;

/// A record body: `ts` is 2026-11-26T03:00:00Z plus `secs`; `extra` is more members,
/// starting with a comma.
pub fn body(secs: u64, pid: u32, uid: u32, ev: &str, f: Option<&str>, extra: &str) -> String {
    let f = f.map(|f| format!(r#","fn":"{f}""#)).unwrap_or_default();
    let ts = crate::format::record::rfc3339_micros(1_795_662_000 + secs, 0);
    format!(
        r#"{{"ts":"{ts}","host":"h","pid":{pid},"tid":{pid},"uid":{uid},"exe":"/bin/p{pid}","ev":"{ev}"{f}{extra}}}"#
    )
}

/// The bodies sealed into a log file; the options to verify it (no state).
pub fn log(bodies: &[String]) -> (tempfile::TempDir, PathBuf, VerifyOptions) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    std::fs::write(&path, chain(bodies).all()).unwrap();
    (dir, path, VerifyOptions::new(k0(), None))
}
