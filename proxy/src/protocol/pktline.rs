//! pkt-line framing (gitprotocol-common): the only code that knows 4-hex lengths, flush (`0000`),
//! delimiter (`0001`), response-end (`0002`), sideband channels and `ERR` lines.
//!
//! Decoding works over a complete, size-bounded request body ([`Reader`]); encoding appends to a
//! `Vec<u8>` or streams through [`SidebandWriter`].

use std::io::{self, Write};

/// Largest pkt-line, length prefix included.
pub const MAX_PKT_LEN: usize = 65520;
/// Largest payload of a data pkt-line.
pub const MAX_DATA_LEN: usize = MAX_PKT_LEN - 4;
/// Largest payload of one side-band-64k packet (one byte goes to the band number).
pub const MAX_SIDEBAND_DATA: usize = MAX_DATA_LEN - 1;

/// One decoded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkt<'a> {
    /// A data packet (payload without the length prefix).
    Data(&'a [u8]),
    /// `0000`.
    Flush,
    /// `0001`.
    Delim,
    /// `0002`.
    ResponseEnd,
}

impl<'a> Pkt<'a> {
    /// The payload as text without a trailing newline, if this is a UTF-8 data packet.
    pub fn text(&self) -> Option<&'a str> {
        match self {
            Pkt::Data(d) => {
                let d = d.strip_suffix(b"\n").unwrap_or(d);
                std::str::from_utf8(d).ok()
            }
            _ => None,
        }
    }
}

/// Why bytes are not valid pkt-lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The length prefix is not four hex digits.
    #[error("invalid pkt-line length {0:?}")]
    BadLength(String),
    /// The length is 3 (reserved) or larger than the maximum.
    #[error("pkt-line length {0} out of range")]
    LengthOutOfRange(usize),
    /// The input ended inside a packet.
    #[error("truncated pkt-line: {needed} more bytes expected")]
    Truncated {
        /// Bytes missing.
        needed: usize,
    },
}

/// Decode one packet from the start of `buf`: the packet and the bytes it took.
pub fn decode(buf: &[u8]) -> Result<(Pkt<'_>, usize), Error> {
    if buf.len() < 4 {
        return Err(Error::Truncated {
            needed: 4 - buf.len(),
        });
    }
    let hex = &buf[..4];
    let len = std::str::from_utf8(hex)
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .ok_or_else(|| Error::BadLength(String::from_utf8_lossy(hex).into_owned()))?;
    match len {
        0 => Ok((Pkt::Flush, 4)),
        1 => Ok((Pkt::Delim, 4)),
        2 => Ok((Pkt::ResponseEnd, 4)),
        3 => Err(Error::LengthOutOfRange(3)),
        n if n > MAX_PKT_LEN => Err(Error::LengthOutOfRange(n)),
        n if buf.len() < n => Err(Error::Truncated {
            needed: n - buf.len(),
        }),
        n => Ok((Pkt::Data(&buf[4..n]), n)),
    }
}

/// Sequential packet reader over a complete request body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Read packets from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The next packet, `Ok(None)` at the end of input.
    pub fn next_pkt(&mut self) -> Result<Option<Pkt<'a>>, Error> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let (pkt, n) = decode(&self.buf[self.pos..])?;
        self.pos += n;
        Ok(Some(pkt))
    }

    /// Whether all input was consumed.
    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// One packet read from a stream by [`read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// A data packet; the payload is in the caller's buffer.
    Data,
    /// `0000`.
    Flush,
    /// `0001`.
    Delim,
    /// `0002`.
    ResponseEnd,
    /// The stream ended cleanly before a packet.
    Eof,
}

/// Why reading a packet from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Invalid framing.
    #[error(transparent)]
    Framing(#[from] Error),
    /// The stream failed or ended inside a packet.
    #[error("reading pkt-line: {0}")]
    Io(#[from] io::Error),
}

/// Read one packet from a stream into `buf` (cleared first). Allocation is bounded by the
/// maximum packet size.
pub fn read(r: &mut dyn io::Read, buf: &mut Vec<u8>) -> Result<Read, ReadError> {
    buf.clear();
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..])? {
            0 if got == 0 => return Ok(Read::Eof),
            0 => return Err(Error::Truncated { needed: 4 - got }.into()),
            n => got += n,
        }
    }
    let n = match decode(&len) {
        Ok((Pkt::Flush, _)) => return Ok(Read::Flush),
        Ok((Pkt::Delim, _)) => return Ok(Read::Delim),
        Ok((Pkt::ResponseEnd, _)) => return Ok(Read::ResponseEnd),
        // "0004": an empty data packet.
        Ok((Pkt::Data(_), _)) => return Ok(Read::Data),
        Err(Error::Truncated { needed }) => needed + 4,
        Err(e) => return Err(e.into()),
    };
    buf.resize(n - 4, 0);
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ReadError::Framing(Error::Truncated { needed: n - 4 }),
        _ => ReadError::Io(e),
    })?;
    Ok(Read::Data)
}

/// Append a data packet holding `payload` (which must fit in one packet).
pub fn data(out: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_DATA_LEN);
    out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.extend_from_slice(payload);
}

/// Append a text packet, adding the trailing newline.
pub fn line(out: &mut Vec<u8>, text: &str) {
    let mut payload = Vec::with_capacity(text.len() + 1);
    payload.extend_from_slice(text.as_bytes());
    payload.push(b'\n');
    data(out, &payload);
}

/// Append a flush packet.
pub fn flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

/// Append a delimiter packet.
pub fn delim(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0001");
}

/// Append an `ERR` packet (a fatal protocol error the client prints). A message too long for
/// one packet (it may quote a whole client line) is cut at a character boundary.
pub fn err(out: &mut Vec<u8>, message: &str) {
    const ROOM: usize = MAX_DATA_LEN - "ERR \n".len();
    let mut end = message.len().min(ROOM);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    line(out, &format!("ERR {}", &message[..end]));
}

/// Sideband channel numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    /// Pack data.
    Data = 1,
    /// Progress messages (`remote: …`).
    Progress = 2,
    /// A fatal error message.
    Error = 3,
}

/// Append `payload` on sideband `band`, split into packets of at most `max` payload bytes.
pub fn band(out: &mut Vec<u8>, band: Band, payload: &[u8], max: usize) {
    for chunk in payload.chunks(max.max(1)) {
        out.extend_from_slice(format!("{:04x}", chunk.len() + 5).as_bytes());
        out.push(band as u8);
        out.extend_from_slice(chunk);
    }
}

/// A writer that frames everything written to it as sideband data packets (or passes it
/// through raw when no sideband was negotiated), with progress messages on band 2.
pub struct SidebandWriter<W: Write> {
    inner: W,
    /// Payload bytes per packet; `None` writes raw bytes (no sideband).
    max: Option<usize>,
    progress: bool,
    buf: Vec<u8>,
}

impl<W: Write> SidebandWriter<W> {
    /// Wrap `inner`. `max` is the sideband payload size (`None` = no sideband); `progress`
    /// says whether progress messages are wanted.
    pub fn new(inner: W, max: Option<usize>, progress: bool) -> Self {
        SidebandWriter {
            inner,
            max,
            progress,
            buf: Vec::with_capacity(MAX_PKT_LEN),
        }
    }

    /// Send a warning on the progress band: with sideband, even when the client asked for no
    /// progress (a warning is not progress; git prints it as `remote: …`).
    pub fn warning(&mut self, message: &str) -> io::Result<()> {
        if let Some(max) = self.max {
            self.flush_data()?;
            let mut pkt = Vec::new();
            band(&mut pkt, Band::Progress, message.as_bytes(), max);
            self.inner.write_all(&pkt)?;
        }
        Ok(())
    }

    /// Send a progress message (only with sideband and progress enabled).
    pub fn progress(&mut self, message: &str) -> io::Result<()> {
        if let (Some(max), true) = (self.max, self.progress) {
            self.flush_data()?;
            let mut pkt = Vec::new();
            band(&mut pkt, Band::Progress, message.as_bytes(), max);
            self.inner.write_all(&pkt)?;
        }
        Ok(())
    }

    /// Send a fatal error on band 3 (or as an `ERR` line without sideband).
    pub fn error(&mut self, message: &str) -> io::Result<()> {
        self.flush_data()?;
        let mut pkt = Vec::new();
        match self.max {
            Some(max) => band(
                &mut pkt,
                Band::Error,
                format!("{message}\n").as_bytes(),
                max,
            ),
            None => err(&mut pkt, message),
        }
        self.inner.write_all(&pkt)?;
        self.inner.flush()
    }

    fn flush_data(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match self.max {
            Some(_) => {
                let mut head = [0u8; 5];
                head[..4].copy_from_slice(format!("{:04x}", self.buf.len() + 5).as_bytes());
                head[4] = Band::Data as u8;
                self.inner.write_all(&head)?;
                self.inner.write_all(&self.buf)?;
            }
            None => self.inner.write_all(&self.buf)?,
        }
        self.buf.clear();
        Ok(())
    }

    /// Flush buffered data and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_data()?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    /// The inner writer (for packets outside the sideband, such as a final flush).
    pub fn inner_mut(&mut self) -> io::Result<&mut W> {
        self.flush_data()?;
        Ok(&mut self.inner)
    }
}

impl<W: Write> Write for SidebandWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let cap = self.max.unwrap_or(MAX_DATA_LEN);
        let total = data.len();
        while !data.is_empty() {
            let room = cap - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() >= cap {
                self.flush_data()?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_data()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_data_and_specials() {
        let mut out = Vec::new();
        line(&mut out, "command=ls-refs");
        delim(&mut out);
        data(&mut out, b"peel");
        flush(&mut out);
        let mut r = Reader::new(&out);
        assert_eq!(r.next_pkt(), Ok(Some(Pkt::Data(b"command=ls-refs\n"))));
        assert_eq!(r.next_pkt(), Ok(Some(Pkt::Delim)));
        assert_eq!(
            r.next_pkt().map(|p| p.and_then(|p| p.text())),
            Ok(Some("peel"))
        );
        assert_eq!(r.next_pkt(), Ok(Some(Pkt::Flush)));
        assert_eq!(r.next_pkt(), Ok(None));
        assert!(r.at_end());
    }

    #[test]
    fn rejects_bad_lengths() {
        assert!(matches!(decode(b"zzzz"), Err(Error::BadLength(_))));
        assert_eq!(decode(b"0003"), Err(Error::LengthOutOfRange(3)));
        assert_eq!(decode(b"fff1"), Err(Error::LengthOutOfRange(0xfff1)));
        assert_eq!(decode(b"000aab"), Err(Error::Truncated { needed: 4 }));
        assert_eq!(decode(b"00"), Err(Error::Truncated { needed: 2 }));
    }

    #[test]
    fn err_packets_fit_whatever_the_message() {
        // The harness of the upload_pack/receive_pack fuzz targets checks this: refusals quote
        // the client's line, which may fill a whole packet, and a longer ERR packet broke the
        // framing (and tripped the debug assertion in `data`).
        for message in [
            "short".to_owned(),
            "x".repeat(MAX_PKT_LEN),
            "é".repeat(MAX_PKT_LEN),
        ] {
            let mut out = Vec::new();
            err(&mut out, &message);
            let mut r = Reader::new(&out);
            let Ok(Some(Pkt::Data(payload))) = r.next_pkt() else {
                panic!("not one data packet");
            };
            assert!(payload.starts_with(b"ERR "));
            assert!(std::str::from_utf8(payload).is_ok());
            assert!(r.at_end());
        }
    }

    #[test]
    fn reads_packets_from_a_stream() {
        let mut input = Vec::new();
        line(&mut input, "abc");
        flush(&mut input);
        input.extend_from_slice(b"PACK");
        let mut r = io::Cursor::new(input);
        let mut buf = Vec::new();
        assert!(matches!(read(&mut r, &mut buf), Ok(Read::Data)));
        assert_eq!(buf, b"abc\n");
        assert!(matches!(read(&mut r, &mut buf), Ok(Read::Flush)));
        let mut rest = Vec::new();
        io::Read::read_to_end(&mut r, &mut rest).expect("rest");
        assert_eq!(rest, b"PACK", "nothing past the flush is consumed");
        let mut short = io::Cursor::new(b"0009ab".to_vec());
        assert!(matches!(
            read(&mut short, &mut buf),
            Err(ReadError::Framing(Error::Truncated { .. }))
        ));
        let mut empty = io::Cursor::new(Vec::new());
        assert!(matches!(read(&mut empty, &mut buf), Ok(Read::Eof)));
    }

    #[test]
    fn sideband_writer_frames_and_splits() {
        let mut w = SidebandWriter::new(Vec::new(), Some(10), true);
        w.write_all(&[7u8; 25]).expect("write");
        w.progress("hi\n").expect("progress");
        let out = w.finish().expect("finish");
        let mut r = Reader::new(&out);
        let mut sizes = Vec::new();
        while let Ok(Some(Pkt::Data(d))) = r.next_pkt() {
            sizes.push((d[0], d.len() - 1));
        }
        assert_eq!(sizes, vec![(1, 10), (1, 10), (1, 5), (2, 3)]);
    }
}
