//! The embedded default substrate: exact cosine top-k over vectors in memory.

use std::{
    cmp::{Ordering, Reverse},
    collections::{BTreeMap, BinaryHeap, HashMap},
    sync::RwLock,
};

use async_trait::async_trait;

use super::{
    Pattern, PatternId, PatternQuery, ScoredPattern, Substrate, SubstrateError, check_embedding,
    check_metadata,
};

/// An in-memory vector store with exact cosine similarity.
///
/// Embeddings sit in one contiguous row-major array beside each row's inverse
/// norm, so a search is one pass over the array: a dot product per row (written
/// so that the compiler vectorises it), a multiplication by the row's inverse
/// norm, and a `k`-sized heap; the metadata filter is consulted only for rows that
/// would enter the heap. A search costs `O(n·d + n·log k)` and no allocation per
/// row. Removal moves the last row into the hole, so it is `O(d)`.
///
/// The dimension is fixed by the first pattern stored (or by
/// [`with_dimension`](Self::with_dimension)); a pattern or query of another
/// dimension is refused with [`SubstrateError::DimensionMismatch`], and empty,
/// all-zero or non-finite embeddings with [`SubstrateError::InvalidEmbedding`].
///
/// Memory: `4·d + 4` bytes per pattern for the vectors, plus its id, metadata
/// and an index entry. [`with_capacity_limit`](Self::with_capacity_limit) bounds
/// the number of patterns.
#[derive(Debug, Default)]
pub struct MemorySubstrate {
    inner: RwLock<Inner>,
    limit: Option<usize>,
}

#[derive(Debug, Default)]
struct Inner {
    dimension: Option<usize>,
    /// Row-major embeddings, `dimension` values per row, as stored.
    vectors: Vec<f32>,
    /// `1 / |row|` per row.
    inverse_norms: Vec<f32>,
    rows: Vec<Row>,
    index: HashMap<PatternId, usize>,
}

#[derive(Debug)]
struct Row {
    id: PatternId,
    metadata: BTreeMap<String, String>,
    timestamp_ms: u64,
}

impl MemorySubstrate {
    /// An empty store that takes its dimension from the first pattern.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store for `dimension`-dimensional embeddings.
    pub fn with_dimension(dimension: usize) -> Self {
        Self {
            inner: RwLock::new(Inner {
                dimension: Some(dimension),
                ..Inner::default()
            }),
            limit: None,
        }
    }

    /// Refuses to hold more than `limit` patterns ([`SubstrateError::Full`]).
    pub fn with_capacity_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated in a
        // way that breaks reads (every update is a push or a swap), so a
        // poisoned lock is still usable.
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What [`insert`](Self::insert) would answer for `pattern`, without storing
    /// it: `Ok(false)` if a newer version is held, an error if it would be
    /// refused. A store that writes elsewhere first (a database) asks this
    /// before it writes.
    pub fn would_accept(&self, pattern: &Pattern) -> Result<bool, SubstrateError> {
        check_embedding(&pattern.embedding)?;
        check_metadata(&pattern.metadata).map_err(SubstrateError::InvalidMetadata)?;
        let inner = self.read();
        if let Some(dim) = inner.dimension
            && pattern.embedding.len() != dim
        {
            return Err(SubstrateError::DimensionMismatch {
                expected: dim,
                actual: pattern.embedding.len(),
            });
        }
        if let Some(&at) = inner.index.get(&pattern.id) {
            return Ok(inner.rows[at].timestamp_ms <= pattern.timestamp_ms);
        }
        if let Some(limit) = self.limit
            && inner.rows.len() >= limit
        {
            return Err(SubstrateError::Full { capacity: limit });
        }
        Ok(true)
    }

    /// Fetches a pattern synchronously (what [`Substrate::get`] does).
    pub fn pattern(&self, id: &PatternId) -> Option<Pattern> {
        let inner = self.read();
        let dim = inner.dimension.unwrap_or(0);
        inner.index.get(id).map(|&at| inner.pattern(at, dim))
    }

    /// Stores a pattern synchronously (what [`Substrate::store`] does).
    pub fn insert(&self, pattern: Pattern) -> Result<bool, SubstrateError> {
        check_embedding(&pattern.embedding)?;
        check_metadata(&pattern.metadata).map_err(SubstrateError::InvalidMetadata)?;
        let mut inner = self.write();
        let dim = *inner.dimension.get_or_insert(pattern.embedding.len());
        if pattern.embedding.len() != dim {
            return Err(SubstrateError::DimensionMismatch {
                expected: dim,
                actual: pattern.embedding.len(),
            });
        }
        let inverse_norm = inverse_norm(&pattern.embedding);
        let row = Row {
            id: pattern.id,
            metadata: pattern.metadata,
            timestamp_ms: pattern.timestamp_ms,
        };
        if let Some(&at) = inner.index.get(&pattern.id) {
            if inner.rows[at].timestamp_ms > row.timestamp_ms {
                return Ok(false);
            }
            inner.vectors[at * dim..(at + 1) * dim].copy_from_slice(&pattern.embedding);
            inner.inverse_norms[at] = inverse_norm;
            inner.rows[at] = row;
            return Ok(true);
        }
        if let Some(limit) = self.limit
            && inner.rows.len() >= limit
        {
            return Err(SubstrateError::Full { capacity: limit });
        }
        let at = inner.rows.len();
        inner.vectors.extend_from_slice(&pattern.embedding);
        inner.inverse_norms.push(inverse_norm);
        inner.index.insert(pattern.id, at);
        inner.rows.push(row);
        Ok(true)
    }

    /// Searches synchronously (what [`Substrate::search`] does).
    pub fn query(&self, query: &PatternQuery) -> Result<Vec<ScoredPattern>, SubstrateError> {
        query.validate()?;
        let inner = self.read();
        let Some(dim) = inner.dimension else {
            return Ok(Vec::new());
        };
        if query.embedding.len() != dim {
            return Err(SubstrateError::DimensionMismatch {
                expected: dim,
                actual: query.embedding.len(),
            });
        }
        let q_inv = inverse_norm(&query.embedding);
        let q: Vec<f32> = query.embedding.iter().map(|x| x * q_inv).collect();
        let k = query.top_k;
        // A min-heap of the best k so far: the root is the worst kept.
        let mut heap: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(k + 1);
        for (i, (row, inv)) in inner
            .vectors
            .chunks_exact(dim)
            .zip(&inner.inverse_norms)
            .enumerate()
        {
            let score = dot(&q, row) * inv;
            let candidate = Ranked {
                score,
                id: inner.rows[i].id,
                row: i,
            };
            if heap.len() == k
                && heap
                    .peek()
                    .is_some_and(|Reverse(worst)| candidate.cmp(worst) != Ordering::Greater)
            {
                continue;
            }
            if !query.filter.is_empty() && !query.matches(&inner.rows[i].metadata) {
                continue;
            }
            heap.push(Reverse(candidate));
            if heap.len() > k {
                heap.pop();
            }
        }
        let mut best: Vec<Ranked> = heap.into_iter().map(|Reverse(r)| r).collect();
        best.sort_by(|a, b| b.cmp(a));
        Ok(best
            .into_iter()
            .map(|r| ScoredPattern {
                score: r.score.clamp(-1.0, 1.0),
                pattern: inner.pattern(r.row, dim),
            })
            .collect())
    }

    /// Removes a pattern synchronously.
    pub fn delete(&self, id: &PatternId) -> bool {
        let mut inner = self.write();
        let Some(at) = inner.index.remove(id) else {
            return false;
        };
        let dim = inner.dimension.unwrap_or(0);
        let last = inner.rows.len() - 1;
        if at != last {
            let (head, tail) = inner.vectors.split_at_mut(last * dim);
            head[at * dim..(at + 1) * dim].copy_from_slice(&tail[..dim]);
            inner.inverse_norms.swap(at, last);
            inner.rows.swap(at, last);
            let moved = inner.rows[at].id;
            inner.index.insert(moved, at);
        }
        inner.vectors.truncate(last * dim);
        inner.inverse_norms.truncate(last);
        inner.rows.truncate(last);
        true
    }

    /// How many patterns are held.
    pub fn count(&self) -> usize {
        self.read().rows.len()
    }
}

impl Inner {
    fn pattern(&self, at: usize, dim: usize) -> Pattern {
        let row = &self.rows[at];
        Pattern {
            id: row.id,
            embedding: self.vectors[at * dim..(at + 1) * dim].to_vec(),
            metadata: row.metadata.clone(),
            timestamp_ms: row.timestamp_ms,
        }
    }
}

/// A candidate in the heap: ordered by score, then by pattern id descending, so
/// that "greater" means "ranks first" (higher score, then lower id).
#[derive(Clone, Copy)]
struct Ranked {
    score: f32,
    id: PatternId,
    row: usize,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.id.cmp(&self.id))
    }
}

/// `1 / |v|`; `v` is finite and not all zero (checked by the callers).
fn inverse_norm(v: &[f32]) -> f32 {
    1.0 / dot(v, v).sqrt()
}

/// Dot product with eight independent accumulators, which the compiler turns into
/// SIMD multiply-adds.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() - a.len() % 8);
    let (b8, b_rest) = b.split_at(b.len() - b.len() % 8);
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut sum = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in a_rest.iter().zip(b_rest) {
        sum += x * y;
    }
    sum
}

#[async_trait]
impl Substrate for MemorySubstrate {
    fn dimension(&self) -> Option<usize> {
        self.read().dimension
    }

    async fn store(&self, pattern: Pattern) -> Result<bool, SubstrateError> {
        self.insert(pattern)
    }

    async fn remove(&self, id: &PatternId) -> Result<bool, SubstrateError> {
        Ok(self.delete(id))
    }

    async fn get(&self, id: &PatternId) -> Result<Option<Pattern>, SubstrateError> {
        Ok(self.pattern(id))
    }

    async fn search(&self, query: &PatternQuery) -> Result<Vec<ScoredPattern>, SubstrateError> {
        self.query(query)
    }

    async fn len(&self) -> usize {
        self.count()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pattern(n: u64, embedding: Vec<f32>) -> Pattern {
        Pattern {
            id: PatternId::from_u64(n),
            embedding,
            metadata: BTreeMap::new(),
            timestamp_ms: 1,
        }
    }

    /// The obvious implementation: score everything, sort, cut.
    fn brute_force(store: &[Pattern], query: &PatternQuery) -> Vec<(PatternId, f32)> {
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let mut all: Vec<(PatternId, f32)> = store
            .iter()
            .filter(|p| query.matches(&p.metadata))
            .map(|p| {
                let d: f32 = p
                    .embedding
                    .iter()
                    .zip(&query.embedding)
                    .map(|(a, b)| a * b)
                    .sum();
                (p.id, d / (norm(&p.embedding) * norm(&query.embedding)))
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(query.top_k);
        all
    }

    #[test]
    fn finds_the_nearest_patterns_best_first() {
        let s = MemorySubstrate::new();
        s.insert(pattern(1, vec![1.0, 0.0])).unwrap();
        s.insert(pattern(2, vec![0.0, 1.0])).unwrap();
        s.insert(pattern(3, vec![1.0, 1.0])).unwrap();
        let hits = s.query(&PatternQuery::new(vec![1.0, 0.1], 2)).unwrap();
        let ids: Vec<_> = hits.iter().map(|h| h.pattern.id).collect();
        assert_eq!(ids, vec![PatternId::from_u64(1), PatternId::from_u64(3)]);
        assert!(hits[0].score > hits[1].score);
        // The stored embedding comes back as stored, not normalised.
        assert_eq!(hits[1].pattern.embedding, vec![1.0, 1.0]);
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_error() {
        let s = MemorySubstrate::with_dimension(3);
        assert_eq!(
            s.insert(pattern(1, vec![1.0, 2.0])),
            Err(SubstrateError::DimensionMismatch {
                expected: 3,
                actual: 2
            })
        );
        assert!(matches!(
            s.insert(pattern(1, vec![f32::NAN, 1.0, 1.0])),
            Err(SubstrateError::InvalidEmbedding(_))
        ));
        assert!(matches!(
            s.insert(pattern(1, vec![0.0; 3])),
            Err(SubstrateError::InvalidEmbedding(_))
        ));
        assert!(matches!(
            s.query(&PatternQuery::new(vec![], 1)),
            Err(SubstrateError::InvalidEmbedding(_))
        ));
        assert!(matches!(
            s.query(&PatternQuery::new(vec![1.0, 1.0], 1)),
            Err(SubstrateError::DimensionMismatch { .. })
        ));
        assert!(matches!(
            s.query(&PatternQuery::new(vec![1.0, 1.0, f32::INFINITY], 1)),
            Err(SubstrateError::InvalidEmbedding(_))
        ));
        assert!(matches!(
            s.query(&PatternQuery::new(vec![1.0, 1.0, 1.0], 0)),
            Err(SubstrateError::InvalidQuery(_))
        ));
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn newer_versions_replace_older_ones_and_removal_keeps_the_index_right() {
        let s = MemorySubstrate::new();
        for n in 0..5 {
            s.insert(pattern(n, vec![n as f32 + 1.0, 1.0])).unwrap();
        }
        let mut older = pattern(2, vec![-1.0, 0.0]);
        older.timestamp_ms = 0;
        assert_eq!(s.insert(older), Ok(false));
        let mut newer = pattern(2, vec![-1.0, 0.0]);
        newer.timestamp_ms = 5;
        assert_eq!(s.insert(newer), Ok(true));
        assert!(s.delete(&PatternId::from_u64(0)));
        assert!(!s.delete(&PatternId::from_u64(0)));
        assert_eq!(s.count(), 4);
        let worst = s.query(&PatternQuery::new(vec![-1.0, 0.0], 1)).unwrap();
        assert_eq!(worst[0].pattern.id, PatternId::from_u64(2));
        assert!((worst[0].score - 1.0).abs() < 1e-6);
        // The row moved into the hole is still found under its own id.
        let moved = futures::executor::block_on(s.get(&PatternId::from_u64(4))).unwrap();
        assert_eq!(moved.unwrap().embedding, vec![5.0, 1.0]);
    }

    #[test]
    fn the_capacity_limit_holds() {
        let s = MemorySubstrate::new().with_capacity_limit(2);
        s.insert(pattern(1, vec![1.0])).unwrap();
        s.insert(pattern(2, vec![1.0])).unwrap();
        assert_eq!(
            s.insert(pattern(3, vec![1.0])),
            Err(SubstrateError::Full { capacity: 2 })
        );
        // Replacing a held pattern is not growth.
        s.insert(pattern(2, vec![2.0])).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_cases(64)))]

        /// The heap-based search returns exactly what scoring and sorting everything does.
        #[test]
        fn search_equals_brute_force(
            rows in proptest::collection::vec(
                (proptest::collection::vec(-4i8..4, 5), 0u8..3), 1..60),
            q in proptest::collection::vec(-4i8..4, 5),
            k in 1usize..12,
            filtered in any::<bool>(),
        ) {
            prop_assume!(q.iter().any(|&x| x != 0));
            let s = MemorySubstrate::new();
            let mut stored = Vec::new();
            for (n, (v, tag)) in rows.into_iter().enumerate() {
                if v.iter().all(|&x| x == 0) { continue; }
                let mut p = pattern(n as u64, v.iter().map(|&x| f32::from(x)).collect());
                p.metadata.insert("tag".into(), tag.to_string());
                s.insert(p.clone()).unwrap();
                stored.push(p);
            }
            let mut query = PatternQuery::new(q.iter().map(|&x| f32::from(x)).collect(), k);
            if filtered { query = query.with_filter("tag", "1"); }
            let got: Vec<(PatternId, f32)> = s.query(&query).unwrap()
                .into_iter().map(|h| (h.pattern.id, h.score)).collect();
            let mut everything = query.clone();
            everything.top_k = usize::MAX;
            let ranking = brute_force(&stored, &everything);
            let want: Vec<_> = ranking.iter().take(k).copied().collect();
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert!((g.1 - w.1).abs() < 1e-5, "{:?} vs {:?}", got, want);
            }
            // Equal scores (parallel vectors) may be ordered differently only by
            // float noise; ids agree wherever the scores of the first k + 1 of
            // the whole ranking are clearly apart.
            let ids_got: Vec<_> = got.iter().map(|g| g.0).collect();
            let ids_want: Vec<_> = want.iter().map(|w| w.0).collect();
            let head: Vec<_> = ranking.iter().take(k + 1).collect();
            if head.windows(2).all(|w| (w[0].1 - w[1].1).abs() > 1e-4) {
                prop_assert_eq!(ids_got, ids_want);
            }
        }
    }
}
