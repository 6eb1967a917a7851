//! Who may join: admission policies and invitations.

use std::collections::{BTreeMap, BTreeSet};

use fed_crypto::{HybridSignature, Identity, NodeId, PublicIdentity};
use serde::{Deserialize, Serialize};

use crate::{
    caps::CapabilitySet,
    error::{Error, Result},
    labels,
    token::FederationId,
    wire::{self, AdmissionProof},
};

/// Decides whether an authenticated initiator may join, and with which capabilities
/// at most.
///
/// Called by the responder after it has verified the initiator's identity and
/// signature, so `initiator` is authenticated. `now` is Unix milliseconds.
pub trait AdmissionPolicy: Send + Sync {
    /// Returns the capability ceiling for this member, or why it is refused.
    fn admit(
        &self,
        initiator: &PublicIdentity,
        proof: &AdmissionProof,
        federation: &FederationId,
        now: u64,
    ) -> Result<CapabilitySet>;
}

/// Anyone who authenticates may join, with every capability they negotiate.
#[derive(Clone, Copy, Debug, Default)]
pub struct Open;

impl AdmissionPolicy for Open {
    fn admit(
        &self,
        _: &PublicIdentity,
        _: &AdmissionProof,
        _: &FederationId,
        _: u64,
    ) -> Result<CapabilitySet> {
        Ok(CapabilitySet::all())
    }
}

/// Only the listed node ids may join.
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    allowed: BTreeSet<NodeId>,
}

impl Allowlist {
    /// An allowlist of `ids`.
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            allowed: ids.into_iter().collect(),
        }
    }
}

impl AdmissionPolicy for Allowlist {
    fn admit(
        &self,
        initiator: &PublicIdentity,
        _: &AdmissionProof,
        _: &FederationId,
        _: u64,
    ) -> Result<CapabilitySet> {
        if self.allowed.contains(&initiator.node_id()) {
            Ok(CapabilitySet::all())
        } else {
            Err(Error::NotAdmitted("node id not on the allowlist"))
        }
    }
}

/// Initiators must present an [`Invitation`] for themselves, signed by one of the
/// listed members, unexpired, for this federation. The member gets at most the
/// invitation's capabilities.
#[derive(Clone, Debug, Default)]
pub struct InvitationPolicy {
    inviters: BTreeMap<NodeId, PublicIdentity>,
}

impl InvitationPolicy {
    /// A policy accepting invitations signed by `inviters`.
    pub fn new(inviters: impl IntoIterator<Item = PublicIdentity>) -> Self {
        Self {
            inviters: inviters.into_iter().map(|p| (p.node_id(), p)).collect(),
        }
    }
}

impl AdmissionPolicy for InvitationPolicy {
    fn admit(
        &self,
        initiator: &PublicIdentity,
        proof: &AdmissionProof,
        federation: &FederationId,
        now: u64,
    ) -> Result<CapabilitySet> {
        let AdmissionProof::Invitation(inv) = proof else {
            return Err(Error::NotAdmitted("an invitation is required"));
        };
        let issuer = self
            .inviters
            .get(&NodeId(inv.body.issuer))
            .ok_or(Error::NotAdmitted("invitation issuer may not invite"))?;
        inv.verify(issuer)?;
        if inv.body.federation != *federation {
            return Err(Error::NotAdmitted("invitation is for another federation"));
        }
        if inv.body.invitee != initiator.node_id().0 {
            return Err(Error::NotAdmitted("invitation is for another node"));
        }
        if now >= inv.body.expires_at {
            return Err(Error::NotAdmitted("invitation expired"));
        }
        Ok(inv.body.capabilities)
    }
}

/// The signed part of an [`Invitation`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationBody {
    /// The federation the invitee may join.
    pub federation: FederationId,
    /// Node id of the inviting member.
    pub issuer: [u8; 32],
    /// Node id of the invitee.
    pub invitee: [u8; 32],
    /// The most the invitee may be granted.
    pub capabilities: CapabilitySet,
    /// End of validity (exclusive), Unix milliseconds.
    pub expires_at: u64,
}

/// An invitation to join, signed by a member with every key it has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    body: InvitationBody,
    signature: Vec<u8>,
}

impl Invitation {
    /// `issuer` invites `invitee` into `federation` until `expires_at` (Unix ms).
    pub fn issue(
        issuer: &Identity,
        invitee: NodeId,
        federation: FederationId,
        capabilities: CapabilitySet,
        expires_at: u64,
    ) -> Result<Self> {
        let body = InvitationBody {
            federation,
            issuer: issuer.node_id().0,
            invitee: invitee.0,
            capabilities,
            expires_at,
        };
        let signature = issuer
            .sign(labels::INVITATION_SIGNATURE, &wire::encode(&body)?)?
            .to_bytes();
        Ok(Self { body, signature })
    }

    /// The signed contents.
    pub fn body(&self) -> &InvitationBody {
        &self.body
    }

    /// Checks the signature against `issuer` (every part the issuer has keys for).
    pub fn verify(&self, issuer: &PublicIdentity) -> Result<()> {
        if issuer.node_id().0 != self.body.issuer {
            return Err(Error::NotAdmitted("invitation issuer mismatch"));
        }
        let sig = HybridSignature::from_bytes(&self.signature)
            .map_err(|_| Error::NotAdmitted("malformed invitation signature"))?;
        issuer
            .verify(
                labels::INVITATION_SIGNATURE,
                &wire::encode(&self.body)?,
                &sig,
            )
            .map_err(|_| Error::NotAdmitted("invitation signature does not verify"))
    }
}
