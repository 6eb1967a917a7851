//! Onion keys and their certificates.
//!
//! A relay holds one X-Wing key pair per epoch. The public half is published in an
//! [`OnionKeyCertificate`] signed by the relay's identity key: it names the node, the
//! epoch, the validity window and whether the node relays for others. Packets name
//! the epoch of the key they were built for; a relay holds its current and previous
//! epoch's keys and refuses any other, and `now` decides when a key has expired.

use fed_crypto::{
    HYBRID_SIGNATURE_MAX_LEN, HybridSignature, Identity, NodeId, PUBLIC_IDENTITY_MAX_LEN,
    PublicIdentity, XWING_PUBLIC_KEY_LEN, XWingPublicKey, XWingSecretKey, Zeroizing,
};
use rand_core::CryptoRng;

use crate::{
    error::{Error, Result},
    labels,
};

/// Certificate format version.
const CERT_VERSION: u8 = 1;
const FLAG_RELAY: u8 = 0x01;
/// Offset of the onion public key in a certificate.
const OFF_KEY: usize = 26;
/// Offset of the identity length field.
const OFF_ID_LEN: usize = OFF_KEY + XWING_PUBLIC_KEY_LEN;

/// The longest certificate encoding: a post-quantum identity and hybrid signature.
pub const MAX_CERTIFICATE_LEN: usize =
    OFF_ID_LEN + 2 + PUBLIC_IDENTITY_MAX_LEN + 2 + HYBRID_SIGNATURE_MAX_LEN;

/// When an onion key is valid: its epoch number and a window of Unix milliseconds,
/// `not_before_ms` inclusive, `not_after_ms` exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyEpoch {
    /// The epoch number: strictly increasing from one key of a relay to the next.
    pub epoch: u64,
    /// Start of validity, Unix milliseconds.
    pub not_before_ms: u64,
    /// End of validity (exclusive), Unix milliseconds.
    pub not_after_ms: u64,
}

impl KeyEpoch {
    /// Whether `now_ms` lies in `[not_before_ms, not_after_ms)`.
    pub fn is_valid_at(&self, now_ms: u64) -> bool {
        self.not_before_ms <= now_ms && now_ms < self.not_after_ms
    }
}

/// A relay's signed onion public key for one epoch.
///
/// A value of this type has always been verified: [`from_bytes`](Self::from_bytes)
/// checks the encoding and the identity's signature, and [`OnionKey`] makes only
/// correctly signed ones. Encoding (all integers big-endian):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | version = 1 |
/// | 1 | 1 | flags: bit 0 = relays for others; other bits 0 |
/// | 2 | 8 | epoch |
/// | 10 | 8 | not before, Unix ms |
/// | 18 | 8 | not after (exclusive), Unix ms |
/// | 26 | 1216 | X-Wing public key |
/// | 1242 | 2 | `n`, length of the public identity |
/// | 1244 | n | public identity (`fed-crypto` encoding) |
/// | 1244+n | 2 | `m`, length of the signature |
/// | 1246+n | m | hybrid signature over bytes `0 .. 1244+n`, label `KEY_CERTIFICATE` |
#[derive(Clone)]
pub struct OnionKeyCertificate {
    identity: PublicIdentity,
    relay: bool,
    validity: KeyEpoch,
    onion_key: XWingPublicKey,
    encoded: Vec<u8>,
}

impl OnionKeyCertificate {
    fn signed_part(
        identity: &PublicIdentity,
        relay: bool,
        validity: &KeyEpoch,
        onion_key: &XWingPublicKey,
    ) -> Result<Vec<u8>> {
        let id = identity.as_bytes();
        let id_len = u16::try_from(id.len()).map_err(|_| Error::Malformed("identity length"))?;
        let mut out = Vec::with_capacity(MAX_CERTIFICATE_LEN);
        out.push(CERT_VERSION);
        out.push(if relay { FLAG_RELAY } else { 0 });
        out.extend_from_slice(&validity.epoch.to_be_bytes());
        out.extend_from_slice(&validity.not_before_ms.to_be_bytes());
        out.extend_from_slice(&validity.not_after_ms.to_be_bytes());
        out.extend_from_slice(onion_key.as_bytes());
        out.extend_from_slice(&id_len.to_be_bytes());
        out.extend_from_slice(id);
        Ok(out)
    }

    fn sign(
        identity: &Identity,
        relay: bool,
        validity: KeyEpoch,
        onion_key: XWingPublicKey,
    ) -> Result<Self> {
        if validity.not_before_ms >= validity.not_after_ms {
            return Err(Error::Malformed(
                "key epoch: validity ends before it starts",
            ));
        }
        let mut encoded = Self::signed_part(identity.public(), relay, &validity, &onion_key)?;
        let sig = identity.sign(labels::KEY_CERTIFICATE, &encoded)?.to_bytes();
        let sig_len = u16::try_from(sig.len()).map_err(|_| Error::Malformed("signature length"))?;
        encoded.extend_from_slice(&sig_len.to_be_bytes());
        encoded.extend_from_slice(&sig);
        Ok(Self {
            identity: identity.public().clone(),
            relay,
            validity,
            onion_key,
            encoded,
        })
    }

    /// Decodes a certificate and verifies its signature against the identity it names.
    ///
    /// Inputs longer than [`MAX_CERTIFICATE_LEN`] are rejected unread.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_CERTIFICATE_LEN {
            return Err(Error::TooLarge {
                what: "onion key certificate",
                len: bytes.len(),
                max: MAX_CERTIFICATE_LEN,
            });
        }
        let short = || Error::InvalidLength {
            what: "onion key certificate",
            expected: OFF_ID_LEN + 2,
            actual: bytes.len(),
        };
        let fixed = bytes.get(..OFF_ID_LEN + 2).ok_or_else(short)?;
        if fixed[0] != CERT_VERSION {
            return Err(Error::Unsupported {
                what: "certificate version",
                value: u64::from(fixed[0]),
            });
        }
        if fixed[1] & !FLAG_RELAY != 0 {
            return Err(Error::Unsupported {
                what: "certificate flags",
                value: u64::from(fixed[1]),
            });
        }
        let relay = fixed[1] & FLAG_RELAY != 0;
        let be64 = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&fixed[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let validity = KeyEpoch {
            epoch: be64(2),
            not_before_ms: be64(10),
            not_after_ms: be64(18),
        };
        if validity.not_before_ms >= validity.not_after_ms {
            return Err(Error::Malformed(
                "certificate: validity ends before it starts",
            ));
        }
        let onion_key = XWingPublicKey::from_bytes(&fixed[OFF_KEY..OFF_ID_LEN])?;
        let id_len = usize::from(u16::from_be_bytes([
            fixed[OFF_ID_LEN],
            fixed[OFF_ID_LEN + 1],
        ]));
        let id_start = OFF_ID_LEN + 2;
        let id_end = id_start + id_len;
        let id_bytes = bytes.get(id_start..id_end).ok_or(Error::InvalidLength {
            what: "onion key certificate",
            expected: id_end + 2,
            actual: bytes.len(),
        })?;
        let identity = PublicIdentity::from_bytes(id_bytes)?;
        let sig_len_bytes = bytes.get(id_end..id_end + 2).ok_or(Error::InvalidLength {
            what: "onion key certificate",
            expected: id_end + 2,
            actual: bytes.len(),
        })?;
        let sig_len = usize::from(u16::from_be_bytes([sig_len_bytes[0], sig_len_bytes[1]]));
        let sig_start = id_end + 2;
        let total = sig_start + sig_len;
        if bytes.len() != total {
            return Err(Error::InvalidLength {
                what: "onion key certificate",
                expected: total,
                actual: bytes.len(),
            });
        }
        let signature = HybridSignature::from_bytes(&bytes[sig_start..])?;
        identity.verify(labels::KEY_CERTIFICATE, &bytes[..id_end], &signature)?;
        Ok(Self {
            identity,
            relay,
            validity,
            onion_key,
            encoded: bytes.to_vec(),
        })
    }

    /// The encoding, as signed and published.
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }

    /// The node whose key this is.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// The node's public identity, which signed the certificate.
    pub fn identity(&self) -> &PublicIdentity {
        &self.identity
    }

    /// Whether the node offers to relay packets for others. Path selection picks
    /// only such nodes as relays; any node with a certificate can be a destination.
    pub fn is_relay(&self) -> bool {
        self.relay
    }

    /// The epoch number and validity window.
    pub fn epoch(&self) -> KeyEpoch {
        self.validity
    }

    /// Whether the key is valid at `now_ms` (Unix milliseconds).
    pub fn is_valid_at(&self, now_ms: u64) -> bool {
        self.validity.is_valid_at(now_ms)
    }

    /// The X-Wing public key packets are encapsulated to.
    pub fn onion_key(&self) -> &XWingPublicKey {
        &self.onion_key
    }
}

impl PartialEq for OnionKeyCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.encoded == other.encoded
    }
}

impl Eq for OnionKeyCertificate {}

impl std::fmt::Debug for OnionKeyCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnionKeyCertificate")
            .field("node", &self.node_id())
            .field("relay", &self.relay)
            .field("epoch", &self.validity)
            .field("onion_key", &self.onion_key)
            .finish()
    }
}

/// A relay's onion key for one epoch: the X-Wing secret key and its certificate.
///
/// The secret zeroizes on drop; `Debug` shows the certificate only.
pub struct OnionKey {
    secret: XWingSecretKey,
    certificate: OnionKeyCertificate,
}

impl OnionKey {
    /// Generates a key for `epoch` and signs its certificate with `identity`.
    /// `relay` says whether the node relays for others.
    pub fn generate<R: CryptoRng + ?Sized>(
        identity: &Identity,
        epoch: KeyEpoch,
        relay: bool,
        rng: &mut R,
    ) -> Result<Self> {
        let secret = XWingSecretKey::generate(rng);
        Self::with_secret(identity, secret, epoch, relay)
    }

    /// Derives the key from a 32-byte seed (deterministic; for tests and for keys
    /// the caller stores itself) and signs its certificate with `identity`.
    pub fn from_seed(
        identity: &Identity,
        seed: &[u8; 32],
        epoch: KeyEpoch,
        relay: bool,
    ) -> Result<Self> {
        Self::with_secret(identity, XWingSecretKey::from_seed(seed), epoch, relay)
    }

    fn with_secret(
        identity: &Identity,
        secret: XWingSecretKey,
        epoch: KeyEpoch,
        relay: bool,
    ) -> Result<Self> {
        let certificate =
            OnionKeyCertificate::sign(identity, relay, epoch, secret.public_key().clone())?;
        Ok(Self {
            secret,
            certificate,
        })
    }

    /// Rebuilds a key from its stored seed and certificate; fails with
    /// [`Error::KeyMismatch`] if they do not belong together.
    pub fn from_parts(seed: &[u8; 32], certificate: OnionKeyCertificate) -> Result<Self> {
        let secret = XWingSecretKey::from_seed(seed);
        if secret.public_key() != certificate.onion_key() {
            return Err(Error::KeyMismatch);
        }
        Ok(Self {
            secret,
            certificate,
        })
    }

    /// The secret seed, for storage. Never log or print it.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        self.secret.to_bytes()
    }

    /// The signed certificate to publish.
    pub fn certificate(&self) -> &OnionKeyCertificate {
        &self.certificate
    }

    pub(crate) fn secret(&self) -> &XWingSecretKey {
        &self.secret
    }
}

impl std::fmt::Debug for OnionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnionKey")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: KeyEpoch = KeyEpoch {
        epoch: 7,
        not_before_ms: 1_000,
        not_after_ms: 2_000,
    };

    #[test]
    fn certificate_round_trips_and_verifies() {
        let id = Identity::from_seeds(&[1; 32], None);
        let key = OnionKey::from_seed(&id, &[2; 32], EPOCH, true).unwrap();
        let cert = key.certificate();
        let decoded = OnionKeyCertificate::from_bytes(cert.as_bytes()).unwrap();
        assert_eq!(&decoded, cert);
        assert_eq!(decoded.node_id(), id.node_id());
        assert!(decoded.is_relay());
        assert_eq!(decoded.epoch(), EPOCH);
        assert!(decoded.is_valid_at(1_000) && decoded.is_valid_at(1_999));
        assert!(!decoded.is_valid_at(999) && !decoded.is_valid_at(2_000));
        assert_eq!(cert.as_bytes().len(), OFF_ID_LEN + 2 + 34 + 2 + 65);
    }

    #[test]
    fn every_byte_is_covered() {
        let id = Identity::from_seeds(&[1; 32], None);
        let cert = OnionKey::from_seed(&id, &[2; 32], EPOCH, false)
            .unwrap()
            .certificate()
            .clone();
        let bytes = cert.as_bytes();
        // A byte from each field: flags, epoch, validity, onion key (both halves),
        // identity, signature.
        for at in [
            1,
            2,
            9,
            10,
            17,
            18,
            25,
            26,
            1000,
            1241,
            1244,
            1270,
            1280,
            bytes.len() - 1,
        ] {
            let mut bad = bytes.to_vec();
            bad[at] ^= 0x01;
            assert!(OnionKeyCertificate::from_bytes(&bad).is_err(), "byte {at}");
        }
        assert!(OnionKeyCertificate::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(OnionKeyCertificate::from_bytes(&long).is_err());
        assert!(matches!(
            OnionKeyCertificate::from_bytes(&vec![0; MAX_CERTIFICATE_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
    }

    /// `bytes` with its signature (after the identity) replaced by `sig`, the
    /// signature length adjusted.
    fn with_signature(bytes: &[u8], id_len: usize, sig: &[u8]) -> Vec<u8> {
        let sig_len_at = OFF_ID_LEN + 2 + id_len;
        let mut out = bytes[..sig_len_at].to_vec();
        out.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        out.extend_from_slice(sig);
        out
    }

    /// Issue 14, item 11: the certificate is the crate's one signed structure and
    /// has one encoding. Its integers are fixed-width, its lengths exact, and its
    /// signature must carry exactly the parts the identity has keys for: a filler
    /// ML-DSA part on a classical identity's signature, or a stripped one on a
    /// post-quantum identity's, is refused.
    #[test]
    fn a_certificate_signature_carries_exactly_the_identitys_parts() {
        let classical = Identity::from_seeds(&[1; 32], None);
        let cert = OnionKey::from_seed(&classical, &[2; 32], EPOCH, true)
            .unwrap()
            .certificate()
            .clone();
        let bytes = cert.as_bytes();
        let mut sig = bytes[bytes.len() - 65..].to_vec();
        sig[0] = 1;
        sig.extend(std::iter::repeat_n(0x5a, 3309));
        let padded = with_signature(bytes, 34, &sig);
        assert!(OnionKeyCertificate::from_bytes(&padded).is_err());

        let pq = Identity::from_seeds(&[1; 32], Some(&[3; 32]));
        let cert = OnionKey::from_seed(&pq, &[2; 32], EPOCH, true)
            .unwrap()
            .certificate()
            .clone();
        let bytes = cert.as_bytes();
        let id_len = pq.public().as_bytes().len();
        let sig = &bytes[bytes.len() - HYBRID_SIGNATURE_MAX_LEN..];
        let mut stripped = vec![0];
        stripped.extend_from_slice(&sig[1..65]);
        let stripped = with_signature(bytes, id_len, &stripped);
        assert!(OnionKeyCertificate::from_bytes(&stripped).is_err());
        // Both parts present: the genuine encoding decodes to itself.
        let back = OnionKeyCertificate::from_bytes(bytes).unwrap();
        assert_eq!(back.as_bytes(), bytes);
    }

    #[test]
    fn bad_validity_is_refused() {
        let id = Identity::from_seeds(&[1; 32], None);
        let bad = KeyEpoch {
            epoch: 1,
            not_before_ms: 5,
            not_after_ms: 5,
        };
        assert!(OnionKey::from_seed(&id, &[2; 32], bad, true).is_err());
    }

    #[test]
    fn parts_must_match() {
        let id = Identity::from_seeds(&[1; 32], None);
        let key = OnionKey::from_seed(&id, &[2; 32], EPOCH, true).unwrap();
        let again = OnionKey::from_parts(&key.to_seed(), key.certificate().clone()).unwrap();
        assert_eq!(again.certificate(), key.certificate());
        assert!(matches!(
            OnionKey::from_parts(&[3; 32], key.certificate().clone()),
            Err(Error::KeyMismatch)
        ));
        assert!(!format!("{key:?}").contains("seed"));
    }
}
