//! Applying a push to the store: for repositories without an upstream and for namespaces that
//! never leave this server. Pack into quarantine, connectivity check, per-ref compare-and-swap
//! (all or nothing with `atomic`), report.

use std::io::{self, BufRead, Read};
use std::sync::atomic::AtomicBool;

use codestorage_store::{
    Expect, IngestOptions, Namespace, ObjectReader, RefError, RefUpdate, RefValue, Repo,
    Transaction,
};

use crate::auth::policy::Policy;

use super::{Command, RefStatus, Report, Request, refuse_name};

/// Bounds on what one push may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest pack accepted, in bytes.
    pub max_pack_bytes: u64,
    /// Most ref updates in one push.
    pub max_commands: usize,
    /// Largest single object (or delta) accepted, in bytes.
    pub max_object_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pack_bytes: 4 << 30,
            max_commands: 10_000,
            max_object_bytes: 1 << 30,
        }
    }
}

/// A reader that fails once more than `remaining` bytes are read.
pub struct LimitedReader<R> {
    inner: R,
    remaining: u64,
    limit: u64,
}

impl<R> LimitedReader<R> {
    /// Allow at most `limit` bytes from `inner`.
    pub fn new(inner: R, limit: u64) -> Self {
        LimitedReader {
            inner,
            remaining: limit,
            limit,
        }
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // One byte more than allowed means the stream is over the limit.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(format!(
                    "pack exceeds the limit of {} bytes",
                    self.limit
                ))),
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Why git's client sees a ref refused, for a store-side reason.
pub fn reason(e: &RefError, cmd: &Command) -> String {
    match e {
        RefError::Stale { .. } => format!(
            "cannot lock ref '{}': is not at the expected old value {}",
            cmd.name, cmd.old
        ),
        RefError::InvalidName => "funny refname".into(),
        RefError::MissingObject(_) => "missing necessary objects".into(),
        RefError::TransactionFailed => "atomic push failed".into(),
    }
}

/// Apply `req` (whose pack, if any, follows in `input`) to namespace `ns` of `repo`.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    repo: &Repo,
    ns: Namespace,
    req: &Request,
    input: &mut dyn BufRead,
    limits: Limits,
    who: &str,
    policy: Option<&Policy>,
    interrupt: &AtomicBool,
) -> Report {
    let mut status: Vec<Option<RefStatus>> = req
        .commands
        .iter()
        .map(|c| refuse_name(c).map(|r| RefStatus::Ng(r.into())))
        .collect();
    let mut report = Report::default();
    let finish = |status: Vec<Option<RefStatus>>, mut report: Report| {
        report.refs = req
            .commands
            .iter()
            .zip(status)
            .map(|(c, s)| {
                (
                    c.name.clone(),
                    s.unwrap_or(RefStatus::Ng("not applied".into())),
                )
            })
            .collect();
        report
    };

    let view = repo.view();
    let mut quarantine = None;
    if req.expects_pack() {
        let mut limited = io::BufReader::with_capacity(
            64 << 10,
            LimitedReader::new(input, limits.max_pack_bytes),
        );
        let opts = IngestOptions {
            max_object_bytes: Some(limits.max_object_bytes),
            ..Default::default()
        };
        match repo.receive_pack(&mut limited, opts, interrupt) {
            Ok(q) => quarantine = q,
            Err(e) => {
                tracing::debug!(error = %e, "push pack refused");
                report.unpack_error = Some(e.to_string());
                for s in &mut status {
                    s.get_or_insert(RefStatus::Ng("unpacker error".into()));
                }
                return finish(status, report);
            }
        }
    }
    let tips: Vec<_> = req
        .commands
        .iter()
        .zip(&status)
        .filter(|(c, s)| s.is_none() && !c.is_delete())
        .map(|(c, _)| c.new)
        .collect();
    if let Some(q) = quarantine.as_mut()
        && let Err(e) = q.verify(view.packs.clone(), ns, &tips)
    {
        tracing::debug!(error = %e, "push pack incomplete");
        for (c, s) in req.commands.iter().zip(&mut status) {
            if !c.is_delete() {
                s.get_or_insert(RefStatus::Ng("missing necessary objects".into()));
            }
        }
        quarantine = None;
    }
    // The token's ref policy, now that every new commit is at hand.
    if let Some(policy) = policy.filter(|p| !p.is_empty()) {
        let mut reader = match &quarantine {
            Some(q) => ObjectReader::with_extra(view.packs.clone(), q.pack().clone()),
            None => view.reader(),
        };
        let decisions = super::check_policy(&req.commands, policy, &mut reader);
        for (s, d) in status.iter_mut().zip(decisions) {
            if s.is_none() {
                match d {
                    Some(Ok(())) => {}
                    Some(Err(reason)) => *s = Some(RefStatus::Ng(reason)),
                    None => *s = Some(RefStatus::Ng("missing necessary objects".into())),
                }
            }
        }
    }
    if req.caps.atomic && status.iter().any(Option::is_some) {
        for s in &mut status {
            s.get_or_insert(RefStatus::Ng("atomic push failed".into()));
        }
        return finish(status, report);
    }
    let pending: Vec<usize> = (0..req.commands.len())
        .filter(|i| status[*i].is_none())
        .collect();
    if pending.is_empty() {
        return finish(status, report);
    }
    let updates = pending
        .iter()
        .map(|i| {
            let c = &req.commands[*i];
            RefUpdate {
                name: c.name.clone(),
                expect: if c.old.is_null() {
                    Expect::Absent
                } else {
                    Expect::Value(RefValue::Direct(c.old))
                },
                new: (!c.is_delete()).then_some(RefValue::Direct(c.new)),
            }
        })
        .collect();
    let outcome = repo.commit(Transaction {
        ns,
        updates,
        who: who.to_owned(),
        atomic: req.caps.atomic,
        quarantine,
    });
    match outcome {
        Ok(outcome) => {
            for (i, result) in pending.iter().zip(outcome.results) {
                status[*i] = Some(match result {
                    Ok(()) => RefStatus::Ok,
                    Err(e) => RefStatus::Ng(reason(&e, &req.commands[*i])),
                });
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "push could not be committed");
            for i in pending {
                status[i] = Some(RefStatus::Ng("failed to update refs on the server".into()));
            }
        }
    }
    finish(status, report)
}
