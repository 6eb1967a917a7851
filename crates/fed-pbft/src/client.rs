//! Client authentication (MAC authenticators) and a sans-IO client.
//!
//! A client shares one 32-byte key with each replica. How that key is agreed is
//! outside this crate (`fed-mesh` derives it from the `fed-handshake` session
//! between the two). A request carries one 16-byte MAC per replica, as in Castro
//! and Liskov's authenticators: each replica checks only its own entry, so a
//! request costs every replica one keyed BLAKE3 instead of a signature check.
//!
//! The membership, the replica and the client are bound into the MAC keys, derived
//! once per client and replica ([`BoundKey`]); a tag then covers only what changes
//! per message, so a 100-byte operation costs two BLAKE3 compressions and a short
//! reply one (docs/protocol/pbft.md §3).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use fed_crypto::{DerivedKey, ct_eq, derive_key};
use zeroize::Zeroize;

use crate::{
    error::{Error, Result},
    labels,
    membership::{Membership, ReplicaIndex},
    message::{ClientId, Message, Outcome, Reply, Request, Tag},
    wire,
};

/// The secret a client shares with one replica. Zeroized on drop; `Debug` redacts it.
#[derive(Clone)]
pub struct ClientKey {
    secret: DerivedKey,
}

impl ClientKey {
    /// Wraps the 32-byte shared secret.
    pub fn new(secret: &[u8; 32]) -> Self {
        Self {
            secret: DerivedKey::from_bytes(*secret),
        }
    }

    /// The MAC keys of this secret for `client` talking to `replica` of `m`.
    pub(crate) fn bind(
        &self,
        m: &Membership,
        replica: ReplicaIndex,
        client: &ClientId,
    ) -> BoundKey {
        let parts: [&[u8]; 4] = [
            self.secret.as_bytes(),
            m.id(),
            &replica.to_be_bytes(),
            &client.0,
        ];
        BoundKey {
            request: derive_key(labels::REQUEST_MAC, &parts),
            reply: derive_key(labels::REPLY_MAC, &parts),
        }
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

/// The request and reply MAC keys of one (membership, replica, client) triple:
/// `derive_key(label, [K_ci, membership id, be16(replica), client])`. Zeroized on drop.
#[derive(Clone)]
pub(crate) struct BoundKey {
    request: DerivedKey,
    reply: DerivedKey,
}

impl std::fmt::Debug for BoundKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoundKey(<redacted>)")
    }
}

/// Inputs up to this size are assembled on the stack and hashed in one call.
const STACK_INPUT: usize = 256;

/// `keyed_BLAKE3(key, head ‖ tail)[0..16]`.
fn tag(key: &DerivedKey, head: &[u8], tail: &[u8]) -> Tag {
    let len = head.len() + tail.len();
    let hash = if len <= STACK_INPUT {
        let mut buf = [0u8; STACK_INPUT];
        buf[..head.len()].copy_from_slice(head);
        buf[head.len()..len].copy_from_slice(tail);
        blake3::keyed_hash(key.as_bytes(), &buf[..len])
    } else {
        let mut h = blake3::Hasher::new_keyed(key.as_bytes());
        h.update(head);
        h.update(tail);
        let hash = h.finalize();
        // The hasher's state starts from the key.
        h.zeroize();
        hash
    };
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash.as_bytes()[..16]);
    out
}

/// The MAC of a request (`be64(timestamp) ‖ operation`) under a bound request key.
fn request_tag(key: &BoundKey, timestamp: u64, operation: &[u8]) -> Tag {
    tag(&key.request, &timestamp.to_be_bytes(), operation)
}

/// Whether entry `replica` of the request's authenticator verifies under `key`
/// (bound to `replica` and the request's client).
pub(crate) fn check_request(key: &BoundKey, replica: ReplicaIndex, r: &Request) -> bool {
    match r.authenticator.get(usize::from(replica)) {
        Some(t) => ct_eq(t, &request_tag(key, r.timestamp, &r.operation)),
        None => false,
    }
}

/// The MAC of a reply: `be64(view) ‖ be64(timestamp) ‖ postcard(outcome)` under a
/// bound reply key. The outcome's encoding is written here without allocating.
fn reply_tag(key: &BoundKey, view: u64, timestamp: u64, outcome: &Outcome) -> Tag {
    // 16 bytes of view and timestamp, the variant index, a length varint.
    let mut head = [0u8; 16 + 1 + 10];
    head[..8].copy_from_slice(&view.to_be_bytes());
    head[8..16].copy_from_slice(&timestamp.to_be_bytes());
    let (len, tail): (usize, &[u8]) = match outcome {
        Outcome::Executed(result) => {
            head[16] = 0;
            (17 + varint(result.len() as u64, &mut head[17..]), result)
        }
        Outcome::Refused => {
            head[16] = 1;
            (17, &[])
        }
    };
    tag(&key.reply, &head[..len], tail)
}

/// Writes `v` as an unsigned LEB128 varint (postcard's integer and length
/// encoding) into `out`, which has room for 10 bytes; returns the bytes written.
fn varint(mut v: u64, out: &mut [u8]) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

impl Request {
    /// Builds an authenticated request: `keys[i]` is the key shared with replica `i`.
    ///
    /// This derives the bound keys on every call; [`ClientKeys`] derives them once.
    pub fn new(
        m: &Membership,
        keys: &[ClientKey],
        client: ClientId,
        timestamp: u64,
        operation: Vec<u8>,
    ) -> Result<Self> {
        Ok(ClientKeys::new(m, client, keys)?.request(timestamp, operation))
    }
}

/// A client's MAC keys for every replica of one membership, derived once: what
/// builds authenticated requests and checks replies on the client's side.
#[derive(Clone, Debug)]
pub struct ClientKeys {
    client: ClientId,
    keys: Vec<BoundKey>,
}

impl ClientKeys {
    /// Binds `keys[i]`, the secret `client` shares with replica `i` of `m`.
    pub fn new(m: &Membership, client: ClientId, keys: &[ClientKey]) -> Result<Self> {
        if keys.len() != m.len() {
            return Err(Error::InvalidConfig("one client key per replica is needed"));
        }
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, k)| k.bind(m, i as ReplicaIndex, &client))
            .collect();
        Ok(Self { client, keys })
    }

    /// Replaces the secret shared with `replica` (after the two agreed a new one).
    pub fn set_key(
        &mut self,
        m: &Membership,
        replica: ReplicaIndex,
        key: &ClientKey,
    ) -> Result<()> {
        let slot = self
            .keys
            .get_mut(usize::from(replica))
            .ok_or(Error::NotMember(replica))?;
        *slot = key.bind(m, replica, &self.client);
        Ok(())
    }

    /// The client these keys belong to.
    pub fn client(&self) -> ClientId {
        self.client
    }

    /// An authenticated request of this client.
    pub fn request(&self, timestamp: u64, operation: Vec<u8>) -> Request {
        let authenticator = self
            .keys
            .iter()
            .map(|k| request_tag(k, timestamp, &operation))
            .collect();
        Request {
            client: self.client,
            timestamp,
            operation,
            authenticator,
        }
    }

    /// Whether `reply` is addressed to this client and its tag verifies under the
    /// key shared with the replica it names.
    pub fn verify_reply(&self, reply: &Reply) -> bool {
        reply.client == self.client
            && self
                .keys
                .get(usize::from(reply.replica))
                .is_some_and(|k| reply.verify_bound(k))
    }
}

impl Reply {
    /// Builds a reply authenticated under `key`, bound to this replica and the client.
    pub(crate) fn new(
        key: &BoundKey,
        view: u64,
        client: ClientId,
        timestamp: u64,
        replica: ReplicaIndex,
        outcome: Outcome,
    ) -> Self {
        let tag = reply_tag(key, view, timestamp, &outcome);
        Self {
            view,
            client,
            timestamp,
            replica,
            outcome,
            tag,
        }
    }

    /// Whether the tag verifies under `key`, the key the client shares with
    /// `self.replica` of `m`.
    pub fn verify(&self, key: &ClientKey, m: &Membership) -> bool {
        self.verify_bound(&key.bind(m, self.replica, &self.client))
    }

    fn verify_bound(&self, key: &BoundKey) -> bool {
        ct_eq(
            &self.tag,
            &reply_tag(key, self.view, self.timestamp, &self.outcome),
        )
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
    operation: Vec<u8>,
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
    keys: ClientKeys,
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
        let keys = ClientKeys::new(&membership, id, &keys)?;
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

    /// Replaces the secret shared with `replica`: requests from now on carry
    /// MACs under it, and replies must verify under it. A request outstanding
    /// is authenticated again, so that its retransmissions carry the new MAC.
    pub fn set_key(&mut self, replica: ReplicaIndex, key: &ClientKey) -> Result<()> {
        self.keys.set_key(&self.membership, replica, key)?;
        if let Some(out) = self.outstanding.as_mut() {
            let request = self.keys.request(out.timestamp, out.operation.clone());
            out.request = Message::Request(request).encode()?.into();
        }
        Ok(())
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
        let request = self.keys.request(timestamp, operation.clone());
        let bytes: Arc<[u8]> = Message::Request(request).encode()?.into();
        self.next_timestamp += 1;
        self.transmits
            .push_back((self.membership.primary(self.view), bytes.clone()));
        self.outstanding = Some(Outstanding {
            request: bytes,
            operation,
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
        if usize::from(reply.replica) >= self.membership.len() {
            return Err(Error::NotMember(reply.replica));
        }
        if !self.keys.verify_reply(&reply) {
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

    /// Gives up on the outstanding request, if any, and returns its timestamp:
    /// the client stops retransmitting it and can [`submit`](Self::submit) again.
    /// The replicas may still execute it; a reply to it is ignored.
    pub fn abandon(&mut self) -> Option<u64> {
        self.outstanding.take().map(|o| o.timestamp)
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
    fn tags_follow_the_spec() {
        let ids: Vec<Identity> = (1..=4u8)
            .map(|i| Identity::from_seeds(&[i; 32], None))
            .collect();
        let m = Membership::new(ids.iter().map(|i| i.public().clone()).collect()).unwrap();
        let secret = [7u8; 32];
        let key = ClientKey::new(&secret);
        let client = ClientId([9; 32]);
        let parts: [&[u8]; 4] = [&secret, m.id(), &2u16.to_be_bytes(), &client.0];
        let k_req = derive_key(labels::REQUEST_MAC, &parts);
        let k_rep = derive_key(labels::REPLY_MAC, &parts);
        let bound = key.bind(&m, 2, &client);
        // Short inputs are hashed from the stack, long ones incrementally: both
        // are keyed BLAKE3 of be64(timestamp) ‖ operation.
        for len in [0usize, 100, STACK_INPUT - 8, STACK_INPUT - 7, 5000] {
            let op = vec![0xa5; len];
            let mut msg = 11u64.to_be_bytes().to_vec();
            msg.extend_from_slice(&op);
            let want = blake3::keyed_hash(k_req.as_bytes(), &msg);
            assert_eq!(
                request_tag(&bound, 11, &op)[..],
                want.as_bytes()[..16],
                "{len}"
            );
        }
        // The reply tag covers postcard(outcome), written here without postcard.
        for outcome in [
            Outcome::Refused,
            Outcome::Executed(Vec::new()),
            Outcome::Executed(vec![1; 127]),
            Outcome::Executed(vec![2; 128]),
            Outcome::Executed(vec![3; 20_000]),
        ] {
            let mut msg = 5u64.to_be_bytes().to_vec();
            msg.extend_from_slice(&11u64.to_be_bytes());
            msg.extend_from_slice(&wire::encode(&outcome));
            let want = blake3::keyed_hash(k_rep.as_bytes(), &msg);
            assert_eq!(
                reply_tag(&bound, 5, 11, &outcome)[..],
                want.as_bytes()[..16]
            );
        }
        let mut buf = [0u8; 10];
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let n = varint(v, &mut buf);
            assert_eq!(buf[..n], wire::encode(&v)[..], "{v}");
        }
        assert_eq!(format!("{key:?}"), "ClientKey(<redacted>)");
        assert_eq!(format!("{bound:?}"), "BoundKey(<redacted>)");
    }

    #[test]
    fn authenticators_check_per_replica() {
        let ids: Vec<Identity> = (1..=4u8)
            .map(|i| Identity::from_seeds(&[i; 32], None))
            .collect();
        let m = Membership::new(ids.iter().map(|i| i.public().clone()).collect()).unwrap();
        let other = Membership::new(ids[..3].iter().map(|i| i.public().clone()).collect()).unwrap();
        let keys: Vec<ClientKey> = (0..4u8).map(|i| ClientKey::new(&[i; 32])).collect();
        let client = ClientId([9; 32]);
        let r = Request::new(&m, &keys, client, 3, b"op".to_vec()).unwrap();
        for i in 0..4u16 {
            let k = &keys[usize::from(i)];
            assert!(check_request(&k.bind(&m, i, &client), i, &r));
            // Another replica's key, another replica index, another client, another
            // membership: each changes the key, so the entry does not verify.
            let next = &keys[(usize::from(i) + 1) % 4];
            assert!(!check_request(&next.bind(&m, i, &client), i, &r));
            assert!(!check_request(&k.bind(&m, (i + 1) % 4, &client), i, &r));
            assert!(!check_request(&k.bind(&m, i, &ClientId([8; 32])), i, &r));
            if i < 3 {
                assert!(!check_request(&k.bind(&other, i, &client), i, &r));
            }
        }
        let k0 = keys[0].bind(&m, 0, &client);
        let mut changed = r.clone();
        changed.timestamp = 4;
        assert!(!check_request(&k0, 0, &changed));
        let mut changed = r.clone();
        changed.operation.push(0);
        assert!(!check_request(&k0, 0, &changed));
        let mut short = r.clone();
        short.authenticator.truncate(2);
        assert!(!check_request(&keys[3].bind(&m, 3, &client), 3, &short));
        let reply = Reply::new(
            &keys[2].bind(&m, 2, &client),
            1,
            client,
            3,
            2,
            Outcome::Executed(b"ok".to_vec()),
        );
        assert!(reply.verify(&keys[2], &m));
        assert!(!reply.verify(&keys[1], &m));
        assert!(!reply.verify(&keys[2], &other));
        let mut forged = reply.clone();
        forged.outcome = Outcome::Executed(b"no".to_vec());
        assert!(!forged.verify(&keys[2], &m));
        let mut moved = reply.clone();
        moved.replica = 1;
        assert!(!moved.verify(&keys[2], &m));
        let mut relabelled = reply.clone();
        relabelled.view = 2;
        assert!(!relabelled.verify(&keys[2], &m));
    }
}

#[cfg(test)]
mod rekey_tests {
    use fed_crypto::Identity;

    use super::*;

    fn decode_request(bytes: &[u8]) -> Request {
        match Message::decode(bytes).unwrap() {
            Message::Request(r) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn a_new_key_authenticates_the_outstanding_request_again() {
        let ids: Vec<Identity> = (1..=4u8)
            .map(|i| Identity::from_seeds(&[i; 32], None))
            .collect();
        let m =
            Arc::new(Membership::new(ids.iter().map(|i| i.public().clone()).collect()).unwrap());
        let client = ClientId([5; 32]);
        let old = ClientKey::new(&[1; 32]);
        let new = ClientKey::new(&[2; 32]);
        let mut c = Client::new(client, vec![old.clone(); 4], m.clone(), 1, 100).unwrap();
        c.submit(b"op".to_vec(), 0).unwrap();
        let (_, first) = c.poll_transmit().unwrap();
        let r = decode_request(&first);
        assert!(check_request(&old.bind(&m, 2, &client), 2, &r));
        c.set_key(2, &new).unwrap();
        c.handle_timeout(100);
        let again: Vec<_> = std::iter::from_fn(|| c.poll_transmit()).collect();
        assert_eq!(again.len(), 4);
        let r = decode_request(&again[2].1);
        assert_eq!((r.timestamp, r.operation.as_slice()), (1, &b"op"[..]));
        assert!(check_request(&new.bind(&m, 2, &client), 2, &r));
        assert!(!check_request(&old.bind(&m, 2, &client), 2, &r));
        // The other replicas' entries are unchanged.
        assert!(check_request(&old.bind(&m, 1, &client), 1, &r));
        assert!(c.set_key(4, &new).is_err());
        // Abandoned, it is no longer retransmitted, and the slot is free.
        assert_eq!(c.abandon(), Some(1));
        assert!(!c.is_busy());
        c.handle_timeout(10_000);
        assert!(c.poll_transmit().is_none());
        assert_eq!(c.submit(b"next".to_vec(), 10_000).unwrap(), 2);
    }
}
