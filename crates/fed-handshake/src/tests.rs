//! Active attacks that need the message structures: a man in the middle with its own
//! KEM key, downgrade by editing message 1, and responder impersonation.

use std::sync::Arc;

use fed_crypto::{Identity, XWingCiphertext, XWingPublicKey, XWingSecretKey};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};

use super::{
    caps::{Capability, Suite},
    error::Error,
    handshake::{HandshakeKeys, Transcript, open, seal},
    labels,
    wire::{self, Accept, AcceptInner, AcceptParams, Hello, Kind},
    *,
};

const NOW: u64 = 1_700_000_000_000;
const BINDING: &[u8] = b"peer ids";

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn pair(suites: &[Suite], pq: bool) -> (Initiator, Responder, Arc<Identity>) {
    pair_seeded(suites, pq, 1, 1)
}

/// [`pair`] with the identities drawn from `ids` and the ephemeral keys from `run`.
fn pair_seeded(
    suites: &[Suite],
    pq: bool,
    ids: u64,
    run: u64,
) -> (Initiator, Responder, Arc<Identity>) {
    let mut g = rng(ids);
    let a = Arc::new(Identity::generate(&mut g, pq));
    let b = Arc::new(Identity::generate(&mut g, pq));
    if run != ids {
        g = rng(run);
    }
    let fed = FederationId([3; 32]);
    let mut ic = InitiatorConfig::new(a, fed, ResponderTrust::Only(vec![b.node_id()]));
    ic.suites = suites.to_vec();
    ic.capabilities.set = CapabilitySet::all();
    let mut rc = ResponderConfig::new(b.clone(), fed, Arc::new(Open));
    rc.suites = suites.to_vec();
    rc.capabilities.set = CapabilitySet::all();
    let i = Initiator::new(Arc::new(ic), BINDING, NOW, &mut g).unwrap();
    let r = Responder::new(Arc::new(rc), BINDING, NOW, &mut g).unwrap();
    (i, r, b)
}

fn decode_hello(m1: &[u8]) -> Hello {
    let (kind, _, body) = wire::open_envelope(m1).unwrap();
    assert_eq!(kind, Kind::Hello);
    wire::decode(body, "hello").unwrap()
}

fn encode_hello(h: &Hello) -> Vec<u8> {
    wire::seal_envelope(Kind::Hello, &wire::encode(h).unwrap()).unwrap()
}

/// The attacker's view of the responder's message 2, opened with the KEM key the
/// attacker substituted into message 1.
fn mallory_opens(m1_sent: &[u8], m2: &[u8], mallory: &XWingSecretKey) -> (AcceptInner, Vec<u8>) {
    let (_, _, body) = wire::open_envelope(m2).unwrap();
    let accept: Accept = wire::decode(body, "accept").unwrap();
    let ct = XWingCiphertext::from_bytes(&accept.ciphertext).unwrap();
    let ss = mallory.decapsulate(&ct);
    let mut t = Transcript::new(BINDING);
    t.absorb(m1_sent);
    t.absorb(ct.as_bytes());
    let th = t.hash();
    let keys = HandshakeKeys::new(ss.as_bytes(), &th);
    let inner = open(&keys.aead(labels::HANDSHAKE_KEY_R2I), &th, &accept.sealed).unwrap();
    (wire::decode(&inner, "inner").unwrap(), accept.ciphertext)
}

/// Builds a message 2 for the initiator's real ephemeral key carrying `inner`,
/// with a Finished MAC recomputed under the attacker's keys (the attacker knows them).
fn mallory_forges_m2(m1_original: &[u8], mut inner: AcceptInner, g: &mut ChaCha20Rng) -> Vec<u8> {
    let epk = XWingPublicKey::from_bytes(&decode_hello(m1_original).ephemeral_key).unwrap();
    let (ct, ss) = epk.encapsulate(g);
    let mut t = Transcript::new(BINDING);
    t.absorb(m1_original);
    t.absorb(ct.as_bytes());
    let th_kem = t.hash();
    let keys = HandshakeKeys::new(ss.as_bytes(), &th_kem);
    t.absorb(&wire::encode(&inner.params).unwrap());
    t.absorb(&inner.identity);
    t.absorb(&inner.signature);
    inner.finished = keys.finished(labels::FINISHED_R, &t.hash());
    let sealed = seal(
        &keys.aead(labels::HANDSHAKE_KEY_R2I),
        &th_kem,
        &wire::encode(&inner).unwrap(),
    )
    .unwrap();
    let accept = Accept {
        ciphertext: ct.as_bytes().to_vec(),
        sealed,
    };
    wire::seal_envelope(Kind::Accept, &wire::encode(&accept).unwrap()).unwrap()
}

#[test]
fn man_in_the_middle_swapping_the_ephemeral_key_is_caught_by_the_signature() {
    let (mut i, mut r, _) = pair(&[Suite::Default], false);
    let mut g = rng(99);
    let m1 = i.poll_transmit().unwrap();
    let mallory = XWingSecretKey::generate(&mut g);
    let mut hello = decode_hello(&m1);
    hello.ephemeral_key = mallory.public_key().as_bytes().to_vec();
    let m1_swapped = encode_hello(&hello);
    r.handle_input(&m1_swapped, NOW).unwrap();
    let m2 = r.poll_transmit().unwrap();

    // Forwarded unchanged, message 2 does not even decrypt for the initiator.
    {
        let (mut i2, _, _) = pair(&[Suite::Default], false);
        let _ = i2.poll_transmit();
        assert!(i2.handle_input(&m2, NOW).is_err());
    }
    // Re-encrypted for the initiator's real key, the responder's signature covers
    // the swapped message 1, which the initiator never sent.
    let (inner, _) = mallory_opens(&m1_swapped, &m2, &mallory);
    let forged = mallory_forges_m2(&m1, inner, &mut g);
    assert!(matches!(
        i.handle_input(&forged, NOW),
        Err(Error::BadSignature)
    ));
}

#[test]
fn a_relay_presenting_its_own_identity_is_refused_when_the_peer_is_pinned() {
    // Mallory runs the protocol honestly as itself: without pinning, the initiator
    // would talk to Mallory (knowingly: the session names Mallory as the peer).
    let (_, _, bob) = pair(&[Suite::Default], false);
    let mut g = rng(5);
    let alice = Arc::new(Identity::generate(&mut g, false));
    let mallory = Arc::new(Identity::generate(&mut g, false));
    let fed = FederationId([3; 32]);
    let mut start = |trust: ResponderTrust| {
        let ic = InitiatorConfig::new(alice.clone(), fed, trust);
        let i = Initiator::new(Arc::new(ic), BINDING, NOW, &mut g).unwrap();
        let rc = ResponderConfig::new(mallory.clone(), fed, Arc::new(Open));
        let m = Responder::new(Arc::new(rc), BINDING, NOW, &mut g).unwrap();
        (i, m)
    };
    let (mut i, mut m) = start(ResponderTrust::Only(vec![bob.node_id()]));
    m.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
    let m2 = m.poll_transmit().unwrap();
    assert!(matches!(
        i.handle_input(&m2, NOW),
        Err(Error::UnexpectedPeer)
    ));
    // Refused before message 3: Alice's identity never left.
    assert!(i.poll_transmit().is_none());
    // Trusting any responder, Alice completes a handshake with Mallory, and the
    // session says so: the caller has to look at the peer.
    let (mut i, mut m) = start(ResponderTrust::Any);
    m.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
    i.handle_input(&m.poll_transmit().unwrap(), NOW).unwrap();
    m.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
    i.handle_input(&m.poll_transmit().unwrap(), NOW).unwrap();
    let Some(Event::Established(s)) = i.poll_event() else {
        panic!("no session")
    };
    assert_eq!(s.peer.node_id(), mallory.node_id());
}

/// Edits message 1 in flight and returns what reaches the initiator: the responder's
/// message 2 as is (`active = false`), or re-encrypted by an attacker who also swapped
/// in its own KEM key so that it can (`active = true`).
fn edit_m1(
    i: &mut Initiator,
    r: &mut Responder,
    active: bool,
    edit: impl FnOnce(&mut Hello),
) -> Vec<u8> {
    let mut g = rng(77);
    let m1 = i.poll_transmit().unwrap();
    let mallory = XWingSecretKey::generate(&mut g);
    let mut hello = decode_hello(&m1);
    edit(&mut hello);
    if active {
        hello.ephemeral_key = mallory.public_key().as_bytes().to_vec();
    }
    let m1_edited = encode_hello(&hello);
    r.handle_input(&m1_edited, NOW).unwrap();
    let m2 = r.poll_transmit().unwrap();
    if !active {
        return m2;
    }
    let (inner, _) = mallory_opens(&m1_edited, &m2, &mallory);
    mallory_forges_m2(&m1, inner, &mut g)
}

#[test]
fn stripping_a_suite_from_message_1_is_detected() {
    let strip = |h: &mut Hello| {
        assert_eq!(h.suites, [2, 1]);
        h.suites = vec![1];
    };
    // A passive edit: the transcript (the AEAD's associated data) no longer matches.
    let (mut i, mut r, _) = pair(&[Suite::PqAuth, Suite::Default], true);
    let m2 = edit_m1(&mut i, &mut r, false, strip);
    assert!(matches!(i.handle_input(&m2, NOW), Err(Error::Decrypt)));
    // An attacker who re-encrypts: the responder signed the edited offer.
    let (mut i, mut r, _) = pair(&[Suite::PqAuth, Suite::Default], true);
    let m2 = edit_m1(&mut i, &mut r, true, strip);
    assert!(matches!(i.handle_input(&m2, NOW), Err(Error::BadSignature)));
}

#[test]
fn stripping_a_capability_from_message_1_is_detected() {
    let strip = |h: &mut Hello| {
        assert!(h.capabilities.allows(Capability::Admin));
        h.capabilities.set = CapabilitySet::EMPTY.with(Capability::Query);
    };
    let (mut i, mut r, _) = pair(&[Suite::Default], false);
    let m2 = edit_m1(&mut i, &mut r, false, strip);
    assert!(matches!(i.handle_input(&m2, NOW), Err(Error::Decrypt)));
    let (mut i, mut r, _) = pair(&[Suite::Default], false);
    let m2 = edit_m1(&mut i, &mut r, true, strip);
    assert!(matches!(i.handle_input(&m2, NOW), Err(Error::BadSignature)));
}

#[test]
fn a_responder_choosing_what_was_not_offered_is_refused() {
    // The initiator offers only `default`; an attacker rewrites the offer to
    // `pq-auth` and re-encrypts the answer: the choice itself is refused.
    let (mut i, r, _) = pair(&[Suite::Default], true);
    let mut r_cfg = (*r.config).clone();
    r_cfg.suites = vec![Suite::PqAuth];
    let mut r = Responder::new(Arc::new(r_cfg), BINDING, NOW, &mut rng(8)).unwrap();
    let m2 = edit_m1(&mut i, &mut r, true, |h| h.suites = vec![2]);
    assert!(matches!(i.handle_input(&m2, NOW), Err(Error::NotOffered)));
}

/// Message 2 as the responder `identity` builds it for `m1` in the default suite,
/// except that its transcript signature goes through `edit` before it is absorbed
/// and sealed (so the Finished MAC covers the edited bytes).
fn responder_m2_with_signature(
    m1: &[u8],
    identity: &Identity,
    g: &mut ChaCha20Rng,
    edit: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> Vec<u8> {
    let hello = decode_hello(m1);
    let epk = XWingPublicKey::from_bytes(&hello.ephemeral_key).unwrap();
    let (ct, ss) = epk.encapsulate(g);
    let mut t = Transcript::new(BINDING);
    t.absorb(m1);
    t.absorb(ct.as_bytes());
    let th_kem = t.hash();
    let keys = HandshakeKeys::new(ss.as_bytes(), &th_kem);
    let params = AcceptParams {
        minor: 0,
        suite: wire::suite_code(Suite::Default),
        capabilities: hello.capabilities,
        nonce: [9; 32],
    };
    t.absorb(&wire::encode(&params).unwrap());
    let id = identity.public().as_bytes().to_vec();
    t.absorb(&id);
    let signature = identity
        .sign_ed25519(labels::SIGNATURE_R, &t.hash())
        .unwrap()
        .to_bytes();
    let signature = edit(signature);
    t.absorb(&signature);
    let finished = keys.finished(labels::FINISHED_R, &t.hash());
    let inner = AcceptInner {
        params,
        identity: id,
        signature,
        finished,
    };
    let sealed = seal(
        &keys.aead(labels::HANDSHAKE_KEY_R2I),
        &th_kem,
        &wire::encode(&inner).unwrap(),
    )
    .unwrap();
    let accept = Accept {
        ciphertext: ct.as_bytes().to_vec(),
        sealed,
    };
    wire::seal_envelope(Kind::Accept, &wire::encode(&accept).unwrap()).unwrap()
}

#[test]
fn a_classical_transcript_signature_with_a_filler_post_quantum_part_is_refused() {
    // The genuine signature, rebuilt by hand, is accepted: the helper is faithful.
    let (mut i, _, bob) = pair(&[Suite::Default], true);
    let m1 = i.poll_transmit().unwrap();
    let m2 = responder_m2_with_signature(&m1, &bob, &mut rng(3), |sig| sig);
    i.handle_input(&m2, NOW).unwrap();
    assert!(i.poll_transmit().is_some());
    // The same signature with an ML-DSA part of filler bytes (flag 1): the default
    // suite verifies only the Ed25519 part, so the filler would ride along in the
    // transcript unchecked. Refused.
    let (mut i, _, bob) = pair(&[Suite::Default], true);
    let m1 = i.poll_transmit().unwrap();
    let m2 = responder_m2_with_signature(&m1, &bob, &mut rng(3), |mut sig| {
        sig[0] = 1;
        sig.extend(std::iter::repeat_n(0u8, 3309));
        sig
    });
    assert!(matches!(i.handle_input(&m2, NOW), Err(Error::BadSignature)));
    assert!(i.poll_transmit().is_none());
}

/// Runs a handshake of `pair` to the end and returns both sessions.
fn both_sessions(suites: &[Suite], run: u64) -> (Box<Session>, Box<Session>) {
    let (mut i, mut r, _) = pair_seeded(suites, false, 1, run);
    r.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
    i.handle_input(&r.poll_transmit().unwrap(), NOW).unwrap();
    r.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
    i.handle_input(&r.poll_transmit().unwrap(), NOW).unwrap();
    let (Some(Event::Established(si)), Some(Event::Established(sr))) =
        (i.poll_event(), r.poll_event())
    else {
        panic!("no sessions")
    };
    (si, sr)
}

#[test]
fn both_ends_export_the_same_secret_and_nobody_else_does() {
    const LABEL: &str = "exo-federation v1 handshake test exporter";
    let (si, sr) = both_sessions(&[Suite::Default], 1);
    let a = si.export(LABEL, b"context");
    assert_eq!(a.as_bytes(), sr.export(LABEL, b"context").as_bytes());
    // Label and context separate the keys.
    assert_ne!(a.as_bytes(), si.export(LABEL, b"other").as_bytes());
    assert_ne!(
        a.as_bytes(),
        si.export("exo-federation v1 handshake test other", b"context")
            .as_bytes()
    );
    // Public values do not give it away: not the binding, not a hash of it.
    assert_ne!(a.as_bytes(), &si.binding);
    assert_ne!(
        a.as_bytes(),
        fed_crypto::derive_key(LABEL, &[&si.binding, b"context"]).as_bytes()
    );
    // Another session between the same identities has another secret.
    let (si2, _) = both_sessions(&[Suite::Default], 2);
    assert_ne!(a.as_bytes(), si2.export(LABEL, b"context").as_bytes());
}
