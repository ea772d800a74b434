//! Protocol v0/v1 (gitprotocol-pack) in stateless-rpc form: the ref advertisement with
//! capabilities, and one negotiation round per request (`multi_ack_detailed`, `no-done`).

use std::io::Write;

use codestorage_store::walk::Commits;
use codestorage_store::{ObjectId, RefValue, refs};

use super::negotiate::{Have, Negotiation};
use super::request::{MultiAck, parse_v0};
use super::{Context, Counting, Error, agent, check_wants, pack, report, shallow};
use crate::protocol::pktline::{self, SidebandWriter};

const CAPABILITIES: &str = "multi_ack thin-pack side-band side-band-64k ofs-delta shallow deepen-since deepen-not deepen-relative no-progress include-tag multi_ack_detailed allow-tip-sha1-in-want allow-reachable-sha1-in-want no-done filter object-format=sha1";

/// The v0 ref advertisement (without the smart-HTTP `# service=` preamble).
pub fn advertise(ctx: &Context<'_>) -> Result<Vec<u8>, Error> {
    let table = ctx.view.refs(ctx.ns);
    let peeled = ctx.view.peeled(ctx.ns)?;
    let mut caps = CAPABILITIES.to_owned();
    if let Some(RefValue::Symbolic(target)) = table.get("HEAD")
        && refs::resolve(&table, "HEAD").is_some()
    {
        caps.push_str(&format!(" symref=HEAD:{target}"));
    }
    caps.push_str(&format!(" agent={}", agent()));
    let mut lines: Vec<(ObjectId, String)> = Vec::new();
    if let Some(id) = refs::resolve(&table, "HEAD") {
        lines.push((id, "HEAD".into()));
    }
    for (name, value) in table.iter() {
        if name == "HEAD" {
            continue;
        }
        let Some(id) = (match value {
            RefValue::Direct(id) => Some(*id),
            RefValue::Symbolic(_) => refs::resolve(&table, name),
        }) else {
            continue;
        };
        lines.push((id, name.clone()));
        if let Some(p) = peeled.get(name) {
            lines.push((*p, format!("{name}^{{}}")));
        }
    }
    Ok(crate::protocol::ref_advertisement(&lines, &caps))
}

/// Serve one v0 stateless-rpc upload-pack request.
pub fn serve(ctx: &Context<'_>, body: &[u8], out: &mut dyn Write) -> Result<(), Error> {
    let mut out = Counting::new(out);
    let result = serve_inner(ctx, body, &mut out);
    report(result, &mut out)
}

fn serve_inner(ctx: &Context<'_>, body: &[u8], out: &mut dyn Write) -> Result<(), Error> {
    let req = parse_v0(body)?;
    if req.wants.is_empty() {
        return Ok(());
    }
    check_wants(ctx, &req.wants)?;
    let mut reader = ctx.view.reader();
    let mut commits = Commits::new(&mut reader);
    let table = ctx.view.refs(ctx.ns);
    let plan = shallow::plan(&mut commits, &req, &table, ctx.interrupt)?;
    let mut head = Vec::new();
    if req.deepens() {
        for s in &plan.shallow {
            pktline::line(&mut head, &format!("shallow {s}"));
        }
        for s in &plan.unshallow {
            pktline::line(&mut head, &format!("unshallow {s}"));
        }
        pktline::flush(&mut head);
    }
    if req.wants_only {
        out.write_all(&head)?;
        return Ok(());
    }

    // One round of get_common_commits (upload-pack.c), stateless.
    let mut negotiation = Negotiation::default();
    let mut got_common = false;
    let mut got_other = false;
    let mut sent_ready = false;
    let mut last: Option<ObjectId> = None;
    let mut give_up_cache: Option<(usize, bool)> = None;
    let mut ok_to_give_up = |commits: &mut Commits<'_>, n: &Negotiation| -> Result<bool, Error> {
        if let Some((len, ok)) = give_up_cache
            && len == n.common.len()
        {
            return Ok(ok);
        }
        let ok = n.ok_to_give_up(commits, &req.wants)?;
        give_up_cache = Some((n.common.len(), ok));
        Ok(ok)
    };
    for h in &req.haves {
        match negotiation.have(&mut commits, *h)? {
            Have::Unknown => {
                got_other = true;
                if req.multi_ack != MultiAck::None && ok_to_give_up(&mut commits, &negotiation)? {
                    if req.multi_ack == MultiAck::Detailed {
                        sent_ready = true;
                        pktline::line(&mut head, &format!("ACK {h} ready"));
                    } else {
                        pktline::line(&mut head, &format!("ACK {h} continue"));
                    }
                }
            }
            Have::Common | Have::Known => {
                got_common = true;
                last = Some(*h);
                match req.multi_ack {
                    MultiAck::Detailed => pktline::line(&mut head, &format!("ACK {h} common")),
                    MultiAck::Plain => pktline::line(&mut head, &format!("ACK {h} continue")),
                    MultiAck::None if negotiation.common.len() == 1 => {
                        pktline::line(&mut head, &format!("ACK {h}"))
                    }
                    MultiAck::None => {}
                }
            }
        }
    }
    if !req.done {
        // The request ended with a flush: the end of this round.
        if req.multi_ack == MultiAck::Detailed
            && got_common
            && !got_other
            && ok_to_give_up(&mut commits, &negotiation)?
        {
            sent_ready = true;
            if let Some(l) = last {
                pktline::line(&mut head, &format!("ACK {l} ready"));
            }
        }
        if negotiation.common.is_empty() || req.multi_ack != MultiAck::None {
            pktline::line(&mut head, "NAK");
        }
        if !(req.no_done && sent_ready) {
            out.write_all(&head)?;
            return Ok(());
        }
        if let Some(l) = last {
            pktline::line(&mut head, &format!("ACK {l}"));
        }
    } else if negotiation.common.is_empty() {
        pktline::line(&mut head, "NAK");
    } else if req.multi_ack != MultiAck::None
        && let Some(l) = last
    {
        pktline::line(&mut head, &format!("ACK {l}"));
    }
    drop(commits);
    let job = pack::prepare(ctx, &req, &negotiation.common, &plan)?;
    out.write_all(&head)?;
    let max = req.sideband.max_payload();
    let mut sb = SidebandWriter::new(&mut *out, max, !req.no_progress);
    if let Err(e) = pack::send(ctx, &req, (&negotiation.common, &plan), job, &mut sb) {
        if !matches!(e, Error::Io(_)) {
            let _ = sb.error(&e.to_string());
        }
        return Err(e);
    }
    let inner = sb.finish()?;
    if max.is_some() {
        let mut tail = Vec::new();
        pktline::flush(&mut tail);
        inner.write_all(&tail)?;
    }
    Ok(())
}
