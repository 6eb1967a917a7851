//! Durable protocol state: what a replica must write before it may speak.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    error::Result,
    message::Digest,
    proof::{CheckpointCert, CommitProof, PreparedCert},
    wire::Signature,
};

/// One write the replica asks for, from [`Replica::poll_persist`](crate::Replica::poll_persist).
///
/// Every write for which [`needs_sync`](Self::needs_sync) holds must be durable
/// before any transmit polled after it is sent; a restarted replica rebuilt from
/// the result ([`DurableState`]) then neither forgets a vote nor contradicts one.
/// A `PrePrepare` need not be: a store may hold it back until the next write
/// that needs a sync, and a crash may lose it (its PRE-PREPARE or PREPARE stands
/// on the [`Reserve`](Self::Reserve) before it, pbft.md §5). Nor need a
/// `Committed`: what it records was fixed by a quorum's COMMITs, each sent
/// after its sender's synced `Prepared`; a replica that lost it fetches the
/// batch again when it restarts.
/// [`DurableState::apply`] is the reference meaning of each write; a store may
/// keep a log of writes and replay it.
///
/// Writes are durable one by one, in order: a store need not make the writes of one
/// call atomic, and a crash may leave any prefix of them. The replica orders its
/// writes so that every such prefix is safe to recover from (pbft.md §5).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Persist {
    /// The replica's view, and whether it is installed (`false`: changing to it).
    View {
        /// The view.
        view: u64,
        /// Whether the view is installed.
        active: bool,
    },
    /// The replica accepted (or, as primary, issued) this pre-prepare; it will send
    /// PREPARE (or PRE-PREPARE) for it and never accept another for `(view, seq)`.
    PrePrepare {
        /// View.
        view: u64,
        /// Sequence number.
        seq: u64,
        /// Batch digest.
        digest: Digest,
        /// The primary's signature.
        signature: Signature,
        /// The batch, when the replica holds it.
        batch: Option<Arc<[u8]>>,
    },
    /// The replica prepared this (it will send COMMIT for it and must report it in
    /// every VIEW-CHANGE until the sequence number is below a stable checkpoint).
    Prepared {
        /// The prepared certificate.
        cert: PreparedCert,
        /// The batch, when the replica holds it: a later view may select this
        /// certificate after every other copy of the batch was replaced.
        batch: Option<Arc<[u8]>>,
    },
    /// The batch committed (the replica will execute it).
    Committed {
        /// Its proof.
        proof: CommitProof,
        /// The batch (stores may de-duplicate batches by digest).
        batch: Arc<[u8]>,
    },
    /// The replica's own checkpoint: its snapshot after executing `seq`.
    Checkpoint {
        /// Sequence number.
        seq: u64,
        /// State digest.
        state: Digest,
        /// The replica snapshot.
        snapshot: Arc<[u8]>,
    },
    /// A checkpoint became stable: everything below it may be discarded.
    Stable(CheckpointCert),
    /// The replica may send PRE-PREPAREs or PREPAREs in `view` for sequence
    /// numbers up to `upto` before their `PrePrepare` writes are durable. A
    /// replica restarted in `view` sends neither for those sequence numbers
    /// (but for the pre-prepares it recovered), so that it cannot contradict
    /// one it sent and then lost.
    Reserve {
        /// The view.
        view: u64,
        /// The highest sequence number reserved.
        upto: u64,
    },
}

impl Persist {
    /// Whether this write must be durable before the transmits polled after it:
    /// all but `PrePrepare`, which the `Reserve` before it covers, and
    /// `Committed`, which no message rests on (pbft.md §5).
    pub fn needs_sync(&self) -> bool {
        !matches!(self, Persist::PrePrepare { .. } | Persist::Committed { .. })
    }
}

/// A pre-prepare as persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrePrepareRecord {
    /// View.
    pub view: u64,
    /// Batch digest.
    pub digest: Digest,
    /// The primary's signature.
    pub signature: Signature,
    /// The batch, if known.
    pub batch: Option<Arc<[u8]>>,
}

/// A prepared certificate as persisted, with its batch when the replica held it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedRecord {
    /// The certificate.
    pub cert: PreparedCert,
    /// The batch, if known.
    pub batch: Option<Arc<[u8]>>,
}

/// Everything a replica persisted, as [`Replica::recover`](crate::Replica::recover)
/// takes it back. Bounded like the replica's log: entries above the stable
/// checkpoint only (at most `window` of each kind) and the own checkpoints from
/// the stable one on (at most `window / K + 1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableState {
    /// The view and whether it was installed.
    pub view: u64,
    /// Whether `view` was installed (`false`: the replica was changing to it).
    pub active: bool,
    /// The latest stable checkpoint certificate, if any beyond the genesis.
    pub stable: Option<CheckpointCert>,
    /// Own checkpoints: sequence → (state digest, snapshot).
    pub checkpoints: BTreeMap<u64, (Digest, Arc<[u8]>)>,
    /// Latest accepted pre-prepare per sequence number.
    pub pre_prepares: BTreeMap<u64, PrePrepareRecord>,
    /// Highest-view prepared certificate per sequence number, with its batch when
    /// the replica held it.
    pub prepared: BTreeMap<u64, PreparedRecord>,
    /// Commit proofs and batches per sequence number.
    pub committed: BTreeMap<u64, (CommitProof, Arc<[u8]>)>,
    /// The latest [`Persist::Reserve`] as `(view, upto)`; `(0, 0)` for none.
    pub reserved: (u64, u64),
}

impl Default for DurableState {
    /// What a replica that never wrote anything recovers to: view 0, installed.
    fn default() -> Self {
        Self {
            view: 0,
            active: true,
            stable: None,
            checkpoints: BTreeMap::new(),
            pre_prepares: BTreeMap::new(),
            prepared: BTreeMap::new(),
            committed: BTreeMap::new(),
            reserved: (0, 0),
        }
    }
}

impl DurableState {
    /// Applies one write (the reference semantics of [`Persist`]).
    pub fn apply(&mut self, op: &Persist) {
        match op {
            Persist::View { view, active } => {
                self.view = *view;
                self.active = *active;
            }
            Persist::PrePrepare {
                view,
                seq,
                digest,
                signature,
                batch,
            } => {
                let keep = self.pre_prepares.get(seq).is_none_or(|r| r.view <= *view);
                if keep {
                    self.pre_prepares.insert(
                        *seq,
                        PrePrepareRecord {
                            view: *view,
                            digest: *digest,
                            signature: *signature,
                            batch: batch.clone(),
                        },
                    );
                }
            }
            Persist::Prepared { cert, batch } => {
                let keep = self
                    .prepared
                    .get(&cert.seq)
                    .is_none_or(|r| r.cert.view <= cert.view);
                if keep {
                    self.prepared.insert(
                        cert.seq,
                        PreparedRecord {
                            cert: cert.clone(),
                            batch: batch.clone(),
                        },
                    );
                }
            }
            Persist::Committed { proof, batch } => {
                self.committed
                    .insert(proof.seq, (proof.clone(), batch.clone()));
            }
            Persist::Checkpoint {
                seq,
                state,
                snapshot,
            } => {
                self.checkpoints.insert(*seq, (*state, snapshot.clone()));
            }
            Persist::Reserve { view, upto } => {
                self.reserved = self.reserved.max((*view, *upto));
            }
            Persist::Stable(cert) => {
                let newer = self.stable.as_ref().is_none_or(|s| s.seq < cert.seq);
                if newer {
                    let low = cert.seq;
                    self.pre_prepares.retain(|s, _| *s > low);
                    self.prepared.retain(|s, _| *s > low);
                    self.committed.retain(|s, _| *s > low);
                    self.checkpoints.retain(|s, _| *s >= low);
                    self.stable = Some(cert.clone());
                }
            }
        }
    }
}

/// Where a replica's [`Persist`] writes go.
///
/// `fed-mesh` implements it over its embedded database; [`MemoryStorage`] serves
/// tests and the simulator.
pub trait Storage {
    /// Makes `op` durable. When this returns `Ok`, a crash must not lose it,
    /// unless it [needs no sync](Persist::needs_sync): such a write may be
    /// held back and lost, but not once a later write is durable (writes are
    /// durable in order).
    fn persist(&mut self, op: &Persist) -> Result<()>;

    /// Reads back everything persisted (for [`Replica::recover`](crate::Replica::recover)).
    fn load(&self) -> Result<DurableState>;
}

/// A [`Storage`] in memory: survives a simulated crash (the replica object is
/// dropped, the storage kept), not a process exit.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    state: DurableState,
    writes: u64,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many writes were made.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl Storage for MemoryStorage {
    fn persist(&mut self, op: &Persist) -> Result<()> {
        self.state.apply(op);
        self.writes += 1;
        Ok(())
    }

    fn load(&self) -> Result<DurableState> {
        Ok(self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_checkpoint_collects_garbage_and_views_only_grow_per_slot() {
        let mut s = MemoryStorage::new();
        let rec = |view, seq| Persist::PrePrepare {
            view,
            seq,
            digest: [view as u8; 32],
            signature: Signature([0; 64]),
            batch: None,
        };
        s.persist(&rec(2, 5)).unwrap();
        s.persist(&rec(1, 5)).unwrap();
        s.persist(&rec(1, 9)).unwrap();
        s.persist(&Persist::Checkpoint {
            seq: 4,
            state: [1; 32],
            snapshot: Arc::from(&b"a"[..]),
        })
        .unwrap();
        s.persist(&Persist::Checkpoint {
            seq: 8,
            state: [2; 32],
            snapshot: Arc::from(&b"b"[..]),
        })
        .unwrap();
        let d = s.load().unwrap();
        assert_eq!(d.pre_prepares[&5].view, 2);
        s.persist(&Persist::Stable(CheckpointCert {
            seq: 8,
            state: [2; 32],
            signatures: vec![],
        }))
        .unwrap();
        let d = s.load().unwrap();
        assert_eq!(d.pre_prepares.keys().copied().collect::<Vec<_>>(), vec![9]);
        assert_eq!(d.checkpoints.keys().copied().collect::<Vec<_>>(), vec![8]);
        assert_eq!(d.stable.as_ref().map(|c| c.seq), Some(8));
        assert_eq!(s.writes(), 6);
    }
}
