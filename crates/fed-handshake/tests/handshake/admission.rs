//! Admission policies: allowlists and invitations.

use std::sync::Arc;

use fed_crypto::Identity;
use fed_handshake::{
    AdmissionProof, Allowlist, Capability, CapabilitySet, Error, Invitation, InvitationPolicy,
    RejectReason, Suite,
};

use crate::*;

#[test]
fn allowlist_admits_listed_and_refuses_others() {
    let mut s = setup(Suite::Default, 31);
    s.rc.admission = Arc::new(Allowlist::new([s.alice.node_id()]));
    let (mut i, mut r) = s.start(32);
    drive(&mut i, &mut r).unwrap();
    established_i(&mut i);

    let mut s = setup(Suite::Default, 33);
    s.rc.admission = Arc::new(Allowlist::new([
        Identity::generate(&mut rng(1), false).node_id()
    ]));
    let (mut i, mut r) = s.start(34);
    r.handle_input(&i.poll_transmit().unwrap(), NOW).unwrap();
    i.handle_input(&r.poll_transmit().unwrap(), NOW).unwrap();
    assert!(matches!(
        r.handle_input(&i.poll_transmit().unwrap(), NOW),
        Err(Error::NotAdmitted(_))
    ));
    assert!(r.poll_event().is_none());
    // The initiator learns why instead of waiting for a timeout.
    assert!(matches!(
        i.handle_input(&r.poll_transmit().unwrap(), NOW),
        Err(Error::Rejected(RejectReason::NotAdmitted))
    ));
}

fn invitation_setup(
    invite: impl FnOnce(&Setup, &Identity) -> Invitation,
) -> Result<Box<fed_handshake::Session>, Error> {
    let mut s = setup(Suite::Default, 41);
    let carol = Identity::generate(&mut rng(42), true); // an existing member who invites
    s.rc.admission = Arc::new(InvitationPolicy::new([carol.public().clone()]));
    s.ic.admission = AdmissionProof::Invitation(invite(&s, &carol));
    let (mut i, mut r) = s.start(43);
    drive(&mut i, &mut r)?;
    Ok(established_i(&mut i))
}

#[test]
fn a_valid_invitation_admits_within_its_capabilities() {
    let session = invitation_setup(|s, carol| {
        let caps = CapabilitySet::EMPTY
            .with(Capability::Query)
            .with(Capability::Relay);
        Invitation::issue(carol, s.alice.node_id(), FED, caps, NOW + 60_000).unwrap()
    })
    .unwrap();
    assert!(session.capabilities.allows(Capability::Query));
    assert!(session.capabilities.allows(Capability::Relay));
    assert!(
        !session.capabilities.allows(Capability::Admin),
        "capped by the invitation"
    );
    assert!(!session.token.body().capabilities.allows(Capability::Admin));
}

#[test]
fn bad_invitations_are_refused() {
    let all = CapabilitySet::all();
    // Expired.
    let e =
        invitation_setup(|s, c| Invitation::issue(c, s.alice.node_id(), FED, all, NOW).unwrap())
            .unwrap_err();
    assert!(
        matches!(e, Error::NotAdmitted("invitation expired")),
        "{e:?}"
    );
    // For another node.
    let e = invitation_setup(|_, c| {
        Invitation::issue(
            c,
            Identity::generate(&mut rng(5), false).node_id(),
            FED,
            all,
            NOW + 1,
        )
        .unwrap()
    })
    .unwrap_err();
    assert!(
        matches!(e, Error::NotAdmitted("invitation is for another node")),
        "{e:?}"
    );
    // For another federation.
    let e = invitation_setup(|s, c| {
        Invitation::issue(
            c,
            s.alice.node_id(),
            fed_handshake::FederationId([9; 32]),
            all,
            NOW + 1,
        )
        .unwrap()
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotAdmitted("invitation is for another federation")
        ),
        "{e:?}"
    );
    // Signed by someone who is not an inviter.
    let e = invitation_setup(|s, _| {
        let stranger = Identity::generate(&mut rng(6), false);
        Invitation::issue(&stranger, s.alice.node_id(), FED, all, NOW + 1).unwrap()
    })
    .unwrap_err();
    assert!(
        matches!(e, Error::NotAdmitted("invitation issuer may not invite")),
        "{e:?}"
    );
}

#[test]
fn a_tampered_invitation_does_not_verify() {
    let mut g = rng(7);
    let carol = Identity::generate(&mut g, true);
    let inv =
        Invitation::issue(&carol, carol.node_id(), FED, CapabilitySet::EMPTY, NOW + 1).unwrap();
    inv.verify(carol.public()).unwrap();
    let mut body = inv.body().clone();
    body.capabilities = CapabilitySet::all();
    // A different body under the old signature is a different invitation: re-issuing
    // it is the only way to get a valid one, which needs Carol's key.
    let widened = Invitation::issue(
        &Identity::generate(&mut g, true),
        carol.node_id(),
        FED,
        body.capabilities,
        NOW + 1,
    )
    .unwrap();
    assert!(widened.verify(carol.public()).is_err());
}
