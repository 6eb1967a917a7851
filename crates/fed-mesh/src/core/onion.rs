//! Onion routing over the mesh: this node as a relay and as a destination, and
//! onion-routed queries at their origin.
//!
//! A forward packet travels as a request on `/exo-fed/onion/1` and the reply
//! comes back as that request's answer, hop by hop: each relay holds the
//! inbound request open until its next hop answers, adds its reply layer, and
//! answers in turn. Relays see packets only; the destination decodes the query,
//! searches, and seals a signed answer in the reply.

use fed_crypto::NodeId;
use fed_onion::{
    BuildOptions, KeyEpoch, OnionKey, OnionKeyCertificate, PendingReply, Processed, Relay,
    RelayConfig, ReplyHandle, ReplyPacket, SizeClass,
};
use libp2p_identity::PeerId;
use rand_chacha::{ChaCha20Rng, rand_core::Rng};

use super::{
    Core, CoreConfig, InboundId,
    peers::{Failure, Purpose},
    query::{self, Child, ChildKey, SearchFor},
};
use crate::{
    error::Result,
    substrate::{ScoredPattern, SubstrateError},
    types::PeerStatus,
    wire::{self, Kind, OnionResponse, Protocol, QUERY_ID_LEN, QueryRequest, QueryResponse},
};

/// Clock allowance for onion key windows: a key is valid from one minute before
/// it is made.
const KEY_SKEW_MS: u64 = 60_000;

pub(crate) struct OnionState {
    relay: Relay,
    rotate_at: u64,
    pub(crate) certificate: OnionKeyCertificate,
}

impl OnionState {
    pub(crate) fn new(config: &CoreConfig, now: u64, rng: &mut ChaCha20Rng) -> Result<Self> {
        // Onion key epochs are the key's creation time in milliseconds, so a
        // restarted node's first key is above every epoch it used before (and
        // whose replay caches it lost): no floor to restore.
        let mut relay = Relay::new(config.identity.node_id(), RelayConfig::default(), None)?;
        let (key, rotate_at) = make_key(config, now, now, rng)?;
        let certificate = key.certificate().clone();
        relay.install_key(key)?;
        Ok(Self {
            relay,
            rotate_at,
            certificate,
        })
    }

    pub(crate) fn next_timeout(&self) -> Option<u64> {
        Some(
            self.relay
                .poll_timeout()
                .map_or(self.rotate_at, |t| t.min(self.rotate_at)),
        )
    }
}

fn make_key(
    config: &CoreConfig,
    epoch: u64,
    now: u64,
    rng: &mut ChaCha20Rng,
) -> Result<(OnionKey, u64)> {
    let lifetime = config.timing.onion_key_lifetime_ms;
    let window = KeyEpoch {
        epoch,
        not_before_ms: now.saturating_sub(KEY_SKEW_MS),
        not_after_ms: now.saturating_add(lifetime),
    };
    let key = OnionKey::generate(&config.identity, window, config.relay, rng)?;
    Ok((key, now.saturating_add(lifetime / 4 * 3)))
}

/// Why an onion packet was sent.
pub(crate) enum OnionPurpose {
    /// Relayed for a previous hop, whose request `inbound` waits for the answer.
    Relay {
        inbound: InboundId,
        next_hop: NodeId,
    },
    /// This node's own query to a target.
    Origin { child: ChildKey },
}

/// What the origin keeps to open a reply.
pub(crate) struct OnionChild {
    pending: Option<PendingReply>,
}

/// A packet delivered to this node, waiting for the substrate.
pub(crate) struct DeliverCtx {
    inbound: InboundId,
    handle: ReplyHandle,
    request: QueryRequest,
    digest: [u8; 32],
}

impl Core {
    /// Sends query `qid` to `target` through `relays` onion relays.
    pub(super) fn send_onion_query(
        &mut self,
        qid: [u8; QUERY_ID_LEN],
        target: NodeId,
        relays: u8,
        now: u64,
    ) {
        let Some(request) = self.queries.request(&qid).map(|(r, _)| r.clone()) else {
            return;
        };
        let deadline = self.queries.next_deadline_of(&qid).unwrap_or(now);
        let mut child_id = [0u8; QUERY_ID_LEN];
        self.rng.fill_bytes(&mut child_id);
        let mut request = request;
        request.id = child_id;
        request.hops_left = 0;
        request.budget_ms = (deadline.saturating_sub(now) * 9 / 10).min(60_000) as u32;
        let built = (|| {
            let target_cert = self.directory.onion_certificate(&target).ok_or(
                fed_onion::Error::NotEnoughRelays {
                    wanted: 1,
                    available: 0,
                },
            )?;
            let certificates = self.directory.onion_certificates(now);
            let route = fed_onion::select_path(
                &certificates,
                self.local_node,
                &target_cert,
                usize::from(relays),
                now,
                &mut self.rng,
            )?;
            let payload = wire::envelope(Kind::QueryRequest, &wire::encode(&request));
            fed_onion::build_packet(
                &route,
                &payload,
                &BuildOptions {
                    class: None,
                    reply: true,
                },
                now,
                &mut self.rng,
            )
        })();
        let built = match built {
            Ok(b) => b,
            Err(e) => {
                tracing::info!(%target, error = %e, "no onion path to target");
                self.add_child(
                    qid,
                    Child {
                        node: Some(target),
                        peer: None,
                        id: child_id,
                        status: Some(PeerStatus::Unreachable),
                        onion: None,
                    },
                );
                return;
            }
        };
        let first = built.first_hop;
        let Some(key) = self.add_child(
            qid,
            Child {
                node: Some(target),
                peer: None,
                id: child_id,
                status: None,
                onion: Some(OnionChild {
                    pending: built.reply,
                }),
            },
        ) else {
            return;
        };
        let Some(peer) = self.peer_of(&first) else {
            self.on_query_child_failed(key, Failure::Unreachable, now);
            return;
        };
        let addrs = self.directory.addrs(&first);
        let plaintext = wire::envelope(Kind::OnionPacket, built.packet.as_bytes());
        self.send_or_queue(
            peer,
            Protocol::Onion,
            plaintext,
            Purpose::Onion(OnionPurpose::Origin { child: key }),
            addrs,
            deadline,
            now,
        );
    }

    fn answer_onion(&mut self, inbound: InboundId, reply: Option<Vec<u8>>) {
        let body = wire::encode(&OnionResponse {
            reply: reply.map(serde_bytes::ByteBuf::from),
        });
        self.respond_sealed(inbound, Kind::OnionResponse, &body);
    }

    fn count_drop(&mut self, reason: &'static str) {
        *self.stats.onion_dropped.entry(reason).or_default() += 1;
    }

    pub(super) fn on_onion_request(
        &mut self,
        peer: PeerId,
        inbound: InboundId,
        plaintext: &[u8],
        now: u64,
    ) {
        let Ok((Kind::OnionPacket, packet)) = wire::open_envelope(plaintext) else {
            self.malformed_request(inbound, now);
            return;
        };
        let Some(from) = self.peers.get(&peer).and_then(|p| p.node) else {
            self.answer_onion(inbound, None);
            return;
        };
        match self.onion.relay.process_bytes(packet, from, now) {
            Processed::Forward { next_hop, packet } => {
                let Some(next) = self.peer_of(&next_hop) else {
                    self.count_drop("unknown_next_hop");
                    self.answer_onion(inbound, None);
                    return;
                };
                self.stats.onion_forwarded += 1;
                let addrs = self.directory.addrs(&next_hop);
                let expires = now.saturating_add(self.onion.relay.config().reply_ttl_ms());
                let plaintext = wire::envelope(Kind::OnionPacket, packet.as_bytes());
                self.send_or_queue(
                    next,
                    Protocol::Onion,
                    plaintext,
                    Purpose::Onion(OnionPurpose::Relay { inbound, next_hop }),
                    addrs,
                    expires,
                    now,
                );
            }
            Processed::Deliver(delivery) => {
                self.stats.onion_delivered += 1;
                if self.queries.served_now() >= self.config.limits.max_remote_queries {
                    self.count_drop("overloaded");
                    self.answer_onion(inbound, None);
                    return;
                }
                let request = wire::decode_body::<QueryRequest>(
                    &delivery.payload,
                    Kind::QueryRequest,
                    "onion query",
                );
                let (Ok(request), Some(handle)) = (request, delivery.reply) else {
                    self.count_drop("bad_payload");
                    self.answer_onion(inbound, None);
                    return;
                };
                if query::check_request(&request).is_err() {
                    self.count_drop("bad_payload");
                    self.answer_onion(inbound, None);
                    return;
                }
                let digest = query::query_digest(&request);
                let search = self.next_search_id();
                let pattern_query = query::to_pattern_query(&request);
                self.queries.deliveries += 1;
                self.queries.add_search(
                    search,
                    SearchFor::Onion(Box::new(DeliverCtx {
                        inbound,
                        handle,
                        request,
                        digest,
                    })),
                );
                self.push(super::Action::Search {
                    id: search,
                    query: pattern_query,
                });
            }
            Processed::Drop(reason) => {
                self.count_drop(reason.as_str());
                self.answer_onion(inbound, None);
            }
            Processed::Reply { .. } => {
                self.count_drop("reply_as_request");
                self.answer_onion(inbound, None);
            }
        }
    }

    pub(super) fn on_onion_results(
        &mut self,
        ctx: DeliverCtx,
        result: std::result::Result<Vec<ScoredPattern>, SubstrateError>,
        _now: u64,
    ) {
        self.queries.deliveries = self.queries.deliveries.saturating_sub(1);
        let top_k = usize::from(ctx.request.top_k);
        let mut hits =
            query::to_wire_hits(result.unwrap_or_default(), ctx.request.embeddings, top_k);
        let max = SizeClass::Large.max_payload_len();
        let payload = loop {
            let Some(signed) = self.sign_answer(&ctx.request.id, &ctx.digest, hits.clone()) else {
                return self.answer_onion(ctx.inbound, None);
            };
            let answer = QueryResponse {
                responses: vec![signed],
                reports: Vec::new(),
                seen: false,
            };
            let bytes = wire::envelope(Kind::QueryResponse, &wire::encode(&answer));
            if bytes.len() <= max || hits.is_empty() {
                break bytes;
            }
            hits.pop();
        };
        match ctx.handle.seal(&payload, None) {
            Ok((_, reply)) => self.answer_onion(ctx.inbound, Some(reply.into_bytes())),
            Err(e) => {
                tracing::warn!(error = %e, "could not seal an onion reply");
                self.answer_onion(ctx.inbound, None);
            }
        }
    }

    pub(super) fn on_onion_response(
        &mut self,
        peer: PeerId,
        purpose: OnionPurpose,
        plaintext: &[u8],
        now: u64,
    ) {
        let Ok(response) =
            wire::decode_body::<OnionResponse>(plaintext, Kind::OnionResponse, "onion answer")
        else {
            self.cut_off(peer, crate::types::CutOffReason::Malformed, now);
            self.on_onion_failed(peer, purpose, Failure::Malformed, now);
            return;
        };
        match purpose {
            OnionPurpose::Relay { inbound, next_hop } => {
                let reply = response.reply.and_then(|bytes| {
                    match self.onion.relay.process_bytes(&bytes, next_hop, now) {
                        Processed::Reply { packet, .. } => Some(packet.into_bytes()),
                        Processed::Drop(reason) => {
                            self.count_drop(reason.as_str());
                            None
                        }
                        _ => None,
                    }
                });
                if reply.is_some() {
                    self.stats.onion_replies_relayed += 1;
                }
                self.answer_onion(inbound, reply);
            }
            OnionPurpose::Origin { child } => {
                let opened = (|| {
                    let c = self.queries.child_mut(child)?;
                    let pending = c.onion.as_mut()?.pending.take()?;
                    let target = c.node?;
                    let child_id = c.id;
                    let reply = ReplyPacket::from_bytes(&response.reply?).ok()?;
                    let payload = pending.open(&reply).ok()?;
                    let answer = wire::decode_body::<QueryResponse>(
                        &payload,
                        Kind::QueryResponse,
                        "onion answer",
                    )
                    .ok()?;
                    let signed = answer.responses.into_iter().next()?;
                    (signed.source == target.0).then_some((signed, child_id, target))
                })();
                match opened {
                    Some((signed, child_id, target)) => {
                        let hits = signed.hits.len();
                        let checked = self
                            .queries
                            .request(&child.query)
                            .map(|(r, d)| (r.clone(), d));
                        let verdict = checked.map(|(request, digest)| {
                            self.check_answer(&signed, &child_id, &request, &digest, now)
                        });
                        match verdict {
                            Some(Ok(())) => {
                                self.queries.add_response(child, signed);
                                if let Some(c) = self.queries.child_mut(child) {
                                    c.status = Some(PeerStatus::Answered { hits });
                                }
                            }
                            Some(Err(problem)) => {
                                self.queries.add_rejection(child, target, problem.reason());
                                if let Some(c) = self.queries.child_mut(child) {
                                    c.status = Some(PeerStatus::Answered { hits: 0 });
                                    c.node = None;
                                }
                            }
                            None => {}
                        }
                        self.maybe_finish(child.query, now);
                    }
                    None => self.on_query_child_failed(child, Failure::Unreachable, now),
                }
            }
        }
    }

    pub(super) fn on_onion_failed(
        &mut self,
        _peer: PeerId,
        purpose: OnionPurpose,
        failure: Failure,
        now: u64,
    ) {
        match purpose {
            OnionPurpose::Relay { inbound, .. } => self.answer_onion(inbound, None),
            OnionPurpose::Origin { child } => self.on_query_child_failed(child, failure, now),
        }
    }

    pub(super) fn onion_timeout(&mut self, now: u64) {
        self.onion.relay.handle_timeout(now);
        if now >= self.onion.rotate_at {
            let epoch = now.max(self.onion.certificate.epoch().epoch + 1);
            match make_key(&self.config, epoch, now, &mut self.rng) {
                Ok((key, rotate_at)) => {
                    let certificate = key.certificate().clone();
                    if self.onion.relay.install_key(key).is_ok() {
                        self.onion.certificate = certificate;
                        self.onion.rotate_at = rotate_at;
                        if let Err(e) = self.publish_record(now) {
                            tracing::warn!(error = %e, "could not publish the new onion key");
                        }
                    } else {
                        self.onion.rotate_at = now.saturating_add(60_000);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not make an onion key");
                    self.onion.rotate_at = now.saturating_add(60_000);
                }
            }
        }
    }
}
