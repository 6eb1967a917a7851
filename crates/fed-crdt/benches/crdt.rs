//! Benchmarks for `fed-crdt`, with the raw `crdts` types measured in the
//! same run as reference points.
//!
//! Run: `cargo bench -p fed-crdt --bench crdt -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fed_crdt::{
    CmRDT, Codec, CvRDT, GSet, Hlc, HlcClock, Limits, LwwMap, LwwRegister, Orswot, ReplicaId,
};

const N: u64 = 10_000;
const T0: u64 = 1_700_000_000_000;

/// Replica A wrote keys `0..N`; replica B, later, keys `N/2..N/2+N`: half
/// the keys overlap (B's writes win there), half are new to each side.
fn lww_pair() -> fed_crdt::Result<(LwwMap<u64, u64>, LwwMap<u64, u64>)> {
    let mut ca = HlcClock::new(ReplicaId::from_u64(1), 1_000);
    let mut cb = HlcClock::new(ReplicaId::from_u64(2), 1_000);
    let (mut a, mut b) = (LwwMap::new(), LwwMap::new());
    for i in 0..N {
        a.insert(i, i, &mut ca, T0 + i)?;
        b.insert(N / 2 + i, i + 1, &mut cb, T0 + N + i)?;
    }
    Ok((a, b))
}

/// `a` with 1 % of its keys rewritten by its own writer, later.
fn one_percent_changed(a: &LwwMap<u64, u64>) -> fed_crdt::Result<LwwMap<u64, u64>> {
    let mut a = a.clone();
    let mut ca = HlcClock::new(ReplicaId::from_u64(1), 1_000);
    for i in (0..N).step_by(100) {
        a.insert(i, i + 7, &mut ca, T0 + 10 * N + i)?;
    }
    Ok(a)
}

fn gset_pair() -> (GSet<u64>, GSet<u64>) {
    let (mut a, mut b) = (GSet::new(), GSet::new());
    for i in 0..N {
        a.insert(i);
        b.insert(N / 2 + i);
    }
    (a, b)
}

fn orswot_pair() -> (Orswot<u64, u64>, Orswot<u64, u64>) {
    let (mut a, mut b) = (Orswot::new(), Orswot::new());
    for i in 0..N {
        a.apply(a.add(i, a.read_ctx().derive_add_ctx(1)));
        b.apply(b.add(N / 2 + i, b.read_ctx().derive_add_ctx(2)));
    }
    (a, b)
}

fn merge_10k(c: &mut Criterion) {
    let Ok((a, b)) = lww_pair() else {
        eprintln!("merge_10k: building the maps failed");
        return;
    };
    let mut g = c.benchmark_group("merge_10k");
    g.bench_function("fed_crdt_lww_map", |bench| {
        bench.iter_batched(
            || (a.clone(), b.clone()),
            |(mut x, y)| black_box(x.merge(y)),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("fed_crdt_lww_map_identical", |bench| {
        bench.iter_batched(
            || (a.clone(), a.clone()),
            |(mut x, y)| black_box(x.merge(y)),
            BatchSize::LargeInput,
        )
    });
    let (ga, gb) = gset_pair();
    g.bench_function("crdts_gset", |bench| {
        bench.iter_batched(
            || (ga.clone(), gb.clone()),
            |(mut x, y)| {
                x.merge(y);
                black_box(x)
            },
            BatchSize::LargeInput,
        )
    });
    let (oa, ob) = orswot_pair();
    g.bench_function("crdts_orswot", |bench| {
        bench.iter_batched(
            || (oa.clone(), ob.clone()),
            |(mut x, y)| {
                x.merge(y);
                black_box(x)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Our register against the `crdts` register it replaces, on the common
/// path (different stamps) and on equal stamps (where ours compares bytes).
fn register_merge(c: &mut Criterion) {
    let mut g = c.benchmark_group("register_merge");
    let older = LwwRegister::new(1u64, Hlc::new(T0, 0, ReplicaId::from_u64(1)));
    let newer = LwwRegister::new(2u64, Hlc::new(T0 + 1, 0, ReplicaId::from_u64(2)));
    g.bench_function("fed_crdt_lww_register", |bench| {
        bench.iter_batched(
            || (older.clone(), newer.clone()),
            |(mut x, y)| black_box(x.merge(y)),
            BatchSize::SmallInput,
        )
    });
    let tie = LwwRegister::new(3u64, older.stamp());
    g.bench_function("fed_crdt_lww_register_equal_stamp", |bench| {
        bench.iter_batched(
            || (older.clone(), tie.clone()),
            |(mut x, y)| black_box(x.merge(y)),
            BatchSize::SmallInput,
        )
    });
    let raw_old = crdts::LWWReg {
        val: 1u64,
        marker: (T0, 0u32, 1u64),
    };
    let raw_new = crdts::LWWReg {
        val: 2u64,
        marker: (T0 + 1, 0u32, 2u64),
    };
    g.bench_function("crdts_lwwreg", |bench| {
        bench.iter_batched(
            || (raw_old.clone(), raw_new.clone()),
            |(mut x, y)| {
                x.merge(y);
                black_box(x)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The bounded codec around `crdts::GSet` against plain postcard.
fn gset_codec_10k(c: &mut Criterion) {
    let mut g = c.benchmark_group("gset_codec_10k");
    let (set, _) = gset_pair();
    let limits = Limits::default();
    g.bench_function("raw_postcard_roundtrip", |bench| {
        bench.iter(|| {
            let bytes = postcard::to_allocvec(black_box(&set)).unwrap_or_default();
            black_box(postcard::from_bytes::<GSet<u64>>(&bytes).ok())
        })
    });
    g.bench_function("fed_crdt_codec_roundtrip", |bench| {
        bench.iter(|| {
            let bytes = black_box(&set).encode(&limits).unwrap_or_default();
            black_box(GSet::<u64>::decode(&bytes, &limits).ok())
        })
    });
    g.finish();
}

/// Delta versus full state when 1 % of a 10k map changed.
fn delta_10k(c: &mut Criterion) {
    let limits = Limits::default();
    let Ok(((synced, _), a)) = lww_pair().and_then(|p| {
        let changed = one_percent_changed(&p.0)?;
        Ok((p, changed))
    }) else {
        eprintln!("delta_10k: building the maps failed");
        return;
    };
    let request = synced.sync_request();
    let full = a.encode(&limits).map(|b| b.len()).unwrap_or(0);
    let delta = a
        .delta_for(&request, &limits)
        .and_then(|d| d.encode(&limits))
        .map(|b| b.len())
        .unwrap_or(0);
    eprintln!(
        "delta_10k: 1% changed: delta {delta} bytes, full state {full} bytes ({:.2}%)",
        delta as f64 * 100.0 / full.max(1) as f64
    );
    let mut g = c.benchmark_group("delta_10k");
    g.bench_function("delta_for_1pct_and_encode", |bench| {
        bench.iter(|| {
            black_box(
                a.delta_for(black_box(&request), &limits)
                    .and_then(|d| d.encode(&limits))
                    .ok(),
            )
        })
    });
    g.bench_function("full_state_encode", |bench| {
        bench.iter(|| black_box(black_box(&a).encode(&limits).ok()))
    });
    let bytes = a.encode(&limits).unwrap_or_default();
    g.bench_function("full_state_decode", |bench| {
        bench.iter(|| black_box(LwwMap::<u64, u64>::decode(black_box(&bytes), &limits).ok()))
    });
    g.finish();
}

criterion_group!(
    benches,
    merge_10k,
    register_merge,
    gset_codec_10k,
    delta_10k
);
criterion_main!(benches);
