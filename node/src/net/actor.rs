//! The network actor's event loop: commands from the other actors, swarm events, roster changes and redials.

use super::*;

use super::swarm::{Behaviour, BehaviourEvent, build_swarm};
use lendmesh_protocol::limits::{Surface, Verdict};

/// Starts the network actor; returns its handle, its event stream and its task.
pub fn spawn(
    params: NetworkParams,
    counters: Arc<NodeMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    NetworkHandle,
    mpsc::Receiver<NetEvent>,
    tokio::task::JoinHandle<()>,
)> {
    let (mut swarm, streams) = build_swarm(&params, &counters, shutdown.clone())?;
    let topic = topic(&params.group_id);
    swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
    for addr in &params.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    }
    // Addresses the operator says this node is reachable at: confirmed, so its circuit relay serves (`auto`).
    for addr in &params.external {
        swarm.add_external_address(addr.clone());
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
            let plain = super::nat::without_peer_ids(addr);
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
        pending_claim: HashMap::new(),
        counters,
        fingerprint: params.psk.fingerprint().to_string(),
        libp2p_metrics: params.libp2p_metrics,
        unsent_responses: 0,
        store: params.store,
        bootstrap: params.bootstrap,
        bootstrap_backoff: Backoff::new(REDIAL_BASE_MS, REDIAL_MAX_MS),
        learned,
        backoff: HashMap::new(),
        limiter: params.limiter,
        nat: super::nat::Nat::new(params.nat),
        refused_warned: HashMap::new(),
        next_kad_bootstrap_ms: 0,
    };
    let task = tokio::spawn(actor.run(shutdown));
    Ok((NetworkHandle { tx, streams }, event_rx, task))
}

struct Network {
    swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    roster: watch::Receiver<Arc<Roster>>,
    pending_issue: PendingMap<IssueResponse>,
    pending_claim: PendingMap<ClaimResponse>,
    counters: Arc<NodeMetrics>,
    fingerprint: String,
    libp2p_metrics: Libp2pMetrics,
    /// Responses handed to libp2p and not yet written (or failed): shutdown flushes them.
    unsent_responses: usize,
    store: Store,
    /// Bootstrap addresses (from the invite and flags), redialled while no member is connected.
    bootstrap: Vec<Multiaddr>,
    bootstrap_backoff: Backoff,
    /// Addresses learned per peer (persisted).
    learned: HashMap<libp2p::PeerId, Vec<Multiaddr>>,
    /// Redial backoff per roster member not connected.
    backoff: HashMap<libp2p::PeerId, Backoff>,
    /// Per-member rate limits.
    limiter: super::SharedLimiter,
    /// Paths to members, AutoNAT's verdict, reservations on members' relays.
    nat: super::nat::Nat,
    /// When a refused peer's connection was last logged at warn.
    refused_warned: HashMap<String, u64>,
    /// When the next Kademlia bootstrap is due.
    next_kad_bootstrap_ms: u64,
}

/// Kademlia bootstrap period while an active roster member is not connected.
const KAD_BOOTSTRAP_MISSING_MS: u64 = 5_000;
/// Kademlia bootstrap period while every active member is connected.
const KAD_BOOTSTRAP_COMPLETE_MS: u64 = 300_000;

fn now_ms() -> u64 {
    crate::clock::now_ms()
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
        self.drain().await;
        for (_, reply) in self.pending_issue.drain() {
            let _ = reply.send(Err(NetError::Stopped));
        }
        for (_, reply) in self.pending_claim.drain() {
            let _ = reply.send(Err(NetError::Stopped));
        }
        info!("network stopped");
    }

    /// On shutdown: answers already queued by other actors (a lend or relay that finished during the drain) are
    /// still sent, and the swarm is polled until they are written, at most [`FLUSH_DEADLINE`].
    async fn drain(&mut self) {
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            self.handle_command(cmd);
        }
        let deadline = tokio::time::Instant::now() + FLUSH_DEADLINE;
        while self.unsent_responses > 0 {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => self.handle_swarm_event(event),
                Err(_) => {
                    warn!(
                        unsent = self.unsent_responses,
                        "responses still unsent at shutdown"
                    );
                    return;
                }
            }
        }
        // Let the peers read what was just written before the connections close (a peer that sees the close first
        // fails its request although the answer is in its buffer).
        let linger = tokio::time::Instant::now() + LINGER;
        while let Ok(event) =
            tokio::time::timeout_at(linger.min(deadline), self.swarm.select_next_some()).await
        {
            self.handle_swarm_event(event);
        }
        // Close every connection gracefully, so what was written is flushed before the sockets go.
        let peers: Vec<libp2p::PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        while self.swarm.connected_peers().next().is_some() {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => self.handle_swarm_event(event),
                Err(_) => return,
            }
        }
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

    /// Takes one request of `surface` from `peer` (`protocol::limits`): whether to serve it. A throttled request is
    /// counted; a member over its strikes is disconnected, and refused until its ban ends.
    fn admit(&mut self, peer: &lendmesh_protocol::PeerId, surface: Surface) -> bool {
        let verdict = match self.limiter.lock() {
            Ok(mut l) => l.admit(peer, surface, now_ms()),
            Err(_) => Verdict::Admit,
        };
        match verdict {
            Verdict::Admit => true,
            Verdict::Throttle => {
                self.counters.peer_throttled(&peer.short(), surface.label());
                debug!(peer = %peer.short(), surface = surface.label(), "request throttled");
                false
            }
            Verdict::Disconnect { until_ms } => {
                self.counters.peer_throttled(&peer.short(), surface.label());
                let libp2p_peer = to_libp2p(peer);
                if self.swarm.is_connected(&libp2p_peer) {
                    self.counters.peer_banned(&peer.short());
                    warn!(
                        peer = %peer.short(),
                        surface = surface.label(),
                        refused_for_s = until_ms.saturating_sub(now_ms()).div_ceil(1000),
                        "disconnecting a member that sends far more than its limits allow"
                    );
                    let _ = self.swarm.disconnect_peer_id(libp2p_peer);
                }
                false
            }
        }
    }

    /// Tells gossipsub what became of a message it holds for validation.
    fn validated(&mut self, id: &MessageId, source: &libp2p::PeerId, acceptance: MessageAcceptance) {
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, source, acceptance);
    }

    fn banned(&self, peer: &libp2p::PeerId) -> bool {
        to_proto(peer).is_some_and(|p| self.limiter.lock().is_ok_and(|l| l.banned(&p, now_ms())))
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
            Command::Claim { peer, req, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .claim
                    .send_request(&to_libp2p(&peer), req);
                self.pending_claim.insert(id, reply);
            }
            Command::RespondIssue { channel, resp } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .issue
                    .send_response(channel, resp)
                    .map(|()| self.unsent_responses += 1)
                    .is_err()
                {
                    warn!("issue response not sent: the requester went away");
                }
            }
            Command::RespondClaim { channel, resp } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .claim
                    .send_response(channel, resp)
                    .is_ok()
                {
                    self.unsent_responses += 1;
                }
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
            } => self.validated(&msg_id, &source, acceptance),
            Command::Snapshot { reply } => {
                let snap = NetSnapshot {
                    listen_addrs: self.swarm.listeners().cloned().collect(),
                    connected: self.swarm.connected_peers().filter_map(to_proto).collect(),
                    paths: self.nat.paths(),
                    nat: self
                        .nat
                        .snapshot(self.swarm.external_addresses().cloned().collect()),
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
            .retain(|p, _| to_proto(p).is_some_and(|m| roster.is_active(&m, now)));
        // A Kademlia bootstrap asks the members for everyone they know (how a member finds another's relayed
        // address). Every few seconds while an active member is missing, rarely once all are here: a query on every
        // 250 ms tick cost an idle node of a 10-member group about 8 % of a core (contrib/idle-cost.py).
        let missing = roster
            .member_ids()
            .any(|m| to_libp2p(m) != me && roster.is_active(m, now) && !connected.contains(&to_libp2p(m)));
        if members_connected > 0 && now >= self.next_kad_bootstrap_ms {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
            debug!(missing, "kademlia bootstrap started");
            let every = if missing {
                KAD_BOOTSTRAP_MISSING_MS
            } else {
                KAD_BOOTSTRAP_COMPLETE_MS
            };
            self.next_kad_bootstrap_ms = now + every;
        } else if missing {
            // A member went missing since: look for it soon.
            self.next_kad_bootstrap_ms = self.next_kad_bootstrap_ms.min(now + KAD_BOOTSTRAP_MISSING_MS);
        }
        self.manage_reservations(now);
    }

    /// Holds reservations on members' circuit relays while this node needs them (`nat` module doc).
    fn manage_reservations(&mut self, now: u64) {
        let learned = &self.learned;
        let roster = self.roster.borrow().clone();
        let (drop, reserve) = self.nat.plan(
            now,
            |p| to_proto(p).is_some_and(|m| roster.is_active(&m, now)),
            |p| {
                learned
                    .get(p)
                    .and_then(|addrs| addrs.iter().find(|a| !super::nat::is_relayed(a)).cloned())
            },
        );
        for id in drop {
            info!("this node is reachable from outside: reservations on members' relays dropped");
            let _ = self.swarm.remove_listener(id);
        }
        for (relay, addr) in reserve {
            match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    debug!(%addr, "asking a member's circuit relay for a reservation");
                    self.nat.reserving(id, relay);
                }
                Err(e) => warn!(%addr, %e, "cannot ask for a reservation"),
            }
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
            if is_unspecified(&addr) {
                continue;
            }
            // A circuit address (through a member's relay) is how a member behind NAT is reached: kept, with the
            // relay's peer id inside it; only the member's own trailing `/p2p` is dropped.
            let mut plain = addr.clone();
            if matches!(plain.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
                plain.pop();
            }
            if super::nat::relay_of(&plain).is_none() && super::nat::is_relayed(&plain) {
                continue;
            }
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
                BehaviourEvent::Relay(e) => self.libp2p_metrics.record(e),
                BehaviourEvent::Dcutr(e) => self.libp2p_metrics.record(e),
                _ => {}
            }
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!("listening on {address}/p2p/{}", self.swarm.local_peer_id());
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
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
                if self.banned(&peer_id) {
                    self.counters.inc(&self.counters.connections_refused);
                    debug!(peer = %peer_id, "closing connection: the member is refused for exceeding its limits");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let path = self
                    .nat
                    .connected(peer_id, connection_id, &endpoint, &self.counters);
                if num_established.get() > 1 {
                    debug!(peer = %peer_id, path = path.label(), "another connection");
                }
                if num_established.get() == 1
                    && let Some(peer) = to_proto(&peer_id)
                {
                    let addr = endpoint.get_remote_address().clone();
                    if endpoint.is_dialer() {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
                        self.learn(peer_id, [addr.clone()]);
                    }
                    info!(peer = %peer.short(), %addr, path = path.label(), "connected");
                    self.emit(NetEvent::Connected {
                        peer,
                        addr,
                        outbound: endpoint.is_dialer(),
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.nat.closed(&peer_id, connection_id);
                if num_established == 0
                    && let Some(peer) = to_proto(&peer_id)
                {
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
                match dial::dial_failure(&error) {
                    dial::DialFailure::Unreachable(why) if failures <= 1 => {
                        warn!(
                            "could not connect to {who}: {why}; retrying with backoff (next in {retry_s} s)"
                        )
                    }
                    dial::DialFailure::Unreachable(why) => {
                        debug!("could not connect to {who}: {why}; next try in {retry_s} s")
                    }
                    dial::DialFailure::Handshake => warn!(
                        "could not connect to {who}: {error}; the connection opened but the handshake failed — check \
                         the group key (this node's group key fingerprint is {}); next try in {retry_s} s",
                        self.fingerprint
                    ),
                    dial::DialFailure::Denied(why) => debug!("did not connect to {who}: {why}"),
                    dial::DialFailure::Other => debug!("could not connect to {who}: {error}"),
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error: libp2p::swarm::ListenError::Denied { cause },
                peer_id,
                ..
            } => {
                // The membership gate (counted there), or the connection limits (counted here). A refused peer
                // redials with backoff; said at warn once a minute per peer.
                if cause.downcast_ref::<super::gate::NotMember>().is_none() {
                    self.counters.inc(&self.counters.connection_errors);
                }
                let who = peer_id.map_or_else(|| send_back_addr.to_string(), |p| p.to_string());
                let why = super::gate::reason(&cause);
                let now = now_ms();
                if self.refused_warned.len() > 1024 {
                    self.refused_warned.clear();
                }
                let due = self
                    .refused_warned
                    .get(&who)
                    .is_none_or(|t| now.saturating_sub(*t) >= 60_000);
                if due {
                    warn!("refused a connection from {who}: {why}");
                    self.refused_warned.insert(who, now);
                } else {
                    debug!("refused a connection from {who}: {why}");
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id, reason, ..
            } => self
                .nat
                .listener_closed(listener_id, &reason, now_ms(), &self.counters),
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
                self.unsent_responses = self
                    .unsent_responses
                    .saturating_sub(usize::from(response_settled(&e)));
                let r = request_response_event(e, &mut self.pending_issue, &self.roster, &self.counters);
                if let Some((peer, req, channel)) = r {
                    if self.admit(&peer, Surface::Issue) {
                        self.emit(NetEvent::InboundIssue { peer, req, channel });
                    } else {
                        let busy = IssueResponse::Refused(lendmesh_protocol::issuer::IssueError::Busy);
                        self.handle_command(Command::RespondIssue { channel, resp: busy });
                    }
                }
            }
            BehaviourEvent::Streams(streams::Inbound {
                peer,
                protocol,
                stream,
            }) => {
                // Only active members may use the streamed protocols (others are disconnected at once; this covers
                // a stream opened before that).
                match to_proto(&peer).filter(|p| self.roster.borrow().is_active(p, now_ms())) {
                    Some(peer) => {
                        let surface = if protocol == streams::RELAY_PROTOCOL {
                            Surface::Relay
                        } else {
                            Surface::Borrow
                        };
                        // A throttled stream is dropped unread: the sender sees it reset.
                        if self.admit(&peer, surface) {
                            self.emit(NetEvent::InboundStream {
                                peer,
                                protocol,
                                stream,
                            });
                        }
                    }
                    None => self.counters.inc(&self.counters.inbound_failures),
                }
            }
            BehaviourEvent::Claim(e) => {
                self.unsent_responses = self
                    .unsent_responses
                    .saturating_sub(usize::from(response_settled(&e)));
                let r = request_response_event(e, &mut self.pending_claim, &self.roster, &self.counters);
                if let Some((peer, req, channel)) = r {
                    if self.admit(&peer, Surface::Claim) {
                        self.emit(NetEvent::InboundClaim { peer, req, channel });
                    } else {
                        let refused =
                            ClaimResponse::Refused(lendmesh_protocol::claims::ClaimRefusal::RateLimited);
                        self.handle_command(Command::RespondClaim {
                            channel,
                            resp: refused,
                        });
                    }
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) if message
                .source
                .and_then(|author| to_proto(&author))
                // The admin's own gossip is not limited: it sends every member that joins the topic the roster and
                // the epochs again, which in a group starting at once is far above any member's rate (and an admin
                // that floods is outside what these limits defend against: it signs the roster).
                .filter(|author| *author != self.roster.borrow().admin)
                .is_some_and(|author| !self.admit(&author, Surface::Gossip)) =>
            {
                // An author over its rate: not passed on, and not held against whoever forwarded it.
                self.validated(&message_id, &propagation_source, MessageAcceptance::Ignore);
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
                    self.validated(&message_id, &propagation_source, MessageAcceptance::Reject);
                }
            },
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. }) => {
                if let Some(peer) = to_proto(&peer_id) {
                    self.emit(NetEvent::Subscribed { peer });
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                // The connection works (a member's node ran a protocol on it): redial backoffs start over. Not at
                // establishment: a peer that refuses this node closes the connection at once, and would be
                // redialled every tick.
                if self.allowed(&peer_id) {
                    self.backoff.remove(&peer_id);
                    self.bootstrap_backoff.succeeded();
                }
                self.nat.identified(peer_id, &info.protocols);
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
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                self.nat.status_changed(new)
            }
            BehaviourEvent::Autonat(autonat::Event::InboundProbe(autonat::InboundProbeEvent::Response {
                peer,
                address,
                ..
            })) => {
                if let Some(connection) = self.nat.dial_back(&peer, &address) {
                    let _ = self.swarm.close_connection(connection);
                }
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(connection) => {
                    NodeMetrics::outcome(&self.counters.hole_punches, "ok");
                    NodeMetrics::outcome(&self.counters.member_connections, "hole_punched");
                    self.nat.hole_punched(&remote_peer_id, connection);
                    info!(peer = %remote_peer_id, "hole punched: the relayed connection now has a direct one");
                }
                Err(e) => {
                    NodeMetrics::outcome(&self.counters.hole_punches, "failed");
                    debug!(peer = %remote_peer_id, %e, "hole punching failed: the connection stays relayed");
                }
            },
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                limit,
            }) => self.nat.reservation_accepted(
                &relay_peer_id,
                renewal,
                // The limit's type is private to libp2p-relay; its accessors are not.
                limit.map(|l| (l.duration().map(|d| d.as_secs()), l.data_in_bytes())),
                &self.counters,
            ),
            BehaviourEvent::Relay(e) => self.relay_served(e),
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

impl Network {
    /// Counts what this node's circuit relay did.
    fn relay_served(&mut self, event: relay::Event) {
        let outcome = match event {
            relay::Event::ReservationReqAccepted {
                renewed: false,
                src_peer_id,
            } => {
                debug!(peer = %src_peer_id, "relay: reservation accepted");
                "reservation_accepted"
            }
            relay::Event::ReservationReqDenied { src_peer_id, status } => {
                warn!(peer = %src_peer_id, ?status, "relay: reservation denied (at this relay's limits)");
                "reservation_denied"
            }
            relay::Event::ReservationTimedOut { .. } => "reservation_timed_out",
            relay::Event::CircuitReqAccepted { .. } => "circuit_accepted",
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                debug!(src = %src_peer_id, dst = %dst_peer_id, ?status, "relay: circuit denied");
                "circuit_denied"
            }
            relay::Event::CircuitClosed { .. } => "circuit_closed",
            relay::Event::StatusChanged { status } => {
                self.nat.relay_status(status);
                return;
            }
            _ => return,
        };
        NodeMetrics::outcome(&self.counters.relay_served, outcome);
    }
}

/// Whether an event ends one of this node's responses (written, or its stream failed).
fn response_settled<Req, Resp>(e: &request_response::Event<Req, Resp>) -> bool {
    matches!(
        e,
        request_response::Event::ResponseSent { .. } | request_response::Event::InboundFailure { .. }
    )
}

/// Where a protocol's outbound answers go.
type PendingMap<Resp> = HashMap<OutboundRequestId, oneshot::Sender<Result<Resp, NetError>>>;

/// Handles one request-response event for any protocol: inbound requests from active roster members are returned
/// for the caller to emit; answers and failures go to whoever waits in `pending`.
fn request_response_event<Req, Resp>(
    event: request_response::Event<Req, Resp>,
    pending: &mut PendingMap<Resp>,
    roster: &watch::Receiver<Arc<Roster>>,
    counters: &NodeMetrics,
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
