//! Checks shared by the `cargo fuzz` targets in fuzz/ and the regression corpus test
//! (tests/fuzz_regression.rs). Each takes arbitrary bytes and panics if a property fails.
#![doc(hidden)]

use crate::format::chain::ChainKey;
use crate::format::line::{seal_into, split_line};
use crate::format::record::{Bytes, Event, ObjectIdentity, ProcessIdentity, Record, TokenRef};
use crate::reader::verify::{verify_files, VerifyOptions};
use cryptoki_sys as ck;

/// The verifier, fed an arbitrary audit file: it must not panic and must always report
/// (intact, or a problem, or an I/O error), with and without a state.
///
/// The input goes into one in-memory file per thread (a memfd, opened by the verifier as
/// `/proc/self/fd/N` like any other path), rewritten for each input: a new file on disk per
/// input made the fuzzer spend most of its time in the file system. The mac check never
/// passes (the fuzzer cannot forge a mac): `check_verifier_sealed` fuzzes what comes after.
pub fn check_verifier(data: &[u8]) {
    use std::os::unix::fs::FileExt;
    thread_local! {
        static INPUT: (std::fs::File, std::path::PathBuf) = memfd_input();
    }
    INPUT.with(|(file, path)| {
        file.set_len(0).expect("truncate the fuzz input file");
        file.write_all_at(data, 0).expect("write fuzz input");
        let mut opts = VerifyOptions::new(ChainKey::from_bytes([7; 32]), None);
        // Checking a line that claims seq s costs s - expected key evolutions, up to
        // max_seq_jump: at the default 10,000,000 one such line takes ~11 s in the fuzz build
        // (~3 s in a release build), and each would stall the fuzzer. Every branch is reached
        // with a small limit too.
        opts.max_seq_jump = 4096;
        if let Ok(report) = verify_files(std::slice::from_ref(path), &opts) {
            assert_eq!(report.intact, report.problem.is_none());
            serde_json::to_string(&report).expect("a report always serializes");
        }
    });
}

/// The verifier past the mac check. With a fixed key the fuzzer cannot forge a mac, so
/// `check_verifier` never gets beyond the first line's mac; here the input's lines are sealed
/// into a valid chain (with K_0 = [7; 32]) before the verifier sees them, so the record parser,
/// the seq and prev checks, the summary and the state check are fuzzed too.
///
/// Each line of the input is one step, chosen by its first byte (mod 8):
/// - 0-4: the rest is a record body (`{...}`), sealed as the next seq;
/// - 5: the previous sealed line again (a duplicate);
/// - 6: a seq skipped (no line written);
/// - 7: the rest written as it is, unsealed.
///
/// A body that is not `{...}` or not UTF-8 is written unsealed. With the first input byte odd,
/// the verifier also gets the state a writer would have left after the last line.
///
/// Properties: no panic, a consistent report, and if the report says intact then the log is
/// exactly the sealed lines (no duplicate or unsealed line, no skip before a later line, and
/// with the state no skip at all) and all of them were counted. Returns whether it was intact.
pub fn check_verifier_sealed(data: &[u8]) -> bool {
    use crate::format::chain::ZERO_MAC_HEX;
    use crate::format::state::ChainState;
    use std::os::unix::fs::FileExt;
    thread_local! {
        static INPUT: (std::fs::File, std::path::PathBuf) = memfd_input();
    }
    let with_state = data.first().is_some_and(|b| b & 1 == 1);
    let k0 = ChainKey::from_bytes([7; 32]);
    let mut key = k0.clone();
    let mut seq = 0u64;
    let mut prev = ZERO_MAC_HEX.to_string();
    let mut out: Vec<u8> = Vec::new();
    let mut last_line: Option<Vec<u8>> = None;
    let mut sealed = 0u64;
    // Something other than sealed lines in order is in the file (or, for a skip, will be once
    // another line follows).
    let mut tampered = false;
    let mut skipped = false;
    for chunk in data.split(|&b| b == b'\n').take(64) {
        let Some((&op, rest)) = chunk.split_first() else {
            continue;
        };
        let body = std::str::from_utf8(rest)
            .ok()
            .filter(|b| b.len() > 2 && b.starts_with('{') && b.ends_with('}'));
        match (op % 8, body) {
            (0..=4, Some(body)) => {
                tampered |= skipped;
                let start = out.len();
                prev = seal_into(&mut out, &key, seq, &prev, body);
                last_line = Some(out[start..].to_vec());
                key.evolve();
                seq += 1;
                sealed += 1;
            }
            (5, _) => {
                if let Some(line) = &last_line {
                    out.extend_from_slice(line);
                    tampered = true;
                }
            }
            (6, _) => {
                seq += 1;
                key.evolve();
                skipped = true;
            }
            _ => {
                if !rest.is_empty() {
                    out.extend_from_slice(rest);
                    out.push(b'\n');
                    tampered = true;
                }
            }
        }
    }
    let state = with_state.then(|| ChainState {
        next_seq: seq,
        prev_mac: prev.clone(),
        key: key.clone(),
        log_dev: 0,
        log_ino: 1,
        log_size: out.len() as u64,
        lost_reported: 0,
        tree: None,
    });
    INPUT.with(|(file, path)| {
        file.set_len(0).expect("truncate the fuzz input file");
        file.write_all_at(&out, 0).expect("write fuzz input");
        let opts = VerifyOptions::new(k0, state);
        let report = verify_files(std::slice::from_ref(path), &opts).expect("a memfd reads");
        assert_eq!(report.intact, report.problem.is_none());
        serde_json::to_string(&report).expect("a report always serializes");
        if report.intact {
            assert!(
                !tampered,
                "intact, but the log is not just the sealed lines"
            );
            assert!(
                !(with_state && skipped),
                "intact, but the state expects more"
            );
            assert_eq!(
                report.summary.records, sealed,
                "intact, but not every record counted"
            );
        }
        report.intact
    })
}

/// An anonymous in-memory file and a path that opens it.
fn memfd_input() -> (std::fs::File, std::path::PathBuf) {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a NUL-terminated name and valid flags; the descriptor is owned by the File.
    let fd = unsafe { libc::memfd_create(c"p11audit-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    (file, path)
}

/// Arbitrary templates and mechanism parameters through the argument decoders, and the
/// resulting record through the encoder: the output is always one valid JSON line that seals
/// and splits back.
pub fn check_decoders_and_encoder(data: &[u8]) {
    let mut chunks = data.split(|&b| b == 0xff);
    let mut next = || chunks.next().unwrap_or(&[]);
    let label = next().to_vec();
    let id = next().to_vec();

    // A template: each chunk is one attribute, its first 2 bytes pick the type.
    let mut values: Vec<Vec<u8>> = Vec::new();
    let mut types = Vec::new();
    for _ in 0..8 {
        let c = next();
        let t = match c {
            [a, b, ..] => u64::from(*a) | (u64::from(*b) << 8),
            _ => 0,
        };
        types.push(t);
        values.push(c.get(2..).unwrap_or(&[]).to_vec());
    }
    let mut attrs: Vec<ck::CK_ATTRIBUTE> = types
        .iter()
        .zip(values.iter_mut())
        .map(|(t, v)| ck::CK_ATTRIBUTE {
            type_: *t as ck::CK_ATTRIBUTE_TYPE,
            pValue: if v.is_empty() {
                std::ptr::null_mut()
            } else {
                v.as_mut_ptr() as *mut _
            },
            ulValueLen: v.len() as ck::CK_ULONG,
        })
        .collect();
    // SAFETY: every pValue points to ulValueLen bytes owned by `values`.
    let template = unsafe {
        crate::shim::args::template(
            attrs.as_mut_ptr(),
            attrs.len() as ck::CK_ULONG,
            true,
            |_| None,
        )
    };

    // A mechanism: type from the next chunk, parameter bytes from the one after.
    let m = next();
    let mech_type = m
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let mut param = next().to_vec();
    let mech = ck::CK_MECHANISM {
        mechanism: mech_type as ck::CK_MECHANISM_TYPE,
        pParameter: if param.is_empty() {
            std::ptr::null_mut()
        } else {
            param.as_mut_ptr() as *mut _
        },
        ulParameterLen: param.len() as ck::CK_ULONG,
    };
    // SAFETY: pParameter points to ulParameterLen bytes owned by `param`.
    let mechanism = unsafe { crate::shim::args::mechanism(&mech) };

    let who = ProcessIdentity {
        host: String::from_utf8_lossy(next()).into(),
        pid: 1,
        uid: 0,
        exe: crate::format::record::ExePath::from_bytes(next()),
        auid: None,
        ses: None,
        peer: None,
    };
    let mut r = Record::new(&who, 2, Event::Intent, Some("C_CreateObject"));
    r.detail.template = Some(template);
    r.detail.mechanism = mechanism.map(std::sync::Arc::new);
    r.detail.token = Some(std::sync::Arc::new(TokenRef {
        label: Bytes::from_slice(&label),
        serial: Bytes::hex(&id),
    }));
    r.detail.key = Some(std::sync::Arc::new(ObjectIdentity {
        handle: Some(3),
        label: Some(Bytes::from_slice(&label)),
        id: Some(Bytes::hex(&id)),
        ..Default::default()
    }));
    let body = r.to_body();
    assert!(!body.contains('\n'), "a record body holds a newline");
    let parsed: serde_json::Value = serde_json::from_str(&body).expect("a body is valid JSON");
    assert_eq!(parsed["ev"], "intent");

    let key = ChainKey::from_bytes([9; 32]);
    let mut out = Vec::new();
    let mac = seal_into(&mut out, &key, 5, crate::format::chain::ZERO_MAC_HEX, &body);
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    let line = &out[..out.len() - 1];
    let split = split_line(line).expect("a sealed line splits");
    assert_eq!(split.mac, mac);
    let v: serde_json::Value = serde_json::from_slice(line).expect("a sealed line is valid JSON");
    assert_eq!(v["seq"], 5);
}

/// The parsers of what a witness receives from the network and `verify --vkey` reads from a
/// log (signed notes, checkpoints, keys, tlog-witness request bodies), fed arbitrary text:
/// none panics, what parses writes back to what parses the same, and the witness decides on
/// any request without panicking (a note signed by a known key is made from the input too, so
/// that the decision gets past the signature check).
pub fn check_checkpoint_parsers(data: &[u8]) {
    use crate::tlog::checkpoint::Checkpoint;
    use crate::tlog::note::{SignedNote, SignerKey, VerifierKey, ALG_COSIGNATURE_V1, ALG_ED25519};
    use crate::tlog::witness::{add_checkpoint, parse_request, Evidence, WitnessState};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(note) = SignedNote::parse(text) {
        assert_eq!(SignedNote::parse(&note.encode()).as_ref(), Ok(&note));
    }
    if let Ok(c) = Checkpoint::parse(text) {
        assert_eq!(Checkpoint::parse(&c.body()).as_ref(), Ok(&c));
    }
    if let Ok(k) = VerifierKey::parse(text) {
        assert_eq!(VerifierKey::parse(&k.encode()).as_ref(), Ok(&k));
    }
    if let Ok(k) = SignerKey::parse(text) {
        assert_eq!(
            SignerKey::parse(&k.encode()).map(|k| k.verifier()),
            Ok(k.verifier())
        );
    }
    let log = SignerKey::from_seed("fuzz.example/log", ALG_ED25519, &[3; 32]).expect("a key");
    let witness =
        SignerKey::from_seed("fuzz.example/w", ALG_COSIGNATURE_V1, &[4; 32]).expect("a key");
    let keys = [log.verifier()];
    let mut state = WitnessState::default();
    // A first checkpoint, so that the input's is checked against one.
    let first = Checkpoint::new(
        "fuzz.example/log",
        2,
        crate::tlog::tree::root_of(&[[1; 32], [2; 32]]),
    );
    let first_note = SignedNote {
        signatures: vec![log.sign_note(&first.body()).expect("signs")],
        text: first.body(),
    };
    add_checkpoint(
        &mut state,
        &keys,
        &witness,
        &first_note.encode(),
        &Evidence::Nothing,
        1,
    )
    .expect("the first checkpoint is accepted");
    if let Ok((evidence, note)) = parse_request(text) {
        let _ = add_checkpoint(&mut state.clone(), &keys, &witness, &note, &evidence, 2);
        if let Ok(c) = Checkpoint::parse(&note) {
            let signed = SignedNote {
                signatures: vec![log.sign_note(&c.body()).expect("signs")],
                text: c.body(),
            };
            let _ = add_checkpoint(
                &mut state.clone(),
                &keys,
                &witness,
                &signed.encode(),
                &evidence,
                2,
            );
        }
    }
    let lines = Evidence::Lines(
        text.lines()
            .enumerate()
            .map(|(i, l)| (i as u64, l.as_bytes().to_vec()))
            .collect(),
    );
    if let Ok(c) = Checkpoint::parse(text) {
        let signed = SignedNote {
            signatures: vec![log.sign_note(&c.body()).expect("signs")],
            text: c.body(),
        };
        let _ = add_checkpoint(&mut state, &keys, &witness, &signed.encode(), &lines, 3);
    }
}
