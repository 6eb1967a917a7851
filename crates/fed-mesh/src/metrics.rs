//! Prometheus metrics: libp2p's own (connections, identify, ping, Kademlia,
//! swarm events) and the federation's, registered into a caller's
//! [`Registry`] by [`MeshBuilder::metrics`](crate::MeshBuilder::metrics).
//!
//! The federation's metrics are read from the core's [`Stats`] and consensus
//! status, which the driver copies into a shared snapshot once a second (and
//! at start): a scrape never waits for the node's task, and sees values at
//! most a second old. `docs/OPERATING.md` says what each metric means.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::types::{ConsensusStatus, LATENCY_BOUNDS_MS, LatencyHistogram, Stats};

/// What the driver last copied out of the core.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    pub(crate) stats: Stats,
    pub(crate) consensus: Option<ConsensusStatus>,
    /// Peers with an open connection.
    pub(crate) connected: usize,
    /// Members with a federation session.
    pub(crate) members: usize,
    /// The replica log of a node that stores its replica state.
    pub(crate) replica_log: Option<crate::store::ReplicaLogStats>,
}

/// The node's metrics: libp2p's recorder, and the snapshot behind the
/// federation's collector.
pub(crate) struct NodeMetrics {
    pub(crate) libp2p: libp2p::metrics::Metrics,
    pub(crate) snapshot: Arc<Mutex<Snapshot>>,
}

impl NodeMetrics {
    /// Registers libp2p's metrics (prefix `libp2p_`) and the federation's
    /// (prefix `exo_fed_`) into `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let libp2p = libp2p::metrics::Metrics::new(registry);
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        registry
            .sub_registry_with_prefix("exo_fed")
            .register_collector(Box::new(FederationCollector {
                snapshot: snapshot.clone(),
            }));
        Self { libp2p, snapshot }
    }

    pub(crate) fn update(&self, snapshot: Snapshot) {
        // A poisoned lock only means a scrape panicked mid-read; the data is
        // replaced whole, so it is safe to go on.
        let mut guard = self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = snapshot;
    }
}

#[derive(Debug)]
struct FederationCollector {
    snapshot: Arc<Mutex<Snapshot>>,
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

/// A counter family with one label, `label`, from a map of counts.
fn counter_family<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in values {
        let labels = [(label, value)];
        let m = e.encode_family(&labels)?;
        ConstCounter::new(count).encode(m)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &LatencyHistogram,
) -> std::fmt::Result {
    let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_MS
        .iter()
        .zip(h.buckets.iter())
        .map(|(bound, count)| (*bound as f64 / 1000.0, *count))
        .collect();
    buckets.push((f64::INFINITY, h.buckets[LATENCY_BOUNDS_MS.len()]));
    let mut e =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    e.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum_ms as f64 / 1000.0,
        h.count,
        &buckets,
        None,
    )
}

impl Collector for FederationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let e = &mut encoder;
        let st = &s.stats;
        counter_family(
            e,
            "handshakes",
            "Federation handshakes, both directions, by result",
            "result",
            [
                ("completed", st.handshakes_completed),
                ("failed", st.handshakes_failed),
            ],
        )?;
        counter(
            e,
            "queries_started",
            "Queries this node started",
            st.queries_started,
        )?;
        counter(
            e,
            "queries_served",
            "Queries from members this node searched its substrate for",
            st.queries_served,
        )?;
        counter(
            e,
            "queries_forwarded",
            "Query requests forwarded to members (one per member)",
            st.queries_forwarded,
        )?;
        counter(
            e,
            "query_duplicates",
            "Query requests answered as already seen",
            st.query_duplicates,
        )?;
        histogram(
            e,
            "query_served_duration",
            "Time from a member's query request to this node's answer",
            &st.query_served_ms,
        )?;
        histogram(
            e,
            "query_duration",
            "Time from a query this node started to its reconciled outcome",
            &st.query_ms,
        )?;
        counter(
            e,
            "onion_forwarded",
            "Onion packets this node forwarded as a relay",
            st.onion_forwarded,
        )?;
        counter(
            e,
            "onion_delivered",
            "Onion packets delivered to this node as their destination",
            st.onion_delivered,
        )?;
        counter(
            e,
            "onion_replies_relayed",
            "Onion replies this node passed back as a relay",
            st.onion_replies_relayed,
        )?;
        counter_family(
            e,
            "onion_dropped",
            "Onion packets dropped, by reason",
            "reason",
            st.onion_dropped.iter().map(|(k, v)| (*k, *v)),
        )?;
        counter_family(
            e,
            "sync_chunks",
            "Anti-entropy chunks, by result",
            "result",
            [("applied", st.sync_chunks), ("rejected", st.sync_rejected)],
        )?;
        counter_family(
            e,
            "refusals_sent",
            "Requests this node refused, by reason",
            "reason",
            st.refusals_sent.iter().map(|(k, v)| (*k, *v)),
        )?;
        counter_family(
            e,
            "peers_cut_off",
            "Peers this node cut off, by reason",
            "reason",
            st.cut_off.iter().map(|(k, v)| (*k, *v)),
        )?;
        counter(
            e,
            "requests_received",
            "Requests received on the federation protocols",
            st.requests_received,
        )?;
        counter(
            e,
            "requests_sent",
            "Requests sent on the federation protocols",
            st.requests_sent,
        )?;
        counter(
            e,
            "pbft_rejected",
            "PBFT messages, replies and proofs refused (MAC, signature, sender, shape)",
            st.pbft_rejected,
        )?;
        counter(
            e,
            "proofs_requested",
            "Proof requests sent to replicas (the push did not come in time, retries, commits settled by an epoch link)",
            st.proofs_requested,
        )?;
        counter(
            e,
            "committed_batches",
            "Committed batches this replica executed",
            st.committed_batches,
        )?;
        counter(
            e,
            "committed_updates",
            "Updates in those batches",
            st.committed_updates,
        )?;
        counter(
            e,
            "view_changes",
            "View changes this replica went through",
            st.view_changes,
        )?;
        gauge(
            e,
            "shared_entries",
            "Keys of the shared map with a value",
            st.shared_entries as i64,
        )?;
        gauge(
            e,
            "directory_members",
            "Members in the directory this node admits, itself included",
            st.directory_members as i64,
        )?;
        gauge(
            e,
            "peers_connected",
            "Peers with an open libp2p connection",
            s.connected as i64,
        )?;
        gauge(
            e,
            "members",
            "Members with a federation session",
            s.members as i64,
        )?;
        if let Some(c) = &s.consensus {
            gauge(e, "view", "The current PBFT view", c.view as i64)?;
            gauge(
                e,
                "epoch",
                "The configuration epoch (0: the genesis's voting members)",
                c.epoch as i64,
            )?;
            gauge(
                e,
                "voters",
                "Voting members in the configuration epoch",
                c.voters.len() as i64,
            )?;
            gauge(
                e,
                "checkpoint_height",
                "The replica's last stable checkpoint (sequence number)",
                c.stable_checkpoint as i64,
            )?;
            gauge(
                e,
                "last_executed",
                "The replica's last executed sequence number",
                c.last_executed as i64,
            )?;
            gauge(
                e,
                "ledger_updates",
                "Operations in the replica's ledger",
                c.ledger_count as i64,
            )?;
        }
        if let Some(l) = &s.replica_log {
            gauge(
                e,
                "replica_log_bytes",
                "Bytes of the replica log (node.rlog)",
                i64::try_from(l.bytes).unwrap_or(i64::MAX),
            )?;
            gauge(
                e,
                "replica_log_base_bytes",
                "Bytes of the replica log's base (what its last rewrite wrote)",
                i64::try_from(l.base_bytes).unwrap_or(i64::MAX),
            )?;
            counter(
                e,
                "replica_log_rewrites",
                "Rewrites of the replica log since the node started",
                l.rewrites,
            )?;
            counter(
                e,
                "replica_log_rewrite_failures",
                "Rewrites of the replica log that failed (tried again later; the log grows meanwhile)",
                l.rewrite_failures,
            )?;
            counter(
                e,
                "replica_log_torn_dropped",
                "Records of the replica log a crash had interrupted, dropped at start",
                l.torn_dropped,
            )?;
            gauge(
                e,
                "replica_log_broken",
                "1 if the replica log refuses writes after a failure (the node stops)",
                i64::from(l.broken),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_snapshot_in_the_text_format() {
        let mut registry = Registry::default();
        let metrics = NodeMetrics::register(&mut registry);
        let mut stats = Stats {
            handshakes_completed: 3,
            ..Stats::default()
        };
        stats.cut_off.insert("malformed", 2);
        stats.query_served_ms.observe(7);
        stats.query_served_ms.observe(20_000);
        metrics.update(Snapshot {
            stats,
            consensus: Some(ConsensusStatus {
                replica: Some(1),
                view: 4,
                last_executed: 130,
                stable_checkpoint: 128,
                ledger_count: 130,
                ledger_head: [0; 32],
                committed_here: 130,
                epoch: 2,
                voters: vec![fed_crypto::NodeId([1; 32]), fed_crypto::NodeId([2; 32])],
            }),
            connected: 5,
            members: 4,
            replica_log: Some(crate::store::ReplicaLogStats {
                bytes: 9_216,
                base_bytes: 1_024,
                rewrites: 3,
                rewrite_failures: 1,
                torn_dropped: 0,
                broken: false,
            }),
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "exo_fed_handshakes_total{result=\"completed\"} 3",
            "exo_fed_peers_cut_off_total{reason=\"malformed\"} 2",
            "exo_fed_query_served_duration_seconds_count 2",
            "exo_fed_query_served_duration_seconds_bucket{le=\"0.01\"} 1",
            "exo_fed_query_served_duration_seconds_bucket{le=\"10.0\"} 1",
            "exo_fed_query_served_duration_seconds_bucket{le=\"+Inf\"} 2",
            "exo_fed_checkpoint_height 128",
            "exo_fed_view 4",
            "exo_fed_epoch 2",
            "exo_fed_voters 2",
            "exo_fed_peers_connected 5",
            "exo_fed_replica_log_bytes 9216",
            "exo_fed_replica_log_base_bytes 1024",
            "exo_fed_replica_log_rewrites_total 3",
            "exo_fed_replica_log_rewrite_failures_total 1",
            "exo_fed_replica_log_torn_dropped_total 0",
            "exo_fed_replica_log_broken 0",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
        // libp2p's own metrics are registered beside them.
        assert!(text.contains("libp2p_swarm_"), "{text}");
    }
}
