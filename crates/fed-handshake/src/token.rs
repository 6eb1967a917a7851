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
    /// Unique id (`hash(TOKEN_ID, [session binding])`), the handle for revocation.
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
    /// Signs `body` with `issuer` (hybrid if `body.post_quantum`).
    pub fn issue(issuer: &Identity, body: TokenBody) -> Result<Self> {
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

    /// Checks the token against its issuer's identity at time `now` (Unix ms):
    /// issuer, signature (both parts if the token is hybrid), validity window and
    /// revocation, in that order.
    pub fn verify(
        &self,
        issuer: &PublicIdentity,
        now: u64,
        revocation: &dyn RevocationCheck,
    ) -> Result<()> {
        if issuer.node_id().0 != self.body.issuer {
            return Err(Error::TokenIssuer);
        }
        let msg = wire::encode(&self.body)?;
        let checked = if self.body.post_quantum {
            issuer.verify(labels::TOKEN_SIGNATURE, &msg, &self.signature)
        } else {
            issuer.verify_ed25519(labels::TOKEN_SIGNATURE, &msg, &self.signature)
        };
        checked.map_err(|_| Error::TokenSignature)?;
        if now < self.body.not_before {
            return Err(Error::TokenNotYetValid {
                not_before: self.body.not_before,
                now,
            });
        }
        if now >= self.body.expires_at {
            return Err(Error::TokenExpired {
                expires_at: self.body.expires_at,
                now,
            });
        }
        if revocation.is_revoked(&self.body.id) {
            return Err(Error::TokenRevoked);
        }
        Ok(())
    }

    /// [`verify`](Self::verify), and also that the token was issued in the session
    /// whose binding is `session`.
    pub fn verify_for_session(
        &self,
        issuer: &PublicIdentity,
        session: &[u8; 32],
        now: u64,
        revocation: &dyn RevocationCheck,
    ) -> Result<()> {
        self.verify(issuer, now, revocation)?;
        if !fed_crypto::ct_eq(&self.body.session, session) {
            return Err(Error::TokenSession);
        }
        Ok(())
    }

    /// The check for each request: the token verifies now and grants `cap`.
    pub fn authorize(
        &self,
        cap: Capability,
        issuer: &PublicIdentity,
        now: u64,
        revocation: &dyn RevocationCheck,
    ) -> Result<()> {
        self.verify(issuer, now, revocation)?;
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
