//! Golden test: the records the shim writes and the way `p11audit` reads a log stay the same
//! from one build to the next (a restructuring of the code must not change either).
//!
//! Two tests, driven only through the built shim (`libp11audit.so`) and the `p11audit`
//! binary, never through the library's Rust paths:
//!
//! - `golden_workload_records_have_the_recorded_shape`: this test binary, re-executed as a
//!   child (role `golden`), runs one fixed workload through the shim on a fresh SoftHSM token
//!   with the `cryptoki` crate: C_GetInterface, C_Initialize, C_GetInfo, the slot list and
//!   token info, a read-write session, a login with a wrong PIN (CKR_PIN_INCORRECT), the user
//!   login, an EC P-256 key pair and an AES key (labelled), an ECDSA signature (the `cryptoki`
//!   client asks for the length with a NULL buffer first, then signs), its verification,
//!   AES-CBC-PAD encryption and decryption (each with a length query), a SHA-256 digest (with a
//!   length query), a search by label, attribute values read, the AES key destroyed, logout,
//!   close and finalize. The log's *shape* must equal `tests/data/golden/shape.txt`: one line
//!   per record, `EV FN MEMBERS` (`-` for a record without `fn`), where MEMBERS are the
//!   record's member names in file order, each nested object's member names in order in
//!   braces after its name (`key{handle,class,key_type,label,id{hex}}`) and each array's
//!   elements in brackets (`template[{type,len,value},{type,len}]`, a scalar element as `_`).
//!   Values (seq, times, pids, handles, lengths, macs, ...) are not in the shape; `ev` and
//!   `fn` are.
//! - `golden_log_still_verifies_and_reads_the_same`: `tests/data/golden/log.jsonl`, its state
//!   file `log.jsonl.state` and its chain key `chain.key` (a test key) were written by an
//!   earlier build running the same workload (the build of commit a9ad502), as were all the
//!   expected files. They are copied into a temporary directory (the key with mode 0400, the
//!   log and state with 0600: a checkout gives 0644, and p11audit refuses a key others can
//!   read), and `p11audit verify`, `show` and `report`, each plain and with `--json`, and
//!   `show --json --failures`, are run on the copy. Their stdout must equal `verify.txt`,
//!   `verify.json`, `show.txt`, `show-failures.json`, `report.txt` and `report.json`; that of
//!   `show --json` (no filter: the log's lines unchanged) must be `log.jsonl` itself, byte for
//!   byte (kept in no second file). Their exit statuses and stderr must equal `status.txt`
//!   (exit status 0 throughout: intact, the end checked against the state file).
//!
//! Normalised, and only this: the temporary directory's path in the output of `p11audit` is
//! replaced by `<DIR>` (it differs in every run). Nothing else in the output depends on the
//! run: `report` without `--since`/`--until` covers the whole log, `(start) .. (end)`, and
//! never consults the clock (no "now"); every time it prints comes from the log's `ts` members,
//! in UTC. The commands run with `TZ=UTC` and `LC_ALL=C` all the same, so that a later build
//! that did look at the local zone or locale is still compared like for like.
//!
//! Updating (only when a change of the records or of the output is intended, and reviewed):
//!
//! - `P11AUDIT_GOLDEN_UPDATE=1 cargo test --test golden` rewrites `shape.txt` from the records
//!   this build writes, and the expected outputs (`verify.txt` ... `status.txt`) from what this
//!   build prints for the golden log kept in `tests/data/golden/`; the log itself is kept, so
//!   logs of the earlier build are still what is read.
//! - `P11AUDIT_GOLDEN_UPDATE=log cargo test --test golden` does the same and also replaces
//!   `log.jsonl`, `log.jsonl.state` and `chain.key` with the ones this run's workload wrote.
//!   Do this only when old logs are deliberately no longer read the same way.
//!
//! To make the golden files with another build than the one under test (e.g. the build before
//! a change, kept aside), point `P11AUDIT_GOLDEN_SHIM` at its `libp11audit.so` and
//! `P11AUDIT_GOLDEN_BIN` at its `p11audit`; without them the test uses the ones built with it.

mod common;
use common::*;

use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const MARK: &str = "P11AUDIT-GOLDEN-RESULT ";
const ROLE: &str = "golden";
const WRONG_PIN: &str = "Wrong-canary-Gd3";
const EC_LABEL: &str = "golden-ec";
const EC_ID: [u8; 2] = [0x90, 0x1d];
const AES_LABEL: &str = "golden-aes";
const IV: [u8; 16] = [0x1f; 16];
const PLAINTEXT: &[u8] = b"p11audit golden workload plaintext";

/// Update mode, from P11AUDIT_GOLDEN_UPDATE.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Update {
    /// Compare (the variable unset, empty or `0`).
    No,
    /// Rewrite shape.txt and the expected outputs.
    Expected,
    /// Rewrite also the golden log, its state file and key.
    Log,
}

fn update_mode() -> Update {
    match std::env::var("P11AUDIT_GOLDEN_UPDATE").as_deref() {
        Err(_) | Ok("") | Ok("0") => Update::No,
        Ok("log") => Update::Log,
        Ok("1") => Update::Expected,
        Ok(other) => panic!("P11AUDIT_GOLDEN_UPDATE={other:?}: use 1 or log"),
    }
}

fn golden_dir() -> PathBuf {
    manifest_dir().join("tests/data/golden")
}

/// The shim under test (or P11AUDIT_GOLDEN_SHIM).
fn shim() -> PathBuf {
    std::env::var_os("P11AUDIT_GOLDEN_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(shim_library)
}

/// The p11audit binary under test (or P11AUDIT_GOLDEN_BIN).
fn bin() -> PathBuf {
    std::env::var_os("P11AUDIT_GOLDEN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(p11audit_bin()))
}

// =============================================================================================
// The child

#[test]
fn golden_child() {
    if !is_role(ROLE) {
        return; // Only a re-executed child does anything.
    }
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let module = std::env::var("P11AUDIT_TEST_MODULE").expect("module path");
    let p11 = Pkcs11::new(module).expect("load module"); // C_GetInterface
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    p11.get_library_info().expect("C_GetInfo");
    let slot = p11.get_slots_with_initialized_token().expect("slots")[0];
    p11.get_token_info(slot).expect("C_GetTokenInfo");
    let s = p11.open_rw_session(slot).expect("session");

    let wrong = s.login(UserType::User, Some(&AuthPin::new(WRONG_PIN.into())));
    assert!(wrong.is_err(), "the wrong PIN was accepted");
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("login");

    let (public, private) = session_p256_pair(&s, EC_LABEL, &EC_ID);
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Label(AES_LABEL.as_bytes().to_vec()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .expect("generate AES key");

    // C_SignInit, C_Sign with a NULL buffer (length query), C_Sign.
    let digest = [0x42u8; 32];
    let sig = s.sign(&Mechanism::Ecdsa, private, &digest).expect("sign");
    assert_eq!(sig.len(), 64);
    s.verify(&Mechanism::Ecdsa, public, &digest, &sig)
        .expect("verify");

    let ct = s
        .encrypt(&Mechanism::AesCbcPad(IV), aes, PLAINTEXT)
        .expect("encrypt");
    let pt = s
        .decrypt(&Mechanism::AesCbcPad(IV), aes, &ct)
        .expect("decrypt");
    assert_eq!(pt, PLAINTEXT);
    let hash = s.digest(&Mechanism::Sha256, PLAINTEXT).expect("digest");
    assert_eq!(hash.len(), 32);

    let found = s
        .find_objects(&[Attribute::Label(EC_LABEL.as_bytes().to_vec())])
        .expect("find objects");
    assert_eq!(found.len(), 2, "the EC key pair by its label");
    let attrs = s
        .get_attributes(
            private,
            &[
                AttributeType::Class,
                AttributeType::KeyType,
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::Sign,
            ],
        )
        .expect("C_GetAttributeValue");
    assert_eq!(attrs.len(), 5);

    s.destroy_object(aes).expect("destroy AES key");
    s.logout().expect("logout");
    s.close().expect("close session");
    p11.finalize().expect("C_Finalize");
    print_marked(MARK, &serde_json::json!({ "done": true }));
}

// =============================================================================================
// The shape of a record

/// Walks one JSON text and writes its shape: member names in order, nested objects in braces,
/// arrays in brackets; scalar values leave nothing (a scalar array element is `_`).
struct ShapeOf<'a> {
    s: &'a [u8],
    i: usize,
}

impl ShapeOf<'_> {
    fn fail(&self, what: &str) -> ! {
        panic!(
            "shape: {what} at byte {} of {}",
            self.i,
            String::from_utf8_lossy(self.s)
        )
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> u8 {
        self.ws();
        *self
            .s
            .get(self.i)
            .unwrap_or_else(|| self.fail("unexpected end"))
    }

    fn expect(&mut self, b: u8) {
        if self.peek() != b {
            self.fail(&format!("expected {:?}", b as char));
        }
        self.i += 1;
    }

    /// A string's raw text between its quotes (escapes left as they are).
    fn string(&mut self) -> &str {
        self.expect(b'"');
        let start = self.i;
        loop {
            match self.s.get(self.i) {
                None => self.fail("unterminated string"),
                Some(b'\\') => self.i += 2,
                Some(b'"') => break,
                Some(_) => self.i += 1,
            }
        }
        self.i += 1;
        std::str::from_utf8(&self.s[start..self.i - 1]).unwrap_or_else(|_| self.fail("not UTF-8"))
    }

    /// The shape of the value here: `{…}` for an object, `[…]` for an array, `` for a scalar.
    fn value(&mut self, out: &mut String) {
        match self.peek() {
            b'{' => {
                out.push('{');
                self.members(out);
                out.push('}');
            }
            b'[' => {
                self.i += 1;
                out.push('[');
                if self.peek() == b']' {
                    self.i += 1;
                } else {
                    loop {
                        let mut element = String::new();
                        self.value(&mut element);
                        out.push_str(if element.is_empty() { "_" } else { &element });
                        match self.peek() {
                            b',' => {
                                self.i += 1;
                                out.push(',');
                            }
                            b']' => {
                                self.i += 1;
                                break;
                            }
                            _ => self.fail("expected , or ]"),
                        }
                    }
                }
                out.push(']');
            }
            b'"' => {
                self.string();
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len() && !b",]} \t\r\n".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                if self.i == start {
                    self.fail("expected a value");
                }
            }
        }
    }

    /// An object's members (at `{`), without the braces: `a,b{c},d[…]`.
    fn members(&mut self, out: &mut String) {
        self.expect(b'{');
        if self.peek() == b'}' {
            self.i += 1;
            return;
        }
        loop {
            let name = self.string().to_string();
            out.push_str(&name);
            self.expect(b':');
            self.value(out);
            match self.peek() {
                b',' => {
                    self.i += 1;
                    out.push(',');
                }
                b'}' => {
                    self.i += 1;
                    return;
                }
                _ => self.fail("expected , or }"),
            }
        }
    }
}

/// `EV FN MEMBERS` for one line of a log.
fn shape_line(line: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let mut walk = ShapeOf {
        s: line.as_bytes(),
        i: 0,
    };
    let mut members = String::new();
    walk.members(&mut members);
    walk.ws();
    assert_eq!(
        walk.i,
        line.len(),
        "trailing bytes after the record: {line}"
    );
    format!(
        "{} {} {members}",
        v["ev"].as_str().unwrap_or("?"),
        v["fn"].as_str().unwrap_or("-")
    )
}

fn shape_of_log(text: &str) -> String {
    text.lines().map(|l| shape_line(l) + "\n").collect()
}

#[test]
fn shape_walks_nested_members_in_order() {
    assert_eq!(
        shape_line(
            r#"{"v":1,"z":{"b":[1,{"y":2,"x":"}"}],"a":{}},"ev":"gap","q":"a\"b","mac":"0"}"#
        ),
        "gap - v,z{b[_,{y,x}],a{}},ev,q,mac"
    );
}

// =============================================================================================
// Comparing with a golden file

/// A line diff (longest common subsequence) of `expected` and `actual`: ` ` kept, `-` only in
/// the expected, `+` only in the actual; runs of more than 3 unchanged lines are elided.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut rows: Vec<(char, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            rows.push((' ', i + 1, a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            rows.push(('-', i + 1, a[i]));
            i += 1;
        } else {
            rows.push(('+', j + 1, b[j]));
            j += 1;
        }
    }
    let near_change = |k: usize| {
        rows[k.saturating_sub(3)..(k + 4).min(rows.len())]
            .iter()
            .any(|r| r.0 != ' ')
    };
    let mut out = String::new();
    let mut elided = false;
    for (k, (tag, line_no, text)) in rows.iter().enumerate() {
        if *tag == ' ' && !near_change(k) {
            if !elided {
                out.push_str("  ...\n");
                elided = true;
            }
            continue;
        }
        elided = false;
        out.push_str(&format!("{tag}{line_no:4} {text}\n"));
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        out.push_str("(the two differ in the newline at the end)\n");
    }
    out
}

/// Compares `actual` with the golden file `name`, or rewrites the file in update mode. Returns
/// a failure message instead of panicking, so that every file of a test is compared.
fn check_golden(name: &str, actual: &str, update: bool) -> Option<String> {
    let path = golden_dir().join(name);
    if update {
        fs::write(&path, actual).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("golden: rewrote {}", path.display());
        return None;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e} (P11AUDIT_GOLDEN_UPDATE=1 writes it)",
            path.display()
        )
    });
    (expected != actual).then(|| {
        format!(
            "{} differs from what this build gives (- expected, + actual; line numbers of \
             each side):\n{}",
            path.display(),
            diff(&expected, actual)
        )
    })
}

#[track_caller]
fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{}\nIf the change is intended, see the doc comment of tests/golden.rs for \
         P11AUDIT_GOLDEN_UPDATE.",
        failures.join("\n")
    );
}

// =============================================================================================
// The workload, run once per test process

struct Workload {
    log: Vec<u8>,
    state: Vec<u8>,
    key: Vec<u8>,
}

/// Runs the child on a fresh token; with P11AUDIT_GOLDEN_UPDATE=log, makes its log, state file
/// and key the golden ones (before any test reads those).
fn workload() -> &'static Workload {
    static RUN: OnceLock<Workload> = OnceLock::new();
    RUN.get_or_init(|| {
        let fx = Fixture::new();
        let mut env = fx.env();
        env.push(("P11AUDIT_TEST_MODULE", shim().into()));
        let done = run_child_ok(
            child_command("golden_child", ROLE_VAR, ROLE, &env),
            fx.dir.path(),
            "golden child",
        );
        assert_eq!(done.marked_json(MARK, "golden child")["done"], true);
        let verified = p11audit(&fx.key, &["verify"], &fx.log);
        assert_eq!(verified.code, 0, "the workload's log: {}", verified.dump());
        let run = Workload {
            log: fs::read(&fx.log).expect("read log"),
            state: fs::read(fx.state()).expect("read state file"),
            key: fs::read(&fx.key).expect("read key"),
        };
        if update_mode() == Update::Log {
            for (name, bytes) in [
                ("log.jsonl", &run.log),
                ("log.jsonl.state", &run.state),
                ("chain.key", &run.key),
            ] {
                let path = golden_dir().join(name);
                fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
                eprintln!("golden: rewrote {}", path.display());
            }
        }
        run
    })
}

#[test]
fn golden_workload_records_have_the_recorded_shape() {
    if is_role(ROLE) {
        return;
    }
    let run = workload();
    let text = std::str::from_utf8(&run.log).expect("the log is UTF-8");
    let shape = shape_of_log(text);
    assert_no_failures(
        check_golden("shape.txt", &shape, update_mode() != Update::No)
            .into_iter()
            .collect(),
    );
}

// =============================================================================================
// The golden log, read by this build

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn dump(&self) -> String {
        format!(
            "exit status {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `p11audit COMMAND --key-file KEY ARGS... LOG`, with TZ=UTC and LC_ALL=C.
fn p11audit(key: &Path, command_and_args: &[&str], log: &Path) -> Ran {
    let (command, args) = command_and_args.split_first().expect("a command");
    let out = Command::new(bin())
        .arg(command)
        .arg("--key-file")
        .arg(key)
        .args(args)
        .arg(log)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("run {} {command}: {e}", bin().display()));
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// Copies one golden file into `dir` with `mode`.
fn copy_with_mode(name: &str, dir: &Path, mode: u32) -> PathBuf {
    let to = dir.join(name);
    let bytes = fs::read(golden_dir().join(name))
        .unwrap_or_else(|e| panic!("read tests/data/golden/{name}: {e}"));
    fs::write(&to, bytes).unwrap_or_else(|e| panic!("write {}: {e}", to.display()));
    fs::set_permissions(&to, fs::Permissions::from_mode(mode)).expect("chmod");
    to
}

#[test]
fn golden_log_still_verifies_and_reads_the_same() {
    if is_role(ROLE) {
        return;
    }
    let update = update_mode();
    if update == Update::Log {
        workload(); // The golden log is replaced first.
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let key = copy_with_mode("chain.key", dir, 0o400);
    let log = copy_with_mode("log.jsonl", dir, 0o600);
    copy_with_mode("log.jsonl.state", dir, 0o600);

    let dir_text = dir.to_str().expect("UTF-8 temp dir");
    let normalise = |s: &str| s.replace(dir_text, "<DIR>");
    // (arguments, the golden file its stdout must equal; None: the golden log itself)
    let runs: [(&[&str], Option<&str>); 7] = [
        (&["verify"], Some("verify.txt")),
        (&["verify", "--json"], Some("verify.json")),
        (&["show"], Some("show.txt")),
        // With no filter, `show --json` prints the log's lines unchanged: the log itself.
        (&["show", "--json"], None),
        (
            &["show", "--json", "--failures"],
            Some("show-failures.json"),
        ),
        (&["report"], Some("report.txt")),
        (&["report", "--json"], Some("report.json")),
    ];
    let golden_log = fs::read_to_string(golden_dir().join("log.jsonl")).unwrap();
    let mut failures = Vec::new();
    let mut status = String::new();
    for (args, expected) in runs {
        let ran = p11audit(&key, args, &log);
        if args == ["verify"] && ran.code != 0 {
            // Whatever the update mode: the golden log must verify.
            failures.push(format!("the golden log does not verify:\n{}", ran.dump()));
        }
        let options: String = args[1..].iter().map(|a| format!(" {a}")).collect();
        status.push_str(&format!(
            "$ p11audit {} --key-file <DIR>/chain.key{options} <DIR>/log.jsonl > {}\n\
             exit status: {}\n--- stderr ---\n{}\n",
            args[0],
            expected.unwrap_or("(the log itself)"),
            ran.code,
            normalise(&ran.stderr)
        ));
        match expected {
            Some(name) => failures.extend(check_golden(
                name,
                &normalise(&ran.stdout),
                update != Update::No,
            )),
            None if ran.stdout != golden_log => failures.push(format!(
                "p11audit {} is not log.jsonl byte for byte (- log.jsonl, + output):\n{}",
                args.join(" "),
                diff(&golden_log, &ran.stdout)
            )),
            None => {}
        }
    }
    failures.extend(check_golden("status.txt", &status, update != Update::No));
    assert_no_failures(failures);
}
