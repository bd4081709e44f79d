//! Opening the log and its state file: the files the writer trusts (`own_files`), the state
//! file's mapping and mutex set up once per file and boot, and the key file that starts a chain.

use crate::format::chain::ChainKey;
use crate::format::state::{self, layout, StateError};
use crate::os::SharedFileMap;
use crate::writer::audit_log::LogSettings;
use crate::writer::error::{err, log_without_state, state_unusable, WriterError};
use crate::writer::own_files::{self, FileRole, UntrustedFile};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// `<log>.state`.
pub fn state_path_for(log_path: &Path) -> PathBuf {
    let mut s = log_path.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

pub(super) fn refuse_symlink_or_special(
    path: &Path,
    what: &str,
    var: &str,
) -> Result<(), WriterError> {
    let kind = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => ("a symbolic link", m),
        Ok(m) if !m.file_type().is_file() => ("not a regular file", m),
        _ => return Ok(()),
    };
    err(format!(
        "{what} {} is {} (owner {}, mode {:o}); refusing it ({var}): point {var} at a regular file",
        path.display(),
        kind.0,
        own_files::owner_text(kind.1.uid()),
        kind.1.mode()
    ))
}

/// Opens (creating if needed) the log for appending and the state file for positioned writes,
/// after checking their directory (`own_files`).
pub(super) fn open_log_and_state(
    settings: &LogSettings,
    state_path: &Path,
) -> Result<(File, File), WriterError> {
    own_files::check_directory(&own_files::directory_of(&settings.log_path))?;
    let log = own_files::create_or_adopt(&settings.log_path, FileRole::Log, settings.log_mode)?;
    let log_has_content = log.metadata().map(|m| m.len() > 0).unwrap_or(false);
    if log_has_content && std::fs::symlink_metadata(state_path).is_err() {
        // Nothing is created beside a log whose state is gone.
        return Err(log_without_state(&settings.log_path, state_path));
    }
    // A new state file appears whole, with its header: an empty one is never p11audit's.
    let mut header = layout::MAGIC.to_vec();
    header.resize(layout::FILE_LEN, 0);
    let state = own_files::create_whole_or_adopt(state_path, FileRole::State, 0o600, &header)?;
    Ok((log, state))
}

/// Opens an existing log for appending (never creating one) with its (st_dev, st_ino), if it
/// passes `own_files::check_adopted`.
pub(super) fn open_existing_log(path: &Path) -> Result<(File, (u64, u64)), UntrustedFile> {
    let f = own_files::adopt(path, FileRole::Log)?;
    let m = f.metadata().map_err(|source| UntrustedFile::Io {
        action: "stat",
        role: FileRole::Log,
        path: path.to_path_buf(),
        source,
    })?;
    Ok((f, (m.dev(), m.ino())))
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads and checks the key file: it must be owned by this uid or root (whoever owns it knows
/// the key), must not be readable, writable or executable by group or others, and must hold 64
/// hex characters.
pub fn read_key_file(path: &Path) -> Result<ChainKey, WriterError> {
    let var = "P11AUDIT_KEY_FILE";
    // O_NONBLOCK: a FIFO put at the path must not hang C_Initialize (it is refused below).
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .or_else(|e| {
            err(format!(
                "cannot read key file {} ({var}): {e}",
                path.display()
            ))
        })?;
    let meta = f
        .metadata()
        .or_else(|e| err(format!("cannot stat key file {}: {e}", path.display())))?;
    if !meta.file_type().is_file() {
        return err(format!(
            "key file {} is not a regular file ({var}): point {var} at a file made by `p11audit keygen`",
            path.display()
        ));
    }
    let euid = crate::os::effective_uid();
    if meta.uid() != euid && meta.uid() != 0 {
        return err(format!(
            "key file {} is owned by {}, not by this process's uid {euid} or root: its owner knows the chain key and could forge the log; make a new key as uid {euid} with `p11audit keygen` ({var})",
            path.display(),
            own_files::owner_text(meta.uid())
        ));
    }
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

/// Sets up the mapping of the state file, under an exclusive `flock` so that only one process
/// ever initializes it: a new (empty) file gets its header and mutex; a file from an earlier
/// boot gets a fresh mutex (the old one may have been saved locked by a thread that no longer
/// exists) and is marked for a log check.
pub(super) fn map_state_file(
    state: &File,
    state_path: &Path,
    log_path: &Path,
    log_len: u64,
) -> Result<SharedFileMap, WriterError> {
    let io_err = |what: &str, e: io::Error| {
        WriterError(format!(
            "cannot {what} audit state file {}: {e}",
            state_path.display()
        ))
    };
    // std's `File::lock` does not retry `flock` when a signal (installed without SA_RESTART)
    // interrupts the wait.
    loop {
        match state.lock() {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("lock", e)),
        }
    }
    let result = (|| {
        let len = state.metadata().map_err(|e| io_err("stat", e))?.len();
        if len == 0 && log_len > 0 {
            return Err(log_without_state(log_path, state_path));
        }
        if len == 0 {
            // p11audit creates its state file whole (`own_files::create_whole_or_adopt`).
            return Err(WriterError(format!(
                "audit state file {} is empty, so p11audit did not make it; move it away (and find out who made it) so that p11audit creates it (P11AUDIT_LOG)",
                state_path.display()
            )));
        }
        if len != layout::FILE_LEN as u64 {
            let mut bytes = Vec::new();
            let _ = Read::by_ref(&mut &*state)
                .take(8192)
                .read_to_end(&mut bytes);
            let why = match state::decode_file(&bytes) {
                Err(StateError::Corrupt(why)) => why,
                _ => "wrong size for a state file",
            };
            return Err(state_unusable(state_path, why));
        }
        let shared = SharedFileMap::new(state, layout::FILE_LEN).map_err(|e| io_err("map", e))?;
        let mut magic = vec![0u8; layout::MAGIC.len()];
        shared.read(0, &mut magic);
        if magic != layout::MAGIC {
            return Err(state_unusable(state_path, "unknown state file version"));
        }
        let mut saved = [0u8; layout::BOOT_ID_LEN];
        shared.read(layout::BOOT_ID, &mut saved);
        let new_file = saved == [0u8; layout::BOOT_ID_LEN];
        // Without a readable boot id, a mutex is set up only in a new file: re-initializing one
        // that other processes may hold would break mutual exclusion. (A mutex saved locked
        // before a power loss then makes writers time out and fail closed, never hang.)
        let this_boot = crate::os::boot_id();
        let reinit = match this_boot {
            Some(boot) => saved != boot,
            None => new_file,
        };
        let boot = this_boot.unwrap_or(*b"unknown boot id.....................");
        if reinit {
            shared
                .init_robust_mutex(layout::MUTEX)
                .map_err(|e| io_err("set up the lock in", e))?;
            shared.store_u64(layout::RECOVER, 1);
            shared.write(layout::BOOT_ID, &boot);
        }
        Ok(shared)
    })();
    let _ = state.unlock();
    result
}
