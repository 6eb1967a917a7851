//! BLAKE3 key derivation, hashing and MACs, and the one list of context labels.
//!
//! Every derivation, MAC, hash and signature in exo-federation starts from a context
//! label: a hard-coded ASCII string `"exo-federation v1 <purpose>"`. This crate's are
//! in [`labels`]; higher crates prefix theirs with their crate's name. No two purposes
//! share one, which `tests::labels_are_distinct` checks for this crate.

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Context labels of `fed-crypto`'s own derivations.
///
/// Higher crates keep their labels in a `labels` module of their own, every one
/// starting with `"exo-federation v1 <crate> "` (for example
/// `"exo-federation v1 handshake transcript"`), so labels of different crates cannot
/// collide, and each crate tests its own for distinctness.
pub mod labels {
    /// Hash of a canonical [`PublicIdentity`](crate::PublicIdentity) encoding to a [`NodeId`](crate::NodeId).
    pub const NODE_ID: &str = "exo-federation v1 node id";
    /// Public-key fingerprints shown by `Debug` implementations.
    pub const FINGERPRINT: &str = "exo-federation v1 fingerprint";
    /// Checksum at the end of a key file.
    pub const KEY_FILE_CHECKSUM: &str = "exo-federation v1 key file checksum";
    /// Channel traffic secret, initiator-to-responder direction, epoch 0.
    pub const CHANNEL_I2R: &str = "exo-federation v1 channel initiator to responder";
    /// Channel traffic secret, responder-to-initiator direction, epoch 0.
    pub const CHANNEL_R2I: &str = "exo-federation v1 channel responder to initiator";
    /// Ratchet: traffic secret of epoch `e + 1` from that of epoch `e`.
    pub const CHANNEL_RATCHET: &str = "exo-federation v1 channel ratchet";
    /// AES-256-GCM key of an epoch from that epoch's traffic secret.
    pub const CHANNEL_AEAD_KEY: &str = "exo-federation v1 channel aead key";
    /// Per-purpose MAC key derivation inside [`mac`](super::mac).
    pub const MAC_KEY: &str = "exo-federation v1 mac key";

    /// Checks a crate's label registry: every label is ASCII, starts with `prefix`
    /// (`"exo-federation v1 <crate> "`) and has more after it, is at most 255 bytes
    /// (labels double as ML-DSA context strings), appears once, and is not one of
    /// this crate's labels. Each crate calls it from a test on its `labels::ALL`.
    ///
    /// # Errors
    ///
    /// The first rule broken, naming the label.
    pub fn check(all: &[&str], prefix: &str) -> Result<(), String> {
        for (i, label) in all.iter().enumerate() {
            if !label.is_ascii() || !label.starts_with(prefix) || label.len() <= prefix.len() {
                return Err(format!(
                    "label {label:?} must be ASCII and start with {prefix:?}"
                ));
            }
            if label.len() > 255 {
                return Err(format!("label {label:?} is longer than 255 bytes"));
            }
            if all[..i].contains(label) {
                return Err(format!("label {label:?} is used twice"));
            }
            if prefix != "exo-federation v1 " && ALL.contains(label) {
                return Err(format!("label {label:?} collides with fed-crypto's"));
            }
        }
        Ok(())
    }

    /// Every label above, for the distinctness test and for documentation tools.
    pub const ALL: &[&str] = &[
        NODE_ID,
        FINGERPRINT,
        KEY_FILE_CHECKSUM,
        CHANNEL_I2R,
        CHANNEL_R2I,
        CHANNEL_RATCHET,
        CHANNEL_AEAD_KEY,
        MAC_KEY,
    ];
}

/// A 32-byte secret produced by [`derive_key`]; zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DerivedKey([u8; 32]);

impl DerivedKey {
    /// Wraps raw key bytes (for keys that arrive from elsewhere, such as a KEM).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key bytes. Callers must not log or persist them.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKey(<redacted>)")
    }
}

impl PartialEq for DerivedKey {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for DerivedKey {}

/// Derives a 32-byte key from `parts` under the context `label` (BLAKE3 `derive_key` mode).
///
/// The parts are absorbed in order, each preceded by its length as a little-endian
/// `u64`, so that `["ab", "c"]` and `["a", "bc"]` derive different keys.
pub fn derive_key(label: &str, parts: &[&[u8]]) -> DerivedKey {
    let mut hasher = blake3::Hasher::new_derive_key(label);
    absorb(&mut hasher, parts);
    let mut out = [0u8; 32];
    let mut hash = hasher.finalize();
    out.copy_from_slice(hash.as_bytes());
    hash.zeroize();
    hasher.zeroize();
    DerivedKey(out)
}

/// Domain-separated hash of public data: the same construction as [`derive_key`],
/// returned as plain bytes because the result is not secret.
pub fn hash(label: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(label);
    absorb(&mut hasher, parts);
    *hasher.finalize().as_bytes()
}

/// A keyed-BLAKE3 MAC tag. Compares in constant time.
#[derive(Clone, Copy)]
pub struct MacTag(pub [u8; 32]);

impl PartialEq for MacTag {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for MacTag {}

impl std::fmt::Debug for MacTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MacTag({})", short_hex(&self.0))
    }
}

/// Keyed-BLAKE3 MAC of `parts` under `key`, for the purpose `label`.
///
/// The MAC key is `derive_key(MAC_KEY, [key, label])`, so one key used for two
/// purposes yields unrelated tags.
pub fn mac(key: &[u8; 32], label: &str, parts: &[&[u8]]) -> MacTag {
    let mac_key = derive_key(labels::MAC_KEY, &[key, label.as_bytes()]);
    let mut hasher = blake3::Hasher::new_keyed(mac_key.as_bytes());
    absorb(&mut hasher, parts);
    let tag = MacTag(*hasher.finalize().as_bytes());
    hasher.zeroize();
    tag
}

/// Checks a MAC tag in constant time.
pub fn verify_mac(key: &[u8; 32], label: &str, parts: &[&[u8]], tag: &MacTag) -> bool {
    mac(key, label, parts) == *tag
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A short public fingerprint (16 hex digits) of public bytes, for `Debug` output.
pub(crate) fn fingerprint(public: &[u8]) -> String {
    short_hex(&hash(labels::FINGERPRINT, &[public]))
}

fn short_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .take(8)
        .fold(String::with_capacity(16), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn absorb(hasher: &mut blake3::Hasher, parts: &[&[u8]]) {
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct() {
        labels::check(labels::ALL, "exo-federation v1 ").unwrap();
    }

    #[test]
    fn the_label_check_catches_each_mistake() {
        let p = "exo-federation v1 test ";
        labels::check(&["exo-federation v1 test a", "exo-federation v1 test b"], p).unwrap();
        assert!(
            labels::check(&["exo-federation v1 test a", "exo-federation v1 test a"], p).is_err()
        );
        assert!(labels::check(&["exo-federation v1 other a"], p).is_err());
        assert!(labels::check(&["exo-federation v1 test "], p).is_err());
        assert!(labels::check(&[labels::NODE_ID], "exo-federation v1 node").is_err());
        let long = format!("{p}{}", "x".repeat(300));
        assert!(labels::check(&[long.as_str()], p).is_err());
    }

    #[test]
    fn parts_are_framed() {
        let a = derive_key("exo-federation v1 test", &[b"ab", b"c"]);
        let b = derive_key("exo-federation v1 test", &[b"a", b"bc"]);
        assert_ne!(a, b);
        assert_ne!(
            hash("exo-federation v1 test", &[b"ab", b"c"]),
            hash("exo-federation v1 test", &[b"abc"])
        );
    }

    #[test]
    fn labels_separate_domains() {
        let k = [7u8; 32];
        assert_ne!(
            mac(&k, "exo-federation v1 a", &[b"m"]),
            mac(&k, "exo-federation v1 b", &[b"m"])
        );
        let t = mac(&k, "exo-federation v1 a", &[b"m"]);
        assert!(verify_mac(&k, "exo-federation v1 a", &[b"m"], &t));
        assert!(!verify_mac(&k, "exo-federation v1 a", &[b"n"], &t));
        assert!(!verify_mac(&[8u8; 32], "exo-federation v1 a", &[b"m"], &t));
    }

    #[test]
    fn debug_redacts() {
        let k = derive_key("exo-federation v1 test", &[b"x"]);
        let shown = format!("{k:?}");
        assert_eq!(shown, "DerivedKey(<redacted>)");
    }
}
