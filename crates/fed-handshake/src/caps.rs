//! Versions, cipher suites and capabilities, and how two offers are negotiated.

use serde::{Deserialize, Serialize};

/// A protocol version. Peers with different `major` versions cannot talk; the
/// `minor` version in use is the smaller of the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProtocolVersion {
    /// Incompatible changes.
    pub major: u8,
    /// Compatible additions.
    pub minor: u8,
}

impl ProtocolVersion {
    /// The version this implementation speaks.
    pub const CURRENT: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A cipher suite: how the handshake authenticates. Both use X-Wing for key
/// exchange and AES-256-GCM for the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Suite {
    /// X-Wing key exchange, Ed25519 transcript signatures: post-quantum secrecy,
    /// classical authentication (as TLS and Signal deploy today).
    Default,
    /// X-Wing key exchange, hybrid Ed25519 + ML-DSA-65 transcript signatures and
    /// tokens: both must verify. Both peers need ML-DSA-65 keys.
    PqAuth,
}

impl Suite {
    /// The suite's name as used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Default => "default",
            Suite::PqAuth => "pq-auth",
        }
    }
}

/// One thing a member may do in the federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Capability {
    /// Send similarity queries.
    Query,
    /// Relay onion-routed packets.
    Relay,
    /// Vote in Byzantine agreement.
    Vote,
    /// Exchange CRDT state.
    CrdtSync,
    /// Issue invitations and revocations.
    Admin,
}

impl Capability {
    /// Every capability, in bit order.
    pub const ALL: [Capability; 5] = [
        Capability::Query,
        Capability::Relay,
        Capability::Vote,
        Capability::CrdtSync,
        Capability::Admin,
    ];

    fn bit(self) -> u32 {
        match self {
            Capability::Query => 1 << 0,
            Capability::Relay => 1 << 1,
            Capability::Vote => 1 << 2,
            Capability::CrdtSync => 1 << 3,
            Capability::Admin => 1 << 4,
        }
    }
}

/// A set of [`Capability`] values, encoded as a `u32` bit mask (bit 0 `Query`,
/// 1 `Relay`, 2 `Vote`, 3 `CrdtSync`, 4 `Admin`; other bits are ignored on receipt,
/// so later versions can add capabilities).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CapabilitySet(u32);

impl CapabilitySet {
    /// No capability.
    pub const EMPTY: CapabilitySet = CapabilitySet(0);

    /// Every capability this version knows.
    pub fn all() -> Self {
        Capability::ALL.iter().copied().collect()
    }

    /// Whether `cap` is in the set.
    pub fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    /// The set with `cap` added.
    pub fn with(self, cap: Capability) -> Self {
        CapabilitySet(self.0 | cap.bit())
    }

    /// The capabilities in both sets.
    pub fn intersection(self, other: Self) -> Self {
        CapabilitySet(self.0 & other.0 & Self::all().0)
    }

    /// The raw bit mask.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The capabilities in the set.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

impl FromIterator<Capability> for CapabilitySet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        iter.into_iter()
            .fold(CapabilitySet::EMPTY, CapabilitySet::with)
    }
}

/// Numeric limits that travel with capabilities. Negotiation takes the smaller of
/// each pair, so neither side is held to more than it offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limits {
    /// Largest application message, in bytes. The session's channel takes it as its
    /// frame payload limit, raised to at least [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN)
    /// (the token travels in the channel) and lowered to at most 16 MiB.
    pub max_message_bytes: u32,
    /// Requests per second a peer may send.
    pub requests_per_second: u32,
    /// Concurrent requests a peer may have outstanding.
    pub max_in_flight: u32,
}

impl Default for Limits {
    /// 1 MiB messages, 100 requests per second, 64 in flight.
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            requests_per_second: 100,
            max_in_flight: 64,
        }
    }
}

impl Limits {
    /// Each limit the smaller of the two.
    pub fn min(self, other: Self) -> Self {
        Self {
            max_message_bytes: self.max_message_bytes.min(other.max_message_bytes),
            requests_per_second: self.requests_per_second.min(other.requests_per_second),
            max_in_flight: self.max_in_flight.min(other.max_in_flight),
        }
    }
}

/// What one side offers, or what was agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capabilities {
    /// The capabilities.
    pub set: CapabilitySet,
    /// Their limits.
    pub limits: Limits,
}

impl Default for Capabilities {
    /// Query and CRDT sync, default limits.
    fn default() -> Self {
        Self {
            set: CapabilitySet::EMPTY
                .with(Capability::Query)
                .with(Capability::CrdtSync),
            limits: Limits::default(),
        }
    }
}

impl Capabilities {
    /// The agreement of two offers: the intersection of the sets, the smaller limits.
    pub fn negotiate(self, other: Self) -> Self {
        Self {
            set: self.set.intersection(other.set),
            limits: self.limits.min(other.limits),
        }
    }

    /// Whether `cap` is granted.
    pub fn allows(&self, cap: Capability) -> bool {
        self.set.contains(cap)
    }
}

/// The responder's choice: the first suite in its own preference order that the
/// initiator also offered.
pub(crate) fn choose_suite(ours: &[Suite], offered: &[Suite]) -> Option<Suite> {
    ours.iter().copied().find(|s| offered.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_intersects_and_takes_minimums() {
        let a = Capabilities {
            set: CapabilitySet::all(),
            limits: Limits {
                max_message_bytes: 1000,
                requests_per_second: 5,
                max_in_flight: 100,
            },
        };
        let b = Capabilities {
            set: [Capability::Query, Capability::Vote].into_iter().collect(),
            limits: Limits {
                max_message_bytes: 2000,
                requests_per_second: 50,
                max_in_flight: 10,
            },
        };
        let n = a.negotiate(b);
        assert_eq!(n, b.negotiate(a));
        assert!(n.allows(Capability::Query) && n.allows(Capability::Vote));
        assert!(!n.allows(Capability::Admin));
        assert_eq!(
            n.limits,
            Limits {
                max_message_bytes: 1000,
                requests_per_second: 5,
                max_in_flight: 10
            }
        );
    }

    #[test]
    fn unknown_capability_bits_are_dropped() {
        let future = CapabilitySet(1 << 31 | 1);
        assert_eq!(
            future.intersection(CapabilitySet(u32::MAX)),
            CapabilitySet(1)
        );
    }

    #[test]
    fn suite_choice_follows_the_responders_preference() {
        assert_eq!(
            choose_suite(
                &[Suite::PqAuth, Suite::Default],
                &[Suite::Default, Suite::PqAuth]
            ),
            Some(Suite::PqAuth)
        );
        assert_eq!(choose_suite(&[Suite::Default], &[Suite::PqAuth]), None);
    }
}
