//! Message envelopes and bodies: postcard inside a small versioned envelope.
//!
//! Envelope (10 bytes, then the body):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `FEDH` |
//! | 4 | 1 | protocol major version |
//! | 5 | 1 | kind: 1 hello, 2 accept, 3 finish, 4 token, 5 reject |
//! | 6 | 4 | body length, big-endian |
//!
//! Bodies are postcard encodings of the structs below, each with its own size limit,
//! in canonical form only (shortest varints: see [`decode`]).

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    caps::{Capabilities, ProtocolVersion, Suite},
    error::{Error, Result},
};

/// Envelope magic.
pub const MAGIC: [u8; 4] = *b"FEDH";
/// Bytes of envelope header.
pub const ENVELOPE_HEADER_LEN: usize = 10;
/// The largest handshake message of any kind, envelope included.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;

/// Message kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Hello = 1,
    Accept = 2,
    Finish = 3,
    Token = 4,
    Reject = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Result<Self> {
        Ok(match b {
            1 => Kind::Hello,
            2 => Kind::Accept,
            3 => Kind::Finish,
            4 => Kind::Token,
            5 => Kind::Reject,
            _ => return Err(Error::Malformed("unknown message kind")),
        })
    }

    /// Largest body of this kind.
    fn max_body(self) -> usize {
        match self {
            Kind::Hello => 2 * 1024,
            Kind::Accept => 8 * 1024,
            Kind::Finish => MAX_MESSAGE_LEN - ENVELOPE_HEADER_LEN,
            Kind::Token => 4 * 1024,
            Kind::Reject => 16,
        }
    }
}

/// Returns the total length of the message whose envelope starts `header`, after
/// checking magic, kind and size limits: a stream reader calls this on the first
/// [`ENVELOPE_HEADER_LEN`] bytes before reading (and allocating for) the rest.
pub fn message_len(header: &[u8]) -> Result<usize> {
    let (kind, _, len) = parse_header(header)?;
    let _ = kind;
    Ok(ENVELOPE_HEADER_LEN + len)
}

fn parse_header(bytes: &[u8]) -> Result<(Kind, u8, usize)> {
    let h = bytes
        .get(..ENVELOPE_HEADER_LEN)
        .ok_or(Error::Malformed("shorter than an envelope header"))?;
    if h[..4] != MAGIC {
        return Err(Error::Malformed("bad magic"));
    }
    let kind = Kind::from_u8(h[5])?;
    let len = u32::from_be_bytes([h[6], h[7], h[8], h[9]]) as usize;
    if len > kind.max_body() {
        return Err(Error::TooLarge {
            len: ENVELOPE_HEADER_LEN.saturating_add(len),
            max: ENVELOPE_HEADER_LEN + kind.max_body(),
        });
    }
    Ok((kind, h[4], len))
}

/// Splits a whole message into (kind, major version, body), checking every length
/// and that the major version is ours.
pub(crate) fn open_envelope(bytes: &[u8]) -> Result<(Kind, u8, &[u8])> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(Error::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    let (kind, major, len) = parse_header(bytes)?;
    if bytes.len() != ENVELOPE_HEADER_LEN + len {
        return Err(Error::Malformed(
            "length field disagrees with the message size",
        ));
    }
    if major != ProtocolVersion::CURRENT.major {
        return Err(Error::IncompatibleVersion {
            ours: ProtocolVersion::CURRENT,
            theirs: ProtocolVersion { major, minor: 0 },
        });
    }
    Ok((kind, major, &bytes[ENVELOPE_HEADER_LEN..]))
}

pub(crate) fn seal_envelope(kind: Kind, body: &[u8]) -> Result<Vec<u8>> {
    if body.len() > kind.max_body() {
        return Err(Error::TooLarge {
            len: ENVELOPE_HEADER_LEN + body.len(),
            max: ENVELOPE_HEADER_LEN + kind.max_body(),
        });
    }
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(ProtocolVersion::CURRENT.major);
    out.push(kind as u8);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Postcard-encodes `value`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|_| Error::Malformed("encoding failed"))
}

/// Postcard-decodes `bytes` as a `T`, refusing trailing bytes and any encoding
/// other than the canonical one: the value is encoded again and must give back
/// exactly `bytes`. Postcard's decoder accepts over-long varints (a length, a
/// `u32`/`u64` field or an enum index padded with `0x80` continuation bytes);
/// refusing them gives every message one byte string, so its bytes can name it.
pub(crate) fn decode<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T> {
    let value = match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => value,
        Ok(_) | Err(_) => return Err(Error::Malformed(what)),
    };
    if encode(&value)? != bytes {
        return Err(Error::NonCanonical(what));
    }
    Ok(value)
}

/// Suite codes on the wire. Unknown codes are skipped, so a newer peer's offer
/// still parses.
pub(crate) fn suite_code(s: Suite) -> u8 {
    match s {
        Suite::Default => 1,
        Suite::PqAuth => 2,
    }
}

pub(crate) fn suite_from_code(c: u8) -> Option<Suite> {
    match c {
        1 => Some(Suite::Default),
        2 => Some(Suite::PqAuth),
        _ => None,
    }
}

/// Most suites a hello may offer.
pub(crate) const MAX_OFFERED_SUITES: usize = 8;

/// Message 1, in the clear.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) minor: u8,
    pub(crate) suites: Vec<u8>,
    pub(crate) capabilities: Capabilities,
    pub(crate) federation: [u8; 32],
    pub(crate) nonce: [u8; 32],
    pub(crate) ephemeral_key: Vec<u8>,
}

/// Message 2: the KEM ciphertext in the clear and the sealed [`AcceptInner`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Accept {
    pub(crate) ciphertext: Vec<u8>,
    pub(crate) sealed: Vec<u8>,
}

/// The responder's choices, signed as part of the transcript.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AcceptParams {
    pub(crate) minor: u8,
    pub(crate) suite: u8,
    pub(crate) capabilities: Capabilities,
    pub(crate) nonce: [u8; 32],
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AcceptInner {
    pub(crate) params: AcceptParams,
    pub(crate) identity: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    pub(crate) finished: [u8; 32],
}

/// Message 3: the sealed [`FinishInner`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Finish {
    pub(crate) sealed: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FinishInner {
    pub(crate) identity: Vec<u8>,
    pub(crate) admission: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    pub(crate) finished: [u8; 32],
}

/// Why a responder refused a handshake. Sent in the clear and unauthenticated: it
/// informs an honest initiator, and an attacker on the path could forge it just as
/// it could drop the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RejectReason {
    /// A message did not parse or arrived out of order.
    Malformed,
    /// No common major version.
    IncompatibleVersion,
    /// No common cipher suite.
    NoCommonSuite,
    /// The initiator asked for another federation.
    WrongFederation,
    /// Authentication failed (bad signature, MAC or decryption).
    AuthenticationFailed,
    /// The admission policy refused the initiator.
    NotAdmitted,
    /// The handshake took too long.
    Timeout,
}

impl RejectReason {
    pub(crate) fn for_error(e: &Error) -> Self {
        match e {
            Error::IncompatibleVersion { .. } => RejectReason::IncompatibleVersion,
            Error::NoCommonSuite | Error::SuiteNeedsPostQuantumKey(_) => {
                RejectReason::NoCommonSuite
            }
            Error::WrongFederation => RejectReason::WrongFederation,
            Error::NotAdmitted(_) => RejectReason::NotAdmitted,
            Error::Decrypt | Error::BadSignature | Error::BadFinished | Error::Identity(_) => {
                RejectReason::AuthenticationFailed
            }
            Error::Timeout => RejectReason::Timeout,
            _ => RejectReason::Malformed,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Reject {
    pub(crate) reason: RejectReason,
}

/// Admission proof carried in message 3.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AdmissionProof {
    /// No proof (enough for `Open` and `Allowlist` policies).
    None,
    /// An invitation signed by a member.
    Invitation(crate::admission::Invitation),
}
