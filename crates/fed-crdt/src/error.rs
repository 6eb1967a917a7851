//! The crate's single error type.

use crate::hlc::Hlc;

/// Result type of every fallible operation in this crate.
pub type Result<T> = core::result::Result<T, Error>;

/// Everything that can go wrong in `fed-crdt`.
///
/// Decoders return one of the `Decode*`-style variants for malformed or
/// oversized input and never panic; ingest functions return
/// [`Error::ClockSkew`] for stamps from a peer whose clock runs too far ahead;
/// local writes return [`Error::ClockSaturated`] rather than issue a stamp
/// that would not supersede what they must.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A remote stamp is further ahead of the local wall clock than the
    /// configured maximum forward skew allows; the whole message carrying it
    /// is rejected and no state was changed.
    #[error(
        "remote stamp at {remote_ms} ms is more than {max_skew_ms} ms ahead of local time {local_ms} ms"
    )]
    ClockSkew {
        /// Physical milliseconds of the offending remote stamp.
        remote_ms: u64,
        /// The local wall-clock reading passed in as `now`.
        local_ms: u64,
        /// The configured maximum forward skew.
        max_skew_ms: u64,
    },

    /// The clock cannot issue a stamp greater than `floor` (the greatest of
    /// the stamps it issued or observed and the stamp the write must
    /// supersede): that would pass the largest stamp, `(u64::MAX, u32::MAX,
    /// ff..ff)`. Only reachable after a stamp at or near the maximum entered
    /// the state or the clock through a path without the skew check (or with
    /// an absurd `now`). Nothing was changed.
    #[error("the clock cannot issue a stamp above {floor}: the largest stamp is reached")]
    ClockSaturated {
        /// The stamp the next one would have to exceed.
        floor: Hlc,
    },

    /// Two different values carry the same stamp. Stamps include the node id,
    /// so this means a cloned or misbehaving node. Returned only by
    /// `CvRDT::validate_merge`; `merge` itself resolves the tie
    /// deterministically and reports it in its outcome.
    #[error("two different values carry the same stamp {stamp}")]
    Conflict {
        /// The shared stamp.
        stamp: Hlc,
    },

    /// An encoded message is larger than the configured maximum (checked
    /// before decoding, and by encoders before sending).
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Size of the message in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },

    /// The input ended before the envelope header or a field was complete.
    #[error("message truncated")]
    Truncated,

    /// The envelope does not start with the magic bytes `FCRD`.
    #[error("bad magic bytes: not a fed-crdt message")]
    BadMagic,

    /// The envelope's format version is not one this build understands.
    #[error("unsupported wire format version {version}")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },

    /// The envelope's message kind is not the one the decoder expects.
    #[error("unexpected message kind {found:#04x}, expected {expected:#04x}")]
    WrongKind {
        /// Kind byte the decoder was asked to decode.
        expected: u8,
        /// Kind byte found in the envelope.
        found: u8,
    },

    /// The envelope's message kind byte is not assigned.
    #[error("unknown message kind {kind:#04x}")]
    UnknownKind {
        /// The kind byte found.
        kind: u8,
    },

    /// The body length declared in the envelope does not match the bytes that follow it.
    #[error("declared body length {declared} does not match actual body length {actual}")]
    LengthMismatch {
        /// Length declared in the header.
        declared: u64,
        /// Bytes actually present after the header.
        actual: u64,
    },

    /// A message carries more entries (map entries or set elements) than allowed.
    #[error("{count} entries exceed the limit of {max}")]
    TooManyEntries {
        /// Entry count declared or found.
        count: u64,
        /// The configured limit.
        max: usize,
    },

    /// A frontier names more origins than allowed.
    #[error("{count} origins exceed the limit of {max}")]
    TooManyOrigins {
        /// Origin count declared.
        count: u64,
        /// The configured limit.
        max: usize,
    },

    /// A query response carries more hits than allowed.
    #[error("{count} hits exceed the limit of {max}")]
    TooManyHits {
        /// Hit count declared or found.
        count: u64,
        /// The configured limit.
        max: usize,
    },

    /// A field could not be decoded as postcard (bad varint, bad UTF-8, bad
    /// option tag, unexpected end, ...).
    #[error("malformed postcard body")]
    Decode(#[source] postcard::Error),

    /// A value could not be encoded as postcard (its `Serialize`
    /// implementation failed).
    #[error("value could not be encoded")]
    Encode(#[source] postcard::Error),

    /// The body decoded but breaks a structural rule of the format (for
    /// example entries not in strictly ascending key order, a frontier stamp
    /// filed under another node, an empty or inverted key range).
    #[error("invalid message: {reason}")]
    Invalid {
        /// Which rule was broken.
        reason: &'static str,
    },

    /// Bytes remain after the last field of the body.
    #[error("{count} trailing bytes after the message body")]
    TrailingBytes {
        /// Number of unread bytes.
        count: usize,
    },
}
