//! The receive-pack engine (protocol v0/v1; there is no v2 push): the ref advertisement, the
//! command list and push options, and the report-status answer.
//!
//! Order of operations for one push:
//! 1. read the commands and options from the request stream (`read_request`),
//! 2. refuse commands that are invalid here (bad ref names, `HEAD`),
//! 3. ingest the pack into a quarantine and verify it (`local`), or tee it to the upstream
//!    (`forward`, for mirrors),
//! 4. move refs by compare-and-swap and report per ref (`Report`).
//!
//! The pack is never held in memory: it streams from the request into the quarantine.

pub mod forward;
pub mod local;

use std::io::{self, Write};

use codestorage_store::{ObjectId, RefTable, RefValue, refs};

use crate::protocol::pktline::{self, Band};

/// Capabilities advertised by receive-pack.
pub const CAPABILITIES: &str = "report-status report-status-v2 delete-refs side-band-64k quiet atomic ofs-delta push-options object-format=sha1";

/// One ref update requested by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The value the client believes the ref has (null: the ref must not exist).
    pub old: ObjectId,
    /// The value to set (null: delete the ref).
    pub new: ObjectId,
    /// The full ref name.
    pub name: String,
}

impl Command {
    /// Whether this deletes the ref.
    pub fn is_delete(&self) -> bool {
        self.new.is_null()
    }
}

/// What the client asked for on the first command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    /// `report-status` or `report-status-v2`.
    pub report_status: bool,
    /// `side-band-64k`.
    pub sideband: bool,
    /// `quiet`: no progress.
    pub quiet: bool,
    /// `atomic`: all or nothing.
    pub atomic: bool,
    /// `push-options`: options follow the commands.
    pub push_options: bool,
    /// The client's `agent=`.
    pub agent: Option<String>,
}

/// A parsed push request (everything before the pack).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The commands, in order.
    pub commands: Vec<Command>,
    /// Capabilities.
    pub caps: Caps,
    /// `git push -o` values.
    pub push_options: Vec<String>,
    /// `shallow` lines of a shallow client.
    pub shallow: Vec<ObjectId>,
    /// The raw bytes of the command section and options, exactly as received (for forwarding).
    pub raw: Vec<u8>,
}

impl Request {
    /// Whether a pack follows (any command that is not a delete).
    pub fn expects_pack(&self) -> bool {
        self.commands.iter().any(|c| !c.is_delete())
    }
}

/// Why a push request is malformed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Framing or I/O.
    #[error(transparent)]
    Read(#[from] pktline::ReadError),
    /// A command line that does not parse.
    #[error("invalid command line: '{0}'")]
    BadCommand(String),
    /// The client wants another object format.
    #[error("unsupported object format '{0}'")]
    ObjectFormat(String),
    /// More commands than allowed.
    #[error("too many ref updates in one push (at most {0})")]
    TooManyCommands(usize),
    /// The request ended early.
    #[error("the push request ended before its command list was complete")]
    Truncated,
}

fn parse_id(s: &str, line: &str) -> Result<ObjectId, RequestError> {
    if s.len() != 40 {
        return Err(RequestError::BadCommand(line.into()));
    }
    ObjectId::from_hex(s.as_bytes()).map_err(|_| RequestError::BadCommand(line.into()))
}

/// Read the command list (and push options) from the start of a push request. Stops right
/// before the pack; `max_commands` bounds the list.
pub fn read_request(r: &mut dyn io::Read, max_commands: usize) -> Result<Request, RequestError> {
    let mut req = Request::default();
    read_into(r, max_commands, &mut req)?;
    Ok(req)
}

/// [`read_request`], and on failure the answer to send: the error in the framing the client
/// asked for before it went wrong (sideband 3 after `side-band-64k`, else an `ERR` pkt-line),
/// so git prints it rather than a protocol error.
pub fn read_request_or_refusal(
    r: &mut dyn io::Read,
    max_commands: usize,
) -> Result<Request, (RequestError, Vec<u8>)> {
    let mut req = Request::default();
    match read_into(r, max_commands, &mut req) {
        Ok(()) => Ok(req),
        Err(e) => {
            let mut out = Vec::new();
            if req.caps.sideband {
                let msg = format!("error: {e}\n");
                pktline::band(
                    &mut out,
                    pktline::Band::Error,
                    msg.as_bytes(),
                    pktline::MAX_SIDEBAND_DATA,
                );
                pktline::flush(&mut out);
            } else {
                pktline::err(&mut out, &e.to_string());
            }
            Err((e, out))
        }
    }
}

fn read_into(
    r: &mut dyn io::Read,
    max_commands: usize,
    req: &mut Request,
) -> Result<(), RequestError> {
    let mut buf = Vec::new();
    let mut first = true;
    loop {
        match pktline::read(r, &mut buf)? {
            pktline::Read::Flush => {
                req.raw.extend_from_slice(b"0000");
                break;
            }
            pktline::Read::Eof => {
                if req.commands.is_empty() && first {
                    return Ok(());
                }
                return Err(RequestError::Truncated);
            }
            pktline::Read::Data => {}
            _ => return Err(RequestError::BadCommand("unexpected delimiter".into())),
        }
        pktline::data(&mut req.raw, &buf);
        let (text, caps) = match buf.iter().position(|b| *b == 0) {
            Some(nul) if first => (&buf[..nul], Some(&buf[nul + 1..])),
            _ => (&buf[..], None),
        };
        let line = std::str::from_utf8(text)
            .map_err(|_| RequestError::BadCommand(String::from_utf8_lossy(text).into_owned()))?
            .trim_end_matches('\n');
        if let Some(caps) = caps {
            let caps = String::from_utf8_lossy(caps);
            for cap in caps.split_whitespace() {
                match cap {
                    "report-status" | "report-status-v2" => req.caps.report_status = true,
                    "side-band-64k" => req.caps.sideband = true,
                    "quiet" => req.caps.quiet = true,
                    "atomic" => req.caps.atomic = true,
                    "push-options" => req.caps.push_options = true,
                    _ => {
                        if let Some(a) = cap.strip_prefix("agent=") {
                            req.caps.agent = Some(a.to_owned());
                        } else if let Some(f) = cap.strip_prefix("object-format=")
                            && f != "sha1"
                        {
                            return Err(RequestError::ObjectFormat(f.to_owned()));
                        }
                    }
                }
            }
        }
        first = false;
        if let Some(rest) = line.strip_prefix("shallow ") {
            req.shallow.push(parse_id(rest, line)?);
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(RequestError::BadCommand(line.into()));
        };
        if req.commands.len() >= max_commands {
            return Err(RequestError::TooManyCommands(max_commands));
        }
        req.commands.push(Command {
            old: parse_id(old, line)?,
            new: parse_id(new, line)?,
            name: name.to_owned(),
        });
    }
    if req.caps.push_options && !req.commands.is_empty() {
        loop {
            match pktline::read(r, &mut buf)? {
                pktline::Read::Flush => {
                    req.raw.extend_from_slice(b"0000");
                    break;
                }
                pktline::Read::Data => {
                    pktline::data(&mut req.raw, &buf);
                    req.push_options.push(
                        String::from_utf8_lossy(&buf)
                            .trim_end_matches('\n')
                            .to_owned(),
                    );
                    if req.push_options.len() > max_commands {
                        return Err(RequestError::TooManyCommands(max_commands));
                    }
                }
                _ => return Err(RequestError::Truncated),
            }
        }
    }
    Ok(())
}

/// The receive-pack ref advertisement (without the smart-HTTP `# service=` preamble).
pub fn advertise(table: &RefTable) -> Vec<u8> {
    advertise_with(table, CAPABILITIES)
}

/// The advertisement with the capability list `caps` (for mirrors: ours ∩ the upstream's).
pub fn advertise_with(table: &RefTable, caps: &str) -> Vec<u8> {
    let caps = format!("{caps} agent={}", crate::protocol::upload_pack::agent());
    let lines: Vec<(ObjectId, String)> = table
        .iter()
        .filter(|(name, _)| name.as_str() != "HEAD")
        .filter_map(|(name, v)| match v {
            RefValue::Direct(id) => Some((*id, name.clone())),
            RefValue::Symbolic(_) => refs::resolve(table, name).map(|id| (id, name.clone())),
        })
        .collect();
    crate::protocol::ref_advertisement(&lines, &caps)
}

/// Why a ref cannot be updated here, before any object is looked at.
pub fn refuse_name(cmd: &Command) -> Option<&'static str> {
    if cmd.name == "HEAD" || !cmd.name.starts_with("refs/") || !refs::valid_ref_name(&cmd.name) {
        return Some("funny refname");
    }
    if cmd.old.is_null() && cmd.new.is_null() {
        return Some("nothing to delete");
    }
    None
}

/// The per-ref outcome of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefStatus {
    /// Updated.
    Ok,
    /// Refused, with the reason.
    Ng(String),
}

/// The report-status answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `None` = "unpack ok", else the unpack error.
    pub unpack_error: Option<String>,
    /// Per command, in order.
    pub refs: Vec<(String, RefStatus)>,
}

impl Report {
    /// The report as pkt-lines (ending with a flush).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.unpack_error {
            None => pktline::line(&mut out, "unpack ok"),
            Some(e) => pktline::line(&mut out, &format!("unpack {}", one_line(e))),
        }
        for (name, status) in &self.refs {
            match status {
                RefStatus::Ok => pktline::line(&mut out, &format!("ok {name}")),
                RefStatus::Ng(reason) => {
                    pktline::line(&mut out, &format!("ng {name} {}", one_line(reason)))
                }
            }
        }
        pktline::flush(&mut out);
        out
    }

    /// Write the report as the client asked: inside side-band 1 (then a flush), or plain.
    pub fn send(&self, caps: &Caps, out: &mut dyn Write) -> io::Result<()> {
        if !caps.report_status {
            return Ok(());
        }
        let report = self.encode();
        if caps.sideband {
            let mut framed = Vec::with_capacity(report.len() + 16);
            pktline::band(&mut framed, Band::Data, &report, pktline::MAX_SIDEBAND_DATA);
            pktline::flush(&mut framed);
            out.write_all(&framed)?;
        } else {
            out.write_all(&report)?;
        }
        out.flush()
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// How a command changes its ref, as ref policies see it; `None` while the new commit is not
/// available yet (it is in a pack still to come).
pub fn change_of(
    cmd: &Command,
    reader: &mut codestorage_store::ObjectReader,
) -> Result<Option<crate::auth::policy::Change>, codestorage_store::StoreError> {
    use crate::auth::policy::Change;
    if cmd.is_delete() {
        return Ok(Some(Change::Delete));
    }
    if cmd.old.is_null() {
        return Ok(Some(Change::Create));
    }
    if !reader.contains(&cmd.new) {
        return Ok(None);
    }
    Ok(Some(
        if codestorage_store::repo::is_ancestor(reader, cmd.old, cmd.new)? {
            Change::FastForward
        } else {
            Change::NonFastForward
        },
    ))
}

/// Check every command against `policy` where that is possible now: refusals by name and by
/// kind of change. Commands whose outcome needs objects not yet received come back as `None`.
pub fn check_policy(
    commands: &[Command],
    policy: &crate::auth::policy::Policy,
    reader: &mut codestorage_store::ObjectReader,
) -> Vec<Option<Result<(), String>>> {
    commands
        .iter()
        .map(|c| {
            if policy.is_empty() {
                return Some(Ok(()));
            }
            match change_of(c, reader) {
                Ok(Some(change)) => Some(policy.check(&c.name, change)),
                Ok(None) => {
                    // Whatever the kind of change, some rules decide already.
                    let any = [
                        crate::auth::policy::Change::FastForward,
                        crate::auth::policy::Change::NonFastForward,
                    ]
                    .map(|ch| policy.check(&c.name, ch));
                    match any {
                        [Ok(()), Ok(())] => Some(Ok(())),
                        [Err(e), Err(_)] => Some(Err(e)),
                        _ => None,
                    }
                }
                Err(e) => Some(Err(format!("cannot check the ref policy: {e}"))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const Z: &str = "0000000000000000000000000000000000000000";

    #[test]
    fn refusals_use_the_framing_the_client_asked_for() {
        for (caps, sideband) in [
            ("report-status side-band-64k", true),
            ("report-status", false),
        ] {
            let mut input = Vec::new();
            pktline::data(
                &mut input,
                format!("{Z} {A} refs/heads/a\0{caps}\n").as_bytes(),
            );
            pktline::line(&mut input, &format!("{Z} {A} refs/heads/b"));
            pktline::flush(&mut input);
            let (e, answer) =
                read_request_or_refusal(&mut std::io::Cursor::new(input), 1).expect_err("too many");
            assert!(matches!(e, RequestError::TooManyCommands(1)));
            // A pkt-line whose payload starts with band 3, or an ERR line.
            assert_eq!(answer[4] == 3, sideband, "{answer:?}");
            assert_eq!(answer[4..].starts_with(b"ERR "), !sideband, "{answer:?}");
        }
    }

    #[test]
    fn reads_commands_caps_and_options_and_stops_before_the_pack() {
        let mut input = Vec::new();
        let first = format!(
            "{Z} {A} refs/heads/main\0report-status side-band-64k atomic push-options agent=git/2.47\n"
        );
        pktline::data(&mut input, first.as_bytes());
        pktline::line(&mut input, &format!("{A} {Z} refs/heads/old"));
        pktline::flush(&mut input);
        pktline::line(&mut input, "ci.skip");
        pktline::flush(&mut input);
        input.extend_from_slice(b"PACK...");
        let mut r = std::io::Cursor::new(input);
        let req = read_request(&mut r, 10).expect("parses");
        assert_eq!(req.commands.len(), 2);
        assert!(
            req.caps.atomic && req.caps.sideband && req.caps.report_status && req.caps.push_options
        );
        assert_eq!(req.push_options, vec!["ci.skip"]);
        assert!(req.commands[1].is_delete());
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut rest).expect("rest");
        assert_eq!(rest, b"PACK...");
    }

    #[test]
    fn rejects_malformed_commands() {
        for bad in [
            "garbage",
            &format!("{A} refs/heads/x"),
            &format!("{A} zz refs/heads/x"),
        ] {
            let mut input = Vec::new();
            pktline::line(&mut input, bad);
            pktline::flush(&mut input);
            assert!(
                read_request(&mut std::io::Cursor::new(input), 10).is_err(),
                "{bad}"
            );
        }
        let mut many = Vec::new();
        for i in 0..3 {
            pktline::line(&mut many, &format!("{Z} {A} refs/heads/b{i}"));
        }
        pktline::flush(&mut many);
        assert!(matches!(
            read_request(&mut std::io::Cursor::new(many), 2),
            Err(RequestError::TooManyCommands(2))
        ));
    }

    #[test]
    fn report_is_framed_in_sideband() {
        let report = Report {
            unpack_error: None,
            refs: vec![
                ("refs/heads/a".into(), RefStatus::Ok),
                ("refs/heads/b".into(), RefStatus::Ng("no".into())),
            ],
        };
        let mut out = Vec::new();
        let caps = Caps {
            report_status: true,
            sideband: true,
            ..Default::default()
        };
        report.send(&caps, &mut out).expect("send");
        let mut r = pktline::Reader::new(&out);
        let Some(pktline::Pkt::Data(first)) = r.next_pkt().expect("pkt") else {
            panic!("a data packet")
        };
        assert_eq!(first[0], 1);
        assert_eq!(&first[1..], report.encode().as_slice());
        assert_eq!(r.next_pkt().expect("pkt"), Some(pktline::Pkt::Flush));
    }
}
