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
    let (s, token, _) = issued(Suite::PqAuth);
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
    let t = FederationToken::from_bytes(&stripped).unwrap();
    assert!(matches!(
        t.verify(&s.check(NOW)),
        Err(Error::TokenSignature)
    ));
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
