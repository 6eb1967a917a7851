//! The libp2p side of the long-lived streams (mesh.md §3.1): a behaviour whose
//! connection handlers open a stream of one protocol when asked and hand every
//! inbound stream of it to the accept loop ([`super::stream`]).
//!
//! It remembers only the connections that are open (nothing per connection
//! outlives it), dials a peer that a stream is asked for when no connection is
//! open, as request-response does, and queues up to [`ACCEPT_QUEUE`] inbound
//! streams for the accept loop.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    io,
    task::{Context, Poll},
};

use futures::{
    StreamExt,
    channel::{mpsc, oneshot},
};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol,
    core::{Endpoint, transport::PortUse, upgrade::ReadyUpgrade},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent,
        ConnectionId, DialError, DialFailure, FromSwarm, NetworkBehaviour, NotifyHandler,
        StreamUpgradeError, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent,
        ToSwarm,
        behaviour::ConnectionEstablished,
        dial_opts::{DialOpts, PeerCondition},
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
    },
};

/// Inbound streams waiting for the accept loop, plus one per connection (each
/// connection's handler holds a sender, and each sender has a slot of its
/// own); more are dropped. The loop only hands each to a task of its own, so
/// this is a burst, not a backlog.
pub(crate) const ACCEPT_QUEUE: usize = 64;

/// Why a stream could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The peer does not speak the protocol.
    Unsupported,
    /// No connection, or the stream's negotiation failed.
    Io(io::Error),
}

/// Where an opened stream (or the reason there is none) goes.
type Reply = oneshot::Sender<Result<Stream, OpenError>>;

struct OpenRequest {
    peer: PeerId,
    reply: Reply,
}

/// Asks the [`Behaviour`] for streams. Each writer holds a clone and opens one
/// stream at a time, so what it queues is bounded by the peers.
#[derive(Clone)]
pub(crate) struct Control {
    requests: mpsc::UnboundedSender<OpenRequest>,
}

impl Control {
    /// Opens a stream to `peer`, dialling it if no connection is open.
    pub(crate) async fn open(&self, peer: PeerId) -> Result<Stream, OpenError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .unbounded_send(OpenRequest { peer, reply })
            .map_err(|_| OpenError::Io(io::ErrorKind::BrokenPipe.into()))?;
        answer
            .await
            .map_err(|_| OpenError::Io(io::ErrorKind::ConnectionReset.into()))?
    }
}

/// The behaviour of one streamed protocol.
pub(crate) struct Behaviour {
    protocol: StreamProtocol,
    requests: mpsc::UnboundedReceiver<OpenRequest>,
    control: Control,
    inbound: mpsc::Sender<(PeerId, Stream)>,
    /// The inbound streams, until [`Behaviour::accept`] takes them.
    accepted: Option<mpsc::Receiver<(PeerId, Stream)>>,
    /// The open connections of each peer.
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Streams asked for while the peer was being dialled.
    waiting: HashMap<PeerId, Vec<Reply>>,
    out: VecDeque<ToSwarm<Infallible, Reply>>,
}

impl Behaviour {
    /// The behaviour of `protocol`.
    pub(crate) fn new(protocol: StreamProtocol) -> Self {
        let (requests_tx, requests) = mpsc::unbounded();
        let (inbound, accepted) = mpsc::channel(ACCEPT_QUEUE);
        Self {
            protocol,
            requests,
            control: Control {
                requests: requests_tx,
            },
            inbound,
            accepted: Some(accepted),
            connections: HashMap::new(),
            waiting: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// The inbound streams it accepts (once; `None` after).
    pub(crate) fn accept(&mut self) -> Option<mpsc::Receiver<(PeerId, Stream)>> {
        self.accepted.take()
    }

    /// A handle that opens streams.
    pub(crate) fn control(&self) -> Control {
        self.control.clone()
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            protocol: self.protocol.clone(),
            peer,
            inbound: self.inbound.clone(),
            pending: VecDeque::new(),
        }
    }

    fn on_request(&mut self, OpenRequest { peer, reply }: OpenRequest) {
        if let Some(&connection) = self.connections.get(&peer).and_then(|c| c.first()) {
            self.out.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(connection),
                event: reply,
            });
            return;
        }
        // Writers that gave up (their open timed out) leave closed replies.
        for replies in self.waiting.values_mut() {
            replies.retain(|r| !r.is_canceled());
        }
        self.waiting.retain(|_, replies| !replies.is_empty());
        self.waiting.entry(peer).or_default().push(reply);
        self.out.push_back(ToSwarm::Dial {
            opts: DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build(),
        });
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            }) => {
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push(connection_id);
                for reply in self.waiting.remove(&peer_id).unwrap_or_default() {
                    self.out.push_back(ToSwarm::NotifyHandler {
                        peer_id,
                        handler: NotifyHandler::One(connection_id),
                        event: reply,
                    });
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                if let Some(open) = self.connections.get_mut(&peer_id) {
                    open.retain(|c| *c != connection_id);
                    if open.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            // A dial that did not happen because one is under way (or a
            // connection is open) is no failure: that one serves the waiting.
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error,
                ..
            }) if !matches!(error, DialError::DialPeerConditionFalse(_)) => {
                for reply in self.waiting.remove(&peer).unwrap_or_default() {
                    let e = io::Error::new(io::ErrorKind::NotConnected, error.to_string());
                    let _ = reply.send(Err(OpenError::Io(e)));
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some(request)) = self.requests.poll_next_unpin(cx) {
            self.on_request(request);
        }
        match self.out.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

/// The handler of one connection: opens the streams asked for, one at a time
/// as the swarm allows, and passes inbound ones on.
pub(crate) struct Handler {
    protocol: StreamProtocol,
    peer: PeerId,
    inbound: mpsc::Sender<(PeerId, Stream)>,
    pending: VecDeque<Reply>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Reply;
    type ToBehaviour = Infallible;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Reply;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Reply, Self::ToBehaviour>> {
        // A writer that gave up (its open timed out) waits for nothing.
        while let Some(reply) = self.pending.pop_front() {
            if !reply.is_canceled() {
                return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                    protocol: SubstreamProtocol::new(
                        ReadyUpgrade::new(self.protocol.clone()),
                        reply,
                    ),
                });
            }
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, reply: Reply) {
        self.pending.push_back(reply);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol, (), Reply>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                let peer = self.peer;
                let _ = self.inbound.try_send((peer, stream)).inspect_err(|_| {
                    tracing::debug!(%peer, "inbound stream dropped: the accept queue is full");
                });
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: reply,
            }) => {
                let _ = reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: reply, error }) => {
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => OpenError::Unsupported,
                    StreamUpgradeError::Timeout => OpenError::Io(io::ErrorKind::TimedOut.into()),
                    StreamUpgradeError::Io(e) => OpenError::Io(e),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(error));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use libp2p::core::ConnectedPoint;

    use super::*;

    fn endpoint() -> ConnectedPoint {
        ConnectedPoint::Dialer {
            address: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        }
    }

    #[test]
    fn nothing_outlives_its_connection() {
        let mut b = Behaviour::new(StreamProtocol::new("/test/1"));
        let (peer, endpoint) = (PeerId::random(), endpoint());
        for i in 0..1_000 {
            let connection_id = ConnectionId::new_unchecked(i);
            b.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id: peer,
                connection_id,
                endpoint: &endpoint,
                failed_addresses: &[],
                other_established: 0,
            }));
            b.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id: peer,
                connection_id,
                endpoint: &endpoint,
                cause: None,
                remaining_established: 0,
            }));
        }
        assert!(b.connections.is_empty(), "{:?}", b.connections);
    }

    #[tokio::test]
    async fn a_stream_asked_of_a_peer_that_cannot_be_dialled_fails() {
        let mut b = Behaviour::new(StreamProtocol::new("/test/1"));
        let peer = PeerId::random();
        let control = b.control();
        let open = tokio::spawn(async move { control.open(peer).await });
        // The behaviour dials the peer for it...
        let dial = std::future::poll_fn(|cx| b.poll(cx)).await;
        assert!(matches!(dial, ToSwarm::Dial { .. }));
        // ...and a dial already under way is no failure...
        let busy = DialError::DialPeerConditionFalse(PeerCondition::DisconnectedAndNotDialing);
        b.on_swarm_event(FromSwarm::DialFailure(DialFailure {
            peer_id: Some(peer),
            error: &busy,
            connection_id: ConnectionId::new_unchecked(1),
        }));
        assert_eq!(b.waiting.len(), 1);
        // ...but a failed one fails the stream, and is forgotten.
        b.on_swarm_event(FromSwarm::DialFailure(DialFailure {
            peer_id: Some(peer),
            error: &DialError::NoAddresses,
            connection_id: ConnectionId::new_unchecked(2),
        }));
        assert!(matches!(open.await.unwrap(), Err(OpenError::Io(_))));
        assert!(b.waiting.is_empty());
    }
}
