//! The genesis of a federation: the file every member shares, naming the
//! federation, its initial voting members (identity keys and addresses) and the
//! consensus parameters they must agree on (docs/protocol/genesis.md).
//!
//! The file is TOML for people; what is hashed is a canonical binary encoding
//! ([`Genesis::to_bytes`]), so two files that differ only in layout, comments or
//! key order are the same genesis with the same [`Genesis::hash`].

use std::path::Path;

use fed_crypto::PublicIdentity;
use fed_handshake::FederationId;
use fed_pbft::{Config as PbftConfig, MAX_REPLICAS, Membership};
use multiaddr::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::core::labels;

/// The largest genesis file read.
pub const MAX_GENESIS_FILE_LEN: u64 = 1 << 20;
/// Most addresses one member may list.
pub const MAX_MEMBER_ADDRESSES: usize = 8;
/// Longest address, in bytes of its binary encoding.
pub const MAX_ADDRESS_LEN: usize = 256;
/// The version this build reads and writes.
pub const GENESIS_VERSION: u8 = 1;
/// First bytes of the canonical encoding.
const MAGIC: &[u8; 16] = b"exo-fed-genesis\0";

/// A federation's genesis, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genesis {
    /// The federation's identifier.
    pub federation: FederationId,
    /// When the genesis was made (Unix milliseconds); informational, but hashed.
    pub created_ms: u64,
    /// The consensus parameters every voting member must use.
    pub consensus: ConsensusParameters,
    /// The initial voting members, in replica order.
    pub members: Vec<GenesisMember>,
}

/// One initial voting member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenesisMember {
    /// Its public identity.
    pub identity: PublicIdentity,
    /// Where it listens (at most [`MAX_MEMBER_ADDRESSES`]).
    pub addresses: Vec<Multiaddr>,
}

/// The consensus parameters that decide what a replica accepts, so every
/// member must use the same ones. (Timeouts are each node's own.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsensusParameters {
    /// Sequence numbers between checkpoints.
    pub checkpoint_interval: u64,
    /// Sequence numbers a replica accepts above its stable checkpoint.
    pub window: u64,
    /// Most requests in one batch.
    pub max_batch_requests: u64,
    /// Most bytes in one batch.
    pub max_batch_bytes: u64,
    /// Longest operation.
    pub max_operation_len: u64,
    /// Largest state snapshot.
    pub max_snapshot_len: u64,
}

impl Default for ConsensusParameters {
    /// fed-pbft's defaults.
    fn default() -> Self {
        let c = PbftConfig::default();
        Self {
            checkpoint_interval: c.checkpoint_interval,
            window: c.window,
            max_batch_requests: c.max_batch_requests as u64,
            max_batch_bytes: c.max_batch_bytes as u64,
            max_operation_len: c.max_operation_len as u64,
            max_snapshot_len: c.max_snapshot_len as u64,
        }
    }
}

/// Why a genesis was refused. Every variant says which file or field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenesisError {
    /// The file could not be read, or is larger than [`MAX_GENESIS_FILE_LEN`].
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// The TOML does not parse, or a field is missing, unknown or mistyped.
    #[error("{path}: {detail}")]
    Syntax {
        /// The file (or `<string>`).
        path: String,
        /// The parser's message, with the line and the field.
        detail: String,
    },
    /// A field parses but its value is refused.
    #[error("{path}: field `{field}`: {detail}")]
    Field {
        /// The file (or `<string>`).
        path: String,
        /// The field, as in the file (`members[2].identity`).
        field: String,
        /// Why.
        detail: String,
    },
}

/// The TOML layout.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u8,
    federation: String,
    created_ms: u64,
    consensus: ConsensusParameters,
    members: Vec<FileMember>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMember {
    identity: String,
    #[serde(default)]
    addresses: Vec<String>,
}

impl Genesis {
    /// Reads and checks a genesis file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, GenesisError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file_err = |detail: String| GenesisError::File {
            path: name.clone(),
            detail,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| file_err(e.to_string()))?
            .len();
        if len > MAX_GENESIS_FILE_LEN {
            return Err(file_err(format!(
                "{len} bytes, more than the {MAX_GENESIS_FILE_LEN} a genesis may have"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        Self::parse(&text, &name)
    }

    /// Parses and checks a genesis from TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, GenesisError> {
        if text.len() as u64 > MAX_GENESIS_FILE_LEN {
            return Err(GenesisError::File {
                path: origin.into(),
                detail: format!("more than {MAX_GENESIS_FILE_LEN} bytes"),
            });
        }
        let file: File = toml::from_str(text).map_err(|e| GenesisError::Syntax {
            path: origin.into(),
            detail: e.to_string(),
        })?;
        let field = |field: String, detail: String| GenesisError::Field {
            path: origin.into(),
            field,
            detail,
        };
        if file.version != GENESIS_VERSION {
            return Err(field(
                "version".into(),
                format!(
                    "{} (this build reads version {GENESIS_VERSION})",
                    file.version
                ),
            ));
        }
        let federation =
            FederationId(parse_hex32(&file.federation).map_err(|d| field("federation".into(), d))?);
        if file.members.is_empty() || file.members.len() > MAX_REPLICAS {
            return Err(field(
                "members".into(),
                format!(
                    "{} members; a federation has 1 to {MAX_REPLICAS}",
                    file.members.len()
                ),
            ));
        }
        let mut members = Vec::with_capacity(file.members.len());
        for (i, m) in file.members.iter().enumerate() {
            let bytes = hex::decode(&m.identity)
                .map_err(|e| field(format!("members[{i}].identity"), e.to_string()))?;
            let identity = PublicIdentity::from_bytes(&bytes)
                .map_err(|e| field(format!("members[{i}].identity"), e.to_string()))?;
            if m.addresses.len() > MAX_MEMBER_ADDRESSES {
                return Err(field(
                    format!("members[{i}].addresses"),
                    format!(
                        "{} addresses, at most {MAX_MEMBER_ADDRESSES}",
                        m.addresses.len()
                    ),
                ));
            }
            let mut addresses = Vec::with_capacity(m.addresses.len());
            for (j, a) in m.addresses.iter().enumerate() {
                let addr: Multiaddr = a
                    .parse()
                    .map_err(|e| field(format!("members[{i}].addresses[{j}]"), format!("{e}")))?;
                if addr.as_ref().len() > MAX_ADDRESS_LEN {
                    return Err(field(
                        format!("members[{i}].addresses[{j}]"),
                        format!("longer than {MAX_ADDRESS_LEN} bytes"),
                    ));
                }
                addresses.push(addr);
            }
            members.push(GenesisMember {
                identity,
                addresses,
            });
        }
        let genesis = Self {
            federation,
            created_ms: file.created_ms,
            consensus: file.consensus,
            members,
        };
        let membership = genesis
            .membership()
            .map_err(|e| field("members".into(), e.to_string()))?;
        genesis
            .pbft_config()
            .map_err(|d| field("consensus".into(), d))?
            .validate(&membership)
            .map_err(|e| field("consensus".into(), e.to_string()))?;
        Ok(genesis)
    }

    /// The TOML text of this genesis (what `fedmesh init` writes); parsing it
    /// gives this genesis back.
    pub fn to_toml(&self) -> String {
        let file = File {
            version: GENESIS_VERSION,
            federation: hex::encode(self.federation.0),
            created_ms: self.created_ms,
            consensus: self.consensus,
            members: self
                .members
                .iter()
                .map(|m| FileMember {
                    identity: hex::encode(m.identity.as_bytes()),
                    addresses: m.addresses.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        };
        let body = toml::to_string(&file).unwrap_or_default();
        format!("# exo-federation genesis (docs/protocol/genesis.md)\n{body}")
    }

    /// The voting membership of the first configuration epoch, bound to this
    /// genesis's [`hash`](Self::hash): every commit proof of the federation
    /// names its genesis, and verifies against no other.
    pub fn membership(&self) -> fed_pbft::Result<Membership> {
        Membership::with_context(
            self.members.iter().map(|m| m.identity.clone()).collect(),
            self.hash(),
        )
    }

    /// fed-pbft's configuration with these parameters (timeouts at their
    /// defaults, which are each node's own).
    pub fn pbft_config(&self) -> Result<PbftConfig, String> {
        let size = |v: u64, what: &str| {
            usize::try_from(v).map_err(|_| format!("{what} does not fit this machine"))
        };
        let c = &self.consensus;
        let mut config = PbftConfig::default();
        config.checkpoint_interval = c.checkpoint_interval;
        config.window = c.window;
        config.max_batch_requests = size(c.max_batch_requests, "max_batch_requests")?;
        config.max_batch_bytes = size(c.max_batch_bytes, "max_batch_bytes")?;
        config.max_operation_len = size(c.max_operation_len, "max_operation_len")?;
        config.max_snapshot_len = size(c.max_snapshot_len, "max_snapshot_len")?;
        Ok(config)
    }

    /// The canonical encoding (docs/protocol/genesis.md §2).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(GENESIS_VERSION);
        out.extend_from_slice(&self.federation.0);
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        let c = &self.consensus;
        for v in [
            c.checkpoint_interval,
            c.window,
            c.max_batch_requests,
            c.max_batch_bytes,
            c.max_operation_len,
            c.max_snapshot_len,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&(self.members.len() as u16).to_be_bytes());
        for m in &self.members {
            let id = m.identity.as_bytes();
            out.extend_from_slice(&(id.len() as u16).to_be_bytes());
            out.extend_from_slice(id);
            out.extend_from_slice(&(m.addresses.len() as u16).to_be_bytes());
            for a in &m.addresses {
                let a = a.as_ref();
                out.extend_from_slice(&(a.len() as u16).to_be_bytes());
                out.extend_from_slice(a);
            }
        }
        out
    }

    /// `BLAKE3-derive("exo-federation v1 mesh genesis", [to_bytes()])`.
    pub fn hash(&self) -> [u8; 32] {
        fed_crypto::hash(labels::GENESIS, &[&self.to_bytes()])
    }
}

fn parse_hex32(s: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(s).map_err(|e| e.to_string())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes of hex, expected 32", bytes.len()))
}

#[cfg(test)]
mod tests {
    use fed_crypto::Identity;

    use super::*;

    fn identity(seed: u8) -> Identity {
        Identity::from_seeds(&[seed; 32], None)
    }

    fn genesis(n: u8) -> Genesis {
        Genesis {
            federation: FederationId([0xfe; 32]),
            created_ms: 1_764_633_600_000,
            consensus: ConsensusParameters::default(),
            members: (1..=n)
                .map(|i| GenesisMember {
                    identity: identity(i).public().clone(),
                    addresses: vec![
                        format!("/ip4/127.0.0.1/tcp/{}", 4000 + u16::from(i))
                            .parse()
                            .unwrap(),
                    ],
                })
                .collect(),
        }
    }

    #[test]
    fn the_toml_round_trips_and_layout_does_not_change_the_hash() {
        let g = genesis(4);
        let text = g.to_toml();
        let back = Genesis::parse(&text, "g.toml").unwrap();
        assert_eq!(back, g);
        assert_eq!(back.hash(), g.hash());
        // Comments, blank lines and the order of keys are not the genesis.
        let shuffled = text
            .replace("version = 1\n", "")
            .replace("[consensus]", "# the parameters\n\n[consensus]")
            + "";
        let shuffled = format!("version = 1 # first\n{shuffled}");
        assert_eq!(
            Genesis::parse(&shuffled, "g.toml").unwrap().hash(),
            g.hash()
        );
        assert_eq!(g.membership().unwrap().len(), 4);
    }

    #[test]
    fn every_field_is_in_the_hash() {
        let g = genesis(4);
        let h = g.hash();
        let mut changed = Vec::new();
        let mut v = g.clone();
        v.federation.0[31] ^= 1;
        changed.push(v);
        let mut v = g.clone();
        v.created_ms += 1;
        changed.push(v);
        let mut v = g.clone();
        v.consensus.window *= 2;
        changed.push(v);
        let mut v = g.clone();
        v.consensus.max_snapshot_len += 1;
        changed.push(v);
        let mut v = g.clone();
        v.members.swap(0, 1);
        changed.push(v);
        let mut v = g.clone();
        v.members[2].addresses.clear();
        changed.push(v);
        let mut v = g.clone();
        v.members[3].addresses[0] = "/ip4/127.0.0.1/tcp/9".parse().unwrap();
        changed.push(v);
        let mut v = g.clone();
        v.members.pop();
        changed.push(v);
        for (i, v) in changed.iter().enumerate() {
            assert_ne!(v.hash(), h, "change {i} kept the hash");
        }
    }

    fn refused(text: &str) -> GenesisError {
        Genesis::parse(text, "bad.toml").unwrap_err()
    }

    #[test]
    fn bad_files_are_refused_naming_the_field() {
        let good = genesis(4).to_toml();
        let cases = [
            (good.replace("version = 1", "version = 2"), "`version`"),
            (
                good.replacen("federation = \"fe", "federation = \"zz", 1),
                "`federation`",
            ),
            (
                good.replacen("federation = \"fefe", "federation = \"fe", 1),
                "`federation`",
            ),
            (
                good.replacen("identity = \"", "identity = \"00", 1),
                "members[0].identity",
            ),
            (
                good.replacen("/ip4/127.0.0.1", "/ip9/x", 1),
                "members[0].addresses[0]",
            ),
            (good.replace("window = 128", "window = 100"), "`consensus`"),
            (
                good.replace("window = 128", "window = 128\nspeed = 3"),
                "speed",
            ),
            (good.replace("created_ms", "made_ms"), "made_ms"),
        ];
        for (text, want) in cases {
            let e = refused(&text);
            let msg = e.to_string();
            assert!(msg.starts_with("bad.toml"), "{msg}");
            assert!(msg.contains(want), "{want} not in: {msg}");
        }
        // One member twice.
        let mut g = genesis(4);
        g.members[3] = g.members[0].clone();
        let e = refused(&g.to_toml());
        assert!(e.to_string().contains("`members`"), "{e}");
        // No members.
        let mut g = genesis(1);
        g.members.clear();
        assert!(refused(&g.to_toml()).to_string().contains("`members`"));
    }

    #[test]
    fn a_file_too_large_is_refused_before_it_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        std::fs::write(&path, vec![b'#'; MAX_GENESIS_FILE_LEN as usize + 1]).unwrap();
        let e = Genesis::load(&path).unwrap_err();
        assert!(matches!(e, GenesisError::File { .. }), "{e}");
        assert!(e.to_string().contains("big.toml"), "{e}");
        let missing = Genesis::load(dir.path().join("none.toml")).unwrap_err();
        assert!(missing.to_string().contains("none.toml"), "{missing}");
    }

    /// The vector of docs/protocol/genesis.md §3 (its TOML is
    /// tests/data/genesis-vector.toml; its hash was computed independently from
    /// the document, in Python).
    #[test]
    fn the_documented_vector_holds() {
        let g = genesis(4);
        assert_eq!(
            g.to_toml(),
            include_str!("../tests/data/genesis-vector.toml")
        );
        assert_eq!(
            hex::encode(g.hash()),
            "d02f907478e1b4bdeddf0086b6f589b4716f1baa3c7f086b98734d85b9d09589"
        );
        // genesis.md §4: the membership is bound to the hash.
        let m = g.membership().unwrap();
        assert_eq!(m.context(), Some(&g.hash()));
        assert_eq!(
            hex::encode(m.id()),
            "71fe25919af70ba4431e10ff0fcf024957620a70a6ffd2cfc49b9953b6a5149e"
        );
    }
}
