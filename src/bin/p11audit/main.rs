//! `p11audit`: create chain keys, verify p11audit audit logs, and read them (show, report).
//! The reading itself is in `p11audit::reader`; this file parses arguments and prints.

mod cli;

use clap::Parser;
use cli::{ChainArgs, Cli, Command, PeriodArgs, WitnessArgs};
use p11audit::format::chain::{hex_lower, ChainKey};
use p11audit::format::state::{self, ChainState, StateError};
use p11audit::reader::report::{render_human, report, ReportOptions};
use p11audit::reader::show::{show, Filter, ShowError, ShowOptions};
use p11audit::reader::tree_check::{
    check_tree, prove, render as render_tree, seq_of, ProveError, TreeIoError, TreeReport,
};
use p11audit::reader::verify::render::{
    render_human as render_verify, show_verdict, state_text, StateSource,
};
use p11audit::reader::verify::{
    verify_files, UnreportedLost, VerifyIoError, VerifyOptions, VerifyReport,
};
use p11audit::reader::{escape, escape_c1_and_del, parse_time_arg, Bound, Period, Progress};
use p11audit::tlog::note::{SignerKey, VerifierKey, ALG_COSIGNATURE_V1, ALG_ED25519};
use p11audit::tlog::witness::{add_checkpoint, parse_request, Evidence, Outcome, WitnessState};
use p11audit::writer::audit_log::state_path_for;
use p11audit::writer::checkpoints::{checkpoint_path_for, read_note_key};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zeroize::Zeroizing;

impl ChainArgs {
    /// Replaces each directory argument by its files in chain order. When the last argument
    /// is a directory, the state file is the chain's own in that directory (`<log>.state`),
    /// found by name even if the current log is gone: `LAST-FILE.state` would then name the
    /// newest rotated file, which has none, and a deleted tail would go unchecked.
    fn expand(mut self) -> Result<ChainArgs, Fatal> {
        let last_is_dir = self.files.last().is_some_and(|p| p.is_dir());
        self.files = expand_directories(&self.files)?;
        if last_is_dir {
            self.directory_state = self.files.last().and_then(|f| chain_state_beside(f));
        }
        Ok(self)
    }

    /// `<log>.checkpoint` of the chain: beside its state file for a directory, else beside
    /// the last file.
    fn checkpoint_file(&self) -> PathBuf {
        match &self.directory_state {
            Some(state) => checkpoint_beside_state(state),
            None => checkpoint_path_for(self.files.last().expect("clap requires FILE")),
        }
    }
}

/// The state file `<log>.state` beside `last` whose `<log>` is `last`'s own name or the name
/// it was rotated from (`<log>.<UTC time>`); the longest such name if several match.
fn chain_state_beside(last: &Path) -> Option<PathBuf> {
    let dir = last.parent()?;
    let name = last.file_name()?.to_str()?;
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let log = file.strip_suffix(".state")?.to_string();
            let is_its_log = name == log || name.strip_prefix(&log)?.starts_with('.');
            is_its_log.then(|| (log.len(), e.path()))
        })
        .max()
        .map(|(_, path)| path)
}

impl PeriodArgs {
    fn period(&self) -> Result<Period, Fatal> {
        let p = |t: &Option<String>, b| {
            t.as_deref()
                .map(|t| parse_time_arg(t, b).map_err(|why| Fatal::Time { why }))
                .transpose()
        };
        let period = Period {
            since: p(&self.since, Bound::Since)?,
            until: p(&self.until, Bound::Until)?,
        };
        if let (Some(a), Some(b)) = (period.since, period.until) {
            if a > b {
                return Err(Fatal::SinceAfterUntil);
            }
        }
        Ok(period)
    }
}

/// A failure that ends the command with exit status 2, worded for one `p11audit:` line on
/// stderr.
#[derive(Debug, thiserror::Error)]
enum Fatal {
    /// `--since` or `--until` is not a time; `why` says what is wrong with it.
    #[error("{why}")]
    Time { why: String },
    #[error("--since is after --until")]
    SinceAfterUntil,
    #[error("give --key-file KEY (K_0); verify also takes --vkey VKEY (a checkpoint verifier key), alone or with it")]
    NoKeyFile,
    #[error("{name:?} cannot name a key: no spaces and no '+'")]
    KeyName { name: String },
    #[error("{}: {source}", .path.display())]
    InputUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("witness state {}: {why}", .path.display())]
    WitnessState { path: PathBuf, why: String },
    #[error("{0}")]
    Witness(String),
    #[error(transparent)]
    Tree(#[from] TreeIoError),
    #[error("{0}")]
    Prove(ProveError),
    #[error("cannot get random bytes: {0}")]
    Random(getrandom::Error),
    /// keygen never overwrites: the file may be the only copy of a chain's key.
    #[error("{}: already exists; refusing to overwrite a key file", .path.display())]
    KeyFileExists { path: PathBuf },
    #[error("{}: cannot create: {source}", .path.display())]
    KeyFileCreate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot write: {source}", .path.display())]
    KeyFileWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {}: {source}", .path.display())]
    KeyFileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {}: not text", .path.display())]
    KeyFileNotText { path: PathBuf },
    /// The file is text but not a key; `why` says what a key file must hold.
    #[error("key file {}: {why}", .path.display())]
    KeyFileNotAKey { path: PathBuf, why: String },
    #[error("state file {}: {source}{}", .path.display(), state_access_hint(source))]
    StateFileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {}: {why} (use --no-state to verify without it)", .path.display())]
    StateFileCorrupt { path: PathBuf, why: String },
    #[error("{}: {source}", .path.display())]
    DirectoryUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no log files in this directory", .path.display())]
    NoLogFiles { path: PathBuf },
    /// A log file could not be read.
    #[error(transparent)]
    Log(#[from] VerifyIoError),
    #[error("{0}")]
    Show(ShowError),
    #[error("cannot serialize the report: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The output could not be written (other than by a reader that went away).
    #[error("cannot write the {what}: {source}")]
    Output {
        what: &'static str,
        source: std::io::Error,
    },
}

/// The state file is the writer's alone (it holds the chain's current key): a reader who may
/// not open it, such as an auditor of the separated deployment, verifies without it.
fn state_access_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (only the log's writer may read it: use --no-state to verify every record without \
         checking the end of the chain against it)"
    } else {
        ""
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen {
            checkpoint: None,
            witness: None,
            path,
        } => keygen(&path).map(|()| ExitCode::SUCCESS),
        Command::Keygen {
            checkpoint,
            witness,
            path,
        } => keygen_note(checkpoint, witness, &path).map(|()| ExitCode::SUCCESS),
        Command::Verify { chain, vkey, json } => chain
            .expand()
            .and_then(|c| verify(&c, vkey.as_deref(), json)),
        Command::Prove { from, files } => prove_cmd(&files, from),
        Command::Witness { args } => witness_cmd(&args),
        Command::Show {
            chain,
            period,
            pid,
            uid,
            functions,
            rv,
            failures,
            key,
            json,
        } => period.period().and_then(|period| {
            let filter = Filter {
                period,
                pids: pid,
                uids: uid,
                functions,
                rvs: rv,
                failures,
                keys: key,
            };
            chain
                .expand()
                .and_then(|c| show_cmd(&c, ShowOptions::new(filter, json)))
        }),
        Command::Report {
            chain,
            period,
            json,
        } => period.period().and_then(|p| {
            chain
                .expand()
                .and_then(|c| report_cmd(&c, &ReportOptions::new(p), json))
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p11audit: {}", escape(&e.to_string()));
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// keygen

fn keygen(path: &Path) -> Result<(), Fatal> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut bytes[..]).map_err(Fatal::Random)?;
    let mut text = Zeroizing::new(hex_lower(&bytes[..]));
    text.push('\n');
    create_key_file(path, text.as_bytes(), 0o400)?;
    println!(
        "wrote a new chain key to {}",
        escape(&path.to_string_lossy())
    );
    Ok(())
}

/// `keygen --checkpoint ORIGIN PATH` or `keygen --witness NAME PATH`: the signer key to PATH
/// (0400), its verifier key to PATH.vkey (0444); neither is ever overwritten.
fn keygen_note(
    checkpoint: Option<String>,
    witness: Option<String>,
    path: &Path,
) -> Result<(), Fatal> {
    let (name, alg, what) = match (checkpoint, witness) {
        (Some(origin), _) => (origin, ALG_ED25519, "checkpoint key"),
        (None, Some(name)) => (name, ALG_COSIGNATURE_V1, "witness key"),
        (None, None) => unreachable!("plain keygen is handled by its own arm"),
    };
    let key = SignerKey::generate(&name, alg).map_err(|_| Fatal::KeyName { name: name.clone() })?;
    let mut vkey_path = path.as_os_str().to_owned();
    vkey_path.push(".vkey");
    let vkey_path = PathBuf::from(vkey_path);
    if vkey_path.symlink_metadata().is_ok() {
        return Err(Fatal::KeyFileExists { path: vkey_path });
    }
    let mut text = key.encode();
    text.push('\n');
    create_key_file(path, text.as_bytes(), 0o400)?;
    create_key_file(
        &vkey_path,
        format!("{}\n", key.verifier().encode()).as_bytes(),
        0o444,
    )?;
    println!(
        "wrote a new {what} to {} and its verifier key {} to {}",
        escape(&path.to_string_lossy()),
        escape(&key.verifier().encode()),
        escape(&vkey_path.to_string_lossy())
    );
    Ok(())
}

/// Creates `path` (never replacing anything) with exactly `mode` and `bytes`, synced with
/// its directory; removed again if it could not be written whole.
fn create_key_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Fatal> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            let path = path.to_path_buf();
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                Fatal::KeyFileExists { path }
            } else {
                Fatal::KeyFileCreate { path, source }
            }
        })?;
    let written = (|| {
        // The umask may have removed bits but never adds any; make it exactly `mode`.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(source) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(Fatal::KeyFileWrite {
            path: path.to_path_buf(),
            source,
        });
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
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// verify

fn read_key(path: &Path) -> Result<ChainKey, Fatal> {
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|source| Fatal::KeyFileUnreadable {
            path: path.to_path_buf(),
            source,
        })?,
    );
    let text = std::str::from_utf8(&bytes).map_err(|_| Fatal::KeyFileNotText {
        path: path.to_path_buf(),
    })?;
    ChainKey::from_hex_text(text).map_err(|why| Fatal::KeyFileNotAKey {
        path: path.to_path_buf(),
        why: why.to_string(),
    })
}

fn read_state(path: &Path, key: &ChainKey) -> Result<(ChainState, Option<UnreportedLost>), Fatal> {
    let read = || {
        state::read_file_bounded(path).map_err(|source| Fatal::StateFileUnreadable {
            path: path.to_path_buf(),
            source,
        })
    };
    // Writers update the file in place through a shared mapping (INTERNALS.md §1.1); a read that
    // races an update can see a slot half-switched. Two equal reads in a row are a snapshot.
    let mut bytes = read()?;
    for _ in 0..10 {
        let again = read()?;
        if *again == *bytes {
            break;
        }
        bytes = again;
    }
    let unreported = UnreportedLost::from_state_file(&bytes);
    match state::decode_any_version(&bytes) {
        Ok(s) => Ok((s, unreported)),
        // No chain started yet: the log must hold no records. (Inode 0 marks this as not a
        // state a writer wrote; see `check_state`.)
        Err(StateError::Empty) => Ok((ChainState::genesis(key.clone(), 0, 0, 0), unreported)),
        Err(StateError::Corrupt(why)) => Err(Fatal::StateFileCorrupt {
            path: path.to_path_buf(),
            why: why.to_string(),
        }),
    }
}

/// Each directory argument becomes its files in chain order (`fileset::chain_order`).
fn expand_directories(args: &[PathBuf]) -> Result<Vec<PathBuf>, Fatal> {
    let mut files = Vec::new();
    for arg in args {
        if arg.is_dir() {
            let found = p11audit::reader::fileset::chain_order(arg).map_err(|source| {
                Fatal::DirectoryUnreadable {
                    path: arg.clone(),
                    source,
                }
            })?;
            for s in &found.skipped {
                eprintln!(
                    "p11audit: skipped {}: it does not start with a record",
                    escape(&s.display().to_string())
                );
            }
            if found.files.is_empty() {
                return Err(Fatal::NoLogFiles { path: arg.clone() });
            }
            files.extend(found.files);
        } else {
            files.push(arg.clone());
        }
    }
    Ok(files)
}

/// The key, the state and where it came from, as `chain` asks.
fn verify_options(chain: &ChainArgs) -> Result<(VerifyOptions, StateSource), Fatal> {
    let key_file = chain.key_file.as_deref().ok_or(Fatal::NoKeyFile)?;
    let key = read_key(key_file)?;
    let mut counted_lost = None;
    let (state, source) = if chain.no_state {
        (None, StateSource::Disabled)
    } else if let Some(p) = &chain.state {
        let (s, unreported) = read_state(p, &key)?;
        counted_lost = unreported;
        let n = s.next_seq;
        (Some(s), StateSource::Loaded(p.clone(), n))
    } else {
        let p = match &chain.directory_state {
            Some(p) => p.clone(),
            None => state_path_for(chain.files.last().expect("clap requires FILE")),
        };
        // Anything at that name, a dangling symbolic link too, is read (and refused if it is
        // not a regular file) rather than taken as no state file.
        if p.symlink_metadata().is_ok() {
            let (s, unreported) = read_state(&p, &key)?;
            counted_lost = unreported;
            let n = s.next_seq;
            (Some(s), StateSource::Loaded(p, n))
        } else {
            (None, StateSource::NotFound(p))
        }
    };
    let mut opts = VerifyOptions::new(key, state);
    opts.state_not_wanted = chain.no_state;
    opts.state_counts_lost = counted_lost;
    Ok((opts, source))
}

/// Writes `out` to stdout; a reader that went away is not an error.
fn print(out: &str, what: &'static str) -> Result<(), Fatal> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(source) if source.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Fatal::Output { what, source })
        }
        _ => Ok(()),
    }
}

fn verify(chain: &ChainArgs, vkey: Option<&Path>, json: bool) -> Result<ExitCode, Fatal> {
    if chain.key_file.is_none() && vkey.is_none() {
        return Err(Fatal::NoKeyFile);
    }
    let tree = match vkey {
        Some(path) => {
            let key = read_vkey(path)?;
            Some(check_tree(
                &chain.files,
                Some(&chain.checkpoint_file()),
                &key,
            )?)
        }
        None => None,
    };
    let hmac = match chain.key_file {
        Some(_) => {
            let (opts, source) = verify_options(chain)?;
            Some((verify_files(&chain.files, &opts)?, source))
        }
        None => None,
    };
    // With K_0 the chain's verdict covers the records after the newest checkpoint too.
    let exit_status = match (&hmac, &tree) {
        (_, Some(t)) if t.exit_status == 1 => 1,
        (Some((r, _)), _) => r.exit_status,
        (None, Some(t)) => t.exit_status,
        (None, None) => unreachable!("checked above"),
    };
    let out = if json {
        /// The chain's report with the tree's beside it (`exit_status` covers both).
        #[derive(serde::Serialize)]
        struct Both<'a> {
            #[serde(flatten)]
            chain: Option<VerifyReport>,
            #[serde(skip_serializing_if = "Option::is_none")]
            tree: Option<&'a TreeReport>,
            #[serde(skip_serializing_if = "Option::is_none")]
            exit_status: Option<u8>,
        }
        let both = match &hmac {
            Some((r, _)) => {
                let mut r = r.clone();
                r.exit_status = exit_status;
                Both {
                    chain: Some(r),
                    tree: tree.as_ref(),
                    exit_status: None,
                }
            }
            None => Both {
                chain: None,
                tree: tree.as_ref(),
                exit_status: Some(exit_status),
            },
        };
        let s = serde_json::to_string(&both).map_err(Fatal::Serialize)?;
        let mut s = escape_c1_and_del(&s);
        s.push('\n');
        s
    } else {
        let mut s = String::new();
        if let Some((r, source)) = &hmac {
            s.push_str(&render_verify(r, source));
        }
        if let Some(t) = &tree {
            s.push_str(&render_tree(t));
        }
        s
    };
    print(&out, "report")?;
    Ok(ExitCode::from(exit_status))
}

fn read_vkey(path: &Path) -> Result<VerifierKey, Fatal> {
    let text = std::fs::read_to_string(path).map_err(|source| Fatal::KeyFileUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    VerifierKey::parse(&text).map_err(|e| Fatal::KeyFileNotAKey {
        path: path.to_path_buf(),
        why: format!("{e}: a verifier key is one line NAME+KEYID+KEY, as `keygen --checkpoint` writes to PATH.vkey"),
    })
}

// ---------------------------------------------------------------------------------------------
// prove and witness

fn prove_cmd(files: &[PathBuf], from: u64) -> Result<ExitCode, Fatal> {
    let last_is_dir = files.last().is_some_and(|p| p.is_dir());
    let files = expand_directories(files)?;
    let checkpoint = if last_is_dir {
        files
            .last()
            .and_then(|f| chain_state_beside(f))
            .map(|s| checkpoint_beside_state(&s))
    } else {
        files.last().map(|f| checkpoint_path_for(f))
    };
    let body = prove(&files, checkpoint.as_deref(), from).map_err(Fatal::Prove)?;
    print(&body, "proof")?;
    Ok(ExitCode::SUCCESS)
}

/// A file named on the command line, or stdin for `-`.
fn read_input(path: &Path) -> Result<String, Fatal> {
    let unreadable = |source| Fatal::InputUnreadable {
        path: path.to_path_buf(),
        source,
    };
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(unreadable)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(unreadable)
    }
}

fn witness_cmd(args: &WitnessArgs) -> Result<ExitCode, Fatal> {
    let key =
        read_note_key(&args.key, ALG_COSIGNATURE_V1).map_err(|why| Fatal::KeyFileNotAKey {
            path: args.key.clone(),
            why,
        })?;
    let log_keys = args
        .log_keys
        .iter()
        .map(|p| read_vkey(p))
        .collect::<Result<Vec<_>, _>>()?;
    let (evidence, note) = match (&args.request, &args.checkpoint) {
        (Some(r), _) => {
            parse_request(&read_input(r)?).map_err(|e| Fatal::Witness(e.to_string()))?
        }
        (None, Some(c)) => {
            let evidence = if args.lines.is_empty() {
                Evidence::Nothing
            } else {
                Evidence::Lines(lines_with_seqs(&args.lines)?)
            };
            (evidence, read_input(c)?)
        }
        (None, None) => unreachable!("clap requires one"),
    };
    // One witness at a time per state file: the decision and the update are one step.
    let lock_path = {
        let mut p = args.state.as_os_str().to_owned();
        p.push(".lock");
        PathBuf::from(p)
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|source| Fatal::WitnessState {
            path: lock_path.clone(),
            why: source.to_string(),
        })?;
    let mut state: WitnessState = match std::fs::read_to_string(&args.state) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| Fatal::WitnessState {
            path: args.state.clone(),
            why: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => WitnessState::default(),
        Err(e) => {
            return Err(Fatal::WitnessState {
                path: args.state.clone(),
                why: e.to_string(),
            })
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match add_checkpoint(&mut state, &log_keys, &key, &note, &evidence, now) {
        Ok(Outcome::Cosigned(cosignature)) => {
            replace_witness_state(&args.state, &state)?;
            drop(lock);
            print(&cosignature.line(), "cosignature")?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(Outcome::AlreadyCovered { known }) => {
            eprintln!("p11audit: witness: an older checkpoint, a prefix of the {known} records already cosigned: nothing to cosign");
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => {
            eprintln!(
                "p11audit: witness refused the checkpoint: {}",
                escape(&refusal.to_string())
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// The lines of `files` with the seq each starts with (lines without one are left out).
fn lines_with_seqs(files: &[PathBuf]) -> Result<Vec<(u64, Vec<u8>)>, Fatal> {
    let mut out = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|source| Fatal::InputUnreadable {
            path: path.clone(),
            source,
        })?;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let Some(line) = line.strip_suffix(b"\n") else {
                break;
            };
            if let Some(seq) = seq_of(line) {
                out.push((seq, line.to_vec()));
            }
        }
    }
    Ok(out)
}

/// Writes the witness's state to `STATE.next`, syncs it and renames it over `STATE`.
fn replace_witness_state(path: &Path, state: &WitnessState) -> Result<(), Fatal> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |source: std::io::Error| Fatal::WitnessState {
        path: path.to_path_buf(),
        why: format!("cannot write: {source}"),
    };
    let mut next = path.as_os_str().to_owned();
    next.push(".next");
    let next = PathBuf::from(next);
    let _ = std::fs::remove_file(&next);
    let text = serde_json::to_string_pretty(state).map_err(Fatal::Serialize)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&next)
        .map_err(failed)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(failed)?;
    std::fs::rename(&next, path).map_err(failed)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all().map_err(failed)?;
    }
    Ok(())
}

/// `<log>.checkpoint` for the chain whose state file is `state` (`<log>.state`).
fn checkpoint_beside_state(state: &Path) -> PathBuf {
    let text = state.as_os_str().to_string_lossy();
    let log = text.strip_suffix(".state").unwrap_or(&text);
    checkpoint_path_for(Path::new(log))
}

fn show_cmd(chain: &ChainArgs, opts: ShowOptions) -> Result<ExitCode, Fatal> {
    let (vopts, source) = verify_options(chain)?;
    let mut progress = Progress::for_terminal(&chain.files);
    let stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let summary = show(&chain.files, &vopts, &opts, stdout, &mut progress).map_err(Fatal::Show)?;
    // The reader closed the output (`| head`): the rest of the log was not checked.
    let Some(report) = summary.verify else {
        return Ok(ExitCode::from(2));
    };
    let mut msg = show_verdict(&report, &source);
    if summary.without_outcome > 0 {
        let _ = write!(
            msg,
            "\np11audit: {} call(s) shown with NO OUTCOME",
            summary.without_outcome
        );
    }
    eprintln!("{msg}");
    Ok(ExitCode::from(report.exit_status))
}

fn report_cmd(chain: &ChainArgs, opts: &ReportOptions, json: bool) -> Result<ExitCode, Fatal> {
    let (vopts, source) = verify_options(chain)?;
    let mut progress = Progress::for_terminal(&chain.files);
    let r = report(&chain.files, &vopts, opts, &mut progress)?;
    let out = if json {
        let s = serde_json::to_string(&r).map_err(Fatal::Serialize)?;
        let mut s = escape_c1_and_del(&s);
        s.push('\n');
        s
    } else {
        let v = &r.verification;
        let mut s = render_human(&r);
        let _ = writeln!(
            s,
            "\n{}",
            state_text(
                &source,
                v.unreported_lost.as_ref(),
                v.end_unchecked,
                v.next_seq
            )
        );
        s
    };
    print(&out, "report")?;
    Ok(ExitCode::from(r.verification.exit_status))
}
