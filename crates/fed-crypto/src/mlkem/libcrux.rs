//! The libcrux backend (feature `fast-kem`): `libcrux-ml-kem`'s unpacked API,
//! whose keys keep the matrix Â and the secret vector in the NTT domain.
//!
//! libcrux chooses AVX2 code at run time only in its packed API; the unpacked
//! API comes per platform, so this module makes the same choice itself, with
//! libcrux's own CPU check, once per key (or takes the portable code when asked
//! to: [`KemBackend::LibcruxPortable`](super::KemBackend::LibcruxPortable)).
//!
//! libcrux does not wipe its keys. Key pairs are built in place on the heap (no
//! stack copy of the secret vector) and overwritten with an empty key pair on
//! drop, the write kept from being optimised away by `black_box`; encoded
//! private keys and shared secrets are wiped in place. Values libcrux takes by
//! value (the 64-byte seed, the 32-byte message) and its own intermediates are
//! not ours to wipe: a residual risk of this backend, shared with every caller
//! of libcrux.

use libcrux_ml_kem::{
    MlKemCiphertext, MlKemPrivateKey, MlKemPublicKey,
    mlkem768::{self, portable::unpacked as portable},
};
use zeroize::{Zeroize, Zeroizing};

#[cfg(target_arch = "x86_64")]
use libcrux_ml_kem::mlkem768::avx2::unpacked as avx2;

use super::{MLKEM_SEED_LEN, MLKEM_SS_LEN, MLKEM768_CT_LEN, MLKEM768_DK_LEN, MLKEM768_EK_LEN};

/// Where the encapsulation key sits in FIPS 203's expanded decapsulation key:
/// `dk_pke (1152) ‖ ek (1184) ‖ H(ek) (32) ‖ z (32)`.
const DK_EK_AT: usize = 1152;

/// Whether libcrux's AVX2 code runs on this CPU.
pub(super) fn avx2_available() -> bool {
    cfg!(target_arch = "x86_64") && libcrux_platform::simd256_support()
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

impl KeyPair {
    /// An empty key pair on the heap, for `avx2` code or the portable code.
    fn empty(avx2: bool) -> Box<Self> {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            return Box::new(Self::Avx2(avx2::init_key_pair()));
        }
        let _ = avx2;
        Box::new(Self::Portable(portable::init_key_pair()))
    }
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

pub(super) fn keygen(avx2: bool, seed: &[u8; MLKEM_SEED_LEN]) -> (Box<KeyPair>, Box<PublicKey>) {
    let mut kp = KeyPair::empty(avx2);
    match &mut *kp {
        #[cfg(target_arch = "x86_64")]
        KeyPair::Avx2(k) => avx2::generate_key_pair_mut(*seed, k),
        KeyPair::Portable(k) => portable::generate_key_pair_mut(*seed, k),
    }
    let pk = Box::new(public_key_of(&kp));
    (kp, pk)
}

pub(super) fn from_expanded(
    avx2: bool,
    dk: &[u8; MLKEM768_DK_LEN],
) -> Option<(Box<KeyPair>, Box<PublicKey>)> {
    let mut private = Box::new(MlKemPrivateKey::from([0u8; MLKEM768_DK_LEN]));
    private[0..].copy_from_slice(dk);
    // FIPS 203 §7.3: the stored hash of the encapsulation key must match it,
    // and (as for any encapsulation key, §7.2) its coefficients must be below
    // q; libcrux checks the first only and would reduce the coefficients.
    let ek = MlKemPublicKey::from(
        <&[u8; MLKEM768_EK_LEN]>::try_from(&dk[DK_EK_AT..DK_EK_AT + MLKEM768_EK_LEN]).ok()?,
    );
    let valid = mlkem768::portable::validate_private_key_only(&private)
        && mlkem768::portable::validate_public_key(&ek);
    let kp = valid.then(|| {
        let mut kp = KeyPair::empty(avx2);
        match &mut *kp {
            #[cfg(target_arch = "x86_64")]
            KeyPair::Avx2(k) => avx2::key_pair_from_private_mut(&private, k),
            KeyPair::Portable(k) => portable::key_pair_from_private_mut(&private, k),
        }
        kp
    });
    private[0..].zeroize();
    let kp = kp?;
    let pk = Box::new(public_key_of(&kp));
    Some((kp, pk))
}

pub(super) fn ek_from_bytes(avx2: bool, bytes: &[u8; MLKEM768_EK_LEN]) -> Option<Box<PublicKey>> {
    let public = MlKemPublicKey::from(bytes);
    // FIPS 203 §7.2: every coefficient below q.
    if !mlkem768::portable::validate_public_key(&public) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        let mut pk = avx2::init_public_key();
        avx2::unpacked_public_key(&public, &mut pk);
        return Some(Box::new(PublicKey::Avx2(pk)));
    }
    let _ = avx2;
    let mut pk = portable::init_public_key();
    portable::unpacked_public_key(&public, &mut pk);
    Some(Box::new(PublicKey::Portable(pk)))
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
    let (ct, mut ss) = match pk {
        #[cfg(target_arch = "x86_64")]
        PublicKey::Avx2(pk) => avx2::encapsulate(pk, *m),
        PublicKey::Portable(pk) => portable::encapsulate(pk, *m),
    };
    let out = Zeroizing::new(ss);
    ss.zeroize();
    (Box::new(*ct.as_slice()), out)
}

pub(super) fn decapsulate(
    kp: &KeyPair,
    ct: &[u8; MLKEM768_CT_LEN],
) -> Zeroizing<[u8; MLKEM_SS_LEN]> {
    let ct = MlKemCiphertext::from(ct);
    let mut ss = match kp {
        #[cfg(target_arch = "x86_64")]
        KeyPair::Avx2(kp) => avx2::decapsulate(kp, &ct),
        KeyPair::Portable(kp) => portable::decapsulate(kp, &ct),
    };
    let out = Zeroizing::new(ss);
    ss.zeroize();
    out
}
