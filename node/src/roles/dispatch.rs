//! Routes the network actor's inbound events to the role that owns them: issue requests to the issuer (or a
//! `NotIssuer` refusal), relay streams to the relay, borrow streams to the lender (read and answered here, in a
//! tracked task), claims to the replica, and everything else (gossip, connections, RTTs) to the PeerBook. A full
//! queue is answered "busy" or counted as dropped, never waited on. One member holds at most
//! `[limits] open_streams` (64) relay streams and as many borrow streams open here at once, whatever their state
//! (reading the request, forwarding, streaming the answer): no member can take all of a node's relay or lend
//! slots, nor pile up tasks waiting for requests that never come (docs/design.md §9.3).

use lendmesh_protocol::PeerId;
use lendmesh_protocol::issuer::IssueError;
use lendmesh_protocol::wire::{BorrowRequest, IssueResponse};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::NodeMetrics;
use crate::net::streams::{BORROW_PROTOCOL, RELAY_PROTOCOL};
use crate::net::{NetEvent, NetworkHandle};
use crate::roles::issuer::IssuerHandle;
use crate::roles::lender::LenderHandle;
use crate::roles::member::MemberHandle;
use crate::roles::peerbook::PeerBookHandle;
use crate::roles::relay::Relay;
use crate::roles::replica::Replica;
use crate::roles::slots::{PeerSlots, StreamSlot};

/// The dispatcher's targets.
#[derive(Debug)]
pub struct Dispatcher {
    /// The group's admin (a connection to it nudges the member's refill).
    pub admin: PeerId,
    /// The PeerBook.
    pub book: PeerBookHandle,
    /// The issuer, on the admin node.
    pub issuer: Option<IssuerHandle>,
    /// The lender.
    pub lender: LenderHandle,
    /// The member.
    pub member: MemberHandle,
    /// The relay.
    pub relay: Relay,
    /// The replica.
    pub replica: Replica,
    /// Answers go back through the network.
    pub net: NetworkHandle,
    /// Metrics.
    pub counters: Arc<NodeMetrics>,
    /// Borrow streams are served here, so shutdown waits for them (bounded).
    pub tasks: TaskTracker,
    /// Open relay and borrow streams per member.
    pub stream_slots: PeerSlots,
}

impl Dispatcher {
    /// Runs until the network's event stream ends.
    pub async fn run(self, mut events: mpsc::Receiver<NetEvent>) {
        while let Some(ev) = events.recv().await {
            self.handle(ev).await;
        }
    }

    async fn handle(&self, ev: NetEvent) {
        match ev {
            NetEvent::InboundIssue { peer, req, channel } => self.handle_issue(peer, req, channel).await,
            NetEvent::InboundStream {
                peer,
                protocol,
                stream,
            } => {
                let relay = protocol == RELAY_PROTOCOL;
                if !relay && protocol != BORROW_PROTOCOL {
                    return;
                }
                // Dropped unread (reset) when the member already holds its share: the sender sees the stream fail.
                let Some(slot) = self.stream_slots.take(peer, relay) else {
                    let surface = if relay { "relay" } else { "borrow" };
                    self.counters.peer_throttled(&peer.short(), surface);
                    debug!(peer = %peer.short(), surface, "too many streams open from one member; reset");
                    return;
                };
                if relay {
                    self.relay.accept(peer, stream, slot);
                } else {
                    self.serve_borrow(peer, stream, slot);
                }
            }
            NetEvent::InboundClaim { peer, req, channel } => {
                // A claim waits for a durable write: in a task of its own, so a slow disk never holds up the other
                // events (bounded by the network's request-response concurrency).
                let (replica, net) = (self.replica.clone(), self.net.clone());
                self.tasks.spawn(async move {
                    if let Some(resp) = replica.answer(peer, req).await {
                        net.respond_claim(channel, resp).await;
                    }
                });
            }
            NetEvent::Subscribed { peer } => {
                self.lender.nudge();
                self.forward(NetEvent::Subscribed { peer });
            }
            NetEvent::Connected { peer, addr, outbound } => {
                if peer == self.admin {
                    // The issuer is reachable (again): refill now rather than when the backoff runs out.
                    self.member.nudge();
                }
                self.forward(NetEvent::Connected { peer, addr, outbound });
            }
            other => self.forward(other),
        }
    }

    async fn handle_issue(
        &self,
        peer: PeerId,
        req: lendmesh_protocol::wire::IssueRequest,
        channel: libp2p::request_response::ResponseChannel<IssueResponse>,
    ) {
        let refusal = match &self.issuer {
            Some(h) => match h.try_remote(peer, req, channel) {
                Ok(()) => return,
                Err(channel) => {
                    warn!(peer = %peer.short(), "issuer busy; refusing the request");
                    (channel, IssueError::Busy)
                }
            },
            None => {
                warn!(peer = %peer.short(), "issue request sent to a node that is not the issuer");
                (channel, IssueError::NotIssuer)
            }
        };
        self.net
            .respond_issue(refusal.0, IssueResponse::Refused(refusal.1))
            .await;
    }

    /// Reads one `/lendmesh/borrow/2` request and hands the stream to the lender, in a tracked task.
    fn serve_borrow(&self, peer: PeerId, mut stream: libp2p::Stream, slot: StreamSlot) {
        if self.tasks.is_closed() {
            return;
        }
        let (lender, net) = (self.lender.clone(), self.net.clone());
        self.tasks.spawn(async move {
            let _slot = slot;
            let streams = net.streams();
            let req: BorrowRequest = match streams.recv(&mut stream, &peer, streams.timeouts().request).await
            {
                Ok(r) => r,
                Err(e) => {
                    debug!(peer = %peer.short(), %e, "no borrow request read");
                    return;
                }
            };
            lender.serve_stream(peer, req, stream, streams).await;
        });
    }

    fn forward(&self, ev: NetEvent) {
        if !self.book.try_forward(ev) {
            self.counters.inc(&self.counters.net_events_dropped);
        }
    }
}
