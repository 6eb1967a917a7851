//! Replica identifiers.

use core::fmt;

use serde::{Deserialize, Serialize};

/// Identity of a replica (a writer) in stamps, frontiers and query provenance.
///
/// A fixed 32-byte value, so a mesh can use its 32-byte BLAKE3 node id
/// directly and two nodes never collide by truncation. Ordered
/// lexicographically by bytes; that order is part of the HLC tie-break and
/// of every canonical sort on the wire.
///
/// On the wire (postcard) it is the 32 bytes as they are, without a length
/// prefix.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct ReplicaId([u8; 32]);

impl ReplicaId {
    /// The all-zero id. It sorts before every other id, which makes
    /// `Hlc::new(ms, 0, ReplicaId::ZERO)` the smallest stamp at `ms`.
    pub const ZERO: Self = Self([0; 32]);

    /// Wraps 32 bytes (typically a BLAKE3 hash of the node's public identity).
    pub const fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// An id whose last 8 bytes are `n` in big-endian and whose first 24
    /// bytes are zero, so ids built this way sort like the numbers. Handy
    /// for tests and examples; real deployments use [`ReplicaId::new`].
    pub const fn from_u64(n: u64) -> Self {
        let be = n.to_be_bytes();
        let mut bytes = [0u8; 32];
        let mut i = 0;
        while i < 8 {
            bytes[24 + i] = be[i];
            i += 1;
        }
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for ReplicaId {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl From<ReplicaId> for [u8; 32] {
    fn from(id: ReplicaId) -> Self {
        id.0
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for ReplicaId {
    /// All 64 hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for ReplicaId {
    /// A short form: the first and last 4 bytes in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplicaId(")?;
        write_hex(f, &self.0[..4])?;
        f.write_str("..")?;
        write_hex(f, &self.0[28..])?;
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_u64_orders_like_numbers_and_encodes_as_32_raw_bytes() {
        let a = ReplicaId::from_u64(1);
        let b = ReplicaId::from_u64(256);
        assert!(a < b);
        assert!(ReplicaId::ZERO < a);
        let bytes = postcard::to_allocvec(&b).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[30..], &[1, 0]);
        assert_eq!(format!("{b}").len(), 64);
        assert_eq!(format!("{b:?}"), "ReplicaId(00000000..00000100)");
    }
}
