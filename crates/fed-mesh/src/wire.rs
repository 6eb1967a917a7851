//! The mesh's wire formats: stream framing, the sealed-message envelope, and the
//! messages of each federation protocol (docs/protocol/mesh.md).
//!
//! Every decoder here takes untrusted bytes, checks sizes before it allocates,
//! returns a typed [`WireError`] and never panics.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The federation handshake protocol (fed-handshake messages, unsealed).
pub const PROTOCOL_HANDSHAKE: &str = "/exo-fed/handshake/1";
/// Similarity queries (sealed).
pub const PROTOCOL_QUERY: &str = "/exo-fed/query/1";
/// Onion packets and their replies (sealed).
pub const PROTOCOL_ONION: &str = "/exo-fed/onion/1";
/// CRDT anti-entropy (sealed).
pub const PROTOCOL_SYNC: &str = "/exo-fed/sync/1";
/// Byzantine consensus: fed-pbft messages and commit proofs (sealed), as
/// [`StreamFrame`]s on one long-lived stream per direction (mesh.md §3.1).
pub const PROTOCOL_PBFT: &str = "/exo-fed/pbft/2";
/// The Kademlia protocol name of the federation's own DHT.
pub const PROTOCOL_KAD: &str = "/exo-fed/kad/1.0.0";
/// The identify protocol version string the node announces.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/exo-fed/1.0.0";

/// Magic bytes of a sealed message's envelope.
pub const MAGIC: [u8; 4] = *b"FEDM";
/// Envelope version.
pub const WIRE_VERSION: u8 = 1;
/// Envelope header: magic (4), version (1), kind (1), body length (4, big-endian).
pub const ENVELOPE_HEADER_LEN: usize = 10;
/// Length of the session id that prefixes every sealed request.
pub const SESSION_ID_LEN: usize = 8;
/// Length of the query id.
pub const QUERY_ID_LEN: usize = 16;
/// Most signed answers in one [`QueryResponse`].
pub const MAX_ANSWERS_PER_RESPONSE: usize = 256;
/// Most reports in one [`QueryResponse`].
pub const MAX_REPORTS_PER_RESPONSE: usize = 4096;

/// The federation protocols, each a libp2p stream protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// [`PROTOCOL_HANDSHAKE`].
    Handshake,
    /// [`PROTOCOL_QUERY`].
    Query,
    /// [`PROTOCOL_ONION`].
    Onion,
    /// [`PROTOCOL_SYNC`].
    Sync,
    /// [`PROTOCOL_PBFT`].
    Pbft,
}

impl Protocol {
    /// Every protocol.
    pub const ALL: [Protocol; 5] = [
        Protocol::Handshake,
        Protocol::Query,
        Protocol::Onion,
        Protocol::Sync,
        Protocol::Pbft,
    ];

    /// The libp2p protocol name.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Handshake => PROTOCOL_HANDSHAKE,
            Protocol::Query => PROTOCOL_QUERY,
            Protocol::Onion => PROTOCOL_ONION,
            Protocol::Sync => PROTOCOL_SYNC,
            Protocol::Pbft => PROTOCOL_PBFT,
        }
    }

    /// A short name for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Handshake => "handshake",
            Protocol::Query => "query",
            Protocol::Onion => "onion",
            Protocol::Sync => "sync",
            Protocol::Pbft => "pbft",
        }
    }
}

/// What went wrong decoding a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input is longer than the limit for its place.
    #[error("{what}: {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ended early, or a length field disagrees with it.
    #[error("{0}: truncated or inconsistent length")]
    Truncated(&'static str),
    /// Magic, version or kind is not one this implementation knows.
    #[error("{0}")]
    BadHeader(&'static str),
    /// The body did not decode, had trailing bytes, or broke a bound.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Kinds of sealed messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`QueryRequest`].
    QueryRequest = 1,
    /// [`QueryResponse`].
    QueryResponse = 2,
    /// An onion packet (fed-onion's encoding, not postcard).
    OnionPacket = 3,
    /// [`OnionResponse`].
    OnionResponse = 4,
    /// [`SyncPull`].
    SyncPull = 5,
    /// [`SyncChunk`].
    SyncChunk = 6,
    /// [`Refusal`], as the response to any request.
    Refused = 7,
    /// fed-pbft messages: postcard of a list of byte strings, each one
    /// message in fed-pbft's encoding.
    Pbft = 8,
    /// The empty answer to [`Kind::Pbft`].
    PbftAck = 9,
    /// [`ProofRequest`](crate::core::commit::ProofRequest).
    ProofRequest = 10,
    /// [`ProofResponse`](crate::core::commit::ProofResponse).
    ProofResponse = 11,
    /// A proof a replica pushes to a client's node (a `ProofResponse` body).
    ProofPush = 12,
    /// [`CertifiedState`](crate::core::commit::CertifiedState): a replica's
    /// stable checkpoint and the state it certifies, pushed to a member that
    /// does not vote so that it takes over the committed revocations.
    CertifiedState = 13,
    /// [`EpochChain`](crate::core::commit::EpochChain): the links of every
    /// configuration epoch after the genesis, pushed so that a member that
    /// was away learns the voting membership (mesh.md §9).
    EpochChain = 14,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::QueryRequest,
            2 => Kind::QueryResponse,
            3 => Kind::OnionPacket,
            4 => Kind::OnionResponse,
            5 => Kind::SyncPull,
            6 => Kind::SyncChunk,
            7 => Kind::Refused,
            8 => Kind::Pbft,
            9 => Kind::PbftAck,
            10 => Kind::ProofRequest,
            11 => Kind::ProofResponse,
            12 => Kind::ProofPush,
            13 => Kind::CertifiedState,
            14 => Kind::EpochChain,
            _ => return None,
        })
    }
}

/// Wraps `body` in the sealed-message envelope.
pub fn envelope(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(WIRE_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Opens an envelope: checks magic, version, kind and that the length field
/// matches the input, then returns the kind and the body.
pub fn open_envelope(bytes: &[u8]) -> Result<(Kind, &[u8]), WireError> {
    if bytes.len() < ENVELOPE_HEADER_LEN {
        return Err(WireError::Truncated("envelope"));
    }
    if bytes[..4] != MAGIC {
        return Err(WireError::BadHeader("bad envelope magic"));
    }
    if bytes[4] != WIRE_VERSION {
        return Err(WireError::BadHeader("unknown envelope version"));
    }
    let kind = Kind::from_byte(bytes[5]).ok_or(WireError::BadHeader("unknown message kind"))?;
    let len = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
    if bytes.len() - ENVELOPE_HEADER_LEN != len {
        return Err(WireError::Truncated("envelope body"));
    }
    Ok((kind, &bytes[ENVELOPE_HEADER_LEN..]))
}

/// Encodes a message body with postcard.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Every type encoded here is a plain struct of integers, byte strings and
    // vectors, which postcard always encodes; an error would be a bug here.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Decodes a postcard body whose length was already bounded, refusing trailing
/// bytes.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, WireError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        _ => Err(WireError::Malformed(what)),
    }
}

/// A sealed request on the stream: the requester's session id, then a channel
/// frame. Returns `(session id, frame)`.
pub fn split_sealed_request(bytes: &[u8]) -> Result<([u8; SESSION_ID_LEN], &[u8]), WireError> {
    if bytes.len() <= SESSION_ID_LEN {
        return Err(WireError::Truncated("sealed request"));
    }
    let mut id = [0u8; SESSION_ID_LEN];
    id.copy_from_slice(&bytes[..SESSION_ID_LEN]);
    Ok((id, &bytes[SESSION_ID_LEN..]))
}

/// Header of a [`StreamFrame`] after its length prefix: the kind (1 byte) and
/// the tag (8, big-endian).
pub const STREAM_FRAME_HEADER_LEN: usize = 9;

/// What a frame on a long-lived stream carries (mesh.md §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamFrameKind {
    /// A request, to be answered under its tag.
    Request = 0,
    /// The answer to the sender's peer's request with this tag.
    Response = 1,
    /// The request with this tag gets no answer (a stream per exchange would
    /// have been closed without one).
    NoAnswer = 2,
}

/// One frame on a long-lived stream, without its 4-byte length prefix
/// (mesh.md §3.1): `kind ‖ be64(tag) ‖ payload`. The payload is what a stream
/// per exchange would carry as its request or response frame.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamFrame<'a> {
    /// What the frame is.
    pub kind: StreamFrameKind,
    /// The request's tag, chosen by the requester.
    pub tag: u64,
    /// The request or response (empty for [`StreamFrameKind::NoAnswer`]).
    pub payload: &'a [u8],
}

impl<'a> StreamFrame<'a> {
    /// Decodes a frame's body (the bytes after the length prefix).
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let Some((&kind, rest)) = body.split_first() else {
            return Err(WireError::Truncated("stream frame"));
        };
        let kind = match kind {
            0 => StreamFrameKind::Request,
            1 => StreamFrameKind::Response,
            2 => StreamFrameKind::NoAnswer,
            _ => return Err(WireError::BadHeader("stream frame kind")),
        };
        let Some((tag, payload)) = rest.split_first_chunk::<8>() else {
            return Err(WireError::Truncated("stream frame"));
        };
        let tag = u64::from_be_bytes(*tag);
        match (kind, payload.is_empty()) {
            (StreamFrameKind::NoAnswer, false) => Err(WireError::Malformed("stream frame")),
            (StreamFrameKind::Request | StreamFrameKind::Response, true) => {
                Err(WireError::Truncated("stream frame"))
            }
            _ => Ok(Self { kind, tag, payload }),
        }
    }

    /// Appends the frame, with its length prefix, to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let len = STREAM_FRAME_HEADER_LEN + self.payload.len();
        out.reserve(4 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.tag.to_be_bytes());
        out.extend_from_slice(self.payload);
    }
}

/// The first byte of a response on a sealed protocol.
pub(crate) const RESPONSE_SEALED: u8 = 0;
/// A response sent in the clear because the responder holds no session to seal
/// it with; one [`Refusal`] code follows.
pub(crate) const RESPONSE_PLAIN_REFUSAL: u8 = 1;

/// A response on a sealed protocol, as read from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum RawResponse<'a> {
    /// A channel frame.
    Sealed(&'a [u8]),
    /// A refusal in the clear (the responder had no session with the requester).
    Refused(Refusal),
}

/// Splits a response on a sealed protocol.
pub fn parse_response(bytes: &[u8]) -> Result<RawResponse<'_>, WireError> {
    match bytes.split_first() {
        Some((&RESPONSE_SEALED, frame)) if !frame.is_empty() => Ok(RawResponse::Sealed(frame)),
        Some((&RESPONSE_PLAIN_REFUSAL, [code])) => Ok(RawResponse::Refused(
            Refusal::from_code(*code).ok_or(WireError::Malformed("refusal code"))?,
        )),
        _ => Err(WireError::Malformed("response")),
    }
}

/// Why a node refused a request. Sent as one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The requester has no session with this node (never joined, or expired).
    NoSession,
    /// The requester's token does not grant the capability this protocol needs.
    CapabilityDenied,
    /// The requester's token has expired.
    TokenExpired,
    /// The requester's token was revoked.
    TokenRevoked,
    /// The requester's token failed another check.
    TokenInvalid,
    /// The requester exceeded its request rate.
    RateLimited,
    /// The requester has too many requests outstanding.
    TooManyInFlight,
    /// The node is at capacity.
    Overloaded,
    /// The request was malformed or broke a bound.
    Malformed,
    /// The request named something the node does not serve (an unknown map).
    Unsupported,
}

impl Refusal {
    /// Every refusal.
    pub const ALL: [Refusal; 10] = [
        Refusal::NoSession,
        Refusal::CapabilityDenied,
        Refusal::TokenExpired,
        Refusal::TokenRevoked,
        Refusal::TokenInvalid,
        Refusal::RateLimited,
        Refusal::TooManyInFlight,
        Refusal::Overloaded,
        Refusal::Malformed,
        Refusal::Unsupported,
    ];

    /// The code on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Refusal::NoSession => 1,
            Refusal::CapabilityDenied => 2,
            Refusal::TokenExpired => 3,
            Refusal::TokenRevoked => 4,
            Refusal::TokenInvalid => 5,
            Refusal::RateLimited => 6,
            Refusal::TooManyInFlight => 7,
            Refusal::Overloaded => 8,
            Refusal::Malformed => 9,
            Refusal::Unsupported => 10,
        }
    }

    /// The refusal with this code.
    pub fn from_code(code: u8) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.code() == code)
    }

    /// A short stable name, for metric labels and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::NoSession => "no_session",
            Refusal::CapabilityDenied => "capability_denied",
            Refusal::TokenExpired => "token_expired",
            Refusal::TokenRevoked => "token_revoked",
            Refusal::TokenInvalid => "token_invalid",
            Refusal::RateLimited => "rate_limited",
            Refusal::TooManyInFlight => "too_many_in_flight",
            Refusal::Overloaded => "overloaded",
            Refusal::Malformed => "malformed",
            Refusal::Unsupported => "unsupported",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plaintext refusal response.
pub(crate) fn plain_refusal(refusal: Refusal) -> Vec<u8> {
    vec![RESPONSE_PLAIN_REFUSAL, refusal.code()]
}

/// A federated query as it travels between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryRequest {
    /// Random id chosen by the origin; nodes answer each id once.
    pub id: [u8; QUERY_ID_LEN],
    /// How many more times the receiver may forward the query (0: answer locally only).
    pub hops_left: u8,
    /// How many peers each node forwards to at most.
    pub fanout: u8,
    /// Time the sender will wait for the answer, in milliseconds.
    pub budget_ms: u32,
    /// Results wanted.
    pub top_k: u16,
    /// The query vector.
    pub embedding: Vec<f32>,
    /// Metadata terms, sorted by key, that results must match.
    pub filter: Vec<(String, String)>,
    /// Whether hits carry their embeddings.
    pub embeddings: bool,
}

/// One node's signed answer to a query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedHits {
    /// The answering node's id.
    pub source: [u8; 32],
    /// Its public identity (fed-crypto encoding), whose hash is `source`: lets the
    /// origin verify a member its directory does not list yet.
    #[serde(with = "serde_bytes")]
    pub identity: Vec<u8>,
    /// Its hits, best first.
    pub hits: Vec<WireHit>,
    /// Ed25519 signature (fed-crypto's hybrid signature encoding, Ed25519 part
    /// only) over the response digest, see mesh.md.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// One hit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireHit {
    /// The pattern id.
    pub pattern: [u8; 32],
    /// Cosine similarity, finite.
    pub score: f32,
    /// The pattern version's timestamp, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The pattern's metadata, sorted by key.
    pub metadata: Vec<(String, String)>,
    /// The embedding, if the query asked for it.
    pub embedding: Option<Vec<f32>>,
}

/// What a node reports about a peer it forwarded a query to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireReport {
    /// The peer's node id.
    pub node: [u8; 32],
    /// 0 answered (its signed answer was left out to keep the message small:
    /// none of its hits ranked), 1 timed out, 2 refused, 3 unreachable.
    pub status: u8,
    /// The refusal code when refused, the number of hits (at most 255) when
    /// answered, else 0.
    pub detail: u8,
}

/// The answer to a [`QueryRequest`]: the signed answers of the receiver and of
/// every node it reached, and its reports on the peers it forwarded to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryResponse {
    /// Signed answers, at most one per source, at most [`MAX_ANSWERS_PER_RESPONSE`].
    pub responses: Vec<SignedHits>,
    /// Reports on peers the receiver (and the nodes below it) forwarded to, at
    /// most [`MAX_REPORTS_PER_RESPONSE`].
    pub reports: Vec<WireReport>,
    /// The receiver had answered this query id already (reached by another path).
    pub seen: bool,
}

/// The answer to an onion packet: the reply packet if the path produced one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnionResponse {
    /// A fed-onion reply packet, or none (dropped, or no reply asked for).
    pub reply: Option<serde_bytes::ByteBuf>,
}

/// Which replicated map a sync message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MapName {
    /// The directory of members.
    Directory,
    /// The application's shared map.
    Shared,
}

/// A pull of one chunk of a map: fed-crdt's `SyncRequest` encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPull {
    /// The map.
    pub map: MapName,
    /// fed-crdt `SyncRequest` bytes.
    #[serde(with = "serde_bytes")]
    pub request: Vec<u8>,
    /// The puller has news: the receiver should pull back from it now.
    pub notify: bool,
}

/// One chunk: fed-crdt's `MapDelta` encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncChunk {
    /// fed-crdt `MapDelta` bytes.
    #[serde(with = "serde_bytes")]
    pub delta: Vec<u8>,
}

/// A member's entry in the directory, signed by the member.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member's public identity (fed-crypto encoding).
    #[serde(with = "serde_bytes")]
    pub identity: Vec<u8>,
    /// Addresses to reach it (multiaddr bytes), at most [`MAX_RECORD_ADDRS`].
    pub addrs: Vec<serde_bytes::ByteBuf>,
    /// Its current onion key certificate (fed-onion encoding), if it has one.
    pub onion: Option<serde_bytes::ByteBuf>,
    /// Capability bits it offers (fed-handshake's bit numbering).
    pub capabilities: u32,
    /// postcard(fed-handshake `AdmissionProof`): what admits it (an invitation, or none).
    #[serde(with = "serde_bytes")]
    pub admission: Vec<u8>,
    /// Hybrid signature by the member (fed-crypto encoding) over the record digest.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Most addresses in a member record.
pub const MAX_RECORD_ADDRS: usize = 8;
/// Longest address in a member record, in bytes.
pub const MAX_ADDR_LEN: usize = 256;

/// A value of the shared map, signed by its writer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SharedValue {
    /// The value, or none for a deletion.
    pub value: Option<serde_bytes::ByteBuf>,
    /// Ed25519 signature of the writer (fed-crypto hybrid encoding, Ed25519 part)
    /// over the write digest.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Decodes a sealed message's plaintext expecting `kind`.
pub(crate) fn decode_body<T: DeserializeOwned>(
    plaintext: &[u8],
    kind: Kind,
    what: &'static str,
) -> Result<T, WireError> {
    let (found, body) = open_envelope(plaintext)?;
    if found != kind {
        return Err(WireError::BadHeader("unexpected message kind"));
    }
    decode(body, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_bad_headers_are_refused() {
        let e = envelope(Kind::SyncChunk, b"abc");
        assert_eq!(open_envelope(&e), Ok((Kind::SyncChunk, &b"abc"[..])));
        let mut bad = e.clone();
        bad[0] ^= 1;
        assert!(matches!(open_envelope(&bad), Err(WireError::BadHeader(_))));
        let mut bad = e.clone();
        bad[4] = 2;
        assert!(matches!(open_envelope(&bad), Err(WireError::BadHeader(_))));
        let mut bad = e.clone();
        bad[5] = 99;
        assert!(matches!(open_envelope(&bad), Err(WireError::BadHeader(_))));
        assert!(matches!(
            open_envelope(&e[..e.len() - 1]),
            Err(WireError::Truncated(_))
        ));
        let mut long = e.clone();
        long.push(0);
        assert!(matches!(open_envelope(&long), Err(WireError::Truncated(_))));
    }

    #[test]
    fn refusal_codes_are_distinct_and_round_trip() {
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_code(r.code()), Some(r));
            assert_eq!(
                parse_response(&plain_refusal(r)),
                Ok(RawResponse::Refused(r))
            );
        }
        assert_eq!(Refusal::from_code(0), None);
        assert!(parse_response(&[RESPONSE_PLAIN_REFUSAL, 0]).is_err());
        assert!(parse_response(&[RESPONSE_SEALED]).is_err());
        assert!(parse_response(&[]).is_err());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let pull = SyncPull {
            map: MapName::Shared,
            request: vec![1, 2, 3],
            notify: false,
        };
        let mut bytes = encode(&pull);
        assert_eq!(decode::<SyncPull>(&bytes, "pull"), Ok(pull));
        bytes.push(0);
        assert!(decode::<SyncPull>(&bytes, "pull").is_err());
    }

    #[test]
    fn stream_frames_round_trip_and_bad_ones_are_refused() {
        let mut out = Vec::new();
        let frame = StreamFrame {
            kind: StreamFrameKind::Response,
            tag: 0x0102_0304_0506_0708,
            payload: b"ack",
        };
        frame.encode_into(&mut out);
        assert_eq!(out[..4], 12u32.to_be_bytes());
        assert_eq!(out[4..13], [1, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(StreamFrame::decode(&out[4..]), Ok(frame));
        let none = [2, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(
            StreamFrame::decode(&none).map(|f| (f.kind, f.tag)),
            Ok((StreamFrameKind::NoAnswer, 9))
        );
        // A request without a payload, an answerless frame with one, a short
        // header, an unknown kind.
        assert!(StreamFrame::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        assert!(StreamFrame::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 1, 7]).is_err());
        assert!(StreamFrame::decode(&[1, 0, 0]).is_err());
        assert!(StreamFrame::decode(&[]).is_err());
        assert!(matches!(
            StreamFrame::decode(&[3, 0, 0, 0, 0, 0, 0, 0, 1, 7]),
            Err(WireError::BadHeader(_))
        ));
    }
}
