//! Last-writer-wins register with a commutative tie-break.

use core::cmp::Ordering;

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    error::{Error, Result},
    frontier::Frontier,
    hlc::{Hlc, HlcClock},
    wire::{Codec, Limits, MessageKind, Reader, Writer},
};

/// Two different values found under one stamp during a merge.
///
/// Stamps carry the node id, so this can only come from a cloned or
/// misbehaving node. The merge still resolves it deterministically (see
/// [`LwwRegister`]); the report lets the caller act on the culprit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Conflict<K> {
    /// The key concerned (`()` for a register).
    pub key: K,
    /// The stamp both values carry.
    pub stamp: Hlc,
}

/// What a merge, delta application or ingest did.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOutcome<K> {
    /// Entries added or replaced by incoming writes.
    pub changed: usize,
    /// Equal stamps carrying different values, one report per key and merge.
    pub conflicts: Vec<Conflict<K>>,
    /// Incoming entries ignored because they are older than the local
    /// garbage-collection horizon, plus local entries a trusted snapshot
    /// showed to be stale (and tombstones collected on adopting its
    /// horizon).
    pub discarded: usize,
}

impl<K> MergeOutcome<K> {
    pub(crate) fn new() -> Self {
        Self {
            changed: 0,
            conflicts: Vec::new(),
            discarded: 0,
        }
    }

    /// Whether the merge changed nothing and found no conflict.
    pub fn is_noop(&self) -> bool {
        self.changed == 0 && self.conflicts.is_empty() && self.discarded == 0
    }
}

/// The canonical bytes of a value: its postcard encoding. A value whose
/// `Serialize` implementation fails (never the case for derived
/// implementations of ordinary data) compares as the empty string.
pub(crate) fn canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    fill_canonical(&mut buf, value);
    buf
}

fn fill_canonical<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    buf.clear();
    *buf = postcard::to_extend(value, core::mem::take(buf)).unwrap_or_default();
}

/// Reusable buffers for tie-breaks, so a merge of many equal-stamped
/// entries does not allocate per entry.
#[derive(Default)]
pub(crate) struct TieBreak {
    a: Vec<u8>,
    b: Vec<u8>,
}

impl TieBreak {
    /// The LWW order of `(a_stamp, a)` against `(b_stamp, b)`: by stamp, then
    /// by canonical bytes (lexicographic, a proper prefix sorting first). The
    /// flag is true when the stamps are equal and the bytes differ (a
    /// conflict).
    pub(crate) fn cmp<T: Serialize + ?Sized>(
        &mut self,
        a_stamp: &Hlc,
        a: &T,
        b_stamp: &Hlc,
        b: &T,
    ) -> (Ordering, bool) {
        match a_stamp.cmp(b_stamp) {
            Ordering::Equal => {
                fill_canonical(&mut self.a, a);
                fill_canonical(&mut self.b, b);
                let ord = self.a.cmp(&self.b);
                (ord, ord != Ordering::Equal)
            }
            ord => (ord, false),
        }
    }
}

/// A last-writer-wins register.
///
/// Merge keeps the greater of the two writes: the greater [`Hlc`] stamp, and
/// for equal stamps the value whose canonical bytes (its postcard encoding)
/// are lexicographically greater. This makes merge commutative, associative
/// and idempotent even on equal stamps, which `crdts::LWWReg` is not. Equal
/// stamps with different values are reported as a [`Conflict`].
///
/// Delta sync: a register's delta is the register itself (one stamp and one
/// value); [`delta_for`](Self::delta_for) returns nothing when the peer's
/// frontier already holds a stamp at or above this one.
///
/// Wire form ([`MessageKind::RegisterState`]): the stamp, then the value's
/// postcard encoding. Bounded by [`Limits::max_message_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LwwRegister<T> {
    stamp: Hlc,
    value: T,
}

impl<T> LwwRegister<T> {
    /// A register holding `value` written at `stamp`.
    pub const fn new(value: T, stamp: Hlc) -> Self {
        Self { stamp, value }
    }

    /// A register holding `value`, stamped now by `clock`.
    pub fn with_clock(value: T, clock: &mut HlcClock, now_ms: u64) -> Self {
        Self::new(value, clock.tick(now_ms))
    }

    /// The current value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The stamp of the current value.
    pub fn stamp(&self) -> Hlc {
        self.stamp
    }

    /// Consumes the register, returning the value.
    pub fn into_value(self) -> T {
        self.value
    }

    /// The register's frontier: its stamp under its origin.
    pub fn frontier(&self) -> Frontier {
        core::iter::once(self.stamp).collect()
    }
}

impl<T: Serialize> LwwRegister<T> {
    /// Writes `value` with a stamp from `clock` that is greater than the
    /// current one, and returns that stamp.
    ///
    /// # Errors
    ///
    /// [`Error::ClockSaturated`] if no stamp greater than the current one
    /// exists (the register holds a stamp at the top of the range, which only
    /// a path without the skew check lets in); nothing is then changed.
    pub fn set(&mut self, value: T, clock: &mut HlcClock, now_ms: u64) -> Result<Hlc> {
        let stamp = clock.issue_above(Some(self.stamp), now_ms)?;
        self.merge(Self::new(value, stamp));
        Ok(stamp)
    }

    /// Merges another replica's register. Local or trusted input only: there
    /// is no skew check, so a stamp from the far future would win every later
    /// merge. Input from the network goes through [`ingest`](Self::ingest).
    pub fn merge(&mut self, other: Self) -> MergeOutcome<()> {
        let mut out = MergeOutcome::new();
        let (ord, conflict) =
            TieBreak::default().cmp(&other.stamp, &other.value, &self.stamp, &self.value);
        if conflict {
            out.conflicts.push(Conflict {
                key: (),
                stamp: self.stamp,
            });
        }
        if ord == Ordering::Greater {
            *self = other;
            out.changed = 1;
        }
        out
    }

    /// Merges a register received from a peer at wall-clock time `now_ms`:
    /// checks its stamp against `clock`'s forward-skew bound, advances the
    /// clock past it, then merges.
    ///
    /// # Errors
    ///
    /// [`Error::ClockSkew`]; `self` and `clock` are then unchanged.
    pub fn ingest(
        &mut self,
        other: Self,
        clock: &mut HlcClock,
        now_ms: u64,
    ) -> Result<MergeOutcome<()>> {
        clock.check(&other.stamp, now_ms)?;
        clock.observe_unchecked(&other.stamp, now_ms);
        Ok(self.merge(other))
    }

    /// What a peer with frontier `peer` is missing: `None` if the peer holds
    /// a stamp at or above this register's, else the register.
    pub fn delta_for(&self, peer: &Frontier) -> Option<Self>
    where
        T: Clone,
    {
        match peer.max() {
            Some(max) if max >= self.stamp => None,
            _ => Some(self.clone()),
        }
    }

    /// Applies a delta from [`delta_for`](Self::delta_for): the same as
    /// merging the full state, and like [`merge`](Self::merge) for local or
    /// trusted input only (no skew check); a delta from the network goes
    /// through [`ingest`](Self::ingest).
    pub fn apply_delta(&mut self, delta: Self) -> MergeOutcome<()> {
        self.merge(delta)
    }
}

impl<T: Serialize> crdts::CvRDT for LwwRegister<T> {
    type Validation = Error;

    /// Fails with [`Error::Conflict`] on equal stamps with different values.
    fn validate_merge(&self, other: &Self) -> Result<()> {
        match TieBreak::default().cmp(&other.stamp, &other.value, &self.stamp, &self.value) {
            (_, true) => Err(Error::Conflict { stamp: self.stamp }),
            _ => Ok(()),
        }
    }

    fn merge(&mut self, other: Self) {
        LwwRegister::merge(self, other);
    }
}

impl<T: Serialize + DeserializeOwned> Codec for LwwRegister<T> {
    const KIND: MessageKind = MessageKind::RegisterState;

    fn encode(&self, limits: &Limits) -> Result<Vec<u8>> {
        let mut w = Writer::new(Self::KIND);
        w.value(&self.stamp)?;
        w.value(&self.value)?;
        w.finish(limits)
    }

    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::open(bytes, Self::KIND, limits)?;
        let stamp = r.value()?;
        let value = r.value()?;
        r.finish()?;
        Ok(Self { stamp, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ReplicaId;

    fn stamp(ms: u64, node: u64) -> Hlc {
        Hlc::new(ms, 0, ReplicaId::from_u64(node))
    }

    #[test]
    fn equal_stamps_resolve_the_same_way_in_both_directions_and_are_reported() {
        let a = LwwRegister::new("apple".to_string(), stamp(5, 1));
        let b = LwwRegister::new("banana".to_string(), stamp(5, 1));
        let mut ab = a.clone();
        let out_ab = ab.merge(b.clone());
        let mut ba = b.clone();
        let out_ba = ba.merge(a.clone());
        assert_eq!(ab, ba);
        assert_eq!(ab.value(), "banana");
        assert_eq!(out_ab.conflicts.len(), 1);
        assert_eq!(out_ba.conflicts.len(), 1);
        assert_eq!(out_ab.changed, 1);
        assert_eq!(out_ba.changed, 0);
        assert_eq!(
            crdts::CvRDT::validate_merge(&a, &b),
            Err(Error::Conflict { stamp: stamp(5, 1) })
        );
    }

    #[test]
    fn greater_stamp_wins_and_set_always_supersedes() {
        let mut clock = HlcClock::new(ReplicaId::from_u64(1), 1_000);
        let mut r = LwwRegister::new(1u32, stamp(100, 7));
        // Local wall clock is behind the register's stamp; set still wins.
        let s = r.set(2, &mut clock, 10).unwrap();
        assert!(s > stamp(100, 7));
        assert_eq!(*r.value(), 2);
        let out = r.merge(LwwRegister::new(3, stamp(50, 9)));
        assert!(out.is_noop());
        assert_eq!(*r.value(), 2);
    }

    #[test]
    fn set_over_the_largest_stamp_is_refused_not_silently_lost() {
        let mut clock = HlcClock::new(ReplicaId::from_u64(1), 1_000);
        let top = Hlc::new(u64::MAX, u32::MAX, ReplicaId::new([0xff; 32]));
        let mut r = LwwRegister::new(1u32, top);
        let before = (r.clone(), clock.clone());
        assert_eq!(
            r.set(2, &mut clock, 10),
            Err(Error::ClockSaturated { floor: top })
        );
        assert_eq!((r, clock), before);
    }

    #[test]
    fn ingest_rejects_a_future_stamp_without_changing_anything() {
        let mut clock = HlcClock::new(ReplicaId::from_u64(1), 100);
        let mut r = LwwRegister::new(1u32, stamp(10, 1));
        let before = (r.clone(), clock.clone());
        let err = r
            .ingest(LwwRegister::new(9, stamp(1_000, 2)), &mut clock, 500)
            .unwrap_err();
        assert!(matches!(err, Error::ClockSkew { .. }));
        assert_eq!((r, clock), before);
    }

    #[test]
    fn delta_is_empty_when_the_peer_has_a_newer_or_equal_stamp() {
        let r = LwwRegister::new(1u32, stamp(10, 1));
        assert!(r.delta_for(&r.frontier()).is_none());
        let newer = LwwRegister::new(2u32, stamp(11, 2));
        assert!(r.delta_for(&newer.frontier()).is_none());
        let older = LwwRegister::new(2u32, stamp(9, 2));
        assert_eq!(r.delta_for(&older.frontier()), Some(r.clone()));
        assert_eq!(r.delta_for(&Frontier::new()), Some(r));
    }
}
