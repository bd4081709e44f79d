//! The environment, turned into a validated `Config` with errors that name the variable and the
//! fix. Read at `C_Initialize`.

use crate::audit::auditor::FailurePolicy;
use crate::audit::writer::LogSettings;
use std::ffi::OsString;
use std::path::PathBuf;

/// Everything p11audit is told by its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The real PKCS#11 module (`P11AUDIT_MODULE`).
    pub module: PathBuf,
    pub log: LogSettings,
    pub on_failure: FailurePolicy,
}

/// A configuration error, worded for one `p11audit:` line on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn required(
    get: &dyn Fn(&str) -> Option<OsString>,
    var: &str,
    fix: &str,
) -> Result<PathBuf, ConfigError> {
    match get(var) {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err(ConfigError(format!("{var} is not set: {fix}"))),
    }
}

fn choice<T: Copy>(
    get: &dyn Fn(&str) -> Option<OsString>,
    var: &str,
    default: T,
    options: &[(&str, T)],
) -> Result<T, ConfigError> {
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    let text = raw.to_string_lossy();
    if text.is_empty() {
        return Ok(default);
    }
    options
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            ConfigError(format!(
                "{var}={text:?} is not valid: use one of {}",
                names.join(", ")
            ))
        })
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(&|name| std::env::var_os(name))
    }

    /// Just `P11AUDIT_MODULE`, for interface negotiation before `C_Initialize`.
    pub fn module_from_env() -> Result<PathBuf, ConfigError> {
        required(
            &|name| std::env::var_os(name),
            "P11AUDIT_MODULE",
            "set it to the real PKCS#11 module",
        )
    }

    /// Reads configuration through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<OsString>) -> Result<Config, ConfigError> {
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
        Ok(Config {
            module,
            log: LogSettings {
                log_path,
                key_file,
                log_mode,
                sync_always,
            },
            on_failure,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
        assert_eq!(c.log.log_mode, 0o600);
        assert_eq!(c.log.key_file, None);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = cfg(&[("P11AUDIT_LOG", "/l")]).unwrap_err();
        assert!(e.0.starts_with("P11AUDIT_MODULE is not set"), "{e}");
        let e = cfg(&[("P11AUDIT_MODULE", "/m")]).unwrap_err();
        assert!(e.0.starts_with("P11AUDIT_LOG is not set"), "{e}");
        let e = cfg(&[
            ("P11AUDIT_MODULE", "/m"),
            ("P11AUDIT_LOG", "/l"),
            ("P11AUDIT_SYNC", "sometimes"),
        ])
        .unwrap_err();
        assert!(
            e.0.contains("P11AUDIT_SYNC") && e.0.contains("always"),
            "{e}"
        );
        let c = cfg(&[
            ("P11AUDIT_MODULE", "/m"),
            ("P11AUDIT_LOG", "/l"),
            ("P11AUDIT_ON_FAILURE", "open"),
        ])
        .unwrap();
        assert_eq!(c.on_failure, FailurePolicy::Open);
    }
}
