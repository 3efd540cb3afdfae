//! CRC-32C (Castagnoli), the WAL's checksum, tuned for records of a few hundred bytes.
//!
//! The values are those of the [`crc32c`] crate (and of every other CRC-32C: iSCSI,
//! ext4, RocksDB); only the speed on short inputs differs. Replay checks one record of
//! typically 100–300 bytes per call, and at those sizes the crate spends most of its
//! time on the unaligned head and tail it feeds to the CPU's `crc32` instruction one
//! byte at a time, plus a fixed cost per call. This module's loop feeds unaligned
//! 8-byte words from the first byte on. On the machines we measure on (a first
//! generation AMD EPYC), `examples/crc.rs` times a 152-byte call at 52 ns through the
//! crate and 28 ns here, a 24-byte one at 32 and 9 ns. That CPU's `crc32` instruction
//! does not pipeline, so three interleaved streams, which the crate uses for long
//! inputs, were no faster there at any length up to 10 KB (a scratch test, not
//! kept).
//!
//! On x86-64 processors without SSE 4.2, and on other architectures, the crate computes
//! the value.

/// The CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// The CRC-32C of the bytes whose CRC-32C is `crc`, followed by `data`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        #[allow(unsafe_code)]
        // SAFETY: `words` needs SSE 4.2, which the CPU was just seen to have; it reads
        // only `data`, through safe slice operations.
        return unsafe { x86::words(crc, data) };
    }
    crc32c::crc32c_append(crc, data)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{_mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};

    /// The `crc32` instruction over 8-byte words read unaligned from `data`'s first
    /// byte, then a 4-byte word and single bytes for the tail.
    #[target_feature(enable = "sse4.2")]
    pub(super) fn words(crc: u32, data: &[u8]) -> u32 {
        let mut state = u64::from(!crc);
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            state = _mm_crc32_u64(state, u64::from_le_bytes(b));
        }
        // The instruction leaves the state in the low 32 bits.
        let mut state = state as u32;
        let mut tail = words.remainder();
        if let Some((w, rest)) = tail.split_first_chunk::<4>() {
            state = _mm_crc32_u32(state, u32::from_le_bytes(*w));
            tail = rest;
        }
        for &b in tail {
            state = _mm_crc32_u8(state, b);
        }
        !state
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;

    /// The published check value of CRC-32C ("123456789") and the iSCSI test vectors
    /// of RFC 3720 (B.4): 32 zero bytes, 32 bytes of 0xff, 0..32 ascending.
    #[test]
    fn known_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(&[]), 0);
    }

    /// Every length up to a few words past the sizes replay sees, at every alignment,
    /// agrees with the crate.
    #[test]
    fn agrees_with_the_crate_at_every_length_and_alignment() {
        let buf: Vec<u8> =
            (0..2_100u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..8 {
            for len in 0..2_000 {
                let d = &buf[start..start + len];
                assert_eq!(crc32c(d), crc32c::crc32c(d), "start {start} len {len}");
            }
        }
    }

    proptest! {
        /// Appending agrees with the crate from any starting value, and splitting the
        /// input anywhere gives the value of the whole.
        #[test]
        fn append_agrees(seed in any::<u32>(), data in prop::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
            prop_assert_eq!(crc32c_append(seed, &data), crc32c::crc32c_append(seed, &data));
            let cut = cut.min(data.len());
            prop_assert_eq!(crc32c_append(crc32c(&data[..cut]), &data[cut..]), crc32c(&data));
        }
    }
}
