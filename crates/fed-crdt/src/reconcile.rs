//! Order-independent reconciliation of federated query responses.

use core::{cmp::Ordering, fmt};
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    error::{Error, Result},
    hlc::{DEFAULT_MAX_FORWARD_SKEW_MS, Hlc},
    id::ReplicaId,
    register::canonical_bytes,
    wire::{Codec, Limits, MAX_PREALLOC, MessageKind, Reader, Writer},
};

/// Identity of a stored pattern: 32 bytes (a content hash or any id a
/// substrate maps onto 32 bytes). On the wire: the 32 bytes, no prefix.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct PatternId([u8; 32]);

impl PatternId {
    /// Wraps 32 bytes.
    pub const fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// An id whose last 8 bytes are `n` big-endian (the rest zero); for
    /// tests and examples.
    pub const fn from_u64(n: u64) -> Self {
        Self(*ReplicaId::from_u64(n).as_bytes())
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PatternId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PatternId(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..")?;
        for b in &self.0[28..] {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// One search result from one peer.
///
/// Wire form: pattern (32 bytes), score (`f32`, 4 bytes little-endian),
/// version ([`Hlc`]), payload (postcard).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit<P> {
    /// The pattern found.
    pub pattern: PatternId,
    /// Similarity score; higher ranks first. Must be finite.
    pub score: f32,
    /// Stamp of the pattern version the peer holds; the newest wins.
    pub version: Hlc,
    /// Application data (for example the embedding and its metadata).
    pub payload: P,
}

/// One peer's answer to a federated query.
///
/// Wire form ([`MessageKind::QueryResponse`]): source (32 bytes), hit count
/// (varint, at most [`Limits::max_hits`]), then each [`Hit`]. A NaN or
/// infinite score is refused by the encoder and the decoder
/// ([`Error::Invalid`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResponse<P> {
    /// The peer that answered, as the message claims. Reconciliation never
    /// takes it on trust: it is checked against the authenticated sender the
    /// caller passes to [`Reconciler::add`] or [`reconcile`].
    pub source: ReplicaId,
    /// Its hits, in any order.
    pub hits: Vec<Hit<P>>,
}

/// Parameters of [`reconcile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// How many hits to return at most.
    pub top_k: usize,
    /// How many of the returned hits one source may decide at most. A hit
    /// is decided by the sources that returned its winning hit itself: the
    /// same version, score and payload (canonical bytes); each returned hit
    /// is charged to one of them. A
    /// candidate none of whose deciders has budget left is skipped (counted
    /// in [`Reconciled::capped`]), so one source (or `n` colluding sources)
    /// fills at most this many (`n` times this many) places of the result,
    /// whatever it fabricates. With fewer than `top_k / max_per_source`
    /// sources answering, the result can be shorter than `top_k`.
    pub max_per_source: usize,
    /// A response with more hits is rejected whole (never truncated).
    pub max_hits_per_response: usize,
    /// A response with a hit whose version is more than this far ahead of
    /// `now` is rejected whole.
    pub max_forward_skew_ms: u64,
}

impl Default for ReconcileConfig {
    /// `top_k` 10, `max_per_source` 5, `max_hits_per_response` 1 024 (as
    /// [`Limits::max_hits`]), skew [`DEFAULT_MAX_FORWARD_SKEW_MS`].
    fn default() -> Self {
        Self {
            top_k: 10,
            max_per_source: 5,
            max_hits_per_response: Limits::DEFAULT.max_hits,
            max_forward_skew_ms: DEFAULT_MAX_FORWARD_SKEW_MS,
        }
    }
}

/// Why a response was rejected.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    /// The response names a source other than the authenticated sender.
    SourceMismatch {
        /// The source the response claims.
        claimed: ReplicaId,
    },
    /// More hits than [`ReconcileConfig::max_hits_per_response`].
    TooManyHits {
        /// Hits in the response.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A score was NaN or infinite.
    NonFiniteScore {
        /// The pattern carrying it.
        pattern: PatternId,
    },
    /// A version stamp was too far in the future.
    FutureVersion {
        /// The pattern carrying it.
        pattern: PatternId,
        /// The stamp's physical milliseconds.
        physical_ms: u64,
    },
}

/// A rejected response: who sent it and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rejection {
    /// The authenticated sender of the response.
    pub source: ReplicaId,
    /// The reason.
    pub reason: RejectReason,
}

/// What one source said about a pattern (its newest version, and the best
/// score it gave that version).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Provenance {
    /// The peer.
    pub source: ReplicaId,
    /// Newest version it returned.
    pub version: Hlc,
    /// Its score for that version.
    pub score: f32,
}

/// One deduplicated result.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconciledHit<P> {
    /// The pattern.
    pub pattern: PatternId,
    /// Score of the winning hit.
    pub score: f32,
    /// The newest version seen.
    pub version: Hlc,
    /// Payload of the winning hit.
    pub payload: P,
    /// Every source that returned the pattern, in ascending source order.
    pub provenance: Vec<Provenance>,
}

/// The result of [`reconcile`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled<P> {
    /// At most `top_k` hits: score descending, then pattern id ascending.
    pub hits: Vec<ReconciledHit<P>>,
    /// Distinct patterns seen before the top-k cut.
    pub candidates: usize,
    /// Candidates ranked above the last returned hit (or anywhere, if fewer
    /// than `top_k` hits are returned) that were skipped because every
    /// source deciding them had used its [`ReconcileConfig::max_per_source`].
    pub capped: usize,
    /// Rejected responses, sorted, without duplicates.
    pub rejected: Vec<Rejection>,
    /// Patterns whose newest version arrived with different scores or
    /// payloads (a misbehaving or cloned peer), sorted.
    pub conflicts: Vec<PatternId>,
}

struct Candidate<P> {
    best: Hit<P>,
    conflict: bool,
    provenance: BTreeMap<ReplicaId, (Hlc, f32)>,
    /// The sources that returned `best` itself (same version, score and
    /// canonical payload bytes): the pattern's deciders.
    deciders: BTreeSet<ReplicaId>,
}

/// Orders two hits of the same pattern: version, then score, then the
/// payload's canonical bytes. The flag is true for equal versions with
/// different content.
fn hit_cmp<P: Serialize>(a: &Hit<P>, b: &Hit<P>) -> (Ordering, bool) {
    match a.version.cmp(&b.version) {
        Ordering::Equal => {
            let ord = a
                .score
                .total_cmp(&b.score)
                .then_with(|| canonical_bytes(&a.payload).cmp(&canonical_bytes(&b.payload)));
            (ord, ord != Ordering::Equal)
        }
        ord => (ord, false),
    }
}

/// Incremental form of [`reconcile`]: add responses as they arrive, then
/// [`finish`](Self::finish). The result does not depend on the order of
/// `add` calls nor on repeated responses.
///
/// Memory: one candidate per distinct pattern, so at most
/// `accepted responses x max_hits_per_response`, each with one provenance
/// entry per source; the caller bounds the number of responses (the mesh
/// bounds its fan-out).
pub struct Reconciler<P> {
    config: ReconcileConfig,
    now_ms: u64,
    candidates: BTreeMap<PatternId, Candidate<P>>,
    rejected: BTreeSet<Rejection>,
}

impl<P: Serialize> Reconciler<P> {
    /// A reconciler judging version skew against wall-clock time `now_ms`.
    pub fn new(config: ReconcileConfig, now_ms: u64) -> Self {
        Self {
            config,
            now_ms,
            candidates: BTreeMap::new(),
            rejected: BTreeSet::new(),
        }
    }

    fn check(&self, response: &QueryResponse<P>) -> core::result::Result<(), RejectReason> {
        let max = self.config.max_hits_per_response;
        if response.hits.len() > max {
            return Err(RejectReason::TooManyHits {
                count: response.hits.len(),
                max,
            });
        }
        let latest = self.now_ms.saturating_add(self.config.max_forward_skew_ms);
        for hit in &response.hits {
            if !hit.score.is_finite() {
                return Err(RejectReason::NonFiniteScore {
                    pattern: hit.pattern,
                });
            }
            if hit.version.physical_ms() > latest {
                return Err(RejectReason::FutureVersion {
                    pattern: hit.pattern,
                    physical_ms: hit.version.physical_ms(),
                });
            }
        }
        Ok(())
    }

    /// Adds one response received from `source`, the sender as the
    /// transport authenticated it (never taken from the message). A response
    /// breaking a rule, including one whose own `source` field names another
    /// peer ([`RejectReason::SourceMismatch`]), is rejected whole (recorded
    /// for [`Reconciled::rejected`] under `source`) and its reason returned.
    pub fn add(
        &mut self,
        source: ReplicaId,
        response: QueryResponse<P>,
    ) -> core::result::Result<(), RejectReason> {
        let checked = if response.source == source {
            self.check(&response)
        } else {
            Err(RejectReason::SourceMismatch {
                claimed: response.source,
            })
        };
        if let Err(reason) = checked {
            self.rejected.insert(Rejection { source, reason });
            return Err(reason);
        }
        for hit in response.hits {
            self.add_hit(source, hit);
        }
        Ok(())
    }

    fn add_hit(&mut self, source: ReplicaId, hit: Hit<P>) {
        use std::collections::btree_map::Entry as Slot;
        let seen = (hit.version, hit.score);
        match self.candidates.entry(hit.pattern) {
            Slot::Vacant(slot) => {
                slot.insert(Candidate {
                    best: hit,
                    conflict: false,
                    provenance: BTreeMap::from([(source, seen)]),
                    deciders: BTreeSet::from([source]),
                });
            }
            Slot::Occupied(mut slot) => {
                let c = slot.get_mut();
                c.provenance
                    .entry(source)
                    .and_modify(|prev| {
                        if seen.0 > prev.0
                            || (seen.0 == prev.0 && seen.1.total_cmp(&prev.1).is_gt())
                        {
                            *prev = seen;
                        }
                    })
                    .or_insert(seen);
                let newer_version = hit.version > c.best.version;
                let (ord, conflict) = hit_cmp(&hit, &c.best);
                if newer_version {
                    c.conflict = false;
                }
                if conflict {
                    c.conflict = true;
                }
                // Whatever the arrival order, the deciders end up as exactly
                // the sources that returned the greatest hit: a greater hit
                // starts the set again (no source can have returned it
                // before), an equal one joins it.
                match ord {
                    Ordering::Greater => {
                        c.best = hit;
                        c.deciders = BTreeSet::from([source]);
                    }
                    Ordering::Equal => {
                        c.deciders.insert(source);
                    }
                    Ordering::Less => {}
                }
            }
        }
    }

    /// The deduplicated top-k, with at most
    /// [`max_per_source`](ReconcileConfig::max_per_source) hits decided by
    /// any one source.
    pub fn finish(self) -> Reconciled<P> {
        let candidates = self.candidates.len();
        let conflicts = self
            .candidates
            .iter()
            .filter(|(_, c)| c.conflict)
            .map(|(p, _)| *p)
            .collect();
        let mut ranked: Vec<(ReconciledHit<P>, BTreeSet<ReplicaId>)> = self
            .candidates
            .into_values()
            .map(|c| {
                let hit = ReconciledHit {
                    pattern: c.best.pattern,
                    score: c.best.score,
                    version: c.best.version,
                    payload: c.best.payload,
                    provenance: c
                        .provenance
                        .into_iter()
                        .map(|(source, (version, score))| Provenance {
                            source,
                            version,
                            score,
                        })
                        .collect(),
                };
                (hit, c.deciders)
            })
            .collect();
        ranked.sort_by(|(a, _), (b, _)| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.pattern.cmp(&b.pattern))
        });
        let (top_k, cap) = (self.config.top_k, self.config.max_per_source);
        // Results charged to each source so far.
        let mut used: BTreeMap<ReplicaId, usize> = BTreeMap::new();
        let mut hits = Vec::with_capacity(top_k.min(ranked.len()));
        let mut capped = 0;
        for (hit, deciders) in ranked {
            if hits.len() >= top_k {
                break;
            }
            // The deciders: the sources that returned the winning hit itself
            // (at least one). Charge the one with the most budget left, the
            // smallest id among equals.
            let charged = deciders
                .iter()
                .map(|source| (used.get(source).copied().unwrap_or(0), *source))
                .filter(|(n, _)| *n < cap)
                .min();
            match charged {
                Some((n, source)) => {
                    used.insert(source, n + 1);
                    hits.push(hit);
                }
                None => capped += 1,
            }
        }
        Reconciled {
            hits,
            candidates,
            capped,
            rejected: self.rejected.into_iter().collect(),
            conflicts,
        }
    }
}

/// Merges many peers' responses into one deterministic top-k.
///
/// Each response comes with its sender as the transport authenticated it;
/// a response whose `source` field names another peer is rejected
/// ([`RejectReason::SourceMismatch`]).
///
/// * Hits are deduplicated by pattern id; the newest version wins, and
///   between hits of equal version the higher score, then the greater
///   canonical payload bytes (postcard) wins.
/// * Every source that returned a pattern is kept in its provenance, with
///   its own newest version and score.
/// * The result ranks by the winning score, descending, then by pattern id
///   ascending, and keeps the first `top_k`, skipping a hit when every
///   source that decided it already decided `max_per_source` of the hits
///   kept (see [`ReconcileConfig::max_per_source`]).
/// * A response with more than `max_hits_per_response` hits, a non-finite
///   score, or a version more than `max_forward_skew_ms` ahead of `now_ms` is
///   rejected whole and listed in [`Reconciled::rejected`].
///
/// What it trusts: each source about its own hits. Scores, payloads and
/// versions are not authenticated, so a source can fabricate patterns, or
/// claim a newer version of a pattern others returned and so decide its
/// score and payload; the per-source cap bounds how many results it can
/// decide that way, and the provenance shows who agreed.
///
/// The result is the same for any order of `responses` and any repetition
/// of them.
pub fn reconcile<P, I>(responses: I, config: &ReconcileConfig, now_ms: u64) -> Reconciled<P>
where
    P: Serialize,
    I: IntoIterator<Item = (ReplicaId, QueryResponse<P>)>,
{
    let mut r = Reconciler::new(*config, now_ms);
    for (source, response) in responses {
        // A rejection is recorded in the reconciler and reported by `finish`.
        let _ = r.add(source, response);
    }
    r.finish()
}

const NON_FINITE: Error = Error::Invalid {
    reason: "non-finite score",
};

impl<P: Serialize + DeserializeOwned> Codec for QueryResponse<P> {
    const KIND: MessageKind = MessageKind::QueryResponse;

    fn encode(&self, limits: &Limits) -> Result<Vec<u8>> {
        if self.hits.len() > limits.max_hits {
            return Err(Error::TooManyHits {
                count: self.hits.len() as u64,
                max: limits.max_hits,
            });
        }
        if self.hits.iter().any(|h| !h.score.is_finite()) {
            return Err(NON_FINITE);
        }
        let mut w = Writer::new(Self::KIND);
        w.value(&self.source)?;
        w.len(self.hits.len())?;
        for hit in &self.hits {
            w.value(hit)?;
        }
        w.finish(limits)
    }

    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::open(bytes, Self::KIND, limits)?;
        let source: ReplicaId = r.value()?;
        let n = r.len(limits.max_hits, |count, max| Error::TooManyHits {
            count,
            max,
        })?;
        let mut hits = Vec::with_capacity(n.min(MAX_PREALLOC));
        for _ in 0..n {
            let hit: Hit<P> = r.value()?;
            if !hit.score.is_finite() {
                return Err(NON_FINITE);
            }
            hits.push(hit);
        }
        r.finish()?;
        Ok(Self { source, hits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(p: u64, score: f32, ms: u64, payload: &str) -> Hit<String> {
        Hit {
            pattern: PatternId::from_u64(p),
            score,
            version: Hlc::new(ms, 0, ReplicaId::from_u64(100)),
            payload: payload.to_string(),
        }
    }

    /// A response from `src`, as authenticated and as claimed.
    fn resp(src: u64, hits: Vec<Hit<String>>) -> (ReplicaId, QueryResponse<String>) {
        let source = ReplicaId::from_u64(src);
        (source, QueryResponse { source, hits })
    }

    #[test]
    fn newest_version_wins_provenance_is_kept_and_top_k_is_ranked() {
        let cfg = ReconcileConfig {
            top_k: 2,
            ..ReconcileConfig::default()
        };
        let out = reconcile(
            vec![
                resp(1, vec![hit(1, 0.9, 10, "old"), hit(2, 0.5, 10, "b")]),
                resp(2, vec![hit(1, 0.7, 20, "new"), hit(3, 0.8, 10, "c")]),
            ],
            &cfg,
            1_000,
        );
        assert_eq!(out.candidates, 3);
        assert_eq!(out.hits.len(), 2);
        assert_eq!(out.hits[0].pattern, PatternId::from_u64(3));
        assert_eq!(out.hits[1].payload, "new");
        assert_eq!(out.hits[1].score, 0.7);
        let sources: Vec<_> = out.hits[1].provenance.iter().map(|p| p.source).collect();
        assert_eq!(
            sources,
            vec![ReplicaId::from_u64(1), ReplicaId::from_u64(2)]
        );
        assert!(out.rejected.is_empty() && out.conflicts.is_empty());
    }

    #[test]
    fn oversized_nan_and_future_responses_are_rejected_not_truncated() {
        let cfg = ReconcileConfig {
            top_k: 10,
            max_hits_per_response: 2,
            max_forward_skew_ms: 100,
            ..ReconcileConfig::default()
        };
        let out = reconcile(
            vec![
                resp(
                    1,
                    vec![
                        hit(1, 0.1, 1, "a"),
                        hit(2, 0.2, 1, "b"),
                        hit(3, 0.3, 1, "c"),
                    ],
                ),
                resp(2, vec![hit(4, f32::NAN, 1, "d")]),
                resp(3, vec![hit(5, 0.5, 1_101, "e")]),
                resp(4, vec![hit(6, 0.6, 1_100, "f")]),
            ],
            &cfg,
            1_000,
        );
        assert_eq!(out.hits.len(), 1);
        assert_eq!(out.hits[0].pattern, PatternId::from_u64(6));
        assert_eq!(
            out.rejected.iter().map(|r| r.reason).collect::<Vec<_>>(),
            vec![
                RejectReason::TooManyHits { count: 3, max: 2 },
                RejectReason::NonFiniteScore {
                    pattern: PatternId::from_u64(4)
                },
                RejectReason::FutureVersion {
                    pattern: PatternId::from_u64(5),
                    physical_ms: 1_101
                },
            ]
        );
    }

    #[test]
    fn equal_versions_with_different_content_are_a_conflict_in_any_order() {
        let cfg = ReconcileConfig::default();
        let a = resp(1, vec![hit(1, 0.5, 10, "x")]);
        let b = resp(2, vec![hit(1, 0.5, 10, "y")]);
        let c = resp(3, vec![hit(1, 0.1, 20, "z")]);
        let one = reconcile(vec![a.clone(), b.clone()], &cfg, 100);
        let two = reconcile(vec![b.clone(), a.clone()], &cfg, 100);
        assert_eq!(one, two);
        assert_eq!(one.conflicts, vec![PatternId::from_u64(1)]);
        assert_eq!(one.hits[0].payload, "y");
        // A newer version supersedes the conflicting one.
        let three = reconcile(vec![a, c, b], &cfg, 100);
        assert!(three.conflicts.is_empty());
        assert_eq!(three.hits[0].payload, "z");
    }

    #[test]
    fn a_response_claiming_another_source_is_rejected_under_the_real_sender() {
        let cfg = ReconcileConfig::default();
        let (liar, mut forged) = resp(1, vec![hit(1, 0.9, 10, "fake")]);
        forged.source = ReplicaId::from_u64(2);
        let mut r = Reconciler::new(cfg, 100);
        let reason = RejectReason::SourceMismatch {
            claimed: ReplicaId::from_u64(2),
        };
        assert_eq!(r.add(liar, forged), Err(reason));
        let out = r.finish();
        assert!(out.hits.is_empty());
        assert_eq!(
            out.rejected,
            vec![Rejection {
                source: liar,
                reason
            }]
        );
    }

    #[test]
    fn one_source_decides_at_most_max_per_source_hits() {
        let cfg = ReconcileConfig {
            top_k: 4,
            max_per_source: 2,
            ..ReconcileConfig::default()
        };
        // Source 9 fabricates top-scored hits and a newer version of the
        // honest pattern 1; sources 1 and 2 answer honestly.
        let fabricated = (100..110).map(|p| hit(p, 1e30, 10, "fake"));
        let liar = resp(9, fabricated.chain([hit(1, 1e30, 20, "fake")]).collect());
        let honest_1 = resp(1, vec![hit(1, 0.9, 10, "a"), hit(2, 0.8, 10, "b")]);
        let honest_2 = resp(2, vec![hit(2, 0.8, 10, "b"), hit(3, 0.7, 10, "c")]);
        let out = reconcile(vec![liar, honest_1, honest_2], &cfg, 100);
        let payloads: Vec<_> = out.hits.iter().map(|h| h.payload.as_str()).collect();
        // The liar's takeover of pattern 1 and one fabricated pattern use its
        // two places; the rest are skipped.
        assert_eq!(payloads, vec!["fake", "fake", "b", "c"]);
        assert_eq!(out.hits[0].pattern, PatternId::from_u64(1));
        assert_eq!(out.capped, 9);
        assert_eq!(out.candidates, 13);
        // Two honest sources that agree share the charge: their common hit
        // does not cost either of them a place it needs.
        let cfg = ReconcileConfig {
            top_k: 3,
            max_per_source: 1,
            ..ReconcileConfig::default()
        };
        let both = |src| resp(src, vec![hit(1, 0.9, 10, "a"), hit(2, 0.8, 10, "b")]);
        let out = reconcile(vec![both(1), both(2)], &cfg, 100);
        assert_eq!(out.hits.len(), 2);
        assert_eq!(out.capped, 0);
    }

    #[test]
    fn a_source_whose_payload_wins_a_tie_is_charged_alone() {
        // Source 9 repeats the honest source's versions and scores with
        // payloads that sort higher, so its payloads win every pattern. It
        // decided them alone: the honest source returned other payloads and
        // pays for none of them.
        let cfg = ReconcileConfig {
            top_k: 3,
            max_per_source: 1,
            ..ReconcileConfig::default()
        };
        let honest = resp(1, (1..=3).map(|p| hit(p, 0.9, 10, "a")).collect());
        let liar = resp(9, (1..=3).map(|p| hit(p, 0.9, 10, "zz")).collect());
        let out = reconcile(vec![honest, liar], &cfg, 100);
        let payloads: Vec<_> = out.hits.iter().map(|h| h.payload.as_str()).collect();
        assert_eq!(payloads, vec!["zz"]);
        assert_eq!(out.capped, 2);
        assert_eq!(out.conflicts.len(), 3);
    }
}
