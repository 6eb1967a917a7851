//! Client authentication (MAC authenticators) and a sans-IO client.
//!
//! A client shares one 32-byte key with each replica. How that key is agreed is
//! outside this crate (`fed-mesh` derives it from the `fed-handshake` session
//! between the two). A request carries one 16-byte MAC per replica, as in Castro
//! and Liskov's authenticators: each replica checks only its own entry, so a
//! request costs every replica one keyed BLAKE3 instead of a signature check.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use fed_crypto::{DerivedKey, ct_eq, derive_key};

use crate::{
    error::{Error, Result},
    labels,
    membership::{Membership, ReplicaIndex},
    message::{ClientId, Message, Outcome, Reply, Request, Tag},
    wire,
};

/// The secret a client shares with one replica. Zeroized on drop; `Debug` redacts it.
///
/// Holds the two per-purpose MAC keys derived from it (crypto.md's
/// `mac(K, L, parts) = keyed_BLAKE3(derive_key(MAC_KEY, [K, L]), frame(parts))`,
/// with the inner key computed once).
#[derive(Clone)]
pub struct ClientKey {
    request: DerivedKey,
    reply: DerivedKey,
}

impl ClientKey {
    /// Wraps the 32-byte shared secret.
    pub fn new(secret: &[u8; 32]) -> Self {
        let k = fed_crypto::labels::MAC_KEY;
        Self {
            request: derive_key(k, &[secret, labels::REQUEST_MAC.as_bytes()]),
            reply: derive_key(k, &[secret, labels::REPLY_MAC.as_bytes()]),
        }
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

fn keyed(key: &DerivedKey, parts: &[&[u8]]) -> Tag {
    let mut h = blake3::Hasher::new_keyed(key.as_bytes());
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// The MAC of `request` for replica `replica` under `key`.
pub(crate) fn request_tag(
    key: &ClientKey,
    m: &Membership,
    replica: ReplicaIndex,
    client: &ClientId,
    timestamp: u64,
    operation: &[u8],
) -> Tag {
    keyed(
        &key.request,
        &[
            m.id(),
            &replica.to_be_bytes(),
            &client.0,
            &timestamp.to_be_bytes(),
            operation,
        ],
    )
}

/// Whether entry `replica` of the request's authenticator verifies under `key`.
pub(crate) fn check_request(
    key: &ClientKey,
    m: &Membership,
    replica: ReplicaIndex,
    r: &Request,
) -> bool {
    match r.authenticator.get(usize::from(replica)) {
        Some(tag) => ct_eq(
            tag,
            &request_tag(key, m, replica, &r.client, r.timestamp, &r.operation),
        ),
        None => false,
    }
}

fn reply_tag(key: &ClientKey, m: &Membership, r: &Reply) -> Tag {
    keyed(
        &key.reply,
        &[
            m.id(),
            &r.replica.to_be_bytes(),
            &r.view.to_be_bytes(),
            &r.client.0,
            &r.timestamp.to_be_bytes(),
            &wire::encode(&r.outcome),
        ],
    )
}

impl Request {
    /// Builds an authenticated request: `keys[i]` is the key shared with replica `i`.
    pub fn new(
        m: &Membership,
        keys: &[ClientKey],
        client: ClientId,
        timestamp: u64,
        operation: Vec<u8>,
    ) -> Result<Self> {
        if keys.len() != m.len() {
            return Err(Error::InvalidConfig("one client key per replica is needed"));
        }
        let authenticator = keys
            .iter()
            .enumerate()
            .map(|(i, k)| request_tag(k, m, i as ReplicaIndex, &client, timestamp, &operation))
            .collect();
        Ok(Self {
            client,
            timestamp,
            operation,
            authenticator,
        })
    }
}

impl Reply {
    /// Builds a reply authenticated under the key shared with the client.
    pub(crate) fn new(
        key: &ClientKey,
        m: &Membership,
        view: u64,
        client: ClientId,
        timestamp: u64,
        replica: ReplicaIndex,
        outcome: Outcome,
    ) -> Self {
        let mut r = Self {
            view,
            client,
            timestamp,
            replica,
            outcome,
            tag: [0; 16],
        };
        r.tag = reply_tag(key, m, &r);
        r
    }

    /// Whether the tag verifies under `key` (the key shared with `self.replica`).
    pub fn verify(&self, key: &ClientKey, m: &Membership) -> bool {
        ct_eq(&self.tag, &reply_tag(key, m, self))
    }

    /// Encodes the reply in its envelope, for sending to the client.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        wire::seal(wire::Kind::Reply, self)
    }
}

/// What a [`Client`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// `f + 1` replicas sent matching authenticated replies for the request.
    Completed {
        /// The request's timestamp.
        timestamp: u64,
        /// The agreed outcome.
        outcome: Outcome,
    },
}

#[derive(Debug)]
struct Outstanding {
    request: Arc<[u8]>,
    timestamp: u64,
    deadline: u64,
    replies: BTreeMap<ReplicaIndex, (u64, Outcome)>,
}

/// A sans-IO PBFT client with one outstanding request at a time.
///
/// It sends a new request to the primary it believes current, and on every
/// `retransmit_ms` without `f + 1` matching replies sends it to every replica
/// (which forward it to the primary and start their view-change timers). It
/// accepts a result once `f + 1` distinct replicas send matching, authenticated
/// replies. Bounds: one outstanding request, at most `n` stored replies, and at most
/// `n` queued transmits per call.
#[derive(Debug)]
pub struct Client {
    id: ClientId,
    keys: Vec<ClientKey>,
    membership: Arc<Membership>,
    view: u64,
    next_timestamp: u64,
    retransmit_ms: u64,
    outstanding: Option<Outstanding>,
    transmits: VecDeque<(ReplicaIndex, Arc<[u8]>)>,
    events: VecDeque<ClientEvent>,
}

impl Client {
    /// A client with identifier `id`, keys `keys[i]` shared with replica `i`,
    /// first timestamp `first_timestamp` (it must exceed every timestamp this client
    /// used before), retransmitting every `retransmit_ms`.
    pub fn new(
        id: ClientId,
        keys: Vec<ClientKey>,
        membership: Arc<Membership>,
        first_timestamp: u64,
        retransmit_ms: u64,
    ) -> Result<Self> {
        if keys.len() != membership.len() {
            return Err(Error::InvalidConfig("one client key per replica is needed"));
        }
        if retransmit_ms == 0 {
            return Err(Error::InvalidConfig("retransmit_ms must be positive"));
        }
        Ok(Self {
            id,
            keys,
            membership,
            view: 0,
            next_timestamp: first_timestamp.max(1),
            retransmit_ms,
            outstanding: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// The client's identifier.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Whether a request is outstanding.
    pub fn is_busy(&self) -> bool {
        self.outstanding.is_some()
    }

    /// The view the client believes current (from the replies it accepted).
    pub fn view(&self) -> u64 {
        self.view
    }

    /// Submits `operation`; returns its timestamp. Fails with [`Error::Full`] while
    /// another request is outstanding.
    pub fn submit(&mut self, operation: Vec<u8>, now: u64) -> Result<u64> {
        if self.outstanding.is_some() {
            return Err(Error::Full("client's outstanding request slot"));
        }
        let timestamp = self.next_timestamp;
        let request = Request::new(&self.membership, &self.keys, self.id, timestamp, operation)?;
        let bytes: Arc<[u8]> = Message::Request(request).encode()?.into();
        self.next_timestamp += 1;
        self.transmits
            .push_back((self.membership.primary(self.view), bytes.clone()));
        self.outstanding = Some(Outstanding {
            request: bytes,
            timestamp,
            deadline: now.saturating_add(self.retransmit_ms),
            replies: BTreeMap::new(),
        });
        Ok(timestamp)
    }

    /// Handles a reply (its encoded bytes) from a replica.
    pub fn handle_reply(&mut self, bytes: &[u8], _now: u64) -> Result<()> {
        let Message::Reply(reply) = Message::decode(bytes)? else {
            return Err(Error::Unexpected("a client accepts only replies"));
        };
        let key = self
            .keys
            .get(usize::from(reply.replica))
            .ok_or(Error::NotMember(reply.replica))?;
        if reply.client != self.id || !reply.verify(key, &self.membership) {
            return Err(Error::BadRequestAuth);
        }
        let Some(out) = self.outstanding.as_mut() else {
            return Ok(());
        };
        if reply.timestamp != out.timestamp {
            return Ok(());
        }
        out.replies
            .insert(reply.replica, (reply.view, reply.outcome.clone()));
        let matching: Vec<u64> = out
            .replies
            .values()
            .filter(|(_, o)| *o == reply.outcome)
            .map(|(v, _)| *v)
            .collect();
        if matching.len() >= self.membership.weak_quorum() {
            // f + 1 replicas vouch for the view too; follow the highest among them
            // only if f + 1 of them report at least that view.
            let mut views = matching;
            views.sort_unstable();
            let idx = views.len() - self.membership.weak_quorum();
            self.view = self.view.max(views[idx]);
            let timestamp = out.timestamp;
            self.outstanding = None;
            self.events.push_back(ClientEvent::Completed {
                timestamp,
                outcome: reply.outcome,
            });
        }
        Ok(())
    }

    /// Retransmits the outstanding request to every replica if its deadline passed.
    pub fn handle_timeout(&mut self, now: u64) {
        if let Some(out) = self.outstanding.as_mut()
            && now >= out.deadline
        {
            for i in 0..self.membership.len() {
                self.transmits
                    .push_back((i as ReplicaIndex, out.request.clone()));
            }
            out.deadline = now.saturating_add(self.retransmit_ms);
        }
    }

    /// Next message to send: `(replica, bytes)`.
    pub fn poll_transmit(&mut self) -> Option<(ReplicaIndex, Arc<[u8]>)> {
        self.transmits.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.outstanding.as_ref().map(|o| o.deadline)
    }
}

#[cfg(test)]
mod tests {
    use fed_crypto::Identity;

    use super::*;

    #[test]
    fn cached_mac_equals_the_crypto_spec() {
        let secret = [7u8; 32];
        let key = ClientKey::new(&secret);
        let parts: [&[u8]; 2] = [b"ab", b"c"];
        let spec = fed_crypto::mac(&secret, labels::REQUEST_MAC, &parts);
        assert_eq!(keyed(&key.request, &parts)[..], spec.0[..16]);
        assert_eq!(format!("{key:?}"), "ClientKey(<redacted>)");
    }

    #[test]
    fn authenticators_check_per_replica() {
        let ids: Vec<Identity> = (1..=4u8)
            .map(|i| Identity::from_seeds(&[i; 32], None))
            .collect();
        let m = Membership::new(ids.iter().map(|i| i.public().clone()).collect()).unwrap();
        let keys: Vec<ClientKey> = (0..4u8).map(|i| ClientKey::new(&[i; 32])).collect();
        let r = Request::new(&m, &keys, ClientId([9; 32]), 3, b"op".to_vec()).unwrap();
        for i in 0..4u16 {
            assert!(check_request(&keys[usize::from(i)], &m, i, &r));
            assert!(!check_request(&keys[(usize::from(i) + 1) % 4], &m, i, &r));
        }
        let mut changed = r.clone();
        changed.timestamp = 4;
        assert!(!check_request(&keys[0], &m, 0, &changed));
        let mut short = r.clone();
        short.authenticator.truncate(2);
        assert!(!check_request(&keys[3], &m, 3, &short));
        let reply = Reply::new(
            &keys[2],
            &m,
            1,
            r.client,
            3,
            2,
            Outcome::Executed(b"ok".to_vec()),
        );
        assert!(reply.verify(&keys[2], &m));
        assert!(!reply.verify(&keys[1], &m));
        let mut forged = reply.clone();
        forged.outcome = Outcome::Executed(b"no".to_vec());
        assert!(!forged.verify(&keys[2], &m));
    }
}
