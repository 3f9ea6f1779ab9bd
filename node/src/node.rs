//! Wires the actors together and runs a node until shutdown (`lendmesh run`, `lendmesh demo`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lendmesh_protocol::PeerId;
use lendmesh_protocol::issuer::{IssueError, Issuer};
use lendmesh_protocol::redeemer::Redeemer;
use lendmesh_protocol::routing::RoutingParams;
use lendmesh_protocol::wire::{ClaimResponse, DeliveryFailure, IssueResponse, RelayResponse};
use libp2p::Multiaddr;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::borrow::Borrower;
use crate::config::{Config, UpstreamKind};
use crate::group_state::GroupView;
use crate::issuer::IssuerHandle;
use crate::lender::{LenderHandle, OhttpKeys};
use crate::member::{IssuerRoute, RefillConfig};
use crate::metrics::Counters;
use crate::network::{NetError, NetEvent, NetworkHandle, NetworkParams};
use crate::peerbook::PeerBookHandle;
use crate::store::{Store, StoreError};
use crate::upstream::{MockUpstream, Upstream};
use crate::{api, gateway, issuer, lender, member, network, now_ms, peerbook};

/// How long shutdown waits for each task.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Relays forwarded at once; more are refused with `RelayBusy` (the borrower picks another relay or lender).
pub const MAX_CONCURRENT_RELAYS: usize = 128;

/// What `lendmesh run` resolved.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The home directory.
    pub home: PathBuf,
    /// Effective settings (config file + flags).
    pub config: Config,
}

/// A started node: its addresses and its tasks.
#[derive(Debug)]
pub struct StartedNode {
    /// This node.
    pub peer_id: PeerId,
    /// p2p addresses with `/p2p/<id>`.
    pub p2p_addrs: Vec<Multiaddr>,
    /// The API's address.
    pub api_addr: SocketAddr,
    /// The gateway's address.
    pub gateway_addr: SocketAddr,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

impl StartedNode {
    /// Waits for every task after `shutdown` was cancelled.
    pub async fn join(self) {
        for (name, task) in self.tasks {
            match tokio::time::timeout(JOIN_TIMEOUT, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(task = name, %e, "task failed"),
                Err(_) => warn!(task = name, "task did not stop in time"),
            }
        }
    }
}

fn parse_addrs(list: &[String], what: &str) -> anyhow::Result<Vec<Multiaddr>> {
    list.iter()
        .map(|s| {
            s.parse::<Multiaddr>()
                .with_context(|| format!("{what} address '{s}' is not a multiaddr"))
        })
        .collect()
}

/// Builds the upstream the config names.
pub fn build_upstream(config: &Config, node_name: String) -> anyhow::Result<Arc<dyn Upstream>> {
    let u = &config.upstream;
    Ok(match u.kind {
        UpstreamKind::Mock => Arc::new(MockUpstream::new(
            node_name,
            u.mock_capacity,
            u.mock_window,
            u.mock_latency,
        )),
        UpstreamKind::Http => crate::upstream::http_from_config(u)?,
    })
}

/// Runs a node until `shutdown` is cancelled, then stops every task.
pub async fn run(opts: RunOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let node = start(opts, shutdown.clone()).await?;
    shutdown.cancelled().await;
    info!("shutting down");
    node.join().await;
    info!("stopped");
    Ok(())
}

/// Starts every actor and server; returns once the node listens.
pub async fn start(opts: RunOptions, shutdown: CancellationToken) -> anyhow::Result<StartedNode> {
    let store = Store::open(&opts.home)?;
    let key = store.identity()?.ok_or_else(|| StoreError::NotInitialized {
        home: opts.home.clone(),
    })?;
    let me = PeerId::from_public_key(&key.verifying_key());
    let group = store.group()?.ok_or_else(|| {
        anyhow::anyhow!(
            "this node is not in a group yet: run `lendmesh group create --name NAME` (admin) or \
             `lendmesh join INVITE_FILE` (member)"
        )
    })?;
    let config = &opts.config;
    if config.gateway.body_limit > lendmesh_protocol::wire::MAX_HTTP_MESSAGE - 64 * 1024 {
        anyhow::bail!(
            "gateway body_limit must be at most {} bytes",
            lendmesh_protocol::wire::MAX_HTTP_MESSAGE - 64 * 1024
        );
    }
    let is_admin = group.admin == me;
    let now = now_ms();
    if group.epochs.current(now).is_none() {
        warn!(
            epoch = group.epoch_number(now),
            "no epoch runs now (the newest has ended); {}",
            if is_admin {
                "making the next one"
            } else {
                "waiting for the admin to announce the next one"
            }
        );
    }
    let counters = Arc::new(Counters::default());
    let mut registry = prometheus_client::registry::Registry::default();
    counters.register(&mut registry);
    let libp2p_metrics = libp2p::metrics::Metrics::new(&mut registry);
    let (roster_tx, roster_rx) = watch::channel(Arc::new(group.roster().clone()));
    let (view_tx, view_rx) = watch::channel(Arc::new(GroupView::of(&group)));
    // Bind the HTTP servers first: a port in use fails the start before anything else runs.
    let api_addr: SocketAddr = config
        .api
        .addr
        .parse()
        .with_context(|| format!("API address '{}' is not host:port", config.api.addr))?;
    let api_listener = api::bind(api_addr, config.api.token.is_some()).await?;
    let gateway_addr: SocketAddr = config
        .gateway
        .addr
        .parse()
        .with_context(|| format!("gateway address '{}' is not host:port", config.gateway.addr))?;
    let gateway_listener = tokio::net::TcpListener::bind(gateway_addr)
        .await
        .with_context(|| format!("cannot bind the gateway on {gateway_addr}"))?;

    let mut bootstrap = parse_addrs(&group.bootstrap, "bootstrap")?;
    bootstrap.extend(parse_addrs(&config.network.bootstrap, "bootstrap")?);
    let mut seed = *key.as_bytes();
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)?;
    let params = NetworkParams {
        keypair,
        psk: group.libp2p_psk(),
        group_id: group.group_id,
        listen: parse_addrs(&config.network.listen, "listen")?,
        bootstrap,
        mdns: config.network.mdns,
        roster: roster_rx.clone(),
        libp2p_metrics,
        store: store.clone(),
    };
    info!(peer = %me, group = %group.name, group_id = %group.group_id.short(), admin = is_admin, "starting node");
    let (net, net_events, net_task) = network::spawn(params, counters.clone(), shutdown.clone())?;

    let upstream = build_upstream(config, me.short())?;
    let (book, book_task) = peerbook::spawn(
        peerbook::PeerBookParams {
            me,
            admin_key: is_admin.then(|| key.clone()),
            group: group.clone(),
            roster_tx,
            view_tx,
        },
        store.clone(),
        net.clone(),
        counters.clone(),
        shutdown.clone(),
    );
    let mut tasks = vec![("network", net_task), ("peerbook", book_task)];

    let issuer_handle = if is_admin {
        let (h, t) = issuer::spawn(
            Issuer::empty(group.roster().clone()),
            store.clone(),
            net.clone(),
            view_rx.clone(),
            counters.clone(),
            shutdown.clone(),
        );
        tasks.push(("issuer", t));
        Some(h)
    } else {
        None
    };

    let route = match &issuer_handle {
        Some(h) => IssuerRoute::Local(h.clone()),
        None => IssuerRoute::Remote(net.clone(), group.admin),
    };
    let (member, member_task) = member::spawn(
        member::MemberParams {
            me,
            route,
            refill: RefillConfig {
                low_water: config.wallet.low_water,
                batch: config.wallet.batch.max(1),
            },
            view: view_rx.clone(),
            peerbook: book.clone(),
        },
        store.clone(),
        counters.clone(),
        shutdown.clone(),
    )?;
    tasks.push(("member", member_task));

    let keys = OhttpKeys::generate()?;
    let ohttp_key_config = keys.encoded_config().to_vec();
    let (lender, lender_task) = lender::spawn(
        lender::LenderParams {
            me,
            node_key: key.clone(),
            group_id: group.group_id,
            attestation_key: group.attestation_key.clone(),
            upstream: upstream.clone(),
            reserve: config.lender.reserve,
            period: config.lender.attestation_period,
            redeemer: Redeemer::new(me),
            view: view_rx.clone(),
            keys,
        },
        store.clone(),
        net.clone(),
        counters.clone(),
        shutdown.clone(),
    );
    tasks.push(("lender", lender_task));

    let dispatcher = Dispatcher {
        me,
        book: book.clone(),
        issuer: issuer_handle,
        lender: lender.clone(),
        member: member.clone(),
        admin: group.admin,
        net: net.clone(),
        store: store.clone(),
        view: view_rx.clone(),
        counters: counters.clone(),
        relays: Arc::new(Semaphore::new(MAX_CONCURRENT_RELAYS)),
        roster: roster_rx,
    };
    tasks.push(("dispatcher", tokio::spawn(dispatcher.run(net_events))));

    let borrower = Borrower {
        me,
        peerbook: book.clone(),
        member: member.clone(),
        net: net.clone(),
        policy: config.borrow.policy,
        params: RoutingParams::default(),
        privacy: config.borrow.privacy,
        counters: counters.clone(),
    };
    let gateway_addr = gateway_listener.local_addr()?;
    info!("gateway listening on http://{gateway_addr}");
    let gw = gateway::GatewayState {
        upstream: upstream.clone(),
        borrower,
        counters: counters.clone(),
        body_limit: config.gateway.body_limit,
    };
    tasks.push((
        "gateway",
        tokio::spawn(gateway::serve(gateway_listener, gw, shutdown.clone())),
    ));

    let api_addr = api_listener.local_addr()?;
    // Live administration (`lendmesh group …` while this node runs) finds the API and its local admin token here.
    let admin_token = crate::home::write_admin_access(&opts.home, api_addr)?;
    info!("api listening on http://{api_addr}");
    let mut roles = vec!["member", "lender", "relay"];
    if is_admin {
        roles.extend(["admin", "issuer"]);
    }
    let state = api::ApiState {
        peer_id: me,
        roles,
        started_ms: now_ms(),
        net: net.clone(),
        peerbook: book,
        member,
        lender,
        counters,
        upstream: upstream.kind(),
        privacy: config.borrow.privacy,
        ohttp_key_config,
        registry: Arc::new(registry),
        token: config.api.token.clone(),
        store: store.clone(),
        view: view_rx,
        admin_token: admin_token.clone(),
        reserve: config.lender.reserve,
        upstream_handle: upstream.clone(),
        external_addrs: config.network.external.clone(),
    };
    tasks.push((
        "api",
        tokio::spawn(api::serve(api_listener, state, shutdown.clone())),
    ));

    // Wait (bounded) until the swarm reports its listen addresses.
    let mut p2p_addrs = Vec::new();
    for _ in 0..100 {
        p2p_addrs = net.snapshot().await.listen_addrs;
        if !p2p_addrs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p2p_addrs = p2p_addrs
        .into_iter()
        .map(|a| a.with(libp2p::multiaddr::Protocol::P2p(crate::to_libp2p(&me))))
        .collect();
    Ok(StartedNode {
        peer_id: me,
        p2p_addrs,
        api_addr,
        gateway_addr,
        tasks,
    })
}

/// Routes network events to the actors that own them, and relays.
struct Dispatcher {
    me: PeerId,
    book: PeerBookHandle,
    issuer: Option<IssuerHandle>,
    lender: LenderHandle,
    member: member::MemberHandle,
    admin: PeerId,
    net: NetworkHandle,
    store: Store,
    view: watch::Receiver<Arc<GroupView>>,
    counters: Arc<Counters>,
    relays: Arc<Semaphore>,
    roster: watch::Receiver<Arc<lendmesh_protocol::group::Roster>>,
}

impl Dispatcher {
    async fn run(self, mut events: mpsc::Receiver<NetEvent>) {
        while let Some(ev) = events.recv().await {
            self.handle(ev).await;
        }
    }

    async fn handle(&self, ev: NetEvent) {
        match ev {
            NetEvent::InboundIssue { peer, req, channel } => match &self.issuer {
                Some(h) => {
                    if let Err(channel) = h.try_remote(peer, req, channel) {
                        warn!(peer = %peer.short(), "issuer busy; refusing the request");
                        self.net
                            .respond_issue(channel, IssueResponse::Refused(IssueError::Busy))
                            .await;
                    }
                }
                None => {
                    warn!(peer = %peer.short(), "issue request sent to a node that is not the issuer");
                    self.net
                        .respond_issue(channel, IssueResponse::Refused(IssueError::NotIssuer))
                        .await;
                }
            },
            NetEvent::InboundRelay { peer, req, channel } => {
                let lender = req.lender;
                let ok_lender =
                    lender != self.me && lender != peer && self.roster.borrow().is_active(&lender, now_ms());
                if !ok_lender {
                    self.counters.inc(&self.counters.relays_failed);
                    self.net
                        .respond_relay(channel, RelayResponse::Failed(DeliveryFailure::BadLender))
                        .await;
                    return;
                }
                let Ok(permit) = self.relays.clone().try_acquire_owned() else {
                    self.counters.inc(&self.counters.relays_failed);
                    self.net
                        .respond_relay(channel, RelayResponse::Failed(DeliveryFailure::RelayBusy))
                        .await;
                    return;
                };
                let (net, counters) = (self.net.clone(), self.counters.clone());
                tokio::spawn(async move {
                    // The relay sees who talks to whom and the sizes; the payload is sealed to the lender.
                    debug!(borrower = %peer.short(), lender = %lender.short(), bytes = req.sealed.len(), "relaying");
                    let resp = match net
                        .borrow(
                            lender,
                            lendmesh_protocol::wire::BorrowRequest { sealed: req.sealed },
                        )
                        .await
                    {
                        Ok(lendmesh_protocol::wire::BorrowResponse::Sealed { sealed }) => {
                            counters.inc(&counters.relays_ok);
                            RelayResponse::Delivered { sealed }
                        }
                        Ok(lendmesh_protocol::wire::BorrowResponse::Failed(f)) => {
                            counters.inc(&counters.relays_failed);
                            RelayResponse::Failed(f)
                        }
                        Err(NetError::Unreachable { .. }) => {
                            counters.inc(&counters.relays_failed);
                            RelayResponse::Failed(DeliveryFailure::LenderUnreachable)
                        }
                        Err(_) => {
                            counters.inc(&counters.relays_failed);
                            RelayResponse::Failed(DeliveryFailure::LenderTimeout)
                        }
                    };
                    net.respond_relay(channel, resp).await;
                    drop(permit);
                });
            }
            NetEvent::InboundBorrow { peer, req, channel } => {
                if let Err(channel) = self.lender.try_borrow(peer, req, channel) {
                    self.net
                        .respond_borrow(
                            channel,
                            lendmesh_protocol::wire::BorrowResponse::Failed(DeliveryFailure::LenderBusy),
                        )
                        .await;
                }
            }
            NetEvent::InboundClaim { peer, req, channel } => {
                let known = self.view.borrow().epochs.accepts(req.epoch, now_ms());
                let resp = if !known {
                    ClaimResponse::UnknownEpoch
                } else {
                    match self.store.record_claim(req.epoch, &req.token_hash, &req.claim_id) {
                        Ok(true) => ClaimResponse::Granted,
                        Ok(false) => ClaimResponse::Denied,
                        Err(e) => {
                            warn!(peer = %peer.short(), %e, "cannot record a claim");
                            return;
                        }
                    }
                };
                self.counters.inc(&self.counters.claims_answered);
                self.net.respond_claim(channel, resp).await;
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

    fn forward(&self, ev: NetEvent) {
        if !self.book.try_forward(ev) {
            self.counters.inc(&self.counters.net_events_dropped);
        }
    }
}
