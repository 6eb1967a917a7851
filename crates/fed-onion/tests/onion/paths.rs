//! Path selection: distinct relays, never the source or the destination, 1 to
//! `MAX_RELAYS` relays, only nodes that offer relaying with a valid key.

use std::collections::{BTreeMap, BTreeSet};

use fed_onion::{DEFAULT_RELAYS, Error, MAX_RELAYS, OnionKey, RelayConfig, select_path};

use crate::{HOUR, NOW, Net, epoch, rng};

#[test]
fn paths_are_distinct_relays_then_the_destination() {
    // Node 0 is the source (it is in the directory too), node 9 the destination,
    // node 5 does not relay.
    let net = Net::with(10, 50, RelayConfig::default(), |i| i != 5);
    let directory: Vec<_> = (0..10).map(|i| net.cert(i)).collect();
    let source = net.ids[0];
    let destination = net.cert(9);
    let mut rng = rng(51);
    let mut seen = BTreeMap::new();
    for relays in 1..=MAX_RELAYS {
        for _ in 0..30 {
            let path =
                select_path(&directory, source, &destination, relays, NOW, &mut rng).unwrap();
            assert_eq!(path.len(), relays + 1);
            assert_eq!(path.last().unwrap(), &destination);
            let nodes: BTreeSet<_> = path.iter().map(|c| c.node_id()).collect();
            assert_eq!(nodes.len(), path.len(), "relays are distinct");
            for cert in &path[..relays] {
                assert!(cert.is_relay());
                assert_ne!(cert.node_id(), source);
                assert_ne!(cert.node_id(), destination.node_id());
                *seen.entry(cert.node_id()).or_insert(0) += 1;
            }
        }
    }
    // Every eligible relay (1-4, 6-8) gets chosen, and no other node.
    let eligible: BTreeSet<_> = [1, 2, 3, 4, 6, 7, 8].iter().map(|&i| net.ids[i]).collect();
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), eligible);
    assert_eq!(DEFAULT_RELAYS, 3);
}

#[test]
fn bad_lengths_and_small_directories_are_errors() {
    let net = Net::new(5, 52);
    let directory: Vec<_> = (0..5).map(|i| net.cert(i)).collect();
    let mut rng = rng(53);
    let dest = net.cert(4);
    for bad in [0, MAX_RELAYS + 1] {
        assert!(matches!(
            select_path(&directory, net.sender, &dest, bad, NOW, &mut rng),
            Err(Error::InvalidRouteLength { .. })
        ));
    }
    // Four eligible relays (the destination is excluded).
    assert!(select_path(&directory, net.sender, &dest, 4, NOW, &mut rng).is_ok());
    assert!(matches!(
        select_path(&directory, net.sender, &dest, 5, NOW, &mut rng),
        Err(Error::NotEnoughRelays {
            wanted: 5,
            available: 4
        })
    ));
    // The source is excluded too.
    assert!(matches!(
        select_path(&directory, net.ids[0], &dest, 4, NOW, &mut rng),
        Err(Error::NotEnoughRelays {
            wanted: 4,
            available: 3
        })
    ));
    // Expired keys are not eligible, nor is an expired destination.
    let later = NOW + HOUR;
    assert!(matches!(
        select_path(&directory, net.sender, &dest, 1, later, &mut rng),
        Err(Error::CertificateNotValid { .. })
    ));
}

#[test]
fn the_newest_valid_certificate_of_a_node_is_used() {
    let net = Net::new(3, 54);
    let node = &net.nodes[&net.ids[0]];
    let newer = OnionKey::generate(&node.identity, epoch(5), true, &mut rng(55)).unwrap();
    let mut expired_epoch = epoch(9);
    expired_epoch.not_after_ms = NOW - 1;
    let expired = OnionKey::generate(&node.identity, expired_epoch, true, &mut rng(56)).unwrap();
    let directory = vec![
        net.cert(0),
        newer.certificate().clone(),
        expired.certificate().clone(),
        net.cert(1),
    ];
    let mut rng = rng(57);
    for _ in 0..20 {
        let path = select_path(&directory, net.sender, &net.cert(2), 2, NOW, &mut rng).unwrap();
        let first_node = path.iter().find(|c| c.node_id() == net.ids[0]).unwrap();
        assert_eq!(first_node.epoch().epoch, 5);
    }
}

#[test]
fn selection_is_deterministic_in_the_rng() {
    let net = Net::new(8, 58);
    let directory: Vec<_> = (0..8).map(|i| net.cert(i)).collect();
    let a = select_path(&directory, net.sender, &net.cert(7), 3, NOW, &mut rng(1)).unwrap();
    let b = select_path(&directory, net.sender, &net.cert(7), 3, NOW, &mut rng(1)).unwrap();
    assert_eq!(a, b);
}
