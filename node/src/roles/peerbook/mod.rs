//! The PeerBook actor: the group as this node knows it — roster and epoch (kept current from verified gossip and
//! persisted), every peer's verified attestation with its age, and each peer's connection, RTT and agent.
//!
//! Gossip arrives held by gossipsub's strict validation; the PeerBook checks it with `protocol`
//! (`AttestationAcceptor`, admin signatures) and reports accept / reject / ignore back to the network actor.
//! Attestations older than the acceptance window expire from the book.
//!
//! **Epochs** (docs/design.md §8). The book adopts epoch announcements through `protocol`'s `EpochBook` rules (typed,
//! counted refusals) and, once a second, retires epochs past their grace period: the group state is persisted and
//! the store's rows of retired epochs are pruned. On the admin node it also makes the next epoch ahead of time (a
//! fresh issuer key generated off the actor, stored, then announced) and applies live administration (invite,
//! remove, rotate) sent through the API. Every change goes to the other actors as a [`GroupView`] on a watch
//! channel, and the admin gossips roster and announcements on change, when a peer joins, and periodically.
//!
//! **Key consistency** (docs/design.md §4). Attestations carry the `(epoch, key id)` pairs their sender holds; a pair that
//! differs from this node's, or an admin-signed announcement of a second key for a held epoch, raises an alarm for
//! that epoch (error log, metric, `/health` reason): its tokens are neither spent nor accepted until every peer
//! that disagreed attests the same key again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use lendmesh_protocol::PeerId;
use lendmesh_protocol::attestation::{
    AcceptorConfig, Attestation, AttestationAcceptor, AttestationRejection,
};
use lendmesh_protocol::blind_rsa::SecretKey;
use lendmesh_protocol::epoch::{Adopted, EpochError};
use lendmesh_protocol::group::Roster;
use lendmesh_protocol::health::PeerHealth;
use lendmesh_protocol::wire::GossipMessage;
use libp2p::Multiaddr;
use libp2p::gossipsub::MessageAcceptance;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::group::admin::{self, AdminError, GroupSummary};
use crate::group::state::{GroupState, GroupView};
use crate::metrics::NodeMetrics;
use crate::net::{NetEvent, NetworkHandle};
use crate::store::Store;

/// Messages queued to the PeerBook: 1024, as many as the network's event queue.
pub const CAPACITY: usize = 1024;
/// How often stale attestations are pruned.
const PRUNE_PERIOD: Duration = Duration::from_secs(15);
/// How often epochs are checked (retirement, the admin's next epoch): once a second, so a 20 s test epoch switches
/// on time.
const EPOCH_TICK: Duration = Duration::from_secs(1);
/// How often the admin re-gossips the roster and epoch announcements (members that missed a message catch up).
const REPUBLISH_PERIOD: Duration = Duration::from_secs(10);

/// One peer as the book knows it.
#[derive(Clone, Debug, Default)]
pub struct PeerEntry {
    /// Currently connected.
    pub connected: bool,
    /// Whether we dialed (the last connection).
    pub outbound: bool,
    /// Known addresses.
    pub addrs: Vec<Multiaddr>,
    /// Last ping round trip.
    pub rtt: Option<Duration>,
    /// identify agent string.
    pub agent: Option<String>,
    /// Last accepted attestation and when it arrived.
    pub attestation: Option<(Attestation, u64)>,
    /// Last time anything was heard from the peer.
    pub last_seen_ms: Option<u64>,
    /// Cooling down (after a refusal) until then.
    pub cooling_until_ms: Option<u64>,
    /// Left out as a relay (after it failed a borrow) until then.
    pub relay_cooling_until_ms: Option<u64>,
    /// Ping answers and stream failures: a sick peer is left out of routing (`protocol::health`).
    pub health: PeerHealth,
    /// This node's borrows with the peer as lender and as relay.
    pub outcomes: PeerOutcomes,
}

/// Counts of this node's recent borrows involving a peer.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PeerOutcomes {
    /// As lender: served.
    pub lender_served: u64,
    /// As lender: refused before any claim (no headroom, upstream refusal, stale key).
    pub lender_refused: u64,
    /// As lender: failed or timed out.
    pub lender_failed: u64,
    /// As relay: delivered the lender's answer.
    pub relay_delivered: u64,
    /// As relay: could not deliver.
    pub relay_failed: u64,
}

/// One attempt's outcome, as the borrower reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The lender served it.
    Served,
    /// The lender refused before any claim.
    Refused,
    /// No answer, or a failure after the claim.
    Failed,
    /// The relay failed before the lender saw the request: counts against the relay only.
    NotSent,
}

/// A peer's public view (no secrets).
#[derive(Clone, Debug, Serialize)]
pub struct PeerView {
    /// Full peer id.
    pub peer_id: String,
    /// Short id.
    pub short_id: String,
    /// `member`, `removed`, `expired` or `unknown`.
    pub roster_status: &'static str,
    /// Per-epoch token quota from the roster.
    pub quota_per_epoch: Option<u32>,
    /// Connected now.
    pub connected: bool,
    /// `outbound` or `inbound`.
    pub direction: Option<&'static str>,
    /// Addresses.
    pub addresses: Vec<String>,
    /// Ping RTT in ms.
    pub rtt_ms: Option<f64>,
    /// Answering pings with no failed stream since (`protocol::health`); absent when not connected.
    pub healthy: Option<bool>,
    /// identify agent.
    pub agent_version: Option<String>,
    /// Last attestation.
    pub attestation: Option<AttestationView>,
    /// This node's recent borrows with the peer as lender and as relay.
    pub outcomes: PeerOutcomes,
    /// Milliseconds since anything was heard.
    pub last_seen_ago_ms: Option<u64>,
}

/// An attestation's public view.
#[derive(Clone, Debug, Serialize)]
pub struct AttestationView {
    /// Headroom bucket.
    pub bucket: &'static str,
    /// Issued at (ms since the Unix epoch).
    pub issued_at_ms: u64,
    /// Age now, in ms.
    pub age_ms: u64,
    /// Sequence number.
    pub seq: u64,
    /// What each of its upstreams serves and can lend.
    pub upstreams: Vec<CapabilityView>,
}

/// One advertised upstream's public view.
#[derive(Clone, Debug, Serialize)]
pub struct CapabilityView {
    /// Its API (`openai-chat`, `openai-responses`, `anthropic-messages`, `any`).
    pub api: &'static str,
    /// The models it serves; empty: any.
    pub models: Vec<String>,
    /// What it can lend.
    pub bucket: &'static str,
    /// When its window resets (ms since the Unix epoch).
    pub resets_at_ms: u64,
}

/// A lender candidate: what routing needs, plus its key config to seal to.
#[derive(Clone, Debug)]
pub struct LenderCandidate {
    /// Routing view.
    pub candidate: lendmesh_protocol::routing::Candidate,
    /// Its OHTTP key config.
    pub key_config: Vec<u8>,
    /// What its upstreams serve and can lend (`protocol::capability`).
    pub capabilities: Vec<lendmesh_protocol::capability::Capability>,
}

/// What the borrower needs to route one request.
#[derive(Clone, Debug, Default)]
pub struct RoutingView {
    /// Peers with a fresh attestation and a key config.
    pub lenders: Vec<LenderCandidate>,
    /// Connected active members (relay candidates).
    pub connected: Vec<PeerId>,
    /// Roster members other than this node.
    pub known: usize,
}

enum Command {
    Net(Box<NetEvent>),
    Routing {
        reply: oneshot::Sender<RoutingView>,
    },
    Silent {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    CoolDown {
        peer: PeerId,
        until_ms: u64,
    },
    CoolDownRelay {
        peer: PeerId,
        until_ms: u64,
    },
    Unhealthy {
        peer: PeerId,
    },
    Outcome {
        lender: PeerId,
        relay: Option<PeerId>,
        outcome: AttemptOutcome,
        delivered: bool,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerView>>,
    },
    Group {
        reply: oneshot::Sender<GroupState>,
    },
    Admin {
        op: AdminOp,
        reply: oneshot::Sender<Result<AdminReply, AdminError>>,
    },
    EpochKey {
        result: Box<Result<SecretKey, AdminError>>,
    },
    KeyAlarm {
        epoch: u32,
        source: String,
    },
}

/// A live administration request (admin node only).
#[derive(Debug)]
pub enum AdminOp {
    /// Add or renew a member; answers with its invite.
    Invite {
        /// The member.
        member: PeerId,
        /// Tokens per epoch.
        quota: u32,
        /// Membership length.
        days: u64,
        /// Bootstrap addresses for the invite.
        bootstrap: Vec<String>,
    },
    /// Remove a member; with a key, rotate to a new epoch at once.
    Remove {
        /// The member.
        member: PeerId,
        /// The new epoch's issuer key, for an immediate rotation.
        rotate: Option<Box<SecretKey>>,
    },
}

/// What a live administration request did.
#[derive(Debug)]
pub enum AdminReply {
    /// The invite file's text (secret).
    Invite(String),
    /// The member was removed; the new epoch if rotated.
    Removed {
        /// The new roster version.
        roster_version: u64,
        /// The epoch started by the rotation.
        rotated_to: Option<u32>,
    },
}

/// Handle to the PeerBook.
#[derive(Clone, Debug)]
pub struct PeerBookHandle {
    tx: mpsc::Sender<Command>,
    me: PeerId,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerBookCommand")
    }
}

impl PeerBookHandle {
    /// Forwards a network event (dropped and counted by the caller if the book is full).
    pub fn try_forward(&self, ev: NetEvent) -> bool {
        self.tx.try_send(Command::Net(Box::new(ev))).is_ok()
    }

    /// Every roster member and connected peer, as views.
    pub async fn peers(&self) -> Vec<PeerView> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Peers { reply }).await.is_err() {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }

    /// Lenders, relays and counts for routing one request.
    pub async fn routing(&self) -> RoutingView {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Routing { reply }).await.is_err() {
            return RoutingView::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Whether `peer` is left out for silence now (`protocol::health`: no ping answered for the unhealthy limit, or
    /// a failed stream, while another member answers). A peer that is gone from the book is silent.
    pub async fn silent(&self, peer: PeerId) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Silent { peer, reply }).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Records one borrow attempt with `lender` through `relay` (`delivered`: the relay brought an answer back).
    pub fn record_outcome(
        &self,
        lender: PeerId,
        relay: Option<PeerId>,
        outcome: AttemptOutcome,
        delivered: bool,
    ) {
        let _ = self.tx.try_send(Command::Outcome {
            lender,
            relay,
            outcome,
            delivered,
        });
    }

    /// Leaves a relay out of routing after it failed a borrow.
    pub async fn cool_down_relay(&self, peer: PeerId, until_ms: u64) {
        let _ = self.tx.send(Command::CoolDownRelay { peer, until_ms }).await;
    }

    /// A stream to `peer` could not be opened, or it did not acknowledge a request, in time: it is left out of
    /// routing until it answers a ping.
    pub fn unhealthy(&self, peer: PeerId) {
        let _ = self.tx.try_send(Command::Unhealthy { peer });
    }

    /// Marks a lender as cooling down after a refusal.
    pub async fn cool_down(&self, peer: PeerId, until_ms: u64) {
        let _ = self.tx.send(Command::CoolDown { peer, until_ms }).await;
    }

    /// Applies a live administration request (admin node only).
    pub async fn admin(&self, op: AdminOp) -> Result<AdminReply, AdminError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Admin { op, reply })
            .await
            .map_err(|_| AdminError::Invalid("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| AdminError::Invalid("the node is shutting down".into()))?
    }

    /// Raises a key-consistency alarm for `epoch` (e.g. a wallet token under another key).
    pub fn key_alarm(&self, epoch: u32, source: String) {
        let _ = self.tx.try_send(Command::KeyAlarm { epoch, source });
    }

    /// The group as `lendmesh group show` prints it.
    pub async fn summary(&self) -> Option<GroupSummary> {
        let group = self.group().await?;
        Some(GroupSummary::of(&group, &self.me, now_ms()))
    }

    /// The current group state.
    pub async fn group(&self) -> Option<GroupState> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Group { reply }).await.ok()?;
        rx.await.ok()
    }
}

/// What the PeerBook needs to start.
#[derive(Debug)]
pub struct PeerBookParams {
    /// This node.
    pub me: PeerId,
    /// The node key, kept only on the admin node (it signs rosters and epochs).
    pub admin_key: Option<SigningKey>,
    /// The group as stored.
    pub group: GroupState,
    /// Roster changes for the network actor.
    pub roster_tx: watch::Sender<Arc<Roster>>,
    /// Group changes for the other actors.
    pub view_tx: watch::Sender<Arc<GroupView>>,
}

/// Starts the PeerBook.
pub fn spawn(
    params: PeerBookParams,
    store: Store,
    net: NetworkHandle,
    counters: Arc<NodeMetrics>,
    shutdown: CancellationToken,
) -> (PeerBookHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let group = params.group;
    let acceptor = AttestationAcceptor::new(
        group.group_id,
        group.attestation_key.clone(),
        AcceptorConfig::default(),
    );
    let book = PeerBook {
        me: params.me,
        admin_key: params.admin_key,
        group,
        store,
        net,
        roster_tx: params.roster_tx,
        view_tx: params.view_tx,
        counters,
        acceptor,
        peers: BTreeMap::new(),
        alarms: BTreeMap::new(),
        key_in_flight: false,
        current_epoch: None,
        tx: tx.clone(),
        rx,
    };
    (
        PeerBookHandle { tx, me: params.me },
        tokio::spawn(book.run(shutdown)),
    )
}

struct PeerBook {
    me: PeerId,
    admin_key: Option<SigningKey>,
    group: GroupState,
    store: Store,
    net: NetworkHandle,
    roster_tx: watch::Sender<Arc<Roster>>,
    view_tx: watch::Sender<Arc<GroupView>>,
    counters: Arc<NodeMetrics>,
    acceptor: AttestationAcceptor,
    peers: BTreeMap<PeerId, PeerEntry>,
    /// Key-consistency alarms: epoch → who disagreed (peer short ids, or "admin" for a conflicting announcement).
    alarms: BTreeMap<u32, BTreeSet<String>>,
    /// The admin is generating the next epoch's key.
    key_in_flight: bool,
    /// The epoch that was current at the last tick (to log switches).
    current_epoch: Option<u32>,
    tx: mpsc::Sender<Command>,
    rx: mpsc::Receiver<Command>,
}

impl PeerBook {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut prune = tokio::time::interval(PRUNE_PERIOD);
        let mut epoch_tick = tokio::time::interval(EPOCH_TICK);
        let mut republish = tokio::time::interval(REPUBLISH_PERIOD);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = epoch_tick.tick() => self.handle_epoch_tick(),
                _ = prune.tick() => self.handle_prune(),
                _ = republish.tick(), if self.admin_key.is_some() => self.publish_group().await,
                Some(msg) = self.rx.recv() => match msg {
                    Command::Peers { reply } => { let _ = reply.send(self.views()); }
                    Command::Group { reply } => { let _ = reply.send(self.group.clone()); }
                    Command::Routing { reply } => { let _ = reply.send(self.routing_view()); }
                    Command::Silent { peer, reply } => { let _ = reply.send(self.silent(&peer)); }
                    Command::CoolDown { peer, until_ms } => self.entry(peer).cooling_until_ms = Some(until_ms),
                    Command::CoolDownRelay { peer, until_ms } => self.entry(peer).relay_cooling_until_ms = Some(until_ms),
                    Command::Unhealthy { peer } => self.peers.entry(peer).or_default().health.failed(now_ms()),
                    Command::Outcome { lender, relay, outcome, delivered } => self.handle_outcome(lender, relay, outcome, delivered),
                    Command::Admin { op, reply } => {
                        let result = self.handle_admin(op);
                        if result.is_ok() {
                            self.publish_group().await;
                        }
                        let _ = reply.send(result);
                    }
                    Command::EpochKey { result } => self.handle_epoch_key(*result).await,
                    Command::KeyAlarm { epoch, source } => self.raise_alarm(epoch, source),
                    Command::Net(ev) => self.handle_net(*ev).await,
                },
            }
        }
    }

    fn handle_outcome(
        &mut self,
        lender: PeerId,
        relay: Option<PeerId>,
        outcome: AttemptOutcome,
        delivered: bool,
    ) {
        let o = &mut self.peers.entry(lender).or_default().outcomes;
        match outcome {
            AttemptOutcome::Served => o.lender_served += 1,
            AttemptOutcome::Refused => o.lender_refused += 1,
            AttemptOutcome::Failed => o.lender_failed += 1,
            AttemptOutcome::NotSent => {}
        }
        if let Some(r) = relay {
            let o = &mut self.peers.entry(r).or_default().outcomes;
            if delivered {
                o.relay_delivered += 1
            } else {
                o.relay_failed += 1
            }
        }
    }

    fn entry(&mut self, peer: PeerId) -> &mut PeerEntry {
        let e = self.peers.entry(peer).or_default();
        e.last_seen_ms = Some(now_ms());
        e
    }

    async fn handle_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connected { peer, addr, outbound } => {
                let e = self.entry(peer);
                e.connected = true;
                e.health.connected(now_ms());
                e.outbound = outbound;
                if !e.addrs.contains(&addr) {
                    e.addrs.push(addr);
                }
            }
            NetEvent::Disconnected { peer } => {
                let e = self.entry(peer);
                e.connected = false;
                e.health.disconnected();
            }
            NetEvent::Rtt { peer, rtt } => {
                let e = self.entry(peer);
                e.rtt = Some(rtt);
                e.health.answered(now_ms());
            }
            NetEvent::Identified {
                peer,
                agent,
                listen_addrs,
            } => {
                let e = self.entry(peer);
                e.agent = Some(agent);
                for a in listen_addrs {
                    if !e.addrs.contains(&a) {
                        e.addrs.push(a);
                    }
                }
                e.addrs.truncate(8);
            }
            NetEvent::Subscribed { peer } => {
                self.entry(peer);
                if self.admin_key.is_some() {
                    // A member (re)joined the topic: give it the newest roster and epochs.
                    self.publish_group().await;
                }
            }
            NetEvent::Gossip {
                msg_id,
                propagation_source,
                msg,
            } => {
                let acceptance = self.handle_gossip(*msg);
                self.net.report(msg_id, propagation_source, acceptance).await;
            }
            NetEvent::InboundIssue { .. }
            | NetEvent::InboundStream { .. }
            | NetEvent::InboundClaim { .. } => {}
        }
    }

    fn handle_gossip(&mut self, msg: GossipMessage) -> MessageAcceptance {
        match msg {
            GossipMessage::Attestation(att) => {
                let now = now_ms();
                match self.acceptor.accept(&att, self.group.roster(), now) {
                    Ok(()) => {
                        self.counters.inc(&self.counters.attestations_accepted);
                        debug!(peer = %att.body.peer_id.short(), seq = att.body.seq, bucket = att.body.headroom.label(), "attestation accepted");
                        let peer = att.body.peer_id;
                        let source = peer.short();
                        let mismatched = self.group.epochs.key_mismatches(&att.body.epoch_keys);
                        for (epoch, _) in &att.body.epoch_keys {
                            if mismatched.contains(epoch) {
                                self.raise_alarm(*epoch, source.clone());
                            } else {
                                self.clear_alarm(*epoch, &source);
                            }
                        }
                        self.entry(peer).attestation = Some((att, now));
                        MessageAcceptance::Accept
                    }
                    Err(reason) => {
                        self.counters.inc(&self.counters.attestations_rejected);
                        self.counters
                            .attestation_rejections
                            .get_or_create(&crate::metrics::ReasonLabel {
                                reason: reason.label().to_string(),
                            })
                            .inc();
                        warn!(peer = %att.body.peer_id.short(), reason = reason.label(), "attestation rejected: {reason}");
                        match reason {
                            AttestationRejection::Replayed | AttestationRejection::StaleSeq { .. } => {
                                MessageAcceptance::Ignore
                            }
                            _ => MessageAcceptance::Reject,
                        }
                    }
                }
            }
            GossipMessage::Roster(signed) => match self.group.adopt_roster(signed) {
                Ok(true) => {
                    self.persist_group("roster");
                    MessageAcceptance::Accept
                }
                Ok(false) => MessageAcceptance::Ignore,
                Err(e) => {
                    self.counters
                        .group_rejections
                        .get_or_create(&crate::metrics::ReasonLabel {
                            reason: "roster_invalid".into(),
                        })
                        .inc();
                    warn!(%e, "roster rejected");
                    MessageAcceptance::Reject
                }
            },
            GossipMessage::Epoch(signed) => {
                let epoch = signed.announcement.epoch;
                match self.group.adopt_epoch(*signed, now_ms()) {
                    Ok(Adopted::New | Adopted::Updated) => {
                        self.persist_group("epoch announcement");
                        MessageAcceptance::Accept
                    }
                    Ok(Adopted::Unchanged) => MessageAcceptance::Ignore,
                    Err(e) => {
                        self.counters
                            .group_rejections
                            .get_or_create(&crate::metrics::ReasonLabel {
                                reason: e.label().to_string(),
                            })
                            .inc();
                        if let EpochError::KeyConflict { .. } = e {
                            self.raise_alarm(epoch, "admin".into());
                        } else {
                            warn!(epoch, reason = e.label(), "epoch announcement refused: {e}");
                        }
                        MessageAcceptance::Reject
                    }
                }
            }
        }
    }

    fn handle_prune(&mut self) {
        let now = now_ms();
        let window = AcceptorConfig::default().window_ms;
        for e in self.peers.values_mut() {
            if e.attestation
                .as_ref()
                .is_some_and(|(a, _)| now.saturating_sub(a.body.issued_at_ms) > window)
            {
                e.attestation = None;
            }
        }
    }
}

mod epochs;
mod view;
