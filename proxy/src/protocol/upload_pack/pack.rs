//! Choosing what goes into the pack and streaming it.
//!
//! The full-clone fast path sends the namespace's stored packs as they are (duplicates
//! dropped) when that is exactly the closure of what was asked: no haves, no shallow, no filter,
//! every ref tip wanted, and the namespace "closed". Everything else runs a revision walk.

use std::io::Write;
use std::time::Instant;

use codestorage_store::ObjectId;
use codestorage_store::packout::{self, PackOptions, PackStats, Selection};
use codestorage_store::walk::{Filter, WalkSpec, walk_objects};
use gix_hashtable::HashSet;

use super::shallow::ShallowPlan;
use super::{Context, Error, request::Fetch};
use crate::protocol::pktline::SidebandWriter;

/// The objects chosen for a pack.
pub struct Chosen {
    selection: Selection,
    client_has: HashSet<ObjectId>,
    fast_path: bool,
}

/// Decide what to send for `req`, given the common commits and the shallow plan.
pub fn select(
    ctx: &Context<'_>,
    req: &Fetch,
    common: &[ObjectId],
    plan: &ShallowPlan,
) -> Result<Chosen, Error> {
    let refs = ctx.view.refs(ctx.ns);
    let wants: std::collections::HashSet<ObjectId> = req.wants.iter().copied().collect();
    let fast = common.is_empty()
        && req.shallow.is_empty()
        && !req.deepens()
        && matches!(req.filter, None | Some(Filter::None))
        && ctx.view.catalog.is_closed(ctx.ns)
        && refs
            .values()
            .filter_map(|v| v.id())
            .all(|id| wants.contains(&id));
    if fast {
        return Ok(Chosen {
            selection: Selection::AllOf(ctx.ns),
            client_has: HashSet::default(),
            fast_path: true,
        });
    }
    let mut spec = WalkSpec {
        wants: req.wants.clone(),
        haves: common.to_vec(),
        grafts: plan.grafts.clone(),
        filter: req.filter.unwrap_or_default(),
    };
    spec.wants.extend(plan.extra_wants.iter().copied());
    spec.haves.extend(plan.extra_haves.iter().copied());
    let mut reader = ctx.view.reader();
    let mut walked = walk_objects(&mut reader, &spec, ctx.interrupt)?;
    if req.include_tag {
        // Annotated tags whose target is in the pack come along, as git's include-tag does.
        let peeled = ctx.view.peeled(ctx.ns)?;
        for (name, target) in peeled.iter() {
            let Some(tag) = refs.get(name).and_then(|v| v.id()) else {
                continue;
            };
            if !walked.objects.contains(&tag) && walked.objects.contains(target) {
                let mut commits = codestorage_store::walk::Commits::new(&mut reader);
                let (_, _, chain) = commits.peel(tag)?;
                walked.objects.extend(chain);
            }
        }
    }
    Ok(Chosen {
        selection: Selection::Objects(walked.objects.into_iter().collect()),
        client_has: walked.client_has,
        fast_path: false,
    })
}

/// Stream the pack for `chosen` through `out` (sideband framing already set up).
pub fn send<W: Write>(
    ctx: &Context<'_>,
    req: &Fetch,
    chosen: Chosen,
    out: &mut SidebandWriter<W>,
) -> Result<PackStats, Error> {
    let start = Instant::now();
    let opts = PackOptions {
        ofs_delta: req.ofs_delta,
        thin: req.thin_pack,
    };
    if let Some(notice) = &ctx.notice {
        out.warning(&format!("{notice}\n"))?;
    }
    let total = match &chosen.selection {
        Selection::Objects(ids) => Some(ids.len()),
        Selection::AllOf(_) => None,
    };
    if let Some(total) = total {
        out.progress(&format!("Enumerating objects: {total}, done.\n"))?;
    }
    let client_has = chosen.client_has;
    // Progress goes to the client only between pack chunks; the callback just records it.
    let mut last = (0u64, 0u64);
    let stats = packout::write_pack(
        &ctx.view.packs,
        chosen.selection,
        &|id| client_has.contains(id),
        opts,
        out,
        &mut |done, total| last = (done, total),
    )
    .map_err(|e| match e {
        codestorage_store::StoreError::Io { source, .. } => Error::Io(source),
        other => Error::Store(other),
    })?;
    out.progress(&format!(
        "Total {} (reused {}, inflated {}, thin {}){}\n",
        stats.objects,
        stats.reused,
        stats.inflated,
        stats.thin_deltas,
        if chosen.fast_path {
            ", streamed stored packs"
        } else {
            ""
        }
    ))?;
    crate::metrics::global().pack_generated(
        start.elapsed(),
        stats.objects,
        stats.bytes,
        chosen.fast_path,
    );
    tracing::debug!(
        objects = stats.objects,
        bytes = stats.bytes,
        fast_path = chosen.fast_path,
        elapsed_ms = start.elapsed().as_millis() as u64,
        "pack sent"
    );
    Ok(stats)
}
