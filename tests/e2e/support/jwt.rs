//! Tokens made by the tests themselves, for what `codestorage token mint` never produces: expired
//! or future-dated tokens, foreign issuers, unknown key ids, legacy `ops` claims, and forgeries
//! (`alg: none`, HS256 keyed with the public key, tampered payloads).
//!
//! - [`Signer`]: a private key (the data dir's own, or one of a [`KeyDir`]) that signs any claims
//!   with any header.
//! - [`KeyDir`]: a key pair for another organisation, made by `codestorage keys generate` in a
//!   scratch data dir, to be trusted by a server through `--config` (`[[issuers]]`).
//! - [`claims`], [`forge`], [`payload`], [`header`]: building and taking apart tokens by hand.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::git::hermetic_env;
use super::{COMMAND_TIMEOUT, run_command, scratch_dir};

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Claims of a token issued by `iss` for `repo` (`None`: no `repo` claim, org-wide) with
/// `scopes`: issued now, valid for an hour, with a unique `jti` and `sub` `e2e-forged`.
pub fn claims(iss: &str, repo: Option<&str>, scopes: &[&str]) -> Value {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = now();
    let mut c = json!({
        "iss": iss,
        "sub": "e2e-forged",
        "scopes": scopes,
        "iat": n,
        "exp": n + 3600,
        "jti": format!("e2e-{}-{}-{}", std::process::id(), n, N.fetch_add(1, Ordering::SeqCst)),
    });
    if let Some(repo) = repo {
        c["repo"] = json!(repo);
    }
    c
}

/// `base64url(header).base64url(claims).signature`, signed by nobody: for `alg: none` and other
/// forgeries.
pub fn forge(header: &Value, claims: &Value, signature: &str) -> String {
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("JSON"));
    format!("{}.{}.{signature}", enc(header), enc(claims))
}

fn part(token: &str, i: usize) -> Value {
    let seg = token
        .split('.')
        .nth(i)
        .unwrap_or_else(|| panic!("{token:?} has no part {i}"));
    let bytes = URL_SAFE_NO_PAD
        .decode(seg)
        .unwrap_or_else(|e| panic!("part {i} of a token is not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("part {i} of a token: {e}"))
}

/// The decoded header of `token`.
pub fn header(token: &str) -> Value {
    part(token, 0)
}

/// The decoded claims of `token` (unverified).
pub fn payload(token: &str) -> Value {
    part(token, 1)
}

/// `token` with its claims replaced by `change(claims)`, header and signature kept.
pub fn tamper(token: &str, change: impl FnOnce(&mut Value)) -> String {
    let mut c = payload(token);
    change(&mut c);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).expect("JSON"));
    format!("{}.{body}.{}", parts[0], parts[2])
}

/// A private key that signs tokens for `org`.
pub struct Signer {
    pub org: String,
    /// The `kid` put in headers (`None`: no `kid`).
    pub kid: Option<String>,
    pub alg: Algorithm,
    key: EncodingKey,
    /// The public half (SPKI PEM).
    pub public_pem: Vec<u8>,
}

impl Signer {
    /// The key of the data dir `data` (`keys/signing.pem`, `signing.kid`, `org`), read now: a
    /// later `keys generate` is not seen.
    #[track_caller]
    pub fn from_data_dir(data: &Path) -> Signer {
        let keys = data.join("keys");
        let read = |name: &str| {
            std::fs::read(keys.join(name))
                .unwrap_or_else(|e| panic!("read {}: {e}", keys.join(name).display()))
        };
        let text = |name: &str| String::from_utf8_lossy(&read(name)).trim().to_owned();
        let pem = read("signing.pem");
        let (alg, key) = if let Ok(k) = EncodingKey::from_ec_pem(&pem) {
            (Algorithm::ES256, k)
        } else if let Ok(k) = EncodingKey::from_ed_pem(&pem) {
            (Algorithm::EdDSA, k)
        } else if let Ok(k) = EncodingKey::from_rsa_pem(&pem) {
            (Algorithm::RS256, k)
        } else {
            panic!("{} holds no key jsonwebtoken can read", keys.display());
        };
        Signer {
            org: text("org"),
            kid: Some(text("signing.kid")),
            alg,
            key,
            public_pem: read("signing.pub.pem"),
        }
    }

    /// The same key, with another (or no) `kid` in the headers it writes.
    pub fn with_kid(&self, kid: Option<&str>) -> Signer {
        Signer {
            org: self.org.clone(),
            kid: kid.map(str::to_owned),
            alg: self.alg,
            key: self.key.clone(),
            public_pem: self.public_pem.clone(),
        }
    }

    /// `claims` signed with this key, the header being `{alg, typ, kid?}`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = self.kid.clone();
        self.sign_with(&h, claims)
    }

    /// `claims` signed with this key under `header` (whose `alg` must be the key's).
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.key).expect("sign a token")
    }

    /// A token of this signer's org for `repo` with `scopes`, valid for an hour.
    pub fn token(&self, repo: Option<&str>, scopes: &[&str]) -> String {
        self.sign(&claims(&self.org, repo, scopes))
    }

    /// [`Signer::token`] with `edit` applied to the claims first.
    pub fn token_with(
        &self,
        repo: Option<&str>,
        scopes: &[&str],
        edit: impl FnOnce(&mut Value),
    ) -> String {
        let mut c = claims(&self.org, repo, scopes);
        edit(&mut c);
        self.sign(&c)
    }
}

/// HS256 over `claims`, keyed with `secret` (e.g. an issuer's public key PEM: the classic
/// algorithm-confusion forgery), with `kid` in the header.
pub fn hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).expect("sign HS256")
}

/// A key pair of another organisation, generated by `codestorage keys generate` in a scratch data
/// dir (removed on drop).
pub struct KeyDir {
    dir: tempfile::TempDir,
    pub org: String,
}

impl KeyDir {
    /// `codestorage --data-dir <scratch> keys generate --org ORG --alg ALG`.
    #[track_caller]
    pub fn generate(org: &str, alg: &str) -> KeyDir {
        let dir = scratch_dir(&format!("keys-{org}"));
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("create HOME");
        let data = dir.path().join("data");
        let mut cmd = Command::new(super::server::binary());
        hermetic_env(&mut cmd, &home);
        cmd.arg("--data-dir")
            .arg(&data)
            .args(["keys", "generate", "--org", org, "--alg", alg]);
        let out = run_command(&mut cmd, COMMAND_TIMEOUT);
        assert!(out.success(), "keys generate failed\n{}", out.describe());
        KeyDir {
            dir,
            org: org.to_owned(),
        }
    }

    /// The scratch data dir holding `keys/`.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `keys/signing.pub.pem`: what a server is configured to trust.
    pub fn public_pem_path(&self) -> PathBuf {
        self.data().join("keys").join("signing.pub.pem")
    }

    /// The generated `kid`.
    pub fn kid(&self) -> String {
        std::fs::read_to_string(self.data().join("keys").join("signing.kid"))
            .expect("read signing.kid")
            .trim()
            .to_owned()
    }

    /// A signer with this key.
    pub fn signer(&self) -> Signer {
        Signer::from_data_dir(&self.data())
    }

    /// A config file (in the scratch dir) trusting this key for its org, with `kid` if given:
    /// pass it as `--config`.
    pub fn config_file(&self, kid: Option<&str>) -> PathBuf {
        let path = self.dir.path().join("issuers.toml");
        let mut text = format!(
            "[[issuers]]\norg = \"{}\"\nkey_file = \"{}\"\n",
            self.org,
            self.public_pem_path().display()
        );
        if let Some(kid) = kid {
            text.push_str(&format!("kid = \"{kid}\"\n"));
        }
        std::fs::write(&path, text).expect("write the config file");
        path
    }
}
