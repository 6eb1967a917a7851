//! Per-origin frontiers: what a replica is known to have seen.

use std::collections::BTreeMap;

use crate::{hlc::Hlc, id::ReplicaId};

/// For each origin (writer), the greatest stamp of that origin a replica has
/// fully absorbed.
///
/// Meaning, for an [`LwwMap`](crate::LwwMap): if the frontier holds stamp
/// `s` for origin `o`, then for every write by `o` stamped at or below `s`
/// the replica holds, for that key, an entry at least as new (or has
/// garbage-collected the tombstone that superseded it). A peer therefore
/// never needs to send such writes again; this is what delta sync relies on.
/// A replica raises its frontier only for its own writes and after absorbing
/// the complete state of a peer it trusts (a full merge or the last chunk of
/// a delta on the trusted path): a frontier received from an untrusted peer
/// is never adopted, since a false one would make honest peers skip writes
/// this replica lacks.
///
/// Wire form: a varint count, then each stamp ([`Hlc`]) in strictly
/// ascending order of node id (the node id inside each stamp is the origin).
/// Decoders bound the count by [`Limits::max_origins`](crate::Limits::max_origins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Frontier {
    stamps: BTreeMap<ReplicaId, Hlc>,
}

impl Frontier {
    /// An empty frontier: nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds from stamps already sorted by strictly ascending node.
    pub(crate) fn from_sorted_unique(stamps: Vec<Hlc>) -> Self {
        Self {
            stamps: stamps.into_iter().map(|s| (s.node(), s)).collect(),
        }
    }

    /// The stamp recorded for `origin`, if any.
    pub fn get(&self, origin: &ReplicaId) -> Option<Hlc> {
        self.stamps.get(origin).copied()
    }

    /// Raises the entry of `stamp.node()` to `stamp` if it is greater.
    /// Returns whether the frontier changed.
    pub fn observe(&mut self, stamp: Hlc) -> bool {
        match self.stamps.get_mut(&stamp.node()) {
            Some(current) if *current >= stamp => false,
            Some(current) => {
                *current = stamp;
                true
            }
            None => {
                self.stamps.insert(stamp.node(), stamp);
                true
            }
        }
    }

    /// Pointwise maximum with `other`.
    pub fn join(&mut self, other: &Frontier) {
        for stamp in other.stamps.values() {
            self.observe(*stamp);
        }
    }

    /// Whether the write stamped `stamp` is covered: its origin's entry is at
    /// or above it.
    pub fn covers(&self, stamp: &Hlc) -> bool {
        self.stamps
            .get(&stamp.node())
            .is_some_and(|mine| mine >= stamp)
    }

    /// Whether every stamp of `other` is covered by `self`.
    pub fn dominates(&self, other: &Frontier) -> bool {
        other.stamps.values().all(|s| self.covers(s))
    }

    /// The greatest stamp over all origins.
    pub fn max(&self) -> Option<Hlc> {
        self.stamps.values().max().copied()
    }

    /// Number of origins.
    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    /// Whether no origin is recorded.
    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty()
    }

    /// The stamps in ascending order of origin.
    pub fn iter(&self) -> impl Iterator<Item = Hlc> + '_ {
        self.stamps.values().copied()
    }
}

impl FromIterator<Hlc> for Frontier {
    /// The pointwise maximum of the given stamps.
    fn from_iter<I: IntoIterator<Item = Hlc>>(iter: I) -> Self {
        let mut f = Frontier::new();
        for stamp in iter {
            f.observe(stamp);
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64, node: u64) -> Hlc {
        Hlc::new(ms, 0, ReplicaId::from_u64(node))
    }

    #[test]
    fn observe_join_cover_and_dominate() {
        let mut a: Frontier = [s(5, 1), s(3, 2), s(4, 1)].into_iter().collect();
        assert_eq!(a.get(&ReplicaId::from_u64(1)), Some(s(5, 1)));
        assert!(a.covers(&s(5, 1)));
        assert!(!a.covers(&s(6, 1)));
        assert!(!a.covers(&s(1, 3)));
        let b: Frontier = [s(9, 3)].into_iter().collect();
        assert!(!a.dominates(&b));
        a.join(&b);
        assert!(a.dominates(&b));
        assert_eq!(a.len(), 3);
        assert_eq!(a.max(), Some(s(9, 3)));
        assert!(!a.observe(s(1, 3)));
    }
}
