//! Last-writer-wins map with tombstones, a garbage-collection horizon and
//! bounded delta-state sync.

use core::{borrow::Borrow, cmp::Ordering, ops::Bound};
use std::collections::{BTreeMap, btree_map};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    error::{Error, Result},
    frontier::Frontier,
    hlc::{Hlc, HlcClock},
    register::{Conflict, MergeOutcome, TieBreak, canonical_bytes},
    sync::{Applied, MapDelta, SyncRequest},
    wire::{Codec, Limits, MAX_PREALLOC, MessageKind, Reader, Writer, encoded_len},
};

/// Upper bound on the size of a postcard varint (a `u64`).
const MAX_VARINT_LEN: usize = 10;

/// At most this many [`Fence`]s are kept; past it the oldest is forgotten.
const MAX_FENCES: usize = 32;

/// A key range in which this replica holds every write stamped below `below`:
/// a trusted snapshot chunk from a sender whose horizon is `below` covered
/// the range (and removed what the sender's collected tombstones removed).
/// Until the series ends and this replica takes the horizon itself, entries
/// for keys in the range stamped below `below` are ignored, as the horizon
/// would ignore them; otherwise a late copy of a removed value (from a
/// lagging peer, or a delayed message) arriving in the middle of the series
/// would be merged back, and stay: once the series ends, this replica's
/// frontier covers the sender's collected floors, so no later delta repairs
/// it. A fence stays until this replica's horizon reaches `below` (also when
/// its series is abandoned or restarted: what it says stays true). Fences are
/// local, in memory only (a restart forgets them; the periodic full sync
/// repairs what a crash in the middle of a series lets through).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fence<K> {
    /// The range `(after, until]`; open ends when `None`.
    after: Option<K>,
    until: Option<K>,
    below: Hlc,
}

impl<K: Ord> Fence<K> {
    fn covers(&self, key: &K) -> bool {
        self.after.as_ref().is_none_or(|a| key > a) && self.until.as_ref().is_none_or(|u| key <= u)
    }

    /// Whether a write to `key` stamped `stamp` is stale by this fence.
    fn holds(&self, key: &K, stamp: Hlc) -> bool {
        stamp < self.below && self.covers(key)
    }
}

/// One key's state in an [`LwwMap`]: the winning write's stamp and its value,
/// or no value for a removal (a tombstone).
///
/// Wire form: the stamp, then the value as a postcard `Option` (`0x00` for a
/// tombstone, `0x01` followed by the value).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry<V> {
    stamp: Hlc,
    value: Option<V>,
}

impl<V> Entry<V> {
    /// An entry written at `stamp`; `None` is a tombstone.
    pub const fn new(stamp: Hlc, value: Option<V>) -> Self {
        Self { stamp, value }
    }

    /// Stamp of the write that produced this entry.
    pub fn stamp(&self) -> Hlc {
        self.stamp
    }

    /// The value, or `None` for a tombstone.
    pub fn value(&self) -> Option<&V> {
        self.value.as_ref()
    }

    /// Whether this entry records a removal.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// A map whose keys are independent last-writer-wins registers, with
/// tombstones for removals.
///
/// * **Merge** is per key, with the same order as [`LwwRegister`](crate::LwwRegister):
///   greater stamp, then greater canonical bytes of the postcard-encoded
///   `Option<V>` (so at equal stamps a value beats a tombstone). It is
///   commutative, associative and idempotent; equal stamps with different
///   values are reported in [`MergeOutcome::conflicts`].
/// * **Tombstones** stay until [`collect_garbage`](Self::collect_garbage) is
///   called with a horizon: a stamp below which the caller guarantees this
///   replica has received every write (in a federation, the stable
///   checkpoint). Tombstones below the horizon are dropped; afterwards every
///   incoming entry (value or tombstone) stamped below the horizon is
///   ignored: by the guarantee this replica already holds that write or one
///   that superseded it. The horizon is local; the only peer horizons ever
///   adopted are a trusted snapshot's and a trusted full state's (see below).
/// * **Delta sync**: a replica asks with a [`SyncRequest`] carrying its
///   [`Frontier`]; [`delta_for`](Self::delta_for) answers with a
///   [`MapDelta`] chunk holding only the entries the frontier does not
///   cover, bounded by [`Limits::max_entries`] and
///   [`Limits::max_message_bytes`]; the requester applies it and gets the
///   request for the next chunk, if any. A peer whose frontier does not cover
///   the tombstones this replica collected is sent a snapshot instead (full
///   state, chunked the same way).
/// * **Trust.** Input from the network goes through the `ingest_*`
///   functions, which check every stamp against the clock's forward-skew
///   bound. [`ingest_delta`](Self::ingest_delta) and
///   [`ingest_state`](Self::ingest_state) suit any peer: they only merge
///   entries, and never adopt the sender's frontier, collected floors or
///   horizon, nor remove anything by omission, so a dishonest peer cannot
///   suppress later deltas, force snapshots or erase what this replica holds
///   through them. It can still write: stamps and node ids are not
///   authenticated, so an entry above the horizon with a greater stamp (at
///   most the skew bound ahead) wins, whoever it claims wrote it.
///   [`ingest_trusted_delta`](Self::ingest_trusted_delta) and
///   [`ingest_trusted_state`](Self::ingest_trusted_state) also adopt the
///   sender's frontier and collected floors and apply a snapshot's removals
///   and horizon; applying every chunk of a snapshot series through them
///   gives the state that a trusted merge of the sender's full state gives
///   (and a delta series, the same values). The `apply_*`
///   functions, [`merge`](Self::merge) and [`write_at`](Self::write_at) skip
///   the skew check and are for local or trusted input only.
///
/// Bounds: the map itself is local state and is not bounded; every message
/// that carries it is (see [`Limits`]).
///
/// Equality compares the state: entries, frontier, collected floors and
/// horizon, not the fences of a snapshot series in progress (local, transient
/// and never encoded).
#[derive(Debug, Clone)]
pub struct LwwMap<K, V> {
    entries: BTreeMap<K, Entry<V>>,
    /// Number of entries that are not tombstones.
    live: usize,
    frontier: Frontier,
    collected: Frontier,
    horizon: Option<Hlc>,
    /// Ranges of snapshot series in progress (see [`Fence`]).
    fences: Vec<Fence<K>>,
}

impl<K: PartialEq, V: PartialEq> PartialEq for LwwMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
            && self.live == other.live
            && self.frontier == other.frontier
            && self.collected == other.collected
            && self.horizon == other.horizon
    }
}

impl<K: Eq, V: Eq> Eq for LwwMap<K, V> {}

impl<K, V> Default for LwwMap<K, V> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            live: 0,
            frontier: Frontier::new(),
            collected: Frontier::new(),
            horizon: None,
            fences: Vec::new(),
        }
    }
}

impl<K: Ord, V> LwwMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value stored under `key`, if it is present and not removed.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.get(key).and_then(|e| e.value.as_ref())
    }

    /// The entry (value or tombstone, with its stamp) under `key`.
    pub fn entry<Q>(&self, key: &Q) -> Option<&Entry<V>>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.get(key)
    }

    /// Whether `key` holds a value (not a tombstone).
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Number of keys holding a value.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no key holds a value.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Number of entries including tombstones.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Number of tombstones held.
    pub fn tombstone_count(&self) -> usize {
        self.entries.len() - self.live
    }

    /// Keys and values, tombstones skipped, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.value.as_ref().map(|v| (k, v)))
    }

    /// Every entry including tombstones, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&K, &Entry<V>)> + '_ {
        self.entries.iter()
    }

    /// What this replica has absorbed, per origin.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Per origin, the greatest stamp of a tombstone this replica (or a
    /// trusted replica whose state it absorbed) garbage-collected. A peer whose
    /// frontier does not cover it is sent a snapshot rather than a delta.
    pub fn collected(&self) -> &Frontier {
        &self.collected
    }

    /// The local garbage-collection horizon, if [`collect_garbage`](Self::collect_garbage) ran.
    pub fn horizon(&self) -> Option<Hlc> {
        self.horizon
    }

    /// The request to send a peer to get what this replica is missing.
    pub fn sync_request(&self) -> SyncRequest<K> {
        SyncRequest::new(self.frontier.clone())
    }

    /// A request for the peer's full state (a snapshot), for first contact or
    /// periodic repair.
    pub fn full_sync_request(&self) -> SyncRequest<K> {
        SyncRequest::full(self.frontier.clone())
    }

    /// Drops tombstones stamped below `horizon` and remembers the horizon
    /// (the greatest one given so far). Returns how many were dropped.
    ///
    /// The caller guarantees that this replica has received every write
    /// stamped below `horizon` (for example because the horizon is a stable
    /// checkpoint). With that guarantee, collection never resurrects a
    /// removed key and never loses a value.
    pub fn collect_garbage(&mut self, horizon: Hlc) -> usize {
        let h = match self.horizon {
            Some(old) if old >= horizon => old,
            _ => horizon,
        };
        self.horizon = Some(h);
        self.fences.retain(|f| f.below > h);
        let collected = &mut self.collected;
        let before = self.entries.len();
        self.entries.retain(|_, e| {
            if e.value.is_none() && e.stamp < h {
                collected.observe(e.stamp);
                false
            } else {
                true
            }
        });
        before - self.entries.len()
    }
}

impl<K: Ord + Clone, V: Serialize> LwwMap<K, V> {
    /// Writes `value` under `key` with a stamp from `clock` and returns that
    /// stamp. The stamp is greater than the key's current stamp, this node's
    /// own frontier entry, the garbage-collection horizon and the horizon of a
    /// trusted snapshot series in progress, so the write always takes effect,
    /// even when the wall clock is behind all of them.
    ///
    /// # Errors
    ///
    /// [`Error::ClockSaturated`] if no such stamp exists (one of them is at
    /// the top of the stamp range, which only a path without the skew check
    /// lets in); nothing is then changed.
    pub fn insert(&mut self, key: K, value: V, clock: &mut HlcClock, now_ms: u64) -> Result<Hlc> {
        self.write(key, Some(value), clock, now_ms)
    }

    /// Removes `key` by writing a tombstone stamped by `clock`, and returns
    /// the stamp (chosen as for [`insert`](Self::insert)). A tombstone is
    /// written even if the key is absent, so that it also overrides older
    /// concurrent writes not yet received.
    ///
    /// # Errors
    ///
    /// [`Error::ClockSaturated`] as for [`insert`](Self::insert).
    pub fn remove(&mut self, key: K, clock: &mut HlcClock, now_ms: u64) -> Result<Hlc> {
        self.write(key, None, clock, now_ms)
    }

    /// [`insert`](Self::insert) or [`remove`](Self::remove) for a value that
    /// depends on its own stamp, such as a value signed together with its stamp
    /// so that nobody can re-stamp it: `make` receives the key and the stamp,
    /// chosen as for `insert`, and returns the value to write (`None` writes a
    /// tombstone). Like `insert`, the write raises this replica's frontier.
    ///
    /// # Errors
    ///
    /// [`Error::ClockSaturated`] as for [`insert`](Self::insert); `make` is then
    /// not called.
    pub fn write_with<F>(
        &mut self,
        key: K,
        make: F,
        clock: &mut HlcClock,
        now_ms: u64,
    ) -> Result<Hlc>
    where
        F: FnOnce(&K, Hlc) -> Option<V>,
    {
        let stamp = self.next_stamp(&key, clock, now_ms)?;
        let value = make(&key, stamp);
        self.write_stamped(key, value, stamp);
        Ok(stamp)
    }

    fn write(
        &mut self,
        key: K,
        value: Option<V>,
        clock: &mut HlcClock,
        now_ms: u64,
    ) -> Result<Hlc> {
        let stamp = self.next_stamp(&key, clock, now_ms)?;
        self.write_stamped(key, value, stamp);
        Ok(stamp)
    }

    /// The stamp of a local write to `key`: above this node's frontier entry, the
    /// key's current stamp, the horizon and every fence (a write stamped below
    /// the horizon or a fence would be ignored, or removed at the end of the
    /// snapshot series that left the fence).
    fn next_stamp(&self, key: &K, clock: &mut HlcClock, now_ms: u64) -> Result<Hlc> {
        let own = self.frontier.get(&clock.node());
        let current = self.entries.get(key).map(|e| e.stamp);
        let fence = self.fence_floor();
        let floor = own.max(current).max(self.horizon).max(fence);
        clock.issue_above(floor, now_ms)
    }

    /// The greatest stamp below which a fence ignores writes, whatever their
    /// key: a key no fence covers yet may be in the range of a later chunk of
    /// the same series, whose end removes what is stamped below the sender's
    /// horizon and then takes that horizon.
    fn fence_floor(&self) -> Option<Hlc> {
        self.fences.iter().map(|f| f.below).max()
    }

    /// Records that `(after, until]` holds every write below `below`,
    /// extending a fence with the same `below` that ends at `after` (the same
    /// series' previous chunk).
    fn fence(&mut self, after: Option<K>, until: Option<K>, below: Hlc) {
        if self.horizon.is_some_and(|h| h >= below) {
            return;
        }
        if let Some(f) = self
            .fences
            .iter_mut()
            .find(|f| f.below == below && f.until.is_some() && f.until == after)
        {
            f.until = until;
            return;
        }
        if self.fences.len() >= MAX_FENCES {
            self.fences.remove(0);
        }
        self.fences.push(Fence {
            after,
            until,
            below,
        });
    }

    fn write_stamped(&mut self, key: K, value: Option<V>, stamp: Hlc) {
        let mut out = MergeOutcome::new();
        let mut tie = TieBreak::default();
        self.merge_entry(key, Entry::new(stamp, value), &mut tie, &mut out);
        self.frontier.observe(stamp);
    }

    /// Applies one write with a given stamp exactly as a merge would (for
    /// replaying a log or building test states). Local or trusted input
    /// only: there is no skew check. The frontier is not raised: only
    /// complete states do that.
    pub fn write_at(&mut self, key: K, value: Option<V>, stamp: Hlc) -> MergeOutcome<K> {
        let mut out = MergeOutcome::new();
        let mut tie = TieBreak::default();
        self.merge_entry(key, Entry::new(stamp, value), &mut tie, &mut out);
        out
    }

    /// Merges one incoming entry under the horizon rule and the LWW order.
    fn merge_entry(
        &mut self,
        key: K,
        incoming: Entry<V>,
        tie: &mut TieBreak,
        out: &mut MergeOutcome<K>,
    ) {
        // Below the horizon this replica holds the write or one that
        // superseded it (or collected the tombstone that did): whatever the
        // entry is, it can only be stale or forged.
        if self.horizon.is_some_and(|h| incoming.stamp < h)
            || self.fences.iter().any(|f| f.holds(&key, incoming.stamp))
        {
            out.discarded += 1;
            return;
        }
        match self.entries.entry(key) {
            btree_map::Entry::Vacant(slot) => {
                if incoming.value.is_some() {
                    self.live += 1;
                }
                slot.insert(incoming);
                out.changed += 1;
            }
            btree_map::Entry::Occupied(mut slot) => {
                let current = slot.get();
                let (ord, conflict) = tie.cmp(
                    &incoming.stamp,
                    &incoming.value,
                    &current.stamp,
                    &current.value,
                );
                if conflict {
                    out.conflicts.push(Conflict {
                        key: slot.key().clone(),
                        stamp: current.stamp,
                    });
                }
                if ord != Ordering::Greater {
                    return;
                }
                out.changed += 1;
                if current.value.is_some() {
                    self.live -= 1;
                }
                if incoming.value.is_some() {
                    self.live += 1;
                }
                *slot.get_mut() = incoming;
            }
        }
    }

    /// Merges another replica's full state into this one, believing all of
    /// it: the same operation as a trusted snapshot
    /// ([`ingest_trusted_delta`](Self::ingest_trusted_delta) on every chunk of
    /// a `full` series), unchunked. Local or trusted input only: there is no
    /// skew check. Input from the network goes through
    /// [`ingest_state`](Self::ingest_state) or
    /// [`ingest_trusted_state`](Self::ingest_trusted_state).
    ///
    /// In order: if the other state has a horizon `h`, entries of this
    /// replica stamped below `h` whose key the other state does not hold are
    /// removed (the other replica received those writes, by its horizon's
    /// guarantee, and no longer holds the key: a tombstone it collected
    /// removed it); then the entries merge per key; frontiers and collected
    /// floors join; and this replica collects garbage at `h`, taking the
    /// other's horizon if it is higher. Adopting the frontier and collected
    /// floors without the removals would leave removed values here that no
    /// later delta repairs, since peers would then believe this replica had
    /// seen the tombstones.
    ///
    /// Without horizons (no garbage collected on either side) and without
    /// fences here (no trusted snapshot series in progress) this is the plain
    /// per-key join: commutative, associative and idempotent.
    pub fn merge(&mut self, other: Self) -> MergeOutcome<K> {
        let mut out = MergeOutcome::new();
        if let Some(h) = other.horizon {
            self.drop_stale_outside(&other.entries, h, &mut out);
        }
        let mut tie = TieBreak::default();
        for (k, e) in other.entries {
            self.merge_entry(k, e, &mut tie, &mut out);
        }
        self.frontier.join(&other.frontier);
        self.collected.join(&other.collected);
        if let Some(h) = other.horizon {
            out.discarded += self.collect_garbage(h);
        }
        out
    }

    /// Removes own entries stamped below `horizon` whose keys `theirs` does
    /// not contain (the full-state form of [`drop_stale`](Self::drop_stale)).
    fn drop_stale_outside(
        &mut self,
        theirs: &BTreeMap<K, Entry<V>>,
        horizon: Hlc,
        out: &mut MergeOutcome<K>,
    ) {
        let stale: Vec<K> = self
            .entries
            .iter()
            .filter(|(k, e)| e.stamp < horizon && !theirs.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(e) = self.entries.remove(&k) {
                if e.value.is_some() {
                    self.live -= 1;
                }
                out.discarded += 1;
            }
        }
    }

    fn merge_entries(
        &mut self,
        entries: impl IntoIterator<Item = (K, Entry<V>)>,
    ) -> MergeOutcome<K> {
        let mut out = MergeOutcome::new();
        let mut tie = TieBreak::default();
        for (k, e) in entries {
            self.merge_entry(k, e, &mut tie, &mut out);
        }
        out
    }

    /// Merges the entries of a full state received from any peer at
    /// wall-clock time `now_ms`: every stamp is checked against `clock`'s
    /// forward-skew bound first, then the clock is advanced past the greatest
    /// one and the entries merge. The peer's frontier, collected floors and
    /// horizon are ignored (see the trust model on [`LwwMap`]).
    ///
    /// # Errors
    ///
    /// [`Error::ClockSkew`] if any stamp is too far ahead; `self` and `clock`
    /// are then unchanged.
    pub fn ingest_state(
        &mut self,
        other: Self,
        clock: &mut HlcClock,
        now_ms: u64,
    ) -> Result<MergeOutcome<K>> {
        check_and_observe(other.stamps(), clock, now_ms)?;
        Ok(self.merge_entries(other.entries))
    }

    /// [`ingest_state`](Self::ingest_state) for a peer the caller trusts, or
    /// a state whose content is certified: after the same skew check, merges
    /// as [`merge`](Self::merge) does: it removes the entries the peer's
    /// collected tombstones removed, adopts the peer's frontier and collected
    /// floors, and takes the peer's horizon if it is higher.
    ///
    /// # Errors
    ///
    /// [`Error::ClockSkew`] as for [`ingest_state`](Self::ingest_state).
    pub fn ingest_trusted_state(
        &mut self,
        other: Self,
        clock: &mut HlcClock,
        now_ms: u64,
    ) -> Result<MergeOutcome<K>> {
        check_and_observe(other.stamps(), clock, now_ms)?;
        Ok(self.merge(other))
    }

    /// Every stamp of the state (entries, frontier, collected floors,
    /// horizon), for the skew check.
    fn stamps(&self) -> impl Iterator<Item = Hlc> + '_ {
        self.entries
            .values()
            .map(|e| e.stamp)
            .chain(self.frontier.iter())
            .chain(self.collected.iter())
            .chain(self.horizon)
    }

    /// Produces the next chunk answering `request`.
    ///
    /// Delta mode (the default): the chunk holds, in key order after
    /// `request.after()`, the entries whose stamps the requester's frontier
    /// does not cover. Snapshot mode (when the request asks for full state,
    /// or when the requester's frontier does not cover this replica's
    /// [`collected`](Self::collected) floors, meaning it may have missed
    /// tombstones that no longer exist here): every entry, plus this
    /// replica's horizon.
    ///
    /// The chunk stops before [`Limits::max_entries`] entries or
    /// [`Limits::max_message_bytes`] encoded bytes would be exceeded; it then
    /// names the last key it covers and the requester asks again from there.
    ///
    /// A continuation of a snapshot series is answered from the first key
    /// again, with this replica's current frontier, when this replica's
    /// horizon is no longer the one the series carried
    /// ([`SyncRequest::echo_horizon`]): the requester takes the last chunk's
    /// horizon for every key of the series, so every chunk of a series must
    /// come from a state with that horizon.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`] if a single entry (or the frontiers alone)
    /// cannot fit in a message; [`Error::TooManyOrigins`] if a frontier has
    /// more origins than allowed; [`Error::Encode`] if a key or value fails to
    /// serialize.
    pub fn delta_for(&self, request: &SyncRequest<K>, limits: &Limits) -> Result<MapDelta<K, V>>
    where
        K: Serialize,
        V: Clone,
    {
        let snapshot = request.is_full() || !request.frontier().dominates(&self.collected);
        // Each chunk of a series is cut from this replica's state as it is at
        // that request, and a requester on the trusted path takes the last
        // chunk's horizon for every key of the series. So a snapshot
        // continuation whose series carried another horizon (or none: a delta
        // series, or one begun before this replica collected) starts the
        // series again from the first key, with the current frontier.
        let restart =
            request.echo().is_some() && snapshot && request.echo_horizon() != self.horizon;
        let horizon = if snapshot { self.horizon } else { None };
        let frontier = match request.echo() {
            Some(echo) if !restart => echo.clone(),
            _ => self.frontier.clone(),
        };
        let after = if restart {
            None
        } else {
            request.after().cloned()
        };

        // Size of everything but the entries and `until`, as `encode` writes it.
        let mut fixed = Writer::new(MessageKind::MapDelta);
        fixed.value(&snapshot)?;
        fixed.value(&horizon)?;
        fixed.value(&after)?;
        fixed.frontier(&frontier, limits)?;
        fixed.frontier(&self.collected, limits)?;
        // `until` tag byte and the worst-case entry-count varint.
        let mut used = fixed.written() + 1 + MAX_VARINT_LEN;
        let max_bytes = limits.max_message_bytes;
        if used > max_bytes {
            return Err(Error::MessageTooLarge {
                size: used,
                max: max_bytes,
            });
        }

        let lower = match &after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut scratch = Vec::new();
        let mut entries: Vec<(K, Entry<V>)> = Vec::new();
        let mut truncated = false;
        for (k, e) in self.entries.range((lower, Bound::Unbounded)) {
            if !snapshot && request.frontier().covers(&e.stamp) {
                continue;
            }
            let key_len = encoded_len(k, &mut scratch)?;
            let entry_len = encoded_len(e, &mut scratch)?;
            // Room for the entry and for naming its key as `until`.
            let need = key_len + entry_len + key_len;
            if entries.len() >= limits.max_entries || used + need > max_bytes {
                if entries.is_empty() {
                    return Err(if limits.max_entries == 0 {
                        Error::TooManyEntries { count: 1, max: 0 }
                    } else {
                        Error::MessageTooLarge {
                            size: used + need,
                            max: max_bytes,
                        }
                    });
                }
                truncated = true;
                break;
            }
            used += key_len + entry_len;
            entries.push((k.clone(), e.clone()));
        }
        let until = if truncated {
            entries.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok(MapDelta::from_parts(
            snapshot,
            horizon,
            after,
            until,
            frontier,
            self.collected.clone(),
            entries,
        ))
    }

    /// Applies a chunk from [`delta_for`](Self::delta_for) as
    /// [`ingest_delta`](Self::ingest_delta) does, without the skew check:
    /// for local or trusted input only (a stamp from the far future would win
    /// every later merge and exhaust the clock).
    pub fn apply_delta(&mut self, delta: MapDelta<K, V>) -> Applied<K> {
        self.apply_chunk(delta, false)
    }

    /// Applies a chunk as [`ingest_trusted_delta`](Self::ingest_trusted_delta)
    /// does, without the skew check: for local or trusted input only.
    pub fn apply_trusted_delta(&mut self, delta: MapDelta<K, V>) -> Applied<K> {
        self.apply_chunk(delta, true)
    }

    fn apply_chunk(&mut self, delta: MapDelta<K, V>, trusted: bool) -> Applied<K> {
        let (snapshot, horizon, after, until, frontier, collected, entries) = delta.into_parts();
        let mut out = MergeOutcome::new();
        let sender_horizon = if trusted && snapshot { horizon } else { None };
        if let Some(h) = sender_horizon {
            self.drop_stale(after.as_ref(), until.as_ref(), h, &entries, &mut out);
        }
        let mut tie = TieBreak::default();
        for (k, e) in entries {
            self.merge_entry(k, e, &mut tie, &mut out);
        }
        if trusted {
            self.collected.join(&collected);
        }
        if let (Some(h), Some(last)) = (sender_horizon, until.as_ref()) {
            // The horizon is taken at the end of the series; until then the
            // range this chunk covered keeps out what it would keep out.
            self.fence(after.clone(), Some(last.clone()), h);
        }
        let next = match until {
            None => {
                if trusted {
                    self.frontier.join(&frontier);
                    // After the whole snapshot this replica holds what the
                    // sender held, so it has received every write below the
                    // sender's horizon: adopting it keeps the removed keys
                    // from coming back with a lagging peer's old copies.
                    if let Some(h) = sender_horizon {
                        out.discarded += self.collect_garbage(h);
                    }
                }
                None
            }
            Some(last) => Some(SyncRequest::resume(
                self.frontier.clone(),
                snapshot,
                last,
                frontier,
                horizon,
            )),
        };
        Applied { outcome: out, next }
    }

    /// Applies a chunk received from any peer at wall-clock time `now_ms`.
    ///
    /// Every stamp of the chunk is checked against `clock`'s forward-skew
    /// bound, the clock advances past the greatest, then the entries merge
    /// (entries stamped below this replica's horizon are ignored). Nothing
    /// else is taken from the sender: its frontier, collected floors and
    /// horizon are not adopted and nothing is removed, so a dishonest sender
    /// cannot make honest peers skip writes this replica lacks, force
    /// snapshots on its requesters, or erase entries by omission. The cost:
    /// this replica's frontier grows only through its own writes and trusted
    /// syncs, so until the next trusted sync its requests are answered with
    /// every entry written since (or, once a peer has collected tombstones
    /// this frontier does not cover, with a snapshot).
    ///
    /// A dishonest sender can still withhold entries, and write: stamps and
    /// node ids are not authenticated, so any entry it sends above the
    /// horizon and within the skew bound merges like an honest write.
    ///
    /// The returned [`Applied::next`] is the request for the next chunk, if
    /// any.
    ///
    /// # Errors
    ///
    /// [`Error::ClockSkew`] if any stamp is too far ahead; `self` and `clock`
    /// are then unchanged.
    pub fn ingest_delta(
        &mut self,
        delta: MapDelta<K, V>,
        clock: &mut HlcClock,
        now_ms: u64,
    ) -> Result<Applied<K>> {
        self.ingest_chunk(delta, clock, now_ms, false)
    }

    /// [`ingest_delta`](Self::ingest_delta) for a sender the caller trusts
    /// not to lie by omission or about what it has seen, or a snapshot whose
    /// content is certified (for example against a stable checkpoint's
    /// digest). After the same skew check and merge, it also:
    ///
    /// * for a snapshot chunk, removes this replica's entries in the chunk's
    ///   key range that the sender does not hold and that are stamped below
    ///   the sender's horizon (the sender saw them and collected the
    ///   tombstone that removed them);
    /// * joins the sender's collected floors;
    /// * on the last chunk, joins the sender's frontier (as it was when the
    ///   series started) and, for a snapshot, raises the horizon to the
    ///   sender's (collecting the tombstones below it).
    ///
    /// A dishonest sender could make this replica drop live entries, skip
    /// writes in later deltas, or ignore writes below a horizon it made up.
    ///
    /// Every chunk of one series (a first chunk and the continuations its
    /// [`Applied::next`] asks for) must go through the same path. The last
    /// chunk's adoption of the horizon relies on the removals above having
    /// run for every earlier chunk; a series begun on the
    /// [`ingest_delta`](Self::ingest_delta) path and finished here would keep
    /// values the sender's collected tombstones removed, for good. To change
    /// the path, start a new series.
    ///
    /// # Errors
    ///
    /// [`Error::ClockSkew`] as for [`ingest_delta`](Self::ingest_delta).
    pub fn ingest_trusted_delta(
        &mut self,
        delta: MapDelta<K, V>,
        clock: &mut HlcClock,
        now_ms: u64,
    ) -> Result<Applied<K>> {
        self.ingest_chunk(delta, clock, now_ms, true)
    }

    fn ingest_chunk(
        &mut self,
        delta: MapDelta<K, V>,
        clock: &mut HlcClock,
        now_ms: u64,
        trusted: bool,
    ) -> Result<Applied<K>> {
        check_and_observe(delta.stamps(), clock, now_ms)?;
        Ok(self.apply_chunk(delta, trusted))
    }

    /// Removes own entries in `(after, until]` stamped below `horizon` whose
    /// keys the snapshot chunk `entries` (sorted) does not contain.
    fn drop_stale(
        &mut self,
        after: Option<&K>,
        until: Option<&K>,
        horizon: Hlc,
        entries: &[(K, Entry<V>)],
        out: &mut MergeOutcome<K>,
    ) {
        if let (Some(a), Some(u)) = (after, until)
            && a >= u
        {
            return;
        }
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let upper = until.map_or(Bound::Unbounded, Bound::Included);
        let stale: Vec<K> = self
            .entries
            .range((lower, upper))
            .filter(|(k, e)| {
                e.stamp < horizon && entries.binary_search_by(|(ek, _)| ek.cmp(k)).is_err()
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(e) = self.entries.remove(&k) {
                if e.value.is_some() {
                    self.live -= 1;
                }
                out.discarded += 1;
            }
        }
    }
}

/// Checks each stamp against the clock's skew bound, then observes the
/// greatest. Nothing changes unless all pass.
fn check_and_observe(
    stamps: impl Iterator<Item = Hlc>,
    clock: &mut HlcClock,
    now_ms: u64,
) -> Result<()> {
    let mut max: Option<Hlc> = None;
    for s in stamps {
        clock.check(&s, now_ms)?;
        max = max.max(Some(s));
    }
    if let Some(m) = max {
        clock.observe_unchecked(&m, now_ms);
    }
    Ok(())
}

impl<K: Ord + Clone, V: Serialize> crdts::CvRDT for LwwMap<K, V> {
    type Validation = Error;

    /// Fails with [`Error::Conflict`] at the first key where both maps hold
    /// equal stamps with different values.
    fn validate_merge(&self, other: &Self) -> Result<()> {
        for (k, theirs) in &other.entries {
            if let Some(ours) = self.entries.get(k)
                && ours.stamp == theirs.stamp
                && canonical_bytes(&ours.value) != canonical_bytes(&theirs.value)
            {
                return Err(Error::Conflict { stamp: ours.stamp });
            }
        }
        Ok(())
    }

    fn merge(&mut self, other: Self) {
        LwwMap::merge(self, other);
    }
}

/// Writes a sorted entry list: count, then key and entry for each.
pub(crate) fn write_entries<'a, K, V>(
    w: &mut Writer,
    entries: impl ExactSizeIterator<Item = (&'a K, &'a Entry<V>)>,
    limits: &Limits,
) -> Result<()>
where
    K: Serialize + 'a,
    V: Serialize + 'a,
{
    let n = entries.len();
    if n > limits.max_entries {
        return Err(Error::TooManyEntries {
            count: n as u64,
            max: limits.max_entries,
        });
    }
    w.len(n)?;
    for (k, e) in entries {
        w.value(k)?;
        w.value(e)?;
    }
    Ok(())
}

/// Reads an entry list, enforcing the count limit and strictly ascending keys.
pub(crate) fn read_entries<K, V>(r: &mut Reader<'_>, limits: &Limits) -> Result<Vec<(K, Entry<V>)>>
where
    K: Ord + DeserializeOwned,
    V: DeserializeOwned,
{
    let n = r.len(limits.max_entries, |count, max| Error::TooManyEntries {
        count,
        max,
    })?;
    let mut entries: Vec<(K, Entry<V>)> = Vec::with_capacity(n.min(MAX_PREALLOC));
    for _ in 0..n {
        let k: K = r.value()?;
        let e: Entry<V> = r.value()?;
        if let Some((prev, _)) = entries.last()
            && *prev >= k
        {
            return Err(Error::Invalid {
                reason: "entries not in strictly ascending key order",
            });
        }
        entries.push((k, e));
    }
    Ok(entries)
}

impl<K, V> Codec for LwwMap<K, V>
where
    K: Ord + Clone + Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    const KIND: MessageKind = MessageKind::MapState;

    /// Body: horizon (`Option<Hlc>`), frontier, collected floors, entries.
    fn encode(&self, limits: &Limits) -> Result<Vec<u8>> {
        let mut w = Writer::new(Self::KIND);
        w.value(&self.horizon)?;
        w.frontier(&self.frontier, limits)?;
        w.frontier(&self.collected, limits)?;
        write_entries(&mut w, self.entries.iter(), limits)?;
        w.finish(limits)
    }

    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::open(bytes, Self::KIND, limits)?;
        let horizon: Option<Hlc> = r.value()?;
        let frontier = r.frontier(limits)?;
        let collected = r.frontier(limits)?;
        let entries: Vec<(K, Entry<V>)> = read_entries(&mut r, limits)?;
        r.finish()?;
        if let Some(h) = horizon
            && entries
                .iter()
                .any(|(_, e)| e.value.is_none() && e.stamp < h)
        {
            return Err(Error::Invalid {
                reason: "tombstone below the horizon",
            });
        }
        let live = entries.iter().filter(|(_, e)| e.value.is_some()).count();
        Ok(Self {
            entries: entries.into_iter().collect(),
            live,
            frontier,
            collected,
            horizon,
            fences: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ReplicaId;

    fn clock(n: u64) -> HlcClock {
        HlcClock::new(ReplicaId::from_u64(n), 1_000)
    }

    #[test]
    fn insert_get_remove_and_counts() {
        let mut c = clock(1);
        let mut m: LwwMap<&str, u32> = LwwMap::new();
        m.insert("a", 1, &mut c, 10).unwrap();
        m.insert("b", 2, &mut c, 10).unwrap();
        m.remove("a", &mut c, 11).unwrap();
        m.remove("zzz", &mut c, 11).unwrap();
        assert_eq!(m.get(&"a"), None);
        assert_eq!(m.get(&"b"), Some(&2));
        assert_eq!(m.len(), 1);
        assert_eq!(m.entry_count(), 3);
        assert_eq!(m.tombstone_count(), 2);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(&"b", &2)]);
        assert_eq!(m.frontier().get(&ReplicaId::from_u64(1)), Some(c.last()));
    }

    #[test]
    fn write_with_hands_the_stamp_to_the_value_and_raises_the_frontier() {
        let mut c = clock(1);
        let mut m: LwwMap<u8, (u8, Hlc)> = LwwMap::new();
        m.write_at(
            7,
            Some((0, Hlc::new(5_000, 3, ReplicaId::from_u64(9)))),
            Hlc::new(5_000, 3, ReplicaId::from_u64(9)),
        );
        let s = m
            .write_with(7, |k, stamp| Some((*k, stamp)), &mut c, 10)
            .unwrap();
        // The stamp the value saw is the entry's stamp, above the key's current one.
        assert!(s > Hlc::new(5_000, 3, ReplicaId::from_u64(9)));
        assert_eq!(m.entry(&7).unwrap().stamp(), s);
        assert_eq!(m.get(&7), Some(&(7, s)));
        assert_eq!(m.frontier().get(&ReplicaId::from_u64(1)), Some(s));
        let t = m.write_with(7, |_, _| None, &mut c, 11).unwrap();
        assert!(t > s && !m.contains_key(&7));
        assert_eq!(m.frontier().get(&ReplicaId::from_u64(1)), Some(t));
    }

    #[test]
    fn local_write_supersedes_a_newer_remote_value_even_with_a_slow_clock() {
        let mut slow = clock(1);
        let mut m: LwwMap<u8, u8> = LwwMap::new();
        m.write_at(7, Some(1), Hlc::new(5_000, 3, ReplicaId::from_u64(9)));
        let s = m.insert(7, 2, &mut slow, 10).unwrap();
        assert!(s > Hlc::new(5_000, 3, ReplicaId::from_u64(9)));
        assert_eq!(m.get(&7), Some(&2));
    }

    #[test]
    fn value_beats_tombstone_at_equal_stamp_in_both_orders() {
        let s = Hlc::new(1, 0, ReplicaId::from_u64(1));
        let mut a: LwwMap<u8, u8> = LwwMap::new();
        a.write_at(1, None, s);
        let mut b: LwwMap<u8, u8> = LwwMap::new();
        b.write_at(1, Some(0), s);
        let mut ab = a.clone();
        let out = ab.merge(b.clone());
        assert_eq!(out.conflicts, vec![Conflict { key: 1, stamp: s }]);
        let mut ba = b.clone();
        ba.merge(a);
        assert_eq!(ab, ba);
        assert_eq!(ab.get(&1), Some(&0));
    }

    #[test]
    fn gc_drops_old_tombstones_and_ignores_stale_writes_below_the_horizon() {
        let mut c = clock(1);
        let mut m: LwwMap<u8, u8> = LwwMap::new();
        m.insert(1, 1, &mut c, 10).unwrap();
        m.remove(1, &mut c, 20).unwrap();
        m.remove(2, &mut c, 30).unwrap();
        assert_eq!(m.collect_garbage(Hlc::floor(25)), 1);
        assert_eq!(m.entry_count(), 1);
        assert_eq!(
            m.collected()
                .get(&ReplicaId::from_u64(1))
                .map(|s| s.physical_ms()),
            Some(20)
        );
        // A stale copy of the removed value arrives late: ignored.
        let out = m.write_at(1, Some(1), Hlc::new(10, 0, ReplicaId::from_u64(1)));
        assert_eq!(out.discarded, 1);
        assert_eq!(m.get(&1), None);
        // A new write above the horizon is accepted.
        m.insert(1, 5, &mut c, 40).unwrap();
        assert_eq!(m.get(&1), Some(&5));
        // A lower horizon does not move it back.
        m.collect_garbage(Hlc::floor(1));
        assert_eq!(m.horizon(), Some(Hlc::floor(25)));
    }

    #[test]
    fn chunked_delta_equals_full_merge() {
        let (mut ca, mut cb) = (clock(1), clock(2));
        let mut a: LwwMap<u32, u32> = LwwMap::new();
        let mut b: LwwMap<u32, u32> = LwwMap::new();
        for i in 0..50 {
            a.insert(i, i, &mut ca, 100 + u64::from(i)).unwrap();
        }
        let mut merged = b.clone();
        merged.merge(a.clone());
        let limits = Limits {
            max_entries: 7,
            ..Limits::default()
        };
        let pull = |to: &mut LwwMap<u32, u32>, trusted: bool| {
            let mut req = to.sync_request();
            let mut rounds = 0;
            loop {
                rounds += 1;
                let d = a.delta_for(&req, &limits).unwrap();
                assert!(d.len() <= 7);
                let applied = if trusted {
                    to.apply_trusted_delta(d)
                } else {
                    to.apply_delta(d)
                };
                match applied.next {
                    Some(next) => req = next,
                    None => return rounds,
                }
            }
        };
        // The untrusted path merges the entries only.
        let mut untrusted = b.clone();
        assert_eq!(pull(&mut untrusted, false), 8);
        assert!(untrusted.entries().eq(merged.entries()));
        assert_eq!(untrusted.frontier(), b.frontier());
        // The trusted path also adopts the frontier: the full merge.
        assert_eq!(pull(&mut b, true), 8);
        assert_eq!(b, merged);
        // In sync: the next delta is empty and final.
        let d = a.delta_for(&b.sync_request(), &limits).unwrap();
        assert!(d.is_empty() && d.is_last());
        // A local change travels alone.
        a.insert(3, 33, &mut ca, 500).unwrap();
        b.insert(1_000, 1, &mut cb, 500).unwrap();
        let d = a.delta_for(&b.sync_request(), &limits).unwrap();
        assert_eq!(d.len(), 1);
        b.apply_trusted_delta(d);
        assert_eq!(b.get(&3), Some(&33));
    }

    fn node(n: u64) -> ReplicaId {
        ReplicaId::from_u64(n)
    }

    /// A last, non-snapshot chunk with the given claims and entries, as a
    /// dishonest sender can encode it.
    fn forged(
        frontier: &[Hlc],
        collected: &[Hlc],
        entries: Vec<(u8, Entry<u8>)>,
    ) -> MapDelta<u8, u8> {
        MapDelta::from_parts(
            false,
            None,
            None,
            None,
            frontier.iter().copied().collect(),
            collected.iter().copied().collect(),
            entries,
        )
    }

    #[test]
    fn an_untrusted_chunk_cannot_poison_the_frontier_or_the_collected_floors() {
        let limits = Limits::default();
        let (mut cp, mut cq) = (clock(1), clock(2));
        let mut p: LwwMap<u8, u8> = LwwMap::new();
        p.insert(1, 1, &mut cp, 10).unwrap();
        // An honest Q holds a write P lacks.
        let mut q: LwwMap<u8, u8> = LwwMap::new();
        q.insert(2, 2, &mut cq, 20).unwrap();
        // A liar claims to have seen Q's writes far ahead, and a collected
        // tombstone by an origin that does not exist.
        let far = Hlc::new(900, 0, node(2));
        let ghost = Hlc::new(50, 0, node(77));
        let lie = forged(&[far], &[ghost], Vec::new());
        let before = (p.frontier().clone(), p.collected().clone());
        let applied = p.ingest_delta(lie.clone(), &mut cp, 100).unwrap();
        assert!(applied.next.is_none());
        assert_eq!((p.frontier().clone(), p.collected().clone()), before);
        // Q still sends P its write...
        let d = q.delta_for(&p.sync_request(), &limits).unwrap();
        assert_eq!(d.len(), 1);
        // ...and a requester covering P's state gets a delta, not a snapshot.
        let covering = SyncRequest::new(p.frontier().clone());
        assert!(!p.delta_for(&covering, &limits).unwrap().is_snapshot());
        // The trusted path believes the claims, which is why it is only for
        // trusted senders.
        let mut trusting = p.clone();
        trusting.ingest_trusted_delta(lie, &mut cp, 100).unwrap();
        let d = q.delta_for(&trusting.sync_request(), &limits).unwrap();
        assert!(d.is_empty());
        assert!(
            trusting
                .delta_for(&covering, &limits)
                .unwrap()
                .is_snapshot()
        );
    }

    #[test]
    fn entries_below_the_horizon_are_ignored_so_a_forged_tombstone_cannot_delete() {
        let mut c = clock(1);
        let mut p: LwwMap<u8, u8> = LwwMap::new();
        let s0 = p.insert(1, 10, &mut c, 10).unwrap();
        p.collect_garbage(Hlc::floor(100));
        // A tombstone stamped between the value and the horizon: a stamp in
        // the past passes the skew check.
        let tomb = Entry::new(Hlc::new(50, 0, node(9)), None);
        let out = p
            .ingest_delta(forged(&[], &[], vec![(1, tomb)]), &mut c, 200)
            .unwrap()
            .outcome;
        assert_eq!((out.changed, out.discarded), (0, 1));
        assert_eq!(p.get(&1), Some(&10));
        assert!(p.collected().is_empty());
        // The honest copy of the value arriving later changes nothing either:
        // the replicas still agree.
        let honest = Entry::new(s0, Some(10));
        let out = p
            .ingest_delta(forged(&[], &[], vec![(1, honest)]), &mut c, 200)
            .unwrap()
            .outcome;
        assert_eq!(out.discarded, 1);
        assert_eq!(p.get(&1), Some(&10));
        // Above the horizon a greater stamp still wins: stamps are not
        // authenticated.
        let later = Entry::new(Hlc::new(150, 0, node(9)), None);
        let out = p
            .ingest_delta(forged(&[], &[], vec![(1, later)]), &mut c, 200)
            .unwrap()
            .outcome;
        assert_eq!(out.changed, 1);
        assert_eq!(p.get(&1), None);
    }

    #[test]
    fn a_local_write_is_stamped_above_the_horizon_even_with_a_slow_clock() {
        let mut c = clock(1);
        let mut m: LwwMap<u8, u8> = LwwMap::new();
        m.collect_garbage(Hlc::floor(5_000));
        let s = m.insert(1, 7, &mut c, 10).unwrap();
        assert!(s >= Hlc::floor(5_000));
        assert_eq!(m.get(&1), Some(&7));
        assert_eq!(m.frontier().get(&node(1)), Some(s));
        let t = m.remove(2, &mut c, 11).unwrap();
        assert!(t > s);
        assert_eq!(m.entry(&2).map(Entry::stamp), Some(t));
    }

    #[test]
    fn a_write_that_cannot_supersede_is_refused_not_silently_lost() {
        let mut c = clock(1);
        let mut m: LwwMap<u8, u8> = LwwMap::new();
        let top = Hlc::new(u64::MAX, u32::MAX, ReplicaId::new([0xff; 32]));
        m.write_at(1, Some(1), top);
        let before = (m.clone(), c.clone());
        assert_eq!(
            m.insert(1, 2, &mut c, 10),
            Err(Error::ClockSaturated { floor: top })
        );
        assert_eq!((m, c), before);
    }
}
