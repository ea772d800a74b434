//! The byte-level parts of write-through pushes, over plain bytes (no HTTP here):
//! - the request head sent upstream (the accepted commands, the client's capabilities, push
//!   options),
//! - [`Tee`]: the pack streaming to the local quarantine and to the upstream at once, with its
//!   last bytes (at least the 20-byte trailer) held back until local checks pass,
//! - [`ResponseReader`]: the upstream's answer taken apart into relayed progress and the
//!   report-status lines, and [`merge`] of our own `ng` lines into that report.

use std::io::{self, Read};

use super::{Caps, Command, RefStatus, Report};
use crate::protocol::pktline;

/// Bytes held back from the upstream until the local checks pass: the pack trailer.
pub const HOLD_BACK: usize = 20;

/// Capabilities of ours that may be passed to an upstream that advertised `upstream`.
pub fn common_caps(upstream: &[String]) -> String {
    super::CAPABILITIES
        .split(' ')
        .filter(|c| upstream.iter().any(|u| u == c))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The capabilities named in a receive-pack advertisement's first line.
pub fn advertised_caps(advertisement: &[u8]) -> Vec<String> {
    let mut r = pktline::Reader::new(advertisement);
    while let Ok(Some(pkt)) = r.next_pkt() {
        if let pktline::Pkt::Data(d) = pkt {
            if d.starts_with(b"#") {
                continue;
            }
            if let Some(nul) = d.iter().position(|b| *b == 0) {
                return String::from_utf8_lossy(&d[nul + 1..])
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
            }
            return Vec::new();
        }
    }
    Vec::new()
}

/// The request head for the upstream: `commands` (those we accepted), with the client's
/// capabilities on the first line, then the push options.
pub fn upstream_head(
    commands: &[&Command],
    caps: &Caps,
    push_options: &[String],
    agent: &str,
) -> Vec<u8> {
    let mut wanted = vec!["report-status"];
    if caps.sideband {
        wanted.push("side-band-64k");
    }
    if caps.quiet {
        wanted.push("quiet");
    }
    if caps.atomic {
        wanted.push("atomic");
    }
    if caps.push_options {
        wanted.push("push-options");
    }
    let mut out = Vec::new();
    for (i, c) in commands.iter().enumerate() {
        let mut line = format!("{} {} {}", c.old, c.new, c.name).into_bytes();
        if i == 0 {
            line.push(0);
            line.extend_from_slice(format!("{} agent={agent}", wanted.join(" ")).as_bytes());
        }
        line.push(b'\n');
        pktline::data(&mut out, &line);
    }
    pktline::flush(&mut out);
    if caps.push_options {
        for o in push_options {
            pktline::line(&mut out, o);
        }
        pktline::flush(&mut out);
    }
    out
}

/// A reader over the client's pack that hands every byte it reads to `sink` as well, except the
/// last [`HOLD_BACK`] bytes, which [`Tee::release`] sends only once the caller says so.
pub struct Tee<R, S> {
    inner: R,
    sink: S,
    held: Vec<u8>,
    /// Set when the sink failed (the upstream went away); reading goes on for the local side.
    pub sink_failed: Option<io::Error>,
    /// Bytes read from the client.
    pub bytes: u64,
}

impl<R: Read, S: FnMut(Vec<u8>) -> io::Result<()>> Tee<R, S> {
    /// Tee `inner` into `sink`.
    pub fn new(inner: R, sink: S) -> Self {
        Tee {
            inner,
            sink,
            held: Vec::with_capacity(64 << 10),
            sink_failed: None,
            bytes: 0,
        }
    }

    fn pass(&mut self, data: Vec<u8>) {
        if self.sink_failed.is_none()
            && let Err(e) = (self.sink)(data)
        {
            self.sink_failed = Some(e);
        }
    }

    /// Send the held-back bytes: local checks passed.
    pub fn release(mut self) -> io::Result<()> {
        let held = std::mem::take(&mut self.held);
        if !held.is_empty() {
            self.pass(held);
        }
        match self.sink_failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<R: Read, S: FnMut(Vec<u8>) -> io::Result<()>> Read for Tee<R, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        self.held.extend_from_slice(&buf[..n]);
        if self.held.len() > HOLD_BACK + (32 << 10) {
            let keep = self.held.split_off(self.held.len() - HOLD_BACK);
            let send = std::mem::replace(&mut self.held, keep);
            self.pass(send);
        }
        Ok(n)
    }
}

/// What the upstream said, taken apart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpstreamReport {
    /// The report-status pkt-lines (payloads, without the final flush).
    pub lines: Vec<String>,
    /// A fatal error the upstream sent on band 3 or as `ERR`.
    pub error: Option<String>,
}

impl UpstreamReport {
    /// The status the upstream gave `name`: `None` if it did not mention it.
    pub fn status_of(&self, name: &str) -> Option<RefStatus> {
        self.lines.iter().find_map(|l| {
            if let Some(rest) = l.strip_prefix("ok ") {
                (rest == name).then_some(RefStatus::Ok)
            } else if let Some(rest) = l.strip_prefix("ng ") {
                let (n, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                (n == name).then(|| RefStatus::Ng(reason.to_owned()))
            } else {
                None
            }
        })
    }

    /// Whether the upstream renamed `name` (report-status-v2 `option refname`): the local
    /// update is then left to the next sync.
    pub fn rewritten(&self, name: &str) -> bool {
        let mut current = None;
        for l in &self.lines {
            if let Some(rest) = l.strip_prefix("ok ") {
                current = Some(rest);
            } else if l.starts_with("option refname ") && current == Some(name) {
                return true;
            }
        }
        false
    }

    /// The unpack status line's error, if any.
    pub fn unpack_error(&self) -> Option<String> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix("unpack "))
            .filter(|s| *s != "ok")
            .map(str::to_owned)
    }
}

/// Reads the upstream's response: relays progress (band 2) to `relay` as it comes, collects
/// the report (band 1, or plain pkt-lines without sideband) and errors (band 3, `ERR`).
pub fn read_response(
    r: &mut dyn Read,
    sideband: bool,
    relay: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> Result<UpstreamReport, pktline::ReadError> {
    let mut report = UpstreamReport::default();
    let mut buf = Vec::new();
    let mut band1 = Vec::new();
    loop {
        match pktline::read(r, &mut buf)? {
            pktline::Read::Eof | pktline::Read::Flush => break,
            pktline::Read::Data => {}
            _ => continue,
        }
        if !sideband {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches('\n')
                .to_owned();
            if let Some(e) = line.strip_prefix("ERR ") {
                report.error = Some(e.to_owned());
                break;
            }
            report.lines.push(line);
            continue;
        }
        match buf.first() {
            Some(1) => band1.extend_from_slice(&buf[1..]),
            Some(2) => {
                let mut pkt = Vec::with_capacity(buf.len() + 4);
                pktline::data(&mut pkt, &buf);
                // A client that went away does not stop us from finishing the push.
                let _ = relay(&pkt);
            }
            Some(3) => {
                report.error = Some(String::from_utf8_lossy(&buf[1..]).trim_end().to_owned());
            }
            _ => {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches('\n')
                    .to_owned();
                if let Some(e) = line.strip_prefix("ERR ") {
                    report.error = Some(e.to_owned());
                    break;
                }
            }
        }
    }
    if sideband {
        let mut inner = pktline::Reader::new(&band1);
        while let Ok(Some(pkt)) = inner.next_pkt() {
            match pkt.text() {
                Some(t) => report.lines.push(t.to_owned()),
                None => break,
            }
        }
    }
    Ok(report)
}

/// The report for the client: the upstream's lines as they were, plus ours for the refs
/// refused here (and for refs the upstream did not mention).
pub fn merge(upstream: &UpstreamReport, ours: &[(String, RefStatus)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut saw_unpack = false;
    for line in &upstream.lines {
        saw_unpack |= line.starts_with("unpack ");
        pktline::line(&mut out, line);
    }
    if !saw_unpack {
        let mut fixed = Vec::new();
        pktline::line(&mut fixed, "unpack ok");
        fixed.extend_from_slice(&out);
        out = fixed;
    }
    for (name, status) in ours {
        if let RefStatus::Ng(reason) = status {
            pktline::line(&mut out, &format!("ng {name} {reason}"));
        }
    }
    pktline::flush(&mut out);
    out
}

/// A report for when the upstream could not be asked at all.
pub fn failed_report(commands: &[Command], reason: &str) -> Report {
    Report {
        unpack_error: Some(reason.to_owned()),
        refs: commands
            .iter()
            .map(|c| (c.name.clone(), RefStatus::Ng(reason.to_owned())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tee_holds_back_the_trailer_until_released() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut sent = Vec::new();
        {
            let mut tee = Tee::new(io::Cursor::new(data.clone()), |chunk: Vec<u8>| {
                sent.extend_from_slice(&chunk);
                Ok(())
            });
            let mut local = Vec::new();
            tee.read_to_end(&mut local).expect("read");
            assert_eq!(local, data, "the local side sees everything");
            assert!(tee.held.len() >= HOLD_BACK);
            let held = tee.held.len();
            drop(tee);
            assert_eq!(sent.len(), data.len() - held, "the tail was not sent");
        }
        sent.clear();
        let mut tee = Tee::new(io::Cursor::new(data.clone()), |chunk: Vec<u8>| {
            sent.extend_from_slice(&chunk);
            Ok(())
        });
        io::copy(&mut tee, &mut io::sink()).expect("read");
        tee.release().expect("release");
        assert_eq!(sent, data, "after release the upstream has it all");
    }

    #[test]
    fn response_reader_relays_progress_and_collects_the_report() {
        let mut report = Vec::new();
        pktline::line(&mut report, "unpack ok");
        pktline::line(&mut report, "ok refs/heads/main");
        pktline::line(&mut report, "ng refs/heads/x pre-receive hook declined");
        pktline::flush(&mut report);
        let mut resp = Vec::new();
        pktline::band(&mut resp, pktline::Band::Progress, b"hook says hi\n", 1000);
        pktline::band(&mut resp, pktline::Band::Data, &report[..10], 1000);
        pktline::band(&mut resp, pktline::Band::Data, &report[10..], 1000);
        pktline::flush(&mut resp);
        let mut relayed = Vec::new();
        let got = read_response(&mut io::Cursor::new(resp), true, &mut |b| {
            relayed.extend_from_slice(b);
            Ok(())
        })
        .expect("parses");
        assert!(String::from_utf8_lossy(&relayed).contains("hook says hi"));
        assert_eq!(got.status_of("refs/heads/main"), Some(RefStatus::Ok));
        assert_eq!(
            got.status_of("refs/heads/x"),
            Some(RefStatus::Ng("pre-receive hook declined".into()))
        );
        let merged = merge(
            &got,
            &[("refs/heads/y".into(), RefStatus::Ng("denied here".into()))],
        );
        let text = String::from_utf8_lossy(&merged);
        assert!(
            text.contains("ng refs/heads/y denied here") && text.contains("ok refs/heads/main")
        );
    }

    #[test]
    fn caps_are_intersected_with_the_upstreams() {
        let mut adv = Vec::new();
        pktline::line(&mut adv, "# service=git-receive-pack");
        pktline::flush(&mut adv);
        pktline::data(&mut adv, b"0000000000000000000000000000000000000000 capabilities^{}\0report-status delete-refs ofs-delta agent=x\n");
        let caps = advertised_caps(&adv);
        assert_eq!(common_caps(&caps), "report-status delete-refs ofs-delta");
    }
}
