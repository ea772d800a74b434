//! `Receiver`: a webhook receiver on loopback that records every request (method, path,
//! headers, raw body) and answers as told: `200` by default, a given status for the next N
//! requests or for all of them, or no answer at all for the next N (the connection is held
//! until [`Receiver::release`], to catch the server with a delivery in flight).
//!
//! Plain HTTP/1.1 on `std::net`, one thread per connection, `Connection: close` on every answer;
//! request bodies by `Content-Length` or chunked. Binds port 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Largest request body recorded.
const MAX_BODY: usize = 1 << 20;

/// How long a held connection is held at most.
const HOLD_LIMIT: Duration = Duration::from_secs(120);

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status answered (`None`: held, never answered).
    pub answered: Option<u16>,
    pub at: Instant,
}

impl Received {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body if it is not).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `X-Pierre-Event`.
    pub fn event(&self) -> &str {
        self.header("x-pierre-event").unwrap_or_default()
    }

    /// `X-Pierre-Delivery`.
    pub fn delivery(&self) -> &str {
        self.header("x-pierre-delivery").unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Script {
    /// Answer the next `n` requests with this status.
    fail_next: Option<(usize, u16)>,
    /// Hold the next `n` requests without answering.
    hold_next: usize,
    /// Answer every (other) request with this status.
    always: Option<u16>,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    script: Mutex<Script>,
    released: AtomicBool,
    stop: AtomicBool,
}

/// The receiver; stops accepting when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("receiver address");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        Receiver { addr, shared }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer the next `n` requests with `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.script.lock().expect("script").fail_next = Some((n, status));
    }

    /// Answer every request with `status` (after any scripted ones).
    pub fn always(&self, status: u16) {
        self.shared.script.lock().expect("script").always = Some(status);
    }

    /// Hold the next `n` requests without answering, until [`Receiver::release`].
    pub fn hold_next(&self, n: usize) {
        self.shared.released.store(false, Ordering::Relaxed);
        self.shared.script.lock().expect("script").hold_next = n;
    }

    /// Let held connections go (they are closed without an answer).
    pub fn release(&self) {
        self.shared.released.store(true, Ordering::Relaxed);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.received.lock().expect("received").clone()
    }

    /// Polls until at least `n` requests arrived (panics after `timeout` with what arrived).
    #[track_caller]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the webhook receiver got {} of {n} requests within {timeout:?}: {:#?}",
                    got.len(),
                    got.iter()
                        .map(|r| (
                            r.event().to_owned(),
                            String::from_utf8_lossy(&r.body).into_owned()
                        ))
                        .collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.released.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// What to do with the next request.
fn decide(shared: &Shared) -> Option<u16> {
    let mut script = shared.script.lock().expect("script");
    if script.hold_next > 0 {
        script.hold_next -= 1;
        return None;
    }
    if let Some((n, status)) = script.fail_next
        && n > 0
    {
        script.fail_next = (n > 1).then_some((n - 1, status));
        return Some(status);
    }
    Some(script.always.unwrap_or(200))
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        read_chunked(&mut reader)
    } else {
        let len = header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_BODY);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        body
    };
    let answer = decide(shared);
    shared.received.lock().expect("received").push(Received {
        method,
        path,
        headers,
        body,
        answered: answer,
        at: Instant::now(),
    });
    let mut out = write_half;
    match answer {
        Some(status) => {
            let reply = format!(
                "HTTP/1.1 {status} Scripted\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok"
            );
            let _ = out.write_all(reply.as_bytes());
            let _ = out.flush();
        }
        None => {
            let deadline = Instant::now() + HOLD_LIMIT;
            while !shared.released.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let _ = out.shutdown(std::net::Shutdown::Both);
}

fn read_chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).unwrap_or(0) == 0 {
            break;
        }
        let Ok(n) = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16) else {
            break;
        };
        if n == 0 || body.len() + n > MAX_BODY {
            break;
        }
        let mut chunk = vec![0u8; n + 2];
        if reader.read_exact(&mut chunk).is_err() {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body
}
