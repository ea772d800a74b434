//! Ref policies carried in a token (compat.md §3): the ordered `refs` claim
//! (`[[pattern, [ops…]], …]`, first match wins, an entry without ops allows explicitly) and the
//! legacy `ops` claim, folded into a trailing `*` rule.
//!
//! Patterns without `refs/` name branches (`main` = `refs/heads/main`); `*` matches every ref;
//! a trailing `*` matches every ref starting with what precedes it, at any depth
//! (`refs/heads/feature/*`). Ops: `no-push` refuses any update or deletion; `no-force-push`
//! refuses non-fast-forward updates and deletions. Unknown ops refuse with a clear reason.

use serde_json::Value;

/// What a rule forbids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// No update or deletion at all.
    NoPush,
    /// No non-fast-forward update and no deletion.
    NoForcePush,
    /// An op this server does not implement (e.g. `verify-sig`).
    Unsupported(String),
}

impl Op {
    fn parse(s: &str) -> Op {
        match s {
            "no-push" => Op::NoPush,
            "no-force-push" => Op::NoForcePush,
            other => Op::Unsupported(other.to_owned()),
        }
    }
}

/// One `[pattern, ops]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The normalized pattern.
    pub pattern: String,
    /// The ops; empty = explicit allow.
    pub ops: Vec<Op>,
}

/// The kind of change a push makes to a ref.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The ref does not exist yet.
    Create,
    /// The new value descends from the old one.
    FastForward,
    /// Anything else that keeps the ref.
    NonFastForward,
    /// The ref goes away.
    Delete,
}

/// An ordered list of rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// First match wins.
    pub rules: Vec<Rule>,
}

/// A malformed `refs` or `ops` claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ref policy in token: {0}")]
pub struct PolicyError(String);

fn normalize(pattern: &str) -> String {
    if pattern == "*" || pattern.starts_with("refs/") {
        pattern.to_owned()
    } else {
        format!("refs/heads/{pattern}")
    }
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl Policy {
    /// Build from the `refs` and legacy `ops` claims.
    pub fn from_claims(
        refs: Option<&Value>,
        ops: Option<&[String]>,
    ) -> Result<Policy, PolicyError> {
        let mut rules = Vec::new();
        if let Some(refs) = refs.filter(|v| !v.is_null()) {
            let list = refs
                .as_array()
                .ok_or_else(|| PolicyError("refs must be an array".into()))?;
            for entry in list {
                let pair = entry.as_array().filter(|p| p.len() == 2).ok_or_else(|| {
                    PolicyError("each refs entry must be [pattern, [ops]]".into())
                })?;
                let pattern = pair[0].as_str().filter(|p| !p.is_empty()).ok_or_else(|| {
                    PolicyError("a refs pattern must be a non-empty string".into())
                })?;
                let ops = match &pair[1] {
                    Value::Null => Vec::new(),
                    Value::Array(ops) => ops
                        .iter()
                        .map(|o| o.as_str().map(Op::parse))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| PolicyError("ops must be strings".into()))?,
                    _ => return Err(PolicyError("ops must be an array".into())),
                };
                rules.push(Rule {
                    pattern: normalize(pattern),
                    ops,
                });
            }
        }
        if let Some(ops) = ops.filter(|o| !o.is_empty()) {
            let ops: Vec<Op> = ops.iter().map(|o| Op::parse(o)).collect();
            match rules.iter_mut().find(|r| r.pattern == "*") {
                Some(star) => {
                    for op in ops {
                        if !star.ops.contains(&op) {
                            star.ops.push(op);
                        }
                    }
                }
                None => rules.push(Rule {
                    pattern: "*".into(),
                    ops,
                }),
            }
        }
        Ok(Policy { rules })
    }

    /// Whether `change` of ref `name` is allowed; `Err` carries the reason for the `ng` line.
    pub fn check(&self, name: &str, change: Change) -> Result<(), String> {
        let Some(rule) = self.rules.iter().find(|r| matches(&r.pattern, name)) else {
            return Ok(());
        };
        for op in &rule.ops {
            match op {
                Op::NoPush => {
                    return Err(format!(
                        "pushing to {name} is not allowed by the token's ref policy (no-push)"
                    ));
                }
                Op::NoForcePush if matches!(change, Change::NonFastForward | Change::Delete) => {
                    return Err(format!(
                        "non-fast-forward updates and deletions of {name} are not allowed by the token's ref policy (no-force-push)"
                    ));
                }
                Op::NoForcePush => {}
                Op::Unsupported(op) => {
                    return Err(format!(
                        "the token's ref policy op '{op}' is not supported by this server"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the policy restricts anything at all.
    pub fn is_empty(&self) -> bool {
        self.rules.iter().all(|r| r.ops.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(refs: Value, ops: &[&str]) -> Policy {
        let ops: Vec<String> = ops.iter().map(|s| s.to_string()).collect();
        Policy::from_claims(Some(&refs), Some(&ops)).expect("valid")
    }

    #[test]
    fn first_match_wins_and_empty_ops_allow() {
        let p = policy(json!([["main", []], ["*", ["no-push"]]]), &[]);
        assert!(p.check("refs/heads/main", Change::NonFastForward).is_ok());
        assert!(p.check("refs/heads/other", Change::Create).is_err());
    }

    #[test]
    fn short_names_mean_branches_and_prefixes_match_any_depth() {
        let p = policy(
            json!([
                ["refs/heads/feature/*", ["no-force-push"]],
                ["release", ["no-push"]]
            ]),
            &[],
        );
        assert!(
            p.check("refs/heads/feature/a/b", Change::NonFastForward)
                .is_err()
        );
        assert!(
            p.check("refs/heads/feature/a/b", Change::FastForward)
                .is_ok()
        );
        assert!(p.check("refs/heads/feature/a/b", Change::Create).is_ok());
        assert!(p.check("refs/heads/feature/x", Change::Delete).is_err());
        assert!(p.check("refs/heads/release", Change::FastForward).is_err());
        assert!(p.check("refs/tags/release", Change::FastForward).is_ok());
        assert!(
            p.check("refs/heads/featurex", Change::NonFastForward)
                .is_ok()
        );
    }

    #[test]
    fn legacy_ops_fold_into_a_trailing_star_rule() {
        let p = policy(json!([["main", []]]), &["no-force-push"]);
        assert_eq!(p.rules.last().map(|r| r.pattern.as_str()), Some("*"));
        assert!(p.check("refs/heads/main", Change::NonFastForward).is_ok());
        assert!(p.check("refs/tags/v1", Change::NonFastForward).is_err());
        let merged = policy(json!([["*", ["no-push"]]]), &["no-force-push"]);
        assert_eq!(merged.rules.len(), 1);
        assert_eq!(merged.rules[0].ops.len(), 2);
    }

    #[test]
    fn unknown_ops_refuse_with_a_reason() {
        let p = policy(json!([["*", ["verify-sig"]]]), &[]);
        let err = p
            .check("refs/heads/main", Change::FastForward)
            .expect_err("refused");
        assert!(err.contains("verify-sig"), "{err}");
    }

    #[test]
    fn malformed_claims_are_errors() {
        assert!(Policy::from_claims(Some(&json!("x")), None).is_err());
        assert!(Policy::from_claims(Some(&json!([["a"]])), None).is_err());
        assert!(Policy::from_claims(Some(&json!([[1, []]])), None).is_err());
        assert!(Policy::from_claims(None, None).expect("empty").is_empty());
    }
}
