//! Access control: capabilities and token expiry, checked per request (test 5).

use fed_mesh::{
    FederationScope, PeerStatus, QueryOptions,
    handshake::{Capability, CapabilitySet},
    substrate::PatternQuery,
    wire::Refusal,
};

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_query_capability_is_refused() {
    // B grants sync only.
    let mut c = config(70);
    c.capabilities.set = CapabilitySet::EMPTY.with(Capability::CrdtSync);
    let b = start(c).await;
    let a = start(config(71)).await;
    b.store_pattern(pattern(1, vec![1.0, 0.0])).await.unwrap();
    let token = a
        .join_federation(&b.address().await.unwrap())
        .await
        .unwrap();
    assert!(!token.body().capabilities.allows(Capability::Query));
    let outcome = a
        .federated_query(
            PatternQuery::new(vec![1.0, 0.0], 1),
            FederationScope::Direct,
            QueryOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.peer(&b.node_id()).unwrap().status,
        PeerStatus::Refused(Refusal::CapabilityDenied)
    );
    assert!(outcome.results.is_empty());
    assert_eq!(
        b.stats()
            .await
            .unwrap()
            .refusals_sent
            .get("capability_denied"),
        Some(&1)
    );
    shutdown(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let mut c = config(72);
    c.timing.token_lifetime_ms = 1_500;
    let b = start(c).await;
    let mut c = config(73);
    c.timing.renew_tokens = false;
    let a = start(c).await;
    b.store_pattern(pattern(1, vec![1.0, 0.0])).await.unwrap();
    a.join_federation(&b.address().await.unwrap())
        .await
        .unwrap();
    let query = || PatternQuery::new(vec![1.0, 0.0], 1);
    let fresh = a
        .federated_query(query(), FederationScope::Direct, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(fresh.results.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(1_700)).await;
    let late = a
        .federated_query(query(), FederationScope::Direct, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        late.peer(&b.node_id()).unwrap().status,
        PeerStatus::Refused(Refusal::TokenExpired),
        "{late:?}"
    );
    assert!(late.results.is_empty());
    shutdown(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_renewed_before_their_tokens_expire() {
    let mut c = config(74);
    c.timing.token_lifetime_ms = 1_200;
    let b = start(c).await;
    let a = start(config(75)).await;
    b.store_pattern(pattern(1, vec![1.0, 0.0])).await.unwrap();
    a.join_federation(&b.address().await.unwrap())
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        let outcome = a
            .federated_query(
                PatternQuery::new(vec![1.0, 0.0], 1),
                FederationScope::Direct,
                QueryOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(outcome.results.len(), 1, "{outcome:?}");
    }
    shutdown(&[a, b]).await;
}
