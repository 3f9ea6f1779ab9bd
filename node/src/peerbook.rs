//! The PeerBook actor: the group as this node knows it — roster and epoch (kept current from verified gossip and
//! persisted), every peer's verified attestation with its age, and each peer's connection, RTT and agent.
//!
//! Gossip arrives held by gossipsub's strict validation; the PeerBook checks it with `protocol`
//! (`AttestationAcceptor`, admin signatures) and reports accept / reject / ignore back to the network actor.
//! Attestations older than the acceptance window expire from the book.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::attestation::{
    AcceptorConfig, Attestation, AttestationAcceptor, AttestationRejection,
};
use lendmesh_protocol::group::Roster;
use lendmesh_protocol::wire::GossipMessage;
use libp2p::Multiaddr;
use libp2p::gossipsub::MessageAcceptance;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::group_state::GroupState;
use crate::metrics::Counters;
use crate::network::{NetEvent, NetworkHandle};
use crate::now_ms;
use crate::store::Store;

/// Messages queued to the PeerBook: 1024, as many as the network's event queue.
pub const CAPACITY: usize = 1024;
/// How often stale attestations are pruned.
const PRUNE_PERIOD: Duration = Duration::from_secs(15);

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
}

/// A lender candidate: what routing needs, plus its key config to seal to.
#[derive(Clone, Debug)]
pub struct LenderCandidate {
    /// Routing view.
    pub candidate: lendmesh_protocol::routing::Candidate,
    /// Its OHTTP key config.
    pub key_config: Vec<u8>,
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

enum Msg {
    Net(Box<NetEvent>),
    Routing {
        reply: oneshot::Sender<RoutingView>,
    },
    CoolDown {
        peer: PeerId,
        until_ms: u64,
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
}

/// Handle to the PeerBook.
#[derive(Clone, Debug)]
pub struct PeerBookHandle {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerBookMsg")
    }
}

impl PeerBookHandle {
    /// Forwards a network event (dropped and counted by the caller if the book is full).
    pub fn try_forward(&self, ev: NetEvent) -> bool {
        self.tx.try_send(Msg::Net(Box::new(ev))).is_ok()
    }

    /// Every roster member and connected peer, as views.
    pub async fn peers(&self) -> Vec<PeerView> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Peers { reply }).await.is_err() {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }

    /// Lenders, relays and counts for routing one request.
    pub async fn routing(&self) -> RoutingView {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Routing { reply }).await.is_err() {
            return RoutingView::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Records one borrow attempt with `lender` through `relay` (`delivered`: the relay brought an answer back).
    pub fn record_outcome(
        &self,
        lender: PeerId,
        relay: Option<PeerId>,
        outcome: AttemptOutcome,
        delivered: bool,
    ) {
        let _ = self.tx.try_send(Msg::Outcome {
            lender,
            relay,
            outcome,
            delivered,
        });
    }

    /// Marks a lender as cooling down after a refusal.
    pub async fn cool_down(&self, peer: PeerId, until_ms: u64) {
        let _ = self.tx.send(Msg::CoolDown { peer, until_ms }).await;
    }

    /// The current group state.
    pub async fn group(&self) -> Option<GroupState> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Group { reply }).await.ok()?;
        rx.await.ok()
    }
}

/// Starts the PeerBook.
pub fn spawn(
    me: PeerId,
    group: GroupState,
    store: Store,
    net: NetworkHandle,
    roster_tx: watch::Sender<Arc<Roster>>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> (PeerBookHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let acceptor = AttestationAcceptor::new(
        group.group_id,
        group.attestation_key.clone(),
        AcceptorConfig::default(),
    );
    let book = PeerBook {
        me,
        group,
        store,
        net,
        roster_tx,
        counters,
        acceptor,
        peers: BTreeMap::new(),
        rx,
    };
    (PeerBookHandle { tx }, tokio::spawn(book.run(shutdown)))
}

struct PeerBook {
    me: PeerId,
    group: GroupState,
    store: Store,
    net: NetworkHandle,
    roster_tx: watch::Sender<Arc<Roster>>,
    counters: Arc<Counters>,
    acceptor: AttestationAcceptor,
    peers: BTreeMap<PeerId, PeerEntry>,
    rx: mpsc::Receiver<Msg>,
}

impl PeerBook {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut prune = tokio::time::interval(PRUNE_PERIOD);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = prune.tick() => self.handle_prune(),
                Some(msg) = self.rx.recv() => match msg {
                    Msg::Peers { reply } => { let _ = reply.send(self.views()); }
                    Msg::Group { reply } => { let _ = reply.send(self.group.clone()); }
                    Msg::Routing { reply } => { let _ = reply.send(self.routing_view()); }
                    Msg::CoolDown { peer, until_ms } => self.entry(peer).cooling_until_ms = Some(until_ms),
                    Msg::Outcome { lender, relay, outcome, delivered } => {
                        let o = &mut self.peers.entry(lender).or_default().outcomes;
                        match outcome {
                            AttemptOutcome::Served => o.lender_served += 1,
                            AttemptOutcome::Refused => o.lender_refused += 1,
                            AttemptOutcome::Failed => o.lender_failed += 1,
                        }
                        if let Some(r) = relay {
                            let o = &mut self.peers.entry(r).or_default().outcomes;
                            if delivered { o.relay_delivered += 1 } else { o.relay_failed += 1 }
                        }
                    }
                    Msg::Net(ev) => self.handle_net(*ev).await,
                },
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
                e.outbound = outbound;
                if !e.addrs.contains(&addr) {
                    e.addrs.push(addr);
                }
            }
            NetEvent::Disconnected { peer } => self.entry(peer).connected = false,
            NetEvent::Rtt { peer, rtt } => self.entry(peer).rtt = Some(rtt),
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
                if self.group.admin == self.me {
                    // A member (re)joined the topic: give it the newest roster and epoch.
                    let _ = self
                        .net
                        .publish(GossipMessage::Epoch(Box::new(self.group.epoch.clone())))
                        .await;
                }
            }
            NetEvent::Gossip {
                msg_id,
                propagation_source,
                msg,
            } => {
                let acceptance = self.handle_gossip(msg);
                self.net.report(msg_id, propagation_source, acceptance).await;
            }
            NetEvent::InboundIssue { .. }
            | NetEvent::InboundRelay { .. }
            | NetEvent::InboundBorrow { .. }
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
                    warn!(%e, "roster rejected");
                    MessageAcceptance::Reject
                }
            },
            GossipMessage::Epoch(signed) => match self.group.adopt_epoch(*signed) {
                Ok(true) => {
                    self.persist_group("epoch");
                    MessageAcceptance::Accept
                }
                Ok(false) => MessageAcceptance::Ignore,
                Err(e) => {
                    warn!(%e, "epoch announcement rejected");
                    MessageAcceptance::Reject
                }
            },
        }
    }

    fn persist_group(&mut self, what: &str) {
        if let Err(e) = self.store.put_group(&self.group) {
            warn!(%e, "could not persist the new {what}");
        }
        let roster = self.group.roster().clone();
        info!(
            version = roster.version,
            members = roster.members.len(),
            "adopted a new {what}"
        );
        self.acceptor.retain_roster(&roster);
        let _ = self.roster_tx.send(Arc::new(roster));
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

    fn routing_view(&self) -> RoutingView {
        let now = now_ms();
        let roster = self.group.roster();
        let window = AcceptorConfig::default().window_ms;
        let active = |p: &PeerId| p != &self.me && roster.is_active(p, now);
        let lenders = self
            .peers
            .iter()
            .filter(|(p, _)| active(p))
            .filter_map(|(p, e)| {
                let (att, _) = e.attestation.as_ref()?;
                let age = now.saturating_sub(att.body.issued_at_ms);
                (age <= window && !att.body.ohttp_key_config.is_empty()).then(|| LenderCandidate {
                    candidate: lendmesh_protocol::routing::Candidate {
                        peer: *p,
                        headroom: att.body.headroom,
                        attestation_age_ms: age,
                        cooling_until_ms: e.cooling_until_ms,
                    },
                    key_config: att.body.ohttp_key_config.clone(),
                })
            })
            .collect();
        let connected = self
            .peers
            .iter()
            .filter(|(p, e)| e.connected && active(p))
            .map(|(p, _)| *p)
            .collect();
        let known = roster.member_ids().filter(|p| *p != &self.me).count();
        RoutingView {
            lenders,
            connected,
            known,
        }
    }

    fn views(&self) -> Vec<PeerView> {
        let now = now_ms();
        let roster = self.group.roster();
        let mut ids: Vec<PeerId> = roster.members.iter().map(|e| e.peer).collect();
        ids.extend(self.peers.keys().copied());
        ids.sort();
        ids.dedup();
        ids.retain(|p| p != &self.me);
        ids.into_iter()
            .map(|id| {
                let e = self.peers.get(&id).cloned().unwrap_or_default();
                let entry = roster.members.iter().find(|m| m.peer == id);
                let status = if roster.is_removed(&id) {
                    "removed"
                } else if let Some(m) = entry {
                    if now < m.expires_at_ms {
                        "member"
                    } else {
                        "expired"
                    }
                } else {
                    "unknown"
                };
                PeerView {
                    peer_id: id.to_string(),
                    short_id: id.short(),
                    roster_status: status,
                    quota_per_epoch: entry.map(|m| m.quota_per_epoch),
                    connected: e.connected,
                    direction: e
                        .connected
                        .then_some(if e.outbound { "outbound" } else { "inbound" }),
                    addresses: e.addrs.iter().map(|a| a.to_string()).collect(),
                    rtt_ms: e.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    agent_version: e.agent.clone(),
                    attestation: e.attestation.as_ref().map(|(a, _)| AttestationView {
                        bucket: a.body.headroom.label(),
                        issued_at_ms: a.body.issued_at_ms,
                        age_ms: now.saturating_sub(a.body.issued_at_ms),
                        seq: a.body.seq,
                    }),
                    last_seen_ago_ms: e.last_seen_ms.map(|t| now.saturating_sub(t)),
                    outcomes: e.outcomes,
                }
            })
            .collect()
    }
}
