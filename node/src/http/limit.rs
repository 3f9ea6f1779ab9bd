//! A connection limit for the node's HTTP servers (gateway and API): at most `max` connections are served at once;
//! a connection beyond that gets an immediate `503` with a JSON reason and is closed, rather than queueing without
//! bound or hanging in the backlog.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use crate::metrics::NodeMetrics;

/// How long the refusal may take to write before the connection is dropped.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// A TCP listener that serves at most `max` connections at once.
#[derive(Debug)]
pub struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    what: &'static str,
    counters: Arc<NodeMetrics>,
}

impl LimitedListener {
    /// Wraps `inner`; `what` names the server in the refusal and the log.
    pub fn new(inner: TcpListener, max: usize, what: &'static str, counters: Arc<NodeMetrics>) -> Self {
        LimitedListener {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
            what,
            counters,
        }
    }
}

impl LimitedListener {
    /// The server's name in metrics (`gateway`, `api`).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Where refusals are counted.
    pub fn counters(&self) -> Arc<NodeMetrics> {
        self.counters.clone()
    }
}

/// A served connection; its slot is freed when it closes.
#[derive(Debug)]
pub struct LimitedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Bytes arrived since the last write: a request has begun (`serve` answers a head timeout with `408` only then).
    begun: bool,
}

impl LimitedStream {
    /// Whether bytes of a request arrived since the last answer was written.
    pub fn request_begun(&self) -> bool {
        self.begun
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (mut stream, addr) = match self.inner.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, as axum's own listener does.
                    warn!(%e, "{} accept failed", self.what);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let stream = LimitedStream {
                        stream,
                        _slot: slot,
                        begun: false,
                    };
                    return (stream, addr);
                }
                Err(_) => {
                    self.counters.inc(&self.counters.connections_over_limit);
                    self.counters.http_refusal(self.what, "too_many_connections");
                    let body = format!(
                        "{{\"error\":\"too_many_connections\",\"message\":\"the {} serves at most {} connections at once; retry shortly\"}}",
                        self.what, self.max
                    );
                    let response = format!(
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    // Written inline, bounded: a refusal never waits on a slow client for long.
                    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    })
                    .await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The remote address of a connection, for handlers (`ConnectInfo<PeerAddr>`).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.begun = true;
        }
        polled
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.begun = false;
        }
        polled
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.begun = false;
        }
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_connection_beyond_the_limit_gets_a_503_and_a_freed_slot_is_reused() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let mut listener = LimitedListener::new(inner, 1, "test server", Arc::new(NodeMetrics::default()));
        let first = TcpStream::connect(addr).await.unwrap();
        let (served, _) = axum::serve::Listener::accept(&mut listener).await;
        // The second connection is refused while the first holds the only slot.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let accept = tokio::spawn(async move {
            let conn = axum::serve::Listener::accept(&mut listener).await;
            (listener, conn)
        });
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), second.read_to_string(&mut text))
            .await
            .unwrap()
            .unwrap();
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("too_many_connections") && text.contains("at most 1"));
        // Closing the first frees the slot: the next connection is served.
        drop((first, served));
        let _third = TcpStream::connect(addr).await.unwrap();
        let (_listener, _conn) = tokio::time::timeout(Duration::from_secs(5), accept)
            .await
            .unwrap()
            .unwrap();
    }
}
