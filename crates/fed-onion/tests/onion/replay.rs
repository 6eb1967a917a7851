//! Proof: a replayed packet is dropped; a packet for an expired epoch or for the
//! wrong relay key is dropped. Also key rotation, bounds of the replay cache, and
//! nodes that do not relay.

use fed_crypto::Identity;
use fed_onion::{BuildOptions, DropReason, Error, OnionKey, Processed, Relay, RelayConfig};

use crate::{End, HOUR, NOW, Net, epoch, rng};

fn is_drop(p: &Processed, reason: DropReason) -> bool {
    matches!(p, Processed::Drop(r) if *r == reason)
}

#[test]
fn replayed_packets_are_dropped_at_every_hop() {
    let mut net = Net::new(4, 30);
    let built = net.build(&[0, 1, 2, 3], b"once", BuildOptions::default());
    let journey = net.drive(built, None, |_, _| {});
    assert_eq!(journey.payload(), b"once");
    // Replay what each hop received, from the same previous hop.
    let mut from = net.sender;
    for hop in &journey.hops {
        let p = net.step(hop.node, from, &hop.input);
        assert!(is_drop(&p, DropReason::Replay), "{p:?}");
        from = hop.node;
    }
    // A replay from another neighbour is a replay all the same.
    let p = net.step(journey.hops[1].node, net.ids[3], &journey.hops[1].input);
    assert!(is_drop(&p, DropReason::Replay));
}

#[test]
fn expired_and_not_yet_valid_epochs_are_dropped() {
    let config = RelayConfig::default().with_clock_skew_ms(1_000);
    let mut net = Net::with(2, 31, config, |_| true);
    let relay = net.ids[0];
    let sender = net.sender;
    let expiry = epoch(1).not_after_ms;
    let start = epoch(1).not_before_ms;
    let mut packet = || net_build(&mut net);
    let a = packet();
    let b = packet();
    let c = packet();
    // Within the skew allowance after expiry: still accepted.
    let p = net.relay(relay).process_bytes(&a, sender, expiry + 999);
    assert!(matches!(p, Processed::Forward { .. }), "{p:?}");
    let p = net.relay(relay).process_bytes(&b, sender, expiry + 1_000);
    assert!(is_drop(&p, DropReason::KeyExpired), "{p:?}");
    let p = net.relay(relay).process_bytes(&c, sender, start - 1_001);
    assert!(is_drop(&p, DropReason::KeyNotYetValid), "{p:?}");
    // The timeout erases the expired key and its replay cache.
    assert_eq!(net.relay(relay).poll_timeout(), Some(expiry + 1_000));
    net.relay(relay).handle_timeout(expiry + 1_000);
    assert!(net.relay(relay).epochs().is_empty());
    let p = net.relay(relay).process_bytes(&c, sender, expiry + 1_000);
    assert!(is_drop(&p, DropReason::UnknownEpoch));
}

fn net_build(net: &mut Net) -> Vec<u8> {
    net.build(&[0, 1], b"x", BuildOptions::default())
        .packet
        .into_bytes()
}

#[test]
fn a_packet_for_another_relays_key_is_dropped() {
    let mut net = Net::new(3, 32);
    // Built for relay 0 (same epoch number as relay 1's key), sent to relay 1.
    let bytes = net_build(&mut net);
    let p = net.step(net.ids[1], net.sender, &bytes);
    assert!(is_drop(&p, DropReason::BadMac), "{p:?}");
    // And a sender cannot build with a key for an epoch the relay does not hold.
    let other = Identity::generate(&mut net.rng, false);
    let key = OnionKey::generate(&other, epoch(9), true, &mut net.rng).unwrap();
    let mut route = net.route(&[1]);
    route.insert(0, key.certificate().clone());
    let built =
        fed_onion::build_packet(&route, b"x", &BuildOptions::default(), NOW, &mut net.rng).unwrap();
    let p = net.step(net.ids[0], net.sender, built.packet.as_bytes());
    assert!(is_drop(&p, DropReason::UnknownEpoch), "{p:?}");
}

#[test]
fn rotation_keeps_the_previous_epoch_and_forgets_older_ones() {
    let mut net = Net::new(2, 33);
    let relay_id = net.ids[0];
    let old = net_build(&mut net);
    let old2 = net_build(&mut net);
    let mut key_rng = rng(333);
    let identity = &net.nodes[&relay_id].identity;
    let k2 = OnionKey::generate(identity, epoch(2), true, &mut key_rng).unwrap();
    let k3 = OnionKey::generate(identity, epoch(3), true, &mut key_rng).unwrap();
    let stale = OnionKey::generate(identity, epoch(3), true, &mut key_rng).unwrap();
    // Epoch 2: epoch-1 packets still work.
    let cert2 = k2.certificate().clone();
    net.relay(relay_id).install_key(k2).unwrap();
    assert_eq!(net.relay(relay_id).epochs(), vec![2, 1]);
    let p = net.step(relay_id, net.sender, &old);
    assert!(matches!(p, Processed::Forward { .. }), "{p:?}");
    assert_eq!(net.relay(relay_id).replay_tags(1), 1);
    // Packets for the new epoch work.
    let route = vec![cert2, net.cert(1)];
    let built =
        fed_onion::build_packet(&route, b"y", &BuildOptions::default(), NOW, &mut net.rng).unwrap();
    let p = net.step(relay_id, net.sender, built.packet.as_bytes());
    assert!(matches!(p, Processed::Forward { .. }), "{p:?}");
    // Epoch 3: epoch 1 is erased, with its replay cache.
    net.relay(relay_id).install_key(k3).unwrap();
    assert_eq!(net.relay(relay_id).epochs(), vec![3, 2]);
    assert_eq!(net.relay(relay_id).replay_tags(1), 0);
    let p = net.step(relay_id, net.sender, &old2);
    assert!(is_drop(&p, DropReason::UnknownEpoch));
    // Stale epochs and other nodes' keys are refused.
    assert!(matches!(
        net.relay(relay_id).install_key(stale),
        Err(Error::StaleEpoch { epoch: 3, floor: 3 })
    ));
    let stranger = Identity::generate(&mut net.rng, false);
    let foreign = OnionKey::generate(&stranger, epoch(4), true, &mut net.rng).unwrap();
    assert!(matches!(
        net.relay(relay_id).install_key(foreign),
        Err(Error::WrongRelay { .. })
    ));
}

/// The onion key of node 0 of `net` for epoch `n`, valid for `hours` from an hour
/// before [`NOW`]. The same arguments always give the same secret key, as a host
/// reloading a stored key would.
fn stored_key(net: &Net, n: u64, hours: u64) -> OnionKey {
    let window = fed_onion::KeyEpoch {
        epoch: n,
        not_before_ms: NOW - HOUR,
        not_after_ms: NOW + hours * HOUR,
    };
    let identity = &net.nodes[&net.ids[0]].identity;
    OnionKey::from_seed(identity, &[n as u8; 32], window, true).unwrap()
}

/// A packet through node 0 (under `key`'s epoch) to node 1, built at [`NOW`].
fn packet_for(net: &mut Net, key: &OnionKey) -> Vec<u8> {
    let route = vec![key.certificate().clone(), net.cert(1)];
    fed_onion::build_packet(&route, b"x", &BuildOptions::default(), NOW, &mut net.rng)
        .unwrap()
        .packet
        .into_bytes()
}

#[test]
fn an_expired_epoch_is_never_installed_again() {
    let config = RelayConfig::default().with_clock_skew_ms(0);
    let mut net = Net::with(2, 47, config, |_| true);
    let (relay, sender) = (net.ids[0], net.sender);
    let key = stored_key(&net, 2, 1);
    let packet = packet_for(&mut net, &key);
    net.relay(relay).install_key(key).unwrap();
    assert_eq!(net.relay(relay).epoch_floor(), Some(2));
    let p = net.relay(relay).process_bytes(&packet, sender, NOW);
    assert!(matches!(p, Processed::Forward { .. }), "{p:?}");
    // Both keys expire and are erased with their replay caches...
    net.relay(relay).handle_timeout(NOW + HOUR);
    assert!(net.relay(relay).epochs().is_empty());
    assert_eq!(net.relay(relay).current_epoch(), None);
    // ...but not the floor: the same key, or any key of an epoch up to 2, is refused,
    // so its packets cannot come back with an empty cache.
    for n in [2, 1] {
        let key = stored_key(&net, n, 2);
        assert!(matches!(
            net.relay(relay).install_key(key),
            Err(Error::StaleEpoch { epoch, floor: 2 }) if epoch == n
        ));
    }
    assert!(net.relay(relay).epochs().is_empty());
    let newer = stored_key(&net, 3, 2);
    net.relay(relay).install_key(newer).unwrap();
    assert_eq!(net.relay(relay).epoch_floor(), Some(3));
}

/// Issue 14, item 17: the floor is an argument of `Relay::new`, so a restarted
/// relay gets the one its host persisted. A packet processed before the restart is
/// not processed again after it, whatever key the host then tries to install.
#[test]
fn a_packet_is_processed_once_across_a_restart() {
    let mut net = Net::new(2, 48);
    let (relay, sender) = (net.ids[0], net.sender);
    let key = stored_key(&net, 2, 1);
    let packet = packet_for(&mut net, &key);
    net.relay(relay).install_key(key).unwrap();
    let p = net.relay(relay).process_bytes(&packet, sender, NOW);
    assert!(matches!(p, Processed::Forward { .. }), "{p:?}");
    // The host persists the floor after installing the key.
    let persisted = net.relay(relay).epoch_floor();
    assert_eq!(persisted, Some(2));

    // After a restart the host reloads its stored keys into a relay made with the
    // persisted floor: the key of epoch 2 (whose replay cache died with the
    // process) and every older one are refused, a newer one is installed, and the
    // replayed packet is not forwarded a second time.
    let mut restarted = Relay::new(relay, RelayConfig::default(), persisted).unwrap();
    let mut forwarded_again = 0;
    let mut installs = Vec::new();
    for n in [2, 1, 3] {
        installs.push(restarted.install_key(stored_key(&net, n, 1)));
        let p = restarted.process_bytes(&packet, sender, NOW);
        if matches!(p, Processed::Forward { .. }) {
            forwarded_again += 1;
        }
    }
    assert_eq!(forwarded_again, 0, "a replayed packet crossed the restart");
    assert!(matches!(
        installs[..],
        [
            Err(Error::StaleEpoch { epoch: 2, floor: 2 }),
            Err(Error::StaleEpoch { epoch: 1, floor: 2 }),
            Ok(())
        ]
    ));
    assert_eq!(restarted.epochs(), vec![3]);
    assert_eq!(restarted.epoch_floor(), Some(3));

    // A relay made as for a node that never had a key (`None`) has no protection:
    // what the floor argument is for.
    let mut fresh = Relay::new(relay, RelayConfig::default(), None).unwrap();
    fresh.install_key(stored_key(&net, 2, 1)).unwrap();
    let p = fresh.process_bytes(&packet, sender, NOW);
    assert!(matches!(p, Processed::Forward { .. }), "{p:?}");
}

#[test]
fn installing_after_the_current_key_expired_keeps_a_valid_previous_key() {
    let config = RelayConfig::default().with_clock_skew_ms(0);
    let mut net = Net::with(2, 49, config, |_| true);
    let (relay, sender) = (net.ids[0], net.sender);
    // Epoch 2 is valid for ten hours, epoch 3 (installed after it) for one.
    let long = stored_key(&net, 2, 10);
    let short = stored_key(&net, 3, 1);
    let used = packet_for(&mut net, &long);
    let unused = packet_for(&mut net, &long);
    net.relay(relay).install_key(long).unwrap();
    net.relay(relay).install_key(short).unwrap();
    let p = net.relay(relay).process_bytes(&used, sender, NOW);
    assert!(matches!(p, Processed::Forward { .. }), "{p:?}");
    // Epoch 3 expires first: the relay holds no current key, only epoch 2.
    let later = NOW + HOUR;
    net.relay(relay).handle_timeout(later);
    assert_eq!(net.relay(relay).current_epoch(), None);
    assert_eq!(net.relay(relay).epochs(), vec![2]);
    // Installing epoch 4 keeps epoch 2 and its replay cache.
    let newer = stored_key(&net, 4, 10);
    net.relay(relay).install_key(newer).unwrap();
    assert_eq!(net.relay(relay).epochs(), vec![4, 2]);
    assert_eq!(net.relay(relay).replay_tags(2), 1);
    let p = net.relay(relay).process_bytes(&used, sender, later);
    assert!(is_drop(&p, DropReason::Replay), "{p:?}");
    let p = net.relay(relay).process_bytes(&unused, sender, later);
    assert!(matches!(p, Processed::Forward { .. }), "{p:?}");
    // And epoch 2 cannot be installed afresh over it.
    let again = stored_key(&net, 2, 10);
    assert!(matches!(
        net.relay(relay).install_key(again),
        Err(Error::StaleEpoch { epoch: 2, floor: 4 })
    ));
    assert_eq!(net.relay(relay).replay_tags(2), 2);
}

#[test]
fn a_full_replay_cache_refuses_rather_than_forgets() {
    let config = RelayConfig::default().with_replay_capacity(3);
    let mut net = Net::with(2, 34, config, |_| true);
    let relay = net.ids[0];
    let packets: Vec<Vec<u8>> = (0..6).map(|_| net_build(&mut net)).collect();
    for p in &packets[..3] {
        assert!(matches!(
            net.step(relay, net.sender, p),
            Processed::Forward { .. }
        ));
    }
    for p in &packets[3..] {
        let out = net.step(relay, net.sender, p);
        assert!(is_drop(&out, DropReason::ReplayCacheFull), "{out:?}");
    }
    // Replays of accepted packets are still recognised, and the cache stays bounded.
    assert!(is_drop(
        &net.step(relay, net.sender, &packets[0]),
        DropReason::Replay
    ));
    assert_eq!(net.relay(relay).replay_tags(1), 3);
    // A rotation opens a fresh cache for the new epoch.
    let key =
        OnionKey::generate(&net.nodes[&relay].identity, epoch(2), true, &mut rng(334)).unwrap();
    let cert = key.certificate().clone();
    net.relay(relay).install_key(key).unwrap();
    let route = vec![cert, net.cert(1)];
    let built =
        fed_onion::build_packet(&route, b"z", &BuildOptions::default(), NOW, &mut net.rng).unwrap();
    assert!(matches!(
        net.step(relay, net.sender, built.packet.as_bytes()),
        Processed::Forward { .. }
    ));
}

#[test]
fn nodes_that_do_not_relay_still_receive() {
    // Node 1 does not offer relaying.
    let mut net = Net::with(3, 35, RelayConfig::default(), |i| i != 1);
    let built = net.build(&[0, 1, 2], b"x", BuildOptions::default());
    let journey = net.drive(built, None, |_, _| {});
    assert!(matches!(
        journey.end,
        End::Dropped(1, DropReason::NotARelay)
    ));
    let built = net.build(&[0, 1], b"to a non-relay", BuildOptions::default());
    let journey = net.drive(built, None, |_, _| {});
    assert_eq!(journey.payload(), b"to a non-relay");
}

#[test]
fn a_relay_without_keys_drops_everything() {
    let mut net = Net::new(2, 36);
    let bytes = net_build(&mut net);
    let id = Identity::generate(&mut net.rng, false);
    let mut empty = Relay::new(id.node_id(), RelayConfig::default(), None).unwrap();
    assert!(is_drop(
        &empty.process_bytes(&bytes, net.sender, NOW),
        DropReason::UnknownEpoch
    ));
    assert_eq!(empty.poll_timeout(), None);
}

#[test]
fn building_refuses_expired_certificates() {
    let mut net = Net::new(2, 37);
    let route = net.route(&[0, 1]);
    let later = epoch(1).not_after_ms;
    assert!(matches!(
        fed_onion::build_packet(&route, b"x", &BuildOptions::default(), later, &mut net.rng),
        Err(Error::CertificateNotValid { .. })
    ));
    let dup = net.route(&[0, 0]);
    assert!(matches!(
        fed_onion::build_packet(&dup, b"x", &BuildOptions::default(), NOW, &mut net.rng),
        Err(Error::DuplicateHop(_))
    ));
    assert!(matches!(
        fed_onion::build_packet(&[], b"x", &BuildOptions::default(), NOW, &mut net.rng),
        Err(Error::InvalidRouteLength { len: 0, .. })
    ));
    let mut long = Net::new(7, 38);
    let route = long.route(&[0, 1, 2, 3, 4, 5, 6]);
    assert!(matches!(
        fed_onion::build_packet(&route, b"x", &BuildOptions::default(), NOW, &mut long.rng),
        Err(Error::InvalidRouteLength { len: 7, max: 6 })
    ));
}
