//! Membership changes at checkpoint epochs (issue 11, test 5's second half).

use std::{collections::BTreeSet, sync::Arc};

use fed_mesh::{
    CommitReceipt, Epoch, Error, FederatedMesh, MembershipChange, MeshConfig, MeshEvent,
    pbft::{CheckpointCert, Membership},
    substrate::StateUpdate,
};

use crate::{
    commit::{commit_many, genesis, with_genesis},
    *,
};

/// The membership of the epoch a receipt's proof was made in, from the
/// genesis's and the receipt's chain.
fn epoch_of(m0: &Membership, r: &CommitReceipt) -> Epoch {
    Epoch::genesis(Arc::new(m0.clone()), Vec::new(), 0, 0)
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

/// Every voter of `proposers` (indexes into `nodes`) proposes `change`; their
/// receipts.
async fn propose(
    nodes: &[FederatedMesh],
    proposers: &[usize],
    change: &MembershipChange,
) -> Vec<CommitReceipt> {
    futures::future::join_all(
        proposers
            .iter()
            .map(|&i| nodes[i].commit_membership_change(change.clone())),
    )
    .await
    .into_iter()
    .map(|r| r.expect("the proposal commits"))
    .collect()
}

/// Waits until every node is in epoch `epoch` with `voters`.
async fn all_in(nodes: &[FederatedMesh], epoch: u64, voters: &[fed_mesh::crypto::NodeId]) {
    for node in nodes {
        eventually(30, &format!("every node enters epoch {epoch}"), || async {
            status(node).await.epoch == epoch
        })
        .await;
        assert_eq!(status(node).await.voters, voters);
    }
}

/// 4 voters (seeds 80 to 83) and a member that does not vote (84). One voter
/// proposing a change changes nothing; when three of the four (a quorum)
/// propose adding 84, every node enters epoch 1 at the next checkpoint, with
/// no other traffic needed (the voters' ticks move the sequence there), while
/// two members commit across the change. Then four of the five remove 83:
/// epoch 2. Commits from the removed voter, the new one and an old one are
/// ordered by the new voters. Their receipts verify through the chain against
/// the genesis, their proofs against their epoch's membership only; each link
/// is a checkpoint; every operation is in the ledger once; the voters agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_moves_the_voting_set_at_a_checkpoint() {
    let g = genesis(80..84, 1);
    let m0 = g.membership().unwrap();
    let nodes = full_mesh(80, 5, |_, c| with_genesis(c, &g)).await;
    let mut events: Vec<_> = nodes.iter().map(FederatedMesh::events).collect();
    let ids: Vec<_> = nodes.iter().map(FederatedMesh::node_id).collect();

    // Epoch 0: the genesis's voters order; a member that does not vote
    // cannot change the membership, nor can one voter alone.
    let before = commit_many(&nodes[4], 0, 3).await;
    for r in &before {
        assert!(r.epochs.is_empty());
        r.verify(&m0).unwrap();
    }
    let refused = nodes[4]
        .commit_membership_change(MembershipChange::Remove(ids[0]))
        .await;
    // It is not in the ledger: the next update takes the next index.
    let probe = commit_many(&nodes[4], 50, 1).await;
    assert_eq!(probe[0].index, 3, "a non-voter's change was chained");
    let lone = propose(&nodes, &[1], &MembershipChange::Remove(ids[0])).await;
    let filler = commit_many(&nodes[1], 60, 40).await;
    assert_eq!(
        (
            status(&nodes[1]).await.epoch,
            status(&nodes[1]).await.voters
        ),
        (0, ids[..4].to_vec()),
        "one voter changed the membership"
    );

    // A quorum adds 84, while two members commit: some of their updates
    // execute before the epoch's end, some are answered as after it and
    // submitted again, some are in flight when the epoch changes.
    let add = MembershipChange::Add {
        identity: Box::new(identity(84).public().clone()),
        addresses: nodes[4].listen_addrs().await.unwrap(),
    };
    let (adds, during) = futures::future::join(
        propose(&nodes, &[0, 2, 3], &add),
        futures::future::join(rounds(&nodes[4], 200), rounds(&nodes[2], 300)),
    )
    .await;
    let during: Vec<CommitReceipt> = during.0.into_iter().chain(during.1).collect();
    for r in during.iter().chain(&adds) {
        r.verify(&m0).unwrap();
    }
    let e1_voters = ids.clone();
    all_in(&nodes, 1, &e1_voters).await;
    assert_eq!(status(&nodes[4]).await.replica, Some(4), "84 votes");

    // Four of the five remove 83: epoch 2.
    let removes = propose(&nodes, &[0, 1, 2, 4], &MembershipChange::Remove(ids[3])).await;
    let voters: Vec<_> = [0, 1, 2, 4].iter().map(|&i| ids[i]).collect();
    all_in(&nodes, 2, &voters).await;
    // The non-voter's change executed as a no-op, and it was told.
    assert!(matches!(refused, Err(Error::Consensus(_))), "{refused:?}");
    assert_eq!(status(&nodes[3]).await.replica, None, "83 votes no more");
    assert_eq!(status(&nodes[4]).await.replica, Some(3), "84 votes");

    // After the changes: the removed voter, the new one, an old one.
    let after: Vec<CommitReceipt> = futures::future::join_all([
        commit_many(&nodes[3], 100, 3),
        commit_many(&nodes[4], 110, 3),
        commit_many(&nodes[0], 120, 3),
    ])
    .await
    .into_iter()
    .flatten()
    .collect();
    let e2 = epoch_of(&m0, &after[0]);
    assert_eq!(e2.number, 2);
    assert_eq!(
        e2.membership
            .members()
            .iter()
            .map(|m| m.node_id())
            .collect::<Vec<_>>(),
        voters
    );
    let e1 = epoch_of(&m0, &removes[0]);
    assert_eq!(e1.number, 1);
    for link in &after[0].epochs {
        let cert: CheckpointCert = postcard::from_bytes(&link.cert).unwrap();
        assert_eq!(cert.seq % 16, 0, "an epoch changes at a checkpoint");
        assert!(cert.seq > 0);
    }
    for r in &after {
        assert_eq!(r.epochs.len(), 2);
        r.verify(&m0).unwrap();
        r.proof.verify(&e2.membership).unwrap();
        assert!(
            r.proof.verify(&m0).is_err() && r.proof.verify(&e1.membership).is_err(),
            "a proof after a change verifies against its epoch's membership only"
        );
        let mut bare = r.clone();
        bare.epochs.clear();
        assert!(bare.verify(&m0).is_err());
        let mut short = r.clone();
        short.epochs.pop();
        assert!(short.verify(&m0).is_err());
    }
    // Every operation once in the ledger, across the changes: none lost,
    // none executed twice.
    let indexes: BTreeSet<u64> = before
        .iter()
        .chain(&probe)
        .chain(&lone)
        .chain(&filler)
        .chain(&adds)
        .chain(&during)
        .chain(&removes)
        .chain(&after)
        .map(|r| r.index)
        .collect();
    let total = 3 + 1 + 1 + 40 + 3 + 80 + 4 + 9;
    assert_eq!(indexes, (0..total as u64).collect());
    for i in [0, 1, 2, 4] {
        eventually(20, "the voter executed everything", || async {
            status(&nodes[i]).await.ledger_count == total as u64
        })
        .await;
    }
    let heads: BTreeSet<[u8; 32]> =
        futures::future::join_all([0, 1, 2, 4].map(|i| status(&nodes[i])))
            .await
            .into_iter()
            .map(|s| s.ledger_head)
            .collect();
    assert_eq!(heads.len(), 1, "the voters disagree on the ledger");
    // Every node saw both changes as events, and no update executed twice
    // (one answered as after an epoch's end is not applied there).
    for rx in &mut events {
        let mut seen = Vec::new();
        let mut applied = BTreeSet::new();
        while let Ok(e) = rx.try_recv() {
            match e {
                MeshEvent::EpochChanged {
                    epoch, voters: v, ..
                } => seen.push((epoch, v)),
                MeshEvent::Committed(b) => {
                    for (_, _, u) in &b.updates {
                        if let StateUpdate::StorePattern(p) = u {
                            assert!(applied.insert(p.id), "{:?} applied twice", p.id);
                        }
                    }
                }
                _ => {}
            }
        }
        assert_eq!(seen, vec![(1, e1_voters.clone()), (2, voters.clone())]);
    }
    shutdown(&nodes).await;
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
    let add = MembershipChange::Add {
        identity: Box::new(identity(94).public().clone()),
        addresses: nodes[4].listen_addrs().await.unwrap(),
    };
    propose(&nodes, &[0, 1, 2], &add).await;
    for node in &nodes {
        eventually(30, "every node enters epoch 1", || async {
            status(node).await.epoch == 1
        })
        .await;
    }
    let removed_id = nodes[3].node_id();
    propose(&nodes, &[0, 1, 2, 4], &MembershipChange::Remove(removed_id)).await;
    for node in &nodes {
        eventually(30, "every node enters epoch 2", || async {
            status(node).await.epoch == 2
        })
        .await;
    }
    let first = commit_many(&nodes[2], 0, 3).await;
    eventually(20, "the new voter executed them", || async {
        status(&nodes[4]).await.ledger_count == 10
    })
    .await;
    let voters = status(&nodes[4]).await.voters;

    for i in [3, 4] {
        nodes[i].shutdown().await.unwrap();
    }
    nodes.truncate(3);
    let removed = crate::persist::start_default(configs[3].clone()).await;
    let added = crate::persist::start_default(configs[4].clone()).await;
    let (s3, s4) = (status(&removed).await, status(&added).await);
    assert_eq!((s3.epoch, s3.replica), (2, None), "93 votes no more");
    assert_eq!((s4.epoch, s4.replica), (2, Some(3)), "94 votes");
    assert_eq!(s4.voters, voters);
    assert_eq!(s4.ledger_count, 10, "the new voter's replica state is back");
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
        assert_eq!(r.epochs.len(), 2);
        r.verify(&m0).unwrap();
    }
    eventually(20, "the new voter executes after its restart", || async {
        status(&nodes[4]).await.ledger_count == 13
    })
    .await;
    let e2 = epoch_of(&m0, &more[0]);
    let audit = nodes[4].store().unwrap().audit().entries().unwrap();
    // In the order the events happened (one writer appends them in turn).
    assert!(
        audit.windows(2).all(|w| w[0].time_ms <= w[1].time_ms),
        "audit entries out of order: {audit:?}"
    );
    assert!(
        audit.iter().any(|e| e.event
            == fed_mesh::store::AuditEvent::MembershipChanged {
                membership: *e2.membership.id()
            }),
        "{audit:?}"
    );
    shutdown(&nodes).await;
}
