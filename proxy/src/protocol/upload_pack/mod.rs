//! The upload-pack engine: serves `git clone` / `git fetch` from the store.
//!
//! Order of operations for one (stateless) request:
//! 1. parse the request (`request`),
//! 2. check every `want` exists and is reachable from the namespace's refs,
//! 3. process `have`s and decide whether to send a pack now (`negotiate`),
//! 4. compute the shallow boundary (`shallow`),
//! 5. choose the objects (`pack::select`: the stored packs as they are when that is exactly the
//!    answer, else a revision walk) and stream them as a pack (`pack::send`); identical
//!    concurrent requests share one generation (`herd`).
//!
//! Protocol v2 lives in `v2`, v0/v1 in `v0`. Everything here is blocking and runs off the async
//! runtime; output goes to any `Write` (the HTTP layer hands in a bounded channel).

pub mod herd;
pub mod negotiate;
pub mod pack;
pub mod request;
pub mod shallow;
pub mod v0;
pub mod v2;

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use codestorage_store::walk::unreachable_wants;
use codestorage_store::{Namespace, ObjectId, StoreError, View};

use request::RequestError;
use shallow::ShallowError;

/// What the engine serves a request from.
pub struct Context<'a> {
    /// The repository snapshot.
    pub view: Arc<View>,
    /// The namespace whose refs are visible.
    pub ns: Namespace,
    /// Set when the client went away or the server shuts down.
    pub interrupt: &'a AtomicBool,
    /// A warning to show the client as `remote:` progress (e.g. stale mirror).
    pub notice: Option<String>,
    /// Former ref values still fetchable: a stateless client may want what it saw in an
    /// advertisement made just before a ref moved.
    pub recent_tips: Vec<ObjectId>,
    /// Where identical concurrent requests share their pack generation (`None`: never shared).
    pub share: Option<Share>,
}

/// What a request needs to share its pack generation.
pub struct Share {
    /// The registry of spools.
    pub herd: Arc<herd::Herd>,
    /// The repository's id (names can be reused; ids cannot).
    pub repo: String,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A want the client may not have.
    #[error("upload-pack: not our ref {0}")]
    NotOurRef(ObjectId),
    /// The shallow request cannot be served.
    #[error(transparent)]
    Shallow(#[from] ShallowError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing to the client failed (it went away).
    #[error("client connection: {0}")]
    Io(#[from] io::Error),
    /// The shared generation this request was reading failed.
    #[error("pack generation failed: {0}")]
    Generation(String),
}

impl Error {
    /// Whether this is the client's fault (logged at debug, not as a server error).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::Request(_)
                | Error::NotOurRef(_)
                | Error::Io(_)
                | Error::Shallow(ShallowError::UnknownRef(_))
        ) || matches!(self, Error::Shallow(ShallowError::NothingSelected))
    }
}

/// The capabilities this server offers, by name, for `agent=` lines.
pub fn agent() -> String {
    format!("codestorage/{}", env!("CARGO_PKG_VERSION"))
}

/// Refuse wants that do not exist or are not reachable from the namespace's refs.
fn check_wants(ctx: &Context<'_>, wants: &[ObjectId]) -> Result<(), Error> {
    let refs = ctx.view.refs(ctx.ns);
    let tips: Vec<ObjectId> = refs
        .values()
        .filter_map(|v| v.id())
        .chain(ctx.recent_tips.iter().copied())
        .collect();
    let tip_set: std::collections::HashSet<ObjectId> = tips.iter().copied().collect();
    let closed = ctx.view.catalog.is_closed(ctx.ns);
    let mut doubtful = Vec::new();
    for w in wants {
        if tip_set.contains(w) {
            continue;
        }
        if !ctx.view.packs.contains(w) {
            return Err(Error::NotOurRef(*w));
        }
        // In a closed namespace every object of its packs is reachable from its refs.
        if closed && ctx.view.packs.contains_in(w, ctx.ns) {
            continue;
        }
        doubtful.push(*w);
    }
    if doubtful.is_empty() {
        return Ok(());
    }
    let mut reader = ctx.view.reader();
    let bad = unreachable_wants(&mut reader, &tips, &doubtful, ctx.interrupt)?;
    match bad.first() {
        Some(id) => Err(Error::NotOurRef(*id)),
        None => Ok(()),
    }
}

/// A writer that remembers whether anything was written, so errors are reported as an `ERR`
/// packet only while the response has not started.
pub(crate) struct Counting<'w> {
    inner: &'w mut dyn io::Write,
    written: u64,
}

impl<'w> Counting<'w> {
    pub(crate) fn new(inner: &'w mut dyn io::Write) -> Self {
        Counting { inner, written: 0 }
    }
}

impl io::Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Report a failed request to the client (an `ERR` packet, if nothing was sent yet).
pub(crate) fn report(result: Result<(), Error>, out: &mut Counting<'_>) -> Result<(), Error> {
    if let Err(e) = &result
        && !matches!(e, Error::Io(_))
        && out.written == 0
    {
        let mut err = Vec::new();
        crate::protocol::pktline::err(&mut err, &e.to_string());
        let _ = io::Write::write_all(out, &err);
    }
    result
}
