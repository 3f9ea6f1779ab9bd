//! Wires the actors together and runs a node until shutdown (`lendmesh run`, `lendmesh demo`).
//!
//! Shutdown has three phases, so work in flight finishes (bounded) instead of being cut off:
//! 1. the HTTP servers stop accepting and finish their requests — borrows in flight included — while every actor
//!    still runs ([`DRAIN_DEADLINE`]); a borrow still running then ends with `503 shutting_down`;
//! 2. lends and relays in flight (tasks on the node's tracker) finish ([`DRAIN_DEADLINE`]); new ones are refused;
//! 3. the actors stop ([`JOIN_TIMEOUT`] each).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use lendmesh_protocol::PeerId;
use lendmesh_protocol::issuer::Issuer;
use lendmesh_protocol::redeemer::Redeemer;
use lendmesh_protocol::routing::RoutingParams;
use libp2p::Multiaddr;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::config::{Config, UpstreamConfig, UpstreamKind};
use crate::group::state::{GroupState, GroupView};
use crate::http::limit::LimitedListener;
use crate::http::{api, gateway};
use crate::metrics::NodeMetrics;
use crate::net::{self, NetEvent, NetworkHandle, NetworkParams};
use crate::roles::borrower::Borrower;
use crate::roles::claimer::Claimer;
use crate::roles::dispatch::Dispatcher;
use crate::roles::lender::{LenderHandle, OhttpKeys};
use crate::roles::member::{IssuerRoute, MemberHandle, RefillConfig};
use crate::roles::peerbook::PeerBookHandle;
use crate::roles::relay::Relay;
use crate::roles::replica::Replica;
use crate::roles::{issuer, lender, member, peerbook};
use crate::store::{Store, StoreError};
use crate::upstream::{HttpUpstream, HttpUpstreamConfig, MockUpstream, Shared, Upstream, UpstreamSet};

/// How long shutdown waits for each actor.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown lets in-flight borrows, lends and relays finish (each phase).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

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
    http: Vec<(&'static str, JoinHandle<()>)>,
    tracker: TaskTracker,
    actors: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// Why the node stopped on its own (an actor ended or panicked while it ran), if it did.
    fatal: Arc<std::sync::Mutex<Option<String>>>,
}

impl StartedNode {
    /// Shuts down in three phases (see the module doc) after `shutdown` was cancelled.
    pub async fn join(self) -> Result<(), String> {
        let fatal = self.fatal.clone();
        let mut still_running = Vec::new();
        for (name, mut task) in self.http {
            match tokio::time::timeout(DRAIN_DEADLINE, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(task = name, %e, "task failed"),
                Err(_) => {
                    warn!(
                        server = name,
                        "requests still running after the drain deadline; ending them"
                    );
                    still_running.push((name, task));
                }
            }
        }
        self.tracker.close();
        if tokio::time::timeout(DRAIN_DEADLINE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = self.tracker.len(),
                "lends or relays still running after the drain deadline"
            );
        }
        self.actors.cancel();
        for (name, task) in self.tasks.into_iter().chain(still_running) {
            match tokio::time::timeout(JOIN_TIMEOUT, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(task = name, %e, "task failed"),
                Err(_) => warn!(task = name, "task did not stop in time"),
            }
        }
        match fatal.lock().map(|f| f.clone()) {
            Ok(Some(why)) => Err(why),
            _ => Ok(()),
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

/// Builds one upstream from its settings.
pub fn build_upstream(u: &UpstreamConfig, node_name: String) -> anyhow::Result<Arc<dyn Upstream>> {
    Ok(match u.kind {
        UpstreamKind::Mock => Arc::new(
            MockUpstream::new(node_name, u.mock_capacity, u.mock_window, u.mock_latency)
                .streaming(u.mock_stream_chunks, u.mock_chunk_interval),
        ),
        UpstreamKind::Http => Arc::new(HttpUpstream::new(HttpUpstreamConfig {
            base_url: u.url.clone(),
            api_key_env: Some(u.key_env.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            auth: u.auth.clone(),
            extra_headers: u
                .extra_headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            budget_per_window: u.budget_per_window,
            window: u.window,
            first_byte_timeout: u.first_byte_timeout,
            idle_timeout: u.idle_timeout,
            max_response_bytes: crate::upstream::DEFAULT_MAX_RESPONSE_BYTES,
        })?),
    })
}

/// Builds every upstream the config names: `[upstream]`, then each `[[upstreams]]` (docs/design.md §5.1).
pub fn build_upstreams(config: &Config, node_name: String) -> anyhow::Result<Arc<UpstreamSet>> {
    let mut shared = Vec::new();
    for u in std::iter::once(&config.upstream).chain(&config.upstreams) {
        let upstream =
            build_upstream(u, node_name.clone()).with_context(|| format!("upstream {:?}", u.name))?;
        let default_share = match u.kind {
            UpstreamKind::Mock => 0.0,
            UpstreamKind::Http => crate::config::DEFAULT_KEEP_SHARE,
        };
        shared.push(Shared {
            name: u.name.clone(),
            api: u.api,
            models: u.models.clone(),
            reserve: u.reserve.unwrap_or(config.lender.reserve),
            keep_share: u.keep_share.unwrap_or(default_share),
            upstream,
        });
    }
    Ok(Arc::new(UpstreamSet::new(shared)))
}

/// Runs a node until `shutdown` is cancelled, then stops every task.
pub async fn run(opts: RunOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let node = start(opts, shutdown.clone()).await?;
    shutdown.cancelled().await;
    info!("shutting down");
    let result = node.join().await;
    info!("stopped");
    // An actor that died took part of the node with it: exit non-zero so a supervisor restarts it.
    result.map_err(|why| anyhow::anyhow!("{why}; the node stopped (restart it)"))
}

/// What every part of a node is built from.
struct Base {
    store: Store,
    key: SigningKey,
    me: PeerId,
    group: GroupState,
    is_admin: bool,
    counters: Arc<NodeMetrics>,
    registry: Registry,
    roster_rx: watch::Receiver<Arc<lendmesh_protocol::group::Roster>>,
    view_rx: watch::Receiver<Arc<GroupView>>,
    limiter: crate::net::SharedLimiter,
}

/// Starts every actor and server; returns once the node listens.
pub async fn start(opts: RunOptions, shutdown: CancellationToken) -> anyhow::Result<StartedNode> {
    let config = &opts.config;
    let (mut base, roster_tx, view_tx) = open_base(&opts)?;
    // Bind the HTTP servers first: a port in use fails the start before anything else runs.
    let api_listener = bind_api(config).await?;
    let gateway_keys = Arc::new(gateway_keys(&opts.home, config)?);
    let gateway_listener = bind_gateway(config, &gateway_keys).await?;
    let actors = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (net, net_events, net_task) = spawn_network(&mut base, config, &actors)?;
    let upstreams = build_upstreams(config, base.me.short())?;
    let (book, book_task) = peerbook::spawn(
        peerbook::PeerBookParams {
            me: base.me,
            admin_key: base.is_admin.then(|| base.key.clone()),
            group: base.group.clone(),
            roster_tx,
            view_tx,
        },
        base.store.clone(),
        net.clone(),
        base.counters.clone(),
        actors.clone(),
    );
    let mut tasks = vec![("network", net_task), ("peerbook", book_task)];
    let (issuer, member) = spawn_wallet(&base, config, &net, &book, &actors, &mut tasks)?;
    let keys = OhttpKeys::generate()?;
    let ohttp_key_config = keys.encoded_config().to_vec();
    let replica = Replica::new(
        base.me,
        &opts.home,
        base.store.clone(),
        base.view_rx.clone(),
        base.counters.clone(),
        config.lender.claim_replicas,
    );
    let claimer = Claimer {
        me: base.me,
        net: net.clone(),
        view: base.view_rx.clone(),
        replica: replica.clone(),
        replicas: config.lender.claim_replicas,
        timeout: config.lender.claim_timeout,
        mode: config.lender.claims,
        counters: base.counters.clone(),
    };
    let lender = spawn_lender(
        &base, config, &net, &upstreams, claimer, keys, &tracker, &actors, &mut tasks,
    );
    let dispatcher = Dispatcher {
        admin: base.group.admin,
        book: book.clone(),
        issuer,
        lender: lender.clone(),
        member: member.clone(),
        relay: Relay::new(
            base.me,
            net.clone(),
            base.roster_rx.clone(),
            tracker.clone(),
            base.counters.clone(),
        ),
        replica,
        stream_slots: crate::roles::slots::PeerSlots::new(config.limits.open_streams as usize),
        net: net.clone(),
        counters: base.counters.clone(),
        tasks: tracker.clone(),
    };
    tasks.push(("dispatcher", tokio::spawn(dispatcher.run(net_events))));
    let borrower = Borrower {
        me: base.me,
        peerbook: book.clone(),
        member: member.clone(),
        net: net.clone(),
        policy: config.borrow.policy,
        params: RoutingParams::default(),
        privacy: config.borrow.privacy,
        counters: base.counters.clone(),
        conversations: Default::default(),
        scrub: lendmesh_protocol::scrub::ScrubSettings {
            redact_environment: config.borrow.redact_environment,
        },
    };
    let gateway_addr = gateway_listener.local_addr()?;
    info!("gateway listening on http://{gateway_addr}");
    let gw = gateway::GatewayState {
        upstreams: upstreams.clone(),
        borrower,
        counters: base.counters.clone(),
        body_limit: config.gateway.body_limit,
        shutdown: shutdown.clone(),
        keys: gateway_keys,
        exposure: config.exposure,
    };
    let gateway_listener = LimitedListener::new(
        gateway_listener,
        config.gateway.max_connections,
        "gateway",
        base.counters.clone(),
    );
    let mut http = vec![(
        "gateway",
        tokio::spawn(gateway::serve(
            gateway_listener,
            gw,
            config.http,
            shutdown.clone(),
        )),
    )];
    let api_addr = api_listener.local_addr()?;
    let peer_id = base.me;
    let state = api_state(
        &opts,
        base,
        &net,
        book,
        member,
        lender,
        upstreams,
        ohttp_key_config,
        api_addr,
    )?;
    info!("api listening on http://{api_addr}");
    let api_listener = LimitedListener::new(
        api_listener,
        config.api.max_connections,
        "API",
        state.counters.clone(),
    );
    http.push((
        "api",
        tokio::spawn(api::serve(api_listener, state, config.http, shutdown.clone())),
    ));
    let fatal = Arc::new(std::sync::Mutex::new(None));
    let tasks = tasks
        .into_iter()
        .map(|(name, task)| (name, supervise(name, task, &actors, &shutdown, &fatal)))
        .collect();
    Ok(StartedNode {
        peer_id,
        p2p_addrs: listen_addrs(&net, &peer_id).await,
        api_addr,
        gateway_addr,
        http,
        tracker,
        actors,
        tasks,
        fatal,
    })
}

/// Watches an actor: one that ends (or panics) while the node runs leaves the node without a part it needs — a
/// network actor gone means no peer is reached again, silently — so the node records why and shuts down, and
/// `run` exits non-zero.
fn supervise(
    name: &'static str,
    task: JoinHandle<()>,
    actors: &CancellationToken,
    shutdown: &CancellationToken,
    fatal: &Arc<std::sync::Mutex<Option<String>>>,
) -> JoinHandle<()> {
    let (actors, shutdown, fatal) = (actors.clone(), shutdown.clone(), fatal.clone());
    tokio::spawn(async move {
        let result = task.await;
        if actors.is_cancelled() {
            return;
        }
        let why = match result {
            Err(e) if e.is_panic() => format!("the {name} actor panicked"),
            _ => format!("the {name} actor stopped"),
        };
        tracing::error!(task = name, "{why} while the node was running; shutting down");
        if let Ok(mut f) = fatal.lock() {
            f.get_or_insert(why);
        }
        shutdown.cancel();
    })
}

/// The store, identity, group and shared channels; refuses to start without a group.
#[allow(clippy::type_complexity)]
fn open_base(
    opts: &RunOptions,
) -> anyhow::Result<(
    Base,
    watch::Sender<Arc<lendmesh_protocol::group::Roster>>,
    watch::Sender<Arc<GroupView>>,
)> {
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
    let limit = lendmesh_protocol::wire::MAX_HTTP_MESSAGE - 64 * 1024;
    if opts.config.gateway.body_limit > limit {
        anyhow::bail!("gateway body_limit must be at most {limit} bytes");
    }
    let is_admin = group.admin == me;
    let now = now_ms();
    if group.epochs.current(now).is_none() {
        let next = if is_admin {
            "making the next one"
        } else {
            "waiting for the admin to announce the next one"
        };
        warn!(
            epoch = group.epoch_number(now),
            "no epoch runs now (the newest has ended); {next}"
        );
    }
    let counters = Arc::new(NodeMetrics::default());
    let mut registry = Registry::default();
    counters.register(&mut registry);
    let (roster_tx, roster_rx) = watch::channel(Arc::new(group.roster().clone()));
    let (view_tx, view_rx) = watch::channel(Arc::new(GroupView::of(&group)));
    info!(peer = %me, group = %group.name, group_id = %group.group_id.short(), admin = is_admin, "starting node");
    let base = Base {
        store,
        key,
        me,
        group,
        is_admin,
        counters,
        registry,
        roster_rx,
        view_rx,
        limiter: Arc::new(std::sync::Mutex::new(
            lendmesh_protocol::limits::PeerLimiter::new(opts.config.limits),
        )),
    };
    Ok((base, roster_tx, view_tx))
}

async fn bind_api(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    let addr: SocketAddr = config
        .api
        .addr
        .parse()
        .with_context(|| format!("API address '{}' is not host:port", config.api.addr))?;
    api::bind(addr, config.api.token.is_some()).await
}

/// The gateway's keys: the flag's or environment's, and the keys file's. A key is required beyond loopback, and on
/// loopback when `[gateway] require_key` says so.
fn gateway_keys(home: &std::path::Path, config: &Config) -> anyhow::Result<crate::http::keys::GatewayKeys> {
    let addr = gateway_addr(config)?;
    let file = home.join(&config.gateway.keys_file);
    crate::http::keys::GatewayKeys::new(
        config.gateway.keys.clone(),
        Some(file),
        config.gateway.require_key || !addr.ip().is_loopback(),
    )
}

fn gateway_addr(config: &Config) -> anyhow::Result<SocketAddr> {
    config
        .gateway
        .addr
        .parse()
        .with_context(|| format!("gateway address '{}' is not host:port", config.gateway.addr))
}

/// Binds the gateway; refuses to when a key is required and there is none.
async fn bind_gateway(
    config: &Config,
    keys: &crate::http::keys::GatewayKeys,
) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = gateway_addr(config)?;
    if keys.required() && keys.count() == 0 {
        let why = if addr.ip().is_loopback() {
            "[gateway] require_key is set and there is no gateway key".to_string()
        } else {
            format!(
                "the gateway would listen on {addr}, beyond loopback, without a key: anyone who reaches it would \
                 spend this member's upstream and tokens"
            )
        };
        anyhow::bail!(
            "{why}. Add one per device with `lendmesh gateway key add <device>` (it prints the key to give the tool as \
             its API key), or pass --gateway-key (or set LENDMESH_GATEWAY_KEY); or keep the gateway on 127.0.0.1"
        );
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the gateway on {addr}"))
}

fn spawn_network(
    base: &mut Base,
    config: &Config,
    actors: &CancellationToken,
) -> anyhow::Result<(NetworkHandle, mpsc::Receiver<NetEvent>, JoinHandle<()>)> {
    let mut bootstrap = parse_addrs(&base.group.bootstrap, "bootstrap")?;
    bootstrap.extend(parse_addrs(&config.network.bootstrap, "bootstrap")?);
    let mut seed = *base.key.as_bytes();
    let params = NetworkParams {
        keypair: libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)?,
        psk: base.group.libp2p_psk(),
        group_id: base.group.group_id,
        listen: parse_addrs(&config.network.listen, "listen")?,
        bootstrap,
        mdns: config.network.mdns,
        roster: base.roster_rx.clone(),
        libp2p_metrics: libp2p::metrics::Metrics::new(&mut base.registry),
        store: base.store.clone(),
        stream_timeouts: config.network.stream_timeouts(),
        limiter: base.limiter.clone(),
        external: parse_addrs(&config.network.external, "external")?,
        nat: net::NatParams {
            circuit_relay: config.network.circuit_relay,
            reserve_circuit: config.network.reserve_circuit,
            circuit_max_duration: config.network.circuit_max_duration,
            circuit_max_bytes: config.network.circuit_max_bytes,
        },
    };
    net::spawn(params, base.counters.clone(), actors.clone())
}

/// The issuer (admin only) and the member's wallet.
fn spawn_wallet(
    base: &Base,
    config: &Config,
    net: &NetworkHandle,
    book: &PeerBookHandle,
    actors: &CancellationToken,
    tasks: &mut Vec<(&'static str, JoinHandle<()>)>,
) -> anyhow::Result<(Option<issuer::IssuerHandle>, MemberHandle)> {
    let issuer = base.is_admin.then(|| {
        let (h, t) = issuer::spawn(
            Issuer::empty(base.group.roster().clone()),
            base.store.clone(),
            net.clone(),
            base.view_rx.clone(),
            base.counters.clone(),
            actors.clone(),
        );
        tasks.push(("issuer", t));
        h
    });
    let route = match &issuer {
        Some(h) => IssuerRoute::Local(h.clone()),
        None => IssuerRoute::Remote(net.clone(), base.group.admin),
    };
    let (member, task) = member::spawn(
        member::MemberParams {
            me: base.me,
            route,
            refill: RefillConfig {
                low_water: config.wallet.low_water,
                batch: config.wallet.batch.max(1),
                issuance: config.exposure.issuance,
            },
            view: base.view_rx.clone(),
            peerbook: book.clone(),
        },
        base.store.clone(),
        base.counters.clone(),
        actors.clone(),
    )?;
    tasks.push(("member", task));
    Ok((issuer, member))
}

#[allow(clippy::too_many_arguments)]
fn spawn_lender(
    base: &Base,
    config: &Config,
    net: &NetworkHandle,
    upstreams: &Arc<UpstreamSet>,
    claimer: Claimer,
    keys: OhttpKeys,
    tracker: &TaskTracker,
    actors: &CancellationToken,
    tasks: &mut Vec<(&'static str, JoinHandle<()>)>,
) -> LenderHandle {
    let (lender, task) = lender::spawn(
        lender::LenderParams {
            me: base.me,
            node_key: base.key.clone(),
            group_id: base.group.group_id,
            attestation_key: base.group.attestation_key.clone(),
            upstreams: upstreams.clone(),
            exposure: config.exposure,
            claimer,
            period: config.lender.attestation_period,
            redeemer: Redeemer::new(base.me),
            view: base.view_rx.clone(),
            keys,
            tasks: tracker.clone(),
            lend_retention: crate::store::LendRetention {
                max_records: config.lender.lend_records,
                max_age_ms: u64::try_from(config.lender.lend_records_max_age.as_millis()).unwrap_or(u64::MAX),
            },
        },
        base.store.clone(),
        net.clone(),
        base.counters.clone(),
        actors.clone(),
    );
    tasks.push(("lender", task));
    lender
}

#[allow(clippy::too_many_arguments)]
fn api_state(
    opts: &RunOptions,
    base: Base,
    net: &NetworkHandle,
    peerbook: PeerBookHandle,
    member: MemberHandle,
    lender: LenderHandle,
    upstreams: Arc<UpstreamSet>,
    ohttp_key_config: Vec<u8>,
    api_addr: SocketAddr,
) -> anyhow::Result<api::ApiState> {
    // Live administration (`lendmesh group …` while this node runs) finds the API and its local admin token here.
    let admin_token = crate::home::write_admin_access(&opts.home, api_addr)?;
    let mut roles = vec!["member", "lender", "relay"];
    if base.is_admin {
        roles.extend(["admin", "issuer"]);
    }
    let config = &opts.config;
    Ok(api::ApiState {
        peer_id: base.me,
        roles,
        started_ms: now_ms(),
        net: net.clone(),
        peerbook,
        member,
        lender,
        counters: base.counters,
        upstream: upstreams.primary().map_or("none", |s| s.upstream.kind()),
        privacy: config.borrow.privacy,
        exposure: config.exposure,
        ohttp_key_config,
        registry: Arc::new(base.registry),
        token: config.api.token.clone(),
        store: base.store,
        view: base.view_rx,
        admin_token,
        upstreams,
        external_addrs: config.network.external.clone(),
        limiter: base.limiter.clone(),
    })
}

/// The swarm's listen addresses with `/p2p/<id>`, once it reports them (bounded wait).
async fn listen_addrs(net: &NetworkHandle, me: &PeerId) -> Vec<Multiaddr> {
    let mut addrs = Vec::new();
    for _ in 0..100 {
        addrs = net.snapshot().await.listen_addrs;
        if !addrs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    addrs
        .into_iter()
        .map(|a| a.with(libp2p::multiaddr::Protocol::P2p(crate::net::ids::to_libp2p(me))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_actor_that_panics_while_the_node_runs_stops_the_node_and_says_why() {
        let (actors, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let fatal = Arc::new(std::sync::Mutex::new(None));
        #[allow(clippy::panic)]
        let dying = tokio::spawn(async { panic!("injected") });
        let watched = supervise("network", dying, &actors, &shutdown, &fatal);
        tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled())
            .await
            .expect("the node shuts down");
        watched.await.unwrap();
        assert_eq!(
            fatal.lock().unwrap().as_deref(),
            Some("the network actor panicked")
        );
        // An actor that ends because the node is stopping is not a failure.
        let (actors, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let fatal = Arc::new(std::sync::Mutex::new(None));
        actors.cancel();
        supervise("member", tokio::spawn(async {}), &actors, &shutdown, &fatal)
            .await
            .unwrap();
        assert!(!shutdown.is_cancelled() && fatal.lock().unwrap().is_none());
    }
}
