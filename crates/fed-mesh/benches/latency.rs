//! Query latency over loopback with real nodes (libp2p over TCP on 127.0.0.1):
//! `Direct` and `Global` with 4 and 16 nodes, an onion query over three relays,
//! and the time from `start()` to the first answered `Direct` query between two
//! fresh nodes. Prints p50 and p99 of each.
//!
//! `cargo bench -p fed-mesh --bench latency` (or `cargo xtask bench mesh`).
//! `FED_BENCH_QUERIES=N` sets the queries per measurement (default 300).
//!
//! All nodes share one process and the machine's cores, so the figures include
//! the other nodes' work; a node per machine would do better.

// A benchmark measures wall time and stops on a wrong answer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    missing_docs
)]

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use fed_mesh::{
    FederatedMesh, FederationScope, MeshConfig, OnionRouting, PeerStatus, QueryOptions,
    crypto::Identity,
    handshake::{FederationId, Open},
    substrate::{MemorySubstrate, Pattern, PatternId, PatternQuery},
};

const DIM: usize = 384;
const PATTERNS_PER_NODE: u64 = 1_000;

#[path = "../tests/common/embedding.rs"]
mod common;

fn embedding(seed: u64) -> Vec<f32> {
    common::embedding(seed, DIM)
}

fn config(seed: u64) -> MeshConfig {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8] = 0xbe;
    let identity = Arc::new(Identity::from_seeds(&s, None));
    let mut c = MeshConfig::new(identity, FederationId([0xbe; 32]), Arc::new(Open));
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    // No rate limit worth the name between benchmark nodes.
    c.capabilities.limits.requests_per_second = 1_000_000;
    c.capabilities.limits.max_in_flight = 1_000;
    c
}

async fn node(seed: u64) -> FederatedMesh {
    let substrate = MemorySubstrate::with_dimension(DIM);
    for j in 0..PATTERNS_PER_NODE {
        let id = seed * 1_000_000 + j;
        substrate
            .insert(Pattern {
                id: PatternId::from_u64(id),
                embedding: embedding(id),
                metadata: BTreeMap::new(),
                timestamp_ms: 1_000,
            })
            .unwrap();
    }
    FederatedMesh::builder(config(seed))
        .substrate(substrate)
        .start()
        .await
        .unwrap()
}

/// `n` nodes, each joined to every earlier one.
async fn full_mesh(first: u64, n: usize) -> Vec<FederatedMesh> {
    let mut nodes: Vec<FederatedMesh> = Vec::new();
    for i in 0..n {
        let m = node(first + i as u64).await;
        for earlier in &nodes {
            m.join_federation(&earlier.address().await.unwrap())
                .await
                .unwrap();
        }
        nodes.push(m);
    }
    for m in &nodes {
        while m.peer_count().await.unwrap() < n - 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Let the directories settle (onion keys, addresses).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    nodes
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<40} n={:<5} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

async fn measure(
    origin: &FederatedMesh,
    scope: FederationScope,
    options: &QueryOptions,
    queries: usize,
    expect_answers: usize,
    missed: &mut usize,
    all: &[FederatedMesh],
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(queries);
    for q in 0..queries + 20 {
        let query = PatternQuery::new(embedding(7_000_000 + q as u64), 10);
        let t = Instant::now();
        let outcome = origin
            .federated_query(query, scope, options.clone())
            .await
            .unwrap();
        let elapsed = t.elapsed();
        let answered = outcome
            .peers
            .iter()
            .filter(|p| matches!(p.status, PeerStatus::Answered { .. }))
            .count();
        // A Global query reaches each node with high probability, not certainty
        // (random fan-out): count the misses rather than fail.
        if answered < expect_answers {
            *missed += 1;
        }
        if answered + 2 < expect_answers {
            eprintln!("query {q}: {:?}", outcome.peers);
            for n in all {
                eprintln!("{}: {:?}", n.node_id(), n.stats().await.unwrap());
            }
            panic!("a query missed members");
        }
        assert_eq!(outcome.results.len(), 10);
        if q >= 20 {
            samples.push(elapsed);
        }
    }
    samples
}

fn main() {
    let queries: usize = std::env::var("FED_BENCH_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("fed-mesh latency over loopback, {DIM}-dimensional patterns, {PATTERNS_PER_NODE} per node, top-10");

        // Start to first answered Direct query, two fresh nodes.
        let mut startup = Vec::new();
        for round in 0..20u64 {
            let t = Instant::now();
            let (a, b) = tokio::join!(node(900 + 2 * round), node(901 + 2 * round));
            a.join_federation(&b.address().await.unwrap()).await.unwrap();
            loop {
                let outcome = a
                    .federated_query(PatternQuery::new(embedding(1), 10), FederationScope::Direct, QueryOptions::default())
                    .await
                    .unwrap();
                if outcome.peer(&b.node_id()).is_some_and(|p| matches!(p.status, PeerStatus::Answered { .. })) {
                    break;
                }
            }
            startup.push(t.elapsed());
            a.shutdown().await.unwrap();
            b.shutdown().await.unwrap();
        }
        report("start() to first Direct answer (2 nodes)", startup);

        for n in [4usize, 16] {
            let nodes = full_mesh(100 * n as u64, n).await;
            let options = QueryOptions::default();
            let mut missed = 0;
            let direct = measure(&nodes[0], FederationScope::Direct, &options, queries, n - 1, &mut missed, &nodes).await;
            assert_eq!(missed, 0, "a Direct query missed a member");
            report(&format!("Direct, {n} nodes"), direct);
            let global = measure(&nodes[0], FederationScope::Global { max_hops: 2 }, &options, queries, n - 1, &mut missed, &nodes).await;
            report(&format!("Global (max_hops 2, fan-out 8), {n} nodes"), global);
            println!("{:<40} {missed} of {} queries missed a member", "", queries + 20);
            for m in &nodes {
                m.shutdown().await.unwrap();
            }
        }

        // Onion: origin, three relays, destination.
        let nodes = full_mesh(5_000, 5).await;
        let options = QueryOptions {
            onion: Some(OnionRouting {
                relays: 3,
                targets: vec![nodes[4].node_id()],
            }),
            ..QueryOptions::default()
        };
        let mut missed = 0;
        let onion = measure(&nodes[0], FederationScope::Direct, &options, queries / 2, 1, &mut missed, &nodes).await;
        assert_eq!(missed, 0, "an onion query was lost");
        report("onion query, 3 relays, 1 target", onion);
        for m in &nodes {
            m.shutdown().await.unwrap();
        }
    });
}
