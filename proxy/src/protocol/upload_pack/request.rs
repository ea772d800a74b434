//! Parsing upload-pack requests: protocol v2 commands (`ls-refs`, `fetch`) and the v0/v1
//! stateless-rpc request (wants with capabilities, shallow/deepen lines, haves, `done`).
//!
//! Pure functions over a complete, size-bounded request body. Anything unexpected is an error
//! naming the offending line; nothing here touches the store.

use codestorage_store::ObjectId;
use codestorage_store::walk::Filter;

use crate::protocol::pktline::{self, Pkt, Reader};

/// Why a request is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Broken framing.
    #[error(transparent)]
    Pkt(#[from] pktline::Error),
    /// A line this server does not understand in this position.
    #[error("unexpected line: '{0}'")]
    UnexpectedLine(String),
    /// Not a 40-hex object id.
    #[error("invalid object id in '{0}'")]
    BadObjectId(String),
    /// An unknown `command=`.
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// The request has no `command=` line.
    #[error("expected a command")]
    MissingCommand,
    /// The request ended before the closing flush.
    #[error("expected flush after {0}")]
    MissingFlush(&'static str),
    /// Bytes after the end of the request.
    #[error("unexpected data after the end of the request")]
    TrailingData,
    /// A filter spec this server does not implement.
    #[error("unsupported filter '{0}'")]
    UnsupportedFilter(String),
    /// A numeric argument that does not parse.
    #[error("invalid number in '{0}'")]
    BadNumber(String),
    /// The client wants an object format other than SHA-1.
    #[error("unsupported object format '{0}' (this server stores SHA-1 repositories only)")]
    ObjectFormat(String),
    /// `deepen` together with `deepen-since`/`deepen-not`.
    #[error("deepen and deepen-since (or deepen-not) cannot be used together")]
    ConflictingDeepen,
}

type Result<T> = std::result::Result<T, RequestError>;

/// Arguments of `ls-refs`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LsRefs {
    /// Show peeled tag targets.
    pub peel: bool,
    /// Show symbolic ref targets.
    pub symrefs: bool,
    /// Show an unborn `HEAD`.
    pub unborn: bool,
    /// Only refs starting with one of these (all when empty).
    pub prefixes: Vec<String>,
}

/// Which side-band the client asked for (v0).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Sideband {
    /// Raw pack data.
    #[default]
    None,
    /// `side-band`: packets of up to 1000 bytes.
    Small,
    /// `side-band-64k`.
    Large,
}

impl Sideband {
    /// Payload bytes per packet, if any sideband.
    pub fn max_payload(self) -> Option<usize> {
        match self {
            Sideband::None => None,
            Sideband::Small => Some(995),
            Sideband::Large => Some(pktline::MAX_SIDEBAND_DATA),
        }
    }
}

/// Which acknowledgement mode the client asked for (v0).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum MultiAck {
    /// One ACK at most.
    #[default]
    None,
    /// `multi_ack`.
    Plain,
    /// `multi_ack_detailed`.
    Detailed,
}

/// A fetch request, v2 `fetch` or v0 upload-pack.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Objects wanted.
    pub wants: Vec<ObjectId>,
    /// Objects the client has.
    pub haves: Vec<ObjectId>,
    /// The client will send no more haves.
    pub done: bool,
    /// Thin packs are acceptable.
    pub thin_pack: bool,
    /// OFS_DELTA is understood.
    pub ofs_delta: bool,
    /// Suppress progress.
    pub no_progress: bool,
    /// Send annotated tags pointing into the pack.
    pub include_tag: bool,
    /// The client's shallow boundary.
    pub shallow: Vec<ObjectId>,
    /// `deepen <n>`.
    pub depth: Option<u32>,
    /// `deepen-since <time>`.
    pub deepen_since: Option<i64>,
    /// `deepen-not <ref>` lines.
    pub deepen_not: Vec<String>,
    /// Depth counts from the current shallow boundary.
    pub deepen_relative: bool,
    /// `filter <spec>`.
    pub filter: Option<Filter>,
    /// v2 `wait-for-done`.
    pub wait_for_done: bool,
    /// v0: side-band mode.
    pub sideband: Sideband,
    /// v0: acknowledgement mode.
    pub multi_ack: MultiAck,
    /// v0: `no-done`.
    pub no_done: bool,
    /// v0: the request ended right after the want section (a shallow-list-only round).
    pub wants_only: bool,
}

impl Fetch {
    /// Whether any deepen argument was given.
    pub fn deepens(&self) -> bool {
        self.depth.is_some() || self.deepen_since.is_some() || !self.deepen_not.is_empty()
    }
}

/// A v2 command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `ls-refs`.
    LsRefs(LsRefs),
    /// `fetch`.
    Fetch(Fetch),
}

fn oid(text: &str, line: &str) -> Result<ObjectId> {
    let hex = text
        .get(..40)
        .ok_or_else(|| RequestError::BadObjectId(line.into()))?;
    if text.len() != 40 {
        return Err(RequestError::BadObjectId(line.into()));
    }
    ObjectId::from_hex(hex.as_bytes()).map_err(|_| RequestError::BadObjectId(line.into()))
}

fn text<'a>(pkt: &Pkt<'a>) -> Result<&'a str> {
    pkt.text()
        .ok_or_else(|| RequestError::UnexpectedLine(format!("{pkt:?}")))
}

/// Parse a shallow/deepen/filter line shared by v0 and v2. `Ok(false)` if the line is not one.
fn shallow_arg(req: &mut Fetch, line: &str) -> Result<bool> {
    if let Some(rest) = line.strip_prefix("shallow ") {
        req.shallow.push(oid(rest, line)?);
    } else if let Some(rest) = line.strip_prefix("deepen-since ") {
        req.deepen_since = Some(
            rest.parse()
                .map_err(|_| RequestError::BadNumber(line.into()))?,
        );
    } else if let Some(rest) = line.strip_prefix("deepen-not ") {
        if rest.is_empty() {
            return Err(RequestError::UnexpectedLine(line.into()));
        }
        req.deepen_not.push(rest.to_owned());
    } else if let Some(rest) = line.strip_prefix("deepen ") {
        let n: u32 = rest
            .parse()
            .map_err(|_| RequestError::BadNumber(line.into()))?;
        if n == 0 {
            return Err(RequestError::BadNumber(line.into()));
        }
        req.depth = Some(n);
    } else if let Some(rest) = line.strip_prefix("filter ") {
        req.filter =
            Some(Filter::parse(rest).ok_or_else(|| RequestError::UnsupportedFilter(rest.into()))?);
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// Parse a v2 request body (one command, stateless).
pub fn parse_v2(body: &[u8]) -> Result<Command> {
    let mut r = Reader::new(body);
    let first = r.next_pkt()?.ok_or(RequestError::MissingCommand)?;
    let command = text(&first)?
        .strip_prefix("command=")
        .ok_or(RequestError::MissingCommand)?
        .to_owned();
    // Capability lines up to the delimiter (or a flush for a command without arguments).
    let mut has_args = false;
    loop {
        match r
            .next_pkt()?
            .ok_or(RequestError::MissingFlush("capabilities"))?
        {
            Pkt::Delim => {
                has_args = true;
                break;
            }
            Pkt::Flush => break,
            pkt => {
                let line = text(&pkt)?;
                if let Some(format) = line.strip_prefix("object-format=") {
                    if format != "sha1" {
                        return Err(RequestError::ObjectFormat(format.into()));
                    }
                } else if !(line.starts_with("agent=")
                    || line.starts_with("server-option=")
                    || line.starts_with("session-id="))
                {
                    return Err(RequestError::UnexpectedLine(line.into()));
                }
            }
        }
    }
    let mut args = Vec::new();
    if has_args {
        loop {
            match r
                .next_pkt()?
                .ok_or(RequestError::MissingFlush("arguments"))?
            {
                Pkt::Flush => break,
                pkt @ Pkt::Data(_) => args.push(text(&pkt)?),
                other => return Err(RequestError::UnexpectedLine(format!("{other:?}"))),
            }
        }
    }
    if !r.at_end() {
        return Err(RequestError::TrailingData);
    }
    match command.as_str() {
        "ls-refs" => {
            let mut ls = LsRefs::default();
            for line in args {
                match line {
                    "peel" => ls.peel = true,
                    "symrefs" => ls.symrefs = true,
                    "unborn" => ls.unborn = true,
                    _ => match line.strip_prefix("ref-prefix ") {
                        Some(p) => ls.prefixes.push(p.to_owned()),
                        None => return Err(RequestError::UnexpectedLine(line.into())),
                    },
                }
            }
            Ok(Command::LsRefs(ls))
        }
        "fetch" => {
            let mut req = Fetch {
                sideband: Sideband::Large,
                ..Default::default()
            };
            for line in args {
                if let Some(rest) = line.strip_prefix("want ") {
                    req.wants.push(oid(rest, line)?);
                } else if let Some(rest) = line.strip_prefix("have ") {
                    req.haves.push(oid(rest, line)?);
                } else if shallow_arg(&mut req, line)? {
                } else {
                    match line {
                        "thin-pack" => req.thin_pack = true,
                        "ofs-delta" => req.ofs_delta = true,
                        "no-progress" => req.no_progress = true,
                        "include-tag" => req.include_tag = true,
                        "done" => req.done = true,
                        "wait-for-done" => req.wait_for_done = true,
                        "deepen-relative" => req.deepen_relative = true,
                        _ => return Err(RequestError::UnexpectedLine(line.into())),
                    }
                }
            }
            if req.depth.is_some() && (req.deepen_since.is_some() || !req.deepen_not.is_empty()) {
                return Err(RequestError::ConflictingDeepen);
            }
            Ok(Command::Fetch(req))
        }
        other => Err(RequestError::UnknownCommand(other.into())),
    }
}

/// Parse a v0/v1 upload-pack request body (stateless-rpc).
pub fn parse_v0(body: &[u8]) -> Result<Fetch> {
    let mut r = Reader::new(body);
    let mut req = Fetch::default();
    let mut first_want = true;
    let mut filter_cap = false;
    loop {
        let pkt = r.next_pkt()?.ok_or(RequestError::MissingFlush("wants"))?;
        let line = match pkt {
            Pkt::Flush => break,
            Pkt::Data(_) => text(&pkt)?,
            other => return Err(RequestError::UnexpectedLine(format!("{other:?}"))),
        };
        if let Some(rest) = line.strip_prefix("want ") {
            // Not `split_at`: byte 40 may fall inside a character of a malformed line.
            let (hex, caps) = rest
                .split_at_checked(rest.len().min(40))
                .unwrap_or((rest, ""));
            req.wants.push(oid(hex, line)?);
            if first_want {
                first_want = false;
                for cap in caps.split_whitespace() {
                    match cap {
                        "multi_ack_detailed" => req.multi_ack = MultiAck::Detailed,
                        "multi_ack" if req.multi_ack == MultiAck::None => {
                            req.multi_ack = MultiAck::Plain
                        }
                        "no-done" => req.no_done = true,
                        "thin-pack" => req.thin_pack = true,
                        "ofs-delta" => req.ofs_delta = true,
                        "side-band-64k" => req.sideband = Sideband::Large,
                        "side-band" if req.sideband == Sideband::None => {
                            req.sideband = Sideband::Small
                        }
                        "no-progress" => req.no_progress = true,
                        "include-tag" => req.include_tag = true,
                        "deepen-relative" => req.deepen_relative = true,
                        "filter" => filter_cap = true,
                        _ => {}
                    }
                }
            } else if !caps.trim().is_empty() {
                return Err(RequestError::BadObjectId(line.into()));
            }
        } else if line.starts_with("filter ") && !filter_cap {
            return Err(RequestError::UnexpectedLine(format!(
                "{line} (the filter capability was not requested)"
            )));
        } else if !shallow_arg(&mut req, line)? {
            return Err(RequestError::UnexpectedLine(line.into()));
        }
    }
    if req.depth.is_some() && (req.deepen_since.is_some() || !req.deepen_not.is_empty()) {
        return Err(RequestError::ConflictingDeepen);
    }
    if r.at_end() {
        req.wants_only = true;
        return Ok(req);
    }
    loop {
        match r.next_pkt()? {
            None => break,
            Some(Pkt::Flush) => {}
            Some(pkt) => {
                let line = text(&pkt)?;
                if let Some(rest) = line.strip_prefix("have ") {
                    req.haves.push(oid(rest, line)?);
                } else if line == "done" {
                    req.done = true;
                    if !r.at_end() {
                        return Err(RequestError::TrailingData);
                    }
                    break;
                } else {
                    return Err(RequestError::UnexpectedLine(line.into()));
                }
            }
        }
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn body(lines: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            match *l {
                "0000" => pktline::flush(&mut out),
                "0001" => pktline::delim(&mut out),
                l => pktline::line(&mut out, l),
            }
        }
        out
    }

    #[test]
    fn parses_v2_ls_refs() {
        let b = body(&[
            "command=ls-refs",
            "agent=git/2.47",
            "object-format=sha1",
            "0001",
            "peel",
            "symrefs",
            "unborn",
            "ref-prefix HEAD",
            "ref-prefix refs/heads/",
            "0000",
        ]);
        let Command::LsRefs(ls) = parse_v2(&b).expect("parses") else {
            panic!("not ls-refs")
        };
        assert!(ls.peel && ls.symrefs && ls.unborn);
        assert_eq!(ls.prefixes, vec!["HEAD", "refs/heads/"]);
    }

    #[test]
    fn parses_v2_fetch() {
        let want = format!("want {A}");
        let have = format!("have {B}");
        let b = body(&[
            "command=fetch",
            "0001",
            "thin-pack",
            "ofs-delta",
            &want,
            &have,
            "deepen 3",
            "filter blob:none",
            "done",
            "0000",
        ]);
        let Command::Fetch(f) = parse_v2(&b).expect("parses") else {
            panic!("not fetch")
        };
        assert_eq!(f.wants.len(), 1);
        assert_eq!(f.haves.len(), 1);
        assert_eq!(f.depth, Some(3));
        assert_eq!(f.filter, Some(Filter::BlobNone));
        assert!(f.done && f.thin_pack && f.ofs_delta);
    }

    #[test]
    fn rejects_bad_v2_requests() {
        let unknown = body(&["command=frobnicate", "0000"]);
        assert_eq!(
            parse_v2(&unknown),
            Err(RequestError::UnknownCommand("frobnicate".into()))
        );
        let bad_arg = body(&["command=fetch", "0001", "want xyz", "0000"]);
        assert!(matches!(
            parse_v2(&bad_arg),
            Err(RequestError::BadObjectId(_))
        ));
        let no_flush = body(&["command=fetch", "0001", "done"]);
        assert_eq!(
            parse_v2(&no_flush),
            Err(RequestError::MissingFlush("arguments"))
        );
        assert!(matches!(parse_v2(b"00"), Err(RequestError::Pkt(_))));
        let sha256 = body(&["command=ls-refs", "object-format=sha256", "0000"]);
        assert!(matches!(
            parse_v2(&sha256),
            Err(RequestError::ObjectFormat(_))
        ));
        let filter = body(&["command=fetch", "0001", "filter sparse:oid=abc", "0000"]);
        assert!(matches!(
            parse_v2(&filter),
            Err(RequestError::UnsupportedFilter(_))
        ));
    }

    #[test]
    fn a_character_across_the_object_id_end_is_refused() {
        // Found by fuzzing (upload_pack_v0): splitting the id from the capabilities at byte 40
        // panicked when a multi-byte character straddled it.
        let line = format!("want {}\u{254} multi_ack", &A[..39]);
        let req = body(&[&line, "0000"]);
        assert!(matches!(parse_v0(&req), Err(RequestError::BadObjectId(_))));
        let second = format!("want {}\u{254}", &B[..39]);
        let first = format!("want {A}");
        assert!(matches!(
            parse_v0(&body(&[&first, &second, "0000"])),
            Err(RequestError::BadObjectId(_))
        ));
    }

    #[test]
    fn parses_v0_requests() {
        let first = format!(
            "want {A} multi_ack_detailed side-band-64k thin-pack ofs-delta no-done agent=git/2.47"
        );
        let have = format!("have {B}");
        let b = body(&[&first, "deepen 1", "0000", &have, "0000", "done"]);
        let f = parse_v0(&b).expect("parses");
        assert_eq!(f.multi_ack, MultiAck::Detailed);
        assert_eq!(f.sideband, Sideband::Large);
        assert!(f.no_done && f.done && f.thin_pack);
        assert_eq!(f.depth, Some(1));
        assert_eq!(f.haves.len(), 1);
        let only_wants = body(&[&first, "0000"]);
        assert!(parse_v0(&only_wants).expect("parses").wants_only);
        let no_flush = body(&[&first]);
        assert_eq!(
            parse_v0(&no_flush),
            Err(RequestError::MissingFlush("wants"))
        );
    }
}
