//! The node's local control interface: JSON lines over a Unix socket that only
//! the node's user can open (the socket is mode 0600 in the data directory,
//! which is 0700). One request per line, one answer per line.

use std::{path::Path, sync::Arc};

use fed_mesh::{
    FederationScope, MembershipChange, OnionRouting, QueryOptions,
    substrate::{Pattern, PatternId, PatternQuery, StateUpdate},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use crate::{Failure, status::Observer};

/// Longest request line accepted.
const MAX_LINE: usize = 1 << 20;

/// A control request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum ControlRequest {
    /// The node's state.
    Status,
    /// Commit an opaque update (`kind`, `data` in hex) through the consensus.
    Commit { kind: String, data: String },
    /// Make a member a voting member: its public identity (hex of its
    /// encoding) and listen addresses.
    AddVoter {
        identity: String,
        addresses: Vec<String>,
    },
    /// Remove a voting member, by node id (hex).
    RemoveVoter { node: String },
    /// Store a pattern in the substrate.
    AddPattern { id: u64, embedding: Vec<f32> },
    /// Run a federated query: `scope` is `local`, `direct` or `global`;
    /// `onion_relays` routes it through that many onion relays per path.
    Query {
        embedding: Vec<f32>,
        top_k: usize,
        scope: String,
        #[serde(default)]
        onion_relays: Option<u8>,
    },
    /// Write to the shared map.
    Put { key: String, value: String },
    /// Read the shared map.
    Get { key: String },
    /// Commit a load of `commits` opaque updates of `size` bytes from this
    /// node, `concurrency` at a time, each after `pause_ms` idle
    /// milliseconds (what `fedmesh bench-commit --from-voters` asks each
    /// voter; the updates are real commits, ordered by the federation).
    BenchCommit {
        commits: usize,
        concurrency: usize,
        size: usize,
        #[serde(default)]
        pause_ms: u64,
    },
    /// Stop the node.
    Shutdown,
}

/// Most commits one `bench-commit` request makes (its answer lists each
/// commit's latency).
pub(crate) const MAX_BENCH_COMMITS: usize = 1_000_000;
/// Most commits one `bench-commit` request has outstanding at once.
pub(crate) const MAX_BENCH_CONCURRENCY: usize = 4096;
/// Largest update of a `bench-commit` request (the federation's
/// `max_operation_len` may refuse smaller ones).
const MAX_BENCH_UPDATE: usize = 1 << 20;

async fn answer(
    observer: &Observer,
    request: ControlRequest,
    stop: &watch::Sender<bool>,
) -> Result<serde_json::Value, String> {
    let mesh = observer.mesh();
    let e = |e: fed_mesh::Error| e.to_string();
    Ok(match request {
        ControlRequest::Status => {
            serde_json::to_value(observer.status().await?).map_err(|e| e.to_string())?
        }
        ControlRequest::Commit { kind, data } => {
            let bytes = hex::decode(&data).map_err(|e| format!("data: {e}"))?;
            let receipt = mesh
                .byzantine_commit(StateUpdate::Opaque { kind, bytes })
                .await
                .map_err(e)?;
            receipt_json(&receipt)
        }
        ControlRequest::AddVoter {
            identity,
            addresses,
        } => {
            let bytes = hex::decode(&identity).map_err(|e| format!("identity: {e}"))?;
            let identity = fed_mesh::crypto::PublicIdentity::from_bytes(&bytes)
                .map_err(|e| format!("identity: {e}"))?;
            let addresses = addresses
                .iter()
                .map(|a| a.parse().map_err(|e| format!("address `{a}`: {e}")))
                .collect::<Result<_, _>>()?;
            let change = MembershipChange::Add {
                identity: Box::new(identity),
                addresses,
            };
            receipt_json(&mesh.commit_membership_change(change).await.map_err(e)?)
        }
        ControlRequest::RemoveVoter { node } => {
            let mut id = [0u8; 32];
            hex::decode_to_slice(node.trim(), &mut id)
                .map_err(|e| format!("node: {e} (64 hex digits expected)"))?;
            let change = MembershipChange::Remove(fed_mesh::crypto::NodeId(id));
            receipt_json(&mesh.commit_membership_change(change).await.map_err(e)?)
        }
        ControlRequest::AddPattern { id, embedding } => {
            let pattern = Pattern {
                id: PatternId::from_u64(id),
                embedding,
                metadata: Default::default(),
                timestamp_ms: now_ms(),
            };
            let stored = mesh.store_pattern(pattern).await.map_err(e)?;
            serde_json::json!({ "stored": stored })
        }
        ControlRequest::Query {
            embedding,
            top_k,
            scope,
            onion_relays,
        } => {
            let scope = match scope.as_str() {
                "local" => FederationScope::Local,
                "direct" => FederationScope::Direct,
                "global" => FederationScope::Global { max_hops: 3 },
                other => return Err(format!("scope `{other}`: local, direct or global")),
            };
            let options = QueryOptions {
                onion: onion_relays.map(|relays| OnionRouting {
                    relays,
                    ..OnionRouting::default()
                }),
                ..QueryOptions::default()
            };
            let outcome = mesh
                .federated_query(PatternQuery::new(embedding, top_k), scope, options)
                .await
                .map_err(e)?;
            let results: Vec<_> = outcome
                .results
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "pattern": hex::encode(r.pattern.as_bytes()),
                        "score": r.score,
                        "provenance": r.provenance.iter().map(|n| hex::encode(n.0)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let peers: Vec<_> = outcome
                .peers
                .iter()
                .map(|p| serde_json::json!({ "node": hex::encode(p.node.0), "status": format!("{:?}", p.status) }))
                .collect();
            serde_json::json!({ "results": results, "peers": peers, "complete": outcome.complete })
        }
        ControlRequest::Put { key, value } => {
            mesh.put(key, value).await.map_err(e)?;
            serde_json::json!({})
        }
        ControlRequest::Get { key } => {
            let v = mesh.get(key).await.map_err(e)?;
            serde_json::json!({ "value": v.map(|v| String::from_utf8_lossy(&v).into_owned()) })
        }
        ControlRequest::BenchCommit {
            commits,
            concurrency,
            size,
            pause_ms,
        } => bench_commits(mesh, commits, concurrency, size, pause_ms).await?,
        ControlRequest::Shutdown => {
            let _ = stop.send(true);
            serde_json::json!({})
        }
    })
}
/// Longest idle time before each commit of a `bench-commit` request.
const MAX_BENCH_PAUSE_MS: u64 = 60_000;
/// Most idle time a `bench-commit` request may add up to, in all (its
/// commits' pauses over its concurrency).
const MAX_BENCH_PAUSES_MS: u64 = 3_600_000;
/// Most update bytes a `bench-commit` request has outstanding at once.
const MAX_BENCH_OUTSTANDING_BYTES: usize = 256 << 20;

/// Why a `bench-commit` request of these figures would be refused, naming
/// the field: each is bounded, and so are their products.
pub(crate) fn bench_bounds(
    commits: usize,
    concurrency: usize,
    size: usize,
    pause_ms: u64,
) -> Result<(), String> {
    if commits > MAX_BENCH_COMMITS {
        return Err(format!("commits: at most {MAX_BENCH_COMMITS}"));
    }
    if !(1..=MAX_BENCH_CONCURRENCY).contains(&concurrency) {
        return Err(format!("concurrency: 1 to {MAX_BENCH_CONCURRENCY}"));
    }
    if size > MAX_BENCH_UPDATE {
        return Err(format!("size: at most {MAX_BENCH_UPDATE} bytes"));
    }
    if concurrency.saturating_mul(size) > MAX_BENCH_OUTSTANDING_BYTES {
        return Err(format!(
            "size × concurrency: at most {MAX_BENCH_OUTSTANDING_BYTES} bytes outstanding"
        ));
    }
    if pause_ms > MAX_BENCH_PAUSE_MS {
        return Err(format!("pause_ms: at most {MAX_BENCH_PAUSE_MS}"));
    }
    if (commits as u64).saturating_mul(pause_ms) / concurrency as u64 > MAX_BENCH_PAUSES_MS {
        return Err(format!(
            "pause_ms × commits / concurrency: at most {MAX_BENCH_PAUSES_MS} ms of pauses"
        ));
    }
    Ok(())
}

/// Makes the commits of a `bench-commit` request and answers with their
/// count, the time from the request's start to the last success, each
/// success's latency (microseconds, in completion order) and the failures by
/// error. Only those figures are kept while it runs (8 bytes a commit).
async fn bench_commits(
    mesh: &fed_mesh::FederatedMesh,
    commits: usize,
    concurrency: usize,
    size: usize,
    pause_ms: u64,
) -> Result<serde_json::Value, String> {
    use futures::StreamExt;
    bench_bounds(commits, concurrency, size, pause_ms)?;
    let started = std::time::Instant::now();
    let mut latencies_us = Vec::with_capacity(commits);
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    let mut last = std::time::Duration::ZERO;
    let mut results = futures::stream::iter(0..commits)
        .map(|i| async move {
            if pause_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
            }
            let update = crate::bench::update(i, size);
            let t = std::time::Instant::now();
            let r = mesh.byzantine_commit(update).await.map(|_| t.elapsed());
            (r, started.elapsed())
        })
        .buffer_unordered(concurrency);
    while let Some((r, at)) = results.next().await {
        match r {
            Ok(latency) => {
                latencies_us.push(latency.as_micros() as u64);
                last = last.max(at);
            }
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    Ok(serde_json::json!({
        "completed": latencies_us.len(),
        "elapsed_us": last.as_micros() as u64,
        "latencies_us": latencies_us,
        "failed": errors,
    }))
}

/// A commit's answer: where it committed, its proof's digest and epoch, and
/// the receipt.
fn receipt_json(receipt: &fed_mesh::CommitReceipt) -> serde_json::Value {
    serde_json::json!({
        "index": receipt.index,
        "seq": receipt.proof.seq,
        "view": receipt.proof.view,
        "epoch": receipt.epochs.len(),
        "digest": hex::encode(receipt.proof.digest),
        "receipt": hex::encode(receipt.to_bytes()),
    })
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Binds the control socket at `path` (mode 0600), replacing a stale one.
pub(crate) async fn bind(path: &Path) -> Result<UnixListener, Failure> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(Failure::config(format!(
                "{}: another node is running on this control socket",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        Failure::config(format!(
            "{}: cannot bind the control socket: {e}",
            path.display()
        ))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?;
    }
    Ok(listener)
}

/// Serves the control socket until `stop` is set.
pub(crate) async fn serve(
    listener: UnixListener,
    observer: Arc<Observer>,
    stop: watch::Sender<bool>,
) {
    let mut stopped = stop.subscribe();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let observer = observer.clone();
                let stop = stop.clone();
                tokio::spawn(async move { connection(stream, observer, stop).await });
            }
        }
    }
}

async fn connection(stream: UnixStream, observer: Arc<Observer>, stop: watch::Sender<bool>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        let reply = if line.len() > MAX_LINE {
            serde_json::json!({ "ok": false, "error": format!("request longer than {MAX_LINE} bytes") })
        } else {
            match serde_json::from_str::<ControlRequest>(&line) {
                Err(e) => serde_json::json!({ "ok": false, "error": format!("bad request: {e}") }),
                Ok(request) => match answer(&observer, request, &stop).await {
                    Ok(v) => serde_json::json!({ "ok": true, "result": v }),
                    Err(e) => serde_json::json!({ "ok": false, "error": e }),
                },
            }
        };
        let mut out = reply.to_string();
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() || line.len() > MAX_LINE {
            return;
        }
    }
}

/// Sends one request to the node at `socket` and returns its result.
pub(crate) async fn call(
    socket: &Path,
    request: &ControlRequest,
) -> Result<serde_json::Value, Failure> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        Failure::unreachable(format!("{}: cannot reach the node: {e}", socket.display()))
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request).map_err(|e| Failure::runtime(e.to_string()))?;
    line.push('\n');
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| Failure::unreachable(format!("{}: {e}", socket.display())))?;
    let mut reply = String::new();
    BufReader::new(read)
        .take(64 << 20)
        .read_line(&mut reply)
        .await
        .map_err(|e| Failure::unreachable(format!("{}: {e}", socket.display())))?;
    let value: serde_json::Value = serde_json::from_str(&reply).map_err(|e| {
        Failure::unreachable(format!(
            "{}: the node's answer does not parse: {e}",
            socket.display()
        ))
    })?;
    if value["ok"] == serde_json::Value::Bool(true) {
        Ok(value["result"].clone())
    } else {
        Err(Failure::runtime(format!(
            "the node refused: {}",
            value["error"].as_str().unwrap_or("no reason given")
        )))
    }
}
