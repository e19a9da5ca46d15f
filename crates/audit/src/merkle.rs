//! RFC 9162 Merkle tree hashing: leaf = SHA-256(0x00 || data),
//! node = SHA-256(0x01 || left || right), the tree left-balanced (split at
//! the largest power of two below the size).

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// [`leaf_hash`] of `head` followed by `rest`, without joining them.
pub fn leaf_hash_parts(head: &[u8], rest: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(head);
    h.update(rest);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly less than `n` (n >= 2).
pub fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The right border of the tree: roots of its perfect subtrees, largest
/// (leftmost) first. Appending costs O(1) amortized; the root is a fold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (level, hash); levels strictly decrease from first to last.
    nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; calls `completed(level, index, hash)` for every
    /// perfect subtree of level >= 1 the append completes.
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(u32, u64, &Hash)) {
        let index = self.size;
        self.nodes.push((0, leaf));
        while self.nodes.len() >= 2 {
            let n = self.nodes.len();
            if self.nodes[n - 1].0 != self.nodes[n - 2].0 {
                break;
            }
            let (level, right) = self.nodes.pop().unwrap_or((0, [0; 32]));
            let (_, left) = self.nodes.pop().unwrap_or((0, [0; 32]));
            let parent = node_hash(&left, &right);
            completed(level + 1, index >> (level + 1), &parent);
            self.nodes.push((level + 1, parent));
        }
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some((_, last)) = iter.next() else { return empty_root() };
        iter.fold(*last, |acc, (_, left)| node_hash(left, &acc))
    }

    /// Text form for storage: `level:hex` items joined by `,`.
    pub fn encode(&self) -> String {
        self.nodes.iter().map(|(l, h)| format!("{l}:{}", hex::encode(h))).collect::<Vec<_>>().join(",")
    }

    pub fn decode(size: u64, text: &str) -> Option<Frontier> {
        let mut nodes = Vec::new();
        for item in text.split(',').filter(|s| !s.is_empty()) {
            let (l, h) = item.split_once(':')?;
            nodes.push((l.parse().ok()?, decode_hash(h)?));
        }
        // The levels are the set bits of the size, largest first.
        let expected: Vec<u32> = (0..64).rev().filter(|b| size & (1 << b) != 0).collect();
        (nodes.iter().map(|(l, _)| *l).collect::<Vec<_>>() == expected).then_some(Frontier { size, nodes })
    }
}

pub fn decode_hash(h: &str) -> Option<Hash> {
    // By hand, with a table and one validity test at the end: full
    // verification decodes one per leaf, and a branch per digit cost
    // three times as much.
    const NIBBLE: [u8; 256] = {
        let mut t = [0xffu8; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let b: &[u8; 64] = h.as_bytes().try_into().ok()?;
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
        bad |= hi | lo;
        *o = (hi << 4) | lo;
    }
    (bad & 0xf0 == 0).then_some(out)
}

/// RFC 9162 §2.1.3.2: checks that `leaf` is at `index` in the tree of
/// `size` whose root is `root`, given the audit path.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &r == root
}

/// The audit path for leaf `m` among leaves `[start, start + n)`, in
/// RFC 9162 order (nearest sibling first). `subtree(start, len)` returns
/// the hash of that subtree.
pub fn inclusion_path<E>(
    m: u64,
    start: u64,
    n: u64,
    subtree: &mut impl FnMut(u64, u64) -> Result<Hash, E>,
) -> Result<Vec<Hash>, E> {
    if n <= 1 {
        return Ok(Vec::new());
    }
    let k = split_point(n);
    if m < k {
        let mut p = inclusion_path(m, start, k, subtree)?;
        p.push(subtree(start + k, n - k)?);
        Ok(p)
    } else {
        let mut p = inclusion_path(m - k, start + k, n - k, subtree)?;
        p.push(subtree(start, k)?);
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straight from the definition, for cross-checking.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("leaf {i}").as_bytes())).collect()
    }

    #[test]
    fn a_leaf_hashed_in_two_parts_is_the_leaf_hashed_whole() {
        let data = b"[\"tag\",1,\"rest of a record that spans more than one block of sha-256 input\"]";
        for cut in [0, 1, 55, 63, 64, data.len()] {
            assert_eq!(leaf_hash_parts(&data[..cut], &data[cut..]), leaf_hash(data), "{cut}");
        }
        assert_ne!(leaf_hash_parts(b"a", b"b"), leaf_hash(b"a"));
    }

    #[test]
    fn decode_hash_is_strict_hex() {
        let h: Hash = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(decode_hash(&hex::encode(h)), Some(h));
        assert_eq!(decode_hash(&hex::encode_upper(h)), Some(h));
        let good = hex::encode(h);
        assert_eq!(decode_hash(&good[..62]), None);
        assert_eq!(decode_hash(&format!("{good}00")), None);
        assert_eq!(decode_hash(&format!("g{}", &good[1..])), None);
        assert_eq!(decode_hash(&format!("{}é", &good[..62])), None);
        // Each byte value, as the high and as the low digit.
        for c in 0..=255u8 {
            let valid = c.is_ascii_hexdigit();
            for at in [0, 1, 63] {
                let mut s = good.clone().into_bytes();
                s[at] = c;
                let Ok(s) = String::from_utf8(s) else { continue };
                let mut expected = h;
                let v = (c as char).to_digit(16).unwrap_or(0) as u8;
                expected[at / 2] = if at % 2 == 0 { (v << 4) | (h[at / 2] & 15) } else { (h[at / 2] & 0xf0) | v };
                assert_eq!(decode_hash(&s), valid.then_some(expected), "{c} at {at}");
            }
            // Both digits of one byte the same non-digit: still refused.
            if !valid && c.is_ascii() {
                let s = format!("{}{}", c as char, c as char) + &good[2..];
                assert_eq!(decode_hash(&s), None, "{c}{c}");
            }
        }
    }

    #[test]
    fn rfc6962_test_vector() {
        // The eight-leaf tree of the Certificate Transparency reference tests.
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let mut f = Frontier::default();
        for (i, data) in inputs.iter().enumerate() {
            f.push(leaf_hash(data), |_, _, _| {});
            if i == 0 {
                assert_eq!(hex::encode(f.root()), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
            }
        }
        assert_eq!(hex::encode(f.root()), "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328");
        assert_eq!(hex::encode(empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn frontier_matches_definition_and_round_trips() {
        let all = leaves(70);
        let mut f = Frontier::default();
        let mut nodes = std::collections::HashMap::new();
        for (i, l) in all.iter().enumerate() {
            f.push(*l, |level, index, h| {
                nodes.insert((level, index), *h);
            });
            assert_eq!(f.root(), mth(&all[..=i]), "size {}", i + 1);
            assert_eq!(Frontier::decode(f.size(), &f.encode()), Some(f.clone()));
        }
        // Every completed node is the root of its aligned subtree.
        for ((level, index), h) in nodes {
            let (a, b) = ((index << level) as usize, ((index + 1) << level) as usize);
            assert_eq!(h, mth(&all[a..b]));
        }
        assert_eq!(Frontier::decode(3, "0:00"), None);
    }

    #[test]
    fn inclusion_proofs_verify_and_reject() {
        let all = leaves(37);
        for n in 1..=all.len() {
            let root = mth(&all[..n]);
            for m in 0..n {
                let path = inclusion_path(m as u64, 0, n as u64, &mut |s, len| {
                    Ok::<_, ()>(mth(&all[s as usize..(s + len) as usize]))
                })
                .unwrap();
                assert!(verify_inclusion(&all[m], m as u64, n as u64, &path, &root), "m={m} n={n}");
                if n > 1 {
                    assert!(!verify_inclusion(&all[(m + 1) % n], m as u64, n as u64, &path, &root));
                    assert!(!verify_inclusion(&all[m], ((m + 1) % n) as u64, n as u64, &path, &root), "m={m} n={n}");
                    assert!(!verify_inclusion(&all[m], m as u64, n as u64, &path[1..], &root), "m={m} n={n}");
                    let mut wrong = path.clone();
                    wrong[0] = all[m];
                    assert!(!verify_inclusion(&all[m], m as u64, n as u64, &wrong, &root), "m={m} n={n}");
                }
                // A path one hash too long, an index past the size, another root.
                let mut long = path.clone();
                long.push(all[0]);
                assert!(!verify_inclusion(&all[m], m as u64, n as u64, &long, &root), "m={m} n={n}");
                assert!(!verify_inclusion(&all[m], n as u64, n as u64, &path, &root), "m={m} n={n}");
                assert!(!verify_inclusion(&all[m], m as u64, n as u64, &path, &empty_root()), "m={m} n={n}");
            }
        }
    }
}
