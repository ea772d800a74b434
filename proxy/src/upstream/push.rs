//! The native push client: the server updating an upstream by itself (REST branch operations,
//! ephemeral promotion), speaking receive-pack over HTTP with a pack built from our store. gix
//! has no push and the server runs no `git`.
//!
//! Order: read the upstream's advertisement; compute the objects the upstream lacks (wants: the
//! new ids; haves: the upstream's tips we also have); stream commands plus a thin pack; parse
//! the report-status.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use codestorage_store::packout::{PackOptions, Selection, write_pack};
use codestorage_store::walk::{WalkSpec, walk_objects};
use codestorage_store::{ObjectId, View};
use tokio::sync::mpsc;

use super::{UpstreamClient, UpstreamError};
use crate::protocol::pktline;
use crate::protocol::receive_pack::forward::{advertised_caps, read_response};
use crate::protocol::receive_pack::{RefStatus, Report};

/// One ref change to make upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushUpdate {
    /// Full ref name.
    pub name: String,
    /// The value the upstream must hold for the update to apply; `None` uses whatever the
    /// upstream advertises (a forced update), `Some(null)` requires the ref to be absent.
    pub expect: Option<ObjectId>,
    /// The new value; `None` deletes the ref.
    pub new: Option<ObjectId>,
}

/// Why a push could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Talking to the upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The store could not produce the pack.
    #[error("building the pack: {0}")]
    Pack(String),
    /// The upstream's answer does not parse.
    #[error("unreadable answer from the upstream: {0}")]
    Protocol(String),
}

/// The refs in a receive-pack advertisement.
pub fn advertised_refs(advertisement: &[u8]) -> BTreeMap<String, ObjectId> {
    let mut refs = BTreeMap::new();
    let mut r = pktline::Reader::new(advertisement);
    while let Ok(Some(pkt)) = r.next_pkt() {
        let pktline::Pkt::Data(d) = pkt else { continue };
        let line = match d.iter().position(|b| *b == 0) {
            Some(nul) => &d[..nul],
            None => d,
        };
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end();
        if line.starts_with('#') {
            continue;
        }
        if let Some((hex, name)) = line.split_once(' ')
            && name.starts_with("refs/")
            && let Ok(id) = ObjectId::from_hex(hex.as_bytes())
        {
            refs.insert(name.to_owned(), id);
        }
    }
    refs
}

fn null() -> ObjectId {
    ObjectId::null(gix_hash::Kind::Sha1)
}

/// A `Write` into the request body channel.
struct BodyWriter(mpsc::Sender<Result<Bytes, io::Error>>, Vec<u8>);

impl Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.1.extend_from_slice(data);
        if self.1.len() >= 64 << 10 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.1.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.1));
        self.0
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upstream stopped reading"))
    }
}

impl UpstreamClient {
    /// Push `updates` from `view` to the upstream `target`; `atomic` asks for all or nothing.
    pub async fn push(
        &self,
        target: &super::UpstreamTarget,
        view: Arc<View>,
        updates: Vec<PushUpdate>,
        atomic: bool,
    ) -> Result<Report, PushError> {
        let advertisement = self.receive_pack_advertisement(target).await?;
        let theirs = advertised_refs(&advertisement);
        let caps = advertised_caps(&advertisement);
        let mut wanted = vec!["report-status".to_owned()];
        if atomic && caps.iter().any(|c| c == "atomic") {
            wanted.push("atomic".into());
        }
        if caps.iter().any(|c| c == "ofs-delta") {
            wanted.push("ofs-delta".into());
        }
        let ofs_delta = wanted.iter().any(|c| c == "ofs-delta");
        wanted.push(format!("agent={}", crate::protocol::upload_pack::agent()));

        let mut head = Vec::new();
        for (i, u) in updates.iter().enumerate() {
            let old = u
                .expect
                .or_else(|| theirs.get(&u.name).copied())
                .unwrap_or_else(null);
            let new = u.new.unwrap_or_else(null);
            let mut line = format!("{old} {new} {}", u.name).into_bytes();
            if i == 0 {
                line.push(0);
                line.extend_from_slice(wanted.join(" ").as_bytes());
            }
            line.push(b'\n');
            pktline::data(&mut head, &line);
        }
        pktline::flush(&mut head);

        let wants: Vec<ObjectId> = updates.iter().filter_map(|u| u.new).collect();
        let haves: Vec<ObjectId> = theirs
            .values()
            .copied()
            .filter(|id| view.packs.contains(id))
            .collect();
        let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(8);
        let producer = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut out = BodyWriter(tx, head);
            if !wants.is_empty() {
                let interrupt = AtomicBool::new(false);
                let mut reader = view.reader();
                let spec = WalkSpec {
                    wants,
                    haves,
                    ..Default::default()
                };
                let walked =
                    walk_objects(&mut reader, &spec, &interrupt).map_err(|e| e.to_string())?;
                let client_has = walked.client_has;
                write_pack(
                    &view.packs,
                    Selection::Objects(walked.objects.into_iter().collect()),
                    &|id| client_has.contains(id),
                    PackOptions {
                        ofs_delta,
                        thin: true,
                    },
                    &mut out,
                    &mut |_, _| {},
                )
                .map_err(|e| e.to_string())?;
            }
            out.flush().map_err(|e| e.to_string())
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let response = self.receive_pack(target, stream).await;
        let produced = producer.await.map_err(|e| PushError::Pack(e.to_string()))?;
        let response = response?;
        produced.map_err(PushError::Pack)?;
        let body = response.bytes().await.map_err(|e| {
            PushError::Upstream(UpstreamError::Unreachable(e.without_url().to_string()))
        })?;
        let upstream = read_response(&mut io::Cursor::new(body.as_ref()), false, &mut |_| Ok(()))
            .map_err(|e| PushError::Protocol(e.to_string()))?;
        if let Some(e) = upstream.error {
            return Err(PushError::Protocol(e));
        }
        Ok(Report {
            unpack_error: upstream.unpack_error(),
            refs: updates
                .iter()
                .map(|u| {
                    let status = upstream.status_of(&u.name).unwrap_or_else(|| {
                        RefStatus::Ng("the upstream did not report on this ref".into())
                    });
                    (u.name.clone(), status)
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_refs_from_an_advertisement() {
        let mut adv = Vec::new();
        pktline::line(&mut adv, "# service=git-receive-pack");
        pktline::flush(&mut adv);
        pktline::data(
            &mut adv,
            b"1111111111111111111111111111111111111111 refs/heads/main\0report-status\n",
        );
        pktline::line(
            &mut adv,
            "2222222222222222222222222222222222222222 refs/tags/v1",
        );
        pktline::flush(&mut adv);
        let refs = advertised_refs(&adv);
        assert_eq!(refs.len(), 2);
        assert!(refs.contains_key("refs/tags/v1"));
        let empty = {
            let mut a = Vec::new();
            pktline::data(
                &mut a,
                b"0000000000000000000000000000000000000000 capabilities^{}\0report-status\n",
            );
            a
        };
        assert!(advertised_refs(&empty).is_empty());
    }
}
