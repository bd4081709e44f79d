//! What the unit tests of the audit trail share: a writer's identity and a fresh log.

use crate::format::record::ProcessIdentity;
use crate::writer::audit_log::LogSettings;
use std::path::Path;

pub fn who() -> ProcessIdentity {
    ProcessIdentity {
        host: "h".into(),
        pid: 1,
        uid: 0,
        exe: "/x".into(),
        auid: None,
        ses: None,
        peer: None,
    }
}

/// Settings for a log `dir/log` whose chain starts from `key` (written to `dir/key`, mode 0400
/// as the writer requires).
pub fn log_settings(dir: &Path, key: [u8; 32]) -> LogSettings {
    use std::os::unix::fs::PermissionsExt;
    let key_file = dir.join("key");
    std::fs::write(&key_file, crate::format::chain::hex_lower(&key)).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o400)).unwrap();
    LogSettings {
        log_path: dir.join("log"),
        key_file: Some(key_file),
        log_mode: 0o600,
        sync_always: false,
        rotate_bytes: None,
        checkpoint: None,
    }
}
