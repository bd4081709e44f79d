//! Reading the files of a chain as one run of lines, one bounded line at a time: where each
//! line came from (file and line number), how it ended (a newline, the end of its file, the
//! cap), and whether anything follows it.
//!
//! A line longer than the cap is not buffered to its end: only its first bytes are kept, and
//! the walk stops at it anyway.

use super::VerifyIoError;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Where a line came from and how it ended.
#[derive(Debug, Clone, Copy)]
pub(super) struct LineMeta {
    /// Which of the files, in the order given.
    pub(super) file_idx: usize,
    /// 1-based within the file.
    pub(super) line_no: u64,
    /// The line ended in `\n` (else it ended at end of file).
    pub(super) newline: bool,
    /// The line was longer than the cap; the buffer holds only its first cap bytes.
    pub(super) oversized: bool,
    /// Full length of the line without its newline.
    pub(super) len: u64,
}

/// Reads lines across the files in order, one bounded line at a time.
pub(super) struct Cursor<'a> {
    paths: &'a [PathBuf],
    /// The file being read (or to be opened next when `reader` is None).
    idx: usize,
    reader: Option<BufReader<File>>,
    /// Lines read from the current (or, at the end, the last) file.
    line_no: u64,
    max_line: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(paths: &'a [PathBuf], max_line: usize) -> Self {
        Cursor {
            paths,
            idx: 0,
            reader: None,
            line_no: 0,
            max_line,
        }
    }

    /// File `idx`, in the order given.
    pub(super) fn path(&self, idx: usize) -> &Path {
        &self.paths[idx]
    }

    /// Where the end of the chain is reported: the last file, and the number of lines read
    /// from the file read last (0 when that is an empty file after the one holding records).
    pub(super) fn end_position(&self) -> (PathBuf, u64) {
        (self.paths.last().cloned().unwrap_or_default(), self.line_no)
    }

    fn io_err(&self, idx: usize, line: Option<u64>, source: io::Error) -> VerifyIoError {
        VerifyIoError {
            path: self.paths[idx].clone(),
            line,
            source,
        }
    }

    /// The next line into `buf` (without its newline), or None after the last file.
    pub(super) fn next_line(
        &mut self,
        buf: &mut Vec<u8>,
    ) -> Result<Option<LineMeta>, VerifyIoError> {
        loop {
            if self.reader.is_none() {
                if self.idx >= self.paths.len() {
                    return Ok(None);
                }
                // Only regular files: opening a FIFO would block, a device could be endless.
                let path = &self.paths[self.idx];
                match std::fs::metadata(path) {
                    Ok(m) if !m.is_file() => {
                        let e = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
                        return Err(self.io_err(self.idx, None, e));
                    }
                    _ => {}
                }
                let file = File::open(path).map_err(|e| self.io_err(self.idx, None, e))?;
                self.reader = Some(BufReader::with_capacity(64 * 1024, file));
                self.line_no = 0;
            }
            let reader = self.reader.as_mut().expect("opened above");
            match read_bounded_line(reader, buf, self.max_line) {
                Ok(Some((newline, oversized, len))) => {
                    self.line_no += 1;
                    return Ok(Some(LineMeta {
                        file_idx: self.idx,
                        line_no: self.line_no,
                        newline,
                        oversized,
                        len,
                    }));
                }
                Ok(None) => {
                    self.reader = None;
                    self.idx += 1;
                }
                Err(e) => return Err(self.io_err(self.idx, Some(self.line_no + 1), e)),
            }
        }
    }

    /// True if nothing follows the line just read: its file is at its end and every later file
    /// is empty.
    pub(super) fn at_end(&mut self) -> Result<bool, VerifyIoError> {
        if let Some(reader) = self.reader.as_mut() {
            let more = loop {
                match reader.fill_buf() {
                    Ok(b) => break !b.is_empty(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.io_err(self.idx, Some(self.line_no + 1), e)),
                }
            };
            if more {
                return Ok(false);
            }
        }
        let next = if self.reader.is_some() {
            self.idx + 1
        } else {
            self.idx
        };
        Ok(self.paths.iter().skip(next).all(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.len() == 0)
                .unwrap_or(false)
        }))
    }
}

/// Reads one line into `buf` (without `\n`), keeping at most `cap` bytes of it. Returns
/// (ended in newline, longer than cap, full length), or None at end of input.
fn read_bounded_line<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Option<(bool, bool, u64)>> {
    buf.clear();
    let mut any = false;
    let mut oversized = false;
    let mut len: u64 = 0;
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(any.then_some((false, oversized, len)));
        }
        any = true;
        let (chunk_len, found) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if !oversized {
            let room = cap - buf.len();
            if chunk_len > room {
                buf.extend_from_slice(&avail[..room]);
                oversized = true;
            } else {
                buf.extend_from_slice(&avail[..chunk_len]);
            }
        }
        len += chunk_len as u64;
        r.consume(chunk_len + usize::from(found));
        if found {
            return Ok(Some((true, oversized, len)));
        }
        if oversized {
            // The walk stops at this problem anyway: do not read a huge (or endless) line to
            // its end just to learn its length.
            return Ok(Some((false, true, len)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::verify::testchain::{chain, k0, problem, run, signs};
    use crate::reader::verify::{verify_files, ProblemKind, VerifyOptions};

    #[test]
    fn a_two_mib_line_is_reported_not_buffered() {
        let c = chain(&signs(3));
        let mut big = br#"{"v":1,"seq":2,"prev":""#.to_vec();
        big.resize(2 << 20, b'x');
        big.push(b'\n');
        let log = [c.lines[0].clone(), c.lines[1].clone(), big].concat();
        let r = run(&[&log], None);
        let p = problem(&r);
        assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Malformed, 3, None));
        assert!(p.detail.contains("longer than the limit"), "{}", p.detail);
        assert_eq!(r.summary.records, 2);

        // A sealed (valid) record over the limit is also refused.
        let huge = format!(
            r#"{{"ts":"t","host":"h","pid":1,"tid":1,"uid":0,"exe":"/x","ev":"intent","pad":"{}"}}"#,
            "y".repeat(2 << 20)
        );
        let c = chain(&[huge]);
        let p = problem(&run(&[&c.all()], None)).clone();
        assert_eq!((p.kind, p.seq), (ProblemKind::Malformed, Some(0)));
    }

    #[test]
    fn bounded_line_reader() {
        let mut r = io::BufReader::with_capacity(4, &b"abcdefgh\nxy\n\nz"[..]);
        let mut buf = Vec::new();
        // Over the cap: reported as soon as the cap is passed (the reader does not look for
        // the line's end), keeping the first `cap` bytes.
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            Some((false, true, 8))
        );
        assert_eq!(buf, b"abcde");
        // What is left of that line comes next; a caller stops at the oversized line.
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            Some((true, false, 0))
        );
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            Some((true, false, 2))
        );
        assert_eq!(buf, b"xy");
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            Some((true, false, 0))
        );
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            Some((false, false, 1))
        );
        assert_eq!(read_bounded_line(&mut r, &mut buf, 5).unwrap(), None);
    }

    #[test]
    fn unreadable_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = verify_files(
            std::slice::from_ref(&missing),
            &VerifyOptions::new(k0(), None),
        )
        .unwrap_err();
        assert_eq!(err.path, missing);
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
    }
}
