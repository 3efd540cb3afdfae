//! A bloom filter over user keys (double hashing of one 64-bit xxh3 hash).
//!
//! Layout: the bit array, then one byte with the number of probes `k`.

/// Builds a filter for `keys` with `bits_per_key` bits each.
pub fn build(hashes: &[u64], bits_per_key: usize) -> Vec<u8> {
    let bits = (hashes.len() * bits_per_key).max(64);
    let bytes = bits.div_ceil(8);
    let bits = bytes * 8;
    // k = ln 2 * bits/key, clamped to a sensible range.
    let k = ((bits_per_key as f64 * 0.69) as u8).clamp(1, 30);
    let mut out = vec![0u8; bytes + 1];
    for h in hashes {
        let (mut x, delta) = (*h, h.rotate_left(21) | 1);
        for _ in 0..k {
            let bit = (x % bits as u64) as usize;
            out[bit / 8] |= 1 << (bit % 8);
            x = x.wrapping_add(delta);
        }
    }
    out[bytes] = k;
    out
}

/// The hash the filter uses for a key.
pub fn hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Whether `filter` may contain the key with hash `h` (false means certainly not).
pub fn may_contain(filter: &[u8], h: u64) -> bool {
    let Some((&k, bitmap)) = filter.split_last() else { return true };
    let bits = bitmap.len() * 8;
    if bits == 0 || k == 0 || k > 30 {
        return true;
    }
    let (mut x, delta) = (h, h.rotate_left(21) | 1);
    for _ in 0..k {
        let bit = (x % bits as u64) as usize;
        if bitmap[bit / 8] & (1 << (bit % 8)) == 0 {
            return false;
        }
        x = x.wrapping_add(delta);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let keys: Vec<u64> =
            (0..10_000u32).map(|i| hash(format!("present{i}").as_bytes())).collect();
        let f = build(&keys, 10);
        assert!(keys.iter().all(|h| may_contain(&f, *h)));
        let fp = (0..10_000u32)
            .filter(|i| may_contain(&f, hash(format!("absent{i}").as_bytes())))
            .count();
        assert!(fp < 200, "false positive rate {}%", fp as f64 / 100.0);
    }
}
