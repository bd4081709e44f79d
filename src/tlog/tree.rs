//! The RFC 6962 Merkle tree over the log's lines (RFC 6962 §2.1, RFC 9162 §2.1): leaf and node
//! hashes, the frontier the writer keeps, the root of a list of leaves, and consistency proofs.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// Levels the frontier can hold: a tree of up to 2^48 - 1 leaves (nine years at a million
/// records a second), which is what fits twice in the state file's page (docs/INTERNALS.md §1.1).
pub const MAX_LEVELS: usize = 48;

/// The largest tree the frontier can hold.
pub const MAX_SIZE: u64 = (1 << MAX_LEVELS) - 1;

/// `SHA-256(0x00 || line)`: the hash of a leaf.
pub fn leaf_hash(line: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(line);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The tree is full (`MAX_SIZE` leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tree holds {MAX_SIZE} leaves, as many as its frontier can")]
pub struct TreeFull;

/// The right edge of a tree: for each set bit `L` of `size`, the root of the complete subtree of
/// `2^L` leaves at that place (`levels[L]`). Levels whose bit is clear hold nothing meaningful.
/// Indexing by level means that appending one leaf writes exactly one level, one that the tree
/// before the append does not use.
#[derive(Clone, PartialEq, Eq)]
pub struct Frontier {
    pub size: u64,
    pub levels: [Hash; MAX_LEVELS],
}

impl std::fmt::Debug for Frontier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frontier(size {})", self.size)
    }
}

impl Default for Frontier {
    fn default() -> Self {
        Frontier {
            size: 0,
            levels: [[0; 32]; MAX_LEVELS],
        }
    }
}

impl Frontier {
    /// Appends a leaf (its `leaf_hash`). Returns the level written.
    pub fn push(&mut self, leaf: Hash) -> Result<usize, TreeFull> {
        if self.size >= MAX_SIZE {
            return Err(TreeFull);
        }
        let mut hash = leaf;
        let mut level = 0;
        while self.size >> level & 1 == 1 {
            hash = node_hash(&self.levels[level], &hash);
            level += 1;
        }
        self.levels[level] = hash;
        self.size += 1;
        Ok(level)
    }

    /// Appends a line as a leaf.
    pub fn push_line(&mut self, line: &[u8]) -> Result<usize, TreeFull> {
        self.push(leaf_hash(line))
    }

    /// The tree's root hash (RFC 6962's MTH).
    pub fn root(&self) -> Hash {
        let mut acc: Option<Hash> = None;
        for level in 0..MAX_LEVELS {
            if self.size >> level & 1 == 1 {
                acc = Some(match acc {
                    None => self.levels[level],
                    Some(right) => node_hash(&self.levels[level], &right),
                });
            }
        }
        acc.unwrap_or_else(empty_root)
    }
}

/// MTH of a list of leaf hashes (RFC 6962 §2.1).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The largest power of two smaller than `n` (n >= 2).
fn split_point(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The consistency proof from the tree of the first `old_size` leaves to the tree of all of
/// `leaves` (RFC 6962 §2.1.2, PROOF(m, D[n])). Empty when `old_size` is 0 or all of them.
pub fn consistency_proof(leaves: &[Hash], old_size: usize) -> Vec<Hash> {
    fn subproof(m: usize, d: &[Hash], complete: bool, out: &mut Vec<Hash>) {
        let n = d.len();
        if m == n {
            if !complete {
                out.push(root_of(d));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            subproof(m, &d[..k], complete, out);
            out.push(root_of(&d[k..]));
        } else {
            subproof(m - k, &d[k..], false, out);
            out.push(root_of(&d[..k]));
        }
    }
    let mut out = Vec::new();
    if old_size > 0 && old_size < leaves.len() {
        subproof(old_size, leaves, true, &mut out);
    }
    out
}

/// Why two tree heads are not consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConsistencyError {
    #[error("the new tree ({new}) is smaller than the old one ({old})")]
    Smaller { old: u64, new: u64 },
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the old root")]
    OldRootMismatch,
    #[error("the proof does not lead to the new root")]
    NewRootMismatch,
}

/// Checks a consistency proof between the tree heads (`old_size`, `old_root`) and
/// (`new_size`, `new_root`) (RFC 9162 §2.1.4.2).
pub fn check_consistency(
    old_size: u64,
    old_root: &Hash,
    new_size: u64,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ConsistencyError> {
    if new_size < old_size {
        return Err(ConsistencyError::Smaller {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ConsistencyError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ConsistencyError::NewRootMismatch)
        };
    }
    if old_size == 0 {
        // Every tree extends the empty one.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ConsistencyError::WrongLength)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ConsistencyError::WrongLength);
    };
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return Err(ConsistencyError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ConsistencyError::WrongLength);
    }
    if fr != *old_root {
        return Err(ConsistencyError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ConsistencyError::NewRootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        base16ct::lower::decode_vec(s).unwrap()
    }

    fn hash(s: &str) -> Hash {
        unhex(s).try_into().unwrap()
    }

    /// The reference leaves of the certificate-transparency test vectors.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// MTH(D[n]) for n = 0..8 over `LEAVES`.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(&unhex(l))).collect()
    }

    #[test]
    fn the_reference_roots_come_out_of_both_the_frontier_and_the_list() {
        let leaves = leaves();
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), hash(ROOTS[0]));
        for (n, leaf) in leaves.iter().enumerate() {
            frontier.push(*leaf).unwrap();
            assert_eq!(frontier.root(), hash(ROOTS[n + 1]), "size {}", n + 1);
            assert_eq!(root_of(&leaves[..=n]), hash(ROOTS[n + 1]));
        }
    }

    #[test]
    fn the_reference_consistency_proofs() {
        let leaves = leaves();
        let cases: [(usize, &[&str]); 3] = [
            (
                3,
                &[
                    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
                    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
                    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (1, &[]),
        ];
        for (m, want) in cases {
            let proof = consistency_proof(&leaves, m);
            if m == 1 {
                // (1, 8): the siblings of leaf 0 up the tree.
                assert_eq!(proof.len(), 3);
            } else {
                let want: Vec<Hash> = want.iter().map(|h| hash(h)).collect();
                assert_eq!(proof, want, "proof from {m} to 8");
            }
            check_consistency(m as u64, &hash(ROOTS[m]), 8, &hash(ROOTS[8]), &proof).unwrap();
        }
        let from2to5 = [
            hash("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            hash("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ];
        assert_eq!(consistency_proof(&leaves[..5], 2), from2to5);
        check_consistency(2, &hash(ROOTS[2]), 5, &hash(ROOTS[5]), &from2to5).unwrap();
    }

    #[test]
    fn every_proof_checks_and_every_alteration_fails() {
        let leaves: Vec<Hash> = (0..40u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=leaves.len() {
            let new_root = root_of(&leaves[..n]);
            for m in 0..=n {
                let old_root = root_of(&leaves[..m]);
                let proof = consistency_proof(&leaves[..n], m);
                check_consistency(m as u64, &old_root, n as u64, &new_root, &proof)
                    .unwrap_or_else(|e| panic!("{m} -> {n}: {e}"));
                if m == 0 || m == n {
                    continue;
                }
                let wrong = leaf_hash(b"x");
                assert!(check_consistency(m as u64, &wrong, n as u64, &new_root, &proof).is_err());
                assert!(check_consistency(m as u64, &old_root, n as u64, &wrong, &proof).is_err());
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][0] ^= 1;
                    assert!(
                        check_consistency(m as u64, &old_root, n as u64, &new_root, &bad).is_err()
                    );
                }
                let mut longer = proof.clone();
                longer.push(wrong);
                assert!(
                    check_consistency(m as u64, &old_root, n as u64, &new_root, &longer).is_err()
                );
            }
        }
    }

    #[test]
    fn a_push_writes_only_a_level_the_smaller_tree_does_not_use() {
        let mut f = Frontier::default();
        for i in 0..1000u32 {
            let before = f.size;
            let level = f.push_line(&i.to_le_bytes()).unwrap();
            assert_eq!(before >> level & 1, 0);
        }
    }

    #[test]
    fn a_full_frontier_refuses_another_leaf() {
        let mut f = Frontier {
            size: MAX_SIZE,
            ..Frontier::default()
        };
        assert_eq!(f.push([0; 32]), Err(TreeFull));
    }
}
