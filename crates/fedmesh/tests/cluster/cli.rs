//! The command's error paths: each names the file, field or address at fault
//! and exits with its documented code.

use crate::*;

#[test]
fn keygen_never_overwrites_and_keys_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    let key = key.to_str().unwrap();
    assert_eq!(fedmesh(&["keygen", "--out", key]).0, 0);
    let (code, _, err) = fedmesh(&["keygen", "--out", key]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("k.key") && err.contains("never overwrites"),
        "{err}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A key others can read is refused.
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = fedmesh(&[
        "node",
        "--key",
        key,
        "--federation",
        &"ab".repeat(32),
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("readable by others"), "{err}");
}

#[test]
fn bad_configurations_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "key = \"missing.key\"\ndata_dir = \"d\"\nfederaton = \"x\"\n",
    )
    .unwrap();
    let (code, _, err) = fedmesh(&["node", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("node.toml") && err.contains("federaton"),
        "{err}"
    );
    std::fs::write(&config, "key = \"missing.key\"\ndata_dir = \"d\"\n").unwrap();
    let (code, _, err) = fedmesh(&["node", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("missing.key"), "{err}");
    let (code, _, err) = fedmesh(&["node", "--config", "/nonexistent/node.toml"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("/nonexistent/node.toml"), "{err}");
}

#[test]
fn an_unreachable_node_exits_4() {
    let (code, _, err) = fedmesh(&["status", "--control", "/nonexistent/control.sock"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("/nonexistent/control.sock"), "{err}");
}

#[test]
fn receipts_verify_against_their_genesis_only() {
    let mut c = Cluster::new(1);
    c.start(0);
    let receipt = c.nodes[0].data.with_file_name("r.bin");
    let (code, out, err) = fedmesh(&[
        "commit",
        "--control",
        c.nodes[0].socket().to_str().unwrap(),
        "hello",
        "--receipt",
        receipt.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let genesis = c.genesis.to_str().unwrap().to_string();
    let (code, out, err) = fedmesh(&[
        "verify-proof",
        receipt.to_str().unwrap(),
        "--genesis",
        &genesis,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // Another federation with the same member: the proof names the genesis.
    let other = Cluster::new(1);
    let (code, _, err) = fedmesh(&[
        "verify-proof",
        receipt.to_str().unwrap(),
        "--genesis",
        other.genesis.to_str().unwrap(),
    ]);
    assert_eq!(code, 5, "{err}");
    // A damaged receipt.
    let mut bytes = std::fs::read(&receipt).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&receipt, &bytes).unwrap();
    let (code, _, err) = fedmesh(&[
        "verify-proof",
        receipt.to_str().unwrap(),
        "--genesis",
        &genesis,
    ]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("r.bin"), "{err}");
    // Not a receipt at all.
    let (code, _, err) = fedmesh(&["verify-proof", &genesis, "--genesis", &genesis]);
    assert_eq!(code, 5, "{err}");
}

#[test]
fn patterns_added_by_command_are_found_by_a_query() {
    let mut c = Cluster::new(1);
    c.start(0);
    let socket = c.nodes[0].socket();
    let socket = socket.to_str().unwrap();
    for (id, e) in [(1, "1,0,0"), (2, "0,1,0"), (3, "0.9,0.1,0")] {
        let (code, _, err) = fedmesh(&["patterns", "add", "--control", socket, &id.to_string(), e]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = fedmesh(&[
        "query",
        "--control",
        socket,
        "1,0,0",
        "--top-k",
        "2",
        "--scope",
        "local",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pattern"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{out}");
    assert!(ids[0].ends_with("01") && ids[1].ends_with("03"), "{out}");
    // A bad embedding names the value at fault.
    let (code, _, err) = fedmesh(&["query", "--control", socket, "1,x,0"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("`x`"), "{err}");
}

#[test]
fn every_command_has_help() {
    for cmd in [
        &["keygen"][..],
        &["init"],
        &["node"],
        &["status"],
        &["commit"],
        &["put"],
        &["get"],
        &["query"],
        &["patterns", "add"],
        &["shutdown"],
        &["audit", "verify"],
        &["demo"],
        &["bench-commit"],
        &["verify-proof"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let (code, out, err) = fedmesh(&args);
        assert_eq!(code, 0, "{cmd:?}: {err}");
        assert!(out.contains("Usage: fedmesh"), "{cmd:?}: {out}");
    }
}
