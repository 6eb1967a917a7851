//! Onion key certificates with post-quantum (hybrid) identities, and certificates
//! that must not verify.

use fed_crypto::Identity;
use fed_onion::{MAX_CERTIFICATE_LEN, OnionKey, OnionKeyCertificate};

use crate::{epoch, rng};

#[test]
fn hybrid_identity_certificates_verify_and_fit_the_limit() {
    let mut rng = rng(60);
    let identity = Identity::generate(&mut rng, true);
    let key = OnionKey::generate(&identity, epoch(1), true, &mut rng).unwrap();
    let bytes = key.certificate().as_bytes();
    assert_eq!(bytes.len(), MAX_CERTIFICATE_LEN);
    let cert = OnionKeyCertificate::from_bytes(bytes).unwrap();
    assert!(cert.identity().has_post_quantum());
    assert_eq!(cert.node_id(), identity.node_id());
    // Stripping the ML-DSA part of the signature is detected.
    // Signature: flags (1) ‖ Ed25519 (64) ‖ ML-DSA-65 (3309), after its length.
    let sig_at = bytes.len() - 3374;
    let mut stripped = bytes[..sig_at - 2].to_vec();
    stripped.extend_from_slice(&65u16.to_be_bytes());
    stripped.push(0);
    stripped.extend_from_slice(&bytes[sig_at + 1..sig_at + 65]);
    assert!(OnionKeyCertificate::from_bytes(&stripped).is_err());
}

#[test]
fn a_certificate_signed_by_another_identity_fails() {
    let mut rng = rng(61);
    let alice = Identity::generate(&mut rng, false);
    let mallory = Identity::generate(&mut rng, false);
    let a = OnionKey::generate(&alice, epoch(1), true, &mut rng).unwrap();
    let m = OnionKey::generate(&mallory, epoch(1), true, &mut rng).unwrap();
    // Alice's certificate fields with Mallory's signature.
    let a_bytes = a.certificate().as_bytes();
    let m_bytes = m.certificate().as_bytes();
    let mut forged = a_bytes[..a_bytes.len() - 65].to_vec();
    forged.extend_from_slice(&m_bytes[m_bytes.len() - 65..]);
    assert!(OnionKeyCertificate::from_bytes(&forged).is_err());
    // Mallory's key under Alice's name.
    let mut swapped = a_bytes.to_vec();
    swapped[26..26 + 1216].copy_from_slice(&m_bytes[26..26 + 1216]);
    assert!(OnionKeyCertificate::from_bytes(&swapped).is_err());
}
