//! Deterministic scenarios: garbage collection with a lagging replica,
//! delta size at 1 % change of a 10k map, cloned nodes.

use fed_crdt::{Codec, Hlc, HlcClock, Limits, LwwMap};

use crate::support::{node, pull, pull_trusted};

type Map = LwwMap<u64, u64>;

#[test]
fn a_lagging_replica_is_repaired_by_snapshot_after_tombstones_were_collected() {
    let (mut ca, mut cc) = (HlcClock::new(node(1), 1_000), HlcClock::new(node(3), 1_000));
    let (mut a, mut b, mut c) = (Map::new(), Map::new(), Map::new());
    c.insert(7, 70, &mut cc, 10).unwrap();
    c.insert(8, 80, &mut cc, 11).unwrap();
    a.insert(1, 10, &mut ca, 12).unwrap();
    for (from, to) in [(&c, &mut a), (&c, &mut b)] {
        pull(from, to, 2);
    }
    pull(&a, &mut b, 2);
    pull(&a, &mut c, 2);
    // Everyone holds everything. Now A removes 7; only B hears of it.
    a.remove(7, &mut ca, 100).unwrap();
    pull(&a, &mut b, 2);
    // A and B hold a stable checkpoint at 200 and collect the tombstone.
    assert_eq!(a.collect_garbage(Hlc::floor(200)), 1);
    assert_eq!(b.collect_garbage(Hlc::floor(200)), 1);
    // C lagged: its frontier does not cover A's collected tombstone, so A
    // answers with a snapshot. Through the untrusted path C keeps the value
    // (a peer's omission never deletes anything)...
    assert!(!c.frontier().dominates(a.collected()));
    let delta = a.delta_for(&c.sync_request(), &Limits::default()).unwrap();
    assert!(delta.is_snapshot());
    let mut c_untrusted = c.clone();
    pull(&a, &mut c_untrusted, 2);
    assert_eq!(c_untrusted.get(&7), Some(&70));
    // ...and through the trusted path it drops the stale value.
    pull_trusted(&a, &mut c, 2);
    assert_eq!(c.get(&7), None);
    assert_eq!(c.get(&8), Some(&80));
    // A late copy of the removed value is ignored by the collected replicas.
    let mut stale = Map::new();
    stale.write_at(7, Some(70), c.entry(&8).unwrap().stamp());
    assert_eq!(a.merge(stale).discarded, 1);
    assert_eq!(a.get(&7), None);
    // And afterwards plain deltas resume.
    assert!(c.frontier().dominates(a.collected()));
    a.insert(9, 90, &mut ca, 300).unwrap();
    let delta = a.delta_for(&c.sync_request(), &Limits::default()).unwrap();
    assert!(!delta.is_snapshot());
    assert_eq!(delta.len(), 1);
    let lives = |m: &Map| m.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>();
    pull(&a, &mut c, 2);
    pull(&c, &mut b, 2);
    assert_eq!(lives(&a), lives(&b));
    assert_eq!(lives(&a), lives(&c));
}

#[test]
fn a_trusted_snapshot_adopts_the_horizon_so_removed_keys_stay_removed() {
    let mut clocks: Vec<HlcClock> = (1..=3).map(|n| HlcClock::new(node(n), 1_000)).collect();
    let (mut a, mut c, mut d) = (Map::new(), Map::new(), Map::new());
    // D writes 7; A and C get it.
    d.insert(7, 70, &mut clocks[2], 10).unwrap();
    pull(&d, &mut a, 2);
    pull(&d, &mut c, 2);
    // A removes it and collects the tombstone below a stable horizon; C and
    // D both lag.
    a.remove(7, &mut clocks[0], 100).unwrap();
    assert_eq!(a.collect_garbage(Hlc::floor(200)), 1);
    // C repairs from A through a trusted snapshot: 7 goes, and C takes A's
    // horizon.
    pull_trusted(&a, &mut c, 2);
    assert_eq!(c.get(&7), None);
    assert_eq!(c.horizon(), Some(Hlc::floor(200)));
    // D, honest but lagging, still holds the old value and offers it: C
    // ignores it, on either path, so C and A keep agreeing.
    let mut c_trusting_d = c.clone();
    pull(&d, &mut c, 2);
    assert_eq!(c.get(&7), None);
    pull_trusted(&d, &mut c_trusting_d, 2);
    assert_eq!(c_trusting_d.get(&7), None);
    assert!(a.entries().eq(c.entries()));
    // The adopted horizon keeps the state encodable (no tombstone below it).
    let limits = Limits::default();
    assert_eq!(
        Map::decode(&c.encode(&limits).unwrap(), &limits).unwrap(),
        c
    );
}

#[test]
fn a_lying_peer_cannot_erase_entries_through_the_untrusted_path() {
    let mut cv = HlcClock::new(node(1), 1_000);
    let mut victim = Map::new();
    for k in 0..20 {
        victim.insert(k, k * 10, &mut cv, 10 + k).unwrap();
    }
    // The liar holds nothing, claims a high horizon and collected tombstones
    // from every origin, so it answers with an (empty) snapshot.
    let mut cl = HlcClock::new(node(9), 1_000);
    let mut liar = Map::new();
    liar.insert(100, 1, &mut cl, 50).unwrap();
    liar.remove(100, &mut cl, 60).unwrap();
    liar.collect_garbage(Hlc::floor(1_000));
    let delta = liar
        .delta_for(&victim.sync_request(), &Limits::default())
        .unwrap();
    assert!(delta.is_snapshot());
    let before: Vec<_> = victim.iter().map(|(k, v)| (*k, *v)).collect();
    victim.apply_delta(delta);
    let after: Vec<_> = victim.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(before, after, "nothing was removed");
    // The same chunk through the trusted path would have erased them: the
    // distinction is what protects the untrusted path.
    let mut trusting = Map::new();
    for k in 0..20 {
        trusting.insert(k, k * 10, &mut cv, 10 + k).unwrap();
    }
    let delta = liar
        .delta_for(&trusting.sync_request(), &Limits::default())
        .unwrap();
    trusting.apply_trusted_delta(delta);
    assert_eq!(trusting.len(), 0);
}

#[test]
fn delta_at_one_percent_change_of_a_10k_map_is_about_one_percent_of_full_state() {
    const N: u64 = 10_000;
    let limits = Limits::default();
    // Eight writers filled the map; replica B is in sync with A.
    let mut clocks: Vec<HlcClock> = (0..8).map(|n| HlcClock::new(node(n), 1_000)).collect();
    let mut a = Map::new();
    for i in 0..N {
        let w = (i % 8) as usize;
        a.insert(i, i * 31, &mut clocks[w], 1_700_000_000_000 + i)
            .unwrap();
    }
    // B's last sync with A was trusted (say, a certified snapshot), so B's
    // frontier covers A's state; the untrusted path would leave it behind.
    let mut b = Map::new();
    pull_trusted(&a, &mut b, limits.max_entries);
    assert_eq!(a, b);
    // 1 % of the keys change on A.
    for i in (0..N).step_by(100) {
        let w = (i % 8) as usize;
        a.insert(i, i + 1, &mut clocks[w], 1_700_000_100_000 + i)
            .unwrap();
    }
    let full = a.encode(&limits).unwrap().len();
    let delta = a.delta_for(&b.sync_request(), &limits).unwrap();
    assert_eq!(delta.len(), 100);
    assert!(delta.is_last());
    let delta_bytes = delta.encode(&limits).unwrap().len();
    let ratio = delta_bytes as f64 / full as f64;
    println!(
        "delta at 1% change of a 10k map: {delta_bytes} bytes; full state: {full} bytes; ratio {:.2}%",
        ratio * 100.0
    );
    assert!(
        ratio <= 0.03,
        "delta is {:.2}% of full state",
        ratio * 100.0
    );
    b.apply_delta(delta);
    assert!(a.entries().eq(b.entries()));
}

#[test]
fn a_cloned_node_is_reported_and_resolved_identically_on_full_merge() {
    // Two processes run with the same node id and the same clock state.
    let mut original = HlcClock::new(node(5), 1_000);
    let mut clone = original.clone();
    let mut a: LwwMap<&str, &str> = LwwMap::new();
    let mut b: LwwMap<&str, &str> = LwwMap::new();
    let sa = a.insert("k", "from-original", &mut original, 50).unwrap();
    let sb = b.insert("k", "from-clone", &mut clone, 50).unwrap();
    assert_eq!(sa, sb);
    let mut ab = a.clone();
    let mut ba = b.clone();
    let out_ab = ab.merge(b);
    let out_ba = ba.merge(a);
    assert_eq!(ab, ba);
    assert_eq!(out_ab.conflicts.len(), 1);
    assert_eq!(out_ba.conflicts.len(), 1);
    assert_eq!(out_ab.conflicts[0].key, "k");
    // "from-original" > "from-clone" bytewise.
    assert_eq!(ab.get("k"), Some(&"from-original"));
}

/// Issue 14, item 8, exactly as reported: a stale replica S merges the full
/// state of a trusted peer A that has already collected a tombstone S never
/// saw. S must not keep the removed value, neither right after the merge nor
/// under the normal delta sync that follows.
#[test]
fn a_trusted_full_state_merge_from_a_collected_peer_does_not_block_repair() {
    let now = 1_700_000_000_000;
    let limits = Limits::default();
    let mut ca = HlcClock::with_default_skew(node(1));
    let mut cs = HlcClock::with_default_skew(node(2));
    // A inserts key 1 = 42; S copies A's state.
    let mut a = Map::new();
    a.insert(1, 42, &mut ca, now).unwrap();
    let s0 = a.clone();
    // A removes key 1 and collects at floor(now + 5000).
    a.remove(1, &mut ca, now + 1).unwrap();
    assert_eq!(a.collect_garbage(Hlc::floor(now + 5_000)), 1);
    // S runs ingest_trusted_state with A's state (and, the same operation
    // without the skew check, merge).
    let mut s = s0.clone();
    s.ingest_trusted_state(a.clone(), &mut cs, now + 2).unwrap();
    let mut merged = s0.clone();
    merged.merge(a.clone());
    assert_eq!(s, merged);
    assert_eq!(s.get(&1), None, "the removed value survived the merge");
    // A's next delta for S, on either path, keeps it removed.
    for trusted in [false, true] {
        let mut s = s.clone();
        let delta = a.delta_for(&s.sync_request(), &limits).unwrap();
        if trusted {
            s.ingest_trusted_delta(delta, &mut cs, now + 3).unwrap();
        } else {
            s.ingest_delta(delta, &mut cs, now + 3).unwrap();
        }
        assert_eq!(
            s.get(&1),
            None,
            "resurrected after a delta (trusted: {trusted})"
        );
    }
    // S took A's horizon: S and A hold the same state.
    assert_eq!(s.horizon(), a.horizon());
    assert!(s.entries().eq(a.entries()));
}

/// After the merge of item 8, a peer that lagged further behind still holds
/// key 1 = 42 and offers it, on the untrusted path or as a full state: S must
/// ignore it (it is below the horizon S took from A), as A does, or S and A
/// disagree for good.
#[test]
fn after_a_trusted_full_state_merge_a_lagging_peer_cannot_bring_the_value_back() {
    let now = 1_700_000_000_000;
    let limits = Limits::default();
    let mut ca = HlcClock::with_default_skew(node(1));
    let mut cs = HlcClock::with_default_skew(node(2));
    let mut a = Map::new();
    a.insert(1, 42, &mut ca, now).unwrap();
    let lagging = a.clone();
    let mut s = a.clone();
    a.remove(1, &mut ca, now + 1).unwrap();
    a.collect_garbage(Hlc::floor(now + 5_000));
    s.ingest_trusted_state(a.clone(), &mut cs, now + 2).unwrap();
    let delta = lagging.delta_for(&s.sync_request(), &limits).unwrap();
    s.ingest_delta(delta, &mut cs, now + 3).unwrap();
    s.ingest_state(lagging.clone(), &mut cs, now + 3).unwrap();
    assert_eq!(s.get(&1), None, "a lagging peer resurrected the value");
    let mut a2 = a.clone();
    a2.ingest_state(lagging, &mut ca, now + 3).unwrap();
    assert!(s.entries().eq(a2.entries()));
}

/// Applies one chunk from `from` answering `request` through the trusted
/// path and returns the next request, if any.
fn trusted_step(
    from: &Map,
    to: &mut Map,
    request: &fed_crdt::SyncRequest<u64>,
    limits: &Limits,
) -> Option<fed_crdt::SyncRequest<u64>> {
    let delta = from.delta_for(request, limits).unwrap();
    to.apply_trusted_delta(delta).next
}

/// A chunked trusted series is not atomic: the sender may receive writes and
/// collect garbage between two chunks. The horizon P takes at the end of the
/// series must hold for the keys of the earlier chunks too, or P ignores,
/// for good, a write it never received.
#[test]
fn a_sender_collecting_in_the_middle_of_a_chunked_series_does_not_make_the_requester_lose_writes() {
    let limits = Limits {
        max_entries: 1,
        ..Limits::default()
    };
    for first_full in [true, false] {
        let (mut cq, mut cw) = (HlcClock::new(node(1), 1_000), HlcClock::new(node(3), 1_000));
        let (mut q, mut w, mut p) = (Map::new(), Map::new(), Map::new());
        for k in 1..=3 {
            q.insert(k, k, &mut cq, 10 + k).unwrap();
        }
        q.remove(9, &mut cq, 20).unwrap();
        // The first chunk (key 1) reaches P.
        let first = if first_full {
            p.full_sync_request()
        } else {
            p.sync_request()
        };
        let mut next = trusted_step(&q, &mut p, &first, &limits);
        assert!(next.is_some());
        // Meanwhile W overwrites key 1, Q receives it, and Q collects at a
        // horizon above it (Q has every write below).
        w.insert(1, 100, &mut cw, 150).unwrap();
        pull_trusted(&w, &mut q, 8);
        q.collect_garbage(Hlc::floor(200));
        // P finishes the series.
        while let Some(request) = next {
            next = trusted_step(&q, &mut p, &request, &limits);
        }
        // Whatever P took from the series, it must still get W's write.
        pull_trusted(&q, &mut p, 1);
        pull(&w, &mut p, 1);
        assert_eq!(
            p.get(&1),
            Some(&100),
            "write lost (first request full: {first_full})"
        );
        assert_eq!(p.get(&1), q.get(&1));
    }
}

/// Between the first chunk of a trusted snapshot series and the last (where
/// P takes the sender's horizon), a late copy of a value the sender's
/// collected tombstone removed (from a lagging peer, or a delayed message)
/// must stay out of the range the first chunk covered; otherwise it stays
/// for good: after the series P's frontier covers the sender's collected
/// floors, so only deltas follow and nothing removes it again.
#[test]
fn a_late_copy_of_a_removed_value_cannot_return_in_the_middle_of_a_snapshot_series() {
    let limits = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    for late_trusted in [false, true] {
        let (mut cq, mut cp) = (HlcClock::new(node(1), 1_000), HlcClock::new(node(2), 1_000));
        let (mut q, mut p) = (Map::new(), Map::new());
        for k in 1..=5 {
            q.insert(k, k, &mut cq, 10 + k).unwrap();
        }
        p.insert(6, 6, &mut cp, 16).unwrap();
        // R lags: it holds key 2's value and never hears of its removal.
        let r = q.clone();
        q.remove(2, &mut cq, 50).unwrap();
        pull_trusted(&p, &mut q, 8);
        assert_eq!(q.collect_garbage(Hlc::floor(200)), 1);
        // P asks Q for a snapshot; the first chunk covers keys 1 and 3.
        let full = p.full_sync_request();
        let mut next = trusted_step(&q, &mut p, &full, &limits);
        assert!(next.is_some());
        assert_eq!(p.get(&2), None);
        // R's copy of key 2 arrives in the middle of the series.
        if late_trusted {
            pull_trusted(&r, &mut p, 8);
        } else {
            pull(&r, &mut p, 8);
        }
        // Local writes take effect though P's clock is behind Q's horizon: in
        // a range the last chunk will cover (where it would be below the
        // horizon P takes at the end), and in the range the first chunk
        // covered (in this order: the clock never goes back).
        p.insert(7, 77, &mut cp, 17).unwrap();
        p.insert(3, 33, &mut cp, 17).unwrap();
        assert_eq!(p.get(&3), Some(&33));
        while let Some(request) = next {
            next = trusted_step(&q, &mut p, &request, &limits);
        }
        // Plain deltas both ways: the replicas must agree.
        pull_trusted(&q, &mut p, 2);
        pull_trusted(&p, &mut q, 2);
        let lives = |m: &Map| m.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>();
        assert_eq!(
            lives(&p),
            lives(&q),
            "removed value back (late copy trusted: {late_trusted})"
        );
        assert_eq!(p.get(&2), None);
        assert_eq!(q.get(&3), Some(&33));
        assert_eq!(q.get(&7), Some(&77));
    }
}
