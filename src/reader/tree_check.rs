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
use std::ops::ControlFlow;
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
/// before a checkpoint's size do not have its root, or a checkpoint record does not sit at its
/// size: a line altered, removed, added or reordered),
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
pub fn seq_of(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"v\":1,\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Calls `f(file, line)` for each whole line of `files` in order, without its newline. A torn
/// last line is no record (the chain's verifier reports it) and is not passed.
fn for_each_line(
    files: &[PathBuf],
    mut f: impl FnMut(&Path, &[u8]) -> ControlFlow<()>,
) -> Result<(), TreeIoError> {
    for path in files {
        let io = |source| TreeIoError {
            path: path.clone(),
            source,
        };
        let mut reader = BufReader::new(std::fs::File::open(path).map_err(io)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io)? == 0 || line.pop() != Some(b'\n') {
                break;
            }
            if f(path, &line).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Leaf i must be the record of seq i: the files must start at the chain's first record.
fn first_is_seq_0(path: &Path, index: u64, line: &[u8]) -> Result<(), TreeProblem> {
    if index == 0 && seq_of(line) != Some(0) {
        return Err(TreeProblem {
            kind: "not_from_seq_0",
            detail: format!(
                "{} does not start with the chain's first record (seq 0): give every file of the chain, oldest first",
                path.display()
            ),
        });
    }
    Ok(())
}

/// Why `prove` could not make a proof.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error(transparent)]
    Io(#[from] TreeIoError),
    #[error("{}", .0.detail)]
    Log(TreeProblem),
    #[error("no checkpoint in the log or its checkpoint file")]
    NoCheckpoint,
    #[error("--from {from} is larger than the newest checkpoint ({newest} records)")]
    FromTooLarge { from: u64, newest: u64 },
    #[error("the log holds {records} records, fewer than its newest checkpoint signs ({newest})")]
    Truncated { records: u64, newest: u64 },
}

/// The consistency proof from the tree of `from` records to the newest checkpoint in `files`
/// and `checkpoint_file`, as a tlog-witness add-checkpoint request body (`old <from>`, the
/// proof's hashes in base64, a blank line, the signed checkpoint). The signature is not
/// checked here: the witness checks it.
pub fn prove(
    files: &[PathBuf],
    checkpoint_file: Option<&Path>,
    from: u64,
) -> Result<String, ProveError> {
    let mut newest: Option<(u64, String)> = None;
    let mut consider = |text: String| {
        let size = SignedNote::parse(&text)
            .ok()
            .and_then(|n| Checkpoint::parse(&n.text).ok())
            .map(|c| c.size);
        if let Some(size) = size {
            if newest.as_ref().is_none_or(|(s, _)| size >= *s) {
                newest = Some((size, text));
            }
        }
    };
    if let Some(text) = checkpoint_file.and_then(|p| std::fs::read_to_string(p).ok()) {
        consider(text);
    }
    let mut leaves = Vec::new();
    let mut problem = None;
    for_each_line(files, |path, line| {
        if let Err(p) = first_is_seq_0(path, leaves.len() as u64, line) {
            problem = Some(p);
            return ControlFlow::Break(());
        }
        if let Some(Ok(note)) = checkpoint_in(line) {
            consider(note);
        }
        leaves.push(crate::tlog::tree::leaf_hash(line));
        ControlFlow::Continue(())
    })?;
    if let Some(p) = problem {
        return Err(ProveError::Log(p));
    }
    let (size, note) = newest.ok_or(ProveError::NoCheckpoint)?;
    if from > size {
        return Err(ProveError::FromTooLarge { from, newest: size });
    }
    if (leaves.len() as u64) < size {
        return Err(ProveError::Truncated {
            records: leaves.len() as u64,
            newest: size,
        });
    }
    let proof = crate::tlog::tree::consistency_proof(&leaves[..size as usize], from as usize);
    Ok(crate::tlog::witness::request_body(from, &proof, &note))
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
    if report.problem.is_none() {
        for_each_line(files, |path, line| {
            let seq = tree.size;
            if let Err(p) = first_is_seq_0(path, seq, line) {
                report.problem = Some(p);
                return ControlFlow::Break(());
            }
            if let Some(found) = pending.take_if(|f| f.checkpoint.size == seq) {
                if let Err(p) = accept(&mut report, &tree, &found) {
                    report.problem = Some(p);
                    return ControlFlow::Break(());
                }
            }
            last_is_checkpoint = false;
            if let Some(note) = checkpoint_in(line) {
                let place = format!("the checkpoint record at seq {seq}");
                let checked = note
                    .map_err(|()| TreeProblem {
                        kind: "malformed",
                        detail: format!("{place}: no signed note in it"),
                    })
                    .and_then(|text| open_note(&text, key, &place))
                    .and_then(|checkpoint| {
                        if checkpoint.size != seq {
                            // The writer signs the lines before the record: lines before it
                            // were removed or added.
                            return Err(TreeProblem {
                                kind: "altered",
                                detail: format!(
                                    "{place} signs the {} records before it, but {seq} lines come before it: covered lines were removed or added",
                                    checkpoint.size
                                ),
                            });
                        }
                        accept(&mut report, &tree, &Found { checkpoint, place })
                    });
                if let Err(p) = checked {
                    report.problem = Some(p);
                    return ControlFlow::Break(());
                }
                last_is_checkpoint = true;
            }
            // Past MAX_SIZE lines the tree stops growing; the writer refuses long before.
            let _ = tree.push_line(line);
            ControlFlow::Continue(())
        })?;
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
    if report.exit_status == 0 && report.records == report.covered + 1 {
        out.push_str(&format!(
            "record {} is the newest checkpoint record itself, sealed by the HMAC chain\n",
            report.covered
        ));
    } else if report.records > report.covered {
        out.push_str(&format!(
            "records {} to {} ({} records) are sealed only by the HMAC chain: check them with --key-file\n",
            report.covered,
            report.records - 1,
            report.records - report.covered
        ));
    }
    out
}
