//! Wires the actors together and runs a node until shutdown (`lendmesh run`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lendmesh_protocol::PeerId;
use lendmesh_protocol::issuer::Issuer;
use libp2p::Multiaddr;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, UpstreamKind};
use crate::issuer::IssuerHandle;
use crate::lender::LenderHandle;
use crate::member::{IssuerRoute, RefillConfig};
use crate::metrics::Counters;
use crate::network::{NetEvent, NetworkParams};
use crate::peerbook::PeerBookHandle;
use crate::store::{Store, StoreError};
use crate::upstream::{MockUpstream, Upstream};
use crate::{api, issuer, lender, member, network, now_ms, peerbook};

/// How long shutdown waits for each task.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What `lendmesh run` resolved.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The home directory.
    pub home: PathBuf,
    /// Effective settings (config file + flags).
    pub config: Config,
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
    let is_admin = group.admin == me;
    let counters = Arc::new(Counters::default());
    let (roster_tx, roster_rx) = watch::channel(Arc::new(group.roster().clone()));

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
    };
    info!(peer = %me, group = %group.name, group_id = %group.group_id.short(), admin = is_admin, "starting node");
    let (net, net_events, net_task) = network::spawn(params, counters.clone(), shutdown.clone())?;

    let upstream = build_upstream(config, me.short())?;
    let (book, book_task) = peerbook::spawn(
        me,
        group.clone(),
        store.clone(),
        net.clone(),
        roster_tx,
        counters.clone(),
        shutdown.clone(),
    );
    let mut tasks = vec![("network", net_task), ("peerbook", book_task)];

    let issuer_handle = if is_admin {
        let epoch = group.epoch_number();
        let secret = store.issuer_key(epoch)?.ok_or_else(|| {
            anyhow::anyhow!("this admin node has no issuer key for epoch {epoch}; the store is incomplete")
        })?;
        let mut iss = Issuer::new(epoch, secret, group.roster().clone());
        for record in store.quota_records(epoch)? {
            iss.restore(record);
        }
        let (h, t) = issuer::spawn(
            iss,
            store.clone(),
            net.clone(),
            roster_rx.clone(),
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
        me,
        group.epoch_number(),
        group.issuer_key()?,
        route,
        RefillConfig {
            low_water: config.wallet.low_water,
            batch: config.wallet.batch.max(1),
        },
        store.clone(),
        counters.clone(),
        shutdown.clone(),
    )?;
    tasks.push(("member", member_task));

    let (lender, lender_task) = lender::spawn(
        lender::LenderParams {
            me,
            node_key: key.clone(),
            group_id: group.group_id,
            attestation_key: group.attestation_key.clone(),
            upstream: upstream.clone(),
            reserve: config.lender.reserve,
            period: config.lender.attestation_period,
        },
        store.clone(),
        net.clone(),
        counters.clone(),
        shutdown.clone(),
    );
    tasks.push(("lender", lender_task));

    let dispatcher = tokio::spawn(dispatch(
        net_events,
        book.clone(),
        issuer_handle.clone(),
        lender,
        net.clone(),
        counters.clone(),
    ));
    tasks.push(("dispatcher", dispatcher));

    let api_addr: SocketAddr = config
        .api
        .addr
        .parse()
        .with_context(|| format!("API address '{}' is not host:port", config.api.addr))?;
    let listener = api::bind(api_addr).await?;
    info!("api listening on http://{}", listener.local_addr()?);
    let mut roles = vec!["member", "lender"];
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
        counters,
        upstream: upstream.kind(),
    };
    tasks.push(("api", tokio::spawn(api::serve(listener, state, shutdown.clone()))));

    shutdown.cancelled().await;
    info!("shutting down");
    for (name, task) in tasks {
        match tokio::time::timeout(JOIN_TIMEOUT, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(task = name, %e, "task failed"),
            Err(_) => warn!(task = name, "task did not stop in time"),
        }
    }
    drop(store);
    info!("stopped");
    Ok(())
}

/// Routes network events to the actors that own them.
async fn dispatch(
    mut events: mpsc::Receiver<NetEvent>,
    book: PeerBookHandle,
    issuer: Option<IssuerHandle>,
    lender: LenderHandle,
    net: network::NetworkHandle,
    counters: Arc<Counters>,
) {
    while let Some(ev) = events.recv().await {
        match ev {
            NetEvent::InboundIssue { peer, req, channel } => match &issuer {
                Some(h) => {
                    if let Err(channel) = h.try_remote(peer, req, channel) {
                        warn!(peer = %peer.short(), "issuer busy; refusing the request");
                        net.respond_issue(
                            channel,
                            lendmesh_protocol::wire::IssueResponse::Refused(
                                lendmesh_protocol::issuer::IssueError::SigningFailed,
                            ),
                        )
                        .await;
                    }
                }
                None => {
                    warn!(peer = %peer.short(), "issue request sent to a node that is not the issuer");
                    net.respond_issue(
                        channel,
                        lendmesh_protocol::wire::IssueResponse::Refused(
                            lendmesh_protocol::issuer::IssueError::UnknownMember,
                        ),
                    )
                    .await;
                }
            },
            NetEvent::Subscribed { peer } => {
                lender.nudge();
                if !book.try_forward(NetEvent::Subscribed { peer }) {
                    counters.inc(&counters.net_events_dropped);
                }
            }
            other => {
                if !book.try_forward(other) {
                    counters.inc(&counters.net_events_dropped);
                }
            }
        }
    }
}
