//! Server settings from the config file (`--config FILE`, TOML) and the command line, merged
//! and validated once: flags override the file, the file overrides the defaults.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! tls_listen = "127.0.0.1:8443"
//! tls_cert = "/etc/codestorage/cert.pem"
//! tls_key = "/etc/codestorage/key.pem"
//! tls_self_signed = false
//! allow_http_upstream = false
//! sync_interval = 60          # seconds
//! max_pack_bytes = 4294967296
//! moved_ref_grace = 60        # seconds
//! ephemeral_ttl = "7d"        # delete ephemeral refs not updated for that long
//! upstream_ca_file = "/etc/codestorage/forge-ca.pem"   # extra roots for upstream TLS
//! max_fetch_bytes = 8589934592   # largest pack one sync may receive
//! webhook_retry_base = 10     # seconds before the first webhook retry (doubles per failure)
//! webhook_retry_window = 86400  # seconds a webhook delivery is retried before it fails
//!
//! [[issuers]]
//! org = "acme"                # the JWT `iss`
//! key_file = "/etc/codestorage/acme.pub.pem"   # or `key = "-----BEGIN PUBLIC KEY-----…"`
//! kid = "key-2024-01"         # optional
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::keys::{self, VerifyingKey};

/// One trusted token issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Organisation name (`iss`).
    pub org: String,
    /// Public key PEM file.
    pub key_file: Option<PathBuf>,
    /// Public key PEM inline.
    pub key: Option<String>,
    /// Key id.
    pub kid: Option<String>,
}

/// The config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Plain-HTTP listen address.
    pub listen: Option<SocketAddr>,
    /// TLS listen address.
    pub tls_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Generate a self-signed certificate for localhost in the data directory.
    pub tls_self_signed: Option<bool>,
    /// Permit plain-http and loopback upstreams.
    pub allow_http_upstream: Option<bool>,
    /// Seconds between background refreshes.
    pub sync_interval: Option<u64>,
    /// Largest pushed pack, bytes.
    pub max_pack_bytes: Option<u64>,
    /// Seconds a moved ref's former value stays fetchable.
    pub moved_ref_grace: Option<u64>,
    /// Ephemeral ref expiry (`7d`, …).
    pub ephemeral_ttl: Option<String>,
    /// Extra CA certificates (PEM) for upstream TLS.
    pub upstream_ca_file: Option<PathBuf>,
    /// Largest pack one sync may receive, bytes.
    pub max_fetch_bytes: Option<u64>,
    /// Seconds before the first webhook retry.
    pub webhook_retry_base: Option<u64>,
    /// Seconds a webhook delivery is retried.
    pub webhook_retry_window: Option<u64>,
    /// Trusted issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An issuer entry is unusable.
    #[error("issuer '{org}': {message}")]
    Issuer {
        /// The organisation.
        org: String,
        /// What is wrong.
        message: String,
    },
    /// TLS settings are inconsistent.
    #[error("{0}")]
    Tls(String),
}

impl FileConfig {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The issuers' verifying keys.
    pub fn issuer_keys(&self) -> Result<Vec<(String, VerifyingKey)>, ConfigError> {
        let mut out = Vec::new();
        for i in &self.issuers {
            let err = |message: String| ConfigError::Issuer {
                org: i.org.clone(),
                message,
            };
            let pem = match (&i.key, &i.key_file) {
                (Some(k), None) => k.clone().into_bytes(),
                (None, Some(f)) => {
                    std::fs::read(f).map_err(|e| err(format!("reading {}: {e}", f.display())))?
                }
                _ => return Err(err("give exactly one of key or key_file".into())),
            };
            let key =
                keys::verifying_key(&pem, i.kid.clone(), &i.org).map_err(|e| err(e.to_string()))?;
            out.push((i.org.clone(), key));
        }
        Ok(out)
    }
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// Files given by the operator.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A self-signed certificate for localhost kept in the data directory.
    SelfSigned,
}

/// Decide the TLS setup from the merged settings.
pub fn tls_source(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    self_signed: bool,
) -> Result<Option<TlsSource>, ConfigError> {
    match (cert, key, self_signed) {
        (None, None, false) => Ok(None),
        (None, None, true) => Ok(Some(TlsSource::SelfSigned)),
        (Some(cert), Some(key), false) => Ok(Some(TlsSource::Files { cert, key })),
        (Some(_), Some(_), true) => Err(ConfigError::Tls(
            "--tls-self-signed and --tls-cert/--tls-key exclude each other".into(),
        )),
        _ => Err(ConfigError::Tls(
            "--tls-cert and --tls-key go together".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = crate::auth::keys::SigningKey::generate(
            dir.path(),
            crate::auth::keys::KeyAlg::Es256,
            "acme",
        )
        .expect("key");
        let pub_path = dir.path().join("acme.pub.pem");
        std::fs::write(&pub_path, &key.public_pem).expect("write");
        let cfg_path = dir.path().join("c.toml");
        std::fs::write(
            &cfg_path,
            format!(
                "listen = \"127.0.0.1:9000\"\nsync_interval = 5\n[[issuers]]\norg = \"acme\"\nkey_file = \"{}\"\nkid = \"k1\"\n",
                pub_path.display()
            ),
        )
        .expect("write");
        let cfg = FileConfig::load(&cfg_path).expect("parses");
        assert_eq!(cfg.sync_interval, Some(5));
        let keys = cfg.issuer_keys().expect("keys");
        assert_eq!(keys[0].0, "acme");
        assert_eq!(keys[0].1.kid.as_deref(), Some("k1"));
        std::fs::write(&cfg_path, "lissen = 1\n").expect("write");
        assert!(matches!(
            FileConfig::load(&cfg_path),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn tls_settings_must_be_consistent() {
        assert_eq!(tls_source(None, None, false).ok(), Some(None));
        assert_eq!(
            tls_source(None, None, true).ok(),
            Some(Some(TlsSource::SelfSigned))
        );
        assert!(tls_source(Some("c".into()), None, false).is_err());
        assert!(tls_source(Some("c".into()), Some("k".into()), true).is_err());
    }
}
