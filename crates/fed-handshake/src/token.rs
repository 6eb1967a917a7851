//! Federation tokens: what a responder grants a member it admitted.

use fed_crypto::{HybridSignature, Identity, NodeId, PublicIdentity};
use serde::{Deserialize, Serialize};

use crate::{
    caps::{Capabilities, Capability},
    error::{Error, Result},
    labels,
    wire::{self, Kind},
};

/// A federation's 32-byte identifier (for example the hash of its genesis configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FederationId(pub [u8; 32]);

pub(crate) const TOKEN_VERSION: u8 = 1;

/// The signed part of a [`FederationToken`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBody {
    /// Format version, 1.
    pub version: u8,
    /// Unique id (`hash(TOKEN_ID, [session binding])`), the handle for revocation;
    /// [`FederationToken::verify`] refuses a token whose id is not that of its
    /// `session`.
    pub id: [u8; 32],
    /// Node id of the issuer (the responder).
    pub issuer: [u8; 32],
    /// Node id of the member the token is for (the initiator).
    pub subject: [u8; 32],
    /// The federation.
    pub federation: FederationId,
    /// What the subject may do.
    pub capabilities: Capabilities,
    /// Start of validity, Unix milliseconds.
    pub not_before: u64,
    /// End of validity (exclusive), Unix milliseconds.
    pub expires_at: u64,
    /// The session the token was issued in (`hash(SESSION_BINDING, [final transcript hash])`).
    pub session: [u8; 32],
    /// Whether the signature is hybrid (Ed25519 + ML-DSA-65); if set, both parts must verify.
    pub post_quantum: bool,
}

/// A token granting a member capabilities in a federation, signed by its issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederationToken {
    body: TokenBody,
    signature: HybridSignature,
}

/// What a token is checked against: who issued it, for which federation, who
/// presents it, when, under which policy.
///
/// `presenter` is the node the token arrived from, as authenticated by the session
/// it arrived on: a token is not a secret, so without this check anyone who saw a
/// member's token could claim its capabilities.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct TokenCheck<'a> {
    /// The issuer's public identity.
    pub issuer: &'a PublicIdentity,
    /// The federation the token must be for.
    pub federation: FederationId,
    /// The authenticated node presenting the token; it must be the token's subject.
    pub presenter: NodeId,
    /// The time of the check, Unix milliseconds.
    pub now: u64,
    /// Refuse tokens signed with Ed25519 alone (for federations that require the
    /// `pq-auth` suite; default false).
    pub require_post_quantum: bool,
    /// Revoked token ids.
    pub revocation: &'a dyn RevocationCheck,
}

impl<'a> TokenCheck<'a> {
    /// A check of tokens from `issuer` for `federation`, presented by `presenter` at
    /// `now`, with no revocations and Ed25519-only tokens accepted.
    pub fn new(
        issuer: &'a PublicIdentity,
        federation: FederationId,
        presenter: NodeId,
        now: u64,
    ) -> Self {
        Self {
            issuer,
            federation,
            presenter,
            now,
            require_post_quantum: false,
            revocation: &NoRevocation,
        }
    }

    /// Consults `revocation` for revoked token ids.
    pub fn with_revocation(mut self, revocation: &'a dyn RevocationCheck) -> Self {
        self.revocation = revocation;
        self
    }

    /// Requires a hybrid (Ed25519 and ML-DSA-65) signature.
    pub fn requiring_post_quantum(mut self) -> Self {
        self.require_post_quantum = true;
        self
    }
}

impl std::fmt::Debug for TokenCheck<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCheck")
            .field("issuer", &self.issuer.node_id())
            .field("federation", &self.federation)
            .field("presenter", &self.presenter)
            .field("now", &self.now)
            .field("require_post_quantum", &self.require_post_quantum)
            .finish_non_exhaustive()
    }
}

/// Decides whether a token has been revoked (the mesh answers from committed
/// revocations).
pub trait RevocationCheck {
    /// Whether the token with this id is revoked.
    fn is_revoked(&self, token_id: &[u8; 32]) -> bool;
}

/// A [`RevocationCheck`] for deployments without revocation: nothing is revoked.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRevocation;

impl RevocationCheck for NoRevocation {
    fn is_revoked(&self, _: &[u8; 32]) -> bool {
        false
    }
}

impl<F: Fn(&[u8; 32]) -> bool> RevocationCheck for F {
    fn is_revoked(&self, token_id: &[u8; 32]) -> bool {
        self(token_id)
    }
}

#[derive(Serialize, Deserialize)]
struct WireToken {
    body: TokenBody,
    signature: Vec<u8>,
}

impl FederationToken {
    /// Signs `body` with `issuer`: hybrid if `body.post_quantum`, which needs an
    /// issuer with an ML-DSA-65 key ([`Error::SuiteNeedsPostQuantumKey`] otherwise),
    /// else Ed25519 alone.
    ///
    /// `body.id` is signed as given; [`verify`](Self::verify) refuses a token whose
    /// id is not `hash("… token id", [body.session])`.
    pub fn issue(issuer: &Identity, body: TokenBody) -> Result<Self> {
        if body.post_quantum && !issuer.has_post_quantum() {
            return Err(Error::SuiteNeedsPostQuantumKey(
                crate::caps::Suite::PqAuth.name(),
            ));
        }
        let msg = wire::encode(&body)?;
        let signature = if body.post_quantum {
            issuer.sign(labels::TOKEN_SIGNATURE, &msg)?
        } else {
            issuer.sign_ed25519(labels::TOKEN_SIGNATURE, &msg)?
        };
        Ok(Self { body, signature })
    }

    /// The signed contents.
    pub fn body(&self) -> &TokenBody {
        &self.body
    }

    /// The subject's node id.
    pub fn subject(&self) -> NodeId {
        NodeId(self.body.subject)
    }

    /// Checks the token: issuer, federation, subject, post-quantum policy, signature,
    /// id, validity window and revocation, in that order
    /// (docs/protocol/handshake.md §5).
    pub fn verify(&self, check: &TokenCheck<'_>) -> Result<()> {
        if check.issuer.node_id().0 != self.body.issuer {
            return Err(Error::TokenIssuer);
        }
        if self.body.federation != check.federation {
            return Err(Error::TokenFederation);
        }
        if check.presenter.0 != self.body.subject {
            return Err(Error::TokenSubject);
        }
        if check.require_post_quantum && !self.body.post_quantum {
            return Err(Error::TokenNotPostQuantum);
        }
        let msg = wire::encode(&self.body)?;
        let checked = if self.body.post_quantum {
            check
                .issuer
                .verify(labels::TOKEN_SIGNATURE, &msg, &self.signature)
        } else {
            check
                .issuer
                .verify_ed25519(labels::TOKEN_SIGNATURE, &msg, &self.signature)
        };
        checked.map_err(|_| Error::TokenSignature)?;
        // The id names the token for revocation: it must be the one its session
        // determines, or a responder could give a token another token's id (one
        // already revoked, say) and revocation by id would be ambiguous.
        if !fed_crypto::ct_eq(&self.body.id, &token_id(&self.body.session)) {
            return Err(Error::TokenId);
        }
        if check.now < self.body.not_before {
            return Err(Error::TokenNotYetValid {
                not_before: self.body.not_before,
                now: check.now,
            });
        }
        if check.now >= self.body.expires_at {
            return Err(Error::TokenExpired {
                expires_at: self.body.expires_at,
                now: check.now,
            });
        }
        if check.revocation.is_revoked(&self.body.id) {
            return Err(Error::TokenRevoked);
        }
        Ok(())
    }

    /// [`verify`](Self::verify), and also that the token was issued in the session
    /// whose binding is `session`.
    pub fn verify_for_session(&self, check: &TokenCheck<'_>, session: &[u8; 32]) -> Result<()> {
        self.verify(check)?;
        if !fed_crypto::ct_eq(&self.body.session, session) {
            return Err(Error::TokenSession);
        }
        Ok(())
    }

    /// The check for each request: the token verifies and grants `cap`.
    pub fn authorize(&self, cap: Capability, check: &TokenCheck<'_>) -> Result<()> {
        self.verify(check)?;
        if self.body.capabilities.allows(cap) {
            Ok(())
        } else {
            Err(Error::CapabilityDenied(cap))
        }
    }

    /// Encodes the token as a handshake message of kind `token` (envelope included).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let body = wire::encode(&WireToken {
            body: self.body.clone(),
            signature: self.signature.to_bytes(),
        })?;
        wire::seal_envelope(Kind::Token, &body)
    }

    /// Decodes [`to_bytes`](Self::to_bytes)' output (at most 4 KiB of body).
    /// Decoding checks the form only; call [`verify`](Self::verify) before trusting it.
    ///
    /// The form is canonical: only the encoding `to_bytes` produces is accepted
    /// ([`Error::NonCanonical`] for over-long varints), and the signature carries an
    /// ML-DSA-65 part exactly when `post_quantum` is set ([`Error::Malformed`]
    /// otherwise: a classical token with a filler ML-DSA part, or a post-quantum
    /// one without its part). So a decoded token's bytes are the only bytes that
    /// decode to it, and can serve as its identifier.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (kind, _, body) = wire::open_envelope(bytes)?;
        if kind != Kind::Token {
            return Err(Error::UnexpectedMessage("expected a token"));
        }
        let w: WireToken = wire::decode(body, "token")?;
        if w.body.version != TOKEN_VERSION {
            return Err(Error::Malformed("unknown token version"));
        }
        let signature = HybridSignature::from_bytes(&w.signature)?;
        if signature.has_post_quantum() != w.body.post_quantum {
            return Err(Error::Malformed(
                "token signature parts do not match its post_quantum flag",
            ));
        }
        Ok(Self {
            body: w.body,
            signature,
        })
    }
}

/// A token's id: `hash(TOKEN_ID, [session binding])`.
pub(crate) fn token_id(session: &[u8; 32]) -> [u8; 32] {
    fed_crypto::hash(labels::TOKEN_ID, &[session])
}
