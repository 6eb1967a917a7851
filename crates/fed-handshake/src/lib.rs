//! The exo-federation joining protocol, as sans-IO state machines.
//!
//! A node joins a federation by running this handshake with a member:
//!
//! 1. **I → R** `hello`: version, offered suites and capabilities, federation id,
//!    nonce, an ephemeral X-Wing public key.
//! 2. **R → I** `accept`: the X-Wing ciphertext; sealed under a handshake key: R's
//!    choices, R's identity, R's signature over the transcript, a Finished MAC.
//! 3. **I → R** `finish`, sealed: I's identity, admission proof, signature, Finished MAC.
//!
//! Both then hold a [`SecureChannel`](fed_crypto::SecureChannel) keyed from the
//! X-Wing secret and the whole transcript, and R sends I a signed
//! [`FederationToken`] as the channel's first frame. The properties claimed (mutual
//! authentication, forward secrecy, identity hiding from passive observers,
//! downgrade protection, channel binding) and the byte formats are in
//! `docs/protocol/handshake.md`.
//!
//! What this crate does not do: IO, clocks, randomness of its own. Messages are
//! handed in and polled out whole, times are Unix milliseconds passed by the caller,
//! and an RNG is a parameter of the constructors.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use fed_crypto::Identity;
//! use fed_handshake::{Allowlist, Event, FederationId, Initiator, InitiatorConfig, Responder, ResponderConfig, ResponderTrust};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//!
//! let federation = FederationId([7; 32]);
//! let alice = Arc::new(Identity::generate(&mut rng, false));
//! let bob = Arc::new(Identity::generate(&mut rng, false));
//! let binding = b"both libp2p peer ids";
//! let now = 1_700_000_000_000;
//!
//! // Alice knows Bob's node id (a pinned bootstrap node); Bob admits Alice by hers.
//! let trust = ResponderTrust::Only(vec![bob.node_id()]);
//! let admission = Arc::new(Allowlist::new([alice.node_id()]));
//! let mut i = Initiator::new(Arc::new(InitiatorConfig::new(alice, federation, trust)), binding, now, &mut rng)?;
//! let mut r = Responder::new(Arc::new(ResponderConfig::new(bob, federation, admission)), binding, now, &mut rng)?;
//!
//! // Carry messages until both sides are quiet.
//! loop {
//!     let mut moved = false;
//!     while let Some(m) = i.poll_transmit() { r.handle_input(&m, now)?; moved = true; }
//!     while let Some(m) = r.poll_transmit() { i.handle_input(&m, now)?; moved = true; }
//!     if !moved { break; }
//! }
//! let Some(Event::Established(mut client)) = i.poll_event() else { panic!("no session") };
//! let Some(Event::Established(mut server)) = r.poll_event() else { panic!("no session") };
//!
//! let frame = client.channel.seal(b"query")?;
//! assert_eq!(server.channel.open(&frame)?, b"query");
//! assert_eq!(client.token, server.token);
//! # Ok::<(), fed_handshake::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admission;
mod caps;
mod error;
mod handshake;
pub mod labels;
mod token;
mod wire;

#[cfg(test)]
mod tests;

pub use admission::{
    AdmissionPolicy, Allowlist, Invitation, InvitationBody, InvitationPolicy, Open,
};
pub use caps::{Capabilities, Capability, CapabilitySet, Limits, ProtocolVersion, Suite};
pub use error::{Error, Result};
pub use handshake::{
    DEFAULT_CLOCK_SKEW_MS, DEFAULT_TIMEOUT_MS, DEFAULT_TOKEN_LIFETIME_MS, Event, Initiator,
    InitiatorConfig, MAX_CHANNEL_BINDING_LEN, Responder, ResponderConfig, ResponderTrust, Session,
};
pub use token::{
    FederationId, FederationToken, NoRevocation, RevocationCheck, TokenBody, TokenCheck,
};
pub use wire::{
    AdmissionProof, ENVELOPE_HEADER_LEN, MAGIC, MAX_MESSAGE_LEN, RejectReason, message_len,
};
