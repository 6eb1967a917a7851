//! `fedmesh bench-commit`: committed operations per second and latency of a
//! federation of voting members, each a `fedmesh node` process on 127.0.0.1,
//! driven by non-voting nodes in this process, or (`--from-voters`) by the
//! voters' own nodes. Also the time to the first commit after the primary's
//! process is SIGKILLed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use fed_mesh::{
    FederatedMesh, MeshConfig, PeerAddress, crypto::Identity, handshake::Open,
    substrate::StateUpdate,
};
use futures::StreamExt;

use crate::{Failure, control, local::LocalFederation};

#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// Voting members (processes).
    #[arg(long, default_value_t = 4)]
    voters: usize,
    /// Commits in the throughput run.
    #[arg(long, default_value_t = 20_000)]
    commits: usize,
    /// Commits outstanding at once in the throughput run (across all the
    /// client nodes).
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Client nodes (non-voting members in this process, each with its own
    /// identity, sessions and connections) that the throughput run's commits
    /// are spread over in turn. One node has at most 256 commits outstanding
    /// (its client slots, mesh.md §9), which bounds what one client can ask
    /// of the federation.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Bytes of each update.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Sequential commits for the unloaded latency.
    #[arg(long, default_value_t = 300)]
    sequential: usize,
    /// Idle milliseconds before each sequential commit, so that each starts on
    /// a federation with nothing left to do from the one before (0: back to
    /// back, the work each commit leaves behind overlapping the next).
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// The voters' own nodes make the commits (each its share, through its
    /// control socket's `bench-commit`), and no client node runs here: the
    /// voting processes alone. `--clients` is then unused.
    #[arg(long)]
    from_voters: bool,
}

/// CPU time used so far (user and system, every thread) by the voters'
/// processes and by this one, and the machine's busy and total time, in
/// clock ticks, from Linux's `/proc`. None where `/proc` cannot be read.
struct CpuSample {
    voters: Vec<u64>,
    client: u64,
    busy: u64,
    total: u64,
}

/// Linux's clock tick for `/proc` times (`USER_HZ`), in milliseconds.
const TICK_MS: f64 = 10.0;

impl CpuSample {
    fn take(pids: &[u32]) -> Option<Self> {
        let voters = pids
            .iter()
            .map(|pid| process_ticks(&format!("/proc/{pid}/stat")))
            .collect::<Option<Vec<_>>>()?;
        let client = process_ticks("/proc/self/stat")?;
        // The first line of /proc/stat: "cpu user nice system idle iowait irq softirq steal ...".
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3)? + ticks.get(4)?;
        Some(Self {
            voters,
            client,
            busy: total - idle,
            total,
        })
    }

    /// What was used between `self` and `later`, per commit of the `per`
    /// made meanwhile, as a line: each voter's and the client process's
    /// CPU, in microseconds per commit, and how busy the machine was.
    /// `here` says what runs in this process.
    fn report(&self, later: &Self, per: usize, what: &str, here: &str) -> String {
        let per = per.max(1) as f64 / 1e3;
        let voters: Vec<String> = self
            .voters
            .iter()
            .zip(&later.voters)
            .map(|(a, b)| format!("{:.0}", b.saturating_sub(*a) as f64 * TICK_MS / per))
            .collect();
        let client = later.client.saturating_sub(self.client) as f64 * TICK_MS / per;
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        format!(
            "cpu ({what}): µs per commit in each voter {}, in this process ({here}) {client:.0}; machine {:.0}% busy",
            voters.join(", "),
            100.0 * busy / total
        )
    }
}

/// User plus system clock ticks of the process whose `stat` file is `path`
/// (fields 14 and 15; the command name, field 2, may hold spaces and
/// parentheses, so fields are counted after its closing one).
fn process_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Update `i` of a benchmark: `size` bytes, the first of them `i`'s.
pub(crate) fn update(i: usize, size: usize) -> StateUpdate {
    let mut bytes = vec![0u8; size];
    let tag = (i as u64).to_be_bytes();
    let n = tag.len().min(size);
    bytes[..n].copy_from_slice(&tag[..n]);
    StateUpdate::Opaque {
        kind: String::new(),
        bytes,
    }
}
/// Where a run's commits come from.
enum Source {
    /// Client nodes in this process: commit `i` of the throughput run goes
    /// through client `i mod n`, the others through the first.
    Clients(Vec<FederatedMesh>),
    /// The voters' own nodes, each asked through its control socket
    /// (`bench-commit`); the warm-up and sequential commits through this one,
    /// a backup (the voter after the primary).
    Voters(usize),
}

/// What a run of commits gave.
#[derive(Default)]
struct Outcome {
    /// Each success's latency.
    latencies: Vec<Duration>,
    /// From the start to the last success.
    elapsed: Duration,
    /// Failures, by error.
    errors: std::collections::BTreeMap<String, usize>,
}

impl Outcome {
    /// The first failure, as a `Failure` naming `what`.
    fn check(&self, what: &str) -> Result<(), Failure> {
        match self.errors.iter().next() {
            Some((e, n)) => Err(Failure::runtime(format!("{what}: {n} failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Adds `other`'s commits (made at the same time as these).
    fn merge(&mut self, other: Outcome) {
        self.latencies.extend(other.latencies);
        self.elapsed = self.elapsed.max(other.elapsed);
        for (e, n) in other.errors {
            *self.errors.entry(e).or_default() += n;
        }
    }
}

/// Commits `commits` updates (numbered from `first`) through `clients`,
/// `concurrency` at a time, each after `pause_ms` idle milliseconds; commit
/// `i` goes through client `i mod n` when `spread`, else through the first.
async fn commit_from_clients(
    clients: &[FederatedMesh],
    first: usize,
    commits: usize,
    concurrency: usize,
    size: usize,
    pause_ms: u64,
    spread: bool,
) -> Outcome {
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(first..first + commits)
        .map(|i| {
            let client = clients[if spread { i % clients.len() } else { 0 }].clone();
            async move {
                if pause_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                }
                let update = update(i, size);
                let t = Instant::now();
                let r = client.byzantine_commit(update).await;
                (r.map(|_| t.elapsed()), started.elapsed())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut outcome = Outcome::default();
    for (r, at) in results {
        match r {
            Ok(latency) => {
                outcome.latencies.push(latency);
                outcome.elapsed = outcome.elapsed.max(at);
            }
            Err(e) => *outcome.errors.entry(e.to_string()).or_default() += 1,
        }
    }
    outcome
}

/// Asks voter `i`'s node to commit `commits` updates itself, `concurrency`
/// at a time, each after `pause_ms` idle milliseconds.
async fn commit_from_voter(
    fed: &LocalFederation,
    i: usize,
    commits: usize,
    concurrency: usize,
    size: usize,
    pause_ms: u64,
) -> Result<Outcome, Failure> {
    let answer = fed
        .call(
            i,
            &control::ControlRequest::BenchCommit {
                commits,
                concurrency,
                size,
                pause_ms,
            },
        )
        .await?;
    let bad = || {
        Failure::runtime(format!(
            "voter {i}: a bench-commit answer without its figures"
        ))
    };
    let latencies = answer["latencies_us"]
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|v| v.as_u64().map(Duration::from_micros))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)?;
    let elapsed = Duration::from_micros(answer["elapsed_us"].as_u64().ok_or_else(bad)?);
    let errors = answer["failed"]
        .as_object()
        .ok_or_else(bad)?
        .iter()
        .map(|(e, n)| (format!("voter {i}: {e}"), n.as_u64().unwrap_or(0) as usize))
        .collect();
    Ok(Outcome {
        latencies,
        elapsed,
        errors,
    })
}

pub(crate) async fn run(args: BenchArgs) -> Result<(), Failure> {
    let voters_n = args.voters.max(1);
    if args.from_voters {
        // What each voter will be asked, checked before anything starts.
        if voters_n < 2 || args.concurrency < voters_n {
            return Err(Failure::config(
                "--from-voters needs at least 2 voters and at least one commit outstanding per voter (--concurrency)",
            ));
        }
        let per = |total: usize| total.div_ceil(voters_n);
        control::bench_bounds(per(args.commits), per(args.concurrency), args.size, 0)
            .and_then(|()| control::bench_bounds(args.sequential, 1, args.size, args.pause_ms))
            .map_err(|e| Failure::config(format!("--from-voters: {e}")))?;
    }
    let mut node_args = vec![
        "--requests-per-second".to_string(),
        "1000000".into(),
        "--max-in-flight".into(),
        "100000".into(),
    ];
    if args.from_voters {
        let slots = args
            .concurrency
            .max(1)
            .div_ceil(voters_n)
            .min(usize::from(fed_mesh::core::commit::MAX_CLIENT_SLOTS));
        node_args.extend(["--client-slots".to_string(), slots.to_string()]);
    }
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let mut fed = LocalFederation::create(voters_n, 0, &node_args)?;
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..voters_n {
        fed.start(i).await?;
        let status = fed.status(i).await?;
        addrs.push(
            status["addresses"][0]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let genesis = fed.genesis.clone();

    let source = if args.from_voters {
        Source::Voters((fed.primary(0).await? + 1) % voters_n)
    } else {
        let clients_n = args.clients.max(1);
        let per_client = args.concurrency.max(1).div_ceil(clients_n);
        let mut clients = Vec::with_capacity(clients_n);
        for _ in 0..clients_n {
            clients.push(start_client(&genesis, &addrs, per_client).await?);
        }
        for client in &clients {
            for _ in 0..400 {
                if client.peer_count().await.unwrap_or(0) == voters_n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Source::Clients(clients)
    };
    // Let every voter's sessions settle (each joins each).
    tokio::time::sleep(Duration::from_secs(2)).await;
    // `commits` sequential commits, each after `pause` idle milliseconds,
    // through the first client or the sequential voter.
    let sequential = async |first: usize, commits: usize, pause: u64| match &source {
        Source::Clients(clients) => {
            Ok(commit_from_clients(clients, first, commits, 1, args.size, pause, false).await)
        }
        Source::Voters(through) => {
            commit_from_voter(&fed, *through, commits, 1, args.size, pause).await
        }
    };
    // Warm-up (from every voter when they commit).
    sequential(0, 50, 0).await?.check("warm-up")?;
    if let Source::Voters(_) = source {
        for i in 0..voters_n {
            commit_from_voter(&fed, i, 10, 1, args.size, 0)
                .await?
                .check("warm-up")?;
        }
    }
    // CPU is sampled around each run (a figure only, on Linux).
    let here = match source {
        Source::Clients(_) => "client nodes and the bench",
        Source::Voters(_) => "the bench",
    };
    let pids: Vec<u32> = (0..voters_n).filter_map(|i| fed.pid(i)).collect();
    let cpu_before = CpuSample::take(&pids);
    // Unloaded latency.
    let unloaded = sequential(1_000_000, args.sequential, args.pause_ms).await?;
    unloaded.check("unloaded")?;
    let cpu_after = CpuSample::take(&pids);
    let mut lat = unloaded.latencies;
    lat.sort();
    let through = match source {
        Source::Clients(_) => "client node 1".to_string(),
        Source::Voters(through) => format!("voter {through}, a backup"),
    };
    println!(
        "unloaded ({} sequential commits through {through}, {} ms apart, {} B): p50 {:.2} ms, p99 {:.2} ms",
        args.sequential,
        args.pause_ms,
        args.size,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    if let (Some(a), Some(b)) = (&cpu_before, &cpu_after) {
        println!("{}", a.report(b, args.sequential, "unloaded", here));
    }
    // Throughput.
    // Voter 0's last executed sequence number (a figure only: none if its
    // status cannot be read).
    let executed = async || fed.status(0).await.ok()?["consensus"]["last_executed"].as_u64();
    let first_seq = executed().await;
    let view = async || fed.status(0).await.ok()?["consensus"]["view"].as_u64();
    let first_view = view().await;
    let cpu_before = CpuSample::take(&pids);
    let started = Instant::now();
    let outcome = match &source {
        Source::Clients(clients) => {
            commit_from_clients(
                clients,
                2_000_000,
                args.commits,
                args.concurrency,
                args.size,
                0,
                true,
            )
            .await
        }
        Source::Voters(_) => {
            // Each voter its share of the commits and of the concurrency
            // (at least one each, checked above).
            let share =
                |i: usize, total: usize| total / voters_n + usize::from(i < total % voters_n);
            let shares = (0..voters_n).map(|i| {
                let (fed, started) = (&fed, started);
                async move {
                    // Each voter times from its own start to its last success;
                    // its start is this much after the run's.
                    let offset = started.elapsed();
                    let outcome = commit_from_voter(
                        fed,
                        i,
                        share(i, args.commits),
                        share(i, args.concurrency),
                        args.size,
                        0,
                    )
                    .await;
                    outcome.map(|mut o| {
                        o.elapsed += offset;
                        o
                    })
                }
            });
            let mut all = Outcome::default();
            for (i, outcome) in futures::future::join_all(shares)
                .await
                .into_iter()
                .enumerate()
            {
                match outcome {
                    Ok(o) => all.merge(o),
                    // A voter that could not report: its share counts as failed.
                    Err(e) => {
                        *all.errors
                            .entry(format!("voter {i}: {}", e.message))
                            .or_default() += share(i, args.commits);
                    }
                }
            }
            all
        }
    };
    let cpu_after = CpuSample::take(&pids);
    if !outcome.errors.is_empty() {
        println!("failed commits: {:?}", outcome.errors);
    }
    let mut lat = outcome.latencies;
    lat.sort();
    let from = match &source {
        Source::Clients(clients) => format!("{} client node(s)", clients.len()),
        Source::Voters(_) => format!("the {voters_n} voters' own nodes"),
    };
    println!(
        "throughput ({} commits, {} outstanding, from {from}, {} B): {:.0} ops/s over {:.2} s to the last success ({} failed); latency p50 {:.2} ms, p99 {:.2} ms",
        args.commits,
        args.concurrency,
        args.size,
        lat.len() as f64 / outcome.elapsed.as_secs_f64(),
        outcome.elapsed.as_secs_f64(),
        args.commits - lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    if let (Some(a), Some(b)) = (&cpu_before, &cpu_after) {
        println!("{}", a.report(b, lat.len(), "throughput", here));
    }
    // Batches voter 0 executed meanwhile: the clients complete on a quorum
    // of replies, so its count is read once it stops moving.
    let mut last_seq = executed().await;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = executed().await;
        if now == last_seq {
            break;
        }
        last_seq = now;
    }
    if let (Some(a), Some(b)) = (first_seq, last_seq)
        && b > a
    {
        println!(
            "batches: {} executed by voter 0 during the throughput run, {:.1} commits per batch",
            b - a,
            lat.len() as f64 / (b - a) as f64
        );
    }
    if let (Some(a), Some(b)) = (first_view, view().await) {
        println!("views: voter 0 in view {a} before the throughput run, {b} after");
    }
    // Recovery: SIGKILL the primary, time the next commit (through the
    // first client, or through the voter after the primary).
    let primary = fed.primary(0).await?;
    let t = Instant::now();
    fed.kill(primary);
    let killed = t.elapsed();
    let first = match &source {
        Source::Clients(clients) => {
            commit_from_clients(clients, 3_000_000, 1, 1, args.size, 0, false).await
        }
        // Through a backup of the view that follows.
        Source::Voters(_) => {
            commit_from_voter(&fed, (primary + 2) % voters_n, 1, 1, args.size, 0).await?
        }
    };
    first.check("after the kill")?;
    println!(
        "recovery: first commit completed {:.0} ms after the primary (replica {primary}) was SIGKILLed",
        (killed + first.elapsed).as_secs_f64() * 1e3
    );
    if let Source::Clients(clients) = source {
        for client in clients {
            let _ = client.shutdown().await;
        }
    }
    drop(fed);
    Ok(())
}

/// A client node: a non-voting member of the federation with up to `slots`
/// commits outstanding, bootstrapped from the voters' addresses.
async fn start_client(
    genesis: &fed_mesh::genesis::Genesis,
    addrs: &[String],
    slots: usize,
) -> Result<FederatedMesh, Failure> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut seed[..])
        .map_err(|e| Failure::runtime(format!("no OS randomness: {e}")))?;
    let identity = Arc::new(Identity::from_seeds(&seed, None));
    let mut config = MeshConfig::new(identity, genesis.federation, Arc::new(Open))
        .with_genesis(genesis)
        .map_err(|e| Failure::runtime(e.to_string()))?;
    config.capabilities.limits.requests_per_second = 1_000_000;
    config.capabilities.limits.max_in_flight = 100_000;
    config.bootstrap = addrs
        .iter()
        .map(|a| a.parse::<PeerAddress>())
        .collect::<Result<_, _>>()
        .map_err(|e| Failure::runtime(e.to_string()))?;
    if let Some(c) = config.consensus.as_mut() {
        c.client_slots = u16::try_from(slots.max(1))
            .unwrap_or(u16::MAX)
            .min(fed_mesh::core::commit::MAX_CLIENT_SLOTS);
    }
    FederatedMesh::builder(config)
        .start()
        .await
        .map_err(|e| Failure::runtime(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The times are fields 14 and 15, counted after the command name's
    /// last parenthesis (a name may hold spaces and parentheses).
    #[test]
    fn process_times_are_read_past_an_odd_command_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat");
        let mut line = String::from("4242 (a) b (c d) S 1 4242 4242 0 -1 4194560 100 0 0 0 ");
        line.push_str("731 269 0 0 20 0 3 0 100 0 0\n");
        std::fs::write(&path, line).unwrap();
        assert_eq!(process_ticks(path.to_str().unwrap()), Some(731 + 269));
        std::fs::write(&path, "4242 (no times) S 1\n").unwrap();
        assert_eq!(process_ticks(path.to_str().unwrap()), None);
        std::fs::write(&path, "no parenthesis at all\n").unwrap();
        assert_eq!(process_ticks(path.to_str().unwrap()), None);
    }
}
