//! `p11audit`: create chain keys and verify p11audit audit logs.

use clap::{Parser, Subcommand};
use p11audit::audit::chain::{hex_lower, ChainKey};
use p11audit::audit::state::{self, ChainState, StateError};
use p11audit::audit::verify::{verify_files, VerifyOptions, VerifyReport};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zeroize::Zeroizing;

const EXIT_HELP: &str = "\
Exit status:
  0  the chain is intact (verify), or the key was written (keygen)
  1  verify found a problem: the first one is reported with its file, line and seq
  2  usage error, unreadable file, bad key or state file; nothing was verified

A key file holds K_0 as 64 hexadecimal characters. Keep a copy away from the audited host:
whoever holds it can verify (and forge) the whole chain. The state file beside a log
(LOG.state) lets verify notice records cut off the end of the log.";

const VERIFY_HELP: &str = "\
Checks every line's mac, that seq counts up by one from 0 across the files (a chain may
continue across rotated files) with no record missing, repeated or out of order, that every
prev links to the record before, and, with a state file, that nothing was cut off the end.
Stops at the first problem; the summary covers the records before it.

Exit status:
  0  the chain is intact
  1  a problem was found: the first one is reported with its file, line and seq
  2  usage error, unreadable file, bad key or state file; nothing was verified";

#[derive(Parser)]
#[command(
    name = "p11audit",
    version,
    about = "Create chain keys for, and verify, the HMAC-chained audit logs of the p11audit \
             PKCS#11 module",
    after_help = EXIT_HELP,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new random chain key (K_0) to PATH (mode 0400; never overwrites)
    #[command(after_help = EXIT_HELP)]
    Keygen {
        /// Where to create the key file
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Verify the chain of one or more log files, oldest first, and summarize them
    #[command(after_help = VERIFY_HELP)]
    Verify {
        /// Key file holding K_0 (64 hex characters)
        #[arg(long, value_name = "KEY")]
        key_file: PathBuf,
        /// State file to check the end of the chain against [default: LAST-FILE.state, if it exists]
        #[arg(long, value_name = "STATE", conflicts_with = "no_state")]
        state: Option<PathBuf>,
        /// Do not check the end of the chain against a state file
        #[arg(long)]
        no_state: bool,
        /// Print the report as one JSON object
        #[arg(long)]
        json: bool,
        /// Log files, oldest first; or a directory holding one chain's files (rotated files
        /// and the current log), put in order by the seq each file starts at
        #[arg(value_name = "FILE|DIR", required = true)]
        files: Vec<PathBuf>,
    },
}

/// A failure that ends the command with exit status 2.
struct Fatal(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { path } => keygen(&path).map(|()| ExitCode::SUCCESS),
        Command::Verify {
            key_file,
            state,
            no_state,
            json,
            files,
        } => verify(&key_file, state, no_state, json, &files),
    };
    match result {
        Ok(code) => code,
        Err(Fatal(msg)) => {
            eprintln!("p11audit: {}", escape(&msg));
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// keygen

fn keygen(path: &Path) -> Result<(), Fatal> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut bytes[..])
        .map_err(|e| Fatal(format!("cannot get random bytes: {e}")))?;
    let mut text = Zeroizing::new(hex_lower(&bytes[..]));
    text.push('\n');

    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Fatal(format!(
                    "{}: already exists; refusing to overwrite a key file",
                    path.display()
                ))
            } else {
                Fatal(format!("{}: cannot create: {e}", path.display()))
            }
        })?;
    let written = (|| {
        // The umask may have removed bits but never adds any; make it exactly 0400.
        file.set_permissions(std::fs::Permissions::from_mode(0o400))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(Fatal(format!("{}: cannot write: {e}", path.display())));
    }
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    println!(
        "wrote a new chain key to {}",
        escape(&path.to_string_lossy())
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// verify

/// Where the state came from, for the report.
enum StateSource {
    Disabled,
    NotFound(PathBuf),
    Loaded(PathBuf, u64),
}

fn read_key(path: &Path) -> Result<ChainKey, Fatal> {
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|e| Fatal(format!("key file {}: {e}", path.display())))?,
    );
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Fatal(format!("key file {}: not text", path.display())))?;
    ChainKey::from_hex_text(text).map_err(|e| Fatal(format!("key file {}: {e}", path.display())))
}

fn read_state(path: &Path, key: &ChainKey) -> Result<ChainState, Fatal> {
    let read = || {
        std::fs::read(path)
            .map(Zeroizing::new)
            .map_err(|e| Fatal(format!("state file {}: {e}", path.display())))
    };
    // Writers update the file in place through a shared mapping (FORMAT.md §8); a read that
    // races an update can see a slot half-switched. Two equal reads in a row are a snapshot.
    let mut bytes = read()?;
    for _ in 0..10 {
        let again = read()?;
        if *again == *bytes {
            break;
        }
        bytes = again;
    }
    match state::decode_file(&bytes) {
        Ok(s) => Ok(s),
        // No chain started yet: the log must hold no records. (Inode 0 marks this as not a
        // state a writer wrote; see `check_state`.)
        Err(StateError::Empty) => Ok(ChainState::genesis(key.clone(), 0, 0, 0)),
        Err(StateError::Corrupt(why)) => Err(Fatal(format!(
            "state file {}: {why} (use --no-state to verify without it)",
            path.display()
        ))),
    }
}

/// Each directory argument becomes its files in chain order (`fileset::chain_order`).
fn expand_directories(args: &[PathBuf]) -> Result<Vec<PathBuf>, Fatal> {
    let mut files = Vec::new();
    for arg in args {
        if arg.is_dir() {
            let found = p11audit::audit::fileset::chain_order(arg)
                .map_err(|e| Fatal(format!("{}: {e}", arg.display())))?;
            for s in &found.skipped {
                eprintln!(
                    "p11audit: skipped {}: it does not start with a record",
                    escape(&s.display().to_string())
                );
            }
            if found.files.is_empty() {
                return Err(Fatal(format!(
                    "{}: no log files in this directory",
                    arg.display()
                )));
            }
            files.extend(found.files);
        } else {
            files.push(arg.clone());
        }
    }
    Ok(files)
}

fn default_state_path(last: &Path) -> PathBuf {
    let mut s: OsString = last.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

fn verify(
    key_file: &Path,
    state: Option<PathBuf>,
    no_state: bool,
    json: bool,
    files: &[PathBuf],
) -> Result<ExitCode, Fatal> {
    let key = read_key(key_file)?;
    let files = &expand_directories(files)?;
    let (state, source) = if no_state {
        (None, StateSource::Disabled)
    } else if let Some(p) = state {
        let s = read_state(&p, &key)?;
        let n = s.next_seq;
        (Some(s), StateSource::Loaded(p, n))
    } else {
        let p = default_state_path(files.last().expect("clap requires FILE"));
        if p.exists() {
            let s = read_state(&p, &key)?;
            let n = s.next_seq;
            (Some(s), StateSource::Loaded(p, n))
        } else {
            (None, StateSource::NotFound(p))
        }
    };
    let opts = VerifyOptions::new(key, state);
    let report = verify_files(files, &opts).map_err(|e| Fatal(e.to_string()))?;

    let out = if json {
        let s = serde_json::to_string(&report)
            .map_err(|e| Fatal(format!("cannot serialize the report: {e}")))?;
        let mut s = escape_c1_and_del(&s);
        s.push('\n');
        s
    } else {
        human(&report, &source)
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(Fatal(format!("cannot write the report: {e}")));
        }
    }
    Ok(if report.intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Escapes C0 controls, DEL and C1 controls (which terminals interpret) and backslashes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if ('\u{80}'..='\u{9f}').contains(&c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn path_text(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

/// The human report: verdict, close status, state, then the summary.
fn human(r: &VerifyReport, source: &StateSource) -> String {
    let mut o = String::new();
    match &r.problem {
        None => o.push_str("OK: chain intact\n"),
        Some(p) => {
            let seq = p.seq.map(|s| format!(" (seq {s})")).unwrap_or_default();
            let _ = writeln!(
                o,
                "FAIL: {} at {}:{}{seq}: {}",
                p.kind,
                path_text(&p.file),
                p.line,
                escape(&p.detail)
            );
        }
    }

    let unclosed = if r.unclosed_pids.is_empty() {
        String::new()
    } else {
        let pids: Vec<String> = r.unclosed_pids.iter().map(u32::to_string).collect();
        format!("; attached without close: pid {}", pids.join(", "))
    };
    let upto = if r.intact {
        ""
    } else {
        " (before the problem)"
    };
    let closed = match (r.closed_cleanly, r.intact) {
        (true, true) => "yes",
        (true, false) => "yes (the last record before the problem is \"close\")",
        (false, _) if r.summary.records == 0 => "no (no records)",
        (false, true) => "no (the last record is not \"close\")",
        (false, false) => "no (the last record before the problem is not \"close\")",
    };
    let _ = writeln!(o, "closed cleanly: {closed}{unclosed}");

    match source {
        StateSource::Disabled => o.push_str("state:     not checked (--no-state)\n"),
        StateSource::NotFound(p) => {
            let _ = writeln!(
                o,
                "state:     none ({} not found); the end of the log was not checked",
                path_text(p)
            );
        }
        StateSource::Loaded(p, n) => {
            let _ = writeln!(o, "state:     {} (next seq {n})", path_text(p));
        }
    }

    let s = &r.summary;
    let seqs = match (s.first_seq, s.last_seq) {
        (Some(a), Some(b)) => format!(" (seq {a}..{b})"),
        _ => String::new(),
    };
    let _ = writeln!(o, "records:   {}{seqs}{upto}", s.records);
    if let (Some(first), Some(last)) = (&s.first_ts, &s.last_ts) {
        let _ = writeln!(o, "first:     {}", escape(first));
        let _ = writeln!(o, "last:      {}", escape(last));
    }
    if s.gaps > 0 {
        let _ = writeln!(
            o,
            "gaps:      {} gap record(s), {} record(s) lost by the writer",
            s.gaps, s.lost
        );
    }
    let _ = writeln!(o, "processes: {}", s.process_count);
    for p in &s.processes {
        let _ = writeln!(
            o,
            "  pid {:<8} {:>8} record(s)  {}",
            p.pid,
            p.records,
            escape(&p.exe)
        );
    }
    table(&mut o, "events:", &s.per_ev);
    table(&mut o, "functions:", &s.per_fn);
    table(&mut o, "results:", &s.per_rv);
    o
}

fn table(o: &mut String, title: &str, map: &std::collections::BTreeMap<String, u64>) {
    if map.is_empty() {
        return;
    }
    let _ = writeln!(o, "{title}");
    let rows: Vec<(String, u64)> = map.iter().map(|(k, v)| (escape(k), *v)).collect();
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    for (k, v) in rows {
        let _ = writeln!(o, "  {k:<width$} {v:>8}");
    }
}

/// JSON output with DEL and the C1 controls (U+007F..U+009F) escaped as `\u00XX`: serde_json
/// escapes only C0 controls, and a C1 CSI (U+009B) from a hostile log would reach a terminal
/// that reads the JSON. The result is still the same JSON value.
fn escape_c1_and_del(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}
