//! Deterministic pseudo-random embeddings (xorshift64), shared by the net tests
//! and the benches through `#[path]` includes: the same seed gives the same
//! vector everywhere.

/// A `dim`-dimensional vector with values in [-1, 1), a function of `seed`.
pub(crate) fn embedding(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
