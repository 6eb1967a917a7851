//! `fed-pbft`'s durable replica state in the store: the tables of
//! docs/protocol/store.md §3, with the semantics of
//! [`fed_pbft::DurableState::apply`].

use std::{collections::BTreeMap, sync::Arc};

use fed_pbft::{
    CheckpointCert, CommitProof, Digest, DurableState, Persist, PrePrepareRecord, PreparedCert,
    PreparedRecord, Signature, Storage,
};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{META, Store, StoreError, decode_body};

const PRE_PREPARES: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("pbft_pre_prepares");
const PREPARED: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("pbft_prepared");
const COMMITTED: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("pbft_committed");
const CHECKPOINTS: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("pbft_checkpoints");
const EPOCHS: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("pbft_epochs");

/// The tables keyed by sequence number, with their names for checksums.
const SEQ_TABLES: [(&str, TableDefinition<'static, u64, &'static [u8]>); 4] = [
    ("pbft_pre_prepares", PRE_PREPARES),
    ("pbft_prepared", PREPARED),
    ("pbft_committed", COMMITTED),
    ("pbft_checkpoints", CHECKPOINTS),
];

const VIEW_KEY: &str = "pbft.view";
const MEMBERSHIP_KEY: &str = "pbft.membership";
const STABLE_KEY: &str = "pbft.stable";

#[derive(Serialize, Deserialize)]
struct ViewRecord {
    view: u64,
    active: bool,
}

#[derive(Serialize, Deserialize)]
struct PrePrepareBody {
    view: u64,
    digest: Digest,
    signature: Signature,
    #[serde(with = "serde_bytes")]
    batch: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct PreparedBody {
    cert: PreparedCert,
    #[serde(with = "serde_bytes")]
    batch: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct CommittedBody {
    proof: CommitProof,
    #[serde(with = "serde_bytes")]
    batch: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct EpochBody {
    #[serde(with = "serde_bytes")]
    link: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointBody {
    state: Digest,
    #[serde(with = "serde_bytes")]
    snapshot: Vec<u8>,
}

/// A replica's [`Storage`] in the node's [`Store`]: every call is one redb
/// transaction, durable (fsync) before it returns.
#[derive(Clone, Debug)]
pub struct PbftStore {
    store: Store,
}

impl PbftStore {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    /// Binds the store to the membership `id` (the genesis's): the first call
    /// records it, later calls check it, so that a replica never recovers the
    /// votes it cast in another federation. Fails with
    /// [`StoreError::OtherFederation`] naming the file.
    pub fn bind_membership(&mut self, id: &[u8; 32]) -> Result<(), StoreError> {
        let s = &self.store;
        let read = s.db_read()?;
        if let Some(meta) = s.table_if_any(&read, META)?
            && let Some(v) = meta.get(MEMBERSHIP_KEY).map_err(|e| s.io(e))?
        {
            let body = s.open_record("meta", MEMBERSHIP_KEY.as_bytes(), v.value())?;
            let found: [u8; 32] = decode_body(body)
                .ok_or_else(|| s.corrupt(format!("record `{MEMBERSHIP_KEY}` does not decode")))?;
            if &found == id {
                return Ok(());
            }
            return Err(StoreError::OtherFederation {
                path: s.path().to_path_buf(),
                expected: hex::encode(id),
                found: hex::encode(found),
            });
        }
        drop(read);
        let txn = s.db_write()?;
        {
            let body = s.body(id)?;
            let mut t = txn.open_table(META).map_err(|e| s.io(e))?;
            t.insert(
                MEMBERSHIP_KEY,
                s.seal("meta", MEMBERSHIP_KEY.as_bytes(), &body)?.as_slice(),
            )
            .map_err(|e| s.io(e))?;
        }
        txn.commit().map_err(|e| s.io(e))
    }

    /// Makes every write of `ops` durable in one transaction (one fsync): the
    /// driver calls it with all the writes a replica asked for before it sends
    /// the messages polled after them. Atomic: a crash leaves all or none.
    pub fn persist_all(&mut self, ops: &[Persist]) -> Result<(), StoreError> {
        let txn = self.store.db_write()?;
        for op in ops {
            self.apply(&txn, op)?;
        }
        txn.commit().map_err(|e| self.store.io(e))
    }

    fn apply(&self, txn: &WriteTransaction, op: &Persist) -> Result<(), StoreError> {
        let s = &self.store;
        let io = |e: redb::Error| s.io(e);
        match op {
            Persist::View { view, active } => {
                let body = s.body(&ViewRecord {
                    view: *view,
                    active: *active,
                })?;
                let mut t = txn.open_table(META).map_err(|e| io(e.into()))?;
                t.insert(
                    VIEW_KEY,
                    s.seal("meta", VIEW_KEY.as_bytes(), &body)?.as_slice(),
                )
                .map_err(|e| io(e.into()))?;
            }
            Persist::PrePrepare {
                view,
                seq,
                digest,
                signature,
                batch,
            } => {
                let mut t = txn.open_table(PRE_PREPARES).map_err(|e| io(e.into()))?;
                let keep = match t.get(*seq).map_err(|e| io(e.into()))? {
                    None => true,
                    Some(old) => {
                        let old: PrePrepareBody =
                            self.decode("pbft_pre_prepares", *seq, old.value())?;
                        old.view <= *view
                    }
                };
                if keep {
                    let body = s.body(&PrePrepareBody {
                        view: *view,
                        digest: *digest,
                        signature: *signature,
                        batch: batch.as_deref().map(<[u8]>::to_vec),
                    })?;
                    insert_seq(s, &mut t, "pbft_pre_prepares", *seq, &body)?;
                }
            }
            Persist::Prepared { cert, batch } => {
                let mut t = txn.open_table(PREPARED).map_err(|e| io(e.into()))?;
                let keep = match t.get(cert.seq).map_err(|e| io(e.into()))? {
                    None => true,
                    Some(old) => {
                        let old: PreparedBody =
                            self.decode("pbft_prepared", cert.seq, old.value())?;
                        old.cert.view <= cert.view
                    }
                };
                if keep {
                    let body = s.body(&PreparedBody {
                        cert: cert.clone(),
                        batch: batch.as_deref().map(<[u8]>::to_vec),
                    })?;
                    insert_seq(s, &mut t, "pbft_prepared", cert.seq, &body)?;
                }
            }
            Persist::Committed { proof, batch } => {
                let mut t = txn.open_table(COMMITTED).map_err(|e| io(e.into()))?;
                let body = s.body(&CommittedBody {
                    proof: proof.clone(),
                    batch: batch.to_vec(),
                })?;
                insert_seq(s, &mut t, "pbft_committed", proof.seq, &body)?;
            }
            Persist::Checkpoint {
                seq,
                state,
                snapshot,
            } => {
                let mut t = txn.open_table(CHECKPOINTS).map_err(|e| io(e.into()))?;
                let body = s.body(&CheckpointBody {
                    state: *state,
                    snapshot: snapshot.to_vec(),
                })?;
                insert_seq(s, &mut t, "pbft_checkpoints", *seq, &body)?;
            }
            Persist::Stable(cert) => {
                let mut meta = txn.open_table(META).map_err(|e| io(e.into()))?;
                let newer = match meta.get(STABLE_KEY).map_err(|e| io(e.into()))? {
                    None => true,
                    Some(old) => {
                        let body = s.open_record("meta", STABLE_KEY.as_bytes(), old.value())?;
                        let old: CheckpointCert = decode_body(body).ok_or_else(|| {
                            s.corrupt(format!("record `{STABLE_KEY}` does not decode"))
                        })?;
                        old.seq < cert.seq
                    }
                };
                if newer {
                    let body = s.body(cert)?;
                    meta.insert(
                        STABLE_KEY,
                        s.seal("meta", STABLE_KEY.as_bytes(), &body)?.as_slice(),
                    )
                    .map_err(|e| io(e.into()))?;
                    drop(meta);
                    let low = cert.seq;
                    for (name, def) in SEQ_TABLES {
                        let mut t = txn.open_table(def).map_err(|e| io(e.into()))?;
                        // Own checkpoints from the stable one on are kept.
                        if name == "pbft_checkpoints" {
                            t.retain_in(..low, |_, _| false)
                        } else {
                            t.retain_in(..=low, |_, _| false)
                        }
                        .map_err(|e| io(e.into()))?;
                    }
                }
            }
            _ => {
                return Err(s.io(format!("a PBFT write this store does not know: {op:?}")));
            }
        }
        Ok(())
    }

    /// Enters configuration epoch `epoch` (mesh.md §9): stores its link
    /// (`link`, the encoded `CertifiedState`) and drops the replica state of
    /// the epoch before (every table of §3, the view and the stable
    /// checkpoint), in one transaction, durable before it returns. A crash
    /// leaves the node in the old epoch with its state, or in the new one
    /// without.
    pub fn enter_epoch(&mut self, epoch: u64, link: &[u8]) -> Result<(), StoreError> {
        let s = &self.store;
        let io = |e: redb::Error| s.io(e);
        let txn = s.db_write()?;
        {
            let mut t = txn.open_table(EPOCHS).map_err(|e| io(e.into()))?;
            let body = s.body(&EpochBody {
                link: link.to_vec(),
            })?;
            insert_seq(s, &mut t, "pbft_epochs", epoch, &body)?;
            for (_, def) in SEQ_TABLES {
                let mut t = txn.open_table(def).map_err(|e| io(e.into()))?;
                t.retain(|_, _| false).map_err(|e| io(e.into()))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| io(e.into()))?;
            meta.remove(VIEW_KEY).map_err(|e| io(e.into()))?;
            meta.remove(STABLE_KEY).map_err(|e| io(e.into()))?;
        }
        txn.commit().map_err(|e| s.io(e))
    }

    /// The links of the configuration epochs entered, in order (link `i`
    /// leads to epoch `i + 1`); a gap in their numbers is corruption.
    pub fn load_epochs(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let read = self.store.db_read()?;
        let links = self.load_table(&read, "pbft_epochs", EPOCHS, |b: EpochBody| b.link)?;
        if links.keys().copied().ne(1..=links.len() as u64) {
            return Err(self
                .store
                .corrupt("table pbft_epochs: the epochs are not numbered 1, 2, 3, …"));
        }
        Ok(links.into_values().collect())
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        table: &str,
        seq: u64,
        record: &[u8],
    ) -> Result<T, StoreError> {
        let body = self.store.open_record(table, &seq.to_be_bytes(), record)?;
        decode_body(body).ok_or_else(|| {
            self.store
                .corrupt(format!("record {seq} of table {table} does not decode"))
        })
    }

    /// Everything persisted, as [`fed_pbft::Replica::recover`] takes it.
    pub fn load_state(&self) -> Result<DurableState, StoreError> {
        let s = &self.store;
        let read = s.db_read()?;
        let mut state = DurableState::default();
        if let Some(meta) = s.table_if_any(&read, META)? {
            if let Some(v) = meta.get(VIEW_KEY).map_err(|e| s.io(e))? {
                let body = s.open_record("meta", VIEW_KEY.as_bytes(), v.value())?;
                let r: ViewRecord = decode_body(body)
                    .ok_or_else(|| s.corrupt(format!("record `{VIEW_KEY}` does not decode")))?;
                state.view = r.view;
                state.active = r.active;
            }
            if let Some(v) = meta.get(STABLE_KEY).map_err(|e| s.io(e))? {
                let body = s.open_record("meta", STABLE_KEY.as_bytes(), v.value())?;
                state.stable =
                    Some(decode_body(body).ok_or_else(|| {
                        s.corrupt(format!("record `{STABLE_KEY}` does not decode"))
                    })?);
            }
        }
        state.pre_prepares = self.load_table(
            &read,
            "pbft_pre_prepares",
            PRE_PREPARES,
            |b: PrePrepareBody| PrePrepareRecord {
                view: b.view,
                digest: b.digest,
                signature: b.signature,
                batch: b.batch.map(Arc::from),
            },
        )?;
        state.prepared = self.load_table(&read, "pbft_prepared", PREPARED, |b: PreparedBody| {
            PreparedRecord {
                cert: b.cert,
                batch: b.batch.map(Arc::from),
            }
        })?;
        state.committed =
            self.load_table(&read, "pbft_committed", COMMITTED, |b: CommittedBody| {
                (b.proof, Arc::from(b.batch))
            })?;
        state.checkpoints = self.load_table(
            &read,
            "pbft_checkpoints",
            CHECKPOINTS,
            |b: CheckpointBody| (b.state, Arc::from(b.snapshot)),
        )?;
        Ok(state)
    }

    fn load_table<B: for<'de> Deserialize<'de>, T>(
        &self,
        read: &redb::ReadTransaction,
        name: &str,
        def: TableDefinition<'static, u64, &'static [u8]>,
        f: impl Fn(B) -> T,
    ) -> Result<BTreeMap<u64, T>, StoreError> {
        let mut out = BTreeMap::new();
        if let Some(t) = self.store.table_if_any(read, def)? {
            for entry in t.iter().map_err(|e| self.store.io(e))? {
                let (k, v) = entry.map_err(|e| self.store.corrupt(e))?;
                let body: B = self.decode(name, k.value(), v.value())?;
                out.insert(k.value(), f(body));
            }
        }
        Ok(out)
    }
}

impl Storage for PbftStore {
    fn persist(&mut self, op: &Persist) -> fed_pbft::Result<()> {
        self.persist_all(std::slice::from_ref(op))
            .map_err(|e| fed_pbft::Error::Storage(e.to_string()))
    }

    fn load(&self) -> fed_pbft::Result<DurableState> {
        self.load_state()
            .map_err(|e| fed_pbft::Error::Storage(e.to_string()))
    }
}

/// Checks every record of the PBFT tables (at open).
pub(super) fn verify_tables(store: &Store) -> Result<(), StoreError> {
    // Decoding everything checks every checksum and every encoding.
    let pbft = PbftStore::new(store.clone());
    pbft.load_state()?;
    pbft.load_epochs().map(|_| ())
}

fn insert_seq(
    s: &Store,
    t: &mut redb::Table<'_, u64, &'static [u8]>,
    name: &str,
    seq: u64,
    body: &[u8],
) -> Result<(), StoreError> {
    let record = s.seal(name, &seq.to_be_bytes(), body)?;
    t.insert(seq, record.as_slice()).map_err(|e| s.io(e))?;
    Ok(())
}

#[cfg(feature = "fuzzing")]
pub(super) fn fuzz_bodies(data: &[u8]) {
    use super::round_trip;
    round_trip::<ViewRecord>(data);
    round_trip::<PrePrepareBody>(data);
    round_trip::<PreparedBody>(data);
    round_trip::<CommittedBody>(data);
    round_trip::<CheckpointBody>(data);
    round_trip::<EpochBody>(data);
    round_trip::<CheckpointCert>(data);
}
