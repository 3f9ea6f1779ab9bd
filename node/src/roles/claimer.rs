//! The lender's side of one spend per token across the group (docs/design.md §7; the rules are
//! `protocol::claims`): after redeeming a token locally and before any work, claim it at the token's replicas and
//! act on the quorum.
//!
//! The replica set is computed over the roster frozen in the token's epoch announcement. The claim goes to every
//! replica at once (this node answers its own share directly), each answer within `[lender] claim_timeout` (5 s); the
//! tally stops as soon as the outcome is settled. What the lender then does is [`ClaimOutcome`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lendmesh_protocol::PeerId;
use lendmesh_protocol::claims::{self, Claim, Tally, Verdict};
use lendmesh_protocol::redeemer::Redemption;
use lendmesh_protocol::wire::{ClaimRequest, ClaimResponse};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::group::state::GroupView;
use crate::metrics::NodeMetrics;
use crate::net::NetworkHandle;
use crate::roles::replica::Replica;

/// Requests per replica and claim at most (within the timeout).
const CLAIM_ATTEMPTS: u32 = 3;
/// Pause before asking a replica again after a request failed at once.
const CLAIM_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a lender does when too few replicas answer for any majority.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimMode {
    /// Refuse before any work, release the grants it got: the token stays unspent (default).
    #[default]
    Strict,
    /// Serve, and count the claim for reconciliation: a double spend is possible while replicas are down.
    Lenient,
}

/// What to do with a redeemed token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// A majority of its replicas granted this claim (or `lenient` with no majority reachable): serve.
    Serve,
    /// Another lender holds a majority: the token was spent elsewhere.
    SpentElsewhere,
    /// The vote is split between claims (a double spender presented it at several lenders at once): burnt.
    SplitVote,
    /// No majority reachable and `strict`: refuse before any work; the grants were released.
    Unreachable,
}

/// Claims tokens at their replicas.
#[derive(Clone, Debug)]
pub struct Claimer {
    /// This node.
    pub me: PeerId,
    /// The network.
    pub net: NetworkHandle,
    /// The group view: each epoch's frozen roster.
    pub view: watch::Receiver<Arc<GroupView>>,
    /// This node's own replica (answers its share of claims without the network).
    pub replica: Replica,
    /// Replicas per token.
    pub replicas: usize,
    /// Each replica's answer within this.
    pub timeout: Duration,
    /// What to do without a majority.
    pub mode: ClaimMode,
    /// Counters.
    pub counters: Arc<NodeMetrics>,
}

impl Claimer {
    /// This lender's claim of `redemption`'s token for `request_id`, and the token's replicas over the roster frozen
    /// in its epoch's announcement (`None` if that announcement is not held).
    fn claim_of(&self, redemption: &Redemption, request_id: [u8; 16]) -> Option<(Claim, Vec<PeerId>)> {
        let roster = self
            .view
            .borrow()
            .epochs
            .get(redemption.epoch)
            .map(|info| info.frozen_roster())?;
        let claim = Claim {
            token_hash: redemption.token_hash,
            epoch: redemption.epoch,
            lender: self.me,
            request_id,
            roster: claims::roster_digest(&roster),
        };
        let replicas = claims::replica_set(&claim.token_hash, &roster, self.replicas);
        Some((claim, replicas))
    }

    /// Claims `redemption`'s token for the borrower's `request_id` and says what to do with it.
    pub async fn claim(&self, redemption: &Redemption, request_id: [u8; 16]) -> ClaimOutcome {
        let Some((claim, replicas)) = self.claim_of(redemption, request_id) else {
            // Redeemed, so the epoch is accepted: its announcement is held. Treat a missing one as no quorum.
            return self.no_majority(&Tally::new(vec![]), None).await;
        };
        let mut tally = Tally::new(replicas.clone());
        let mut asks: FuturesUnordered<_> = replicas
            .iter()
            .map(|&peer| async move { (peer, self.ask(peer, ClaimRequest::Claim(claim)).await) })
            .collect();
        while let Some((peer, answer)) = asks.next().await {
            tally.record(peer, ClaimResponse::vote(answer));
            if tally.verdict(false) != Verdict::Pending {
                break;
            }
        }
        drop(asks);
        let outcome = match tally.verdict(true) {
            Verdict::Serve => ClaimOutcome::Serve,
            Verdict::SpentElsewhere => ClaimOutcome::SpentElsewhere,
            Verdict::SplitVote => ClaimOutcome::SplitVote,
            Verdict::Unreachable | Verdict::Pending => return self.no_majority(&tally, Some(claim)).await,
        };
        let label = match outcome {
            ClaimOutcome::Serve => "serve",
            ClaimOutcome::SpentElsewhere => "spent_elsewhere",
            ClaimOutcome::SplitVote => "split_vote",
            ClaimOutcome::Unreachable => "unreachable_refused",
        };
        NodeMetrics::outcome(&self.counters.claims, label);
        debug!(verdict = label, replicas = replicas.len(), "token claimed");
        outcome
    }

    /// Releases this lender's claim of `redemption`'s token at every replica (best effort, bounded by the claim
    /// timeout): the lender refused the request before any work (its upstream refused or could not be reached), so
    /// the token stays spendable elsewhere.
    pub async fn release(&self, redemption: &Redemption, request_id: [u8; 16]) {
        let Some((claim, replicas)) = self.claim_of(redemption, request_id) else {
            return;
        };
        let releases: FuturesUnordered<_> = replicas
            .into_iter()
            .map(|peer| self.ask(peer, ClaimRequest::Release(claim)))
            .collect();
        let _ = releases.collect::<Vec<_>>().await;
    }

    /// No majority: `strict` releases the grants and refuses; `lenient` serves and counts it.
    async fn no_majority(&self, tally: &Tally, claim: Option<Claim>) -> ClaimOutcome {
        match self.mode {
            ClaimMode::Lenient => {
                NodeMetrics::outcome(&self.counters.claims, "unreachable_served");
                warn!(
                    granted = tally.granted().len(),
                    replicas = tally.replicas().len(),
                    "no majority of the token's replicas answered; serving anyway (lenient), to reconcile"
                );
                ClaimOutcome::Serve
            }
            ClaimMode::Strict => {
                NodeMetrics::outcome(&self.counters.claims, "unreachable_refused");
                if let Some(claim) = claim {
                    let releases: FuturesUnordered<_> = tally
                        .granted()
                        .into_iter()
                        .map(|peer| self.ask(peer, ClaimRequest::Release(claim)))
                        .collect();
                    let _ = releases.collect::<Vec<_>>().await;
                }
                debug!(
                    granted = tally.granted().len(),
                    replicas = tally.replicas().len(),
                    "no majority of the token's replicas answered; refusing (strict)"
                );
                ClaimOutcome::Unreachable
            }
        }
    }

    /// One replica's answer within the timeout (`None`: no answer). A request that fails at once (a stream reset,
    /// an answer dropped by a replica too busy to take the event) is asked again while time is left: a replica
    /// answers the same claim the same way, so asking twice is safe.
    async fn ask(&self, peer: PeerId, req: ClaimRequest) -> Option<ClaimResponse> {
        if peer == self.me {
            return self.replica.answer(self.me, req).await;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        for attempt in 1..=CLAIM_ATTEMPTS {
            match tokio::time::timeout_at(deadline, self.net.claim(peer, req)).await {
                Ok(Ok(r)) => return Some(r),
                Ok(Err(e)) => {
                    debug!(replica = %peer.short(), %e, attempt, "claim not answered");
                    tokio::time::sleep(
                        CLAIM_RETRY_PAUSE
                            .min(deadline.saturating_duration_since(tokio::time::Instant::now())),
                    )
                    .await;
                }
                Err(_) => {
                    debug!(replica = %peer.short(), "claim not answered in time");
                    return None;
                }
            }
        }
        None
    }
}
