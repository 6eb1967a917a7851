//! The node's durable state in one embedded database file (redb).
//!
//! [`Store::open`] checks, before anything is read, that the file is this
//! project's (a format record), that it belongs to this node (its `NodeId`), and
//! that it is intact: redb's own page checksums (`check_integrity`) and a
//! checksum on every record this module wrote. A corrupted or foreign file is a
//! [`StoreError`] that names it, never a silent reset.
//!
//! What is stored, and every record's bytes: `docs/protocol/store.md`. This
//! release stores the replica state of `fed-pbft` ([`PbftStore`]), the
//! hash-chained, signed audit log ([`AuditLog`]), the substrate's patterns
//! ([`PersistentSubstrate`]), and the node's replicated maps (the directory
//! and the shared map) with the revocations it enforces ([`StateStore`]).

mod audit;
mod patterns;
mod pbft;
mod replica_log;
mod state;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use fed_crypto::NodeId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;

pub use audit::{AuditEntry, AuditError, AuditEvent, AuditLog, MAX_CUT_OFF_REASON_LEN};
pub use patterns::PersistentSubstrate;
pub use pbft::PbftStore;
pub use replica_log::ReplicaLogStats;
pub use state::StateStore;

/// The first bytes of the format record.
const MAGIC: &[u8; 14] = b"exo-fed-store\0";
/// The version of the record formats of docs/protocol/store.md (every
/// record's first byte).
const FORMAT_VERSION: u8 = 1;
/// The store's version in its format record (store.md §2): 1, the replica
/// state in redb tables (earlier releases, moved at the first open); 2, in
/// the replica log (§3), which releases that know only 1 refuse.
const STORE_VERSION_TABLES: u8 = 1;
/// See [`STORE_VERSION_TABLES`].
const STORE_VERSION_LOG: u8 = 2;
/// Bytes of a record's checksum.
const CHECKSUM_LEN: usize = 16;
/// The largest record this module writes or reads (a PBFT batch or snapshot
/// plus its framing); anything larger in the file is corruption.
pub const MAX_RECORD_LEN: usize = 64 << 20;

/// Small named records: the format, the owner, single-valued state.
const META: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("meta");

/// Why the store could not be opened, read or written. Every variant names the
/// database file.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file could not be opened or created, or redb refused it (a file that
    /// is not a redb database, a lock held by another process, ...).
    #[error("{path}: cannot open the database: {detail}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// redb's or the OS's reason.
        detail: String,
    },
    /// The file is damaged: a page or a record fails its checksum, or a record
    /// does not decode.
    #[error("{path}: the database is corrupted: {detail}")]
    Corrupted {
        /// The database file.
        path: PathBuf,
        /// What failed, and where.
        detail: String,
    },
    /// The file is a redb database, but not one of this project's, or of a
    /// format version this build does not know.
    #[error("{path}: not an exo-federation store ({detail})")]
    Format {
        /// The database file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The store belongs to another node.
    #[error("{path}: the store belongs to node {found}, not to this node {expected}")]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// This node.
        expected: NodeId,
        /// The owner recorded in the file.
        found: NodeId,
    },
    /// The store holds the consensus state of another federation (another
    /// genesis, so another membership).
    #[error(
        "{path}: the store holds the consensus state of membership {found}, not of this genesis's membership {expected}"
    )]
    OtherFederation {
        /// The database file.
        path: PathBuf,
        /// This configuration's membership id (hex).
        expected: String,
        /// The membership id recorded in the file (hex).
        found: String,
    },
    /// A read or a write failed after the store was opened.
    #[error("{path}: {detail}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// The node's database. Cheap to clone (the handle is shared).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Whether a [`PersistentSubstrate`] was opened on this store (one index
    /// per file).
    substrate_taken: AtomicBool,
    /// The replica log beside the database (set by [`Store::open`]).
    replica: OnceLock<Mutex<replica_log::ReplicaLog>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner.path.display())
    }
}

impl Store {
    /// Opens (or creates) the store of node `node` at `path`, and checks it
    /// whole: see the module documentation. Opening reads every record, so its
    /// time grows with the store's size.
    pub fn open(path: impl AsRef<Path>, node: &NodeId) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        // redb panics on some damaged files (a malformed allocator state, seen in
        // this crate's tests) instead of returning an error; opening is the
        // only time this store reads the whole file, so the panic is caught here
        // and reported like any other damage.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::open_checked(&path, node)
        }))
        .unwrap_or_else(|panic| {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "redb panicked while reading it".into());
            Err(StoreError::Corrupted {
                path: path.clone(),
                detail,
            })
        })
    }

    fn open_checked(path: &Path, node: &NodeId) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let existed = path.exists();
        // redb checks every page's checksum at open, and reports damage as an
        // error where a plain open may panic.
        let db = redb::Builder::new()
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
                    StoreError::Corrupted {
                        path: path.clone(),
                        detail,
                    }
                }
                other => StoreError::Open {
                    path: path.clone(),
                    detail: other.to_string(),
                },
            })?;
        let store = Self {
            inner: Arc::new(Inner {
                db,
                path,
                substrate_taken: AtomicBool::new(false),
                replica: OnceLock::new(),
            }),
        };
        store.check_owner(node, existed)?;
        store.verify_records()?;
        let log = pbft::open_log(&store, node)?;
        if store.inner.replica.set(Mutex::new(log)).is_err() {
            return Err(store.io("the replica log was opened twice"));
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The replica log beside the database file (store.md §3).
    pub fn replica_log_path(&self) -> PathBuf {
        replica_log::ReplicaLog::path_for(&self.inner.path)
    }

    /// The replica log's size and what it did since the store was opened.
    pub fn replica_log_stats(&self) -> Option<ReplicaLogStats> {
        let log = self.inner.replica.get()?;
        // Read even after a panic: the figures are only reported.
        let log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(log.stats())
    }

    /// Runs `f` on the replica log, alone.
    fn with_log<T>(
        &self,
        f: impl FnOnce(&mut replica_log::ReplicaLog) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let log = self
            .inner
            .replica
            .get()
            .ok_or_else(|| self.io("the replica log is not open"))?;
        // A panic while the log was held leaves its state unknown: refused,
        // like any failed write (the node stops).
        let mut log = log
            .lock()
            .map_err(|_| self.io("the replica log is unusable after a panic"))?;
        f(&mut log)
    }

    /// The replica state of `fed-pbft`, as a [`fed_pbft::Storage`].
    pub fn pbft(&self) -> PbftStore {
        PbftStore::new(self.clone())
    }

    /// The audit log.
    pub fn audit(&self) -> AuditLog {
        AuditLog::new(self.clone())
    }

    /// The node's replicated maps and the revocations it enforces.
    pub fn state(&self) -> StateStore {
        StateStore::new(self.clone())
    }

    fn check_owner(&self, node: &NodeId, existed: bool) -> Result<(), StoreError> {
        let read = self.db_read()?;
        let format = match read.open_table(META) {
            Ok(t) => t
                .get("format")
                .map_err(|e| self.io(e))?
                .map(|v| v.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(self.io(e)),
        };
        match format {
            None if existed && self.has_any_table()? => Err(StoreError::Format {
                path: self.inner.path.clone(),
                detail: "a redb database without a format record".into(),
            }),
            None => self.initialise(node),
            Some(record) => {
                let body = self.open_record("meta", b"format", &record)?;
                if body.len() != MAGIC.len() + 1 + 32 || &body[..MAGIC.len()] != MAGIC {
                    return Err(StoreError::Format {
                        path: self.inner.path.clone(),
                        detail: "unknown format record".into(),
                    });
                }
                if ![STORE_VERSION_TABLES, STORE_VERSION_LOG].contains(&body[MAGIC.len()]) {
                    return Err(StoreError::Format {
                        path: self.inner.path.clone(),
                        detail: format!("format version {}", body[MAGIC.len()]),
                    });
                }
                let mut found = [0u8; 32];
                found.copy_from_slice(&body[MAGIC.len() + 1..]);
                if found != node.0 {
                    return Err(StoreError::Foreign {
                        path: self.inner.path.clone(),
                        expected: *node,
                        found: NodeId(found),
                    });
                }
                Ok(())
            }
        }
    }

    fn has_any_table(&self) -> Result<bool, StoreError> {
        let read = self.db_read()?;
        let mut tables = read.list_tables().map_err(|e| self.io(e))?;
        Ok(tables.next().is_some())
    }

    /// The store's version in its format record (checked at open).
    fn store_version(&self) -> Result<u8, StoreError> {
        let read = self.db_read()?;
        let meta = self
            .table_if_any(&read, META)?
            .ok_or_else(|| self.corrupt("no format record"))?;
        let record = meta
            .get("format")
            .map_err(|e| self.io(e))?
            .ok_or_else(|| self.corrupt("no format record"))?;
        let body = self.open_record("meta", b"format", record.value())?;
        body.get(MAGIC.len())
            .copied()
            .ok_or_else(|| self.corrupt("a short format record"))
    }

    /// The format record of `node`'s store at `version`.
    fn format_record(node: &NodeId, version: u8) -> Vec<u8> {
        let mut body = Vec::with_capacity(MAGIC.len() + 33);
        body.extend_from_slice(MAGIC);
        body.push(version);
        body.extend_from_slice(&node.0);
        seal_record("meta", b"format", &body)
    }

    /// A new store starts at version 1, with no replica state; the replica
    /// log's creation moves it to 2 (`pbft::open_log`), as it moves a store
    /// of an earlier release.
    fn initialise(&self, node: &NodeId) -> Result<(), StoreError> {
        let record = Self::format_record(node, STORE_VERSION_TABLES);
        let txn = self.db_write()?;
        {
            let mut t = txn.open_table(META).map_err(|e| self.io(e))?;
            t.insert("format", record.as_slice())
                .map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// Checks every record of every table this module writes.
    fn verify_records(&self) -> Result<(), StoreError> {
        let read = self.db_read()?;
        if let Some(t) = self.table_if_any(&read, META)? {
            for entry in t.iter().map_err(|e| self.io(e))? {
                let (k, v) = entry.map_err(|e| self.corrupt(e))?;
                self.open_record("meta", k.value().as_bytes(), v.value())?;
            }
        }
        patterns::verify_table(self, &read)?;
        audit::verify_records(self, &read)?;
        drop(read);
        state::verify_tables(self)?;
        pbft::verify_tables(self)
    }

    fn table_if_any<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        read: &redb::ReadTransaction,
        def: TableDefinition<'_, K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
        match read.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    fn db_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.inner.db.begin_read().map_err(|e| self.io(e))
    }

    /// A write transaction that is durable (fsync) when it commits.
    fn db_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.inner.db.begin_write().map_err(|e| self.io(e))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| self.io(e))?;
        // Two-phase commit: a damaged last commit is an error at open, never a
        // silent fall back to the commit before it (which would forget a vote).
        txn.set_two_phase_commit(true);
        Ok(txn)
    }

    /// A record of `body` for `(table, key)`, refused above [`MAX_RECORD_LEN`]
    /// so that nothing written is refused when read.
    fn seal(&self, table: &str, key: &[u8], body: &[u8]) -> Result<Vec<u8>, StoreError> {
        if body.len() + 1 + CHECKSUM_LEN > MAX_RECORD_LEN {
            return Err(self.io(format!(
                "a record of {} bytes for table {table} exceeds the store's limit of {MAX_RECORD_LEN}",
                body.len()
            )));
        }
        Ok(seal_record(table, key, body))
    }

    /// The postcard body of `value`.
    fn body<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, StoreError> {
        postcard::to_allocvec(value).map_err(|e| self.io(format!("encoding a record: {e}")))
    }

    /// Marks the store's patterns as taken by one [`PersistentSubstrate`].
    fn take_substrate(&self) -> Result<(), StoreError> {
        if self.inner.substrate_taken.swap(true, Ordering::SeqCst) {
            return Err(self.io("a PersistentSubstrate is already open on this store"));
        }
        Ok(())
    }

    /// The body of a record after its checksum is verified.
    fn open_record<'a>(
        &self,
        table: &str,
        key: &[u8],
        record: &'a [u8],
    ) -> Result<&'a [u8], StoreError> {
        open_record(table, key, record).ok_or_else(|| StoreError::Corrupted {
            path: self.inner.path.clone(),
            detail: format!(
                "record {} of table {table} fails its checksum",
                display_key(key)
            ),
        })
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.inner.path.clone(),
            detail: e.to_string(),
        }
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupted {
            path: self.inner.path.clone(),
            detail: e.to_string(),
        }
    }
}

fn display_key(key: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(key)
        && s.chars().all(|c| c.is_ascii_graphic())
    {
        return format!("`{s}`");
    }
    if let Ok(b) = <[u8; 8]>::try_from(key) {
        return u64::from_be_bytes(b).to_string();
    }
    format!("{key:02x?}")
}

/// The checksum of a record: the first 16 bytes of
/// `BLAKE3-derive("exo-federation v1 mesh store record", [table, key, body])`.
fn checksum(table: &str, key: &[u8], body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let h = fed_crypto::hash(
        crate::core::labels::STORE_RECORD,
        &[table.as_bytes(), key, body],
    );
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&h[..CHECKSUM_LEN]);
    out
}

/// `version (1) ‖ checksum (16) ‖ body`.
fn seal_record(table: &str, key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + CHECKSUM_LEN + body.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&checksum(table, key, body));
    out.extend_from_slice(body);
    out
}

fn open_record<'a>(table: &str, key: &[u8], record: &'a [u8]) -> Option<&'a [u8]> {
    if record.len() < 1 + CHECKSUM_LEN || record.len() > MAX_RECORD_LEN {
        return None;
    }
    let (head, body) = record.split_at(1 + CHECKSUM_LEN);
    (head[0] == FORMAT_VERSION && fed_crypto::ct_eq(&head[1..], &checksum(table, key, body)))
        .then_some(body)
}

#[cfg(feature = "fuzzing")]
fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("store bodies encode")
}

/// A postcard body with no bytes left over.
fn decode_body<T: for<'de> serde::Deserialize<'de>>(body: &[u8]) -> Option<T> {
    match postcard::take_from_bytes(body) {
        Ok((value, [])) => Some(value),
        _ => None,
    }
}

/// Every decoder of store records fed `data` (the `store_records` fuzz target):
/// the record framing, and each body type, whose decodings must re-encode
/// stably. Panics on a violation; never on bad input.
#[cfg(feature = "fuzzing")]
pub fn fuzz_decoders(data: &[u8]) {
    let _ = open_record("audit", &0u64.to_be_bytes(), data);
    pbft::fuzz_bodies(data);
    replica_log::fuzz(data);
    audit::fuzz_bodies(data);
    round_trip::<crate::substrate::Pattern>(data);
    round_trip::<fed_crdt::Entry<crate::wire::MemberRecord>>(data);
    round_trip::<fed_crdt::Entry<crate::wire::SharedValue>>(data);
}

/// Decodes `data` as a `T`; if it decodes, its encoding must decode to the same
/// encoding again.
#[cfg(feature = "fuzzing")]
fn round_trip<T: serde::Serialize + for<'de> serde::Deserialize<'de>>(data: &[u8]) {
    if let Some(value) = decode_body::<T>(data) {
        let again = encode(&value);
        let back: Option<T> = decode_body(&again);
        assert!(
            back.is_some_and(|b| encode(&b) == again),
            "a store body does not re-encode stably"
        );
    }
}
