//! tree_bench: what the Merkle tree of the log and its signed checkpoints cost per record.
//!
//!   cargo run --release --example tree_bench [-- DIR]
//!
//! Prints the median cost of: adding one typical line to the tree (its leaf hash and the
//! frontier update), the root, signing one checkpoint, and one append of a record to a log in
//! a new directory inside DIR (default: the temporary directory; removed at the end) without a
//! checkpoint key and with a checkpoint after every append: the difference is what one
//! checkpoint costs, which the default spreads over 1000 records.

#[path = "common/median.rs"]
mod median;
use median::median_ns;
use p11audit::format::record::{Event, ProcessIdentity, Record};
use p11audit::tlog::checkpoint::Checkpoint;
use p11audit::tlog::note::{SignerKey, ALG_ED25519};
use p11audit::tlog::tree::Frontier;
use p11audit::writer::audit_log::{AuditLog, LogSettings};
use p11audit::writer::checkpoints::{CheckpointEvery, CheckpointSettings};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn owner_only(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
}

/// The median cost of appending one record to a new log in `dir`.
fn append_cost(dir: &Path, checkpoint: Option<CheckpointSettings>, who: &ProcessIdentity) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let key_file = dir.join("key");
    owner_only(&key_file, &"11".repeat(32));
    let settings = LogSettings {
        log_path: dir.join("bench.jsonl"),
        key_file: Some(key_file),
        log_mode: 0o600,
        sync_always: false,
        rotate_bytes: None,
        checkpoint,
    };
    let mut log = AuditLog::open(&settings, who).expect("open log");
    let record = Record::new(who, 7, Event::Outcome, Some("C_Sign"));
    let one = [record.to_body()];
    median_ns(|| log.append(&one, &record).unwrap(), 2_000)
}

fn main() {
    let parent = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("p11audit-tree-bench-{}", std::process::id()));
    let who = ProcessIdentity {
        host: "host".into(),
        pid: 4242,
        uid: 0,
        exe: "/usr/bin/app".into(),
        auid: None,
        ses: None,
        peer: None,
    };
    // A line as long as a sign's records are (about 620 bytes).
    let line = vec![b'x'; 620];
    let big = vec![0u8; 64 << 10];
    let per_byte = median_ns(|| Sha256::digest(&big), 200) / big.len() as f64;
    println!("SHA-256 on this machine: {per_byte:.2} ns per byte");
    let mut tree = Frontier::default();
    let push = median_ns(|| tree.push_line(&line).unwrap(), 50_000);
    println!("tree: add a 620-byte line (leaf hash + frontier): {push:.0} ns per record");
    let root = median_ns(|| tree.root(), 20_000);
    println!("tree: root of a tree of {} leaves: {root:.0} ns", tree.size);
    let key = SignerKey::from_seed("bench.example/log", ALG_ED25519, &[5; 32]).unwrap();
    let sign = median_ns(
        || {
            let body = Checkpoint::new(&key.name, tree.size, tree.root()).body();
            key.sign_note(&body).unwrap()
        },
        500,
    );
    println!("checkpoint: build and sign one note: {sign:.0} ns");

    let plain = append_cost(&dir.join("plain"), None, &who);
    let signed_dir = dir.join("signed");
    std::fs::create_dir_all(&signed_dir).unwrap();
    let checkpoint_key = signed_dir.join("checkpoint.key");
    owner_only(&checkpoint_key, &key.encode());
    // Every append signs: the difference is the whole cost of one checkpoint (signing, the
    // checkpoint record, <log>.checkpoint written and renamed), which the default spreads over
    // 1000 records.
    let signed = append_cost(
        &signed_dir,
        Some(CheckpointSettings {
            key_file: checkpoint_key,
            every: CheckpointEvery::Records(1),
        }),
        &who,
    );
    println!("append 1 record, no checkpoint key: {plain:.0} ns");
    println!("append 1 record and sign a checkpoint after it: {signed:.0} ns");
    println!(
        "one checkpoint: {:.0} ns; at the default (every 1000 records): {:.0} ns per record",
        signed - plain,
        (signed - plain) / 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
