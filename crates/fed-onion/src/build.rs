//! The sender's side: building a packet for a route, and opening the reply.

use std::collections::BTreeSet;

use fed_crypto::{DerivedKey, NodeId, XWingCiphertext, Zeroizing, ct_eq};
use rand_core::CryptoRng;

use crate::{
    cert::OnionKeyCertificate,
    crypt::{
        HopKeys, header_mac, keystream, open_payload, seal_payload, xor_in_place, xor_keystream,
    },
    error::{Error, Result},
    format::{
        BETA_LEN, CLEAR_LEN, Command, EPOCH_LEN, Kind, MAC_LEN, MAX_HOPS, OFF_BETA, OFF_BODY,
        OFF_CT, OFF_EPOCH, OFF_MAC, PREFIX_LEN, REPLY_ID_LEN, ROUTING_LEN, ReplyId, Routing,
        SLOT_LEN, SizeClass, prefix,
    },
    packet::{Packet, ReplyPacket},
};

/// How to build a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// The size class; `None` picks the smallest class the payload fits.
    pub class: Option<SizeClass>,
    /// Whether the sender wants a reply: relays then keep reply state for the
    /// packet and the destination gets a [`ReplyHandle`](crate::ReplyHandle).
    pub reply: bool,
}

impl Default for BuildOptions {
    /// The smallest fitting class, with a reply.
    fn default() -> Self {
        Self {
            class: None,
            reply: true,
        }
    }
}

/// A packet ready to send, and what the sender keeps to read the reply.
#[derive(Debug)]
#[non_exhaustive]
pub struct BuiltPacket {
    /// Where to send the packet: the first node of the route.
    pub first_hop: NodeId,
    /// The packet.
    pub packet: Packet,
    /// The keys to open the reply with, if a reply was requested.
    pub reply: Option<PendingReply>,
}

/// What the original sender keeps to open the reply to a packet: the reply id the
/// first relay will use, each relay's reply-layer key and the destination's
/// end-to-end reply key. Zeroized on drop; `Debug` shows the reply id only.
///
/// The sender files pending replies by [`reply_id`](Self::reply_id) (bounded, and
/// dropped after the relays' reply TTL) and hands each arriving [`ReplyPacket`]
/// with that id to [`open`](Self::open). A pending reply opens one reply only:
/// `open` consumes it on success, so a duplicate of a reply already opened (the
/// first hop sending it twice) finds nothing to open it with. A reply that fails
/// to open hands the pending reply back, so a forged or damaged reply does not
/// stop the genuine one.
pub struct PendingReply {
    reply_id: ReplyId,
    first_hop: NodeId,
    destination: NodeId,
    layers: Vec<DerivedKey>,
    end_to_end: DerivedKey,
}

impl PendingReply {
    /// The reply id the first relay labels the reply with.
    pub fn reply_id(&self) -> ReplyId {
        self.reply_id
    }

    /// The node the reply will come from (the route's first node).
    pub fn first_hop(&self) -> NodeId {
        self.first_hop
    }

    /// The destination that will seal the reply.
    pub fn destination(&self) -> NodeId {
        self.destination
    }

    /// Removes every relay's layer and opens the destination's end-to-end
    /// encryption, consuming the pending reply: each reply is opened once.
    ///
    /// Fails, handing the pending reply back with the error, if the reply carries
    /// another reply id ([`Error::UnexpectedReply`]), or if anyone but the
    /// destination sealed it or anything modified it on the way
    /// ([`Error::ReplyAuthentication`]).
    ///
    /// Once a reply has opened, nothing is left to open a second with, not even a
    /// duplicate of the first:
    ///
    /// ```compile_fail,E0382
    /// # fn duplicate(pending: fed_onion::PendingReply, reply: &fed_onion::ReplyPacket) {
    /// let first = pending.open(reply);
    /// let second = pending.open(reply); // `pending` was moved by the first call
    /// # }
    /// ```
    // The error carries the pending reply back; one call per reply, beside a
    // keystream pass over the body per hop, so its size does not matter.
    #[allow(clippy::result_large_err)]
    pub fn open(self, reply: &ReplyPacket) -> Result<Vec<u8>, (Self, Error)> {
        if !ct_eq(&reply.reply_id().0, &self.reply_id.0) {
            return Err((self, Error::UnexpectedReply));
        }
        let mut body = reply.body().to_vec();
        for key in &self.layers {
            xor_keystream(key, &mut body);
        }
        match open_payload(&self.end_to_end, &mut body) {
            Some(payload) => Ok(payload),
            None => Err((self, Error::ReplyAuthentication)),
        }
    }
}

impl std::fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReply")
            .field("reply_id", &self.reply_id)
            .field("first_hop", &self.first_hop)
            .field("hops", &(self.layers.len() + 1))
            .finish_non_exhaustive()
    }
}

/// Builds a packet carrying `payload` along `route`: the relays in order, then the
/// destination (so `route.len()` is the number of hops, 1 to [`MAX_HOPS`]).
///
/// Every certificate must be valid at `now_ms` and name a different node. The
/// randomness comes from `rng` only: X-Wing encapsulations, the padding of the
/// header, and the first reply id.
pub fn build_packet<R: CryptoRng + ?Sized>(
    route: &[OnionKeyCertificate],
    payload: &[u8],
    options: &BuildOptions,
    now_ms: u64,
    rng: &mut R,
) -> Result<BuiltPacket> {
    let n = route.len();
    if n == 0 || n > MAX_HOPS {
        return Err(Error::InvalidRouteLength {
            len: n,
            max: MAX_HOPS,
        });
    }
    let mut seen = BTreeSet::new();
    for cert in route {
        if !seen.insert(cert.node_id()) {
            return Err(Error::DuplicateHop(cert.node_id()));
        }
        if !cert.is_valid_at(now_ms) {
            return Err(Error::CertificateNotValid {
                node: cert.node_id(),
                epoch: cert.epoch().epoch,
                now_ms,
            });
        }
    }
    let class = SizeClass::choose(options.class, payload.len())?;

    // One encapsulation per hop; everything else follows from the shared secrets.
    let mut cts: Vec<XWingCiphertext> = Vec::with_capacity(n);
    let mut keys: Vec<HopKeys> = Vec::with_capacity(n);
    for cert in route {
        let (ct, ss) = cert.onion_key().encapsulate(rng);
        keys.push(HopKeys::new(&ss));
        cts.push(ct);
    }
    let first_reply_id = if options.reply {
        let mut id = [0u8; REPLY_ID_LEN];
        rng.fill_bytes(&mut id);
        ReplyId(id)
    } else {
        ReplyId([0; REPLY_ID_LEN])
    };
    let routing = |i: usize| {
        Routing {
            command: match route.get(i + 1) {
                Some(next) => Command::Forward(next.node_id()),
                None => Command::Deliver,
            },
            reply: options.reply,
            prev_reply_id: match (options.reply, i) {
                (false, _) => ReplyId([0; REPLY_ID_LEN]),
                (true, 0) => first_reply_id,
                (true, _) => keys[i - 1].reply_id(),
            },
        }
        .encode()
    };

    // Header keystreams, BETA_LEN + SLOT_LEN bytes each.
    let streams: Vec<Zeroizing<Vec<u8>>> = keys
        .iter()
        .map(|k| {
            let mut s = Zeroizing::new(vec![0u8; BETA_LEN + SLOT_LEN]);
            keystream(&k.header_stream(), &mut s);
            s
        })
        .collect();

    // The filler: what hops 0..n-2 append, as seen by hop n-1.
    let mut filler: Vec<u8> = Vec::with_capacity((n - 1) * SLOT_LEN);
    for (i, stream) in streams.iter().enumerate().take(n - 1) {
        filler.extend_from_slice(&[0u8; SLOT_LEN]);
        xor_in_place(&mut filler, &stream[BETA_LEN - i * SLOT_LEN..]);
    }

    let pre = prefix(Kind::Forward, class);
    let mut body = vec![0u8; class.body_len()];
    let last = n - 1;
    seal_payload(&keys[last].payload(), payload, &mut body)?;

    // The destination's routing area: its routing block, random padding, filler.
    let mut beta = vec![0u8; BETA_LEN];
    let open_len = BETA_LEN - filler.len();
    beta[..ROUTING_LEN].copy_from_slice(&routing(last));
    rng.fill_bytes(&mut beta[ROUTING_LEN..open_len]);
    xor_in_place(&mut beta[..open_len], &streams[last]);
    beta[open_len..].copy_from_slice(&filler);
    xor_keystream(&keys[last].body_stream(), &mut body);
    let mut mac = hop_mac(
        &keys[last],
        &pre,
        route[last].epoch().epoch,
        &cts[last],
        &beta,
        &body,
    );

    // Wrap the layers from the destination back to the first hop.
    for i in (0..last).rev() {
        let mut next_beta = vec![0u8; BETA_LEN];
        next_beta[..ROUTING_LEN].copy_from_slice(&routing(i));
        let mut at = ROUTING_LEN;
        next_beta[at..at + MAC_LEN].copy_from_slice(&mac);
        at += MAC_LEN;
        next_beta[at..at + EPOCH_LEN].copy_from_slice(&route[i + 1].epoch().epoch.to_be_bytes());
        at += EPOCH_LEN;
        next_beta[at..at + cts[i + 1].as_bytes().len()].copy_from_slice(cts[i + 1].as_bytes());
        at += cts[i + 1].as_bytes().len();
        debug_assert_eq!(at, SLOT_LEN);
        next_beta[at..].copy_from_slice(&beta[..BETA_LEN - SLOT_LEN]);
        xor_in_place(&mut next_beta, &streams[i]);
        beta = next_beta;
        xor_keystream(&keys[i].body_stream(), &mut body);
        mac = hop_mac(
            &keys[i],
            &pre,
            route[i].epoch().epoch,
            &cts[i],
            &beta,
            &body,
        );
    }

    let mut bytes = vec![0u8; class.packet_len()];
    bytes[..PREFIX_LEN].copy_from_slice(&pre);
    bytes[OFF_MAC..OFF_EPOCH].copy_from_slice(&mac);
    bytes[OFF_EPOCH..OFF_CT].copy_from_slice(&route[0].epoch().epoch.to_be_bytes());
    bytes[OFF_CT..OFF_BETA].copy_from_slice(cts[0].as_bytes());
    bytes[OFF_BETA..OFF_BODY].copy_from_slice(&beta);
    bytes[OFF_BODY..].copy_from_slice(&body);
    debug_assert_eq!(OFF_BETA - OFF_MAC, CLEAR_LEN);

    let reply = options.reply.then(|| {
        let end_to_end = keys[last].reply_payload();
        let layers = keys[..last].iter().map(HopKeys::reply_stream).collect();
        PendingReply {
            reply_id: first_reply_id,
            first_hop: route[0].node_id(),
            destination: route[last].node_id(),
            layers,
            end_to_end,
        }
    });
    Ok(BuiltPacket {
        first_hop: route[0].node_id(),
        packet: Packet::from_parts(class, bytes),
        reply,
    })
}

/// The MAC of a hop over what it will receive: every byte after the MAC field
/// (epoch, ciphertext, routing area, body), then the prefix.
fn hop_mac(
    keys: &HopKeys,
    prefix: &[u8],
    epoch: u64,
    ct: &XWingCiphertext,
    beta: &[u8],
    body: &[u8],
) -> [u8; MAC_LEN] {
    header_mac(
        &keys.header_mac(),
        &[&epoch.to_be_bytes(), ct.as_bytes(), beta, body, prefix],
    )
}
