//! `verify --vkey`: the log's lines checked against its signed checkpoints, with the
//! checkpoint key's public half only (no K_0). The tree is rebuilt over the lines (leaf i is
//! the line of seq i, without its newline), and each checkpoint found (the `checkpoint`
//! records, and `<log>.checkpoint`) must be signed by the key and name the root of the lines
//! before its size. A covered line altered, removed or reordered changes that root; a log
//! shorter than a checkpoint's size was cut.

use crate::tlog::checkpoint::Checkpoint;
use crate::tlog::note::{SignedNote, VerifierKey};
use crate::tlog::tree::Frontier;
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// What the check found.
#[derive(Debug, Clone, Serialize)]
pub struct TreeReport {
    /// The checkpoint key's name.
    pub key: String,
    /// Whole lines read (records), across the files.
    pub records: u64,
    /// Signed checkpoints that verified (records and file).
    pub checkpoints: u64,
    /// Records 0 to `covered - 1` are covered by a checkpoint that verified: no one without
    /// the checkpoint key can change them unnoticed.
    pub covered: u64,
    /// Where the checkpoint covering the most records is.
    pub newest: Option<String>,
    pub problem: Option<TreeProblem>,
    /// 0: every record is covered (but the last checkpoint record itself); 1: a problem; 3:
    /// no problem, but records after the newest checkpoint are sealed only by the HMAC chain.
    pub exit_status: u8,
}

/// The first problem: `kind` is one of `bad_signature`, `malformed`, `altered` (the lines
/// before a checkpoint's size do not have its root: a line altered, removed or reordered),
/// `truncated` (fewer lines than a checkpoint's size), `not_from_seq_0`.
#[derive(Debug, Clone, Serialize)]
pub struct TreeProblem {
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct TreeIoError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// A checkpoint read and verified, and where it came from.
struct Found {
    checkpoint: Checkpoint,
    place: String,
}

/// Reads and verifies a signed checkpoint; the problem if it does not verify.
fn open_note(text: &str, key: &VerifierKey, place: &str) -> Result<Checkpoint, TreeProblem> {
    let malformed = |why: String| TreeProblem {
        kind: "malformed",
        detail: format!("{place}: {why}"),
    };
    let note = SignedNote::parse(text).map_err(|e| malformed(e.to_string()))?;
    note.verify(key).map_err(|e| TreeProblem {
        kind: "bad_signature",
        detail: format!("{place}: {e}"),
    })?;
    Checkpoint::parse(&note.text).map_err(|e| malformed(e.to_string()))
}

/// The signed note a checkpoint record carries, if `line` is one.
fn checkpoint_in(line: &[u8]) -> Option<Result<String, ()>> {
    const MARK: &[u8] = b"\"ev\":\"checkpoint\"";
    if !line.windows(MARK.len()).any(|w| w == MARK) {
        return None;
    }
    let v: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(_) => return Some(Err(())),
    };
    Some(v["checkpoint"].as_str().map(str::to_string).ok_or(()))
}

/// The seq at the start of a line (`{"v":1,"seq":N,`).
fn seq_of(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"v\":1,\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Checks `files` (in chain order, from the chain's first) against the checkpoints they hold
/// and `checkpoint_file`, with `key`.
pub fn check_tree(
    files: &[PathBuf],
    checkpoint_file: Option<&Path>,
    key: &VerifierKey,
) -> Result<TreeReport, TreeIoError> {
    let mut report = TreeReport {
        key: key.name.clone(),
        records: 0,
        checkpoints: 0,
        covered: 0,
        newest: None,
        problem: None,
        exit_status: 0,
    };
    let mut pending = None;
    if let Some(path) = checkpoint_file {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let place = path.display().to_string();
                match open_note(&text, key, &place) {
                    Ok(checkpoint) => pending = Some(Found { checkpoint, place }),
                    Err(p) => report.problem = Some(p),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TreeIoError {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    let mut tree = Frontier::default();
    let mut last_is_checkpoint = false;
    let accept = |report: &mut TreeReport, tree: &Frontier, found: &Found| {
        if found.checkpoint.root != tree.root() {
            return Err(TreeProblem {
                kind: "altered",
                detail: format!(
                    "the {} records before {} do not have its root: a covered line was altered, removed or reordered",
                    found.checkpoint.size, found.place
                ),
            });
        }
        report.checkpoints += 1;
        if found.checkpoint.size >= report.covered {
            report.covered = found.checkpoint.size;
            report.newest = Some(found.place.clone());
        }
        Ok(())
    };
    'files: for path in files {
        if report.problem.is_some() {
            break;
        }
        let io = |source| TreeIoError {
            path: path.clone(),
            source,
        };
        let mut reader = BufReader::new(std::fs::File::open(path).map_err(io)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
                break;
            }
            if line.pop() != Some(b'\n') {
                // A torn last line is no record (the chain's verifier reports it).
                break;
            }
            let seq = tree.size;
            if seq == 0 && seq_of(&line) != Some(0) {
                report.problem = Some(TreeProblem {
                    kind: "not_from_seq_0",
                    detail: format!(
                        "{} does not start with the chain's first record (seq 0): give every file of the chain, oldest first",
                        path.display()
                    ),
                });
                break 'files;
            }
            if let Some(found) = pending.take_if(|f| f.checkpoint.size == seq) {
                if let Err(p) = accept(&mut report, &tree, &found) {
                    report.problem = Some(p);
                    break 'files;
                }
            }
            last_is_checkpoint = false;
            if let Some(note) = checkpoint_in(&line) {
                let place = format!("the checkpoint record at seq {seq}");
                let checked = note
                    .map_err(|()| TreeProblem {
                        kind: "malformed",
                        detail: format!("{place}: no signed note in it"),
                    })
                    .and_then(|text| open_note(&text, key, &place))
                    .and_then(|checkpoint| {
                        if checkpoint.size != seq {
                            return Err(TreeProblem {
                                kind: "malformed",
                                detail: format!(
                                    "{place} signs a tree of {} records, not of the {seq} before it",
                                    checkpoint.size
                                ),
                            });
                        }
                        accept(&mut report, &tree, &Found { checkpoint, place })
                    });
                if let Err(p) = checked {
                    report.problem = Some(p);
                    break 'files;
                }
                last_is_checkpoint = true;
            }
            // Past MAX_SIZE lines the tree stops growing; the writer refuses long before.
            let _ = tree.push_line(&line);
        }
    }
    report.records = tree.size;
    if report.problem.is_none() {
        if let Some(found) = pending {
            if found.checkpoint.size == tree.size {
                if let Err(p) = accept(&mut report, &tree, &found) {
                    report.problem = Some(p);
                }
            } else {
                report.problem = Some(TreeProblem {
                    kind: "truncated",
                    detail: format!(
                        "the log holds {} records but {} signs {}: records were cut off the end",
                        tree.size, found.place, found.checkpoint.size
                    ),
                });
            }
        }
    }
    let all_covered = report.covered == report.records
        || (last_is_checkpoint && report.covered + 1 == report.records);
    report.exit_status = match (&report.problem, all_covered) {
        (Some(_), _) => 1,
        (None, true) if report.records > 0 => 0,
        _ => 3,
    };
    Ok(report)
}

/// The report in words: what the checkpoints cover and what only the HMAC chain seals.
pub fn render(report: &TreeReport) -> String {
    let mut out = String::new();
    if let Some(p) = &report.problem {
        out.push_str(&format!(
            "CHECKPOINT PROBLEM ({}): {}\n",
            p.kind,
            crate::reader::escape(&p.detail)
        ));
    }
    if report.covered > 0 {
        out.push_str(&format!(
            "signed checkpoints: {} verified with key {}; records 0 to {} ({} records) are covered by {}\n",
            report.checkpoints,
            crate::reader::escape(&report.key),
            report.covered - 1,
            report.covered,
            crate::reader::escape(report.newest.as_deref().unwrap_or("?"))
        ));
    } else {
        out.push_str(&format!(
            "signed checkpoints: none verified with key {}\n",
            crate::reader::escape(&report.key)
        ));
    }
    if report.records > report.covered {
        out.push_str(&format!(
            "records {} to {} ({} records) are sealed only by the HMAC chain: check them with --key-file\n",
            report.covered,
            report.records - 1,
            report.records - report.covered
        ));
    }
    out
}
