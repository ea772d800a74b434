//! The command-line side: `codestorage serve` setup and the client of `codestorage repo …`,
//! which talks to a running server's REST API.

pub mod backup;
pub mod keys;
pub mod serve;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

/// A REST client for the server at `base` (e.g. `http://127.0.0.1:8080`).
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

fn encode_name(name: &str) -> String {
    name.split('/').collect::<Vec<_>>().join("%2F")
}

impl Client {
    /// A client for `base`.
    pub fn new(base: &str, token: Option<String>) -> Result<Client> {
        Ok(Client {
            token,
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .context("building the HTTP client")?,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| {
            format!(
                "no codestorage server reachable at {} (is `codestorage serve` running?)",
                self.base
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.context("reading the response")?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// `GET path` with the token, the response as it comes (a streamed body).
    pub async fn get_raw(&self, path: &str) -> Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(&url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req.send().await.with_context(|| {
            format!(
                "no codestorage server reachable at {} (is `codestorage serve` running?)",
                self.base
            )
        })
    }

    fn fail(status: u16, value: &Value) -> anyhow::Error {
        let msg = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        anyhow::anyhow!("server answered {status}: {msg}")
    }

    /// `repo create`.
    pub async fn create(
        &self,
        name: &str,
        upstream: Option<&str>,
        default_branch: Option<&str>,
    ) -> Result<Value> {
        let mut body = json!({ "name": name });
        if let Some(url) = upstream {
            body["base_repo"] = json!({ "url": url });
        }
        if let Some(b) = default_branch {
            body["default_branch"] = json!(b);
        }
        let (status, v) = self
            .call(reqwest::Method::POST, "/api/repos", Some(body))
            .await?;
        if status != 201 {
            return Err(Self::fail(status, &v));
        }
        Ok(v)
    }

    /// `maintain`: compact now and wait until done.
    pub async fn maintain(&self, repo: Option<&str>, full: bool) -> Result<Value> {
        let mut body = json!({ "full": full });
        if let Some(name) = repo {
            body["repo"] = json!(name);
        }
        let (status, v) = self
            .call(reqwest::Method::POST, "/api/admin/maintain", Some(body))
            .await?;
        if status != 200 {
            return Err(Self::fail(status, &v));
        }
        Ok(v)
    }

    /// `repo show`.
    pub async fn show(&self, name: &str) -> Result<Value> {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/repos/{}", encode_name(name)),
                None,
            )
            .await?;
        if status != 200 {
            return Err(Self::fail(status, &v));
        }
        Ok(v)
    }

    /// `repo list` (all pages).
    pub async fn list(&self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/repos?limit=100&cursor={}", encode_name(c)),
                None => "/api/repos?limit=100".to_owned(),
            };
            let (status, v) = self.call(reqwest::Method::GET, &path, None).await?;
            if status != 200 {
                return Err(Self::fail(status, &v));
            }
            if let Some(repos) = v.get("repos").and_then(Value::as_array) {
                out.extend(repos.iter().cloned());
            }
            match v.get("next_cursor").and_then(Value::as_str) {
                Some(c) if v.get("has_more").and_then(Value::as_bool) == Some(true) => {
                    cursor = Some(c.to_owned())
                }
                _ => return Ok(out),
            }
        }
    }

    /// `repo sync`: ask for a sync and wait until it has run; fails if it failed.
    pub async fn sync(&self, name: &str, timeout: Duration) -> Result<Value> {
        let runs = |v: &Value| v["sync"]["run_count"].as_u64().unwrap_or(0);
        let before = runs(&self.show(name).await?);
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/repos/{}/pull-upstream", encode_name(name)),
                Some(json!({})),
            )
            .await?;
        if status != 202 {
            return Err(Self::fail(status, &v));
        }
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let v = self.show(name).await?;
            if runs(&v) > before && v["sync"]["in_progress"] == Value::Bool(false) {
                if let Some(err) = v["sync"]["last_error"].as_str() {
                    bail!("sync of {name} failed: {err}");
                }
                return Ok(v);
            }
            if start.elapsed() > timeout {
                bail!(
                    "sync of {name} did not finish within {} s",
                    timeout.as_secs()
                );
            }
        }
    }
}
