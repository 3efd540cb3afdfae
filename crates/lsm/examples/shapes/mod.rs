//! The key shapes of an exchange's partitions, shared by the memtable examples.

/// The accounts partition's shape: keys `tag, len, user, len, id` of 10,000 users
/// picked by a hash, so each insert lands at a random position (an order's record, its
/// by-time and open entries).
pub fn scattered_key(i: u64) -> Vec<u8> {
    let h = i.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let user = format!("acct{:05}", (h >> 17) % 10_000);
    let id = format!("ord{i}");
    let tag = [b'O', b'B', b'P'][(h % 3) as usize];
    let mut k = vec![tag];
    k.extend_from_slice(&(user.len() as u16).to_be_bytes());
    k.extend_from_slice(user.as_bytes());
    k.extend_from_slice(&(id.len() as u16).to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// An instrument partition's shape: keys `tag, time, lsn` in ascending order (ticks,
/// trades, book deltas).
pub fn appended_key(i: u64) -> Vec<u8> {
    let mut k = vec![b'T'];
    k.extend_from_slice(&(1_763_800_000_000_000_000u64 + i * 1000).to_be_bytes());
    k.extend_from_slice(&i.to_be_bytes());
    k
}
