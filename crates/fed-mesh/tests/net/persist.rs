//! A node with a data directory: its patterns and its audit log outlive it.

use fed_mesh::{
    Error, FederatedMesh, FederationScope, MeshConfig, QueryOptions,
    store::{AuditEvent, StoreError},
    substrate::{PatternId, PatternQuery},
};

use crate::*;

const DIM: usize = 16;

/// Starts a node whose substrate is the default for its configuration (the
/// store's, with a data directory). The previous instance's file may still be
/// held for a moment after it shut down; the start is retried meanwhile.
async fn start_default(config: MeshConfig) -> FederatedMesh {
    let mut last = None;
    for _ in 0..100 {
        match FederatedMesh::builder(config.clone()).start().await {
            Ok(node) => return node,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("node does not start: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_its_patterns_and_audit_log_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(85);
    c.data_dir = Some(dir.path().join("a"));
    let a = start_default(c.clone()).await;
    for i in 0..20 {
        a.store_pattern(pattern(i, embedding(i, DIM)))
            .await
            .unwrap();
    }
    let b = start(config(86)).await;
    b.join_federation(&a.address().await.unwrap())
        .await
        .unwrap();
    let joined = |a: &FederatedMesh| {
        a.store()
            .unwrap()
            .audit()
            .entries()
            .unwrap()
            .iter()
            .any(|e| {
                e.event
                    == AuditEvent::Joined {
                        peer: b.node_id().0,
                    }
            })
    };
    eventually(5, "B's join in A's audit log", || async { joined(&a) }).await;
    a.shutdown().await.unwrap();
    drop(a);

    let a = start_default(c).await;
    assert_eq!(a.substrate().len().await, 20);
    assert!(joined(&a), "the audit log lost the join");
    let n = a
        .store()
        .unwrap()
        .audit()
        .verify(identity(85).public())
        .unwrap()
        .unwrap();
    assert!(n >= 1);
    // The patterns are served again, from disk.
    b.join_federation(&a.address().await.unwrap())
        .await
        .unwrap();
    let outcome = b
        .federated_query(
            PatternQuery::new(embedding(3, DIM), 1),
            FederationScope::Direct,
            QueryOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.results[0].pattern,
        PatternId::from_u64(3),
        "{outcome:?}"
    );
    shutdown(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_data_directory_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(87);
    c.data_dir = Some(dir.path().to_path_buf());
    let a = start_default(c).await;
    a.shutdown().await.unwrap();
    drop(a);
    let mut other = config(88);
    other.data_dir = Some(dir.path().to_path_buf());
    let mut refused = None;
    for _ in 0..100 {
        match FederatedMesh::builder(other.clone()).start().await {
            Err(Error::Store(StoreError::Foreign { path, .. })) => {
                refused = Some(path);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Ok(_) => panic!("a node started on another node's store"),
        }
    }
    assert_eq!(refused, Some(dir.path().join("node.redb")));
}
