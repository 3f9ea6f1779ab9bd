//! The relay role (docs/design.md §6 step 3): forwards a borrower's sealed request to the lender it names and the sealed
//! answer back. It sees who talks to whom and the sizes, never the token or the content (sealed to the lender).
//!
//! One `/lendmesh/relay/2` stream per request: the relay reads the request, refuses at once what it will not forward
//! (a lender that is itself, the borrower or not an active member; no free slot; shutting down), otherwise writes
//! [`RelayFrame::Accepted`] **before** it forwards — so a borrower that hears nothing in time knows the request never
//! left it — then opens a `/lendmesh/borrow/2` stream to the lender, writes the head of the lender's answer back as
//! [`RelayFrame::Answer`], and copies the lender's sealed (chunked OHTTP) bytes to the borrower as they arrive, through
//! one buffer and with back-pressure: it never holds a whole message. A lender that stalls past the idle limit has
//! its answer cut short (the borrower's stream is reset, so the borrower sees no final chunk: an error, never a clean
//! end); a borrower that goes away has the lender's stream reset, and the lender stops its upstream call. At most [`MAX_CONCURRENT_RELAYS`] forwards run at once; each runs as a task on the node's
//! task tracker, so shutdown waits for it (bounded).

use std::sync::Arc;

use futures::{AsyncReadExt, AsyncWriteExt};
use lendmesh_protocol::PeerId;
use lendmesh_protocol::group::Roster;
use lendmesh_protocol::wire::{BorrowResponse, DeliveryFailure, RelayFrame, RelayRequest, RelayResponse};
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::clock::now_ms;
use crate::metrics::NodeMetrics;
use crate::net::NetworkHandle;
use crate::net::streams::{LendError, StreamError, Streams};

/// Relays forwarded at once; more are refused with `RelayBusy` (the borrower picks another relay or lender).
pub const MAX_CONCURRENT_RELAYS: usize = 128;
/// The one buffer a forward copies through: a sealed chunk (16 KiB of plaintext) and its framing.
const COPY_BUFFER: usize = 17 * 1024;

/// Forwards sealed requests between members.
#[derive(Clone, Debug)]
pub struct Relay {
    me: PeerId,
    net: NetworkHandle,
    roster: watch::Receiver<Arc<Roster>>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    counters: Arc<NodeMetrics>,
}

impl Relay {
    /// A relay for node `me`; forwards run on `tasks`.
    pub fn new(
        me: PeerId,
        net: NetworkHandle,
        roster: watch::Receiver<Arc<Roster>>,
        tasks: TaskTracker,
        counters: Arc<NodeMetrics>,
    ) -> Self {
        Relay {
            me,
            net,
            roster,
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_RELAYS)),
            tasks,
            counters,
        }
    }

    /// Serves one `/lendmesh/relay/2` stream from `borrower` in a tracked task (dropped — reset — when shutting
    /// down: the borrower sees no acknowledgement and sends the request elsewhere with its token unspent).
    pub fn accept(&self, borrower: PeerId, stream: libp2p::Stream, slot: crate::roles::slots::StreamSlot) {
        if self.tasks.is_closed() {
            return;
        }
        let relay = self.clone();
        self.tasks.spawn(async move {
            let _slot = slot;
            relay.serve(borrower, stream).await;
        });
    }

    async fn serve(self, borrower: PeerId, mut stream: libp2p::Stream) {
        let streams = self.net.streams().clone();
        let timeouts = streams.timeouts();
        let req: RelayRequest = match streams.recv(&mut stream, &borrower, timeouts.request).await {
            Ok(r) => r,
            Err(e) => {
                debug!(borrower = %borrower.short(), %e, "no relay request read");
                return;
            }
        };
        let lender = req.lender;
        let ok_lender =
            lender != self.me && lender != borrower && self.roster.borrow().is_active(&lender, now_ms());
        let permit = if !ok_lender {
            Err(DeliveryFailure::BadLender)
        } else {
            self.slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| DeliveryFailure::RelayBusy)
        };
        let _permit = match permit {
            Ok(p) => p,
            Err(f) => {
                self.counters.inc(&self.counters.relays_failed);
                let refusal = RelayFrame::Answer(RelayResponse::Failed(f));
                let _ = streams.send(&mut stream, &borrower, &refusal).await;
                let _ = stream.close().await;
                return;
            }
        };
        // Acknowledge before forwarding: a borrower that is gone (or gave up) gets nothing forwarded.
        if let Err(e) = streams.send(&mut stream, &borrower, &RelayFrame::Accepted).await {
            debug!(borrower = %borrower.short(), %e, "the borrower left before the relay forwarded");
            return;
        }
        debug!(borrower = %borrower.short(), lender = %lender.short(), bytes = req.sealed.len(), "relaying");
        let (head, lender_stream) = self.forward(lender, req.sealed).await;
        match head {
            RelayResponse::Delivered => self.counters.inc(&self.counters.relays_ok),
            RelayResponse::Failed(_) => self.counters.inc(&self.counters.relays_failed),
        }
        if let Err(e) = streams
            .send(&mut stream, &borrower, &RelayFrame::Answer(head))
            .await
        {
            debug!(borrower = %borrower.short(), %e, "the lender's answer could not be passed back");
            return;
        }
        let Some(lender_stream) = lender_stream else {
            let _ = stream.close().await;
            return;
        };
        match pass_on(&streams, lender, lender_stream, borrower, stream).await {
            Passed::End => {}
            Passed::BorrowerGone => {
                NodeMetrics::outcome(&self.counters.cancelled, "relay");
                debug!(borrower = %borrower.short(), "the borrower went away; the lender's stream is reset");
            }
            Passed::CutShort(e) => {
                self.counters.inc(&self.counters.relays_failed);
                debug!(lender = %lender.short(), %e, "the lender's answer stopped; the borrower's stream is reset");
            }
        }
    }

    /// Opens the lender's stream, writes the sealed request, reads the head of its answer (up to the first-byte
    /// limit). The stream comes back when the sealed answer follows.
    async fn forward(&self, lender: PeerId, sealed: Vec<u8>) -> (RelayResponse, Option<libp2p::Stream>) {
        match self.net.streams().lend(lender, sealed).await {
            Ok((BorrowResponse::Sealed, stream)) => (RelayResponse::Delivered, Some(stream)),
            Ok((BorrowResponse::Failed(f), _)) => (RelayResponse::Failed(f), None),
            // Nothing was written: the lender never saw it.
            Err(e @ LendError::NotOpened(_)) => {
                debug!(lender = %lender.short(), %e, "cannot reach the lender");
                (RelayResponse::Failed(DeliveryFailure::LenderUnreachable), None)
            }
            // Written (at least in part): it may have reached the lender.
            Err(e @ LendError::NoHead(_)) => {
                debug!(lender = %lender.short(), %e, "the lender did not answer");
                (RelayResponse::Failed(DeliveryFailure::LenderTimeout), None)
            }
        }
    }
}

/// How passing a sealed answer on ended.
enum Passed {
    /// The lender ended its stream: passed on whole, the borrower's side closed cleanly.
    End,
    /// The borrower went away (its tool disconnected): the lender's stream is dropped, which resets it.
    BorrowerGone,
    /// The lender's stream failed or stalled past the idle limit: the borrower's stream is dropped (reset), so the
    /// borrower sees a sealed answer without its final chunk — cut short, never a clean end.
    CutShort(StreamError),
}

/// Copies the lender's sealed bytes to the borrower as they come, with back-pressure (one buffer, never a whole
/// message), until the lender ends, stalls, or the borrower goes away.
async fn pass_on(
    streams: &Streams,
    lender: PeerId,
    mut from: libp2p::Stream,
    borrower: PeerId,
    to: libp2p::Stream,
) -> Passed {
    let (mut to_read, mut to_write) = to.split();
    let idle = streams.timeouts().idle;
    let mut buf = vec![0u8; COPY_BUFFER];
    let copy = async {
        loop {
            let n = streams.read_some(&mut from, &lender, idle, &mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            streams.write_raw(&mut to_write, &borrower, &buf[..n]).await?;
        }
    };
    let ended = tokio::select! {
        r = copy => r,
        () = streams.gone(&mut to_read) => return Passed::BorrowerGone,
    };
    match ended {
        Ok(()) => {
            let _ = to_write.close().await;
            Passed::End
        }
        Err(e) => Passed::CutShort(e),
    }
}
