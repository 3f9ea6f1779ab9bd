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
//!
//! Backing off (issue 17): a refill that fails — no answer, or a refusal other than over quota — waits as the
//! planner says (2 s doubling to 60 s, with jitter). Nothing shortens that wait but the issuer connecting after a
//! refill that got no answer: not a spend, not a new group view. At most one request is on its way at a time, and
//! the actor keeps answering while it is, so an empty wallet answers a gateway request at once with the time the
//! next refill is due. Every request is counted by outcome in `lendmesh_refill_requests_total`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::issuer::IssueError;
use lendmesh_protocol::refill::{
    BatchFate, Issuance, RefillEpoch, RefillPlanner, RefillStep, refusal_backs_off,
};
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wallet::{PendingBatch, Wallet};
use lendmesh_protocol::wire::IssueResponse;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
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
    /// As tokens are spent, or the whole quota on a schedule (`[exposure] issuance`).
    pub issuance: Issuance,
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
        /// Spend it after every other token of its epoch (set aside), rather than first.
        last: bool,
    },
    Nudge,
    Settle {
        token: lendmesh_protocol::token::TokenHash,
        outcome: String,
    },
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

    /// The issuer became reachable: if the last refill got no answer, refill now rather than when its backoff
    /// ends (a refusal keeps its backoff: `RefillPlanner::issuer_reachable`).
    pub fn nudge(&self) {
        let _ = self.tx.try_send(Command::Nudge);
    }

    /// Returns a token that was refused before any claim, to be spent first next time.
    pub async fn put_back(&self, token: WalletToken) {
        let _ = self.tx.send(Command::PutBack { token, last: false }).await;
    }

    /// Returns an unspent token whose replicas could not form a majority, to be spent after every other token of
    /// its epoch (`borrow::Effect::SetTokenAside`).
    pub async fn set_aside(&self, token: WalletToken) {
        let _ = self.tx.send(Command::PutBack { token, last: true }).await;
    }

    /// Records how a token taken to be spent ended: `served`, or `given_up:<reason>` (`store::ledger`).
    pub async fn settle(&self, token: &WalletToken, outcome: String) {
        let token = token.token.hash();
        let _ = self.tx.send(Command::Settle { token, outcome }).await;
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
    // Tokens a killed process had sent to be spent: whether a lender claimed them is unknown, so they are given up,
    // counted in the ledger (`store::ledger`).
    let interrupted = store.settle_interrupted()?;
    if interrupted > 0 {
        warn!(
            tokens = interrupted,
            "tokens that were being spent when the node stopped are given up (a lender may have claimed them)"
        );
        counters.add(&counters.tokens_given_up, interrupted);
    }
    let wallet = Wallet::from(store.wallet_tokens()?);
    let (tx, rx) = mpsc::channel(CAPACITY);
    let actor = Member {
        me: params.me,
        route: params.route,
        planner: RefillPlanner::new(params.refill.low_water, params.refill.batch)
            .with_issuance(params.refill.issuance, &mut rand::rngs::OsRng),
        view: params.view,
        peerbook: params.peerbook,
        store,
        counters,
        wallet,
        rx,
        in_flight: None,
        next_check: Instant::now(),
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
    /// The request to the issuer on its way, if any: at most one at a time.
    in_flight: Option<InFlight>,
    /// When to check the wallet level next (while no request is on its way).
    next_check: Instant,
}

/// The issuer's answer, or why there is none.
type Answer = Result<IssueResponse, String>;

/// A request to the issuer on its way. Its answer is awaited in the actor's loop, so gateway requests (and the
/// API's balance) are answered at once while the issuer is slow or unreachable.
struct InFlight {
    batch: PendingBatch,
    answer: Pin<Box<dyn Future<Output = Answer> + Send>>,
}

/// How one request to the issuer ended.
enum Outcome {
    /// Tokens stored.
    Done,
    /// The issuer refused.
    Refused(IssueError),
    /// No answer: the issuer could not be reached, or did not answer in time.
    Unreachable(String),
    /// An answer that cannot be used (another request's, signatures that do not verify), or storing failed.
    Failed(String),
}

impl Outcome {
    /// Its label in `lendmesh_refill_requests_total{outcome}` (one of [`crate::metrics::REFILL_OUTCOMES`]).
    fn label(&self) -> &'static str {
        match self {
            Outcome::Done => "granted",
            Outcome::Refused(IssueError::OverQuota { .. }) => "over_quota",
            Outcome::Refused(IssueError::Busy) => "busy",
            Outcome::Refused(_) => "refused",
            Outcome::Unreachable(_) => "unreachable",
            Outcome::Failed(_) => "failed",
        }
    }
}

impl Member {
    async fn run(mut self, shutdown: CancellationToken) {
        info!(balance = self.wallet.balance(), "wallet loaded");
        self.check_token_keys();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(msg) = self.rx.recv() => self.handle_command(msg),
                Ok(()) = self.view.changed() => self.handle_view(),
                answer = Self::answer(&mut self.in_flight), if self.in_flight.is_some() => self.handle_answer(answer),
                _ = tokio::time::sleep_until(self.next_check), if self.in_flight.is_none() => self.handle_check(),
            }
        }
    }

    /// The answer to the request on its way (never, if none is).
    async fn answer(in_flight: &mut Option<InFlight>) -> Answer {
        match in_flight {
            Some(f) => f.answer.as_mut().await,
            None => std::future::pending().await,
        }
    }

    fn handle_command(&mut self, msg: Command) {
        match msg {
            Command::Balance { reply } => {
                let _ = reply.send(self.wallet.balance());
            }
            Command::Take { reply } => {
                let _ = reply.send(self.handle_take());
                // Refill as soon as any signable epoch (the current one above all) drops below the mark — unless a
                // request is on its way or refills are backing off after a failure: a spend never resets the
                // backoff, and a spent quota leaves nothing to ask for.
                if self.in_flight.is_none() && self.planner.due(now_ms()) && self.next_refill().is_some() {
                    self.next_check = Instant::now();
                }
            }
            Command::PutBack { token, last } => self.handle_put_back(token, last),
            Command::Settle { token, outcome } => {
                if outcome != "served" {
                    self.counters.inc(&self.counters.tokens_given_up);
                }
                if let Err(e) = self.store.settle_token(&token, &outcome) {
                    warn!(%e, outcome, "cannot record how a spent token ended");
                }
            }
            Command::Nudge => {
                // Only a refill that got no answer is retried early; a refusal keeps its backoff.
                if self.planner.issuer_reachable() && self.in_flight.is_none() {
                    self.next_check = Instant::now();
                }
            }
        }
    }

    /// A new group view: a new epoch may be signable, so refill soon — but not before a running backoff ends.
    fn handle_view(&mut self) {
        self.view.borrow_and_update();
        self.check_token_keys();
        let backoff = self.planner.due_at_ms().saturating_sub(now_ms());
        let soon = Instant::now() + Duration::from_millis(backoff.max(100));
        self.next_check = self.next_check.min(soon);
    }

    /// Time to check the wallet: retire old tokens, then start a round of refills.
    fn handle_check(&mut self) {
        self.handle_expiry();
        self.send_next();
    }

    /// The refill to make now, if any (see `RefillPlanner`).
    fn next_refill(&mut self) -> Option<RefillStep> {
        let view = self.view.borrow().clone();
        let now = now_ms();
        let quota = self.quota(&view);
        let epochs: Vec<RefillEpoch> = view
            .epochs
            .refill_epochs(now)
            .into_iter()
            .filter(|e| !view.refused_epochs.contains(e))
            .filter_map(|e| view.epochs.get(e))
            .map(|i| RefillEpoch {
                epoch: i.epoch(),
                quota,
                starts_at_ms: i.starts_at_ms(),
                ends_at_ms: i.effective_end_ms,
            })
            .collect();
        self.planner.next_at(now, &epochs, |e| self.wallet.balance_in(e))
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

    fn handle_put_back(&mut self, token: WalletToken, last: bool) {
        if let Err(e) = self.store.put_token(&token) {
            warn!(%e, "cannot return a token to the store");
            return;
        }
        self.counters.dec(&self.counters.tokens_spent);
        if last {
            self.wallet.set_aside(token);
        } else {
            self.wallet.put_back(token);
        }
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

    /// The next step of a round of refills: a pending batch first (resumed with its request id), then the planner's
    /// next step for any signable epoch below the low-water mark. With nothing left to ask the round is over.
    fn send_next(&mut self) {
        match self.next_batch() {
            Ok(Some(batch)) => self.send(batch),
            Ok(None) => {
                self.planner.reset_backoff();
                self.next_check = Instant::now() + CHECK_PERIOD;
            }
            Err(why) => self.back_off(false, &why, "local"),
        }
    }

    /// The batch to send next, persisted (with its secrets) before it is returned, or None.
    fn next_batch(&mut self) -> Result<Option<PendingBatch>, String> {
        let pending = self
            .store
            .pending()
            .map_err(|e| format!("cannot read pending batches: {e}"))?;
        if let Some(batch) = pending.into_iter().next() {
            return Ok(Some(batch));
        }
        let Some(RefillStep { epoch, count }) = self.next_refill() else {
            return Ok(None);
        };
        let Some(key) = self.view.borrow().epochs.get(epoch).map(|i| i.key.clone()) else {
            return Ok(None);
        };
        let (_, batch) = Wallet::prepare_batch(&key, epoch, count, &mut rand::rngs::OsRng)
            .map_err(|e| format!("cannot prepare a batch: {e}"))?;
        // Durable before sending: after a crash the same request is sent again and finalized.
        self.store
            .put_pending(&batch)
            .map_err(|e| format!("cannot persist the pending batch, so not sending it: {e}"))?;
        Ok(Some(batch))
    }

    /// Sends a batch to the issuer; its answer comes back through the actor's loop.
    fn send(&mut self, batch: PendingBatch) {
        let req = batch.request.clone();
        let answer: Pin<Box<dyn Future<Output = Answer> + Send>> = match self.route.clone() {
            IssuerRoute::Local(h) => {
                let me = self.me;
                Box::pin(async move { h.local(me, req).await.ok_or("issuer stopped".to_string()) })
            }
            IssuerRoute::Remote(net, admin) => {
                Box::pin(async move { net.issue(admin, req).await.map_err(|e| e.to_string()) })
            }
        };
        self.in_flight = Some(InFlight { batch, answer });
    }

    /// The issuer answered (or could not be reached): store the tokens and go on with the round, or back off.
    fn handle_answer(&mut self, answer: Answer) {
        let Some(InFlight { batch, .. }) = self.in_flight.take() else {
            return;
        };
        let outcome = self.finish(&batch, answer);
        let label = outcome.label();
        NodeMetrics::outcome(&self.counters.refill_requests, label);
        match outcome {
            Outcome::Done => self.send_next(),
            Outcome::Refused(e) => {
                // Which refusals drop the batch, and which back off, are `protocol::refill`'s rules.
                if self.planner.refused(batch.epoch, &e) == BatchFate::Drop
                    && let Err(err) = self
                        .store
                        .drop_pending(&batch.request_id, &format!("refused:{}", e.label()))
                {
                    // Kept, it would be sent again at once: back off instead.
                    return self.back_off(false, &format!("cannot drop a refused batch: {err}"), label);
                }
                if refusal_backs_off(&e) {
                    return self.back_off(false, &format!("the issuer refused the refill: {e}"), label);
                }
                if let IssueError::OverQuota { remaining, .. } = e {
                    if remaining == 0 {
                        info!(
                            epoch = batch.epoch,
                            "quota for epoch {} is spent; waiting for the next epoch", batch.epoch
                        );
                    } else {
                        info!(
                            epoch = batch.epoch,
                            remaining, "asked for more than the quota has left; asking for {remaining}"
                        );
                    }
                }
                self.send_next();
            }
            Outcome::Unreachable(why) => self.back_off(true, &why, label),
            Outcome::Failed(why) => self.back_off(false, &why, label),
        }
    }

    /// A refill failed: wait as the planner says (exponential, with jitter) before the next round.
    fn back_off(&mut self, unreachable: bool, why: &str, outcome: &str) {
        let now = now_ms();
        let mut rng = rand::rngs::OsRng;
        let wait = if unreachable {
            self.planner.unreachable(now, &mut rng)
        } else {
            self.planner.failed(now, &mut rng)
        };
        self.next_check = Instant::now() + Duration::from_millis(wait);
        warn!(
            %why,
            outcome,
            retry_in_ms = wait,
            retry_at_ms = now + wait,
            "refill failed; backing off (a kept batch goes again unchanged, with its request id)"
        );
    }

    /// Verifies and stores the tokens of a granted batch, or says why not.
    fn finish(&mut self, batch: &PendingBatch, answer: Answer) -> Outcome {
        let (sigs, remaining) = match answer {
            Ok(IssueResponse::Granted {
                request_id,
                blind_signatures,
                remaining,
            }) if request_id == batch.request_id => (blind_signatures, remaining),
            Ok(IssueResponse::Granted { .. }) => {
                return Outcome::Failed("issuer answered another request".into());
            }
            Ok(IssueResponse::Refused(e)) => return Outcome::Refused(e),
            Err(e) => return Outcome::Unreachable(e),
        };
        let Some(key) = self.view.borrow().epochs.get(batch.epoch).map(|i| i.key.clone()) else {
            let _ = self.store.drop_pending(&batch.request_id, "expired");
            return Outcome::Failed(format!(
                "epoch {} retired before its batch completed",
                batch.epoch
            ));
        };
        let mut fresh = Wallet::new();
        if let Err(e) = fresh.finalize(&key, batch, &sigs) {
            return Outcome::Failed(format!("issuer signatures did not verify: {e}"));
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
            Err(e) => Outcome::Failed(format!("cannot store tokens: {e}")),
        }
    }
}
