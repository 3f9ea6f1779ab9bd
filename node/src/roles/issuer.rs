//! The Issuer actor (admin node only): blind-signs token batches for roster members over `/lendmesh/issue/1`.
//!
//! The remote is authenticated by the connection (noise), so the stream's PeerId is the member. The protocol's
//! `Issuer` checks roster, expiry, epoch, key and quota; the actor then **commits the member's quota record to the
//! store before the signatures leave** — after a crash the counter is never below what was handed out. Signing is
//! CPU-bound (≈10 ms per token at 3072 bits), so it runs on a blocking thread while the actor waits.
//!
//! It signs for every epoch the group view names as signable (the current one and the announced next one;
//! docs/design.md §8), loading each epoch's secret key from the store (the admin stores it before announcing the epoch), and drops
//! retired epochs with their counters.

use std::sync::Arc;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::issuer::{IssueError, Issuer};
use lendmesh_protocol::wire::{IssueRequest, IssueResponse};
use libp2p::request_response::ResponseChannel;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::group::state::GroupView;
use crate::metrics::NodeMetrics;
use crate::net::NetworkHandle;
use crate::store::Store;

/// Issue requests queued: 64 (one batch per member at a time; a 100-member group refilling together waits).
pub const CAPACITY: usize = 64;

enum Command {
    Remote {
        peer: PeerId,
        req: IssueRequest,
        channel: ResponseChannel<IssueResponse>,
    },
    Local {
        peer: PeerId,
        req: IssueRequest,
        reply: oneshot::Sender<IssueResponse>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuerCommand")
    }
}

/// Handle to the Issuer.
#[derive(Clone, Debug)]
pub struct IssuerHandle {
    tx: mpsc::Sender<Command>,
}

impl IssuerHandle {
    /// Queues a request from the network; refuses (answering "busy") when the queue is full.
    pub fn try_remote(
        &self,
        peer: PeerId,
        req: IssueRequest,
        channel: ResponseChannel<IssueResponse>,
    ) -> Result<(), ResponseChannel<IssueResponse>> {
        self.tx
            .try_send(Command::Remote { peer, req, channel })
            .map_err(|e| match e.into_inner() {
                Command::Remote { channel, .. } => channel,
                _ => unreachable!("we sent a Remote"),
            })
    }

    /// Issues to this (admin) node's own wallet.
    pub async fn local(&self, peer: PeerId, req: IssueRequest) -> Option<IssueResponse> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Local { peer, req, reply }).await.ok()?;
        rx.await.ok()
    }
}

/// Starts the issuer for the store's current epoch.
pub fn spawn(
    issuer: Issuer,
    store: Store,
    net: NetworkHandle,
    view: watch::Receiver<Arc<GroupView>>,
    counters: Arc<NodeMetrics>,
    shutdown: CancellationToken,
) -> (IssuerHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let mut actor = IssuerActor {
        issuer: Some(issuer),
        store,
        net,
        view,
        counters,
        rx,
    };
    actor.sync_epochs();
    (IssuerHandle { tx }, tokio::spawn(actor.run(shutdown)))
}

struct IssuerActor {
    /// Taken while a batch is being signed on a blocking thread.
    issuer: Option<Issuer>,
    store: Store,
    net: NetworkHandle,
    view: watch::Receiver<Arc<GroupView>>,
    counters: Arc<NodeMetrics>,
    rx: mpsc::Receiver<Command>,
}

impl IssuerActor {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Ok(()) = self.view.changed() => self.sync_epochs(),
                Some(msg) = self.rx.recv() => match msg {
                    Command::Remote { peer, req, channel } => {
                        let resp = self.handle_issue(peer, req).await;
                        self.net.respond_issue(channel, resp).await;
                    }
                    Command::Local { peer, req, reply } => {
                        let resp = self.handle_issue(peer, req).await;
                        let _ = reply.send(resp);
                    }
                },
            }
        }
    }

    /// Follows the group view: the roster, a key for every signable epoch, their ends, and retirements.
    fn sync_epochs(&mut self) {
        let view = self.view.borrow_and_update().clone();
        let Some(issuer) = self.issuer.as_mut() else {
            return;
        };
        issuer.set_roster(view.roster.clone());
        for info in view.epochs.iter() {
            let epoch = info.epoch();
            let until = if info.cancelled() {
                0
            } else {
                info.effective_end_ms
            };
            if issuer.has_epoch(epoch) {
                issuer.set_until(epoch, until);
                continue;
            }
            match self.store.issuer_key(epoch) {
                Ok(Some(secret)) if secret.public_key().key_id() == info.key_id => {
                    issuer.add_epoch(epoch, secret, until);
                    match self.store.quota_records(epoch) {
                        Ok(records) => records.into_iter().for_each(|r| issuer.restore(r)),
                        Err(e) => warn!(epoch, %e, "cannot read quota records; not signing for this epoch"),
                    }
                    info!(epoch, "issuer signs for epoch {epoch}");
                }
                Ok(Some(_)) => warn!(
                    epoch,
                    "the stored issuer key is not the announced one; not signing"
                ),
                Ok(None) => warn!(
                    epoch,
                    "no issuer key stored for epoch {epoch}; not signing for it"
                ),
                Err(e) => warn!(epoch, %e, "cannot read the issuer key"),
            }
        }
        if let Some(oldest) = view.epochs.iter().next().map(|i| i.epoch()) {
            issuer.retire_before(oldest);
        }
    }

    async fn handle_issue(&mut self, peer: PeerId, req: IssueRequest) -> IssueResponse {
        let Some(mut issuer) = self.issuer.take() else {
            return IssueResponse::Refused(IssueError::Busy);
        };
        let request_id = req.request_id;
        let (issuer, result) = tokio::task::spawn_blocking(move || {
            let result = issuer.issue(&peer, &req, now_ms(), &mut rand::rngs::OsRng);
            (issuer, result)
        })
        .await
        .unwrap_or_else(|e| panic!("issuer signing thread panicked: {e}"));
        self.issuer = Some(issuer);
        match result {
            Ok(grant) => {
                // Durable before the signatures leave: the counter never falls behind what was handed out.
                if let Err(e) = self.store.put_quota_record(&grant.record) {
                    warn!(peer = %peer.short(), %e, "could not persist the quota record; refusing the batch");
                    return IssueResponse::Refused(IssueError::StoreFailed);
                }
                let n = grant.blind_signatures.len() as u64;
                if grant.charged {
                    self.counters.add(&self.counters.tokens_issued, n);
                }
                info!(peer = %peer.short(), epoch = grant.record.epoch, tokens = n, used = grant.record.used, remaining = grant.remaining, retry = !grant.charged, "issued tokens");
                IssueResponse::Granted {
                    request_id,
                    blind_signatures: grant.blind_signatures,
                    remaining: grant.remaining,
                }
            }
            Err(e) => {
                self.counters.inc(&self.counters.issue_refused);
                warn!(peer = %peer.short(), %e, "issue request refused");
                IssueResponse::Refused(e)
            }
        }
    }
}
