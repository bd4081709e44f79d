//! verify_bench: how long verifying (and reporting on) a large log takes.
//!
//!   cargo run --release --example verify_bench [-- RECORDS [DIR]]
//!
//! Writes a realistic log of RECORDS records (default 1,000,000) to DIR (default: a temporary
//! directory under /tmp) with the crate's own record model and sealing code: several
//! processes, each attaching, opening a session, logging in and then signing in a loop the
//! way pkcs11-tool and OpenSSL do (`C_SignInit` intent and outcome, a length query, `C_Sign`),
//! with a few attribute reads, searches, failed logins and key generations in between. Then it
//! times, three times each, `verify_files`, `report` and `show` (both verify in the same pass)
//! and prints the median, in seconds and records per second.

use p11audit::format::chain::{ChainKey, ZERO_MAC_HEX};
use p11audit::format::line::seal_into;
use p11audit::format::record::{
    rfc3339_micros, Bytes, Event, MechanismSummary, Named, ObjectIdentity, OutputDisposition,
    ProcessIdentity, Record, TokenRef,
};
use p11audit::format::state::ChainState;
use p11audit::reader::report::{report, ReportOptions};
use p11audit::reader::show::{show, Filter, ShowOptions};
use p11audit::reader::verify::{verify_files, VerifyOptions};
use p11audit::reader::{Period, Progress};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const KEY: [u8; 32] = [0x5a; 32];

/// Writes records one by one, sealing each into the chain.
struct Gen {
    out: std::io::BufWriter<std::fs::File>,
    line: Vec<u8>,
    key: ChainKey,
    prev: String,
    seq: u64,
    /// Microseconds since the epoch of the next record.
    clock: u64,
}

impl Gen {
    fn push(&mut self, mut r: Record) {
        self.clock += 37;
        r.ts = rfc3339_micros(self.clock / 1_000_000, (self.clock % 1_000_000) as u32);
        self.line.clear();
        self.prev = seal_into(
            &mut self.line,
            &self.key,
            self.seq,
            &self.prev,
            &r.to_body(),
        );
        self.key.evolve();
        self.seq += 1;
        self.out.write_all(&self.line).unwrap();
    }
}

fn named(n: &'static str) -> Named {
    Named::new(Some(n), 0)
}

fn token() -> TokenRef {
    TokenRef {
        label: Bytes::from_slice(b"signing-token"),
        serial: Bytes::from_slice(b"83b38d1dd7450d88"),
    }
}

fn signing_key(i: u64) -> ObjectIdentity {
    ObjectIdentity {
        handle: Some(2 + i % 4),
        class: Some(named("CKO_PRIVATE_KEY")),
        key_type: Some(named("CKK_EC")),
        label: Some(Bytes::from_slice(
            format!("service-key-{}", i % 4).as_bytes(),
        )),
        id: Some(Bytes::hex(&[0x10, (i % 4) as u8])),
    }
}

/// A record of `who` on session 1 of the token, logged in as user.
fn rec(who: &ProcessIdentity, ev: Event, f: &'static str) -> Record {
    let mut r = Record::new(who, u64::from(who.pid), ev, Some(f));
    r.detail.slot = Some(1_464_143_240);
    r.detail.token = Some(Arc::new(token()));
    r.detail.session = Some(1);
    r.detail.login = Some("user");
    r
}

fn outcome(mut r: Record, rv: &'static str, dur: u64, intent: Option<u64>) -> Record {
    r.ev = Event::Outcome;
    r.detail.rv = Some(named(rv));
    r.detail.dur_us = Some(dur);
    r.detail.intent = intent;
    r
}

/// One acting call: intent, then its outcome.
fn acting(g: &mut Gen, r: Record, rv: &'static str, dur: u64) {
    let intent_seq = g.seq;
    let mut intent = r.clone();
    intent.ev = Event::Intent;
    g.push(intent);
    g.push(outcome(r, rv, dur, Some(intent_seq)));
}

fn generate(path: &Path, n: u64) -> ChainState {
    let file = std::fs::File::create(path).unwrap();
    let mut g = Gen {
        out: std::io::BufWriter::with_capacity(1 << 20, file),
        line: Vec::with_capacity(2048),
        key: ChainKey::from_bytes(KEY),
        prev: ZERO_MAC_HEX.to_string(),
        seq: 0,
        clock: 1_795_662_765_000_000,
    };
    let first = ProcessIdentity {
        host: "signer-01".into(),
        pid: 4000,
        uid: 998,
        exe: "/usr/bin/openssl".into(),
        auid: None,
        ses: None,
        peer: None,
    };
    let mut start = Record::new(&first, 4000, Event::Start, None);
    start.detail.note = Some("new chain".into());
    g.push(start);
    let mut i: u64 = 0;
    let mut proc_no: u32 = 0;
    while g.seq < n {
        proc_no += 1;
        let who = ProcessIdentity {
            host: "signer-01".into(),
            pid: 4000 + proc_no,
            uid: 998 + proc_no % 3,
            exe: [
                "/usr/bin/openssl",
                "/usr/sbin/nginx",
                "/usr/bin/pkcs11-tool",
            ][proc_no as usize % 3]
                .into(),
            auid: None,
            ses: None,
            peer: None,
        };
        let mut attach = Record::new(
            &who,
            u64::from(who.pid),
            Event::Attach,
            Some("C_Initialize"),
        );
        attach.detail.note = Some("provider /usr/lib/softhsm/libsofthsm2.so".into());
        g.push(attach);
        acting(
            &mut g,
            Record::new(
                &who,
                u64::from(who.pid),
                Event::Intent,
                Some("C_Initialize"),
            ),
            "CKR_OK",
            1600,
        );
        let mut open = rec(&who, Event::Intent, "C_OpenSession");
        open.detail.flags = Some(6);
        acting(&mut g, open, "CKR_OK", 15);
        if proc_no.is_multiple_of(7) {
            let mut bad = rec(&who, Event::Intent, "C_Login");
            bad.detail.user_type = Some(named("CKU_USER"));
            acting(&mut g, bad, "CKR_PIN_INCORRECT", 1500);
        }
        let mut login = rec(&who, Event::Intent, "C_Login");
        login.detail.user_type = Some(named("CKU_USER"));
        acting(&mut g, login, "CKR_OK", 5600);
        // About 1,000 records per process.
        for _ in 0..160 {
            i += 1;
            let mech = MechanismSummary {
                mechanism: named("CKM_ECDSA"),
                param_len: None,
                params: Default::default(),
            };
            let mut init = rec(&who, Event::Intent, "C_SignInit");
            init.detail.mechanism = Some(Arc::new(mech));
            init.detail.key = Some(Arc::new(signing_key(i)));
            acting(&mut g, init.clone(), "CKR_OK", 100);
            let mut query = outcome(init.clone(), "CKR_OK", 2, None);
            query.function = Some("C_Sign");
            query.detail.in_len = Some(32);
            query.detail.out_len = Some(64);
            query.detail.out = Some(OutputDisposition::LengthQuery);
            g.push(query.clone());
            query.detail.dur_us = Some(85);
            query.detail.out = Some(OutputDisposition::Returned);
            g.push(query);
            if i.is_multiple_of(10) {
                let mut get = outcome(
                    rec(&who, Event::Outcome, "C_GetAttributeValue"),
                    "CKR_OK",
                    4,
                    None,
                );
                get.detail.key = Some(Arc::new(signing_key(i + 1)));
                get.detail.out = Some(OutputDisposition::Returned);
                g.push(get);
            }
        }
        if proc_no.is_multiple_of(5) {
            let mut gen = rec(&who, Event::Intent, "C_GenerateKeyPair");
            gen.detail.mechanism = Some(Arc::new(MechanismSummary {
                mechanism: named("CKM_EC_KEY_PAIR_GEN"),
                param_len: None,
                params: Default::default(),
            }));
            let intent_seq = g.seq;
            g.push(gen.clone());
            let mut done = outcome(gen, "CKR_OK", 120_000, Some(intent_seq));
            let label = format!("rotated-{proc_no}");
            for (h, class) in [(100, "CKO_PUBLIC_KEY"), (101, "CKO_PRIVATE_KEY")] {
                done.detail.created.push(Arc::new(ObjectIdentity {
                    handle: Some(h),
                    class: Some(named(class)),
                    key_type: Some(named("CKK_EC")),
                    label: Some(Bytes::from_slice(label.as_bytes())),
                    id: Some(Bytes::hex(&proc_no.to_be_bytes())),
                }));
            }
            g.push(done);
        }
        g.push(outcome(
            rec(&who, Event::Outcome, "C_CloseSession"),
            "CKR_OK",
            8,
            None,
        ));
        g.push(outcome(
            Record::new(&who, u64::from(who.pid), Event::Outcome, Some("C_Finalize")),
            "CKR_OK",
            25,
            None,
        ));
        g.push(Record::new(
            &who,
            u64::from(who.pid),
            Event::Close,
            Some("C_Finalize"),
        ));
    }
    g.out.flush().unwrap();
    ChainState {
        next_seq: g.seq,
        prev_mac: g.prev,
        key: g.key,
        log_dev: 0,
        log_ino: 0,
        log_size: 0,
        lost_reported: 0,
        tree: None,
    }
}

/// CPU time this process has used (user + system), in seconds, from /proc/self/stat (clock
/// ticks of 1/100 s).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
}

/// Median of three timed runs of `f`: (wall seconds, CPU seconds).
fn median3(mut f: impl FnMut()) -> (f64, f64) {
    let mut t: Vec<(f64, f64)> = (0..3)
        .map(|_| {
            let (s, c) = (Instant::now(), cpu_secs());
            f();
            (s.elapsed().as_secs_f64(), cpu_secs() - c)
        })
        .collect();
    t.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    t[1]
}

/// `what: 2.15 s (CPU 2.10 s), 465,000 records/s`.
fn print_time(what: &str, (wall, cpu): (f64, f64), records: u64) {
    println!(
        "{what}: {wall:.2} s (CPU {cpu:.2} s), {:.0} records/s (median of 3)",
        records as f64 / wall
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|a| {
            a.replace([',', '_'], "")
                .parse()
                .expect("RECORDS: a number")
        })
        .unwrap_or(1_000_000);
    let (dir, temp) = match args.next() {
        Some(d) => (PathBuf::from(d), false),
        None => {
            let d =
                std::env::temp_dir().join(format!("p11audit-verify-bench-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            (d, true)
        }
    };
    let log = dir.join("bench.jsonl");
    let t = Instant::now();
    let state = generate(&log, n);
    let bytes = std::fs::metadata(&log).unwrap().len();
    let records = state.next_seq;
    println!(
        "log: {records} records, {:.1} MiB ({:.0} bytes/record), written in {:.1} s",
        bytes as f64 / (1u64 << 20) as f64,
        bytes as f64 / records as f64,
        t.elapsed().as_secs_f64()
    );
    let paths = [log.clone()];
    let opts = VerifyOptions::new(ChainKey::from_bytes(KEY), Some(state));

    let secs = median3(|| {
        let r = verify_files(&paths, &opts).unwrap();
        assert!(r.intact, "{:?}", r.problem);
        assert_eq!(r.summary.records, records);
    });
    print_time("verify", secs, records);

    let secs = median3(|| {
        let r = report(
            &paths,
            &opts,
            &ReportOptions::new(Period::default()),
            &mut Progress::new(false, &paths),
        )
        .unwrap();
        assert!(r.verification.intact);
        assert_eq!(r.records, records);
    });
    print_time("report (verifies in the same pass)", secs, records);

    let secs = median3(|| {
        let sink = std::io::sink();
        let opts_show = ShowOptions::new(Filter::default(), false);
        let s = show(
            &paths,
            &opts,
            &opts_show,
            sink,
            &mut Progress::new(false, &paths),
        )
        .unwrap();
        assert!(s.verify.unwrap().intact);
    });
    print_time(
        "show, every call, to a sink (verifies in the same pass)",
        secs,
        records,
    );

    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
