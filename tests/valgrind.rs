//! The shim under valgrind: the test workflow is clean for the shim's own code.
//!
//! Programs load libp11audit.so in front of SoftHSM and run under memcheck (`--leak-check=no`:
//! the shim deliberately never unloads the provider and keeps its runtime for the life of the
//! process). Valgrind writes its report as XML, and every error whose stack has a frame in
//! libp11audit.so fails the test; errors with no such frame (pkcs11-tool's, SoftHSM's or
//! OpenSSL's own) are printed and tolerated. Nothing is suppressed.
//!
//! - tests/c/dlopen_client.c (C_Initialize, C_GetInfo, C_GetSlotList, C_OpenSession, C_Login,
//!   C_GenerateRandom, C_Logout, C_CloseSession, C_Finalize, dlclose) under
//!   `--error-exitcode=99`: it must exit 0, so valgrind found no error at all.
//! - pkcs11-tool (opensc), one run per operation: an EC key pair and an AES key generated,
//!   `--test`, SHA-256, ECDSA sign and verify, AES-CBC-PAD encrypt and decrypt,
//!   `--list-objects`. Each must exit 0 (no `--error-exitcode`: pkcs11-tool and OpenSSL have
//!   errors of their own) and the decrypted data must match.
//!
//! OPENSSL_ia32cap=0:0 makes OpenSSL use its portable C code. With its AES-NI/AVX assembly,
//! which SoftHSM uses to decrypt the attributes it stores, valgrind 3.19 reports values as
//! undefined that then flow into everything that reads those attributes: 68 errors with
//! pkcs11-tool --test directly on SoftHSM, and through the shim ~230 more in the shim's frames
//! (building and sealing records from the attributes), all with their origin in libcrypto.so.3
//! (`--track-origins=yes`). With the portable code, pkcs11-tool --test has the same 16 errors
//! (OpenSSL encrypting pkcs11-tool's uninitialised buffers) directly and through the shim, and
//! none in the shim.
//!
//! Needs valgrind, cc, pkcs11-tool and SoftHSM (scripts/install-deps.sh). About 30 s.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// One error of valgrind's XML report: its kind, what it says, and its frames as "obj: fn".
struct VgError {
    kind: String,
    what: String,
    frames: Vec<String>,
    in_shim: bool,
}

/// The text of every `<tag>...</tag>` in `s`, in order.
fn tags<'a>(s: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

fn parse_errors(xml: &str) -> Vec<VgError> {
    tags(xml, "error")
        .into_iter()
        .map(|e| {
            let frames: Vec<String> = tags(e, "frame")
                .into_iter()
                .map(|f| {
                    let obj = tags(f, "obj").first().copied().unwrap_or("?");
                    let func = tags(f, "fn").first().copied().unwrap_or("?");
                    format!("{obj}: {func}")
                })
                .collect();
            VgError {
                kind: tags(e, "kind").first().copied().unwrap_or("?").to_string(),
                what: tags(e, "what")
                    .first()
                    .or(tags(e, "text").first())
                    .copied()
                    .unwrap_or("?")
                    .to_string(),
                in_shim: tags(e, "obj")
                    .iter()
                    .any(|o| o.ends_with("/libp11audit.so")),
                frames,
            }
        })
        .collect()
}

/// Runs `program args` under memcheck with the fixture's environment; fails the test on a
/// non-zero exit or on any error with a frame in libp11audit.so. Returns the number of errors
/// outside the shim.
fn memcheck(fx: &Fixture, what: &str, program: &Path, args: &[&str], extra: &[&str]) -> usize {
    let work = fx.dir.path();
    let xml = work.join(format!("{what}.valgrind.xml"));
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=memcheck", "--leak-check=no", "--xml=yes"])
        .arg(format!("--xml-file={}", xml.display()))
        .args(extra)
        .arg(program)
        .args(args)
        .current_dir(work)
        .env("OPENSSL_ia32cap", "0:0");
    set_env(&mut cmd, &fx.env());
    let started = Instant::now();
    let run = run_with_timeout(cmd, work, what);
    let report = fs::read_to_string(&xml)
        .unwrap_or_else(|e| panic!("{what}: no valgrind report {}: {e}", xml.display()));
    let errors = parse_errors(&report);
    let (shim, other): (Vec<_>, Vec<_>) = errors.iter().partition(|e| e.in_shim);
    eprintln!(
        "{what}: {}, {} valgrind errors in libp11audit.so, {} elsewhere, {:?}",
        run.status,
        shim.len(),
        other.len(),
        started.elapsed()
    );
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for e in &other {
        let top = e.frames.iter().take(3).cloned().collect::<Vec<_>>();
        *seen
            .entry(format!("{} {}: {}", e.kind, e.what, top.join(" <- ")))
            .or_default() += 1;
    }
    for (e, n) in seen {
        eprintln!("  not the shim's ({n}x): {e}");
    }
    let shown: Vec<String> = shim
        .iter()
        .take(5)
        .map(|e| format!("{} {}:\n    {}", e.kind, e.what, e.frames.join("\n    ")))
        .collect();
    assert!(
        shim.is_empty(),
        "{what}: valgrind reports {} errors with frames in libp11audit.so (report: {}):\n{}",
        shim.len(),
        xml.display(),
        shown.join("\n")
    );
    assert!(
        run.status.success(),
        "{what} failed under valgrind\n{}",
        run.dump()
    );
    other.len()
}

fn require_valgrind() {
    let found = Command::new("valgrind")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "valgrind is not installed: run scripts/install-deps.sh"
    );
}

#[test]
fn dlopen_client_through_the_shim_under_valgrind() {
    require_valgrind();
    let fx = Fixture::new();
    let exe = compile_c(fx.dir.path(), "dlopen_client", &["-ldl"]);
    let lib = shim_library();
    let lib = lib.to_str().expect("utf-8 path");
    let others = memcheck(
        &fx,
        "dlopen_client",
        &exe,
        &[lib, USER_PIN],
        &["--error-exitcode=99"],
    );
    assert_eq!(others, 0, "--error-exitcode=99 passed with errors?");
    fx.assert_verifies("the log written under valgrind");
    let log = fs::read_to_string(&fx.log).expect("read log");
    for f in ["C_Login", "C_GenerateRandom", "C_Finalize"] {
        assert!(log.contains(&format!(r#""fn":"{f}""#)), "no {f} record");
    }
}

#[test]
fn pkcs11_tool_through_the_shim_under_valgrind() {
    require_valgrind();
    let fx = Fixture::new();
    let work = fx.dir.path();
    fs::write(work.join("data"), b"audited under valgrind\n").expect("write data");
    let lib = shim_library();
    let lib = lib.to_str().expect("utf-8 path");
    let iv = "00112233445566778899aabbccddeeff";
    let steps: &[(&str, &[&str])] = &[
        (
            "keypairgen",
            &[
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--label",
                "vg-ec",
                "--id",
                "01",
            ],
        ),
        (
            "keygen",
            &[
                "--keygen",
                "--key-type",
                "AES:32",
                "--label",
                "vg-aes",
                "--id",
                "02",
            ],
        ),
        ("test", &["--test"]),
        (
            "hash",
            &[
                "--hash",
                "--mechanism",
                "SHA256",
                "--input-file",
                "data",
                "--output-file",
                "hash",
            ],
        ),
        (
            "sign",
            &[
                "--sign",
                "--mechanism",
                "ECDSA",
                "--id",
                "01",
                "--input-file",
                "hash",
                "--output-file",
                "sig",
            ],
        ),
        (
            "verify",
            &[
                "--verify",
                "--mechanism",
                "ECDSA",
                "--id",
                "01",
                "--input-file",
                "hash",
                "--signature-file",
                "sig",
            ],
        ),
        (
            "encrypt",
            &[
                "--encrypt",
                "--mechanism",
                "AES-CBC-PAD",
                "--iv",
                iv,
                "--id",
                "02",
                "--input-file",
                "data",
                "--output-file",
                "enc",
            ],
        ),
        (
            "decrypt",
            &[
                "--decrypt",
                "--mechanism",
                "AES-CBC-PAD",
                "--iv",
                iv,
                "--id",
                "02",
                "--input-file",
                "enc",
                "--output-file",
                "dec",
            ],
        ),
        ("list-objects", &["--list-objects"]),
    ];
    let tool = Path::new("pkcs11-tool");
    for (what, step) in steps {
        let mut args = vec!["--module", lib, "--login", "--pin", USER_PIN];
        args.extend_from_slice(step);
        memcheck(&fx, &format!("pkcs11-tool-{what}"), tool, &args, &[]);
    }
    assert_eq!(
        fs::read(work.join("dec")).expect("decrypted"),
        fs::read(work.join("data")).expect("data")
    );
    fx.assert_verifies("the log written under valgrind");
}

/// The report parser tells an error through the shim from one that is not.
#[test]
fn report_parser_finds_frames_in_the_shim() {
    let xml = "<valgrindoutput><args><argv><arg>/x/libp11audit.so</arg></argv></args>\
        <error><kind>UninitCondition</kind><what>Conditional jump</what><stack>\
        <frame><obj>/usr/lib/libc.so.6</obj><fn>memmove</fn></frame>\
        <frame><obj>/t/deps/libp11audit.so</obj><fn>p11audit::x</fn></frame></stack></error>\
        <error><kind>Leak_DefinitelyLost</kind><xwhat><text>1 bytes lost</text></xwhat><stack>\
        <frame><obj>/usr/bin/pkcs11-tool</obj></frame></stack></error></valgrindoutput>";
    let errors = parse_errors(xml);
    assert_eq!(errors.len(), 2);
    assert!(errors[0].in_shim && !errors[1].in_shim);
    assert_eq!(errors[0].kind, "UninitCondition");
    assert_eq!(errors[1].what, "1 bytes lost");
    assert_eq!(errors[0].frames[1], "/t/deps/libp11audit.so: p11audit::x");
    assert_eq!(errors[1].frames[0], "/usr/bin/pkcs11-tool: ?");
}
