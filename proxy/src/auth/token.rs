//! JWTs (compat.md §1.3–§1.4): the claims, minting, and verification against the issuers'
//! keys. The algorithm must be the one of the key that verifies (no `none`, no HMAC with a
//! public key); `exp` and `iat` are checked with 60 s of leeway.

use std::collections::HashMap;

use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys::{SigningKey, VerifyingKey};

/// Clock skew tolerated on `exp` and `iat`, seconds.
pub const LEEWAY: u64 = 60;

/// The claims of a codestorage / Code Storage token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The organisation that issued the token.
    pub iss: String,
    /// Who uses it (logged, never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The repository; absent or `"org"` for org-wide tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Granted scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Ref policies, `[[pattern, [ops]]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refs: Option<Value>,
    /// Legacy repo-wide ops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<String>>,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
    /// Token id, for revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// Why a token is not accepted (all map to 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT at all.
    #[error("malformed token")]
    Malformed,
    /// No keys for the issuer.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// A `kid` the issuer does not have.
    #[error("unknown key id")]
    UnknownKey,
    /// The algorithm is not the key's.
    #[error("token algorithm does not match the issuer's key")]
    WrongAlgorithm,
    /// Bad signature, or claims that do not validate.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// `iat` in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// On the deny-list.
    #[error("token revoked")]
    Revoked,
}

/// Public keys by issuer.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    issuers: HashMap<String, Vec<VerifyingKey>>,
}

impl Keyring {
    /// Trust `key` for tokens issued by `org`.
    pub fn add(&mut self, org: &str, key: VerifyingKey) {
        self.issuers.entry(org.to_owned()).or_default().push(key);
    }

    /// Whether `org` has keys here.
    pub fn knows(&self, org: &str) -> bool {
        self.issuers.contains_key(org)
    }

    /// Verify `token` at time `now`.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        // The issuer picks the keys; the signature is checked with them below.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<Claims>(token)
            .map_err(|_| TokenError::Malformed)?;
        let keys = self
            .issuers
            .get(&unverified.claims.iss)
            .ok_or(TokenError::UnknownIssuer)?;
        let candidates: Vec<&VerifyingKey> = match &header.kid {
            Some(kid) => {
                let found: Vec<_> = keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                    .collect();
                if found.is_empty() {
                    return Err(TokenError::UnknownKey);
                }
                found
            }
            None => keys.iter().collect(),
        };
        let candidates: Vec<&VerifyingKey> = candidates
            .into_iter()
            .filter(|k| k.alg == header.alg)
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::WrongAlgorithm);
        }
        let mut last = TokenError::Invalid("signature".into());
        for key in candidates {
            let mut v = Validation::new(key.alg);
            v.leeway = LEEWAY;
            v.validate_exp = true;
            v.set_required_spec_claims(&["exp", "iss"]);
            v.validate_aud = false;
            match jsonwebtoken::decode::<Claims>(token, &key.key, &v) {
                Ok(data) => {
                    let claims = data.claims;
                    if claims.iat > now + LEEWAY as i64 {
                        return Err(TokenError::IssuedInFuture);
                    }
                    return Ok(claims);
                }
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                            return Err(TokenError::Expired);
                        }
                        other => TokenError::Invalid(format!("{other:?}")),
                    };
                }
            }
        }
        Err(last)
    }
}

/// Sign `claims` with the data directory's key.
pub fn mint(key: &SigningKey, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(key.alg);
    header.kid = (!key.kid.is_empty()).then(|| key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::KeyAlg;

    fn now() -> i64 {
        crate::time::now_unix() as i64
    }

    fn claims(iat: i64, exp: i64) -> Claims {
        Claims {
            iss: "acme".into(),
            sub: Some("ci".into()),
            repo: Some("team/r".into()),
            scopes: vec!["git:read".into()],
            iat,
            exp,
            jti: Some("t1".into()),
            ..Default::default()
        }
    }

    fn setup(alg: KeyAlg) -> (tempfile::TempDir, SigningKey, Keyring) {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::generate(dir.path(), alg, "acme").expect("key");
        let mut ring = Keyring::default();
        ring.add("acme", key.verifying().expect("public"));
        (dir, key, ring)
    }

    #[test]
    fn each_algorithm_round_trips() {
        for alg in [KeyAlg::Es256, KeyAlg::Rs256, KeyAlg::EdDsa] {
            let (_d, key, ring) = setup(alg);
            let t = mint(&key, &claims(now(), now() + 60)).expect("mint");
            assert_eq!(
                ring.verify(&t, now()).expect("valid").repo.as_deref(),
                Some("team/r")
            );
        }
    }

    #[test]
    fn bad_tokens_are_refused() {
        let (_d, key, ring) = setup(KeyAlg::Es256);
        let n = now();
        assert_eq!(ring.verify("garbage", n), Err(TokenError::Malformed));
        let expired = mint(&key, &claims(n - 7200, n - 3600)).expect("mint");
        assert_eq!(ring.verify(&expired, n), Err(TokenError::Expired));
        let future = mint(&key, &claims(n + 3600, n + 7200)).expect("mint");
        assert_eq!(ring.verify(&future, n), Err(TokenError::IssuedInFuture));
        let mut other = claims(n, n + 60);
        other.iss = "evil".into();
        assert_eq!(
            ring.verify(&mint(&key, &other).expect("mint"), n),
            Err(TokenError::UnknownIssuer)
        );
        // Tampered payload: same header and signature, different claims.
        let good = mint(&key, &claims(n, n + 60)).expect("mint");
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = claims(n, n + 60);
        c.scopes = vec!["git:write".into()];
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&c).expect("json"));
        let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert!(matches!(
            ring.verify(&tampered, n),
            Err(TokenError::Invalid(_))
        ));
        // alg: none.
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        let none = format!("{header}.{}.", parts[1]);
        assert!(ring.verify(&none, n).is_err());
        // HS256 signed with the public key's bytes.
        let hs = jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims(n, n + 60),
            &jsonwebtoken::EncodingKey::from_secret(&key.public_pem),
        )
        .expect("hs256");
        assert_eq!(ring.verify(&hs, n), Err(TokenError::WrongAlgorithm));
        // Unknown kid.
        let mut header = Header::new(key.alg);
        header.kid = Some("nope".into());
        let unknown = jsonwebtoken::encode(&header, &claims(n, n + 60), &key.key).expect("mint");
        assert_eq!(ring.verify(&unknown, n), Err(TokenError::UnknownKey));
    }
}
