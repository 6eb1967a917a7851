//! Every message of the protocol, their signed statements and their encodings.
//!
//! Replica signatures are Ed25519 (`fed_crypto::Identity::sign_ed25519`) under the
//! label [`labels::SIGNATURE`] over a 32-byte *statement*:
//! `hash(kind label, [membership id, postcard(fields but the signature)])`.
//! The statement of each kind is spelled out on its type and in
//! `docs/protocol/pbft.md`.

use std::collections::{HashSet, VecDeque};

use fed_crypto::{HybridSignature, Identity};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    labels,
    membership::{Membership, ReplicaIndex},
    proof::{CheckpointCert, CommitProof, PreparedCert},
    wire::{self, Kind, Signature},
};

/// A 32-byte BLAKE3 digest.
pub type Digest = [u8; 32];

/// A client's identifier (for example the [`NodeId`](fed_crypto::NodeId) of its identity).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub [u8; 32]);

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientId(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// A truncated (16-byte) MAC tag of a request or reply.
pub type Tag = [u8; 16];

/// The identity of a request: its client and timestamp.
pub type RequestId = (ClientId, u64);

/// A client request: `(client, timestamp, operation)` and an authenticator.
///
/// The authenticator holds one 16-byte MAC per replica, entry `i` keyed with the
/// key client and replica `i` share (see [`ClientKey`](crate::ClientKey)).
/// Timestamps of one client must increase: a replica executes a request only if its
/// timestamp is newer than the client's latest executed one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The client.
    pub client: ClientId,
    /// The client's timestamp (a counter that increases with every new request).
    pub timestamp: u64,
    /// The operation for the application.
    #[serde(with = "wire::bytes")]
    pub operation: Vec<u8>,
    /// One MAC per replica, in membership order.
    pub authenticator: Vec<Tag>,
}

impl Request {
    /// The request's identity `(client, timestamp)`.
    pub fn id(&self) -> RequestId {
        (self.client, self.timestamp)
    }
}

/// PRE-PREPARE: the primary of `view` assigns the batch with `digest` to `seq`.
///
/// Statement: `hash(PRE_PREPARE, [membership id, postcard(view, seq, digest)])`,
/// signed by the primary of `view`. The batch travels beside the signed part:
/// `digest = batch_digest(batch)` binds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrePrepare {
    /// View.
    pub view: u64,
    /// Sequence number.
    pub seq: u64,
    /// Digest of `batch`.
    pub digest: Digest,
    /// The primary's signature.
    pub signature: Signature,
    /// The encoded batch (postcard `Vec<Request>`).
    #[serde(with = "wire::bytes")]
    pub batch: Vec<u8>,
}

/// PREPARE: backup `replica` accepted the pre-prepare `(view, seq, digest)`.
///
/// Statement: `hash(PREPARE, [membership id, postcard(view, seq, digest, replica)])`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// View.
    pub view: u64,
    /// Sequence number.
    pub seq: u64,
    /// Batch digest.
    pub digest: Digest,
    /// The signer.
    pub replica: ReplicaIndex,
    /// Its signature.
    pub signature: Signature,
}

/// COMMIT: `replica` holds a prepared certificate for `(view, seq, digest)`.
///
/// Statement: `hash(COMMIT, [membership id, postcard(view, seq, digest, replica)])`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// View.
    pub view: u64,
    /// Sequence number.
    pub seq: u64,
    /// Batch digest.
    pub digest: Digest,
    /// The signer.
    pub replica: ReplicaIndex,
    /// Its signature.
    pub signature: Signature,
}

/// CHECKPOINT: `replica` executed every batch up to `seq` and its state digest is `state`.
///
/// Statement: `hash(CHECKPOINT, [membership id, postcard(seq, state, replica)])`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number (a multiple of the checkpoint interval).
    pub seq: u64,
    /// State digest, `hash(STATE, [be64(seq), snapshot])`.
    pub state: Digest,
    /// The signer.
    pub replica: ReplicaIndex,
    /// Its signature.
    pub signature: Signature,
}

/// VIEW-CHANGE: `replica` asks to move to `view`, with its latest stable checkpoint
/// and, for every sequence number above it, the prepared certificate of the
/// highest view in which it prepared.
///
/// Statement: `hash(VIEW_CHANGE, [membership id, postcard(view, checkpoint,
/// prepared, replica)])`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    /// The view asked for.
    pub view: u64,
    /// The sender's latest stable checkpoint, with its certificate.
    pub checkpoint: CheckpointCert,
    /// Prepared certificates, one per sequence number, in increasing order.
    pub prepared: Vec<PreparedCert>,
    /// The signer.
    pub replica: ReplicaIndex,
    /// Its signature.
    pub signature: Signature,
}

/// One pre-prepare of a NEW-VIEW: the new primary's signature over the PRE-PREPARE
/// statement `(view, seq, digest)` of the new view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewViewEntry {
    /// Sequence number.
    pub seq: u64,
    /// Batch digest (the null batch's digest for a gap).
    pub digest: Digest,
    /// The new primary's PRE-PREPARE signature.
    pub signature: Signature,
}

/// NEW-VIEW: the primary of `view` installs it with a quorum of VIEW-CHANGE
/// messages and the pre-prepares computed from them.
///
/// Statement: `hash(NEW_VIEW, [membership id, postcard(view, view_changes,
/// pre_prepares)])`, signed by the primary of `view`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    /// The new view.
    pub view: u64,
    /// A quorum of VIEW-CHANGE messages for `view`, from distinct replicas, in
    /// increasing replica order.
    pub view_changes: Vec<ViewChange>,
    /// The pre-prepares of the new view, in increasing sequence order.
    pub pre_prepares: Vec<NewViewEntry>,
    /// The primary's signature.
    pub signature: Signature,
}

/// A lagging replica asks for committed batches from `seq` on. Unsigned: the
/// answers certify themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// First sequence number wanted.
    pub seq: u64,
}

/// A committed batch and its proof, answering a [`Fetch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The commit proof of the batch.
    pub proof: CommitProof,
    /// The encoded batch.
    #[serde(with = "wire::bytes")]
    pub batch: Vec<u8>,
}

/// A lagging replica asks for the state at the stable checkpoint `seq` (or newer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRequest {
    /// The checkpoint wanted.
    pub seq: u64,
}

/// A checkpointed state and the certificate that names its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateResponse {
    /// The stable checkpoint certificate.
    pub cert: CheckpointCert,
    /// The replica snapshot (application snapshot and client table).
    #[serde(with = "wire::bytes")]
    pub snapshot: Vec<u8>,
}

/// What executing a request produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The application's result.
    Executed(#[serde(with = "wire::bytes")] Vec<u8>),
    /// Not executed: the replicated client table was full.
    Refused,
}

/// A replica's reply to a client, authenticated with the key they share.
///
/// `tag = BLAKE3-keyed_hash(Krep, be64(view) ‖ be64(timestamp) ‖ postcard(outcome))[0..16]`,
/// where `Krep` is the reply key bound to the membership, `replica` and `client`
/// (docs/protocol/pbft.md §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The view in which the request executed (tells the client the primary).
    pub view: u64,
    /// The client.
    pub client: ClientId,
    /// The request's timestamp.
    pub timestamp: u64,
    /// The replying replica.
    pub replica: ReplicaIndex,
    /// The result.
    pub outcome: Outcome,
    /// MAC under the client–replica key.
    pub tag: Tag,
}

/// Any message, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// A client request (from a client, or forwarded by a replica).
    Request(Request),
    /// PRE-PREPARE.
    PrePrepare(PrePrepare),
    /// PREPARE.
    Prepare(Prepare),
    /// COMMIT.
    Commit(Commit),
    /// CHECKPOINT.
    Checkpoint(Checkpoint),
    /// VIEW-CHANGE.
    ViewChange(ViewChange),
    /// NEW-VIEW.
    NewView(NewView),
    /// Request for committed batches.
    Fetch(Fetch),
    /// A committed batch with its proof.
    Committed(Committed),
    /// A stable checkpoint certificate (answers a fetch below the sender's log).
    StableCheckpoint(CheckpointCert),
    /// Request for a checkpointed state.
    StateRequest(StateRequest),
    /// A checkpointed state.
    StateResponse(StateResponse),
    /// A reply to a client.
    Reply(Reply),
}

impl Message {
    /// Decodes one whole message (envelope and body). Never panics; refuses
    /// anything larger than its kind's limit, malformed or with trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (kind, body) = wire::open(bytes)?;
        Ok(match kind {
            Kind::Request => Message::Request(fast::request(body)?),
            Kind::PrePrepare => Message::PrePrepare(wire::decode(body, "pre-prepare")?),
            Kind::Prepare => Message::Prepare(wire::decode(body, "prepare")?),
            Kind::Commit => Message::Commit(wire::decode(body, "commit")?),
            Kind::Checkpoint => Message::Checkpoint(wire::decode(body, "checkpoint")?),
            Kind::ViewChange => Message::ViewChange(wire::decode(body, "view-change")?),
            Kind::NewView => Message::NewView(wire::decode(body, "new-view")?),
            Kind::Fetch => Message::Fetch(wire::decode(body, "fetch")?),
            Kind::Committed => Message::Committed(wire::decode(body, "committed")?),
            Kind::StableCheckpoint => {
                Message::StableCheckpoint(wire::decode(body, "stable checkpoint")?)
            }
            Kind::StateRequest => Message::StateRequest(wire::decode(body, "state request")?),
            Kind::StateResponse => Message::StateResponse(wire::decode(body, "state response")?),
            Kind::Reply => Message::Reply(wire::decode(body, "reply")?),
        })
    }

    /// Encodes the message in its envelope. Fails only if it exceeds its kind's limit.
    pub fn encode(&self) -> Result<Vec<u8>> {
        match self {
            Message::Request(m) => wire::seal(Kind::Request, m),
            Message::PrePrepare(m) => wire::seal(Kind::PrePrepare, m),
            Message::Prepare(m) => wire::seal(Kind::Prepare, m),
            Message::Commit(m) => wire::seal(Kind::Commit, m),
            Message::Checkpoint(m) => wire::seal(Kind::Checkpoint, m),
            Message::ViewChange(m) => wire::seal(Kind::ViewChange, m),
            Message::NewView(m) => wire::seal(Kind::NewView, m),
            Message::Fetch(m) => wire::seal(Kind::Fetch, m),
            Message::Committed(m) => wire::seal(Kind::Committed, m),
            Message::StableCheckpoint(m) => wire::seal(Kind::StableCheckpoint, m),
            Message::StateRequest(m) => wire::seal(Kind::StateRequest, m),
            Message::StateResponse(m) => wire::seal(Kind::StateResponse, m),
            Message::Reply(m) => wire::seal(Kind::Reply, m),
        }
    }

    /// A short name of the message's kind, for logs and tests.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Request(_) => "request",
            Message::PrePrepare(_) => "pre-prepare",
            Message::Prepare(_) => "prepare",
            Message::Commit(_) => "commit",
            Message::Checkpoint(_) => "checkpoint",
            Message::ViewChange(_) => "view-change",
            Message::NewView(_) => "new-view",
            Message::Fetch(_) => "fetch",
            Message::Committed(_) => "committed",
            Message::StableCheckpoint(_) => "stable-checkpoint",
            Message::StateRequest(_) => "state-request",
            Message::StateResponse(_) => "state-response",
            Message::Reply(_) => "reply",
        }
    }
}

/// A hand-written decoder of requests and batches, the hot path of every replica:
/// byte for byte what the canonical postcard decoder (`wire::decode`: postcard on a
/// 64-bit target, then re-encoded and compared) decodes into `Request` and
/// `Vec<Request>` (the same values accepted, the same inputs refused; property
/// tests compare the two), without serde's per-byte calls for fixed-size arrays.
///
/// Lengths are read as 64-bit varints on every target, as postcard reads them on
/// 64-bit ones (postcard on a 32-bit target reads `usize` as a 32-bit varint), so
/// replicas built for different targets accept the same batches.
mod fast {
    use super::{ClientId, Request, Tag};
    use crate::error::{Error, Result};

    /// The smallest encoded request: client, one-byte timestamp, empty operation,
    /// empty authenticator.
    const MIN_REQUEST: usize = 32 + 1 + 1 + 1;

    struct Reader<'a> {
        input: &'a [u8],
        what: &'static str,
    }

    impl<'a> Reader<'a> {
        fn err(&self) -> Error {
            Error::Malformed(self.what)
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8]> {
            if n > self.input.len() {
                return Err(self.err());
            }
            let (head, rest) = self.input.split_at(n);
            self.input = rest;
            Ok(head)
        }

        /// A postcard `u64`/`usize` varint: at most 10 bytes, the tenth at most 1,
        /// and minimal (no final zero group after the first byte), so that every
        /// value has one encoding; postcard itself accepts overlong ones, and the
        /// generic decoder refuses them by re-encoding (`wire::decode`).
        fn varint(&mut self) -> Result<u64> {
            let mut out = 0u64;
            for i in 0..10 {
                let [b] = *self.take(1)? else {
                    return Err(self.err());
                };
                out |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    if i == 9 && b > 1 {
                        return Err(self.err());
                    }
                    if i > 0 && b == 0 {
                        return Err(Error::NonCanonical(self.what));
                    }
                    return Ok(out);
                }
            }
            Err(self.err())
        }

        fn len(&mut self) -> Result<usize> {
            usize::try_from(self.varint()?).map_err(|_| self.err())
        }

        fn request(&mut self) -> Result<Request> {
            let client = ClientId(self.take(32)?.try_into().map_err(|_| self.err())?);
            let timestamp = self.varint()?;
            let len = self.len()?;
            let operation = self.take(len)?.to_vec();
            let count = self.len()?;
            let tags = count
                .checked_mul(16)
                .filter(|n| *n <= self.input.len())
                .ok_or_else(|| self.err())?;
            let authenticator = self
                .take(tags)?
                .chunks_exact(16)
                .map(|c| {
                    let mut t: Tag = [0; 16];
                    t.copy_from_slice(c);
                    t
                })
                .collect();
            Ok(Request {
                client,
                timestamp,
                operation,
                authenticator,
            })
        }

        fn finish<T>(&self, value: T) -> Result<T> {
            if self.input.is_empty() {
                Ok(value)
            } else {
                Err(self.err())
            }
        }
    }

    /// Decodes the body of a REQUEST message.
    pub(crate) fn request(body: &[u8]) -> Result<Request> {
        let mut r = Reader {
            input: body,
            what: "request",
        };
        let req = r.request()?;
        r.finish(req)
    }

    /// Decodes a batch (postcard `Vec<Request>`).
    pub(crate) fn batch(bytes: &[u8]) -> Result<Vec<Request>> {
        let mut r = Reader {
            input: bytes,
            what: "batch",
        };
        let count = r.len()?;
        // Bounded by what the input can hold, not by the announced count.
        let mut out = Vec::with_capacity(count.min(r.input.len() / MIN_REQUEST));
        for _ in 0..count {
            out.push(r.request()?);
        }
        r.finish(out)
    }
}

/// Decodes a batch: the postcard encoding of `Vec<Request>` that PRE-PREPARE and
/// COMMITTED messages carry (docs/protocol/pbft.md §2). At most
/// [`MAX_BATCH_LEN`](crate::MAX_BATCH_LEN) bytes; trailing bytes and non-canonical
/// encodings (overlong varints) are refused, so a batch digest names one list of
/// requests and one only.
pub fn decode_batch(batch: &[u8]) -> Result<Vec<Request>> {
    if batch.len() > wire::MAX_BATCH_LEN {
        return Err(Error::TooLarge {
            what: "batch",
            len: batch.len(),
            max: wire::MAX_BATCH_LEN,
        });
    }
    fast::batch(batch)
}

/// `hash(BATCH, [batch])`: the digest of an encoded batch.
pub fn batch_digest(batch: &[u8]) -> Digest {
    fed_crypto::hash(labels::BATCH, &[batch])
}

/// The encoding of the empty batch (the null request filling a gap after a view change).
pub const NULL_BATCH: &[u8] = &[0];

/// A statement: `hash(label, [membership id, body])`.
pub(crate) fn statement(label: &str, m: &Membership, body: &[u8]) -> Digest {
    fed_crypto::hash(label, &[m.id(), body])
}

pub(crate) fn pre_prepare_statement(
    m: &Membership,
    view: u64,
    seq: u64,
    digest: &Digest,
) -> Digest {
    statement(labels::PRE_PREPARE, m, &wire::encode(&(view, seq, digest)))
}

/// The statement of a PREPARE or COMMIT (they differ only in `label`).
fn vote_statement(
    label: &str,
    m: &Membership,
    view: u64,
    seq: u64,
    digest: &Digest,
    replica: ReplicaIndex,
) -> Digest {
    statement(label, m, &wire::encode(&(view, seq, digest, replica)))
}

pub(crate) fn prepare_statement(
    m: &Membership,
    view: u64,
    seq: u64,
    digest: &Digest,
    replica: ReplicaIndex,
) -> Digest {
    vote_statement(labels::PREPARE, m, view, seq, digest, replica)
}

pub(crate) fn commit_statement(
    m: &Membership,
    view: u64,
    seq: u64,
    digest: &Digest,
    replica: ReplicaIndex,
) -> Digest {
    vote_statement(labels::COMMIT, m, view, seq, digest, replica)
}

pub(crate) fn checkpoint_statement(
    m: &Membership,
    seq: u64,
    state: &Digest,
    replica: ReplicaIndex,
) -> Digest {
    statement(labels::CHECKPOINT, m, &wire::encode(&(seq, state, replica)))
}

/// Signs a statement with the replica's Ed25519 key.
pub(crate) fn sign(identity: &Identity, statement: &Digest) -> Result<Signature> {
    let sig = identity
        .sign_ed25519(labels::SIGNATURE, statement)?
        .to_bytes();
    let mut out = [0u8; 64];
    out.copy_from_slice(sig.get(1..65).ok_or(Error::Malformed("signature length"))?);
    Ok(Signature(out))
}

/// Remembers signatures already verified, so that the votes carried again inside
/// VIEW-CHANGE and NEW-VIEW messages are not verified twice. Bounded to `cap`
/// entries of 32 bytes, oldest forgotten first.
#[derive(Debug)]
pub(crate) struct SigCache {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
    cap: usize,
}

impl SigCache {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            set: HashSet::with_capacity(cap.min(1 << 16)),
            order: VecDeque::with_capacity(cap.min(1 << 16)),
            cap,
        }
    }

    fn key(signer: ReplicaIndex, statement: &Digest, sig: &Signature) -> [u8; 32] {
        fed_crypto::hash(
            labels::VERIFIED,
            &[&signer.to_be_bytes(), statement, &sig.0],
        )
    }

    fn insert(&mut self, key: [u8; 32]) {
        if self.cap == 0 || !self.set.insert(key) {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// Verifies `sig` as replica `signer`'s signature over `statement`.
pub(crate) fn verify_signature(
    m: &Membership,
    cache: &mut Option<&mut SigCache>,
    signer: ReplicaIndex,
    statement: &Digest,
    sig: &Signature,
) -> Result<()> {
    let identity = m.member(signer).ok_or(Error::NotMember(signer))?;
    let key = cache
        .as_ref()
        .map(|_| SigCache::key(signer, statement, sig));
    if let (Some(c), Some(k)) = (cache.as_ref(), key.as_ref())
        && c.set.contains(k)
    {
        return Ok(());
    }
    let mut enc = [0u8; 65];
    enc[1..].copy_from_slice(&sig.0);
    let hybrid = HybridSignature::from_bytes(&enc).map_err(|_| Error::BadSignature(signer))?;
    identity
        .verify_ed25519(labels::SIGNATURE, statement, &hybrid)
        .map_err(|_| Error::BadSignature(signer))?;
    if let (Some(c), Some(k)) = (cache.as_mut(), key) {
        c.insert(k);
    }
    Ok(())
}

impl PrePrepare {
    /// Signs a pre-prepare of `batch` for `(view, seq)` as the primary `identity`.
    pub fn new(
        identity: &Identity,
        m: &Membership,
        view: u64,
        seq: u64,
        batch: Vec<u8>,
    ) -> Result<Self> {
        let digest = batch_digest(&batch);
        let signature = sign(identity, &pre_prepare_statement(m, view, seq, &digest))?;
        Ok(Self {
            view,
            seq,
            digest,
            signature,
            batch,
        })
    }

    pub(crate) fn verify_signature(
        &self,
        m: &Membership,
        cache: &mut Option<&mut SigCache>,
    ) -> Result<()> {
        let st = pre_prepare_statement(m, self.view, self.seq, &self.digest);
        verify_signature(m, cache, m.primary(self.view), &st, &self.signature)
    }
}

impl Prepare {
    /// Signs a prepare as replica `replica` with `identity`.
    pub fn new(
        identity: &Identity,
        m: &Membership,
        view: u64,
        seq: u64,
        digest: Digest,
        replica: ReplicaIndex,
    ) -> Result<Self> {
        let signature = sign(identity, &prepare_statement(m, view, seq, &digest, replica))?;
        Ok(Self {
            view,
            seq,
            digest,
            replica,
            signature,
        })
    }

    pub(crate) fn verify_signature(
        &self,
        m: &Membership,
        cache: &mut Option<&mut SigCache>,
    ) -> Result<()> {
        let st = prepare_statement(m, self.view, self.seq, &self.digest, self.replica);
        verify_signature(m, cache, self.replica, &st, &self.signature)
    }
}

impl Commit {
    /// Signs a commit as replica `replica` with `identity`.
    pub fn new(
        identity: &Identity,
        m: &Membership,
        view: u64,
        seq: u64,
        digest: Digest,
        replica: ReplicaIndex,
    ) -> Result<Self> {
        let signature = sign(identity, &commit_statement(m, view, seq, &digest, replica))?;
        Ok(Self {
            view,
            seq,
            digest,
            replica,
            signature,
        })
    }

    pub(crate) fn verify_signature(
        &self,
        m: &Membership,
        cache: &mut Option<&mut SigCache>,
    ) -> Result<()> {
        let st = commit_statement(m, self.view, self.seq, &self.digest, self.replica);
        verify_signature(m, cache, self.replica, &st, &self.signature)
    }
}

impl Checkpoint {
    /// Signs a checkpoint as replica `replica` with `identity`.
    pub fn new(
        identity: &Identity,
        m: &Membership,
        seq: u64,
        state: Digest,
        replica: ReplicaIndex,
    ) -> Result<Self> {
        let signature = sign(identity, &checkpoint_statement(m, seq, &state, replica))?;
        Ok(Self {
            seq,
            state,
            replica,
            signature,
        })
    }

    pub(crate) fn verify_signature(
        &self,
        m: &Membership,
        cache: &mut Option<&mut SigCache>,
    ) -> Result<()> {
        let st = checkpoint_statement(m, self.seq, &self.state, self.replica);
        verify_signature(m, cache, self.replica, &st, &self.signature)
    }
}

impl ViewChange {
    fn statement(&self, m: &Membership) -> Digest {
        statement(
            labels::VIEW_CHANGE,
            m,
            &wire::encode(&(self.view, &self.checkpoint, &self.prepared, self.replica)),
        )
    }

    /// Builds and signs a view change as replica `replica`.
    pub fn new(
        identity: &Identity,
        m: &Membership,
        view: u64,
        checkpoint: CheckpointCert,
        prepared: Vec<PreparedCert>,
        replica: ReplicaIndex,
    ) -> Result<Self> {
        let mut vc = Self {
            view,
            checkpoint,
            prepared,
            replica,
            signature: Signature([0; 64]),
        };
        vc.signature = sign(identity, &vc.statement(m))?;
        Ok(vc)
    }

    /// Checks everything a VIEW-CHANGE must satisfy on its own: its signature, its
    /// checkpoint certificate, and that its prepared certificates are valid, for
    /// views below `view`, in strictly increasing sequence order within
    /// `(checkpoint, checkpoint + window]`.
    pub(crate) fn verify(
        &self,
        m: &Membership,
        window: u64,
        cache: &mut Option<&mut SigCache>,
    ) -> Result<()> {
        verify_signature(m, cache, self.replica, &self.statement(m), &self.signature)?;
        self.checkpoint.verify_with(m, cache)?;
        let low = self.checkpoint.seq;
        let mut last = low;
        if self.prepared.len() as u64 > window {
            return Err(Error::InvalidViewChange("too many prepared certificates"));
        }
        for p in &self.prepared {
            if p.seq <= last || p.seq > low.saturating_add(window) {
                return Err(Error::InvalidViewChange(
                    "prepared certificate out of order or range",
                ));
            }
            if p.view >= self.view {
                return Err(Error::InvalidViewChange(
                    "prepared certificate from a later view",
                ));
            }
            last = p.seq;
            p.verify_with(m, cache)?;
        }
        Ok(())
    }
}

impl NewView {
    pub(crate) fn statement(&self, m: &Membership) -> Digest {
        statement(
            labels::NEW_VIEW,
            m,
            &wire::encode(&(self.view, &self.view_changes, &self.pre_prepares)),
        )
    }

    /// Builds and signs a NEW-VIEW as the primary of `view`.
    pub fn new(
        identity: &Identity,
        m: &Membership,
        view: u64,
        view_changes: Vec<ViewChange>,
        pre_prepares: Vec<NewViewEntry>,
    ) -> Result<Self> {
        let mut nv = Self {
            view,
            view_changes,
            pre_prepares,
            signature: Signature([0; 64]),
        };
        nv.signature = sign(identity, &nv.statement(m))?;
        Ok(nv)
    }
}

impl NewViewEntry {
    /// Signs the pre-prepare `(view, seq, digest)` of a new view.
    pub fn new(
        identity: &Identity,
        m: &Membership,
        view: u64,
        seq: u64,
        digest: Digest,
    ) -> Result<Self> {
        Ok(Self {
            seq,
            digest,
            signature: sign(identity, &pre_prepare_statement(m, view, seq, &digest))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Vec<Identity>, Membership) {
        let ids: Vec<Identity> = (1..=4u8)
            .map(|i| Identity::from_seeds(&[i; 32], None))
            .collect();
        let m = Membership::new(ids.iter().map(|i| i.public().clone()).collect()).unwrap();
        (ids, m)
    }

    #[test]
    fn messages_round_trip_and_verify() {
        let (ids, m) = setup();
        let pp = PrePrepare::new(&ids[1], &m, 1, 5, NULL_BATCH.to_vec()).unwrap();
        let p = Prepare::new(&ids[2], &m, 1, 5, pp.digest, 2).unwrap();
        let c = Commit::new(&ids[3], &m, 1, 5, pp.digest, 3).unwrap();
        let k = Checkpoint::new(&ids[0], &m, 8, [4; 32], 0).unwrap();
        let r = Request {
            client: ClientId([1; 32]),
            timestamp: 9,
            operation: b"op".to_vec(),
            authenticator: vec![[0; 16]; 4],
        };
        let msgs = vec![
            Message::PrePrepare(pp.clone()),
            Message::Prepare(p.clone()),
            Message::Commit(c.clone()),
            Message::Checkpoint(k.clone()),
            Message::Request(r),
            Message::Fetch(Fetch { seq: 3 }),
            Message::StateRequest(StateRequest { seq: 8 }),
        ];
        for msg in msgs {
            let enc = msg.encode().unwrap();
            assert_eq!(Message::decode(&enc).unwrap(), msg, "{}", msg.kind_name());
            for cut in 0..enc.len() {
                assert!(Message::decode(&enc[..cut]).is_err());
            }
        }
        let mut none = None;
        pp.verify_signature(&m, &mut none).unwrap();
        p.verify_signature(&m, &mut none).unwrap();
        c.verify_signature(&m, &mut none).unwrap();
        k.verify_signature(&m, &mut none).unwrap();
        // Any field change breaks the signature, and so does claiming another signer.
        let mut p2 = p.clone();
        p2.seq = 6;
        assert!(p2.verify_signature(&m, &mut none).is_err());
        let mut p3 = p.clone();
        p3.replica = 3;
        assert!(p3.verify_signature(&m, &mut none).is_err());
        let mut c2 = c.clone();
        c2.view = 2;
        assert!(c2.verify_signature(&m, &mut none).is_err());
        // A pre-prepare signed by a non-primary does not verify.
        let bad = PrePrepare::new(&ids[2], &m, 1, 5, NULL_BATCH.to_vec()).unwrap();
        assert!(bad.verify_signature(&m, &mut none).is_err());
        // A prepare is not a commit.
        let as_commit = Commit {
            view: p.view,
            seq: p.seq,
            digest: p.digest,
            replica: p.replica,
            signature: p.signature,
        };
        assert!(as_commit.verify_signature(&m, &mut none).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Arbitrary bytes never panic the decoder; whatever decodes re-encodes to
        /// exactly the input (every accepted encoding is the canonical one).
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), kind in 1u8..14) {
            let mut framed = wire::MAGIC.to_vec();
            framed.push(wire::WIRE_VERSION);
            framed.push(kind);
            framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            framed.extend_from_slice(&bytes);
            for input in [&bytes[..], &framed[..]] {
                if let Ok(m) = Message::decode(input) {
                    let again = m.encode().unwrap();
                    proptest::prop_assert_eq!(&again[..], input);
                }
            }
        }

        /// The hand-written request and batch decoders accept exactly what postcard
        /// accepts, with the same values: on arbitrary bytes, and on valid
        /// encodings cut short or with bytes flipped.
        #[test]
        fn fast_decoders_agree_with_postcard(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), ops in proptest::collection::vec((proptest::prelude::any::<u64>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..150), 0usize..6), 0..5), cut in proptest::prelude::any::<usize>(), flip in proptest::prelude::any::<(usize, u8)>()) {
            let requests: Vec<Request> = ops
                .into_iter()
                .map(|(timestamp, operation, n)| Request {
                    client: ClientId([n as u8; 32]),
                    timestamp,
                    operation,
                    authenticator: vec![[timestamp as u8; 16]; n],
                })
                .collect();
            let valid = wire::encode(&requests);
            let mut flipped = valid.clone();
            let at = flip.0 % flipped.len();
            flipped[at] ^= flip.1;
            let inputs = [bytes.clone(), valid.clone(), valid[..cut % (valid.len() + 1)].to_vec(), flipped];
            for input in &inputs {
                let fast = fast::batch(input).ok();
                let slow = wire::decode::<Vec<Request>>(input, "batch").ok();
                proptest::prop_assert_eq!(fast, slow);
            }
            for input in inputs.iter().chain(requests.iter().map(wire::encode).collect::<Vec<_>>().iter()) {
                let fast = fast::request(input).ok();
                let slow = wire::decode::<Request>(input, "request").ok();
                proptest::prop_assert_eq!(fast, slow);
            }
            proptest::prop_assert_eq!(fast::batch(&valid).unwrap(), requests);
        }

        /// Requests round-trip for any field values.
        #[test]
        fn requests_round_trip(client in proptest::prelude::any::<[u8; 32]>(), timestamp in proptest::prelude::any::<u64>(), op in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), tags in proptest::collection::vec(proptest::prelude::any::<[u8; 16]>(), 0..8)) {
            let m = Message::Request(Request { client: ClientId(client), timestamp, operation: op, authenticator: tags });
            proptest::prop_assert_eq!(Message::decode(&m.encode().unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn fast_decoders_agree_with_postcard_on_varint_edges() {
        // Timestamps and lengths at varint boundaries, non-minimal encodings, a
        // tenth byte above 1, an eleventh byte, lengths beyond the input.
        let mut cases: Vec<Vec<u8>> = Vec::new();
        let client = [7u8; 32];
        for ts in [
            vec![0x00],
            vec![0x7f],
            vec![0x80, 0x01],
            vec![0x80, 0x00],
            vec![0xff; 9].into_iter().chain([0x01]).collect(),
            vec![0xff; 9].into_iter().chain([0x02]).collect(),
            vec![0x80; 10].into_iter().chain([0x00]).collect(),
            vec![0x80; 9].into_iter().chain([0x00]).collect(),
        ] {
            for len in [
                vec![0x00],
                vec![0x03],
                vec![0x83, 0x00],
                vec![0xff, 0xff, 0xff, 0x0f],
            ] {
                for tags in [vec![0x00], vec![0x01], vec![0x81, 0x00], vec![0xff; 10]] {
                    let mut body = client.to_vec();
                    body.extend_from_slice(&ts);
                    body.extend_from_slice(&len);
                    body.extend_from_slice(b"abc");
                    body.extend_from_slice(&tags);
                    body.extend_from_slice(&[5; 16]);
                    cases.push(body);
                }
            }
        }
        let mut accepted = 0;
        for body in &cases {
            let fast = fast::request(body).ok();
            let slow = wire::decode::<Request>(body, "request").ok();
            assert_eq!(fast, slow, "{body:02x?}");
            accepted += usize::from(fast.is_some());
            let mut batch = vec![0x01];
            batch.extend_from_slice(body);
            assert_eq!(
                fast::batch(&batch).ok(),
                wire::decode::<Vec<Request>>(&batch, "batch").ok()
            );
        }
        assert!(
            accepted > 0 && accepted < cases.len(),
            "{accepted} of {}",
            cases.len()
        );
        // A count far beyond the input is refused without a large allocation.
        assert!(fast::batch(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    /// Makes the varint at `at` of `body` overlong (one more byte, same value).
    fn overlong(body: &[u8], at: usize) -> Vec<u8> {
        let mut end = at;
        while body[end] & 0x80 != 0 {
            end += 1;
        }
        let mut out = body[..end].to_vec();
        out.push(body[end] | 0x80);
        out.push(0);
        out.extend_from_slice(&body[end + 1..]);
        out
    }

    fn reseal(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = wire::MAGIC.to_vec();
        out.push(wire::WIRE_VERSION);
        out.push(kind);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// One value, one encoding: with an overlong varint anywhere (a view, a
    /// sequence number, a replica index, a length or count), which postcard alone
    /// would decode to the same value, nothing decodes to a value whose encoding
    /// differs from the input. Two byte strings for one valid proof would let two
    /// verifiers that identify proofs by their bytes disagree.
    #[test]
    fn non_canonical_encodings_are_refused() {
        let (ids, m) = setup();
        let p = Prepare::new(&ids[2], &m, 1, 5, [3; 32], 2).unwrap();
        let body = wire::encode(&p);
        // view at 0, seq at 1, replica index after the 32-byte digest.
        for at in [0, 1, 34] {
            let bad = reseal(3, &overlong(&body, at));
            assert!(postcard::from_bytes::<Prepare>(&bad[10..]).is_ok());
            let decoded = Message::decode(&bad);
            assert!(
                decoded.as_ref().is_ok_and(|m| m.encode().unwrap() == bad) || decoded.is_err(),
                "varint at {at}: two encodings of one message decode"
            );
            assert!(matches!(decoded, Err(Error::NonCanonical(_))));
        }
        assert_eq!(
            Message::decode(&reseal(3, &body)).unwrap(),
            Message::Prepare(p)
        );
        // A request: timestamp, operation length, authenticator count; and in a
        // batch, the same, and the batch's own count.
        let r = Request {
            client: ClientId([1; 32]),
            timestamp: 9,
            operation: b"op".to_vec(),
            authenticator: vec![[0; 16]; 4],
        };
        let body = wire::encode(&r);
        for at in [32, 33, 36] {
            let bad = reseal(1, &overlong(&body, at));
            let decoded = Message::decode(&bad);
            assert!(
                decoded.as_ref().is_ok_and(|m| m.encode().unwrap() == bad) || decoded.is_err(),
                "request varint at {at}: two encodings of one request decode"
            );
            assert!(matches!(decoded, Err(Error::NonCanonical(_))));
        }
        let batch = wire::encode(&vec![r]);
        assert!(decode_batch(&batch).is_ok());
        for at in [0, 33, 34, 37] {
            let bad = overlong(&batch, at);
            assert!(
                decode_batch(&bad).map_or(true, |v| wire::encode(&v) == bad),
                "batch varint at {at}: two encodings of one batch decode"
            );
        }
        // A commit proof: view, seq, signature count, a signer index.
        let d = batch_digest(NULL_BATCH);
        let proof = CommitProof {
            membership: *m.id(),
            view: 2,
            seq: 7,
            digest: d,
            signatures: (0..3u16)
                .map(|i| {
                    let c = Commit::new(&ids[usize::from(i)], &m, 2, 7, d, i).unwrap();
                    (i, c.signature)
                })
                .collect(),
        };
        let bytes = proof.to_bytes();
        CommitProof::from_bytes(&bytes).unwrap().verify(&m).unwrap();
        for at in [32, 33, 66, 67] {
            let bad = overlong(&bytes, at);
            assert!(postcard::from_bytes::<CommitProof>(&bad).is_ok());
            assert!(
                CommitProof::from_bytes(&bad).map_or(true, |p| p.to_bytes() == bad),
                "proof varint at {at}: two encodings of one valid proof decode"
            );
        }
    }

    #[test]
    fn cache_remembers_only_valid_signatures() {
        let (ids, m) = setup();
        let p = Prepare::new(&ids[2], &m, 1, 5, [1; 32], 2).unwrap();
        let mut cache = SigCache::new(2);
        let mut c = Some(&mut cache);
        p.verify_signature(&m, &mut c).unwrap();
        p.verify_signature(&m, &mut c).unwrap();
        let mut bad = p.clone();
        bad.signature.0[0] ^= 1;
        assert!(bad.verify_signature(&m, &mut c).is_err());
        assert!(bad.verify_signature(&m, &mut c).is_err());
        assert_eq!(cache.order.len(), 1);
    }
}
