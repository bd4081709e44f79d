//! The audit file writer: one chain per file, shared by threads and processes.
//!
//! Every append takes an exclusive `flock` on the state file, re-reads the state (another
//! process may have written since), recovers a crash left behind by a previous writer, seals
//! the records with the current key, writes them with one `write` to the `O_APPEND` log, and
//! then overwrites the state with the evolved key. The old key is gone from memory and from the
//! state file once the new state is written: that is the forward security.

use super::chain::ChainKey;
use super::line::{seal_into, split_line};
use super::record::{Event, ProcessIdentity, Record};
use super::state::{ChainState, StateError};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// How the log is opened and written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub log_path: PathBuf,
    /// Needed only to start a chain (no state yet).
    pub key_file: Option<PathBuf>,
    /// Mode for a new log file: 0o600 (default) or 0o640.
    pub log_mode: u32,
    /// `fdatasync` the log and the state before an append returns.
    pub sync_always: bool,
}

/// A writer error, worded for the `p11audit:` stderr line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterError(pub String);

impl std::fmt::Display for WriterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, WriterError> {
    Err(WriterError(msg.into()))
}

/// Largest tail (bytes past what the state knows) that recovery will read.
const MAX_RECOVERY_BYTES: u64 = 64 << 20;

/// The seqs an append wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The open log and state files of one process.
pub struct AuditLog {
    settings: LogSettings,
    state_path: PathBuf,
    log: File,
    state: File,
    /// The process that opened the files: after fork the child must reopen them, because a
    /// `flock` belongs to the open file description, which parent and child share.
    opened_by_pid: u32,
    /// Reused buffer for the sealed lines of one append.
    buf: Vec<u8>,
    /// The state this process wrote last (K_next lives here and in the state file only).
    last_written: Option<ChainState>,
}

/// `<log>.state`.
pub fn state_path_for(log_path: &Path) -> PathBuf {
    let mut s = log_path.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

fn refuse_symlink_or_special(path: &Path, what: &str, var: &str) -> Result<(), WriterError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => err(format!(
            "{what} {} is a symbolic link; refusing it ({var}): point {var} at a regular file",
            path.display()
        )),
        Ok(m) if !m.file_type().is_file() => err(format!(
            "{what} {} is not a regular file ({var}): point {var} at a regular file",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// Opens (creating if needed) the log for appending and the state file for positioned writes.
fn open_log_and_state(
    settings: &LogSettings,
    state_path: &Path,
) -> Result<(File, File), WriterError> {
    let var = "P11AUDIT_LOG";
    let log = open_private(&settings.log_path, settings.log_mode, true).or_else(|e| {
        err(format!(
            "cannot open audit log {} ({var}): {e}",
            settings.log_path.display()
        ))
    })?;
    let state = open_private(state_path, 0o600, false).or_else(|e| {
        err(format!(
            "cannot open audit state file {} ({var}): {e}",
            state_path.display()
        ))
    })?;
    Ok((log, state))
}

fn open_private(path: &Path, mode: u32, append: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if append {
        o.append(true);
    } else {
        o.write(true);
    }
    o.open(path)
}

/// Reads and checks the key file: it must not be readable, writable or executable by group
/// or others, and must hold 64 hex characters.
pub fn read_key_file(path: &Path) -> Result<ChainKey, WriterError> {
    let var = "P11AUDIT_KEY_FILE";
    let mut f = File::open(path).or_else(|e| {
        err(format!(
            "cannot read key file {} ({var}): {e}",
            path.display()
        ))
    })?;
    let meta = f
        .metadata()
        .or_else(|e| err(format!("cannot stat key file {}: {e}", path.display())))?;
    if meta.mode() & 0o077 != 0 {
        return err(format!(
            "key file {} is accessible by group or others (mode {:04o}); run `chmod 0400 {}` ({var})",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        ));
    }
    let mut text = String::new();
    let read = Read::by_ref(&mut f).take(4096).read_to_string(&mut text);
    let parsed = read.ok().and_then(|_| ChainKey::from_hex_text(&text).ok());
    text.zeroize();
    parsed.ok_or_else(|| {
        WriterError(format!(
            "key file {} does not hold 64 hex characters ({var}): make one with `p11audit keygen`",
            path.display()
        ))
    })
}

impl AuditLog {
    /// Opens (or starts) the chain at `settings.log_path`. `who` signs the chain-start record
    /// when this call creates the chain.
    pub fn open(settings: &LogSettings, who: &ProcessIdentity) -> Result<AuditLog, WriterError> {
        let log_path = &settings.log_path;
        let state_path = state_path_for(log_path);
        let var = "P11AUDIT_LOG";
        match log_path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                return err(format!(
                    "the directory of the audit log {} does not exist ({var}): create it or point {var} elsewhere",
                    log_path.display()
                ))
            }
            _ => {}
        }
        refuse_symlink_or_special(log_path, "audit log", var)?;
        refuse_symlink_or_special(&state_path, "audit state file", var)?;
        let (log, state) = open_log_and_state(settings, &state_path)?;
        let mut me = AuditLog {
            settings: settings.clone(),
            state_path,
            log,
            state,
            opened_by_pid: crate::audit::process::current_pid(),
            buf: Vec::with_capacity(4096),
            last_written: None,
        };
        me.with_lock(|me| me.start_chain_if_new(who))?;
        Ok(me)
    }

    fn with_lock<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, WriterError>,
    ) -> Result<T, WriterError> {
        self.state.lock().or_else(|e| {
            err(format!(
                "cannot lock audit state file {}: {e}",
                self.state_path.display()
            ))
        })?;
        let out = f(self);
        let _ = self.state.unlock();
        out
    }

    fn start_chain_if_new(&mut self, who: &ProcessIdentity) -> Result<(), WriterError> {
        match self.read_state() {
            Err(StateError::Empty) => {}
            Ok(_) => return Ok(()),
            Err(StateError::Corrupt(why)) => return Err(self.corrupt_state(why)),
        }
        let log_meta = self
            .log
            .metadata()
            .or_else(|e| err(format!("cannot stat audit log: {e}")))?;
        if log_meta.len() > 0 {
            return err(format!(
                "audit log {} has content but its state file {} is empty or missing; refusing to start a new chain over it: restore the state file, or move the log away to start a new chain deliberately",
                self.settings.log_path.display(),
                self.state_path.display()
            ));
        }
        let Some(key_file) = self.settings.key_file.clone() else {
            return err(format!(
                "P11AUDIT_KEY_FILE is not set and no chain exists yet at {}: set P11AUDIT_KEY_FILE to a key made by `p11audit keygen` to start one",
                self.settings.log_path.display()
            ));
        };
        let key = read_key_file(&key_file)?;
        let state = ChainState::genesis(key, log_meta.dev(), log_meta.ino(), 0);
        // The state goes first: if this process dies right after writing the start record,
        // the next writer finds a state and rolls forward over the record, instead of finding
        // a log with content beside an empty state, which it must refuse.
        self.state.write_all_at(&state.encode(), 0).or_else(|e| {
            err(format!(
                "cannot write audit state file {}: {e}",
                self.state_path.display()
            ))
        })?;
        let mut start = Record::new(who, 0, Event::Start, None);
        start.detail.note = Some("new chain".into());
        self.append_locked(state, &[start.to_body()])?;
        Ok(())
    }

    fn read_state(&self) -> Result<ChainState, StateError> {
        let mut bytes = Vec::with_capacity(512);
        let mut f = &self.state;
        // Read from offset 0 whatever position the handle has.
        let mut chunk = [0u8; 512];
        let mut off = 0u64;
        loop {
            match f.read_at(&mut chunk, off) {
                Ok(0) => break,
                Ok(n) => {
                    bytes.extend_from_slice(&chunk[..n]);
                    off += n as u64;
                    if bytes.len() > 4096 {
                        return Err(StateError::Corrupt("state file too large"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(StateError::Corrupt("state file unreadable")),
            }
        }
        let _ = f.flush();
        chunk.zeroize();
        let decoded = ChainState::decode(&bytes);
        bytes.zeroize();
        decoded
    }

    fn corrupt_state(&self, why: &str) -> WriterError {
        WriterError(format!(
            "audit state file {} is unusable ({why}); refusing to log so that no history is overwritten: restore it, or start a new chain deliberately (see README)",
            self.state_path.display()
        ))
    }

    /// Reopens the files in a forked child, so the child's lock is its own.
    fn reopen_after_fork(&mut self) -> Result<(), WriterError> {
        (self.log, self.state) = open_log_and_state(&self.settings, &self.state_path)?;
        self.opened_by_pid = crate::audit::process::current_pid();
        Ok(())
    }

    /// Appends `bodies` (serialized `Record`s) as consecutive records, with one `write`.
    pub fn append(&mut self, bodies: &[String]) -> Result<Appended, WriterError> {
        if self.opened_by_pid != crate::audit::process::current_pid() {
            self.reopen_after_fork()?;
        }
        self.with_lock(|me| {
            // Every writer appends to the log before it updates the state, so if the log is
            // exactly as long as this process left it, the state is too: no need to read it
            // back. (The log's identity cannot change under an open descriptor; `recover`
            // checks it against the state whenever the state is read.)
            let meta = me
                .log
                .metadata()
                .or_else(|e| err(format!("cannot stat audit log: {e}")))?;
            if meta.nlink() == 0 {
                // Deleted, or another file renamed over it: records written now would go to a
                // file nobody can find, and vanish with this process.
                return err(format!(
                    "audit log {} was deleted or replaced while in use; refusing to log to a file that no longer has a name",
                    me.settings.log_path.display()
                ));
            }
            let state = match me.last_written.take() {
                Some(s) if s.log_size == meta.len() => s,
                _ => {
                    let state = match me.read_state() {
                        Ok(s) => s,
                        Err(StateError::Empty) => {
                            return Err(me.corrupt_state("empty: the chain state was removed"))
                        }
                        Err(StateError::Corrupt(why)) => return Err(me.corrupt_state(why)),
                    };
                    me.recover(state, &meta)?
                }
            };
            me.append_locked(state, bodies)
        })
    }

    /// Checks the log against the state and rolls forward over records a crashed writer wrote
    /// but did not record in the state. A torn last line (an incomplete write) is cut off: it
    /// was never acknowledged to anyone, and appending after it would bury it mid-file.
    fn recover(
        &mut self,
        mut state: ChainState,
        meta: &std::fs::Metadata,
    ) -> Result<ChainState, WriterError> {
        let path = self.settings.log_path.display();
        if (meta.dev(), meta.ino()) != (state.log_dev, state.log_ino) {
            return err(format!(
                "audit log {path} is not the file the state file {} belongs to (it was replaced or the state points at another log); refusing to log",
                self.state_path.display()
            ));
        }
        if meta.len() < state.log_size {
            return err(format!(
                "audit log {path} is shorter ({} bytes) than the state file records ({} bytes): it was truncated; refusing to log",
                meta.len(),
                state.log_size
            ));
        }
        if meta.len() == state.log_size {
            return Ok(state);
        }
        let extra = meta.len() - state.log_size;
        if extra > MAX_RECOVERY_BYTES {
            return err(format!("audit log {path} has {extra} bytes past the last record the state knows; refusing to log"));
        }
        let mut tail = vec![0u8; extra as usize];
        self.log
            .read_exact_at(&mut tail, state.log_size)
            .or_else(|e| err(format!("cannot read audit log {path} for recovery: {e}")))?;
        let mut good = 0usize;
        while let Some(nl) = tail[good..].iter().position(|&b| b == b'\n') {
            let line = &tail[good..good + nl];
            let expect_prefix = format!(
                "{{\"v\":1,\"seq\":{},\"prev\":\"{}\",",
                state.next_seq, state.prev_mac
            );
            let ok = split_line(line).filter(|s| {
                s.payload.starts_with(expect_prefix.as_bytes())
                    && super::chain::hex_lower(&state.key.mac(s.payload)) == s.mac
            });
            let Some(split) = ok else {
                return err(format!(
                    "audit log {path} has a line after byte {} that is not the next record of the chain (seq {}); refusing to log",
                    state.log_size, state.next_seq
                ));
            };
            state.prev_mac = split.mac.to_string();
            state.key.evolve();
            state.next_seq += 1;
            state.log_size += nl as u64 + 1;
            good += nl + 1;
        }
        if good < tail.len() {
            // An incomplete last line: remove exactly those bytes.
            self.log.set_len(state.log_size).or_else(|e| {
                err(format!(
                    "cannot remove a torn last line from audit log {path}: {e}"
                ))
            })?;
        }
        Ok(state)
    }

    /// Seals and writes `bodies` after `state`, then stores the new state. Caller holds the lock.
    fn append_locked(
        &mut self,
        mut state: ChainState,
        bodies: &[String],
    ) -> Result<Appended, WriterError> {
        let first_seq = state.next_seq;
        self.buf.clear();
        for body in bodies {
            state.prev_mac = seal_into(
                &mut self.buf,
                &state.key,
                state.next_seq,
                &state.prev_mac,
                body,
            );
            state.key.evolve();
            state.next_seq += 1;
        }
        let path = self.settings.log_path.display();
        // write_all retries EINTR and completes short writes. If it fails partway (ENOSPC after
        // a short write), cut the partial bytes off so no torn line stays in the middle.
        if let Err(e) = self.log.write_all(&self.buf) {
            let _ = self.log.set_len(state.log_size);
            return err(format!("cannot write audit log {path}: {e}"));
        }
        if self.settings.sync_always {
            self.log
                .sync_data()
                .or_else(|e| err(format!("cannot fdatasync audit log {path}: {e}")))?;
        }
        state.log_size += self.buf.len() as u64;
        let encoded = state.encode();
        // The records are in the log now. If the state update fails, the next writer rolls
        // forward over them (see `recover`), so the append still succeeded; durability of the
        // state is not needed for the same reason.
        let _ = self.state.write_all_at(&encoded, 0);
        let mut encoded = encoded;
        encoded.zeroize();
        let last_seq = state.next_seq - 1;
        self.last_written = Some(state);
        Ok(Appended {
            first_seq,
            last_seq,
        })
    }
}
