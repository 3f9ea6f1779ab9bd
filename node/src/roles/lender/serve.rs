//! Serving one `/lendmesh/borrow/2` stream (docs/design.md §6 step 5): open the sealed request (chunked OHTTP), go
//! down the lend ladder, and stream the answer back sealed as it arrives.
//!
//! The sealed answer's plaintext is a length-prefixed [`InnerBorrowResponse`] frame and, when served, the upstream's
//! response as Binary HTTP (RFC 9292, indeterminate length: `protocol::bhttp`) — its head when the upstream's head
//! arrives, each body chunk as it comes, then the end. Every write seals one chunk; the final chunk is written only
//! after the whole body, so an answer cut short (the upstream failed mid-body) reaches the borrower without it: an
//! error, never a clean end. While the answer streams the lender watches its side of the stream: the relay going
//! away (the tool disconnected) ends the lend at once and drops the upstream call, which cancels it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use lendmesh_protocol::bhttp;
use lendmesh_protocol::capability::Need;
use lendmesh_protocol::scrub::Body;
use tokio_util::task::TaskTracker;

use super::*;
use crate::net::streams::Streams;
use crate::roles::claimer::ClaimOutcome;
use crate::upstream::{NoUpstream, UpstreamResponse};

/// Largest request body a borrower can send (the wire's limit for an HTTP message).
const MAX_REQUEST_BODY: usize = wire::MAX_HTTP_MESSAGE;
/// Largest sealed request plaintext: the request and its envelope.
pub(super) const MAX_REQUEST_PLAINTEXT: u64 = (wire::MAX_HTTP_MESSAGE + 64 * 1024) as u64;
/// Response headers that describe a hop, not the message: never passed on (Binary HTTP frames the body itself).
const HOP_BY_HOP: [&str; 4] = ["connection", "keep-alive", "transfer-encoding", "content-length"];

/// What serving a borrow needs (cheap clones of shared handles; no domain state).
pub(crate) struct LendShared {
    pub(super) counters: Arc<NodeMetrics>,
    pub(super) upstreams: Arc<UpstreamSet>,
    pub(super) claimer: crate::roles::claimer::Claimer,
    /// The actor keeps it current with the group's epochs; a lend reads a snapshot.
    pub(super) redeemer: std::sync::RwLock<Redeemer>,
    pub(super) store: Store,
    pub(super) keys: OhttpKeys,
    pub(super) tasks: TaskTracker,
}

impl std::fmt::Debug for LendShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LendShared")
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

/// The head of a lend: refused (sealed and sent at once), or the upstream's response to stream.
enum Head {
    Refused(InnerBorrowResponse),
    Served(UpstreamResponse),
}

/// What goes back on the stream.
enum Answer {
    /// In the clear, no sealed part: the lender could not open or take the request.
    Failed(DeliveryFailure),
    /// Sealed, and the stream ends: a refusal, or an earlier attempt's outcome.
    Sealed(InnerBorrowResponse),
    /// Sealed, streaming the upstream's response.
    Served(UpstreamResponse),
}

impl LenderHandle {
    /// Serves one borrow stream from `relay` whose request frame was read: answers on the stream, records the lend.
    pub async fn serve_stream(
        &self,
        relay: PeerId,
        req: BorrowRequest,
        stream: libp2p::Stream,
        streams: &Streams,
    ) {
        let sh = &self.shared;
        let (mut rd, mut wr) = stream.split();
        // 1. Open the envelope: a failure means a stale key config (the borrower re-seals to the current one).
        let mut sealed_request = Box::pin(sh.keys.server.clone().decapsulate_stream(&req.sealed[..]));
        let opened = super::read_plaintext(sealed_request.as_mut()).await;
        let mut lend = None;
        let answer = match opened {
            Err(_) => {
                sh.counters.inc(&sh.counters.lends_refused);
                NodeMetrics::outcome(&sh.counters.lends, "stale_key_config");
                debug!(relay = %relay.short(), "could not open a sealed request (stale key config?)");
                Answer::Failed(DeliveryFailure::StaleKeyConfig)
            }
            Ok(plain) => match wire::decode::<InnerBorrowRequest>(&plain) {
                Err(e) => Answer::Sealed(InnerBorrowResponse::Refused {
                    reason: BorrowRefusal::BadRequest(e.to_string()),
                    retry_after_ms: None,
                }),
                // Shutting down: refuse before any claim; the borrower tries another lender with the same token.
                Ok(_) if sh.tasks.is_closed() => Answer::Failed(DeliveryFailure::LenderBusy),
                // 2. The ladder's first step: a known request id.
                Ok(inner) => match self.admit(inner.request_id).await {
                    Admitted::Busy => Answer::Failed(DeliveryFailure::LenderBusy),
                    Admitted::Replay(answer) => Answer::Sealed(answer),
                    Admitted::Wait(outcome) => match outcome.await {
                        Ok(answer) => Answer::Sealed(answer),
                        Err(_) => Answer::Failed(DeliveryFailure::LenderBusy),
                    },
                    // 3. Headroom, claim, the upstream's head.
                    Admitted::Proceed => {
                        let request_id = inner.request_id;
                        let started = Instant::now();
                        let (head, mut record) = sh.serve_head(inner).await;
                        record.relay = relay.short();
                        lend = Some((request_id, started, record));
                        match head {
                            Head::Refused(refusal) => Answer::Sealed(refusal),
                            Head::Served(upstream) => Answer::Served(upstream),
                        }
                    }
                },
            },
        };
        // 4. The answer.
        let (response, outcome, bytes) = match answer {
            Answer::Failed(f) => {
                let _ = streams.send(&mut wr, &relay, &BorrowResponse::Failed(f)).await;
                let _ = wr.close().await;
                return;
            }
            Answer::Sealed(answer) => {
                let sent = match streams.send(&mut wr, &relay, &BorrowResponse::Sealed).await {
                    Ok(()) => match sealed_request.response(Guarded::new(&mut wr)) {
                        Ok(mut sealed) => {
                            write_sealed_head(&mut sealed, &answer).await;
                            let _ = sealed.close().await;
                            true
                        }
                        Err(e) => {
                            warn!(%e, "cannot seal a borrow answer");
                            false
                        }
                    },
                    Err(_) => false,
                };
                let _ = sent;
                (answer, None, 0)
            }
            Answer::Served(upstream) => {
                let (bytes, outcome) = match streams.send(&mut wr, &relay, &BorrowResponse::Sealed).await {
                    Err(_) => (0, LendOutcome::Cancelled),
                    Ok(()) => {
                        let guard = Guarded::new(&mut wr);
                        let failed = guard.failed.clone();
                        match sealed_request.response(guard) {
                            Ok(mut sealed) => {
                                stream_served(&mut sealed, &failed, &mut rd, streams, upstream).await
                            }
                            Err(e) => {
                                warn!(%e, "cannot seal a borrow answer");
                                (0, LendOutcome::Internal)
                            }
                        }
                    }
                };
                if outcome == LendOutcome::Cancelled {
                    NodeMetrics::outcome(&sh.counters.cancelled, "lend");
                }
                (InnerBorrowResponse::Served, Some(outcome), bytes)
            }
        };
        if let Some((request_id, started, mut record)) = lend {
            if let Some(outcome) = outcome {
                record.outcome = outcome;
            }
            record.response_bytes = bytes;
            record.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.finished(request_id, response, record).await;
        }
    }
}

/// The sealed plaintext's first piece: the length-prefixed answer frame.
async fn write_sealed_head<W: AsyncWrite + Unpin>(sealed: &mut W, answer: &InnerBorrowResponse) {
    match wire::encode_prefixed(answer) {
        Ok(head) => {
            let _ = write_piece(sealed, &head).await;
        }
        Err(e) => warn!(%e, "cannot encode a borrow answer"),
    }
}

/// Streams a served answer into `sealed`: the head frame, the Binary HTTP head, each body chunk as it arrives, the
/// end and the final chunk. Returns the body bytes sent and how it ended.
async fn stream_served<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    sealed: &mut W,
    failed: &Arc<AtomicBool>,
    rd: &mut R,
    streams: &Streams,
    upstream: UpstreamResponse,
) -> (u64, LendOutcome) {
    let headers: Vec<(String, Vec<u8>)> = upstream
        .headers
        .into_iter()
        .filter(|(k, _)| !HOP_BY_HOP.iter().any(|h| k.eq_ignore_ascii_case(h)))
        .collect();
    let Ok(mut head) = wire::encode_prefixed(&InnerBorrowResponse::Served) else {
        return (0, LendOutcome::Internal);
    };
    // Binary HTTP carries final statuses only; an upstream that answers anything else failed.
    let status = if (200..=599).contains(&upstream.status) {
        upstream.status
    } else {
        502
    };
    head.extend_from_slice(&bhttp::response_head(status, &headers));
    let gone = || failed.load(Ordering::Acquire);
    if write_piece(sealed, &head).await.is_err() || gone() {
        return (0, LendOutcome::Cancelled);
    }
    let mut body = upstream.body;
    let mut bytes = 0u64;
    loop {
        let next = tokio::select! {
            next = body.next() => next,
            () = streams.gone(rd) => return (bytes, LendOutcome::Cancelled),
        };
        match next {
            Some(Ok(chunk)) => {
                bytes += chunk.len() as u64;
                let written = write_piece(sealed, &bhttp::response_chunk(&chunk)).await;
                if written.is_err() || gone() {
                    return (bytes, LendOutcome::Cancelled);
                }
            }
            Some(Err(e)) => {
                // No final chunk: the borrower sees the answer cut short.
                warn!(%e, "the upstream failed in the middle of its answer; it is cut short");
                return (bytes, LendOutcome::UpstreamFailed);
            }
            None => {
                if write_piece(sealed, &bhttp::response_end()).await.is_err()
                    || sealed.close().await.is_err()
                    || gone()
                {
                    return (bytes, LendOutcome::Cancelled);
                }
                return (bytes, LendOutcome::Served);
            }
        }
    }
}

/// The stream under the sealing writer, shielding it from the stream's errors: `ohttp` 0.8's chunk writer panics when
/// its destination fails while sealed bytes are still buffered (`Poll::map(|_| unreachable!())` on an error, in
/// `stream.rs`). A failure is recorded in `failed` and the bytes are dropped instead; the lend checks `failed` after
/// every piece and ends as cancelled (the relay or the borrower went away).
struct Guarded<W> {
    inner: W,
    failed: Arc<AtomicBool>,
}

impl<W> Guarded<W> {
    fn new(inner: W) -> Self {
        Guarded {
            inner,
            failed: Arc::default(),
        }
    }
}

/// The one rule for every write, flush and close of a [`Guarded`] stream: once it failed, or when it fails now,
/// report `done` (the bytes are dropped) and remember the failure in `failed`.
fn shield<T>(failed: &AtomicBool, op: impl FnOnce() -> Poll<io::Result<T>>, done: T) -> Poll<io::Result<T>> {
    if failed.load(Ordering::Acquire) {
        return Poll::Ready(Ok(done));
    }
    match op() {
        Poll::Ready(Err(_)) => {
            failed.store(true, Ordering::Release);
            Poll::Ready(Ok(done))
        }
        other => other,
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Guarded<W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        shield(
            &this.failed,
            || Pin::new(&mut this.inner).poll_write(cx, buf),
            buf.len(),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        shield(&this.failed, || Pin::new(&mut this.inner).poll_flush(cx), ())
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        shield(&this.failed, || Pin::new(&mut this.inner).poll_close(cx), ())
    }
}

/// One sealed chunk, flushed through to the stream.
async fn write_piece<W: AsyncWrite + Unpin>(sealed: &mut W, piece: &[u8]) -> std::io::Result<()> {
    sealed.write_all(piece).await?;
    sealed.flush().await
}

impl LendShared {
    /// The redeemer as the group's epochs stand now.
    pub(super) fn redeemer(&self) -> std::sync::RwLockReadGuard<'_, Redeemer> {
        self.redeemer.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Steps 2–4 of the lend ladder (the module doc of `roles::lender`) up to the upstream's response head.
    async fn serve_head(&self, inner: InnerBorrowRequest) -> (Head, LendRecord) {
        let now = now_ms();
        let mut record = LendRecord {
            at_ms: now,
            duration_ms: 0,
            token_hash: inner.spend.token.hash().to_string(),
            relay: String::new(),
            epoch: inner.spend.token.input.epoch,
            outcome: LendOutcome::Pending,
            request: String::new(),
            request_bytes: 0,
            response_bytes: 0,
        };
        let refuse = |reason: BorrowRefusal, retry_after_ms: Option<u64>| {
            Head::Refused(InnerBorrowResponse::Refused {
                reason,
                retry_after_ms,
            })
        };
        let http = match bhttp::decode_request(&inner.http_request, MAX_REQUEST_BODY) {
            Ok(h) => h,
            Err(e) => {
                record.outcome = LendOutcome::BadRequest;
                return (refuse(BorrowRefusal::BadRequest(e.to_string()), None), record);
            }
        };
        record.request = format!("{} {}", http.method, http.path_and_query);
        record.request_bytes = http.body.len() as u64;
        // 2. An upstream that serves the request and has room beyond what its member keeps: refuse before any
        //    claim (`protocol::lend::headroom`).
        let need = Need::of(&http.path_and_query, &http.headers, &Body::parse(&http.body));
        let (upstream, permit) = match self.upstreams.acquire_lend(&need, now) {
            Ok((shared, permit)) => (shared.upstream.clone(), permit),
            Err(NoUpstream::NotServed) => {
                record.outcome = LendOutcome::NotServed;
                return (refuse(BorrowRefusal::NotServed, None), record);
            }
            Err(NoUpstream::NoHeadroom { resets_at_ms }) => {
                record.outcome = LendOutcome::NoHeadroom;
                let retry = lend::headroom(0, 0, resets_at_ms, now).err();
                return (refuse(BorrowRefusal::NoHeadroom, retry), record);
            }
        };
        // 3. Redeem and claim durably before any work.
        let digest = wire::request_digest(&inner.http_request);
        let redeemer = self.redeemer().clone();
        let (store, spend) = (self.store.clone(), inner.spend.clone());
        let redeemed =
            tokio::task::spawn_blocking(move || redeemer.redeem(&spend, &digest, now, &store)).await;
        let redemption = match redeemed {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                upstream.release(permit);
                record.outcome = LendOutcome::TokenRejected(e.label());
                return (
                    refuse(BorrowRefusal::TokenRejected(e.label().into()), None),
                    record,
                );
            }
            Err(e) => {
                upstream.release(permit);
                record.outcome = LendOutcome::Internal;
                return (refuse(BorrowRefusal::UpstreamFailed(e.to_string()), None), record);
            }
        };
        // 3b. One spend across the group: a majority of the token's replicas must grant this claim.
        let spent_as = match self.claimer.claim(&redemption, inner.request_id).await {
            ClaimOutcome::Serve => None,
            ClaimOutcome::SpentElsewhere => Some("spent_elsewhere"),
            ClaimOutcome::SplitVote => Some("split_vote"),
            ClaimOutcome::Unreachable => {
                upstream.release(permit);
                if let Err(e) = self.redeemer().release(&redemption, &self.store) {
                    warn!(%e, "could not release a claim");
                }
                record.outcome = LendOutcome::NoQuorum;
                return (refuse(BorrowRefusal::NoQuorum, None), record);
            }
        };
        if let Some(label) = spent_as {
            // Spent elsewhere, or burnt by a split vote: the token stays spent here too.
            upstream.release(permit);
            record.outcome = LendOutcome::TokenRejected(label);
            return (refuse(BorrowRefusal::TokenRejected(label.into()), None), record);
        }
        // 4. The upstream; what its answer means for the claim is `protocol::lend::after_upstream`.
        let result = upstream
            .call(
                permit,
                UpstreamRequest {
                    method: http.method,
                    path_and_query: http.path_and_query,
                    headers: http.headers,
                    body: http.body,
                },
            )
            .await;
        self.counters
            .upstream_call(result.as_ref().ok().map(|r| r.status));
        let outcome = match &result {
            Ok(resp) => UpstreamOutcome::Status(resp.status),
            Err(
                UpstreamError::Connect { .. }
                | UpstreamError::BadUrl { .. }
                | UpstreamError::InvalidRequest(_)
                | UpstreamError::ForeignPermit,
            ) => UpstreamOutcome::Unreachable,
            Err(_) => UpstreamOutcome::Failed,
        };
        match (lend::after_upstream(outcome), result) {
            (UpstreamVerdict::ReleaseAndRefuse { status }, result) => {
                // No work was done: release the claim — here and at the token's replicas — so the token can be
                // spent again elsewhere.
                if let Err(e) = self.redeemer().release(&redemption, &self.store) {
                    warn!(%e, "could not release a claim");
                }
                self.claimer.release(&redemption, inner.request_id).await;
                let retry = result.as_ref().ok().and_then(|r| retry_after_ms(&r.headers));
                if let Err(e) = &result {
                    debug!(%e, "upstream unreachable; claim released");
                }
                record.outcome = LendOutcome::UpstreamRefused(status);
                (refuse(BorrowRefusal::UpstreamRefused { status }, retry), record)
            }
            (UpstreamVerdict::Served, Ok(resp)) => {
                record.outcome = LendOutcome::Served;
                (Head::Served(resp), record)
            }
            (_, result) => {
                record.outcome = LendOutcome::UpstreamFailed;
                let why = result
                    .err()
                    .map_or_else(|| "upstream failed".to_string(), |e| e.to_string());
                (refuse(BorrowRefusal::UpstreamFailed(why), None), record)
            }
        }
    }
}

/// `Retry-After` in delta-seconds, as milliseconds.
fn retry_after_ms(headers: &[(String, Vec<u8>)]) -> Option<u64> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok())
        .map(|s| s.saturating_mul(1000))
}
