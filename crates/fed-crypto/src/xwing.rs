//! X-Wing: the hybrid X25519 + ML-KEM-768 KEM of draft-connolly-cfrg-xwing-kem.
//!
//! Built from ML-KEM-768 (either backend of [`crate::mlkem`]), `x25519-dalek`
//! and `sha3`, byte-compatible with the draft's published vectors. Unlike the
//! `x-wing` crate, an [`XWingSecretKey`] keeps its expanded form (the ML-KEM
//! decapsulation key and the X25519 scalar) so that decapsulation does not re-run
//! SHAKE256 and ML-KEM key generation.
//!
//! Encodings (all fixed length, checked exactly on decode):
//! - secret key: the 32-byte seed;
//! - public key (1216 bytes): ML-KEM-768 encapsulation key (1184) ‖ X25519 public key (32);
//! - ciphertext (1120 bytes): ML-KEM-768 ciphertext (1088) ‖ X25519 ephemeral public key (32);
//! - shared secret (32 bytes): SHA3-256(ss_M ‖ ss_X ‖ ct_X ‖ pk_X ‖ `\.//^\`).
//!
//! The all-zero X25519 output (a low-order `pk_X` or `ct_X`) is not rejected, as in the
//! draft: the combiner still binds the ML-KEM secret, which alone keeps the result secret.

use rand_core::CryptoRng;
use sha3::{Digest, Sha3_256};
use shake::{ExtendableOutput, Shake256, Update, XofReader};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{
    error::{Result, check_len},
    kdf::fingerprint,
    mlkem::{
        KemBackend, MLKEM768_CT_LEN as MLKEM_CT_LEN, MLKEM768_EK_LEN as MLKEM_EK_LEN,
        MlKemDecapsulationKey as MlKemDk, MlKemEncapsulationKey as MlKemEk,
    },
};

/// Length of an encoded X-Wing secret key (the seed).
pub const XWING_SECRET_KEY_LEN: usize = 32;
/// Length of an encoded X-Wing public key.
pub const XWING_PUBLIC_KEY_LEN: usize = MLKEM_EK_LEN + 32;
/// Length of an X-Wing ciphertext.
pub const XWING_CIPHERTEXT_LEN: usize = MLKEM_CT_LEN + 32;
/// Length of an X-Wing shared secret.
pub const XWING_SHARED_SECRET_LEN: usize = 32;
/// Length of the randomness consumed by one encapsulation.
pub const XWING_ENCAPS_SEED_LEN: usize = 64;

/// The X-Wing combiner label, the six ASCII bytes `\.//^\`.
const XWING_LABEL: &[u8; 6] = b"\\.//^\\";

/// An X-Wing decapsulation key: the 32-byte seed plus its cached expansion.
///
/// Zeroized on drop. `Debug` shows the public key's fingerprint only.
pub struct XWingSecretKey {
    seed: Zeroizing<[u8; 32]>,
    dk_m: MlKemDk,
    sk_x: StaticSecret,
    pk: XWingPublicKey,
}

/// An X-Wing encapsulation key.
#[derive(Clone)]
pub struct XWingPublicKey {
    ek_m: MlKemEk,
    pk_x: X25519Public,
    bytes: Box<[u8; XWING_PUBLIC_KEY_LEN]>,
}

/// An X-Wing ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct XWingCiphertext(Box<[u8; XWING_CIPHERTEXT_LEN]>);

/// The 32-byte secret agreed by an X-Wing encapsulation; zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct XWingSharedSecret([u8; XWING_SHARED_SECRET_LEN]);

impl XWingSecretKey {
    /// Generates a fresh key pair from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// Derives the key pair from a 32-byte seed (the draft's `GenerateKeyPairDerand`),
    /// with the current ML-KEM backend ([`KemBackend::current`]).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_seed_with(seed, KemBackend::current())
    }

    /// [`from_seed`](Self::from_seed) with the given ML-KEM backend. Every
    /// backend derives the same key.
    pub fn from_seed_with(seed: &[u8; 32], backend: KemBackend) -> Self {
        let mut expanded = Zeroizing::new([0u8; 96]);
        let mut shake = Shake256::default();
        shake.update(seed);
        shake.finalize_xof().read(expanded.as_mut());

        let mut mlkem_seed = Zeroizing::new([0u8; 64]);
        mlkem_seed.copy_from_slice(&expanded[..64]);
        let dk_m = MlKemDk::from_seed(backend, &mlkem_seed);
        let mut sk_x_bytes = Zeroizing::new([0u8; 32]);
        sk_x_bytes.copy_from_slice(&expanded[64..96]);
        let sk_x = StaticSecret::from(*sk_x_bytes);

        let ek_m = dk_m.encapsulation_key().clone();
        let pk_x = X25519Public::from(&sk_x);
        let pk = XWingPublicKey::from_parts(ek_m, pk_x);
        Self {
            seed: Zeroizing::new(*seed),
            dk_m,
            sk_x,
            pk,
        }
    }

    /// Decodes a secret key (its 32-byte seed).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        check_len("X-Wing secret key", XWING_SECRET_KEY_LEN, bytes)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(bytes);
        Ok(Self::from_seed(&seed))
    }

    /// The seed, which is the whole secret key. Never log or print it.
    pub fn to_bytes(&self) -> Zeroizing<[u8; XWING_SECRET_KEY_LEN]> {
        self.seed.clone()
    }

    /// The matching public key.
    pub fn public_key(&self) -> &XWingPublicKey {
        &self.pk
    }

    /// Recovers the shared secret from a ciphertext (the draft's `Decapsulate`).
    ///
    /// Never fails: a ciphertext that was tampered with yields an unrelated secret
    /// (ML-KEM's implicit rejection), which the protocol above detects when its
    /// first authenticated message does not open.
    pub fn decapsulate(&self, ct: &XWingCiphertext) -> XWingSharedSecret {
        let (ct_m_bytes, ct_x_bytes) = ct.0.split_at(MLKEM_CT_LEN);
        let mut ct_m = [0u8; MLKEM_CT_LEN];
        ct_m.copy_from_slice(ct_m_bytes);
        let ss_m = self.dk_m.decapsulate(&ct_m);
        let mut ct_x = [0u8; 32];
        ct_x.copy_from_slice(ct_x_bytes);
        let ss_x = self.sk_x.diffie_hellman(&X25519Public::from(ct_x));
        combine(&*ss_m, ss_x.as_bytes(), &ct_x, self.pk.pk_x.as_bytes())
    }

    /// The ML-KEM backend of this key.
    pub fn backend(&self) -> KemBackend {
        self.dk_m.backend()
    }
}

impl std::fmt::Debug for XWingSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XWingSecretKey(pk {})", fingerprint(self.pk.as_bytes()))
    }
}

impl XWingPublicKey {
    fn from_parts(ek_m: MlKemEk, pk_x: X25519Public) -> Self {
        let mut bytes = Box::new([0u8; XWING_PUBLIC_KEY_LEN]);
        bytes[..MLKEM_EK_LEN].copy_from_slice(ek_m.as_bytes());
        bytes[MLKEM_EK_LEN..].copy_from_slice(pk_x.as_bytes());
        Self { ek_m, pk_x, bytes }
    }

    /// Decodes a public key: exactly 1216 bytes, with an ML-KEM part that passes the
    /// FIPS 203 modulus check; for the current ML-KEM backend.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_with(bytes, KemBackend::current())
    }

    /// [`from_bytes`](Self::from_bytes) with the given ML-KEM backend.
    pub fn from_bytes_with(bytes: &[u8], backend: KemBackend) -> Result<Self> {
        check_len("X-Wing public key", XWING_PUBLIC_KEY_LEN, bytes)?;
        let (m, x) = bytes.split_at(MLKEM_EK_LEN);
        let ek_m = MlKemEk::from_bytes(backend, m)?;
        let mut pk_x = [0u8; 32];
        pk_x.copy_from_slice(x);
        Ok(Self::from_parts(ek_m, X25519Public::from(pk_x)))
    }

    /// The 1216-byte encoding.
    pub fn as_bytes(&self) -> &[u8; XWING_PUBLIC_KEY_LEN] {
        &self.bytes
    }

    /// Encapsulates a fresh shared secret to this key.
    pub fn encapsulate<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> (XWingCiphertext, XWingSharedSecret) {
        let mut eseed = Zeroizing::new([0u8; XWING_ENCAPS_SEED_LEN]);
        rng.fill_bytes(eseed.as_mut());
        self.encapsulate_derand(&eseed)
    }

    /// Encapsulates with caller-supplied randomness (the draft's `EncapsulateDerand`):
    /// `eseed[..32]` is the ML-KEM message, `eseed[32..]` the X25519 ephemeral secret.
    ///
    /// For test vectors and deterministic tests only: reusing an `eseed` with the
    /// same key repeats the shared secret.
    pub fn encapsulate_derand(
        &self,
        eseed: &[u8; XWING_ENCAPS_SEED_LEN],
    ) -> (XWingCiphertext, XWingSharedSecret) {
        let mut m = Zeroizing::new([0u8; 32]);
        m.copy_from_slice(&eseed[..32]);
        let (ct_m, ss_m) = self.ek_m.encapsulate_derand(&m);
        let mut ek_bytes = Zeroizing::new([0u8; 32]);
        ek_bytes.copy_from_slice(&eseed[32..]);
        let ek_x = StaticSecret::from(*ek_bytes);
        let ct_x = X25519Public::from(&ek_x);
        let ss_x = ek_x.diffie_hellman(&self.pk_x);
        let ss = combine(
            &*ss_m,
            ss_x.as_bytes(),
            ct_x.as_bytes(),
            self.pk_x.as_bytes(),
        );
        let mut ct = Box::new([0u8; XWING_CIPHERTEXT_LEN]);
        ct[..MLKEM_CT_LEN].copy_from_slice(&ct_m[..]);
        ct[MLKEM_CT_LEN..].copy_from_slice(ct_x.as_bytes());
        (XWingCiphertext(ct), ss)
    }
}

impl PartialEq for XWingPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for XWingPublicKey {}

impl std::fmt::Debug for XWingPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XWingPublicKey({})", fingerprint(self.as_bytes()))
    }
}

impl XWingCiphertext {
    /// Decodes a ciphertext: exactly 1120 bytes. Any such string is accepted; a
    /// forged one decapsulates to an unrelated secret.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        check_len("X-Wing ciphertext", XWING_CIPHERTEXT_LEN, bytes)?;
        let mut ct = Box::new([0u8; XWING_CIPHERTEXT_LEN]);
        ct.copy_from_slice(bytes);
        Ok(Self(ct))
    }

    /// The 1120-byte encoding.
    pub fn as_bytes(&self) -> &[u8; XWING_CIPHERTEXT_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for XWingCiphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XWingCiphertext({})", fingerprint(self.as_bytes()))
    }
}

impl XWingSharedSecret {
    /// The secret bytes. Feed them to a KDF; never log them.
    pub fn as_bytes(&self) -> &[u8; XWING_SHARED_SECRET_LEN] {
        &self.0
    }
}

impl PartialEq for XWingSharedSecret {
    fn eq(&self, other: &Self) -> bool {
        crate::kdf::ct_eq(&self.0, &other.0)
    }
}

impl Eq for XWingSharedSecret {}

impl std::fmt::Debug for XWingSharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XWingSharedSecret(<redacted>)")
    }
}

fn combine(ss_m: &[u8], ss_x: &[u8; 32], ct_x: &[u8; 32], pk_x: &[u8; 32]) -> XWingSharedSecret {
    let mut h = Sha3_256::new();
    Digest::update(&mut h, ss_m);
    Digest::update(&mut h, ss_x);
    Digest::update(&mut h, ct_x);
    Digest::update(&mut h, pk_x);
    Digest::update(&mut h, XWING_LABEL);
    // Finalized in place: no copy of the secret left behind (the hasher's state is
    // wiped on drop by sha3's `zeroize` feature).
    let mut out = sha3::digest::Output::<Sha3_256>::default();
    Digest::finalize_into(h, &mut out);
    XWingSharedSecret(out.into())
}

impl XWingPublicKey {
    /// The ML-KEM backend of this key.
    pub fn backend(&self) -> KemBackend {
        self.ek_m.backend()
    }
}
