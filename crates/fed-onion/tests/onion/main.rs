//! fed-onion's integration suite: the proofs of issue 5, one module per property,
//! over a small simulated federation of relays driven by hand.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod certs;
mod paths;
mod props;
mod replay;
mod replies;
mod sizes;
mod spec;
mod tamper;
mod unlinkable;

use std::collections::BTreeMap;

use fed_crypto::{Identity, NodeId};
use fed_onion::{
    BuildOptions, BuiltPacket, KeyEpoch, Message, OnionKey, OnionKeyCertificate, Processed, Relay,
    RelayConfig, ReplyPacket,
};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};

/// The simulated wall clock, Unix milliseconds.
pub(crate) const NOW: u64 = 1_700_000_000_000;
/// One hour.
pub(crate) const HOUR: u64 = 3_600_000;

pub(crate) fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Number of proptest cases: `FED_PROPTEST_CASES`, or a default small enough for
/// debug builds on two cores.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("FED_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Epoch 1, valid from an hour before [`NOW`] to an hour after.
pub(crate) fn epoch(n: u64) -> KeyEpoch {
    KeyEpoch {
        epoch: n,
        not_before_ms: NOW - HOUR,
        not_after_ms: NOW + HOUR,
    }
}

pub(crate) struct Node {
    pub(crate) identity: Identity,
    pub(crate) relay: Relay,
    pub(crate) cert: OnionKeyCertificate,
}

/// A federation of relays, each with one epoch-1 onion key, and a sender that is
/// not one of them.
pub(crate) struct Net {
    pub(crate) nodes: BTreeMap<NodeId, Node>,
    /// Node ids in creation order.
    pub(crate) ids: Vec<NodeId>,
    pub(crate) sender: NodeId,
    pub(crate) rng: ChaCha20Rng,
}

/// One step of a packet's journey: who processed what, and what came out.
pub(crate) struct Hop {
    pub(crate) node: NodeId,
    pub(crate) input: Vec<u8>,
    pub(crate) output: Option<Vec<u8>>,
}

/// The outcome of driving a packet: the hops, and how it ended.
pub(crate) struct Journey {
    pub(crate) hops: Vec<Hop>,
    pub(crate) end: End,
}

pub(crate) enum End {
    /// Delivered at the last hop, with the payload; and, if a reply was sealed and
    /// routed back, the reply as it reached the sender.
    Delivered {
        payload: Vec<u8>,
        reply: Option<ReplyPacket>,
    },
    /// Dropped at a hop (index into `hops`).
    Dropped(usize, fed_onion::DropReason),
}

impl Net {
    pub(crate) fn new(n: usize, seed: u64) -> Net {
        Net::with(n, seed, RelayConfig::default(), |_| true)
    }

    pub(crate) fn with(
        n: usize,
        seed: u64,
        config: RelayConfig,
        relays: impl Fn(usize) -> bool,
    ) -> Net {
        let mut rng = rng(seed);
        let mut nodes = BTreeMap::new();
        let mut ids = Vec::new();
        for i in 0..n {
            let identity = Identity::generate(&mut rng, false);
            let key = OnionKey::generate(&identity, epoch(1), relays(i), &mut rng).unwrap();
            let cert = key.certificate().clone();
            let mut relay = Relay::new(identity.node_id(), config.clone(), None).unwrap();
            relay.install_key(key).unwrap();
            ids.push(identity.node_id());
            nodes.insert(
                identity.node_id(),
                Node {
                    identity,
                    relay,
                    cert,
                },
            );
        }
        let sender = Identity::generate(&mut rng, false).node_id();
        Net {
            nodes,
            ids,
            sender,
            rng,
        }
    }

    pub(crate) fn cert(&self, i: usize) -> OnionKeyCertificate {
        self.nodes[&self.ids[i]].cert.clone()
    }

    pub(crate) fn route(&self, idx: &[usize]) -> Vec<OnionKeyCertificate> {
        idx.iter().map(|&i| self.cert(i)).collect()
    }

    pub(crate) fn relay(&mut self, id: NodeId) -> &mut Relay {
        &mut self.nodes.get_mut(&id).unwrap().relay
    }

    pub(crate) fn build(
        &mut self,
        idx: &[usize],
        payload: &[u8],
        opts: BuildOptions,
    ) -> BuiltPacket {
        let route = self.route(idx);
        fed_onion::build_packet(&route, payload, &opts, NOW, &mut self.rng).unwrap()
    }

    /// Processes `bytes` at `at`, received from `from`.
    pub(crate) fn step(&mut self, at: NodeId, from: NodeId, bytes: &[u8]) -> Processed {
        self.relay(at).process_bytes(bytes, from, NOW)
    }

    /// Drives a packet along its route to the end. At the destination, if
    /// `reply` is given and the sender asked for one, seals it and drives it back
    /// to the sender. `tamper(hop_index, bytes)` may modify what each hop receives.
    pub(crate) fn drive(
        &mut self,
        built: BuiltPacket,
        reply: Option<&[u8]>,
        mut tamper: impl FnMut(usize, &mut Vec<u8>),
    ) -> Journey {
        let mut hops = Vec::new();
        let mut from = self.sender;
        let mut at = built.first_hop;
        let mut bytes = built.packet.into_bytes();
        let mut delivered = None;
        loop {
            tamper(hops.len(), &mut bytes);
            let index = hops.len();
            let outcome = self.step(at, from, &bytes);
            let (next, out, msg) = match outcome {
                Processed::Forward { next_hop, packet } => (
                    next_hop,
                    Some(packet.as_bytes().to_vec()),
                    Message::from(packet),
                ),
                Processed::Deliver(d) => {
                    let payload = d.payload;
                    match (reply, d.reply) {
                        (Some(r), Some(handle)) => {
                            let (to, packet) = handle.seal(r, None).unwrap();
                            if to == self.sender {
                                hops.push(Hop {
                                    node: at,
                                    input: bytes,
                                    output: Some(packet.as_bytes().to_vec()),
                                });
                                return Journey {
                                    hops,
                                    end: End::Delivered {
                                        payload,
                                        reply: Some(packet),
                                    },
                                };
                            }
                            delivered = Some(payload);
                            (to, Some(packet.as_bytes().to_vec()), Message::from(packet))
                        }
                        _ => {
                            hops.push(Hop {
                                node: at,
                                input: bytes,
                                output: None,
                            });
                            return Journey {
                                hops,
                                end: End::Delivered {
                                    payload,
                                    reply: None,
                                },
                            };
                        }
                    }
                }
                Processed::Reply {
                    previous_hop,
                    packet,
                } => {
                    let out = packet.as_bytes().to_vec();
                    if previous_hop == self.sender {
                        hops.push(Hop {
                            node: at,
                            input: bytes,
                            output: Some(out),
                        });
                        return Journey {
                            hops,
                            end: End::Delivered {
                                payload: delivered.expect("a reply follows a delivery"),
                                reply: Some(packet),
                            },
                        };
                    }
                    (previous_hop, Some(out), Message::from(packet))
                }
                Processed::Drop(reason) => {
                    hops.push(Hop {
                        node: at,
                        input: bytes,
                        output: None,
                    });
                    return Journey {
                        hops,
                        end: End::Dropped(index, reason),
                    };
                }
            };
            hops.push(Hop {
                node: at,
                input: bytes,
                output: out,
            });
            bytes = msg.as_bytes().to_vec();
            from = at;
            at = next;
        }
    }
}

impl Journey {
    pub(crate) fn payload(&self) -> &[u8] {
        match &self.end {
            End::Delivered { payload, .. } => payload,
            End::Dropped(at, reason) => panic!("dropped at hop {at}: {reason}"),
        }
    }

    pub(crate) fn reply(&self) -> &ReplyPacket {
        match &self.end {
            End::Delivered {
                reply: Some(reply), ..
            } => reply,
            End::Delivered { reply: None, .. } => panic!("no reply"),
            End::Dropped(at, reason) => panic!("dropped at hop {at}: {reason}"),
        }
    }
}
