//! Long-lived streams (mesh.md §3.1). On a protocol that carries many small
//! messages between the same peers (`/exo-fed/pbft/2`), a node opens one stream
//! to each peer and writes on it every request to that peer and every answer to
//! that peer's requests, as tagged [`StreamFrame`]s; the peer's stream to this
//! node carries the other direction. A message then costs a frame, not a new
//! stream and its protocol negotiation.
//!
//! Tasks: one writer per peer (opens the stream, writes what is queued in
//! batches, and notices when the stream dies), one accept loop, and one reader
//! per inbound stream. They report to the driver over one bounded channel; the
//! driver keeps the bookkeeping here: which tags await answers, which inbound
//! requests await the core's answer.

use std::{
    collections::HashMap,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::sync::mpsc;

use super::link;
use crate::{
    core::{InboundId, InboundProblem, OutboundId, SendFailure},
    wire::{STREAM_FRAME_HEADER_LEN, StreamFrame, StreamFrameKind},
};

/// Inbound streams of one peer read at once; more are dropped. An honest peer
/// has one, and for a moment two while it replaces a broken one.
const MAX_INBOUND_PER_PEER: usize = 4;
/// Bytes queued for one peer's writer at most: a frame beyond that fails at
/// once, as a request to an unresponsive peer would.
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Frames queued for one peer's writer at most.
const MAX_QUEUED_FRAMES: usize = 16 * 1024;
/// Bytes gathered into one write.
const WRITE_BATCH: usize = 256 * 1024;
/// How long opening a stream (dialling the peer if need be) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Reports from the tasks that wait for the driver (each holds at most one
/// frame: with the default frame limit, 256 MiB at worst, across all peers).
const EVENT_QUEUE: usize = 256;
/// A writer with nothing to write for this long closes its stream (so the
/// connection can go idle) and stops; the next message opens a new one.
const WRITER_IDLE: Duration = Duration::from_secs(600);
/// A write buffer grown past this is given back after the write.
const KEEP_BUFFER: usize = 1 << 20;
/// How many bytes of an over-limit answer are read and dropped at a time.
const SKIP_CHUNK: usize = 16 * 1024;
/// A frame's first allocation; it grows with the bytes that arrive.
const INITIAL_CAPACITY: usize = 16 * 1024;

/// What the stream tasks report to the driver.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// A frame arrived from `peer`.
    Frame {
        peer: PeerId,
        kind: StreamFrameKind,
        tag: u64,
        payload: Vec<u8>,
    },
    /// `peer` broke the framing; its stream was dropped.
    Problem {
        peer: PeerId,
        problem: InboundProblem,
    },
    /// `peer` answered the request `tag` with a frame over the limit; it was
    /// read past and dropped (as a stream per exchange fails the request).
    AnswerTooLarge { peer: PeerId, tag: u64 },
    /// An inbound stream of `peer` ended when this node's next tag was
    /// `below`: answers it still carried, to requests sent before, are lost.
    ReaderEnded { peer: PeerId, below: u64 },
    /// The writer to `peer` closed its stream cleanly (idle, or dropped by
    /// the driver) after writing everything queued.
    WriterClosed { peer: PeerId, generation: u64 },
    /// The writer to `peer` stopped: its stream could not be opened, or died.
    WriterFailed {
        peer: PeerId,
        generation: u64,
        failure: SendFailure,
    },
}

struct Writer {
    tx: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    generation: u64,
}

struct Pending {
    id: OutboundId,
    generation: u64,
    deadline: u64,
}

/// The long-lived streams of one protocol, and their bookkeeping.
pub(crate) struct Streams {
    control: link::Control,
    timeout_ms: u64,
    writers: HashMap<PeerId, Writer>,
    /// Requests written (or queued) and not yet answered, by peer and tag.
    pending: HashMap<(PeerId, u64), Pending>,
    /// Requests handed to the core and not yet answered: where the answer goes.
    inbound: HashMap<InboundId, (PeerId, u64)>,
    /// The next tag, shared with the readers (see [`StreamEvent::ReaderEnded`]).
    next_tag: Arc<AtomicU64>,
    next_generation: u64,
    events_tx: mpsc::Sender<StreamEvent>,
    /// Reports of the stream tasks, for the driver's loop.
    pub(crate) events: mpsc::Receiver<StreamEvent>,
}

impl Streams {
    /// Starts accepting inbound streams of `protocol`, with frames of at most
    /// `max_payload` bytes after the header. Tags count up from half of
    /// `first_tag` (random: a restarted node's tags are not its last run's,
    /// and a node never runs out). Must run inside the tokio runtime.
    pub(crate) fn new(
        control: link::Control,
        incoming: futures::channel::mpsc::Receiver<(PeerId, Stream)>,
        max_payload: usize,
        timeout: Duration,
        first_tag: u64,
    ) -> Self {
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let next_tag = Arc::new(AtomicU64::new(first_tag >> 1));
        tokio::spawn(accept_loop(
            incoming,
            max_payload + STREAM_FRAME_HEADER_LEN,
            events_tx.clone(),
            next_tag.clone(),
        ));
        Self {
            control,
            timeout_ms: timeout.as_millis() as u64,
            writers: HashMap::new(),
            pending: HashMap::new(),
            inbound: HashMap::new(),
            next_tag,
            next_generation: 1,
            events_tx,
            events,
        }
    }

    /// Queues `payload` as a request to `peer`; its answer is reported under
    /// `id` by [`answered`](Self::answered), or its failure by the methods
    /// that return failed ids.
    pub(crate) fn send(
        &mut self,
        peer: PeerId,
        id: OutboundId,
        payload: &[u8],
        now: u64,
    ) -> Result<(), SendFailure> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let generation = self.queue(peer, StreamFrameKind::Request, tag, payload)?;
        self.pending.insert(
            (peer, tag),
            Pending {
                id,
                generation,
                deadline: now.saturating_add(self.timeout_ms),
            },
        );
        Ok(())
    }

    /// Notes that the core's inbound request `id` came from `peer` under `tag`.
    pub(crate) fn register_inbound(&mut self, id: InboundId, peer: PeerId, tag: u64) {
        self.inbound.insert(id, (peer, tag));
    }

    /// Answers the inbound request `id`, if it came on a stream (an empty
    /// payload: no answer). Returns whether it did.
    pub(crate) fn respond(&mut self, id: InboundId, payload: &[u8]) -> bool {
        let Some((peer, tag)) = self.inbound.remove(&id) else {
            return false;
        };
        let kind = if payload.is_empty() {
            StreamFrameKind::NoAnswer
        } else {
            StreamFrameKind::Response
        };
        if let Err(failure) = self.queue(peer, kind, tag, payload) {
            // The requester's own deadline covers a lost answer.
            tracing::debug!(%peer, ?failure, "an answer on a stream was not queued");
        }
        true
    }

    /// The request `tag` to `peer` was answered: its id, if it was pending.
    pub(crate) fn answered(&mut self, peer: PeerId, tag: u64) -> Option<OutboundId> {
        self.pending.remove(&(peer, tag)).map(|p| p.id)
    }

    /// The writer of `generation` to `peer` stopped: the requests queued on it
    /// fail.
    pub(crate) fn writer_failed(&mut self, peer: PeerId, generation: u64) -> Vec<OutboundId> {
        if self
            .writers
            .get(&peer)
            .is_some_and(|w| w.generation == generation)
        {
            self.writers.remove(&peer);
        }
        self.fail_where(|(p, _), pending| *p == peer && pending.generation == generation)
    }

    /// The last connection to `peer` closed: its writer stops, every request
    /// to it fails, and answers to its requests have nowhere to go.
    pub(crate) fn peer_gone(&mut self, peer: PeerId) -> Vec<OutboundId> {
        self.writers.remove(&peer);
        self.inbound.retain(|_, (p, _)| *p != peer);
        self.fail_where(|(p, _), _| *p == peer)
    }

    /// An inbound stream of `peer` ended when the next tag was `below`, so
    /// answers it carried are lost: every request to `peer` sent before then
    /// fails (an answer that comes later on the peer's new stream is
    /// ignored). Requests sent since wait for their answers on that stream.
    pub(crate) fn reader_ended(&mut self, peer: PeerId, below: u64) -> Vec<OutboundId> {
        self.fail_where(|(p, tag), _| *p == peer && *tag < below)
    }

    /// The writer of `generation` to `peer` closed cleanly: what it wrote is
    /// answered on the peer's stream, so nothing fails.
    pub(crate) fn writer_closed(&mut self, peer: PeerId, generation: u64) {
        if self
            .writers
            .get(&peer)
            .is_some_and(|w| w.generation == generation)
        {
            self.writers.remove(&peer);
        }
    }

    /// Requests unanswered past the timeout.
    pub(crate) fn expired(&mut self, now: u64) -> Vec<OutboundId> {
        self.fail_where(|_, pending| pending.deadline <= now)
    }

    fn fail_where(&mut self, f: impl Fn(&(PeerId, u64), &Pending) -> bool) -> Vec<OutboundId> {
        let mut failed = Vec::new();
        self.pending.retain(|key, pending| {
            let fail = f(key, pending);
            if fail {
                failed.push(pending.id);
            }
            !fail
        });
        failed
    }

    /// Queues one frame for `peer`'s writer, starting the writer if there is
    /// none. Returns the writer's generation.
    fn queue(
        &mut self,
        peer: PeerId,
        kind: StreamFrameKind,
        tag: u64,
        payload: &[u8],
    ) -> Result<u64, SendFailure> {
        let mut frame = Vec::with_capacity(4 + STREAM_FRAME_HEADER_LEN + payload.len());
        StreamFrame { kind, tag, payload }.encode_into(&mut frame);
        let writer = match self.writers.get(&peer) {
            Some(w) if !w.tx.is_closed() => w,
            _ => {
                let w = self.spawn_writer(peer);
                self.writers.insert(peer, w);
                &self.writers[&peer]
            }
        };
        let len = frame.len();
        if writer.queued.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            return Err(SendFailure::Io("the stream's queue is full".into()));
        }
        writer.queued.fetch_add(len, Ordering::Relaxed);
        match writer.tx.try_send(frame) {
            Ok(()) => Ok(writer.generation),
            Err(e) => {
                writer.queued.fetch_sub(len, Ordering::Relaxed);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => {
                        SendFailure::Io("the stream's queue is full".into())
                    }
                    mpsc::error::TrySendError::Closed(_) => SendFailure::ConnectionClosed,
                })
            }
        }
    }

    fn spawn_writer(&mut self, peer: PeerId) -> Writer {
        let generation = self.next_generation;
        self.next_generation += 1;
        let (tx, rx) = mpsc::channel(MAX_QUEUED_FRAMES);
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_loop(
            self.control.clone(),
            peer,
            generation,
            rx,
            queued.clone(),
            self.events_tx.clone(),
        ));
        Writer {
            tx,
            queued,
            generation,
        }
    }
}

/// Opens the stream to `peer` and writes what is queued, until the queue is
/// dropped or the stream dies (then it reports and stops; what is still queued
/// is lost, and the driver fails the requests among it).
async fn write_loop(
    control: link::Control,
    peer: PeerId,
    generation: u64,
    mut rx: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    events: mpsc::Sender<StreamEvent>,
) {
    let failure = match tokio::time::timeout(OPEN_TIMEOUT, control.open(peer)).await {
        Err(_) => SendFailure::Timeout,
        Ok(Err(link::OpenError::Unsupported)) => SendFailure::UnsupportedProtocol,
        Ok(Err(link::OpenError::Io(e))) => {
            tracing::debug!(%peer, error = %e, "could not open a stream");
            SendFailure::ConnectionClosed
        }
        // The driver gave up on this peer while the stream opened (its
        // connection closed): what is queued was for a connection now gone.
        Ok(Ok(_)) if rx.is_closed() => SendFailure::ConnectionClosed,
        Ok(Ok(stream)) => match write_frames(stream, &mut rx, &queued).await {
            Some(failure) => failure,
            None => {
                let _ = events
                    .send(StreamEvent::WriterClosed { peer, generation })
                    .await;
                return;
            }
        },
    };
    rx.close();
    let _ = events
        .send(StreamEvent::WriterFailed {
            peer,
            generation,
            failure,
        })
        .await;
}

/// Writes queued frames on `stream`, several to a write, until the queue is
/// dropped, the writer has been idle for [`WRITER_IDLE`], or the stream dies.
/// The peer never writes on this stream, so a read that returns is the
/// stream's end: the connection closed, or the peer dropped the stream.
async fn write_frames(
    stream: Stream,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    queued: &AtomicUsize,
) -> Option<SendFailure> {
    let (mut read, mut write) = stream.split();
    let ended = async move {
        let mut byte = [0u8; 1];
        let _ = read.read(&mut byte).await;
    };
    tokio::pin!(ended);
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            _ = &mut ended => return Some(SendFailure::ConnectionClosed),
            frame = tokio::time::timeout(WRITER_IDLE, rx.recv()) => frame,
        };
        let Ok(Some(first)) = first else {
            // Dropped by the driver, or idle: a clean close, after what the
            // driver queued before it saw the queue closed.
            rx.close();
            batch.clear();
            while let Ok(frame) = rx.try_recv() {
                batch.extend_from_slice(&frame);
            }
            let closed: io::Result<()> = async {
                write.write_all(&batch).await?;
                write.close().await
            }
            .await;
            return closed.err().map(|e| SendFailure::Io(e.to_string()));
        };
        batch.clear();
        queued.fetch_sub(first.len(), Ordering::Relaxed);
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(frame) => {
                    queued.fetch_sub(frame.len(), Ordering::Relaxed);
                    batch.extend_from_slice(&frame);
                }
                Err(_) => break,
            }
        }
        let written: io::Result<()> = async {
            write.write_all(&batch).await?;
            write.flush().await
        }
        .await;
        if let Err(e) = written {
            return Some(SendFailure::Io(e.to_string()));
        }
        if batch.capacity() > KEEP_BUFFER {
            batch = Vec::new();
        }
    }
}

/// Streams of one peer being read, shared by the accept loop and the readers.
type InboundCounts = Arc<Mutex<HashMap<PeerId, usize>>>;

async fn accept_loop(
    mut incoming: futures::channel::mpsc::Receiver<(PeerId, Stream)>,
    max: usize,
    events: mpsc::Sender<StreamEvent>,
    next_tag: Arc<AtomicU64>,
) {
    let counts: InboundCounts = Arc::default();
    while let Some((peer, stream)) = incoming.next().await {
        {
            let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
            let n = c.entry(peer).or_insert(0);
            if *n >= MAX_INBOUND_PER_PEER {
                tracing::debug!(%peer, "too many inbound streams; one dropped");
                continue;
            }
            *n += 1;
        }
        let (events, counts, next_tag) = (events.clone(), counts.clone(), next_tag.clone());
        tokio::spawn(async move {
            read_frames(peer, stream, max, &events).await;
            let below = next_tag.load(Ordering::Relaxed);
            let _ = events.send(StreamEvent::ReaderEnded { peer, below }).await;
            let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = c.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    c.remove(&peer);
                }
            }
        });
    }
}

/// Reads frames of at most `max` bytes from `peer`'s stream until it ends, the
/// driver is gone, or the peer breaks the framing (reported; the stream is
/// dropped: a stream of frames cannot be resynchronised). An answer over the
/// limit is read past in pieces and reported against its tag.
async fn read_frames(
    peer: PeerId,
    mut stream: Stream,
    max: usize,
    events: &mpsc::Sender<StreamEvent>,
) {
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        let problem = if len < STREAM_FRAME_HEADER_LEN {
            Some(InboundProblem::Malformed)
        } else if len > max {
            let mut header = [0u8; STREAM_FRAME_HEADER_LEN];
            if stream.read_exact(&mut header).await.is_err() {
                return;
            }
            if header[0] == StreamFrameKind::Response as u8 {
                let mut tag = [0u8; 8];
                tag.copy_from_slice(&header[1..]);
                // Reported first: an answer to nothing asked gets the peer
                // cut off, which ends the stream, without waiting for bytes
                // it may never send.
                let tag = u64::from_be_bytes(tag);
                let event = StreamEvent::AnswerTooLarge { peer, tag };
                if events.send(event).await.is_err() {
                    return;
                }
                let rest = (len - STREAM_FRAME_HEADER_LEN) as u64;
                if !skip(&mut stream, rest).await {
                    return;
                }
                continue;
            }
            Some(InboundProblem::Oversized)
        } else {
            None
        };
        let event = match problem {
            Some(problem) => StreamEvent::Problem { peer, problem },
            None => {
                // Memory grows with the bytes that arrive, not with the length
                // announced.
                let mut body = Vec::with_capacity(len.min(INITIAL_CAPACITY));
                match (&mut stream).take(len as u64).read_to_end(&mut body).await {
                    Ok(n) if n == len => {}
                    _ => return,
                }
                match StreamFrame::decode(&body) {
                    Ok(frame) => {
                        let (kind, tag) = (frame.kind, frame.tag);
                        body.drain(..STREAM_FRAME_HEADER_LEN);
                        StreamEvent::Frame {
                            peer,
                            kind,
                            tag,
                            payload: body,
                        }
                    }
                    Err(_) => StreamEvent::Problem {
                        peer,
                        problem: InboundProblem::Malformed,
                    },
                }
            }
        };
        let stop = matches!(event, StreamEvent::Problem { .. });
        if events.send(event).await.is_err() || stop {
            return;
        }
    }
}

/// Reads and drops `n` bytes of `stream`, a piece at a time; false if the
/// stream ended first.
async fn skip(stream: &mut Stream, n: u64) -> bool {
    let mut buf = vec![0u8; SKIP_CHUNK];
    let mut left = n;
    while left > 0 {
        let want = usize::try_from(left).map_or(SKIP_CHUNK, |l| l.min(SKIP_CHUNK));
        match stream.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return false,
            Ok(got) => left -= got as u64,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams whose writers never get a stream (no swarm polls the
    /// behaviour): the bookkeeping alone.
    fn streams(behaviour: &mut Option<link::Behaviour>) -> Streams {
        let mut b = link::Behaviour::new(libp2p::StreamProtocol::new("/test/1"));
        let incoming = b.accept().unwrap();
        let s = Streams::new(b.control(), incoming, 1024, Duration::from_secs(60), 2);
        *behaviour = Some(b);
        s
    }

    #[tokio::test]
    async fn an_answer_counts_only_from_the_peer_asked_and_only_once() {
        let mut behaviour = None;
        let mut s = streams(&mut behaviour);
        let (a, b) = (PeerId::random(), PeerId::random());
        s.send(a, OutboundId(1), b"to a", 0).unwrap();
        s.send(b, OutboundId(2), b"to b", 0).unwrap();
        // Tags count from 1 across peers: a's request is tag 1, b's tag 2.
        assert_eq!(s.answered(b, 1), None, "b answered a's request");
        assert_eq!(s.answered(a, 2), None, "a answered b's request");
        assert_eq!(s.answered(a, 1), Some(OutboundId(1)));
        assert_eq!(s.answered(a, 1), None, "answered twice");
        assert_eq!(s.answered(b, 2), Some(OutboundId(2)));
    }

    #[tokio::test]
    async fn requests_fail_with_their_peer_their_writer_or_their_deadline() {
        let mut behaviour = None;
        let mut s = streams(&mut behaviour);
        let (a, b) = (PeerId::random(), PeerId::random());
        s.send(a, OutboundId(1), b"x", 0).unwrap();
        s.send(b, OutboundId(2), b"x", 0).unwrap();
        s.send(b, OutboundId(3), b"x", 30_000).unwrap();
        assert_eq!(s.peer_gone(a), vec![OutboundId(1)]);
        // A failed writer of an older generation fails nothing of the new one.
        let generation = s.writers[&b].generation;
        assert!(s.writer_failed(b, generation + 1).is_empty());
        assert!(s.writers.contains_key(&b));
        let mut expired = s.expired(60_000);
        assert_eq!(expired, vec![OutboundId(2)]);
        expired = s.writer_failed(b, generation);
        assert_eq!(expired, vec![OutboundId(3)]);
        assert!(!s.writers.contains_key(&b));
        assert!(s.pending.is_empty());
        // One of a's streams to this node ended: the answers it carried are
        // lost, so every request sent to a before it ended fails, and only
        // those (a request sent since waits for its answer on a's new stream).
        s.send(a, OutboundId(4), b"x", 0).unwrap();
        s.send(b, OutboundId(5), b"x", 0).unwrap();
        let below = s.next_tag.load(Ordering::Relaxed);
        s.send(a, OutboundId(6), b"x", 0).unwrap();
        assert_eq!(s.reader_ended(a, below), vec![OutboundId(4)]);
        assert_eq!(s.pending.len(), 2);
    }

    /// A swarm over TCP on 127.0.0.1 with only the link behaviour.
    fn swarm() -> libp2p::Swarm<link::Behaviour> {
        libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| link::Behaviour::new(libp2p::StreamProtocol::new("/test/1")))
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    }

    /// The driver gave up on a peer (its last connection closed) while the
    /// writer to it was opening its stream, and the peer came back in time
    /// for the stream to open: the frames queued before were for the
    /// connection that is gone (their requests already failed), so the
    /// writer writes none of them. The peer sees only what was sent after.
    /// The give-up is the driver's call (`peer_gone`), made here while the
    /// connection stays up.
    #[tokio::test]
    async fn a_writer_whose_peer_left_while_its_stream_opened_writes_nothing() {
        tokio::time::timeout(Duration::from_secs(60), writer_gives_up())
            .await
            .expect("the test did not finish in 60 s");
    }

    async fn writer_gives_up() {
        use libp2p::swarm::SwarmEvent;
        let (mut a, mut b) = (swarm(), swarm());
        let b_id = *b.local_peer_id();
        b.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
                break address;
            }
        };
        a.dial(addr).unwrap();
        loop {
            tokio::select! {
                e = a.select_next_some() => match e {
                    SwarmEvent::ConnectionEstablished { .. } => break,
                    SwarmEvent::OutgoingConnectionError { error, .. } => panic!("{error}"),
                    _ => {}
                },
                _ = b.select_next_some() => {}
            }
        }
        let mut sa = Streams::new(
            a.behaviour().control(),
            a.behaviour_mut().accept().unwrap(),
            1024,
            Duration::from_secs(60),
            2,
        );
        let mut sb = Streams::new(
            b.behaviour().control(),
            b.behaviour_mut().accept().unwrap(),
            1024,
            Duration::from_secs(60),
            2,
        );
        tokio::spawn(async move {
            loop {
                a.select_next_some().await;
            }
        });
        tokio::spawn(async move {
            loop {
                b.select_next_some().await;
            }
        });
        // On this single-threaded runtime the writer does not run before the
        // next await: the driver gives up on b before its stream opens.
        sa.send(b_id, OutboundId(1), b"before", 0).unwrap();
        assert_eq!(sa.peer_gone(b_id), vec![OutboundId(1)]);
        // The first writer ends (having opened its stream)...
        let first = sa.events.recv().await.unwrap();
        // ...and a new one carries what is sent now.
        sa.send(b_id, OutboundId(2), b"after", 0).unwrap();
        let mut seen = Vec::new();
        while !seen.iter().any(|p: &Vec<u8>| p == b"after") {
            if let StreamEvent::Frame { payload, .. } = sb.events.recv().await.unwrap() {
                seen.push(payload);
            }
        }
        assert_eq!(
            seen,
            vec![b"after".to_vec()],
            "b got a frame queued for the closed connection"
        );
        assert!(
            matches!(
                first,
                StreamEvent::WriterFailed {
                    generation: 1,
                    failure: SendFailure::ConnectionClosed,
                    ..
                }
            ),
            "{first:?}"
        );
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_holds_a_bounded_queue() {
        let mut behaviour = None;
        let mut s = streams(&mut behaviour);
        let a = PeerId::random();
        let big = vec![0u8; 1 << 20];
        let mut queued = 0;
        let failure = loop {
            match s.send(a, OutboundId(queued), &big, 0) {
                Ok(()) => queued += 1,
                Err(f) => break f,
            }
            assert!(
                queued <= 64,
                "queued {queued} MiB for a peer that reads nothing"
            );
        };
        assert!(matches!(failure, SendFailure::Io(_)), "{failure:?}");
        assert_eq!(queued, 63);
        // An inbound answer to it is queued under the same bound, and dropped.
        s.register_inbound(InboundId(9), a, 5);
        assert!(s.respond(InboundId(9), &big));
        assert!(!s.respond(InboundId(9), &big), "answered twice");
    }
}
