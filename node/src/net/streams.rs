//! The streamed borrow protocols (docs/design.md §6): `/lendmesh/relay/2` (borrower → relay) and
//! `/lendmesh/borrow/2` (relay — or, in best-effort privacy mode, the borrower — → lender).
//!
//! A stream carries length-prefixed wire frames (a 4-byte big-endian length, then a versioned postcard frame of
//! `protocol::wire`, each type with its own size limit checked before anything is read into memory). A stream, unlike
//! a request-response exchange, lets the relay say "I have it" before it forwards ([`RelayFrame::Accepted`]), and so
//! lets the borrower tell a request that never left it from one that may have reached the lender:
//! - the stream could not be **opened** within [`StreamTimeouts::open`] (the peer's process must take part in the
//!   protocol negotiation: a frozen one does not), or the relay did not **acknowledge** within
//!   [`StreamTimeouts::ack`]: nothing was forwarded, the token is unspent, and the relay is to blame;
//! - the relay acknowledged and then no answer came: ambiguous (it may have reached the lender).
//!
//! The behaviour here is this module's own rather than `libp2p-stream` 0.5.0-alpha's: that crate queues one inbound
//! stream per protocol and drops the rest while the application is busy (rust-libp2p#5651) — under concurrent borrows
//! a relay would reset healthy requests — and negotiates one outbound stream at a time per connection. Here inbound
//! streams travel on the network actor's bounded event queue (1024, counted when full) and outbound negotiations run
//! concurrently, each with its own timeout. Streams open only on an existing connection: the network actor keeps
//! members connected, and "not connected" is an immediate, truthful failure.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use lendmesh_protocol::wire::{self, BorrowRequest, BorrowResponse, WireMessage};
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, InboundUpgrade, Multiaddr, OutboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
    NotifyHandler, Stream, StreamProtocol, StreamUpgradeError, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::ids::to_libp2p;
use crate::metrics::NodeMetrics;

/// Borrower → relay.
pub const RELAY_PROTOCOL: StreamProtocol = StreamProtocol::new("/lendmesh/relay/2");
/// Relay (or borrower) → lender.
pub const BORROW_PROTOCOL: StreamProtocol = StreamProtocol::new("/lendmesh/borrow/2");
/// Outbound stream requests queued to the network actor.
const OPEN_CAPACITY: usize = 256;

/// Default for [`StreamTimeouts::open`].
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// Default for [`StreamTimeouts::ack`].
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default for [`StreamTimeouts::request`].
pub const DEFAULT_REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`StreamTimeouts::first_byte`]: longer than an upstream's own first-byte limit (5 minutes by
/// default, for thinking models), so the lender's answer — a served head or its upstream's timeout — comes first.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(330);
/// Default for [`StreamTimeouts::idle`]: longer than an upstream's own idle limit (60 s by default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long each step of a streamed borrow may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTimeouts {
    /// Opening a stream: the peer's process negotiates the protocol (seconds: a frozen peer never does).
    pub open: Duration,
    /// The relay's acknowledgement after the request is written.
    pub ack: Duration,
    /// Reading the first frame of an inbound stream (the request).
    pub request: Duration,
    /// The lender's first byte once it has the request (its upstream's head included): a borrow waits this long
    /// for a thinking model to start answering, and fails over to another lender only before it.
    pub first_byte: Duration,
    /// Between two pieces of a streamed answer; a longer pause ends the answer as cut short.
    pub idle: Duration,
}

impl Default for StreamTimeouts {
    fn default() -> Self {
        StreamTimeouts {
            open: DEFAULT_OPEN_TIMEOUT,
            ack: DEFAULT_ACK_TIMEOUT,
            request: DEFAULT_REQUEST_READ_TIMEOUT,
            first_byte: DEFAULT_FIRST_BYTE_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// What went wrong on a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// No stream could be opened: nothing was written to the peer.
    #[error("cannot open a stream to {peer}: {detail}")]
    Open {
        /// Short peer id.
        peer: String,
        /// Why.
        detail: String,
    },
    /// No frame arrived in time.
    #[error("no answer from {peer} within {ms} ms")]
    Timeout {
        /// Short peer id.
        peer: String,
        /// The limit.
        ms: u128,
    },
    /// The stream failed or closed early.
    #[error("stream to {peer} failed: {detail}")]
    Io {
        /// Short peer id.
        peer: String,
        /// What happened.
        detail: String,
    },
    /// The peer sent a frame that is too large or does not decode.
    #[error("refused a frame from {peer}: {detail}")]
    Invalid {
        /// Short peer id.
        peer: String,
        /// Why.
        detail: String,
    },
    /// The network actor has stopped.
    #[error("the network actor has stopped")]
    Stopped,
}

/// A stream request from a [`Streams`] handle to the behaviour.
#[derive(Debug)]
pub(super) struct OpenRequest {
    peer: libp2p::PeerId,
    protocol: StreamProtocol,
    timeout: Duration,
    reply: oneshot::Sender<Result<Stream, String>>,
}

/// Opens streams to peers; cheap to clone. Every wait ends with [`StreamError::Stopped`] once the node's actors stop
/// (the last shutdown phase), so nothing waits out a long timeout on a network that is gone.
#[derive(Clone, Debug)]
pub struct Streams {
    tx: mpsc::Sender<OpenRequest>,
    timeouts: StreamTimeouts,
    counters: Arc<NodeMetrics>,
    stopped: CancellationToken,
}

impl Streams {
    /// A handle whose opens all fail ("not connected"), for tests of what reads and writes streams.
    pub fn unconnected(timeouts: StreamTimeouts, counters: Arc<NodeMetrics>) -> Streams {
        let (tx, _) = mpsc::channel(1);
        Streams {
            tx,
            timeouts,
            counters,
            stopped: CancellationToken::new(),
        }
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> StreamTimeouts {
        self.timeouts
    }

    /// Opens a `protocol` stream to `peer` on an existing connection within [`StreamTimeouts::open`].
    pub async fn open(
        &self,
        peer: lendmesh_protocol::PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, StreamError> {
        tokio::select! {
            _ = self.stopped.cancelled() => Err(StreamError::Stopped),
            r = self.open_inner(peer, protocol) => r,
        }
    }

    async fn open_inner(
        &self,
        peer: lendmesh_protocol::PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, StreamError> {
        let open_err = |detail: String| StreamError::Open {
            peer: peer.short(),
            detail,
        };
        let (reply, rx) = oneshot::channel();
        let req = OpenRequest {
            peer: to_libp2p(&peer),
            protocol,
            timeout: self.timeouts.open,
            reply,
        };
        let within = self.timeouts.open;
        let sent = tokio::time::timeout(within, self.tx.send(req)).await;
        match sent {
            Err(_) => return Err(open_err("the network is too busy to open streams".into())),
            Ok(Err(_)) => return Err(StreamError::Stopped),
            Ok(Ok(())) => {}
        }
        // The negotiation has its own timeout in the swarm; this one also covers the queue.
        match tokio::time::timeout(within + Duration::from_millis(250), rx).await {
            Err(_) => Err(open_err(format!(
                "not negotiated within {} ms",
                within.as_millis()
            ))),
            Ok(Err(_)) => Err(open_err("the connection closed".into())),
            Ok(Ok(Err(detail))) => Err(open_err(detail)),
            Ok(Ok(Ok(stream))) => Ok(stream),
        }
    }

    /// Reads one frame of type `T` from `peer`'s stream within `within`; oversized or garbled frames are counted.
    pub async fn recv<T: WireMessage, S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        peer: &lendmesh_protocol::PeerId,
        within: Duration,
    ) -> Result<T, StreamError> {
        let read = tokio::select! {
            _ = self.stopped.cancelled() => return Err(StreamError::Stopped),
            r = tokio::time::timeout(within, read_frame::<T, S>(stream)) => r,
        };
        match read {
            Err(_) => Err(StreamError::Timeout {
                peer: peer.short(),
                ms: within.as_millis(),
            }),
            Ok(Err(FrameError::Io(e))) => Err(StreamError::Io {
                peer: peer.short(),
                detail: e.to_string(),
            }),
            Ok(Err(FrameError::Invalid(detail))) => {
                self.counters.inc(&self.counters.inbound_failures);
                tracing::warn!(peer = %peer.short(), %detail, "refused an inbound stream frame");
                Err(StreamError::Invalid {
                    peer: peer.short(),
                    detail,
                })
            }
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// One `/lendmesh/borrow/2` exchange up to the head of the answer: opens `lender`'s stream, writes the sealed
    /// request, reads the lender's `BorrowResponse` within the first-byte limit. The stream comes back to read the
    /// sealed answer from when the head is `Sealed`.
    pub async fn lend(
        &self,
        lender: lendmesh_protocol::PeerId,
        sealed: Vec<u8>,
    ) -> Result<(BorrowResponse, Stream), LendError> {
        let mut stream = self
            .open(lender, BORROW_PROTOCOL)
            .await
            .map_err(LendError::NotOpened)?;
        self.send(&mut stream, &lender, &BorrowRequest { sealed })
            .await
            .map_err(LendError::NoHead)?;
        let head = self
            .recv::<BorrowResponse, _>(&mut stream, &lender, self.timeouts.first_byte)
            .await
            .map_err(LendError::NoHead)?;
        Ok((head, stream))
    }

    /// Reads what arrives next into `buf` within `within` (an idle limit): `Ok(0)` at the end of the stream.
    pub async fn read_some<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        peer: &lendmesh_protocol::PeerId,
        within: Duration,
        buf: &mut [u8],
    ) -> Result<usize, StreamError> {
        let read = tokio::select! {
            _ = self.stopped.cancelled() => return Err(StreamError::Stopped),
            r = tokio::time::timeout(within, stream.read(buf)) => r,
        };
        match read {
            Err(_) => Err(StreamError::Timeout {
                peer: peer.short(),
                ms: within.as_millis(),
            }),
            Ok(r) => r.map_err(|e| StreamError::Io {
                peer: peer.short(),
                detail: e.to_string(),
            }),
        }
    }

    /// Writes raw bytes and flushes them.
    pub async fn write_raw<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        peer: &lendmesh_protocol::PeerId,
        bytes: &[u8],
    ) -> Result<(), StreamError> {
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        tokio::select! {
            _ = self.stopped.cancelled() => Err(StreamError::Stopped),
            r = write => r.map_err(|e| StreamError::Io {
                peer: peer.short(),
                detail: e.to_string(),
            }),
        }
    }

    /// Resolves when `peer` goes away: its side of the stream ends, fails or sends anything (a requester keeps its
    /// side open and silent until it has the whole answer, so any of these means it gave up), or the node stops.
    pub async fn gone<S: AsyncRead + Unpin>(&self, stream: &mut S) {
        let mut byte = [0u8; 1];
        tokio::select! {
            _ = self.stopped.cancelled() => {}
            _ = stream.read(&mut byte) => {}
        }
    }

    /// Writes one frame and flushes it.
    pub async fn send<T: WireMessage, S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        peer: &lendmesh_protocol::PeerId,
        msg: &T,
    ) -> Result<(), StreamError> {
        let io_err = |e: io::Error| StreamError::Io {
            peer: peer.short(),
            detail: e.to_string(),
        };
        let bytes =
            wire::encode_prefixed(msg).map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let write = async {
            stream.write_all(&bytes).await?;
            stream.flush().await
        };
        tokio::select! {
            _ = self.stopped.cancelled() => Err(StreamError::Stopped),
            r = write => r.map_err(io_err),
        }
    }
}

/// Why a `/lendmesh/borrow/2` exchange ([`Streams::lend`]) brought no answer head.
#[derive(Debug, thiserror::Error)]
pub enum LendError {
    /// No stream could be opened: nothing was written, the lender never saw the request.
    #[error("no stream to the lender: {0}")]
    NotOpened(StreamError),
    /// The request was written (at least in part) and no head came: it may have reached the lender.
    #[error("the lender did not answer: {0}")]
    NoHead(StreamError),
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The stream failed or ended.
    Io(io::Error),
    /// Too large, or it does not decode.
    Invalid(String),
}

/// Reads one length-prefixed frame: the length is checked against `T`'s limit before the frame is read.
pub async fn read_frame<T: WireMessage, S: AsyncRead + Unpin>(stream: &mut S) -> Result<T, FrameError> {
    let mut prefix = [0u8; wire::FRAME_PREFIX];
    stream.read_exact(&mut prefix).await.map_err(FrameError::Io)?;
    let len = wire::prefixed_len::<T>(prefix).map_err(|e| FrameError::Invalid(e.to_string()))?;
    // Grows as bytes arrive, so a peer that announces a large frame and sends little costs little.
    let mut buf = Vec::new();
    (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(FrameError::Io)?;
    if buf.len() < len {
        return Err(FrameError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("stream ended after {} of {len} bytes", buf.len()),
        )));
    }
    wire::decode::<T>(&buf).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// An inbound stream, handed to the network actor.
#[derive(Debug)]
pub(super) struct Inbound {
    pub(super) peer: libp2p::PeerId,
    pub(super) protocol: StreamProtocol,
    pub(super) stream: Stream,
}

/// The behaviour: opens streams on existing connections and hands inbound ones to the network actor.
#[allow(missing_debug_implementations)]
pub(super) struct Behaviour {
    protocols: Vec<StreamProtocol>,
    open_rx: mpsc::Receiver<OpenRequest>,
    /// Each peer's connections, direct ones first: a stream goes on a direct (or hole-punched) connection when
    /// there is one, so a borrow does not run through a member's circuit relay, and its limits, needlessly.
    connections: HashMap<libp2p::PeerId, Vec<(ConnectionId, bool)>>,
    inbound: VecDeque<Inbound>,
}

impl Behaviour {
    /// The behaviour and the handle that opens streams through it.
    pub(super) fn new(
        protocols: Vec<StreamProtocol>,
        timeouts: StreamTimeouts,
        counters: Arc<NodeMetrics>,
        stopped: CancellationToken,
    ) -> (Self, Streams) {
        let (tx, open_rx) = mpsc::channel(OPEN_CAPACITY);
        (
            Behaviour {
                protocols,
                open_rx,
                connections: HashMap::new(),
                inbound: VecDeque::new(),
            },
            Streams {
                tx,
                timeouts,
                counters,
                stopped,
            },
        )
    }

    fn handler(&self) -> Handler {
        Handler {
            protocols: self.protocols.clone(),
            opens: VecDeque::new(),
            inbound: VecDeque::new(),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Inbound;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: libp2p::PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: libp2p::PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                let relayed = e.endpoint.is_relayed();
                let conns = self.connections.entry(e.peer_id).or_default();
                if relayed {
                    conns.push((e.connection_id, true));
                } else {
                    conns.insert(0, (e.connection_id, false));
                }
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(conns) = self.connections.get_mut(&e.peer_id) {
                    conns.retain(|(id, _)| *id != e.connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: libp2p::PeerId,
        _: ConnectionId,
        (stream, protocol): THandlerOutEvent<Self>,
    ) {
        self.inbound.push_back(Inbound {
            peer,
            protocol,
            stream,
        });
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(inbound) = self.inbound.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(inbound));
        }
        while let Poll::Ready(Some(req)) = self.open_rx.poll_recv(cx) {
            if req.reply.is_closed() {
                continue;
            }
            let Some(&(connection, _)) = self.connections.get(&req.peer).and_then(|c| c.first()) else {
                let _ = req.reply.send(Err("not connected".into()));
                continue;
            };
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id: req.peer,
                handler: NotifyHandler::One(connection),
                event: req,
            });
        }
        Poll::Pending
    }
}

/// One connection's side: negotiates outbound streams concurrently, each with its own timeout.
#[allow(missing_debug_implementations)]
pub(super) struct Handler {
    protocols: Vec<StreamProtocol>,
    opens: VecDeque<OpenRequest>,
    inbound: VecDeque<(Stream, StreamProtocol)>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = OpenRequest;
    type ToBehaviour = (Stream, StreamProtocol);
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = oneshot::Sender<Result<Stream, String>>;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade, ()> {
        SubstreamProtocol::new(
            Upgrade {
                protocols: self.protocols.clone(),
            },
            (),
        )
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, Self::OutboundOpenInfo, Self::ToBehaviour>> {
        if let Some(inbound) = self.inbound.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(inbound));
        }
        while let Some(req) = self.opens.pop_front() {
            if req.reply.is_closed() {
                continue;
            }
            let upgrade = Upgrade {
                protocols: vec![req.protocol],
            };
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(upgrade, req.reply).with_timeout(req.timeout),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, req: OpenRequest) {
        self.opens.push_back(req);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Upgrade, Upgrade, (), Self::OutboundOpenInfo>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => self.inbound.push_back((stream, protocol)),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info: reply,
            }) => {
                let _ = reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: reply, error }) => {
                let detail = match error {
                    StreamUpgradeError::Timeout => {
                        "the peer did not negotiate the stream in time".to_string()
                    }
                    StreamUpgradeError::NegotiationFailed => "the peer does not speak this protocol".into(),
                    StreamUpgradeError::Io(e) => e.to_string(),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(detail));
            }
            _ => {}
        }
    }
}

/// Negotiates one of `protocols` and hands over the raw stream.
#[derive(Debug)]
pub(super) struct Upgrade {
    protocols: Vec<StreamProtocol>,
}

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.protocols.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}
