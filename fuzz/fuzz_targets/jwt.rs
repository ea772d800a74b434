//! Tokens: arbitrary strings through verification (header and claims decoding, issuer and key
//! lookup, signature), the `Authorization` header parser, and arbitrary claims JSON minted with
//! a real key, verified, and turned into a ref policy.
//!
//! Input: one mode byte, then the payload (mode 0: a token; 1: an `Authorization` header
//! value; otherwise: claims JSON).
#![no_main]

use std::sync::OnceLock;

use codestorage::auth::keys::{KeyAlg, SigningKey};
use codestorage::auth::policy::{Change, Policy};
use codestorage::auth::token::{self, Claims, Keyring};
use libfuzzer_sys::fuzz_target;

const ORG: &str = "fuzz-org";

struct Fixture {
    _dir: tempfile::TempDir,
    key: SigningKey,
    ring: Keyring,
}

/// A signing key and the keyring trusting it (set-up failures abort the run loudly).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = SigningKey::generate(dir.path(), KeyAlg::Es256, ORG).expect("generate key");
        let mut ring = Keyring::default();
        ring.add(ORG, key.verifying().expect("verifying key"));
        Fixture {
            _dir: dir,
            key,
            ring,
        }
    })
}

const NOW: i64 = 1_800_000_000;

/// Build the ref policy of `claims` and ask it about a few refs, as a push does.
fn exercise_policy(claims: &Claims) {
    if let Ok(policy) = Policy::from_claims(claims.refs.as_ref(), claims.ops.as_deref()) {
        for name in ["refs/heads/main", "refs/tags/v1", "refs/heads/a/b"] {
            for change in [
                Change::Create,
                Change::FastForward,
                Change::NonFastForward,
                Change::Delete,
            ] {
                let _ = policy.check(name, change);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, payload)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match mode % 3 {
        0 => {
            if let Ok(token) = std::str::from_utf8(payload)
                && let Ok(claims) = f.ring.verify(token, NOW)
            {
                exercise_policy(&claims);
            }
        }
        1 => {
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(payload) {
                headers.insert(http::header::AUTHORIZATION, v);
                let _ = codestorage::auth::bearer(&headers);
            }
        }
        _ => {
            let Ok(claims) = serde_json::from_slice::<Claims>(payload) else {
                return;
            };
            exercise_policy(&claims);
            if let Ok(token) = token::mint(&f.key, &claims)
                && let Ok(back) = f.ring.verify(&token, NOW)
            {
                // What verifies is what was signed.
                assert_eq!(back, claims);
            }
        }
    }
});
