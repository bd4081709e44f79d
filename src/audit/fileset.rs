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

/// The regular files of `dir` that hold records (not `*.state`, not the `*.next` file a
/// rotation creates, not hidden files, not symbolic links), ordered by the seq of their first
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
        if name.starts_with('.') || name.ends_with(".state") || name.ends_with(".next") {
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
            FirstLine::Empty if super::writer::state_path_for(&path).is_file() => (1, 0),
            FirstLine::Empty | FirstLine::NoSeq => {
                skipped.push(path);
                continue;
            }
        };
        files.push((rank, path));
    }
    files.sort();
    skipped.sort();
    Ok(ChainFiles {
        files: files.into_iter().map(|(_, p)| p).collect(),
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
