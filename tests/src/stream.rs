//! Streaming on both ends of a gateway: a scripted upstream that sends server-sent events when the test says so (or
//! on a pace), records what happened to each call, and notices when a call is dropped; and a client that reads a
//! chunked HTTP response piece by piece, telling a clean end from one cut short.
//!
//! For benchmarks the upstream also streams a bulk body on request (a call to [`bulk_path`]: N bytes in chunks of K
//! bytes, as fast as the socket takes them), and [`StreamingResponse::drain`] reads a body to its end without
//! keeping it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How the scripted upstream paces its events.
#[derive(Clone, Debug)]
pub enum Pace {
    /// Each event waits for [`ScriptedUpstream::release`].
    Gated,
    /// One event every interval.
    Every(Duration),
    /// The first event a fixed delay after the response head (a model's time to its first token), the rest at once.
    FirstAfter(Duration),
}

/// The scripted upstream's settings.
#[derive(Clone, Debug)]
pub struct Script {
    /// Events per call (then `data: [DONE]`).
    pub events: usize,
    /// How they are paced.
    pub pace: Pace,
    /// Wait before the response head.
    pub head_delay: Duration,
    /// Rate-limit headers to send (OpenAI style), if any.
    pub headers: Vec<(String, String)>,
}

/// What happened to the calls, in order.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// Calls received (request lines).
    pub calls: Vec<String>,
    /// Events written per call.
    pub sent: Vec<usize>,
    /// Calls whose connection went away before their last event (index of the call).
    pub dropped: Vec<usize>,
    /// Calls that sent everything.
    pub completed: Vec<usize>,
    /// Each call's headers and body: what the upstream received.
    pub requests: Vec<Received>,
}

/// One call's headers (names as sent, in order) and body.
pub type Received = (Vec<(String, String)>, Vec<u8>);

/// The path of a call that streams a bulk body instead of the script's events: `bytes` bytes of [`BulkPattern`] in
/// chunks of `chunk` bytes (the last one shorter), written as fast as the socket takes them,
/// `application/octet-stream`, with no head delay. The record counts its chunks in `sent`.
pub fn bulk_path(bytes: u64, chunk: usize) -> String {
    format!("{BULK_PATH}?bytes={bytes}&chunk={chunk}")
}

const BULK_PATH: &str = "/bulk";

/// The bytes of every bulk body: byte `i` is `i % 251` (a prime period, so a byte lost, repeated or out of place
/// shows wherever it happens).
#[derive(Debug)]
pub struct BulkPattern(Vec<u8>);

/// The pattern's period.
const PERIOD: usize = 251;

impl BulkPattern {
    /// A pattern to take slices of up to `len` bytes from.
    pub fn new(len: usize) -> BulkPattern {
        BulkPattern((0..len + PERIOD).map(|i| (i % PERIOD) as u8).collect())
    }

    /// The `len` bytes at body offset `offset` (`len` at most the length given to [`BulkPattern::new`]).
    pub fn at(&self, offset: u64, len: usize) -> &[u8] {
        let start = (offset % PERIOD as u64) as usize;
        &self.0[start..start + len]
    }

    /// Checks `data` read at body offset `offset`; `Err` names the first byte that differs.
    pub fn check(&self, offset: u64, data: &[u8]) -> Result<(), String> {
        let mut at = offset;
        for part in data.chunks(self.0.len() - PERIOD) {
            let want = self.at(at, part.len());
            if part != want {
                let i = part.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                return Err(format!(
                    "byte {} of the body is {} where {} was sent",
                    at + i as u64,
                    part[i],
                    want[i]
                ));
            }
            at += part.len() as u64;
        }
        Ok(())
    }
}

/// `(bytes, chunk)` of a bulk call's path, if it is one.
fn parse_bulk(path: &str) -> Option<(u64, usize)> {
    let query = path.strip_prefix(BULK_PATH)?.strip_prefix('?')?;
    let mut bytes = None;
    let mut chunk = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("bytes", v)) => bytes = v.parse().ok(),
            Some(("chunk", v)) => chunk = v.parse().ok(),
            _ => {}
        }
    }
    Some((bytes?, chunk.filter(|&c: &usize| c > 0)?))
}

/// A local HTTP server that streams server-sent events, the way an OpenAI-compatible API streams a completion. It
/// serves one call per connection and says so (`Connection: close`), so a client never reuses a connection it has
/// closed.
#[derive(Debug)]
pub struct ScriptedUpstream {
    /// Its base URL.
    pub url: String,
    record: Arc<(Mutex<Record>, Condvar)>,
    release: Sender<()>,
}

impl ScriptedUpstream {
    /// Starts serving `script` on an ephemeral loopback port (one call at a time; the thread ends with the test).
    pub fn start(script: Script) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let record: Arc<(Mutex<Record>, Condvar)> = Arc::default();
        let (release, gate) = channel();
        let rec = record.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                serve_call(conn, &script, &rec, &gate);
            }
        });
        ScriptedUpstream { url, record, release }
    }

    /// Lets the next gated event go.
    pub fn release(&self) {
        let _ = self.release.send(());
    }

    /// A copy of the record.
    pub fn record(&self) -> Record {
        self.record.0.lock().unwrap().clone()
    }

    /// Waits (bounded) until `check` holds for the record; panics with `what` if it does not in time.
    pub fn wait_for(&self, what: &str, within: Duration, check: impl Fn(&Record) -> bool) -> Record {
        let deadline = Instant::now() + within;
        let (lock, cvar) = &*self.record;
        let mut r = lock.lock().unwrap();
        while !check(&r) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}: {r:?}");
            r = cvar.wait_timeout(r, left).unwrap().0;
        }
        r.clone()
    }
}

fn serve_call(conn: TcpStream, script: &Script, record: &Arc<(Mutex<Record>, Condvar)>, gate: &Receiver<()>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let request = line.trim().to_string();
    let bulk = request.split_whitespace().nth(1).and_then(parse_bulk);
    let mut length = 0usize;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.to_string(), v.trim().to_string()));
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let call = {
        let (lock, cvar) = &**record;
        let mut r = lock.lock().unwrap();
        r.calls.push(request);
        r.requests.push((headers, body));
        r.sent.push(0);
        cvar.notify_all();
        r.calls.len() - 1
    };
    let note = |f: &dyn Fn(&mut Record)| {
        let (lock, cvar) = &**record;
        f(&mut lock.lock().unwrap());
        cvar.notify_all();
    };
    if let Some((bytes, chunk)) = bulk {
        let (sent, ok) = serve_bulk(conn, bytes, chunk);
        note(&|r| {
            r.sent[call] = sent;
            if ok {
                r.completed.push(call);
            } else {
                r.dropped.push(call);
            }
        });
        return;
    }
    std::thread::sleep(script.head_delay);
    let mut conn = conn;
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n",
    );
    for (k, v) in &script.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if conn.write_all(head.as_bytes()).is_err() {
        note(&|r| r.dropped.push(call));
        return;
    }
    for i in 0..=script.events {
        match &script.pace {
            // Gated: wait for the test's go (a minute at most).
            Pace::Gated if i < script.events && gate.recv_timeout(Duration::from_secs(60)).is_err() => return,
            Pace::Every(d) if i > 0 => std::thread::sleep(*d),
            Pace::FirstAfter(d) if i == 0 => std::thread::sleep(*d),
            _ => {}
        }
        let event = if i == script.events {
            "data: [DONE]\n\n".to_string()
        } else {
            format!("data: {}\n\n", event_json(i))
        };
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        if conn
            .write_all(chunk.as_bytes())
            .and_then(|()| conn.flush())
            .is_err()
        {
            note(&|r| r.dropped.push(call));
            return;
        }
        note(&|r| r.sent[call] = i + 1);
    }
    let _ = conn.write_all(b"0\r\n\r\n");
    note(&|r| r.completed.push(call));
}

/// Streams `bytes` bytes in chunks of `chunk` (chunked transfer encoding); returns the chunks written and whether
/// the whole body went out.
fn serve_bulk(mut conn: TcpStream, bytes: u64, chunk: usize) -> (usize, bool) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return (0, false);
    }
    let pattern = BulkPattern::new(chunk);
    let mut frame = Vec::with_capacity(chunk + 32);
    let mut offset = 0u64;
    let mut sent = 0;
    while offset < bytes {
        let len = usize::try_from(bytes - offset).unwrap_or(usize::MAX).min(chunk);
        frame.clear();
        frame.extend_from_slice(format!("{len:x}\r\n").as_bytes());
        frame.extend_from_slice(pattern.at(offset, len));
        frame.extend_from_slice(b"\r\n");
        if conn.write_all(&frame).is_err() {
            return (sent, false);
        }
        offset += len as u64;
        sent += 1;
    }
    (
        sent,
        conn.write_all(b"0\r\n\r\n").and_then(|()| conn.flush()).is_ok(),
    )
}

/// Event `i` as an OpenAI-compatible API streams it: a `chat.completion.chunk` whose delta is `word{i} `.
pub fn event_json(i: usize) -> String {
    format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":"word{i} "}},"finish_reason":null}}]}}"#
    )
}

/// A streamed HTTP response read piece by piece.
#[derive(Debug)]
pub struct StreamingResponse {
    /// Status.
    pub status: u16,
    /// Headers (names lower-case).
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
}

impl StreamingResponse {
    /// Sends `method path` with `body` to the gateway at `base` and reads the response head (bounded by
    /// `within`, also the limit for each later read).
    pub fn send(base: &str, method: &str, path: &str, body: &str, within: Duration) -> StreamingResponse {
        let hostport = base.trim_start_matches("http://");
        let mut s = TcpStream::connect(hostport).unwrap();
        s.set_read_timeout(Some(within)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        StreamingResponse {
            status,
            headers,
            reader,
            chunked,
        }
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next piece: `Ok(Some(bytes))`, `Ok(None)` at a clean end (the terminating chunk), `Err` when the
    /// response was cut short or did not come in time.
    pub fn next_piece(&mut self) -> Result<Option<Vec<u8>>, String> {
        assert!(self.chunked, "a streamed response is chunked");
        let mut size = String::new();
        let n = self.reader.read_line(&mut size).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("cut short: the connection ended without the last chunk".into());
        }
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            let mut end = String::new();
            self.reader.read_line(&mut end).map_err(|e| e.to_string())?;
            return Ok(None);
        }
        let mut data = vec![0u8; size + 2];
        self.reader
            .read_exact(&mut data)
            .map_err(|e| format!("cut short in a chunk: {e}"))?;
        data.truncate(size);
        Ok(Some(data))
    }

    /// Reads the rest of the body and throws it away (one reused buffer, so a body of any size costs the same
    /// memory): the body bytes read, and `Ok` at a clean end (the terminating chunk) or `Err` saying how it was cut
    /// short. A body that is not chunked is read to its `Content-Length`.
    pub fn drain(&mut self) -> (u64, Result<(), String>) {
        self.drain_with(|_, _| Ok(()))
    }

    /// Like [`StreamingResponse::drain`], handing each piece read to `check` with its offset in the body; an `Err`
    /// from `check` ends the read with that error.
    pub fn drain_with(
        &mut self,
        mut check: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> (u64, Result<(), String>) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut bytes = 0u64;
        if !self.chunked {
            let length: u64 = self
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut limited = (&mut self.reader).take(length);
            loop {
                match limited.read(&mut buf) {
                    Ok(0) if bytes == length => return (bytes, Ok(())),
                    Ok(0) => return (bytes, Err(format!("cut short after {bytes} of {length} bytes"))),
                    Ok(n) => {
                        if let Err(e) = check(bytes, &buf[..n]) {
                            return (bytes, Err(e));
                        }
                        bytes += n as u64;
                    }
                    Err(e) => return (bytes, Err(e.to_string())),
                }
            }
        }
        let mut size = String::new();
        loop {
            size.clear();
            match self.reader.read_line(&mut size) {
                Ok(0) => {
                    return (
                        bytes,
                        Err("cut short: the connection ended without the last chunk".into()),
                    );
                }
                Ok(_) => {}
                Err(e) => return (bytes, Err(e.to_string())),
            }
            let hex = size.split(';').next().unwrap_or("").trim();
            let Ok(len) = usize::from_str_radix(hex, 16) else {
                return (bytes, Err(format!("bad chunk size {size:?}")));
            };
            if len == 0 {
                size.clear();
                return match self.reader.read_line(&mut size) {
                    Ok(_) => (bytes, Ok(())),
                    Err(e) => (bytes, Err(e.to_string())),
                };
            }
            let mut left = len;
            while left > 0 {
                let n = left.min(buf.len());
                if let Err(e) = self.reader.read_exact(&mut buf[..n]) {
                    return (bytes, Err(format!("cut short in a chunk: {e}")));
                }
                if let Err(e) = check(bytes, &buf[..n]) {
                    return (bytes, Err(e));
                }
                bytes += n as u64;
                left -= n;
            }
            let mut crlf = [0u8; 2];
            match self.reader.read_exact(&mut crlf) {
                Ok(()) if &crlf == b"\r\n" => {}
                Ok(()) => return (bytes, Err(format!("chunk not ended by CRLF: {crlf:?}"))),
                Err(e) => return (bytes, Err(format!("cut short after a chunk: {e}"))),
            }
        }
    }

    /// The rest of the body as text, chunked or not (for error messages: the body is kept whole).
    pub fn text(&mut self) -> String {
        if !self.chunked {
            let length: u64 = self
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = Vec::new();
            let _ = (&mut self.reader).take(length).read_to_end(&mut body);
            return String::from_utf8_lossy(&body).into_owned();
        }
        let mut body = Vec::new();
        while let Ok(Some(piece)) = self.next_piece() {
            body.extend_from_slice(&piece);
        }
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Server-sent events as they arrive, split on their blank-line ends: reads pieces until at least one whole
    /// event is in, returns the whole ones (`Ok(vec![])` only at a clean end).
    pub fn next_events(&mut self, pending: &mut String) -> Result<Vec<String>, String> {
        loop {
            if let Some(end) = pending.rfind("\n\n") {
                let whole: String = pending.drain(..end + 2).collect();
                return Ok(whole.split_inclusive("\n\n").map(str::to_string).collect());
            }
            match self.next_piece()? {
                Some(bytes) => pending.push_str(&String::from_utf8_lossy(&bytes)),
                None if pending.is_empty() => return Ok(vec![]),
                None => return Err(format!("the stream ended inside an event: {pending:?}")),
            }
        }
    }
}
