//! Joining, a direct query, the shared map.

use fed_mesh::{FederationScope, QueryOptions, substrate::PatternQuery};

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_join_query_and_share_a_map() {
    let a = start(config(1)).await;
    let b = start(config(2)).await;
    a.store_pattern(pattern(1, vec![1.0, 0.0])).await.unwrap();
    b.store_pattern(pattern(2, vec![0.9, 0.1])).await.unwrap();

    let token = a
        .join_federation(&b.address().await.unwrap())
        .await
        .unwrap();
    assert_eq!(token.subject(), a.node_id());
    eventually(5, "both sessions", || async {
        a.peer_count().await.unwrap() == 1 && b.peer_count().await.unwrap() == 1
    })
    .await;

    let outcome = a
        .federated_query(
            PatternQuery::new(vec![1.0, 0.0], 5),
            FederationScope::Direct,
            QueryOptions::default(),
        )
        .await
        .unwrap();
    let ids: Vec<_> = outcome.results.iter().map(|r| r.pattern).collect();
    assert_eq!(ids, vec![PatternId::from_u64(1), PatternId::from_u64(2)]);
    assert_eq!(outcome.results[1].provenance, vec![b.node_id()]);
    assert!(outcome.complete, "{outcome:?}");

    a.put("colour", "blue").await.unwrap();
    b.put("shape", "round").await.unwrap();
    eventually(10, "maps converge", || async {
        a.entries().await.unwrap() == b.entries().await.unwrap()
            && a.entries().await.unwrap().len() == 2
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
