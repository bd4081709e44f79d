//! The files the writer writes into, and why it trusts them.
//!
//! The state file holds the current chain key, and whoever reads it can forge every record
//! from then on. So a key goes only into a file whose owner and mode the writer set itself,
//! and no file another user could have opened first is ever written to:
//! - The log's directory must be owned by this process's effective uid (or root) and writable
//!   by no one else. Otherwise another user could create the log or its state file before the
//!   first writer does, keep a descriptor or mapping of it, and read every key written to it;
//!   or remove the trail.
//! - New files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` and then given their exact
//!   mode. A new state file is written whole under a temporary name and renamed into place
//!   without replacing anything, so a state file never exists empty: an empty one was not made
//!   by p11audit.
//! - An existing file is adopted only after `fstat` of the opened descriptor (not of the path,
//!   which may change in between) shows a regular file owned by the effective uid, with no
//!   group or other access (the state file) or no group write and no other access (the log).
//!   Nothing is written to a file that fails: a descriptor or mapping someone else holds of it
//!   sees nothing of this chain.

use crate::os::{effective_uid, user_name};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Which of the writer's files a check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRole {
    Log,
    State,
}

impl FileRole {
    fn name(self) -> &'static str {
        match self {
            FileRole::Log => "audit log",
            FileRole::State => "audit state file",
        }
    }

    /// Mode bits an adopted file must not have. The log may be group-readable
    /// (`P11AUDIT_LOG_MODE=0640`); the state file holds the key.
    fn forbidden_bits(self) -> u32 {
        match self {
            FileRole::Log => 0o027,
            FileRole::State => 0o077,
        }
    }

    fn requirement(self) -> &'static str {
        match self {
            FileRole::Log => "no group write and no access for others",
            FileRole::State => "no group or other access",
        }
    }
}

/// Why the writer will not use a file or directory. Each names the path, its owner and mode,
/// and the fix, on one line.
#[derive(Debug, thiserror::Error)]
pub enum UntrustedFile {
    #[error(
        "the directory {dir} of the audit log is writable by {who} (owner {}, mode {mode:04o}): another user could create the log or its state file first and read the chain key, or remove them; run `chmod go-w {dir}` and give each user that logs a directory of its own",
        owner_text(*owner),
        who = if mode & 0o002 != 0 { "others" } else { "its group" },
        dir = dir.display()
    )]
    DirectoryWritableByOthers { dir: PathBuf, owner: u32, mode: u32 },

    #[error(
        "the directory {dir} of the audit log is owned by {}, not by this process's uid {euid} or root (mode {mode:04o}): its owner could replace the log or its state file; use a directory owned by uid {euid}",
        owner_text(*owner),
        dir = dir.display()
    )]
    DirectoryOfAnotherUser {
        dir: PathBuf,
        owner: u32,
        mode: u32,
        euid: u32,
    },

    #[error(
        "the directory {dir} above the audit log's is owned by {} with mode {mode:04o}: whoever can write to it could move the log's directory away and put another in its place; every directory above the log must belong to root or uid {euid} and be writable only by its owner (or have the sticky bit, as /tmp has)",
        owner_text(*owner),
        dir = dir.display()
    )]
    UnsafeParent {
        dir: PathBuf,
        owner: u32,
        mode: u32,
        euid: u32,
    },

    #[error(
        "{} {} is {} (owner {}, mode {mode:o}); refusing it: point P11AUDIT_LOG at a regular file",
        role.name(),
        path.display(),
        if *symlink { "a symbolic link" } else { "not a regular file" },
        owner_text(*owner)
    )]
    NotRegular {
        role: FileRole,
        path: PathBuf,
        symlink: bool,
        owner: u32,
        mode: u32,
    },

    #[error(
        "{} {} is owned by {} (mode {:04o}), not by this process's uid {euid}: p11audit writes only into files it created itself; move it away (and find out who made it) so that p11audit creates it",
        role.name(),
        path.display(),
        owner_text(*owner),
        mode & 0o7777
    )]
    OwnedByAnother {
        role: FileRole,
        path: PathBuf,
        owner: u32,
        mode: u32,
        euid: u32,
    },

    #[error(
        "{} {} has mode {:04o} (owner {}), but must have {}: {}",
        role.name(),
        path.display(),
        mode & 0o7777,
        owner_text(*owner),
        role.requirement(),
        match role {
            FileRole::Log => format!("run `chmod go-w,o-rwx {}` if its content verifies, or move it away", path.display()),
            FileRole::State => "its chain key may have been read by others: move the log and its state file away and start a new chain (OPERATIONS.md)".to_string(),
        }
    )]
    OpenToOthers {
        role: FileRole,
        path: PathBuf,
        owner: u32,
        mode: u32,
    },

    #[error("cannot {action} {} {}: {source}", role.name(), path.display())]
    Io {
        action: &'static str,
        role: FileRole,
        path: PathBuf,
        source: io::Error,
    },
}

/// "uid 65534 (nobody)", or "uid 4242" for a uid with no name.
pub(crate) fn owner_text(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// The directory a file at `path` is in ("." for a bare file name).
pub(crate) fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks that no one but this uid (and root) can create, replace or remove files in `dir`,
/// or put another directory in its place: `dir` must be owned by the effective uid or root and
/// writable by no one else; every directory above it, both on the path as given and on the
/// path with symbolic links resolved, must be owned by the effective uid or root and writable
/// only by its owner unless it has the sticky bit (an attacker who could rename an entry of a
/// parent could swap the log's directory for one of its own between this check and the opens).
pub(crate) fn check_directory(dir: &Path) -> Result<(), UntrustedFile> {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let stat = |path: &Path| {
        std::fs::metadata(path)
            .map(|m| (m.uid(), m.mode() & 0o7777))
            .map_err(|source| UntrustedFile::Io {
                action: "stat the directory of",
                role: FileRole::Log,
                path: path.to_path_buf(),
                source,
            })
    };
    let (owner, mode) = stat(&dir)?;
    let euid = effective_uid();
    if owner != euid && owner != 0 {
        return Err(UntrustedFile::DirectoryOfAnotherUser {
            dir,
            owner,
            mode,
            euid,
        });
    }
    // The sticky bit does not help here: it keeps others from removing files, not from
    // creating the log or its state file before p11audit does.
    if mode & 0o022 != 0 {
        return Err(UntrustedFile::DirectoryWritableByOthers { dir, owner, mode });
    }
    let resolved = std::fs::canonicalize(&dir).map_err(|source| UntrustedFile::Io {
        action: "resolve the directory of",
        role: FileRole::Log,
        path: dir.clone(),
        source,
    })?;
    for parent in dir.ancestors().skip(1).chain(resolved.ancestors().skip(1)) {
        let (owner, mode) = stat(parent)?;
        let writable_by_others = mode & 0o022 != 0 && mode & libc::S_ISVTX == 0;
        if (owner != euid && owner != 0) || writable_by_others {
            return Err(UntrustedFile::UnsafeParent {
                dir: parent.to_path_buf(),
                owner,
                mode,
                euid,
            });
        }
    }
    Ok(())
}

/// Checks an opened file before anything is written to it: a regular file, owned by the
/// effective uid, without the mode bits `role` forbids. `fstat` of the descriptor, so the file
/// checked is the file written.
pub(crate) fn check_adopted(file: &File, role: FileRole, path: &Path) -> Result<(), UntrustedFile> {
    let meta = file.metadata().map_err(|source| UntrustedFile::Io {
        action: "stat",
        role,
        path: path.to_path_buf(),
        source,
    })?;
    let (owner, mode) = (meta.uid(), meta.mode());
    let path = path.to_path_buf();
    if !meta.file_type().is_file() {
        return Err(UntrustedFile::NotRegular {
            role,
            path,
            symlink: false,
            owner,
            mode,
        });
    }
    let euid = effective_uid();
    if owner != euid {
        return Err(UntrustedFile::OwnedByAnother {
            role,
            path,
            owner,
            mode,
            euid,
        });
    }
    if mode & role.forbidden_bits() != 0 {
        return Err(UntrustedFile::OpenToOthers {
            role,
            path,
            owner,
            mode,
        });
    }
    Ok(())
}

/// Options for opening one of the writer's files: read and write (the log in append mode),
/// never following a symbolic link, never becoming a controlling terminal.
fn options(role: FileRole) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY);
    match role {
        FileRole::Log => o.append(true),
        FileRole::State => o.write(true),
    };
    o
}

/// Opens the existing file at `path` for `role` and checks it (`check_adopted`).
pub(crate) fn adopt(path: &Path, role: FileRole) -> Result<File, UntrustedFile> {
    let file = options(role)
        .open(path)
        .map_err(|source| UntrustedFile::Io {
            action: "open",
            role,
            path: path.to_path_buf(),
            source,
        })?;
    check_adopted(&file, role, path)?;
    Ok(file)
}

/// Creates a new, empty file at `path` with exactly `mode`, failing if any file (or link) is
/// there. A file whose mode cannot be set is removed again, if it is still the one created.
pub(crate) fn create_new(path: &Path, role: FileRole, mode: u32) -> io::Result<File> {
    let created = options(role).create_new(true).mode(mode).open(path)?;
    match set_exact_mode(&created, mode) {
        Ok(()) => Ok(created),
        Err(e) => {
            let same = |m: std::fs::Metadata| (m.dev(), m.ino());
            if created.metadata().map(same).ok() == std::fs::symlink_metadata(path).map(same).ok() {
                let _ = std::fs::remove_file(path);
            }
            Err(e)
        }
    }
}

/// Opens the file at `path`, creating it with exactly `mode` if there is none; an existing one
/// must pass `check_adopted`.
pub(crate) fn create_or_adopt(
    path: &Path,
    role: FileRole,
    mode: u32,
) -> Result<File, UntrustedFile> {
    match create_new(path, role, mode) {
        Ok(created) => Ok(created),
        // Another process (or someone else) was first: adopted only if it passes the checks.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => adopt(path, role),
        Err(source) => Err(UntrustedFile::Io {
            action: "create",
            role,
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Puts a file holding `contents`, with exactly `mode`, at `path` in one step, unless a file is
/// there already; then that one is adopted (`check_adopted`). The new file is written under a
/// temporary name in the same directory and renamed to `path` without replacing anything, so
/// no process ever finds it at `path` half-written.
pub(crate) fn create_whole_or_adopt(
    path: &Path,
    role: FileRole,
    mode: u32,
    contents: &[u8],
) -> Result<File, UntrustedFile> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => return adopt(path, role),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(UntrustedFile::Io {
                action: "stat",
                role,
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let io_err = |action, source| UntrustedFile::Io {
        action,
        role,
        path: path.to_path_buf(),
        source,
    };
    // The temporary name: in the same directory (a link cannot cross file systems), and one
    // no other process picks (pid and random bytes; `create_new` refuses any file there).
    let mut suffix = [0u8; 8];
    getrandom::getrandom(&mut suffix)
        .map_err(|e| io_err("create", io::Error::other(e.to_string())))?;
    let temp_path = directory_of(path).join(format!(
        ".p11audit-new-{}-{}",
        std::process::id(),
        u64::from_ne_bytes(suffix)
    ));
    let written = create_new(&temp_path, role, mode).and_then(|mut temp| temp.write_all(contents));
    // Moved to `path` only if no file is there.
    let moved = written.and_then(|()| crate::os::rename_no_replace(&temp_path, path));
    if moved.is_err() {
        let _ = std::fs::remove_file(&temp_path);
    }
    match moved {
        Ok(()) => adopt(path, role),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => adopt(path, role),
        Err(e) => Err(io_err("create", e)),
    }
}

/// Gives `file` exactly `mode`, whatever the umask took away when it was created: a service
/// run with `UMask=0077` must still get the `0640` that `P11AUDIT_LOG_MODE` asks for.
pub(crate) fn set_exact_mode(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .or_else(|e| {
            // A filesystem may refuse `fchmod` and still have given the right mode.
            match file.metadata() {
                Ok(m) if m.permissions().mode() & 0o7777 == mode => Ok(()),
                _ => Err(io::Error::new(
                    e.kind(),
                    format!("cannot give it mode {mode:04o}: {e}"),
                )),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn adopted_files_need_the_owner_and_a_closed_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        for (mode, log_ok, state_ok) in [
            (0o600, true, true),
            (0o400, true, true),
            (0o640, true, false),
            (0o660, false, false),
            (0o604, false, false),
            (0o644, false, false),
            (0o666, false, false),
        ] {
            chmod(&path, mode);
            for (role, ok) in [(FileRole::Log, log_ok), (FileRole::State, state_ok)] {
                match adopt(&path, role) {
                    Ok(_) => assert!(ok, "{role:?} {mode:o} was adopted"),
                    Err(UntrustedFile::OpenToOthers { mode: m, .. }) => {
                        assert!(!ok, "{role:?} {mode:o} was refused");
                        assert_eq!(m & 0o7777, mode);
                    }
                    Err(e) => panic!("{role:?} {mode:o}: {e}"),
                }
            }
        }
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        if effective_uid() != 0 {
            eprintln!("SKIPPED: not root, cannot chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        chmod(&path, 0o600);
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let e = adopt(&path, FileRole::State).unwrap_err();
        assert!(
            matches!(
                e,
                UntrustedFile::OwnedByAnother {
                    owner: 65534,
                    euid: 0,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn special_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = adopt(&fifo, FileRole::Log).unwrap_err();
        assert!(matches!(e, UntrustedFile::NotRegular { .. }), "{e}");
        let link = dir.path().join("link");
        std::fs::write(dir.path().join("target"), b"").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), &link).unwrap();
        let e = adopt(&link, FileRole::Log).unwrap_err();
        assert!(
            matches!(&e, UntrustedFile::Io { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
            "{e}"
        );
    }

    #[test]
    fn directories_others_can_write_to_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, ok) in [
            (0o700, true),
            (0o750, true),
            (0o755, true),
            (0o2750, true),
            (0o770, false),
            (0o2770, false),
            (0o1777, false),
            (0o3770, false),
            (0o702, false),
        ] {
            chmod(dir.path(), mode);
            let got = check_directory(dir.path());
            assert_eq!(got.is_ok(), ok, "{mode:o}: {got:?}");
            if let Err(e) = got {
                assert!(
                    matches!(e, UntrustedFile::DirectoryWritableByOthers { mode: m, .. } if m == mode)
                );
            }
        }
        chmod(dir.path(), 0o700);
    }

    #[test]
    fn a_parent_others_can_write_to_is_refused_unless_sticky() {
        let base = tempfile::tempdir().unwrap();
        let parent = base.path().join("parent");
        let dir = parent.join("logs");
        std::fs::create_dir_all(&dir).unwrap();
        chmod(&dir, 0o700);
        for (mode, ok) in [
            (0o755, true),
            (0o1777, true),
            (0o777, false),
            (0o775, false),
        ] {
            chmod(&parent, mode);
            let got = check_directory(&dir);
            assert_eq!(got.is_ok(), ok, "{mode:o}: {got:?}");
            if let Err(e) = got {
                assert!(
                    matches!(&e, UntrustedFile::UnsafeParent { dir: d, mode: m, .. } if *d == parent && *m == mode),
                    "{e}"
                );
            }
        }
        // Reached through a symbolic link that sits in a directory others can write to: the
        // link could be pointed elsewhere.
        chmod(&parent, 0o755);
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        std::os::unix::fs::symlink(&dir, open.join("link")).unwrap();
        let e = check_directory(&open.join("link")).unwrap_err();
        assert!(
            matches!(&e, UntrustedFile::UnsafeParent { dir: d, .. } if *d == open),
            "{e}"
        );
        if effective_uid() == 0 {
            std::os::unix::fs::chown(&parent, Some(65534), Some(65534)).unwrap();
            let e = check_directory(&dir).unwrap_err();
            assert!(
                matches!(&e, UntrustedFile::UnsafeParent { owner: 65534, .. }),
                "{e}"
            );
        }
    }

    #[test]
    fn a_whole_file_appears_at_once_and_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let f = create_whole_or_adopt(&path, FileRole::State, 0o600, b"first").unwrap();
        let m = f.metadata().unwrap();
        assert_eq!((m.mode() & 0o7777, m.len()), (0o600, 5));
        create_whole_or_adopt(&path, FileRole::State, 0o600, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
