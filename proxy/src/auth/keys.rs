//! Signing keys: the data directory's own key files, issuers' public keys from the config, and
//! key generation. Plain files, so the CLI can mint tokens while the server runs.
//!
//! Data directory layout (the remote helper and scripts rely on it):
//!
//! ```text
//! <data>/keys/org                       the organisation (JWT `iss`) of the data dir's key, e.g. `local`
//! <data>/keys/signing.pem               its private key, PKCS#8 PEM (mode 0600): EC P-256, RSA or Ed25519
//! <data>/keys/signing.pub.pem           its public key, SPKI PEM
//! <data>/keys/signing.kid               its key id (the `kid` header of tokens it signs)
//! <data>/keys/trusted/<org>/<kid>.pub.pem   earlier keys (after `keys generate`), still accepted
//! <data>/keys/revoked.json              the token deny-list (`codestorage token revoke`)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// Which kind of key (and so which JWT algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// EC P-256, ES256.
    Es256,
    /// RSA, RS256.
    Rs256,
    /// Ed25519, EdDSA.
    EdDsa,
}

impl KeyAlg {
    /// The JWT algorithm.
    pub fn jwt(self) -> Algorithm {
        match self {
            KeyAlg::Es256 => Algorithm::ES256,
            KeyAlg::Rs256 => Algorithm::RS256,
            KeyAlg::EdDsa => Algorithm::EdDSA,
        }
    }

    /// Parse `es256`, `rs256`, `eddsa`.
    pub fn parse(s: &str) -> Option<KeyAlg> {
        match s.to_ascii_lowercase().as_str() {
            "es256" => Some(KeyAlg::Es256),
            "rs256" => Some(KeyAlg::Rs256),
            "eddsa" | "ed25519" => Some(KeyAlg::EdDsa),
            _ => None,
        }
    }
}

/// Why key material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A PEM that is no supported key.
    #[error("{0} is not an EC P-256, RSA or Ed25519 key in PEM form")]
    BadKey(String),
    /// Key generation failed.
    #[error("generating a key: {0}")]
    Generate(String),
    /// No signing key in the data directory.
    #[error("no signing key in {0} (start the server once, or run `codestorage keys generate`)")]
    NoKey(PathBuf),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KeyError {
    let path = path.to_owned();
    move |source| KeyError::Io {
        action,
        path,
        source,
    }
}

/// A public key that verifies tokens of one issuer.
#[derive(Clone)]
pub struct VerifyingKey {
    /// Key id, if the issuer uses them.
    pub kid: Option<String>,
    /// The algorithm this key verifies (and the only one accepted with it).
    pub alg: Algorithm,
    /// The key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// Parse a public key PEM (SPKI; RSA also PKCS#1), detecting its type.
pub fn verifying_key(
    pem: &[u8],
    kid: Option<String>,
    what: &str,
) -> Result<VerifyingKey, KeyError> {
    let (alg, key) = if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        (Algorithm::ES256, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        (Algorithm::EdDSA, k)
    } else if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        (Algorithm::RS256, k)
    } else {
        return Err(KeyError::BadKey(what.to_owned()));
    };
    Ok(VerifyingKey { kid, alg, key })
}

/// The data directory's signing key.
pub struct SigningKey {
    /// The organisation (`iss`).
    pub org: String,
    /// Key id (empty: tokens carry no `kid`).
    pub kid: String,
    /// Algorithm.
    pub alg: Algorithm,
    /// The private key.
    pub key: EncodingKey,
    /// Its public half, for verification.
    pub public_pem: Vec<u8>,
}

fn keys_dir(data: &Path) -> PathBuf {
    data.join("keys")
}

/// Parse a PKCS#8 private key PEM, detecting its type.
fn signing_from_pem(pem: &[u8], what: &Path) -> Result<(Algorithm, EncodingKey), KeyError> {
    if let Ok(k) = EncodingKey::from_ec_pem(pem) {
        return Ok((Algorithm::ES256, k));
    }
    if let Ok(k) = EncodingKey::from_ed_pem(pem) {
        return Ok((Algorithm::EdDSA, k));
    }
    if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
        return Ok((Algorithm::RS256, k));
    }
    Err(KeyError::BadKey(what.display().to_string()))
}

fn read_trimmed(path: &Path) -> Result<String, KeyError> {
    Ok(fs::read_to_string(path)
        .map_err(io("read", path))?
        .trim()
        .to_owned())
}

/// A signing key from a PKCS#8 private key PEM given by the user (the remote helper's
/// `codestorage.keyFile`), for organisation `org`; `kid` may be absent.
pub fn signing_key_from_pem(
    pem: &[u8],
    org: &str,
    kid: Option<String>,
) -> Result<SigningKey, KeyError> {
    let (alg, key) = signing_from_pem(pem, Path::new("the key file"))?;
    let text = std::str::from_utf8(pem).map_err(|_| KeyError::BadKey("the key file".into()))?;
    let pair = rcgen::KeyPair::from_pem(text)
        .map_err(|e| KeyError::BadKey(format!("the key file ({e})")))?;
    Ok(SigningKey {
        org: org.to_owned(),
        kid: kid.unwrap_or_default(),
        alg,
        key,
        public_pem: pair.public_key_pem().into_bytes(),
    })
}

impl SigningKey {
    /// Load the data directory's key; `Ok(None)` if there is none yet.
    pub fn load(data: &Path) -> Result<Option<SigningKey>, KeyError> {
        let dir = keys_dir(data);
        let pem_path = dir.join("signing.pem");
        if !pem_path.exists() {
            return Ok(None);
        }
        let pem = fs::read(&pem_path).map_err(io("read", &pem_path))?;
        let (alg, key) = signing_from_pem(&pem, &pem_path)?;
        let public_pem = fs::read(dir.join("signing.pub.pem"))
            .map_err(io("read", &dir.join("signing.pub.pem")))?;
        Ok(Some(SigningKey {
            org: read_trimmed(&dir.join("org"))?,
            kid: read_trimmed(&dir.join("signing.kid"))?,
            alg,
            key,
            public_pem,
        }))
    }

    /// Load the key, failing with a message that says what to do when there is none.
    pub fn require(data: &Path) -> Result<SigningKey, KeyError> {
        Self::load(data)?.ok_or_else(|| KeyError::NoKey(keys_dir(data)))
    }

    /// Generate a new key for `org`; the previous key (if any) stays trusted.
    pub fn generate(data: &Path, alg: KeyAlg, org: &str) -> Result<SigningKey, KeyError> {
        let dir = keys_dir(data);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        if let Some(old) = Self::load(data)? {
            let trusted = dir.join("trusted").join(&old.org);
            fs::create_dir_all(&trusted).map_err(io("create", &trusted))?;
            let dest = trusted.join(format!("{}.pub.pem", old.kid));
            fs::write(&dest, &old.public_pem).map_err(io("write", &dest))?;
        }
        let algorithm = match alg {
            KeyAlg::Es256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::Rs256 => &rcgen::PKCS_RSA_SHA256,
            KeyAlg::EdDsa => &rcgen::PKCS_ED25519,
        };
        let pair = rcgen::KeyPair::generate_for(algorithm)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let private = pair.serialize_pem();
        let public = pair.public_key_pem();
        let kid = format!("k{:016x}", rand::random::<u64>());
        let write = |name: &str, contents: &[u8], private: bool| -> Result<(), KeyError> {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            if private {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            #[cfg(not(unix))]
            let _ = private;
            let mut f = opts.open(&tmp).map_err(io("write", &tmp))?;
            std::io::Write::write_all(&mut f, contents).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
            fs::rename(&tmp, &path).map_err(io("rename", &path))
        };
        write("signing.pub.pem", public.as_bytes(), false)?;
        write("signing.kid", format!("{kid}\n").as_bytes(), false)?;
        write("org", format!("{org}\n").as_bytes(), false)?;
        // The private key last: its presence means the set is complete.
        write("signing.pem", private.as_bytes(), true)?;
        Self::require(data)
    }

    /// The key that verifies tokens signed with this one.
    pub fn verifying(&self) -> Result<VerifyingKey, KeyError> {
        verifying_key(&self.public_pem, Some(self.kid.clone()), "signing.pub.pem")
    }
}

/// Earlier keys of the data directory, by organisation.
pub fn trusted_keys(data: &Path) -> Result<Vec<(String, VerifyingKey)>, KeyError> {
    let root = keys_dir(data).join("trusted");
    let mut out = Vec::new();
    let Ok(orgs) = fs::read_dir(&root) else {
        return Ok(out);
    };
    for org in orgs.flatten() {
        let org_name = org.file_name().to_string_lossy().into_owned();
        let Ok(files) = fs::read_dir(org.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(kid) = name.strip_suffix(".pub.pem") else {
                continue;
            };
            let pem = fs::read(f.path()).map_err(io("read", &f.path()))?;
            out.push((
                org_name.clone(),
                verifying_key(&pem, Some(kid.to_owned()), &name)?,
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_of_each_kind_load_and_rotation_keeps_the_old_key_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        for alg in [KeyAlg::Es256, KeyAlg::EdDsa, KeyAlg::Rs256] {
            let k = SigningKey::generate(dir.path(), alg, "acme").expect("generate");
            assert_eq!(k.alg, alg.jwt());
            assert_eq!(k.org, "acme");
            let loaded = SigningKey::require(dir.path()).expect("load");
            assert_eq!(loaded.kid, k.kid);
            assert_eq!(loaded.verifying().expect("public").alg, alg.jwt());
        }
        let trusted = trusted_keys(dir.path()).expect("trusted");
        assert_eq!(trusted.len(), 2, "the two earlier keys stay trusted");
        let pem = fs::read_to_string(dir.path().join("keys/signing.pem")).expect("pem");
        assert!(pem.contains("BEGIN PRIVATE KEY"), "PKCS#8");
    }
}
