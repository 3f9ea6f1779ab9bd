//! The Network actor: the only owner of the libp2p `Swarm` (docs/design.md §10).
//!
//! Transport: TCP → pnet handshake with the group's pre-shared key → noise → yamux, and no other transport (QUIC
//! and friends cannot carry pnet and would let non-members in around the key). A wrong key is not reported as such
//! by libp2p (the noise handshake just fails), so connection errors say "check the group key" and the key's
//! fingerprint (never the key) is logged at start.
//!
//! Behaviours: identify, ping, gossipsub (signed messages, strict validation: every message is held until
//! `protocol` code accepts it), Kademlia (group-specific protocol name, forced server mode, fed identify's listen
//! addresses), optional mDNS, request-response for `/lendmesh/{issue,claim}/1` with the size-limited postcard
//! [`WireCodec`], and the streamed borrow protocols `/lendmesh/{relay,borrow}/2` ([`streams`]). Connections from
//! peers that are not active roster members are closed.
//!
//! **Health.** Every connection is pinged every [`PING_INTERVAL`] with a [`PING_TIMEOUT`]; each answer goes to the
//! PeerBook as [`NetEvent::Rtt`], whose silence marks the peer unhealthy for routing (`protocol::health`).
//!
//! **Reconnection.** Every roster member this node is not connected to is redialled — at every address learned for
//! it (identify, outbound connections, bootstrap addresses that name it; persisted in the store so a restarted node
//! finds the group without bootstrap flags) and those Kademlia knows — with exponential backoff and jitter per peer
//! (0.5 s doubling to a 60 s cap, `protocol`'s [`Backoff`]). While connected to no member at all it also redials
//! every bootstrap address on its own backoff. So nodes may start in any order: one that starts before its
//! bootstrap peer keeps trying until that peer is up. A failed dial says "check the group key" only when the
//! failure can be a wrong key (the connection opened and the handshake died), never for a refused connection.
//!
//! Other actors talk to it through a [`NetworkHandle`] (bounded channel, oneshot replies); it reports inbound
//! traffic as [`NetEvent`]s on a bounded channel, dropping (and counting) when the consumer lags.

pub mod codec;
mod dial;
mod gate;
pub mod ids;
pub mod nat;

use self::nat::Switch;
pub mod streams;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lendmesh_protocol::backoff::Backoff;
use lendmesh_protocol::group::Roster;
use lendmesh_protocol::wire::{
    self, ClaimRequest, ClaimResponse, GossipMessage, IssueRequest, IssueResponse,
};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::upgrade::Version;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::metrics::{Metrics as Libp2pMetrics, Recorder};
use libp2p::pnet::PnetConfig;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, Transport, autonat, dcutr, identify, kad, mdns, noise, ping, relay,
    tcp, yamux,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::codec::WireCodec;
use self::ids::{to_libp2p, to_proto};
use crate::metrics::NodeMetrics;
use crate::store::{MAX_ADDRS_PER_PEER, Store};

/// Commands queued to the network actor. 256: a burst of a few requests per peer in a 100-member group.
pub const COMMAND_CAPACITY: usize = 256;
/// Events queued from the network actor. 1024: gossip from 100 peers arriving together, with room to spare.
pub const EVENT_CAPACITY: usize = 1024;
/// How long a request-response request (issue, claim) may take, responder's work included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often every connection is pinged (`protocol::health`).
pub const PING_INTERVAL: Duration =
    Duration::from_millis(lendmesh_protocol::health::DEFAULT_PING_INTERVAL_MS);
/// How long a ping may go unanswered.
pub const PING_TIMEOUT: Duration = Duration::from_millis(lendmesh_protocol::health::DEFAULT_PING_TIMEOUT_MS);
/// How long shutdown keeps the swarm running to write answers already given (a lend that finished in the drain).
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);
/// How long shutdown keeps connections open after the last answer was written, for peers to read it.
const LINGER: Duration = Duration::from_millis(500);
/// How often redials are considered (each peer's own backoff decides whether it is due).
const REDIAL_TICK: Duration = Duration::from_millis(250);
/// First redial delay; doubles per consecutive failure.
const REDIAL_BASE_MS: u64 = 500;
/// Longest redial delay: about a minute, so a member that comes back is found within a minute.
const REDIAL_MAX_MS: u64 = 60_000;
/// Idle connections are kept this long (a small group stays fully connected).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Reservations this node's relay holds at once (every member of the largest group, with room).
const RELAY_MAX_RESERVATIONS: usize = 256;
/// How long a reservation lasts before the member renews it (the client renews on its own).
const RELAY_RESERVATION_DURATION: Duration = Duration::from_secs(3600);
/// Connections this node's relay carries at once: every pair of members behind NAT in a large group may need one.
const RELAY_MAX_CIRCUITS: usize = 1024;
/// Circuits one member may hold through this relay at once (one to each other member of the largest group).
const RELAY_MAX_CIRCUITS_PER_PEER: usize = 128;
/// New circuits one member may open through this relay per minute (a restart dials everyone at once).
const RELAY_CIRCUITS_PER_MINUTE: u32 = 240;
/// Largest gossip message (an epoch announcement with a full roster); matches the wire limit.
const MAX_GOSSIP: usize = 128 * 1024;

/// The `/lendmesh/issue/1` protocol.
pub const ISSUE_PROTOCOL: StreamProtocol = StreamProtocol::new("/lendmesh/issue/1");
/// The `/lendmesh/claim/1` protocol (lender → replica).
pub const CLAIM_PROTOCOL: StreamProtocol = StreamProtocol::new("/lendmesh/claim/1");

/// Network failures as other actors see them.
#[derive(Debug, thiserror::Error, Clone)]
pub enum NetError {
    /// The peer could not be reached at all: the request was never delivered.
    #[error("cannot reach {peer}: {detail}")]
    Unreachable {
        /// Short peer id.
        peer: String,
        /// What libp2p said.
        detail: String,
    },
    /// The request may have been delivered but was not answered (timeout, connection lost, stream error).
    #[error("request to {peer} failed: {detail}")]
    Request {
        /// Short peer id.
        peer: String,
        /// What libp2p said.
        detail: String,
    },
    /// Publishing on gossipsub failed (e.g. no peer subscribed yet).
    #[error("publish failed: {0}")]
    Publish(String),
    /// The network actor has stopped.
    #[error("the network actor has stopped")]
    Stopped,
}

/// What the network actor reports.
#[derive(Debug)]
pub enum NetEvent {
    /// A member asks this node (the issuer) for tokens.
    InboundIssue {
        /// The authenticated remote.
        peer: lendmesh_protocol::PeerId,
        /// The request.
        req: IssueRequest,
        /// Where to answer.
        channel: ResponseChannel<IssueResponse>,
    },
    /// An active member opened a streamed-protocol stream (`/lendmesh/relay/2` to relay, `/lendmesh/borrow/2` to
    /// lend).
    InboundStream {
        /// The remote (a borrower for relay, a relay or borrower for borrow).
        peer: lendmesh_protocol::PeerId,
        /// Which protocol.
        protocol: StreamProtocol,
        /// The stream.
        stream: libp2p::Stream,
    },
    /// A lender asks this node (a replica) to record a claim.
    InboundClaim {
        /// The lender.
        peer: lendmesh_protocol::PeerId,
        /// The request.
        req: ClaimRequest,
        /// Where to answer.
        channel: ResponseChannel<ClaimResponse>,
    },
    /// A gossip message awaiting validation (report it with [`NetworkHandle::report`]).
    Gossip {
        /// Its id.
        msg_id: MessageId,
        /// Who forwarded it.
        propagation_source: libp2p::PeerId,
        /// The decoded message (boxed: an attestation is much larger than the other events).
        msg: Box<GossipMessage>,
    },
    /// A peer subscribed to the group topic (a fresh attestation helps it).
    Subscribed {
        /// The peer.
        peer: lendmesh_protocol::PeerId,
    },
    /// A connection to an allowed peer was established.
    Connected {
        /// The peer.
        peer: lendmesh_protocol::PeerId,
        /// Its address.
        addr: Multiaddr,
        /// Whether we dialed.
        outbound: bool,
    },
    /// The last connection to a peer closed.
    Disconnected {
        /// The peer.
        peer: lendmesh_protocol::PeerId,
    },
    /// A ping round trip.
    Rtt {
        /// The peer.
        peer: lendmesh_protocol::PeerId,
        /// Round-trip time.
        rtt: Duration,
    },
    /// identify told us about a peer.
    Identified {
        /// The peer.
        peer: lendmesh_protocol::PeerId,
        /// Its agent string.
        agent: String,
        /// Its listen addresses.
        listen_addrs: Vec<Multiaddr>,
    },
}

/// What the node knows about its connections.
#[derive(Clone, Debug, Default)]
pub struct NetSnapshot {
    /// Addresses we listen on.
    pub listen_addrs: Vec<Multiaddr>,
    /// Connected peers.
    pub connected: Vec<lendmesh_protocol::PeerId>,
    /// How each connected member is reached.
    pub paths: HashMap<lendmesh_protocol::PeerId, nat::ConnPath>,
    /// This node's reachability, relay and reservations.
    pub nat: nat::NatSnapshot,
}

enum Command {
    Issue {
        peer: lendmesh_protocol::PeerId,
        req: IssueRequest,
        reply: oneshot::Sender<Result<IssueResponse, NetError>>,
    },
    RespondIssue {
        channel: ResponseChannel<IssueResponse>,
        resp: IssueResponse,
    },
    Claim {
        peer: lendmesh_protocol::PeerId,
        req: ClaimRequest,
        reply: oneshot::Sender<Result<ClaimResponse, NetError>>,
    },
    RespondClaim {
        channel: ResponseChannel<ClaimResponse>,
        resp: ClaimResponse,
    },
    Publish {
        msg: GossipMessage,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Report {
        msg_id: MessageId,
        source: libp2p::PeerId,
        acceptance: MessageAcceptance,
    },
    Snapshot {
        reply: oneshot::Sender<NetSnapshot>,
    },
}

/// A cheap handle to the network actor.
#[derive(Clone, Debug)]
pub struct NetworkHandle {
    tx: mpsc::Sender<Command>,
    streams: streams::Streams,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Issue { .. } => "Issue",
            Command::RespondIssue { .. } => "RespondIssue",
            Command::Claim { .. } => "Claim",
            Command::RespondClaim { .. } => "RespondClaim",
            Command::Publish { .. } => "Publish",
            Command::Report { .. } => "Report",
            Command::Snapshot { .. } => "Snapshot",
        })
    }
}

impl NetworkHandle {
    /// Asks `peer` (the issuer) to sign a batch.
    pub async fn issue(
        &self,
        peer: lendmesh_protocol::PeerId,
        req: IssueRequest,
    ) -> Result<IssueResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Issue { peer, req, reply })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Asks `peer` (a replica) to record or release a claim (`/lendmesh/claim/1`).
    pub async fn claim(
        &self,
        peer: lendmesh_protocol::PeerId,
        req: ClaimRequest,
    ) -> Result<ClaimResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Claim { peer, req, reply })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Answers an inbound issue request.
    pub async fn respond_issue(&self, channel: ResponseChannel<IssueResponse>, resp: IssueResponse) {
        let _ = self.tx.send(Command::RespondIssue { channel, resp }).await;
    }

    /// Opens streams for the streamed borrow protocols.
    pub fn streams(&self) -> &streams::Streams {
        &self.streams
    }

    /// Answers an inbound claim request.
    pub async fn respond_claim(&self, channel: ResponseChannel<ClaimResponse>, resp: ClaimResponse) {
        let _ = self.tx.send(Command::RespondClaim { channel, resp }).await;
    }

    /// Publishes on the group topic.
    pub async fn publish(&self, msg: GossipMessage) -> Result<(), NetError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Publish { msg, reply })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Reports a gossip message's validation result.
    pub async fn report(&self, msg_id: MessageId, source: libp2p::PeerId, acceptance: MessageAcceptance) {
        let _ = self
            .tx
            .send(Command::Report {
                msg_id,
                source,
                acceptance,
            })
            .await;
    }

    /// Listen addresses and connected peers.
    pub async fn snapshot(&self) -> NetSnapshot {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Snapshot { reply }).await.is_err() {
            return NetSnapshot::default();
        }
        rx.await.unwrap_or_default()
    }
}

/// Everything the network actor needs to start.
pub struct NetworkParams {
    /// The node key.
    pub keypair: libp2p::identity::Keypair,
    /// The group's network key.
    pub psk: libp2p::pnet::PreSharedKey,
    /// The group id (names the topic and the Kademlia protocol).
    pub group_id: lendmesh_protocol::GroupId,
    /// Where to listen.
    pub listen: Vec<Multiaddr>,
    /// Whom to dial first.
    pub bootstrap: Vec<Multiaddr>,
    /// mDNS on or off.
    pub mdns: bool,
    /// The current roster (connections from others are closed).
    pub roster: watch::Receiver<Arc<Roster>>,
    /// libp2p's own metrics, recorded on every swarm event.
    pub libp2p_metrics: Libp2pMetrics,
    /// Where learned addresses are kept.
    pub store: Store,
    /// Timeouts of the streamed borrow protocols.
    pub stream_timeouts: streams::StreamTimeouts,
    /// Per-member rate limits on every inbound surface (shared with the API, which shows what they did).
    pub limiter: SharedLimiter,
    /// Addresses this node is known to be reachable at (`[network] external`): confirmed external addresses.
    pub external: Vec<Multiaddr>,
    /// NAT traversal: the circuit relay this node serves, its reservations on others' (§10.4).
    pub nat: NatParams,
}

/// NAT traversal settings (`[network] circuit_*`, `reserve_circuit`; docs/design.md §10.4).
#[derive(Clone, Copy, Debug)]
pub struct NatParams {
    /// Whether this node relays for others.
    pub circuit_relay: Switch,
    /// Whether this node reserves a slot on others' relays.
    pub reserve_circuit: Switch,
    /// Longest relayed connection.
    pub circuit_max_duration: Duration,
    /// Most bytes on one relayed connection (0: no limit).
    pub circuit_max_bytes: u64,
}

/// The per-member limiter (`protocol::limits`), shared by the network actor (which admits) and the API (which
/// shows its counts).
pub type SharedLimiter = Arc<std::sync::Mutex<lendmesh_protocol::limits::PeerLimiter>>;

/// Connections this node holds at once, in all (a few per member of the largest groups).
pub const MAX_CONNECTIONS: u32 = 1024;
/// Incoming connections still in their handshake at once.
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Request-response exchanges (issue, claim) open at once on one connection.
pub const MAX_REQUEST_STREAMS: usize = 32;

impl std::fmt::Debug for NetworkParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkParams")
            .field("group_id", &self.group_id)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// The group's gossip topic.
pub fn topic(group: &lendmesh_protocol::GroupId) -> IdentTopic {
    IdentTopic::new(format!("/lendmesh/{group}/v1"))
}

mod actor;
mod swarm;

pub use actor::spawn;
