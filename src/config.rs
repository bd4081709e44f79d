//! The environment, turned into a validated `Config` with errors that name the variable and the
//! fix. Read at `C_Initialize`.

use crate::writer::audit_log::LogSettings;
use crate::writer::auditor::FailurePolicy;
use crate::writer::checkpoints::{CheckpointEvery, CheckpointSettings, DEFAULT_EVERY};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Everything p11audit is told by its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    /// The real PKCS#11 module (`P11AUDIT_MODULE`).
    pub(crate) module: PathBuf,
    pub(crate) log: LogSettings,
    pub(crate) on_failure: FailurePolicy,
    /// Whether records name a client connected on stdin (`P11AUDIT_PEER`).
    pub(crate) peer: PeerMode,
}

/// Where the client a process serves comes from (`P11AUDIT_PEER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerMode {
    /// The peer of stdin when stdin is a connected Unix stream socket (how `p11-kit server`
    /// and systemd's `Accept=yes` start `p11-kit remote`); no peer for a pipe, file or terminal.
    Auto,
    /// The peer of stdin, which must be such a socket: C_Initialize fails otherwise, so that a
    /// service configured to name its clients never writes records without them.
    Stdin,
    /// No peer.
    Off,
}

/// Why the configuration was refused. Each is worded for one `p11audit:` line on stderr: it
/// names the setting or file involved and says what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// A required setting is missing or empty.
    #[error("{name} is not set: {fix}")]
    NotSet {
        name: &'static str,
        fix: &'static str,
    },
    /// A setting has a value that is not one p11audit accepts.
    #[error("{name}={value:?} is not valid: {fix}")]
    Invalid {
        name: &'static str,
        value: String,
        fix: String,
    },
    /// A line of a configuration file that is not `NAME=value`.
    #[error("{}:{line}: expected NAME=value", .path.display())]
    NotNameValue { path: PathBuf, line: usize },
    /// A configuration file sets something that is not a setting.
    #[error("{}:{line}: unknown setting {name:?}: use one of {}", .path.display(), SETTINGS.join(", "))]
    UnknownSetting {
        path: PathBuf,
        line: usize,
        name: String,
    },
    /// A configuration file sets `name` on line `line` and already did on line `first`: which
    /// one wins would be a guess for whoever reads the file.
    #[error("{}:{line}: {name} is set again (first on line {first}): set it once", .path.display())]
    SetTwice {
        path: PathBuf,
        line: usize,
        name: &'static str,
        first: usize,
    },
    #[error("cannot read configuration file {}: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configuration file of a setuid or setgid program could be changed by someone other
    /// than root.
    #[error("configuration file {} must be a regular file owned by root and not writable by group or others", .path.display())]
    NotRootOwned { path: PathBuf },
    /// A setuid or setgid program without its configuration file.
    #[error("this is a setuid or setgid program, so P11AUDIT_* environment variables are ignored: put the settings in {} (owned by root, not writable by group or others)", .path.display())]
    SecureFileMissing { path: PathBuf },
    /// A required setting is in neither the environment nor the configuration file that was
    /// read: a user who looks only at the environment would not know the file was read.
    #[error("{error} (nor is it set in {})", .path.display())]
    NotSetInFile {
        error: Box<ConfigError>,
        path: PathBuf,
    },
    /// `error` is about the setting `name`, which was taken from line `line` of the
    /// configuration file `path`: a user who looks only at the environment would not find the
    /// bad value there.
    #[error("{error} ({name} is set in {}:{line})", .path.display())]
    SetInFile {
        error: Box<ConfigError>,
        name: &'static str,
        path: PathBuf,
        line: usize,
    },
}

impl ConfigError {
    /// The setting this error is about, if it is about the value of one.
    fn setting(&self) -> Option<&'static str> {
        match self {
            ConfigError::NotSet { name, .. }
            | ConfigError::Invalid { name, .. }
            | ConfigError::SetInFile { name, .. } => Some(name),
            _ => None,
        }
    }
}

fn required(
    get: &dyn Fn(&str) -> Option<OsString>,
    name: &'static str,
    fix: &'static str,
) -> Result<PathBuf, ConfigError> {
    match get(name) {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err(ConfigError::NotSet { name, fix }),
    }
}

fn choice<T: Copy>(
    get: &dyn Fn(&str) -> Option<OsString>,
    name: &'static str,
    default: T,
    options: &[(&str, T)],
) -> Result<T, ConfigError> {
    let Some(raw) = get(name) else {
        return Ok(default);
    };
    let text = raw.to_string_lossy();
    if text.is_empty() {
        return Ok(default);
    }
    options
        .iter()
        .find(|(option, _)| *option == text)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            ConfigError::Invalid {
                name,
                value: text.into_owned(),
                fix: format!("use one of {}", names.join(", ")),
            }
        })
}

/// Every setting's name (the same in the environment and in a configuration file).
const SETTINGS: &[&str] = &[
    "P11AUDIT_MODULE",
    "P11AUDIT_LOG",
    "P11AUDIT_KEY_FILE",
    "P11AUDIT_ON_FAILURE",
    "P11AUDIT_SYNC",
    "P11AUDIT_LOG_MODE",
    "P11AUDIT_ROTATE_BYTES",
    "P11AUDIT_PEER",
    "P11AUDIT_CHECKPOINT_KEY",
    "P11AUDIT_CHECKPOINT_EVERY",
];

/// P11AUDIT_CHECKPOINT_KEY and P11AUDIT_CHECKPOINT_EVERY: `N` records or `Ns` seconds, N >= 1.
fn checkpoint(
    get: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Option<CheckpointSettings>, ConfigError> {
    let every_name = "P11AUDIT_CHECKPOINT_EVERY";
    let every = get(every_name).filter(|v| !v.is_empty());
    let Some(key_file) = get("P11AUDIT_CHECKPOINT_KEY").filter(|v| !v.is_empty()) else {
        return match every {
            None => Ok(None),
            Some(_) => Err(ConfigError::NotSet {
                name: "P11AUDIT_CHECKPOINT_KEY",
                fix: "P11AUDIT_CHECKPOINT_EVERY is set: set P11AUDIT_CHECKPOINT_KEY to a key made by `p11audit keygen --checkpoint ORIGIN PATH`, or unset both",
            }),
        };
    };
    let every = match every {
        None => DEFAULT_EVERY,
        Some(raw) => {
            let text = raw.to_string_lossy();
            let (digits, seconds) = match text.trim().strip_suffix('s') {
                Some(d) => (d, true),
                None => (text.trim(), false),
            };
            let n = digits
                .parse::<u64>()
                .ok()
                .filter(|&n| n >= 1 && digits.bytes().all(|b| b.is_ascii_digit()));
            match (n, seconds) {
                (Some(n), false) => CheckpointEvery::Records(n),
                (Some(n), true) => CheckpointEvery::Seconds(n),
                (None, _) => {
                    return Err(ConfigError::Invalid {
                        name: every_name,
                        value: text.into_owned(),
                        fix: format!(
                            "use a number of records or of seconds (with an s), e.g. {every_name}=1000 or {every_name}=60s"
                        ),
                    })
                }
            }
        }
    };
    Ok(Some(CheckpointSettings {
        key_file: PathBuf::from(key_file),
        every,
    }))
}

/// Smallest P11AUDIT_ROTATE_BYTES: a file must hold more than a few records.
const MIN_ROTATE_BYTES: u64 = 64 << 10;

/// P11AUDIT_ROTATE_BYTES: a size in bytes, optionally with a K, M or G suffix (powers of 1024).
fn rotate_bytes(get: &dyn Fn(&str) -> Option<OsString>) -> Result<Option<u64>, ConfigError> {
    let name = "P11AUDIT_ROTATE_BYTES";
    let Some(raw) = get(name).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let text = raw.to_string_lossy();
    let (digits, unit) = match text.trim().char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text.trim()[..i], c.to_ascii_uppercase()),
        _ => (text.trim(), 'B'),
    };
    // Digits only, then at most one of K, M, G (CONFIG.md): `u64::parse` alone would also
    // take a leading `+`, and a `B` suffix is not in the documented form.
    let digits_only = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    let shift = match unit {
        _ if !digits_only => 64,
        'B' if digits.len() == text.trim().len() => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => 64,
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .filter(|_| shift < 64)
        .and_then(|n| n.checked_mul(1 << shift));
    match bytes {
        Some(n) if n >= MIN_ROTATE_BYTES => Ok(Some(n)),
        _ => Err(ConfigError::Invalid {
            name,
            value: text.into_owned(),
            fix: format!(
                "use a size of at least {} KiB, e.g. {name}=100M",
                MIN_ROTATE_BYTES >> 10
            ),
        }),
    }
}

/// The system's configuration file: the only settings a setuid or setgid program reads, and
/// those of any other process whose environment sets no P11AUDIT_* variable (an application
/// that loads the module from a p11-kit module file or a path in its own configuration, with
/// no way to set its environment). The Debian package installs it, with every line commented.
pub const SECURE_CONFIG_FILE: &str = "/etc/p11audit.conf";

/// Where settings come from.
pub(crate) struct Sources {
    /// The process is setuid/setgid (`AT_SECURE`): its environment is chosen by a less
    /// privileged user, so no P11AUDIT_* variable may pick the provider, the log or the key.
    pub(crate) secure: bool,
    /// `SECURE_CONFIG_FILE`, or another path in tests.
    pub(crate) secure_file: PathBuf,
}

/// Whether the environment sets any setting or names a configuration file: if it does, the
/// process is configured by its environment alone, never mixed with the system's file unless
/// `P11AUDIT_CONFIG` names it.
fn environment_configures(env: &dyn Fn(&str) -> Option<OsString>) -> bool {
    SETTINGS
        .iter()
        .chain(&["P11AUDIT_CONFIG"])
        .any(|name| env(name).is_some_and(|v| !v.is_empty()))
}

/// Parses `NAME=value` lines (blank lines and `#` comments allowed) into settings, with the
/// line each is on. A setting given twice is an error: which line wins would be a guess for
/// whoever reads the file.
fn parse_config_lines(
    text: &str,
    path: &Path,
) -> Result<HashMap<&'static str, (OsString, usize)>, ConfigError> {
    let mut out: HashMap<&'static str, (OsString, usize)> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .ok_or_else(|| ConfigError::NotNameValue {
                path: path.to_path_buf(),
                line: line_no,
            })?;
        let name = name.trim();
        let Some(&name) = SETTINGS.iter().find(|&&setting| setting == name) else {
            return Err(ConfigError::UnknownSetting {
                path: path.to_path_buf(),
                line: line_no,
                name: name.to_string(),
            });
        };
        if let Some(&(_, first)) = out.get(name) {
            return Err(ConfigError::SetTwice {
                path: path.to_path_buf(),
                line: line_no,
                name,
                first,
            });
        }
        out.insert(name, (OsString::from(value.trim()), line_no));
    }
    Ok(out)
}

/// Reads a configuration file. `must_be_root_owned`: refuse it unless root owns it and
/// neither group nor others may write it (for setuid programs).
fn read_config_file(path: &Path, must_be_root_owned: bool) -> Result<ConfigFile, ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let unreadable = |source| ConfigError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if must_be_root_owned && (meta.uid() != 0 || meta.mode() & 0o022 != 0 || !meta.is_file()) {
        return Err(ConfigError::NotRootOwned {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    Ok(ConfigFile {
        path: path.to_path_buf(),
        settings: parse_config_lines(&text, path)?,
    })
}

/// A configuration file's settings, with the line each is on.
struct ConfigFile {
    path: PathBuf,
    settings: HashMap<&'static str, (OsString, usize)>,
}

/// Where the settings come from: the environment over a configuration file, or (setuid) the
/// file alone.
struct Settings {
    use_environment: bool,
    file: Option<ConfigFile>,
}

impl Settings {
    fn get(&self, name: &str) -> Option<OsString> {
        self.in_environment(name)
            .or_else(|| self.in_file(name).map(|(v, _)| v.clone()))
    }

    fn in_environment(&self, name: &str) -> Option<OsString> {
        self.use_environment
            .then(|| std::env::var_os(name))
            .flatten()
            .filter(|v| !v.is_empty())
    }

    fn in_file(&self, name: &str) -> Option<&(OsString, usize)> {
        self.file.as_ref()?.settings.get(name)
    }

    /// `error` with where the setting it is about was taken from, when that is a file: a user
    /// who looks only at the environment would not find a bad value there.
    fn locate(&self, error: ConfigError) -> ConfigError {
        let (Some(file), Some(name)) = (&self.file, error.setting()) else {
            return error;
        };
        if self.in_environment(name).is_some() {
            return error;
        }
        match self.in_file(name) {
            Some(&(_, line)) => ConfigError::SetInFile {
                error: Box::new(error),
                name,
                path: file.path.clone(),
                line,
            },
            None if matches!(error, ConfigError::NotSet { .. }) => ConfigError::NotSetInFile {
                error: Box::new(error),
                path: file.path.clone(),
            },
            None => error,
        }
    }
}

impl Config {
    /// Reads the configuration: in a setuid/setgid process only `/etc/p11audit.conf`; else
    /// the environment, on top of the file named by `P11AUDIT_CONFIG` if that is set; else,
    /// when the environment sets no P11AUDIT_* variable at all, `/etc/p11audit.conf` if it
    /// exists.
    pub(crate) fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let settings = Config::settings(sources)?;
        Config::from_lookup(&|name| settings.get(name)).map_err(|e| settings.locate(e))
    }

    /// Just `P11AUDIT_MODULE`, for interface negotiation before `C_Initialize`.
    pub(crate) fn module(sources: &Sources) -> Result<PathBuf, ConfigError> {
        let settings = Config::settings(sources)?;
        required(
            &|name| settings.get(name),
            "P11AUDIT_MODULE",
            "set it to the real PKCS#11 module",
        )
        .map_err(|e| settings.locate(e))
    }

    /// The settings `sources` allow.
    fn settings(sources: &Sources) -> Result<Settings, ConfigError> {
        if sources.secure {
            if !sources.secure_file.exists() {
                return Err(ConfigError::SecureFileMissing {
                    path: sources.secure_file.clone(),
                });
            }
            return Ok(Settings {
                use_environment: false,
                file: Some(read_config_file(&sources.secure_file, true)?),
            });
        }
        let file = match std::env::var_os("P11AUDIT_CONFIG").filter(|v| !v.is_empty()) {
            Some(path) => Some(read_config_file(Path::new(&path), false)?),
            // The system's file decides what every process loading the module does, so it is
            // held to the setuid rule: root's, and writable by no one else.
            None if !environment_configures(&|n| std::env::var_os(n))
                && sources.secure_file.exists() =>
            {
                Some(read_config_file(&sources.secure_file, true)?)
            }
            None => None,
        };
        Ok(Settings {
            use_environment: true,
            file,
        })
    }

    /// Reads configuration through `get` (the environment, or a map in tests).
    fn from_lookup(get: &dyn Fn(&str) -> Option<OsString>) -> Result<Config, ConfigError> {
        let module = required(
            get,
            "P11AUDIT_MODULE",
            "set it to the real PKCS#11 module, e.g. P11AUDIT_MODULE=/usr/lib/softhsm/libsofthsm2.so",
        )?;
        let log_path = required(
            get,
            "P11AUDIT_LOG",
            "set it to the audit log file, e.g. P11AUDIT_LOG=/var/log/p11audit/audit.jsonl",
        )?;
        let key_file = get("P11AUDIT_KEY_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let on_failure = choice(
            get,
            "P11AUDIT_ON_FAILURE",
            FailurePolicy::Closed,
            &[
                ("closed", FailurePolicy::Closed),
                ("open", FailurePolicy::Open),
            ],
        )?;
        let sync_always = choice(
            get,
            "P11AUDIT_SYNC",
            false,
            &[("none", false), ("always", true)],
        )?;
        let log_mode = choice(
            get,
            "P11AUDIT_LOG_MODE",
            0o600,
            &[("0600", 0o600), ("0640", 0o640)],
        )?;
        let rotate_bytes = rotate_bytes(get)?;
        let peer = choice(
            get,
            "P11AUDIT_PEER",
            PeerMode::Auto,
            &[
                ("auto", PeerMode::Auto),
                ("stdin", PeerMode::Stdin),
                ("off", PeerMode::Off),
            ],
        )?;
        let checkpoint = checkpoint(get)?;
        Ok(Config {
            module,
            log: LogSettings {
                log_path,
                key_file,
                log_mode,
                sync_always,
                rotate_bytes,
                checkpoint,
            },
            on_failure,
            peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Config::from_lookup(&move |k| map.get(k).cloned())
    }

    #[test]
    fn minimal_config_has_documented_defaults() {
        let c = cfg(&[("P11AUDIT_MODULE", "/m.so"), ("P11AUDIT_LOG", "/l")]).unwrap();
        assert_eq!(c.on_failure, FailurePolicy::Closed);
        assert!(!c.log.sync_always);
        assert_eq!(c.log.rotate_bytes, None);
        assert_eq!(c.log.log_mode, 0o600);
        assert_eq!(c.log.key_file, None);
        assert_eq!(c.log.checkpoint, None);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = cfg(&[("P11AUDIT_LOG", "/l")]).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::NotSet {
                    name: "P11AUDIT_MODULE",
                    ..
                }
            ),
            "{e:?}"
        );
        for log in [None, Some("")] {
            let mut vars = vec![("P11AUDIT_MODULE", "/m")];
            vars.extend(log.map(|l| ("P11AUDIT_LOG", l)));
            let e = cfg(&vars).unwrap_err();
            assert!(
                matches!(
                    e,
                    ConfigError::NotSet {
                        name: "P11AUDIT_LOG",
                        ..
                    }
                ),
                "{log:?}: {e:?}"
            );
        }
        let e = cfg(&[
            ("P11AUDIT_MODULE", "/m"),
            ("P11AUDIT_LOG", "/l"),
            ("P11AUDIT_SYNC", "sometimes"),
        ])
        .unwrap_err();
        match e {
            ConfigError::Invalid { name, value, fix } => {
                assert_eq!((name, value.as_str()), ("P11AUDIT_SYNC", "sometimes"));
                assert_eq!(fix, "use one of none, always");
            }
            other => panic!("{other:?}"),
        }
        let c = cfg(&[
            ("P11AUDIT_MODULE", "/m"),
            ("P11AUDIT_LOG", "/l"),
            ("P11AUDIT_ON_FAILURE", "open"),
        ])
        .unwrap();
        assert_eq!(c.on_failure, FailurePolicy::Open);
    }

    #[test]
    fn rotate_bytes_sizes() {
        let with = |v: &str| {
            cfg(&[
                ("P11AUDIT_MODULE", "/m"),
                ("P11AUDIT_LOG", "/l"),
                ("P11AUDIT_ROTATE_BYTES", v),
            ])
        };
        assert_eq!(with("100M").unwrap().log.rotate_bytes, Some(100 << 20));
        assert_eq!(with("64k").unwrap().log.rotate_bytes, Some(64 << 10));
        assert_eq!(with("1G").unwrap().log.rotate_bytes, Some(1 << 30));
        assert_eq!(with("70000").unwrap().log.rotate_bytes, Some(70000));
        for bad in [
            "1000",
            "10X",
            "M",
            "-5M",
            "99999999999G",
            "65536B",
            "+64K",
            "+70000",
            "6 4K",
        ] {
            let e = with(bad).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid { name: "P11AUDIT_ROTATE_BYTES", value, .. } if value == bad),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn checkpoint_settings() {
        let with = |vars: &[(&'static str, &'static str)]| {
            let mut all = vec![("P11AUDIT_MODULE", "/m"), ("P11AUDIT_LOG", "/l")];
            all.extend_from_slice(vars);
            cfg(&all)
        };
        let key = ("P11AUDIT_CHECKPOINT_KEY", "/k");
        let c = with(&[key]).unwrap().log.checkpoint.unwrap();
        assert_eq!(c.key_file, PathBuf::from("/k"));
        assert_eq!(c.every, DEFAULT_EVERY);
        let every = |v| with(&[key, ("P11AUDIT_CHECKPOINT_EVERY", v)]);
        assert_eq!(
            every("250").unwrap().log.checkpoint.unwrap().every,
            CheckpointEvery::Records(250)
        );
        assert_eq!(
            every("60s").unwrap().log.checkpoint.unwrap().every,
            CheckpointEvery::Seconds(60)
        );
        for bad in [
            "0",
            "0s",
            "s",
            "-5",
            "+5",
            "5m",
            "1 0",
            "99999999999999999999",
        ] {
            let e = every(bad).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid { name: "P11AUDIT_CHECKPOINT_EVERY", value, .. } if value == bad),
                "{bad}: {e:?}"
            );
        }
        let e = with(&[("P11AUDIT_CHECKPOINT_EVERY", "10")]).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::NotSet {
                name: "P11AUDIT_CHECKPOINT_KEY",
                ..
            }
        ));
    }

    /// A bad value from a configuration file names the file and line it is on; a setting
    /// given twice in the file is refused, naming both lines.
    #[test]
    fn config_file_values_are_located_in_errors() {
        let path = Path::new("/etc/p11audit.conf");
        let text = "P11AUDIT_MODULE=/m.so\nP11AUDIT_LOG=/l\n\nP11AUDIT_LOG_MODE=0777x\n";
        let settings = Settings {
            use_environment: false,
            file: Some(ConfigFile {
                path: path.to_path_buf(),
                settings: parse_config_lines(text, path).unwrap(),
            }),
        };
        let e = Config::from_lookup(&|n| settings.get(n))
            .map_err(|e| settings.locate(e))
            .unwrap_err();
        match &e {
            ConfigError::SetInFile {
                error,
                name: "P11AUDIT_LOG_MODE",
                path: at,
                line: 4,
            } if at == path => assert!(
                matches!(
                    **error,
                    ConfigError::Invalid {
                        name: "P11AUDIT_LOG_MODE",
                        ..
                    }
                ),
                "{e:?}"
            ),
            other => panic!("{other:?}"),
        }
        let e = parse_config_lines("P11AUDIT_LOG=/a\n# x\nP11AUDIT_LOG=/b\n", path).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::SetTwice {
                    name: "P11AUDIT_LOG",
                    line: 3,
                    first: 1,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    /// The `p11audit:` line a located error makes: users and docs rely on its wording.
    #[test]
    fn located_error_wording() {
        let e = ConfigError::SetInFile {
            error: Box::new(ConfigError::Invalid {
                name: "P11AUDIT_ON_FAILURE",
                value: "opne".into(),
                fix: "use one of closed, open".into(),
            }),
            name: "P11AUDIT_ON_FAILURE",
            path: "/etc/p11audit.conf".into(),
            line: 4,
        };
        assert_eq!(
            e.to_string(),
            "P11AUDIT_ON_FAILURE=\"opne\" is not valid: use one of closed, open \
             (P11AUDIT_ON_FAILURE is set in /etc/p11audit.conf:4)"
        );
    }

    #[test]
    fn config_file_lines_and_errors() {
        let p = Path::new("/etc/p11audit.conf");
        let m = parse_config_lines("# comment\n\nP11AUDIT_MODULE = /m.so\nP11AUDIT_LOG=/l\n", p)
            .unwrap();
        assert_eq!(m["P11AUDIT_MODULE"], (OsString::from("/m.so"), 3));
        assert_eq!(m["P11AUDIT_LOG"], (OsString::from("/l"), 4));
        let e = parse_config_lines("P11AUDIT_MODUL=/m.so\n", p).unwrap_err();
        assert!(
            matches!(&e, ConfigError::UnknownSetting { line: 1, name, .. } if name == "P11AUDIT_MODUL"),
            "{e:?}"
        );
        let e = parse_config_lines("just words\n", p).unwrap_err();
        assert!(
            matches!(e, ConfigError::NotNameValue { line: 1, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn secure_processes_ignore_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Sources {
            secure: true,
            secure_file: dir.path().join("absent.conf"),
        };
        // Whatever the environment says, a setuid process without the file is refused.
        let e = Config::load(&missing).unwrap_err();
        assert!(
            matches!(&e, ConfigError::SecureFileMissing { path } if *path == missing.secure_file),
            "{e:?}"
        );
        let file = dir.path().join("p11audit.conf");
        std::fs::write(&file, "P11AUDIT_MODULE=/m.so\nP11AUDIT_LOG=/var/log/a\n").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let sources = Sources {
            secure: true,
            secure_file: file.clone(),
        };
        let owner_is_root = owned_by_root(&file);
        match Config::load(&sources) {
            Ok(c) => {
                assert!(owner_is_root);
                assert_eq!(c.module, PathBuf::from("/m.so"));
            }
            Err(e) => assert!(
                !owner_is_root && matches!(e, ConfigError::NotRootOwned { .. }),
                "{e:?}"
            ),
        }
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
        let e = Config::load(&sources).unwrap_err();
        assert!(
            matches!(&e, ConfigError::NotRootOwned { path } if *path == file),
            "{e:?}"
        );
    }

    /// The system's file applies only when no setting and no P11AUDIT_CONFIG is in the
    /// environment; an empty value counts as unset, and other P11AUDIT_ names are not settings.
    #[test]
    fn system_file_only_without_settings_in_the_environment() {
        let env = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, OsString)> = vars
                .iter()
                .map(|(n, v)| (n.to_string(), OsString::from(v)))
                .collect();
            move |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        };
        assert!(!environment_configures(&env(&[])));
        assert!(!environment_configures(&env(&[("P11AUDIT_LOG", "")])));
        assert!(!environment_configures(&env(&[(
            "P11AUDIT_TEST_KRYOPTIC",
            "/k.so"
        )])));
        assert!(environment_configures(&env(&[("P11AUDIT_CONFIG", "/c")])));
        for name in SETTINGS {
            assert!(environment_configures(&env(&[(name, "x")])), "{name}");
        }
    }

    /// A required setting missing from the file that was read names the file, so that a
    /// user who sets nothing learns where p11audit looked.
    #[test]
    fn missing_setting_names_the_file_read() {
        let path = Path::new("/etc/p11audit.conf");
        let settings = Settings {
            use_environment: false,
            file: Some(ConfigFile {
                path: path.to_path_buf(),
                settings: parse_config_lines("# P11AUDIT_MODULE=\n", path).unwrap(),
            }),
        };
        let e = Config::from_lookup(&|n| settings.get(n))
            .map_err(|e| settings.locate(e))
            .unwrap_err();
        assert!(
            matches!(&e, ConfigError::NotSetInFile { error, path: at }
                if at == path && matches!(**error, ConfigError::NotSet { name: "P11AUDIT_MODULE", .. })),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("P11AUDIT_MODULE is not set: ")
                && e.to_string()
                    .ends_with(" (nor is it set in /etc/p11audit.conf)"),
            "{e}"
        );
    }

    fn owned_by_root(file: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(file).unwrap().uid() == 0
    }
}
