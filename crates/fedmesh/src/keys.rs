//! Key files: a node's identity secret (mode 0600) and its public half.

use std::{io::Write, path::Path, sync::Arc};

use fed_mesh::crypto::{Identity, PublicIdentity};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::Failure;

/// The secret key file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    ed25519_seed: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ml_dsa_seed: Option<String>,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        self.ed25519_seed.zeroize();
        if let Some(s) = self.ml_dsa_seed.as_mut() {
            s.zeroize();
        }
    }
}

/// The public key file (`<key>.pub`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublicFile {
    /// The public identity (fed-crypto encoding), hex.
    pub(crate) identity: String,
    /// Its node id, hex (informational).
    pub(crate) node_id: String,
}

fn seed(hex_seed: &str, path: &Path, field: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, Failure> {
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_seed.trim(), &mut out[..]).map_err(|e| {
        Failure::config(format!(
            "{}: field `{field}`: {e} (32 bytes of hex expected)",
            path.display()
        ))
    })?;
    Ok(out)
}

/// Reads a secret key file. Refuses a file others can read.
pub(crate) fn load(path: &Path) -> Result<Arc<Identity>, Failure> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Failure::config(format!(
                "{}: the key file is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            )));
        }
    }
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
    let parsed: Result<KeyFile, _> = toml::from_str(&text);
    text.zeroize();
    let file = parsed.map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
    let ed = seed(&file.ed25519_seed, path, "ed25519_seed")?;
    let pq = match &file.ml_dsa_seed {
        Some(s) => Some(seed(s, path, "ml_dsa_seed")?),
        None => None,
    };
    Ok(Arc::new(Identity::from_seeds(&ed, pq.as_deref())))
}

/// Writes a new key pair to `path` (mode 0600) and `path.pub`, refusing to
/// overwrite either.
pub(crate) fn generate(path: &Path, post_quantum: bool) -> Result<Arc<Identity>, Failure> {
    let mut ed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut ed[..]).map_err(|e| Failure::runtime(format!("no OS randomness: {e}")))?;
    let mut pq = zeroize::Zeroizing::new([0u8; 32]);
    if post_quantum {
        getrandom::fill(&mut pq[..])
            .map_err(|e| Failure::runtime(format!("no OS randomness: {e}")))?;
    }
    let identity = Identity::from_seeds(&ed, post_quantum.then_some(&*pq));
    let file = KeyFile {
        ed25519_seed: hex::encode(&ed[..]),
        ml_dsa_seed: post_quantum.then(|| hex::encode(&pq[..])),
    };
    let mut text = String::from("# exo-federation node key: secret, keep it mode 0600\n");
    text.push_str(&toml::to_string(&file).map_err(|e| Failure::runtime(e.to_string()))?);
    let pub_path = public_path(path);
    for p in [path, pub_path.as_path()] {
        if p.exists() {
            return Err(Failure::config(format!(
                "{}: exists; keygen never overwrites a key",
                p.display()
            )));
        }
    }
    write_new(path, text.as_bytes(), 0o600)?;
    text.zeroize();
    let public = public_file(identity.public());
    let body = toml::to_string(&public).map_err(|e| Failure::runtime(e.to_string()))?;
    write_new(&pub_path, body.as_bytes(), 0o644)?;
    Ok(Arc::new(identity))
}

pub(crate) fn public_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    p.into()
}

pub(crate) fn public_file(identity: &PublicIdentity) -> PublicFile {
    PublicFile {
        identity: hex::encode(identity.as_bytes()),
        node_id: hex::encode(identity.node_id().0),
    }
}

/// Reads a public identity: a `.pub` file, or the identity's hex encoding.
pub(crate) fn load_public(spec: &str) -> Result<PublicIdentity, Failure> {
    let path = Path::new(spec);
    let (hex_id, origin) = if path.exists() {
        let text =
            std::fs::read_to_string(path).map_err(|e| Failure::config(format!("{spec}: {e}")))?;
        let file: PublicFile =
            toml::from_str(&text).map_err(|e| Failure::config(format!("{spec}: {e}")))?;
        (file.identity, format!("{spec}: field `identity`"))
    } else {
        (spec.to_string(), format!("member `{spec}`"))
    };
    let bytes = hex::decode(hex_id.trim())
        .map_err(|e| Failure::config(format!("{origin}: not a file, and not hex: {e}")))?;
    PublicIdentity::from_bytes(&bytes)
        .map_err(|e| Failure::config(format!("{origin}: not a public identity: {e}")))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options
        .open(path)
        .map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))
}
