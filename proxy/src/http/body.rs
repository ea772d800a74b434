//! Request and response bodies: bounded reading (with gzip), fixed and streamed responses.

use std::io::Read;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;

/// The response body type of every handler.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than allowed.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed while reading.
    #[error("reading the request body: {0}")]
    Read(#[from] hyper::Error),
    /// `Content-Encoding: gzip` but not valid gzip.
    #[error("request body is not valid gzip: {0}")]
    BadGzip(std::io::Error),
    /// An encoding other than gzip.
    #[error("unsupported content encoding {0:?}")]
    Encoding(String),
    /// No body bytes arrived for too long.
    #[error("request body timed out: no data for {0} s")]
    Timeout(u64),
    /// The gzip body expands more than [`crate::limits::MAX_GZIP_RATIO`] times.
    #[error("gzip request body expands more than {0} times")]
    GzipRatio(usize),
}

impl BodyError {
    /// The HTTP status that answers this: 413 too large, 408 too slow, 400 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            BodyError::TooLarge(_) | BodyError::GzipRatio(_) => http::StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout(_) => http::StatusCode::REQUEST_TIMEOUT,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// The next frame of `body`, or a timeout error after [`crate::limits::body_idle_timeout`].
async fn next_frame(
    body: &mut Incoming,
) -> Result<Option<Result<Frame<Bytes>, hyper::Error>>, BodyError> {
    let idle = crate::limits::body_idle_timeout();
    tokio::time::timeout(idle, body.frame())
        .await
        .map_err(|_| BodyError::Timeout(idle.as_secs()))
}

/// Read a whole request body of at most `limit` bytes (after gzip decoding, if `encoding` says so).
pub async fn read_limited(
    mut body: Incoming,
    limit: usize,
    encoding: Option<&str>,
) -> Result<Vec<u8>, BodyError> {
    let mut raw = Vec::new();
    while let Some(frame) = next_frame(&mut body).await? {
        if let Ok(data) = frame?.into_data() {
            if raw.len() + data.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            raw.extend_from_slice(&data);
        }
    }
    match encoding.map(str::trim) {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => {
            let ratio = crate::limits::MAX_GZIP_RATIO;
            // Bound the output by the limit and by the expansion ratio (with 64 KiB of slack
            // for tiny bodies), whichever is smaller, before inflating a byte.
            let cap = limit.min(raw.len().saturating_mul(ratio).saturating_add(64 << 10));
            let mut out = Vec::new();
            let mut decoder = flate2::read::GzDecoder::new(raw.as_slice()).take(cap as u64 + 1);
            decoder.read_to_end(&mut out).map_err(BodyError::BadGzip)?;
            if out.len() > cap {
                return Err(if cap < limit {
                    BodyError::GzipRatio(ratio)
                } else {
                    BodyError::TooLarge(limit)
                });
            }
            Ok(out)
        }
        Some(other) => Err(BodyError::Encoding(other.to_owned())),
    }
}

/// A `Write` that sends its bytes through a bounded channel to a streamed response body, so
/// blocking producers (pack generation) stream with bounded memory and stop when the client
/// goes away.
pub struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const CHUNK: usize = 64 * 1024;

impl ChannelWriter {
    /// A writer and the body that streams what it writes (at most `depth` chunks in flight).
    pub fn new(depth: usize) -> (ChannelWriter, Body) {
        let (tx, rx) = mpsc::channel::<Bytes>(depth);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
        });
        (
            ChannelWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
            },
            StreamBody::new(stream).boxed(),
        )
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.send();
    }
}

/// A blocking `Read` over a request body that a task forwards through a bounded channel, so a
/// push streams into blocking ingest code with bounded memory.
pub struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    current: Bytes,
}

impl ChannelReader {
    /// Read what arrives on `rx` (an error item fails the read; a closed channel is the end).
    pub fn new(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> ChannelReader {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }

    /// Start forwarding `body` (at most `depth` frames in flight).
    pub fn spawn(mut body: Incoming, depth: usize) -> ChannelReader {
        let (tx, rx) = mpsc::channel(depth);
        tokio::spawn(async move {
            loop {
                let frame = match next_frame(&mut body).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx
                            .send(Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                e.to_string(),
                            )))
                            .await;
                        break;
                    }
                };
                let item = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(data) => Ok(data),
                        Err(_) => continue,
                    },
                    Err(e) => Err(std::io::Error::other(e)),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        ChannelReader::new(rx)
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}
