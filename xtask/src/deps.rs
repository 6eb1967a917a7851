//! The crate-stack check: computed from `cargo metadata`, it fails when a crate
//! depends on one at its own level or above (DESIGN.md section 2), or when a
//! sans-IO crate pulls in an async runtime or networking stack.

use std::{collections::BTreeMap, path::Path, process::Command};

use serde_json::Value;

/// The `fed-*` crates each protocol-level crate may depend on. Crates not listed
/// here (the CLI, integration tests) sit above `fed-mesh` and may use any of them.
const ALLOWED: &[(&str, &[&str])] = &[
    ("fed-crypto", &[]),
    ("fed-crdt", &[]),
    ("fed-handshake", &["fed-crypto"]),
    ("fed-onion", &["fed-crypto"]),
    ("fed-pbft", &["fed-crypto"]),
    (
        "fed-mesh",
        &[
            "fed-crypto",
            "fed-crdt",
            "fed-handshake",
            "fed-onion",
            "fed-pbft",
        ],
    ),
    // The command sees the protocol crates through the facade only.
    ("fedmesh", &["fed-mesh"]),
];

/// External crates that only `fed-mesh` and crates above it may use: the protocol
/// crates are sans-IO.
const IO_CRATES: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "mio",
    "libp2p",
    "quinn",
    "hyper",
];

/// One dependency edge of a workspace crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edge {
    pub(crate) from: String,
    pub(crate) to: String,
    /// `normal`, `dev` or `build`.
    pub(crate) kind: String,
}

/// `cargo metadata --format-version 1 --locked` with `extra` arguments, run in
/// `root`, parsed; errors name the `step`.
pub(crate) fn cargo_metadata(root: &Path, step: &str, extra: &[&str]) -> Result<Value, String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(extra)
        .current_dir(root)
        .output()
        .map_err(|e| format!("[{step}] could not run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "[{step}] cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("[{step}] bad cargo metadata: {e}"))
}

/// Runs `cargo metadata` in `root` and checks every edge.
pub(crate) fn check_workspace(root: &Path) -> Result<(), String> {
    eprintln!("\n==> [deps] checking the crate stack from cargo metadata");
    let meta = cargo_metadata(root, "deps", &["--no-deps"])?;
    let edges = edges_from_metadata(&meta)?;
    let violations = violations(&edges);
    if violations.is_empty() {
        eprintln!("<== [deps] ok: {} edges checked", edges.len());
        Ok(())
    } else {
        Err(format!(
            "[deps] the crate stack is violated:\n  {}",
            violations.join("\n  ")
        ))
    }
}

fn edges_from_metadata(meta: &Value) -> Result<Vec<Edge>, String> {
    let packages = meta["packages"]
        .as_array()
        .ok_or("[deps] metadata has no packages")?;
    let mut edges = Vec::new();
    for p in packages {
        let from = p["name"].as_str().unwrap_or_default().to_string();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            edges.push(Edge {
                from: from.clone(),
                to: d["name"].as_str().unwrap_or_default().to_string(),
                kind: d["kind"].as_str().unwrap_or("normal").to_string(),
            });
        }
    }
    Ok(edges)
}

/// Every rule broken by `edges`, as human-readable lines.
pub(crate) fn violations(edges: &[Edge]) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut out = Vec::new();
    for e in edges {
        if e.from == "xtask" {
            continue;
        }
        if let Some(ok) = allowed.get(e.from.as_str()) {
            if e.to.starts_with("fed-") && !ok.contains(&e.to.as_str()) {
                out.push(format!(
                    "{} -> {} ({}): {} may depend only on [{}]",
                    e.from,
                    e.to,
                    e.kind,
                    e.from,
                    ok.join(", ")
                ));
            }
            let sans_io = e.from != "fed-mesh" && e.from != "fedmesh";
            let io = IO_CRATES
                .iter()
                .any(|c| e.to == *c || e.to.starts_with(&format!("{c}-")));
            if sans_io && io && e.kind != "dev" {
                out.push(format!(
                    "{} -> {} ({}): {} is sans-IO; IO crates belong in fed-mesh",
                    e.from, e.to, e.kind, e.from
                ));
            }
        }
        if e.to == "xtask" {
            out.push(format!("{} -> xtask: nothing may depend on xtask", e.from));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: &str, to: &str) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            kind: "normal".into(),
        }
    }

    #[test]
    fn the_intended_stack_passes() {
        let edges = [
            edge("fed-handshake", "fed-crypto"),
            edge("fed-onion", "fed-crypto"),
            edge("fed-pbft", "fed-crypto"),
            edge("fed-mesh", "fed-pbft"),
            edge("fed-mesh", "fed-crdt"),
            edge("fed-mesh", "tokio"),
            edge("fed-mesh", "libp2p"),
            edge("fedmesh-cli", "fed-mesh"),
            edge("fed-crypto", "blake3"),
        ];
        assert_eq!(violations(&edges), Vec::<String>::new());
    }

    #[test]
    fn upward_and_sideways_edges_fail() {
        for (from, to) in [
            ("fed-crypto", "fed-handshake"),
            ("fed-crypto", "fed-crdt"),
            ("fed-crdt", "fed-crypto"),
            ("fed-onion", "fed-handshake"),
            ("fed-pbft", "fed-mesh"),
            ("fed-handshake", "fed-crdt"),
        ] {
            let v = violations(&[edge(from, to)]);
            assert_eq!(v.len(), 1, "{from} -> {to} should be refused");
            assert!(v[0].starts_with(&format!("{from} -> {to}")));
        }
        // Dev-dependencies count too: an upward dev edge is still a cycle in the build.
        let mut dev = edge("fed-crypto", "fed-mesh");
        dev.kind = "dev".into();
        assert_eq!(violations(&[dev]).len(), 1);
    }

    #[test]
    fn io_crates_stay_out_of_sans_io_crates() {
        assert_eq!(violations(&[edge("fed-pbft", "tokio")]).len(), 1);
        assert_eq!(violations(&[edge("fed-onion", "libp2p-swarm")]).len(), 1);
        assert_eq!(violations(&[edge("fed-crdt", "tokio")]).len(), 1);
        assert!(violations(&[edge("fed-mesh", "tokio")]).is_empty());
        assert!(violations(&[edge("fedmesh", "tokio")]).is_empty());
        // The command takes the protocol crates through the facade.
        assert_eq!(violations(&[edge("fedmesh", "fed-pbft")]).len(), 1);
        assert!(violations(&[edge("fedmesh", "fed-mesh")]).is_empty());
    }

    #[test]
    fn this_workspace_passes_and_a_planted_edge_fails() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(root)
            .output()
            .unwrap();
        assert!(out.status.success());
        let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut edges = edges_from_metadata(&meta).unwrap();
        assert!(
            edges.iter().any(|e| e.from == "fed-crypto"),
            "metadata was read"
        );
        assert_eq!(violations(&edges), Vec::<String>::new());
        edges.push(edge("fed-crypto", "fed-pbft"));
        assert_eq!(violations(&edges).len(), 1);
    }
}
