//! Cryptography for exo-federation: the one crate every other `fed-*` crate builds on.
//!
//! What it holds:
//!
//! - **X-Wing**, the hybrid post-quantum KEM (X25519 + ML-KEM-768) of
//!   draft-connolly-cfrg-xwing-kem, byte-compatible with the draft's vectors, with
//!   the expanded decapsulation key cached ([`XWingSecretKey`], [`XWingPublicKey`]).
//!   Its ML-KEM-768 half comes from RustCrypto's `ml-kem` or, with the `fast-kem`
//!   feature, from the formally verified and AVX2-accelerated `libcrux-ml-kem`; both
//!   make and accept the same bytes ([`mlkem`], [`KemBackend`]).
//! - **Identities**: an Ed25519 key (which is also the node's libp2p identity) and an
//!   optional ML-DSA-65 key; [`NodeId`] = BLAKE3 of the public identity; hybrid
//!   signatures in which every part the signer has must verify ([`Identity`],
//!   [`PublicIdentity`], [`HybridSignature`]).
//! - **The encrypted channel**: AES-256-GCM with per-direction keys, counter nonces,
//!   a rekey ratchet and a datagram replay window ([`SecureChannel`]).
//! - **KDF, hash and MAC**: BLAKE3 in `derive_key` and keyed modes, with every
//!   context label of the project in one place ([`labels`]).
//! - **Key files** with checksums, written with mode 0600 ([`Identity::save`]).
//!
//! What it does not do: network IO, clocks, async, or protocol logic. It takes
//! randomness as a [`rand_core::CryptoRng`] parameter and never reads ambient time;
//! the handshake, onion and consensus crates above it decide what to sign and when.
//!
//! Secrets (`Identity`, `XWingSecretKey`, shared secrets, channel keys) are
//! zeroized on drop and their `Debug` output shows a public fingerprint at most.
//!
//! # Example
//!
//! An X-Wing key exchange feeding an encrypted channel:
//!
//! ```
//! use fed_crypto::{ChannelConfig, Role, SecureChannel, XWingSecretKey};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(1);
//!
//! // The responder publishes an X-Wing public key; the initiator encapsulates to it.
//! let responder_key = XWingSecretKey::generate(&mut rng);
//! let (ciphertext, initiator_secret) = responder_key.public_key().encapsulate(&mut rng);
//! let responder_secret = responder_key.decapsulate(&ciphertext);
//! assert_eq!(initiator_secret, responder_secret);
//!
//! // Both sides derive the channel from the secret and a hash of what they exchanged.
//! let transcript = fed_crypto::hash("exo-federation v1 example transcript", &[ciphertext.as_bytes()]);
//! let mut alice = SecureChannel::new(initiator_secret.as_bytes(), &transcript, Role::Initiator, ChannelConfig::default())?;
//! let mut bob = SecureChannel::new(responder_secret.as_bytes(), &transcript, Role::Responder, ChannelConfig::default())?;
//!
//! let frame = alice.seal(b"hello federation")?;
//! assert_eq!(bob.open(&frame)?, b"hello federation");
//! # Ok::<(), fed_crypto::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod channel;
mod error;
mod identity;
mod kdf;
mod keyfile;
pub mod mlkem;
mod xwing;

pub use channel::{
    ChannelConfig, ChannelReceiver, ChannelSender, FRAME_HEADER_LEN, FRAME_OVERHEAD, FrameHeader,
    MAX_EPOCH_SKIP, MAX_PAYLOAD_LIMIT, MAX_REKEY_AFTER_BYTES, MAX_REPLAY_WINDOW, Mode, Role,
    SecureChannel, TAG_LEN,
};
pub use error::{Error, Result};
pub use identity::{
    ED25519_PUBLIC_KEY_LEN, ED25519_SIGNATURE_LEN, HYBRID_SIGNATURE_MAX_LEN, HybridSignature,
    Identity, ML_DSA_65_PUBLIC_KEY_LEN, ML_DSA_65_SIGNATURE_LEN, NodeId, PUBLIC_IDENTITY_MAX_LEN,
    PublicIdentity,
};
pub use kdf::{DerivedKey, MacTag, ct_eq, derive_key, hash, labels, mac, verify_mac};
pub use keyfile::{KeyKind, MAX_KEY_FILE_LEN};
pub use mlkem::KemBackend;
pub use xwing::{
    XWING_CIPHERTEXT_LEN, XWING_ENCAPS_SEED_LEN, XWING_PUBLIC_KEY_LEN, XWING_SECRET_KEY_LEN,
    XWING_SHARED_SECRET_LEN, XWingCiphertext, XWingPublicKey, XWingSecretKey, XWingSharedSecret,
};
pub use zeroize::Zeroizing;
