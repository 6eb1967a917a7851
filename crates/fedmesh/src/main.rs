//! `fedmesh`: the exo-federation node command.
//!
//! Exit codes: 0 success; 1 a runtime failure (the node refused, a write
//! failed); 2 bad usage (clap); 3 a bad file, field or flag; 4 the node is
//! unreachable; 5 a proof or log that does not verify.

// The command is the IO layer: clocks, sleeps and blocking calls are its job
// (the workspace's `disallowed_methods` guard the sans-IO crates).
#![allow(clippy::disallowed_methods)]

mod bench;
mod control;
mod demo;
mod keys;
mod local;
mod node;
mod status;
mod web;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// jemalloc instead of the system allocator: the node allocates per message,
/// and glibc's malloc took a sixth of a voter's CPU under load; jemalloc
/// gave 7 to 17% more commits per second (docs/BENCHMARKS.md,
/// docs/DECISIONS.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A failure with its exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self {
            code: 3,
            message: message.into(),
        }
    }
    pub(crate) fn unreachable(message: impl Into<String>) -> Self {
        Self {
            code: 4,
            message: message.into(),
        }
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: 5,
            message: message.into(),
        }
    }
}

#[derive(Parser)]
#[command(
    name = "fedmesh",
    version,
    about = "exo-federation node: keys, genesis, node, control, proofs"
)]
struct Cli {
    /// Log as JSON lines instead of text (the filter is RUST_LOG).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes a new identity key (mode 0600) and its public half (`<out>.pub`).
    Keygen {
        /// The secret key file to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Add an ML-DSA-65 key (post-quantum signatures).
        #[arg(long)]
        post_quantum: bool,
        /// Print the public identity as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Writes the genesis file of a new federation.
    Init {
        /// The genesis file to create.
        #[arg(long)]
        out: PathBuf,
        /// A voting member: a `.pub` file or a public identity in hex, with
        /// `@addr1,addr2` listen addresses optionally. Repeat, in replica order.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// The federation id (64 hex digits); random if absent.
        #[arg(long)]
        federation: Option<String>,
    },
    /// Runs a node.
    Node(node::NodeArgs),
    /// Shows a running node's state.
    Status {
        #[command(flatten)]
        target: Target,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Commits an opaque update through the federation's consensus.
    Commit {
        #[command(flatten)]
        target: Target,
        /// The update's kind.
        #[arg(long, default_value = "opaque")]
        kind: String,
        /// The update's bytes, as text.
        data: String,
        /// Also write the receipt (for `verify-proof`) to this file.
        #[arg(long)]
        receipt: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Changes the voting membership through the consensus. It takes
    /// effect at the next checkpoint, where a new configuration epoch begins;
    /// only a voting member may change it.
    Voters {
        #[command(subcommand)]
        command: VotersCmd,
    },
    /// Writes to the shared map.
    Put {
        #[command(flatten)]
        target: Target,
        key: String,
        value: String,
    },
    /// Reads the shared map.
    Get {
        #[command(flatten)]
        target: Target,
        key: String,
    },
    /// Runs a federated query: the embedding as comma-separated numbers.
    Query {
        #[command(flatten)]
        target: Target,
        /// The query embedding, e.g. `0.1,0.7,0.2`.
        embedding: String,
        /// Results wanted.
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// `local`, `direct` or `global`.
        #[arg(long, default_value = "global")]
        scope: String,
        /// Route through this many onion relays per path (1 to 5).
        #[arg(long)]
        onion_relays: Option<u8>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Stores patterns in a running node's substrate.
    Patterns {
        #[command(subcommand)]
        command: PatternsCmd,
    },
    /// Stops a running node.
    Shutdown {
        #[command(flatten)]
        target: Target,
    },
    /// The node's audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// `fedmesh audit verify` (the earlier spelling).
    #[command(hide = true)]
    AuditVerify(AuditArgs),
    /// Runs a local federation of node processes and shows what it does:
    /// joins, patterns, an onion-routed query, the shared map, commits with
    /// proofs checked offline, the primary killed, its restart. Exits non-zero
    /// if a step fails; removes its processes and directories, also on Ctrl-C.
    Demo(demo::DemoArgs),
    /// Measures commits per second and latency of a local federation of
    /// voting processes (docs/BENCHMARKS.md).
    BenchCommit(bench::BenchArgs),
    /// Verifies a commit receipt offline against a genesis.
    VerifyProof {
        /// The receipt file (`fedmesh commit --receipt`).
        receipt: PathBuf,
        /// The federation's genesis file.
        #[arg(long)]
        genesis: PathBuf,
    },
}

#[derive(Subcommand)]
enum VotersCmd {
    /// Makes a member a voting member: a `.pub` file or a public identity in
    /// hex, with `@addr1,addr2` the addresses the voters will dial.
    Add {
        #[command(flatten)]
        target: Target,
        member: String,
        /// Also write the receipt (for `verify-proof`) to this file.
        #[arg(long)]
        receipt: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Removes a voting member (it stays a member), by node id.
    Remove {
        #[command(flatten)]
        target: Target,
        /// The member's node id (64 hex digits).
        node: String,
        /// Also write the receipt (for `verify-proof`) to this file.
        #[arg(long)]
        receipt: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verifies a node's audit log offline (the node must be stopped): every
    /// entry follows the one before, and the head, signed by the node, names
    /// the last. Exit code 5 if it does not verify.
    Verify(AuditArgs),
}

#[derive(clap::Args)]
struct AuditArgs {
    /// The node's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// The node's key file (the log's head is signed by it).
    #[arg(long)]
    key: PathBuf,
}

#[derive(Subcommand)]
enum PatternsCmd {
    /// Adds one pattern: its id and its embedding (comma-separated numbers).
    Add {
        #[command(flatten)]
        target: Target,
        /// The pattern's id (a number).
        id: u64,
        /// The embedding, e.g. `0.1,0.7,0.2`.
        embedding: String,
    },
}

/// Parses `0.1,0.7,0.2`.
fn parse_embedding(s: &str) -> Result<Vec<f32>, Failure> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .map_err(|e| Failure::config(format!("embedding value `{v}`: {e}")))
        })
        .collect()
}

/// Which running node to talk to.
#[derive(clap::Args)]
struct Target {
    /// The node's control socket.
    #[arg(long)]
    control: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("fedmesh: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    runtime_with(None)
}

/// A runtime with `workers` worker threads (default: tokio's, one per core
/// unless `TOKIO_WORKER_THREADS` says otherwise).
fn runtime_with(workers: Option<u16>) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(usize::from(n));
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("tokio runtime: {e}")))
}

fn print(json: bool, value: &serde_json::Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

/// Sends a commit `request` to the node, writes the receipt to `receipt` if
/// asked, and reports where it committed.
fn committed(
    target: &Target,
    request: &control::ControlRequest,
    receipt: Option<&std::path::Path>,
    json: bool,
) -> Result<(), Failure> {
    let v = runtime()?.block_on(control::call(&target.control, request))?;
    if let Some(path) = receipt {
        let bytes = hex::decode(v["receipt"].as_str().unwrap_or_default())
            .map_err(|e| Failure::runtime(format!("the node's receipt: {e}")))?;
        std::fs::write(path, bytes)
            .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?;
    }
    print(json, &v, || {
        format!(
            "committed at ledger index {} (epoch {}, sequence {}, view {})",
            v["index"], v["epoch"], v["seq"], v["view"]
        )
    });
    Ok(())
}

fn run(command: Cmd) -> Result<(), Failure> {
    match command {
        Cmd::Keygen {
            out,
            post_quantum,
            json,
        } => {
            let identity = keys::generate(&out, post_quantum)?;
            let public = keys::public_file(identity.public());
            let peer_id = fed_mesh::core::peer_id_of_identity(identity.public())
                .map(|p| p.to_string())
                .unwrap_or_default();
            let value = serde_json::json!({
                "node_id": public.node_id,
                "peer_id": peer_id,
                "identity": public.identity,
                "key": out.display().to_string(),
                "public": keys::public_path(&out).display().to_string(),
            });
            print(json, &value, || {
                format!(
                    "wrote {} (secret, mode 0600) and {}\nnode id {}\npeer id {peer_id}",
                    out.display(),
                    keys::public_path(&out).display(),
                    public.node_id
                )
            });
            Ok(())
        }
        Cmd::Init {
            out,
            members,
            federation,
        } => node::init(&out, &members, federation.as_deref()),
        Cmd::Node(args) => runtime_with(args.worker_threads)?.block_on(node::run(args)),
        Cmd::Status { target, json } => {
            let v = runtime()?.block_on(control::call(
                &target.control,
                &control::ControlRequest::Status,
            ))?;
            print(json, &v, || {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            });
            Ok(())
        }
        Cmd::Commit {
            target,
            kind,
            data,
            receipt,
            json,
        } => {
            let request = control::ControlRequest::Commit {
                kind,
                data: hex::encode(data.as_bytes()),
            };
            committed(&target, &request, receipt.as_deref(), json)
        }
        Cmd::Voters {
            command:
                VotersCmd::Add {
                    target,
                    member,
                    receipt,
                    json,
                },
        } => {
            let (identity, addresses) = node::member_spec(&member)?;
            let request = control::ControlRequest::AddVoter {
                identity: hex::encode(identity.as_bytes()),
                addresses: addresses.iter().map(ToString::to_string).collect(),
            };
            committed(&target, &request, receipt.as_deref(), json)
        }
        Cmd::Voters {
            command:
                VotersCmd::Remove {
                    target,
                    node,
                    receipt,
                    json,
                },
        } => {
            let request = control::ControlRequest::RemoveVoter { node };
            committed(&target, &request, receipt.as_deref(), json)
        }
        Cmd::Put { target, key, value } => {
            runtime()?.block_on(control::call(
                &target.control,
                &control::ControlRequest::Put { key, value },
            ))?;
            Ok(())
        }
        Cmd::Query {
            target,
            embedding,
            top_k,
            scope,
            onion_relays,
            json,
        } => {
            let request = control::ControlRequest::Query {
                embedding: parse_embedding(&embedding)?,
                top_k,
                scope,
                onion_relays,
            };
            let v = runtime()?.block_on(control::call(&target.control, &request))?;
            print(json, &v, || {
                let mut out = String::new();
                for r in v["results"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "{:.4}  {}  from {}\n",
                        r["score"].as_f64().unwrap_or(f64::NAN),
                        r["pattern"].as_str().unwrap_or_default(),
                        r["provenance"][0].as_str().unwrap_or_default(),
                    ));
                }
                for p in v["peers"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "peer {}: {}\n",
                        p["node"].as_str().unwrap_or_default(),
                        p["status"].as_str().unwrap_or_default()
                    ));
                }
                out.trim_end().to_string()
            });
            Ok(())
        }
        Cmd::Patterns {
            command:
                PatternsCmd::Add {
                    target,
                    id,
                    embedding,
                },
        } => {
            let request = control::ControlRequest::AddPattern {
                id,
                embedding: parse_embedding(&embedding)?,
            };
            runtime()?.block_on(control::call(&target.control, &request))?;
            Ok(())
        }
        Cmd::Get { target, key } => {
            let v = runtime()?.block_on(control::call(
                &target.control,
                &control::ControlRequest::Get { key },
            ))?;
            match v["value"].as_str() {
                Some(s) => println!("{s}"),
                None => return Err(Failure::runtime("no such key")),
            }
            Ok(())
        }
        Cmd::Shutdown { target } => {
            runtime()?.block_on(control::call(
                &target.control,
                &control::ControlRequest::Shutdown,
            ))?;
            Ok(())
        }
        Cmd::Demo(args) => runtime()?.block_on(demo::run(args)),
        Cmd::BenchCommit(args) => runtime()?.block_on(bench::run(args)),
        Cmd::Audit {
            command: AuditCmd::Verify(a),
        }
        | Cmd::AuditVerify(a) => node::audit_verify(&a.data_dir, &a.key),
        Cmd::VerifyProof { receipt, genesis } => node::verify_proof(&receipt, &genesis),
    }
}
