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
    let (code, _, err) = fedmesh(&["node", "--worker-threads", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--worker-threads"), "{err}");
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

/// `audit verify` on a directory without a store says so (exit 3) and
/// creates nothing there: it used to create an empty store and "verify" it.
#[test]
fn audit_verify_refuses_a_directory_without_a_store() {
    let c = crate::Cluster::new(1);
    let empty = tempfile::tempdir().unwrap();
    let (code, out, err) = fedmesh(&[
        "audit",
        "verify",
        "--data-dir",
        empty.path().to_str().unwrap(),
        "--key",
        c.nodes[0].key.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("no store here"), "{err}");
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

#[test]
fn an_allowlist_admits_only_its_members() {
    let mut c = crate::Cluster::new(3);
    let allowed = format!("{}.pub", c.nodes[1].key.display());
    c.start_with(0, &["--admission", "allowlist", "--allow", &allowed]);
    c.start(1);
    c.start(2);
    let peers =
        |c: &crate::Cluster, i: usize| crate::status(&c.nodes[i].socket())["peers"].as_u64();
    let ok = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        // (Node 2 may count node 0: node 0 dialled it, and node 2's open
        // policy gave it a session that node 0 then dropped.)
        peers(&c, 0) == Some(1) && peers(&c, 1) == Some(2) && peers(&c, 2) >= Some(1)
    });
    assert!(
        ok,
        "peers: {:?} {:?} {:?}\n{}",
        peers(&c, 0),
        peers(&c, 1),
        peers(&c, 2),
        std::fs::read_to_string(&c.nodes[0].log).unwrap_or_default()
    );
    // Node 2 keeps trying (it bootstrapped to node 0); node 0 keeps refusing.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(peers(&c, 0), Some(1));
    let members = crate::status(&c.nodes[0].socket())["members"].clone();
    let node2 = crate::status(&c.nodes[2].socket())["node_id"].clone();
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["node_id"] != node2 || m["session"] == false),
        "{members}"
    );

    // Mistakes are named.
    for (args, expect) in [
        (&["--admission", "allowlist"][..], "nobody in `allow`"),
        (&["--admission", "everyone"][..], "policy `everyone`"),
        (&["--allow", "zz"][..], "allow[0]"),
        (
            &["--admission", "open", "--allow", &allowed][..],
            "policy is `open`",
        ),
    ] {
        let all = c.node_args(2, args);
        let (code, _, err) = fedmesh(&all.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

/// The control socket's `bench-commit` makes real commits from the node
/// itself, says what each took, and refuses bounds it does not take before it
/// commits anything.
#[test]
fn a_bench_commit_request_commits_from_the_node_and_refuses_bad_bounds() {
    let mut c = Cluster::new(1);
    c.start_with(0, &["--client-slots", "8"]);
    let socket = c.nodes[0].socket();
    let v = try_call(
        &socket,
        r#"{"cmd":"bench-commit","commits":40,"concurrency":8,"size":100}"#,
    )
    .expect("the node answers");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["result"]["completed"], 40, "{v}");
    assert_eq!(v["result"]["latencies_us"].as_array().unwrap().len(), 40);
    assert_eq!(v["result"]["failed"], serde_json::json!({}), "{v}");
    assert_eq!(c.consensus(0)["ledger_count"], 40);
    for (line, field) in [
        (
            r#"{"cmd":"bench-commit","commits":1,"concurrency":0,"size":1}"#,
            "concurrency",
        ),
        (
            r#"{"cmd":"bench-commit","commits":1,"concurrency":5000,"size":1}"#,
            "concurrency",
        ),
        (
            r#"{"cmd":"bench-commit","commits":1000001,"concurrency":1,"size":1}"#,
            "commits",
        ),
        (
            r#"{"cmd":"bench-commit","commits":1,"concurrency":1,"size":1048577}"#,
            "size",
        ),
        (
            r#"{"cmd":"bench-commit","commits":1,"concurrency":1,"size":1,"pause_ms":60001}"#,
            "pause_ms",
        ),
        (
            r#"{"cmd":"bench-commit","commits":-1,"concurrency":1,"size":1}"#,
            "bad request",
        ),
        (
            r#"{"cmd":"bench-commit","commits":1000,"concurrency":1,"size":1,"pause_ms":60000}"#,
            "pause_ms × commits",
        ),
        (
            r#"{"cmd":"bench-commit","commits":1,"concurrency":4096,"size":1048576}"#,
            "size × concurrency",
        ),
    ] {
        let v = try_call(&socket, line).expect("the node answers");
        assert_eq!(v["ok"], false, "{line}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{line}: {v}");
    }
    assert_eq!(
        c.consensus(0)["ledger_count"],
        40,
        "a refused request committed"
    );
}

/// `fedmesh bench-commit --from-voters`: the voters' own nodes make the
/// commits (no client node), and the run reports every figure.
#[test]
fn the_commit_benchmark_runs_from_the_voters() {
    let (code, out, err) = fedmesh(&[
        "bench-commit",
        "--from-voters",
        "--commits",
        "200",
        "--concurrency",
        "16",
        "--sequential",
        "5",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "unloaded (5 sequential commits through voter 1, a backup",
        "from the 4 voters' own nodes, 100 B):",
        "(0 failed)",
        "recovery: first commit completed",
    ] {
        assert!(out.contains(want), "no `{want}` in:\n{out}{err}");
    }
    // What the voters would refuse is refused before anything starts.
    for (flags, field) in [
        (&["--concurrency", "3"][..], "--concurrency"),
        (&["--commits", "8000000"][..], "commits"),
        (&["--pause-ms", "60001"][..], "pause_ms"),
    ] {
        let mut args = vec!["bench-commit", "--from-voters"];
        args.extend_from_slice(flags);
        let (code, out, err) = fedmesh(&args);
        assert_eq!(code, 3, "{flags:?}: {out}{err}");
        assert!(err.contains(field), "{flags:?}: {err}");
    }
}
