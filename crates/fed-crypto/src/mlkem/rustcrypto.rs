//! The RustCrypto backend: the `ml-kem` crate, whose keys wipe themselves on
//! drop (its `zeroize` feature).

use ml_kem::{
    B32, Decapsulate, KeyExport,
    array::Array,
    ml_kem_768::{Ciphertext, DecapsulationKey, EncapsulationKey},
};
use zeroize::{Zeroize, Zeroizing};

use super::{MLKEM_SEED_LEN, MLKEM_SS_LEN, MLKEM768_CT_LEN, MLKEM768_DK_LEN, MLKEM768_EK_LEN};

pub(super) type Dk = DecapsulationKey;
pub(super) type Ek = EncapsulationKey;

pub(super) fn keygen(seed: &[u8; MLKEM_SEED_LEN]) -> (Box<Dk>, Box<Ek>) {
    let mut s = ml_kem::Seed::default();
    s.copy_from_slice(seed);
    let dk = Box::new(Dk::from_seed(s));
    s.zeroize();
    let ek = Box::new(dk.encapsulation_key().clone());
    (dk, ek)
}

pub(super) fn from_expanded(dk: &[u8; MLKEM768_DK_LEN]) -> Option<(Box<Dk>, Box<Ek>)> {
    let mut enc = Array::try_from(dk.as_slice()).ok()?;
    // `from_expanded` is deprecated in favour of seeds, but FIPS 203's
    // expanded form is what the ACVP vectors and other implementations use.
    #[allow(deprecated)]
    let dk = Dk::from_expanded(&enc).ok().map(Box::new);
    enc.zeroize();
    let dk = dk?;
    let ek = Box::new(dk.encapsulation_key().clone());
    Some((dk, ek))
}

pub(super) fn ek_from_bytes(bytes: &[u8; MLKEM768_EK_LEN]) -> Option<Box<Ek>> {
    let key = Array::try_from(bytes.as_slice()).ok()?;
    Ek::new(&key).ok().map(Box::new)
}

pub(super) fn ek_bytes(ek: &Ek) -> [u8; MLKEM768_EK_LEN] {
    let mut out = [0u8; MLKEM768_EK_LEN];
    out.copy_from_slice(&ek.to_bytes());
    out
}

pub(super) fn encapsulate(
    ek: &Ek,
    m: &[u8; 32],
) -> (Box<[u8; MLKEM768_CT_LEN]>, Zeroizing<[u8; MLKEM_SS_LEN]>) {
    let mut msg = B32::default();
    msg.copy_from_slice(m);
    let (ct, mut ss) = ek.encapsulate_deterministic(&msg);
    msg.zeroize();
    let mut out = Zeroizing::new([0u8; MLKEM_SS_LEN]);
    out.copy_from_slice(&ss);
    ss.zeroize();
    let mut c = Box::new([0u8; MLKEM768_CT_LEN]);
    c.copy_from_slice(&ct);
    (c, out)
}

pub(super) fn decapsulate(dk: &Dk, ct: &[u8; MLKEM768_CT_LEN]) -> Zeroizing<[u8; MLKEM_SS_LEN]> {
    let ct: Ciphertext = Array::try_from(ct.as_slice()).unwrap_or_default();
    let mut ss = dk.decapsulate(&ct);
    let mut out = Zeroizing::new([0u8; MLKEM_SS_LEN]);
    out.copy_from_slice(&ss);
    ss.zeroize();
    out
}
