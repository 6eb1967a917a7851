//! The crate's error type.

/// Everything that can go wrong in `fed-crypto`.
///
/// Every variant is specific enough to act on; none carries secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An encoded key, ciphertext or signature had the wrong length.
    #[error("{what}: expected {expected} bytes, got {actual}")]
    InvalidLength {
        /// Which object was being decoded.
        what: &'static str,
        /// The length the encoding must have.
        expected: usize,
        /// The length that was supplied.
        actual: usize,
    },
    /// An encoded public key had the right length but is not a valid key
    /// (an ML-KEM key whose coefficients are not reduced, an Ed25519 point that
    /// does not decompress, is not canonically encoded or has small order, ...).
    #[error("invalid {0} public key")]
    InvalidPublicKey(&'static str),
    /// An encoded secret key had the right length but is not consistent (an
    /// expanded ML-KEM decapsulation key whose stored hash of its public key does
    /// not match it).
    #[error("invalid {0} secret key")]
    InvalidSecretKey(&'static str),
    /// An encoding carried a version, kind or flag value this implementation does not know.
    #[error("unsupported {what}: {value}")]
    Unsupported {
        /// Which field was not understood.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A signature did not verify, or a hybrid signature lacked a part the signer's
    /// identity requires.
    #[error("signature verification failed")]
    BadSignature,
    /// ML-DSA signing failed (context label longer than 255 bytes).
    #[error("signing failed: {0}")]
    Signing(&'static str),
    /// An AEAD frame failed authentication: it was modified, is for the other
    /// direction, or was sealed under a different key.
    #[error("frame authentication failed")]
    Decrypt,
    /// A frame header was malformed (bad version or kind, or a length field that
    /// disagrees with the frame).
    #[error("malformed frame: {0}")]
    MalformedFrame(&'static str),
    /// A frame is larger than the channel's configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Size of the offending frame or payload.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A stream-mode frame did not carry the next expected (epoch, sequence):
    /// it was replayed, reordered or a frame was dropped.
    #[error(
        "unexpected frame sequence: expected epoch {expected_epoch} seq {expected_seq}, got epoch {epoch} seq {seq}"
    )]
    UnexpectedSequence {
        /// Epoch the receiver expected.
        expected_epoch: u32,
        /// Sequence number the receiver expected.
        expected_seq: u64,
        /// Epoch in the frame.
        epoch: u32,
        /// Sequence number in the frame.
        seq: u64,
    },
    /// A datagram-mode frame was already received (a replay).
    #[error("replayed frame (epoch {epoch}, seq {seq})")]
    Replay {
        /// Epoch of the frame.
        epoch: u32,
        /// Sequence number of the frame.
        seq: u64,
    },
    /// A datagram-mode frame is older than the replay window or its epoch is no
    /// longer (or not yet) held by the receiver.
    #[error("frame outside the receive window (epoch {epoch}, seq {seq})")]
    OutsideWindow {
        /// Epoch of the frame.
        epoch: u32,
        /// Sequence number of the frame.
        seq: u64,
    },
    /// A stream-mode channel already rejected a frame; it accepts nothing more.
    #[error("channel closed after an earlier authentication or sequence failure")]
    ChannelPoisoned,
    /// The channel used every epoch it can number; it must be replaced by a new handshake.
    #[error("channel key epochs exhausted")]
    Exhausted,
    /// The channel configuration is inconsistent.
    #[error("invalid channel configuration: {0}")]
    InvalidConfig(&'static str),
    /// A key file is malformed: bad magic, truncated, wrong checksum, or trailing bytes.
    #[error("malformed key file: {0}")]
    MalformedKeyFile(&'static str),
    /// A key file holds a different kind of key than the one requested.
    #[error("key file holds a {found} key, expected a {expected} key")]
    WrongKeyKind {
        /// The kind requested by the caller.
        expected: &'static str,
        /// The kind recorded in the file.
        found: &'static str,
    },
    /// A secret key file can be read or written by users other than its owner.
    #[error("key file {path} has permissions {mode:o}; secret key files must be 0600")]
    InsecurePermissions {
        /// The offending file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file involved.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn check_len(what: &'static str, expected: usize, bytes: &[u8]) -> Result<()> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(Error::InvalidLength {
            what,
            expected,
            actual: bytes.len(),
        })
    }
}
