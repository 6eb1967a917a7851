//! Joining: the handshake and its token, a wrong identity, the allowlist (test 2).

use std::sync::Arc;

use fed_mesh::{
    Direction, Error, MeshEvent, PeerAddress,
    handshake::{Allowlist, RejectReason},
};

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_identity_than_its_address_names_is_refused() {
    let a = start(config(20)).await;
    let b = start(config(21)).await;
    let c = start(config(22)).await;
    let b_addr = b.address().await.unwrap();

    // B's address and peer id, but C's node id: B authenticates as B, not C.
    let wrong_node = PeerAddress::new(b_addr.addr.clone(), c.node_id()).unwrap();
    match a.join_federation(&wrong_node).await {
        Err(Error::WrongIdentity { peer, expected }) => {
            assert_eq!(peer, b.peer_id());
            assert_eq!(expected, c.node_id());
        }
        other => panic!("expected WrongIdentity, got {other:?}"),
    }
    // B's socket address with C's peer id: libp2p's secure channel refuses it.
    let mut addr = b_addr.addr.clone();
    addr.pop();
    let wrong_peer = PeerAddress::new(addr.with_p2p(c.peer_id()).unwrap(), c.node_id()).unwrap();
    assert!(matches!(
        a.join_federation(&wrong_peer).await,
        Err(Error::Unreachable { .. } | Error::Disconnected(_))
    ));
    // An address without /p2p/ is refused before anything is sent.
    let mut bare = b_addr.addr.clone();
    bare.pop();
    assert!(matches!(
        PeerAddress::new(bare, b.node_id()),
        Err(Error::BadAddress { .. })
    ));
    // The right address still works.
    a.join_federation(&b_addr).await.unwrap();
    shutdown(&[a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_allowlist_is_refused_with_a_clear_error_on_both_sides() {
    let insider = identity(31).node_id();
    let b = start(config_with(30, Arc::new(Allowlist::new([insider])))).await;
    let mut b_events = b.events();
    let outsider = start(config(32)).await;

    match outsider.join_federation(&b.address().await.unwrap()).await {
        Err(Error::Handshake { peer, source }) => {
            assert_eq!(peer, b.peer_id());
            assert!(
                matches!(
                    *source,
                    fed_mesh::handshake::Error::Rejected(RejectReason::NotAdmitted)
                ),
                "{source}"
            );
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    // B says why, too.
    let refused = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if let Ok(MeshEvent::JoinFailed {
                peer,
                direction: Direction::Inbound,
                reason,
            }) = b_events.recv().await
                && peer == outsider.peer_id()
            {
                return reason;
            }
        }
    })
    .await
    .unwrap();
    assert!(refused.contains("allowlist"), "{refused}");

    // The listed node gets in.
    let member = start(config(31)).await;
    let token = member
        .join_federation(&b.address().await.unwrap())
        .await
        .unwrap();
    assert_eq!(token.subject(), insider);
    shutdown(&[b, outsider, member]).await;
}
