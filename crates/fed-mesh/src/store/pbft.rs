//! `fed-pbft`'s durable replica state in the store (docs/protocol/store.md
//! §3), with the semantics of [`fed_pbft::DurableState::apply`]: the replica
//! log beside the database ([`super::replica_log`]), and in the database the
//! configuration epochs, the membership the store is bound to, and the
//! replica tables of earlier releases, moved into the log at the first open.

use std::{collections::BTreeMap, sync::Arc};

use fed_crypto::NodeId;
use fed_pbft::{
    CommitProof, Digest, DurableState, Persist, PrePrepareRecord, PreparedCert, PreparedRecord,
    Signature, Storage,
};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{
    META, STORE_VERSION_LOG, STORE_VERSION_TABLES, Store, StoreError, decode_body,
    replica_log::ReplicaLog,
};

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
/// Present once the replica state lives in the replica log.
const LOG_KEY: &str = "pbft.log";
/// Its body.
const LOG_MARKER: &[u8] = b"replica log v1";

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

/// A replica's [`Storage`] in the node's [`Store`]: every call is one record
/// of the replica log, durable (`fdatasync`) before it returns.
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

    /// The replica log's size and what it did (the node's metrics).
    pub fn log_stats(&self) -> Option<super::ReplicaLogStats> {
        self.store.replica_log_stats()
    }

    /// Makes every write of `ops` durable as one record of the replica log
    /// (one write, one `fdatasync`): the driver calls it with all the writes a
    /// replica asked for before it sends the messages polled after them.
    /// Atomic: a crash leaves all or none. A group of `PrePrepare`s and
    /// `Committed`s only (no write that [needs a sync](Persist::needs_sync))
    /// is held back instead and goes in the record of the next call that has
    /// one, or of [`flush_held`](Self::flush_held); a crash before that loses
    /// it (pbft.md §5, store.md §3.1).
    pub fn persist_all(&mut self, ops: &[Persist]) -> Result<(), StoreError> {
        self.store.with_log(|log| log.append(ops))
    }

    /// Whether writes are held back, not yet on disk ([`persist_all`](Self::persist_all)):
    /// if so, a number that changes each time the log starts holding writes
    /// again after it held none.
    pub fn holds_writes(&self) -> Option<u64> {
        self.store
            .with_log(|log| Ok(log.holds_writes()))
            .ok()
            .flatten()
    }

    /// Makes the held-back writes durable, as one synced record. A failure
    /// leaves the log unusable, as a failed [`persist_all`](Self::persist_all) does.
    pub fn flush_held(&mut self) -> Result<(), StoreError> {
        self.store.with_log(|log| log.flush_held())
    }

    /// Enters configuration epoch `epoch` (mesh.md §9): stores its link
    /// (`link`, the encoded `CertifiedState`) in the database, synced, then
    /// starts the replica log over, empty, in that epoch. A crash between the
    /// two leaves a log of the epoch before, which the next open starts over
    /// the same way.
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
        }
        txn.commit().map_err(|e| s.io(e))?;
        s.with_log(|log| log.reset(epoch))
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
        self.store.with_log(|log| Ok(log.state()?.clone()))
    }

    /// The replica state in the tables of earlier releases (empty unless the
    /// store was written by one and not opened since).
    fn load_legacy(&self) -> Result<DurableState, StoreError> {
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
    pbft.load_legacy()?;
    pbft.load_epochs().map(|_| ())
}

/// Opens the replica log of `store` (at open, after [`verify_tables`]), or
/// creates it, moving into it the replica tables of an earlier release.
///
/// A store of version 2 (store.md §2) records that its log exists (`meta`
/// key `pbft.log`): a missing log, another node's, or one from a later epoch
/// than the database's is an error naming the log; one from an earlier epoch
/// is what a crash while entering an epoch leaves, and starts over in the
/// current one. A store of version 1 has no log yet: one is created from its
/// replica tables, unless a log is already there that is not exactly what a
/// crash during that creation leaves (then it is refused, never overwritten).
pub(super) fn open_log(store: &Store, node: &NodeId) -> Result<ReplicaLog, StoreError> {
    let path = ReplicaLog::path_for(store.path());
    let corrupted = |detail: String| StoreError::Corrupted {
        path: path.clone(),
        detail,
    };
    if path == store.path() {
        return Err(StoreError::Open {
            path,
            detail: "the database's name ends in `.rlog`, the replica log's; rename it".into(),
        });
    }
    let pbft = PbftStore::new(store.clone());
    let epoch = pbft.load_epochs()?.len() as u64;
    let version = store.store_version()?;
    let read = store.db_read()?;
    let marked = match store.table_if_any(&read, META)? {
        Some(meta) => match meta.get(LOG_KEY).map_err(|e| store.io(e))? {
            Some(v) => {
                let body = store.open_record("meta", LOG_KEY.as_bytes(), v.value())?;
                if body != LOG_MARKER {
                    return Err(store.corrupt(format!("record `{LOG_KEY}` is unknown")));
                }
                true
            }
            None => false,
        },
        None => false,
    };
    drop(read);
    let legacy = pbft.load_legacy()?;
    match (version, marked) {
        (STORE_VERSION_LOG, true) => {}
        (STORE_VERSION_TABLES, false) => return migrate(store, node, &path, epoch, legacy),
        (v, m) => {
            return Err(store.corrupt(format!(
                "store version {v} with{} the record `{LOG_KEY}`",
                if m { "" } else { "out" }
            )));
        }
    }
    if legacy != DurableState::default() {
        return Err(store.corrupt(
            "replica state in the tables of version 1 beside the replica log (written by an earlier release after the move?)",
        ));
    }
    if !path.exists() {
        return Err(corrupted(format!(
            "the replica log is missing; the database {} was written with it",
            store.path().display()
        )));
    }
    let mut log = ReplicaLog::open(&path)?;
    check_owner(&log, node, &path)?;
    if log.epoch() > epoch {
        return Err(corrupted(format!(
            "the replica log is of configuration epoch {}, the database has entered only {epoch}",
            log.epoch()
        )));
    }
    if log.epoch() < epoch {
        tracing::info!(
            path = %log.path().display(),
            from = log.epoch(),
            to = epoch,
            "the replica log starts over in the epoch the database entered"
        );
        log.reset(epoch)?;
    }
    Ok(log)
}

fn check_owner(log: &ReplicaLog, node: &NodeId, path: &std::path::Path) -> Result<(), StoreError> {
    if log.node() != &node.0 {
        return Err(StoreError::Foreign {
            path: path.to_path_buf(),
            expected: *node,
            found: NodeId(*log.node()),
        });
    }
    Ok(())
}

/// Moves a store of version 1 to the replica log: its replica tables (empty
/// in a new store) become the log's first state, then one transaction
/// records the log, empties the tables and sets version 2. A crash before
/// that commit leaves version 1 and the tables, and the next open does this
/// again; the log it finds then must hold exactly that state.
fn migrate(
    store: &Store,
    node: &NodeId,
    path: &std::path::Path,
    epoch: u64,
    legacy: DurableState,
) -> Result<ReplicaLog, StoreError> {
    // The tables' state as the log holds it (a table entry under another
    // key than its own sequence number would otherwise differ).
    let legacy = super::replica_log::normalized(&legacy);
    if path.exists() {
        let found = ReplicaLog::open(path)?;
        check_owner(&found, node, path)?;
        if found.epoch() != epoch || found.state()? != &legacy {
            return Err(StoreError::Corrupted {
                path: path.to_path_buf(),
                detail: format!(
                    "a replica log is here, but the database {} has no record of it (a database replaced or restored without its log?); move one of them away",
                    store.path().display()
                ),
            });
        }
    }
    let log = ReplicaLog::create(path, node.0, epoch, legacy)?;
    let s = store;
    let io = |e: redb::Error| s.io(e);
    let txn = s.db_write()?;
    {
        let mut meta = txn.open_table(META).map_err(|e| io(e.into()))?;
        meta.insert(
            LOG_KEY,
            s.seal("meta", LOG_KEY.as_bytes(), LOG_MARKER)?.as_slice(),
        )
        .map_err(|e| io(e.into()))?;
        meta.insert(
            "format",
            Store::format_record(node, STORE_VERSION_LOG).as_slice(),
        )
        .map_err(|e| io(e.into()))?;
        meta.remove(VIEW_KEY).map_err(|e| io(e.into()))?;
        meta.remove(STABLE_KEY).map_err(|e| io(e.into()))?;
        drop(meta);
        for (_, def) in SEQ_TABLES {
            let mut t = txn.open_table(def).map_err(|e| io(e.into()))?;
            t.retain(|_, _| false).map_err(|e| io(e.into()))?;
        }
    }
    txn.commit().map_err(|e| s.io(e))?;
    Ok(log)
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
    round_trip::<fed_pbft::CheckpointCert>(data);
}
