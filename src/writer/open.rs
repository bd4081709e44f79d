//! Opening the log and its state file: the files the writer trusts (`own_files`), the state
//! file's mapping and mutex set up once per file and boot, and the key file that starts a chain.

use crate::format::chain::ChainKey;
use crate::format::state::{self, layout, StateError};
use crate::os::SharedFileMap;
use crate::writer::audit_log::LogSettings;
use crate::writer::error::{KeyFileError, WriterError};
use crate::writer::own_files::{self, FileRole, UntrustedFile};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `<log>.state`.
pub fn state_path_for(log_path: &Path) -> PathBuf {
    let mut s = log_path.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

/// Refuses a symbolic link or anything but a regular file at `path`, before it is opened.
pub(super) fn refuse_symlink_or_special(path: &Path, role: FileRole) -> Result<(), UntrustedFile> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() || !m.file_type().is_file() => {
            Err(UntrustedFile::NotRegular {
                role,
                path: path.to_path_buf(),
                symlink: m.file_type().is_symlink(),
                owner: m.uid(),
                mode: m.mode(),
            })
        }
        _ => Ok(()),
    }
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
        return Err(WriterError::LogWithoutState {
            log: settings.log_path.clone(),
            state: state_path.to_path_buf(),
        });
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
pub(crate) fn read_key_file(path: &Path) -> Result<ChainKey, KeyFileError> {
    let text = read_secret_file(path)?;
    ChainKey::from_hex_text(&text).map_err(|_| KeyFileError::NotAKey {
        path: path.to_path_buf(),
    })
}

/// The text of a file holding a secret key, with the key file's trust checks: a regular file,
/// owned by this uid or root, with no group or other access. At most 4096 bytes are read.
pub(crate) fn read_secret_file(path: &Path) -> Result<zeroize::Zeroizing<String>, KeyFileError> {
    let path_buf = || path.to_path_buf();
    let unreadable = |source| KeyFileError::Unreadable {
        path: path_buf(),
        source,
    };
    // O_NONBLOCK: a FIFO put at the path must not hang C_Initialize (it is refused below).
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(unreadable)?;
    let meta = f.metadata().map_err(unreadable)?;
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotRegular { path: path_buf() });
    }
    let euid = crate::os::effective_uid();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(KeyFileError::OwnedByAnother {
            path: path_buf(),
            owner: meta.uid(),
            euid,
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(KeyFileError::OpenToOthers {
            path: path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    Read::by_ref(&mut f)
        .take(4096)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => KeyFileError::NotAKey { path: path_buf() },
            _ => unreadable(e),
        })?;
    Ok(text)
}

/// Sets up the mapping of the state file, under an exclusive `flock` so that only one process
/// ever initializes it: a new file (created whole, with its header) gets its mutex; a file
/// from an earlier boot gets a fresh mutex (the old one may have been saved locked by a thread
/// that no longer exists) and is marked for a log check.
pub(super) fn map_state_file(
    state: &File,
    state_path: &Path,
    log_path: &Path,
    log_len: u64,
) -> Result<SharedFileMap, WriterError> {
    let io_err = |action: &'static str, e: io::Error| WriterError::io(action, state_path, e);
    // std's `File::lock` does not retry `flock` when a signal (installed without SA_RESTART)
    // interrupts the wait.
    loop {
        match state.lock() {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("lock audit state file", e)),
        }
    }
    let result = (|| {
        let len = state
            .metadata()
            .map_err(|e| io_err("stat audit state file", e))?
            .len();
        if len == 0 && log_len > 0 {
            return Err(WriterError::LogWithoutState {
                log: log_path.to_path_buf(),
                state: state_path.to_path_buf(),
            });
        }
        if len == 0 {
            // p11audit creates its state file whole (`own_files::create_whole_or_adopt`).
            return Err(WriterError::StateEmpty {
                state: state_path.to_path_buf(),
            });
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
            return Err(WriterError::StateUnusable {
                state: state_path.to_path_buf(),
                why,
            });
        }
        let shared = SharedFileMap::new(state, layout::FILE_LEN)
            .map_err(|e| io_err("map audit state file", e))?;
        let mut magic = vec![0u8; layout::MAGIC.len()];
        shared.read(0, &mut magic);
        if magic != layout::MAGIC {
            return Err(WriterError::StateUnusable {
                state: state_path.to_path_buf(),
                why: "unknown state file version",
            });
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
                .map_err(|e| io_err("set up the lock in audit state file", e))?;
            shared.store_u64(layout::RECOVER, 1);
            shared.write(layout::BOOT_ID, &boot);
        }
        Ok(shared)
    })();
    let _ = state.unlock();
    result
}
