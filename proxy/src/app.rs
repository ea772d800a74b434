//! Server configuration and the state every request handler shares.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use codestorage_store::Store;

use crate::auth::Authenticator;
use crate::auth::keys::VerifyingKey;
use crate::secrets::SecretBox;
use crate::sync::SyncManager;
use crate::upstream::CredentialSource;
use crate::webhooks::Webhooks;

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Plain-HTTP listen address.
    pub listen: SocketAddr,
    /// Permit plain-http and loopback upstreams (development and tests).
    pub allow_http_upstream: bool,
    /// Background refresh interval of mirrors.
    pub sync_interval: Duration,
    /// Largest upload-pack request body accepted (after decompression).
    pub max_request_bytes: usize,
    /// Bounds on pushes.
    pub push_limits: crate::protocol::receive_pack::local::Limits,
    /// How long a ref's former value stays fetchable after the ref moved: a stateless client
    /// fetches what it saw advertised a moment before.
    pub moved_ref_grace: Duration,
    /// Delete ephemeral refs not updated for this long (off when `None`).
    pub ephemeral_ttl: Option<Duration>,
    /// GitHub: where repositories are cloned from, the API, the App.
    pub github: crate::upstream::github::GithubSettings,
    /// Secrets of incoming forge webhooks (`/webhooks/{forge}`).
    pub forge_secrets: crate::sync::forge_hooks::ForgeSecrets,
    /// Extra CA certificates (PEM) trusted for upstream TLS, besides the system roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Largest pack one sync may receive, in bytes.
    pub max_fetch_bytes: u64,
    /// First retry delay of webhook deliveries (doubling per failure).
    pub webhook_retry_base: Duration,
    /// How long a webhook delivery is retried before it is marked failed.
    pub webhook_retry_window: Duration,
    /// Serve `/metrics` (and the health routes) on this address instead of the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// How long shutdown waits for in-flight requests (pushes) and syncs before interrupting them.
    pub shutdown_timeout: Duration,
    /// How often a running sync logs its progress.
    pub sync_progress_interval: Duration,
    /// Fetches from a mirror last synced longer ago than this get a `remote: warning:` line
    /// (`None`: never).
    pub stale_warning_after: Option<Duration>,
    /// Connection, pack-generation, body, header, timeout and rate bounds.
    pub limits: crate::limits::ServerLimits,
    /// Syncs running at once (more wait).
    pub max_concurrent_syncs: usize,
    /// Compaction and pruning of stored packs.
    pub maintain: crate::maintain::Settings,
}

/// Default of `--stale-warning-after`, in seconds.
pub const DEFAULT_STALE_WARNING_SECS: u64 = 3600;

impl Config {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allow_http_upstream: false,
            sync_interval: Duration::from_secs(60),
            max_request_bytes: 32 << 20,
            push_limits: Default::default(),
            moved_ref_grace: Duration::from_secs(60),
            ephemeral_ttl: None,
            github: Default::default(),
            forge_secrets: Default::default(),
            upstream_ca_file: None,
            max_fetch_bytes: crate::sync::fetch::DEFAULT_MAX_FETCH_BYTES,
            webhook_retry_base: Duration::from_secs(10),
            webhook_retry_window: Duration::from_secs(24 * 3600),
            metrics_listen: None,
            shutdown_timeout: Duration::from_secs(30),
            sync_progress_interval: Duration::from_secs(10),
            stale_warning_after: Some(Duration::from_secs(DEFAULT_STALE_WARNING_SECS)),
            limits: Default::default(),
            max_concurrent_syncs: 4,
            maintain: Default::default(),
        }
    }
}

/// Shared server state.
pub struct App {
    /// Settings.
    pub config: Config,
    /// The object store.
    pub store: Arc<Store>,
    /// Mirror syncing.
    pub sync: Arc<SyncManager>,
    /// Set at shutdown: long-running work stops.
    pub interrupt: Arc<AtomicBool>,
    /// HTTP client for forwarded pushes.
    pub upstream: crate::upstream::UpstreamClient,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// Seals and opens secrets at rest.
    pub secrets: Arc<SecretBox>,
    /// Upstream URLs with the credentials to present there.
    pub credentials: Arc<CredentialSource>,
    /// Outgoing webhooks.
    pub webhooks: Arc<Webhooks>,
    /// Incoming forge webhooks: delivery dedup and debounced sync requests.
    pub forge_hooks: Arc<crate::sync::forge_hooks::ForgeHooks>,
    /// Live connection, pack-generation and rate limits.
    pub throttle: Arc<crate::limits::Throttle>,
    /// Identical concurrent fetches share one pack generation, spooled under `<data>/spool`.
    pub herd: Arc<crate::protocol::upload_pack::herd::Herd>,
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] codestorage_store::StoreError),
    /// The keys cannot be loaded or created.
    #[error(transparent)]
    Keys(#[from] crate::auth::keys::KeyError),
    /// The upstream client cannot be built.
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// The secret key cannot be loaded or created.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretError),
    /// The GitHub App cannot be set up.
    #[error(transparent)]
    Github(#[from] crate::upstream::github::GithubError),
    /// `--upstream-ca-file` is unusable.
    #[error("--upstream-ca-file {path}: {message}")]
    UpstreamCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The webhook state cannot be loaded.
    #[error(transparent)]
    Webhooks(#[from] crate::webhooks::WebhookError),
}

/// The certificates of `--upstream-ca-file`: at least one PEM certificate.
fn upstream_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, AppError> {
    let err = |message: String| AppError::UpstreamCa {
        path: path.to_owned(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

impl App {
    /// Open the store in `config.data_dir`, load (or on first start create) the signing key,
    /// trust `issuers` besides, and set up syncing.
    pub fn open(
        config: Config,
        issuers: Vec<(String, VerifyingKey)>,
    ) -> Result<Arc<App>, AppError> {
        let store = Arc::new(Store::open(&config.data_dir)?);
        let auth = Arc::new(Authenticator::load(&config.data_dir, issuers)?);
        let secrets = Arc::new(SecretBox::open_dir(&config.data_dir)?);
        let roots = match &config.upstream_ca_file {
            Some(path) => upstream_roots(path)?,
            None => Vec::new(),
        };
        let github_app = match &config.github.app {
            Some(app) => Some(Arc::new(crate::upstream::github::GithubApp::load(
                &config.github.api_url,
                app,
                &roots,
            )?)),
            None => None,
        };
        let credentials =
            Arc::new(CredentialSource::new(secrets.clone()).with_github_app(github_app));
        let interrupt = Arc::new(AtomicBool::new(false));
        let upstream =
            crate::upstream::UpstreamClient::with_roots(Duration::from_secs(300), &roots)?;
        let mut fetch = crate::sync::fetch::FetchOptions::new(config.allow_http_upstream);
        fetch.ca_certs = roots;
        fetch.max_fetch_bytes = config.max_fetch_bytes;
        fetch.progress_interval = config.sync_progress_interval;
        fetch.max_concurrent_syncs = config.max_concurrent_syncs;
        let local = auth.clone();
        let webhooks = Webhooks::open(
            &config.data_dir,
            secrets.clone(),
            crate::webhooks::Settings {
                allow_dev: config.allow_http_upstream,
                retry_base: config.webhook_retry_base,
                retry_window: config.webhook_retry_window,
                ..Default::default()
            },
            Box::new(move || local.local_org()),
        )?;
        let sync = SyncManager::new(
            store.clone(),
            credentials.clone(),
            fetch,
            upstream.clone(),
            config.sync_interval,
            interrupt.clone(),
            webhooks.clone(),
        );
        let config_limits = config.limits;
        crate::limits::set_body_idle_timeout(config_limits.body_idle_timeout);
        let herd = Arc::new(crate::protocol::upload_pack::herd::Herd::new(
            config.data_dir.join("spool"),
        ));
        Ok(Arc::new(App {
            config,
            store,
            sync,
            interrupt,
            upstream,
            auth,
            secrets,
            credentials,
            webhooks,
            forge_hooks: Arc::new(crate::sync::forge_hooks::ForgeHooks::new()),
            throttle: Arc::new(crate::limits::Throttle::new(config_limits)),
            herd,
        }))
    }
}
