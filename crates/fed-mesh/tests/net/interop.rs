//! A libp2p implementation in another language connects to a node, identifies
//! it and pings it: js-libp2p over TCP, Noise and Yamux (tests/interop/dial.mjs).
//!
//! Needs Node.js and `npm ci` in `crates/fed-mesh/tests/interop` (`.ci/run`
//! does both). Without them the test says so and passes, unless `CI` is set.

use std::{path::Path, process::Command};

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_libp2p_client_connects_identifies_and_pings_a_node() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let ready = dir.join("node_modules/libp2p").exists()
        && Command::new("node").arg("--version").output().is_ok();
    if !ready {
        let msg = "js-libp2p interop: needs Node.js and `npm ci` in crates/fed-mesh/tests/interop";
        assert!(std::env::var("CI").is_err(), "{msg}");
        eprintln!("skipped: {msg}");
        return;
    }
    let node = start(config(90)).await;
    let tcp = node
        .listen_addrs()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .unwrap()
        .with_p2p(node.peer_id())
        .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("dial.mjs")
            .arg(tcp.to_string())
            .current_dir(dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap();
    let info: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(info["peer"], node.peer_id().to_string());
    assert_eq!(info["encryption"], "/noise");
    assert_eq!(info["multiplexer"], "/yamux/1.0.0");
    assert!(info["pingMs"].as_f64().is_some(), "{info}");
    assert_eq!(info["protocolVersion"], "/exo-fed/1.0.0");
    assert!(
        info["agentVersion"]
            .as_str()
            .unwrap()
            .starts_with("exo-federation/")
    );
    let protocols: Vec<&str> = info["protocols"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    for p in [
        "/ipfs/id/1.0.0",
        "/ipfs/ping/1.0.0",
        "/exo-fed/kad/1.0.0",
        "/exo-fed/handshake/1",
        "/exo-fed/query/1",
        "/exo-fed/onion/1",
        "/exo-fed/sync/1",
    ] {
        assert!(protocols.contains(&p), "{p} missing from {protocols:?}");
    }
    node.shutdown().await.unwrap();
}
