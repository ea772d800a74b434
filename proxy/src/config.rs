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
//! github_url = "https://github.com"          # where GitHub repos are cloned from
//! github_api_url = "https://api.github.com"  # the GitHub REST API (GitHub Enterprise: https://HOST/api/v3)
//! github_app_id = "123456"                   # GitHub App mode
//! github_app_key = "/etc/codestorage/github-app.pem"
//! github_webhook_secret = "…"                # POST /webhooks/github
//! gitlab_webhook_secret = "…"                # POST /webhooks/gitlab
//! gitea_webhook_secret = "…"                 # POST /webhooks/gitea and /webhooks/forgejo
//! bitbucket_webhook_secret = "…"             # POST /webhooks/bitbucket
//! upstream_ca_file = "/etc/codestorage/forge-ca.pem"   # extra roots for upstream TLS
//! max_fetch_bytes = 8589934592   # largest pack one sync may receive
//! webhook_retry_base = 10     # seconds before the first webhook retry (doubles per failure)
//! webhook_retry_window = 86400  # seconds a webhook delivery is retried before it fails
//! metrics_listen = "127.0.0.1:9090"   # serve /metrics here instead of on `listen`
//! shutdown_timeout = 30       # seconds shutdown waits for in-flight pushes and syncs
//! sync_progress_interval = 10 # seconds between a running sync's progress log lines
//! # limits (see README "Limits"); each also a `codestorage serve` flag
//! max_json_bytes = 1048576       # REST request body
//! max_request_bytes = 33554432   # upload-pack request body (after gzip)
//! max_object_bytes = 1073741824  # one pushed object
//! max_push_refs = 10000          # ref updates in one push
//! max_pktlines = 1000000         # pkt-lines in one upload-pack request
//! max_header_bytes = 65536       # request line and headers
//! header_read_timeout = 30       # seconds; also closes idle keep-alive connections
//! body_idle_timeout = 60         # seconds without request-body bytes
//! max_connections = 1024         # more wait in the listen backlog
//! max_pack_generations = 8       # default 2 x CPUs (at least 4); more wait
//! max_concurrent_syncs = 4
//! rate_limit = 600               # requests per minute per token `sub`; off by default
//! # maintenance (see README "Maintenance")
//! maintain_interval = "1h"       # background compaction period; "0" = off
//! prune_grace = "14d"            # unreachable objects of younger packs are kept
//! maintain_max_rate = 67108864   # bytes per second a compaction writes; 0 = no cap
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
use crate::secrets::Secret;

/// A secret read from the file: kept as a [`Secret`] so no `Debug` output shows it.
fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Secret::new))
}

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
    /// Where GitHub repositories are cloned from.
    pub github_url: Option<String>,
    /// The GitHub REST API base.
    pub github_api_url: Option<String>,
    /// The GitHub App id.
    pub github_app_id: Option<String>,
    /// The GitHub App private key (PEM file).
    pub github_app_key: Option<PathBuf>,
    /// Secret of `/webhooks/github`.
    #[serde(default, deserialize_with = "secret")]
    pub github_webhook_secret: Option<Secret>,
    /// Secret of `/webhooks/gitlab`.
    #[serde(default, deserialize_with = "secret")]
    pub gitlab_webhook_secret: Option<Secret>,
    /// Secret of `/webhooks/gitea` and `/webhooks/forgejo`.
    #[serde(default, deserialize_with = "secret")]
    pub gitea_webhook_secret: Option<Secret>,
    /// Secret of `/webhooks/bitbucket`.
    #[serde(default, deserialize_with = "secret")]
    pub bitbucket_webhook_secret: Option<Secret>,
    /// Extra CA certificates (PEM) for upstream TLS.
    pub upstream_ca_file: Option<PathBuf>,
    /// Largest pack one sync may receive, bytes.
    pub max_fetch_bytes: Option<u64>,
    /// Seconds before the first webhook retry.
    pub webhook_retry_base: Option<u64>,
    /// Seconds a webhook delivery is retried.
    pub webhook_retry_window: Option<u64>,
    /// Where `/metrics` is served instead of the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds shutdown waits for in-flight work.
    pub shutdown_timeout: Option<u64>,
    /// Seconds between sync progress log lines.
    pub sync_progress_interval: Option<u64>,
    /// `--stale-warning-after`.
    pub stale_warning_after: Option<u64>,
    /// Largest REST (JSON) request body, bytes.
    pub max_json_bytes: Option<usize>,
    /// Largest upload-pack request body (after gzip), bytes.
    pub max_request_bytes: Option<usize>,
    /// Largest pushed object, bytes.
    pub max_object_bytes: Option<usize>,
    /// Most ref updates in one push.
    pub max_push_refs: Option<usize>,
    /// Most pkt-lines in one upload-pack request.
    pub max_pktlines: Option<usize>,
    /// Largest request head, bytes.
    pub max_header_bytes: Option<usize>,
    /// Seconds to send a request head (and keep-alive idle time).
    pub header_read_timeout: Option<u64>,
    /// Seconds without request-body bytes before the request fails.
    pub body_idle_timeout: Option<u64>,
    /// Connections served at once.
    pub max_connections: Option<usize>,
    /// Pack generations at once.
    pub max_pack_generations: Option<usize>,
    /// Syncs at once.
    pub max_concurrent_syncs: Option<usize>,
    /// Requests per minute per token `sub`.
    pub rate_limit: Option<u32>,
    /// Background compaction period (`0` = off, `30m`, `1h`, `1d`).
    pub maintain_interval: Option<String>,
    /// Unreachable objects of packs younger than this are not pruned (`0s`, `12h`, `14d`).
    pub prune_grace: Option<String>,
    /// Bytes per second a compaction writes at most (`0` = no cap).
    pub maintain_max_rate: Option<u64>,
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
    /// GitHub settings are inconsistent.
    #[error("{0}")]
    Github(String),
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

/// Decide the GitHub settings from the merged values: URLs must be http(s) (no trailing
/// slash kept), and an App needs both its id and its key.
pub fn github_settings(
    url: Option<String>,
    api_url: Option<String>,
    app_id: Option<String>,
    app_key: Option<PathBuf>,
) -> Result<crate::upstream::github::GithubSettings, ConfigError> {
    use crate::upstream::github::{AppSettings, GithubSettings};
    let mut settings = GithubSettings::default();
    let base = |flag: &str, v: String| -> Result<String, ConfigError> {
        let v = v.trim().trim_end_matches('/').to_owned();
        if (v.starts_with("https://") || v.starts_with("http://"))
            && !v.contains(char::is_whitespace)
        {
            Ok(v)
        } else {
            Err(ConfigError::Github(format!(
                "{flag} {v:?} must be an http(s) URL"
            )))
        }
    };
    if let Some(url) = url {
        settings.url = base("--github-url", url)?;
    }
    if let Some(api) = api_url {
        settings.api_url = base("--github-api-url", api)?;
    }
    settings.app = match (app_id, app_key) {
        (None, None) => None,
        (Some(app_id), Some(key_file)) => Some(AppSettings { app_id, key_file }),
        _ => {
            return Err(ConfigError::Github(
                "--github-app-id and --github-app-key go together".into(),
            ));
        }
    };
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forge_keys_parse_and_secrets_stay_masked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "github_url = \"https://ghe.example.com\"\ngithub_app_id = \"9\"\n\
             github_app_key = \"/k.pem\"\ngithub_webhook_secret = \"s3cr3t-gh\"\n\
             gitea_webhook_secret = \"s3cr3t-gt\"\n",
        )
        .expect("write");
        let cfg = FileConfig::load(&path).expect("parses");
        assert_eq!(cfg.github_app_id.as_deref(), Some("9"));
        assert_eq!(
            cfg.github_webhook_secret.as_ref().map(Secret::expose),
            Some("s3cr3t-gh")
        );
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cr3t"), "Debug masks secrets: {shown}");
    }

    #[test]
    fn github_settings_are_validated() {
        let s = github_settings(None, None, None, None).expect("defaults");
        assert_eq!(s.url, "https://github.com");
        assert_eq!(s.api_url, "https://api.github.com");
        assert!(s.app.is_none());
        let s = github_settings(
            Some("https://ghe.example.com/".into()),
            Some("https://ghe.example.com/api/v3".into()),
            Some("7".into()),
            Some("k.pem".into()),
        )
        .expect("enterprise");
        assert_eq!(s.url, "https://ghe.example.com");
        assert_eq!(s.app.map(|a| a.app_id).as_deref(), Some("7"));
        assert!(github_settings(None, None, Some("7".into()), None).is_err());
        assert!(github_settings(None, None, None, Some("k.pem".into())).is_err());
        assert!(github_settings(Some("github.com".into()), None, None, None).is_err());
    }

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

    #[test]
    fn operability_keys_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "metrics_listen = \"127.0.0.1:9090\"\nshutdown_timeout = 5\nsync_progress_interval = 2\n",
        )
        .expect("write");
        let cfg = FileConfig::load(&path).expect("parses");
        assert_eq!(
            cfg.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
        );
        assert_eq!(cfg.shutdown_timeout, Some(5));
        assert_eq!(cfg.sync_progress_interval, Some(2));
        std::fs::write(&path, "metrics_listen = \"not an address\"\n").expect("write");
        assert!(matches!(
            FileConfig::load(&path),
            Err(ConfigError::Parse { .. })
        ));
    }
}
