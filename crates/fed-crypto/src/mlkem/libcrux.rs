//! The libcrux backend (feature `fast-kem`): `libcrux-ml-kem`'s unpacked API,
//! whose keys keep the matrix Â and the secret vector in the NTT domain.
//!
//! libcrux chooses AVX2 code at run time only in its packed API; the unpacked
//! API comes per platform, so this module makes the same choice itself, with
//! libcrux's own CPU check, once per key. libcrux does not wipe its keys: a key
//! pair is overwritten with an empty one on drop, and the write is kept from
//! being optimised away by `black_box`.

use libcrux_ml_kem::{
    MlKemCiphertext, MlKemPrivateKey, MlKemPublicKey,
    mlkem768::{self, portable::unpacked as portable},
};
use zeroize::Zeroizing;

#[cfg(target_arch = "x86_64")]
use libcrux_ml_kem::mlkem768::avx2::unpacked as avx2;

use super::{MLKEM_SEED_LEN, MLKEM_SS_LEN, MLKEM768_CT_LEN, MLKEM768_DK_LEN, MLKEM768_EK_LEN};

/// Whether libcrux's AVX2 code runs on this CPU.
fn use_avx2() -> bool {
    cfg!(target_arch = "x86_64") && libcrux_platform::simd256_support()
}

pub(super) fn variant_name() -> &'static str {
    if use_avx2() {
        "libcrux-avx2"
    } else {
        "libcrux-portable"
    }
}

/// An unpacked key pair; the variant is the code that may touch it.
pub(super) enum KeyPair {
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::MlKem768KeyPairUnpacked),
    Portable(portable::MlKem768KeyPairUnpacked),
}

/// An unpacked public key (with its hash, which encapsulation needs).
#[derive(Clone)]
pub(super) enum PublicKey {
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::MlKem768PublicKeyUnpacked),
    Portable(portable::MlKem768PublicKeyUnpacked),
}

impl Drop for KeyPair {
    fn drop(&mut self) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx2(kp) => {
                *kp = avx2::init_key_pair();
                std::hint::black_box(&*kp);
            }
            Self::Portable(kp) => {
                *kp = portable::init_key_pair();
                std::hint::black_box(&*kp);
            }
        }
    }
}

fn public_key_of(kp: &KeyPair) -> PublicKey {
    match kp {
        #[cfg(target_arch = "x86_64")]
        KeyPair::Avx2(kp) => {
            let mut pk = avx2::init_public_key();
            avx2::public_key(kp, &mut pk);
            PublicKey::Avx2(pk)
        }
        KeyPair::Portable(kp) => {
            let mut pk = portable::init_public_key();
            portable::public_key(kp, &mut pk);
            PublicKey::Portable(pk)
        }
    }
}

pub(super) fn keygen(seed: &[u8; MLKEM_SEED_LEN]) -> (Box<KeyPair>, Box<PublicKey>) {
    // The seed is copied by value into libcrux; the copy here is wiped.
    let randomness = Zeroizing::new(*seed);
    let kp = Box::new({
        #[cfg(target_arch = "x86_64")]
        if use_avx2() {
            KeyPair::Avx2(avx2::generate_key_pair(*randomness))
        } else {
            KeyPair::Portable(portable::generate_key_pair(*randomness))
        }
        #[cfg(not(target_arch = "x86_64"))]
        KeyPair::Portable(portable::generate_key_pair(*randomness))
    });
    let pk = Box::new(public_key_of(&kp));
    (kp, pk)
}

pub(super) fn from_expanded(dk: &[u8; MLKEM768_DK_LEN]) -> Option<(Box<KeyPair>, Box<PublicKey>)> {
    let private = MlKemPrivateKey::from(dk);
    // FIPS 203 §7.3: the stored hash of the encapsulation key must match it.
    let ok = mlkem768::portable::validate_private_key_only(&private);
    let kp = ok.then(|| {
        Box::new({
            #[cfg(target_arch = "x86_64")]
            if use_avx2() {
                let mut kp = avx2::init_key_pair();
                avx2::key_pair_from_private_mut(&private, &mut kp);
                KeyPair::Avx2(kp)
            } else {
                let mut kp = portable::init_key_pair();
                portable::key_pair_from_private_mut(&private, &mut kp);
                KeyPair::Portable(kp)
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let mut kp = portable::init_key_pair();
                portable::key_pair_from_private_mut(&private, &mut kp);
                KeyPair::Portable(kp)
            }
        })
    });
    wipe_private(private);
    let kp = kp?;
    let pk = Box::new(public_key_of(&kp));
    Some((kp, pk))
}

/// Overwrites libcrux's copy of an encoded private key.
fn wipe_private(private: MlKemPrivateKey<MLKEM768_DK_LEN>) {
    let mut bytes: Zeroizing<[u8; MLKEM768_DK_LEN]> = Zeroizing::new(private.into());
    std::hint::black_box(&mut *bytes);
}

pub(super) fn ek_from_bytes(bytes: &[u8; MLKEM768_EK_LEN]) -> Option<Box<PublicKey>> {
    let public = MlKemPublicKey::from(bytes);
    // FIPS 203 §7.2: every coefficient below q.
    if !mlkem768::portable::validate_public_key(&public) {
        return None;
    }
    Some(Box::new({
        #[cfg(target_arch = "x86_64")]
        if use_avx2() {
            let mut pk = avx2::init_public_key();
            avx2::unpacked_public_key(&public, &mut pk);
            PublicKey::Avx2(pk)
        } else {
            let mut pk = portable::init_public_key();
            portable::unpacked_public_key(&public, &mut pk);
            PublicKey::Portable(pk)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let mut pk = portable::init_public_key();
            portable::unpacked_public_key(&public, &mut pk);
            PublicKey::Portable(pk)
        }
    }))
}

pub(super) fn ek_bytes(pk: &PublicKey) -> [u8; MLKEM768_EK_LEN] {
    let mut out = MlKemPublicKey::from([0u8; MLKEM768_EK_LEN]);
    match pk {
        #[cfg(target_arch = "x86_64")]
        PublicKey::Avx2(pk) => avx2::serialized_public_key(pk, &mut out),
        PublicKey::Portable(pk) => portable::serialized_public_key(pk, &mut out),
    }
    *out.as_slice()
}

pub(super) fn encapsulate(
    pk: &PublicKey,
    m: &[u8; 32],
) -> (Box<[u8; MLKEM768_CT_LEN]>, Zeroizing<[u8; MLKEM_SS_LEN]>) {
    let randomness = Zeroizing::new(*m);
    let (ct, ss) = match pk {
        #[cfg(target_arch = "x86_64")]
        PublicKey::Avx2(pk) => avx2::encapsulate(pk, *randomness),
        PublicKey::Portable(pk) => portable::encapsulate(pk, *randomness),
    };
    let ss = Zeroizing::new(ss);
    (Box::new(*ct.as_slice()), Zeroizing::new(*ss))
}

pub(super) fn decapsulate(
    kp: &KeyPair,
    ct: &[u8; MLKEM768_CT_LEN],
) -> Zeroizing<[u8; MLKEM_SS_LEN]> {
    let ct = MlKemCiphertext::from(ct);
    let ss = match kp {
        #[cfg(target_arch = "x86_64")]
        KeyPair::Avx2(kp) => avx2::decapsulate(kp, &ct),
        KeyPair::Portable(kp) => portable::decapsulate(kp, &ct),
    };
    Zeroizing::new(ss)
}
