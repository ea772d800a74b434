//! Protocol v2 (gitprotocol-v2): the capability advertisement, `ls-refs` and `fetch`.

use std::io::Write;

use codestorage_store::walk::Commits;
use codestorage_store::{RefValue, refs};

use super::negotiate::Negotiation;
use super::request::{Command, Fetch, LsRefs, parse_v2};
use super::{Context, Counting, Error, agent, check_wants, pack, report, shallow};
use crate::protocol::pktline::{self, SidebandWriter};

/// The v2 capability advertisement (the body of `info/refs` for v2 clients).
pub fn advertise() -> Vec<u8> {
    let mut out = Vec::new();
    pktline::line(&mut out, "version 2");
    pktline::line(&mut out, &format!("agent={}", agent()));
    pktline::line(&mut out, "ls-refs=unborn");
    pktline::line(&mut out, "fetch=shallow wait-for-done filter");
    pktline::line(&mut out, "server-option");
    pktline::line(&mut out, "object-format=sha1");
    pktline::flush(&mut out);
    out
}

/// Serve one v2 request body, writing the response to `out`. Client errors are reported to
/// the client as an `ERR` packet and returned for logging.
pub fn serve(ctx: &Context<'_>, body: &[u8], out: &mut dyn Write) -> Result<(), Error> {
    let mut out = Counting::new(out);
    let result = parse_v2(body)
        .map_err(Error::from)
        .and_then(|cmd| match cmd {
            Command::LsRefs(args) => {
                let bytes = ls_refs(ctx, &args)?;
                out.write_all(&bytes)?;
                Ok(())
            }
            Command::Fetch(req) => fetch(ctx, &req, &mut out),
        });
    report(result, &mut out)
}

fn ls_refs(ctx: &Context<'_>, args: &LsRefs) -> Result<Vec<u8>, Error> {
    let table = ctx.view.refs(ctx.ns);
    let peeled = if args.peel {
        Some(ctx.view.peeled(ctx.ns)?)
    } else {
        None
    };
    let wanted = |name: &str| {
        args.prefixes.is_empty() || args.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    };
    let mut out = Vec::new();
    // HEAD first, then the rest in name order.
    let names =
        std::iter::once("HEAD").chain(table.keys().map(String::as_str).filter(|n| *n != "HEAD"));
    for name in names {
        if !wanted(name) {
            continue;
        }
        let Some(value) = table.get(name) else {
            continue;
        };
        let resolved = refs::resolve(&table, name);
        let mut line = match resolved {
            Some(id) => format!("{id} {name}"),
            None if args.unborn && name == "HEAD" => "unborn HEAD".to_owned(),
            None => continue,
        };
        if let (true, RefValue::Symbolic(target)) = (args.symrefs, value) {
            line.push_str(&format!(" symref-target:{target}"));
        }
        if let Some(p) = peeled.as_ref().and_then(|p| p.get(name)) {
            line.push_str(&format!(" peeled:{p}"));
        }
        pktline::line(&mut out, &line);
    }
    pktline::flush(&mut out);
    Ok(out)
}

fn fetch(ctx: &Context<'_>, req: &Fetch, out: &mut dyn Write) -> Result<(), Error> {
    if req.wants.is_empty() && !req.wait_for_done {
        return Ok(());
    }
    check_wants(ctx, &req.wants)?;
    let mut reader = ctx.view.reader();
    let mut commits = Commits::new(&mut reader);
    let mut negotiation = Negotiation::default();
    for h in &req.haves {
        negotiation.have(&mut commits, *h)?;
    }
    let mut head = Vec::new();
    if !req.done && !req.haves.is_empty() {
        pktline::line(&mut head, "acknowledgments");
        if negotiation.common.is_empty() {
            pktline::line(&mut head, "NAK");
        }
        for c in &negotiation.common {
            pktline::line(&mut head, &format!("ACK {c}"));
        }
        let ready = !req.wait_for_done && negotiation.ok_to_give_up(&mut commits, &req.wants)?;
        if !ready {
            pktline::flush(&mut head);
            out.write_all(&head)?;
            return Ok(());
        }
        pktline::line(&mut head, "ready");
        pktline::delim(&mut head);
    }
    let table = ctx.view.refs(ctx.ns);
    let plan = shallow::plan(&mut commits, req, &table, ctx.interrupt)?;
    drop(commits);
    let job = pack::prepare(ctx, req, &negotiation.common, &plan)?;
    if plan.send_info {
        pktline::line(&mut head, "shallow-info");
        for s in &plan.shallow {
            pktline::line(&mut head, &format!("shallow {s}"));
        }
        for s in &plan.unshallow {
            pktline::line(&mut head, &format!("unshallow {s}"));
        }
        pktline::delim(&mut head);
    }
    pktline::line(&mut head, "packfile");
    out.write_all(&head)?;
    let mut sb = SidebandWriter::new(
        &mut *out,
        Some(pktline::MAX_SIDEBAND_DATA),
        !req.no_progress,
    );
    match pack::send(ctx, req, (&negotiation.common, &plan), job, &mut sb) {
        Ok(_) => {}
        Err(e) => {
            if !matches!(e, Error::Io(_)) {
                let _ = sb.error(&e.to_string());
            }
            return Err(e);
        }
    }
    let inner = sb.finish()?;
    let mut tail = Vec::new();
    pktline::flush(&mut tail);
    inner.write_all(&tail)?;
    Ok(())
}
