//! The node's own durable state (docs/protocol/store.md §6): the entries of
//! the replicated maps (the directory and the shared map) and the revocations
//! the node enforces. The core says what to write ([`StateWrite`]); each call
//! of [`StateStore::write`] is one durable transaction.

use redb::{ReadableTable, TableDefinition};

use super::{Store, StoreError};
use crate::{
    core::{NodeState, StateWrite, commit::Revocation},
    wire::{MapName, MemberRecord, SharedValue},
};

/// Directory entries by member node id.
const DIRECTORY: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("map.directory");
/// Shared-map entries by key.
const SHARED: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("map.shared");
/// Revocations: `kind (1) ‖ id (32)`, with an empty body.
const REVOKED: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("revoked");

fn table_of(
    map: MapName,
) -> (
    TableDefinition<'static, &'static [u8], &'static [u8]>,
    &'static str,
) {
    match map {
        MapName::Directory => (DIRECTORY, "map.directory"),
        MapName::Shared => (SHARED, "map.shared"),
    }
}

/// The key of a revocation record.
fn revocation_key(r: &Revocation) -> [u8; 33] {
    let (kind, id) = match r {
        Revocation::Token(id) => (0u8, *id),
        Revocation::Member(node) => (1u8, node.0),
    };
    let mut key = [0u8; 33];
    key[0] = kind;
    key[1..].copy_from_slice(&id);
    key
}

fn revocation_of(key: &[u8]) -> Option<Revocation> {
    let (&kind, id) = key.split_first()?;
    let id: [u8; 32] = id.try_into().ok()?;
    match kind {
        0 => Some(Revocation::Token(id)),
        1 => Some(Revocation::Member(fed_crypto::NodeId(id))),
        _ => None,
    }
}

/// The node's state in a [`Store`]: [`Store::state`].
#[derive(Clone, Debug)]
pub struct StateStore {
    store: Store,
}

impl StateStore {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    /// Writes `writes` in one transaction, synced before it returns.
    pub fn write(&self, writes: &[StateWrite]) -> Result<(), StoreError> {
        let s = &self.store;
        let mut records = Vec::with_capacity(writes.len());
        for w in writes {
            match w {
                StateWrite::MapEntry { map, key, entry } => {
                    let (def, name) = table_of(*map);
                    records.push((def, key.clone(), Some(s.seal(name, key, entry)?)));
                }
                StateWrite::Revoked(r) => {
                    let key = revocation_key(r).to_vec();
                    let record = s.seal("revoked", &key, &[])?;
                    records.push((REVOKED, key, Some(record)));
                }
                StateWrite::Unrevoked(r) => {
                    records.push((REVOKED, revocation_key(r).to_vec(), None));
                }
            }
        }
        let txn = s.db_write()?;
        for (def, key, record) in &records {
            let mut t = txn.open_table(*def).map_err(|e| s.io(e))?;
            match record {
                Some(record) => {
                    t.insert(key.as_slice(), record.as_slice())
                        .map_err(|e| s.io(e))?;
                }
                None => {
                    t.remove(key.as_slice()).map_err(|e| s.io(e))?;
                }
            }
        }
        txn.commit().map_err(|e| s.io(e))
    }

    /// Everything stored, each record's checksum checked and each entry
    /// decoded (a record that fails either is corruption, naming the file).
    pub fn load(&self) -> Result<NodeState, StoreError> {
        let s = &self.store;
        let read = s.db_read()?;
        let mut state = NodeState::default();
        for (map, out) in [
            (MapName::Directory, &mut state.directory),
            (MapName::Shared, &mut state.shared),
        ] {
            let (def, name) = table_of(map);
            if let Some(t) = s.table_if_any(&read, def)? {
                for entry in t.iter().map_err(|e| s.io(e))? {
                    let (k, v) = entry.map_err(|e| s.corrupt(e))?;
                    let key = k.value();
                    let body = s.open_record(name, key, v.value())?;
                    let decodes = match map {
                        MapName::Directory => {
                            key.len() == 32
                                && super::decode_body::<fed_crdt::Entry<MemberRecord>>(body)
                                    .is_some()
                        }
                        MapName::Shared => {
                            !key.is_empty()
                                && super::decode_body::<fed_crdt::Entry<SharedValue>>(body)
                                    .is_some()
                        }
                    };
                    if !decodes {
                        return Err(s.corrupt(format!(
                            "an entry of table {name} does not decode under its key"
                        )));
                    }
                    out.push((key.to_vec(), body.to_vec()));
                }
            }
        }
        if let Some(t) = s.table_if_any(&read, REVOKED)? {
            for entry in t.iter().map_err(|e| s.io(e))? {
                let (k, v) = entry.map_err(|e| s.corrupt(e))?;
                let body = s.open_record("revoked", k.value(), v.value())?;
                let r = revocation_of(k.value())
                    .filter(|_| body.is_empty())
                    .ok_or_else(|| s.corrupt("a revocation record that does not decode"))?;
                state.revoked.push(r);
            }
        }
        Ok(state)
    }
}

/// Checks every record of the state tables (at open).
pub(super) fn verify_tables(store: &Store) -> Result<(), StoreError> {
    StateStore::new(store.clone()).load().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_keys_round_trip_and_others_are_refused() {
        for r in [
            Revocation::Token([3; 32]),
            Revocation::Member(fed_crypto::NodeId([4; 32])),
        ] {
            assert_eq!(revocation_of(&revocation_key(&r)), Some(r));
        }
        let mut bad = revocation_key(&Revocation::Token([3; 32]));
        bad[0] = 2;
        assert_eq!(revocation_of(&bad), None);
        assert_eq!(revocation_of(&bad[..32]), None);
        assert_eq!(revocation_of(&[]), None);
    }
}
