//! Byzantine commits over libp2p: fed-pbft among the genesis's voting members.

use std::collections::BTreeSet;

use fed_mesh::{
    CommitReceipt, Error, FederatedMesh, MeshConfig,
    genesis::{ConsensusParameters, Genesis, GenesisMember},
    substrate::StateUpdate,
};

use crate::*;

const DIM: usize = 8;

/// A genesis whose voting members are the nodes of `seeds` (no addresses: the
/// nodes find each other by joining).
pub(crate) fn genesis(seeds: impl IntoIterator<Item = u8>, created_ms: u64) -> Genesis {
    Genesis {
        federation: FED,
        created_ms,
        consensus: ConsensusParameters {
            checkpoint_interval: 16,
            window: 64,
            ..ConsensusParameters::default()
        },
        members: seeds
            .into_iter()
            .map(|s| GenesisMember {
                identity: identity(s).public().clone(),
                addresses: Vec::new(),
            })
            .collect(),
    }
}

pub(crate) fn with_genesis(c: &mut MeshConfig, g: &Genesis) {
    *c = c.clone().with_genesis(g).unwrap();
}

fn update(i: u64) -> StateUpdate {
    StateUpdate::StorePattern(pattern(i, embedding(i, DIM)))
}

/// Submits `count` updates from `node`, numbered from `first`, all at once.
async fn commit_many(node: &FederatedMesh, first: u64, count: u64) -> Vec<CommitReceipt> {
    let calls = (first..first + count).map(|i| node.byzantine_commit(update(i)));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("the update commits"))
        .collect()
}

/// Test 1 of issue 11: 4 voting members commit 100 updates while one of them
/// signs PREPAREs and COMMITs for other digests; a fifth node, not voting,
/// submits too. Every update commits exactly once, every correct member
/// executes the same sequence, and every receipt verifies offline against the
/// genesis and against no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_commit_while_one_votes_for_conflicting_digests() {
    let g = genesis(60..64, 1);
    let nodes = full_mesh(60, 5, |seed, c| {
        with_genesis(c, &g);
        if seed == 63 {
            c.consensus.as_mut().unwrap().byzantine_votes = true;
        }
    })
    .await;
    let mut receipts = Vec::new();
    let batches = nodes
        .iter()
        .enumerate()
        .map(|(k, n)| commit_many(n, 20 * k as u64, 20));
    for r in futures::future::join_all(batches).await {
        receipts.extend(r);
    }
    assert_eq!(receipts.len(), 100);

    // Offline: against the genesis, and not against another one.
    let membership = g.membership().unwrap();
    let other = genesis(60..64, 2).membership().unwrap();
    for r in &receipts {
        r.verify(&membership).unwrap();
        assert!(r.verify(&other).is_err());
        let back = CommitReceipt::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(&back, r);
    }
    // Each update at its own place in the ledger: exactly once.
    let indexes: BTreeSet<u64> = receipts.iter().map(|r| r.index).collect();
    assert_eq!(indexes, (0..100).collect());

    // Every correct member executed the same 100 updates in the same order,
    // and applied them to its substrate.
    let mut heads = BTreeSet::new();
    for node in &nodes[..3] {
        eventually(20, "the member executed all 100", || async {
            node.consensus_status().await.unwrap().unwrap().ledger_count == 100
        })
        .await;
        heads.insert(node.consensus_status().await.unwrap().unwrap().ledger_head);
        eventually(10, "the member's substrate holds them", || async {
            node.substrate().len().await == 100
        })
        .await;
    }
    assert_eq!(heads.len(), 1, "correct members disagree on the ledger");
    // The non-voting node has no replica, and stored nothing by consensus.
    let status = nodes[4].consensus_status().await.unwrap().unwrap();
    assert_eq!((status.replica, status.ledger_count), (None, 0));
    shutdown(&nodes).await;
}

/// A node without a genesis cannot commit; an update over the federation's
/// operation limit is refused before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_without_a_genesis_or_over_the_limit_are_refused() {
    let plain = start(config(70)).await;
    assert!(matches!(
        plain.byzantine_commit(update(1)).await,
        Err(Error::Consensus(_))
    ));
    let mut g = genesis([71], 1);
    g.consensus.max_operation_len = 64;
    let mut c = config(71);
    with_genesis(&mut c, &g);
    let solo = start(c).await;
    let err = solo.byzantine_commit(update(1)).await.unwrap_err();
    assert!(err.to_string().contains("max_operation_len"), "{err}");
    // A one-member federation commits on its own.
    let small = StateUpdate::Opaque {
        kind: "k".into(),
        bytes: vec![1, 2, 3],
    };
    let r = solo.byzantine_commit(small).await.unwrap();
    r.verify(&g.membership().unwrap()).unwrap();
    shutdown(&[plain, solo]).await;
}
