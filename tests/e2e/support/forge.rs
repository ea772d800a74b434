//! Forge webhook deliveries as the forges send them: payloads in their documented shapes
//! (trimmed to the fields a receiver reads, plus a few around them), signed the way each forge
//! signs, posted to `POST /webhooks/{forge}` of a [`Server`].
//!
//! - GitHub: `X-GitHub-Event`, `X-GitHub-Delivery`, `X-Hub-Signature-256: sha256=<hex>`;
//! - GitLab: `X-Gitlab-Event: Push Hook`, `X-Gitlab-Event-UUID`, `X-Gitlab-Token: <secret>`;
//! - Gitea: `X-Gitea-Event`, `X-Gitea-Delivery`, `X-Gitea-Signature: <hex>`; Forgejo sends the
//!   same with `X-Forgejo-*` headers (and the Gitea ones too);
//! - Bitbucket Cloud: `X-Event-Key: repo:push`, `X-Request-UUID`, `X-Hook-UUID`,
//!   `X-Hub-Signature: sha256=<hex>`.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::hmac;
use serde_json::{Value, json};

use super::Server;
use super::http::HttpResponse;

/// Hex HMAC-SHA256 of `body` under `secret`.
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hex(hmac::sign(&key, body).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh delivery id (UUID-shaped).
pub fn delivery_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).expect("randomness");
    let r = u64::from_le_bytes(b);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        r >> 32,
        (r >> 16) & 0xffff,
        r & 0xfff,
        N.fetch_add(1, Ordering::SeqCst) & 0xfff,
        std::process::id()
    )
}

/// Posts `body` with `headers` (and `Content-Type: application/json`) to `/webhooks/{forge}`,
/// without any codestorage token.
pub fn deliver(
    server: &Server,
    forge: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    server.request_anonymous("POST", &format!("/webhooks/{forge}"), Some(body), &all)
}

/// A GitHub `push` event payload for `full_name` moving `refs/heads/{branch}`.
pub fn github_push(full_name: &str, branch: &str, before: &str, after: &str) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap_or(("acme", full_name));
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": before,
        "after": after,
        "created": false,
        "deleted": false,
        "forced": false,
        "base_ref": null,
        "compare": format!("https://github.com/{full_name}/compare/{}...{}", &before[..12.min(before.len())], &after[..12.min(after.len())]),
        "commits": [{
            "id": after,
            "tree_id": after,
            "distinct": true,
            "message": "a change",
            "timestamp": "2024-01-20T10:30:00Z",
            "url": format!("https://github.com/{full_name}/commit/{after}"),
            "author": { "name": "E2E", "email": "e2e@example.com", "username": "e2e" },
            "committer": { "name": "E2E", "email": "e2e@example.com", "username": "e2e" },
            "added": [], "removed": [], "modified": ["README.md"]
        }],
        "head_commit": null,
        "repository": {
            "id": 123456,
            "node_id": "R_kgDOAAAAAQ",
            "name": name,
            "full_name": full_name,
            "private": false,
            "owner": { "name": owner, "login": owner, "id": 1, "type": "Organization" },
            "html_url": format!("https://github.com/{full_name}"),
            "clone_url": format!("https://github.com/{full_name}.git"),
            "default_branch": "main",
            "master_branch": "main"
        },
        "pusher": { "name": "e2e", "email": "e2e@example.com" },
        "sender": { "login": "e2e", "id": 1, "type": "User" }
    })
}

/// A GitHub `ping` payload (sent when a webhook is created).
pub fn github_ping(full_name: &str) -> Value {
    json!({
        "zen": "Keep it logically awesome.",
        "hook_id": 42,
        "hook": { "type": "Repository", "id": 42, "name": "web", "active": true,
                  "events": ["push"], "config": { "content_type": "json", "insecure_ssl": "0", "url": "https://example.com/webhooks/github" } },
        "repository": { "id": 123456, "name": full_name.rsplit('/').next(), "full_name": full_name },
        "sender": { "login": "e2e", "id": 1, "type": "User" }
    })
}

/// Signs and sends a GitHub event; returns the answer.
pub fn send_github(
    server: &Server,
    secret: &str,
    event: &str,
    delivery: &str,
    payload: &Value,
) -> HttpResponse {
    let body = serde_json::to_vec(payload).expect("JSON");
    let sig = format!("sha256={}", hmac_hex(secret, &body));
    deliver(
        server,
        "github",
        &[
            ("User-Agent", "GitHub-Hookshot/e2e"),
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-GitHub-Hook-ID", "42"),
            ("X-Hub-Signature-256", &sig),
        ],
        &body,
    )
}

/// A GitLab `Push Hook` (or, with `tag`, `Tag Push Hook`) payload for project
/// `path_with_namespace` on `web_base` (`https://gitlab.example.com`).
pub fn gitlab_push(path_with_namespace: &str, web_base: &str, tag: bool, after: &str) -> Value {
    let name = path_with_namespace
        .rsplit('/')
        .next()
        .unwrap_or(path_with_namespace);
    let web_url = format!("{}/{path_with_namespace}", web_base.trim_end_matches('/'));
    json!({
        "object_kind": if tag { "tag_push" } else { "push" },
        "event_name": if tag { "tag_push" } else { "push" },
        "before": "0000000000000000000000000000000000000000",
        "after": after,
        "ref": if tag { "refs/tags/v9" } else { "refs/heads/main" },
        "ref_protected": true,
        "checkout_sha": after,
        "user_id": 4,
        "user_name": "E2E",
        "user_username": "e2e",
        "project_id": 15,
        "project": {
            "id": 15,
            "name": name,
            "web_url": web_url,
            "git_http_url": format!("{web_url}.git"),
            "namespace": path_with_namespace.rsplit_once('/').map_or("", |p| p.0),
            "visibility_level": 0,
            "path_with_namespace": path_with_namespace,
            "default_branch": "main"
        },
        "commits": [],
        "total_commits_count": 0,
        "repository": { "name": name, "url": format!("{web_url}.git"), "homepage": web_url }
    })
}

/// A Gitea/Forgejo `push` payload for `full_name` on `web_base`.
pub fn gitea_push(full_name: &str, web_base: &str, after: &str) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap_or(("acme", full_name));
    let html_url = format!("{}/{full_name}", web_base.trim_end_matches('/'));
    json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": after,
        "compare_url": "",
        "commits": [],
        "total_commits": 0,
        "head_commit": null,
        "repository": {
            "id": 7,
            "owner": { "id": 1, "login": owner, "username": owner },
            "name": name,
            "full_name": full_name,
            "private": false,
            "html_url": html_url,
            "clone_url": format!("{html_url}.git"),
            "default_branch": "main"
        },
        "pusher": { "id": 1, "login": "e2e", "username": "e2e" },
        "sender": { "id": 1, "login": "e2e", "username": "e2e" }
    })
}

/// A Bitbucket Cloud `repo:push` payload for `full_name` (`workspace/repo_slug`).
pub fn bitbucket_push(full_name: &str, web_base: &str, after: &str) -> Value {
    let name = full_name.rsplit('/').next().unwrap_or(full_name);
    json!({
        "push": { "changes": [{
            "new": { "type": "branch", "name": "main", "target": { "type": "commit", "hash": after } },
            "old": null, "created": true, "closed": false, "forced": false, "truncated": false
        }]},
        "repository": {
            "type": "repository",
            "full_name": full_name,
            "name": name,
            "uuid": "{00000000-0000-0000-0000-000000000007}",
            "is_private": true,
            "scm": "git",
            "links": { "html": { "href": format!("{}/{full_name}", web_base.trim_end_matches('/')) } }
        },
        "actor": { "type": "user", "display_name": "E2E", "nickname": "e2e" }
    })
}
