//! The Network actor: the only owner of the libp2p `Swarm` (DESIGN §10).
//!
//! Transport: TCP → pnet handshake with the group's pre-shared key → noise → yamux, and no other transport (QUIC
//! and friends cannot carry pnet and would let non-members in around the key). A wrong key is not reported as such
//! by libp2p (the noise handshake just fails), so connection errors say "check the group key" and the key's
//! fingerprint (never the key) is logged at start.
//!
//! Behaviours: identify, ping, gossipsub (signed messages, strict validation: every message is held until
//! `protocol` code accepts it), Kademlia (group-specific protocol name, forced server mode, fed identify's listen
//! addresses), optional mDNS, and request-response for `/lendmesh/{issue,relay,borrow,claim}/1` with the size-limited
//! postcard [`WireCodec`]. Connections from peers that are not active roster members are closed.
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lendmesh_protocol::backoff::Backoff;
use lendmesh_protocol::group::Roster;
use lendmesh_protocol::wire::{
    self, BorrowRequest, BorrowResponse, ClaimRequest, ClaimResponse, GossipMessage, IssueRequest,
    IssueResponse, RelayRequest, RelayResponse,
};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::upgrade::Version;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::metrics::{Metrics as Libp2pMetrics, Recorder};
use libp2p::pnet::PnetConfig;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol, Swarm, Transport, identify, kad, mdns, noise, ping, tcp, yamux};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::WireCodec;
use crate::metrics::Counters;
use crate::store::{MAX_ADDRS_PER_PEER, Store};
use crate::{to_libp2p, to_proto};

/// Commands queued to the network actor. 256: a burst of a few requests per peer in a 100-member group.
pub const COMMAND_CAPACITY: usize = 256;
/// Events queued from the network actor. 1024: gossip from 100 peers arriving together, with room to spare.
pub const EVENT_CAPACITY: usize = 1024;
/// How long a request may take, responder's work included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often redials are considered (each peer's own backoff decides whether it is due).
const REDIAL_TICK: Duration = Duration::from_millis(250);
/// First redial delay; doubles per consecutive failure.
const REDIAL_BASE_MS: u64 = 500;
/// Longest redial delay: about a minute, so a member that comes back is found within a minute.
const REDIAL_MAX_MS: u64 = 60_000;
/// Idle connections are kept this long (a small group stays fully connected).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest gossip message (an epoch announcement with a full roster); matches the wire limit.
const MAX_GOSSIP: usize = 128 * 1024;

/// The `/lendmesh/issue/1` protocol.
pub const ISSUE_PROTOCOL: StreamProtocol = StreamProtocol::new("/lendmesh/issue/1");
/// The `/lendmesh/relay/1` protocol (borrower → relay).
pub const RELAY_PROTOCOL: StreamProtocol = StreamProtocol::new("/lendmesh/relay/1");
/// The `/lendmesh/borrow/1` protocol (relay → lender).
pub const BORROW_PROTOCOL: StreamProtocol = StreamProtocol::new("/lendmesh/borrow/1");
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

/// The combined behaviour. (libp2p behaviours do not implement `Debug`.)
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    issue: request_response::Behaviour<WireCodec<IssueRequest, IssueResponse>>,
    relay: request_response::Behaviour<WireCodec<RelayRequest, RelayResponse>>,
    borrow: request_response::Behaviour<WireCodec<BorrowRequest, BorrowResponse>>,
    claim: request_response::Behaviour<WireCodec<ClaimRequest, ClaimResponse>>,
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
    /// A member asks this node to relay a sealed request to a lender.
    InboundRelay {
        /// The borrower (a roster member).
        peer: lendmesh_protocol::PeerId,
        /// The request.
        req: RelayRequest,
        /// Where to answer.
        channel: ResponseChannel<RelayResponse>,
    },
    /// A relay forwards a sealed borrow request to this node (the lender).
    InboundBorrow {
        /// The relay (or, in best-effort mode, the borrower).
        peer: lendmesh_protocol::PeerId,
        /// The request.
        req: BorrowRequest,
        /// Where to answer.
        channel: ResponseChannel<BorrowResponse>,
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
    Relay {
        peer: lendmesh_protocol::PeerId,
        req: RelayRequest,
        reply: oneshot::Sender<Result<RelayResponse, NetError>>,
    },
    RespondRelay {
        channel: ResponseChannel<RelayResponse>,
        resp: RelayResponse,
    },
    Borrow {
        peer: lendmesh_protocol::PeerId,
        req: BorrowRequest,
        reply: oneshot::Sender<Result<BorrowResponse, NetError>>,
    },
    RespondBorrow {
        channel: ResponseChannel<BorrowResponse>,
        resp: BorrowResponse,
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
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Issue { .. } => "Issue",
            Command::RespondIssue { .. } => "RespondIssue",
            Command::Relay { .. } => "Relay",
            Command::RespondRelay { .. } => "RespondRelay",
            Command::Borrow { .. } => "Borrow",
            Command::RespondBorrow { .. } => "RespondBorrow",
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

    /// Answers an inbound issue request.
    pub async fn respond_issue(&self, channel: ResponseChannel<IssueResponse>, resp: IssueResponse) {
        let _ = self.tx.send(Command::RespondIssue { channel, resp }).await;
    }

    /// Sends a sealed request to `relay` for `req.lender`.
    pub async fn relay(
        &self,
        relay: lendmesh_protocol::PeerId,
        req: RelayRequest,
    ) -> Result<RelayResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Relay {
                peer: relay,
                req,
                reply,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Sends a sealed borrow request to a lender.
    pub async fn borrow(
        &self,
        lender: lendmesh_protocol::PeerId,
        req: BorrowRequest,
    ) -> Result<BorrowResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Borrow {
                peer: lender,
                req,
                reply,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Answers an inbound relay request.
    pub async fn respond_relay(&self, channel: ResponseChannel<RelayResponse>, resp: RelayResponse) {
        let _ = self.tx.send(Command::RespondRelay { channel, resp }).await;
    }

    /// Answers an inbound borrow request.
    pub async fn respond_borrow(&self, channel: ResponseChannel<BorrowResponse>, resp: BorrowResponse) {
        let _ = self.tx.send(Command::RespondBorrow { channel, resp }).await;
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
}

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

fn build_swarm(p: &NetworkParams, counters: &Arc<Counters>) -> anyhow::Result<Swarm<Behaviour>> {
    let psk = p.psk;
    let kad_protocol = StreamProtocol::try_from_owned(format!("/lendmesh/{}/kad/1", p.group_id))?;
    let mdns_on = p.mdns;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(p.keypair.clone())
        .with_tokio()
        .with_other_transport(
            move |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let noise = noise::Config::new(key)?;
                Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
            },
        )?
        .with_behaviour(
            |key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let peer_id = key.public().to_peer_id();
                let gossip_config = gossipsub::ConfigBuilder::default()
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .validate_messages()
                    .max_transmit_size(MAX_GOSSIP)
                    .heartbeat_interval(Duration::from_millis(700))
                    .build()?;
                let gossipsub = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?;
                let mut kad = kad::Behaviour::with_config(
                    peer_id,
                    kad::store::MemoryStore::new(peer_id),
                    kad::Config::new(kad_protocol),
                );
                kad.set_mode(Some(kad::Mode::Server));
                let mdns = if mdns_on {
                    Toggle::from(Some(mdns::tokio::Behaviour::new(
                        mdns::Config::default(),
                        peer_id,
                    )?))
                } else {
                    Toggle::from(None)
                };
                let rr = request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT);
                Ok(Behaviour {
                    identify: identify::Behaviour::new(
                        identify::Config::new("/lendmesh/id/1".into(), key.public())
                            .with_agent_version(format!("lendmesh/{}", env!("CARGO_PKG_VERSION"))),
                    ),
                    ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5))),
                    gossipsub,
                    kad,
                    mdns,
                    issue: request_response::Behaviour::with_codec(
                        WireCodec::new(counters.clone()),
                        [(ISSUE_PROTOCOL, ProtocolSupport::Full)],
                        rr.clone(),
                    ),
                    relay: request_response::Behaviour::with_codec(
                        WireCodec::new(counters.clone()),
                        [(RELAY_PROTOCOL, ProtocolSupport::Full)],
                        rr.clone(),
                    ),
                    borrow: request_response::Behaviour::with_codec(
                        WireCodec::new(counters.clone()),
                        [(BORROW_PROTOCOL, ProtocolSupport::Full)],
                        rr.clone(),
                    ),
                    claim: request_response::Behaviour::with_codec(
                        WireCodec::new(counters.clone()),
                        [(CLAIM_PROTOCOL, ProtocolSupport::Full)],
                        rr,
                    ),
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("building the network behaviour failed: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    Ok(swarm)
}

/// Starts the network actor; returns its handle, its event stream and its task.
pub fn spawn(
    params: NetworkParams,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    NetworkHandle,
    mpsc::Receiver<NetEvent>,
    tokio::task::JoinHandle<()>,
)> {
    let mut swarm = build_swarm(&params, &counters)?;
    let topic = topic(&params.group_id);
    swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
    for addr in &params.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    }
    // Addresses learned in earlier runs, and bootstrap addresses that name their peer.
    let mut learned: HashMap<libp2p::PeerId, Vec<Multiaddr>> = HashMap::new();
    match params.store.peer_addrs() {
        Ok(rows) => {
            for (peer, addrs) in rows {
                let addrs = addrs.iter().filter_map(|a| a.parse().ok()).collect();
                learned.insert(to_libp2p(&peer), addrs);
            }
        }
        Err(e) => warn!(%e, "cannot read learned peer addresses"),
    }
    for addr in &params.bootstrap {
        if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
            let entry = learned.entry(peer).or_default();
            let plain: Multiaddr = addr
                .iter()
                .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                .collect();
            if !entry.contains(&plain) {
                entry.insert(0, plain);
            }
        }
    }
    info!(
        peer = %swarm.local_peer_id(),
        group_key_fingerprint = %params.psk.fingerprint(),
        "network starting (private network; members must share the group key with this fingerprint)"
    );
    let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
    let (event_tx, event_rx) = mpsc::channel(EVENT_CAPACITY);
    let actor = Network {
        swarm,
        topic,
        commands: rx,
        events: event_tx,
        roster: params.roster,
        pending_issue: HashMap::new(),
        pending_relay: HashMap::new(),
        pending_borrow: HashMap::new(),
        counters,
        fingerprint: params.psk.fingerprint().to_string(),
        libp2p_metrics: params.libp2p_metrics,
        store: params.store,
        bootstrap: params.bootstrap,
        bootstrap_backoff: Backoff::new(REDIAL_BASE_MS, REDIAL_MAX_MS),
        learned,
        backoff: HashMap::new(),
    };
    let task = tokio::spawn(actor.run(shutdown));
    Ok((NetworkHandle { tx }, event_rx, task))
}

struct Network {
    swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    roster: watch::Receiver<Arc<Roster>>,
    pending_issue: PendingMap<IssueResponse>,
    pending_relay: PendingMap<RelayResponse>,
    pending_borrow: PendingMap<BorrowResponse>,
    counters: Arc<Counters>,
    fingerprint: String,
    libp2p_metrics: Libp2pMetrics,
    store: Store,
    /// Bootstrap addresses (from the invite and flags), redialled while no member is connected.
    bootstrap: Vec<Multiaddr>,
    bootstrap_backoff: Backoff,
    /// Addresses learned per peer (persisted).
    learned: HashMap<libp2p::PeerId, Vec<Multiaddr>>,
    /// Redial backoff per roster member not connected.
    backoff: HashMap<libp2p::PeerId, Backoff>,
}

fn now_ms() -> u64 {
    crate::now_ms()
}

impl Network {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut redial = tokio::time::interval(REDIAL_TICK);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(cmd) = self.commands.recv() => self.handle_command(cmd),
                Ok(()) = self.roster.changed() => self.handle_roster_change(),
                _ = redial.tick() => self.handle_redial(),
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
            }
        }
        for (_, reply) in self.pending_issue.drain() {
            let _ = reply.send(Err(NetError::Stopped));
        }
        for (_, reply) in self.pending_relay.drain() {
            let _ = reply.send(Err(NetError::Stopped));
        }
        for (_, reply) in self.pending_borrow.drain() {
            let _ = reply.send(Err(NetError::Stopped));
        }
        info!("network stopped");
    }

    fn emit(&self, event: NetEvent) {
        if self.events.try_send(event).is_err() {
            self.counters.inc(&self.counters.net_events_dropped);
            warn!("network event dropped: consumer is behind");
        }
    }

    fn allowed(&self, peer: &libp2p::PeerId) -> bool {
        to_proto(peer).is_some_and(|p| self.roster.borrow().is_active(&p, now_ms()))
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Issue { peer, req, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .issue
                    .send_request(&to_libp2p(&peer), req);
                self.pending_issue.insert(id, reply);
            }
            Command::RespondIssue { channel, resp } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .issue
                    .send_response(channel, resp)
                    .is_err()
                {
                    warn!("issue response not sent: the requester went away");
                }
            }
            Command::Relay { peer, req, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .relay
                    .send_request(&to_libp2p(&peer), req);
                self.pending_relay.insert(id, reply);
            }
            Command::Borrow { peer, req, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .borrow
                    .send_request(&to_libp2p(&peer), req);
                self.pending_borrow.insert(id, reply);
            }
            Command::RespondRelay { channel, resp } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .relay
                    .send_response(channel, resp)
                    .is_err()
                {
                    debug!("relay response not sent: the borrower went away");
                }
            }
            Command::RespondBorrow { channel, resp } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .borrow
                    .send_response(channel, resp)
                    .is_err()
                {
                    debug!("borrow response not sent: the relay went away");
                }
            }
            Command::RespondClaim { channel, resp } => {
                let _ = self.swarm.behaviour_mut().claim.send_response(channel, resp);
            }
            Command::Publish { msg, reply } => {
                let result = wire::encode(&msg)
                    .map_err(|e| NetError::Publish(e.to_string()))
                    .and_then(|bytes| {
                        self.swarm
                            .behaviour_mut()
                            .gossipsub
                            .publish(self.topic.clone(), bytes)
                            .map(|_| ())
                            .map_err(|e| NetError::Publish(e.to_string()))
                    });
                let _ = reply.send(result);
            }
            Command::Report {
                msg_id,
                source,
                acceptance,
            } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&msg_id, &source, acceptance);
            }
            Command::Snapshot { reply } => {
                let snap = NetSnapshot {
                    listen_addrs: self.swarm.listeners().cloned().collect(),
                    connected: self.swarm.connected_peers().filter_map(to_proto).collect(),
                };
                let _ = reply.send(snap);
            }
        }
    }

    fn handle_roster_change(&mut self) {
        let banned: Vec<libp2p::PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| !self.allowed(p))
            .copied()
            .collect();
        for peer in banned {
            warn!(peer = %peer, "closing connection: no longer an active roster member");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.handle_redial();
    }

    /// Dials, with per-peer backoff, every roster member we are not connected to; while connected to no member,
    /// also every bootstrap address (see the module doc).
    fn handle_redial(&mut self) {
        let now = now_ms();
        let me = *self.swarm.local_peer_id();
        let roster = self.roster.borrow().clone();
        let connected: Vec<libp2p::PeerId> = self.swarm.connected_peers().copied().collect();
        let members_connected = connected.iter().filter(|p| self.allowed(p)).count();
        let mut rng = rand::rngs::OsRng;
        if members_connected == 0 && !self.bootstrap.is_empty() && self.bootstrap_backoff.ready(now) {
            for addr in self.bootstrap.clone() {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    debug!(%addr, %e, "cannot dial bootstrap address");
                }
            }
            let wait = self.bootstrap_backoff.failed(now, &mut rng);
            debug!(
                wait_ms = wait,
                "no group member connected: dialled the bootstrap addresses"
            );
        }
        for member in roster.member_ids() {
            let peer = to_libp2p(member);
            if peer == me || connected.contains(&peer) || !roster.is_active(member, now) {
                continue;
            }
            let backoff = self
                .backoff
                .entry(peer)
                .or_insert_with(|| Backoff::new(REDIAL_BASE_MS, REDIAL_MAX_MS));
            if !backoff.ready(now) {
                continue;
            }
            backoff.failed(now, &mut rng);
            let addrs = self.learned.get(&peer).cloned().unwrap_or_default();
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .extend_addresses_through_behaviour()
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(peer = %member.short(), %e, "redial not started");
            }
        }
        self.backoff
            .retain(|p, _| to_proto(p).is_some_and(|m| roster.is_active(&m, now)) && !connected.contains(p));
        if members_connected > 0 {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    /// Remembers (and persists) an address a roster member can be reached at.
    fn learn(&mut self, peer: libp2p::PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
        if !self.allowed(&peer) {
            return;
        }
        let entry = self.learned.entry(peer).or_default();
        let mut changed = false;
        for addr in addrs {
            if is_unspecified(&addr)
                || addr
                    .iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
            {
                continue;
            }
            let plain: Multiaddr = addr
                .iter()
                .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                .collect();
            if let Some(pos) = entry.iter().position(|a| a == &plain) {
                if pos != 0 {
                    // Most recently confirmed first.
                    let a = entry.remove(pos);
                    entry.insert(0, a);
                }
                continue;
            }
            entry.insert(0, plain);
            entry.truncate(MAX_ADDRS_PER_PEER);
            changed = true;
        }
        if changed && let Some(p) = to_proto(&peer) {
            let strings: Vec<String> = entry.iter().map(|a| a.to_string()).collect();
            if let Err(e) = self.store.put_peer_addrs(&p, &strings) {
                warn!(%e, "cannot persist learned addresses");
            }
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.libp2p_metrics.record(&event);
        if let SwarmEvent::Behaviour(b) = &event {
            match b {
                BehaviourEvent::Identify(e) => self.libp2p_metrics.record(e),
                BehaviourEvent::Ping(e) => self.libp2p_metrics.record(e),
                BehaviourEvent::Gossipsub(e) => self.libp2p_metrics.record(e),
                BehaviourEvent::Kad(e) => self.libp2p_metrics.record(e),
                _ => {}
            }
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!("listening on {address}/p2p/{}", self.swarm.local_peer_id());
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if !self.allowed(&peer_id) {
                    self.counters.inc(&self.counters.connections_refused);
                    warn!(peer = %peer_id, "closing connection: not an active member of this group's roster");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                self.backoff.remove(&peer_id);
                self.bootstrap_backoff.succeeded();
                if num_established.get() == 1
                    && let Some(peer) = to_proto(&peer_id)
                {
                    let addr = endpoint.get_remote_address().clone();
                    if endpoint.is_dialer() {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
                        self.learn(peer_id, [addr.clone()]);
                    }
                    info!(peer = %peer.short(), %addr, "connected");
                    self.emit(NetEvent::Connected {
                        peer,
                        addr,
                        outbound: endpoint.is_dialer(),
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                if let Some(peer) = to_proto(&peer_id) {
                    debug!(peer = %peer.short(), "disconnected");
                    self.emit(NetEvent::Disconnected { peer });
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.counters.inc(&self.counters.connection_errors);
                let who = peer_id
                    .and_then(|p| to_proto(&p))
                    .map(|p| p.short())
                    .unwrap_or_else(|| "a bootstrap address".into());
                let failures = peer_id
                    .and_then(|p| self.backoff.get(&p))
                    .map_or(self.bootstrap_backoff.failures(), Backoff::failures);
                let retry_s = peer_id
                    .and_then(|p| self.backoff.get(&p))
                    .map_or(self.bootstrap_backoff.next_at_ms(), Backoff::next_at_ms)
                    .saturating_sub(now_ms())
                    .div_ceil(1000);
                match dial_failure(&error) {
                    DialFailure::Unreachable(why) if failures <= 1 => {
                        warn!(
                            "could not connect to {who}: {why}; retrying with backoff (next in {retry_s} s)"
                        )
                    }
                    DialFailure::Unreachable(why) => {
                        debug!("could not connect to {who}: {why}; next try in {retry_s} s")
                    }
                    DialFailure::Handshake => warn!(
                        "could not connect to {who}: {error}; the connection opened but the handshake failed — check \
                         the group key (this node's group key fingerprint is {}); next try in {retry_s} s",
                        self.fingerprint
                    ),
                    DialFailure::Other => debug!("could not connect to {who}: {error}"),
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                self.counters.inc(&self.counters.connection_errors);
                warn!(
                    "incoming connection from {send_back_addr} failed: {error}; a node with another group key \
                     fails this way — check the group key (this node's fingerprint is {})",
                    self.fingerprint
                );
            }
            SwarmEvent::Behaviour(event) => self.handle_behaviour_event(event),
            _ => {}
        }
    }

    fn handle_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Issue(e) => {
                let r = request_response_event(e, &mut self.pending_issue, &self.roster, &self.counters);
                if let Some((peer, req, channel)) = r {
                    self.emit(NetEvent::InboundIssue { peer, req, channel });
                }
            }
            BehaviourEvent::Relay(e) => {
                let r = request_response_event(e, &mut self.pending_relay, &self.roster, &self.counters);
                if let Some((peer, req, channel)) = r {
                    self.emit(NetEvent::InboundRelay { peer, req, channel });
                }
            }
            BehaviourEvent::Borrow(e) => {
                let r = request_response_event(e, &mut self.pending_borrow, &self.roster, &self.counters);
                if let Some((peer, req, channel)) = r {
                    self.emit(NetEvent::InboundBorrow { peer, req, channel });
                }
            }
            BehaviourEvent::Claim(e) => {
                let r = request_response_event(e, &mut PendingMap::new(), &self.roster, &self.counters);
                if let Some((peer, req, channel)) = r {
                    self.emit(NetEvent::InboundClaim { peer, req, channel });
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => match wire::decode::<GossipMessage>(&message.data) {
                Ok(msg) => self.emit(NetEvent::Gossip {
                    msg_id: message_id,
                    propagation_source,
                    msg: Box::new(msg),
                }),
                Err(e) => {
                    self.counters.inc(&self.counters.gossip_malformed);
                    warn!(source = %propagation_source, %e, "malformed gossip message rejected");
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            MessageAcceptance::Reject,
                        );
                }
            },
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. }) => {
                if let Some(peer) = to_proto(&peer_id) {
                    self.emit(NetEvent::Subscribed { peer });
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for addr in &info.listen_addrs {
                    if !is_unspecified(addr) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
                    }
                }
                self.learn(peer_id, info.listen_addrs.iter().cloned());
                if let Some(peer) = to_proto(&peer_id) {
                    self.emit(NetEvent::Identified {
                        peer,
                        agent: info.agent_version,
                        listen_addrs: info.listen_addrs,
                    });
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                if let Some(peer) = to_proto(&peer) {
                    self.emit(NetEvent::Rtt { peer, rtt });
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if self.allowed(&peer) {
                        self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Where a protocol's outbound answers go (claims are only answered by this node, never asked yet).
type PendingMap<Resp> = HashMap<OutboundRequestId, oneshot::Sender<Result<Resp, NetError>>>;

/// Handles one request-response event for any protocol: inbound requests from active roster members are returned
/// for the caller to emit; answers and failures go to whoever waits in `pending`.
fn request_response_event<Req, Resp>(
    event: request_response::Event<Req, Resp>,
    pending: &mut PendingMap<Resp>,
    roster: &watch::Receiver<Arc<Roster>>,
    counters: &Counters,
) -> Option<(lendmesh_protocol::PeerId, Req, ResponseChannel<Resp>)> {
    match event {
        request_response::Event::Message { peer, message, .. } => match message {
            request_response::Message::Request { request, channel, .. } => {
                let member = to_proto(&peer).filter(|p| roster.borrow().is_active(p, now_ms()));
                if member.is_none() {
                    warn!(%peer, "request from a non-member ignored");
                }
                member.map(|p| (p, request, channel))
            }
            request_response::Message::Response { request_id, response } => {
                if let Some(reply) = pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
                None
            }
        },
        request_response::Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            let detail = error.to_string();
            let err = match error {
                request_response::OutboundFailure::DialFailure
                | request_response::OutboundFailure::UnsupportedProtocols => NetError::Unreachable {
                    peer: peer.to_string(),
                    detail,
                },
                _ => NetError::Request {
                    peer: peer.to_string(),
                    detail,
                },
            };
            if let Some(reply) = pending.remove(&request_id) {
                let _ = reply.send(Err(err));
            }
            None
        }
        request_response::Event::InboundFailure { peer, error, .. } => {
            counters.inc(&counters.inbound_failures);
            warn!(%peer, %error, "inbound request failed");
            None
        }
        request_response::Event::ResponseSent { .. } => None,
    }
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// What a failed dial most likely means.
enum DialFailure {
    /// Nothing listens there, or the host cannot be reached: not a key problem.
    Unreachable(String),
    /// The connection opened and the upgrade (pnet, noise) failed: a wrong group key fails this way.
    Handshake,
    /// Something else (no address known, already dialling, …).
    Other,
}

fn dial_failure(error: &DialError) -> DialFailure {
    match error {
        DialError::Transport(errors) => {
            let mut reasons = Vec::new();
            for (_, e) in errors {
                match unreachable_reason(e) {
                    Some(why) => reasons.push(why),
                    None => return DialFailure::Handshake,
                }
            }
            reasons.dedup();
            DialFailure::Unreachable(reasons.join(", "))
        }
        DialError::NoAddresses => DialFailure::Unreachable("no address known yet".into()),
        _ => DialFailure::Other,
    }
}

/// `Some(reason)` when a transport error says the address could not be reached at all. The transport stack wraps
/// the socket's `io::Error` in layers of `Either` whose `source()` skips it, so the error kind is read from the
/// debug form, which keeps every layer.
fn unreachable_reason(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let debug = format!("{e:?}");
    [
        ("ConnectionRefused", "connection refused (is the node running?)"),
        ("HostUnreachable", "host unreachable"),
        ("NetworkUnreachable", "network unreachable"),
        ("AddrNotAvailable", "address not available"),
        ("TimedOut", "connection attempt timed out"),
    ]
    .iter()
    .find(|(kind, _)| debug.contains(kind))
    .map(|(_, why)| (*why).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_is_not_a_key_problem() {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let wrapped = std::io::Error::other(refused);
        let err = DialError::Transport(vec![(addr.clone(), libp2p::TransportError::Other(wrapped))]);
        assert!(matches!(dial_failure(&err), DialFailure::Unreachable(_)), "{err}");
        let handshake = std::io::Error::other("noise: decrypt error");
        let err = DialError::Transport(vec![(addr, libp2p::TransportError::Other(handshake))]);
        assert!(matches!(dial_failure(&err), DialFailure::Handshake));
    }
}
