//! `reconcile` does not depend on arrival order or duplicates, and respects
//! its bounds, including the per-source cap.

use std::cmp::Ordering;

use fed_crdt::{
    Hit, Hlc, PatternId, QueryResponse, ReconcileConfig, Reconciler, ReplicaId, reconcile,
};
use proptest::{collection::vec, prelude::*};

use crate::support::{config, node};

fn hit() -> impl Strategy<Value = Hit<u8>> {
    (
        0u64..6,
        prop::sample::select(vec![0.1f32, 0.5, 0.9, -0.0, 0.0]),
        (0u64..3, 0u32..2, 0u64..2),
        0u8..3,
    )
        .prop_map(|(p, score, (ms, l, n), payload)| Hit {
            pattern: PatternId::from_u64(p),
            score,
            version: Hlc::new(ms, l, node(n)),
            payload,
        })
}

/// A response with its authenticated sender; one in eight claims another
/// source.
fn response() -> impl Strategy<Value = (ReplicaId, QueryResponse<u8>)> {
    (0u64..4, 0u64..8, vec(hit(), 0..6)).prop_map(|(s, claim, hits)| {
        let claimed = if claim == 7 { node(s + 1) } else { node(s) };
        (
            node(s),
            QueryResponse {
                source: claimed,
                hits,
            },
        )
    })
}

fn cfg(top_k: usize, max_per_source: usize) -> ReconcileConfig {
    ReconcileConfig {
        top_k,
        max_per_source,
        max_hits_per_response: 4,
        max_forward_skew_ms: 10,
    }
}

/// Whether a response passes every check (skew is never exceeded here).
fn accepted((source, r): &(ReplicaId, QueryResponse<u8>)) -> bool {
    r.source == *source && r.hits.len() <= 4
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn result_is_independent_of_order_and_duplicates(
        (responses, shuffled, dups) in vec(response(), 0..6).prop_flat_map(|rs| {
            let n = rs.len().max(1);
            (Just(rs.clone()), Just(rs).prop_shuffle(), vec(0..n, 0..4))
        }),
        top_k in 0usize..8,
        cap in 0usize..4,
    ) {
        let cfg = cfg(top_k, cap);
        let expected = reconcile(responses.clone(), &cfg, 0);
        let mut again = shuffled;
        for i in dups {
            if let Some(r) = responses.get(i) {
                again.push(r.clone());
            }
        }
        prop_assert_eq!(&reconcile(again.clone(), &cfg, 0), &expected);
        again.reverse();
        let mut incremental = Reconciler::new(cfg, 0);
        for (source, r) in again {
            let _ = incremental.add(source, r);
        }
        prop_assert_eq!(incremental.finish(), expected);
    }

    #[test]
    fn output_is_deduplicated_ranked_bounded_and_newest(
        responses in vec(response(), 0..6),
        top_k in 0usize..8,
        cap in 0usize..4,
    ) {
        let out = reconcile(responses.clone(), &cfg(top_k, cap), 0);
        prop_assert!(out.hits.len() <= top_k);
        prop_assert_eq!(out.hits.len(), top_k.min(out.candidates - out.capped));
        // Without a binding cap, nothing is skipped.
        let uncapped = reconcile(responses.clone(), &cfg(top_k, top_k), 0);
        prop_assert_eq!(uncapped.capped, 0);
        prop_assert_eq!(uncapped.hits.len(), top_k.min(uncapped.candidates));
        for w in out.hits.windows(2) {
            // Score descending, then pattern ascending (so no duplicates).
            let ord = w[1].score.total_cmp(&w[0].score).then(w[0].pattern.cmp(&w[1].pattern));
            prop_assert_eq!(ord, Ordering::Less);
        }
        let kept: Vec<_> = responses
            .iter()
            .filter(|r| accepted(r))
            .map(|(_, r)| r)
            .collect();
        for h in &out.hits {
            let newest = kept
                .iter()
                .flat_map(|r| r.hits.iter())
                .filter(|x| x.pattern == h.pattern)
                .map(|x| x.version)
                .max();
            prop_assert_eq!(Some(h.version), newest);
            let mut sources: Vec<_> = kept
                .iter()
                .filter(|r| r.hits.iter().any(|x| x.pattern == h.pattern))
                .map(|r| r.source)
                .collect();
            sources.sort();
            sources.dedup();
            let got: Vec<_> = h.provenance.iter().map(|p| p.source).collect();
            prop_assert_eq!(got, sources);
        }
        let rejected = responses.iter().filter(|r| !accepted(r)).count();
        prop_assert_eq!(rejected > 0, !out.rejected.is_empty());
    }

    /// A result is decided by the sources that returned its winning hit:
    /// same version, score and payload (crdt.md section 9). For every set
    /// `X` of sources, at most `|X| x max_per_source` results are decided by
    /// sources of `X` alone, whatever the others answer.
    #[test]
    fn no_set_of_sources_decides_more_than_its_cap(
        responses in vec(response(), 0..6),
        top_k in 0usize..8,
        cap in 0usize..4,
    ) {
        let out = reconcile(responses.clone(), &cfg(top_k, cap), 0);
        let sources: Vec<ReplicaId> = (0..4).map(node).collect();
        let deciders: Vec<Vec<ReplicaId>> = out
            .hits
            .iter()
            .map(|h| {
                let mut d: Vec<ReplicaId> = responses
                    .iter()
                    .filter(|r| accepted(r))
                    .filter(|(_, r)| {
                        r.hits.iter().any(|x| {
                            x.pattern == h.pattern
                                && x.version == h.version
                                && x.score.total_cmp(&h.score).is_eq()
                                && x.payload == h.payload
                        })
                    })
                    .map(|(s, _)| *s)
                    .collect();
                d.sort();
                d.dedup();
                d
            })
            .collect();
        prop_assert!(deciders.iter().all(|d| !d.is_empty()));
        for mask in 0u32..(1 << sources.len()) {
            let set: Vec<ReplicaId> = (0..sources.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| sources[i])
                .collect();
            let decided = deciders
                .iter()
                .filter(|d| d.iter().all(|s| set.contains(s)))
                .count();
            prop_assert!(
                decided <= set.len() * cap,
                "sources {:?} decide {} results with a cap of {}",
                set, decided, cap
            );
        }
    }
}
