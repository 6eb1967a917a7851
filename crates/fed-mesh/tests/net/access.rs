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
    for _ in 0..30 {
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
    }
    // A reads its token and does not ask: B is never asked, so never has to
    // refuse, and A stays a member (it is not cut off for asking).
    assert_eq!(b.stats().await.unwrap().queries_served, 0);
    assert!(b.stats().await.unwrap().cut_off.is_empty());
    assert_eq!(b.peer_count().await.unwrap(), 1);
    shutdown(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_then_replaced() {
    let mut c = config(72);
    // Long enough for the first query on a loaded machine.
    c.timing.token_lifetime_ms = 3_000;
    let b = start(c).await;
    let mut c = config(73);
    c.timing.renew_tokens = false;
    // No anti-entropy in between: the query is the first request after expiry.
    c.timing.sync_interval_ms = 60_000;
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
    let handshakes = a.stats().await.unwrap().handshakes_completed;
    tokio::time::sleep(std::time::Duration::from_millis(3_300)).await;
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
    // The node noticed and joined again: the next query is answered.
    eventually(5, "a new session", || async {
        a.stats().await.unwrap().handshakes_completed > handshakes
    })
    .await;
    let again = a
        .federated_query(query(), FederationScope::Direct, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(again.results.len(), 1, "{again:?}");
    shutdown(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_renewed_before_their_tokens_expire() {
    let mut c = config(74);
    // Renewal starts at three quarters of the lifetime: a second for the new
    // handshake, even on a loaded machine.
    c.timing.token_lifetime_ms = 4_000;
    let b = start(c).await;
    let a = start(config(75)).await;
    b.store_pattern(pattern(1, vec![1.0, 0.0])).await.unwrap();
    a.join_federation(&b.address().await.unwrap())
        .await
        .unwrap();
    // 5.2 s in all: past the first token's expiry.
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;
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
