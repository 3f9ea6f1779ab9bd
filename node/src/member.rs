//! The Member actor: the wallet and its refills (DESIGN §4 issuance, member side).
//!
//! Below the low-water mark the member prepares a blinded batch, **persists the pending batch (with its secrets)
//! before sending**, asks the issuer, finalizes and verifies every signature, and **commits the tokens (and drops
//! the pending batch) in one transaction before using them**. On start it first resumes any pending batch with the
//! same request id; the issuer answers a retry of its last batch without charging again and the store never adds a
//! token twice, so a crash at any point loses no token and duplicates none.

use std::sync::Arc;
use std::time::Duration;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::blind_rsa::PublicKey;
use lendmesh_protocol::issuer::IssueError;
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wallet::{PendingBatch, Wallet};
use lendmesh_protocol::wire::IssueResponse;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::issuer::IssuerHandle;
use crate::metrics::Counters;
use crate::network::NetworkHandle;
use crate::store::Store;

/// Commands queued to the member: 64.
pub const CAPACITY: usize = 64;
/// How often the wallet level is checked.
const CHECK_PERIOD: Duration = Duration::from_secs(2);
/// Longest wait between failed refill attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

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

enum Msg {
    Balance {
        reply: oneshot::Sender<usize>,
    },
    Take {
        reply: oneshot::Sender<Option<WalletToken>>,
    },
    PutBack {
        token: WalletToken,
    },
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberMsg")
    }
}

/// Handle to the member actor.
#[derive(Clone, Debug)]
pub struct MemberHandle {
    tx: mpsc::Sender<Msg>,
}

impl MemberHandle {
    /// Takes a token to spend; it is removed from the store before it is returned.
    pub async fn take(&self) -> Option<WalletToken> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Take { reply }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Returns a token that was refused before any claim.
    pub async fn put_back(&self, token: WalletToken) {
        let _ = self.tx.send(Msg::PutBack { token }).await;
    }

    /// Tokens in the wallet.
    pub async fn balance(&self) -> usize {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Balance { reply }).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }
}

/// Starts the member actor (loads the wallet from the store).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    me: PeerId,
    epoch: u32,
    key: PublicKey,
    route: IssuerRoute,
    refill: RefillConfig,
    store: Store,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> anyhow::Result<(MemberHandle, tokio::task::JoinHandle<()>)> {
    let wallet = Wallet::from(store.wallet_tokens()?);
    let (tx, rx) = mpsc::channel(CAPACITY);
    let actor = Member {
        me,
        epoch,
        key,
        route,
        refill,
        store,
        counters,
        wallet,
        rx,
        backoff: CHECK_PERIOD,
    };
    Ok((MemberHandle { tx }, tokio::spawn(actor.run(shutdown))))
}

struct Member {
    me: PeerId,
    epoch: u32,
    key: PublicKey,
    route: IssuerRoute,
    refill: RefillConfig,
    store: Store,
    counters: Arc<Counters>,
    wallet: Wallet,
    rx: mpsc::Receiver<Msg>,
    backoff: Duration,
}

enum Outcome {
    Done,
    Refused(IssueError),
    Retry(String),
}

impl Member {
    async fn run(mut self, shutdown: CancellationToken) {
        info!(balance = self.wallet.balance(), "wallet loaded");
        let mut next_check = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(msg) = self.rx.recv() => match msg {
                    Msg::Balance { reply } => { let _ = reply.send(self.wallet.balance()); }
                    Msg::Take { reply } => {
                        let token = self.handle_take();
                        let low = (self.wallet.balance() as u32) < self.refill.low_water;
                        let _ = reply.send(token);
                        if low { next_check = tokio::time::Instant::now(); }
                    }
                    Msg::PutBack { token } => self.handle_put_back(token),
                },
                _ = tokio::time::sleep_until(next_check) => {
                    let ok = self.handle_refill(&shutdown).await;
                    self.backoff = if ok { CHECK_PERIOD } else { (self.backoff * 2).min(MAX_BACKOFF) };
                    next_check = tokio::time::Instant::now() + self.backoff;
                }
            }
        }
    }

    /// Takes the next token of the current epoch, durably removed from the store first.
    fn handle_take(&mut self) -> Option<WalletToken> {
        let epoch = self.epoch;
        let token = self.wallet.take(|e| e == epoch)?;
        match self.store.take_token(&token.token.hash()) {
            Ok(_) => {
                self.counters.inc(&self.counters.tokens_spent);
                Some(token)
            }
            Err(e) => {
                warn!(%e, "cannot remove a token from the store; not spending it");
                self.wallet.put_back(token);
                None
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

    /// Resumes pending batches, then refills below the low-water mark. Returns false when it should back off.
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
        while (self.wallet.balance() as u32) < self.refill.low_water && !shutdown.is_cancelled() {
            let (_, batch) =
                match Wallet::prepare_batch(&self.key, self.epoch, self.refill.batch, &mut rand::rngs::OsRng)
                {
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
                warn!(%e, "the issuer refused the refill; will retry later");
                if matches!(
                    e,
                    IssueError::RequestIdReused | IssueError::WrongEpoch { .. } | IssueError::WrongKey
                ) {
                    let _ = self.store.drop_pending(&batch.request_id);
                }
                false
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
        let sigs = match resp {
            Ok(IssueResponse::Granted {
                request_id,
                blind_signatures,
            }) if request_id == batch.request_id => blind_signatures,
            Ok(IssueResponse::Granted { .. }) => {
                return Outcome::Retry("issuer answered another request".into());
            }
            Ok(IssueResponse::Refused(e)) => return Outcome::Refused(e),
            Err(e) => return Outcome::Retry(e),
        };
        let mut fresh = Wallet::new();
        if let Err(e) = fresh.finalize(&self.key, batch, &sigs) {
            return Outcome::Retry(format!("issuer signatures did not verify: {e}"));
        }
        let tokens: Vec<_> = fresh.iter().cloned().collect();
        // Durable before use: tokens and the pending batch's removal in one transaction.
        match self.store.finish_batch(&batch.request_id, &tokens) {
            Ok(added) => {
                for t in tokens {
                    self.wallet.insert(t);
                }
                self.counters.add(&self.counters.tokens_received, added as u64);
                info!(added, balance = self.wallet.balance(), "wallet refilled");
                Outcome::Done
            }
            Err(e) => Outcome::Retry(format!("cannot store tokens: {e}")),
        }
    }
}
