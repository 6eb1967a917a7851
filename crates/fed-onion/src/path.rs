//! Choosing the relays of a path.

use std::collections::BTreeMap;

use fed_crypto::NodeId;
use rand_core::CryptoRng;

use crate::{
    cert::OnionKeyCertificate,
    error::{Error, Result},
    format::MAX_RELAYS,
};

/// Chooses `relays` distinct relays uniformly at random from `directory` and
/// returns the route to hand to [`build_packet`](crate::build_packet): the relays
/// in order, then `destination`.
///
/// Eligible relays are the nodes whose certificate offers relaying and is valid
/// at `now_ms`, other than `source` and the destination; when the directory holds
/// several certificates of one node, the one with the highest epoch counts. The
/// destination's certificate must be valid at `now_ms`. `relays` must be 1 to
/// [`MAX_RELAYS`] ([`DEFAULT_RELAYS`](crate::DEFAULT_RELAYS) is the usual choice).
pub fn select_path<R: CryptoRng + ?Sized>(
    directory: &[OnionKeyCertificate],
    source: NodeId,
    destination: &OnionKeyCertificate,
    relays: usize,
    now_ms: u64,
    rng: &mut R,
) -> Result<Vec<OnionKeyCertificate>> {
    if relays == 0 || relays > MAX_RELAYS {
        return Err(Error::InvalidRouteLength {
            len: relays,
            max: MAX_RELAYS,
        });
    }
    if !destination.is_valid_at(now_ms) {
        return Err(Error::CertificateNotValid {
            node: destination.node_id(),
            epoch: destination.epoch().epoch,
            now_ms,
        });
    }
    let excluded = [source, destination.node_id()];
    let mut newest: BTreeMap<NodeId, &OnionKeyCertificate> = BTreeMap::new();
    for cert in directory {
        let node = cert.node_id();
        if !cert.is_relay() || !cert.is_valid_at(now_ms) || excluded.contains(&node) {
            continue;
        }
        let entry = newest.entry(node).or_insert(cert);
        if cert.epoch().epoch > entry.epoch().epoch {
            *entry = cert;
        }
    }
    let mut candidates: Vec<&OnionKeyCertificate> = newest.into_values().collect();
    if candidates.len() < relays {
        return Err(Error::NotEnoughRelays {
            wanted: relays,
            available: candidates.len(),
        });
    }
    // A partial Fisher-Yates shuffle: the first `relays` entries end up a uniform
    // random ordered selection.
    for i in 0..relays {
        let j = i + uniform(rng, candidates.len() - i);
        candidates.swap(i, j);
    }
    let mut route: Vec<OnionKeyCertificate> =
        candidates[..relays].iter().map(|c| (*c).clone()).collect();
    route.push(destination.clone());
    Ok(route)
}

/// A uniform integer in `0..n` (`n >= 1`), by rejection sampling.
fn uniform<R: CryptoRng + ?Sized>(rng: &mut R, n: usize) -> usize {
    let n = n as u64;
    if n <= 1 {
        return 0;
    }
    // The largest multiple of n that fits, so that `x % n` is unbiased below it.
    let zone = u64::MAX - (u64::MAX % n + 1) % n;
    loop {
        let x = rng.next_u64();
        if x <= zone {
            // x % n < n, which came from a usize.
            return usize::try_from(x % n).unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};

    #[test]
    fn uniform_stays_in_range_and_covers_it() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut hits = [0u32; 5];
        for _ in 0..5000 {
            let x = uniform(&mut rng, 5);
            hits[x] += 1;
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
        assert_eq!(uniform(&mut rng, 1), 0);
    }
}
