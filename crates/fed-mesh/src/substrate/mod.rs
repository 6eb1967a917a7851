//! Substrates: where a node keeps its patterns, and how the mesh searches them.
//!
//! A [`Substrate`] stores [`Pattern`]s (an id, an embedding, metadata and a
//! timestamp), answers [`PatternQuery`]s with scored matches, and applies
//! committed [`StateUpdate`]s. The trait is object safe (`Arc<dyn Substrate>`)
//! and async, so a substrate can sit on a database or a remote index; the mesh
//! calls it from its IO layer, never from the sans-IO core.
//!
//! [`MemorySubstrate`] is the embedded default: exact cosine similarity over
//! vectors held in memory.

pub(crate) mod memory;

use std::collections::BTreeMap;

use async_trait::async_trait;
pub use fed_crdt::PatternId;
use serde::{Deserialize, Serialize};

pub use self::memory::MemorySubstrate;

/// Largest embedding dimension the mesh accepts in a query or a pattern.
pub const MAX_DIMENSION: usize = 4096;
/// Most metadata entries on one pattern, or filter terms in one query.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Longest metadata key or value, in bytes.
pub const MAX_METADATA_LEN: usize = 256;
/// Most results one query may ask for.
pub const MAX_TOP_K: usize = 256;

/// A stored pattern: an embedding with metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pattern {
    /// Its identity (a content hash or any 32 bytes the application chooses).
    pub id: PatternId,
    /// The embedding; every pattern of one substrate has the same dimension.
    pub embedding: Vec<f32>,
    /// Application metadata, matched exactly by query filters.
    pub metadata: BTreeMap<String, String>,
    /// When this version was written, Unix milliseconds: between two nodes
    /// holding one pattern id, the newer version wins.
    pub timestamp_ms: u64,
}

/// A similarity query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatternQuery {
    /// The query vector; it must have the substrate's dimension.
    pub embedding: Vec<f32>,
    /// How many results to return at most (1 to [`MAX_TOP_K`]).
    pub top_k: usize,
    /// Metadata a result must carry: every `(key, value)` must match exactly.
    pub filter: BTreeMap<String, String>,
}

impl PatternQuery {
    /// A query for the `top_k` nearest patterns to `embedding`, with no filter.
    pub fn new(embedding: Vec<f32>, top_k: usize) -> Self {
        Self {
            embedding,
            top_k,
            filter: BTreeMap::new(),
        }
    }

    /// Adds a metadata term a result must match.
    pub fn with_filter(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.filter.insert(key.into(), value.into());
        self
    }

    /// Checks the query's form (not its dimension, which only the substrate knows):
    /// a non-empty, finite, non-zero embedding of at most [`MAX_DIMENSION`] values,
    /// `top_k` in `1..=MAX_TOP_K`, and a bounded filter.
    pub fn validate(&self) -> Result<(), SubstrateError> {
        check_embedding(&self.embedding)?;
        if self.top_k == 0 || self.top_k > MAX_TOP_K {
            return Err(SubstrateError::InvalidQuery(format!(
                "top_k must be 1 to {MAX_TOP_K}, got {}",
                self.top_k
            )));
        }
        check_metadata(&self.filter).map_err(SubstrateError::InvalidQuery)
    }

    /// Whether `metadata` satisfies the filter.
    pub fn matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.filter
            .iter()
            .all(|(k, v)| metadata.get(k).is_some_and(|m| m == v))
    }
}

/// A pattern that matched a query, with its cosine similarity in `[-1, 1]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredPattern {
    /// The pattern.
    pub pattern: Pattern,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// A committed update a substrate applies, in commit order, on every member.
///
/// The consensus layer (Byzantine commits) delivers these; the mesh's own
/// updates (membership, revocations) never reach the substrate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StateUpdate {
    /// Store (or replace) a pattern.
    StorePattern(Pattern),
    /// Remove a pattern.
    RemovePattern(PatternId),
    /// An application-defined update; [`Substrate::apply`]'s default ignores it.
    Opaque {
        /// What kind of update, for the application.
        kind: String,
        /// Its bytes.
        bytes: Vec<u8>,
    },
}

/// Why a substrate refused a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubstrateError {
    /// The embedding's dimension differs from the substrate's.
    #[error(
        "dimension mismatch: the substrate holds {expected}-dimensional patterns, got {actual}"
    )]
    DimensionMismatch {
        /// The substrate's dimension.
        expected: usize,
        /// The dimension given.
        actual: usize,
    },
    /// The embedding is empty, too long, all zeros, or holds a NaN or an infinity.
    #[error("invalid embedding: {0}")]
    InvalidEmbedding(String),
    /// The query is malformed (bad `top_k` or filter).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The pattern's metadata breaks a bound.
    #[error("invalid metadata: {0}")]
    InvalidMetadata(String),
    /// The substrate is full.
    #[error("the substrate is full ({capacity} patterns)")]
    Full {
        /// Its capacity.
        capacity: usize,
    },
    /// A storage or backend failure.
    #[error("substrate backend: {0}")]
    Backend(String),
}

/// Where a node keeps its patterns. Object safe: the mesh holds an
/// `Arc<dyn Substrate>`.
///
/// Implementations must be safe to call concurrently; the mesh runs searches
/// for several queries at once.
#[async_trait]
pub trait Substrate: Send + Sync + 'static {
    /// The embedding dimension, once known (`None` for an empty substrate that
    /// takes its dimension from its first pattern).
    fn dimension(&self) -> Option<usize>;

    /// Stores or replaces a pattern. A pattern whose id is held already with a
    /// newer timestamp is ignored (returns `Ok(false)`).
    async fn store(&self, pattern: Pattern) -> Result<bool, SubstrateError>;

    /// Removes a pattern; `Ok(false)` if it was not held.
    async fn remove(&self, id: &PatternId) -> Result<bool, SubstrateError>;

    /// Fetches a pattern by id.
    async fn get(&self, id: &PatternId) -> Result<Option<Pattern>, SubstrateError>;

    /// The `query.top_k` most similar patterns that match the filter, best first
    /// (score descending, then pattern id ascending).
    async fn search(&self, query: &PatternQuery) -> Result<Vec<ScoredPattern>, SubstrateError>;

    /// How many patterns are held.
    async fn len(&self) -> usize;

    /// Whether no pattern is held.
    async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// Applies a committed update. The default stores and removes patterns and
    /// ignores opaque updates.
    ///
    /// At least once, in commit order: a voter restarted after a crash may
    /// apply again a run of updates it applied before (those after its
    /// replica's last checkpoint, pbft.md §5), so an implementation must give
    /// the same state when a suffix of the sequence is applied twice (storing
    /// and removing by id does).
    async fn apply(&self, update: &StateUpdate) -> Result<(), SubstrateError> {
        match update {
            StateUpdate::StorePattern(p) => self.store(p.clone()).await.map(|_| ()),
            StateUpdate::RemovePattern(id) => self.remove(id).await.map(|_| ()),
            StateUpdate::Opaque { .. } => Ok(()),
        }
    }
}

/// Checks an embedding: non-empty, at most [`MAX_DIMENSION`] values, all finite,
/// not all zero.
pub fn check_embedding(embedding: &[f32]) -> Result<(), SubstrateError> {
    if embedding.is_empty() {
        return Err(SubstrateError::InvalidEmbedding("empty".into()));
    }
    if embedding.len() > MAX_DIMENSION {
        return Err(SubstrateError::InvalidEmbedding(format!(
            "{} values, more than {MAX_DIMENSION}",
            embedding.len()
        )));
    }
    if let Some(i) = embedding.iter().position(|x| !x.is_finite()) {
        return Err(SubstrateError::InvalidEmbedding(format!(
            "value {i} is not finite"
        )));
    }
    if embedding.iter().all(|&x| x == 0.0) {
        return Err(SubstrateError::InvalidEmbedding(
            "all zeros (no direction)".into(),
        ));
    }
    Ok(())
}

/// Checks metadata or a filter against the bounds.
pub(crate) fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), String> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(format!(
            "{} entries, more than {MAX_METADATA_ENTRIES}",
            metadata.len()
        ));
    }
    for (k, v) in metadata {
        if k.len() > MAX_METADATA_LEN || v.len() > MAX_METADATA_LEN {
            return Err(format!(
                "key or value of {:?} longer than {MAX_METADATA_LEN} bytes",
                k.chars().take(32).collect::<String>()
            ));
        }
    }
    Ok(())
}
