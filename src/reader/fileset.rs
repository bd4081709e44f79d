//! The files of one chain, in chain order.
//!
//! A rotated chain is spread over `<log>.<time>` files and the current `<log>`. Names can be
//! changed by whoever moves or compresses old files, so the order comes from the chain itself:
//! each file's first record says which seq it starts at.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Longest first line read to find a file's first seq.
const MAX_FIRST_LINE: u64 = 1 << 20;

/// A directory's log files in chain order, and the files skipped because they hold no record.
#[derive(Debug, Default)]
pub struct ChainFiles {
    pub files: Vec<PathBuf>,
    pub skipped: Vec<PathBuf>,
}

/// The regular files of `dir` that hold records (not `*.state` or `*.checkpoint`, not the
/// `*.next` files a rotation or a checkpoint creates, not hidden files, not symbolic links),
/// ordered by the seq of their first
/// record, then the current log if it is empty (just rotated: it has a `.state` beside it).
/// Other empty files and files whose first line is not the start of a record (key files,
/// notes) are skipped and listed; if one of them should have been part of the chain, the
/// verifier reports the records it held as missing.
pub fn chain_order(dir: &Path) -> io::Result<ChainFiles> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.')
            || name.ends_with(".state")
            || name.ends_with(".checkpoint")
            || name.ends_with(".next")
        {
            continue;
        }
        if !entry.file_type()?.is_file() {
            continue;
        }
        let path = entry.path();
        let rank = match first_seq(&path)? {
            FirstLine::Seq(s) => (0, s),
            // An empty file belongs to the chain only as the current log (just rotated),
            // which has its state file beside it.
            FirstLine::Empty if crate::writer::audit_log::state_path_for(&path).is_file() => (1, 0),
            FirstLine::Empty | FirstLine::NoSeq => {
                skipped.push(path);
                continue;
            }
        };
        use std::os::unix::fs::MetadataExt;
        let meta = entry.metadata()?;
        // The log's own name (the one with the state file beside it) sorts first among the
        // names of one file (see below).
        let not_the_log = !crate::writer::audit_log::state_path_for(&path).is_file();
        files.push((rank, (meta.dev(), meta.ino()), not_the_log, path));
    }
    files.sort();
    // A rotation cut short leaves the log with two names (its own and the one it was being
    // renamed to, §10.1): one file, listed once, under the log's own name.
    files.dedup_by_key(|(rank, id, _, _)| (*rank, *id));
    skipped.sort();
    Ok(ChainFiles {
        files: files.into_iter().map(|(_, _, _, p)| p).collect(),
        skipped,
    })
}

enum FirstLine {
    Seq(u64),
    Empty,
    NoSeq,
}

fn first_seq(path: &Path) -> io::Result<FirstLine> {
    let mut line = Vec::new();
    BufReader::new(File::open(path)?.take(MAX_FIRST_LINE)).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(FirstLine::Empty);
    }
    let prefix = b"{\"v\":1,\"seq\":";
    let Some(rest) = line.strip_prefix(&prefix[..]) else {
        return Ok(FirstLine::NoSeq);
    };
    let digits: Vec<u8> = rest
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    Ok(std::str::from_utf8(&digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .map_or(FirstLine::NoSeq, FirstLine::Seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rotation cut short between its link and its rename (§10.1): the log has two names.
    /// It is one file of the chain, under the log's own name.
    #[test]
    fn a_file_with_two_names_is_listed_once_as_the_log() {
        let d = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| std::fs::write(d.path().join(name), text).unwrap();
        w(
            "audit.jsonl.20261126T000000.000000Z",
            "{\"v\":1,\"seq\":0,\"prev\":\"x\"}\n",
        );
        w("audit.jsonl", "{\"v\":1,\"seq\":7,\"prev\":\"x\"}\n");
        w("audit.jsonl.state", "state");
        std::fs::hard_link(
            d.path().join("audit.jsonl"),
            d.path().join("audit.jsonl.20261126T010000.000000Z"),
        )
        .unwrap();
        let found = chain_order(d.path()).unwrap();
        assert_eq!(
            found.files,
            [
                d.path().join("audit.jsonl.20261126T000000.000000Z"),
                d.path().join("audit.jsonl")
            ]
        );
    }

    #[test]
    fn orders_by_first_seq_not_by_name() {
        let d = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| std::fs::write(d.path().join(name), text).unwrap();
        w("audit.jsonl", "");
        w("audit.jsonl.b", "{\"v\":1,\"seq\":0,\"prev\":\"x\"}\n");
        w("audit.jsonl.a", "{\"v\":1,\"seq\":120,\"prev\":\"x\"}\n");
        w("audit.jsonl.c", "{\"v\":1,\"seq\":9,\"prev\":\"x\"}\n");
        w("audit.jsonl.state", "state");
        w("empty-other", "");
        w("audit.jsonl.next", "");
        w(".hidden", "");
        w("zz-garbage", "not a record\n");
        let found = chain_order(d.path()).unwrap();
        assert_eq!(
            found.skipped,
            [d.path().join("empty-other"), d.path().join("zz-garbage")]
        );
        let names: Vec<String> = found
            .files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "audit.jsonl.b",
                "audit.jsonl.c",
                "audit.jsonl.a",
                "audit.jsonl",
            ]
        );
    }
}
