//! The Member actor: the wallet and its refills (docs/design.md §4 issuance, member side).
//!
//! Below the low-water mark the member prepares a blinded batch, **persists the pending batch (with its secrets)
//! before sending**, asks the issuer, finalizes and verifies every signature, and **commits the tokens (and drops
//! the pending batch) in one transaction before using them**. On start it first resumes any pending batch with the
//! same request id; the issuer answers a retry of its last batch without charging again and the store never adds a
//! token twice, so a crash at any point loses no token and duplicates none.
//!
//! Epochs (docs/design.md §8): `protocol`'s [`RefillPlanner`] decides which epoch to refill and how many tokens — the current
//! epoch and, once announced, the next, never more than the quota has left (the issuer says how many in every
//! answer). A spent quota is not asked for again until the next epoch. Tokens are spent oldest epoch first while
//! lenders still take them; tokens of retired epochs leave the wallet and are counted (`tokens_expired`).

use std::sync::Arc;
use std::time::Duration;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::issuer::IssueError;
use lendmesh_protocol::refill::{BatchFate, RefillPlanner, RefillStep};
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wallet::{PendingBatch, Wallet};
use lendmesh_protocol::wire::IssueResponse;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::group::state::GroupView;
use crate::metrics::NodeMetrics;
use crate::net::NetworkHandle;
use crate::roles::issuer::IssuerHandle;
use crate::roles::peerbook::PeerBookHandle;
use crate::store::Store;

/// Commands queued to the member: 64.
pub const CAPACITY: usize = 64;
/// How often the wallet level is checked.
const CHECK_PERIOD: Duration = Duration::from_secs(2);

/// Where tokens come from.
#[derive(Clone, Debug)]
pub enum IssuerRoute {
    /// This node is the admin: ask the local issuer.
    Local(IssuerHandle),
    /// Ask the admin over the network.
    Remote(NetworkHandle, PeerId),
}

/// Refill settings.
#[derive(Clone, Copy, Debug)]
pub struct RefillConfig {
    /// Refill below this many tokens.
    pub low_water: u32,
    /// Tokens per request.
    pub batch: u32,
}

enum Command {
    Balance {
        reply: oneshot::Sender<usize>,
    },
    Take {
        reply: oneshot::Sender<Result<WalletToken, NoToken>>,
    },
    PutBack {
        token: WalletToken,
    },
    Nudge,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberCommand")
    }
}

pub use lendmesh_protocol::borrow::NoToken;

/// Handle to the member actor.
#[derive(Clone, Debug)]
pub struct MemberHandle {
    tx: mpsc::Sender<Command>,
}

impl MemberHandle {
    /// Takes a token to spend; it is removed from the store before it is returned.
    pub async fn take(&self) -> Result<WalletToken, NoToken> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Take { reply })
            .await
            .map_err(|_| NoToken::Empty { refill_at_ms: None })?;
        rx.await.unwrap_or(Err(NoToken::Empty { refill_at_ms: None }))
    }

    /// Refill now (the issuer became reachable), dropping any backoff.
    pub fn nudge(&self) {
        let _ = self.tx.try_send(Command::Nudge);
    }

    /// Returns a token that was refused before any claim.
    pub async fn put_back(&self, token: WalletToken) {
        let _ = self.tx.send(Command::PutBack { token }).await;
    }

    /// Tokens in the wallet.
    pub async fn balance(&self) -> usize {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Balance { reply }).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }
}

/// What the member actor needs to start.
#[derive(Debug)]
pub struct MemberParams {
    /// This node.
    pub me: PeerId,
    /// Where tokens come from.
    pub route: IssuerRoute,
    /// Refill settings.
    pub refill: RefillConfig,
    /// The group view (epochs, roster, alarms).
    pub view: watch::Receiver<Arc<GroupView>>,
    /// Where key-consistency alarms go.
    pub peerbook: PeerBookHandle,
}

/// Starts the member actor (loads the wallet from the store).
pub fn spawn(
    params: MemberParams,
    store: Store,
    counters: Arc<NodeMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<(MemberHandle, tokio::task::JoinHandle<()>)> {
    let wallet = Wallet::from(store.wallet_tokens()?);
    let (tx, rx) = mpsc::channel(CAPACITY);
    let actor = Member {
        me: params.me,
        route: params.route,
        planner: RefillPlanner::new(params.refill.low_water, params.refill.batch),
        view: params.view,
        peerbook: params.peerbook,
        store,
        counters,
        wallet,
        rx,
    };
    Ok((MemberHandle { tx }, tokio::spawn(actor.run(shutdown))))
}

struct Member {
    me: PeerId,
    route: IssuerRoute,
    planner: RefillPlanner,
    view: watch::Receiver<Arc<GroupView>>,
    peerbook: PeerBookHandle,
    store: Store,
    counters: Arc<NodeMetrics>,
    wallet: Wallet,
    rx: mpsc::Receiver<Command>,
}

enum Outcome {
    Done,
    Refused(IssueError),
    Retry(String),
}

impl Member {
    async fn run(mut self, shutdown: CancellationToken) {
        info!(balance = self.wallet.balance(), "wallet loaded");
        self.check_token_keys();
        let mut next_check = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(msg) = self.rx.recv() => match msg {
                    Command::Balance { reply } => { let _ = reply.send(self.wallet.balance()); }
                    Command::Take { reply } => {
                        let token = self.handle_take();
                        let _ = reply.send(token);
                        // Refill as soon as any signable epoch (the current one above all) drops below the mark —
                        // unless refills are backing off after a failure: a spend never resets the backoff.
                        if self.planner.due(now_ms()) && self.next_refill().is_some() {
                            next_check = tokio::time::Instant::now();
                        }
                    }
                    Command::PutBack { token } => self.handle_put_back(token),
                    Command::Nudge => {
                        self.planner.reset_backoff();
                        next_check = tokio::time::Instant::now();
                    }
                },
                Ok(()) = self.view.changed() => {
                    self.view.borrow_and_update();
                    self.check_token_keys();
                    // A new epoch may be signable: refill soon.
                    next_check = next_check.min(tokio::time::Instant::now() + Duration::from_millis(100));
                }
                _ = tokio::time::sleep_until(next_check) => {
                    self.handle_expiry();
                    let ok = self.handle_refill(&shutdown).await;
                    // Failures back off with jitter (`protocol::refill`), successes check again soon.
                    let wait = if ok {
                        self.planner.reset_backoff();
                        CHECK_PERIOD
                    } else {
                        Duration::from_millis(self.planner.failed(now_ms(), &mut rand::rngs::OsRng))
                    };
                    next_check = tokio::time::Instant::now() + wait;
                }
            }
        }
    }

    /// The refill to make now, if any (see `RefillPlanner`).
    fn next_refill(&self) -> Option<RefillStep> {
        let view = self.view.borrow().clone();
        let now = now_ms();
        let quota = self.quota(&view);
        let epochs: Vec<(u32, u32)> = view
            .epochs
            .refill_epochs(now)
            .into_iter()
            .filter(|e| !view.refused_epochs.contains(e))
            .map(|e| (e, quota))
            .collect();
        self.planner.next(&epochs, |e| self.wallet.balance_in(e))
    }

    /// This member's quota per epoch (0 when not on the roster).
    fn quota(&self, view: &GroupView) -> u32 {
        view.roster.entry(&self.me).map_or(0, |e| e.quota_per_epoch)
    }

    /// Takes the next token lenders take now (oldest epoch first), durably removed from the store first.
    fn handle_take(&mut self) -> Result<WalletToken, NoToken> {
        let view = self.view.borrow().clone();
        let now = now_ms();
        let Some(token) = self.wallet.take(|e| view.spendable(e, now)) else {
            let current = view.epochs.current(now).map(|c| c.epoch());
            return Err(self
                .planner
                .no_token(current, self.quota(&view), view.epochs.next_start_ms(now)));
        };
        match self.store.take_token(&token.token.hash()) {
            Ok(_) => {
                self.counters.inc(&self.counters.tokens_spent);
                Ok(token)
            }
            Err(e) => {
                warn!(%e, "cannot remove a token from the store; not spending it");
                self.wallet.put_back(token);
                Err(NoToken::Empty { refill_at_ms: None })
            }
        }
    }

    fn handle_put_back(&mut self, token: WalletToken) {
        if let Err(e) = self.store.put_token(&token) {
            warn!(%e, "cannot return a token to the store");
            return;
        }
        self.counters.dec(&self.counters.tokens_spent);
        self.wallet.put_back(token);
    }

    /// Tokens of epochs no lender will take any more leave the wallet (and the store), counted.
    fn handle_expiry(&mut self) {
        let view = self.view.borrow().clone();
        let now = now_ms();
        let live = |e: u32| view.epochs.live(e, now);
        if self.wallet.iter().all(|t| live(t.token.input.epoch)) {
            return;
        }
        match self.store.prune_wallet(live) {
            Ok(n) => {
                let dropped = self.wallet.retain_epochs(live);
                self.counters.add(&self.counters.tokens_expired, dropped as u64);
                info!(
                    expired = n,
                    balance = self.wallet.balance(),
                    "tokens of retired epochs left the wallet unspent"
                );
            }
            Err(e) => warn!(%e, "cannot drop retired tokens from the store"),
        }
        self.planner.retain(|e| view.epochs.signable(e, now));
    }

    /// Key consistency: a token whose key id is not the one held for its epoch raises the alarm.
    fn check_token_keys(&mut self) {
        let view = self.view.borrow().clone();
        let mut seen = std::collections::BTreeSet::new();
        for t in self.wallet.iter() {
            let input = &t.token.input;
            if let Some(held) = view.epochs.key_id(input.epoch)
                && held != input.key_id
                && seen.insert(input.epoch)
            {
                self.peerbook.key_alarm(input.epoch, "this node's wallet".into());
            }
        }
    }

    /// Resumes pending batches, then refills every signable epoch below the low-water mark. Returns false when it
    /// should back off.
    async fn handle_refill(&mut self, shutdown: &CancellationToken) -> bool {
        let pending = match self.store.pending() {
            Ok(p) => p,
            Err(e) => {
                warn!(%e, "cannot read pending batches");
                return false;
            }
        };
        for batch in pending {
            if shutdown.is_cancelled() || !self.complete(batch).await {
                return false;
            }
        }
        while !shutdown.is_cancelled() {
            let Some(RefillStep { epoch, count }) = self.next_refill() else {
                return true;
            };
            let Some(key) = self.view.borrow().epochs.get(epoch).map(|i| i.key.clone()) else {
                return true;
            };
            let (_, batch) = match Wallet::prepare_batch(&key, epoch, count, &mut rand::rngs::OsRng) {
                Ok(b) => b,
                Err(e) => {
                    warn!(%e, "cannot prepare a batch");
                    return false;
                }
            };
            // Durable before sending: after a crash the same request is sent again and finalized.
            if let Err(e) = self.store.put_pending(&batch) {
                warn!(%e, "cannot persist the pending batch; not sending it");
                return false;
            }
            if !self.complete(batch).await {
                return false;
            }
        }
        true
    }

    /// Sends (or re-sends) a pending batch and stores its tokens. Returns whether it completed.
    async fn complete(&mut self, batch: PendingBatch) -> bool {
        match self.request(&batch).await {
            Outcome::Done => true,
            Outcome::Refused(e) => {
                // Which refusals drop the batch is `protocol::refill`'s rule.
                if self.planner.refused(batch.epoch, &e) == BatchFate::Drop {
                    let _ = self.store.drop_pending(&batch.request_id);
                }
                match e {
                    IssueError::OverQuota { remaining: 0, .. } => {
                        info!(
                            epoch = batch.epoch,
                            "quota for epoch {} is spent; waiting for the next epoch", batch.epoch
                        );
                        true
                    }
                    IssueError::OverQuota { remaining, .. } => {
                        info!(
                            epoch = batch.epoch,
                            remaining, "asked for more than the quota has left; asking for {remaining}"
                        );
                        true
                    }
                    e => {
                        warn!(%e, "the issuer refused the refill; will retry later");
                        false
                    }
                }
            }
            Outcome::Retry(why) => {
                warn!(%why, "refill failed; will retry the same batch");
                false
            }
        }
    }

    async fn request(&mut self, batch: &PendingBatch) -> Outcome {
        let resp = match &self.route {
            IssuerRoute::Local(h) => h
                .local(self.me, batch.request.clone())
                .await
                .ok_or("issuer stopped".to_string()),
            IssuerRoute::Remote(net, admin) => net
                .issue(*admin, batch.request.clone())
                .await
                .map_err(|e| e.to_string()),
        };
        let (sigs, remaining) = match resp {
            Ok(IssueResponse::Granted {
                request_id,
                blind_signatures,
                remaining,
            }) if request_id == batch.request_id => (blind_signatures, remaining),
            Ok(IssueResponse::Granted { .. }) => {
                return Outcome::Retry("issuer answered another request".into());
            }
            Ok(IssueResponse::Refused(e)) => return Outcome::Refused(e),
            Err(e) => return Outcome::Retry(e),
        };
        let Some(key) = self.view.borrow().epochs.get(batch.epoch).map(|i| i.key.clone()) else {
            let _ = self.store.drop_pending(&batch.request_id);
            return Outcome::Retry(format!(
                "epoch {} retired before its batch completed",
                batch.epoch
            ));
        };
        let mut fresh = Wallet::new();
        if let Err(e) = fresh.finalize(&key, batch, &sigs) {
            return Outcome::Retry(format!("issuer signatures did not verify: {e}"));
        }
        let tokens: Vec<_> = fresh.iter().cloned().collect();
        // Durable before use: tokens and the pending batch's removal in one transaction.
        match self.store.finish_batch(&batch.request_id, &tokens) {
            Ok(added) => {
                for t in tokens {
                    self.wallet.insert(t);
                }
                self.planner.record_remaining(batch.epoch, remaining);
                self.counters.add(&self.counters.tokens_received, added as u64);
                info!(
                    epoch = batch.epoch,
                    added,
                    remaining,
                    balance = self.wallet.balance(),
                    "wallet refilled"
                );
                if remaining == 0 {
                    info!(
                        epoch = batch.epoch,
                        "quota for epoch {} is spent; waiting for the next epoch", batch.epoch
                    );
                }
                Outcome::Done
            }
            Err(e) => Outcome::Retry(format!("cannot store tokens: {e}")),
        }
    }
}
