//! The node's HTTP endpoint: Prometheus metrics, the status page and its JSON,
//! from a real `fedmesh node` process.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use crate::{Cluster, commit, status, wait_for};

/// One HTTP/1.1 exchange: (status code, headers and body as text).
fn http(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The node may close early on a refused request: a failed write is an answer too.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn get(addr: &str, path: &str) -> (u16, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The value of the metric line that starts with `name` (labels included).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_status_page_and_metrics_show_the_federation() {
    let mut c = Cluster::new(4);
    c.start_with(0, &["--metrics", "127.0.0.1:0"]);
    for i in 1..4 {
        c.start(i);
    }
    c.wait_connected();
    let socket = c.nodes[0].socket();
    for i in 0..3u8 {
        commit(&socket, &[i; 16]).unwrap();
    }
    let addr = status(&socket)["http"].as_str().unwrap().to_string();

    // Metrics: the federation's own and libp2p's, in the text format.
    let mut text = String::new();
    wait_for(10, "the commits in the metrics", || {
        text = body(&get(&addr, "/metrics").1).to_string();
        metric(&text, "exo_fed_committed_updates_total") == Some(3.0)
    });
    assert!(
        metric(&text, "exo_fed_handshakes_total{result=\"completed\"}").unwrap() >= 6.0,
        "{text}"
    );
    assert_eq!(metric(&text, "exo_fed_members"), Some(3.0), "{text}");
    // (A view change at start is possible on a loaded machine: any view.)
    assert!(metric(&text, "exo_fed_view").is_some(), "{text}");
    assert!(
        metric(&text, "exo_fed_last_executed").unwrap() >= 1.0,
        "{text}"
    );
    // The replica log has grown past its base with the commits' writes.
    assert!(
        metric(&text, "exo_fed_replica_log_bytes").unwrap()
            > metric(&text, "exo_fed_replica_log_base_bytes").unwrap(),
        "{text}"
    );
    assert_eq!(
        metric(&text, "exo_fed_replica_log_broken"),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains("exo_fed_query_served_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("libp2p_swarm_connections_established_total")),
        "libp2p's metrics are missing:\n{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    // /status: every member, the primary, the commits with their digests, the audit tail
    // (the audit writer appends the entries of 50 ms together: waited for).
    wait_for(10, "a commit in the audit tail", || {
        let (_, response) = get(&addr, "/status");
        serde_json::from_str::<serde_json::Value>(body(&response)).is_ok_and(|s| {
            s["audit_tail"].as_array().is_some_and(|tail| {
                tail.iter().any(|a| {
                    a["event"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("committed"))
                })
            })
        })
    });
    let (code, response) = get(&addr, "/status");
    assert_eq!(code, 200, "{response}");
    let s: serde_json::Value = serde_json::from_str(body(&response)).unwrap();
    let members = s["members"].as_array().unwrap();
    assert_eq!(members.len(), 4, "{s}");
    for (i, m) in members.iter().enumerate() {
        assert_eq!(m["replica"], i, "{m}");
        assert_eq!(m["local"], i == 0, "{m}");
        assert_eq!(m["connected"], true, "{m}");
        if i > 0 {
            assert_eq!(m["session"], true, "{m}");
        }
    }
    let view = s["consensus"]["view"].as_u64().unwrap();
    assert_eq!(s["consensus"]["primary"], view % 4, "{s}");
    assert_eq!(
        s["consensus"]["primary_node"],
        members[(view % 4) as usize]["node_id"],
        "{s}"
    );
    let commits = s["commits"].as_array().unwrap();
    assert_eq!(
        commits
            .iter()
            .map(|b| b["updates"].as_u64().unwrap())
            .sum::<u64>(),
        3,
        "{s}"
    );
    for b in commits {
        assert_eq!(b["digest"].as_str().unwrap().len(), 64, "{b}");
    }
    let audit: Vec<&str> = s["audit_tail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["event"].as_str().unwrap())
        .collect();
    assert!(
        audit.iter().any(|e| e.starts_with("committed")),
        "{audit:?}"
    );
    assert!(s["sync"]["directory_members"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        metric(&text, "exo_fed_directory_members").unwrap() >= 1.0,
        "{text}"
    );
    // The control socket tells the same story.
    assert_eq!(status(&socket)["members"], s["members"]);

    // The page itself: HTML that reads /status.
    let (code, page) = get(&addr, "/");
    assert_eq!(code, 200);
    assert!(
        page.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{page}"
    );
    assert!(
        page.contains("<svg") && page.contains("fetch(\"status\""),
        "{page}"
    );

    // What it refuses.
    let (code, _) = http(
        &addr,
        b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(code, 405);
    assert_eq!(get(&addr, "/nope").0, 404);
    let huge = format!(
        "GET /status HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let (code, _) = http(&addr, huge.as_bytes());
    assert_ne!(code, 200, "a request head of 64 KiB was served");
    let (code, _) = http(&addr, b"\x16\x03\x01\x00garbage\r\n\r\n");
    assert!(code == 400 || code == 0, "{code}");
    // And it goes on serving.
    assert_eq!(get(&addr, "/status").0, 200);
}

#[test]
fn a_bad_metrics_address_is_named() {
    let mut c = Cluster::new(1);
    let args = c.node_args(0, &["--metrics", "localhost:notaport"]);
    let (code, _, err) = crate::fedmesh(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("metrics address `localhost:notaport`"),
        "{err}"
    );
    c.nodes.clear();
}
