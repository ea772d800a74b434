//! The official SDKs, unmodified, drive codestorage end to end: the Python SDK
//! (`pierre-storage`, steps in `tests/sdk/sdk_e2e.py`) and the TypeScript SDK (`@pierre/storage`,
//! steps in `tests/sdk/sdk_e2e.mjs`). Each creates a GitHub mirror with `base_repo`, clones its
//! remote URL over TLS, pushes to the ephemeral remote URL, lists and promotes branches, pulls
//! from upstream, manages git credentials, and validates one of our webhooks with the SDK's own
//! validator; the TypeScript run also forks, finds, lists and deletes repositories.
//!
//! `scripts/test` prepares both SDKs: a virtualenv in `target/sdk-venv` (or the interpreter named
//! by `CODESTORAGE_SDK_PYTHON`) and an npm prefix in `target/sdk-node` (or the directory named by
//! `CODESTORAGE_SDK_NODE_DIR`, whose `node_modules` has `@pierre/storage`). Without them the tests
//! fail and say how to get them; `CODESTORAGE_SKIP_SDK_TESTS=1` skips them deliberately.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::git::hermetic_env;
use crate::support::jwt::Signer;
use crate::support::{Git, Seed, Server, Upstream, run_command, seed_repo};

/// `tests/sdk/<file>`.
fn sdk_file(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk").join(file)
}

fn skipped(which: &str) -> bool {
    let skip = std::env::var_os("CODESTORAGE_SKIP_SDK_TESTS").is_some();
    if skip {
        eprintln!("CODESTORAGE_SKIP_SDK_TESTS is set: skipping the {which} SDK test");
    }
    skip
}

/// The Python interpreter that has `pierre_storage`, or `None` when the test is to be skipped.
fn sdk_python() -> Option<PathBuf> {
    if skipped("Python") {
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

/// The npm prefix whose `node_modules` has `@pierre/storage`, or `None` to skip.
fn sdk_node_dir() -> Option<PathBuf> {
    if skipped("TypeScript") {
        return None;
    }
    let dir = std::env::var_os("CODESTORAGE_SDK_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sdk-node"));
    assert!(
        dir.join("node_modules/@pierre/storage/package.json")
            .is_file(),
        "{} has no node_modules/@pierre/storage: run scripts/test (it creates target/sdk-node), \
         or set CODESTORAGE_SDK_NODE_DIR, or CODESTORAGE_SKIP_SDK_TESTS=1 to skip",
        dir.display()
    );
    Some(dir)
}

/// A server with TLS and `--github-url` pointing at an upstream that holds `acme/widgets`.
struct SdkWorld {
    server: Server,
    _git: Git,
    _upstream: Upstream,
    seed: Seed,
    scratch: tempfile::TempDir,
}

impl SdkWorld {
    fn start() -> SdkWorld {
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
        SdkWorld {
            server,
            _git: git,
            _upstream: upstream,
            seed,
            scratch: tempfile::tempdir().expect("scratch"),
        }
    }

    /// Runs `cmd` (an SDK script) with the `CS_*` environment it reads, and checks it passed.
    fn run(&self, mut cmd: Command) {
        let (storage, ca) = self.server.tls_endpoint();
        let signer = Signer::from_data_dir(self.server.data_dir());
        hermetic_env(&mut cmd, self.scratch.path());
        cmd.env("CS_API", self.server.base())
            .env("CS_STORAGE", &storage)
            .env(
                "CS_KEY_FILE",
                self.server.data_dir().join("keys/signing.pem"),
            )
            .env("CS_ORG", &signer.org)
            .env("CS_UPSTREAM", &self.seed.url)
            .env("CS_SCRATCH", self.scratch.path())
            .env("GIT_SSL_CAINFO", &ca);
        let out = run_command(&mut cmd, Duration::from_secs(300));
        assert!(
            out.success(),
            "the SDK script failed\n{}\n--- server log ---\n{}",
            out.describe(),
            self.server.logs()
        );
        assert!(
            out.stdout.contains("all SDK steps passed"),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn the_python_sdk_drives_git_sync_end_to_end() {
    let Some(python) = sdk_python() else { return };
    let w = SdkWorld::start();
    let mut cmd = Command::new(python);
    cmd.arg(sdk_file("sdk_e2e.py"));
    w.run(cmd);
}

#[test]
fn the_typescript_sdk_drives_git_sync_end_to_end() {
    let Some(dir) = sdk_node_dir() else { return };
    let w = SdkWorld::start();
    // ES modules resolve packages from the script's own directory: run a copy placed beside
    // the SDK's node_modules.
    let script = dir.join("sdk_e2e.mjs");
    std::fs::copy(sdk_file("sdk_e2e.mjs"), &script).expect("copy the script beside node_modules");
    let mut cmd = Command::new("node");
    cmd.arg(&script).current_dir(&dir);
    w.run(cmd);
}
