//! A first federation of two, and the shared map converging (test 1).

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
    assert_eq!(token.body().issuer, b.node_id().0);
    eventually(5, "both sessions", || async {
        a.peer_count().await.unwrap() == 1 && b.peer_count().await.unwrap() == 1
    })
    .await;

    // An encrypted request and its answer: B's pattern comes back, attributed to B.
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

    // Different keys on two nodes converge.
    a.put("colour", "blue").await.unwrap();
    b.put("shape", "round").await.unwrap();
    eventually(10, "maps converge", || async {
        let (ea, eb) = (a.entries().await.unwrap(), b.entries().await.unwrap());
        ea == eb && ea.len() == 2
    })
    .await;
    assert_eq!(b.get("colour").await.unwrap(), Some(b"blue".to_vec()));
    shutdown(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_key_converge_to_one_value_everywhere() {
    let nodes = full_mesh(10, 3, |_, _| {}).await;
    // Every node writes the key at once, several times over; removals too.
    for round in 0..5u8 {
        let writes = nodes.iter().enumerate().map(|(i, n)| {
            let n = n.clone();
            async move {
                n.put("leader", format!("node {i} round {round}"))
                    .await
                    .unwrap();
                n.put(format!("own {i}"), vec![round]).await.unwrap();
                if round == 3 {
                    n.remove(format!("own {i}")).await.unwrap();
                }
            }
        });
        futures::future::join_all(writes).await;
    }
    eventually(15, "one value everywhere", || async {
        let mut all = Vec::new();
        for n in &nodes {
            all.push(n.entries().await.unwrap());
        }
        all.windows(2).all(|w| w[0] == w[1]) && all[0].len() == 4
    })
    .await;
    let leader = nodes[0].get("leader").await.unwrap().unwrap();
    assert!(String::from_utf8(leader).unwrap().ends_with("round 4"));
    shutdown(&nodes).await;
}
