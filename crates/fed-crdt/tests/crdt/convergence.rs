//! Replicas converge under random delivery order, duplicated and dropped
//! messages, chunked deltas, snapshots, full-state merges and garbage
//! collection (also while a replica lags behind), through the trusted and
//! the untrusted ingest paths, once a final resync runs; and applying deltas
//! equals merging full states (the entries only, on the untrusted path).

use std::collections::BTreeMap;

use fed_crdt::{Applied, Codec, Hlc, HlcClock, Limits, MapDelta, SyncRequest};
use proptest::{collection::vec, prelude::*};

use crate::support::{Map, config, node, pull, pull_snapshot_trusted, pull_trusted};

const N: usize = 3;

#[derive(Debug, Clone)]
enum SimOp {
    /// Replica `r` writes (or removes, for `None`) `key`, `dt` ms later.
    Write {
        r: usize,
        key: u8,
        value: Option<u16>,
        dt: u64,
    },
    /// `requester` sends `responder` a sync request (a snapshot one if `full`).
    Request {
        requester: usize,
        responder: usize,
        full: bool,
    },
    /// Delivers one in-flight message; keeps a copy in flight if
    /// `duplicate`; a delta that begins a series goes through the trusted
    /// ingest path if `trusted`, and the rest of its series through the same
    /// path (the API's contract: a replica decides per series, as a node
    /// decides per peer).
    Deliver {
        pick: usize,
        duplicate: bool,
        trusted: bool,
    },
    /// Loses one in-flight message.
    Drop { pick: usize },
    /// Reliable sync of every pair not involving `except`; afterwards the
    /// replicas that took part may collect below a new stable horizon (every
    /// write below it reached each of them), and `except` lags behind.
    Barrier {
        trusted: bool,
        except: Option<usize>,
    },
    /// Replica `r` collects garbage below its last stable horizon.
    Gc { r: usize },
    /// Replica `to` merges the whole state of `from` (`ingest_trusted_state`
    /// if `trusted`, else `ingest_state`).
    State {
        to: usize,
        from: usize,
        trusted: bool,
    },
}

fn sim_op(with_gc: bool) -> impl Strategy<Value = SimOp> {
    let gc_weight = if with_gc { 1 } else { 0 };
    prop_oneof![
        6 => (0..N, 0u8..8, proptest::option::of(any::<u16>()), 0u64..5)
            .prop_map(|(r, key, value, dt)| SimOp::Write { r, key, value, dt }),
        3 => (0..N, 0..N, proptest::bool::weighted(0.15)).prop_map(|(requester, responder, full)| {
            SimOp::Request { requester, responder, full }
        }),
        6 => (any::<usize>(), proptest::bool::weighted(0.2), any::<bool>())
            .prop_map(|(pick, duplicate, trusted)| SimOp::Deliver { pick, duplicate, trusted }),
        1 => any::<usize>().prop_map(|pick| SimOp::Drop { pick }),
        gc_weight => (any::<bool>(), proptest::option::weighted(0.5, 0..N))
            .prop_map(|(trusted, except)| SimOp::Barrier { trusted, except }),
        gc_weight * 2 => (0..N).prop_map(|r| SimOp::Gc { r }),
        1 => (0..N, 0..N, any::<bool>()).prop_map(|(to, from, trusted)| SimOp::State { to, from, trusted }),
    ]
}

/// `series` is the ingest path of the series a continuation request (and the
/// chunk answering it) belongs to: `None` for a series' first request.
#[derive(Clone)]
enum Msg {
    Request {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        series: Option<bool>,
    },
    Delta {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        series: Option<bool>,
    },
}

struct Sim {
    now: u64,
    /// Per-replica wall-clock offsets: the replicas' clocks disagree.
    offsets: [u64; N],
    clocks: Vec<HlcClock>,
    maps: Vec<Map>,
    net: Vec<Msg>,
    /// Every write ever made: key, value, stamp.
    log: Vec<(u8, Option<u16>, Hlc)>,
    /// Per replica, the horizon it may collect below.
    stable: [Option<Hlc>; N],
    limits: Limits,
    collected_any: bool,
    /// Whether a barrier left a replica out.
    partial: bool,
}

impl Sim {
    fn new(offsets: [u64; N], max_entries: usize) -> Self {
        Self {
            now: 1_000,
            offsets,
            clocks: (0..N as u64)
                .map(|n| HlcClock::new(node(n), 10_000))
                .collect(),
            maps: (0..N).map(|_| Map::new()).collect(),
            net: Vec::new(),
            log: Vec::new(),
            stable: [None; N],
            limits: Limits {
                max_entries,
                ..Limits::default()
            },
            collected_any: false,
            partial: false,
        }
    }

    fn local_now(&self, r: usize) -> u64 {
        self.now + self.offsets[r]
    }

    fn send_request(
        &mut self,
        from: usize,
        to: usize,
        request: &SyncRequest<u8>,
        series: Option<bool>,
    ) {
        let bytes = request.encode(&self.limits).unwrap();
        self.net.push(Msg::Request {
            from,
            to,
            bytes,
            series,
        });
    }

    fn step(&mut self, op: &SimOp) {
        match *op {
            SimOp::Write { r, key, value, dt } => {
                self.now += dt;
                let now = self.local_now(r);
                let stamp = match value {
                    Some(v) => self.maps[r]
                        .insert(key, v, &mut self.clocks[r], now)
                        .unwrap(),
                    None => self.maps[r].remove(key, &mut self.clocks[r], now).unwrap(),
                };
                self.log.push((key, value, stamp));
            }
            SimOp::Request {
                requester,
                responder,
                full,
            } => {
                if requester != responder {
                    let m = &self.maps[requester];
                    let req = if full {
                        m.full_sync_request()
                    } else {
                        m.sync_request()
                    };
                    self.send_request(requester, responder, &req, None);
                }
            }
            SimOp::Deliver {
                pick,
                duplicate,
                trusted,
            } => {
                if self.net.is_empty() {
                    return;
                }
                let i = pick % self.net.len();
                let msg = if duplicate {
                    self.net[i].clone()
                } else {
                    self.net.swap_remove(i)
                };
                self.deliver(msg, trusted);
            }
            SimOp::Drop { pick } => {
                if !self.net.is_empty() {
                    let i = pick % self.net.len();
                    self.net.swap_remove(i);
                }
            }
            SimOp::Barrier { trusted, except } => {
                let part: Vec<usize> = (0..N).filter(|r| Some(*r) != except).collect();
                self.partial |= except.is_some();
                self.resync_among(&part, trusted);
                if let Some(h) = self.stable_horizon(&part) {
                    for &r in &part {
                        self.stable[r] = Some(h);
                    }
                    // Every clock passes the horizon, as a federation's
                    // stable checkpoint would make it: no later write is
                    // stamped below it.
                    for r in 0..N {
                        let now = self.local_now(r);
                        self.clocks[r].observe(&h, now).unwrap();
                    }
                }
            }
            SimOp::Gc { r } => {
                if let Some(h) = self.stable[r]
                    && self.maps[r].collect_garbage(h) > 0
                {
                    self.collected_any = true;
                }
            }
            SimOp::State { to, from, trusted } => {
                if to != from {
                    let now = self.local_now(to);
                    let state = self.maps[from].clone();
                    let (map, clock) = (&mut self.maps[to], &mut self.clocks[to]);
                    if trusted {
                        map.ingest_trusted_state(state, clock, now).unwrap();
                    } else {
                        map.ingest_state(state, clock, now).unwrap();
                    }
                }
            }
        }
    }

    fn deliver(&mut self, msg: Msg, trusted: bool) {
        match msg {
            Msg::Request {
                from,
                to,
                bytes,
                series,
            } => {
                let req = SyncRequest::<u8>::decode(&bytes, &self.limits).unwrap();
                let delta = self.maps[to].delta_for(&req, &self.limits).unwrap();
                let bytes = delta.encode(&self.limits).unwrap();
                self.net.push(Msg::Delta {
                    from: to,
                    to: from,
                    bytes,
                    series,
                });
            }
            Msg::Delta {
                from,
                to,
                bytes,
                series,
            } => {
                let delta = MapDelta::<u8, u16>::decode(&bytes, &self.limits).unwrap();
                let path = series.unwrap_or(trusted);
                let applied = self.ingest(to, delta, path);
                if let Some(next) = applied.next {
                    self.send_request(to, from, &next, Some(path));
                }
            }
        }
    }

    fn ingest(&mut self, to: usize, delta: MapDelta<u8, u16>, trusted: bool) -> Applied<u8> {
        let now = self.local_now(to);
        let (map, clock) = (&mut self.maps[to], &mut self.clocks[to]);
        if trusted {
            map.ingest_trusted_delta(delta, clock, now).unwrap()
        } else {
            map.ingest_delta(delta, clock, now).unwrap()
        }
    }

    /// Whether replica `r` has received the write `(key, stamp)`: it holds
    /// that key at the stamp or later, or its horizon is above the stamp
    /// (so it held it before collecting).
    fn received(&self, r: usize, key: u8, stamp: Hlc) -> bool {
        let m = &self.maps[r];
        m.entry(&key).is_some_and(|e| e.stamp() >= stamp) || m.horizon().is_some_and(|h| h > stamp)
    }

    /// The greatest horizon below which every write reached every replica
    /// of `part`: the smallest stamp one of them misses, or else just above
    /// the newest write.
    fn stable_horizon(&self, part: &[usize]) -> Option<Hlc> {
        let missed = self
            .log
            .iter()
            .filter(|(k, _, s)| part.iter().any(|&r| !self.received(r, *k, *s)))
            .map(|(_, _, s)| *s)
            .min();
        missed.or_else(|| {
            self.log
                .iter()
                .map(|(_, _, s)| Hlc::floor(s.physical_ms() + 1))
                .max()
        })
    }

    /// Reliable, in-order sync of every pair, through the same messages.
    fn resync(&mut self, trusted: bool) {
        let all: Vec<usize> = (0..N).collect();
        self.resync_among(&all, trusted);
    }

    /// [`resync`](Self::resync) among the replicas of `part` only.
    fn resync_among(&mut self, part: &[usize], trusted: bool) {
        for _ in 0..2 {
            for &to in part {
                for &from in part {
                    if from == to {
                        continue;
                    }
                    let mut request = self.maps[to].sync_request();
                    loop {
                        let bytes = request.encode(&self.limits).unwrap();
                        let req = SyncRequest::<u8>::decode(&bytes, &self.limits).unwrap();
                        let delta = self.maps[from].delta_for(&req, &self.limits).unwrap();
                        let bytes = delta.encode(&self.limits).unwrap();
                        let delta = MapDelta::<u8, u16>::decode(&bytes, &self.limits).unwrap();
                        match self.ingest(to, delta, trusted).next {
                            Some(next) => request = next,
                            None => break,
                        }
                    }
                }
            }
        }
    }

    /// The live view every replica must end with: for each key, the value
    /// of the greatest-stamped write ever made.
    fn expected(&self) -> BTreeMap<u8, u16> {
        let mut last: BTreeMap<u8, (Hlc, Option<u16>)> = BTreeMap::new();
        for (k, v, s) in &self.log {
            let e = last.entry(*k).or_insert((*s, *v));
            if *s > e.0 {
                *e = (*s, *v);
            }
        }
        last.into_iter()
            .filter_map(|(k, (_, v))| v.map(|v| (k, v)))
            .collect()
    }
}

fn live(m: &Map) -> BTreeMap<u8, u16> {
    m.iter().map(|(k, v)| (*k, *v)).collect()
}

fn run(ops: &[SimOp], offsets: [u64; N], max_entries: usize) -> Sim {
    let mut sim = Sim::new(offsets, max_entries);
    for op in ops {
        sim.step(op);
    }
    sim
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn replicas_converge_despite_reordering_duplicates_drops_and_gc(
        ops in vec(sim_op(true), 0..120),
        offsets in proptest::array::uniform3(0u64..50),
        max_entries in 1usize..5,
        final_trusted in any::<bool>(),
    ) {
        let mut sim = run(&ops, offsets, max_entries);
        // Whatever is still in flight is lost; a final resync repairs it. A
        // replica that missed tombstones its peers collected is repaired only
        // by a trusted snapshot (crdt.md section 7.4), so then the final
        // resync is trusted.
        let final_trusted = final_trusted || (sim.partial && sim.collected_any);
        sim.net.clear();
        sim.resync(final_trusted);
        let expected = sim.expected();
        for m in &sim.maps {
            prop_assert_eq!(&live(m), &expected);
        }
        if !sim.collected_any {
            // Without garbage collection the whole entry sets, tombstones
            // included, are identical; after a trusted resync the frontiers
            // are too (the untrusted path never adopts them).
            for m in &sim.maps[1..] {
                prop_assert!(m.entries().eq(sim.maps[0].entries()));
                if final_trusted {
                    prop_assert_eq!(m.frontier(), sim.maps[0].frontier());
                }
            }
        }
    }

    #[test]
    fn applying_deltas_equals_merging_full_state(
        ops in vec(sim_op(false), 0..80),
        offsets in proptest::array::uniform3(0u64..50),
        max_entries in 1usize..5,
    ) {
        let sim = run(&ops, offsets, 16);
        for from in 0..N {
            for to in 0..N {
                let mut by_merge = sim.maps[to].clone();
                by_merge.merge(sim.maps[from].clone());
                let mut trusted = sim.maps[to].clone();
                pull_trusted(&sim.maps[from], &mut trusted, max_entries);
                prop_assert_eq!(&trusted, &by_merge);
                // The untrusted path gets the same entries and keeps its own
                // frontier and collected floors.
                let mut untrusted = sim.maps[to].clone();
                pull(&sim.maps[from], &mut untrusted, max_entries);
                prop_assert!(untrusted.entries().eq(by_merge.entries()));
                prop_assert_eq!(untrusted.frontier(), sim.maps[to].frontier());
                prop_assert_eq!(untrusted.collected(), sim.maps[to].collected());
            }
        }
    }

    #[test]
    fn a_trusted_snapshot_equals_a_trusted_full_state_merge_with_garbage_collection(
        ops in vec(sim_op(true), 0..100),
        offsets in proptest::array::uniform3(0u64..50),
        max_entries in 1usize..5,
    ) {
        let sim = run(&ops, offsets, 16);
        for from in 0..N {
            for to in 0..N {
                let mut by_merge = sim.maps[to].clone();
                by_merge.merge(sim.maps[from].clone());
                let mut snapshot = sim.maps[to].clone();
                pull_snapshot_trusted(&sim.maps[from], &mut snapshot, max_entries);
                prop_assert_eq!(&snapshot, &by_merge);
                // A trusted delta series may keep tombstones and a lower
                // horizon that the merge drops or takes, never other values.
                let mut delta = sim.maps[to].clone();
                pull_trusted(&sim.maps[from], &mut delta, max_entries);
                prop_assert_eq!(live(&delta), live(&by_merge));
            }
        }
    }
}
