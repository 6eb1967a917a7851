//! Global queries over hundreds of simulated nodes: reach, cost, loss,
//! partitions (test 7). `cargo xtask sim` runs them with 200 nodes.

use fed_mesh::{FederationScope, PeerStatus, QueryOptions, QueryOutcome, substrate::PatternQuery};

use crate::*;

const DIM: usize = 16;

/// A federation of `n` nodes, warmed up until the directories and sessions settle.
fn warm(seed: u64, n: usize, net: Net) -> Sim {
    let mut sim = Sim::new(seed, n, 8, net, |_, _| {});
    sim.run_until(T0 + 40_000);
    sim
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Measure {
    queries: usize,
    coverage: f64,
    min_coverage: f64,
    requests: f64,
    duplicates: f64,
}

fn answered(outcome: &QueryOutcome) -> usize {
    outcome
        .peers
        .iter()
        .filter(|p| matches!(p.status, PeerStatus::Answered { .. }))
        .count()
}

/// Runs `queries` Global queries from random origins and measures them.
fn measure(sim: &mut Sim, fanout: u8, hops: u8, queries: usize) -> Measure {
    let n = sim.nodes.len();
    let mut m = Measure {
        min_coverage: 1.0,
        ..Measure::default()
    };
    for _ in 0..queries {
        let origin = sim.random_node();
        let before_requests = sim.traffic.requests.get("query").copied().unwrap_or(0);
        let before_dups: u64 = sim
            .nodes
            .iter()
            .map(|x| x.core.stats().query_duplicates)
            .sum();
        let before_served: u64 = sim
            .nodes
            .iter()
            .map(|x| x.core.stats().queries_served)
            .sum();
        let query = PatternQuery::new(sim.random_embedding(DIM), 10);
        let options = QueryOptions {
            fanout,
            timeout_ms: 3_000,
            ..QueryOptions::default()
        };
        let outcome = sim.query(
            origin,
            query,
            FederationScope::Global { max_hops: hops },
            options,
        );
        // Let late answers settle before the next query is counted.
        let settle = sim.now + 500;
        sim.run_until(settle);
        let requests = sim.traffic.requests.get("query").copied().unwrap_or(0) - before_requests;
        let dups: u64 = sim
            .nodes
            .iter()
            .map(|x| x.core.stats().query_duplicates)
            .sum::<u64>()
            - before_dups;
        let reached = answered(&outcome);
        let served = sim
            .nodes
            .iter()
            .map(|x| x.core.stats().queries_served)
            .sum::<u64>()
            - before_served;
        // Each node forwards a query id to at most `fanout` peers, again only
        // when a copy with more hops left arrives: at most `hops` times.
        assert!(
            requests <= u64::from(fanout) * u64::from(hops) * (served + 1),
            "seed {}: {requests} requests for {served} nodes serving at fan-out {fanout}",
            sim.seed
        );
        assert!(
            served as usize >= reached,
            "seed {}: {reached} answered but {served} served",
            sim.seed
        );
        let coverage = reached as f64 / (n - 1) as f64;
        m.queries += 1;
        m.coverage += coverage;
        m.min_coverage = m.min_coverage.min(coverage);
        m.requests += requests as f64;
        m.duplicates += dups as f64;
    }
    let q = m.queries as f64;
    m.coverage /= q;
    m.requests /= q;
    m.duplicates /= q;
    m
}

#[test]
fn global_queries_reach_the_mesh_at_a_cost_bounded_by_fanout() {
    let seed = seed_or(20261202);
    let n = nodes();
    let mut sim = warm(seed, n, Net::default());
    let (min, mean, max) = sim.degree();
    if min < 4 {
        for (i, n) in sim.nodes.iter().enumerate() {
            let held = n.core.peers().iter().filter(|p| p.held.is_some()).count();
            if held < 4 {
                eprintln!(
                    "node {i}: {held} held; peers {:?}; stats {:?}",
                    n.core.peers(),
                    n.core.stats()
                );
            }
        }
    }
    assert!(
        min >= 4,
        "seed {seed}: a node has only {min} sessions (mean {mean:.1}, max {max})"
    );
    let union = sim.spread(20, DIM);

    // Without loss, a wide enough query reaches everyone and its result is the
    // top-k of the union of all the stores.
    let query = PatternQuery::new(sim.random_embedding(DIM), 10);
    let want: Vec<_> = union
        .query(&query)
        .unwrap()
        .into_iter()
        .map(|s| s.pattern.id)
        .collect();
    let options = QueryOptions {
        fanout: 8,
        timeout_ms: 3_000,
        ..QueryOptions::default()
    };
    let outcome = sim.query(0, query, FederationScope::Global { max_hops: 6 }, options);
    assert_eq!(
        answered(&outcome),
        n - 1,
        "seed {seed}: {:?}",
        outcome.peers
    );
    let got: Vec<_> = outcome.results.iter().map(|r| r.pattern).collect();
    assert_eq!(got, want, "seed {seed}");

    // The whole grid with FED_SIM_FULL=1 (the figures in docs/BENCHMARKS.md);
    // its corners otherwise.
    let full = std::env::var("FED_SIM_FULL").is_ok();
    let (fanouts, hopses, per): (&[u8], &[u8], usize) = if full {
        (&[2, 3, 4, 8], &[2, 3, 4, 6], 8)
    } else {
        (&[2, 8], &[2, 6], 2)
    };
    let mut table = Vec::new();
    for &fanout in fanouts {
        for &hops in hopses {
            let m = measure(&mut sim, fanout, hops, per);
            table.push((fanout, hops, m));
        }
    }
    if report() {
        println!("seed {seed}, {n} nodes, no loss");
        println!("fanout hops coverage(mean) coverage(min) requests/query duplicates/query");
        for (f, h, m) in &table {
            println!(
                "{f:6} {h:4} {:14.3} {:13.3} {:14.1} {:16.1}",
                m.coverage, m.min_coverage, m.requests, m.duplicates
            );
        }
    }
    // Reach grows with fan-out and hops: the widest setting covers everyone.
    let widest = &table.last().unwrap().2;
    assert!(widest.min_coverage > 0.99, "seed {seed}: {widest:?}");
    let narrowest = &table[0].2;
    assert!(
        narrowest.coverage < widest.coverage,
        "seed {seed}: {narrowest:?} vs {widest:?}"
    );
}

#[test]
fn message_loss_costs_reach_but_every_query_finishes_and_reports_its_peers() {
    let seed = seed_or(77);
    let net = Net {
        loss: 0.02,
        ..Net::default()
    };
    let n = nodes();
    let mut sim = warm(seed, n, net);
    sim.spread(5, DIM);
    let m = measure(&mut sim, 8, 5, 4);
    if report() {
        println!("seed {seed}, {n} nodes, 2% loss, fanout 8, hops 5: {m:?}");
    }
    // Every query finished and reported its peers (`measure` checks the cost
    // bound on each). Answers travel back up the tree they came down, so a lost
    // answer loses what only its path carried (a direct child's loses its whole
    // subtree, ~1/fanout of the mesh); nodes answer every parent that asks them,
    // which repairs the edges of such a subtree. Over TCP or QUIC nothing is
    // lost silently: a broken connection fails the request at once.
    assert!(m.coverage > 0.6, "seed {seed}: {m:?}");
    assert!(m.min_coverage > 0.3, "seed {seed}: {m:?}");
}

#[test]
fn a_partition_bounds_what_a_query_reaches_and_healing_restores_it() {
    let seed = seed_or(4242);
    let n = nodes();
    let mut sim = warm(seed, n, Net::default());
    sim.spread(5, DIM);
    let sides: Vec<u8> = (0..n).map(|i| u8::from(i % 2 == 1)).collect();
    sim.partition(sides.clone());
    let options = QueryOptions {
        fanout: 8,
        timeout_ms: 3_000,
        ..QueryOptions::default()
    };
    let origin = 0;
    let query = PatternQuery::new(sim.random_embedding(DIM), 10);
    let outcome = sim.query(
        origin,
        query.clone(),
        FederationScope::Global { max_hops: 6 },
        options.clone(),
    );
    let nodes: Vec<_> = sim.nodes.iter().map(|n| n.core.node_id()).collect();
    for p in &outcome.peers {
        let i = nodes.iter().position(|n| *n == p.node).unwrap();
        if sides[i] != sides[origin] {
            assert!(
                !matches!(p.status, PeerStatus::Answered { .. }),
                "seed {seed}: node {i} across the partition answered"
            );
        }
    }
    let reached = answered(&outcome);
    let same_side = n / 2 - 1;
    assert!(reached <= same_side, "seed {seed}: {reached} answered");
    assert!(
        reached * 10 >= same_side * 8,
        "seed {seed}: only {reached} of {same_side} on the origin's side answered"
    );
    // Nothing across the partition is silently dropped: the peers asked across it
    // are reported as not answering.
    assert!(
        outcome
            .peers
            .iter()
            .any(|p| p.status == PeerStatus::TimedOut),
        "seed {seed}"
    );

    sim.heal();
    let settle = sim.now + 10_000;
    sim.run_until(settle);
    let outcome = sim.query(
        origin,
        query,
        FederationScope::Global { max_hops: 6 },
        options,
    );
    if report() {
        println!(
            "seed {seed}, {n} nodes split in two, fanout 8, hops 6: {reached} of {same_side} \
             on the origin's side answered; after healing {} of {}",
            answered(&outcome),
            n - 1
        );
    }
    assert!(
        answered(&outcome) * 100 >= (n - 1) * 97,
        "seed {seed}: {} of {} answered after healing",
        answered(&outcome),
        n - 1
    );
}

#[test]
fn a_seed_replays_exactly() {
    let seed = seed_or(5);
    let run = || {
        let mut sim = warm(
            seed,
            40,
            Net {
                loss: 0.05,
                ..Net::default()
            },
        );
        sim.spread(5, DIM);
        let m = measure(&mut sim, 3, 3, 3);
        (m, sim.traffic.clone(), sim.now)
    };
    assert_eq!(run(), run(), "seed {seed}: two runs differ");
}

#[test]
fn crashed_nodes_are_reported_and_the_mesh_heals_when_they_restart() {
    let seed = seed_or(31337);
    let n = nodes();
    let mut sim = warm(seed, n, Net::default());
    sim.spread(5, DIM);
    // A tenth of the federation crashes at once, the origin excepted.
    let mut crashed = Vec::new();
    while crashed.len() < n / 10 {
        let i = sim.random_node();
        if i != 0 && !crashed.contains(&i) {
            crashed.push(i);
        }
    }
    for &i in &crashed {
        sim.crash(i);
    }
    let ids: Vec<_> = sim.nodes.iter().map(|x| x.core.node_id()).collect();
    let options = QueryOptions {
        fanout: 8,
        timeout_ms: 3_000,
        ..QueryOptions::default()
    };
    let query = PatternQuery::new(sim.random_embedding(DIM), 10);
    let outcome = sim.query(
        0,
        query.clone(),
        FederationScope::Global { max_hops: 6 },
        options.clone(),
    );
    for &i in &crashed {
        if let Some(p) = outcome.peer(&ids[i]) {
            assert!(
                !matches!(p.status, PeerStatus::Answered { .. }),
                "seed {seed}: crashed node {i} answered"
            );
        }
    }
    let live = n - 1 - crashed.len();
    let first = answered(&outcome);
    assert!(
        answered(&outcome) * 100 >= live * 95,
        "seed {seed}: {} of {live} live nodes answered",
        answered(&outcome)
    );
    // They restart from their configuration, rejoin through their bootstrap
    // peers and the directory, and answer again.
    for &i in &crashed {
        sim.restart(i);
    }
    let settle = sim.now + 20_000;
    sim.run_until(settle);
    let outcome = sim.query(0, query, FederationScope::Global { max_hops: 6 }, options);
    let back = crashed
        .iter()
        .filter(|&&i| {
            outcome
                .peer(&ids[i])
                .is_some_and(|p| matches!(p.status, PeerStatus::Answered { .. }))
        })
        .count();
    if report() {
        println!(
            "seed {seed}, {n} nodes, {} crashed, fanout 8, hops 6: {first} of {live} live \
             nodes answered; after restarts {back} of the {} answered, {} in all",
            crashed.len(),
            crashed.len(),
            answered(&outcome)
        );
    }
    assert!(
        back * 10 >= crashed.len() * 9,
        "seed {seed}: {back} of {} restarted nodes answered",
        crashed.len()
    );
    assert!(
        answered(&outcome) * 100 >= (n - 1) * 95,
        "seed {seed}: {} answered",
        answered(&outcome)
    );
}
