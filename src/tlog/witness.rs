//! The witness's decision (c2sp.org/tlog-witness, without its HTTP): a new checkpoint is
//! cosigned only if a known log key signed it, it is not smaller than the newest one accepted
//! for its origin, and it is consistent with it, shown by an RFC 6962 consistency proof or by
//! the log's lines. What the witness accepted is kept per origin (`WitnessState`), which the
//! caller stores before it hands out the cosignature.

use crate::tlog::checkpoint::Checkpoint;
use crate::tlog::cosignature;
use crate::tlog::note::{NoteSignature, SignedNote, SignerKey, VerifierKey};
use crate::tlog::tree::{check_consistency, leaf_hash, Frontier, Hash};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// What the witness keeps: for each origin, the newest checkpoint it accepted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WitnessState {
    pub origins: BTreeMap<String, Accepted>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accepted {
    /// The checkpoint's text (the note without signatures).
    pub checkpoint: String,
    /// The tree's frontier at that size (base64 of the levels in use, lowest first), when the
    /// witness has seen the lines: the next checkpoint can then be checked against the lines
    /// after it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontier: Option<Vec<String>>,
    /// The leaf hash of the log's first line, when the witness has seen it: a log deleted and
    /// started again has another first record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_leaf: Option<String>,
}

/// What shows that the new checkpoint extends the accepted one.
pub enum Evidence {
    /// An RFC 6962 consistency proof from the size `old` the submitter believes the witness
    /// knows (tlog-witness's add-checkpoint request).
    Proof { old: u64, proof: Vec<Hash> },
    /// Log lines with their seqs (any order, any range; for a seq given twice, the last).
    Lines(Vec<(u64, Vec<u8>)>),
    /// Nothing: accepted only as the first checkpoint of an origin (trust on first use).
    Nothing,
}

/// Why a checkpoint was refused. Each names the case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not signed by a known log key for its origin")]
    UnknownKey,
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("rollback: {origin} is at {new} records, below the {known} this witness cosigned")]
    Rollback {
        origin: String,
        known: u64,
        new: u64,
    },
    #[error("fork: {origin}'s checkpoint of {new} records is not consistent with the one of {known} this witness cosigned ({why})")]
    Fork {
        origin: String,
        known: u64,
        new: u64,
        why: String,
    },
    #[error("deleted and restarted log: {origin}'s first record is not the one this witness saw; a new chain under the same origin")]
    Restarted { origin: String },
    #[error("the proof starts at {claimed} records, but this witness knows {origin} at {known}")]
    OldSizeMismatch {
        origin: String,
        known: u64,
        claimed: u64,
    },
    #[error("{origin}: the lines from seq {from} to {to} are needed to check this checkpoint and are not all given")]
    MissingLines { origin: String, from: u64, to: u64 },
    #[error("{origin}: a consistency proof or the log's lines are needed to check this checkpoint against the one of {known} records")]
    NoEvidence { origin: String, known: u64 },
}

fn frontier_text(f: &Frontier) -> Vec<String> {
    (0..f.levels.len())
        .filter(|l| f.size >> l & 1 == 1)
        .map(|l| BASE64.encode(f.levels[l]))
        .collect()
}

fn frontier_from(size: u64, hashes: &[String]) -> Option<Frontier> {
    let mut f = Frontier {
        size,
        ..Frontier::default()
    };
    let mut it = hashes.iter();
    for level in 0..f.levels.len() {
        if size >> level & 1 == 1 {
            f.levels[level] = BASE64.decode(it.next()?).ok()?.try_into().ok()?;
        }
    }
    it.next().is_none().then_some(f)
}

/// What the witness did with a checkpoint it did not refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted and cosigned.
    Cosigned(NoteSignature),
    /// An older checkpoint of the log the witness knows, which the lines show to be a prefix
    /// of it (a collector that received records out of order): nothing to cosign, no alarm.
    AlreadyCovered { known: u64 },
}

/// Checks `note` (a signed checkpoint) against what `state` holds for its origin and, if it
/// is accepted, records it in `state` and returns `witness`'s cosignature, made at `now`
/// (seconds since the epoch).
pub fn add_checkpoint(
    state: &mut WitnessState,
    log_keys: &[VerifierKey],
    witness: &SignerKey,
    note: &str,
    evidence: &Evidence,
    now: u64,
) -> Result<Outcome, Refusal> {
    let note = SignedNote::parse(note).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let new = Checkpoint::parse(&note.text).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let signed = log_keys
        .iter()
        .any(|k| k.name == new.origin && note.verify(k).is_ok());
    if !signed {
        return Err(Refusal::UnknownKey);
    }
    let origin = new.origin.clone();
    let lines: HashMap<u64, &[u8]> = match evidence {
        Evidence::Lines(l) => l.iter().map(|(s, b)| (*s, b.as_slice())).collect(),
        _ => HashMap::new(),
    };
    let seen_first = lines.get(&0).map(|l| BASE64.encode(leaf_hash(l)));
    let prev = state.origins.get(&origin).cloned();
    let restarted =
        |prev: &Accepted| matches!((&prev.first_leaf, &seen_first), (Some(a), Some(b)) if a != b);
    // Extends `from` (a frontier) over lines `from.size..to`.
    let extend = |mut from: Frontier, to: u64| -> Result<Frontier, Refusal> {
        for seq in from.size..to {
            let line = lines.get(&seq).ok_or(Refusal::MissingLines {
                origin: origin.clone(),
                from: from.size,
                to,
            })?;
            from.push_line(line)
                .map_err(|e| Refusal::Malformed(e.to_string()))?;
        }
        Ok(from)
    };
    let mut frontier = None;
    match &prev {
        None => {
            if let Evidence::Lines(_) = evidence {
                let f = extend(Frontier::default(), new.size)?;
                if f.root() != new.root {
                    return Err(Refusal::Malformed(
                        "the lines given do not have the checkpoint's root".into(),
                    ));
                }
                frontier = Some(f);
            }
        }
        Some(prev) => {
            let old = Checkpoint::parse(&prev.checkpoint)
                .map_err(|e| Refusal::Malformed(format!("in the witness's state: {e}")))?;
            let fork = |why: &str| {
                if restarted(prev) {
                    Refusal::Restarted {
                        origin: origin.clone(),
                    }
                } else {
                    Refusal::Fork {
                        origin: origin.clone(),
                        known: old.size,
                        new: new.size,
                        why: why.to_string(),
                    }
                }
            };
            if new.size < old.size && !lines.is_empty() && !restarted(prev) {
                // Both trees in the lines given, the new one a prefix of the known one: an old
                // checkpoint received late. Lines missing or another root: a rollback.
                let older = extend(Frontier::default(), new.size).ok();
                if let Some(older) = older.filter(|f| f.root() == new.root) {
                    if extend(older, old.size).is_ok_and(|f| f.root() == old.root) {
                        return Ok(Outcome::AlreadyCovered { known: old.size });
                    }
                }
            }
            if new.size < old.size {
                return Err(if restarted(prev) {
                    Refusal::Restarted { origin }
                } else {
                    Refusal::Rollback {
                        origin,
                        known: old.size,
                        new: new.size,
                    }
                });
            }
            if new.size == old.size && new.root != old.root {
                return Err(fork("the same size with another root"));
            }
            match evidence {
                _ if new.size == old.size => {}
                Evidence::Proof {
                    old: claimed,
                    proof,
                } => {
                    if *claimed != old.size {
                        return Err(Refusal::OldSizeMismatch {
                            origin,
                            known: old.size,
                            claimed: *claimed,
                        });
                    }
                    check_consistency(old.size, &old.root, new.size, &new.root, proof)
                        .map_err(|e| fork(&e.to_string()))?;
                }
                Evidence::Lines(_) => {
                    let start = prev
                        .frontier
                        .as_deref()
                        .and_then(|h| frontier_from(old.size, h));
                    let start = match start {
                        Some(f) => f,
                        None => {
                            let f = extend(Frontier::default(), old.size)?;
                            if f.root() != old.root {
                                return Err(fork("the lines before its size have another root"));
                            }
                            f
                        }
                    };
                    let f = extend(start, new.size)?;
                    if f.root() != new.root {
                        return Err(fork("the lines after it do not lead to its root"));
                    }
                    frontier = Some(f);
                }
                Evidence::Nothing => {
                    return Err(Refusal::NoEvidence {
                        origin,
                        known: old.size,
                    })
                }
            }
        }
    }
    let cosig = cosignature::cosign(witness, &note.text, now)
        .map_err(|e| Refusal::Malformed(e.to_string()))?;
    let first_leaf = seen_first
        .filter(|_| frontier.is_some())
        .or_else(|| prev.and_then(|p| p.first_leaf));
    state.origins.insert(
        origin,
        Accepted {
            checkpoint: note.text.clone(),
            frontier: frontier.as_ref().map(frontier_text),
            first_leaf,
        },
    );
    Ok(Outcome::Cosigned(cosig))
}

/// Reads a tlog-witness add-checkpoint request body: `old <size>`, the proof's hashes in
/// base64 one a line, a blank line, then the signed checkpoint.
pub fn parse_request(body: &str) -> Result<(Evidence, String), Refusal> {
    let bad = |why: &str| Refusal::Malformed(format!("add-checkpoint request: {why}"));
    let (head, note) = body
        .split_once("\n\n")
        .ok_or_else(|| bad("no blank line"))?;
    let mut lines = head.lines();
    let old = lines
        .next()
        .and_then(|l| l.strip_prefix("old "))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| bad("no `old <size>` line"))?;
    let proof = lines
        .map(|l| {
            BASE64
                .decode(l)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| bad("a proof line that is not a base64 hash"))
        })
        .collect::<Result<Vec<Hash>, _>>()?;
    Ok((Evidence::Proof { old, proof }, note.to_string()))
}

/// The request body for `note` (a signed checkpoint) with a proof from `old`.
pub fn request_body(old: u64, proof: &[Hash], note: &str) -> String {
    let mut out = format!("old {old}\n");
    for h in proof {
        out.push_str(&BASE64.encode(h));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(note);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::note::{ALG_COSIGNATURE_V1, ALG_ED25519};
    use crate::tlog::tree::consistency_proof;

    struct Log {
        key: SignerKey,
        lines: Vec<Vec<u8>>,
    }

    impl Log {
        fn new(seed: u8, records: usize, tag: &str) -> Self {
            Log {
                key: SignerKey::from_seed("host.example/audit", ALG_ED25519, &[seed; 32]).unwrap(),
                lines: (0..records)
                    .map(|i| format!("{tag} {i}").into_bytes())
                    .collect(),
            }
        }
        fn note(&self, size: usize) -> String {
            let leaves: Vec<Hash> = self.lines[..size].iter().map(|l| leaf_hash(l)).collect();
            let body = Checkpoint::new(
                &self.key.name,
                size as u64,
                crate::tlog::tree::root_of(&leaves),
            )
            .body();
            SignedNote {
                signatures: vec![self.key.sign_note(&body).unwrap()],
                text: body,
            }
            .encode()
        }
        fn lines(&self, from: usize, to: usize) -> Evidence {
            Evidence::Lines(
                (from..to)
                    .map(|i| (i as u64, self.lines[i].clone()))
                    .collect(),
            )
        }
        fn proof(&self, old: usize, new: usize) -> Evidence {
            let leaves: Vec<Hash> = self.lines[..new].iter().map(|l| leaf_hash(l)).collect();
            Evidence::Proof {
                old: old as u64,
                proof: consistency_proof(&leaves, old),
            }
        }
    }

    fn witness() -> SignerKey {
        SignerKey::from_seed("witness.example", ALG_COSIGNATURE_V1, &[1; 32]).unwrap()
    }

    #[test]
    fn consistent_checkpoints_are_cosigned_by_lines_or_by_proof() {
        let log = Log::new(5, 50, "a");
        let keys = [log.key.verifier()];
        let mut state = WitnessState::default();
        let w = witness();
        let Outcome::Cosigned(sig) =
            add_checkpoint(&mut state, &keys, &w, &log.note(10), &log.lines(0, 10), 7).unwrap()
        else {
            panic!("not cosigned")
        };
        let mut note = SignedNote::parse(&log.note(10)).unwrap();
        note.signatures.push(sig);
        assert_eq!(cosignature::verify(&note, &w.verifier()), Ok(7));
        add_checkpoint(&mut state, &keys, &w, &log.note(25), &log.lines(10, 25), 8).unwrap();
        add_checkpoint(&mut state, &keys, &w, &log.note(40), &log.proof(25, 40), 9).unwrap();
        // After a proof the witness has no frontier: lines from the start are needed.
        add_checkpoint(&mut state, &keys, &w, &log.note(50), &log.lines(0, 50), 9).unwrap();
        let body = request_body(50, &[], &log.note(50));
        let (evidence, note) = parse_request(&body).unwrap();
        add_checkpoint(&mut state, &keys, &w, &note, &evidence, 10).unwrap();
    }

    #[test]
    fn rollback_fork_restart_and_strangers_are_refused_by_name() {
        let log = Log::new(5, 30, "a");
        let keys = [log.key.verifier()];
        let w = witness();
        let mut state = WitnessState::default();
        let mut add = |note: String, evidence: Evidence| {
            add_checkpoint(&mut state, &keys, &w, &note, &evidence, 2)
        };
        add(log.note(20), log.lines(0, 20)).unwrap();
        let rollback = add(log.note(15), Evidence::Nothing);
        assert!(matches!(
            rollback,
            Err(Refusal::Rollback {
                known: 20,
                new: 15,
                ..
            })
        ));
        // The same older checkpoint received late, with the lines: covered, no alarm.
        let late = add(log.note(15), log.lines(0, 20));
        assert_eq!(late, Ok(Outcome::AlreadyCovered { known: 20 }));
        // Put back to the first 15 records and going on from there: the lines after 15 are
        // another history, so the known tree is not in them.
        let mut rolled_back = Log::new(5, 30, "a");
        for l in &mut rolled_back.lines[15..] {
            l.extend_from_slice(b" after the rollback");
        }
        let rollback = add(rolled_back.note(18), rolled_back.lines(0, 30));
        assert!(matches!(
            rollback,
            Err(Refusal::Rollback {
                known: 20,
                new: 18,
                ..
            })
        ));
        // Another history under the same key: same first record, different later ones.
        let mut forked = Log::new(5, 30, "a");
        forked.lines[12] = b"altered".to_vec();
        for evidence in [forked.lines(20, 25), forked.proof(20, 25)] {
            assert!(matches!(
                add(forked.note(25), evidence),
                Err(Refusal::Fork { .. })
            ));
        }
        // Deleted and started again: another first record.
        let restarted = Log::new(5, 30, "b");
        for size in [8, 28] {
            let refused = add(restarted.note(size), restarted.lines(0, size));
            assert!(matches!(refused, Err(Refusal::Restarted { .. })));
        }
        let stranger = Log::new(6, 30, "a");
        let refused = add(stranger.note(25), stranger.lines(0, 25));
        assert_eq!(refused, Err(Refusal::UnknownKey));
        let refused = add(log.note(25), log.proof(10, 25));
        assert!(matches!(
            refused,
            Err(Refusal::OldSizeMismatch {
                known: 20,
                claimed: 10,
                ..
            })
        ));
        let mut expected = WitnessState::default();
        add_checkpoint(
            &mut expected,
            &keys,
            &w,
            &log.note(20),
            &log.lines(0, 20),
            2,
        )
        .unwrap();
        assert_eq!(state, expected, "nothing refused changed the state");
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let log = Log::new(5, 9, "a");
        let mut state = WitnessState::default();
        add_checkpoint(
            &mut state,
            &[log.key.verifier()],
            &witness(),
            &log.note(9),
            &log.lines(0, 9),
            1,
        )
        .unwrap();
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<WitnessState>(&text).unwrap(), state);
        let a = &state.origins["host.example/audit"];
        assert_eq!(
            frontier_from(9, a.frontier.as_ref().unwrap()).unwrap().size,
            9
        );
    }
}
