//! `codestorage keys …` and `codestorage token …`: signing keys and tokens, from the data
//! directory's key files (never sled), so they work while the server runs.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::auth::keys::{KeyAlg, SigningKey};
use crate::auth::revoke::Revocations;
use crate::auth::token::{Claims, mint};
use crate::time::now_unix;

/// `keys …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a new signing key (the previous one stays trusted).
    Generate {
        /// Algorithm: es256, rs256 or eddsa.
        #[arg(long, default_value = "es256")]
        alg: String,
        /// Organisation (JWT `iss`) the key signs for [default: the current one, else `local`].
        #[arg(long)]
        org: Option<String>,
    },
    /// Print the organisation, key id, algorithm and public key.
    Show,
}

/// `token …`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Mint a token; prints it alone on stdout.
    Mint {
        /// Repository the token is for (`org` for an organisation-wide token).
        #[arg(long)]
        repo: String,
        /// Comma-separated scopes: git:read, git:write, repo:write, org:read, admin.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Subject (who uses the token; logged with each push).
        #[arg(long, default_value = "codestorage-cli")]
        sub: String,
        /// Ref policy entries, in order: `PATTERN=OP[,OP]` (no ops: an explicit allow).
        #[arg(long = "refs")]
        refs: Vec<String>,
    },
    /// Put tokens on the deny-list the server checks on every request.
    Revoke {
        /// A token id (`jti`).
        #[arg(long, conflicts_with_all = ["sub", "issued_before"])]
        jti: Option<String>,
        /// Every token of this subject.
        #[arg(long, conflicts_with = "issued_before")]
        sub: Option<String>,
        /// Every token issued before this time (unix seconds or YYYY-MM-DDTHH:MM:SSZ).
        #[arg(long)]
        issued_before: Option<String>,
    },
}

/// Run a `keys` command.
pub fn keys(data: &Path, cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Generate { alg, org } => {
            let alg = KeyAlg::parse(&alg)
                .with_context(|| format!("unknown --alg {alg:?} (es256, rs256, eddsa)"))?;
            let org = match org {
                Some(o) => o,
                None => SigningKey::load(data)?.map_or_else(|| "local".to_owned(), |k| k.org),
            };
            let key = SigningKey::generate(data, alg, &org)?;
            show(data, &key);
        }
        KeysCommand::Show => show(data, &SigningKey::require(data)?),
    }
    Ok(())
}

fn show(data: &Path, key: &SigningKey) {
    println!("org: {}", key.org);
    println!("kid: {}", key.kid);
    println!("alg: {:?}", key.alg);
    println!(
        "private key: {}",
        data.join("keys").join("signing.pem").display()
    );
    print!("{}", String::from_utf8_lossy(&key.public_pem));
}

/// Parse `PATTERN=OP[,OP]` entries into the `refs` claim.
pub fn refs_claim(entries: &[String]) -> Result<Option<Value>> {
    if entries.is_empty() {
        return Ok(None);
    }
    let mut list = Vec::new();
    for e in entries {
        let (pattern, ops) = e.split_once('=').unwrap_or((e.as_str(), ""));
        if pattern.is_empty() {
            bail!("--refs {e:?}: the pattern is empty");
        }
        let ops: Vec<Value> = ops
            .split(',')
            .filter(|o| !o.is_empty())
            .map(|o| Value::String(o.to_owned()))
            .collect();
        list.push(Value::Array(vec![
            Value::String(pattern.to_owned()),
            Value::Array(ops),
        ]));
    }
    Ok(Some(Value::Array(list)))
}

/// Claims for a token of the data directory's key.
pub fn claims(
    key: &SigningKey,
    repo: &str,
    scopes: Vec<String>,
    ttl: u64,
    sub: &str,
    refs: Option<Value>,
) -> Claims {
    let now = now_unix() as i64;
    Claims {
        iss: key.org.clone(),
        sub: Some(sub.to_owned()),
        repo: Some(repo.to_owned()),
        scopes,
        refs,
        ops: None,
        iat: now,
        // A TTL from a flag or the environment may be huge: saturate rather than wrap into the past.
        exp: now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
        jti: Some(format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        )),
    }
}

/// A short-lived admin token for the CLI's own REST calls.
pub fn admin_token(data: &Path) -> Result<String> {
    let key = SigningKey::require(data)?;
    let c = claims(
        &key,
        "org",
        vec!["admin".into()],
        300,
        "codestorage-cli",
        None,
    );
    Ok(mint(&key, &c)?)
}

/// Parse `unix seconds` or `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_time(s: &str) -> Result<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let bad = || anyhow::anyhow!("{s:?} is neither unix seconds nor YYYY-MM-DDTHH:MM:SSZ");
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().map_err(|_| bad());
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Run a `token` command.
pub fn token(data: &Path, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Mint {
            repo,
            scopes,
            ttl,
            sub,
            refs,
        } => {
            let key = SigningKey::require(data)?;
            let c = claims(&key, &repo, scopes, ttl, &sub, refs_claim(&refs)?);
            println!("{}", mint(&key, &c)?);
        }
        TokenCommand::Revoke {
            jti,
            sub,
            issued_before,
        } => {
            let mut list = Revocations::load(data)?;
            match (jti, sub, issued_before) {
                (Some(j), _, _) => {
                    list.jti.insert(j);
                }
                (_, Some(s), _) => {
                    list.sub.insert(s);
                }
                (_, _, Some(t)) => list.issued_before = Some(parse_time(&t)?),
                _ => bail!("give --jti, --sub or --issued-before"),
            }
            list.save(data)?;
            println!("revoked");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
        assert_eq!(parse_time("1705746600").ok(), Some(1_705_746_600));
        assert_eq!(parse_time("2024-01-20T10:30:00Z").ok(), Some(1_705_746_600));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn refs_entries_become_the_claim() {
        let v = refs_claim(&[
            "main=no-push".into(),
            "refs/heads/feature/*=no-force-push,no-push".into(),
            "*=".into(),
        ])
        .expect("parses")
        .expect("some");
        assert_eq!(
            v,
            serde_json::json!([
                ["main", ["no-push"]],
                ["refs/heads/feature/*", ["no-force-push", "no-push"]],
                ["*", []]
            ])
        );
    }
}
