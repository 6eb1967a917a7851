//! [`PersistentSubstrate`]: the substrate's patterns in the store, with an
//! in-memory index ([`MemorySubstrate`]) rebuilt from them at start
//! (docs/protocol/store.md §5).

use std::sync::Mutex;

use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition};

use super::{Store, StoreError, decode_body};
use crate::substrate::{
    MemorySubstrate, Pattern, PatternId, PatternQuery, ScoredPattern, Substrate, SubstrateError,
};

pub(super) const TABLE: TableDefinition<'static, &'static [u8; 32], &'static [u8]> =
    TableDefinition::new("patterns");

/// A [`Substrate`] whose patterns live in the node's [`Store`]: every store and
/// removal is durable (one fsync) before it returns, and searches run on an
/// in-memory index rebuilt from the store when it is opened.
///
/// Writes block the calling thread for their fsync; the mesh calls substrates
/// from its IO layer, never from the sans-IO core.
pub struct PersistentSubstrate {
    store: Store,
    index: MemorySubstrate,
    /// Writes are serialised so that the index and the file agree.
    writer: Mutex<()>,
}

impl std::fmt::Debug for PersistentSubstrate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PersistentSubstrate({}, {} patterns)",
            self.store.path().display(),
            self.index.count()
        )
    }
}

impl PersistentSubstrate {
    /// Opens the patterns of `store` and rebuilds the index from them. A
    /// pattern that does not decode, or that the index refuses (a dimension
    /// other than the others', an invalid embedding), is corruption.
    ///
    /// One per store: a second one would keep an index of its own, which the
    /// first one's writes would leave behind.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        store.take_substrate()?;
        let index = MemorySubstrate::new();
        let read = store.db_read()?;
        if let Some(t) = store.table_if_any(&read, TABLE)? {
            for entry in t.iter().map_err(|e| store.io(e))? {
                let (k, v) = entry.map_err(|e| store.corrupt(e))?;
                let key = *k.value();
                let pattern = decode_pattern(store, &key, v.value())?;
                index
                    .insert(pattern)
                    .map_err(|e| store.corrupt(format!("pattern {} is refused: {e}", hex(&key))))?;
            }
        }
        Ok(Self {
            store: store.clone(),
            index,
            writer: Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`Substrate::store`], synchronously.
    pub fn insert(&self, pattern: Pattern) -> Result<bool, SubstrateError> {
        let _w = self.lock();
        if !self.index.would_accept(&pattern)? {
            return Ok(false);
        }
        let key = *pattern.id.as_bytes();
        let backend = |e: StoreError| SubstrateError::Backend(e.to_string());
        let body = self.store.body(&pattern).map_err(backend)?;
        let record = self.store.seal("patterns", &key, &body).map_err(backend)?;
        self.write(|t| t.insert(&key, record.as_slice()).map(|_| ()))?;
        // Accepted above, under the writer lock: the index takes it.
        self.index.insert(pattern)
    }

    /// [`Substrate::remove`], synchronously.
    pub fn delete(&self, id: &PatternId) -> Result<bool, SubstrateError> {
        let _w = self.lock();
        if self.index.pattern(id).is_none() {
            return Ok(false);
        }
        self.write(|t| t.remove(id.as_bytes()).map(|_| ()))?;
        Ok(self.index.delete(id))
    }

    fn write(
        &self,
        f: impl FnOnce(
            &mut redb::Table<'_, &'static [u8; 32], &'static [u8]>,
        ) -> Result<(), redb::StorageError>,
    ) -> Result<(), SubstrateError> {
        let backend = |e: StoreError| SubstrateError::Backend(e.to_string());
        let s = &self.store;
        let txn = s.db_write().map_err(backend)?;
        {
            let mut t = txn.open_table(TABLE).map_err(|e| backend(s.io(e)))?;
            f(&mut t).map_err(|e| backend(s.io(e)))?;
        }
        txn.commit().map_err(|e| backend(s.io(e)))
    }
}

#[async_trait]
impl Substrate for PersistentSubstrate {
    fn dimension(&self) -> Option<usize> {
        self.index.dimension()
    }

    async fn store(&self, pattern: Pattern) -> Result<bool, SubstrateError> {
        self.insert(pattern)
    }

    async fn remove(&self, id: &PatternId) -> Result<bool, SubstrateError> {
        self.delete(id)
    }

    async fn get(&self, id: &PatternId) -> Result<Option<Pattern>, SubstrateError> {
        Ok(self.index.pattern(id))
    }

    async fn search(&self, query: &PatternQuery) -> Result<Vec<ScoredPattern>, SubstrateError> {
        self.index.query(query)
    }

    async fn len(&self) -> usize {
        self.index.count()
    }
}

/// A pattern record: its checksum, its body, and the id in the body equal to
/// the key.
fn decode_pattern(store: &Store, key: &[u8; 32], record: &[u8]) -> Result<Pattern, StoreError> {
    let body = store.open_record("patterns", key, record)?;
    decode_body(body)
        .filter(|p: &Pattern| p.id.as_bytes() == key)
        .ok_or_else(|| {
            store.corrupt(format!(
                "pattern {} does not decode under its key",
                hex(key)
            ))
        })
}

/// Checks and decodes every pattern record (at open).
pub(super) fn verify_table(store: &Store, read: &redb::ReadTransaction) -> Result<(), StoreError> {
    if let Some(t) = store.table_if_any(read, TABLE)? {
        for entry in t.iter().map_err(|e| store.io(e))? {
            let (k, v) = entry.map_err(|e| store.corrupt(e))?;
            decode_pattern(store, k.value(), v.value())?;
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + ".."
}
