//! Byzantine commits over libp2p: fed-pbft among the genesis's voting members.

use std::collections::BTreeSet;

use fed_mesh::{
    CommitReceipt, Error, FederatedMesh, FederationScope, MeshConfig, MeshEvent, PeerStatus,
    QueryOptions,
    core::commit::Revocation,
    genesis::{ConsensusParameters, Genesis, GenesisMember},
    substrate::{PatternQuery, StateUpdate},
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

/// The consensus of `g`; voters run without a data directory (in memory).
pub(crate) fn with_genesis(c: &mut MeshConfig, g: &Genesis) {
    *c = c.clone().with_genesis(g).unwrap();
    c.consensus.as_mut().unwrap().volatile_replica = true;
}

fn update(i: u64) -> StateUpdate {
    StateUpdate::StorePattern(pattern(i, embedding(i, DIM)))
}

/// Submits `count` updates from `node`, numbered from `first`, all at once.
pub(crate) async fn commit_many(
    node: &FederatedMesh,
    first: u64,
    count: u64,
) -> Vec<CommitReceipt> {
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

/// A federation idle for longer than the request timeout commits the next
/// update in the same view: the backups time the new batch from its arrival,
/// not from the last batch they executed (each commit after an idle second
/// used to change view).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_federation_commits_in_the_same_view() {
    let g = genesis(66..70, 1);
    let timeout = std::sync::atomic::AtomicU64::new(0);
    let nodes = full_mesh(66, 4, |_, c| {
        with_genesis(c, &g);
        let t = c.consensus.as_ref().unwrap().pbft.request_timeout_ms;
        timeout.fetch_max(t, std::sync::atomic::Ordering::Relaxed);
    })
    .await;
    let timeout = timeout.into_inner();
    assert!(timeout > 0);
    for round in 0..3u64 {
        commit_many(&nodes[1], round, 1).await;
        for (i, node) in nodes.iter().enumerate() {
            eventually(10, "the voter executed the update", || async {
                node.consensus_status().await.unwrap().unwrap().ledger_count > round
            })
            .await;
            let view = node.consensus_status().await.unwrap().unwrap().view;
            assert_eq!(view, 0, "voter {i} changed view by commit {round}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(timeout + timeout / 2)).await;
    }
    shutdown(&nodes).await;
}

/// A node without a genesis cannot commit; an update over the federation's
/// operation limit is refused before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_without_a_genesis_or_over_the_limit_are_refused() {
    // A voting member must keep its votes: without a data directory it does
    // not start (unless the configuration says it may forget them).
    let mut volatile = config(74).with_genesis(&genesis([74], 1)).unwrap();
    let Err(err) = FederatedMesh::builder(volatile.clone()).start().await else {
        panic!("a voter without a store is refused");
    };
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("data_dir")),
        "{err}"
    );
    volatile.consensus.as_mut().unwrap().volatile_replica = true;
    FederatedMesh::builder(volatile)
        .start()
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
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

/// Splits the nodes into two sides at the transport: each side closes its
/// connections to the other and refuses new ones.
async fn partition(nodes: &[FederatedMesh], left: &[usize], right: &[usize], heal: bool) {
    for (from, to) in [(left, right), (right, left)] {
        let peers: Vec<_> = to.iter().map(|&j| nodes[j].peer_id()).collect();
        for &i in from {
            if heal {
                nodes[i].debug_heal(peers.clone()).await.unwrap();
            } else {
                nodes[i].debug_partition(peers.clone()).await.unwrap();
            }
        }
    }
}

async fn ledger(node: &FederatedMesh) -> (u64, [u8; 32]) {
    let s = node.consensus_status().await.unwrap().unwrap();
    (s.ledger_count, s.ledger_head)
}

/// Waits until the voting nodes agree on one ledger of at least `min` updates.
async fn agree(voters: &[FederatedMesh], min: u64) -> (u64, [u8; 32]) {
    eventually(60, "the voters agree on one ledger", || async {
        let mut all = BTreeSet::new();
        for v in voters {
            all.insert(ledger(v).await);
        }
        all.len() == 1 && all.first().is_some_and(|l| l.0 >= min)
    })
    .await;
    ledger(&voters[0]).await
}

/// Test 3, 2+2: with the voters split in halves, neither side commits, nor does
/// either diverge; after healing, commits resume and every node converges,
/// the shared map included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_two_partition_commits_nothing_and_heals() {
    let g = genesis(40..44, 1);
    let nodes = full_mesh(40, 4, |_, c| {
        with_genesis(c, &g);
        c.consensus.as_mut().unwrap().commit_timeout_ms = 6_000;
    })
    .await;
    commit_many(&nodes[1], 0, 5).await;
    let before = agree(&nodes, 5).await;
    partition(&nodes, &[0, 1], &[2, 3], false).await;
    for n in &nodes {
        eventually(10, "the partition is seen", || async {
            n.peer_count().await.unwrap() == 1
        })
        .await;
    }
    let (left, right) = tokio::join!(
        nodes[0].byzantine_commit(update(100)),
        nodes[2].byzantine_commit(update(200))
    );
    assert!(matches!(left, Err(Error::Timeout)), "{left:?}");
    assert!(matches!(right, Err(Error::Timeout)), "{right:?}");
    nodes[0].put("left", "L").await.unwrap();
    nodes[3].put("right", "R").await.unwrap();
    for n in &nodes {
        assert_eq!(ledger(n).await, before, "a minority executed something");
    }
    partition(&nodes, &[0, 1], &[2, 3], true).await;
    let receipt = nodes[3].byzantine_commit(update(300)).await.unwrap();
    receipt.verify(&g.membership().unwrap()).unwrap();
    agree(&nodes, 6).await;
    for n in &nodes {
        eventually(20, "the shared map converges", || async {
            n.get("left").await.unwrap().as_deref() == Some(&b"L"[..])
                && n.get("right").await.unwrap().as_deref() == Some(&b"R"[..])
        })
        .await;
    }
    shutdown(&nodes).await;
}

/// Test 3, 4+2: four voters and two non-voting members, split 3 voters and a
/// member against 1 voter and a member. The majority commits (its non-voter
/// too); the minority cannot; after healing, the lone voter catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_non_voters_commits_on_the_majority_side_only() {
    let g = genesis(50..54, 1);
    let nodes = full_mesh(50, 6, |_, c| {
        with_genesis(c, &g);
        c.consensus.as_mut().unwrap().commit_timeout_ms = 8_000;
    })
    .await;
    let major = [0, 1, 2, 4];
    let minor = [3, 5];
    partition(&nodes, &major, &minor, false).await;
    eventually(10, "the partition is seen", || async {
        nodes[5].peer_count().await.unwrap() == 1
    })
    .await;
    let (ok, refused) = tokio::join!(
        commit_many(&nodes[4], 0, 10),
        nodes[5].byzantine_commit(update(500))
    );
    assert_eq!(ok.len(), 10);
    assert!(matches!(refused, Err(Error::Timeout)), "{refused:?}");
    assert_eq!(
        ledger(&nodes[3]).await.0,
        0,
        "the lone voter executed alone"
    );
    nodes[4].put("major", "M").await.unwrap();
    nodes[5].put("minor", "m").await.unwrap();
    partition(&nodes, &major, &minor, true).await;
    commit_many(&nodes[5], 600, 3).await;
    agree(&nodes[..4], 13).await;
    for n in &nodes {
        eventually(20, "the shared map converges", || async {
            n.get("major").await.unwrap().is_some() && n.get("minor").await.unwrap().is_some()
        })
        .await;
    }
    shutdown(&nodes).await;
}

/// A voter's data directory holds the votes it cast in one federation: started
/// with another genesis, the node refuses it, naming the file, instead of
/// recovering foreign votes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_federation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(73);
    c.data_dir = Some(dir.path().join("d"));
    let mut first = c.clone();
    with_genesis(&mut first, &genesis([73], 1));
    let node = FederatedMesh::builder(first).start().await.unwrap();
    node.byzantine_commit(update(1)).await.unwrap();
    node.shutdown().await.unwrap();
    drop(node);
    let mut other = c.clone();
    with_genesis(&mut other, &genesis([73], 2));
    let mut last = None;
    for _ in 0..100 {
        match FederatedMesh::builder(other.clone()).start().await {
            Ok(_) => panic!("started on another federation's store"),
            Err(e @ Error::Store(fed_mesh::store::StoreError::OtherFederation { .. })) => {
                assert!(e.to_string().contains("node.redb"), "{e}");
                return;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("never refused as another federation's: {last:?}");
}

/// The statuses of `victim`'s `Direct` query, by the nodes that answered it.
async fn direct_statuses(victim: &FederatedMesh) -> Vec<(fed_mesh::crypto::NodeId, PeerStatus)> {
    let q = victim
        .federated_query(
            PatternQuery::new(embedding(1, DIM), 3),
            FederationScope::Direct,
            QueryOptions::default(),
        )
        .await
        .unwrap();
    q.peers
        .into_iter()
        .filter(|p| p.reported_by.is_none())
        .map(|p| (p.node, p.status))
        .collect()
}

/// Test 5, revocation: a voting member commits the revocation of a member; from
/// then on every member, voting or not, refuses that member's requests, and its
/// commits. A node that does not vote cannot revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_member_revocation_is_enforced_by_every_member() {
    let g = genesis(20..24, 1);
    // The non-voter 24 keeps its state on disk: it must still enforce the
    // revocation after a restart (nobody tells it again).
    let dir = tempfile::tempdir().unwrap();
    let configure = |seed: u8, c: &mut MeshConfig| {
        with_genesis(c, &g);
        c.consensus.as_mut().unwrap().commit_timeout_ms = 5_000;
        if seed == 24 {
            c.data_dir = Some(dir.path().join("n24"));
        }
    };
    let mut nodes = full_mesh(20, 6, configure).await;
    let victim = &nodes[5];
    let before = direct_statuses(victim).await;
    assert_eq!(before.len(), 5);
    assert!(
        before
            .iter()
            .all(|(_, s)| matches!(s, PeerStatus::Answered { .. })),
        "{before:?}"
    );
    // Not from a node that does not vote.
    let refused = nodes[4]
        .commit_revocation(Revocation::Member(victim.node_id()))
        .await;
    assert!(matches!(refused, Err(Error::Consensus(_))), "{refused:?}");
    assert_eq!(direct_statuses(victim).await, before);

    // Nor of a voting member (that is a membership change): one Byzantine
    // voter could otherwise silence the others.
    let refused = nodes[1]
        .commit_revocation(Revocation::Member(nodes[2].node_id()))
        .await;
    assert!(matches!(refused, Err(Error::Consensus(_))), "{refused:?}");
    let r = nodes[1]
        .commit_revocation(Revocation::Member(victim.node_id()))
        .await
        .unwrap();
    r.verify(&g.membership().unwrap()).unwrap();
    // Every member cuts the revoked member off (and would refuse its token
    // and its handshakes): none answers it any more.
    for (i, n) in nodes.iter().enumerate().take(5) {
        eventually(
            10,
            &format!("member {i} cut the revoked member off"),
            || async { n.stats().await.unwrap().cut_off.get("revoked") == Some(&1) },
        )
        .await;
    }
    let after = direct_statuses(victim).await;
    assert!(
        after
            .iter()
            .all(|(_, s)| !matches!(s, PeerStatus::Answered { .. })),
        "{after:?}"
    );
    assert!(victim.byzantine_commit(update(1)).await.is_err());
    // The other non-voter is still served.
    let other = direct_statuses(&nodes[4]).await;
    assert!(
        other
            .iter()
            .filter(|(n, _)| *n != victim.node_id())
            .all(|(_, s)| matches!(s, PeerStatus::Answered { .. })),
        "{other:?}"
    );

    // The non-voter restarts from its data directory and still refuses the
    // revoked member's handshake.
    // (Every handle holds the store open: all of the old node's go.)
    let old = nodes.remove(4);
    old.shutdown().await.unwrap();
    drop(old);
    let mut c = config(24);
    configure(24, &mut c);
    let mut last = None;
    for _ in 0..100 {
        match FederatedMesh::builder(c.clone())
            .substrate(MemorySubstrate::new())
            .start()
            .await
        {
            Ok(n) => {
                last = None;
                nodes.push(n);
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(last.is_none(), "the non-voter does not restart: {last:?}");
    // nodes[4] is the revoked member now, nodes[5] the restarted non-voter.
    let failed_before = nodes[5].stats().await.unwrap().handshakes_failed;
    let joined = nodes[4]
        .join_federation(&nodes[5].address().await.unwrap())
        .await;
    assert!(
        joined.is_err(),
        "the revoked member joined a restarted member: {joined:?}"
    );
    // Refused by the restarted member's handshake, not lost on the way...
    assert!(nodes[5].stats().await.unwrap().handshakes_failed > failed_before);
    // ...while a member that is not revoked joins it.
    nodes[0]
        .join_federation(&nodes[5].address().await.unwrap())
        .await
        .unwrap();
    shutdown(&nodes).await;
}

/// A member that does not vote and was away when a revocation committed (here:
/// not yet started) learns it from the replicas' certified state when it
/// joins: a stable checkpoint signed by a quorum over a ledger that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_away_when_a_revocation_committed_learns_it_on_return() {
    let g = genesis(30..34, 1);
    let configure = |_: u8, c: &mut MeshConfig| {
        with_genesis(c, &g);
        c.consensus.as_mut().unwrap().commit_timeout_ms = 5_000;
    };
    // Voters 30 to 33 and the member to revoke, 34.
    let mut nodes = full_mesh(30, 5, configure).await;
    nodes[0]
        .commit_revocation(Revocation::Member(nodes[4].node_id()))
        .await
        .unwrap();
    // Past the next checkpoint (every 16 sequence numbers).
    for i in 0..20 {
        nodes[1].byzantine_commit(update(i)).await.unwrap();
    }
    for n in &nodes[..4] {
        eventually(10, "a stable checkpoint after the revocation", || async {
            n.consensus_status()
                .await
                .unwrap()
                .unwrap()
                .stable_checkpoint
                >= 16
        })
        .await;
    }

    // The member that was away joins every voter.
    let mut c = config(35);
    configure(35, &mut c);
    let late = start(c).await;
    let mut events = late.events();
    for v in &nodes[..4] {
        late.join_federation(&v.address().await.unwrap())
            .await
            .unwrap();
    }
    let revoked = nodes[4].node_id();
    let learnt = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(MeshEvent::Revoked(Revocation::Member(m))) if m == revoked => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(
        learnt,
        Ok(true),
        "the late member never learnt the revocation"
    );
    let joined = nodes[4]
        .join_federation(&late.address().await.unwrap())
        .await;
    assert!(joined.is_err(), "the revoked member joined: {joined:?}");
    assert_eq!(late.stats().await.unwrap().pbft_rejected, 0);
    nodes.push(late);
    shutdown(&nodes).await;
}
