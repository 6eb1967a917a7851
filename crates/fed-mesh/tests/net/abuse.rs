//! A peer flooding oversized and malformed frames is cut off while honest
//! queries keep being answered (test 6); so is one that breaks the framing of
//! the consensus protocol's long-lived stream (mesh.md §3.1).

use std::{io, time::Duration};

use fed_mesh::{CutOffReason, FederationScope, MeshEvent, QueryOptions, substrate::PatternQuery};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt, prelude::*};
use libp2p::{
    StreamProtocol, Swarm, noise,
    request_response::{self, ProtocolSupport},
    swarm::SwarmEvent,
    tcp, yamux,
};

use crate::*;

/// A codec that writes whatever bytes it is given, the length prefix included:
/// the attacker controls every byte.
#[derive(Clone, Default)]
struct Raw;

impl request_response::Codec for Raw {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&res).await?;
        io.close().await
    }
}

/// An attacker's swarm: a new identity, TCP, Noise, Yamux and `behaviour`.
fn attacker_swarm<B: libp2p::swarm::NetworkBehaviour>(behaviour: B) -> Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| behaviour)
        .unwrap()
        // libp2p closes a connection no stream keeps alive after 10 s by
        // default: on a loaded machine, the attacker's own swarm could close
        // it between the dial and its first stream.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn attacker() -> Swarm<request_response::Behaviour<Raw>> {
    attacker_swarm(request_response::Behaviour::with_codec(
        Raw,
        [(
            StreamProtocol::new("/exo-fed/query/1"),
            ProtocolSupport::Full,
        )],
        request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
    ))
}

/// The TCP address `target` listens on.
async fn tcp_addr(target: &FederatedMesh) -> libp2p::Multiaddr {
    target
        .listen_addrs()
        .await
        .unwrap()
        .into_iter()
        .find(|a| {
            a.iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
        })
        .unwrap()
}

/// Runs an attacker that sends `frames` to `target` as fast as the streams
/// allow, until its connection is closed.
async fn flood(target: &FederatedMesh, frames: Vec<Vec<u8>>) -> libp2p::PeerId {
    let mut swarm = attacker();
    let me = *swarm.local_peer_id();
    swarm.dial(tcp_addr(target).await).unwrap();
    let peer = target.peer_id();
    tokio::spawn(async move {
        let mut sent = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some()).await {
                Err(_) => break,
                Ok(SwarmEvent::ConnectionEstablished { .. }) => {
                    for f in frames.iter().cycle().take(400) {
                        swarm.behaviour_mut().send_request(&peer, f.clone());
                        sent += 1;
                    }
                }
                Ok(SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                }) => break,
                Ok(_) => {}
            }
        }
        sent
    });
    me
}

async fn cut_off(
    events: &mut tokio::sync::broadcast::Receiver<MeshEvent>,
    who: libp2p::PeerId,
) -> CutOffReason {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(MeshEvent::PeerCutOff { peer, reason, .. }) = events.recv().await
                && peer == who
            {
                return reason;
            }
        }
    })
    .await
    .expect("the attacker was cut off")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_cut_off_while_honest_queries_are_answered() {
    let nodes = full_mesh(80, 2, |_, _| {}).await;
    let (victim, honest) = (&nodes[0], &nodes[1]);
    victim
        .store_pattern(pattern(5, vec![0.0, 1.0]))
        .await
        .unwrap();
    let mut events = victim.events();

    // Honest queries run throughout the attacks.
    let asker = honest.clone();
    let victim_node = victim.node_id();
    let honest_queries = tokio::spawn(async move {
        let mut answered = 0;
        for _ in 0..40 {
            let outcome = asker
                .federated_query(
                    PatternQuery::new(vec![0.0, 1.0], 1),
                    FederationScope::Direct,
                    QueryOptions::default(),
                )
                .await
                .unwrap();
            if outcome.results.len() == 1 && outcome.results[0].provenance == vec![victim_node] {
                answered += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answered
    });

    // An announced length of 64 MiB, far over the limit.
    let mut oversized = (64u32 << 20).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0xAB; 1024]);
    let big = flood(victim, vec![oversized]).await;
    assert_eq!(cut_off(&mut events, big).await, CutOffReason::Oversized);

    // Well-framed garbage: a truncated sealed request, and junk that claims a session.
    let mut short = 4u32.to_be_bytes().to_vec();
    short.extend_from_slice(b"junk");
    let mut junk = 64u32.to_be_bytes().to_vec();
    junk.extend_from_slice(&[0x11; 64]);
    let garbage = flood(victim, vec![junk, short]).await;
    let reason = cut_off(&mut events, garbage).await;
    assert!(
        matches!(reason, CutOffReason::Malformed | CutOffReason::Abuse),
        "{reason:?}"
    );

    assert_eq!(
        honest_queries.await.unwrap(),
        40,
        "every honest query was answered"
    );
    let stats = victim.stats().await.unwrap();
    assert!(stats.cut_off.values().sum::<u64>() >= 2, "{stats:?}");
    // The honest peer was never cut off and is still a member.
    assert_eq!(victim.peer_count().await.unwrap(), 1);
    shutdown(&nodes).await;
}

/// Opens a `/exo-fed/pbft/2` stream to `target` and writes `bytes` on it, then
/// keeps the connection up (for 10 s at most) until the target closes it.
async fn stream_attack(target: &FederatedMesh, bytes: Vec<u8>) -> libp2p::PeerId {
    let mut swarm = attacker_swarm(libp2p_stream::Behaviour::new());
    let me = *swarm.local_peer_id();
    let mut control = swarm.behaviour().new_control();
    swarm.dial(tcp_addr(target).await).unwrap();
    let peer = target.peer_id();
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some()).await {
                Err(_)
                | Ok(SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                }) => break,
                Ok(SwarmEvent::ConnectionEstablished { .. }) => {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
            }
        }
    });
    tokio::spawn(async move {
        connected.await.unwrap();
        let protocol = StreamProtocol::new("/exo-fed/pbft/2");
        let mut stream = control.open_stream(peer, protocol).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        stream.flush().await.unwrap();
        // Held open: the target must act on the frame, not on the stream's end.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    me
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_breaking_the_consensus_streams_framing_is_cut_off() {
    let nodes = full_mesh(84, 2, |_, _| {}).await;
    let victim = &nodes[0];
    let mut events = victim.events();
    let frame = |len: u32, body: &[u8]| {
        let mut f = len.to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    let cases = [
        // An announced 64 MiB frame: over the limit, never read.
        (frame(64 << 20, &[0; 1024]), CutOffReason::Oversized),
        // Shorter than the kind and tag.
        (frame(3, &[0, 0, 0]), CutOffReason::Malformed),
        // An unknown kind.
        (
            frame(10, &[7, 0, 0, 0, 0, 0, 0, 0, 1, 0xAA]),
            CutOffReason::Malformed,
        ),
        // An answerless frame that carries a payload.
        (
            frame(10, &[2, 0, 0, 0, 0, 0, 0, 0, 1, 0xAA]),
            CutOffReason::Malformed,
        ),
        // An answer over the limit to a request never sent.
        (
            frame(
                64 << 20,
                &[&[1, 0, 0, 0, 0, 0, 0, 0, 1][..], &[0; 1024]].concat(),
            ),
            CutOffReason::Oversized,
        ),
    ];
    for (bytes, expected) in cases {
        let who = stream_attack(victim, bytes).await;
        assert_eq!(cut_off(&mut events, who).await, expected);
    }
    // The honest member is untouched and still answered.
    assert_eq!(victim.peer_count().await.unwrap(), 1);
    let outcome = nodes[1]
        .federated_query(
            PatternQuery::new(vec![0.0, 1.0], 1),
            FederationScope::Direct,
            QueryOptions::default(),
        )
        .await
        .unwrap();
    assert!(outcome.complete, "{outcome:?}");
    shutdown(&nodes).await;
}

/// A peer that opens many consensus streams has at most 4 read at once (mesh.md
/// §3.1): the rest are dropped at once, so it cannot hold a reader, and its
/// frame buffer, per stream it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gets_at_most_four_consensus_streams_read() {
    let nodes = full_mesh(90, 1, |_, _| {}).await;
    let target = &nodes[0];
    let mut swarm = attacker_swarm(libp2p_stream::Behaviour::new());
    let mut control = swarm.behaviour().new_control();
    swarm.dial(tcp_addr(target).await).unwrap();
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    // The attacker's swarm runs until the test ends (its streams need it).
    let attacker = tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await
                && let Some(tx) = connected_tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    connected.await.unwrap();
    let protocol = StreamProtocol::new("/exo-fed/pbft/2");
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut s = control
            .open_stream(target.peer_id(), protocol.clone())
            .await
            .unwrap();
        // Something on each, so the target has negotiated and placed it. A
        // write fails if the target already dropped the stream (yamux then
        // says "connection is closed" of the stream): that one is not read.
        if s.write_all(&[0, 0]).await.is_ok() && s.flush().await.is_ok() {
            streams.push(s);
        }
    }
    // A dropped stream reads its end at once; one being read stays open (the
    // target never writes on a stream it accepted). All are watched at once.
    let reads = streams.iter_mut().map(|s| async move {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut byte))
            .await
            .is_err()
    });
    let open = futures::future::join_all(reads)
        .await
        .into_iter()
        .filter(|&still_open| still_open)
        .count();
    assert_eq!(open, 4, "streams of one peer read at once");
    attacker.abort();
    shutdown(&nodes).await;
}
