//! Shared generators and helpers.

use fed_crdt::{Hlc, HlcClock, Limits, LwwMap, LwwRegister, ReplicaId};
use proptest::{collection::vec, prelude::*};

/// The map type most properties use: a tiny key space forces collisions.
pub(crate) type Map = LwwMap<u8, u16>;

/// Proptest cases: `FED_PROPTEST_CASES`, default 256.
pub(crate) fn cases() -> u32 {
    std::env::var("FED_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

pub(crate) fn config() -> ProptestConfig {
    ProptestConfig::with_cases(cases())
}

pub(crate) fn node(n: u64) -> ReplicaId {
    ReplicaId::from_u64(n)
}

/// Stamps from a deliberately tiny domain, so equal stamps are common.
pub(crate) fn small_stamp() -> impl Strategy<Value = Hlc> {
    (0u64..4, 0u32..3, 0u64..3).prop_map(|(p, l, n)| Hlc::new(p, l, node(n)))
}

/// A way to put a write into a test map.
#[derive(Debug, Clone)]
pub(crate) enum WriteOp {
    /// A write with an explicit (often colliding) stamp.
    At(u8, Option<u16>, Hlc),
    /// A local write through the clock of node `0..3` at time `now`.
    Local(usize, u8, Option<u16>, u64),
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        (0u8..6, proptest::option::of(0u16..4), small_stamp())
            .prop_map(|(k, v, s)| WriteOp::At(k, v, s)),
        (0usize..3, 0u8..6, proptest::option::of(0u16..4), 0u64..6)
            .prop_map(|(n, k, v, t)| WriteOp::Local(n, k, v, t)),
    ]
}

pub(crate) fn build(ops: &[WriteOp]) -> Map {
    let mut clocks: Vec<HlcClock> = (0..3).map(|n| HlcClock::new(node(n), 1_000)).collect();
    let mut m = Map::new();
    for op in ops {
        match op.clone() {
            WriteOp::At(k, v, s) => {
                m.write_at(k, v, s);
            }
            WriteOp::Local(n, k, Some(v), t) => {
                m.insert(k, v, &mut clocks[n], t).unwrap();
            }
            WriteOp::Local(n, k, None, t) => {
                m.remove(k, &mut clocks[n], t).unwrap();
            }
        }
    }
    m
}

/// Maps built from colliding explicit stamps and from independent clocks
/// that share node ids (so equal stamps with different values occur).
pub(crate) fn map() -> impl Strategy<Value = Map> {
    vec(write_op(), 0..14).prop_map(|ops| build(&ops))
}

pub(crate) fn register() -> impl Strategy<Value = LwwRegister<u16>> {
    (0u16..4, small_stamp()).prop_map(|(v, s)| LwwRegister::new(v, s))
}

/// Pulls everything `from` has into `to` through the delta protocol,
/// without encoding, using `max_entries` per chunk. Returns the chunk count.
pub(crate) fn pull<K, V>(from: &LwwMap<K, V>, to: &mut LwwMap<K, V>, max_entries: usize) -> usize
where
    K: Ord + Clone + serde::Serialize,
    V: Clone + serde::Serialize,
{
    pull_with(from, to, max_entries, false)
}

/// [`pull`] through [`LwwMap::apply_trusted_delta`], which applies a snapshot's removals.
pub(crate) fn pull_trusted<K, V>(
    from: &LwwMap<K, V>,
    to: &mut LwwMap<K, V>,
    max_entries: usize,
) -> usize
where
    K: Ord + Clone + serde::Serialize,
    V: Clone + serde::Serialize,
{
    pull_with(from, to, max_entries, true)
}

/// [`pull_trusted`] starting with a snapshot request (`full`).
pub(crate) fn pull_snapshot_trusted<K, V>(
    from: &LwwMap<K, V>,
    to: &mut LwwMap<K, V>,
    max_entries: usize,
) -> usize
where
    K: Ord + Clone + serde::Serialize,
    V: Clone + serde::Serialize,
{
    let first = to.full_sync_request();
    pull_from(from, to, max_entries, true, first)
}

fn pull_with<K, V>(
    from: &LwwMap<K, V>,
    to: &mut LwwMap<K, V>,
    max_entries: usize,
    trusted: bool,
) -> usize
where
    K: Ord + Clone + serde::Serialize,
    V: Clone + serde::Serialize,
{
    let first = to.sync_request();
    pull_from(from, to, max_entries, trusted, first)
}

fn pull_from<K, V>(
    from: &LwwMap<K, V>,
    to: &mut LwwMap<K, V>,
    max_entries: usize,
    trusted: bool,
    first: fed_crdt::SyncRequest<K>,
) -> usize
where
    K: Ord + Clone + serde::Serialize,
    V: Clone + serde::Serialize,
{
    let limits = Limits {
        max_entries,
        ..Limits::default()
    };
    let mut request = first;
    let mut chunks = 0;
    loop {
        chunks += 1;
        assert!(chunks < 10_000, "delta sync does not terminate");
        let delta = from.delta_for(&request, &limits).unwrap();
        assert!(delta.len() <= max_entries);
        let applied = if trusted {
            to.apply_trusted_delta(delta)
        } else {
            to.apply_delta(delta)
        };
        match applied.next {
            Some(next) => request = next,
            None => return chunks,
        }
    }
}
