//! TLS: `serve --tls-self-signed --tls-listen ADDR` generates a private CA and a certificate for
//! localhost in the data dir, prints `listening on https://ADDR` and `tls ca certificate: PATH`
//! after the http line, and serves git (and REST) over https to clients that trust that CA
//! (`GIT_SSL_CAINFO`), while plain http keeps working on `--listen`.

use std::path::Path;
use std::process::Command;

use crate::auth::{commit_detached, local_repo, ls_remote_map, served};
use crate::support::git::hermetic_env;
use crate::support::{COMMAND_TIMEOUT, Server, World, run_command};

/// The https address and CA path a TLS server printed (the last ones, after restarts).
fn tls_server() -> World {
    World::with_server(
        Server::builder()
            .arg("--tls-self-signed")
            .arg("--tls-listen")
            .arg("127.0.0.1:0"),
    )
}

fn https_url(host_port: &str, token: &str, name: &str) -> String {
    format!("https://t:{token}@{host_port}/{name}.git")
}

/// `curl` a REST path over https trusting `ca`; `None` when there is no curl.
fn curl(ca: &Path, url: &str, token: Option<&str>) -> Option<(u16, String)> {
    which_curl()?;
    let home = tempfile::tempdir().ok()?;
    let mut cmd = Command::new("curl");
    hermetic_env(&mut cmd, home.path());
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .arg(url);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = run_command(&mut cmd, COMMAND_TIMEOUT);
    let (body, code) = out.stdout.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_owned()))
}

fn which_curl() -> Option<()> {
    Command::new("curl")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| ())
}

#[test]
fn clone_and_push_over_https_with_the_self_signed_ca_and_plain_http_still_works() {
    let mut w = tls_server();
    let (addr, ca) = w.server.tls_endpoint();
    assert_eq!(
        ca,
        w.server.data_dir().join("tls/ca.pem"),
        "the CA lives in the data dir"
    );
    assert!(ca.is_file(), "{} exists", ca.display());
    let port = addr.rsplit_once(':').expect("host:port").1.to_owned();
    let work = local_repo(&w, "r");
    let before = served(&w, "r");
    let token = w
        .server
        .mint(&["--repo", "r", "--scopes", "git:read,git:write"]);
    let tls_git = w.git.env("GIT_SSL_CAINFO", &ca);

    // Clone over https, by IP and by name (the certificate covers both).
    for host in [addr.clone(), format!("localhost:{port}")] {
        let url = https_url(&host, &token, "r");
        let dest = w.git.unique_path("https-clone");
        tls_git.clone(&url, &dest, &["-q"]);
        tls_git.fsck_strict(&dest);
        assert_eq!(
            tls_git.rev_parse(&dest, "refs/remotes/origin/main"),
            before["refs/heads/main"],
            "clone over https from {host}"
        );
    }
    // Push over https.
    let url = https_url(&addr, &token, "r");
    let c = commit_detached(&w.git, &work, &before["refs/heads/main"], "tls.txt");
    tls_git.push(&work, &["-q", &url, &format!("{c}:refs/heads/main")]);
    let after = served(&w, "r");
    assert_eq!(
        after["refs/heads/main"], c,
        "the https push landed (seen over http)"
    );
    assert_eq!(ls_remote_map(&tls_git, &url), after, "ls-remote over https");

    // Auth is the same over https.
    let out = tls_git.try_run(
        tls_git.scratch(),
        &["ls-remote", &format!("https://{addr}/r.git")],
    );
    assert!(
        !out.success() && out.stderr.contains("could not read Username"),
        "no token over https: 401\n{}",
        out.describe()
    );
    let reader = w.server.mint(&["--repo", "r", "--scopes", "git:read"]);
    let out = tls_git.try_run(
        &work,
        &[
            "push",
            &https_url(&addr, &reader, "r"),
            &format!("{c}:refs/heads/x"),
        ],
    );
    assert!(
        !out.success() && out.stderr.contains("403"),
        "read-only push over https: 403\n{}",
        out.describe()
    );

    // Without the CA, git refuses the certificate.
    let out = w.git.try_run(w.git.scratch(), &["ls-remote", &url]);
    assert!(
        !out.success() && out.stderr.to_ascii_lowercase().contains("certificate"),
        "untrusted certificate\n{}",
        out.describe()
    );

    // REST over https (when curl is at hand).
    match curl(&ca, &format!("https://{addr}/api/repos/r"), Some(&token)) {
        Some((status, body)) => {
            assert_eq!(status, 200, "REST over https: {body}");
            assert!(body.contains("\"name\":\"r\""), "{body}");
            let (status, _) =
                curl(&ca, &format!("https://{addr}/api/repos/r"), None).expect("curl ran before");
            assert_eq!(status, 401, "REST over https without a token");
        }
        None => eprintln!("no curl: REST over https not checked"),
    }

    // Plain http still serves on --listen.
    let http = w.server.git_url("r");
    assert!(http.starts_with("http://"), "{http}");
    assert_eq!(ls_remote_map(&w.git, &http), after, "ls-remote over http");
    let dest = w.git.unique_path("http-clone");
    w.git.clone(&http, &dest, &["-q"]);

    // A restart keeps the CA: clients configured with it keep working.
    let ca_pem = std::fs::read(&ca).expect("read ca.pem");
    w.server.restart();
    let (addr2, ca2) = w.server.tls_endpoint();
    assert_eq!(ca2, ca, "same CA path after a restart");
    assert_eq!(
        std::fs::read(&ca2).expect("read ca.pem"),
        ca_pem,
        "the CA is not regenerated"
    );
    assert_eq!(
        ls_remote_map(&tls_git, &https_url(&addr2, &token, "r")),
        after,
        "https after a restart"
    );
}
