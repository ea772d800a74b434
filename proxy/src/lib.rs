//! codestorage: a self-hosted git mirror that serves clones and fetches from its own store.
//!
//! # Layout
//!
//! - [`app`] — configuration and shared state.
//! - [`auth`] — tokens, keys, scopes and ref policies.
//! - [`backup`] — backup stream, backup directories and restore.
//! - [`server`] — the accept loop and graceful shutdown.
//! - [`http`] — routing, smart-HTTP endpoints, REST API, error mapping.
//! - [`protocol`] — pkt-line framing and the upload-pack engine (v0/v1/v2), over bytes.
//! - [`sync`] — fetching from upstreams, scheduling, sync status, public-mode ref updates,
//!   incoming forge webhooks.
//! - [`limits`] — connection, pack-generation, body, header and rate bounds.
//! - [`cli`] — the client side of the `repo` subcommands.
//! - [`config`] — the config file and its merge with the command line.
//! - [`expiry`] — expiry of ephemeral refs.
//! - [`maintain`] — compaction and pruning of stored packs (on demand and in the background).
//! - [`time`] — timestamps.
//! - [`upstream`] — the HTTP client for upstreams' smart-HTTP endpoints (forwarded pushes),
//!   upstream credentials, GitHub modes and App installation tokens.
//! - [`webhooks`] — outgoing webhooks: subscriptions, durable queue, signed delivery.
//! - [`metrics`] — the metrics registry (`GET /metrics`) and the readiness flag.
//! - [`logging`] — the log output: human text or one JSON object per line.

pub mod app;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod config;
pub mod expiry;
pub mod http;
pub mod limits;
pub mod logging;
pub mod maintain;
pub mod metrics;
pub mod protocol;
pub mod secrets;
pub mod server;
pub mod sync;
pub mod time;
pub mod upstream;
pub mod webhooks;
