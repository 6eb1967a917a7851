//! `fedmesh demo`: a local federation of real node processes, step by step.

use std::time::{Duration, Instant};

use fed_mesh::CommitReceipt;

use crate::{Failure, control::ControlRequest, local::LocalFederation};

#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Voting members (at least 4 to survive the primary's crash).
    #[arg(long, default_value_t = 4)]
    voters: usize,
    /// Members that do not vote.
    #[arg(long, default_value_t = 1)]
    others: usize,
    /// After the steps, keep the federation running (each node's status page
    /// and metrics are printed) until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

const DIM: usize = 16;
const PATTERNS_PER_NODE: u64 = 10;

/// A deterministic embedding: pattern `id`'s (xorshift from the id).
fn embedding(id: u64) -> Vec<f32> {
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

struct Step {
    name: &'static str,
    result: Result<String, String>,
    time: Duration,
}

/// Polls `check` until it yields, or fails after `secs`.
async fn until<F, Fut, T>(secs: u64, what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn msg(f: Failure) -> String {
    f.message
}

async fn commit(fed: &LocalFederation, i: usize, text: &str) -> Result<CommitReceipt, String> {
    let v = fed
        .call(
            i,
            &ControlRequest::Commit {
                kind: "demo".into(),
                data: hex::encode(text),
            },
        )
        .await
        .map_err(msg)?;
    let bytes =
        hex::decode(v["receipt"].as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
    CommitReceipt::from_bytes(&bytes).map_err(|e| e.to_string())
}

async fn ledger(fed: &LocalFederation, i: usize) -> Option<(u64, String)> {
    let s = fed.status(i).await.ok()?;
    Some((
        s["consensus"]["ledger_count"].as_u64()?,
        s["consensus"]["ledger_head"].as_str()?.to_string(),
    ))
}
pub(crate) async fn run(args: DemoArgs) -> Result<(), Failure> {
    if args.voters < 4 {
        return Err(Failure::config(
            "--voters must be at least 4: the demo kills the primary",
        ));
    }
    // Every node serves its status page and metrics on a loopback port.
    let mut fed = LocalFederation::create(args.voters, args.others, &["--metrics", "127.0.0.1:0"])?;
    println!(
        "exo-federation demo: {} voting members and {} other, processes on 127.0.0.1, data in {}",
        args.voters,
        args.others,
        fed.dir.path().display()
    );
    let steps = tokio::select! {
        steps = steps(&mut fed) => steps,
        _ = tokio::signal::ctrl_c() => {
            drop(fed);
            return Err(Failure::runtime("interrupted; the nodes were stopped and their directories removed"));
        }
    };
    let pages = status_pages(&fed).await;
    if !pages.is_empty() {
        println!("\nstatus pages (Prometheus metrics at /metrics):");
        for (i, url) in &pages {
            println!("  node {i}: {url}");
        }
    }
    if args.keep {
        println!("\nthe federation keeps running; Ctrl-C stops it and removes its directories");
        let _ = tokio::signal::ctrl_c().await;
    }
    drop(fed);
    println!("\n{:<62} {:<7} {:>8}", "step", "result", "time");
    let mut failed = false;
    for s in &steps {
        let (result, detail) = match &s.result {
            Ok(d) => ("ok", d.as_str()),
            Err(e) => {
                failed = true;
                ("FAILED", e.as_str())
            }
        };
        println!(
            "{:<62} {:<7} {:>6.2} s  {detail}",
            s.name,
            result,
            s.time.as_secs_f64()
        );
    }
    if failed {
        Err(Failure::runtime("a step failed"))
    } else {
        println!("\nall steps passed; the nodes were stopped and their directories removed");
        Ok(())
    }
}

/// Each running node's status page address.
async fn status_pages(fed: &LocalFederation) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for i in 0..fed.nodes.len() {
        if let Ok(s) = fed.status(i).await
            && let Some(addr) = s["http"].as_str()
        {
            out.push((i, format!("http://{addr}/")));
        }
    }
    out
}

/// Runs the steps in order, stopping at the first failure.
async fn steps(fed: &mut LocalFederation) -> Vec<Step> {
    let n = fed.nodes.len();
    let total = 8;
    let mut out: Vec<Step> = Vec::new();
    macro_rules! step {
        ($name:expr, $body:expr) => {{
            let number = out.len() + 1;
            print!("[{number}/{total}] {} ... ", $name);
            let _ = std::io::Write::flush(&mut std::io::stdout());
            let started = Instant::now();
            let result: Result<String, String> = $body;
            let time = started.elapsed();
            match &result {
                Ok(d) => println!("ok ({:.2} s) {d}", time.as_secs_f64()),
                Err(e) => println!("FAILED ({:.2} s): {e}", time.as_secs_f64()),
            }
            let ok = result.is_ok();
            out.push(Step {
                name: $name,
                result,
                time,
            });
            if !ok {
                return out;
            }
        }};
    }

    step!("start the node processes", {
        let mut r = Ok(format!("{n} nodes"));
        for i in 0..n {
            if let Err(e) = fed.start(i).await {
                r = Err(e.message);
                break;
            }
        }
        r
    });
    step!("members join (handshakes both ways, tokens)", {
        let mut r = Ok(format!("each node holds sessions with {}", n - 1));
        for i in 0..n {
            let fed = &*fed;
            if let Err(e) = until(30, "every member connected", || async move {
                let s = fed.status(i).await.ok()?;
                (s["peers"].as_u64()? as usize == n - 1).then_some(())
            })
            .await
            {
                r = Err(e);
                break;
            }
        }
        r
    });
    step!("nodes store patterns", {
        let mut r = Ok(format!("{} patterns on each node", PATTERNS_PER_NODE));
        'outer: for i in 0..n {
            for k in 0..PATTERNS_PER_NODE {
                let id = i as u64 * 100 + k;
                let req = ControlRequest::AddPattern {
                    id,
                    embedding: embedding(id),
                };
                if let Err(e) = fed.call(i, &req).await {
                    r = Err(e.message);
                    break 'outer;
                }
            }
        }
        r
    });
    let asker = n - 1;
    // Pattern 3 of node 1 (pattern ids are `node × 100 + k`).
    let target_node = 1u64;
    let target = target_node * 100 + 3;
    step!(
        "an onion-routed Global query reconciles top-k across nodes",
        {
            let fed = &*fed;
            until(30, "the query finds the nearest pattern", || async move {
                let v = fed
                    .call(
                        asker,
                        &ControlRequest::Query {
                            embedding: embedding(target),
                            top_k: 5,
                            scope: "global".into(),
                            onion_relays: Some(2),
                        },
                    )
                    .await
                    .ok()?;
                let results = v["results"].as_array()?;
                let top = results.first()?["pattern"].as_str()?.to_string();
                let want = hex::encode(fed_mesh::substrate::PatternId::from_u64(target).as_bytes());
                let sources: std::collections::BTreeSet<String> = results
                    .iter()
                    .flat_map(|r| r["provenance"].as_array().cloned().unwrap_or_default())
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect();
                (results.len() == 5 && top == want && sources.len() >= 2).then(|| {
                format!(
                    "top-5 from {} nodes; the nearest pattern is node 1's, found through 2 relays",
                    sources.len()
                )
            })
            })
            .await
        }
    );
    step!("the shared map converges", {
        match fed
            .call(
                0,
                &ControlRequest::Put {
                    key: "demo".into(),
                    value: "converged".into(),
                },
            )
            .await
        {
            Err(e) => Err(e.message),
            Ok(_) => {
                let mut r = Ok(format!("all {n} nodes read the value written on node 0"));
                for i in 0..n {
                    let fed = &*fed;
                    if let Err(e) = until(30, "the value everywhere", || async move {
                        let v = fed
                            .call(i, &ControlRequest::Get { key: "demo".into() })
                            .await
                            .ok()?;
                        (v["value"].as_str()? == "converged").then_some(())
                    })
                    .await
                    {
                        r = Err(e);
                        break;
                    }
                }
                r
            }
        }
    });
    let membership = match fed.genesis.membership() {
        Ok(m) => m,
        Err(e) => {
            out.push(Step {
                name: "the genesis",
                result: Err(e.to_string()),
                time: Duration::ZERO,
            });
            return out;
        }
    };
    step!("updates commit with proofs, verified offline", {
        let mut r = Ok(String::new());
        let mut last = None;
        for k in 0..10 {
            match commit(fed, asker, &format!("update {k}")).await {
                Err(e) => {
                    r = Err(e);
                    break;
                }
                Ok(receipt) => {
                    if let Err(e) = receipt.verify(&membership) {
                        r = Err(format!("a receipt does not verify: {e}"));
                        break;
                    }
                    last = Some(receipt);
                }
            }
        }
        r.map(|_| match last {
            Some(l) => format!(
                "10 receipts verify against the genesis; the last at ledger index {}, {} signatures",
                l.index,
                l.proof.signatures.len()
            ),
            None => String::new(),
        })
    });
    let primary = fed.primary(0).await.unwrap_or(0);
    let survivor = (primary + 1) % fed.genesis.members.len();
    let view_before = fed
        .status(survivor)
        .await
        .ok()
        .and_then(|s| s["consensus"]["view"].as_u64())
        .unwrap_or(0);
    step!(
        "the primary is killed; commits continue after a view change",
        {
            fed.kill(primary);
            let mut r = Ok(String::new());
            for k in 0..5 {
                match commit(fed, survivor, &format!("after the kill {k}")).await {
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                    Ok(receipt) => {
                        if let Err(e) = receipt.verify(&membership) {
                            r = Err(e.to_string());
                            break;
                        }
                    }
                }
            }
            let view = fed
                .status(survivor)
                .await
                .ok()
                .and_then(|s| s["consensus"]["view"].as_u64())
                .unwrap_or(0);
            r.and_then(|_| {
                if view > view_before {
                    Ok(format!(
                        "node {primary} SIGKILLed; view {view_before} -> {view}; 5 more commits"
                    ))
                } else {
                    Err(format!("no view change (view {view})"))
                }
            })
        }
    );
    step!("the killed node restarts from disk and catches up", {
        match fed.start(primary).await {
            Err(e) => Err(e.message),
            Ok(()) => {
                let mut r = Ok(String::new());
                for k in 0..3 {
                    if let Err(e) = commit(fed, survivor, &format!("after the restart {k}")).await {
                        r = Err(e);
                        break;
                    }
                }
                match r {
                    Err(e) => Err(e),
                    Ok(_) => {
                        let fed = &*fed;
                        until(
                            60,
                            "the restarted node's ledger equals the others'",
                            || async move {
                                let mine = ledger(fed, primary).await?;
                                let theirs = ledger(fed, survivor).await?;
                                (mine == theirs).then(|| {
                                    format!(
                                        "ledger of {} operations, same head as the others",
                                        mine.0
                                    )
                                })
                            },
                        )
                        .await
                    }
                }
            }
        }
    });
    out
}
