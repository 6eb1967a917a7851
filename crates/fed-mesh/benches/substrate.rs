//! `MemorySubstrate` top-10 over 100 000 384-dimensional patterns on one core,
//! against a plain pass over the same 154 MB of f32 (the memory-bandwidth bound
//! measured in the same run).
//!
//! `cargo bench -p fed-mesh --bench substrate` (or `cargo xtask bench mesh`).

#![allow(clippy::unwrap_used, missing_docs)]

use std::{collections::BTreeMap, hint::black_box};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fed_mesh::substrate::{MemorySubstrate, Pattern, PatternId, PatternQuery};

const N: usize = 100_000;
const DIM: usize = 384;

#[path = "../tests/common/embedding.rs"]
mod common;

fn vector(seed: u64) -> Vec<f32> {
    common::embedding(seed, DIM)
}

/// The bound: read every f32 once and add it up, eight lanes at a time.
fn plain_pass(values: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for chunk in values.chunks_exact(8) {
        for j in 0..8 {
            acc[j] += chunk[j];
        }
    }
    acc.iter().sum()
}

fn bench(c: &mut Criterion) {
    let substrate = MemorySubstrate::with_dimension(DIM);
    let mut flat = Vec::with_capacity(N * DIM);
    for i in 0..N as u64 {
        let v = vector(i);
        flat.extend_from_slice(&v);
        substrate
            .insert(Pattern {
                id: PatternId::from_u64(i),
                embedding: v,
                metadata: BTreeMap::new(),
                timestamp_ms: 0,
            })
            .unwrap();
    }
    let bytes = (N * DIM * 4) as u64;
    let mut group = c.benchmark_group("substrate_100k_x_384");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(30);
    group.bench_function("plain_pass_154MB", |b| {
        b.iter(|| plain_pass(black_box(&flat)))
    });
    let query = PatternQuery::new(vector(u64::MAX), 10);
    group.bench_function("memory_substrate_top10", |b| {
        b.iter(|| substrate.query(black_box(&query)).unwrap())
    });
    let filtered = PatternQuery::new(vector(u64::MAX), 10).with_filter("kind", "none");
    group.bench_function("memory_substrate_top10_filter_no_match", |b| {
        b.iter(|| substrate.query(black_box(&filtered)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
