//! ML-KEM-768 (FIPS 203), the post-quantum half of X-Wing, from a choice of
//! backends.
//!
//! Two implementations of the same standard sit behind one set of types, in the
//! manner of rustls's `CryptoProvider`:
//!
//! - [`KemBackend::RustCrypto`]: RustCrypto's `ml-kem`, portable Rust. Always
//!   built; the default unless the `fast-kem` feature is on.
//! - `KemBackend::Libcrux` (feature `fast-kem`): Cryspen's `libcrux-ml-kem`,
//!   formally verified, with AVX2 code chosen at run time on x86-64 CPUs that
//!   have it and portable code elsewhere. The default when the feature is on.
//!   `KemBackend::LibcruxPortable` is the same library held to its portable
//!   code on every CPU (for comparison, and so that tests cover that code).
//!
//! Both produce and accept the same bytes (FIPS 203 encodings), so a key made
//! by one backend decapsulates what the other encapsulated; a property test
//! checks it. Keys remember the backend that made them; the process-wide
//! default ([`KemBackend::set_default`]) only chooses the backend of keys made
//! afterwards, by [`crate::XWingSecretKey::from_seed`] and
//! [`crate::XWingPublicKey::from_bytes`] among others.
//!
//! Decapsulation keys keep their expanded form (the matrix and the secret
//! vector in the NTT domain), so decapsulation does not redo key generation.
//! Secret state is wiped on drop with either backend.

mod rustcrypto;

#[cfg(feature = "fast-kem")]
mod libcrux;

use std::sync::atomic::{AtomicU8, Ordering};

use zeroize::Zeroizing;

use crate::error::{Error, Result, check_len};

/// Length of an ML-KEM-768 encapsulation (public) key.
pub const MLKEM768_EK_LEN: usize = 1184;
/// Length of an ML-KEM-768 decapsulation key in FIPS 203's expanded encoding.
pub const MLKEM768_DK_LEN: usize = 2400;
/// Length of an ML-KEM-768 ciphertext.
pub const MLKEM768_CT_LEN: usize = 1088;
/// Length of an ML-KEM shared secret.
pub const MLKEM_SS_LEN: usize = 32;
/// Length of the key-generation seed `d ‖ z`.
pub const MLKEM_SEED_LEN: usize = 64;

/// An implementation of ML-KEM-768.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KemBackend {
    /// RustCrypto's `ml-kem` crate (portable Rust).
    RustCrypto,
    /// Cryspen's `libcrux-ml-kem` (formally verified; AVX2 when the CPU has it).
    #[cfg(feature = "fast-kem")]
    Libcrux,
    /// `libcrux-ml-kem`'s portable code, whatever the CPU.
    #[cfg(feature = "fast-kem")]
    LibcruxPortable,
}

/// 0: not set (the build's default); otherwise 1 + the backend's index.
static DEFAULT: AtomicU8 = AtomicU8::new(0);

impl KemBackend {
    /// The build's default: `KemBackend::Libcrux` with the `fast-kem` feature,
    /// [`KemBackend::RustCrypto`] without.
    pub const BUILD_DEFAULT: Self = {
        #[cfg(feature = "fast-kem")]
        {
            Self::Libcrux
        }
        #[cfg(not(feature = "fast-kem"))]
        {
            Self::RustCrypto
        }
    };

    /// Every backend in this build.
    pub const ALL: &'static [Self] = &[
        Self::RustCrypto,
        #[cfg(feature = "fast-kem")]
        Self::Libcrux,
        #[cfg(feature = "fast-kem")]
        Self::LibcruxPortable,
    ];

    /// The backend that keys made from now on use: the last one given to
    /// [`set_default`](Self::set_default), or [`BUILD_DEFAULT`](Self::BUILD_DEFAULT).
    pub fn current() -> Self {
        match DEFAULT.load(Ordering::Relaxed) {
            0 => Self::BUILD_DEFAULT,
            n => Self::ALL
                .get(usize::from(n - 1))
                .copied()
                .unwrap_or(Self::BUILD_DEFAULT),
        }
    }

    /// Makes `self` the backend of keys made from now on, process-wide. Keys
    /// already made keep theirs; keys of both backends interoperate.
    pub fn set_default(self) {
        let index = Self::ALL.iter().position(|b| *b == self).unwrap_or(0);
        let n = u8::try_from(index + 1).unwrap_or(1);
        DEFAULT.store(n, Ordering::Relaxed);
    }

    /// A short name: `rustcrypto`, `libcrux-avx2` (`libcrux` where this CPU
    /// has no AVX2, which then runs the portable code) or `libcrux-portable`.
    pub fn name(self) -> &'static str {
        match self {
            Self::RustCrypto => "rustcrypto",
            #[cfg(feature = "fast-kem")]
            Self::Libcrux if libcrux::avx2_available() => "libcrux-avx2",
            #[cfg(feature = "fast-kem")]
            Self::Libcrux => "libcrux",
            #[cfg(feature = "fast-kem")]
            Self::LibcruxPortable => "libcrux-portable",
        }
    }

    /// For the libcrux backends: whether keys run libcrux's AVX2 code.
    #[cfg(feature = "fast-kem")]
    fn libcrux_avx2(self) -> bool {
        self == Self::Libcrux && libcrux::avx2_available()
    }
}

impl Default for KemBackend {
    /// [`BUILD_DEFAULT`](Self::BUILD_DEFAULT), whatever [`set_default`](Self::set_default)
    /// chose: a plain value, not the process-wide setting.
    fn default() -> Self {
        Self::BUILD_DEFAULT
    }
}

/// An ML-KEM-768 decapsulation key, expanded, of one backend. Wiped on drop;
/// `Debug` names the backend only.
pub struct MlKemDecapsulationKey {
    inner: Dk,
    ek: MlKemEncapsulationKey,
}

enum Dk {
    RustCrypto(Box<rustcrypto::Dk>),
    #[cfg(feature = "fast-kem")]
    Libcrux(Box<libcrux::KeyPair>, KemBackend),
}

/// An ML-KEM-768 encapsulation key of one backend, with its encoding.
#[derive(Clone)]
pub struct MlKemEncapsulationKey {
    inner: Ek,
    bytes: Box<[u8; MLKEM768_EK_LEN]>,
}

#[derive(Clone)]
enum Ek {
    RustCrypto(Box<rustcrypto::Ek>),
    #[cfg(feature = "fast-kem")]
    Libcrux(Box<libcrux::PublicKey>, KemBackend),
}

impl MlKemDecapsulationKey {
    /// FIPS 203 `ML-KEM.KeyGen_internal(d, z)` with `seed = d ‖ z`.
    pub fn from_seed(backend: KemBackend, seed: &[u8; MLKEM_SEED_LEN]) -> Self {
        match backend {
            KemBackend::RustCrypto => {
                let (dk, ek) = rustcrypto::keygen(seed);
                Self::assemble(Dk::RustCrypto(dk), Ek::RustCrypto(ek))
            }
            #[cfg(feature = "fast-kem")]
            KemBackend::Libcrux | KemBackend::LibcruxPortable => {
                let (kp, pk) = libcrux::keygen(backend.libcrux_avx2(), seed);
                Self::assemble(Dk::Libcrux(kp, backend), Ek::Libcrux(pk, backend))
            }
        }
    }

    /// Decodes FIPS 203's 2400-byte expanded decapsulation key, checking the
    /// hash of the encapsulation key it holds (FIPS 203 §7.3).
    pub fn from_expanded(backend: KemBackend, dk: &[u8]) -> Result<Self> {
        check_len("ML-KEM-768 decapsulation key", MLKEM768_DK_LEN, dk)?;
        let mut bytes = Zeroizing::new([0u8; MLKEM768_DK_LEN]);
        bytes.copy_from_slice(dk);
        let invalid = Error::InvalidSecretKey("ML-KEM-768");
        match backend {
            KemBackend::RustCrypto => {
                let (dk, ek) = rustcrypto::from_expanded(&bytes).ok_or(invalid)?;
                Ok(Self::assemble(Dk::RustCrypto(dk), Ek::RustCrypto(ek)))
            }
            #[cfg(feature = "fast-kem")]
            KemBackend::Libcrux | KemBackend::LibcruxPortable => {
                let (kp, pk) =
                    libcrux::from_expanded(backend.libcrux_avx2(), &bytes).ok_or(invalid)?;
                Ok(Self::assemble(
                    Dk::Libcrux(kp, backend),
                    Ek::Libcrux(pk, backend),
                ))
            }
        }
    }

    fn assemble(inner: Dk, ek: Ek) -> Self {
        let bytes = Box::new(match &ek {
            Ek::RustCrypto(ek) => rustcrypto::ek_bytes(ek),
            #[cfg(feature = "fast-kem")]
            Ek::Libcrux(pk, _) => libcrux::ek_bytes(pk),
        });
        Self {
            inner,
            ek: MlKemEncapsulationKey { inner: ek, bytes },
        }
    }

    /// The matching encapsulation key.
    pub fn encapsulation_key(&self) -> &MlKemEncapsulationKey {
        &self.ek
    }

    /// FIPS 203 `ML-KEM.Decaps`. Never fails: a ciphertext that was tampered
    /// with yields an unrelated secret (implicit rejection).
    pub fn decapsulate(&self, ct: &[u8; MLKEM768_CT_LEN]) -> Zeroizing<[u8; MLKEM_SS_LEN]> {
        match &self.inner {
            Dk::RustCrypto(dk) => rustcrypto::decapsulate(dk, ct),
            #[cfg(feature = "fast-kem")]
            Dk::Libcrux(kp, _) => libcrux::decapsulate(kp, ct),
        }
    }

    /// The backend this key belongs to.
    pub fn backend(&self) -> KemBackend {
        match self.inner {
            Dk::RustCrypto(_) => KemBackend::RustCrypto,
            #[cfg(feature = "fast-kem")]
            Dk::Libcrux(_, backend) => backend,
        }
    }
}

impl std::fmt::Debug for MlKemDecapsulationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MlKemDecapsulationKey({})", self.backend().name())
    }
}

impl MlKemEncapsulationKey {
    /// Decodes a 1184-byte encapsulation key, with FIPS 203's modulus check
    /// (every coefficient below q).
    pub fn from_bytes(backend: KemBackend, bytes: &[u8]) -> Result<Self> {
        check_len("ML-KEM-768 encapsulation key", MLKEM768_EK_LEN, bytes)?;
        let mut ek = Box::new([0u8; MLKEM768_EK_LEN]);
        ek.copy_from_slice(bytes);
        let invalid = Error::InvalidPublicKey("ML-KEM-768");
        let inner = match backend {
            KemBackend::RustCrypto => {
                Ek::RustCrypto(rustcrypto::ek_from_bytes(&ek).ok_or(invalid)?)
            }
            #[cfg(feature = "fast-kem")]
            KemBackend::Libcrux | KemBackend::LibcruxPortable => Ek::Libcrux(
                libcrux::ek_from_bytes(backend.libcrux_avx2(), &ek).ok_or(invalid)?,
                backend,
            ),
        };
        Ok(Self { inner, bytes: ek })
    }

    /// The 1184-byte encoding.
    pub fn as_bytes(&self) -> &[u8; MLKEM768_EK_LEN] {
        &self.bytes
    }

    /// FIPS 203 `ML-KEM.Encaps_internal(ek, m)`: the ciphertext and the shared
    /// secret for the message `m`, which must be fresh randomness (reusing it
    /// repeats the secret).
    pub fn encapsulate_derand(
        &self,
        m: &[u8; 32],
    ) -> (Box<[u8; MLKEM768_CT_LEN]>, Zeroizing<[u8; MLKEM_SS_LEN]>) {
        match &self.inner {
            Ek::RustCrypto(ek) => rustcrypto::encapsulate(ek, m),
            #[cfg(feature = "fast-kem")]
            Ek::Libcrux(pk, _) => libcrux::encapsulate(pk, m),
        }
    }

    /// The backend this key belongs to.
    pub fn backend(&self) -> KemBackend {
        match self.inner {
            Ek::RustCrypto(_) => KemBackend::RustCrypto,
            #[cfg(feature = "fast-kem")]
            Ek::Libcrux(_, backend) => backend,
        }
    }
}

impl PartialEq for MlKemEncapsulationKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for MlKemEncapsulationKey {}

impl std::fmt::Debug for MlKemEncapsulationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MlKemEncapsulationKey({}, {})",
            self.backend().name(),
            crate::kdf::fingerprint(self.as_bytes())
        )
    }
}
