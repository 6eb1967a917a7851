//! An onion-routed query over three relays (test 3).

use fed_mesh::{FederationScope, OnionRouting, PeerStatus, QueryOptions, substrate::PatternQuery};

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onion_query_over_three_relays_finds_a_pattern_only_the_fourth_node_holds() {
    // Origin, three relays, destination.
    let nodes = full_mesh(40, 5, |_, _| {}).await;
    let (origin, relays, destination) = (&nodes[0], &nodes[1..4], &nodes[4]);
    let secret = embedding(7, 32);
    destination
        .store_pattern(pattern(99, secret.clone()))
        .await
        .unwrap();
    // Every member must have everyone's onion key in its directory.
    for n in &nodes {
        eventually(10, "directories complete", || async {
            n.stats().await.unwrap().sync_chunks > 0 && n.peers().await.unwrap().len() == 4
        })
        .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let before: Vec<_> = futures::future::join_all(relays.iter().map(|r| r.stats())).await;

    let options = QueryOptions {
        onion: Some(OnionRouting {
            relays: 3,
            targets: vec![destination.node_id()],
        }),
        timeout_ms: 5_000,
        ..QueryOptions::default()
    };
    let outcome = origin
        .federated_query(
            PatternQuery::new(secret.clone(), 3),
            FederationScope::Direct,
            options,
        )
        .await
        .unwrap();
    assert_eq!(outcome.results.len(), 1, "{outcome:?}");
    assert_eq!(outcome.results[0].pattern, PatternId::from_u64(99));
    assert_eq!(outcome.results[0].provenance, vec![destination.node_id()]);
    assert_eq!(
        outcome.peer(&destination.node_id()).unwrap().status,
        PeerStatus::Answered { hits: 1 }
    );

    // Each relay forwarded the packet and passed the reply back, and none of
    // them received the query: no delivery, no search, no query served.
    for (relay, before) in relays.iter().zip(before) {
        let (before, after) = (before.unwrap(), relay.stats().await.unwrap());
        assert_eq!(
            after.onion_forwarded - before.onion_forwarded,
            1,
            "{after:?}"
        );
        assert_eq!(
            after.onion_replies_relayed - before.onion_replies_relayed,
            1
        );
        assert_eq!(after.onion_delivered, 0);
        assert_eq!(after.queries_served, before.queries_served);
    }
    assert_eq!(destination.stats().await.unwrap().onion_delivered, 1);
    // The origin sent nothing to the destination directly.
    assert_eq!(destination.stats().await.unwrap().queries_served, 0);
    shutdown(&nodes).await;
}
