//! End-to-end tests: real `git` clients against the real `codestorage` binary, mirroring a real
//! git server (`git http-backend` as CGI on loopback). git is the oracle: refs must equal the
//! upstream's and `git fsck --strict` must pass.
//!
//! Before running: `cargo build --workspace` (the tests spawn `target/<profile>/codestorage`, or
//! `$CODESTORAGE_BIN`). Every test gets its own temp dirs and ports, so they run in parallel.
//! `E2E_KEEP=1` keeps the temp dirs; `RUST_LOG` is passed to the server.

mod support;

/// The harness itself, against the upstream directly (no codestorage): the CGI bridge, fault
/// knobs, pack capture and the hand-made request bodies.
mod harness;

/// Clones through codestorage: protocols v0/v2, ls-remote, shallow, partial, empty repos, names
/// with `/`.
mod clone;

/// Fetches after the upstream moves: new commits, force-pushes, deleted branches, tag following,
/// and the exact object set of incremental fetches.
mod fetch;

/// Sync behaviour: the first-sync window (409), failed syncs (502), clones while a sync lands,
/// no upstream traffic for no-op fetches, serving the last good state.
mod sync;

/// The REST API: create, list, show, pull-upstream and their errors.
mod rest;

/// The `codestorage` CLI: `repo create/list/show/sync` and `fsck`.
mod cli;

/// Bad input on the git and REST endpoints: answered cleanly, changing nothing.
mod bad_input;

/// Killing the server mid-sync: the data dir stays consistent and the next sync recovers.
mod crash;

/// Backup and restore under load (`codestorage backup`/`restore`), refused damaged backups,
/// non-empty targets and non-admin tokens; `export-refs`/`import-refs`.
mod backup;

/// Data directory format versions: a format-1 fixture migrated in place, a crash mid-migration,
/// a newer format refused.
mod format;

/// Pushes: write-through to a mirror's upstream (hooks, options, races, hold-back of the pack
/// trailer, upstream failures, read-your-writes, a 50 MB push) and pushes to local repos; bad
/// input, hand-made.
mod push;

/// Authentication and authorization: 401 for missing/invalid/revoked tokens, 403 for tokens
/// without the repository, organisation or scope; the token and keys CLI on a running server.
mod auth;

/// Ref policies from the token (`refs`, legacy `ops`) with real pushes: local repos, the
/// ephemeral namespace, mirrors (refused refs never reach the upstream).
mod policy;

/// The ephemeral namespace `<repo>+ephemeral.git`: isolation from the default namespace and
/// the upstream, syncs, promotion and the branch REST routes (both generations).
mod ephemeral;

/// TLS: clone and push over https with the self-signed CA; plain http alongside.
mod tls;

/// The remote helper `git-remote-codestorage` with real git: `codestorage::` URL forms, token
/// sources and scopes (captured by a proxy), no token leaks, and its error messages.
mod remote_helper;

/// Forks: create-repo with another repository of this server as the base.
mod fork;

/// Upstream credentials (both REST generations) against a forge that requires Basic auth:
/// syncs and forwarded pushes, rotation, no plaintext at rest or in logs, bad input; detach.
mod credentials;

/// Forge URL shapes, a self-hosted forge over TLS with its own CA, the proxy environment,
/// per-host concurrency, 429/Retry-After and the fetched-pack size limit.
mod providers;
/// Outgoing webhooks: subscriptions (both REST generations, bad input, scopes, organisations),
/// signed `push` and `repo.sync.*` deliveries to a loopback receiver, retries, restarts, kill -9.
mod webhooks_out;

/// GitHub mirrors: App mode (installation tokens from a fake GitHub API, refreshed after
/// expiry, used for fetches and forwarded pushes), the 412 without an App, public mode
/// (readability check, pushes kept local, diverged refs reported and never overwritten).
mod github;

/// Incoming forge webhooks (GitHub, GitLab, Gitea, Forgejo, Bitbucket): signed deliveries
/// trigger syncs of matching mirrors; bad or missing signatures are 401 and change nothing;
/// duplicates and bursts sync once; the webhook-to-served lag.
mod forge_webhooks;

/// The official Python SDK (`pierre-storage`) drives a GitHub mirror over TLS end to end:
/// remote URLs, ephemeral pushes, branches, promotion, pull-upstream, credentials, webhooks.
mod sdk;

/// Crash safety proven with fault points (`CODESTORAGE_FAULT`): an abort at every write step
/// leaves a data dir that passes fsck and serves the old or the new state; `fsck --rebuild`
/// recreates a deleted index; an upstream that fails, sends garbage, drops the connection or
/// vanishes never stops reads, leaves no partial state, is retried with backoff; the stale-state
/// warning.
mod faults;
/// Server limits (body, header, pkt-line, object and ref counts, timeouts, per-token rate):
/// clear errors and nothing changed when exceeded; connection and pack slots queue; 64
/// concurrent clones pass with the defaults; a full disk fails a push cleanly.
mod limits;
/// Operability: `/metrics` (requests, bytes, packs, syncs, pushes), `/healthz`, `/readyz`,
/// `--metrics-listen`, JSON logs, sync progress, graceful shutdown on SIGTERM and its deadline.
mod ops;

/// Identical concurrent fetches share one pack generation, spooled to a file each reader tails at
/// its own pace.
mod herd;

/// Maintenance: `codestorage maintain` and `POST /api/admin/maintain` — compaction, pruning
/// after the grace period, forks, geometric rollup, concurrency and crash safety.
mod maintain;
