//! The crate's error type.

/// Why a message, a proof, a configuration or a storage operation was refused.
///
/// Errors returned by [`Replica::handle_message`](crate::Replica::handle_message)
/// and [`Replica::handle_request`](crate::Replica::handle_request) describe why one
/// input was dropped; the replica stays usable after every one of them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message did not parse: bad magic, unknown kind, a length field that
    /// disagrees with the message, or a body that is not valid postcard for its kind.
    #[error("malformed pbft message: {0}")]
    Malformed(&'static str),
    /// A message or structure decoded, but not from its canonical encoding (an
    /// overlong varint, say): re-encoding the value gives other bytes
    /// (docs/protocol/pbft.md §2). Every decoder of this crate refuses them.
    #[error("non-canonical encoding of a {0}")]
    NonCanonical(&'static str),
    /// A message or one of its fields is larger than its limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Size found (or announced).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message carries a wire-format version this implementation does not speak.
    #[error("unsupported pbft wire version {0}")]
    UnsupportedVersion(u8),
    /// A replica index is not a member of the configured membership.
    #[error("replica {0} is not a member")]
    NotMember(u16),
    /// The replica index a message claims differs from the transport-level sender.
    #[error("message claims replica {claimed} but arrived from replica {from}")]
    SenderMismatch {
        /// Who the message says signed it.
        claimed: u16,
        /// Who the transport says sent it.
        from: u16,
    },
    /// A signature did not verify against the claimed signer's identity.
    #[error("bad signature from replica {0}")]
    BadSignature(u16),
    /// A message for an older view than the replica's (a replay or a late message).
    #[error("message of view {view} is older than the current view {current}")]
    StaleView {
        /// The message's view.
        view: u64,
        /// The replica's view.
        current: u64,
    },
    /// A normal-case message for a view the replica has not entered (yet).
    #[error("message of view {view} does not match the current view {current}")]
    WrongView {
        /// The message's view.
        view: u64,
        /// The replica's view.
        current: u64,
    },
    /// A sequence number outside the low/high watermarks.
    #[error("sequence {seq} is outside the watermarks ({low}, {high}]")]
    OutsideWatermarks {
        /// The message's sequence number.
        seq: u64,
        /// Low watermark (the stable checkpoint).
        low: u64,
        /// High watermark (low + window).
        high: u64,
    },
    /// A pre-prepare was not sent by the primary of its view.
    #[error("pre-prepare from replica {from}, but the primary of view {view} is {primary}")]
    NotPrimary {
        /// The view.
        view: u64,
        /// Its primary.
        primary: u16,
        /// The sender.
        from: u16,
    },
    /// A batch's digest differs from the digest its pre-prepare or proof names.
    #[error("batch digest mismatch")]
    DigestMismatch,
    /// The primary assigned a second, different batch to a sequence number in one view.
    #[error("conflicting pre-prepare for view {view} sequence {seq}")]
    Equivocation {
        /// The view.
        view: u64,
        /// The sequence number.
        seq: u64,
    },
    /// A batch breaks the configured limits (too many requests, an operation too
    /// large, an authenticator of the wrong length, undecodable requests).
    #[error("invalid batch: {0}")]
    InvalidBatch(&'static str),
    /// A client request failed authentication at this replica, or comes from a
    /// client this replica has no key for.
    #[error("client request authentication failed")]
    BadRequestAuth,
    /// A request from a client whose latest executed timestamp is newer.
    #[error("stale request timestamp {timestamp} (latest executed {latest})")]
    StaleRequest {
        /// The request's timestamp.
        timestamp: u64,
        /// The latest timestamp executed for that client.
        latest: u64,
    },
    /// A bounded queue or table is full; the input was dropped (the sender retries).
    #[error("{0} is full")]
    Full(&'static str),
    /// A certificate or proof is invalid: too few distinct valid signatures, a
    /// duplicate or unknown signer, signatures over different values, or the wrong
    /// membership.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(&'static str),
    /// A VIEW-CHANGE or NEW-VIEW message is invalid.
    #[error("invalid view change: {0}")]
    InvalidViewChange(&'static str),
    /// A state-transfer snapshot does not match the certified checkpoint digest.
    #[error("state snapshot does not match the certified checkpoint")]
    BadSnapshot,
    /// The membership is invalid (empty, too large, or a replica listed twice).
    #[error("invalid membership: {0}")]
    InvalidMembership(&'static str),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A message of a kind this input does not accept (a request handed to
    /// `handle_message` is fine; a reply is not).
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    /// The application refused to restore a certified snapshot.
    #[error("application error: {0}")]
    Application(String),
    /// A [`Storage`](crate::Storage) implementation failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// An error from the cryptography layer: signing, or decoding a member's
    /// public identity ([`Membership::from_bytes`](crate::Membership::from_bytes)).
    #[error(transparent)]
    Crypto(#[from] fed_crypto::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
