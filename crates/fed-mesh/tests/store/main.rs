//! The node's store on a real file: the PBFT tables against the reference
//! semantics of `fed_pbft::DurableState::apply`, refusals of foreign and damaged
//! files, and crashes (SIGKILL of a child process) between durable writes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
};

use fed_crypto::NodeId;
use fed_mesh::store::{Store, StoreError};
use fed_pbft::{CheckpointCert, CommitProof, DurableState, Persist, PreparedCert, Signature};
use proptest::prelude::*;
use rand_chacha::{
    ChaCha20Rng,
    rand_core::{Rng, SeedableRng},
};

const NODE: NodeId = NodeId([7; 32]);

/// A random write of every kind, over a few views and sequence numbers so that
/// the keep-the-newer rules and pruning are exercised. Half the digests and
/// batches come from two of each, in any pairing, so that the log's writes of
/// a batch it already holds (store.md §3.1) meet the same batch under the
/// same digest, another batch under it, and the same batch in another copy.
fn random_op(rng: &mut ChaCha20Rng) -> Persist {
    let seq = u64::from(rng.next_u32() % 24);
    let view = u64::from(rng.next_u32() % 4);
    let digest = {
        let mut d = [0u8; 32];
        match rng.next_u32() % 4 {
            0 => d = [0xd0; 32],
            1 => d = [0xd1; 32],
            _ => rng.fill_bytes(&mut d),
        }
        d
    };
    let sig = Signature([rng.next_u32() as u8; 64]);
    let batch = |rng: &mut ChaCha20Rng| -> Arc<[u8]> {
        match rng.next_u32() % 4 {
            0 => return Arc::from(vec![0xb0; 200]),
            1 => return Arc::from(vec![0xb1; 700]),
            _ => {}
        }
        let mut b = vec![0u8; (rng.next_u32() % 300) as usize];
        rng.fill_bytes(&mut b);
        Arc::from(b)
    };
    let sigs = |rng: &mut ChaCha20Rng| -> Vec<(u16, Signature)> {
        (0..(rng.next_u32() % 4) as u16)
            .map(|i| (i, Signature([rng.next_u32() as u8; 64])))
            .collect()
    };
    match rng.next_u32() % 8 {
        0 => Persist::View {
            view,
            active: rng.next_u32().is_multiple_of(2),
        },
        1 => Persist::PrePrepare {
            view,
            seq,
            digest,
            signature: sig,
            batch: (rng.next_u32().is_multiple_of(2)).then(|| batch(rng)),
        },
        2 => Persist::Prepared {
            cert: PreparedCert {
                view,
                seq,
                digest,
                primary: sig,
                prepares: sigs(rng),
            },
            batch: (rng.next_u32().is_multiple_of(2)).then(|| batch(rng)),
        },
        3 | 4 => Persist::Committed {
            proof: CommitProof {
                membership: [1; 32],
                view,
                seq,
                digest,
                signatures: sigs(rng),
            },
            batch: batch(rng),
        },
        5 => Persist::Checkpoint {
            seq,
            state: digest,
            snapshot: batch(rng),
        },
        6 => Persist::Reserve { view, upto: seq },
        _ => Persist::Stable(CheckpointCert {
            seq: seq / 2,
            state: digest,
            signatures: sigs(rng),
        }),
    }
}

fn ops(seed: u64, n: usize) -> Vec<Persist> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n).map(|_| random_op(&mut rng)).collect()
}

fn reference(ops: &[Persist]) -> DurableState {
    let mut s = DurableState::default();
    for op in ops {
        s.apply(op);
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the writes, grouped in transactions however, and with the file
    /// closed and reopened in between, the store reads back exactly what the
    /// reference semantics give for the writes made durable: every group with
    /// a write that needs a sync, with the groups of `PrePrepare`s only held
    /// back before it (a reopen, like a crash, loses those).
    #[test]
    fn the_store_reads_back_what_the_reference_semantics_give(
        seed in any::<u64>(),
        n in 1usize..80,
        group in 1usize..6,
        reopen_every in 1usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let all = ops(seed, n);
        let mut store = Store::open(&path, &NODE).unwrap();
        let mut durable: Vec<Persist> = Vec::new();
        let mut held: Vec<Persist> = Vec::new();
        for (i, chunk) in all.chunks(group).enumerate() {
            store.pbft().persist_all(chunk).unwrap();
            held.extend_from_slice(chunk);
            if chunk.iter().any(Persist::needs_sync) {
                durable.append(&mut held);
            }
            if i % reopen_every == 0 {
                drop(store);
                store = Store::open(&path, &NODE).unwrap();
                held.clear();
            }
            prop_assert_eq!(store.pbft().load_state().unwrap(), reference(&durable));
        }
    }
}

/// The store at `path` refused at open as corrupted (naming what is wrong).
fn corrupted(path: &Path) -> StoreError {
    let err = Store::open(path, &NODE).unwrap_err();
    assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
    err
}

fn filled(path: &Path, ops: &[Persist]) -> DurableState {
    let store = Store::open(path, &NODE).unwrap();
    store.pbft().persist_all(ops).unwrap();
    store.pbft().load_state().unwrap()
}

/// The vector of docs/protocol/store.md §2, computed from the document alone (in
/// Python, with the `blake3` package): the format record of node `[7; 32]`.
#[test]
fn the_format_record_is_the_documented_vector() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    drop(Store::open(&path, &NODE).unwrap());
    let db = redb::Database::create(&path).unwrap();
    let read = redb::ReadableDatabase::begin_read(&db).unwrap();
    let def: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
    let meta = read.open_table(def).unwrap();
    let record = redb::ReadableTable::get(&meta, "format")
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    assert_eq!(
        hex::encode(record),
        "01873c7add8abc16c2c03b48613492562565786f2d6665642d73746f7265000207070707070707070707\
         07070707070707070707070707070707070707070707"
    );
}

#[test]
fn a_store_of_another_node_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    filled(&path, &ops(1, 10));
    let err = Store::open(&path, &NodeId([8; 32])).unwrap_err();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_store_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, vec![b'x'; 10_000]).unwrap();
    let err = Store::open(&path, &NODE).unwrap_err();
    assert!(err.to_string().contains("notes.txt"), "{err}");
    // The file is left as it was: never reset.
    assert_eq!(std::fs::read(&path).unwrap(), vec![b'x'; 10_000]);

    // A redb database of something else.
    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<'_, u64, u64> = redb::TableDefinition::new("things");
            txn.open_table(def).unwrap().insert(1, 2).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(&other, &NODE).unwrap_err();
    assert!(matches!(err, StoreError::Format { .. }), "{err}");
}

/// The offset of `needle` in the file.
fn find(path: &Path, needle: &[u8]) -> usize {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("marker in the file")
}

fn flip(path: &Path, at: usize, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= mask;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_byte_edited_in_a_committed_batch_is_detected_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let marker = b"exo-federation committed batch marker";
    let mut all = ops(2, 20);
    all.push(Persist::Committed {
        proof: CommitProof {
            membership: [1; 32],
            view: 0,
            seq: 100,
            digest: [2; 32],
            signatures: Vec::new(),
        },
        batch: Arc::from(marker.as_slice()),
    });
    filled(&path, &all);
    // The batch is in the replica log, beside the database.
    let log = log_path(&path);
    flip(&log, find(&log, marker) + 5, 0x01);
    let err = corrupted(&path);
    assert!(
        err.to_string().contains(&log.display().to_string()),
        "{err}"
    );
}

/// The replica log of the database at `db` (store.md §3).
fn log_path(db: &Path) -> std::path::PathBuf {
    db.with_extension("rlog")
}

/// Copies a store: its database and its replica log.
fn copy_store(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    std::fs::copy(log_path(from), log_path(to)).unwrap();
}

/// A record rewritten through redb itself (a tool that edits the file and keeps
/// redb's page checksums right): the record's own checksum catches it.
#[test]
fn a_record_edited_with_a_redb_tool_is_detected_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    filled(&path, &ops(6, 40));
    {
        let db = redb::Database::create(&path).unwrap();
        let def: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(def).unwrap();
            let mut v = redb::ReadableTable::get(&t, "pbft.log")
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            let last = v.len() - 1;
            v[last] ^= 0x80;
            t.insert("pbft.log", v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = corrupted(&path);
    assert!(err.to_string().contains("pbft.log"), "{err}");
}

/// A write larger than a record may be is refused when written, and what was
/// written before stays readable: without the cap it would be written, and the
/// next open would refuse the whole file.
#[test]
fn an_oversized_write_is_refused_and_the_store_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let want = filled(&path, &ops(10, 20));
    let store = Store::open(&path, &NODE).unwrap();
    let huge = Persist::Checkpoint {
        seq: 1,
        state: [0; 32],
        snapshot: Arc::from(vec![0u8; fed_mesh::store::MAX_RECORD_LEN]),
    };
    assert!(matches!(
        store.pbft().persist_all(&[huge]),
        Err(StoreError::Io { .. })
    ));
    drop(store);
    let store = Store::open(&path, &NODE).unwrap();
    assert_eq!(store.pbft().load_state().unwrap(), want);
}

/// A stable checkpoint at the last sequence number prunes like the reference.
#[test]
fn pruning_at_the_last_sequence_number_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let top = u64::MAX;
    let all = vec![
        Persist::Checkpoint {
            seq: top - 1,
            state: [1; 32],
            snapshot: Arc::from(&b"a"[..]),
        },
        Persist::Committed {
            proof: CommitProof {
                membership: [1; 32],
                view: 0,
                seq: top,
                digest: [2; 32],
                signatures: Vec::new(),
            },
            batch: Arc::from(&b"b"[..]),
        },
        Persist::Checkpoint {
            seq: top,
            state: [3; 32],
            snapshot: Arc::from(&b"c"[..]),
        },
        Persist::Stable(CheckpointCert {
            seq: top,
            state: [3; 32],
            signatures: Vec::new(),
        }),
    ];
    assert_eq!(filled(&path, &all), reference(&all));
}

/// A valid record moved to another key or another table is refused: the
/// checksum binds it to its place.
#[test]
fn a_record_moved_to_another_place_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.redb");
    filled(&clean, &ops(9, 40));
    let meta: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
    let committed: redb::TableDefinition<'_, u64, &[u8]> =
        redb::TableDefinition::new("pbft_committed");
    for name in ["another key", "another table"] {
        let path = dir.path().join("moved.redb");
        copy_store(&clean, &path);
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let from = txn.open_table(meta).unwrap();
                let record = redb::ReadableTable::get(&from, "pbft.log")
                    .unwrap()
                    .unwrap()
                    .value()
                    .to_vec();
                drop(from);
                if name == "another key" {
                    txn.open_table(meta)
                        .unwrap()
                        .insert("pbft.view", record.as_slice())
                        .unwrap();
                } else {
                    txn.open_table(committed)
                        .unwrap()
                        .insert(301, record.as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let err = Store::open(&path, &NODE).unwrap_err();
        assert!(matches!(err, StoreError::Corrupted { .. }), "{name}: {err}");
    }
}

/// A byte flipped anywhere in the database: the store either refuses to
/// open, naming the file, or opens with exactly the state it had. Never a
/// silently different state. In the replica log, every flip is refused.
#[test]
fn a_byte_flipped_anywhere_is_refused_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.redb");
    let all = ops(3, 60);
    let want = {
        let store = Store::open(&clean, &NODE).unwrap();
        // Several records in the log, not one.
        for chunk in all.chunks(7) {
            store.pbft().persist_all(chunk).unwrap();
        }
        store.pbft().load_state().unwrap()
    };
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (mut refused, mut harmless, mut in_log) = (0, 0, 0);
    for trial in 0..240 {
        let path = dir.path().join(format!("trial-{trial}.redb"));
        copy_store(&clean, &path);
        let target = if trial % 2 == 0 {
            path.clone()
        } else {
            log_path(&path)
        };
        let len = std::fs::metadata(&target).unwrap().len();
        let at = (rng.next_u64() % len) as usize;
        flip(&target, at, 1 << (rng.next_u32() % 8));
        match Store::open(&path, &NODE) {
            Err(e) => {
                assert!(e.to_string().contains(&target.display().to_string()), "{e}");
                if target != path {
                    in_log += 1;
                }
                refused += 1;
            }
            Ok(store) => {
                assert_eq!(target, path, "byte {at} of the replica log was not refused");
                let got = store.pbft().load_state();
                assert_eq!(
                    got.as_ref().ok(),
                    Some(&want),
                    "byte {at} changed the state silently"
                );
                harmless += 1;
            }
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(log_path(&path)).unwrap();
    }
    assert!(
        refused > 0 && harmless > 0 && in_log == 120,
        "refused {refused} ({in_log} in the log), harmless {harmless}"
    );
}

/// A crash in the middle of a write leaves a record whose sectors did not all
/// reach the disk: the file cut anywhere in the last record. The store opens
/// with the writes before it, cuts the file back, and writes on after it.
#[test]
fn a_record_cut_by_a_crash_is_dropped_and_the_log_written_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let all = ops(12, 40);
    let store = Store::open(&path, &NODE).unwrap();
    store.pbft().persist_all(&all[..30]).unwrap();
    let before = std::fs::metadata(log_path(&path)).unwrap().len();
    store.pbft().persist_all(&all[30..]).unwrap();
    let after = std::fs::metadata(log_path(&path)).unwrap().len();
    drop(store);
    assert!(after > before + 512, "the last record spans sectors");
    let full = std::fs::read(log_path(&path)).unwrap();
    for cut in [before + 1, before + 511, before + 512, after - 1] {
        std::fs::write(log_path(&path), &full[..cut as usize]).unwrap();
        let store = Store::open(&path, &NODE).unwrap();
        assert_eq!(
            store.pbft().load_state().unwrap(),
            reference(&all[..30]),
            "cut at {cut}"
        );
        let stats = store.pbft().log_stats().unwrap();
        assert_eq!((stats.torn_dropped, stats.rewrites), (1, 1), "cut at {cut}");
        store.pbft().persist_all(&all[35..]).unwrap();
        drop(store);
        let store = Store::open(&path, &NODE).unwrap();
        let mut want = all[..30].to_vec();
        want.extend_from_slice(&all[35..]);
        assert_eq!(store.pbft().load_state().unwrap(), reference(&want));
    }
}

/// Once the database says the replica state is in the log, the log missing
/// or another node's is refused, naming it: never a replica that starts
/// again from nothing and contradicts its votes.
#[test]
fn a_missing_or_foreign_replica_log_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    filled(&path, &ops(13, 20));
    let other = dir.path().join("other.redb");
    let other_node = NodeId([8; 32]);
    Store::open(&other, &other_node)
        .unwrap()
        .pbft()
        .persist_all(&ops(14, 5))
        .unwrap();
    let saved = std::fs::read(log_path(&path)).unwrap();
    std::fs::remove_file(log_path(&path)).unwrap();
    let err = corrupted(&path);
    assert!(
        err.to_string()
            .contains(&log_path(&path).display().to_string()),
        "{err}"
    );
    std::fs::copy(log_path(&other), log_path(&path)).unwrap();
    let err = Store::open(&path, &NODE).unwrap_err();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    std::fs::write(log_path(&path), saved).unwrap();
    Store::open(&path, &NODE).unwrap();
}

/// Entering an epoch starts the log over, empty. A crash after the database
/// entered it and before the log did leaves the old epoch's log, which the
/// next open starts over; a log ahead of the database is refused.
#[test]
fn entering_an_epoch_starts_the_log_over_even_after_a_crash_between() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let all = ops(15, 30);
    filled(&path, &all);
    let epoch0 = std::fs::read(log_path(&path)).unwrap();
    let store = Store::open(&path, &NODE).unwrap();
    store.pbft().enter_epoch(1, b"link one").unwrap();
    assert_eq!(store.pbft().load_state().unwrap(), DurableState::default());
    store.pbft().persist_all(&all[..4]).unwrap();
    drop(store);
    let epoch1 = std::fs::read(log_path(&path)).unwrap();
    // The crash between: the database in epoch 1, the log of epoch 0.
    std::fs::write(log_path(&path), &epoch0).unwrap();
    let store = Store::open(&path, &NODE).unwrap();
    assert_eq!(store.pbft().load_state().unwrap(), DurableState::default());
    assert_eq!(
        store.pbft().load_epochs().unwrap(),
        vec![b"link one".to_vec()]
    );
    drop(store);
    // A log of epoch 1 beside a database still in epoch 0.
    let young = dir.path().join("young.redb");
    filled(&young, &all);
    std::fs::write(log_path(&young), &epoch1).unwrap();
    let err = corrupted(&young);
    assert!(err.to_string().contains("epoch"), "{err}");
}

/// A store written by an earlier release kept the replica state in redb
/// tables (store.md §3, "Earlier releases"): the first open moves it into the
/// log and empties the tables, and what the replica recovers is the same.
#[test]
fn replica_tables_of_an_earlier_release_move_into_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    drop(Store::open(&path, &NODE).unwrap());
    std::fs::remove_file(log_path(&path)).unwrap();
    let proof = CommitProof {
        membership: [1; 32],
        view: 2,
        seq: 9,
        digest: [3; 32],
        signatures: vec![(1, Signature([4; 64]))],
    };
    let batch = b"a batch of an earlier release".to_vec();
    {
        let db = redb::Database::create(&path).unwrap();
        let meta: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
        let committed: redb::TableDefinition<'_, u64, &[u8]> =
            redb::TableDefinition::new("pbft_committed");
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(meta).unwrap();
            t.remove("pbft.log").unwrap();
            t.insert("format", FORMAT_V1.as_slice()).unwrap();
            // `view: u64, active: bool`
            t.insert("pbft.view", seal("meta", b"pbft.view", &[5, 0]).as_slice())
                .unwrap();
            let body = postcard::to_allocvec(&(&proof, &batch)).unwrap();
            txn.open_table(committed)
                .unwrap()
                .insert(
                    9,
                    seal("pbft_committed", &9u64.to_be_bytes(), &body).as_slice(),
                )
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let mut want = DurableState::default();
    want.apply(&Persist::View {
        view: 5,
        active: false,
    });
    want.apply(&Persist::Committed {
        proof,
        batch: Arc::from(batch),
    });
    let store = Store::open(&path, &NODE).unwrap();
    assert_eq!(store.pbft().load_state().unwrap(), want);
    drop(store);
    assert!(log_path(&path).exists());
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let committed: redb::TableDefinition<'_, u64, &[u8]> =
            redb::TableDefinition::new("pbft_committed");
        let t = txn.open_table(committed).unwrap();
        assert_eq!(
            redb::ReadableTableMetadata::len(&t).unwrap(),
            0,
            "the table is emptied"
        );
    }
    let store = Store::open(&path, &NODE).unwrap();
    assert_eq!(store.pbft().load_state().unwrap(), want);
    drop(store);
    // A crash during the move, after the log and before the transaction:
    // version 1, the tables, and the log made from them. The next open
    // moves them again.
    let tables = || {
        let db = redb::Database::create(&path).unwrap();
        let meta: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
        let committed: redb::TableDefinition<'_, u64, &[u8]> =
            redb::TableDefinition::new("pbft_committed");
        let txn = db.begin_write().unwrap();
        txn.open_table(meta)
            .unwrap()
            .insert("pbft.view", seal("meta", b"pbft.view", &[5, 0]).as_slice())
            .unwrap();
        let (proof, batch) = &want.committed[&9];
        let body = postcard::to_allocvec(&(proof, &batch[..])).unwrap();
        txn.open_table(committed)
            .unwrap()
            .insert(
                9,
                seal("pbft_committed", &9u64.to_be_bytes(), &body).as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
    };
    tables();
    back_to_version_1(&path);
    let store = Store::open(&path, &NODE).unwrap();
    assert_eq!(store.pbft().load_state().unwrap(), want);
    drop(store);
    // The same, but the database's epochs are not the log's: not that crash.
    tables();
    back_to_version_1(&path);
    {
        let db = redb::Database::create(&path).unwrap();
        let epochs: redb::TableDefinition<'_, u64, &[u8]> =
            redb::TableDefinition::new("pbft_epochs");
        let txn = db.begin_write().unwrap();
        txn.open_table(epochs)
            .unwrap()
            .insert(
                1,
                seal("pbft_epochs", &1u64.to_be_bytes(), &[1, 7]).as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
    }
    corrupted(&path);
}

/// The format record of node `[7; 32]`'s store at version 1 (store.md §2):
/// what a store of an earlier release holds.
const FORMAT_V1: [u8; 64] = {
    let mut r = [7u8; 64];
    let head: [u8; 32] = [
        0x01, 0x03, 0xca, 0x21, 0xe1, 0x4d, 0x42, 0xda, 0xc6, 0x60, 0x08, 0x1a, 0x4e, 0x5d, 0x64,
        0x04, 0x7a, 0x65, 0x78, 0x6f, 0x2d, 0x66, 0x65, 0x64, 0x2d, 0x73, 0x74, 0x6f, 0x72, 0x65,
        0x00, 0x01,
    ];
    let mut i = 0;
    while i < 32 {
        r[i] = head[i];
        i += 1;
    }
    r
};

/// Puts the store at `path` back to version 1 without the record of its log
/// (what an open leaves when it crashes before the move's transaction).
fn back_to_version_1(path: &Path) {
    let db = redb::Database::create(path).unwrap();
    let meta: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(meta).unwrap();
        t.remove("pbft.log").unwrap();
        t.insert("format", FORMAT_V1.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

/// A log beside a store of version 1 is kept only if it is what a crash
/// during the move leaves (the tables' state); any other is refused, never
/// overwritten. A store of version 2 with replica state in the old tables
/// (an earlier release wrote them) is refused too.
#[test]
fn a_log_the_database_has_no_record_of_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    // The crash during the move: an empty log, tables empty.
    drop(Store::open(&path, &NODE).unwrap());
    back_to_version_1(&path);
    let store = Store::open(&path, &NODE).unwrap();
    assert_eq!(store.pbft().load_state().unwrap(), DurableState::default());
    // Votes in the log, and a database that does not know it (replaced).
    let all = ops(21, 30);
    store.pbft().persist_all(&all).unwrap();
    drop(store);
    back_to_version_1(&path);
    let err = corrupted(&path);
    assert!(
        err.to_string()
            .contains(&log_path(&path).display().to_string()),
        "{err}"
    );
    // The database deleted: a new store beside the old log.
    std::fs::remove_file(&path).unwrap();
    corrupted(&path);
    // The votes are still in the log.
    let log = std::fs::read(log_path(&path)).unwrap();
    assert!(log.len() > 1024, "the log was kept");
    // Version 2 with replica state in the old tables.
    let other = dir.path().join("other.redb");
    drop(Store::open(&other, &NODE).unwrap());
    {
        let db = redb::Database::create(&other).unwrap();
        let meta: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
        let txn = db.begin_write().unwrap();
        txn.open_table(meta)
            .unwrap()
            .insert("pbft.view", seal("meta", b"pbft.view", &[5, 0]).as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    corrupted(&other);
}

/// Record framing from docs/protocol/store.md §1.
fn seal(table: &str, key: &[u8], body: &[u8]) -> Vec<u8> {
    let sum = fed_crypto::hash(
        fed_mesh::core::labels::STORE_RECORD,
        &[table.as_bytes(), key, body],
    );
    let mut out = vec![1u8];
    out.extend_from_slice(&sum[..16]);
    out.extend_from_slice(body);
    out
}

/// The writes of the crash tests: small random ones of every kind, or
/// (`big`) 2 MiB checkpoints each made stable by the next write, so that the
/// replica log rewrites itself every few writes and a kill lands in rewrites
/// too.
fn crash_ops(seed: u64, n: usize, big: bool) -> Vec<Persist> {
    if !big {
        return ops(seed, n);
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n as u64)
        .map(|i| {
            if i % 2 == 0 {
                Persist::Checkpoint {
                    seq: i,
                    state: [i as u8; 32],
                    snapshot: Arc::from(vec![rng.next_u32() as u8; 2 << 20]),
                }
            } else {
                Persist::Stable(CheckpointCert {
                    seq: i - 1,
                    state: [(i - 1) as u8; 32],
                    signatures: Vec::new(),
                })
            }
        })
        .collect()
}

/// The child side of the crash tests: writes `n` writes one by one, printing
/// the count after each is durable and waiting for the parent's go-ahead (a
/// line on stdin) before the next, until killed. So it is never more than one
/// write ahead of what the parent read, whatever the machine's load.
fn child(path: &str, seed: u64, n: usize, big: bool) {
    let store = Store::open(path, &NODE).unwrap();
    let all = crash_ops(seed, n, big);
    let mut pbft = store.pbft();
    let mut go = std::io::stdin().lock().lines();
    for (i, op) in all.iter().enumerate() {
        pbft.persist_all(std::slice::from_ref(op)).unwrap();
        println!("durable {}", i + 1);
        if go.next().is_none() {
            return;
        }
    }
    println!("done");
}

/// Waits `micros` before the parent's kill (the test process does I/O; the
/// no-blocking rule is the sans-IO core's).
#[allow(clippy::disallowed_methods)]
fn pause_micros(micros: u64) {
    std::thread::sleep(std::time::Duration::from_micros(micros));
}

/// Runs the test `name` as a child process `rounds` times, each killed with
/// SIGKILL during a random write; each store then opens with every write the
/// child acknowledged, and the one in flight or not.
fn crash_rounds(name: &str, big: bool, n: usize, rounds: u64) {
    if let Ok(path) = std::env::var("FED_STORE_CHILD") {
        let seed = std::env::var("FED_STORE_SEED").unwrap().parse().unwrap();
        child(&path, seed, n, big);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    for round in 0..rounds {
        let path = dir.path().join(format!("crash-{round}.redb"));
        let seed = 100 + round;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env("FED_STORE_CHILD", &path)
            .env("FED_STORE_SEED", seed.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut kill_after = 1 + (rng.next_u32() as usize % (n * 3 / 4));
        if big && kill_after.is_multiple_of(2) {
            // The next write makes a checkpoint stable: a rewrite once the
            // log has grown 8 MiB (about one in four of these).
            kill_after += 1;
        }
        let mut go = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            // (The first one follows libtest's "test … ... " on its line.)
            if let Some((_, n)) = line.split_once("durable ") {
                acked = n.trim().parse().unwrap();
                // The go-ahead for the next write, even the last time: the
                // kill then lands during it, or just after it.
                writeln!(go, "go").unwrap();
                if acked >= kill_after {
                    break;
                }
            }
        }
        if big {
            // Into the next write (and its rewrite, a few milliseconds long)
            // at a random point.
            pause_micros(u64::from(rng.next_u32() % 6_000));
        }
        // SIGKILL: no destructor, no flush, mid-way through the next write.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            acked >= kill_after,
            "round {round}: the child stopped at {acked}"
        );
        let all = crash_ops(seed, n, big);
        let store = Store::open(&path, &NODE).unwrap();
        let got = store.pbft().load_state().unwrap();
        // Every acknowledged write is there, but for `PrePrepare`s after the
        // last one that needs a sync (held back, pbft.md §5); the one in
        // flight may be, with those before it.
        let synced = |k: usize| {
            &all[..all[..k]
                .iter()
                .rposition(Persist::needs_sync)
                .map_or(0, |i| i + 1)]
        };
        let ok = got == reference(synced(acked)) || got == reference(synced(acked + 1));
        assert!(
            ok,
            "round {round}: state after {acked} durable writes differs"
        );
    }
}

#[test]
fn a_process_killed_between_writes_loses_no_durable_write() {
    crash_rounds(
        "a_process_killed_between_writes_loses_no_durable_write",
        false,
        400,
        6,
    );
}

/// The same with writes that make the replica log rewrite itself every few
/// writes (8 MiB of 2 MiB checkpoints, each made stable), each kill a random
/// moment after the go-ahead for a write that makes a checkpoint stable: kills land in rewrites
/// (the temporary file half written, renamed or not) as well.
#[test]
fn a_process_killed_while_the_log_rewrites_itself_loses_no_durable_write() {
    crash_rounds(
        "a_process_killed_while_the_log_rewrites_itself_loses_no_durable_write",
        true,
        120,
        16,
    );
}

mod audit {
    use fed_crypto::Identity;
    use fed_mesh::{
        core::labels,
        store::{AuditEntry, AuditError, AuditEvent, Store},
    };
    use redb::ReadableTable;

    const AUDIT: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("audit");
    const META: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");

    fn identity(seed: u8) -> Identity {
        Identity::from_seeds(&[seed; 32], None)
    }

    fn event(i: u64) -> AuditEvent {
        match i % 7 {
            0 => AuditEvent::Joined {
                peer: [i as u8; 32],
            },
            1 => AuditEvent::TokenIssued {
                peer: [1; 32],
                expires_at: i,
            },
            2 => AuditEvent::Revoked { peer: [2; 32] },
            3 => AuditEvent::Committed {
                seq: i,
                digest: [3; 32],
            },
            4 => AuditEvent::ViewChanged { view: i },
            5 => AuditEvent::MembershipChanged {
                membership: [5; 32],
            },
            _ => AuditEvent::CutOff {
                peer: [9; 32],
                reason: format!("flood {i}"),
            },
        }
    }

    /// The variant indices of docs/protocol/store.md §4, as a reader would
    /// decode them.
    #[test]
    fn events_encode_as_the_document_says() {
        for i in 0..7u64 {
            let bytes = postcard::to_allocvec(&event(i)).unwrap();
            assert_eq!(u64::from(bytes[0]), i, "{:?}", event(i));
        }
        let cut = postcard::to_allocvec(&AuditEvent::CutOff {
            peer: [9; 32],
            reason: "ab".into(),
        })
        .unwrap();
        assert_eq!(cut, [&[6u8][..], &[9; 32], &[2, b'a', b'b']].concat());
        let token = postcard::to_allocvec(&AuditEvent::TokenRevoked { token: [7; 32] }).unwrap();
        assert_eq!(token, [&[7u8][..], &[7; 32]].concat());
        let committed = postcard::to_allocvec(&AuditEvent::EpochCommitted {
            epoch: 2,
            seq: 300,
            digest: [4; 32],
        })
        .unwrap();
        assert_eq!(committed, [&[8u8, 2, 0xac, 0x02][..], &[4; 32]].concat());
    }

    #[test]
    fn concurrent_appends_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let id = std::sync::Arc::new(identity(1));
        let store = Store::open(&path, &id.node_id()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (store, id) = (store.clone(), id.clone());
                std::thread::spawn(move || {
                    (0..25u64)
                        .map(|i| store.audit().append(&id, i, event(t * 100 + i)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut indices: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        indices.sort_unstable();
        assert_eq!(indices, (0..100).collect::<Vec<_>>());
        drop(store);
        assert_eq!(verify(&path, &id), Ok(100));
    }

    /// A commit of epoch 1 (`EpochCommitted`).
    fn commit(seq: u64, d: u8) -> AuditEvent {
        commit_in(1, seq, d)
    }

    fn commit_in(epoch: u64, seq: u64, d: u8) -> AuditEvent {
        AuditEvent::EpochCommitted {
            epoch,
            seq,
            digest: [d; 32],
        }
    }

    /// The commits (sequence number, digest byte) of `epoch` above `above`
    /// that a log of `entries` holds, as `logged_commits` finds them
    /// (`window` as the replica's).
    fn logged(entries: Vec<AuditEvent>, epoch: u64, above: u64, window: u64) -> Vec<(u64, u8)> {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(1);
        let store = Store::open(dir.path().join("node.redb"), &id.node_id()).unwrap();
        let timed = entries.into_iter().enumerate().map(|(i, e)| (i as u64, e));
        store.audit().append_all(&id, timed).unwrap();
        let mut found: Vec<(u64, u8)> = store
            .audit()
            .logged_commits(epoch, above, window)
            .unwrap()
            .into_iter()
            .map(|(s, d)| (s, d[0]))
            .collect();
        found.sort_unstable();
        found
    }

    /// `logged_commits` finds the commits of the current epoch the log holds
    /// above a sequence number (a restarted voter's checkpoint): not those a
    /// crash lost (they are logged when the voter executes them again), not
    /// those at or below it, and none of an earlier epoch (sequence numbers
    /// started again), which a batch of this epoch may match (a null batch
    /// has one digest everywhere).
    #[test]
    fn logged_commits_are_the_current_epochs_entries_only() {
        let entries = vec![
            commit_in(0, 1, 10),
            commit_in(0, 2, 20),
            AuditEvent::MembershipChanged {
                membership: [5; 32],
            },
            AuditEvent::Joined { peer: [7; 32] },
            commit(2, 21),
            commit(3, 31),
            AuditEvent::Joined { peer: [8; 32] },
            commit(5, 51),
        ];
        let all = [(2, 21), (3, 31), (5, 51)];
        assert_eq!(logged(entries.clone(), 1, 0, 8), all);
        assert_eq!(logged(entries.clone(), 1, 2, 8), all[1..]);
        assert_eq!(logged(entries.clone(), 1, 3, 8), all[2..]);
        assert!(logged(entries, 1, 5, 8).is_empty());
    }

    /// A node that entered epoch 2 and lost every audit entry since (the
    /// writer appends up to 50 ms after the events): the log ends with epoch
    /// 1's commits, which the search does not take for epoch 2's, whatever
    /// their sequence numbers; nor a commit whose entry names no epoch (a log
    /// written before entries did: passed over).
    #[test]
    fn logged_commits_of_another_epoch_are_not_this_ones() {
        let entries = vec![
            AuditEvent::MembershipChanged {
                membership: [5; 32],
            },
            commit(1, 10),
            commit(2, 20),
            commit(3, 30),
        ];
        assert!(logged(entries.clone(), 2, 0, 8).is_empty());
        assert_eq!(logged(entries, 1, 0, 8), [(1, 10), (2, 20), (3, 30)]);
        let old = vec![
            AuditEvent::Committed {
                seq: 1,
                digest: [10; 32],
            },
            commit_in(0, 2, 20),
        ];
        assert_eq!(logged(old.clone(), 0, 0, 8), [(2, 20)]);
        assert!(logged(old, 1, 0, 8).is_empty());
    }

    /// The search reads at most `4 × window + 4 096` entries back: a
    /// logged commit behind more other entries than that is not found (it
    /// is logged again), and a start does not read a long log whole.
    #[test]
    fn logged_commits_read_a_bounded_tail() {
        let joins = |n: usize| {
            (0..n).map(|i| AuditEvent::Joined {
                peer: [i as u8; 32],
            })
        };
        let near: Vec<AuditEvent> = std::iter::once(commit(1, 10)).chain(joins(4099)).collect();
        assert_eq!(logged(near, 1, 0, 1), [(1, 10)]);
        let far: Vec<AuditEvent> = std::iter::once(commit(1, 10)).chain(joins(4100)).collect();
        assert!(logged(far, 1, 0, 1).is_empty());
    }

    /// Entries appended as one group are the entries appended one at a time:
    /// same chain, same head, and the log verifies.
    #[test]
    fn a_group_append_writes_the_log_one_at_a_time_would() {
        let dir = tempfile::tempdir().unwrap();
        let (one, group) = (dir.path().join("one.redb"), dir.path().join("group.redb"));
        let id = identity(1);
        log(&one, &id);
        let store = Store::open(&group, &id.node_id()).unwrap();
        assert_eq!(store.audit().append(&id, 1_000, event(0)).unwrap(), 0);
        let rest = (1..50).map(|i| (1_000 + i, event(i)));
        assert_eq!(store.audit().append_all(&id, rest).unwrap(), 50);
        assert_eq!(store.audit().append_all(&id, []).unwrap(), 50);
        let grouped = store.audit().entries().unwrap();
        drop(store);
        let store = Store::open(&one, &id.node_id()).unwrap();
        assert_eq!(store.audit().entries().unwrap(), grouped);
        drop(store);
        assert_eq!(verify(&group, &id), Ok(50));
    }

    #[test]
    fn a_long_cut_off_reason_is_kept_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let id = identity(1);
        let store = Store::open(&path, &id.node_id()).unwrap();
        store
            .audit()
            .append(
                &id,
                1,
                AuditEvent::CutOff {
                    peer: [1; 32],
                    reason: "é".repeat(10_000),
                },
            )
            .unwrap();
        let entries = store.audit().entries().unwrap();
        let AuditEvent::CutOff { reason, .. } = &entries[0].event else {
            panic!("{entries:?}");
        };
        assert!(reason.len() <= fed_mesh::store::MAX_CUT_OFF_REASON_LEN && !reason.is_empty());
    }

    #[test]
    fn the_tail_is_the_last_entries_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let id = identity(1);
        log(&path, &id);
        let store = Store::open(&path, &id.node_id()).unwrap();
        let all = store.audit().entries().unwrap();
        let tail = store.audit().tail(5).unwrap();
        let indexes: Vec<u64> = tail.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, vec![45, 46, 47, 48, 49]);
        let entries: Vec<_> = tail.into_iter().map(|(_, e)| e).collect();
        assert_eq!(entries, all[45..].to_vec());
        assert_eq!(store.audit().tail(500).unwrap().len(), 50);
    }

    /// A log of 50 entries by node `id`, closed.
    fn log(path: &std::path::Path, id: &Identity) {
        let store = Store::open(path, &id.node_id()).unwrap();
        for i in 0..50 {
            assert_eq!(store.audit().append(id, 1_000 + i, event(i)).unwrap(), i);
        }
    }

    /// Record framing from docs/protocol/store.md §1, written from the document:
    /// what an attacker who read it would write.
    fn reseal(table: &str, key: &[u8], body: &[u8]) -> Vec<u8> {
        let sum = fed_crypto::hash(labels::STORE_RECORD, &[table.as_bytes(), key, body]);
        let mut out = vec![1u8];
        out.extend_from_slice(&sum[..16]);
        out.extend_from_slice(body);
        out
    }

    /// Edits the audit table through redb: `f` gets every entry's body by index
    /// and returns the new (index, body) list.
    fn rewrite(path: &std::path::Path, f: impl FnOnce(Vec<(u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)>) {
        let db = redb::Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(AUDIT).unwrap();
            let old: Vec<(u64, Vec<u8>)> = t
                .iter()
                .unwrap()
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (k.value(), v.value()[17..].to_vec())
                })
                .collect();
            t.retain(|_, _| false).unwrap();
            for (i, body) in f(old) {
                t.insert(i, reseal("audit", &i.to_be_bytes(), &body).as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }

    fn verify(path: &std::path::Path, id: &Identity) -> Result<u64, AuditError> {
        Store::open(path, &id.node_id())
            .unwrap()
            .audit()
            .verify(id.public())
            .unwrap()
    }

    #[test]
    fn a_log_verifies_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let id = identity(1);
        log(&path, &id);
        assert_eq!(verify(&path, &id), Ok(50));
        let store = Store::open(&path, &id.node_id()).unwrap();
        let entries = store.audit().entries().unwrap();
        assert_eq!(entries.len(), 50);
        assert_eq!(entries[7].event, event(7));
        assert_eq!(entries[7].time_ms, 1_007);
        // Another node's key does not verify it.
        assert_eq!(
            store.audit().verify(identity(2).public()).unwrap(),
            Err(AuditError::BadSignature)
        );
    }

    #[test]
    fn an_edited_entry_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let id = identity(1);
        log(&path, &id);
        rewrite(&path, |mut all| {
            let mut e: AuditEntry = postcard::from_bytes(&all[10].1).unwrap();
            e.time_ms += 1;
            all[10].1 = postcard::to_allocvec(&e).unwrap();
            all
        });
        assert_eq!(verify(&path, &id), Err(AuditError::Broken { index: 11 }));
    }

    #[test]
    fn a_removed_entry_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let id = identity(1);
        log(&path, &id);
        rewrite(&path, |mut all| {
            all.remove(10);
            all
        });
        assert_eq!(verify(&path, &id), Err(AuditError::Missing { index: 10 }));
        // Renumbered to close the gap: the chain breaks instead.
        rewrite(&path, |all| {
            all.into_iter()
                .enumerate()
                .map(|(i, (_, b))| (i as u64, b))
                .collect()
        });
        assert_eq!(verify(&path, &id), Err(AuditError::Broken { index: 10 }));
    }

    #[test]
    fn reordered_entries_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let id = identity(1);
        log(&path, &id);
        rewrite(&path, |mut all| {
            let (a, b) = (all[20].1.clone(), all[21].1.clone());
            all[20].1 = b;
            all[21].1 = a;
            all
        });
        assert_eq!(verify(&path, &id), Err(AuditError::Broken { index: 20 }));
    }

    #[test]
    fn a_cut_tail_is_detected_unless_the_nodes_key_signs_the_new_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let id = identity(1);
        log(&path, &id);
        let mut last_body = Vec::new();
        rewrite(&path, |mut all| {
            all.pop();
            last_body = all[48].1.clone();
            all
        });
        assert_eq!(
            verify(&path, &id),
            Err(AuditError::HeadMismatch {
                head: 50,
                found: 49
            })
        );
        // A new head for the cut log, signed by someone else: refused.
        let last = fed_crypto::hash(labels::AUDIT_ENTRY, &[&48u64.to_be_bytes(), &last_body]);
        let head = |signer: &Identity| {
            let mut statement = id.node_id().0.to_vec();
            statement.extend_from_slice(&49u64.to_be_bytes());
            statement.extend_from_slice(&last);
            let sig = signer
                .sign_ed25519(labels::AUDIT_HEAD, &statement)
                .unwrap()
                .to_bytes();
            // postcard: count (varint), last ([u8; 32]), signature (bytes).
            let mut body = vec![49u8];
            body.extend_from_slice(&last);
            body.push(sig.len() as u8);
            body.extend_from_slice(&sig);
            body
        };
        let write_head = |body: Vec<u8>| {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(
                    "audit.head",
                    reseal("meta", b"audit.head", &body).as_slice(),
                )
                .unwrap();
            txn.commit().unwrap();
        };
        write_head(head(&identity(2)));
        assert_eq!(verify(&path, &id), Err(AuditError::BadSignature));
        // The node's own Ed25519 signature with an ML-DSA part added: the head's
        // signature is exactly the 65-byte Ed25519 form.
        let own = head(&id);
        // count (1) ‖ last (32) ‖ varint 65 (1) ‖ flags 00 ‖ Ed25519 (64).
        assert_eq!((own.len(), own[33], own[34]), (99, 65, 0));
        let mut padded = own[..33].to_vec();
        padded.extend_from_slice(&[0xae, 0x1a]); // varint 65 + 3309 = 3374
        padded.push(0x01); // flags: an ML-DSA part follows
        padded.extend_from_slice(&own[35..]);
        padded.extend_from_slice(&[0u8; fed_crypto::ML_DSA_65_SIGNATURE_LEN]);
        write_head(padded);
        assert_eq!(verify(&path, &id), Err(AuditError::BadSignature));
        // With the node's own key the cut cannot be told: the limit of a log
        // its writer signs (docs/protocol/store.md §4).
        write_head(head(&id));
        assert_eq!(verify(&path, &id), Ok(49));
    }
}

mod patterns {
    use std::{
        collections::BTreeMap,
        io::{BufRead, BufReader, Write},
        process::{Command, Stdio},
    };

    use fed_mesh::{
        core::labels,
        store::{PersistentSubstrate, Store, StoreError},
        substrate::{MemorySubstrate, Pattern, PatternId, PatternQuery},
    };
    use rand_chacha::{
        ChaCha20Rng,
        rand_core::{Rng, SeedableRng},
    };

    use super::NODE;

    const DIM: usize = 16;

    fn pattern(rng: &mut ChaCha20Rng, id: u64, ts: u64) -> Pattern {
        let mut metadata = BTreeMap::new();
        metadata.insert("tag".to_string(), (id % 3).to_string());
        Pattern {
            id: PatternId::from_u64(id),
            embedding: (0..DIM)
                .map(|_| (rng.next_u32() % 2001) as f32 / 1000.0 - 1.0 + 1e-3)
                .collect(),
            metadata,
            timestamp_ms: ts,
        }
    }

    /// The same random stores, replacements (newer and older) and removals on
    /// the persistent substrate and on a memory one.
    fn workload(seed: u64, n: usize, a: &PersistentSubstrate, b: &MemorySubstrate) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        for _ in 0..n {
            let id = u64::from(rng.next_u32() % 60);
            let ts = u64::from(rng.next_u32() % 1000);
            if rng.next_u32() % 5 == 0 {
                let id = PatternId::from_u64(id);
                assert_eq!(a.delete(&id).unwrap(), b.delete(&id));
            } else {
                let p = pattern(&mut rng, id, ts);
                assert_eq!(a.insert(p.clone()), b.insert(p));
            }
        }
    }

    fn same(a: &PersistentSubstrate, b: &MemorySubstrate, seed: u64) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        assert_eq!(
            futures::executor::block_on(fed_mesh::substrate::Substrate::len(a)),
            b.count()
        );
        for q in 0..20 {
            let mut query = PatternQuery::new(pattern(&mut rng, 0, 0).embedding, 10);
            if q % 2 == 0 {
                query = query.with_filter("tag", "1");
            }
            let got: Vec<_> =
                futures::executor::block_on(fed_mesh::substrate::Substrate::search(a, &query))
                    .unwrap()
                    .into_iter()
                    .map(|h| (h.pattern, h.score))
                    .collect();
            let want: Vec<_> = b
                .query(&query)
                .unwrap()
                .into_iter()
                .map(|h| (h.pattern, h.score))
                .collect();
            assert_eq!(got, want);
        }
        for id in 0..60 {
            let id = PatternId::from_u64(id);
            assert_eq!(
                futures::executor::block_on(fed_mesh::substrate::Substrate::get(a, &id)).unwrap(),
                b.pattern(&id)
            );
        }
    }

    #[test]
    fn patterns_survive_reopening_and_search_as_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let reference = MemorySubstrate::new();
        {
            let store = Store::open(&path, &NODE).unwrap();
            let sub = PersistentSubstrate::open(&store).unwrap();
            workload(1, 300, &sub, &reference);
            same(&sub, &reference, 2);
        }
        let store = Store::open(&path, &NODE).unwrap();
        let sub = PersistentSubstrate::open(&store).unwrap();
        same(&sub, &reference, 3);
        // And it goes on from there.
        workload(4, 100, &sub, &reference);
        same(&sub, &reference, 5);
    }

    #[test]
    fn a_pattern_the_index_refuses_is_corruption_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        {
            let store = Store::open(&path, &NODE).unwrap();
            let sub = PersistentSubstrate::open(&store).unwrap();
            workload(6, 50, &sub, &MemorySubstrate::new());
        }
        // A well-sealed record (docs/protocol/store.md §1) of another dimension.
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut odd = pattern(&mut rng, 999, 1);
        odd.embedding.push(0.5);
        let key = *odd.id.as_bytes();
        let body = postcard::to_allocvec(&odd).unwrap();
        let sum = fed_crypto::hash(labels::STORE_RECORD, &[b"patterns", &key, &body]);
        let mut record = vec![1u8];
        record.extend_from_slice(&sum[..16]);
        record.extend_from_slice(&body);
        {
            let db = redb::Database::create(&path).unwrap();
            let def: redb::TableDefinition<'_, &[u8; 32], &[u8]> =
                redb::TableDefinition::new("patterns");
            let txn = db.begin_write().unwrap();
            txn.open_table(def)
                .unwrap()
                .insert(&key, record.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&path, &NODE).unwrap();
        let err = PersistentSubstrate::open(&store).unwrap_err();
        assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
        assert!(err.to_string().contains("dimension"), "{err}");
    }

    /// A well-sealed pattern record whose body names another id than its key.
    #[test]
    fn a_pattern_under_another_id_is_corruption_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        drop(Store::open(&path, &NODE).unwrap());
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let p = pattern(&mut rng, 5, 1);
        let key = *PatternId::from_u64(6).as_bytes();
        let body = postcard::to_allocvec(&p).unwrap();
        let sum = fed_crypto::hash(labels::STORE_RECORD, &[b"patterns", &key, &body]);
        let mut record = vec![1u8];
        record.extend_from_slice(&sum[..16]);
        record.extend_from_slice(&body);
        {
            let db = redb::Database::create(&path).unwrap();
            let def: redb::TableDefinition<'_, &[u8; 32], &[u8]> =
                redb::TableDefinition::new("patterns");
            let txn = db.begin_write().unwrap();
            txn.open_table(def)
                .unwrap()
                .insert(&key, record.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        super::corrupted(&path);
    }

    /// One index per file: a second substrate on the same store would miss the
    /// first one's writes.
    #[test]
    fn a_second_substrate_on_one_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("node.redb"), &NODE).unwrap();
        let first = PersistentSubstrate::open(&store).unwrap();
        assert!(PersistentSubstrate::open(&store).is_err());
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        first.insert(pattern(&mut rng, 1, 1)).unwrap();
    }

    #[test]
    fn a_process_killed_while_storing_patterns_loses_none_it_acknowledged() {
        if let Ok(path) = std::env::var("FED_PATTERNS_CHILD") {
            let store = Store::open(&path, &NODE).unwrap();
            let sub = PersistentSubstrate::open(&store).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(8);
            // One write past what the parent read at most: each waits for
            // its go-ahead.
            let mut go = std::io::stdin().lock().lines();
            for i in 0..2_000u64 {
                sub.insert(pattern(&mut rng, i, 1)).unwrap();
                println!("durable {}", i + 1);
                if go.next().is_none() {
                    return;
                }
            }
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for round in 0..3u64 {
            let path = dir.path().join(format!("p-{round}.redb"));
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "patterns::a_process_killed_while_storing_patterns_loses_none_it_acknowledged",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("FED_PATTERNS_CHILD", &path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stop = 20 + 90 * round as usize;
            let mut acked = 0usize;
            let mut go = child.stdin.take().unwrap();
            for line in BufReader::new(child.stdout.take().unwrap()).lines() {
                // The first follows libtest's "test … ... " on its line.
                if let Some((_, n)) = line.unwrap().split_once("durable ") {
                    acked = n.trim().parse().unwrap();
                    writeln!(go, "go").unwrap();
                    if acked >= stop {
                        break;
                    }
                }
            }
            child.kill().unwrap();
            child.wait().unwrap();
            let store = Store::open(&path, &NODE).unwrap();
            let sub = PersistentSubstrate::open(&store).unwrap();
            let held = futures::executor::block_on(fed_mesh::substrate::Substrate::len(&sub));
            assert!(
                held == acked || held == acked + 1,
                "round {round}: {held} held after {acked} acknowledged"
            );
            for i in 0..acked as u64 {
                assert!(sub_has(&sub, i), "round {round}: pattern {i} lost");
            }
        }
    }

    fn sub_has(sub: &PersistentSubstrate, i: u64) -> bool {
        futures::executor::block_on(fed_mesh::substrate::Substrate::get(
            sub,
            &PatternId::from_u64(i),
        ))
        .unwrap()
        .is_some()
    }
}
