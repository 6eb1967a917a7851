//! ML-KEM-768 on every backend of this build: NIST's ACVP vectors (a subset,
//! tests/data/ml-kem-768-acvp-subset.json), the X-Wing vectors through each
//! backend, and the two backends' interoperation (run with `--features
//! fast-kem` to have two).

use fed_crypto::{
    KemBackend, XWingCiphertext, XWingPublicKey, XWingSecretKey,
    mlkem::{MLKEM768_CT_LEN, MlKemDecapsulationKey, MlKemEncapsulationKey},
};
use proptest::prelude::*;
use serde_json::Value;

fn acvp() -> Value {
    serde_json::from_str(include_str!("../data/ml-kem-768-acvp-subset.json")).unwrap()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn groups<'a>(doc: &'a Value, part: &str) -> &'a Vec<Value> {
    doc[part]["testGroups"].as_array().unwrap()
}

#[test]
fn key_generation_matches_acvp_on_every_backend() {
    let doc = acvp();
    let mut checked = 0;
    for &backend in KemBackend::ALL {
        for group in groups(&doc, "keyGen") {
            for t in group["tests"].as_array().unwrap() {
                let mut seed = [0u8; 64];
                seed[..32].copy_from_slice(&unhex(&t["d"]));
                seed[32..].copy_from_slice(&unhex(&t["z"]));
                let dk = MlKemDecapsulationKey::from_seed(backend, &seed);
                assert_eq!(dk.backend(), backend);
                assert_eq!(
                    dk.encapsulation_key().as_bytes().as_slice(),
                    unhex(&t["ek"]).as_slice(),
                    "{backend:?} tcId {}",
                    t["tcId"]
                );
                // The expanded key of the vector decodes to the same key pair.
                let from_dk =
                    MlKemDecapsulationKey::from_expanded(backend, &unhex(&t["dk"])).unwrap();
                assert_eq!(from_dk.encapsulation_key(), dk.encapsulation_key());
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 5 * KemBackend::ALL.len());
}

#[test]
fn encapsulation_matches_acvp_on_every_backend() {
    let doc = acvp();
    let mut checked = 0;
    for &backend in KemBackend::ALL {
        let group = groups(&doc, "encapDecap")
            .iter()
            .find(|g| g["function"] == "encapsulation")
            .unwrap();
        for t in group["tests"].as_array().unwrap() {
            let ek = MlKemEncapsulationKey::from_bytes(backend, &unhex(&t["ek"])).unwrap();
            let m: [u8; 32] = unhex(&t["m"]).try_into().unwrap();
            let (c, k) = ek.encapsulate_derand(&m);
            assert_eq!(
                c.as_slice(),
                unhex(&t["c"]).as_slice(),
                "{backend:?} tcId {}",
                t["tcId"]
            );
            assert_eq!(k.as_slice(), unhex(&t["k"]).as_slice());
            // And the vector's decapsulation key gets the secret back.
            let dk = MlKemDecapsulationKey::from_expanded(backend, &unhex(&t["dk"])).unwrap();
            assert_eq!(*dk.decapsulate(&c), *k);
            checked += 1;
        }
    }
    assert_eq!(checked, 5 * KemBackend::ALL.len());
}

#[test]
fn decapsulation_matches_acvp_including_implicit_rejection_on_every_backend() {
    let doc = acvp();
    let mut rejected = 0;
    for &backend in KemBackend::ALL {
        let group = groups(&doc, "encapDecap")
            .iter()
            .find(|g| g["function"] == "decapsulation")
            .unwrap();
        let dk = MlKemDecapsulationKey::from_expanded(backend, &unhex(&group["dk"])).unwrap();
        assert_eq!(
            dk.encapsulation_key().as_bytes().as_slice(),
            unhex(&group["ek"]).as_slice()
        );
        for t in group["tests"].as_array().unwrap() {
            let c: [u8; MLKEM768_CT_LEN] = unhex(&t["c"]).try_into().unwrap();
            assert_eq!(
                dk.decapsulate(&c).as_slice(),
                unhex(&t["k"]).as_slice(),
                "{backend:?} tcId {} ({})",
                t["tcId"],
                t["reason"]
            );
            if t["reason"] == "modify ciphertext" {
                rejected += 1;
            }
        }
    }
    assert!(
        rejected >= KemBackend::ALL.len(),
        "no implicit-rejection case ran"
    );
}

#[test]
fn a_corrupted_expanded_key_is_a_typed_error_on_every_backend() {
    let doc = acvp();
    let t = &groups(&doc, "keyGen")[0]["tests"][0];
    let mut dk = unhex(&t["dk"]);
    // Inside the stored hash of the encapsulation key (FIPS 203 §7.3's check).
    dk[2400 - 64] ^= 1;
    for &backend in KemBackend::ALL {
        assert!(matches!(
            MlKemDecapsulationKey::from_expanded(backend, &dk),
            Err(fed_crypto::Error::InvalidSecretKey("ML-KEM-768"))
        ));
        assert!(matches!(
            MlKemDecapsulationKey::from_expanded(backend, &dk[1..]),
            Err(fed_crypto::Error::InvalidLength { .. })
        ));
        // A coefficient of q or more in the encapsulation key: the modulus check.
        let mut ek = unhex(&t["ek"]);
        ek[0] = 0xff;
        ek[1] |= 0x0f;
        assert!(matches!(
            MlKemEncapsulationKey::from_bytes(backend, &ek),
            Err(fed_crypto::Error::InvalidPublicKey("ML-KEM-768"))
        ));
    }
}

/// FIPS 203 §7.3 in full: an expanded key whose embedded encapsulation key has a
/// coefficient of q or more is refused even when its stored hash matches those
/// bytes. (libcrux checks only the hash and would reduce the coefficient, making
/// a key that disagrees with its own encoding; the backend adds the check.)
#[test]
fn an_expanded_key_with_an_unreduced_public_key_is_refused_on_every_backend() {
    use sha3::{Digest, Sha3_256};
    let doc = acvp();
    let t = &groups(&doc, "keyGen")[0]["tests"][0];
    let mut dk = unhex(&t["dk"]);
    // dk_pke (1152) ‖ ek (1184) ‖ H(ek) (32) ‖ z (32); the first coefficient of
    // ek becomes 0xfff > q = 3329, and the hash is recomputed over the new ek.
    dk[1152] = 0xff;
    dk[1153] |= 0x0f;
    let h = Sha3_256::digest(&dk[1152..2336]);
    dk[2336..2368].copy_from_slice(&h);
    for &backend in KemBackend::ALL {
        assert!(
            matches!(
                MlKemDecapsulationKey::from_expanded(backend, &dk),
                Err(fed_crypto::Error::InvalidSecretKey("ML-KEM-768"))
            ),
            "{backend:?} accepted an unreduced embedded key"
        );
    }
}

#[derive(serde::Deserialize)]
struct XWingVector {
    seed: String,
    pk: String,
    eseed: String,
    ct: String,
    ss: String,
}

#[test]
fn x_wing_vectors_pass_on_every_backend() {
    let vectors: Vec<XWingVector> =
        serde_json::from_str(include_str!("../data/xwing-test-vectors.json")).unwrap();
    for &backend in KemBackend::ALL {
        for v in &vectors {
            let seed: [u8; 32] = hex::decode(&v.seed).unwrap().try_into().unwrap();
            let sk = XWingSecretKey::from_seed_with(&seed, backend);
            assert_eq!(sk.backend(), backend);
            assert_eq!(
                sk.public_key().as_bytes().as_slice(),
                hex::decode(&v.pk).unwrap()
            );
            let pk =
                XWingPublicKey::from_bytes_with(&hex::decode(&v.pk).unwrap(), backend).unwrap();
            assert_eq!(pk.backend(), backend);
            let eseed: [u8; 64] = hex::decode(&v.eseed).unwrap().try_into().unwrap();
            let (ct, ss) = pk.encapsulate_derand(&eseed);
            assert_eq!(ct.as_bytes().as_slice(), hex::decode(&v.ct).unwrap());
            assert_eq!(ss.as_bytes().as_slice(), hex::decode(&v.ss).unwrap());
            let ct = XWingCiphertext::from_bytes(&hex::decode(&v.ct).unwrap()).unwrap();
            assert_eq!(
                sk.decapsulate(&ct).as_bytes().as_slice(),
                hex::decode(&v.ss).unwrap()
            );
        }
    }
}

#[test]
fn the_default_backend_can_be_chosen_and_keys_keep_theirs() {
    // The only test in this binary that touches the process-wide default.
    let before = KemBackend::current();
    assert_eq!(before, KemBackend::BUILD_DEFAULT);
    assert_eq!(KemBackend::default(), KemBackend::BUILD_DEFAULT);
    for &backend in KemBackend::ALL {
        backend.set_default();
        assert_eq!(KemBackend::current(), backend);
        let sk = XWingSecretKey::from_seed(&[7; 32]);
        assert_eq!(sk.backend(), backend);
        assert!(format!("{sk:?}").starts_with("XWingSecretKey(pk "));
    }
    KemBackend::BUILD_DEFAULT.set_default();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::cases(16)))]

    /// Every pair of backends, both ways: the same seed makes the same public
    /// key, the same randomness the same ciphertext, and a key made by one
    /// decapsulates what the other encapsulated, for X-Wing and ML-KEM alone.
    #[test]
    fn backends_interoperate(seed in any::<[u8; 32]>(), eseed in proptest::collection::vec(any::<u8>(), 64), flip in 0usize..1088) {
        let eseed: [u8; 64] = eseed.try_into().unwrap();
        for &maker in KemBackend::ALL {
            for &user in KemBackend::ALL {
                let sk = XWingSecretKey::from_seed_with(&seed, maker);
                let other = XWingSecretKey::from_seed_with(&seed, user);
                prop_assert_eq!(sk.public_key().as_bytes(), other.public_key().as_bytes());
                let pk = XWingPublicKey::from_bytes_with(sk.public_key().as_bytes(), user).unwrap();
                let (ct, ss) = pk.encapsulate_derand(&eseed);
                let (ct_same, _) = sk.public_key().encapsulate_derand(&eseed);
                prop_assert_eq!(ct.as_bytes(), ct_same.as_bytes());
                prop_assert_eq!(sk.decapsulate(&ct), ss.clone());
                // A tampered ML-KEM ciphertext is rejected alike by both: the
                // same unrelated secret (implicit rejection is deterministic).
                let mut bad = ct.as_bytes().to_vec();
                bad[flip] ^= 1;
                let bad = XWingCiphertext::from_bytes(&bad).unwrap();
                prop_assert_ne!(sk.decapsulate(&bad), ss);
                prop_assert_eq!(sk.decapsulate(&bad), other.decapsulate(&bad));
            }
        }
    }
}
