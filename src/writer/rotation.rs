//! Rotation: the current file ends with a `rotate` record and the chain goes on in a new file
//! at the log's path, each file step safe to repeat so that a writer that finds a rotation left
//! half-done by a dead one can finish it.

use crate::format::record::{Event, Record};
use crate::format::state::{layout, ChainState};
use crate::writer::audit_log::AuditLog;
use crate::writer::error::WriterError;
use crate::writer::open::{file_name, open_existing_log};
use crate::writer::own_files::{self, FileRole};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Instant;

impl AuditLog {
    /// Ends the current file with a rotate record and goes on in a new file at the log's path;
    /// the old file is renamed `<log>.<UTC time>`. Under the lock, so other writers see the
    /// rotation whole, and follow it on their next append (`follow`).
    pub(super) fn rotate(
        &mut self,
        state: ChainState,
        template: &Record,
    ) -> Result<ChainState, WriterError> {
        let renamed_to = self.rotated_name();
        let base = file_name(&self.settings.log_path);
        let mut name = [0u8; layout::ROTATE_NAME_LEN];
        name[..renamed_to.len()].copy_from_slice(renamed_to.as_bytes());
        self.shared.write(layout::ROTATE_NAME, &name);
        self.shared
            .store_u64(layout::ROTATE_SEQ, state.next_seq + 1);
        // On disk before any file step, so that after a power loss the next writer knows a
        // rotation was under way and finishes it (`resume_rotation`).
        self.sync_state(" before a rotation")?;
        let mut rec = template.bookkeeping(Event::Rotate);
        rec.ts = crate::format::record::rfc3339_micros_now();
        rec.detail.renamed_to = Some(renamed_to);
        rec.detail.next = Some(base);
        self.append_locked(state, None, &[rec.to_body()])?;
        let state = self.current_state()?;
        self.finish_rotation(state)
    }

    /// `<log>.<UTC time to the microsecond>`, a name no file has yet (file name only).
    pub(super) fn rotated_name(&self) -> String {
        let base = file_name(&self.settings.log_path);
        let ts: String = crate::format::record::rfc3339_micros_now()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect();
        let dir = self.dir();
        let mut n = 0u32;
        loop {
            let name = match n {
                0 => format!("{base}.{ts}"),
                _ => format!("{base}.{ts}-{n}"),
            };
            if name.len() > 250 || std::fs::symlink_metadata(dir.join(&name)).is_err() {
                return name;
            }
            n += 1;
        }
    }

    /// The new name of the file being rotated, from the state file's header.
    pub(super) fn rotation_name(&self) -> String {
        let mut name = [0u8; layout::ROTATE_NAME_LEN];
        self.shared.read(layout::ROTATE_NAME, &mut name);
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        String::from_utf8_lossy(&name[..end]).into_owned()
    }

    /// A rotation was left half-done by a writer that died holding the lock. The file the state
    /// names is at the log's path or at its new name; roll forward over what the dead writer
    /// left in it, then finish the rotation if its rotate record is there, or call it off if
    /// not (the file steps all come after that record, so the old file is then still at the
    /// log's path, and the next append rotates again). If the state already names the new,
    /// empty file, the writer died after its last state store: only ROTATE_SEQ is left to clear.
    pub(super) fn resume_rotation(&mut self, state: ChainState) -> Result<ChainState, WriterError> {
        let old_id = (state.log_dev, state.log_ino);
        let rotated = self.dir().join(self.rotation_name());
        // Which of the two names has it: index 0 is the log's path.
        let old = [self.settings.log_path.clone(), rotated]
            .iter()
            .enumerate()
            .find_map(|(i, p)| {
                let (f, id) = open_existing_log(p).ok()?;
                (id == old_id).then_some((i, f))
            });
        let Some((where_found, old_file)) = old else {
            return Err(WriterError::RotationOldFileGone {
                log: self.settings.log_path.clone(),
            });
        };
        let meta = old_file
            .metadata()
            .map_err(|e| WriterError::io("stat audit log", &self.settings.log_path, e))?;
        let mut state = state;
        loop {
            let before = state.log_size;
            let more;
            (state, more) = self.recover(&old_file, state, &meta)?;
            if state.log_size != before {
                self.store_state(state.clone());
            }
            if !more {
                break;
            }
        }
        let at_path = where_found == 0;
        let rotate_seq = self.shared.load_u64(layout::ROTATE_SEQ);
        if state.next_seq < rotate_seq && at_path {
            self.shared.store_u64(layout::ROTATE_SEQ, 0);
            return Ok(state);
        }
        if at_path && state.log_size == 0 {
            // The state names a new, empty file at the log's path, past the rotate record (the
            // old file holds at least that record): the writer that rotated died after storing
            // the state that finished the rotation, before it cleared ROTATE_SEQ. That is all
            // that is left to do (linking "the old file" again would find its new name taken).
            self.shared.store_u64(layout::ROTATE_SEQ, 0);
            self.sync_state(" after a rotation")?;
            return Ok(state);
        }
        // The rotate record is there; or it is not (lost with the page cache in a power loss)
        // but the old file already left the log's path: finish the file steps either way.
        self.finish_rotation(state)
    }

    pub(super) fn dir(&self) -> PathBuf {
        own_files::directory_of(&self.settings.log_path)
    }

    /// The file steps of a rotation, each safe to repeat, so that a writer that finds a
    /// rotation left half-done by a dead one can finish it:
    /// 1. the old file gets its new name as a second link (never replacing a file);
    /// 2. a new empty file is renamed over the log's path;
    /// 3. the state moves to the new file (same seq, prev and key: one chain).
    ///
    /// The caller has checked that the rotate record is the old file's last record.
    pub(super) fn finish_rotation(&mut self, state: ChainState) -> Result<ChainState, WriterError> {
        let rotated = self.dir().join(self.rotation_name());
        let log_path = self.settings.log_path.clone();
        let failed = |step: &'static str, source: io::Error| WriterError::Rotation {
            log: log_path.clone(),
            step,
            source,
        };
        let old_id = (state.log_dev, state.log_ino);
        let at_path = open_existing_log(&log_path).ok().map(|(_, id)| id);
        let at_new_name = open_existing_log(&rotated).ok().map(|(_, id)| id);
        if at_path != Some(old_id) && at_new_name != Some(old_id) {
            return Err(WriterError::RotationLost {
                log: log_path.clone(),
                rotated,
            });
        }
        if at_path == Some(old_id) {
            match std::fs::hard_link(&log_path, &rotated) {
                Ok(()) => {}
                // The old file under its new name already (a repeated step) is fine.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if at_new_name != Some(old_id) {
                        return Err(failed("its new name is taken", e));
                    }
                }
                Err(e) => return Err(failed("link", e)),
            }
        }
        let mut next_tmp = log_path.as_os_str().to_owned();
        next_tmp.push(".next");
        let next_tmp = PathBuf::from(next_tmp);
        let _ = std::fs::remove_file(&next_tmp);
        let new_log = own_files::create_new(&next_tmp, FileRole::Log, self.settings.log_mode)
            .map_err(|e| failed("create the next file", e))?;
        std::fs::rename(&next_tmp, &log_path).map_err(|e| failed("rename", e))?;
        let meta = new_log.metadata().map_err(|e| failed("stat", e))?;
        let mut state = state;
        state.log_dev = meta.dev();
        state.log_ino = meta.ino();
        state.log_size = 0;
        self.store_state(state.clone());
        self.shared.store_u64(layout::ROTATE_SEQ, 0);
        // The state naming the new file on disk, with the rename: after a power loss the next
        // writer must not find a state that names a file no longer at the log's path.
        if let Ok(d) = File::open(self.dir()) {
            let _ = d.sync_all();
        }
        self.sync_state(" after a rotation")?;
        self.log = new_log;
        self.log_id = (meta.dev(), meta.ino());
        self.reserved_to = 0;
        self.log_checked = Some(Instant::now());
        Ok(state)
    }
}
