//! Deterministic jitter (DESIGN §4.1): the delay of a fire depends only on (schedule id, nominal
//! time), so recovery recomputes the same plan on any machine and any version.

use sha2::{Digest, Sha256};

/// Domain tag of the hashed bytes. Changing it, or the encoding below, moves every planned fire:
/// treat both as frozen.
const TAG: &[u8] = b"almanac.jitter.v1";

/// A deterministic delay in `[0, max_jitter_ms)` for the fire of `schedule_id` at `nominal_ms`;
/// 0 when `max_jitter_ms <= 0`.
///
/// It is SHA-256 over `TAG || len(id) as u64 big-endian || id as UTF-8 || nominal_ms as i64
/// big-endian`, whose first 8 bytes (big-endian) `x` give `floor(x * max / 2^64)`: spread evenly
/// and the same everywhere, unlike std's `Hash`, which may change between Rust versions.
pub fn jitter_ms(schedule_id: &str, nominal_ms: i64, max_jitter_ms: i64) -> i64 {
    if max_jitter_ms <= 0 {
        return 0;
    }
    let digest = Sha256::new()
        .chain_update(TAG)
        .chain_update((schedule_id.len() as u64).to_be_bytes())
        .chain_update(schedule_id.as_bytes())
        .chain_update(nominal_ms.to_be_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let x = u128::from(u64::from_be_bytes(first));
    // x < 2^64, so the product shifted down is < max_jitter_ms and fits in i64.
    ((x * max_jitter_ms as u128) >> 64) as i64
}
