//! Delta-sync messages for [`LwwMap`](crate::LwwMap).

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    error::{Error, Result},
    frontier::Frontier,
    hlc::Hlc,
    map::{Entry, read_entries, write_entries},
    register::MergeOutcome,
    wire::{Codec, Limits, MessageKind, Reader, Writer},
};

/// "Send me what I am missing": a replica's frontier and, for a chunked
/// reply in progress, where to resume.
///
/// Built by [`LwwMap::sync_request`](crate::LwwMap::sync_request) (delta),
/// [`LwwMap::full_sync_request`](crate::LwwMap::full_sync_request)
/// (snapshot), or returned in [`Applied::next`] to fetch the next chunk.
///
/// Wire form ([`MessageKind::SyncRequest`]): frontier; `full` (postcard
/// bool); `after` (`Option<K>`); `echo` (tag byte: `0` none; `1` a frontier;
/// `2` a frontier then the series' horizon, an [`Hlc`]). Bounded by
/// [`Limits::max_origins`] per frontier and [`Limits::max_message_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest<K> {
    frontier: Frontier,
    full: bool,
    after: Option<K>,
    echo: Option<Frontier>,
    /// The horizon of the series' snapshot chunks; only with `echo`.
    echo_horizon: Option<Hlc>,
}

impl<K> SyncRequest<K> {
    /// A delta request from the start of the key space.
    pub fn new(frontier: Frontier) -> Self {
        Self {
            frontier,
            full: false,
            after: None,
            echo: None,
            echo_horizon: None,
        }
    }

    /// A snapshot (full state) request from the start of the key space.
    pub fn full(frontier: Frontier) -> Self {
        Self {
            full: true,
            ..Self::new(frontier)
        }
    }

    pub(crate) fn resume(
        frontier: Frontier,
        full: bool,
        after: K,
        echo: Frontier,
        echo_horizon: Option<Hlc>,
    ) -> Self {
        Self {
            frontier,
            full,
            after: Some(after),
            echo: Some(echo),
            echo_horizon,
        }
    }

    /// The requester's frontier.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Whether the full state is asked for.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Resume after this key (exclusive); `None` starts at the beginning.
    pub fn after(&self) -> Option<&K> {
        self.after.as_ref()
    }

    /// The sender frontier from the first chunk of this series, sent back
    /// so that the last chunk carries the frontier of the state the series
    /// started from.
    pub fn echo(&self) -> Option<&Frontier> {
        self.echo.as_ref()
    }

    /// The horizon the previous chunk of this snapshot series carried, sent
    /// back so that the sender can tell whether its horizon moved since the
    /// series started (it then starts the series again). `None` for a first
    /// request, a delta series, or a snapshot of a sender without a horizon.
    pub fn echo_horizon(&self) -> Option<Hlc> {
        self.echo.as_ref().and(self.echo_horizon)
    }
}

/// One bounded chunk of a delta or snapshot, answering a [`SyncRequest`].
///
/// It covers the key range `(after, until]` (open ends when `None`) and
/// holds, in strictly ascending key order:
///
/// * delta mode: the sender's entries in that range that the requester's
///   frontier does not cover;
/// * snapshot mode: all of the sender's entries in that range, plus the
///   sender's garbage-collection horizon.
///
/// `until == None` marks the last chunk, which carries the sender's frontier.
/// A requester adopts the frontier, collected floors and horizon only if it
/// trusts the sender ([`LwwMap::ingest_trusted_delta`](crate::LwwMap::ingest_trusted_delta));
/// [`LwwMap::ingest_delta`](crate::LwwMap::ingest_delta) merges the entries
/// alone. Fields are private: a chunk comes from
/// [`LwwMap::delta_for`](crate::LwwMap::delta_for) or from
/// [`decode`](Codec::decode), which checks every structural rule.
///
/// Bounds: at most [`Limits::max_entries`] entries and
/// [`Limits::max_message_bytes`] bytes encoded; frontiers at most
/// [`Limits::max_origins`] origins.
///
/// Wire form ([`MessageKind::MapDelta`]): `snapshot` (bool), `horizon`
/// (`Option<Hlc>`, `None` unless snapshot), `after` (`Option<K>`), `until`
/// (`Option<K>`), sender frontier, sender collected floors, entry count,
/// then key and [`Entry`] for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDelta<K, V> {
    snapshot: bool,
    horizon: Option<Hlc>,
    after: Option<K>,
    until: Option<K>,
    frontier: Frontier,
    collected: Frontier,
    entries: Vec<(K, Entry<V>)>,
}

/// The unpacked fields of a [`MapDelta`], in wire order.
pub(crate) type DeltaParts<K, V> = (
    bool,
    Option<Hlc>,
    Option<K>,
    Option<K>,
    Frontier,
    Frontier,
    Vec<(K, Entry<V>)>,
);

impl<K, V> MapDelta<K, V> {
    pub(crate) fn from_parts(
        snapshot: bool,
        horizon: Option<Hlc>,
        after: Option<K>,
        until: Option<K>,
        frontier: Frontier,
        collected: Frontier,
        entries: Vec<(K, Entry<V>)>,
    ) -> Self {
        Self {
            snapshot,
            horizon,
            after,
            until,
            frontier,
            collected,
            entries,
        }
    }

    pub(crate) fn into_parts(self) -> DeltaParts<K, V> {
        (
            self.snapshot,
            self.horizon,
            self.after,
            self.until,
            self.frontier,
            self.collected,
            self.entries,
        )
    }

    /// Whether this chunk is part of a snapshot (full state).
    pub fn is_snapshot(&self) -> bool {
        self.snapshot
    }

    /// Whether this is the last chunk of its series.
    pub fn is_last(&self) -> bool {
        self.until.is_none()
    }

    /// Number of entries carried.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is carried.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in ascending key order.
    pub fn entries(&self) -> &[(K, Entry<V>)] {
        &self.entries
    }

    /// Exclusive lower end of the key range covered.
    pub fn after(&self) -> Option<&K> {
        self.after.as_ref()
    }

    /// Inclusive upper end of the key range covered; `None` for the last chunk.
    pub fn until(&self) -> Option<&K> {
        self.until.as_ref()
    }

    /// The sender's frontier at the start of the series.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// The sender's collected-tombstone floors.
    pub fn collected(&self) -> &Frontier {
        &self.collected
    }

    /// The sender's garbage-collection horizon (snapshot chunks only).
    pub fn horizon(&self) -> Option<Hlc> {
        self.horizon
    }

    /// Every stamp in the chunk (entries, frontiers, horizon), for the skew check.
    pub(crate) fn stamps(&self) -> impl Iterator<Item = Hlc> + '_ {
        self.entries
            .iter()
            .map(|(_, e)| e.stamp())
            .chain(self.frontier.iter())
            .chain(self.collected.iter())
            .chain(self.horizon)
    }
}

/// The result of applying a [`MapDelta`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied<K> {
    /// What the merge did.
    pub outcome: MergeOutcome<K>,
    /// The request for the next chunk; `None` after the last chunk. Its
    /// answer must be applied on the same path (trusted or not) as this
    /// chunk: see [`LwwMap::ingest_trusted_delta`](crate::LwwMap::ingest_trusted_delta).
    pub next: Option<SyncRequest<K>>,
}

impl<K: Serialize + DeserializeOwned> Codec for SyncRequest<K> {
    const KIND: MessageKind = MessageKind::SyncRequest;

    fn encode(&self, limits: &Limits) -> Result<Vec<u8>> {
        let mut w = Writer::new(Self::KIND);
        w.frontier(&self.frontier, limits)?;
        w.value(&self.full)?;
        w.value(&self.after)?;
        match (&self.echo, self.echo_horizon) {
            (None, _) => w.value(&0u8)?,
            (Some(f), None) => {
                w.value(&1u8)?;
                w.frontier(f, limits)?;
            }
            (Some(f), Some(h)) => {
                w.value(&2u8)?;
                w.frontier(f, limits)?;
                w.value(&h)?;
            }
        }
        w.finish(limits)
    }

    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::open(bytes, Self::KIND, limits)?;
        let frontier = r.frontier(limits)?;
        let full: bool = r.value()?;
        let after: Option<K> = r.value()?;
        let (echo, echo_horizon) = match r.value::<u8>()? {
            0 => (None, None),
            1 => (Some(r.frontier(limits)?), None),
            2 => (Some(r.frontier(limits)?), Some(r.value::<Hlc>()?)),
            _ => return Err(Error::Decode(postcard::Error::DeserializeBadOption)),
        };
        r.finish()?;
        Ok(Self {
            frontier,
            full,
            after,
            echo,
            echo_horizon,
        })
    }
}

impl<K, V> Codec for MapDelta<K, V>
where
    K: Ord + Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    const KIND: MessageKind = MessageKind::MapDelta;

    fn encode(&self, limits: &Limits) -> Result<Vec<u8>> {
        let mut w = Writer::new(Self::KIND);
        w.value(&self.snapshot)?;
        w.value(&self.horizon)?;
        w.value(&self.after)?;
        w.value(&self.until)?;
        w.frontier(&self.frontier, limits)?;
        w.frontier(&self.collected, limits)?;
        write_entries(&mut w, self.entries.iter().map(|(k, e)| (k, e)), limits)?;
        w.finish(limits)
    }

    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::open(bytes, Self::KIND, limits)?;
        let snapshot: bool = r.value()?;
        let horizon: Option<Hlc> = r.value()?;
        let after: Option<K> = r.value()?;
        let until: Option<K> = r.value()?;
        let frontier = r.frontier(limits)?;
        let collected = r.frontier(limits)?;
        let entries: Vec<(K, Entry<V>)> = read_entries(&mut r, limits)?;
        r.finish()?;
        if horizon.is_some() && !snapshot {
            return Err(Error::Invalid {
                reason: "horizon in a delta that is not a snapshot",
            });
        }
        if let (Some(a), Some(u)) = (&after, &until)
            && a >= u
        {
            return Err(Error::Invalid {
                reason: "empty or inverted key range",
            });
        }
        let in_range =
            |k: &K| after.as_ref().is_none_or(|a| k > a) && until.as_ref().is_none_or(|u| k <= u);
        if !entries.iter().all(|(k, _)| in_range(k)) {
            return Err(Error::Invalid {
                reason: "entry outside the chunk's key range",
            });
        }
        Ok(Self {
            snapshot,
            horizon,
            after,
            until,
            frontier,
            collected,
            entries,
        })
    }
}
