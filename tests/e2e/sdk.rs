//! The official Python SDK (`pierre-storage`, unmodified) drives codestorage end to end:
//! create a GitHub mirror with `base_repo`, clone its `get_remote_url` over TLS, push to
//! `get_ephemeral_remote_url`, list and promote branches, `pull_upstream`, git credentials, and
//! validate one of our webhooks with the SDK's own validator. The steps are in
//! `tests/sdk/sdk_e2e.py`.
//!
//! The SDK lives in a virtualenv that `scripts/test` prepares (`target/sdk-venv`, or the
//! interpreter named by `CODESTORAGE_SDK_PYTHON`). Without one the test fails and says how to get
//! it; `CODESTORAGE_SKIP_SDK_TESTS=1` skips it deliberately.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::git::hermetic_env;
use crate::support::jwt::Signer;
use crate::support::{Git, Server, Upstream, run_command, seed_repo};

/// The Python interpreter that has `pierre_storage`, or `None` when the test is to be skipped.
fn sdk_python() -> Option<PathBuf> {
    if std::env::var_os("CODESTORAGE_SKIP_SDK_TESTS").is_some() {
        eprintln!("CODESTORAGE_SKIP_SDK_TESTS is set: skipping the Python SDK test");
        return None;
    }
    let python = std::env::var_os("CODESTORAGE_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sdk-venv/bin/python")
        });
    let ok = Command::new(&python)
        .args(["-c", "import pierre_storage"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import pierre_storage: run scripts/test (it creates target/sdk-venv), or \
         set CODESTORAGE_SDK_PYTHON, or CODESTORAGE_SKIP_SDK_TESTS=1 to skip",
        python.display()
    );
    Some(python)
}

#[test]
fn the_python_sdk_drives_git_sync_end_to_end() {
    let Some(python) = sdk_python() else { return };
    let git = Git::new();
    let upstream = Upstream::start();
    let seed = seed_repo(&git, &upstream, "acme/widgets");
    let server = Server::builder()
        .arg("--tls-self-signed")
        .arg("--tls-listen")
        .arg("127.0.0.1:0")
        .arg("--github-url")
        .arg(upstream.base())
        .start();
    let (storage, ca) = server.tls_endpoint();
    let signer = Signer::from_data_dir(server.data_dir());
    let scratch = tempfile::tempdir().expect("scratch");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sdk/sdk_e2e.py");

    let mut cmd = Command::new(&python);
    hermetic_env(&mut cmd, scratch.path());
    cmd.arg(&script)
        .env("CS_API", server.base())
        .env("CS_STORAGE", &storage)
        .env("CS_KEY_FILE", server.data_dir().join("keys/signing.pem"))
        .env("CS_ORG", &signer.org)
        .env("CS_UPSTREAM", &seed.url)
        .env("CS_SCRATCH", scratch.path())
        .env("GIT_SSL_CAINFO", &ca);
    let out = run_command(&mut cmd, Duration::from_secs(300));
    assert!(
        out.success(),
        "the SDK script failed\n{}\n--- server log ---\n{}",
        out.describe(),
        server.logs()
    );
    assert!(
        out.stdout.contains("all SDK steps passed"),
        "{}",
        out.describe()
    );
}
