//! One spend per token across the whole group (docs/design.md §7): quorum claims at a token's replicas.
//!
//! Each token hash has a **replica set**: the top `r` members of the roster *frozen in the token's epoch
//! announcement* by rendezvous hashing — SHA-256 of the token hash and the member's PeerId, highest first
//! ([`replica_set`]). `r` is [`DEFAULT_REPLICAS`] (5), made odd and capped at the roster size. The frozen roster
//! matters: with the live roster, adding one member changes a token's replica set with probability about `r/(n+1)`,
//! and the old and new sets can have disjoint majorities, so two lenders could both win across the change. Every
//! claim names the roster it was computed from ([`roster_digest`]); a replica whose frozen roster for that epoch
//! differs, or that is not in the set, refuses it.
//!
//! A lender that redeemed a token sends a [`Claim`] — token hash, epoch, itself, the borrower's request id, the
//! roster digest — to every replica. A replica stores the first claim of a token durably before it answers, and
//! answers `Granted` to that claim (again and again: a lender's retry collects the same grants) and `Denied` to any
//! other. The lender's [`Tally`] counts the answers: a majority of grants **serves**; a majority of denials means
//! another lender won (**spent elsewhere**); denials without any majority is a **split vote** — only a double
//! spender presenting one token at several lenders at once causes one — and burns the token; a majority that cannot
//! be reached for lack of answers is **unreachable** (`strict`: refuse before any work and release the grants, so
//! the token stays spendable; `lenient`: serve and keep the claim for reconciliation).
//!
//! Pure: no I/O; the node sends claims and the simulator delivers them over its own network.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::PeerId;
use crate::token::TokenHash;

/// Replicas per token by default (odd, so a majority is well defined).
pub const DEFAULT_REPLICAS: usize = 5;

/// The number of replicas for a roster of `members` when `wanted` are asked for: at most `members`, odd (one less
/// when even), at least 1.
pub fn replica_count(wanted: usize, members: usize) -> usize {
    let n = wanted.min(members).max(1);
    if n.is_multiple_of(2) { n - 1 } else { n }
}

/// A roster's digest: SHA-256 over its members' PeerIds in ascending order.
pub fn roster_digest(members: &[PeerId]) -> [u8; 32] {
    let mut ids: Vec<&[u8]> = members.iter().map(|p| p.as_bytes().as_slice()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut h = Sha256::new();
    h.update(b"lendmesh/roster/v1");
    for id in ids {
        h.update(id);
    }
    h.finalize().into()
}

/// The replica set of `token` among `members` (the roster frozen in the token's epoch announcement): the
/// [`replica_count`]`(wanted, members)` members with the highest SHA-256(token hash ‖ PeerId), highest first.
pub fn replica_set(token: &TokenHash, members: &[PeerId], wanted: usize) -> Vec<PeerId> {
    let mut scored: Vec<([u8; 32], PeerId)> = members
        .iter()
        .map(|p| {
            let mut h = Sha256::new();
            h.update(b"lendmesh/replica/v1");
            h.update(token.0);
            h.update(p.as_bytes());
            (h.finalize().into(), *p)
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.as_bytes().cmp(b.1.as_bytes())));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.truncate(replica_count(wanted, members.len()));
    scored.into_iter().map(|(_, p)| p).collect()
}

/// A lender's claim of a token, as a replica records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    /// The token.
    pub token_hash: TokenHash,
    /// Its epoch.
    pub epoch: u32,
    /// The claiming lender.
    pub lender: PeerId,
    /// The borrower's request id (a retry of the same request makes the same claim).
    pub request_id: [u8; 16],
    /// The digest of the roster the replica set was computed from ([`roster_digest`]).
    pub roster: [u8; 32],
}

impl Claim {
    /// What a replica stores and compares: the claim's identity (lender and request).
    pub fn id(&self) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(b"lendmesh/claim-id/v1");
        h.update(self.lender.as_bytes());
        h.update(self.request_id);
        let d: [u8; 32] = h.finalize().into();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        id
    }
}

/// Why a replica refuses to vote on a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClaimRefusal {
    /// The replica does not accept that epoch, or the epoch is older than what its store remembers (it lost or
    /// restored its store).
    UnknownEpoch,
    /// The claim's roster digest is not the replica's frozen roster for the epoch.
    WrongRoster,
    /// The replica is not in the token's replica set.
    NotReplica,
    /// The claim does not come from the lender it names.
    WrongLender,
    /// The lender sent this replica more claims than its rate allows (`limits::Surface::Claim`).
    RateLimited,
}

impl ClaimRefusal {
    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            ClaimRefusal::UnknownEpoch => "unknown_epoch",
            ClaimRefusal::WrongRoster => "wrong_roster",
            ClaimRefusal::NotReplica => "not_replica",
            ClaimRefusal::WrongLender => "wrong_lender",
            ClaimRefusal::RateLimited => "rate_limited",
        }
    }
}

/// A replica's checks before it records a claim from `sender`: it names the sender as lender, was computed from
/// `roster` (the replica's frozen roster for the epoch), and `me` is in its replica set of `wanted`.
pub fn check_claim(
    claim: &Claim,
    sender: &PeerId,
    me: &PeerId,
    roster: &[PeerId],
    wanted: usize,
) -> Result<(), ClaimRefusal> {
    if &claim.lender != sender {
        return Err(ClaimRefusal::WrongLender);
    }
    if claim.roster != roster_digest(roster) {
        return Err(ClaimRefusal::WrongRoster);
    }
    if !replica_set(&claim.token_hash, roster, wanted).contains(me) {
        return Err(ClaimRefusal::NotReplica);
    }
    Ok(())
}

/// One replica's answer as the lender sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vote {
    /// This claim is the token's first.
    Granted,
    /// Another claim came first.
    Denied,
    /// The replica refused to vote.
    Refused(ClaimRefusal),
    /// No answer in time.
    Unreachable,
}

/// What the lender does with the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Answers are still missing and could change the outcome.
    Pending,
    /// A majority granted this claim: serve.
    Serve,
    /// A majority denied it: another lender won; the token is spent elsewhere.
    SpentElsewhere,
    /// Neither this claim nor any single other can reach a majority: a double spender split the vote. The token is
    /// burnt.
    SplitVote,
    /// Too few replicas answered for any majority: `strict` refuses (releasing its grants), `lenient` serves and
    /// records the claim for reconciliation.
    Unreachable,
}

/// The answers to one claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    replicas: Vec<PeerId>,
    votes: HashMap<PeerId, Vote>,
}

impl Tally {
    /// A tally over `replicas`.
    pub fn new(replicas: Vec<PeerId>) -> Self {
        Tally {
            replicas,
            votes: HashMap::new(),
        }
    }

    /// The replicas.
    pub fn replicas(&self) -> &[PeerId] {
        &self.replicas
    }

    /// Records `peer`'s answer (a peer outside the set, or a second answer, is ignored).
    pub fn record(&mut self, peer: PeerId, vote: Vote) {
        if self.replicas.contains(&peer) {
            self.votes.entry(peer).or_insert(vote);
        }
    }

    /// The replicas that granted this claim (to release them when the lender refuses).
    pub fn granted(&self) -> Vec<PeerId> {
        self.replicas
            .iter()
            .filter(|p| self.votes.get(p) == Some(&Vote::Granted))
            .copied()
            .collect()
    }

    /// Majority size.
    pub fn majority(&self) -> usize {
        self.replicas.len() / 2 + 1
    }

    /// The verdict so far; with `complete` every missing answer counts as unreachable.
    pub fn verdict(&self, complete: bool) -> Verdict {
        let count = |f: fn(&Vote) -> bool| self.votes.values().filter(|v| f(v)).count();
        let granted = count(|v| *v == Vote::Granted);
        let denied = count(|v| *v == Vote::Denied);
        let missing = if complete {
            0
        } else {
            self.replicas.len() - self.votes.len()
        };
        let majority = self.majority();
        if granted >= majority {
            return Verdict::Serve;
        }
        if denied >= majority {
            return Verdict::SpentElsewhere;
        }
        if granted + missing >= majority {
            return Verdict::Pending;
        }
        // This claim cannot win. Denials mean another claim holds those replicas: if it could still reach a
        // majority, wait for it; if it cannot, the vote is split.
        if denied > 0 {
            if denied + missing >= majority {
                return Verdict::Pending;
            }
            // Replicas that refused or did not answer might still hold the other claim: only when the denials and
            // the grants together reach a majority is the vote provably split between claims.
            if denied + granted >= majority {
                return Verdict::SplitVote;
            }
        }
        Verdict::Unreachable
    }
}

#[cfg(test)]
mod tests;
