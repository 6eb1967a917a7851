//! Real nodes over loopback: libp2p on 127.0.0.1, ports chosen by the OS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod abuse;
mod access;
mod basics;
mod commit;
mod epoch;
mod interop;
mod join;
mod onion;
mod persist;
mod topk;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use fed_mesh::{
    FederatedMesh, MeshConfig,
    crypto::Identity,
    handshake::{AdmissionPolicy, FederationId, Open},
    substrate::{MemorySubstrate, Pattern, PatternId},
};

pub(crate) const FED: FederationId = FederationId([0x5e; 32]);

pub(crate) fn identity(seed: u8) -> Arc<Identity> {
    Arc::new(Identity::from_seeds(&[seed; 32], None))
}

/// A config for a node on 127.0.0.1 with fast sync, admitting everyone.
pub(crate) fn config(seed: u8) -> MeshConfig {
    config_with(seed, Arc::new(Open))
}

pub(crate) fn config_with(seed: u8, admission: Arc<dyn AdmissionPolicy>) -> MeshConfig {
    let mut c = MeshConfig::new(identity(seed), FED, admission);
    c.timing.sync_interval_ms = 200;
    c.timing.redial_interval_ms = 500;
    c
}

pub(crate) async fn start(config: MeshConfig) -> FederatedMesh {
    FederatedMesh::builder(config)
        .substrate(MemorySubstrate::new())
        .start()
        .await
        .expect("node starts")
}

pub(crate) fn pattern(n: u64, embedding: Vec<f32>) -> Pattern {
    Pattern {
        id: PatternId::from_u64(n),
        embedding,
        metadata: BTreeMap::new(),
        timestamp_ms: 1_000,
    }
}

/// Starts `n` nodes (seeds `first..first + n`) configured by `configure`, and
/// joins each to every earlier one: a full mesh.
pub(crate) async fn full_mesh(
    first: u8,
    n: usize,
    configure: impl Fn(u8, &mut MeshConfig),
) -> Vec<FederatedMesh> {
    let mut nodes: Vec<FederatedMesh> = Vec::new();
    for i in 0..n {
        let seed = first + i as u8;
        let mut c = config(seed);
        configure(seed, &mut c);
        let node = start(c).await;
        for earlier in &nodes {
            node.join_federation(&earlier.address().await.unwrap())
                .await
                .unwrap();
        }
        nodes.push(node);
    }
    for node in &nodes {
        let want = n - 1;
        eventually(10, "every session up", || async {
            node.peer_count().await.unwrap() == want
        })
        .await;
    }
    nodes
}

#[path = "../common/embedding.rs"]
mod common;
pub(crate) use common::embedding;

pub(crate) async fn shutdown(nodes: &[FederatedMesh]) {
    for n in nodes {
        let _ = n.shutdown().await;
    }
}

/// Polls `check` every 50 ms until it holds, or panics after `secs` seconds.
pub(crate) async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}
