//! fed-crypto's integration suite: published vectors, channel behaviour under attack,
//! identities and signatures, and property tests of every decoder.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod channel;
mod identity;
mod mlkem;
mod props;
mod vectors;

use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};

pub(crate) fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Number of proptest cases: `FED_PROPTEST_CASES`, or a CI-sized default.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("FED_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
