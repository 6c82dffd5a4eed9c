//! Seeds drawn for requests that give none.
use std::hash::{BuildHasher, Hasher};

/// A random seed below 2^32: it survives JSON clients that hold numbers as doubles, and torch's
/// CPU generator uses only the low 32 bits of a seed anyway.
pub fn random_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.finish() & 0xffff_ffff
}
