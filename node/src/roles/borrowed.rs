//! A borrowed answer as it streams from the lender (docs/design.md §6): the sealed (chunked OHTTP) bytes are opened
//! as they arrive, their plaintext — Binary HTTP, indeterminate length — is decoded incrementally, and each piece of
//! body goes to the tool at once. Memory stays at one read buffer and whatever the decoder holds of a partial field
//! section.
//!
//! Every way it can end is told apart: the Binary HTTP end (a clean end); the sealed stream ending without its final
//! chunk, or failing (cut short: the tool sees an error, never a clean end); no bytes for the idle limit (stalled);
//! bytes that do not open or decode (malformed). Dropping the body before its end — the tool went away — drops the
//! stream, which resets it: the relay and then the lender see it and stop, and the lender drops its upstream call.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{AsyncRead, AsyncWrite};
use lendmesh_protocol::PeerId;
use lendmesh_protocol::bhttp::{BhttpError, DecodeLimits, ResponseDecoder, ResponseEvent};

use crate::metrics::NodeMetrics;
use crate::net::streams::{StreamError, Streams};

/// The opened (decrypting) reader of a sealed answer.
pub type SealedReader = Pin<Box<dyn AsyncRead + Send>>;

/// How many bytes one read of the sealed answer takes at most: a sealed chunk (16 KiB of plaintext) and more.
const READ_BUFFER: usize = 32 * 1024;

/// Why a borrowed body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The stream ended or failed before the answer's end.
    #[error("the lender's answer was cut short: {0}")]
    CutShort(String),
    /// Nothing arrived for the idle limit.
    #[error("the lender's answer stalled: {0}")]
    Stalled(String),
    /// The answer does not decode.
    #[error("the lender's answer is malformed: {0}")]
    Malformed(BhttpError),
}

/// A borrowed answer: its head, and its body as it streams.
pub struct BorrowedResponse {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body pieces as they arrive; an `Err` ends it early.
    pub body: BoxStream<'static, Result<Vec<u8>, BodyError>>,
}

impl std::fmt::Debug for BorrowedResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BorrowedResponse")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .finish_non_exhaustive()
    }
}

/// The reading side, owned by the body stream.
struct Body {
    reader: SealedReader,
    decoder: ResponseDecoder,
    pending: VecDeque<ResponseEvent>,
    streams: Streams,
    lender: PeerId,
    buf: Vec<u8>,
    ended: bool,
    counters: Arc<NodeMetrics>,
}

impl Drop for Body {
    fn drop(&mut self) {
        if !self.ended {
            // Dropped before its end: the tool went away (or the answer broke off, counted as such too).
            NodeMetrics::outcome(&self.counters.cancelled, "borrow");
        }
    }
}

impl BodyError {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            BodyError::CutShort(_) => "cut_short",
            BodyError::Stalled(_) => "stalled",
            BodyError::Malformed(_) => "malformed",
        }
    }
}

impl Body {
    /// The next event, reading and decoding as needed; a failure is counted by kind.
    async fn next_event(&mut self) -> Result<ResponseEvent, BodyError> {
        let next = self.read_event().await;
        if let Err(e) = &next {
            NodeMetrics::outcome(&self.counters.stream_errors, e.kind());
        }
        next
    }

    async fn read_event(&mut self) -> Result<ResponseEvent, BodyError> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(ev);
            }
            let idle = self.streams.timeouts().idle;
            let n = match self
                .streams
                .read_some(&mut self.reader, &self.lender, idle, &mut self.buf)
                .await
            {
                Ok(n) => n,
                Err(e @ StreamError::Timeout { .. }) => return Err(BodyError::Stalled(e.to_string())),
                Err(e) => return Err(BodyError::CutShort(e.to_string())),
            };
            if n == 0 {
                return Err(match self.decoder.finish() {
                    Ok(()) => BodyError::CutShort("the stream ended after the answer's end".into()),
                    Err(e) => BodyError::CutShort(e.to_string()),
                });
            }
            let events = self.decoder.push(&self.buf[..n]).map_err(BodyError::Malformed)?;
            self.pending.extend(events);
        }
    }
}

impl BorrowedResponse {
    /// Reads the Binary HTTP head from `reader` (the sealed answer after its `Served` frame); the body follows as a
    /// stream.
    pub(crate) async fn open(
        reader: SealedReader,
        streams: Streams,
        lender: PeerId,
        counters: &Arc<NodeMetrics>,
    ) -> Result<BorrowedResponse, BodyError> {
        let mut body = Body {
            reader,
            decoder: ResponseDecoder::new(DecodeLimits {
                max_body: u64::MAX,
                ..DecodeLimits::default()
            }),
            pending: VecDeque::new(),
            streams,
            lender,
            buf: vec![0u8; READ_BUFFER],
            ended: false,
            counters: counters.clone(),
        };
        let (status, headers) = match body.next_event().await {
            Ok(ResponseEvent::Head { status, headers }) => (status, headers),
            Ok(_) => {
                body.ended = true;
                return Err(BodyError::Malformed(BhttpError::Malformed(
                    "content before the head",
                )));
            }
            Err(e) => {
                body.ended = true;
                return Err(e);
            }
        };
        let stream = futures::stream::unfold(Some(body), |state| async move {
            let mut body = state?;
            match body.next_event().await {
                Ok(ResponseEvent::Chunk(bytes)) => Some((Ok(bytes), Some(body))),
                Ok(ResponseEvent::End) => {
                    body.ended = true;
                    None
                }
                Ok(ResponseEvent::Head { .. }) => {
                    body.ended = true;
                    Some((
                        Err(BodyError::Malformed(BhttpError::Malformed("a second head"))),
                        None,
                    ))
                }
                Err(e) => {
                    body.ended = true;
                    Some((Err(e), None))
                }
            }
        });
        Ok(BorrowedResponse {
            status,
            headers,
            body: Box::pin(stream),
        })
    }
}

/// Where a sealed answer is read from.
pub type SealedSource = Pin<Box<dyn AsyncRead + Send>>;

/// A request sealed with chunked OHTTP to a lender's key: its bytes, and what opens the answer to it.
pub struct SealedRequest {
    /// The sealed request, to send.
    pub bytes: Vec<u8>,
    opener: Box<dyn FnOnce(SealedSource) -> Result<SealedReader, ohttp::Error> + Send>,
}

impl std::fmt::Debug for SealedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRequest")
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl SealedRequest {
    /// Seals `plain` (an encoded `InnerBorrowRequest`) to the lender's encoded key config.
    pub async fn seal(key_config: &[u8], plain: &[u8]) -> Result<SealedRequest, String> {
        use futures::AsyncWriteExt;
        let sink = SealedBuf::default();
        let client = ohttp::ClientRequest::from_encoded_config(key_config).map_err(|e| e.to_string())?;
        let mut request = client
            .encapsulate_stream(sink.clone())
            .map_err(|e| e.to_string())?;
        request.write_all(plain).await.map_err(|e| e.to_string())?;
        request.close().await.map_err(|e| e.to_string())?;
        let bytes = sink.take();
        // The request's header names the AEAD the answer is sealed with (RFC 9458 §4.3: key id, KEM, KDF, AEAD).
        let aead = bytes
            .get(5..7)
            .map(|id| u16::from_be_bytes([id[0], id[1]]))
            .and_then(|id| ohttp::hpke::Aead::try_from(id).ok())
            .ok_or("the sealed request has no AEAD in its header")?;
        Ok(SealedRequest {
            bytes,
            opener: Box::new(move |src| {
                Ok(Box::pin(request.response(WholeLengths::new(src, aead))?) as SealedReader)
            }),
        })
    }

    /// Opens the answer read from `src` (the lender's sealed bytes): a reader of its plaintext.
    pub fn open(self, src: impl AsyncRead + Send + 'static) -> Result<SealedReader, String> {
        (self.opener)(Box::pin(src)).map_err(|e| e.to_string())
    }
}

/// Where a sealed request is written (the OHTTP writer owns its destination, and the sealed bytes are needed while
/// the writer lives on to open the answer).
#[derive(Clone, Debug, Default)]
struct SealedBuf(Arc<Mutex<Vec<u8>>>);

impl SealedBuf {
    /// The bytes written so far, taken out.
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl AsyncWrite for SealedBuf {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Where a [`WholeLengths`] reader is in a chunked OHTTP answer (draft-ietf-ohai-chunked-ohttp §3): the response
/// nonce, then chunks, each a variable-length integer (RFC 9000 §16) and that many sealed bytes, up to the final one
/// (length zero), which runs to the end.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// Bytes of the response nonce still to come.
    Nonce(usize),
    /// At a chunk's length.
    Length,
    /// Bytes of a non-final chunk still to come.
    Chunk(u64),
    /// In the final chunk: everything to the end.
    Final,
}

/// Hands the `ohttp` crate's chunked reader each chunk length whole.
///
/// `ohttp` 0.8.0 reads a chunk length of two or more bytes in two reads (the first byte, then the rest) and, when the
/// second read finds nothing yet, forgets on the next poll that it already took the first byte: it reads the length
/// as zero — the final chunk — and the answer either fails to open (cut short) or never ends (stalled). That happens
/// whenever a length straddles two arrivals from the relay: about one 8 MiB borrowed body in a hundred in the
/// streaming bench. This reader holds a length back until all its bytes are in, then hands them over at once; every
/// other byte passes straight through. It holds at most 8 bytes. (Remove it once `ohttp`'s `read_length0` keeps its
/// place: `a_length_split_across_reads_is_read_whole` in the tests shows whether it still misreads.)
struct WholeLengths<R> {
    src: R,
    at: Framing,
    /// A length being read ahead: its bytes, how many it has, how many it needs (0 until its first byte is in).
    held: [u8; 8],
    have: usize,
    need: usize,
    /// How many of a whole length's bytes have been handed over.
    given: usize,
}

impl<R> WholeLengths<R> {
    /// Reads the answer to a request sealed with `aead`: its nonce is `max(Nn, Nk)` bytes (RFC 9458 §4.4).
    fn new(src: R, aead: ohttp::hpke::Aead) -> Self {
        WholeLengths {
            src,
            at: Framing::Nonce(aead.n_n().max(aead.n_k())),
            held: [0; 8],
            have: 0,
            need: 0,
            given: 0,
        }
    }

    /// The value of the whole length held (RFC 9000 §16: the top two bits of the first byte give its size).
    fn held_value(&self) -> u64 {
        let mut v = u64::from(self.held[0] & 0x3f);
        for b in &self.held[1..self.need] {
            v = (v << 8) | u64::from(*b);
        }
        v
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for WholeLengths<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if out.is_empty() {
            return Pin::new(&mut this.src).poll_read(cx, out);
        }
        match this.at {
            Framing::Nonce(left) => {
                let k = out.len().min(left);
                let n = std::task::ready!(Pin::new(&mut this.src).poll_read(cx, &mut out[..k]))?;
                if n > 0 {
                    this.at = if n == left {
                        Framing::Length
                    } else {
                        Framing::Nonce(left - n)
                    };
                }
                Poll::Ready(Ok(n))
            }
            Framing::Chunk(left) => {
                let k = usize::try_from(left).map_or(out.len(), |l| l.min(out.len()));
                let n = std::task::ready!(Pin::new(&mut this.src).poll_read(cx, &mut out[..k]))?;
                if n as u64 == left {
                    this.at = Framing::Length;
                } else if n > 0 {
                    this.at = Framing::Chunk(left - n as u64);
                }
                Poll::Ready(Ok(n))
            }
            Framing::Final => Pin::new(&mut this.src).poll_read(cx, out),
            Framing::Length => {
                // Read the whole length before handing over any of it.
                while this.need == 0 || this.have < this.need {
                    let want = if this.need == 0 { 1 } else { this.need };
                    let n = std::task::ready!(
                        Pin::new(&mut this.src).poll_read(cx, &mut this.held[this.have..want])
                    )?;
                    if n == 0 {
                        if this.have == 0 {
                            // The end where a chunk should start: the reader above reports the answer cut short.
                            return Poll::Ready(Ok(0));
                        }
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the sealed answer ended inside a chunk length",
                        )));
                    }
                    if this.have == 0 {
                        this.need = 1 << (this.held[0] >> 6);
                    }
                    this.have += n;
                }
                let k = out.len().min(this.need - this.given);
                out[..k].copy_from_slice(&this.held[this.given..this.given + k]);
                this.given += k;
                if this.given == this.need {
                    let len = this.held_value();
                    this.at = if len == 0 {
                        Framing::Final
                    } else {
                        Framing::Chunk(len)
                    };
                    (this.have, this.need, this.given) = (0, 0, 0);
                }
                Poll::Ready(Ok(k))
            }
        }
    }
}

#[cfg(test)]
mod tests;
