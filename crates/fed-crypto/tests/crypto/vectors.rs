//! The three published X-Wing vectors (draft-connolly-cfrg-xwing-kem), and the
//! ML-KEM-768 ACVP vectors' keys run through our X-Wing key type's ML-KEM half indirectly.

use fed_crypto::{XWingCiphertext, XWingPublicKey, XWingSecretKey};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    seed: String,
    sk: String,
    pk: String,
    eseed: String,
    ct: String,
    ss: String,
}

fn vectors() -> Vec<Vector> {
    let v: Vec<Vector> =
        serde_json::from_str(include_str!("../data/xwing-test-vectors.json")).unwrap();
    assert_eq!(v.len(), 3, "the draft publishes three vectors");
    v
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn keygen_matches_vectors() {
    for v in vectors() {
        let seed: [u8; 32] = unhex(&v.seed).try_into().unwrap();
        let sk = XWingSecretKey::from_seed(&seed);
        assert_eq!(
            sk.public_key().as_bytes().as_slice(),
            unhex(&v.pk).as_slice()
        );
        assert_eq!(sk.to_bytes().as_slice(), unhex(&v.sk).as_slice());
    }
}

#[test]
fn encapsulation_matches_vectors() {
    for v in vectors() {
        let pk = XWingPublicKey::from_bytes(&unhex(&v.pk)).unwrap();
        let eseed: [u8; 64] = unhex(&v.eseed).try_into().unwrap();
        let (ct, ss) = pk.encapsulate_derand(&eseed);
        assert_eq!(ct.as_bytes().as_slice(), unhex(&v.ct).as_slice());
        assert_eq!(ss.as_bytes().as_slice(), unhex(&v.ss).as_slice());
    }
}

#[test]
fn decapsulation_matches_vectors() {
    for v in vectors() {
        let sk = XWingSecretKey::from_bytes(&unhex(&v.sk)).unwrap();
        let ct = XWingCiphertext::from_bytes(&unhex(&v.ct)).unwrap();
        assert_eq!(
            sk.decapsulate(&ct).as_bytes().as_slice(),
            unhex(&v.ss).as_slice()
        );
    }
}

#[test]
fn agrees_with_the_x_wing_crate() {
    use x_wing::{Decapsulate, Decapsulator, KeyExport};
    for v in vectors() {
        let seed: [u8; 32] = unhex(&v.seed).try_into().unwrap();
        let theirs = x_wing::DecapsulationKey::from(seed);
        let ours = XWingSecretKey::from_seed(&seed);
        let their_pk = theirs.encapsulation_key().to_bytes();
        assert_eq!(ours.public_key().as_bytes().as_slice(), their_pk.as_slice());
        let (ct, ss) = ours.public_key().encapsulate(&mut crate::rng(9));
        let ct_theirs = x_wing::Ciphertext::try_from(ct.as_bytes().as_slice()).unwrap();
        assert_eq!(
            theirs.decapsulate(&ct_theirs).as_slice(),
            ss.as_bytes().as_slice()
        );
    }
}

#[test]
fn tampered_ciphertext_gives_an_unrelated_secret() {
    let sk = XWingSecretKey::generate(&mut crate::rng(1));
    let (ct, ss) = sk.public_key().encapsulate(&mut crate::rng(2));
    for i in [0usize, 500, 1087, 1088, 1119] {
        let mut bad = ct.as_bytes().to_vec();
        bad[i] ^= 1;
        let bad = XWingCiphertext::from_bytes(&bad).unwrap();
        assert_ne!(sk.decapsulate(&bad), ss, "flip at byte {i}");
    }
}

#[test]
fn wrong_lengths_are_typed_errors() {
    use fed_crypto::Error;
    for len in [0usize, 31, 33] {
        assert!(matches!(
            XWingSecretKey::from_bytes(&vec![0; len]),
            Err(Error::InvalidLength { .. })
        ));
    }
    for len in [0usize, 1215, 1217] {
        assert!(matches!(
            XWingPublicKey::from_bytes(&vec![0; len]),
            Err(Error::InvalidLength { .. })
        ));
    }
    for len in [0usize, 1119, 1121] {
        assert!(matches!(
            XWingCiphertext::from_bytes(&vec![0; len]),
            Err(Error::InvalidLength { .. })
        ));
    }
    // An ML-KEM key whose coefficients are not reduced mod q fails the FIPS 203 check.
    let mut pk = vec![0xffu8; 1216];
    pk[1184..].fill(9);
    assert!(matches!(
        XWingPublicKey::from_bytes(&pk),
        Err(Error::InvalidPublicKey("ML-KEM-768"))
    ));
}
