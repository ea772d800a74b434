//! The `X-Pierre-Signature` header (compat.md §6.2): `t=<unix seconds>,sha256=<hex>` where the
//! hex is HMAC-SHA256 keyed with the subscription's secret over `"<t>.<raw body>"`.
//!
//! Each attempt signs afresh with the time of that attempt, so a retry a day later still passes
//! a receiver's freshness check (the SDKs refuse timestamps older than 300 s).

use aws_lc_rs::hmac;

use crate::secrets::Secret;

/// `hex(HMAC-SHA256(secret, "<t>.<body>"))`.
pub fn signature(secret: &Secret, t: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    hex::encode(ctx.sign().as_ref())
}

/// The header value for a body sent at unix time `t`.
pub fn header(secret: &Secret, t: u64, body: &[u8]) -> String {
    format!("t={t},sha256={}", signature(secret, t, body))
}

/// Whether `header` is a valid signature of `body` under `secret` (constant-time compare), the
/// way a receiver checks it; used by tests and documentation.
pub fn verify(secret: &Secret, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut sig = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("sha256", v)) => sig = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(sig)) = (t, sig) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    let mut msg = t.to_string().into_bytes();
    msg.push(b'.');
    msg.extend_from_slice(body);
    hmac::verify(&key, &msg, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac_sha256_vector() {
        // The primitive against RFC 4231 test case 2 (key "Jefe")...
        let secret = Secret::new("Jefe");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let expected = hex::encode(hmac::sign(&key, b"what do ya want for nothing?").as_ref());
        assert_eq!(
            expected,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // And ours is exactly HMAC over "<t>.<body>".
        let ours = signature(&secret, 1_700_000_000, b"{\"a\":1}");
        let direct = hex::encode(hmac::sign(&key, b"1700000000.{\"a\":1}").as_ref());
        assert_eq!(ours, direct);
    }

    #[test]
    fn header_round_trips_and_tampering_fails() {
        let secret = Secret::new("whsec_test");
        let body = br#"{"ref":"refs/heads/main"}"#;
        let h = header(&secret, 1_700_000_000, body);
        assert!(h.starts_with("t=1700000000,sha256="));
        assert!(verify(&secret, &h, body));
        assert!(!verify(&secret, &h, b"{}"), "another body");
        assert!(!verify(&Secret::new("other"), &h, body), "another secret");
        let shifted = h.replace("t=1700000000", "t=1700000001");
        assert!(!verify(&secret, &shifted, body), "another timestamp");
        assert!(!verify(&secret, "sha256=00", body), "no timestamp");
    }
}
