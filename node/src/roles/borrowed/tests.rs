//! A borrowed answer's every ending, from real chunked-OHTTP bytes: clean, cut short, garbled, stalled, oversized.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use lendmesh_protocol::bhttp;

use super::*;
use crate::net::streams::StreamTimeouts;

fn peer() -> PeerId {
    PeerId::from_public_key(&ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key())
}

/// A lender's key, a request sealed to it, and the lender's side of that request (to seal answers with).
async fn sealed_pair() -> (SealedRequest, Vec<u8>, ohttp::Server) {
    use ohttp::hpke::{Aead, Kdf, Kem};
    let config = ohttp::KeyConfig::new(
        1,
        Kem::X25519Sha256,
        vec![ohttp::SymmetricSuite::new(Kdf::HkdfSha256, Aead::Aes128Gcm)],
    )
    .unwrap();
    let server = ohttp::Server::new(config).unwrap();
    let encoded = server.config().encode().unwrap();
    let mut request = SealedRequest::seal(&encoded, b"the request").await.unwrap();
    let bytes = std::mem::take(&mut request.bytes);
    (request, bytes, server)
}

/// The lender's sealed answer whose plaintext pieces are `pieces` (one sealed chunk each); `finish` writes the
/// final chunk.
async fn sealed_answer(server: ohttp::Server, request: &[u8], pieces: &[Vec<u8>], finish: bool) -> Vec<u8> {
    let mut opened = Box::pin(server.decapsulate_stream(request));
    let mut plain = Vec::new();
    opened.as_mut().read_to_end(&mut plain).await.unwrap();
    assert_eq!(plain, b"the request");
    let sink = SealedBuf::default();
    {
        let mut answer = opened.response(sink.clone()).unwrap();
        for p in pieces {
            answer.write_all(p).await.unwrap();
            answer.flush().await.unwrap();
        }
        if finish {
            answer.close().await.unwrap();
        }
    }
    sink.take()
}

fn streams(idle: Duration) -> (Streams, Arc<NodeMetrics>) {
    let counters = Arc::new(NodeMetrics::default());
    let timeouts = StreamTimeouts {
        idle,
        ..StreamTimeouts::default()
    };
    (Streams::unconnected(timeouts, counters.clone()), counters)
}

fn pieces() -> Vec<Vec<u8>> {
    vec![
        bhttp::response_head(200, &[("content-type".into(), b"text/event-stream".to_vec())]),
        bhttp::response_chunk(b"data: one\n\n"),
        bhttp::response_chunk(b"data: two\n\n"),
        bhttp::response_end(),
    ]
}

async fn read_all(resp: BorrowedResponse) -> (Vec<u8>, Option<BodyError>) {
    let mut body = resp.body;
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        match piece {
            Ok(b) => out.extend(b),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

fn count(counters: &NodeMetrics, family: &Family, label: &str) -> u64 {
    let f = match family {
        Family::Errors => &counters.stream_errors,
        Family::Cancelled => &counters.cancelled,
    };
    f.get_or_create(&crate::metrics::OutcomeLabel {
        outcome: label.into(),
    })
    .get()
}

enum Family {
    Errors,
    Cancelled,
}

#[tokio::test]
async fn a_whole_answer_streams_to_a_clean_end() {
    let (request, bytes, server) = sealed_pair().await;
    let sealed = sealed_answer(server, &bytes, &pieces(), true).await;
    let (streams, counters) = streams(Duration::from_secs(5));
    let reader = request.open(futures::io::Cursor::new(sealed)).unwrap();
    let resp = BorrowedResponse::open(reader, streams, peer(), &counters)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers[0].0, "content-type");
    let (body, err) = read_all(resp).await;
    assert_eq!(body, b"data: one\n\ndata: two\n\n");
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        count(&counters, &Family::Cancelled, "borrow"),
        0,
        "a clean end is not a cancel"
    );
}

#[tokio::test]
async fn an_answer_without_its_final_chunk_is_cut_short() {
    let (request, bytes, server) = sealed_pair().await;
    // Everything but the Binary HTTP end and the final chunk: the lender's upstream failed mid-body.
    let all = pieces();
    let sealed = sealed_answer(server, &bytes, &all[..3], false).await;
    let (streams, counters) = streams(Duration::from_secs(5));
    let reader = request.open(futures::io::Cursor::new(sealed)).unwrap();
    let resp = BorrowedResponse::open(reader, streams, peer(), &counters)
        .await
        .unwrap();
    let (body, err) = read_all(resp).await;
    assert_eq!(body, b"data: one\n\ndata: two\n\n", "what came is passed on");
    assert!(matches!(err, Some(BodyError::CutShort(_))), "{err:?}");
    assert_eq!(count(&counters, &Family::Errors, "cut_short"), 1);
}

#[tokio::test]
async fn a_garbled_chunk_ends_the_answer_with_an_error() {
    let (request, bytes, server) = sealed_pair().await;
    let mut sealed = sealed_answer(server, &bytes, &pieces(), true).await;
    let last = sealed.len() - 20;
    sealed[last] ^= 0x55;
    let (streams, counters) = streams(Duration::from_secs(5));
    let reader = request.open(futures::io::Cursor::new(sealed)).unwrap();
    let err = match BorrowedResponse::open(reader, streams, peer(), &counters).await {
        Ok(resp) => read_all(resp).await.1,
        Err(e) => Some(e),
    };
    assert!(
        err.is_some(),
        "a chunk that fails to open is an error, never a clean end"
    );
}

#[tokio::test]
async fn an_oversized_chunk_is_refused_before_it_is_buffered() {
    let (request, bytes, server) = sealed_pair().await;
    // A Binary HTTP chunk that announces 2 GiB (the decoder's per-chunk limit is 1 MiB).
    let mut huge = vec![0xC0, 0, 0, 0, 0x80, 0, 0, 0];
    huge.extend_from_slice(b"xx");
    let sealed = sealed_answer(server, &bytes, &[pieces()[0].clone(), huge], true).await;
    let (streams, counters) = streams(Duration::from_secs(5));
    let reader = request.open(futures::io::Cursor::new(sealed)).unwrap();
    let resp = BorrowedResponse::open(reader, streams, peer(), &counters)
        .await
        .unwrap();
    let (_, err) = read_all(resp).await;
    assert!(matches!(err, Some(BodyError::Malformed(_))), "{err:?}");
    assert_eq!(count(&counters, &Family::Errors, "malformed"), 1);
}

/// Reads `data`, then never anything again (a relay that stalls).
struct Stalls(futures::io::Cursor<Vec<u8>>);

impl AsyncRead for Stalls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Ok(0)) => Poll::Pending,
            other => other,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_answer_ends_after_the_idle_limit() {
    let (request, bytes, server) = sealed_pair().await;
    let all = pieces();
    let sealed = sealed_answer(server, &bytes, &all[..2], false).await;
    let (streams, counters) = streams(Duration::from_secs(90));
    let reader = request.open(Stalls(futures::io::Cursor::new(sealed))).unwrap();
    let resp = BorrowedResponse::open(reader, streams, peer(), &counters)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let (body, err) = read_all(resp).await;
    assert_eq!(body, b"data: one\n\n");
    assert!(matches!(err, Some(BodyError::Stalled(_))), "{err:?}");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(90),
        "after exactly the idle limit"
    );
    assert_eq!(count(&counters, &Family::Errors, "stalled"), 1);
}

#[tokio::test]
async fn dropping_the_body_early_counts_a_cancel() {
    let (request, bytes, server) = sealed_pair().await;
    let sealed = sealed_answer(server, &bytes, &pieces(), true).await;
    let (streams, counters) = streams(Duration::from_secs(5));
    let reader = request.open(futures::io::Cursor::new(sealed)).unwrap();
    let mut resp = BorrowedResponse::open(reader, streams, peer(), &counters)
        .await
        .unwrap();
    let first = resp.body.next().await;
    assert!(matches!(first, Some(Ok(_))));
    drop(resp);
    assert_eq!(count(&counters, &Family::Cancelled, "borrow"), 1);
}

/// Hands over `step` bytes at a time, each after a `Pending` (a relay whose bytes arrive in small pieces).
struct Stutter {
    data: Vec<u8>,
    at: usize,
    step: usize,
    ready: bool,
}

impl Stutter {
    fn new(data: Vec<u8>, step: usize) -> Self {
        Stutter {
            data,
            at: 0,
            step,
            ready: false,
        }
    }
}

impl AsyncRead for Stutter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        let k = self.step.min(buf.len()).min(self.data.len() - self.at);
        buf[..k].copy_from_slice(&self.data[self.at..self.at + k]);
        self.at += k;
        Poll::Ready(Ok(k))
    }
}

/// Plaintext pieces whose sealed chunks have lengths of one, two and four bytes (under 64, under 16 KiB, 16 KiB).
fn mixed_pieces() -> (Vec<Vec<u8>>, Vec<u8>) {
    let body: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let pieces = vec![
        bhttp::response_head(200, &[("content-type".into(), b"text/event-stream".to_vec())]),
        bhttp::response_chunk(&body[..10]),
        bhttp::response_chunk(&body[10..3000]),
        bhttp::response_chunk(&body[3000..]),
        bhttp::response_end(),
    ];
    (pieces, body)
}

#[tokio::test]
async fn an_answer_arriving_in_small_pieces_streams_whole() {
    // Every split of a chunk length across two arrivals (`ohttp` 0.8 misreads one; `WholeLengths` mends it).
    for step in [1, 2, 3, 5, 7, 4099] {
        let (request, bytes, server) = sealed_pair().await;
        let (pieces, body) = mixed_pieces();
        let sealed = sealed_answer(server, &bytes, &pieces, true).await;
        let (streams, counters) = streams(Duration::from_secs(5));
        let reader = request.open(Stutter::new(sealed, step)).unwrap();
        let resp = BorrowedResponse::open(reader, streams, peer(), &counters)
            .await
            .unwrap();
        let (got, err) = read_all(resp).await;
        assert!(err.is_none(), "step {step}: {err:?}");
        assert!(got == body, "step {step}: {} of {} bytes", got.len(), body.len());
    }
}

#[tokio::test]
async fn a_length_split_across_reads_is_read_whole() {
    // The canary for `WholeLengths`: `ohttp`'s own reader, given the same bytes one at a time, misreads a chunk
    // length. When this fails, `ohttp` reads split lengths right and `WholeLengths` can go.
    let (_, _, server) = sealed_pair().await;
    let encoded = server.config().encode().unwrap();
    let sink = SealedBuf::default();
    let mut request = ohttp::ClientRequest::from_encoded_config(&encoded)
        .unwrap()
        .encapsulate_stream(sink.clone())
        .unwrap();
    request.write_all(b"the request").await.unwrap();
    request.close().await.unwrap();
    let (pieces, _) = mixed_pieces();
    let sealed = sealed_answer(server, &sink.take(), &pieces, true).await;
    let mut plain = Vec::new();
    let mut raw = request.response(Stutter::new(sealed, 1)).unwrap();
    let read = raw.read_to_end(&mut plain).await;
    let whole: Vec<u8> = pieces.concat();
    assert!(
        read.is_err() || plain != whole,
        "ohttp now reads a chunk length split across reads: remove WholeLengths (roles/borrowed.rs)"
    );
}
