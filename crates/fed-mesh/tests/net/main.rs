//! Real nodes over loopback: libp2p on 127.0.0.1, ports chosen by the OS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod basics;

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
