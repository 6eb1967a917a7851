//! Federation tokens: verification and every way it must fail.

use fed_crypto::Identity;
use fed_handshake::{
    Capability, Error, FederationId, FederationToken, Suite, TokenBody, TokenCheck,
};

use crate::*;

fn issued(suite: Suite) -> (Setup, FederationToken, [u8; 32]) {
    let s = setup(suite, 11);
    let (i, r) = s.start(12);
    let mut rec = record(i, r);
    let session = established_i(&mut rec.i);
    (s, session.token.clone(), session.binding)
}

#[test]
fn a_fresh_token_verifies_and_authorizes() {
    for suite in [Suite::Default, Suite::PqAuth] {
        let (s, token, binding) = issued(suite);
        token.verify(&s.check(NOW)).unwrap();
        token
            .verify_for_session(&s.check(NOW + 1000), &binding)
            .unwrap();
        token.authorize(Capability::Query, &s.check(NOW)).unwrap();
        assert_eq!(token.subject(), s.alice.node_id());
        let back = FederationToken::from_bytes(&token.to_bytes().unwrap()).unwrap();
        assert_eq!(back, token);
    }
}

#[test]
fn expired_and_not_yet_valid_tokens_fail() {
    let (s, token, _) = issued(Suite::Default);
    let b = token.body().clone();
    assert!(matches!(
        token.verify(&s.check(b.expires_at)),
        Err(Error::TokenExpired { .. })
    ));
    assert!(matches!(
        token.verify(&s.check(b.not_before - 1)),
        Err(Error::TokenNotYetValid { .. })
    ));
}

#[test]
fn forged_tampered_and_misattributed_tokens_fail() {
    let (s, token, _) = issued(Suite::Default);
    let mallory = Identity::generate(&mut rng(66), false);
    // Signed by someone else but claiming Bob as issuer.
    let forged = FederationToken::issue(&mallory, token.body().clone()).unwrap();
    assert!(matches!(
        forged.verify(&s.check(NOW)),
        Err(Error::TokenSignature)
    ));
    // Checked against the wrong issuer.
    assert!(matches!(
        token.verify(&TokenCheck::new(
            mallory.public(),
            FED,
            s.alice.node_id(),
            NOW
        )),
        Err(Error::TokenIssuer)
    ));
    // Tampered: every byte of the encoding flipped in turn either fails to decode or
    // fails verification; none verifies.
    let bytes = token.to_bytes().unwrap();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        if let Ok(t) = FederationToken::from_bytes(&bad) {
            assert!(
                t.verify(&s.check(NOW)).is_err(),
                "byte {i} flipped still verifies"
            );
        }
    }
}

#[test]
fn widened_capabilities_do_not_verify() {
    let (s, token, _) = issued(Suite::Default);
    let mut body: TokenBody = token.body().clone();
    body.capabilities.set = body.capabilities.set.with(Capability::Admin);
    // Re-sign with Mallory's key: signature fails against Bob.
    let mallory = Identity::generate(&mut rng(67), false);
    let widened = FederationToken::issue(&mallory, body).unwrap();
    assert!(widened.verify(&s.check(NOW)).is_err());
}

#[test]
fn stripping_the_post_quantum_signature_is_detected() {
    let (_, token, _) = issued(Suite::PqAuth);
    assert!(token.body().post_quantum);
    // Re-encode with only the Ed25519 half of the signature: the flag in the signed
    // body still demands both.
    let bytes = token.to_bytes().unwrap();
    // Layout: envelope (10) ‖ postcard(body) ‖ varint(len(sig)) ‖ sig; the hybrid
    // signature is the last 3374 bytes, its flag byte first.
    let sig_start = bytes.len() - fed_crypto::HYBRID_SIGNATURE_MAX_LEN;
    let mut stripped = bytes[..sig_start].to_vec();
    let n = stripped.len();
    // The signature length varint (3374 = 0xae 0x1a) becomes 65 (0x41).
    assert_eq!(&stripped[n - 2..], &[0xae, 0x1a]);
    stripped.truncate(n - 2);
    stripped.push(65);
    stripped.push(0); // flags: no ML-DSA part
    stripped.extend_from_slice(&bytes[sig_start + 1..sig_start + 65]);
    let body_len = (stripped.len() - 10) as u32;
    stripped[6..10].copy_from_slice(&body_len.to_be_bytes());
    // Refused as it decodes: a post-quantum token must carry its ML-DSA part.
    assert!(matches!(
        FederationToken::from_bytes(&stripped),
        Err(Error::Malformed(_))
    ));
}

/// Replaces the signature field of an encoded token (the last `old_len` bytes,
/// after their varint length) with `sig`, fixing both lengths.
fn with_signature(token: &[u8], old_len: usize, sig: &[u8]) -> Vec<u8> {
    let mut len_start = token.len() - old_len - 1;
    while len_start > 0 && token[len_start - 1] & 0x80 != 0 {
        len_start -= 1;
    }
    let mut out = token[..len_start].to_vec();
    let mut n = sig.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(sig);
    let body = (out.len() - fed_handshake::ENVELOPE_HEADER_LEN) as u32;
    out[6..10].copy_from_slice(&body.to_be_bytes());
    out
}

/// Issue 14, item 14: a token's bytes name it. No byte string other than a
/// token's own encoding decodes to a token that verifies: not one with an
/// over-long varint anywhere before its signature, not a classical token with a
/// filler ML-DSA part appended to its signature.
#[test]
fn no_other_bytes_decode_to_a_token_that_verifies() {
    for suite in [Suite::Default, Suite::PqAuth] {
        let (s, token, _) = issued(suite);
        let bytes = token.to_bytes().unwrap();
        let sig_len = if suite == Suite::PqAuth {
            fed_crypto::HYBRID_SIGNATURE_MAX_LEN
        } else {
            65
        };
        let sig_start = bytes.len() - sig_len;
        let verifies = |b: &[u8]| {
            FederationToken::from_bytes(b).is_ok_and(|t| t.verify(&s.check(NOW)).is_ok())
        };
        assert!(verifies(&bytes));
        // Pad every byte that can end a varint, up to the signature's length.
        for at in fed_handshake::ENVELOPE_HEADER_LEN..sig_start {
            if bytes[at] & 0x80 == 0 {
                let mut bad = bytes[..at].to_vec();
                bad.extend([bytes[at] | 0x80, 0x00]);
                bad.extend_from_slice(&bytes[at + 1..]);
                let body = (bad.len() - fed_handshake::ENVELOPE_HEADER_LEN) as u32;
                bad[6..10].copy_from_slice(&body.to_be_bytes());
                assert!(!verifies(&bad), "padded at byte {at}, still verifies");
            }
        }
    }
    // A classical token with 3 309 filler bytes as an ML-DSA part (flag 1).
    let (s, token, _) = issued(Suite::Default);
    let bytes = token.to_bytes().unwrap();
    let mut sig = bytes[bytes.len() - 65..].to_vec();
    sig[0] = 1;
    sig.extend(std::iter::repeat_n(0xa5, 3309));
    let padded = with_signature(&bytes, 65, &sig);
    assert!(matches!(
        FederationToken::from_bytes(&padded),
        Err(Error::Malformed(_))
    ));
    assert!(
        FederationToken::from_bytes(&padded).map_or(true, |t| t.verify(&s.check(NOW)).is_err()),
        "a classical token with a filler ML-DSA part verifies"
    );
}

/// Issue 14, item 15: the id is `hash("… token id", [session])`. A token signed by
/// the right issuer but with another id (all ones; or another token's, say one
/// already revoked) fails every verification path.
#[test]
fn a_token_whose_id_is_not_its_sessions_fails_everywhere() {
    let (s, token, binding) = issued(Suite::Default);
    // Another session between the same two nodes: another token id.
    let (i, r) = s.start(99);
    let other = established_i(&mut record(i, r).i).token.clone();
    for id in [[0xff; 32], other.body().id] {
        let mut body = token.body().clone();
        body.id = id;
        assert_ne!(body.id, token.body().id);
        let bad = FederationToken::issue(&s.bob, body).unwrap();
        let bad = FederationToken::from_bytes(&bad.to_bytes().unwrap()).unwrap();
        assert!(matches!(bad.verify(&s.check(NOW)), Err(Error::TokenId)));
        assert!(matches!(
            bad.verify_for_session(&s.check(NOW), &binding),
            Err(Error::TokenId)
        ));
        assert!(matches!(
            bad.authorize(Capability::Query, &s.check(NOW)),
            Err(Error::TokenId)
        ));
    }
}

/// The initiator's own check of the token it receives refuses a wrong id: a
/// responder (here Bob, in a datagram-profile session so that a second token frame
/// can follow the first) that sends a token with another id does not establish the
/// session.
#[test]
fn an_initiator_refuses_a_token_whose_id_is_not_its_sessions() {
    let mut s = setup(Suite::Default, 41);
    s.ic.channel_mode = fed_crypto::Mode::Datagram;
    s.rc.channel_mode = fed_crypto::Mode::Datagram;
    let (mut i, mut r) = s.start(42);
    r.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
    i.handle_input(&r.poll_transmit().unwrap(), NOW).unwrap();
    r.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
    let _genuine = r.poll_transmit().unwrap();
    let mut bob_side = established_r(&mut r);
    let mut body = bob_side.token.body().clone();
    body.id = [0xff; 32];
    let bad = FederationToken::issue(&s.bob, body).unwrap();
    let frame = bob_side.channel.seal(&bad.to_bytes().unwrap()).unwrap();
    assert!(matches!(i.handle_input(&frame, NOW), Err(Error::TokenId)));
    assert!(i.poll_event().is_none());
}

#[test]
fn revoked_and_foreign_session_tokens_fail() {
    let (s, token, binding) = issued(Suite::Default);
    let id = token.body().id;
    let revoked = move |t: &[u8; 32]| *t == id;
    assert!(matches!(
        token.verify(&s.check(NOW).with_revocation(&revoked)),
        Err(Error::TokenRevoked)
    ));
    let mut other = binding;
    other[0] ^= 1;
    assert!(matches!(
        token.verify_for_session(&s.check(NOW), &other),
        Err(Error::TokenSession)
    ));
}

#[test]
fn capabilities_are_checked_per_request() {
    let mut s = setup(Suite::Default, 21);
    s.rc.capabilities.set = fed_handshake::CapabilitySet::EMPTY.with(Capability::Query);
    let (i, r) = s.start(22);
    let mut rec = record(i, r);
    let token = established_i(&mut rec.i).token.clone();
    token.authorize(Capability::Query, &s.check(NOW)).unwrap();
    assert!(matches!(
        token.authorize(Capability::Vote, &s.check(NOW)),
        Err(Error::CapabilityDenied(Capability::Vote))
    ));
}

#[test]
fn a_token_is_checked_for_its_federation_and_presenter() {
    let (s, token, _) = issued(Suite::Default);
    // Another federation served by the same issuer.
    let other = TokenCheck::new(
        s.bob.public(),
        FederationId([0x43; 32]),
        s.alice.node_id(),
        NOW,
    );
    assert!(matches!(token.verify(&other), Err(Error::TokenFederation)));
    // Presented by someone who saw Alice's token: refused.
    let mallory = Identity::generate(&mut rng(68), false);
    let stolen = TokenCheck::new(s.bob.public(), FED, mallory.node_id(), NOW);
    assert!(matches!(
        token.authorize(Capability::Query, &stolen),
        Err(Error::TokenSubject)
    ));
}

#[test]
fn a_federation_can_require_post_quantum_tokens() {
    // A classical token from a post-quantum-capable issuer: accepted by default,
    // refused under a post-quantum policy whatever its Ed25519 signature says.
    let mut s = setup(Suite::PqAuth, 13);
    s.ic.suites = vec![Suite::Default];
    s.rc.suites = vec![Suite::Default];
    let (i, r) = s.start(14);
    let mut rec = record(i, r);
    let token = established_i(&mut rec.i).token.clone();
    assert!(!token.body().post_quantum);
    assert!(s.bob.has_post_quantum());
    token.verify(&s.check(NOW)).unwrap();
    assert!(matches!(
        token.verify(&s.check(NOW).requiring_post_quantum()),
        Err(Error::TokenNotPostQuantum)
    ));
    // A hybrid token passes the policy.
    let (s, token, _) = issued(Suite::PqAuth);
    token
        .verify(&s.check(NOW).requiring_post_quantum())
        .unwrap();
}

#[test]
fn tokens_allow_for_clock_skew() {
    // The issuer's clock runs ahead of the holder's by less than the allowance.
    let (s, token, _) = issued(Suite::Default);
    let skew = fed_handshake::DEFAULT_CLOCK_SKEW_MS;
    assert_eq!(token.body().not_before, NOW - skew);
    token.verify(&s.check(NOW - skew / 2)).unwrap();
    assert!(matches!(
        token.verify(&s.check(NOW - skew - 1)),
        Err(Error::TokenNotYetValid { .. })
    ));
}

#[test]
fn a_post_quantum_token_needs_an_issuer_with_an_ml_dsa_key() {
    // Such an issuer could only make an Ed25519 signature, and the token would
    // claim a post-quantum signature it does not carry: refused at issue, so that
    // every token `issue` makes decodes.
    let (s, token, _) = issued(Suite::Default);
    let classical = Identity::generate(&mut rng(69), false);
    let mut body = token.body().clone();
    body.post_quantum = true;
    assert!(matches!(
        FederationToken::issue(&classical, body.clone()),
        Err(Error::SuiteNeedsPostQuantumKey(_))
    ));
    assert!(!s.bob.has_post_quantum());
    assert!(FederationToken::issue(&s.bob, body).is_err());
}
