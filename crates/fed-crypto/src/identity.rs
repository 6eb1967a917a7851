//! Node identities: an Ed25519 key plus an optional ML-DSA-65 key, and hybrid signatures.
//!
//! A [`NodeId`] is `BLAKE3-derive(NODE_ID, canonical public encoding)`, so it commits
//! to both keys. A [`HybridSignature`] carries an Ed25519 part and, when the signer
//! has one, an ML-DSA-65 part; [`PublicIdentity::verify`] requires every part the
//! identity has keys for, so stripping the post-quantum part is detected.
//!
//! Signing inputs are domain separated: Ed25519 signs `len(label) as u8 ‖ label ‖ msg`,
//! ML-DSA-65 signs `msg` with FIPS 204 context string `label`. ML-DSA signing is the
//! FIPS 204 deterministic variant, so signing needs no RNG and stays sans-IO.

use ed25519_dalek::{Signer as _, SigningKey as EdSigningKey, VerifyingKey as EdVerifyingKey};
use ml_dsa::{
    EncodedVerifyingKey, KeyExport as _, Keypair as _, MlDsa65, SigningKey as MlDsaSigningKey,
    VerifyingKey as MlDsaVerifyingKey,
};
use rand_core::CryptoRng;
use zeroize::{Zeroize, Zeroizing};

use crate::{
    error::{Error, Result, check_len},
    kdf::{self, fingerprint, labels},
};

/// Length of an Ed25519 public key.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const ED25519_SIGNATURE_LEN: usize = 64;
/// Length of an ML-DSA-65 public key.
pub const ML_DSA_65_PUBLIC_KEY_LEN: usize = 1952;
/// Length of an ML-DSA-65 signature.
pub const ML_DSA_65_SIGNATURE_LEN: usize = 3309;
/// Longest [`PublicIdentity`] encoding.
pub const PUBLIC_IDENTITY_MAX_LEN: usize = 2 + ED25519_PUBLIC_KEY_LEN + ML_DSA_65_PUBLIC_KEY_LEN;
/// Longest [`HybridSignature`] encoding.
pub const HYBRID_SIGNATURE_MAX_LEN: usize = 1 + ED25519_SIGNATURE_LEN + ML_DSA_65_SIGNATURE_LEN;

const PUBLIC_IDENTITY_VERSION: u8 = 1;
const FLAG_ML_DSA: u8 = 0x01;

/// The hash of a node's public identity: its stable name in the federation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A node's secret identity. Zeroized on drop; `Debug` shows the node id only.
pub struct Identity {
    ed25519: EdSigningKey,
    ml_dsa: Option<Box<MlDsaSigningKey<MlDsa65>>>,
    public: PublicIdentity,
}

/// A node's public identity: what peers verify signatures against.
#[derive(Clone)]
pub struct PublicIdentity {
    ed25519: EdVerifyingKey,
    ml_dsa: Option<Box<MlDsaVerifyingKey<MlDsa65>>>,
    encoded: Vec<u8>,
    node_id: NodeId,
}

/// An Ed25519 signature, optionally joined by an ML-DSA-65 signature over the same message.
#[derive(Clone, PartialEq, Eq)]
pub struct HybridSignature {
    ed25519: [u8; ED25519_SIGNATURE_LEN],
    ml_dsa: Option<Box<[u8; ML_DSA_65_SIGNATURE_LEN]>>,
}

impl Identity {
    /// Generates a new identity; with `post_quantum` it also gets an ML-DSA-65 key.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R, post_quantum: bool) -> Self {
        let mut ed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(ed.as_mut());
        let ml = post_quantum.then(|| {
            let mut seed = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(seed.as_mut());
            seed
        });
        Self::from_seeds(&ed, ml.as_deref())
    }

    /// Rebuilds an identity from its Ed25519 secret key and optional ML-DSA-65 seed.
    pub fn from_seeds(ed25519: &[u8; 32], ml_dsa: Option<&[u8; 32]>) -> Self {
        let ed25519 = EdSigningKey::from_bytes(ed25519);
        let ml_dsa = ml_dsa.map(|seed| {
            let mut seed = ml_dsa::Seed::from(*seed);
            let key = Box::new(MlDsaSigningKey::<MlDsa65>::from_seed(&seed));
            seed.zeroize();
            key
        });
        let public = PublicIdentity::from_keys(
            ed25519.verifying_key(),
            ml_dsa.as_ref().map(|k| Box::new(k.verifying_key())),
        );
        Self {
            ed25519,
            ml_dsa,
            public,
        }
    }

    /// The public half.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// This identity's node id.
    pub fn node_id(&self) -> NodeId {
        self.public.node_id
    }

    /// Whether this identity has an ML-DSA-65 key.
    pub fn has_post_quantum(&self) -> bool {
        self.ml_dsa.is_some()
    }

    /// The Ed25519 secret key bytes, for building the node's libp2p keypair.
    ///
    /// The returned buffer is zeroized on drop; never log, print or persist it
    /// outside a key file.
    pub fn ed25519_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.ed25519.to_bytes())
    }

    /// The ML-DSA-65 seed, if any. Zeroized on drop; never log it.
    pub fn ml_dsa_seed(&self) -> Option<Zeroizing<[u8; 32]>> {
        self.ml_dsa.as_ref().map(|k| {
            let mut out = Zeroizing::new([0u8; 32]);
            let mut seed = k.to_seed();
            out.copy_from_slice(&seed);
            seed.zeroize();
            out
        })
    }

    /// Signs `msg` for the purpose `label` with every key this identity has.
    pub fn sign(&self, label: &str, msg: &[u8]) -> Result<HybridSignature> {
        let ed25519 = self.ed25519_part(label, msg)?;
        let ml_dsa = match &self.ml_dsa {
            None => None,
            Some(key) => {
                let sig = key
                    .expanded_key()
                    .sign_deterministic(msg, label.as_bytes())
                    .map_err(|_| Error::Signing("ML-DSA-65 rejected the context label"))?;
                let mut out = Box::new([0u8; ML_DSA_65_SIGNATURE_LEN]);
                out.copy_from_slice(&sig.encode());
                Some(out)
            }
        };
        Ok(HybridSignature { ed25519, ml_dsa })
    }

    /// Signs `msg` for `label` with the Ed25519 key only (classical authentication,
    /// for protocols that negotiated it).
    pub fn sign_ed25519(&self, label: &str, msg: &[u8]) -> Result<HybridSignature> {
        Ok(HybridSignature {
            ed25519: self.ed25519_part(label, msg)?,
            ml_dsa: None,
        })
    }

    fn ed25519_part(&self, label: &str, msg: &[u8]) -> Result<[u8; ED25519_SIGNATURE_LEN]> {
        let input = signing_input(label, msg)?;
        Ok(self.ed25519.sign(&input).to_bytes())
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identity({}, post_quantum: {})",
            self.public.node_id,
            self.has_post_quantum()
        )
    }
}

impl PublicIdentity {
    fn from_keys(ed25519: EdVerifyingKey, ml_dsa: Option<Box<MlDsaVerifyingKey<MlDsa65>>>) -> Self {
        let mut encoded = Vec::with_capacity(PUBLIC_IDENTITY_MAX_LEN);
        encoded.push(PUBLIC_IDENTITY_VERSION);
        encoded.push(if ml_dsa.is_some() { FLAG_ML_DSA } else { 0 });
        encoded.extend_from_slice(ed25519.as_bytes());
        if let Some(k) = &ml_dsa {
            encoded.extend_from_slice(&k.to_bytes());
        }
        let node_id = NodeId(kdf::hash(labels::NODE_ID, &[&encoded]));
        Self {
            ed25519,
            ml_dsa,
            encoded,
            node_id,
        }
    }

    /// Decodes the canonical encoding:
    /// `version (1) ‖ flags (1) ‖ Ed25519 key (32) ‖ [ML-DSA-65 key (1952) if flags & 1]`.
    ///
    /// Rejects unknown versions or flags, wrong lengths, Ed25519 keys that are not
    /// the canonical encoding of a point (crypto.md §3: `y < p`, and no sign bit on
    /// `x = 0`), and Ed25519 keys of small order.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (&version, rest) = bytes.split_first().ok_or(Error::InvalidLength {
            what: "public identity",
            expected: 2 + ED25519_PUBLIC_KEY_LEN,
            actual: 0,
        })?;
        if version != PUBLIC_IDENTITY_VERSION {
            return Err(Error::Unsupported {
                what: "public identity version",
                value: version.into(),
            });
        }
        let (&flags, rest) = rest.split_first().ok_or(Error::InvalidLength {
            what: "public identity",
            expected: 2 + ED25519_PUBLIC_KEY_LEN,
            actual: 1,
        })?;
        if flags & !FLAG_ML_DSA != 0 {
            return Err(Error::Unsupported {
                what: "public identity flags",
                value: flags.into(),
            });
        }
        let has_ml = flags & FLAG_ML_DSA != 0;
        let expected =
            2 + ED25519_PUBLIC_KEY_LEN + if has_ml { ML_DSA_65_PUBLIC_KEY_LEN } else { 0 };
        check_len("public identity", expected, bytes)?;
        let (ed, ml) = rest.split_at(ED25519_PUBLIC_KEY_LEN);
        let mut ed_bytes = [0u8; 32];
        ed_bytes.copy_from_slice(ed);
        let ed25519 = EdVerifyingKey::from_bytes(&ed_bytes)
            .map_err(|_| Error::InvalidPublicKey("Ed25519"))?;
        if ed25519.is_weak() {
            return Err(Error::InvalidPublicKey("Ed25519"));
        }
        // Decompression reduces `y` modulo p and ignores a sign bit on x = 0, so a
        // point can arrive under several encodings; signatures hash the key's bytes,
        // so only the canonical one is accepted (then equal keys have equal bytes).
        if ed25519.to_edwards().compress().as_bytes() != &ed_bytes {
            return Err(Error::InvalidPublicKey("Ed25519"));
        }
        let ml_dsa = if has_ml {
            let enc = EncodedVerifyingKey::<MlDsa65>::try_from(ml)
                .map_err(|_| Error::InvalidPublicKey("ML-DSA-65"))?;
            let key = MlDsaVerifyingKey::<MlDsa65>::decode(&enc);
            // pkDecode accepts any string of the right length; insist on the canonical one.
            if key.encode() != enc {
                return Err(Error::InvalidPublicKey("ML-DSA-65"));
            }
            Some(Box::new(key))
        } else {
            None
        };
        Ok(Self::from_keys(ed25519, ml_dsa))
    }

    /// The canonical encoding (see [`PublicIdentity::from_bytes`]).
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }

    /// The node id: BLAKE3 of the canonical encoding under the `NODE_ID` label.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The Ed25519 public key bytes (the node's libp2p public key).
    pub fn ed25519_bytes(&self) -> &[u8; 32] {
        self.ed25519.as_bytes()
    }

    /// Whether this identity has an ML-DSA-65 key.
    pub fn has_post_quantum(&self) -> bool {
        self.ml_dsa.is_some()
    }

    /// Verifies a signature made by [`Identity::sign`]: the Ed25519 part (strict
    /// verification) and, if this identity has an ML-DSA-65 key, the ML-DSA part,
    /// which must then be present. Both must verify.
    pub fn verify(&self, label: &str, msg: &[u8], sig: &HybridSignature) -> Result<()> {
        self.verify_ed25519(label, msg, sig)?;
        match (&self.ml_dsa, &sig.ml_dsa) {
            (None, None) => Ok(()),
            (None, Some(_)) | (Some(_), None) => Err(Error::BadSignature),
            (Some(key), Some(bytes)) => {
                let sig = ml_dsa::Signature::<MlDsa65>::try_from(&bytes[..])
                    .map_err(|_| Error::BadSignature)?;
                if key.verify_with_context(msg, label.as_bytes(), &sig) {
                    Ok(())
                } else {
                    Err(Error::BadSignature)
                }
            }
        }
    }

    /// Verifies only the Ed25519 part (for classical-authentication suites). An
    /// ML-DSA part, if present, is ignored.
    pub fn verify_ed25519(&self, label: &str, msg: &[u8], sig: &HybridSignature) -> Result<()> {
        let input = signing_input(label, msg)?;
        let ed = ed25519_dalek::Signature::from_bytes(&sig.ed25519);
        self.ed25519
            .verify_strict(&input, &ed)
            .map_err(|_| Error::BadSignature)
    }
}

impl PartialEq for PublicIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.encoded == other.encoded
    }
}

impl Eq for PublicIdentity {}

impl std::hash::Hash for PublicIdentity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.encoded.hash(state);
    }
}

impl std::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PublicIdentity({}, post_quantum: {})",
            self.node_id,
            self.has_post_quantum()
        )
    }
}

impl HybridSignature {
    /// Encodes as `flags (1) ‖ Ed25519 (64) ‖ [ML-DSA-65 (3309) if flags & 1]`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HYBRID_SIGNATURE_MAX_LEN);
        out.push(if self.ml_dsa.is_some() {
            FLAG_ML_DSA
        } else {
            0
        });
        out.extend_from_slice(&self.ed25519);
        if let Some(ml) = &self.ml_dsa {
            out.extend_from_slice(&ml[..]);
        }
        out
    }

    /// Decodes the encoding of [`HybridSignature::to_bytes`], checking flags and length exactly.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (&flags, rest) = bytes.split_first().ok_or(Error::InvalidLength {
            what: "hybrid signature",
            expected: 1 + ED25519_SIGNATURE_LEN,
            actual: 0,
        })?;
        if flags & !FLAG_ML_DSA != 0 {
            return Err(Error::Unsupported {
                what: "signature flags",
                value: flags.into(),
            });
        }
        let has_ml = flags & FLAG_ML_DSA != 0;
        let expected = 1 + ED25519_SIGNATURE_LEN + if has_ml { ML_DSA_65_SIGNATURE_LEN } else { 0 };
        check_len("hybrid signature", expected, bytes)?;
        let (ed, ml) = rest.split_at(ED25519_SIGNATURE_LEN);
        let mut ed25519 = [0u8; ED25519_SIGNATURE_LEN];
        ed25519.copy_from_slice(ed);
        let ml_dsa = has_ml.then(|| {
            let mut out = Box::new([0u8; ML_DSA_65_SIGNATURE_LEN]);
            out.copy_from_slice(ml);
            out
        });
        Ok(Self { ed25519, ml_dsa })
    }

    /// Whether the signature carries an ML-DSA-65 part.
    pub fn has_post_quantum(&self) -> bool {
        self.ml_dsa.is_some()
    }

    /// The same signature without its ML-DSA-65 part (what a classical-only peer keeps).
    pub fn without_post_quantum(&self) -> Self {
        Self {
            ed25519: self.ed25519,
            ml_dsa: None,
        }
    }
}

impl std::fmt::Debug for HybridSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HybridSignature({}, post_quantum: {})",
            fingerprint(&self.to_bytes()),
            self.has_post_quantum()
        )
    }
}

fn signing_input(label: &str, msg: &[u8]) -> Result<Vec<u8>> {
    let len =
        u8::try_from(label.len()).map_err(|_| Error::Signing("label longer than 255 bytes"))?;
    let mut input = Vec::with_capacity(1 + label.len() + msg.len());
    input.push(len);
    input.extend_from_slice(label.as_bytes());
    input.extend_from_slice(msg);
    Ok(input)
}
