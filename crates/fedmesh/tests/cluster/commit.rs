//! Issue 11's crash tests: commits over libp2p between `fedmesh node` processes.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use crate::*;

/// Every running node's ledger, once they all hold `count` updates: they must
/// agree on its head.
fn converged(c: &Cluster, count: u64) -> String {
    let mut heads = BTreeSet::new();
    for i in 0..c.nodes.len() {
        wait_for(60, &format!("node {i} executed {count} updates"), || {
            c.consensus(i)["ledger_count"].as_u64() == Some(count)
        });
        heads.insert(c.consensus(i)["ledger_head"].as_str().unwrap().to_string());
    }
    assert_eq!(
        heads.len(),
        1,
        "the members disagree on the ledger: {heads:?}"
    );
    heads.into_iter().next().unwrap()
}

/// Test 2: the primary's process is SIGKILLed while three clients commit; a
/// view change follows, the clients' retransmissions go through, and every
/// submitted update commits exactly once. The old primary restarts from its
/// data directory, catches up and agrees.
#[test]
fn the_primary_killed_mid_stream_then_restarted_from_disk() {
    let mut c = Cluster::new(4);
    c.start_all();
    let primary = c.primary(0);
    let view_before = c.consensus(0)["view"].as_u64().unwrap();
    let submitters: Vec<usize> = (0..4).filter(|&i| i != primary).collect();
    let handles: Vec<_> = submitters
        .iter()
        .map(|&i| {
            let socket = c.nodes[i].socket();
            std::thread::spawn(move || {
                (0..20)
                    .map(|k| commit(&socket, format!("node {i} update {k}").as_bytes()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    wait_for(60, "some commits before the kill", || {
        c.consensus(submitters[0])["ledger_count"].as_u64().unwrap() >= 10
    });
    c.kill(primary);
    let results: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let indexes: BTreeSet<u64> = results
        .iter()
        .map(|r| *r.as_ref().expect("commits despite the kill"))
        .collect();
    assert_eq!(indexes, (0..60).collect(), "each update once, none lost");
    for &i in &submitters {
        // A commit completes on `f + 1` replies, which need not include the
        // submitter's own replica: it may execute the last batch a moment
        // after its client's receipt.
        wait_for(30, "every submitter executed the 60 updates", || {
            c.consensus(i)["ledger_count"].as_u64().unwrap() >= 60
        });
        assert_eq!(c.consensus(i)["ledger_count"], 60, "nothing executed twice");
        assert!(c.consensus(i)["view"].as_u64().unwrap() > view_before);
    }
    c.start(primary);
    for k in 0..20 {
        commit(
            &c.nodes[submitters[0]].socket(),
            format!("after {k}").as_bytes(),
        )
        .unwrap();
    }
    converged(&c, 80);
}

/// Test 4: a voter killed during commits loses no committed entry: restarted,
/// it catches up to the same ledger; its audit log verifies; a byte edited in
/// its database is refused at start with an error that names the file.
#[test]
fn a_voter_killed_during_commits_loses_nothing_and_an_edited_byte_is_refused() {
    let mut c = Cluster::new(4);
    c.start_all();
    let primary = c.primary(0);
    let victim = (primary + 1) % 4;
    let socket = c.nodes[primary].socket();
    let stream = std::thread::spawn(move || {
        (0..30)
            .map(|k| commit(&socket, format!("update {k}").as_bytes()).unwrap())
            .collect::<Vec<_>>()
    });
    wait_for(60, "the victim executed some", || {
        c.consensus(victim)["ledger_count"].as_u64().unwrap() >= 5
    });
    let before = c.consensus(victim)["ledger_count"].as_u64().unwrap();
    c.kill(victim);
    assert_eq!(stream.join().unwrap().len(), 30);
    c.start(victim);
    // Recovered from disk before any catching up: nothing it executed is gone.
    assert!(c.consensus(victim)["ledger_count"].as_u64().unwrap() >= before.min(1));
    for k in 0..9 {
        commit(&c.nodes[primary].socket(), format!("more {k}").as_bytes()).unwrap();
    }
    // A marker update whose batch the victim executed itself: its replica
    // log then holds the batch's bytes. (When the victim reaches a marker's
    // batch by a state transfer instead, as it may after its restart, only
    // the certified state is there: another marker is committed.)
    let log = c.nodes[victim].data.join("node.rlog");
    let mut marker = None;
    for k in 0..5u64 {
        let m = format!("exo-federation crash test marker {k}");
        commit(&c.nodes[primary].socket(), m.as_bytes()).unwrap();
        converged(&c, 40 + k);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let bytes = std::fs::read(&log).unwrap();
            if bytes.windows(m.len()).any(|w| w == m.as_bytes()) {
                marker = Some(m.clone());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if marker.is_some() {
            break;
        }
    }
    let marker = marker.expect("a marker update is in the victim's replica log");

    c.stop(victim);
    let node = &c.nodes[victim];
    let (code, out, err) = fedmesh(&[
        "audit",
        "verify",
        "--data-dir",
        node.data.to_str().unwrap(),
        "--key",
        node.key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");

    // The committed batch is in the replica log beside the database
    // (store.md §3); the database holds the audit log, the epochs and the
    // rest. A byte edited in either is refused, naming the file.
    let db = node.data.join("node.redb");
    let saved = std::fs::read(&log).unwrap();
    let mut bytes = saved.clone();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("the marker update is in the victim's replica log");
    bytes[at + 3] ^= 0x01;
    std::fs::write(&log, bytes).unwrap();
    let args = c.node_args(victim, &["--listen", "/ip4/127.0.0.1/tcp/0"]);
    let (code, _, err) = fedmesh(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&log.display().to_string()), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    std::fs::write(&log, saved).unwrap();
    // The format record's magic (store.md §2), in every page that holds a
    // copy, so that the live one is edited.
    let mut bytes = std::fs::read(&db).unwrap();
    let magic = b"exo-fed-store\0";
    let copies: Vec<usize> = bytes
        .windows(magic.len())
        .enumerate()
        .filter(|(_, w)| *w == magic)
        .map(|(i, _)| i)
        .collect();
    assert!(!copies.is_empty(), "the format record is in the database");
    for at in copies {
        bytes[at + 2] ^= 0x01;
    }
    std::fs::write(&db, bytes).unwrap();
    let (code, _, err) = fedmesh(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&db.display().to_string()), "{err}");
}

/// Test 5's second half with processes: 4 voting processes and a fifth that
/// does not vote. Three voters (a quorum) run `fedmesh voters add` for the
/// fifth: at the next checkpoint every process enters epoch 1. Four of the
/// five run `voters remove` for the fourth: epoch 2. The new voter's process
/// is SIGKILLed and restarted from its data directory: it comes back voting in
/// epoch 2, and executes what the others commit. A receipt made after the
/// changes verifies with `fedmesh verify-proof` against the genesis alone.
#[test]
fn the_voters_change_at_a_checkpoint_and_the_new_voter_survives_a_kill() {
    let mut c = Cluster::with_members(4, 1);
    c.start_all();
    let node_id = |c: &Cluster, i: usize| {
        status(&c.nodes[i].socket())["node_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let address = status(&c.nodes[4].socket())["addresses"][0]
        .as_str()
        .unwrap()
        .split('#')
        .next()
        .unwrap()
        .to_string();
    let member = format!("{}.pub@{address}", c.nodes[4].key.display());
    let control = |c: &Cluster, i: usize| c.nodes[i].socket().display().to_string();
    // `fedmesh voters <what> --control <node i's socket> <arg>` on each of
    // `nodes` at once; each must succeed.
    let voters = |c: &Cluster, nodes: &[usize], what: &str, arg: &str| {
        let runs: Vec<_> = nodes
            .iter()
            .map(|&i| {
                let args = [
                    "voters".to_string(),
                    what.into(),
                    "--control".into(),
                    control(c, i),
                    arg.into(),
                ];
                std::thread::spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    fedmesh(&args)
                })
            })
            .collect();
        for h in runs {
            let (code, out, err) = h.join().unwrap();
            assert_eq!(code, 0, "{out}{err}");
        }
    };
    let in_epoch = |c: &Cluster, epoch: u64| {
        for i in 0..5 {
            wait_for(60, &format!("node {i} in epoch {epoch}"), || {
                c.consensus(i)["epoch"].as_u64() == Some(epoch)
            });
        }
    };
    voters(&c, &[0, 1, 2], "add", &member);
    in_epoch(&c, 1);
    assert_eq!(c.consensus(4)["replica"].as_u64(), Some(4), "node 4 votes");
    let removed = node_id(&c, 3);
    voters(&c, &[0, 1, 2, 4], "remove", &removed);
    in_epoch(&c, 2);
    assert!(c.consensus(3)["replica"].is_null(), "node 3 votes no more");
    assert_eq!(c.consensus(4)["replica"].as_u64(), Some(3), "node 4 votes");

    // The new voter's process is killed and restarted from its directory.
    c.kill(4);
    c.start(4);
    assert_eq!(c.consensus(4)["epoch"].as_u64(), Some(2));
    assert_eq!(c.consensus(4)["replica"].as_u64(), Some(3));
    let receipt = c._dir.path().join("after.receipt");
    let (code, out, err) = fedmesh(&[
        "commit",
        "--control",
        &control(&c, 3),
        "--receipt",
        receipt.to_str().unwrap(),
        "after the change",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("epoch 2"), "{out}");
    for i in 0..5 {
        commit(&c.nodes[i].socket(), format!("u{i}").as_bytes()).unwrap();
    }
    // Every voter of epoch 2 executed the same 7 proposals and 6 updates.
    let heads: BTreeSet<String> = [0, 1, 2, 4]
        .iter()
        .map(|&i| {
            wait_for(60, &format!("node {i} executed everything"), || {
                c.consensus(i)["ledger_count"].as_u64() == Some(13)
            });
            c.consensus(i)["ledger_head"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(heads.len(), 1, "the voters disagree: {heads:?}");
    let (code, out, err) = fedmesh(&[
        "verify-proof",
        receipt.to_str().unwrap(),
        "--genesis",
        c.genesis.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}
