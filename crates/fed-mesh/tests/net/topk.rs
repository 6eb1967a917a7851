//! Global top-k over five nodes; a node that hangs mid-query (test 4).

use std::time::Duration;

use std::sync::Arc;

use fed_mesh::{
    FederationScope, PeerStatus, QueryOptions,
    substrate::{
        MemorySubstrate, Pattern, PatternId, PatternQuery, ScoredPattern, Substrate, SubstrateError,
    },
};

use crate::*;

const DIM: usize = 24;

/// Stores 40 patterns per node and returns a substrate holding all of them.
async fn spread(nodes: &[FederatedMesh]) -> MemorySubstrate {
    let union = MemorySubstrate::new();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..40u64 {
            let id = (i as u64) * 1000 + j;
            let p = pattern(id, embedding(id, DIM));
            union.insert(p.clone()).unwrap();
            n.store_pattern(p).await.unwrap();
        }
    }
    union
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_query_equals_the_top_k_of_the_union_of_all_stores() {
    // A sparse mesh: each node keeps at most two outbound sessions, so some
    // nodes are reached only through others.
    let mut nodes: Vec<FederatedMesh> = Vec::new();
    for i in 0..5u8 {
        let mut c = config(50 + i);
        c.limits.max_peers = 2;
        let node = start(c).await;
        if let Some(prev) = nodes.last() {
            node.join_federation(&prev.address().await.unwrap())
                .await
                .unwrap();
        }
        nodes.push(node);
    }
    let union = spread(&nodes).await;
    // Sessions settle after the joins: discovery dials further members and
    // the two-session limit drops some, so for a moment a node may have no
    // session that a query can reach (a CI run saw the first query reach
    // three of the four). Once every node answers one query, the mesh is
    // whole; a node that stayed unreachable fails here.
    let probe = PatternQuery::new(embedding(9_999, DIM), 1);
    eventually(20, "a global query reaches every other node", || async {
        nodes[0]
            .federated_query(
                probe.clone(),
                FederationScope::Global { max_hops: 4 },
                QueryOptions::default(),
            )
            .await
            .is_ok_and(|o| {
                o.peers
                    .iter()
                    .filter(|p| matches!(p.status, PeerStatus::Answered { .. }))
                    .count()
                    == 4
            })
    })
    .await;
    for q in 0..5u64 {
        let query = PatternQuery::new(embedding(10_000 + q, DIM), 10);
        let want: Vec<_> = union
            .query(&query)
            .unwrap()
            .into_iter()
            .map(|s| (s.pattern.id, s.score))
            .collect();
        let outcome = nodes[0]
            .federated_query(
                query,
                FederationScope::Global { max_hops: 4 },
                QueryOptions::default(),
            )
            .await
            .unwrap();
        let got: Vec<_> = outcome
            .results
            .iter()
            .map(|r| (r.pattern, r.score))
            .collect();
        assert_eq!(got.len(), want.len(), "{outcome:?}");
        if got.iter().zip(&want).any(|(g, w)| g.0 != w.0) {
            panic!("query {q}: peers {:?}", outcome.peers);
        }
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0, "query {q}: got {got:?}, want {want:?}");
            assert!((g.1 - w.1).abs() < 1e-5);
        }
        // Every other node answered, most through another.
        let answered = outcome
            .peers
            .iter()
            .filter(|p| matches!(p.status, PeerStatus::Answered { .. }))
            .count();
        assert_eq!(answered, 4, "{:?}", outcome.peers);
    }
    shutdown(&nodes).await;
}

/// A substrate whose searches never finish, as a node stuck in the middle of
/// answering: it has the query and never answers it.
struct Stuck(MemorySubstrate, Arc<tokio::sync::Notify>);

#[async_trait::async_trait]
impl Substrate for Stuck {
    fn dimension(&self) -> Option<usize> {
        self.0.dimension()
    }
    async fn store(&self, p: Pattern) -> Result<bool, SubstrateError> {
        self.0.store(p).await
    }
    async fn remove(&self, id: &PatternId) -> Result<bool, SubstrateError> {
        self.0.remove(id).await
    }
    async fn get(&self, id: &PatternId) -> Result<Option<Pattern>, SubstrateError> {
        self.0.get(id).await
    }
    async fn search(&self, _: &PatternQuery) -> Result<Vec<ScoredPattern>, SubstrateError> {
        self.1.notified().await;
        Ok(Vec::new())
    }
    async fn len(&self) -> usize {
        self.0.len().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stuck_in_the_middle_of_a_query_is_reported_as_timed_out() {
    let nodes = full_mesh(65, 3, |_, _| {}).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let stuck = FederatedMesh::builder(config(68))
        .substrate(Stuck(MemorySubstrate::new(), release.clone()))
        .start()
        .await
        .unwrap();
    for n in &nodes {
        stuck
            .join_federation(&n.address().await.unwrap())
            .await
            .unwrap();
    }
    let union = spread(&nodes).await;
    eventually(10, "sessions with the stuck node", || async {
        nodes[0].peer_count().await.unwrap() == 3
    })
    .await;
    let query = PatternQuery::new(embedding(78, DIM), 10);
    let options = QueryOptions {
        timeout_ms: 4_000,
        ..QueryOptions::default()
    };
    let outcome = nodes[0]
        .federated_query(query.clone(), FederationScope::Direct, options)
        .await
        .unwrap();
    // It took the query (its search started) and never answered.
    assert!(stuck.stats().await.unwrap().queries_served >= 1);
    assert_eq!(
        outcome.peer(&stuck.node_id()).unwrap().status,
        PeerStatus::TimedOut,
        "{:?}",
        outcome.peers
    );
    assert!(!outcome.complete);
    assert_is_top_k_of_union(&outcome, &union, &query);
    release.notify_waiters();
    shutdown(&nodes).await;
    let _ = stuck.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_hangs_altogether_is_reported_as_timed_out() {
    let nodes = full_mesh(60, 5, |_, _| {}).await;
    let union = spread(&nodes[..4]).await;
    for j in 0..40u64 {
        nodes[4]
            .store_pattern(pattern(4000 + j, embedding(4000 + j, DIM)))
            .await
            .unwrap();
    }
    let stuck = &nodes[4];
    stuck.debug_pause(Duration::from_secs(7)).await.unwrap();
    let query = PatternQuery::new(embedding(77, DIM), 10);
    let options = QueryOptions {
        timeout_ms: 4_000,
        ..QueryOptions::default()
    };
    let outcome = nodes[0]
        .federated_query(
            query.clone(),
            FederationScope::Global { max_hops: 2 },
            options,
        )
        .await
        .unwrap();
    let status = &outcome.peer(&stuck.node_id()).unwrap().status;
    assert_eq!(*status, PeerStatus::TimedOut, "{:?}", outcome.peers);
    assert!(!outcome.complete);
    // The others' answers are all there.
    assert_is_top_k_of_union(&outcome, &union, &query);
    shutdown(&nodes).await;
}

/// The outcome's results are, in order, the top-k of the union of all stores.
fn assert_is_top_k_of_union(
    outcome: &fed_mesh::QueryOutcome,
    union: &MemorySubstrate,
    query: &PatternQuery,
) {
    let want: Vec<_> = union
        .query(query)
        .unwrap()
        .into_iter()
        .map(|s| s.pattern.id)
        .collect();
    let got: Vec<_> = outcome.results.iter().map(|r| r.pattern).collect();
    assert_eq!(got, want);
}
