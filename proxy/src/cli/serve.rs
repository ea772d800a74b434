//! `codestorage serve`: merge the config file and flags, open the data directory, bind the
//! listeners, serve until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::app::{App, Config};
use crate::config::{FileConfig, github_settings, tls_source};
use crate::secrets::Secret;
use crate::sync::forge_hooks::ForgeSecrets;

/// Default TLS address when TLS is on.
const DEFAULT_TLS_LISTEN: &str = "127.0.0.1:8443";

/// Flags of `codestorage serve`; each overrides the config file.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (issuers, listeners, limits); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Plain-HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Permit plain-http and loopback upstreams (development only).
    #[arg(long)]
    pub allow_http_upstream: bool,
    /// Seconds between background refreshes of each mirror, jittered [default: 60].
    #[arg(long)]
    pub sync_interval: Option<u64>,
    /// Largest pack a push may send, in bytes [default: 4 GiB].
    #[arg(long)]
    pub max_pack_bytes: Option<u64>,
    /// TLS listen address [default: 127.0.0.1:8443 when TLS is on].
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Serve TLS with a certificate for localhost generated into the data directory.
    #[arg(long)]
    pub tls_self_signed: bool,
    /// Seconds a ref's former value stays fetchable after a push or sync moved it, for clients
    /// that fetch what they saw advertised a moment before [default: 60].
    #[arg(long)]
    pub moved_ref_grace: Option<u64>,
    /// Delete ephemeral refs not updated for this long (`90s`, `30m`, `12h`, `7d`) [default: never].
    #[arg(long)]
    pub ephemeral_ttl: Option<String>,
    /// Extra CA certificates (PEM) to trust for upstream TLS, besides the system roots (a
    /// self-hosted forge with an internal CA).
    #[arg(long)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Largest pack one sync may receive from an upstream, in bytes [default: 8 GiB].
    #[arg(long)]
    pub max_fetch_bytes: Option<u64>,
    /// Seconds before the first retry of a failed webhook delivery; each further retry waits
    /// twice as long, up to an hour [default: 10].
    #[arg(long)]
    pub webhook_retry_base: Option<u64>,
    /// Seconds a webhook delivery is retried before it is marked failed [default: 86400].
    #[arg(long)]
    pub webhook_retry_window: Option<u64>,
    /// Warn fetching clients (`remote: warning: …`) when a mirror's last successful sync is
    /// more than this many seconds old; 0 never warns [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub stale_warning_after: Option<u64>,
    /// Where GitHub repositories are cloned from (a GitHub Enterprise host works)
    /// [default: https://github.com].
    #[arg(long)]
    pub github_url: Option<String>,
    /// The GitHub REST API base [default: https://api.github.com].
    #[arg(long)]
    pub github_api_url: Option<String>,
    /// GitHub App id, for App-mode GitHub mirrors (with --github-app-key).
    #[arg(long)]
    pub github_app_id: Option<String>,
    /// GitHub App private key (PEM, PKCS#1 or PKCS#8).
    #[arg(long, value_name = "FILE")]
    pub github_app_key: Option<PathBuf>,
    /// Largest REST (JSON) request body, in bytes; more is 413 [default: 1 MiB].
    #[arg(long)]
    pub max_json_bytes: Option<usize>,
    /// Largest upload-pack request body after gzip decoding, in bytes; more is 413
    /// [default: 32 MiB].
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    /// Largest single object a push may contain, in bytes [default: 1 GiB].
    #[arg(long)]
    pub max_object_bytes: Option<usize>,
    /// Most ref updates in one push [default: 10000].
    #[arg(long)]
    pub max_push_refs: Option<usize>,
    /// Most pkt-lines in one upload-pack request [default: 1000000].
    #[arg(long)]
    pub max_pktlines: Option<usize>,
    /// Largest request line plus headers, in bytes; more is 431 [default: 64 KiB, at least 8 KiB].
    #[arg(long)]
    pub max_header_bytes: Option<usize>,
    /// Seconds a client may take to send a request's headers; also how long an idle keep-alive
    /// connection stays open [default: 30].
    #[arg(long)]
    pub header_read_timeout: Option<u64>,
    /// Seconds a request body may pause before the request fails with 408 [default: 60].
    #[arg(long)]
    pub body_idle_timeout: Option<u64>,
    /// Connections served at once; more wait in the listen backlog [default: 1024].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Pack generations (clone/fetch responses) at once; more wait [default: 2 x CPUs, at least 4].
    #[arg(long)]
    pub max_pack_generations: Option<usize>,
    /// Syncs from upstreams at once; more wait [default: 4].
    #[arg(long)]
    pub max_concurrent_syncs: Option<usize>,
    /// Requests per minute per token subject (`sub`); more get 429 with Retry-After
    /// [default: off].
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Secret of incoming GitHub webhooks (`POST /webhooks/github`).
    #[arg(long, env = "CODESTORAGE_GITHUB_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub github_webhook_secret: Option<Secret>,
    /// Secret of incoming GitLab webhooks (`POST /webhooks/gitlab`).
    #[arg(long, env = "CODESTORAGE_GITLAB_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub gitlab_webhook_secret: Option<Secret>,
    /// Secret of incoming Gitea and Forgejo webhooks (`POST /webhooks/gitea`, `/webhooks/forgejo`).
    #[arg(long, env = "CODESTORAGE_GITEA_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub gitea_webhook_secret: Option<Secret>,
    /// Secret of incoming Bitbucket webhooks (`POST /webhooks/bitbucket`).
    #[arg(long, env = "CODESTORAGE_BITBUCKET_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub bitbucket_webhook_secret: Option<Secret>,
    /// Serve `GET /metrics` (and `/healthz`, `/readyz`) on this address instead of the main
    /// listener, which then answers 404 for `/metrics`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds shutdown (SIGTERM, ctrl-c) waits for in-flight requests, pushes and syncs before
    /// interrupting them [default: 30].
    #[arg(long, value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,
    /// Seconds between the progress lines a running sync logs [default: 10].
    #[arg(long, value_name = "SECS")]
    pub sync_progress_interval: Option<u64>,
    /// How often the background task compacts repositories' packs (`30m`, `1h`, `0` = off)
    /// [default: 1h].
    #[arg(long, value_name = "DURATION")]
    pub maintain_interval: Option<String>,
    /// Unreachable objects of packs younger than this are not pruned (`0s`, `12h`, `14d`)
    /// [default: 14d].
    #[arg(long, value_name = "DURATION")]
    pub prune_grace: Option<String>,
    /// Bytes per second a compaction writes at most (0 = no cap) [default: 64 MiB].
    #[arg(long, value_name = "BYTES")]
    pub maintain_max_rate: Option<u64>,
}

/// A secret from the command line or the environment, masked from then on.
fn parse_secret(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s))
}

/// Merge the limit flags and file keys into `config` (flags win); zero is refused.
fn apply_limits(config: &mut Config, args: &ServeArgs, file: &FileConfig) -> Result<()> {
    fn pick<T: Copy + PartialEq + Default>(
        flag: &str,
        arg: Option<T>,
        file: Option<T>,
    ) -> Result<Option<T>> {
        let v = arg.or(file);
        anyhow::ensure!(v != Some(T::default()), "--{flag} must be positive");
        Ok(v)
    }
    let l = &mut config.limits;
    if let Some(v) = pick("max-json-bytes", args.max_json_bytes, file.max_json_bytes)? {
        l.max_json_bytes = v;
    }
    if let Some(v) = pick(
        "max-request-bytes",
        args.max_request_bytes,
        file.max_request_bytes,
    )? {
        config.max_request_bytes = v;
    }
    if let Some(v) = pick(
        "max-object-bytes",
        args.max_object_bytes,
        file.max_object_bytes,
    )? {
        config.push_limits.max_object_bytes = v;
    }
    if let Some(v) = pick("max-push-refs", args.max_push_refs, file.max_push_refs)? {
        config.push_limits.max_commands = v;
    }
    if let Some(v) = pick("max-pktlines", args.max_pktlines, file.max_pktlines)? {
        l.max_pktlines = v;
    }
    if let Some(v) = pick(
        "max-header-bytes",
        args.max_header_bytes,
        file.max_header_bytes,
    )? {
        l.max_header_bytes = v;
    }
    if let Some(v) = pick(
        "header-read-timeout",
        args.header_read_timeout,
        file.header_read_timeout,
    )? {
        l.header_read_timeout = Duration::from_secs(v);
    }
    if let Some(v) = pick(
        "body-idle-timeout",
        args.body_idle_timeout,
        file.body_idle_timeout,
    )? {
        l.body_idle_timeout = Duration::from_secs(v);
    }
    if let Some(v) = pick(
        "max-connections",
        args.max_connections,
        file.max_connections,
    )? {
        l.max_connections = v;
    }
    if let Some(v) = pick(
        "max-pack-generations",
        args.max_pack_generations,
        file.max_pack_generations,
    )? {
        l.max_pack_generations = v;
    }
    if let Some(v) = pick(
        "max-concurrent-syncs",
        args.max_concurrent_syncs,
        file.max_concurrent_syncs,
    )? {
        config.max_concurrent_syncs = v;
    }
    if let Some(v) = pick("rate-limit", args.rate_limit, file.rate_limit)? {
        l.rate_per_minute = Some(v);
    }
    Ok(())
}

/// The maintenance settings: flags over the file over the defaults.
fn apply_maintenance(config: &mut Config, args: &ServeArgs, file: &FileConfig) -> Result<()> {
    if let Some(v) = args
        .maintain_interval
        .as_ref()
        .or(file.maintain_interval.as_ref())
    {
        config.maintain.interval = crate::maintain::parse_interval(v)
            .with_context(|| format!("--maintain-interval {v:?}: use e.g. 0, 30m, 1h or 1d"))?;
    }
    if let Some(v) = args.prune_grace.as_ref().or(file.prune_grace.as_ref()) {
        config.maintain.prune_grace = crate::expiry::parse_duration(v)
            .with_context(|| format!("--prune-grace {v:?}: use e.g. 0s, 12h or 14d"))?;
    }
    if let Some(rate) = args.maintain_max_rate.or(file.maintain_max_rate) {
        config.maintain.max_rate = (rate > 0).then_some(rate);
    }
    Ok(())
}

/// Run the server on `data_dir` until `shutdown`.
pub async fn run(
    data_dir: &Path,
    args: ServeArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let issuers = file.issuer_keys()?;
    if let Some((point, n)) = codestorage_store::fault::armed_point() {
        tracing::warn!(
            point,
            hit = n,
            "fault injection armed ({}): the process aborts at this point; for crash tests only",
            codestorage_store::fault::ENV
        );
    }
    let mut config = Config::new(data_dir.to_owned());
    apply_limits(&mut config, &args, &file)?;
    apply_maintenance(&mut config, &args, &file)?;
    config.listen = args.listen.or(file.listen).unwrap_or(config.listen);
    config.allow_http_upstream =
        args.allow_http_upstream || file.allow_http_upstream.unwrap_or(false);
    config.sync_interval = Duration::from_secs(
        args.sync_interval
            .or(file.sync_interval)
            .unwrap_or(60)
            .max(1),
    );
    if let Some(secs) = args.moved_ref_grace.or(file.moved_ref_grace) {
        config.moved_ref_grace = Duration::from_secs(secs);
    }
    if let Some(ttl) = args.ephemeral_ttl.or(file.ephemeral_ttl) {
        config.ephemeral_ttl =
            Some(crate::expiry::parse_duration(&ttl).with_context(|| {
                format!("--ephemeral-ttl {ttl:?}: use e.g. 90s, 30m, 12h or 7d")
            })?);
    }
    if let Some(secs) = args.webhook_retry_base.or(file.webhook_retry_base) {
        config.webhook_retry_base = Duration::from_secs(secs.max(1));
    }
    if let Some(secs) = args.webhook_retry_window.or(file.webhook_retry_window) {
        config.webhook_retry_window = Duration::from_secs(secs);
    }
    if let Some(secs) = args.stale_warning_after.or(file.stale_warning_after) {
        config.stale_warning_after = (secs > 0).then(|| Duration::from_secs(secs));
    }
    config.github = github_settings(
        args.github_url.or(file.github_url),
        args.github_api_url.or(file.github_api_url),
        args.github_app_id.or(file.github_app_id),
        args.github_app_key.or(file.github_app_key),
    )?;
    config.forge_secrets = ForgeSecrets::new(
        args.github_webhook_secret.or(file.github_webhook_secret),
        args.gitlab_webhook_secret.or(file.gitlab_webhook_secret),
        args.gitea_webhook_secret.or(file.gitea_webhook_secret),
        args.bitbucket_webhook_secret
            .or(file.bitbucket_webhook_secret),
    );
    config.metrics_listen = args.metrics_listen.or(file.metrics_listen);
    if let Some(secs) = args.shutdown_timeout.or(file.shutdown_timeout) {
        config.shutdown_timeout = Duration::from_secs(secs);
    }
    if let Some(secs) = args.sync_progress_interval.or(file.sync_progress_interval) {
        config.sync_progress_interval = Duration::from_secs(secs.max(1));
    }
    if let Some(max) = args.max_pack_bytes.or(file.max_pack_bytes) {
        config.push_limits.max_pack_bytes = max;
    }
    config.upstream_ca_file = args.upstream_ca_file.or(file.upstream_ca_file);
    if let Some(max) = args.max_fetch_bytes.or(file.max_fetch_bytes) {
        anyhow::ensure!(max > 0, "--max-fetch-bytes must be positive");
        config.max_fetch_bytes = max;
    }
    let tls = tls_source(
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
        args.tls_self_signed || file.tls_self_signed.unwrap_or(false),
    )?;
    let tls_listen = match (&tls, args.tls_listen.or(file.tls_listen)) {
        (Some(_), Some(addr)) => Some(addr),
        (Some(_), None) => Some(DEFAULT_TLS_LISTEN.parse().context("default TLS address")?),
        (None, Some(_)) => {
            anyhow::bail!("--tls-listen needs --tls-cert/--tls-key or --tls-self-signed")
        }
        (None, None) => None,
    };
    let listen = config.listen;
    let metrics_listen = config.metrics_listen;
    let app = tokio::task::spawn_blocking(move || App::open(config, issuers))
        .await?
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    let tls = match (tls, tls_listen) {
        (Some(source), Some(addr)) => {
            let (server_config, ca) = crate::http::tls::server_config(&source, data_dir)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            Some((listener, server_config, ca))
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    // Bound before `listening on` is printed: a bad address fails the start.
    let metrics = match metrics_listen {
        Some(maddr) => {
            let l = tokio::net::TcpListener::bind(maddr)
                .await
                .with_context(|| format!("binding --metrics-listen {maddr}"))?;
            let local = l.local_addr()?;
            tracing::info!(addr = %local, "metrics served");
            println!("metrics on http://{local}/metrics");
            Some(l)
        }
        None => None,
    };
    tracing::info!(%addr, data_dir = %data_dir.display(), "codestorage serving");
    println!("listening on http://{addr}");
    let tls = match tls {
        Some((l, server_config, ca)) => {
            let tls_addr = l.local_addr()?;
            println!("listening on https://{tls_addr}");
            if let Some(ca) = ca {
                println!("tls ca certificate: {}", ca.display());
            }
            Some((l, server_config))
        }
        None => None,
    };
    crate::server::serve(listener, tls, metrics, app, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let mut argv = vec!["serve"];
        argv.extend_from_slice(extra);
        <Cli as clap::Parser>::try_parse_from(argv)
            .expect("parses")
            .serve
    }

    #[test]
    fn limit_flags_override_the_file_and_zero_is_refused() {
        let file: FileConfig = toml::from_str(
            "max_connections = 7\nmax_pack_generations = 3\nrate_limit = 60\n\
             body_idle_timeout = 5\nmax_push_refs = 9\n",
        )
        .expect("toml");
        let mut config = Config::new("/tmp/x".into());
        apply_limits(&mut config, &args(&["--max-connections", "2"]), &file).expect("ok");
        assert_eq!(config.limits.max_connections, 2, "the flag wins");
        assert_eq!(config.limits.max_pack_generations, 3);
        assert_eq!(config.limits.rate_per_minute, Some(60));
        assert_eq!(config.limits.body_idle_timeout, Duration::from_secs(5));
        assert_eq!(config.push_limits.max_commands, 9);
        let defaults = Config::new("/tmp/x".into());
        assert_eq!(
            defaults.limits.rate_per_minute, None,
            "rate limit off by default"
        );
        let mut config = Config::new("/tmp/x".into());
        let err =
            apply_limits(&mut config, &args(&["--max-connections", "0"]), &file).expect_err("zero");
        assert!(err.to_string().contains("--max-connections"), "{err}");
    }

    #[test]
    fn maintenance_settings_come_from_the_file_unless_a_flag_says_otherwise() {
        let file: FileConfig = toml::from_str(
            "maintain_interval = \"30m\"\nprune_grace = \"2d\"\nmaintain_max_rate = 0\n",
        )
        .expect("toml");
        let mut config = Config::new("/tmp/x".into());
        apply_maintenance(&mut config, &args(&["--prune-grace", "0s"]), &file).expect("ok");
        assert_eq!(config.maintain.interval, Some(Duration::from_secs(1800)));
        assert_eq!(config.maintain.prune_grace, Duration::ZERO, "the flag wins");
        assert_eq!(config.maintain.max_rate, None, "0 = no cap");
        let bad: FileConfig = toml::from_str("prune_grace = \"soon\"\n").expect("toml");
        let err = apply_maintenance(&mut Config::new("/tmp/x".into()), &args(&[]), &bad)
            .expect_err("bad duration");
        assert!(err.to_string().contains("--prune-grace"), "{err}");
    }
}
