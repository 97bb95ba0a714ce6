//! RFC 9162 (Certificate Transparency v2) Merkle tree hashing: leaves are hashed as
//! `SHA-256(0x00 || leaf)`, interior nodes as `SHA-256(0x01 || left || right)`, and a tree of n
//! leaves splits at the largest power of two below n. The empty tree's hash is `SHA-256("")`.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) over already hashed leaves.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]): the audit path of leaf `m`, from the leaf's sibling up to the root's children.
pub fn inclusion_path(leaves: &[Hash], m: usize) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    if m < k {
        let mut p = inclusion_path(&leaves[..k], m);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_path(&leaves[k..], m - k);
        p.push(root(&leaves[..k]));
        p
    }
}

/// Recomputes the root from a leaf hash, its index, the tree size and its audit path
/// (RFC 9162 section 2.1.3.2). `None` when the path has the wrong length for the index and size.
pub fn root_from_path(leaf: Hash, index: usize, size: usize, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = leaf;
    for p in path {
        if sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    (sn == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn empty_and_single_trees() {
        assert_eq!(
            hex::encode(root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let l = leaves(1);
        assert_eq!(root(&l), l[0]);
        // RFC 9162: the leaf hash of the empty leaf is SHA-256 of a single zero byte.
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn every_path_of_every_size_leads_to_the_root() {
        for n in 1..40 {
            let l = leaves(n);
            let r = root(&l);
            for m in 0..n {
                let path = inclusion_path(&l, m);
                assert_eq!(root_from_path(l[m], m, n, &path), Some(r), "n={n} m={m}");
                // Another leaf, index or size does not lead there.
                assert_ne!(root_from_path(leaf_hash(b"x"), m, n, &path), Some(r));
                if n > 1 {
                    assert_ne!(root_from_path(l[m], (m + 1) % n, n, &path), Some(r));
                }
                // (The size is not bound by the path alone: the signed note carries it.)
            }
        }
    }

    #[test]
    fn three_leaves_split_two_one() {
        let l = leaves(3);
        assert_eq!(root(&l), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
    }
}
