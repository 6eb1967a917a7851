//! Key files: a small checksummed binary envelope, written with 0600 permissions.
//!
//! Layout (all integers big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `b"EXOFEDKF"` |
//! | 8 | 1 | format version, `1` |
//! | 9 | 1 | kind: `1` identity secret, `2` X-Wing secret, `3` public identity |
//! | 10 | 2 | body length `n` |
//! | 12 | n | body |
//! | 12 + n | 32 | checksum: `BLAKE3-derive(KEY_FILE_CHECKSUM, [bytes 0 .. 12 + n])` |
//!
//! Bodies: identity secret = `flags (1; bit 0 = ML-DSA present) ‖ Ed25519 secret (32)
//! ‖ [ML-DSA-65 seed (32)]`; X-Wing secret = its 32-byte seed; public identity = its
//! canonical encoding. The checksum detects truncation and corruption; it is not
//! a MAC (anyone who can write the file can forge it).

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use crate::{
    error::{Error, Result},
    identity::{Identity, PublicIdentity},
    kdf::{self, labels},
    xwing::XWingSecretKey,
};

const MAGIC: &[u8; 8] = b"EXOFEDKF";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 12;
const CHECKSUM_LEN: usize = 32;
/// Largest key file accepted; anything longer is rejected before it is parsed.
pub const MAX_KEY_FILE_LEN: usize = 4096;

/// What a key file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// An [`Identity`] (secret).
    Identity,
    /// An [`XWingSecretKey`] (secret).
    XWing,
    /// A [`PublicIdentity`] (public).
    PublicIdentity,
}

impl KeyKind {
    fn code(self) -> u8 {
        match self {
            KeyKind::Identity => 1,
            KeyKind::XWing => 2,
            KeyKind::PublicIdentity => 3,
        }
    }

    fn from_code(code: u8) -> Result<Self> {
        match code {
            1 => Ok(KeyKind::Identity),
            2 => Ok(KeyKind::XWing),
            3 => Ok(KeyKind::PublicIdentity),
            other => Err(Error::Unsupported {
                what: "key file kind",
                value: other.into(),
            }),
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyKind::Identity => "identity",
            KeyKind::XWing => "X-Wing",
            KeyKind::PublicIdentity => "public identity",
        }
    }

    fn is_secret(self) -> bool {
        !matches!(self, KeyKind::PublicIdentity)
    }
}

/// Wraps `body` in the key-file envelope.
fn encode(kind: KeyKind, body: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + body.len() + CHECKSUM_LEN));
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind.code());
    // Bodies are at most a few kilobytes, far below u16::MAX.
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    let sum = kdf::hash(labels::KEY_FILE_CHECKSUM, &[&out]);
    out.extend_from_slice(&sum);
    out
}

/// Checks the envelope and returns the body of a file of kind `expected`.
fn decode(bytes: &[u8], expected: KeyKind) -> Result<&[u8]> {
    if bytes.len() > MAX_KEY_FILE_LEN {
        return Err(Error::MalformedKeyFile("larger than any key file"));
    }
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(Error::MalformedKeyFile("truncated"));
    }
    if &bytes[..8] != MAGIC {
        return Err(Error::MalformedKeyFile("not an exo-federation key file"));
    }
    if bytes[8] != VERSION {
        return Err(Error::Unsupported {
            what: "key file version",
            value: bytes[8].into(),
        });
    }
    let kind = KeyKind::from_code(bytes[9])?;
    let body_len = usize::from(u16::from_be_bytes([bytes[10], bytes[11]]));
    if bytes.len() != HEADER_LEN + body_len + CHECKSUM_LEN {
        return Err(Error::MalformedKeyFile(
            "length field disagrees with the file size",
        ));
    }
    let (content, sum) = bytes.split_at(HEADER_LEN + body_len);
    if !kdf::ct_eq(&kdf::hash(labels::KEY_FILE_CHECKSUM, &[content]), sum) {
        return Err(Error::MalformedKeyFile(
            "checksum mismatch (corrupted file)",
        ));
    }
    if kind != expected {
        return Err(Error::WrongKeyKind {
            expected: expected.name(),
            found: kind.name(),
        });
    }
    Ok(&content[HEADER_LEN..])
}

impl Identity {
    /// Encodes this secret identity as a key file.
    pub fn to_key_file(&self) -> Zeroizing<Vec<u8>> {
        let mut body = Zeroizing::new(Vec::with_capacity(65));
        let ml = self.ml_dsa_seed();
        body.push(u8::from(ml.is_some()));
        body.extend_from_slice(self.ed25519_secret_bytes().as_ref());
        if let Some(seed) = &ml {
            body.extend_from_slice(seed.as_ref());
        }
        encode(KeyKind::Identity, &body)
    }

    /// Decodes a key file written by [`Identity::to_key_file`].
    pub fn from_key_file(bytes: &[u8]) -> Result<Self> {
        let body = decode(bytes, KeyKind::Identity)?;
        let (&flags, rest) = body
            .split_first()
            .ok_or(Error::MalformedKeyFile("empty identity body"))?;
        let has_ml = match flags {
            0 => false,
            1 => true,
            _ => return Err(Error::MalformedKeyFile("unknown identity flags")),
        };
        if rest.len() != if has_ml { 64 } else { 32 } {
            return Err(Error::MalformedKeyFile(
                "identity body has the wrong length",
            ));
        }
        let mut ed = Zeroizing::new([0u8; 32]);
        ed.copy_from_slice(&rest[..32]);
        let ml = has_ml.then(|| {
            let mut seed = Zeroizing::new([0u8; 32]);
            seed.copy_from_slice(&rest[32..64]);
            seed
        });
        Ok(Identity::from_seeds(&ed, ml.as_deref()))
    }

    /// Writes this identity to `path` with mode 0600, atomically (temporary file and rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), &self.to_key_file(), true)
    }

    /// Reads an identity from `path`; fails if the file is readable by others.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let bytes = read_file(path.as_ref(), KeyKind::Identity)?;
        Self::from_key_file(&bytes)
    }
}

impl XWingSecretKey {
    /// Encodes this secret key as a key file.
    pub fn to_key_file(&self) -> Zeroizing<Vec<u8>> {
        encode(KeyKind::XWing, self.to_bytes().as_ref())
    }

    /// Decodes a key file written by [`XWingSecretKey::to_key_file`].
    pub fn from_key_file(bytes: &[u8]) -> Result<Self> {
        let body = decode(bytes, KeyKind::XWing)?;
        XWingSecretKey::from_bytes(body)
    }

    /// Writes this key to `path` with mode 0600, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), &self.to_key_file(), true)
    }

    /// Reads a key from `path`; fails if the file is readable by others.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let bytes = read_file(path.as_ref(), KeyKind::XWing)?;
        Self::from_key_file(&bytes)
    }
}

impl PublicIdentity {
    /// Encodes this public identity as a key file.
    pub fn to_key_file(&self) -> Vec<u8> {
        encode(KeyKind::PublicIdentity, self.as_bytes()).to_vec()
    }

    /// Decodes a key file written by [`PublicIdentity::to_key_file`].
    pub fn from_key_file(bytes: &[u8]) -> Result<Self> {
        PublicIdentity::from_bytes(decode(bytes, KeyKind::PublicIdentity)?)
    }

    /// Writes this public identity to `path` (mode 0644), atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), &self.to_key_file(), false)
    }

    /// Reads a public identity from `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let bytes = read_file(path.as_ref(), KeyKind::PublicIdentity)?;
        Self::from_key_file(&bytes)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io_err(path)(std::io::Error::other("not a file path")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let result = (|| {
        let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn read_file(path: &Path, kind: KeyKind) -> Result<Zeroizing<Vec<u8>>> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    #[cfg(unix)]
    if kind.is_secret() {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io_err(path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = kind;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};

    use super::*;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn identity_round_trips_through_a_file_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        for pq in [false, true] {
            let id = Identity::generate(&mut rng(), pq);
            id.save(&path).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600);
            }
            let back = Identity::load(&path).unwrap();
            assert_eq!(back.public(), id.public());
            assert_eq!(back.has_post_quantum(), pq);
        }
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        Identity::generate(&mut rng(), false).save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(Error::InsecurePermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn xwing_and_public_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sk = XWingSecretKey::generate(&mut rng());
        sk.save(dir.path().join("kem.key")).unwrap();
        let back = XWingSecretKey::load(dir.path().join("kem.key")).unwrap();
        assert_eq!(back.public_key(), sk.public_key());

        let id = Identity::generate(&mut rng(), true);
        id.public().save(dir.path().join("node.pub")).unwrap();
        assert_eq!(
            &PublicIdentity::load(dir.path().join("node.pub")).unwrap(),
            id.public()
        );
    }

    #[test]
    fn malformed_files_give_typed_errors() {
        let id = Identity::generate(&mut rng(), true);
        let good = id.to_key_file();
        // Every truncation is rejected.
        for len in 0..good.len() {
            assert!(
                Identity::from_key_file(&good[..len]).is_err(),
                "truncated to {len}"
            );
        }
        // Every single-bit flip is rejected.
        for i in 0..good.len() {
            let mut bad = good.to_vec();
            bad[i] ^= 0x10;
            assert!(Identity::from_key_file(&bad).is_err(), "flip at {i}");
        }
        assert!(matches!(
            Identity::from_key_file(b"hello"),
            Err(Error::MalformedKeyFile("truncated"))
        ));
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert!(matches!(
            Identity::from_key_file(&trailing),
            Err(Error::MalformedKeyFile(_))
        ));
        // The wrong kind of key is named in the error.
        let kem = XWingSecretKey::generate(&mut rng()).to_key_file();
        assert!(matches!(
            Identity::from_key_file(&kem),
            Err(Error::WrongKeyKind {
                expected: "identity",
                found: "X-Wing"
            })
        ));
        assert!(matches!(
            XWingSecretKey::from_key_file(&good),
            Err(Error::WrongKeyKind {
                expected: "X-Wing",
                found: "identity"
            })
        ));
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let err = Identity::load("/nonexistent/dir/node.key").unwrap_err();
        assert!(matches!(err, Error::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/dir/node.key"));
    }
}
