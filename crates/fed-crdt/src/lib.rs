//! Conflict-free replicated data types for exo-federation.
//!
//! `fed-crdt` keeps state shared by federation members eventually
//! consistent. It provides:
//!
//! * [`Hlc`] stamps and the [`HlcClock`] that issues them: hybrid logical
//!   time (physical milliseconds, logical counter, node id) with a total
//!   order, and a maximum forward skew so that a peer whose clock runs in the
//!   future cannot win every write.
//! * [`LwwRegister`] and [`LwwMap`]: last-writer-wins types whose merge is
//!   commutative, associative and idempotent even when two writes carry the
//!   same stamp (ties are broken on the values' canonical bytes and
//!   reported as [`Conflict`]s). The map keeps tombstones until a
//!   caller-supplied stability horizon lets them be collected.
//! * Delta-state sync: a replica sends its [`Frontier`] in a
//!   [`SyncRequest`]; the peer answers with bounded [`MapDelta`] chunks
//!   holding only what is missing, or a chunked snapshot when a delta cannot
//!   be trusted to be complete. Network input goes through the `ingest_*`
//!   functions: [`LwwMap::ingest_delta`] merges a chunk's entries from any
//!   peer and believes none of its claims (frontier, collected floors,
//!   horizon, omissions); [`LwwMap::ingest_trusted_delta`], for a trusted
//!   peer or certified snapshot, also adopts them, and applying all the
//!   chunks of a snapshot gives exactly what a trusted merge of the full
//!   state gives ([`LwwMap::ingest_trusted_state`]). Every chunk of one
//!   series goes through the same path.
//! * [`reconcile`]: the order- and duplicate-independent merge of many peers'
//!   query responses into one deduplicated top-k with provenance, each
//!   response attributed to its authenticated sender and each sender
//!   deciding at most a bounded share of the result.
//! * A wire format for all of the above: postcard inside a small versioned
//!   envelope ([`Codec`], [`MessageKind`]), with every decoder bounded by
//!   [`Limits`] and returning a typed [`Error`], never panicking. The
//!   format is specified byte by byte in `docs/protocol/crdt.md`.
//!
//! The correct CRDTs of the [`crdts`] crate are re-exported as they are
//! ([`GSet`], [`Orswot`], [`GCounter`], [`PNCounter`], [`VClock`]), with
//! bounded [`Codec`] implementations; they sync by full state.
//!
//! What it does not do: no IO, no async runtime, no reading of the system
//! clock (every operation that needs time takes `now_ms`), no
//! authentication or encryption of messages (the mesh seals its channels),
//! no membership, and no choice of the garbage-collection horizon (the
//! caller passes a stable one, such as a PBFT stable checkpoint). It depends
//! on no other `fed-*` crate, so the CRDTs can be used on their own.
//!
//! # Example: two replicas syncing by deltas
//!
//! ```
//! use fed_crdt::{Codec, HlcClock, Limits, LwwMap, MapDelta, ReplicaId, SyncRequest};
//!
//! type Map = LwwMap<String, String>;
//!
//! /// Brings `to` up to date with `from`, through encoded messages.
//! /// `trusted`: whether `to` believes `from`'s claims about what it has seen.
//! fn pull(
//!     from: &Map,
//!     to: &mut Map,
//!     clock: &mut HlcClock,
//!     now: u64,
//!     trusted: bool,
//! ) -> fed_crdt::Result<()> {
//!     let limits = Limits::default();
//!     let mut request = to.sync_request();
//!     loop {
//!         let on_wire = request.encode(&limits)?; // to -> from
//!         let request_in = SyncRequest::<String>::decode(&on_wire, &limits)?;
//!         let on_wire = from.delta_for(&request_in, &limits)?.encode(&limits)?; // from -> to
//!         let delta = MapDelta::decode(&on_wire, &limits)?;
//!         let applied = if trusted {
//!             to.ingest_trusted_delta(delta, clock, now)?
//!         } else {
//!             to.ingest_delta(delta, clock, now)?
//!         };
//!         match applied.next {
//!             Some(next) => request = next, // more chunks to fetch
//!             None => return Ok(()),
//!         }
//!     }
//! }
//!
//! # fn main() -> fed_crdt::Result<()> {
//! let mut clock_a = HlcClock::with_default_skew(ReplicaId::from_u64(1));
//! let mut clock_b = HlcClock::with_default_skew(ReplicaId::from_u64(2));
//! let (mut a, mut b) = (Map::new(), Map::new());
//! let now = 1_700_000_000_000; // wall-clock milliseconds, always passed in
//!
//! a.insert("colour".into(), "blue".into(), &mut clock_a, now)?;
//! a.insert("shape".into(), "round".into(), &mut clock_a, now)?;
//! a.insert("size".into(), "large".into(), &mut clock_a, now)?;
//! b.insert("colour".into(), "red".into(), &mut clock_b, now + 5)?;
//! b.remove("shape".into(), &mut clock_b, now + 6)?;
//!
//! // From a peer that may be dishonest: entries merge, claims are ignored.
//! pull(&a, &mut b, &mut clock_b, now + 10, false)?;
//! pull(&b, &mut a, &mut clock_a, now + 10, false)?;
//!
//! assert_eq!(a.get("colour"), Some(&"red".to_string())); // the later write won
//! assert!(!a.contains_key("shape")); // the later removal won
//! assert_eq!(b.get("size"), Some(&"large".to_string()));
//! assert!(a.entries().eq(b.entries()));
//! // B did not adopt A's frontier, so A would send its write to "size" again...
//! assert_eq!(a.delta_for(&b.sync_request(), &Limits::default())?.len(), 1);
//! // ...until B syncs with A on the trusted path; then the next delta carries nothing.
//! pull(&a, &mut b, &mut clock_b, now + 20, true)?;
//! assert!(a.delta_for(&b.sync_request(), &Limits::default())?.is_empty());
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod frontier;
mod hlc;
mod id;
mod interop;
mod map;
mod reconcile;
mod register;
mod sync;
mod wire;

pub use crdts;
#[doc(no_inline)]
pub use crdts::{CmRDT, CvRDT, Dot, GCounter, GSet, Orswot, PNCounter, VClock};

pub use crate::{
    error::{Error, Result},
    frontier::Frontier,
    hlc::{DEFAULT_MAX_FORWARD_SKEW_MS, Hlc, HlcClock},
    id::ReplicaId,
    map::{Entry, LwwMap},
    reconcile::{
        Hit, PatternId, Provenance, QueryResponse, ReconcileConfig, Reconciled, ReconciledHit,
        Reconciler, RejectReason, Rejection, reconcile,
    },
    register::{Conflict, LwwRegister, MergeOutcome},
    sync::{Applied, MapDelta, SyncRequest},
    wire::{Codec, HEADER_LEN, Limits, MAGIC, MessageKind, WIRE_VERSION, peek_kind},
};
