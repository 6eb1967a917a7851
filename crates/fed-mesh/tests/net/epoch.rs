//! Membership changes at checkpoint epochs (issue 11, test 5's second half).

use std::{collections::BTreeSet, sync::Arc};

use fed_mesh::{
    CommitReceipt, Epoch, Error, FederatedMesh, MembershipChange, MeshConfig, MeshEvent,
    pbft::{CheckpointCert, Membership},
};

use crate::{
    commit::{commit_many, genesis, with_genesis},
    *,
};

/// The membership of the epoch a receipt's proof was made in, from the
/// genesis's and the receipt's chain.
fn epoch_of(m0: &Membership, r: &CommitReceipt) -> Epoch {
    Epoch::genesis(Arc::new(m0.clone()), Vec::new(), 0)
        .follow_all(&r.epochs)
        .expect("the chain checks")
}

/// Ten rounds of four commits from `node`, numbered from `base`.
async fn rounds(node: &FederatedMesh, base: u64) -> Vec<CommitReceipt> {
    let mut out = Vec::new();
    for k in 0..10 {
        out.extend(commit_many(node, base + 4 * k, 4).await);
    }
    out
}

async fn status(node: &FederatedMesh) -> fed_mesh::ConsensusStatus {
    node.consensus_status().await.unwrap().unwrap()
}

/// 4 voters (seeds 80 to 83) and a member that does not vote (84). A voter
/// commits adding 84, another removing 83. At the first checkpoint after the
/// change every node enters epoch 1, with no other traffic (the voters' ticks
/// move the sequence there); then commits from the removed voter, the new
/// one and an old one are ordered by the new voters. Their receipts verify
/// through the chain against the genesis, their proofs against the new
/// membership only; the link is a checkpoint; every update is in the ledger
/// once; the new voters agree on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_moves_the_voting_set_at_a_checkpoint() {
    let g = genesis(80..84, 1);
    let m0 = g.membership().unwrap();
    let nodes = full_mesh(80, 5, |_, c| with_genesis(c, &g)).await;
    let mut events: Vec<_> = nodes.iter().map(FederatedMesh::events).collect();

    // Epoch 0: the genesis's voters order; a member that does not vote
    // cannot change the membership.
    let before = commit_many(&nodes[4], 0, 3).await;
    for r in &before {
        assert!(r.epochs.is_empty());
        r.verify(&m0).unwrap();
    }
    let refused = nodes[4]
        .commit_membership_change(MembershipChange::Remove(nodes[0].node_id()))
        .await;
    // It is not in the ledger: the next update takes the next index.
    let probe = commit_many(&nodes[4], 50, 1).await;
    assert_eq!(probe[0].index, 3, "a non-voter's change was chained");

    // The changes, while two members commit: some of their updates execute
    // before the epoch's end, some are answered as after it and submitted
    // again, some are in flight when the epoch changes.
    let change = async {
        let add = nodes[0]
            .commit_membership_change(MembershipChange::Add {
                identity: Box::new(identity(84).public().clone()),
                addresses: nodes[4].listen_addrs().await.unwrap(),
            })
            .await
            .unwrap();
        let remove = nodes[1]
            .commit_membership_change(MembershipChange::Remove(nodes[3].node_id()))
            .await
            .unwrap();
        (add, remove)
    };
    let ((add, remove), during) = futures::future::join(
        change,
        futures::future::join(rounds(&nodes[4], 200), rounds(&nodes[2], 300)),
    )
    .await;
    let during: Vec<CommitReceipt> = during.0.into_iter().chain(during.1).collect();
    for r in &during {
        r.verify(&m0).unwrap();
    }
    for r in [&add, &remove] {
        assert!(r.epochs.is_empty(), "the change itself commits in epoch 0");
        r.verify(&m0).unwrap();
    }

    let voters: Vec<_> = [0, 1, 2, 4].iter().map(|&i| nodes[i].node_id()).collect();
    for node in &nodes {
        eventually(30, "every node enters epoch 1", || async {
            status(node).await.epoch == 1
        })
        .await;
        assert_eq!(status(node).await.voters, voters);
    }
    // The non-voter's change executed as a no-op: the voters are the ones the
    // voters chose, and the non-voter was told.
    assert!(matches!(refused, Err(Error::Consensus(_))), "{refused:?}");
    assert_eq!(status(&nodes[3]).await.replica, None, "83 votes no more");
    assert_eq!(status(&nodes[4]).await.replica, Some(3), "84 votes");

    // After the change: the removed voter, the new one, an old one.
    let after: Vec<CommitReceipt> = futures::future::join_all([
        commit_many(&nodes[3], 100, 3),
        commit_many(&nodes[4], 110, 3),
        commit_many(&nodes[0], 120, 3),
    ])
    .await
    .into_iter()
    .flatten()
    .collect();
    let e1 = epoch_of(&m0, &after[0]);
    assert_eq!(e1.number, 1);
    assert_eq!(
        e1.membership
            .members()
            .iter()
            .map(|m| m.node_id())
            .collect::<Vec<_>>(),
        voters
    );
    let link: CheckpointCert = postcard::from_bytes(&after[0].epochs[0].cert).unwrap();
    assert_eq!(link.seq % 16, 0, "the epoch changes at a checkpoint");
    assert!(link.seq > 0);
    for r in &after {
        assert_eq!(r.epochs.len(), 1);
        r.verify(&m0).unwrap();
        r.proof.verify(&e1.membership).unwrap();
        assert!(
            r.proof.verify(&m0).is_err(),
            "a proof after the change verifies against the new membership only"
        );
        let mut bare = r.clone();
        bare.epochs.clear();
        assert!(bare.verify(&m0).is_err());
    }
    // Every update once in the ledger, across the change: none lost, none
    // executed twice.
    let indexes: BTreeSet<u64> = before
        .iter()
        .chain(&probe)
        .chain([&add, &remove])
        .chain(&during)
        .chain(&after)
        .map(|r| r.index)
        .collect();
    assert_eq!(indexes, (0..95).collect());
    // The new voters agree on the ledger.
    for i in [0, 1, 2, 4] {
        eventually(20, "the voter executed everything", || async {
            status(&nodes[i]).await.ledger_count == 95
        })
        .await;
    }
    let heads: BTreeSet<[u8; 32]> =
        futures::future::join_all([0, 1, 2, 4].map(|i| status(&nodes[i])))
            .await
            .into_iter()
            .map(|s| s.ledger_head)
            .collect();
    assert_eq!(heads.len(), 1, "the new voters disagree on the ledger");
    // Every node saw the change as an event.
    for rx in &mut events {
        let mut seen = false;
        while let Ok(e) = rx.try_recv() {
            if let MeshEvent::EpochChanged {
                epoch: 1,
                voters: v,
                ..
            } = e
            {
                assert_eq!(v, voters);
                seen = true;
            }
        }
        assert!(seen, "a node did not report the new epoch");
    }
    shutdown(&nodes).await;
}

/// Starts a node from `config` (a data directory's); the previous instance
/// may hold the file a moment after it shut down.
async fn restart(config: &MeshConfig) -> FederatedMesh {
    let mut last = None;
    for _ in 0..100 {
        match FederatedMesh::builder(config.clone())
            .substrate(fed_mesh::substrate::MemorySubstrate::new())
            .start()
            .await
        {
            Ok(node) => return node,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("node does not start: {last:?}");
}

/// The epochs are stored: after a change, the removed voter (still a voter
/// in the genesis) and the new one (not a voter in the genesis) restart from
/// their data directories in the new epoch, the first without a replica, the
/// second with its replica's state; commits go on, and the new voter's audit
/// log records the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epochs_outlive_a_restart() {
    let g = genesis(90..94, 1);
    let m0 = g.membership().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let configure = |seed: u8, c: &mut MeshConfig| {
        with_genesis(c, &g);
        c.consensus.as_mut().unwrap().volatile_replica = false;
        c.data_dir = Some(dir.path().join(seed.to_string()));
    };
    let configs: Vec<MeshConfig> = (90..95)
        .map(|seed| {
            let mut c = config(seed);
            configure(seed, &mut c);
            c
        })
        .collect();
    let nodes = full_mesh(90, 5, configure).await;
    let mut nodes = nodes;
    nodes[0]
        .commit_membership_change(MembershipChange::Add {
            identity: Box::new(identity(94).public().clone()),
            addresses: nodes[4].listen_addrs().await.unwrap(),
        })
        .await
        .unwrap();
    nodes[1]
        .commit_membership_change(MembershipChange::Remove(nodes[3].node_id()))
        .await
        .unwrap();
    for node in &nodes {
        eventually(30, "every node enters epoch 1", || async {
            status(node).await.epoch == 1
        })
        .await;
    }
    let first = commit_many(&nodes[2], 0, 3).await;
    eventually(20, "the new voter executed them", || async {
        status(&nodes[4]).await.ledger_count == 5
    })
    .await;
    let voters = status(&nodes[4]).await.voters;

    for i in [3, 4] {
        nodes[i].shutdown().await.unwrap();
    }
    nodes.truncate(3);
    let removed = restart(&configs[3]).await;
    let added = restart(&configs[4]).await;
    let (s3, s4) = (status(&removed).await, status(&added).await);
    assert_eq!((s3.epoch, s3.replica), (1, None), "93 votes no more");
    assert_eq!((s4.epoch, s4.replica), (1, Some(3)), "94 votes");
    assert_eq!(s4.voters, voters);
    assert_eq!(s4.ledger_count, 5, "the new voter's replica state is back");
    nodes.push(removed);
    nodes.push(added);
    for i in [0, 1, 2] {
        eventually(10, "the restarted nodes are back", || async {
            nodes[i].peer_count().await.unwrap() == 4
        })
        .await;
    }
    let more = commit_many(&nodes[3], 10, 3).await;
    for r in first.iter().chain(&more) {
        assert_eq!(r.epochs.len(), 1);
        r.verify(&m0).unwrap();
    }
    eventually(20, "the new voter executes after its restart", || async {
        status(&nodes[4]).await.ledger_count == 8
    })
    .await;
    let e1 = epoch_of(&m0, &more[0]);
    let audit = nodes[4].store().unwrap().audit().entries().unwrap();
    assert!(
        audit.iter().any(|e| e.event
            == fed_mesh::store::AuditEvent::MembershipChanged {
                membership: *e1.membership.id()
            }),
        "{audit:?}"
    );
    shutdown(&nodes).await;
}
