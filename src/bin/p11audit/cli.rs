//! The command line of `p11audit`, as clap reads it. Its own file so that the binary and the
//! generator of the man pages and shell completions (`examples/gen_docs.rs`) use one
//! definition.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const EXIT_HELP: &str = "\
Exit status:
  0  the chain is intact and its end was checked against the state file (verify, show,
     report), or the key was written (keygen)
  1  the chain did not verify: the first problem is reported with its file, line and seq
  2  usage error, unreadable file, bad key or state file; nothing was verified
  3  every record verified, but the end of the chain was not checked: there is no state
     file, --no-state was given, or the state file is behind the log (verify, show, report)

A key file holds K_0 as 64 hexadecimal characters. Keep a copy away from the audited host:
whoever holds it can verify (and forge) the whole chain. The state file beside a log
(LOG.state) lets verify notice records cut off the end of the log.";

const VERIFY_HELP: &str = "\
Checks every line's mac, that seq counts up by one from 0 across the files (a chain may
continue across rotated files) with no record missing, repeated or out of order, that every
prev links to the record before, and, with a state file, that nothing was cut off the end.
Stops at the first problem; the summary covers the records before it.

Exit status:
  0  the chain is intact and its end was checked against the state file
  1  a problem was found: the first one is reported with its file, line and seq (this comes
     before 3)
  2  usage error, unreadable file, bad key or state file; nothing was verified
  3  every record verified, but the end of the chain was not checked, so records cut off the
     end would go unnoticed: there is no state file, --no-state was given, or the state file
     is behind the log. The first line says which; with --json, `end_unchecked` is
     \"no_state_file\", \"no_state_option\" or \"state_behind_log\", and `exit_status` is 3";

#[derive(Parser)]
#[command(
    name = "p11audit",
    version,
    about = "Create chain keys for, verify and read the HMAC-chained audit logs of the p11audit \
             PKCS#11 module",
    after_help = EXIT_HELP,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Write a new random chain key (K_0) to PATH (mode 0400; never overwrites); or, with
    /// --checkpoint or --witness, an Ed25519 signer key to PATH and its verifier key to PATH.vkey
    #[command(after_help = EXIT_HELP)]
    Keygen {
        /// Make a checkpoint key for the log named ORIGIN (the checkpoints' origin line and
        /// the key's name), for P11AUDIT_CHECKPOINT_KEY
        #[arg(long, value_name = "ORIGIN", conflicts_with = "witness")]
        checkpoint: Option<String>,
        /// Make a witness's cosignature/v1 key named NAME, for `p11audit witness --key`
        #[arg(long, value_name = "NAME")]
        witness: Option<String>,
        /// Where to create the key file
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Verify the chain of one or more log files, oldest first, and summarize them
    #[command(after_help = VERIFY_HELP)]
    Verify {
        #[command(flatten)]
        chain: ChainArgs,
        /// Check the log against its signed checkpoints with this verifier key (made by
        /// `keygen --checkpoint`, PATH.vkey): no K_0 needed. With --key-file too, both checks run
        #[arg(long, value_name = "VKEY")]
        vkey: Option<PathBuf>,
        /// Print the report as one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Print the consistency proof from the tree of N records to the log's newest checkpoint,
    /// as a tlog-witness add-checkpoint request body (for `p11audit witness --request`)
    #[command(after_help = PROVE_HELP)]
    Prove {
        /// The size of the tree the witness knows
        #[arg(long, value_name = "N")]
        from: u64,
        /// Log files, oldest first from the chain's first, or a directory holding them
        #[arg(value_name = "FILE|DIR", required = true)]
        files: Vec<PathBuf>,
    },
    /// Cosign a log's checkpoint if it is consistent with the newest one accepted for its
    /// origin; refuse (exit 1) a rollback, a fork, or a deleted and restarted log
    #[command(after_help = WITNESS_HELP)]
    Witness {
        #[command(flatten)]
        args: WitnessArgs,
    },
    /// Print the calls in a log, one line each (intent and outcome joined), verifying as it reads
    #[command(after_help = SHOW_HELP)]
    Show {
        #[command(flatten)]
        chain: ChainArgs,
        #[command(flatten)]
        period: PeriodArgs,
        /// Only calls by this process id (repeatable)
        #[arg(long, value_name = "PID")]
        pid: Vec<u32>,
        /// Only calls by this user id (repeatable)
        #[arg(long, value_name = "UID")]
        uid: Vec<u32>,
        /// Only calls of this function, e.g. C_Sign (repeatable)
        #[arg(long = "fn", value_name = "FUNCTION")]
        functions: Vec<String>,
        /// Only calls that returned this, e.g. CKR_PIN_INCORRECT (repeatable)
        #[arg(long, value_name = "RV")]
        rv: Vec<String>,
        /// Only failures: rv other than CKR_OK, calls without outcome, gap records
        #[arg(long)]
        failures: bool,
        /// Only calls naming an object with this label or hex id (repeatable)
        #[arg(long, value_name = "LABEL|HEX-ID")]
        key: Vec<String>,
        /// Print the matching records' lines unchanged (JSON lines, in log order)
        #[arg(long)]
        json: bool,
    },
    /// Report on a period: keys used and their lifecycle, logins, sessions, gaps, unclean closes
    #[command(after_help = REPORT_HELP)]
    Report {
        #[command(flatten)]
        chain: ChainArgs,
        #[command(flatten)]
        period: PeriodArgs,
        /// Print the report as one JSON document
        #[arg(long)]
        json: bool,
    },
}

/// The log files and how to verify them: the same for verify, show and report.
#[derive(Args)]
pub(crate) struct ChainArgs {
    /// Key file holding K_0 (64 hex characters); verify needs it or --vkey
    #[arg(long, value_name = "KEY")]
    pub(crate) key_file: Option<PathBuf>,
    /// State file to check the end of the chain against [default: LAST-FILE.state, if it
    /// exists; for a directory, the chain's `<log>.state` in it]
    #[arg(long, value_name = "STATE", conflicts_with = "no_state")]
    pub(crate) state: Option<PathBuf>,
    /// Do not check the end of the chain against a state file
    #[arg(long)]
    pub(crate) no_state: bool,
    /// Log files, oldest first; or a directory holding one chain's files (rotated files and
    /// the current log), put in order by the seq each file starts at
    #[arg(value_name = "FILE|DIR", required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// When the last argument is a directory: the chain's state file in it (see `expand`).
    #[arg(skip)]
    pub(crate) directory_state: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct PeriodArgs {
    /// Only records from this time on: RFC 3339 (2026-11-26T03:12:45Z) or a date (2026-11-26, from its start)
    #[arg(long, value_name = "TIME")]
    pub(crate) since: Option<String>,
    /// Only records up to this time: RFC 3339, or a date (up to its end, the whole day included)
    #[arg(long, value_name = "TIME")]
    pub(crate) until: Option<String>,
}

const SHOW_HELP: &str = "\
One line per call: SEQ (intent>outcome for a joined call), TIME (when the call started), PID,
UID, EXE, SESSION, LOGIN (after the call), FUNCTION, RESULT (rv; attach, close, start, GAP;
NO OUTCOME for an intent whose outcome is not in the log), DURATION (in the provider), and
DETAILS (mechanism, key, second key, created objects, user type, lengths, counts, notes).
Everything taken from the log is escaped. Filters combine: all given must hold; a repeated
filter matches any of its values. With --json the matching records' lines are printed exactly
as they are in the log (a call's intent and outcome together), so with no filter the output is
the log itself.

The chain is verified in the same pass. Only records that verified are printed; at the end the
verdict goes to stderr.

Exit status:
  0  the chain is intact and its end was checked against the state file
  1  the chain did not verify: the output stops at the first problem, named on stderr
  2  usage error, unreadable file, bad key or state file, or the output was closed early
     (e.g. `| head`) so the rest of the log was not checked
  3  every record verified, but the end of the chain was not checked (no state file,
     --no-state, or a state file behind the log): the verdict on stderr says which";

const PROVE_HELP: &str = "\
Reads the log's lines (every file from the chain's first record), finds its newest checkpoint
(the checkpoint records and LOG.checkpoint) and prints `old N`, the RFC 6962 consistency proof
from the tree of the first N records to that checkpoint's tree (base64 hashes, one a line), a
blank line, and the signed checkpoint.

Exit status:
  0  the proof was printed
  2  usage error, unreadable file, no checkpoint, N larger than the newest checkpoint";

const WITNESS_HELP: &str = "\
Accepts the checkpoint only if one of the --log-key keys signed it (its name is the origin), it
is not smaller than the newest checkpoint accepted for that origin, and it is consistent with
it: shown by the consistency proof of --request, or by the log lines of --lines. The first
checkpoint of an origin is accepted on first use. On acceptance the state file is replaced
first, then the cosignature line (cosignature/v1, c2sp.org/tlog-cosignature) is printed.

Exit status:
  0  accepted and cosigned
  1  refused: the reason names the case (rollback, fork, deleted and restarted log, unknown
     key, old size mismatch, missing lines)
  2  usage error, unreadable file or key, unreadable state file";

const REPORT_HELP: &str = "\
Answers, for the period: which keys were used, what for (function, mechanism) and by whom (uid,
exe), with counts; each key's lifecycle (generated, imported, copied, derived, unwrapped,
attributes changed, wrapped, destroyed); logins per user type, failed logins, locked PINs and
bursts of failures (5 or more within 60 s from one pid or uid); sessions per process; gap
records (records lost; fail-closed refusals are among them); processes that attached and never
closed; intents without outcome. The first line says whether the log verified; if it did not,
the report covers only the records before the problem.

Exit status:
  0  the chain is intact and its end was checked against the state file
  1  the chain did not verify (the report says so at the top)
  2  usage error, unreadable file, bad key or state file; nothing was verified
  3  every record verified, but the end of the chain was not checked (no state file,
     --no-state, or a state file behind the log): the first line says which";

/// `p11audit witness`'s arguments.
#[derive(Args)]
pub(crate) struct WitnessArgs {
    /// The witness's cosignature key (made by `keygen --witness`)
    #[arg(long, value_name = "KEY")]
    pub(crate) key: PathBuf,
    /// The witness's state file: the newest checkpoint accepted per origin (created if
    /// missing, replaced atomically before the answer)
    #[arg(long, value_name = "FILE")]
    pub(crate) state: PathBuf,
    /// A log's verifier key (PATH.vkey of `keygen --checkpoint`); repeatable
    #[arg(long = "log-key", value_name = "VKEY", required = true)]
    pub(crate) log_keys: Vec<PathBuf>,
    /// A tlog-witness add-checkpoint request body (`old N`, the proof, a blank line, the
    /// signed checkpoint), as `p11audit prove` prints it; `-` for stdin
    #[arg(long, value_name = "FILE", conflicts_with_all = ["checkpoint", "lines"], required_unless_present = "checkpoint")]
    pub(crate) request: Option<PathBuf>,
    /// The signed checkpoint (a `<log>.checkpoint` file, or the note of a checkpoint
    /// record); `-` for stdin
    #[arg(long, value_name = "FILE")]
    pub(crate) checkpoint: Option<PathBuf>,
    /// Log files holding the lines since the last accepted checkpoint (or all of them)
    #[arg(long, value_name = "FILE", requires = "checkpoint")]
    pub(crate) lines: Vec<PathBuf>,
}
