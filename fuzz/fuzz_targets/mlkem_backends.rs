//! The two ML-KEM-768 backends of fed-crypto (RustCrypto's and libcrux's), fed the
//! same bytes: they must accept and refuse the same encapsulation and expanded
//! decapsulation keys, and agree on every ciphertext and shared secret.
//!
//! Input: `ek (1184) ‖ m (32)` then, if there is room, `dk (2400) ‖ ct (1088)`
//! and one more byte: if it is odd, the hash stored in `dk` is recomputed over
//! the encapsulation key `dk` holds, so that edited keys reach the checks past
//! the hash (the modulus check of the embedded key, the secret vector).
#![no_main]

use fed_crypto::{
    KemBackend,
    mlkem::{
        MLKEM768_CT_LEN, MLKEM768_DK_LEN, MLKEM768_EK_LEN, MlKemDecapsulationKey,
        MlKemEncapsulationKey,
    },
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let backends = KemBackend::ALL;
    assert!(
        backends.len() >= 2,
        "build with fed-crypto's fast-kem feature"
    );
    if data.len() >= MLKEM768_EK_LEN + 32 {
        let (ek, rest) = data.split_at(MLKEM768_EK_LEN);
        let m: [u8; 32] = rest[..32].try_into().unwrap();
        let keys: Vec<_> = backends
            .iter()
            .map(|&b| MlKemEncapsulationKey::from_bytes(b, ek).ok())
            .collect();
        assert!(
            keys.iter().all(|k| k.is_some() == keys[0].is_some()),
            "backends disagree on accepting an encapsulation key"
        );
        let outs: Vec<_> = keys
            .iter()
            .flatten()
            .map(|k| {
                assert_eq!(k.as_bytes().as_slice(), ek);
                let (ct, ss) = k.encapsulate_derand(&m);
                (*ct, *ss)
            })
            .collect();
        assert!(
            outs.windows(2).all(|w| w[0] == w[1]),
            "backends disagree on encapsulation"
        );
    }
    let off = MLKEM768_EK_LEN + 32;
    if data.len() >= off + MLKEM768_DK_LEN + MLKEM768_CT_LEN {
        let mut dk = data[off..off + MLKEM768_DK_LEN].to_vec();
        if data
            .get(off + MLKEM768_DK_LEN + MLKEM768_CT_LEN)
            .is_some_and(|b| b & 1 == 1)
        {
            use sha3::Digest;
            let h = sha3::Sha3_256::digest(&dk[1152..2336]);
            dk[2336..2368].copy_from_slice(&h);
        }
        let dk = dk.as_slice();
        let ct: [u8; MLKEM768_CT_LEN] = data[off + MLKEM768_DK_LEN..][..MLKEM768_CT_LEN]
            .try_into()
            .unwrap();
        let keys: Vec<_> = backends
            .iter()
            .map(|&b| MlKemDecapsulationKey::from_expanded(b, dk).ok())
            .collect();
        assert!(
            keys.iter().all(|k| k.is_some() == keys[0].is_some()),
            "backends disagree on accepting an expanded decapsulation key"
        );
        let eks: Vec<_> = keys
            .iter()
            .flatten()
            .map(|k| *k.encapsulation_key().as_bytes())
            .collect();
        assert!(
            eks.windows(2).all(|w| w[0] == w[1]),
            "backends disagree on the public key"
        );
        let secrets: Vec<_> = keys.iter().flatten().map(|k| *k.decapsulate(&ct)).collect();
        assert!(
            secrets.windows(2).all(|w| w[0] == w[1]),
            "backends disagree on decapsulation"
        );
    }
});
