//! The store's write cost: one PBFT write group as a replica makes it for a
//! committed batch (its PRE-PREPARE, its prepared certificate and its commit
//! proof with the batch, in one record of the replica log: one write, one
//! `fdatasync`), for batches of 100 and
//! 1 000 requests of 100 bytes; and one pattern stored durably. On a temporary
//! file in the target directory's file system.
//!
//! `cargo bench -p fed-mesh --bench store`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fed_crypto::NodeId;
use fed_mesh::{
    store::{PersistentSubstrate, Store},
    substrate::{Pattern, PatternId},
};
use fed_pbft::{CommitProof, Persist, PreparedCert, Signature};

/// The write group of one committed batch at sequence `seq`.
fn group(seq: u64, batch: &Arc<[u8]>) -> Vec<Persist> {
    let sig = Signature([5; 64]);
    let sigs: Vec<(u16, Signature)> = (0..3).map(|i| (i, sig)).collect();
    vec![
        Persist::PrePrepare {
            view: 0,
            seq,
            digest: [1; 32],
            signature: sig,
            batch: Some(batch.clone()),
        },
        Persist::Prepared {
            cert: PreparedCert {
                view: 0,
                seq,
                digest: [1; 32],
                primary: sig,
                prepares: sigs[1..].to_vec(),
            },
            batch: None,
        },
        Persist::Committed {
            proof: CommitProof {
                membership: [2; 32],
                view: 0,
                seq,
                digest: [1; 32],
                signatures: sigs,
            },
            batch: batch.clone(),
        },
    ]
}

fn pbft(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = Store::open(dir.path().join("bench.redb"), &NodeId([1; 32])).unwrap();
    let mut g = c.benchmark_group("store");
    for requests in [100usize, 1000] {
        // A request in a batch: ~100 bytes of operation plus its framing and
        // authenticator (pbft.md §2), about 150 bytes.
        let batch: Arc<[u8]> = Arc::from(vec![0x5a; requests * 150]);
        g.throughput(Throughput::Bytes(batch.len() as u64 * 2));
        let mut seq = 0u64;
        let mut pbft = store.pbft();
        g.bench_function(format!("pbft-write-group/batch-{requests}"), |b| {
            b.iter(|| {
                seq += 1;
                pbft.persist_all(&group(seq, &batch)).unwrap();
            })
        });
    }
    let sub = PersistentSubstrate::open(&store).unwrap();
    let mut n = 0u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("pattern-store/384-dim", |b| {
        b.iter_batched(
            || {
                n += 1;
                Pattern {
                    id: PatternId::from_u64(n),
                    embedding: (0..384).map(|i| (i as f32 + n as f32).sin()).collect(),
                    metadata: Default::default(),
                    timestamp_ms: n,
                }
            },
            |p| sub.insert(p).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, pbft);
criterion_main!(benches);
