//! Identities, node ids and hybrid signatures.

use fed_crypto::{Error, HybridSignature, Identity, PublicIdentity};

const LABEL: &str = "exo-federation v1 test message";

#[test]
fn sign_and_verify_both_suites() {
    for pq in [false, true] {
        let id = Identity::generate(&mut crate::rng(1), pq);
        let sig = id.sign(LABEL, b"commit 42").unwrap();
        assert_eq!(sig.has_post_quantum(), pq);
        id.public().verify(LABEL, b"commit 42", &sig).unwrap();
        // Round trip through the encoding.
        let back = HybridSignature::from_bytes(&sig.to_bytes()).unwrap();
        id.public().verify(LABEL, b"commit 42", &back).unwrap();
        // Other message, other label, other signer: all rejected.
        assert!(matches!(
            id.public().verify(LABEL, b"commit 43", &sig),
            Err(Error::BadSignature)
        ));
        assert!(matches!(
            id.public()
                .verify("exo-federation v1 other", b"commit 42", &sig),
            Err(Error::BadSignature)
        ));
        let other = Identity::generate(&mut crate::rng(2), pq);
        assert!(matches!(
            other.public().verify(LABEL, b"commit 42", &sig),
            Err(Error::BadSignature)
        ));
    }
}

#[test]
fn stripping_the_post_quantum_part_is_detected() {
    let id = Identity::generate(&mut crate::rng(3), true);
    let sig = id.sign(LABEL, b"m").unwrap();
    let stripped = sig.without_post_quantum();
    assert!(matches!(
        id.public().verify(LABEL, b"m", &stripped),
        Err(Error::BadSignature)
    ));
    // The classical check alone accepts it, as a classical-only suite would.
    id.public().verify_ed25519(LABEL, b"m", &stripped).unwrap();
    // Ed25519-only signatures from a hybrid identity likewise fail full verification.
    let classical = id.sign_ed25519(LABEL, b"m").unwrap();
    assert!(id.public().verify(LABEL, b"m", &classical).is_err());
}

#[test]
fn each_half_of_a_hybrid_signature_must_verify() {
    let id = Identity::generate(&mut crate::rng(4), true);
    let bytes = id.sign(LABEL, b"m").unwrap().to_bytes();
    // A flipped bit in the Ed25519 part, then in the ML-DSA part.
    for i in [1usize, 64, 65, 2000, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        let sig = HybridSignature::from_bytes(&bad).unwrap();
        assert!(
            id.public().verify(LABEL, b"m", &sig).is_err(),
            "flip at {i}"
        );
    }
    // An ML-DSA part grafted from another message does not verify.
    let other = id.sign(LABEL, b"n").unwrap().to_bytes();
    let mut mixed = bytes.clone();
    mixed[65..].copy_from_slice(&other[65..]);
    assert!(
        id.public()
            .verify(LABEL, b"m", &HybridSignature::from_bytes(&mixed).unwrap())
            .is_err()
    );
}

#[test]
fn node_id_commits_to_both_keys() {
    let ed = [5u8; 32];
    let classical = Identity::from_seeds(&ed, None);
    let hybrid = Identity::from_seeds(&ed, Some(&[6u8; 32]));
    let hybrid2 = Identity::from_seeds(&ed, Some(&[7u8; 32]));
    assert_eq!(
        classical.public().ed25519_bytes(),
        hybrid.public().ed25519_bytes()
    );
    assert_ne!(classical.node_id(), hybrid.node_id());
    assert_ne!(hybrid.node_id(), hybrid2.node_id());
    // Deterministic from the seeds.
    assert_eq!(
        Identity::from_seeds(&ed, Some(&[6u8; 32])).node_id(),
        hybrid.node_id()
    );
}

#[test]
fn public_identity_encoding_is_strict() {
    let id = Identity::generate(&mut crate::rng(5), true);
    let bytes = id.public().as_bytes().to_vec();
    let back = PublicIdentity::from_bytes(&bytes).unwrap();
    assert_eq!(&back, id.public());
    assert_eq!(back.node_id(), id.node_id());
    // Truncations, trailing bytes, unknown version and flags.
    assert!(PublicIdentity::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut long = bytes.clone();
    long.push(0);
    assert!(PublicIdentity::from_bytes(&long).is_err());
    let mut v = bytes.clone();
    v[0] = 2;
    assert!(matches!(
        PublicIdentity::from_bytes(&v),
        Err(Error::Unsupported { .. })
    ));
    let mut f = bytes.clone();
    f[1] = 3;
    assert!(matches!(
        PublicIdentity::from_bytes(&f),
        Err(Error::Unsupported { .. })
    ));
    // A small-order Ed25519 point (the identity element) is refused.
    let mut weak = vec![1u8, 0];
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    weak.extend_from_slice(&identity_point);
    assert!(matches!(
        PublicIdentity::from_bytes(&weak),
        Err(Error::InvalidPublicKey("Ed25519"))
    ));
    // The point with y = 3 is on the curve and not of small order (it has a torsion
    // component): its canonical encoding is a key, while its other encoding,
    // y + p = 2^255 - 16 (which decompresses to the same point), is refused.
    let mut canonical = vec![1u8, 0, 3];
    canonical.extend_from_slice(&[0; 31]);
    PublicIdentity::from_bytes(&canonical).unwrap();
    let mut overlong = vec![1u8, 0, 0xf0];
    overlong.extend_from_slice(&[0xff; 30]);
    overlong.push(0x7f);
    assert!(matches!(
        PublicIdentity::from_bytes(&overlong),
        Err(Error::InvalidPublicKey("Ed25519"))
    ));
}

#[test]
fn debug_never_shows_secret_bytes() {
    let id = Identity::generate(&mut crate::rng(6), true);
    let secret_hex = hex::encode(id.ed25519_secret_bytes().as_ref());
    let ml_hex = hex::encode(id.ml_dsa_seed().unwrap().as_ref());
    let shown = format!("{id:?} {:?}", id.public());
    assert!(!shown.contains(&secret_hex[..16]));
    assert!(!shown.contains(&ml_hex[..16]));
    assert!(shown.contains(&id.node_id().to_string()));

    let kem = fed_crypto::XWingSecretKey::generate(&mut crate::rng(7));
    let seed_hex = hex::encode(kem.to_bytes().as_ref());
    let shown = format!("{kem:?}");
    assert!(!shown.contains(&seed_hex[..16]), "{shown}");
    let (_, ss) = kem.public_key().encapsulate(&mut crate::rng(8));
    let shown = format!("{ss:?}");
    assert!(!shown.contains(&hex::encode(ss.as_bytes())[..16]));
    assert_eq!(shown, "XWingSharedSecret(<redacted>)");
}
