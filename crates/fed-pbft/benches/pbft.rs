//! Committed operations per second of four replicas in one process, with no
//! network delay: every transmit is delivered in FIFO order at once, every write
//! goes to a `MemoryStorage`, and a batch counts when all four replicas executed
//! it. Requests (100-byte operations with their MAC authenticators) are built
//! outside the measurement. Also prints messages and bytes per committed batch,
//! and each replica's own CPU time per operation: all four replicas share one
//! thread here, while a deployment runs each on its own machine, where the
//! busiest replica bounds throughput. Two services: a null one (a counter), which
//! measures the protocol, and a hash chain, which does work per operation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{
    collections::VecDeque,
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fed_crypto::Identity;
use fed_pbft::{
    Application, ClientId, ClientKey, ClientKeys, Config, Event, Membership, MemoryStorage,
    Message, Replica, Storage,
};

const N: usize = 4;
/// Batches per run: one checkpoint interval of the default configuration, so every
/// run includes a checkpoint (snapshot, digest, CHECKPOINT votes, log collection)
/// and the tables reach their steady size.
const BATCHES: u64 = 64;
const OP_LEN: usize = 100;

/// The null service of Castro and Liskov's micro-benchmarks, nearly: it counts
/// operations and answers each with the count (8 bytes), so the figure is the
/// replication protocol's cost.
#[derive(Default)]
struct Counter(u64);

impl Application for Counter {
    fn execute(&mut self, _: &ClientId, _: &[u8]) -> Vec<u8> {
        self.0 += 1;
        self.0.to_be_bytes().to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_be_bytes().to_vec()
    }
    fn restore(&mut self, s: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0 = u64::from_be_bytes(s.try_into()?);
        Ok(())
    }
}

/// A service that does some work per operation: a running keyed BLAKE3 of the
/// operations, answering with 8 bytes of it.
#[derive(Default)]
struct Chain([u8; 32]);

impl Application for Chain {
    fn execute(&mut self, _: &ClientId, op: &[u8]) -> Vec<u8> {
        self.0 = *blake3::keyed_hash(&self.0, op).as_bytes();
        self.0[..8].to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_vec()
    }
    fn restore(&mut self, s: &[u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0 = s.try_into()?;
        Ok(())
    }
}

struct Cluster<A: Application> {
    replicas: Vec<Replica<A>>,
    storages: Vec<MemoryStorage>,
    requests: Vec<Vec<u8>>,
    batch: usize,
    messages: u64,
    bytes: u64,
}

fn cluster<A: Application + Default>(batch: usize) -> Cluster<A> {
    let ids: Vec<Arc<Identity>> = (0..N)
        .map(|i| Arc::new(Identity::from_seeds(&[i as u8 + 1; 32], None)))
        .collect();
    let m = Arc::new(Membership::new(ids.iter().map(|i| i.public().clone()).collect()).unwrap());
    let mut config = Config::default();
    config.max_batch_requests = batch;
    config.max_batch_bytes = 1024 * 1024;
    let clients: Vec<(ClientId, Vec<ClientKey>)> = (0..batch as u64)
        .map(|c| {
            let id = ClientId(fed_crypto::hash(
                "exo-federation v1 pbft bench client",
                &[&c.to_be_bytes()],
            ));
            let keys = (0..N as u64)
                .map(|i| {
                    ClientKey::new(&fed_crypto::hash(
                        "exo-federation v1 pbft bench key",
                        &[&id.0, &i.to_be_bytes()],
                    ))
                })
                .collect();
            (id, keys)
        })
        .collect();
    let mut replicas: Vec<Replica<A>> = ids
        .iter()
        .map(|id| Replica::new(id.clone(), m.clone(), config.clone(), A::default(), 0).unwrap())
        .collect();
    for (i, r) in replicas.iter_mut().enumerate() {
        for (id, keys) in &clients {
            r.add_client(*id, keys[i].clone()).unwrap();
        }
    }
    let signers: Vec<ClientKeys> = clients
        .iter()
        .map(|(id, keys)| ClientKeys::new(&m, *id, keys).unwrap())
        .collect();
    let mut requests = Vec::new();
    for ts in 1..=BATCHES {
        for (c, keys) in signers.iter().enumerate() {
            let mut op = vec![0u8; OP_LEN];
            op[..8].copy_from_slice(&(c as u64).to_be_bytes());
            op[8..16].copy_from_slice(&ts.to_be_bytes());
            let r = keys.request(ts, op);
            requests.push(Message::Request(r).encode().unwrap());
        }
    }
    Cluster {
        replicas,
        storages: (0..N).map(|_| MemoryStorage::new()).collect(),
        requests,
        batch,
        messages: 0,
        bytes: 0,
    }
}

/// Feeds every request to the primary and delivers messages until every replica
/// executed every batch. Returns the number of operations executed per replica.
fn run<A: Application>(c: &mut Cluster<A>) -> u64 {
    run_timed(c, None)
}

/// [`run`], adding to `busy[i]` the time replica `i` spends handling its inputs
/// and draining its outputs.
// Wall-clock time is what this bench measures; the sans-IO ban is for the crate.
#[allow(clippy::disallowed_methods)]
fn run_timed<A: Application>(c: &mut Cluster<A>, mut busy: Option<&mut [Duration; N]>) -> u64 {
    let mut timed = |i: usize, c: &mut Cluster<A>, f: &mut dyn FnMut(&mut Cluster<A>)| {
        let start = busy.is_some().then(Instant::now);
        f(c);
        if let (Some(b), Some(t)) = (busy.as_deref_mut(), start) {
            b[i] += t.elapsed();
        }
    };
    let now = 0;
    let mut wire: VecDeque<(u16, u16, Arc<[u8]>)> = VecDeque::new();
    let mut executed = [0u64; N];
    let mut stable = [0u64; N];
    let mut ops = 0u64;
    let requests = std::mem::take(&mut c.requests);
    // One batch's worth of requests to the primary, then every message until the
    // cluster is quiet.
    for chunk in requests.chunks(c.batch) {
        for req in chunk {
            timed(0, c, &mut |c| {
                c.replicas[0].handle_request(req, now).unwrap();
                drain(c, 0, &mut wire, &mut executed, &mut stable, &mut ops);
            });
        }
        while let Some((from, to, bytes)) = wire.pop_front() {
            c.messages += 1;
            c.bytes += bytes.len() as u64;
            let to = usize::from(to);
            timed(to, c, &mut |c| {
                let _ = c.replicas[to].handle_message(from, &bytes, now);
                drain(c, to, &mut wire, &mut executed, &mut stable, &mut ops);
            });
        }
    }
    assert!(
        executed.iter().all(|&e| e == BATCHES),
        "executed {executed:?}"
    );
    assert!(
        stable.iter().all(|&s| s == 1),
        "stable checkpoints {stable:?}"
    );
    ops / N as u64
}

fn drain<A: Application>(
    c: &mut Cluster<A>,
    i: usize,
    wire: &mut VecDeque<(u16, u16, Arc<[u8]>)>,
    executed: &mut [u64; N],
    stable: &mut [u64; N],
    ops: &mut u64,
) {
    let r = &mut c.replicas[i];
    while let Some(p) = r.poll_persist() {
        c.storages[i].persist(&p).unwrap();
    }
    while let Some(t) = r.poll_transmit() {
        wire.push_back((i as u16, t.to, t.payload));
    }
    while let Some(e) = r.poll_event() {
        match e {
            Event::Executed(x) => {
                executed[i] += 1;
                *ops += x.requests.len() as u64;
            }
            Event::StableCheckpoint { .. } => stable[i] += 1,
            Event::Reply(reply) => {
                black_box(reply);
            }
            _ => {}
        }
    }
}

fn bench(c: &mut Criterion) {
    bench_service::<Counter>(c, "null");
    bench_service::<Chain>(c, "hash-chain");
}

fn bench_service<A: Application + Default>(c: &mut Criterion, service: &str) {
    for batch in [100usize, 1000] {
        let mut probe = cluster::<A>(batch);
        let ops = run(&mut probe);
        println!(
            "{service} batch {batch}: {} ops per replica; {:.1} messages and {:.0} bytes between replicas per committed batch",
            ops,
            probe.messages as f64 / BATCHES as f64,
            probe.bytes as f64 / BATCHES as f64
        );
        // Each replica's own time per operation, over a few runs.
        let mut busy = [Duration::ZERO; N];
        let runs = 5;
        for _ in 0..runs {
            run_timed(&mut cluster::<A>(batch), Some(&mut busy));
        }
        let per_op = busy.map(|d| d.as_secs_f64() * 1e6 / (ops * runs) as f64);
        let busiest = per_op.iter().copied().fold(0.0, f64::max);
        println!(
            "{service} batch {batch}: CPU time per operation by replica (us): {per_op:.2?}; the busiest alone bounds a deployment with one replica per machine at {:.0} ops/s",
            1e6 / busiest
        );
        let mut g = c.benchmark_group(format!("pbft-4-replicas-{service}"));
        g.throughput(Throughput::Elements(batch as u64 * BATCHES));
        g.sample_size(10);
        g.bench_function(format!("commit-batch-{batch}-op-{OP_LEN}B"), |b| {
            b.iter_batched(
                || cluster::<A>(batch),
                |mut c| run(&mut c),
                BatchSize::LargeInput,
            )
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
