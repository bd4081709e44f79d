//! append_bench: the cost of the audit path without a provider, per step.
//!
//!   cargo run --release --example append_bench [-- DIR]
//!
//! Prints the median cost of: building and serializing one typical record, sealing it
//! (HMAC + key evolution), one append of 1 and of 3 records to a log in a new directory inside
//! DIR (default: the temporary directory; removed at the end), and the system calls an append makes, each alone, including
//! appends of several sizes to a growing file with and without space reserved ahead, and, for
//! comparison, stores through a shared mapping of the file (which p11audit does not use).

#[path = "common/median.rs"]
mod median;
use median::median_ns;
use p11audit::format::chain::ChainKey;
use p11audit::format::record::{
    Bytes, Event, MechanismSummary, Named, ObjectIdentity, ProcessIdentity, Record, TokenRef,
};
use p11audit::writer::audit_log::{AuditLog, LogSettings};
use std::sync::Arc;
use std::time::Instant;

fn typical(who: &ProcessIdentity) -> Record {
    let mut r = Record::new(who, 1234, Event::Outcome, Some("C_Sign"));
    r.detail.rv = Some(Named::new(Some("CKR_OK"), 0));
    r.detail.dur_us = Some(38);
    r.detail.slot = Some(1_464_143_240);
    r.detail.token = Some(Arc::new(TokenRef {
        label: Bytes::from_slice(b"p11audit-test"),
        serial: Bytes::from_slice(b"83b38d1dd7450d88"),
    }));
    r.detail.session = Some(1);
    r.detail.login = Some("user");
    r.detail.mechanism = Some(Arc::new(MechanismSummary {
        mechanism: Named::new(Some("CKM_ECDSA"), 0x1041),
        param_len: None,
        params: Default::default(),
    }));
    r.detail.key = Some(Arc::new(ObjectIdentity {
        handle: Some(2),
        class: Some(Named::new(Some("CKO_PRIVATE_KEY"), 3)),
        key_type: Some(Named::new(Some("CKK_EC"), 3)),
        label: Some(Bytes::from_slice(b"demo")),
        id: Some(Bytes::hex(&[1])),
    }));
    r.detail.in_len = Some(32);
    r.detail.out_len = Some(64);
    r
}

fn main() {
    // A directory of its own inside DIR (which picks the filesystem), removed at the end:
    // never DIR itself, which may hold anything.
    let parent = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("p11audit-append-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let key_path = dir.join("key");
    let _ = std::fs::remove_file(&key_path);
    std::fs::write(&key_path, "11".repeat(32)).unwrap();
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o400),
    )
    .unwrap();
    let log_path = dir.join("bench.jsonl");
    let _ = std::fs::remove_file(&log_path);
    let _ = std::fs::remove_file(dir.join("bench.jsonl.state"));
    let who = ProcessIdentity {
        host: "host".into(),
        pid: 4242,
        uid: 0,
        exe: "/usr/bin/app".into(),
        auid: Some(1000),
        ses: Some(3),
        peer: None,
    };
    let settings = LogSettings {
        log_path: log_path.clone(),
        key_file: Some(key_path),
        log_mode: 0o600,
        sync_always: false,
        rotate_bytes: None,
        checkpoint: None,
    };
    let mut log = AuditLog::open(&settings, &who).expect("open log");

    let body = typical(&who).to_body();
    println!("record body: {} bytes", body.len());
    let build = median_ns(
        || drop(std::hint::black_box(typical(&who)).to_body()),
        20_000,
    );
    println!("build + serialize one record: {build:.0} ns");
    let mut key = ChainKey::from_bytes([7; 32]);
    let mut out = Vec::with_capacity(1024);
    let seal = median_ns(
        || {
            out.clear();
            p11audit::format::line::seal_into(
                &mut out,
                &key,
                12345,
                p11audit::format::chain::ZERO_MAC_HEX,
                &body,
            );
            key.evolve();
        },
        20_000,
    );
    println!("seal one record (HMAC + evolve): {seal:.0} ns");
    // What every append adds besides its records: the state slot (with its SHA-256 check
    // line) and the key's fingerprint, computed when the state is stored and again when the
    // key is read back at the next append.
    let state =
        p11audit::format::state::ChainState::genesis(ChainKey::from_bytes([9; 32]), 1, 2, 3);
    let encode = median_ns(|| state.encode(), 20_000);
    println!("encode the state slot (check line included): {encode:.0} ns");
    let fingerprint = median_ns(|| key.fingerprint(), 20_000);
    println!("key fingerprint (twice per append): {fingerprint:.0} ns");
    let one = [body.clone()];
    let three = [body.clone(), body.clone(), body.clone()];
    let template = typical(&who);
    let a1 = median_ns(|| log.append(&one, &template).unwrap(), 4_000);
    println!("append 1 record (lock, check, write, state): {a1:.0} ns");
    let a3 = median_ns(|| log.append(&three, &template).unwrap(), 4_000);
    println!("append 3 records in one write: {a3:.0} ns");
    println!("syscalls on this filesystem:");
    syscalls(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The system calls one append makes, alone, on the same filesystem.
fn syscalls(dir: &std::path::Path) {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let p = dir.join("raw.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&p)
        .unwrap();
    let s = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(dir.join("raw.state"))
        .unwrap();
    let line = vec![b'x'; 419];
    let st = vec![b'y'; 300];
    println!(
        "  flock pair: {:.0} ns",
        median_ns(
            || {
                s.lock().unwrap();
                s.unlock().unwrap();
            },
            20_000
        )
    );
    println!(
        "  fstat: {:.0} ns",
        median_ns(|| f.metadata().unwrap(), 20_000)
    );
    println!(
        "  write 419 B O_APPEND: {:.0} ns",
        median_ns(|| f.write_all(&line).unwrap(), 20_000)
    );
    println!(
        "  pwrite 300 B: {:.0} ns",
        median_ns(|| s.write_all_at(&st, 0).unwrap(), 20_000)
    );
    // Appending allocates the file's blocks and page cache as it grows, so the cost of a write
    // depends on its size and on whether the space was reserved ahead (what the writer does).
    for size in [600usize, 1250, 2500, 4096] {
        let mut cost = [0.0; 2];
        for (reserve, slot) in [(false, 0), (true, 1)] {
            let p = dir.join(format!("grow-{size}-{reserve}.log"));
            let _ = std::fs::remove_file(&p);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .unwrap();
            let n = 4_000;
            if reserve {
                // 25 batches of n writes (median_ns), and some room.
                let _ = p11audit::os::preallocate(&f, 0, (26 * n * size) as u64);
            }
            let line = vec![b'x'; size];
            cost[slot] = median_ns(|| f.write_all(&line).unwrap(), n);
            let _ = std::fs::remove_file(&p);
        }
        println!(
            "  write {size} B growing the file: {:.0} ns; into reserved space: {:.0} ns",
            cost[0], cost[1]
        );
    }
    mapped_stores(dir);
}

/// What a log written through a shared mapping (instead of `write`) would cost per record:
/// a copy into the mapped file, after the space was either reserved with `fallocate` or
/// written with zeros ahead (MiB at a time). Measured only, not used by p11audit:
/// docs/PERFORMANCE.md ("Why the log is written with `write`") says why.
fn mapped_stores(dir: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    const SIZE: usize = 950; // about half of an HMAC operation's log bytes
    const N: usize = 100_000;
    let len = SIZE * N;
    for prewrite_zeros in [false, true] {
        let p = dir.join("mapped.log");
        let _ = std::fs::remove_file(&p);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let t = Instant::now();
        if prewrite_zeros {
            let zeros = vec![0u8; 1 << 20];
            for at in (0..len).step_by(zeros.len()) {
                f.write_all_at(&zeros, at as u64).unwrap();
            }
        } else {
            p11audit::os::preallocate(&f, 0, len as u64).unwrap();
            f.set_len(len as u64).unwrap();
        }
        let prepare = t.elapsed().as_nanos() as f64 / N as f64;
        // SAFETY: a fresh shared mapping of `len` bytes of a file this function alone uses,
        // at least `len` long; unmapped below before the file is removed.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap");
        let line = vec![b'x'; SIZE];
        let t = Instant::now();
        for i in 0..N {
            // SAFETY: i * SIZE + SIZE <= len: inside the mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(line.as_ptr(), (map as *mut u8).add(i * SIZE), SIZE)
            };
        }
        let store = t.elapsed().as_nanos() as f64 / N as f64;
        // SAFETY: the mapping made above, not used after this.
        unsafe { libc::munmap(map, len) };
        let _ = std::fs::remove_file(&p);
        let how = if prewrite_zeros {
            "into zeros written ahead"
        } else {
            "into reserved (fallocate) space"
        };
        println!(
            "  store {SIZE} B through a shared mapping {how}: {store:.0} ns (+ {prepare:.0} ns per record to prepare the space)"
        );
    }
}
