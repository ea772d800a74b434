//! `git-cgi-server`: serves a directory of bare repos over smart HTTP with `git http-backend`
//! (as CGI, one child per request), on loopback.
//!
//! ```text
//! git-cgi-server --root DIR [--listen ADDR] [--home DIR] [--basic-auth-file FILE]
//! ```
//!
//! `--basic-auth-file FILE`: every request must carry HTTP Basic credentials listed in FILE
//! (`user:password` lines, re-read per request), else 401.
//!
//! `DIR/<name>.git` is served as `http://ADDR/<name>.git`. `--listen` defaults to
//! `127.0.0.1:0` (a free port); once ready the server prints `listening on http://ADDR` on stdout,
//! as `codestorage serve` does. `--home` is the `HOME` of the CGI children (default: `DIR`); the
//! system git config is ignored. CGI stderr goes to this process's stderr.
//!
//! `GET /__stats` answers JSON: `children_cpu_ms` (user + sys CPU of all finished CGI children and
//! their descendants since start), `peak_rss_kb` (the largest sum of the peak RSS of one
//! request's processes since the last reset), `peak_process_rss_kb` (the largest single process),
//! `peak_anon_kb` (like `peak_rss_kb`, for the anonymous memory `RssAnon`, sampled every 5 ms),
//! `bridge_cpu_ms` (this server itself), request counts. `GET /__stats?reset=1` starts a new peak
//! window after answering. The answer waits for running requests to finish (up to 10 s), so a
//! client that has just finished a clone sees its cost.
//!
//! Used by `scripts/bench` as the upstream that codestorage mirrors from and as the baseline.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use codestorage_tests::cgi::{self, Bridge};

const USAGE: &str =
    "usage: git-cgi-server --root DIR [--listen ADDR] [--home DIR] [--basic-auth-file FILE]";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut root: Option<PathBuf> = None;
    let mut home: Option<PathBuf> = None;
    let mut auth_file: Option<PathBuf> = None;
    let mut listen: SocketAddr = "127.0.0.1:0".parse().context("default address")?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--root" => root = Some(value()?.into()),
            "--home" => home = Some(value()?.into()),
            "--basic-auth-file" => auth_file = Some(value()?.into()),
            "--listen" => {
                let v = value()?;
                listen = v.parse().with_context(|| format!("bad --listen {v:?}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let root = root.with_context(|| format!("--root is required\n{USAGE}"))?;
    let root = std::fs::canonicalize(&root)
        .with_context(|| format!("repo root {} is not readable", root.display()))?;
    let home = home.unwrap_or_else(|| root.clone());
    let backend = cgi::find_http_backend().context("looking for git http-backend")?;
    let bridge = Bridge::new(cgi::Config {
        project_root: root,
        home,
        backend,
        stats: true,
        echo_stderr: true,
    });
    if let Some(file) = auth_file {
        bridge.require_basic_auth_check(Some(cgi::basic_auth_file(file)));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("local address")?;
    println!("listening on http://{addr}");
    std::io::stdout().flush().context("flushing stdout")?;
    cgi::serve(listener, bridge).await;
    Ok(())
}
