//! `fedmesh bench-commit`: committed operations per second and latency of a
//! federation of voting members, each a `fedmesh node` process on 127.0.0.1,
//! driven by a non-voting node in this process. Also the time to the first
//! commit after the primary's process is SIGKILLed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use fed_mesh::{
    FederatedMesh, MeshConfig, PeerAddress, crypto::Identity, handshake::Open,
    substrate::StateUpdate,
};
use futures::StreamExt;

use crate::{Failure, local::LocalFederation};

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
    fn report(&self, later: &Self, per: usize, what: &str) -> String {
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
            "cpu ({what}): µs per commit in each voter {}, in this process (client nodes and the bench) {client:.0}; machine {:.0}% busy",
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

fn update(i: usize, size: usize) -> StateUpdate {
    let mut bytes = vec![0u8; size];
    let tag = (i as u64).to_be_bytes();
    let n = tag.len().min(size);
    bytes[..n].copy_from_slice(&tag[..n]);
    StateUpdate::Opaque {
        kind: String::new(),
        bytes,
    }
}
pub(crate) async fn run(args: BenchArgs) -> Result<(), Failure> {
    let mut fed = LocalFederation::create(
        args.voters,
        0,
        &[
            "--requests-per-second",
            "1000000",
            "--max-in-flight",
            "100000",
        ],
    )?;
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..args.voters {
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

    let clients_n = args.clients.max(1);
    let per_client = args.concurrency.max(1).div_ceil(clients_n);
    let mut clients = Vec::with_capacity(clients_n);
    for _ in 0..clients_n {
        clients.push(start_client(&genesis, &addrs, per_client).await?);
    }
    for client in &clients {
        for _ in 0..400 {
            if client.peer_count().await.unwrap_or(0) == args.voters {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Let every voter's sessions settle (each joins each).
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Commit `i` goes through client `i mod clients` (the warm-up, the
    // sequential ones and the one after the kill through the first).
    let commit = |i: usize| {
        let client = clients[i % clients_n].clone();
        let u = update(i, args.size);
        async move {
            let t = Instant::now();
            client.byzantine_commit(u).await.map(|_| t.elapsed())
        }
    };
    // Warm-up.
    for i in 0..50 {
        commit(i * clients_n)
            .await
            .map_err(|e| Failure::runtime(format!("warm-up: {e}")))?;
    }
    // CPU is sampled around each run (a figure only, on Linux).
    let pids: Vec<u32> = (0..args.voters).filter_map(|i| fed.pid(i)).collect();
    let cpu_before = CpuSample::take(&pids);
    // Unloaded latency.
    let mut lat = Vec::with_capacity(args.sequential);
    for i in 0..args.sequential {
        if args.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        }
        lat.push(
            commit((1_000_000 + i) * clients_n)
                .await
                .map_err(|e| Failure::runtime(e.to_string()))?,
        );
    }
    let cpu_after = CpuSample::take(&pids);
    lat.sort();
    println!(
        "unloaded ({} sequential commits, {} ms apart, {} B): p50 {:.2} ms, p99 {:.2} ms",
        args.sequential,
        args.pause_ms,
        args.size,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    if let (Some(a), Some(b)) = (&cpu_before, &cpu_after) {
        println!("{}", a.report(b, args.sequential, "unloaded"));
    }
    // Throughput.
    // Voter 0's last executed sequence number (a figure only: none if its
    // status cannot be read).
    let executed = async || fed.status(0).await.ok()?["consensus"]["last_executed"].as_u64();
    let first_seq = executed().await;
    let cpu_before = CpuSample::take(&pids);
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter((0..args.commits).map(|i| commit(2_000_000 + i)))
        .buffer_unordered(args.concurrency.max(1))
        .map(|r| (r, started.elapsed()))
        .collect()
        .await;
    let cpu_after = CpuSample::take(&pids);
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for (r, _) in &results {
        if let Err(e) = r {
            *errors.entry(e.to_string()).or_default() += 1;
        }
    }
    if !errors.is_empty() {
        println!("failed commits: {errors:?}");
    }
    let elapsed = results
        .iter()
        .filter(|(r, _)| r.is_ok())
        .map(|(_, at)| *at)
        .max()
        .unwrap_or_default();
    let mut lat: Vec<Duration> = results.into_iter().filter_map(|(r, _)| r.ok()).collect();
    lat.sort();
    println!(
        "throughput ({} commits, {} outstanding, {} client node(s), {} B): {:.0} ops/s over {:.2} s to the last success ({} failed); latency p50 {:.2} ms, p99 {:.2} ms",
        args.commits,
        args.concurrency,
        clients_n,
        args.size,
        lat.len() as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        args.commits - lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    if let (Some(a), Some(b)) = (&cpu_before, &cpu_after) {
        println!("{}", a.report(b, lat.len(), "throughput"));
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
    // Recovery: SIGKILL the primary, time the next commit.
    let primary = fed.primary(0).await?;
    let t = Instant::now();
    fed.kill(primary);
    let killed = t.elapsed();
    let first = commit(3_000_000 * clients_n)
        .await
        .map_err(|e| Failure::runtime(format!("after the kill: {e}")))?;
    println!(
        "recovery: first commit completed {:.0} ms after the primary (replica {primary}) was SIGKILLed",
        (killed + first).as_secs_f64() * 1e3
    );
    for client in clients {
        let _ = client.shutdown().await;
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
