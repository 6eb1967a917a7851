//! The audit log: a hash chain of the federation events a node saw, whose head
//! the node signs (docs/protocol/store.md §4).
//!
//! Every entry names the hash of the one before it, so an entry edited, removed
//! or moved breaks the chain; the signed head names the last entry and the
//! count, so entries cut off the end, or a head rewritten, are caught unless the
//! node's Ed25519 key signed it. [`AuditLog::verify`] checks all of it from the
//! file and the node's public identity alone.

use fed_crypto::{HybridSignature, Identity, NodeId, PublicIdentity};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{META, Store, StoreError};
use crate::core::labels;

pub(super) const TABLE: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("audit");
const AUDIT: TableDefinition<'static, u64, &'static [u8]> = TABLE;
const HEAD_KEY: &str = "audit.head";

/// The longest `CutOff` reason kept, in bytes; longer ones are cut at a
/// character boundary.
pub const MAX_CUT_OFF_REASON_LEN: usize = 256;
/// The head's signature: a `HybridSignature` with the Ed25519 part only
/// (flags `00` and 64 bytes, crypto.md §3).
const HEAD_SIGNATURE_LEN: usize = 65;

/// An event of the federation, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuditEvent {
    /// A peer joined (a session was established with it).
    Joined {
        /// The peer's `NodeId`.
        peer: [u8; 32],
    },
    /// This node issued a token to a peer.
    TokenIssued {
        /// The peer's `NodeId`.
        peer: [u8; 32],
        /// When the token expires (Unix milliseconds).
        expires_at: u64,
    },
    /// A token or a member was revoked by a committed update.
    Revoked {
        /// The revoked member's `NodeId`.
        peer: [u8; 32],
    },
    /// A batch committed, in a log written before entries named their
    /// configuration epoch: nodes now write [`EpochCommitted`](Self::EpochCommitted).
    Committed {
        /// Its sequence number.
        seq: u64,
        /// Its batch digest.
        digest: [u8; 32],
    },
    /// The replicas moved to a new view.
    ViewChanged {
        /// The new view.
        view: u64,
    },
    /// The voting membership changed.
    MembershipChanged {
        /// The new membership's digest.
        membership: [u8; 32],
    },
    /// A peer was cut off for abuse.
    CutOff {
        /// The peer's `NodeId`.
        peer: [u8; 32],
        /// Why.
        reason: String,
    },
    /// A token was revoked (by a committed update, or by this node alone).
    TokenRevoked {
        /// The token's id.
        token: [u8; 32],
    },
    /// A batch committed in configuration epoch `epoch` (mesh.md §9) and
    /// executed by this node's replica.
    EpochCommitted {
        /// The configuration epoch (sequence numbers start again at each).
        epoch: u64,
        /// Its sequence number.
        seq: u64,
        /// Its batch digest.
        digest: [u8; 32],
    },
}

/// One entry as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The hash of the entry before (32 zero bytes for the first).
    pub prev: [u8; 32],
    /// When the node recorded it (Unix milliseconds).
    pub time_ms: u64,
    /// What happened.
    pub event: AuditEvent,
}

#[derive(Serialize, Deserialize)]
struct Head {
    count: u64,
    last: [u8; 32],
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// Why an audit log does not verify.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Entry `index` is missing, or another index appears where it should be.
    #[error("audit entry {index} is missing (the log was cut or entries removed)")]
    Missing {
        /// The first index that is not where it should be.
        index: u64,
    },
    /// Entry `index` does not name the hash of the entry before it.
    #[error("audit entry {index} does not follow entry {}: edited, removed or reordered", index.saturating_sub(1))]
    Broken {
        /// The entry.
        index: u64,
    },
    /// The head does not match the entries (its count or last hash).
    #[error("the audit head names {head} entries, the log holds {found}")]
    HeadMismatch {
        /// The count the head names.
        head: u64,
        /// The entries found.
        found: u64,
    },
    /// The head's signature does not verify with the node's key.
    #[error("the audit head is not signed by this node")]
    BadSignature,
    /// There are entries but no head.
    #[error("the audit log has entries but no signed head")]
    NoHead,
}

/// The audit log of a [`Store`].
#[derive(Clone, Debug)]
pub struct AuditLog {
    store: Store,
}

impl AuditLog {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    /// Appends `event` and re-signs the head, in one durable transaction (the
    /// head is read inside it, so concurrent appends are serialised by redb's
    /// single writer). Returns the entry's index.
    pub fn append(
        &self,
        identity: &Identity,
        time_ms: u64,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        self.append_all(identity, [(time_ms, event)])
            .map(|next| next - 1)
    }

    /// Appends `events` in order and re-signs the head once, in one durable
    /// transaction: one sync and one signature for the lot. Returns the number
    /// of entries the log then holds (unchanged for no events).
    pub fn append_all(
        &self,
        identity: &Identity,
        events: impl IntoIterator<Item = (u64, AuditEvent)>,
    ) -> Result<u64, StoreError> {
        let s = &self.store;
        let txn = s.db_write()?;
        let count = {
            let mut m = txn.open_table(META).map_err(|e| s.io(e))?;
            let (start, mut last) = match m.get(HEAD_KEY).map_err(|e| s.io(e))? {
                None => (0, [0u8; 32]),
                Some(v) => {
                    let head = s.decode_head(v.value())?;
                    (head.count, head.last)
                }
            };
            let mut count = start;
            let mut t = txn.open_table(AUDIT).map_err(|e| s.io(e))?;
            for (time_ms, event) in events {
                let event = match event {
                    AuditEvent::CutOff { peer, mut reason } => {
                        if reason.len() > MAX_CUT_OFF_REASON_LEN {
                            let mut end = MAX_CUT_OFF_REASON_LEN;
                            while !reason.is_char_boundary(end) {
                                end -= 1;
                            }
                            reason.truncate(end);
                        }
                        AuditEvent::CutOff { peer, reason }
                    }
                    other => other,
                };
                let entry = AuditEntry {
                    prev: last,
                    time_ms,
                    event,
                };
                let body = s.body(&entry)?;
                last = entry_hash(count, &body);
                t.insert(
                    count,
                    s.seal("audit", &count.to_be_bytes(), &body)?.as_slice(),
                )
                .map_err(|e| s.io(e))?;
                count += 1;
            }
            if count == start {
                return Ok(count);
            }
            let signature = identity
                .sign_ed25519(
                    labels::AUDIT_HEAD,
                    &head_statement(&identity.node_id(), count, &last),
                )
                .map_err(|e| s.io(e))?;
            let head = s.body(&Head {
                count,
                last,
                signature: signature.to_bytes(),
            })?;
            m.insert(
                HEAD_KEY,
                s.seal("meta", HEAD_KEY.as_bytes(), &head)?.as_slice(),
            )
            .map_err(|e| s.io(e))?;
            count
        };
        txn.commit().map_err(|e| s.io(e))?;
        Ok(count)
    }

    /// Every entry, in order (for display and export).
    pub fn entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let s = &self.store;
        let read = s.db_read()?;
        let mut out = Vec::new();
        if let Some(t) = s.table_if_any(&read, AUDIT)? {
            for entry in t.iter().map_err(|e| s.io(e))? {
                let (k, v) = entry.map_err(|e| s.corrupt(e))?;
                out.push(read_entry(s, k.value(), v.value())?);
            }
        }
        Ok(out)
    }

    /// The `(sequence, digest)` of every `EpochCommitted` entry of
    /// configuration epoch `epoch` above sequence number `above`. A restarted
    /// voter executes again the batches its replica recorded after its last
    /// checkpoint, and those whose records a crash lost (pbft.md §5: the
    /// replica fetches them from its peers); the driver logs only those the
    /// log does not hold (a crash can lose the last entries too). Reads back
    /// from the end and stops at the first commit of another epoch or at or
    /// below `above`, or after `4 * window + 4096` entries (`window`: how far
    /// past `above` the replica may have executed).
    pub fn logged_commits(
        &self,
        epoch: u64,
        above: u64,
        window: u64,
    ) -> Result<std::collections::HashSet<(u64, [u8; 32])>, StoreError> {
        let mut found = std::collections::HashSet::new();
        let s = &self.store;
        let read = s.db_read()?;
        let Some(t) = s.table_if_any(&read, AUDIT)? else {
            return Ok(found);
        };
        let cap = usize::try_from(window)
            .unwrap_or(usize::MAX)
            .saturating_mul(4)
            .saturating_add(4096);
        for entry in t.iter().map_err(|e| s.io(e))?.rev().take(cap) {
            let (k, v) = entry.map_err(|e| s.corrupt(e))?;
            if let AuditEvent::EpochCommitted {
                epoch: e,
                seq,
                digest,
            } = read_entry(s, k.value(), v.value())?.event
            {
                if e != epoch || seq <= above {
                    break;
                }
                found.insert((seq, digest));
            }
        }
        Ok(found)
    }

    /// The last `n` entries with their indexes, oldest first (for status pages).
    pub fn tail(&self, n: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        let s = &self.store;
        let read = s.db_read()?;
        let mut out = Vec::with_capacity(n.min(1024));
        if let Some(t) = s.table_if_any(&read, AUDIT)? {
            for entry in t.iter().map_err(|e| s.io(e))?.rev().take(n) {
                let (k, v) = entry.map_err(|e| s.corrupt(e))?;
                let index = k.value();
                out.push((index, read_entry(s, index, v.value())?));
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Checks the whole log against the node's public identity: every entry in
    /// its place and following the one before, the head naming the last one and
    /// their count, signed by the node (one read transaction: a consistent
    /// view). Returns the number of entries.
    pub fn verify(&self, node: &PublicIdentity) -> Result<Result<u64, AuditError>, StoreError> {
        let s = &self.store;
        let read = s.db_read()?;
        let mut expected = 0u64;
        let mut last = [0u8; 32];
        if let Some(t) = s.table_if_any(&read, AUDIT)? {
            for entry in t.iter().map_err(|e| s.io(e))? {
                let (k, v) = entry.map_err(|e| s.corrupt(e))?;
                let index = k.value();
                if index != expected {
                    return Ok(Err(AuditError::Missing { index: expected }));
                }
                let body = s.open_record("audit", &index.to_be_bytes(), v.value())?;
                let e: AuditEntry = super::decode_body(body).ok_or_else(|| {
                    s.corrupt(format!("record {index} of table audit does not decode"))
                })?;
                if e.prev != last {
                    return Ok(Err(AuditError::Broken { index }));
                }
                last = entry_hash(index, body);
                expected += 1;
            }
        }
        let head = match s.table_if_any(&read, META)? {
            Some(meta) => match meta.get(HEAD_KEY).map_err(|e| s.io(e))? {
                Some(v) => Some(s.decode_head(v.value())?),
                None => None,
            },
            None => None,
        };
        let Some(head) = head else {
            return Ok(if expected == 0 {
                Ok(0)
            } else {
                Err(AuditError::NoHead)
            });
        };
        if head.count != expected || head.last != last {
            return Ok(Err(AuditError::HeadMismatch {
                head: head.count,
                found: expected,
            }));
        }
        let ok = head.signature.len() == HEAD_SIGNATURE_LEN
            && HybridSignature::from_bytes(&head.signature).is_ok_and(|sig| {
                node.verify_ed25519(
                    labels::AUDIT_HEAD,
                    &head_statement(&node.node_id(), head.count, &head.last),
                    &sig,
                )
                .is_ok()
            });
        Ok(if ok {
            Ok(expected)
        } else {
            Err(AuditError::BadSignature)
        })
    }
}

impl Store {
    fn decode_head(&self, record: &[u8]) -> Result<Head, StoreError> {
        let body = self.open_record("meta", HEAD_KEY.as_bytes(), record)?;
        super::decode_body(body)
            .ok_or_else(|| self.corrupt(format!("record `{HEAD_KEY}` does not decode")))
    }
}

/// Checks and decodes every audit record (at open).
pub(super) fn verify_records(s: &Store, read: &redb::ReadTransaction) -> Result<(), StoreError> {
    if let Some(t) = s.table_if_any(read, AUDIT)? {
        for entry in t.iter().map_err(|e| s.io(e))? {
            let (k, v) = entry.map_err(|e| s.corrupt(e))?;
            read_entry(s, k.value(), v.value())?;
        }
    }
    if let Some(meta) = s.table_if_any(read, META)?
        && let Some(v) = meta.get(HEAD_KEY).map_err(|e| s.io(e))?
    {
        s.decode_head(v.value())?;
    }
    Ok(())
}

/// Entry `index` from its sealed record `bytes`: checked and decoded.
fn read_entry(s: &Store, index: u64, bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    let body = s.open_record("audit", &index.to_be_bytes(), bytes)?;
    super::decode_body(body)
        .ok_or_else(|| s.corrupt(format!("record {index} of table audit does not decode")))
}

/// `BLAKE3-derive("exo-federation v1 mesh audit entry", [be64(index), body])`.
fn entry_hash(index: u64, body: &[u8]) -> [u8; 32] {
    fed_crypto::hash(labels::AUDIT_ENTRY, &[&index.to_be_bytes(), body])
}

/// What the head's signature covers: `node id (32) ‖ be64(count) ‖ last (32)`.
fn head_statement(node: &NodeId, count: u64, last: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(72);
    out.extend_from_slice(&node.0);
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(last);
    out
}

#[cfg(feature = "fuzzing")]
pub(super) fn fuzz_bodies(data: &[u8]) {
    super::round_trip::<AuditEntry>(data);
    super::round_trip::<Head>(data);
}
