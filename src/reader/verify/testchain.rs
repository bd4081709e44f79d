//! Sealed chains for the verifier's unit tests: lines sealed under a fixed K_0, the state a
//! writer of them leaves, and [`verify_files`] run over files made of them.

use super::{verify_files, Problem, VerifyOptions, VerifyReport};
use crate::format::chain::{ChainKey, ZERO_MAC_HEX};
use crate::format::line::seal_into;
use crate::format::state::ChainState;
use std::io::Write;
use std::path::PathBuf;

pub(crate) fn k0() -> ChainKey {
    ChainKey::from_bytes([0x42; 32])
}

pub(super) fn body(pid: u32, ev: &str, f: Option<&str>, extra: &str) -> String {
    let f = f.map(|f| format!(r#","fn":"{f}""#)).unwrap_or_default();
    format!(
        r#"{{"ts":"2026-11-26T03:12:45.{pid:06}Z","host":"h","pid":{pid},"tid":1,"uid":0,"exe":"/x","ev":"{ev}"{f}{extra}}}"#
    )
}

pub(super) fn sign(pid: u32) -> String {
    body(
        pid,
        "outcome",
        Some("C_Sign"),
        r#","rv":"CKR_OK","dur_us":3"#,
    )
}

/// A chain of the given bodies: one line each (with newline), the macs, and K_n.
pub(crate) struct Chain {
    pub(super) lines: Vec<Vec<u8>>,
    pub(super) macs: Vec<String>,
    pub(super) key_next: ChainKey,
}

pub(crate) fn chain(bodies: &[String]) -> Chain {
    let mut key = k0();
    let mut prev = ZERO_MAC_HEX.to_string();
    let mut lines = Vec::new();
    let mut macs = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let mut out = Vec::new();
        prev = seal_into(&mut out, &key, i as u64, &prev, b);
        key.evolve();
        lines.push(out);
        macs.push(prev.clone());
    }
    Chain {
        lines,
        macs,
        key_next: key,
    }
}

pub(super) fn signs(n: usize) -> Vec<String> {
    (0..n).map(|i| sign(i as u32 % 3 + 1)).collect()
}

impl Chain {
    pub(super) fn state(&self) -> ChainState {
        ChainState {
            next_seq: self.lines.len() as u64,
            prev_mac: self.macs.last().cloned().unwrap_or(ZERO_MAC_HEX.into()),
            key: self.key_next.clone(),
            log_dev: 0,
            log_ino: 0,
            log_size: 0,
            lost_reported: 0,
            tree: None,
        }
    }
    pub(super) fn joined(&self, order: &[usize]) -> Vec<u8> {
        order.iter().flat_map(|&i| self.lines[i].clone()).collect()
    }
    pub(crate) fn all(&self) -> Vec<u8> {
        self.lines.concat()
    }
}

pub(super) fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

pub(super) fn run(files: &[&[u8]], state: Option<ChainState>) -> VerifyReport {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .map(|(i, b)| write(&dir, &format!("log.{i}"), b))
        .collect();
    verify_files(&paths, &VerifyOptions::new(k0(), state)).unwrap()
}

pub(super) fn problem(r: &VerifyReport) -> &Problem {
    r.problem.as_ref().expect("a problem")
}
