//! Secrets at rest: upstream credentials and webhook secrets are sealed with AES-256-GCM under a
//! key kept outside sled and outside the records — `CODESTORAGE_SECRET_KEY` (base64 of 32
//! bytes) when set, else `<data>/keys/secrets.key` (created on first start, mode 0600).
//!
//! Every sealed value has its own random 96-bit nonce and is bound to a context string (for
//! example `credential:<repo id>`) as associated data, so a sealed value copied into another
//! record does not open there. The sealed form is `v1:<base64(nonce || ciphertext || tag)>`.
//! Plaintext never reaches a log: [`Secret`]'s `Debug` prints a placeholder.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The environment variable that holds the key (base64 of 32 bytes); it wins over the file.
pub const KEY_ENV: &str = "CODESTORAGE_SECRET_KEY";

const KEY_LEN: usize = 32;
const PREFIX: &str = "v1:";

/// Why secrets cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file cannot be read or created.
    #[error("secret key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key is not 32 bytes of base64.
    #[error("secret key from {0} is not base64 of 32 bytes")]
    BadKey(String),
    /// A sealed value is malformed, or was sealed under another key or context.
    #[error("a stored secret cannot be opened (wrong key, or the record was altered)")]
    Open,
    /// The system random source failed.
    #[error("no randomness available")]
    Random,
}

/// A plaintext secret in memory. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The plaintext, for the one place that needs it (an HTTP header, a MAC key).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Seals and opens secrets under the server's secret key.
pub struct SecretBox {
    key: LessSafeKey,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox")
    }
}

/// The key file of data directory `data`.
pub fn key_file(data: &Path) -> PathBuf {
    data.join("keys").join("secrets.key")
}

fn decode_key(text: &str, from: &str) -> Result<[u8; KEY_LEN], SecretError> {
    B64.decode(text.trim())
        .ok()
        .and_then(|k| <[u8; KEY_LEN]>::try_from(k.as_slice()).ok())
        .ok_or_else(|| SecretError::BadKey(from.to_owned()))
}

impl SecretBox {
    /// The box of data directory `data`: the key from the environment, else from the key file
    /// (generated on first use).
    pub fn open_dir(data: &Path) -> Result<SecretBox, SecretError> {
        if let Ok(text) = std::env::var(KEY_ENV) {
            return SecretBox::from_key(&decode_key(&text, KEY_ENV)?);
        }
        let path = key_file(data);
        let io = |source| SecretError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => SecretBox::from_key(&decode_key(&text, &path.display().to_string())?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                aws_lc_rs::rand::fill(&mut key).map_err(|_| SecretError::Random)?;
                let dir = path.parent().unwrap_or(data);
                codestorage_store::fsutil::create_dir_all_durable(dir).map_err(io)?;
                write_private(&path, format!("{}\n", B64.encode(key)).as_bytes()).map_err(io)?;
                SecretBox::from_key(&key)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A box with `key`.
    pub fn from_key(key: &[u8; KEY_LEN]) -> Result<SecretBox, SecretError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| SecretError::BadKey("key material".into()))?;
        Ok(SecretBox {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Seal `secret` for `context`.
    pub fn seal(&self, context: &str, secret: &Secret) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let mut data = secret.expose().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretError::Open)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{PREFIX}{}", B64.encode(out)))
    }

    /// Open a value sealed for `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Secret, SecretError> {
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .ok_or(SecretError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Open)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain.to_vec())
            .map(Secret)
            .map_err(|_| SecretError::Open)
    }
}

/// Write a file only its owner can read, atomically.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        codestorage_store::fsutil::fsync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> SecretBox {
        SecretBox::from_key(&[7u8; KEY_LEN]).expect("key")
    }

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let b = sealer();
        let s = Secret::new("hunter2");
        let one = b.seal("credential:r1", &s).expect("seal");
        let two = b.seal("credential:r1", &s).expect("seal");
        assert_ne!(one, two, "each seal has its own nonce");
        assert!(!one.contains("hunter2"));
        assert_eq!(b.open("credential:r1", &one).expect("open"), s);
    }

    #[test]
    fn wrong_context_key_or_tampering_fails() {
        let b = sealer();
        let sealed = b.seal("credential:r1", &Secret::new("pw")).expect("seal");
        assert!(b.open("credential:r2", &sealed).is_err());
        let other = SecretBox::from_key(&[8u8; KEY_LEN]).expect("key");
        assert!(other.open("credential:r1", &sealed).is_err());
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("utf8");
        assert!(b.open("credential:r1", &tampered).is_err());
        assert!(b.open("credential:r1", "garbage").is_err());
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = SecretBox::open_dir(dir.path()).expect("create");
        let sealed = a.seal("c", &Secret::new("x")).expect("seal");
        let b = SecretBox::open_dir(dir.path()).expect("reopen");
        assert_eq!(b.open("c", &sealed).expect("open").expose(), "x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_file(dir.path()))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(format!("{:?}", Secret::new("x")).contains("***"));
    }
}
