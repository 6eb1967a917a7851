//! The `FederatedMesh` facade: the one crate of exo-federation that does IO.
//!
//! A node holds a store of patterns (embeddings with metadata) behind the
//! [`Substrate`](substrate::Substrate) trait, joins a federation over
//! [libp2p](https://libp2p.io) (TCP with TLS or Noise, Yamux, QUIC; identify,
//! ping, Kademlia), and then:
//!
//! - **joins** through members with the post-quantum fed-handshake, one run each
//!   way per connection, so each side applies its own admission policy and
//!   capability ceiling to the other ([`FederatedMesh::join_federation`]);
//! - **seals** every federation message in the session's channel and checks the
//!   token it issued on every request (capability, expiry, revocation, rate,
//!   requests outstanding), cutting off peers that send malformed, oversized or
//!   forged data;
//! - **answers and runs similarity queries** over [`FederationScope::Local`],
//!   `Direct` (the members it is connected to) or `Global` (forwarded with a hop
//!   limit, bounded fan-out and deduplication), each node signing its own
//!   answer, every node checking every answer, and the origin reconciling them
//!   into one top-k with provenance and reporting every member that timed out,
//!   refused or could not be reached ([`FederatedMesh::federated_query`]);
//! - **routes queries through onion relays** on request (fed-onion, X-Wing per
//!   hop), so that relays learn neither the query nor its origin
//!   ([`QueryOptions::onion`]);
//! - **keeps a directory of members and a shared map** eventually consistent by
//!   fed-crdt delta anti-entropy, every entry signed by its writer
//!   ([`FederatedMesh::put`]).
//!
//! The protocols are specified byte by byte in `docs/protocol/mesh.md`.
//!
//! # Shape
//!
//! - [`core`]: the node's logic as a sans-IO state machine, in the manner of
//!   quinn-proto: inputs with `now`, polled actions, a seeded RNG. The crate's
//!   simulator (the `fed-mesh-sim` crate) runs hundreds of cores under one
//!   virtual clock.
//! - the driver (private): one tokio task that owns the libp2p `Swarm` and the
//!   core and moves events between them, holding no federation logic.
//! - [`FederatedMesh`]: a cheap, cloneable handle that talks to the driver.
//!
//! With default features off (`default-features = false`) the crate is the core,
//! the wire formats and the substrates, without libp2p or tokio.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> fed_mesh::Result<()> {
//! use std::sync::Arc;
//!
//! use fed_mesh::{
//!     FederatedMesh, FederationScope, MeshConfig, QueryOptions,
//!     crypto::Identity,
//!     handshake::{FederationId, Open},
//!     substrate::{MemorySubstrate, PatternQuery},
//! };
//!
//! let identity = Arc::new(Identity::generate(&mut rand::rng(), false));
//! let config = MeshConfig::new(identity, FederationId([7; 32]), Arc::new(Open));
//! let mesh = FederatedMesh::builder(config)
//!     .substrate(MemorySubstrate::new())
//!     .start()
//!     .await?;
//!
//! // Join through a member: its address and the node id it must prove.
//! let member = "/ip4/10.0.0.5/tcp/4001/p2p/12D3KooWRnSTCvZ4nfFkY7aj1ZUdvS8JU4HZrHWFJTYJGPH7SLym#9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".parse()?;
//! let token = mesh.join_federation(&member).await?;
//!
//! let outcome = mesh
//!     .federated_query(
//!         PatternQuery::new(vec![0.1, 0.7, 0.2], 10),
//!         FederationScope::Global { max_hops: 3 },
//!         QueryOptions::default(),
//!     )
//!     .await?;
//! for hit in &outcome.results {
//!     println!("{:?} {:.3} from {:?}", hit.pattern, hit.score, hit.provenance);
//! }
//! for peer in outcome.peers.iter().filter(|p| p.reported_by.is_none()) {
//!     println!("{}: {:?}", peer.node, peer.status);
//! }
//! mesh.put("colour", "blue").await?;
//! mesh.shutdown().await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod core;
#[cfg(feature = "node")]
mod driver;
mod error;
#[cfg(feature = "genesis")]
pub mod genesis;
#[cfg(feature = "node")]
mod mesh;
#[cfg(feature = "node")]
mod metrics;
#[cfg(feature = "store")]
pub mod store;
pub mod substrate;
mod types;
pub mod wire;

#[doc(inline)]
pub use fed_crdt as crdt;
#[doc(inline)]
pub use fed_crypto as crypto;
#[doc(inline)]
pub use fed_handshake as handshake;
#[doc(inline)]
pub use fed_onion as onion;
#[doc(inline)]
pub use fed_pbft as pbft;
pub use libp2p_identity::PeerId;
pub use multiaddr::Multiaddr;
#[cfg(feature = "node")]
#[doc(inline)]
pub use prometheus_client;

pub use crate::{
    core::{
        Limits, Timing,
        commit::{CommitReceipt, CommittedBatch, ConsensusConfig, Ledger, MembershipChange, Voter},
        epoch::Epoch,
    },
    error::{Error, Result},
    types::*,
};
#[cfg(feature = "node")]
pub use crate::{
    driver::TransportConfig,
    mesh::{FederatedMesh, MeshBuilder, MeshConfig},
};

/// Proptest cases: `default`, or `FED_PROPTEST_CASES`.
#[cfg(test)]
pub(crate) fn test_cases(default: u32) -> u32 {
    std::env::var("FED_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The workspace README's examples, one per crate, compiled and run as
/// doctests (in the repository only: the package does not carry the README
/// of the workspace, and this item exists only under `cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct WorkspaceReadme;
