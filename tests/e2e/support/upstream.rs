//! `Upstream`: a real git server for codestorage to mirror from, on `127.0.0.1:0`.
//!
//! The server is the CGI bridge of the library ([`codestorage_tests::cgi`]: `git http-backend`
//! run per request behind hyper); this module gives it a scratch directory of bare repos, its own
//! tokio runtime (so tests stay plain `#[test]` functions that run blocking `git` commands) and
//! repo setup helpers. Dropping the `Upstream` stops the runtime, kills running CGI children and
//! removes the repos.
//!
//! Fault knobs, settable at any time from the test thread:
//! - [`Upstream::set_delay_per_chunk`]: the response body goes out in 1 KiB pieces, each after this
//!   delay (makes a sync take a while);
//! - [`Upstream::set_fail`]: answer every request with this status, without running git (with
//!   [`Upstream::set_retry_after`]: and this `Retry-After`);
//! - [`Upstream::set_cut_after`]: pack responses stop after so many bytes, the connection reset;
//! - [`Upstream::set_garbage`]: every answer is 200 with a body that is not git protocol;
//! - [`Upstream::set_vanished`]: connections are closed unanswered (the host is gone);
//! - [`Upstream::require_basic_auth`]: 401 unless requests carry this Basic credential
//!   ([`Upstream::require_basic_auth_check`]: unless their credentials pass a check);
//! - [`Upstream::requests`] / [`Upstream::request_log`] / [`Upstream::auth_log`]: what reached
//!   the upstream; [`Upstream::max_in_flight`]: the most requests served at once.
//!
//! [`Upstream::start_tls`] serves https with a certificate for `127.0.0.1`/`localhost` from a CA
//! of its own ([`Upstream::ca_file`]), as a self-hosted forge with an internal CA does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use codestorage_tests::cgi::{self, Bridge};

use super::git::hermetic_env;
use super::{COMMAND_TIMEOUT, run_command, scratch_dir, tail};

pub struct Upstream {
    /// Holds `repos/` (GIT_PROJECT_ROOT) and `home/` (HOME for the CGI and setup commands).
    dir: tempfile::TempDir,
    addr: SocketAddr,
    bridge: Arc<Bridge>,
    runtime: Option<tokio::runtime::Runtime>,
    /// The CA certificate file of a TLS upstream.
    ca_file: Option<PathBuf>,
}

impl Upstream {
    /// Starts an upstream with no repos on `127.0.0.1:<free port>`.
    pub fn start() -> Upstream {
        Upstream::start_with(false)
    }

    /// [`Upstream::start`], serving https with a certificate from its own CA.
    pub fn start_tls() -> Upstream {
        Upstream::start_with(true)
    }

    fn start_with(tls: bool) -> Upstream {
        let dir = scratch_dir("upstream");
        let repos = dir.path().join("repos");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&repos).expect("create upstream repo root");
        std::fs::create_dir_all(&home).expect("create upstream HOME");
        let bridge = Bridge::new(cgi::Config {
            project_root: repos,
            home,
            backend: http_backend().to_owned(),
            stats: false,
            echo_stderr: false,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("upstream")
            .enable_all()
            .build()
            .expect("build the upstream's tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("upstream local addr");
        let ca_file = if tls {
            let (acceptor, ca_file) = tls_setup(dir.path());
            runtime.spawn(cgi::serve_tls(listener, bridge.clone(), acceptor));
            Some(ca_file)
        } else {
            runtime.spawn(cgi::serve(listener, bridge.clone()));
            None
        };
        Upstream {
            dir,
            addr,
            bridge,
            runtime: Some(runtime),
            ca_file,
        }
    }

    /// `http://127.0.0.1:<port>` (`https://…` for a TLS upstream).
    pub fn base(&self) -> String {
        let scheme = if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM file of a TLS upstream's CA.
    pub fn ca_file(&self) -> &Path {
        self.ca_file
            .as_deref()
            .expect("ca_file: this upstream does not serve TLS")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The clone URL of repo `name`: `http://127.0.0.1:<port>/<name>.git` (`https` for TLS).
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.base())
    }

    /// Where the bare repo `name` lives (whether or not it exists).
    pub fn path(&self, name: &str) -> PathBuf {
        self.bridge
            .config()
            .project_root
            .join(format!("{name}.git"))
    }

    /// Creates the bare repo `name` (which may contain `/`), on branch `main`, pushable over HTTP.
    /// Configured as a forge would be (and as codestorage serves): `uploadpack.allowFilter` and
    /// `uploadpack.allowReachableSHA1InWant` on, so partial clones can fetch lazily over v0 too.
    /// Returns its path.
    #[track_caller]
    pub fn create_bare(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let p = path.to_str().expect("utf-8 path");
        self.git(
            &self.bridge.config().project_root,
            &["init", "-q", "--bare", "--initial-branch=main", p],
        );
        self.git(&path, &["config", "http.receivepack", "true"]);
        self.git(&path, &["config", "uploadpack.allowFilter", "true"]);
        self.git(
            &path,
            &["config", "uploadpack.allowReachableSHA1InWant", "true"],
        );
        path
    }

    /// Deletes the bare repo `name`.
    pub fn remove_bare(&self, name: &str) {
        std::fs::remove_dir_all(self.path(name))
            .unwrap_or_else(|e| panic!("remove upstream repo {name}: {e}"));
    }

    /// Response bodies go out in 1 KiB pieces, each `delay` after the last; zero turns it off.
    /// Takes effect for the next piece of every response, including those under way.
    pub fn set_delay_per_chunk(&self, delay: Duration) {
        self.bridge.set_delay_per_chunk(delay);
    }

    /// `Some(status)`: every request is answered with `status` and a short text body, without
    /// running git. `None`: back to normal.
    pub fn set_fail(&self, status: Option<u16>) {
        self.bridge.set_fail(status);
    }

    /// `Some(n)`: pack responses (upload-pack POSTs) stop after `n` body bytes and the
    /// connection is reset. `None`: whole bodies.
    pub fn set_cut_after(&self, bytes: Option<u64>) {
        self.bridge.set_cut_after(bytes);
    }

    /// `true`: every request is answered 200 with a body that is not git protocol.
    pub fn set_garbage(&self, on: bool) {
        self.bridge.set_garbage(on);
    }

    /// `true`: every connection is closed unanswered as soon as it is accepted.
    pub fn set_vanished(&self, on: bool) {
        self.bridge.set_vanished(on);
    }

    /// `Some(check)`: every request needs HTTP Basic credentials that pass `check` (401
    /// otherwise), as a forge's private repository does. `None`: open again.
    pub fn require_basic_auth_check(&self, check: Option<cgi::BasicAuthCheck>) {
        self.bridge.require_basic_auth_check(check);
    }

    /// Injected failures carry `Retry-After: value` (`None`: no header).
    pub fn set_retry_after(&self, value: Option<&str>) {
        self.bridge.set_retry_after(value);
    }

    /// `Some((user, password))`: 401 unless a request carries this Basic credential.
    pub fn require_basic_auth(&self, credential: Option<(&str, &str)>) {
        self.bridge.require_basic_auth(credential);
    }

    /// Every Basic credential presented so far: `user:password ok|refused`.
    pub fn auth_log(&self) -> Vec<String> {
        self.bridge.auth_log()
    }

    /// The most requests served at the same time so far.
    pub fn max_in_flight(&self) -> usize {
        self.bridge.max_in_flight()
    }

    /// How many requests have reached the upstream so far.
    pub fn requests(&self) -> usize {
        self.bridge.requests()
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn request_log(&self) -> Vec<String> {
        self.bridge.request_log()
    }

    /// What the `git http-backend` children printed on stderr so far.
    pub fn cgi_stderr(&self) -> String {
        self.bridge.cgi_stderr()
    }

    /// Runs a setup `git` command with the upstream's own hermetic environment.
    #[track_caller]
    fn git(&self, dir: &Path, args: &[&str]) {
        let mut cmd = Command::new("git");
        hermetic_env(&mut cmd, &self.bridge.config().home);
        cmd.args(args).current_dir(dir);
        let out = run_command(&mut cmd, COMMAND_TIMEOUT);
        assert!(out.success(), "upstream setup failed\n{}", out.describe());
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if std::thread::panicking() {
            let stderr = self.cgi_stderr();
            if !stderr.trim().is_empty() {
                eprintln!(
                    "--- upstream git http-backend stderr ---\n{}",
                    tail(&stderr, 8000)
                );
            }
            let log = self.request_log();
            eprintln!(
                "--- upstream requests ({}) ---\n{}",
                log.len(),
                tail(&log.join("\n"), 4000)
            );
        }
    }
}

/// A CA and a server certificate for `127.0.0.1`/`localhost` signed by it: the acceptor, and
/// the CA's PEM file (written into `dir`).
pub(super) fn tls_setup(dir: &Path) -> (tokio_rustls::TlsAcceptor, PathBuf) {
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA certificate parameters");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "e2e upstream forge CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server certificate parameters");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &ca).expect("server certificate");
    let ca_file = dir.join("forge-ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA file");

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("TLS server config");
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca_file)
}

/// `$(git --exec-path)/git-http-backend`, looked up once.
fn http_backend() -> &'static Path {
    static BACKEND: OnceLock<PathBuf> = OnceLock::new();
    BACKEND.get_or_init(|| {
        cgi::find_http_backend().unwrap_or_else(|e| panic!("git http-backend not found: {e}"))
    })
}
