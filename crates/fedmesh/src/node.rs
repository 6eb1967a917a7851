//! `fedmesh node` and the commands that read a node's files.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use fed_mesh::{
    CommitReceipt, FederatedMesh, MeshConfig, Multiaddr, PeerAddress,
    crypto::{NodeId, PublicIdentity},
    genesis::{ConsensusParameters, Genesis, GenesisMember},
    handshake::{AdmissionPolicy, Allowlist, FederationId, Open},
    store::Store,
};
use serde::Deserialize;
use tokio::sync::watch;

use crate::{Failure, control, keys, status::Observer, web};
use fed_mesh::prometheus_client::registry::Registry;

/// `fedmesh node`: every field of the config file can be given (or
/// overridden) by a flag.
#[derive(clap::Args, Debug)]
pub(crate) struct NodeArgs {
    /// The node's TOML configuration.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The identity key file.
    #[arg(long)]
    key: Option<PathBuf>,
    /// The federation's genesis file (to commit and, if listed, vote).
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// The federation id (64 hex digits), without a genesis.
    #[arg(long)]
    federation: Option<String>,
    /// Where the node keeps its state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A listen multiaddr (repeat). Default: TCP and QUIC on 127.0.0.1, OS-chosen ports.
    #[arg(long = "listen")]
    listen: Vec<String>,
    /// A member to connect to: `<multiaddr with /p2p>#<node id hex>` (repeat).
    #[arg(long = "bootstrap")]
    bootstrap: Vec<String>,
    /// The control socket. Default: `<data_dir>/control.sock`.
    #[arg(long)]
    control: Option<PathBuf>,
    /// PBFT client slots: commits this node can have ordered at once.
    #[arg(long)]
    client_slots: Option<u16>,
    /// Requests per second a member may send this node (and this node asks for).
    #[arg(long)]
    requests_per_second: Option<u32>,
    /// Requests a member may have outstanding with this node.
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// Serve Prometheus metrics (`/metrics`) and the status page (`/`,
    /// `/status`) on this address, e.g. `127.0.0.1:9464` (port 0: any).
    #[arg(long)]
    metrics: Option<String>,
    /// Who may join through this node: `open` (anyone who proves the
    /// federation id), `allowlist` (only `--allow`), or `genesis` (the
    /// genesis's members and `--allow`). Default: open.
    #[arg(long)]
    admission: Option<String>,
    /// A member to admit: its node id (64 hex digits), public identity (hex)
    /// or `.pub` file (repeat).
    #[arg(long = "allow")]
    allow: Vec<String>,
    /// Runtime worker threads. Default: one per core (`TOKIO_WORKER_THREADS`
    /// if set; this flag wins over it). Nodes sharing a machine may divide
    /// its cores (OPERATING.md).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) worker_threads: Option<u16>,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    key: Option<PathBuf>,
    genesis: Option<PathBuf>,
    federation: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    control: Option<PathBuf>,
    client_slots: Option<u16>,
    metrics: Option<String>,
    #[serde(default)]
    admission: AdmissionConfig,
    #[serde(default)]
    limits: LimitsConfig,
}

/// Who may join through this node (`[admission]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdmissionConfig {
    /// `open`, `allowlist` or `genesis`.
    policy: Option<String>,
    /// Node ids, public identities or `.pub` files.
    #[serde(default)]
    allow: Vec<String>,
}

fn is_node_id(spec: &str) -> bool {
    let spec = spec.trim();
    spec.len() == 64 && spec.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The admission policy from `policy` and `allow`.
fn admission_policy(
    policy: Option<&str>,
    allow: &[String],
    genesis: Option<&Genesis>,
) -> Result<Arc<dyn AdmissionPolicy>, Failure> {
    let mut ids = Vec::with_capacity(allow.len());
    for (i, spec) in allow.iter().enumerate() {
        let spec = spec.trim();
        let id = if is_node_id(spec) {
            let mut id = [0u8; 32];
            hex::decode_to_slice(spec, &mut id)
                .map_err(|e| Failure::config(format!("allow[{i}] `{spec}`: {e}")))?;
            NodeId(id)
        } else {
            keys::load_public(spec)
                .map_err(|f| Failure::config(format!("allow[{i}]: {}", f.message)))?
                .node_id()
        };
        ids.push(id);
    }
    match policy.unwrap_or("open") {
        "open" if ids.is_empty() => Ok(Arc::new(Open)),
        "open" => Err(Failure::config(
            "admission: `allow` is given but the policy is `open` (choose `allowlist` or `genesis`)",
        )),
        "allowlist" if ids.is_empty() => Err(Failure::config(
            "admission: policy `allowlist` with nobody in `allow`",
        )),
        "allowlist" => Ok(Arc::new(Allowlist::new(ids))),
        "genesis" => {
            let g = genesis.ok_or_else(|| {
                Failure::config("admission: policy `genesis` needs a genesis file")
            })?;
            ids.extend(g.members.iter().map(|m| m.identity.node_id()));
            Ok(Arc::new(Allowlist::new(ids)))
        }
        other => Err(Failure::config(format!(
            "admission: policy `{other}`: open, allowlist or genesis"
        ))),
    }
}

/// What this node grants members at most, and asks for (`[limits]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsConfig {
    /// Requests per second a member may send (default 100).
    requests_per_second: Option<u32>,
    /// Requests a member may have outstanding (default 64).
    max_in_flight: Option<u32>,
}

fn load_file_config(path: &Path) -> Result<FileConfig, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Failure::config(format!("{}: {e}", path.display())))
}

/// A path in the config file is relative to the file's directory.
fn relative_to(base: Option<&Path>, p: PathBuf) -> PathBuf {
    match base.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    }
}

fn federation_id(s: &str, origin: &str) -> Result<FederationId, Failure> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut id)
        .map_err(|e| Failure::config(format!("{origin}: {e} (64 hex digits expected)")))?;
    Ok(FederationId(id))
}

pub(crate) async fn run(args: NodeArgs) -> Result<(), Failure> {
    let file = match &args.config {
        Some(p) => load_file_config(p)?,
        None => FileConfig::default(),
    };
    let base = args.config.as_deref();
    let key = args
        .key
        .or_else(|| file.key.map(|p| relative_to(base, p)))
        .ok_or_else(|| Failure::config("no key: give `key` in the config or --key"))?;
    let data_dir = args
        .data_dir
        .or_else(|| file.data_dir.map(|p| relative_to(base, p)))
        .ok_or_else(|| Failure::config("no data directory: give `data_dir` or --data-dir"))?;
    let genesis_path = args
        .genesis
        .or_else(|| file.genesis.map(|p| relative_to(base, p)));
    let identity = keys::load(&key)?;
    let genesis = match &genesis_path {
        Some(p) => Some(Genesis::load(p).map_err(|e| Failure::config(e.to_string()))?),
        None => None,
    };
    // Files named in the config are relative to it; on the command line, to
    // the working directory.
    let allow = if args.allow.is_empty() {
        file.admission
            .allow
            .into_iter()
            .map(|a| match Path::new(&a).is_relative() && !is_node_id(&a) {
                true => relative_to(base, PathBuf::from(a))
                    .to_string_lossy()
                    .into_owned(),
                false => a,
            })
            .collect()
    } else {
        args.allow
    };
    let admission = admission_policy(
        args.admission
            .as_deref()
            .or(file.admission.policy.as_deref()),
        &allow,
        genesis.as_ref(),
    )?;
    let mut config = MeshConfig::new(identity, FederationId([0; 32]), admission);
    match (&genesis, args.federation.or(file.federation)) {
        (Some(g), _) => {
            config = config
                .with_genesis(g)
                .map_err(|e| Failure::config(format!("genesis: {e}")))?;
        }
        (None, Some(f)) => config.federation = federation_id(&f, "federation")?,
        (None, None) => {
            return Err(Failure::config(
                "no federation: give `genesis` or `federation`",
            ));
        }
    }
    if let (Some(c), Some(slots)) = (
        config.consensus.as_mut(),
        args.client_slots.or(file.client_slots),
    ) {
        c.client_slots = slots.clamp(1, fed_mesh::core::commit::MAX_CLIENT_SLOTS);
    }
    let listen: Vec<String> = if args.listen.is_empty() {
        file.listen
    } else {
        args.listen
    };
    if !listen.is_empty() {
        config.listen = listen
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<Multiaddr>()
                    .map_err(|e| Failure::config(format!("listen[{i}] `{a}`: {e}")))
            })
            .collect::<Result<_, _>>()?;
    }
    let bootstrap = if args.bootstrap.is_empty() {
        file.bootstrap
    } else {
        args.bootstrap
    };
    config.bootstrap = bootstrap
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<PeerAddress>()
                .map_err(|e| Failure::config(format!("bootstrap[{i}]: {e}")))
        })
        .collect::<Result<_, _>>()?;
    config.data_dir = Some(data_dir.clone());
    if let Some(r) = args.requests_per_second.or(file.limits.requests_per_second) {
        config.capabilities.limits.requests_per_second = r.max(1);
    }
    if let Some(m) = args.max_in_flight.or(file.limits.max_in_flight) {
        config.capabilities.limits.max_in_flight = m.max(1);
    }
    let web = match args.metrics.or(file.metrics) {
        Some(addr) => Some(web::bind(&addr).await?),
        None => None,
    };
    let mut registry = Registry::default();
    let mesh = FederatedMesh::builder(config)
        .metrics(&mut registry)
        .start()
        .await
        .map_err(|e| Failure::config(e.to_string()))?;
    let http = web.as_ref().and_then(|l| l.local_addr().ok());
    let observer = Observer::start(mesh.clone(), genesis, registry, http);
    let socket = args
        .control
        .or_else(|| file.control.map(|p| relative_to(base, p)))
        .unwrap_or_else(|| data_dir.join("control.sock"));
    let listener = control::bind(&socket).await?;
    let (stop, mut stopped) = watch::channel(false);
    let server = tokio::spawn(control::serve(listener, observer.clone(), stop.clone()));
    let web_server = web.map(|l| tokio::spawn(web::serve(l, observer.clone(), stop.clone())));
    tracing::info!(
        node = %hex::encode(mesh.node_id().0),
        control = %socket.display(),
        http = ?http,
        "node running"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::runtime(format!("signals: {e}")))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stopped.changed() => {}
    }
    let _ = stop.send(true);
    let _ = server.await;
    if let Some(w) = web_server {
        let _ = w.await;
    }
    let _ = mesh.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// A member given as a `.pub` file or a public identity in hex, with
/// `@addr1,addr2` its listen addresses optionally.
pub(crate) fn member_spec(spec: &str) -> Result<(PublicIdentity, Vec<Multiaddr>), Failure> {
    let (id, addrs): (&str, Vec<&str>) = match spec.split_once('@') {
        Some((id, addrs)) => (id, addrs.split(',').filter(|a| !a.is_empty()).collect()),
        None => (spec, Vec::new()),
    };
    let identity = keys::load_public(id)?;
    let addresses = addrs
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .map_err(|e| Failure::config(format!("address `{a}`: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok((identity, addresses))
}

/// `fedmesh init`.
pub(crate) fn init(
    out: &Path,
    members: &[String],
    federation: Option<&str>,
) -> Result<(), Failure> {
    if out.exists() {
        return Err(Failure::config(format!(
            "{}: exists; init never overwrites",
            out.display()
        )));
    }
    let federation = match federation {
        Some(f) => federation_id(f, "--federation")?,
        None => {
            let mut id = [0u8; 32];
            getrandom::fill(&mut id)
                .map_err(|e| Failure::runtime(format!("no OS randomness: {e}")))?;
            FederationId(id)
        }
    };
    let mut list = Vec::with_capacity(members.len());
    for (i, spec) in members.iter().enumerate() {
        let (identity, addresses) =
            member_spec(spec).map_err(|e| Failure::config(format!("member {i}: {}", e.message)))?;
        list.push(GenesisMember {
            identity,
            addresses,
        });
    }
    let created_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let genesis = Genesis {
        federation,
        created_ms,
        consensus: ConsensusParameters::default(),
        members: list,
    };
    let text = genesis.to_toml();
    // Checked as every member will check it.
    let checked = Genesis::parse(&text, &out.display().to_string())
        .map_err(|e| Failure::config(e.to_string()))?;
    checked
        .membership()
        .map_err(|e| Failure::config(format!("members: {e}")))?;
    std::fs::write(out, text).map_err(|e| Failure::runtime(format!("{}: {e}", out.display())))?;
    println!(
        "wrote {} (federation {}, genesis hash {})",
        out.display(),
        hex::encode(federation.0),
        hex::encode(checked.hash())
    );
    Ok(())
}

/// `fedmesh audit verify`.
pub(crate) fn audit_verify(data_dir: &Path, key: &Path) -> Result<(), Failure> {
    let identity = keys::load(key)?;
    let path = data_dir.join("node.redb");
    // Opening creates a store where there is none: a mistyped directory
    // would "verify" an empty log.
    if !path.exists() {
        return Err(Failure::config(format!(
            "{}: no store here (is --data-dir the node's data directory?)",
            path.display()
        )));
    }
    let store =
        Store::open(&path, &identity.node_id()).map_err(|e| Failure::invalid(e.to_string()))?;
    match store.audit().verify(identity.public()) {
        Err(e) => Err(Failure::invalid(e.to_string())),
        Ok(Err(e)) => Err(Failure::invalid(format!(
            "{}: the audit log does not verify: {e}",
            store.path().display()
        ))),
        Ok(Ok(entries)) => {
            println!("the audit log verifies: {entries} entries");
            Ok(())
        }
    }
}

/// `fedmesh verify-proof`.
pub(crate) fn verify_proof(receipt: &Path, genesis: &Path) -> Result<(), Failure> {
    let genesis = Genesis::load(genesis).map_err(|e| Failure::config(e.to_string()))?;
    let membership = genesis
        .membership()
        .map_err(|e| Failure::config(format!("genesis members: {e}")))?;
    let meta = std::fs::metadata(receipt)
        .map_err(|e| Failure::config(format!("{}: {e}", receipt.display())))?;
    if meta.len() > fed_mesh::core::commit::MAX_RECEIPT_LEN as u64 {
        return Err(Failure::invalid(format!(
            "{}: too large for a receipt",
            receipt.display()
        )));
    }
    let bytes = std::fs::read(receipt)
        .map_err(|e| Failure::config(format!("{}: {e}", receipt.display())))?;
    let r = CommitReceipt::from_bytes(&bytes)
        .map_err(|e| Failure::invalid(format!("{}: {e}", receipt.display())))?;
    r.verify(&membership).map_err(|e| {
        Failure::invalid(format!(
            "{}: does not verify against this genesis: {e}",
            receipt.display()
        ))
    })?;
    println!(
        "valid: ledger index {}, sequence {}, view {}, {} signatures",
        r.index,
        r.proof.seq,
        r.proof.view,
        r.proof.signatures.len()
    );
    Ok(())
}
