//! The crate's error type.

use std::sync::Arc;

use fed_crypto::NodeId;
use libp2p_identity::PeerId;

use crate::{substrate::SubstrateError, wire::Refusal};

/// Everything that can go wrong in `fed-mesh`.
///
/// Cloneable, so that one failure can answer every caller waiting on it (two
/// `join_federation` calls to the same peer, say); errors of lower crates that
/// are not `Clone` are held in an `Arc`.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the field.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The network layer could not be set up (a listen address could not be bound).
    #[error("transport: {0}")]
    Transport(String),
    /// An address is not usable for this operation (it lacks `/p2p/<peer id>`, say).
    #[error("bad address {addr}: {reason}")]
    BadAddress {
        /// The address.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A dial failed (refused, unreachable, or the peer at the address has
    /// another libp2p peer id than the address names).
    #[error("could not reach {peer}: {reason}")]
    Unreachable {
        /// The peer dialled.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer authenticated as another federation identity than expected.
    #[error("peer {peer} is not the expected node {expected}")]
    WrongIdentity {
        /// The libp2p peer.
        peer: PeerId,
        /// The node id the caller expected.
        expected: NodeId,
    },
    /// The handshake failed; a refusal by the peer is
    /// `Handshake(fed_handshake::Error::Rejected(reason))`.
    #[error("handshake with {peer} failed: {source}")]
    Handshake {
        /// The peer.
        peer: PeerId,
        /// Why.
        #[source]
        source: Arc<fed_handshake::Error>,
    },
    /// The connection closed before the operation finished.
    #[error("connection to {0} closed")]
    Disconnected(PeerId),
    /// A peer refused a request.
    #[error("{peer} refused the request: {reason}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: Refusal,
    },
    /// A peer sent something that does not decode or authenticate.
    #[error("{peer} sent a malformed {what}")]
    Malformed {
        /// The peer.
        peer: PeerId,
        /// What it was.
        what: &'static str,
    },
    /// The operation did not finish in time.
    #[error("timed out")]
    Timeout,
    /// No connected member could take the request.
    #[error("no connected member with an established session")]
    NoPeers,
    /// The query is malformed.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A value or key is too large for the shared map.
    #[error("shared map: {0}")]
    SharedMap(String),
    /// The substrate refused a call.
    #[error(transparent)]
    Substrate(#[from] SubstrateError),
    /// The node's store (its data directory) could not be opened or written.
    #[cfg(feature = "store")]
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A CRDT operation failed.
    #[error(transparent)]
    Crdt(#[from] fed_crdt::Error),
    /// Onion routing could not build or open a packet.
    #[error("onion routing: {0}")]
    Onion(Arc<fed_onion::Error>),
    /// A cryptographic operation failed.
    #[error("crypto: {0}")]
    Crypto(Arc<fed_crypto::Error>),
    /// The node is at capacity (too many queries or commands in flight).
    #[error("busy: {0}")]
    Busy(&'static str),
    /// The node has shut down.
    #[error("the node has shut down")]
    ShutDown,
    /// A commit could not be made (no genesis, an update too large, a refusal).
    #[error("consensus: {0}")]
    Consensus(String),
    /// fed-pbft refused an input or a proof.
    #[error("pbft: {0}")]
    Pbft(Arc<fed_pbft::Error>),
}

impl From<fed_onion::Error> for Error {
    fn from(e: fed_onion::Error) -> Self {
        Error::Onion(Arc::new(e))
    }
}

impl From<fed_crypto::Error> for Error {
    fn from(e: fed_crypto::Error) -> Self {
        Error::Crypto(Arc::new(e))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
