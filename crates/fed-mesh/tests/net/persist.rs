//! A node with a data directory: its patterns and its audit log outlive it.

use fed_mesh::{
    Error, FederatedMesh, FederationScope, MeshConfig, MeshEvent, QueryOptions,
    store::{AuditEvent, StoreError},
    substrate::{PatternId, PatternQuery},
};

use crate::*;

const DIM: usize = 16;

/// Starts a node whose substrate is the default for its configuration (the
/// store's, with a data directory). The previous instance's file may still be
/// held for a moment after it shut down; the start is retried meanwhile.
pub(crate) async fn start_default(config: MeshConfig) -> FederatedMesh {
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

/// A clean stop appends the audit entries sent before it: the writer's
/// wait for more entries is cut short, and nothing is left to a runtime
/// that may end with the node (`fedmesh node` returns from `main`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_appends_every_audit_entry_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(95);
    c.data_dir = Some(dir.path().join("a"));
    let a = start_default(c).await;
    let mut events = a.events();
    let b = start(config(96)).await;
    b.join_federation(&a.address().await.unwrap())
        .await
        .unwrap();
    // A's entry for the join goes to its writer before the event is published.
    let joined = async {
        loop {
            match events.recv().await {
                Ok(MeshEvent::PeerJoined { node, .. }) if node == b.node_id() => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), joined)
        .await
        .expect("A saw no join");
    a.shutdown().await.unwrap();
    let entries = a.store().unwrap().audit().entries().unwrap();
    assert!(
        entries.iter().any(|e| e.event
            == AuditEvent::Joined {
                peer: b.node_id().0
            }),
        "the join's entry was not appended before the stop returned: {entries:?}"
    );
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

/// The shared map (this node's writes and others', removals too) and the
/// revocations it enforces outlive a restart, with nobody to sync from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_map_and_revocations_outlive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(87);
    c.data_dir = Some(dir.path().join("a"));
    let a = start_default(c.clone()).await;
    let b = start(config(88)).await;
    b.join_federation(&a.address().await.unwrap())
        .await
        .unwrap();
    eventually(5, "both sessions", || async {
        a.peer_count().await.unwrap() == 1 && b.peer_count().await.unwrap() == 1
    })
    .await;
    a.put("colour", "blue").await.unwrap();
    a.put("gone", "soon").await.unwrap();
    a.remove("gone").await.unwrap();
    b.put("shape", "round").await.unwrap();
    eventually(10, "A has B's write", || async {
        a.get("shape").await.unwrap().is_some()
    })
    .await;
    a.revoke_token([9; 32]).await.unwrap();
    let before = a.entries().await.unwrap();
    assert_eq!(before.len(), 2, "{before:?}");
    a.shutdown().await.unwrap();
    drop(a);
    b.shutdown().await.unwrap();
    drop(b);

    let a = start_default(c.clone()).await;
    assert_eq!(a.entries().await.unwrap(), before);
    assert_eq!(a.get("shape").await.unwrap(), Some(b"round".to_vec()));
    assert_eq!(a.get("gone").await.unwrap(), None);
    // Its next write wins over the one before the restart.
    a.put("colour", "green").await.unwrap();
    assert_eq!(a.get("colour").await.unwrap(), Some(b"green".to_vec()));
    a.shutdown().await.unwrap();
    drop(a);

    // Stored state is checked: the revocation and the entries are records of
    // the store, read back by an independent handle.
    let path = dir.path().join("a").join("node.redb");
    let mut opened = fed_mesh::store::Store::open(&path, &identity(87).node_id());
    for _ in 0..100 {
        if opened.is_ok() {
            break;
        }
        // The node's task may hold the file a moment after shutdown.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        opened = fed_mesh::store::Store::open(&path, &identity(87).node_id());
    }
    let store = opened.unwrap();
    let state = store.state().load().unwrap();
    // The audit log has the token A issued to B and the revocation.
    let audit = store.audit().entries().unwrap();
    assert!(
        audit.iter().any(|e| matches!(
            e.event,
            AuditEvent::TokenIssued { peer, expires_at } if peer == identity(88).node_id().0 && expires_at > e.time_ms
        )),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|e| e.event == AuditEvent::TokenRevoked { token: [9; 32] }),
        "{audit:?}"
    );
    assert_eq!(
        state.revoked,
        vec![fed_mesh::core::commit::Revocation::Token([9; 32])]
    );
    assert_eq!(state.shared.len(), 3, "two values and a removal");
    assert!(state.directory.len() >= 2, "A's and B's records");
}

/// The `Committed` entries of an audit log: (sequence, digest), in order.
fn audited_commits(node: &FederatedMesh) -> Vec<(u64, [u8; 32])> {
    node.store()
        .unwrap()
        .audit()
        .entries()
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            AuditEvent::EpochCommitted { seq, digest, .. } => Some((seq, digest)),
            _ => None,
        })
        .collect()
}

/// The sequence numbers of the `Committed` and `Prepared` records of the
/// replica state in the data directory `data` (of a stopped node, or a copy),
/// and the replica log's path.
async fn replica_records(
    data: &std::path::Path,
    node: &fed_mesh::crypto::NodeId,
) -> (Vec<u64>, Vec<u64>, std::path::PathBuf) {
    // The stopped node's file may still be held for a moment.
    let mut tries = 0;
    let store = loop {
        match fed_mesh::store::Store::open(data.join("node.redb"), node) {
            Ok(store) => break store,
            Err(e) if tries == 100 => panic!("{e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
        tries += 1;
    };
    let state = store.pbft().load_state().unwrap();
    (
        state.committed.keys().copied().collect(),
        state.prepared.keys().copied().collect(),
        store.replica_log_path(),
    )
}

/// A voter restarted from its data directory executes the batches after its
/// last checkpoint again (its replica rebuilds its state from their records),
/// but the federation committed each of them once: its audit log keeps one
/// entry per committed batch, across the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_voter_logs_each_commit_once() {
    restarted_voter_logs_each_commit_once(130, false).await;
}

/// The same when a crash lost the replica log's last record, which holds the
/// `Committed` record of the last batch (pbft.md §5 lets a crash lose it:
/// the log holds it back, store.md §3.1), while the audit log has the
/// batch's entry: the restarted replica fetches that batch from its peers
/// and executes it again, and it is not logged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_lost_its_last_commit_record_logs_each_commit_once() {
    restarted_voter_logs_each_commit_once(140, true).await;
}

async fn restarted_voter_logs_each_commit_once(base: u8, lose_last_record: bool) {
    let dir = tempfile::tempdir().unwrap();
    let g = crate::commit::genesis(base..base + 4, 1);
    let configure = |seed: u8, c: &mut MeshConfig| {
        *c = c.clone().with_genesis(&g).unwrap();
        c.data_dir = Some(dir.path().join(format!("n{seed}")));
    };
    let mut nodes = crate::full_mesh(base, 4, configure).await;
    let ledger = |n: &FederatedMesh| {
        let n = n.clone();
        async move { n.consensus_status().await.unwrap().unwrap().ledger_count }
    };
    crate::commit::commit_many(&nodes[1], 0, 5).await;
    eventually(20, "voter 0 executed the 5 updates", || async {
        ledger(&nodes[0]).await == 5
    })
    .await;
    let old = nodes.remove(0);
    let status = old.consensus_status().await.unwrap().unwrap();
    // No checkpoint yet (interval 16): the restart executes them all again.
    assert_eq!(status.stable_checkpoint, 0);
    let last = status.last_executed;
    eventually(10, "voter 0 logged its commits", || async {
        audited_commits(&old).last().map(|(s, _)| *s) == Some(last)
    })
    .await;
    let node_id = old.node_id();
    let all: Vec<u64> = (1..=last).collect();
    // What a SIGKILL would leave now: the files as they stand (the page
    // cache), copied while the node runs, idle. The last batch's `Committed`
    // record, held back as it needs no sync, was written once the node had
    // been idle for a moment (`HELD_FLUSH_DELAY`), not left to the next write.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for file in ["node.redb", "node.rlog"] {
        std::fs::copy(dir.path().join(format!("n{base}/{file}")), copy.join(file)).unwrap();
    }
    assert_eq!(
        replica_records(&copy, &node_id).await.0,
        all,
        "an idle voter's commits are on disk"
    );
    old.shutdown().await.unwrap();
    let before = audited_commits(&old);
    drop(old);
    let data = dir.path().join(format!("n{base}"));
    let (records, prepared, rlog) = replica_records(&data, &node_id).await;
    assert_eq!(records, all, "the clean stop wrote them all");
    assert_eq!(prepared, all);
    if lose_last_record {
        // A torn last record, as a crash in its write leaves: dropped at open.
        let len = std::fs::metadata(&rlog).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&rlog).unwrap();
        file.set_len(len - 1).unwrap();
        drop(file);
        // It held the last batch's `Committed` record: alone when that was
        // held back and written on its own, or with the `Prepared` record of
        // the same batch when the voter prepared and committed it in one
        // input (one synced record; a crash inside it sends nothing of it).
        let (records, _, _) = replica_records(&data, &node_id).await;
        assert!(
            records.len() < all.len() && records[..] == all[..records.len()],
            "the last record held the last batches' Committed records: {records:?}"
        );
    }

    let mut c = config(base);
    configure(base, &mut c);
    let a = start_default(c).await;
    a.join_federation(&nodes[0].address().await.unwrap())
        .await
        .unwrap();
    eventually(20, "voter 0 recovered the 5 updates", || async {
        ledger(&a).await == 5
    })
    .await;
    // Voter 0 is the primary of view 0: its sessions with all three first.
    eventually(20, "voter 0's sessions", || async {
        a.peer_count().await.unwrap() == 3
    })
    .await;
    crate::commit::commit_many(&nodes[0], 5, 1).await;
    eventually(20, "voter 0 executed the sixth update", || async {
        ledger(&a).await == 6
    })
    .await;
    let last = a.consensus_status().await.unwrap().unwrap().last_executed;
    eventually(10, "voter 0 logged the sixth update's batch", || async {
        audited_commits(&a).iter().any(|(s, _)| *s == last)
    })
    .await;
    a.shutdown().await.unwrap();
    let after = audited_commits(&a);
    assert_eq!(&after[..before.len()], &before[..]);
    let seqs: Vec<u64> = after.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (1..=after.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "each committed batch once, in order: {after:?}"
    );
    assert!(
        after.len() > before.len(),
        "the sixth update's batch is logged"
    );
    shutdown(&nodes).await;
}
