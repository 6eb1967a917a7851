//! The crate's error type.

use crate::caps::ProtocolVersion;

/// Why a handshake, a token check or an admission failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message did not parse: bad magic, unknown kind, bad length, or a body
    /// that is not valid postcard for its kind.
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    /// A message decoded, but its bytes are not the canonical encoding of what they
    /// decode to (an over-long varint, for example): every message has exactly one
    /// accepted encoding (handshake.md §2).
    #[error("handshake message not in canonical form: {0}")]
    NonCanonical(&'static str),
    /// A message is larger than [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) or its kind's limit.
    #[error("handshake message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size found (or announced).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message arrived that this side does not expect in its current state
    /// (including a reflected message of the wrong kind).
    #[error("unexpected handshake message: {0}")]
    UnexpectedMessage(&'static str),
    /// The peers share no major protocol version.
    #[error("incompatible protocol version: ours {ours}, theirs {theirs}")]
    IncompatibleVersion {
        /// Our version.
        ours: ProtocolVersion,
        /// The peer's version.
        theirs: ProtocolVersion,
    },
    /// The peers share no cipher suite.
    #[error("no cipher suite in common")]
    NoCommonSuite,
    /// The chosen suite requires a key the identity lacks (`pq-auth` needs ML-DSA-65).
    #[error("suite {0} requires an ML-DSA-65 identity key")]
    SuiteNeedsPostQuantumKey(&'static str),
    /// The peer's answer selected a suite or version the initiator did not offer.
    #[error("peer selected a suite or version that was not offered")]
    NotOffered,
    /// The initiator asked to join a different federation.
    #[error("federation id mismatch")]
    WrongFederation,
    /// An encrypted handshake part failed to decrypt: tampered, replayed into another
    /// session, or the peer does not hold the session's keys.
    #[error("handshake decryption failed")]
    Decrypt,
    /// A transcript signature did not verify (man in the middle, tampering, downgrade).
    #[error("transcript signature verification failed")]
    BadSignature,
    /// A Finished MAC did not verify: the peer does not hold the handshake secret.
    #[error("finished MAC verification failed")]
    BadFinished,
    /// The peer's identity did not decode.
    #[error("invalid peer identity: {0}")]
    Identity(#[source] fed_crypto::Error),
    /// The responder's identity is not the one the initiator expected.
    #[error("unexpected peer identity")]
    UnexpectedPeer,
    /// The admission policy refused the initiator.
    #[error("not admitted: {0}")]
    NotAdmitted(&'static str),
    /// The responder refused the handshake and said why (unauthenticated information).
    #[error("rejected by the responder: {0:?}")]
    Rejected(crate::wire::RejectReason),
    /// The handshake did not complete before its deadline.
    #[error("handshake timed out")]
    Timeout,
    /// The handshake already failed or finished; it accepts no more input.
    #[error("handshake is closed")]
    Closed,
    /// A token's signature did not verify against the issuer's identity.
    #[error("token signature verification failed")]
    TokenSignature,
    /// A token names another issuer than the identity it was checked against.
    #[error("token issuer mismatch")]
    TokenIssuer,
    /// A token is not valid yet.
    #[error("token not valid before {not_before} (now {now})")]
    TokenNotYetValid {
        /// Start of validity, Unix milliseconds.
        not_before: u64,
        /// The time of the check.
        now: u64,
    },
    /// A token has expired.
    #[error("token expired at {expires_at} (now {now})")]
    TokenExpired {
        /// End of validity, Unix milliseconds.
        expires_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// A token was revoked.
    #[error("token revoked")]
    TokenRevoked,
    /// A token's id is not `hash("… token id", [session])` of its own session
    /// binding, so revocation by id would not reach it.
    #[error("token id does not match its session")]
    TokenId,
    /// A token is bound to another session than the one presenting it.
    #[error("token bound to another session")]
    TokenSession,
    /// A token is for another federation than the one it is checked for.
    #[error("token is for another federation")]
    TokenFederation,
    /// A token is presented by another node than its subject.
    #[error("token presented by a node other than its subject")]
    TokenSubject,
    /// A token has an Ed25519-only signature where a hybrid (post-quantum) one is
    /// required.
    #[error("token is not signed post-quantum")]
    TokenNotPostQuantum,
    /// A request needs a capability the token does not grant.
    #[error("capability {0:?} not granted")]
    CapabilityDenied(crate::caps::Capability),
    /// An error from the channel or key layer.
    #[error(transparent)]
    Crypto(#[from] fed_crypto::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
