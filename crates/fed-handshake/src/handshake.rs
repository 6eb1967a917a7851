//! The initiator and responder state machines, and the key schedule they share.

use std::{collections::VecDeque, sync::Arc};

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{AeadInOut, consts::U16},
};
use fed_crypto::{
    ChannelConfig, DerivedKey, HybridSignature, Identity, Mode, NodeId, PublicIdentity, Role,
    SecureChannel, XWingCiphertext, XWingPublicKey, XWingSecretKey, Zeroizing, derive_key, hash,
    mac, verify_mac,
};
use rand_core::CryptoRng;

use crate::{
    admission::AdmissionPolicy,
    caps::{Capabilities, ProtocolVersion, Suite, choose_suite},
    error::{Error, Result},
    labels,
    token::{FederationId, FederationToken, TOKEN_VERSION, TokenBody, TokenCheck, token_id},
    wire::{
        self, Accept, AcceptInner, AcceptParams, AdmissionProof, Finish, FinishInner, Hello, Kind,
        MAX_OFFERED_SUITES, Reject, RejectReason,
    },
};

/// Default time a handshake may take: 10 seconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default token lifetime: 24 hours.
pub const DEFAULT_TOKEN_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;
/// Most bytes of channel binding accepted.
pub const MAX_CHANNEL_BINDING_LEN: usize = 1024;

/// Default allowance for clock differences between nodes: tokens are valid from
/// this long before they are issued (5 minutes).
pub const DEFAULT_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// Which responders an initiator accepts. It is checked as soon as the responder
/// has proved its identity, before the initiator reveals its own identity and
/// admission proof.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponderTrust {
    /// Only these node ids: a pinned bootstrap node, or the federation's known
    /// members. Anyone else fails with [`Error::UnexpectedPeer`].
    Only(Vec<NodeId>),
    /// Whoever answers and proves an identity. The initiator then reveals its own
    /// identity and admission proof to that node, and the session proves who the
    /// responder is, not that it is a member of the federation: the caller must
    /// check [`Session::peer`] before trusting the session or its token.
    Any,
}

impl ResponderTrust {
    fn accepts(&self, id: NodeId) -> bool {
        match self {
            ResponderTrust::Only(ids) => ids.contains(&id),
            ResponderTrust::Any => true,
        }
    }
}

/// The initiator's configuration.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InitiatorConfig {
    /// This node's identity.
    pub identity: Arc<Identity>,
    /// The federation to join.
    pub federation: FederationId,
    /// Suites offered, in preference order (default: `[Default]`).
    pub suites: Vec<Suite>,
    /// Capabilities requested, with their limits.
    pub capabilities: Capabilities,
    /// Proof of admission sent in message 3 (default: none).
    pub admission: AdmissionProof,
    /// Which responders to accept.
    pub responders: ResponderTrust,
    /// Time the whole handshake may take, in milliseconds.
    pub timeout_ms: u64,
    /// Delivery mode of the session's channel (default [`Mode::Stream`]). Not
    /// negotiated: the application protocol running the handshake fixes it, and
    /// both sides must use the same (the mesh uses [`Mode::Datagram`], because its
    /// requests travel on concurrent streams).
    pub channel_mode: Mode,
}

impl InitiatorConfig {
    /// Defaults for joining `federation` as `identity` through a responder that
    /// `responders` accepts.
    pub fn new(
        identity: Arc<Identity>,
        federation: FederationId,
        responders: ResponderTrust,
    ) -> Self {
        Self {
            identity,
            federation,
            suites: vec![Suite::Default],
            capabilities: Capabilities::default(),
            admission: AdmissionProof::None,
            responders,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            channel_mode: Mode::Stream,
        }
    }
}

/// The responder's configuration.
#[derive(Clone)]
#[non_exhaustive]
pub struct ResponderConfig {
    /// This node's identity (it also signs the tokens it issues).
    pub identity: Arc<Identity>,
    /// The federation this node admits to.
    pub federation: FederationId,
    /// Suites accepted, in preference order (default: `[Default]`).
    pub suites: Vec<Suite>,
    /// Capabilities this node grants at most, with their limits.
    pub capabilities: Capabilities,
    /// Who may join.
    pub admission: Arc<dyn AdmissionPolicy>,
    /// Lifetime of issued tokens, in milliseconds.
    pub token_lifetime_ms: u64,
    /// Clock difference to allow for: issued tokens are valid from this long before
    /// the time of issue, so that a holder whose clock is behind can use them.
    pub clock_skew_ms: u64,
    /// Time the whole handshake may take, in milliseconds.
    pub timeout_ms: u64,
    /// Delivery mode of the session's channel; see [`InitiatorConfig::channel_mode`].
    pub channel_mode: Mode,
}

impl ResponderConfig {
    /// Defaults for admitting members to `federation` as `identity`, under the
    /// `admission` policy. There is no default policy: admitting everyone who
    /// authenticates ([`Open`](crate::Open)) has to be a choice.
    pub fn new(
        identity: Arc<Identity>,
        federation: FederationId,
        admission: Arc<dyn AdmissionPolicy>,
    ) -> Self {
        Self {
            identity,
            federation,
            suites: vec![Suite::Default],
            capabilities: Capabilities::default(),
            admission,
            token_lifetime_ms: DEFAULT_TOKEN_LIFETIME_MS,
            clock_skew_ms: DEFAULT_CLOCK_SKEW_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            channel_mode: Mode::Stream,
        }
    }
}

impl std::fmt::Debug for ResponderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponderConfig")
            .field("identity", &self.identity)
            .field("federation", &self.federation)
            .field("suites", &self.suites)
            .field("capabilities", &self.capabilities)
            .field("token_lifetime_ms", &self.token_lifetime_ms)
            .field("clock_skew_ms", &self.clock_skew_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("channel_mode", &self.channel_mode)
            .finish_non_exhaustive()
    }
}

/// An established session: the encrypted channel and what was agreed.
#[non_exhaustive]
pub struct Session {
    /// The encrypted channel, keyed from the X-Wing secret and the whole transcript.
    pub channel: SecureChannel,
    /// The authenticated peer.
    pub peer: PublicIdentity,
    /// The suite in use.
    pub suite: Suite,
    /// The protocol version in use.
    pub version: ProtocolVersion,
    /// What the initiator may do: the negotiated capabilities within the admission ceiling.
    pub capabilities: Capabilities,
    /// The token the responder issued to the initiator.
    pub token: FederationToken,
    /// `hash(SESSION_BINDING, [final transcript hash])`: names this session.
    pub binding: [u8; 32],
    /// `derive_key(EXPORTER_SECRET, [HS, final transcript hash])`: keys for
    /// other protocols between the same two nodes ([`export`](Self::export)).
    exporter: DerivedKey,
}

impl Session {
    /// A secret for another protocol between the two ends of this session,
    /// such as a MAC key: `derive_key(label, [exporter secret, context])`,
    /// where the exporter secret is `derive_key("exo-federation v1 handshake
    /// exporter secret", [HS, TH_final])` (docs/protocol/handshake.md §4). Both
    /// ends derive the same key; nobody else can, and it is independent of the
    /// channel's keys. `label` must be the caller's own context label.
    pub fn export(&self, label: &str, context: &[u8]) -> DerivedKey {
        derive_key(label, &[self.exporter.as_bytes(), context])
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("suite", &self.suite)
            .field("version", &self.version)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// What a handshake reports through `poll_event`. Failures are not events: they are
/// the `Err` returned by `handle_input` or `handle_timeout`, after which the
/// handshake is closed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The handshake completed.
    Established(Box<Session>),
}

/// The running transcript hash: BLAKE3 in `derive_key` mode under `TRANSCRIPT`,
/// absorbing each part as `le64(len) ‖ part`.
#[derive(Clone)]
pub(crate) struct Transcript(blake3::Hasher);

impl Transcript {
    pub(crate) fn new(channel_binding: &[u8]) -> Self {
        let mut t = Self(blake3::Hasher::new_derive_key(labels::TRANSCRIPT));
        t.absorb(channel_binding);
        t
    }

    pub(crate) fn absorb(&mut self, part: &[u8]) {
        self.0.update(&(part.len() as u64).to_le_bytes());
        self.0.update(part);
    }

    pub(crate) fn hash(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// Keys of one handshake, from the X-Wing secret and the transcript up to the ciphertext.
pub(crate) struct HandshakeKeys {
    secret: DerivedKey,
}

impl HandshakeKeys {
    pub(crate) fn new(shared: &[u8; 32], th_kem: &[u8; 32]) -> Self {
        Self {
            secret: derive_key(labels::HANDSHAKE_SECRET, &[shared, th_kem]),
        }
    }

    pub(crate) fn aead(&self, label: &str) -> Aes256Gcm {
        let key = derive_key(label, &[self.secret.as_bytes()]);
        Aes256Gcm::new(key.as_bytes().into())
    }

    pub(crate) fn finished(&self, label: &str, th: &[u8; 32]) -> [u8; 32] {
        mac(self.secret.as_bytes(), label, &[th]).0
    }

    fn check_finished(&self, label: &str, th: &[u8; 32], tag: &[u8; 32]) -> Result<()> {
        if verify_mac(
            self.secret.as_bytes(),
            label,
            &[th],
            &fed_crypto::MacTag(*tag),
        ) {
            Ok(())
        } else {
            Err(Error::BadFinished)
        }
    }

    fn exporter(&self, th_final: &[u8; 32]) -> DerivedKey {
        derive_key(labels::EXPORTER_SECRET, &[self.secret.as_bytes(), th_final])
    }

    fn session(
        &self,
        th_final: &[u8; 32],
        role: Role,
        caps: &Capabilities,
        mode: Mode,
    ) -> Result<SecureChannel> {
        let secret = derive_key(labels::SESSION_SECRET, &[self.secret.as_bytes()]);
        Ok(SecureChannel::new(
            secret.as_bytes(),
            th_final,
            role,
            channel_config(caps).with_mode(mode),
        )?)
    }
}

/// The channel carries application messages up to the negotiated size, and never
/// less than a handshake message (the token travels in it).
fn channel_config(caps: &Capabilities) -> ChannelConfig {
    let len = (caps.limits.max_message_bytes as usize)
        .clamp(wire::MAX_MESSAGE_LEN, fed_crypto::MAX_PAYLOAD_LIMIT);
    ChannelConfig::default().with_max_payload_len(len)
}

/// Each handshake AEAD key seals exactly one message, so the nonce is fixed at zero.
pub(crate) fn seal(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut buf = plaintext.to_vec();
    let tag = cipher
        .encrypt_inout_detached(&[0u8; 12].into(), aad, buf.as_mut_slice().into())
        .map_err(|_| Error::Malformed("handshake payload too large"))?;
    buf.extend_from_slice(&tag);
    Ok(buf)
}

pub(crate) fn open(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if sealed.len() < 16 {
        return Err(Error::Decrypt);
    }
    let (body, tag) = sealed.split_at(sealed.len() - 16);
    let tag = aes_gcm::Tag::<U16>::try_from(tag).map_err(|_| Error::Decrypt)?;
    let mut buf = Zeroizing::new(body.to_vec());
    cipher
        .decrypt_inout_detached(&[0u8; 12].into(), aad, buf.as_mut_slice().into(), &tag)
        .map_err(|_| Error::Decrypt)?;
    Ok(buf)
}

fn sign(identity: &Identity, suite: Suite, label: &str, th: &[u8; 32]) -> Result<HybridSignature> {
    Ok(match suite {
        Suite::PqAuth => identity.sign(label, th)?,
        Suite::Default => identity.sign_ed25519(label, th)?,
    })
}

fn verify(
    peer: &PublicIdentity,
    suite: Suite,
    label: &str,
    th: &[u8; 32],
    sig: &[u8],
) -> Result<()> {
    let sig = HybridSignature::from_bytes(sig).map_err(|_| Error::BadSignature)?;
    match suite {
        Suite::PqAuth => {
            if !peer.has_post_quantum() {
                return Err(Error::SuiteNeedsPostQuantumKey(suite.name()));
            }
            peer.verify(label, th, &sig)
                .map_err(|_| Error::BadSignature)
        }
        // Classical authentication: the signature is the Ed25519 part alone. A
        // filler ML-DSA part would be ignored by the check, so it is refused: the
        // signature bytes, absorbed into the transcript, have one form.
        Suite::Default if sig.has_post_quantum() => Err(Error::BadSignature),
        Suite::Default => peer
            .verify_ed25519(label, th, &sig)
            .map_err(|_| Error::BadSignature),
    }
}

/// The suites of `wanted` that `identity` can authenticate with.
fn usable_suites(identity: &Identity, wanted: &[Suite]) -> Result<Vec<Suite>> {
    let usable: Vec<Suite> = wanted
        .iter()
        .copied()
        .filter(|s| *s != Suite::PqAuth || identity.has_post_quantum())
        .take(MAX_OFFERED_SUITES)
        .collect();
    match (usable.is_empty(), wanted.contains(&Suite::PqAuth)) {
        (false, _) => Ok(usable),
        (true, true) => Err(Error::SuiteNeedsPostQuantumKey(Suite::PqAuth.name())),
        (true, false) => Err(Error::NoCommonSuite),
    }
}

fn check_binding(binding: &[u8]) -> Result<()> {
    if binding.len() > MAX_CHANNEL_BINDING_LEN {
        return Err(Error::TooLarge {
            len: binding.len(),
            max: MAX_CHANNEL_BINDING_LEN,
        });
    }
    Ok(())
}

/// Common output plumbing: at most two transmits and two events are ever queued.
#[derive(Default)]
struct Outputs {
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

/// The side that opens the handshake.
///
/// Use: [`Initiator::new`] queues message 1. Feed every whole message the peer sends
/// to [`handle_input`](Self::handle_input) (read the 10-byte envelope header first and
/// call [`message_len`](crate::message_len) to know the length; the token arrives as a
/// channel frame, see [`FrameHeader`](fed_crypto::FrameHeader)), call
/// [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)'s
/// deadline passes, and after each call drain [`poll_transmit`](Self::poll_transmit)
/// (send in order) and then [`poll_event`](Self::poll_event). Times are Unix milliseconds.
pub struct Initiator {
    config: Arc<InitiatorConfig>,
    state: InitiatorState,
    out: Outputs,
    deadline: u64,
}

// One per handshake: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum InitiatorState {
    AwaitAccept {
        transcript: Transcript,
        ephemeral: Box<XWingSecretKey>,
        offered: Vec<Suite>,
    },
    AwaitToken(Box<PendingSession>),
    Done,
}

struct PendingSession {
    channel: SecureChannel,
    peer: PublicIdentity,
    suite: Suite,
    version: ProtocolVersion,
    capabilities: Capabilities,
    binding: [u8; 32],
    exporter: DerivedKey,
}

impl Initiator {
    /// Starts a handshake; message 1 is ready in [`poll_transmit`](Self::poll_transmit).
    ///
    /// `channel_binding` names the underlying connection (the mesh passes both libp2p
    /// peer ids); both sides must pass the same bytes, at most 1024.
    pub fn new<R: CryptoRng + ?Sized>(
        config: Arc<InitiatorConfig>,
        channel_binding: &[u8],
        now: u64,
        rng: &mut R,
    ) -> Result<Self> {
        check_binding(channel_binding)?;
        let offered = usable_suites(&config.identity, &config.suites)?;
        let ephemeral = Box::new(XWingSecretKey::generate(rng));
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        let hello = Hello {
            minor: ProtocolVersion::CURRENT.minor,
            suites: offered.iter().map(|s| wire::suite_code(*s)).collect(),
            capabilities: config.capabilities,
            federation: config.federation.0,
            nonce,
            ephemeral_key: ephemeral.public_key().as_bytes().to_vec(),
        };
        let m1 = wire::seal_envelope(Kind::Hello, &wire::encode(&hello)?)?;
        let mut transcript = Transcript::new(channel_binding);
        transcript.absorb(&m1);
        let mut out = Outputs::default();
        out.transmits.push_back(m1);
        Ok(Self {
            deadline: now.saturating_add(config.timeout_ms),
            config,
            state: InitiatorState::AwaitAccept {
                transcript,
                ephemeral,
                offered,
            },
            out,
        })
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        !matches!(self.state, InitiatorState::Done)
    }

    /// Handles one whole message from the responder. After an error the handshake is
    /// closed and further input gives [`Error::Closed`]; input at or after the
    /// deadline fails with [`Error::Timeout`].
    pub fn handle_input(&mut self, msg: &[u8], now: u64) -> Result<()> {
        let state = std::mem::replace(&mut self.state, InitiatorState::Done);
        let result = match state {
            InitiatorState::Done => return Err(Error::Closed),
            _ if now >= self.deadline => Err(Error::Timeout),
            InitiatorState::AwaitAccept {
                transcript,
                ephemeral,
                offered,
            } => self.on_accept(msg, transcript, &ephemeral, &offered),
            InitiatorState::AwaitToken(pending) => self.on_token(msg, *pending, now),
        };
        result.inspect_err(|_| self.state = InitiatorState::Done)
    }

    /// Fails the handshake with [`Error::Timeout`] if its deadline has passed.
    pub fn handle_timeout(&mut self, now: u64) -> Result<()> {
        if self.is_handshaking() && now >= self.deadline {
            self.state = InitiatorState::Done;
            return Err(Error::Timeout);
        }
        Ok(())
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called, while the handshake runs.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.is_handshaking().then_some(self.deadline)
    }

    fn on_accept(
        &mut self,
        msg: &[u8],
        mut transcript: Transcript,
        ephemeral: &XWingSecretKey,
        offered: &[Suite],
    ) -> Result<()> {
        let (kind, _, body) = wire::open_envelope(msg)?;
        match kind {
            Kind::Accept => {}
            Kind::Reject => {
                return Err(Error::Rejected(
                    wire::decode::<Reject>(body, "reject")?.reason,
                ));
            }
            _ => return Err(Error::UnexpectedMessage("expected message 2 (accept)")),
        }
        let accept: Accept = wire::decode(body, "accept")?;
        let ct = XWingCiphertext::from_bytes(&accept.ciphertext)?;
        let shared = ephemeral.decapsulate(&ct);
        transcript.absorb(ct.as_bytes());
        let th_kem = transcript.hash();
        let keys = HandshakeKeys::new(shared.as_bytes(), &th_kem);
        let inner = open(
            &keys.aead(labels::HANDSHAKE_KEY_R2I),
            &th_kem,
            &accept.sealed,
        )?;
        let inner: AcceptInner = wire::decode(&inner, "accept payload")?;

        // The responder may only pick from what was offered.
        let suite = wire::suite_from_code(inner.params.suite)
            .filter(|s| offered.contains(s))
            .ok_or(Error::NotOffered)?;
        let ours = self.config.capabilities;
        let caps = inner.params.capabilities;
        if inner.params.minor > ProtocolVersion::CURRENT.minor
            || caps.set.intersection(ours.set) != caps.set
            || caps.limits.min(ours.limits) != caps.limits
        {
            return Err(Error::NotOffered);
        }
        transcript.absorb(&wire::encode(&inner.params)?);

        let peer = PublicIdentity::from_bytes(&inner.identity).map_err(Error::Identity)?;
        if !self.config.responders.accepts(peer.node_id()) {
            return Err(Error::UnexpectedPeer);
        }
        transcript.absorb(&inner.identity);
        verify(
            &peer,
            suite,
            labels::SIGNATURE_R,
            &transcript.hash(),
            &inner.signature,
        )?;
        transcript.absorb(&inner.signature);
        keys.check_finished(labels::FINISHED_R, &transcript.hash(), &inner.finished)?;
        transcript.absorb(&inner.finished);
        let th_r_end = transcript.hash();

        // Message 3.
        let identity = self.config.identity.public().as_bytes().to_vec();
        let admission = wire::encode(&self.config.admission)?;
        transcript.absorb(&identity);
        transcript.absorb(&admission);
        let signature = sign(
            &self.config.identity,
            suite,
            labels::SIGNATURE_I,
            &transcript.hash(),
        )?
        .to_bytes();
        transcript.absorb(&signature);
        let finished = keys.finished(labels::FINISHED_I, &transcript.hash());
        transcript.absorb(&finished);
        let th_final = transcript.hash();
        let inner3 = FinishInner {
            identity,
            admission,
            signature,
            finished,
        };
        let sealed = seal(
            &keys.aead(labels::HANDSHAKE_KEY_I2R),
            &th_r_end,
            &wire::encode(&inner3)?,
        )?;
        let m3 = wire::seal_envelope(Kind::Finish, &wire::encode(&Finish { sealed })?)?;
        self.out.transmits.push_back(m3);

        self.state = InitiatorState::AwaitToken(Box::new(PendingSession {
            channel: keys.session(&th_final, Role::Initiator, &caps, self.config.channel_mode)?,
            peer,
            suite,
            version: ProtocolVersion {
                major: ProtocolVersion::CURRENT.major,
                minor: inner.params.minor,
            },
            capabilities: caps,
            binding: hash(labels::SESSION_BINDING, &[&th_final]),
            exporter: keys.exporter(&th_final),
        }));
        Ok(())
    }

    fn on_token(&mut self, msg: &[u8], mut pending: PendingSession, now: u64) -> Result<()> {
        if msg.starts_with(&wire::MAGIC) {
            let (kind, _, body) = wire::open_envelope(msg)?;
            return Err(match kind {
                Kind::Reject => Error::Rejected(wire::decode::<Reject>(body, "reject")?.reason),
                _ => Error::UnexpectedMessage("expected the token frame"),
            });
        }
        let payload = pending.channel.open(msg)?;
        let token = FederationToken::from_bytes(&payload)?;
        let mut check = TokenCheck::new(
            &pending.peer,
            self.config.federation,
            self.config.identity.node_id(),
            now,
        );
        if pending.suite == Suite::PqAuth {
            check = check.requiring_post_quantum();
        }
        token.verify_for_session(&check, &pending.binding)?;
        // The token may narrow capabilities (admission ceiling), never widen them.
        let granted = token.body().capabilities;
        let negotiated = pending.capabilities;
        if granted.set.intersection(negotiated.set) != granted.set
            || granted.limits.min(negotiated.limits) != granted.limits
        {
            return Err(Error::NotOffered);
        }
        self.state = InitiatorState::Done;
        self.out
            .events
            .push_back(Event::Established(Box::new(Session {
                channel: pending.channel,
                peer: pending.peer,
                suite: pending.suite,
                version: pending.version,
                capabilities: granted,
                token,
                binding: pending.binding,
                exporter: pending.exporter,
            })));
        Ok(())
    }
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            InitiatorState::AwaitAccept { .. } => "await-accept",
            InitiatorState::AwaitToken(_) => "await-token",
            InitiatorState::Done => "done",
        };
        f.debug_struct("Initiator")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The side that answers a handshake. Used like [`Initiator`], but nothing is sent
/// until message 1 arrives. On failure it queues a plaintext reject message saying why.
pub struct Responder {
    pub(crate) config: Arc<ResponderConfig>,
    state: ResponderState,
    out: Outputs,
    deadline: u64,
}

// One per handshake: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum ResponderState {
    AwaitHello {
        transcript: Transcript,
        eseed: Zeroizing<[u8; 64]>,
        nonce: [u8; 32],
    },
    AwaitFinish(Box<AwaitFinish>),
    Done,
}

struct AwaitFinish {
    transcript: Transcript,
    keys: HandshakeKeys,
    suite: Suite,
    version: ProtocolVersion,
    capabilities: Capabilities,
}

impl Responder {
    /// Prepares to answer one handshake on a connection named by `channel_binding`.
    pub fn new<R: CryptoRng + ?Sized>(
        config: Arc<ResponderConfig>,
        channel_binding: &[u8],
        now: u64,
        rng: &mut R,
    ) -> Result<Self> {
        check_binding(channel_binding)?;
        usable_suites(&config.identity, &config.suites)?;
        let mut eseed = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(eseed.as_mut());
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        Ok(Self {
            deadline: now.saturating_add(config.timeout_ms),
            config,
            state: ResponderState::AwaitHello {
                transcript: Transcript::new(channel_binding),
                eseed,
                nonce,
            },
            out: Outputs::default(),
        })
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        !matches!(self.state, ResponderState::Done)
    }

    /// Handles one whole message from the initiator. After an error the handshake is
    /// closed (a reject message is queued) and further input gives [`Error::Closed`];
    /// input at or after the deadline fails with [`Error::Timeout`].
    pub fn handle_input(&mut self, msg: &[u8], now: u64) -> Result<()> {
        let state = std::mem::replace(&mut self.state, ResponderState::Done);
        let result = match state {
            ResponderState::Done => return Err(Error::Closed),
            _ if now >= self.deadline => Err(Error::Timeout),
            ResponderState::AwaitHello {
                transcript,
                eseed,
                nonce,
            } => self.on_hello(msg, transcript, &eseed, nonce),
            ResponderState::AwaitFinish(pending) => self.on_finish(msg, *pending, now),
        };
        result.map_err(|e| self.fail(e))
    }

    /// Fails the handshake with [`Error::Timeout`] (and queues a reject) if its
    /// deadline has passed.
    pub fn handle_timeout(&mut self, now: u64) -> Result<()> {
        if self.is_handshaking() && now >= self.deadline {
            return Err(self.fail(Error::Timeout));
        }
        Ok(())
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called, while the handshake runs.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.is_handshaking().then_some(self.deadline)
    }

    fn fail(&mut self, e: Error) -> Error {
        self.state = ResponderState::Done;
        let reject = Reject {
            reason: RejectReason::for_error(&e),
        };
        if let Ok(body) = wire::encode(&reject).and_then(|b| wire::seal_envelope(Kind::Reject, &b))
        {
            self.out.transmits.push_back(body);
        }
        e
    }

    fn on_hello(
        &mut self,
        msg: &[u8],
        mut transcript: Transcript,
        eseed: &[u8; 64],
        nonce: [u8; 32],
    ) -> Result<()> {
        let (kind, major, body) = wire::open_envelope(msg)?;
        if kind != Kind::Hello {
            return Err(Error::UnexpectedMessage("expected message 1 (hello)"));
        }
        let hello: Hello = wire::decode(body, "hello")?;
        if hello.suites.len() > MAX_OFFERED_SUITES {
            return Err(Error::Malformed("too many suites offered"));
        }
        if hello.federation != self.config.federation.0 {
            return Err(Error::WrongFederation);
        }
        let offered: Vec<Suite> = hello
            .suites
            .iter()
            .filter_map(|c| wire::suite_from_code(*c))
            .collect();
        let ours = usable_suites(&self.config.identity, &self.config.suites)?;
        let suite = choose_suite(&ours, &offered).ok_or(Error::NoCommonSuite)?;
        let caps = self.config.capabilities.negotiate(hello.capabilities);
        // Today's minor version is 0, which makes the `min` look redundant to clippy.
        #[allow(clippy::unnecessary_min_or_max)]
        let version = ProtocolVersion {
            major,
            minor: hello.minor.min(ProtocolVersion::CURRENT.minor),
        };
        let epk = XWingPublicKey::from_bytes(&hello.ephemeral_key)?;
        let (ct, shared) = epk.encapsulate_derand(eseed);

        transcript.absorb(msg);
        transcript.absorb(ct.as_bytes());
        let th_kem = transcript.hash();
        let keys = HandshakeKeys::new(shared.as_bytes(), &th_kem);
        let params = AcceptParams {
            minor: version.minor,
            suite: wire::suite_code(suite),
            capabilities: caps,
            nonce,
        };
        transcript.absorb(&wire::encode(&params)?);
        let identity = self.config.identity.public().as_bytes().to_vec();
        transcript.absorb(&identity);
        let signature = sign(
            &self.config.identity,
            suite,
            labels::SIGNATURE_R,
            &transcript.hash(),
        )?
        .to_bytes();
        transcript.absorb(&signature);
        let finished = keys.finished(labels::FINISHED_R, &transcript.hash());
        transcript.absorb(&finished);
        let inner = AcceptInner {
            params,
            identity,
            signature,
            finished,
        };
        let sealed = seal(
            &keys.aead(labels::HANDSHAKE_KEY_R2I),
            &th_kem,
            &wire::encode(&inner)?,
        )?;
        let m2 = wire::seal_envelope(
            Kind::Accept,
            &wire::encode(&Accept {
                ciphertext: ct.as_bytes().to_vec(),
                sealed,
            })?,
        )?;
        self.out.transmits.push_back(m2);
        self.state = ResponderState::AwaitFinish(Box::new(AwaitFinish {
            transcript,
            keys,
            suite,
            version,
            capabilities: caps,
        }));
        Ok(())
    }

    fn on_finish(&mut self, msg: &[u8], pending: AwaitFinish, now: u64) -> Result<()> {
        let AwaitFinish {
            mut transcript,
            keys,
            suite,
            version,
            capabilities,
        } = pending;
        let (kind, _, body) = wire::open_envelope(msg)?;
        match kind {
            Kind::Finish => {}
            Kind::Reject => {
                return Err(Error::Rejected(
                    wire::decode::<Reject>(body, "reject")?.reason,
                ));
            }
            _ => return Err(Error::UnexpectedMessage("expected message 3 (finish)")),
        }
        let finish: Finish = wire::decode(body, "finish")?;
        let th_r_end = transcript.hash();
        let inner = open(
            &keys.aead(labels::HANDSHAKE_KEY_I2R),
            &th_r_end,
            &finish.sealed,
        )?;
        let inner: FinishInner = wire::decode(&inner, "finish payload")?;
        let peer = PublicIdentity::from_bytes(&inner.identity).map_err(Error::Identity)?;
        transcript.absorb(&inner.identity);
        transcript.absorb(&inner.admission);
        verify(
            &peer,
            suite,
            labels::SIGNATURE_I,
            &transcript.hash(),
            &inner.signature,
        )?;
        transcript.absorb(&inner.signature);
        keys.check_finished(labels::FINISHED_I, &transcript.hash(), &inner.finished)?;
        transcript.absorb(&inner.finished);
        let th_final = transcript.hash();

        // The initiator is authenticated; now ask the policy.
        let proof: AdmissionProof = wire::decode(&inner.admission, "admission proof")?;
        let ceiling = self
            .config
            .admission
            .admit(&peer, &proof, &self.config.federation, now)?;
        let granted = Capabilities {
            set: capabilities.set.intersection(ceiling),
            limits: capabilities.limits,
        };
        let mut channel = keys.session(
            &th_final,
            Role::Responder,
            &capabilities,
            self.config.channel_mode,
        )?;
        let binding = hash(labels::SESSION_BINDING, &[&th_final]);
        let token = FederationToken::issue(
            &self.config.identity,
            TokenBody {
                version: TOKEN_VERSION,
                id: token_id(&binding),
                issuer: self.config.identity.node_id().0,
                subject: peer.node_id().0,
                federation: self.config.federation,
                capabilities: granted,
                not_before: now.saturating_sub(self.config.clock_skew_ms),
                expires_at: now.saturating_add(self.config.token_lifetime_ms),
                session: binding,
                post_quantum: suite == Suite::PqAuth,
            },
        )?;
        self.out
            .transmits
            .push_back(channel.seal(&token.to_bytes()?)?);
        self.state = ResponderState::Done;
        self.out
            .events
            .push_back(Event::Established(Box::new(Session {
                channel,
                peer,
                suite,
                version,
                capabilities: granted,
                token,
                binding,
                exporter: keys.exporter(&th_final),
            })));
        Ok(())
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            ResponderState::AwaitHello { .. } => "await-hello",
            ResponderState::AwaitFinish(_) => "await-finish",
            ResponderState::Done => "done",
        };
        f.debug_struct("Responder")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
