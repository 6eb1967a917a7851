//! The crate's error type.
//!
//! Errors are for the caller's own mistakes and for decoding failures. What a relay
//! does with a packet it refuses is not an error but a [`DropReason`](crate::DropReason)
//! inside [`Processed::Drop`](crate::Processed::Drop), so that a relay can count drops
//! by reason without treating peer input as a fault of its own.

use fed_crypto::NodeId;

/// Everything that can go wrong in `fed-onion`. No variant carries secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An encoded packet, certificate or reply had the wrong length for its kind and class.
    #[error("{what}: expected {expected} bytes, got {actual}")]
    InvalidLength {
        /// Which object was being decoded.
        what: &'static str,
        /// The length the encoding must have.
        expected: usize,
        /// The length that was supplied.
        actual: usize,
    },
    /// An input was longer than its decoder accepts; it was rejected unread.
    #[error("{what} of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Which object was being decoded.
        what: &'static str,
        /// The length supplied.
        len: usize,
        /// The largest length the decoder accepts.
        max: usize,
    },
    /// An encoding carried a version, kind, size class or flag this implementation
    /// does not know.
    #[error("unsupported {what}: {value}")]
    Unsupported {
        /// Which field was not understood.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A field broke a rule of the format (a non-zero reserved byte, a certificate
    /// whose validity ends before it starts, ...).
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The payload does not fit the requested size class, or any size class.
    #[error("payload of {len} bytes exceeds the class capacity of {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// Capacity of the class requested, or of the largest class.
        max: usize,
    },
    /// A route or a path request had a length outside what the format supports:
    /// 1 to [`MAX_HOPS`](crate::MAX_HOPS) hops, 1 to [`MAX_RELAYS`](crate::MAX_RELAYS)
    /// relays for path selection.
    #[error("route of {len} hops outside 1..={max}")]
    InvalidRouteLength {
        /// Length requested.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// A route names the same node twice.
    #[error("node {0} appears twice in the route")]
    DuplicateHop(NodeId),
    /// A certificate is not valid at the time given (expired or not yet valid).
    #[error("onion key certificate of {node} (epoch {epoch}) is not valid at {now_ms} ms")]
    CertificateNotValid {
        /// The certificate's node.
        node: NodeId,
        /// The certificate's epoch.
        epoch: u64,
        /// The time checked against, Unix milliseconds.
        now_ms: u64,
    },
    /// Path selection found fewer eligible relays than requested.
    #[error("{wanted} relays requested, only {available} eligible")]
    NotEnoughRelays {
        /// Relays requested.
        wanted: usize,
        /// Distinct eligible relays in the directory.
        available: usize,
    },
    /// An onion key was installed on the relay of another node.
    #[error("onion key of node {found} installed on relay {expected}")]
    WrongRelay {
        /// The relay's node id.
        expected: NodeId,
        /// The node id in the key's certificate.
        found: NodeId,
    },
    /// An onion key's epoch is not above the relay's epoch floor: the highest epoch
    /// it has installed, or the floor it was created with
    /// ([`Relay::epoch_floor`](crate::Relay::epoch_floor)). Reinstalling an epoch
    /// would restart its replay cache empty, so it is refused.
    #[error("onion key epoch {epoch} is not above the relay's epoch floor {floor}")]
    StaleEpoch {
        /// Epoch of the key offered.
        epoch: u64,
        /// The relay's epoch floor.
        floor: u64,
    },
    /// An onion key's secret does not match its certificate.
    #[error("onion key secret does not match its certificate")]
    KeyMismatch,
    /// A relay configuration is out of range.
    #[error("invalid relay configuration: {0}")]
    InvalidConfig(&'static str),
    /// A reply packet carries another reply id than the pending reply it was given to.
    #[error("reply packet does not belong to this pending reply")]
    UnexpectedReply,
    /// A reply failed authentication: a relay or an outsider modified it, or it was
    /// not sealed by the destination of the original packet.
    #[error("reply failed authentication")]
    ReplyAuthentication,
    /// A lower-level cryptographic failure: a certificate signature that does not
    /// verify, or an invalid key or identity encoding inside a certificate.
    #[error("cryptography: {0}")]
    Crypto(#[from] fed_crypto::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
