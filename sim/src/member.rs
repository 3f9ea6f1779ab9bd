//! One simulated member: its upstreams and their capacity window, wallet and refill planner, lender state (lend
//! ladder, redeemer, spent set, records) and its view of the others (attestation acceptor and peer table).

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use lendmesh_protocol::GroupId;
use lendmesh_protocol::PeerId;
use lendmesh_protocol::attestation::{AcceptorConfig, AttestationAcceptor, AttestationKey, HeadroomBucket};
use lendmesh_protocol::capability::{Capability, MAX_CAPABILITIES, Need};
use lendmesh_protocol::epoch::EpochBook;
use lendmesh_protocol::lend::{LendConfig, LendLadder};
use lendmesh_protocol::redeemer::{MemorySpentSet, Redeemer};
use lendmesh_protocol::refill::RefillPlanner;
use lendmesh_protocol::token::TokenHash;
use lendmesh_protocol::wallet::{PendingBatch, Wallet};
use rand_chacha::ChaCha8Rng;

use crate::net::Ms;
use crate::upstream::Upstream;

/// What a member last accepted from one peer.
#[derive(Clone, Debug)]
pub struct PeerView {
    /// Its bucket (the best of its upstreams').
    pub headroom: HeadroomBucket,
    /// The attestation's `issued_at_ms` (the sender's clock).
    pub issued_at_ms: u64,
    /// What each of its upstreams serves and can lend (`AttestationBody::offered`).
    pub capabilities: Vec<Capability>,
}

/// What a lender keeps about a served borrow: by construction nothing names the borrower; `via` is the relay
/// the request came through (the connection's remote), checked by the invariants never to be the borrower.
#[derive(Clone, Debug)]
pub struct LenderRecord {
    /// Virtual time served.
    pub at: Ms,
    /// The token.
    pub token_hash: TokenHash,
    /// The request digest.
    pub request_digest: [u8; 32],
    /// The relay the request arrived from.
    pub via: Option<PeerId>,
}

/// A simulated lender's answer to one borrow request (what the node seals back to the borrower), cached by its
/// [`LendLadder`] under the request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Served: the token is spent.
    Served,
    /// No headroom left after the reserve: refused before any claim.
    NoHeadroom {
        /// When the lender's window resets (`protocol::lend::headroom`).
        retry_after_ms: u64,
    },
    /// The redeemer refused the token (its label).
    TokenRejected(&'static str),
    /// The upstream refused without doing any work: the claim was released (`protocol::lend::after_upstream`).
    UpstreamRefused {
        /// The upstream's status.
        status: u16,
    },
    /// The upstream failed after the claim: the token stays spent.
    UpstreamFailed,
    /// Too many lends in flight, or too many retries waiting on one request id.
    Busy,
    /// None of the lender's upstreams serves the request's API or model: refused before any claim.
    NotServed,
    /// No majority of the token's replicas answered its claim (`strict`): refused before any work, the grants
    /// released, the token unspent (the node's `BorrowRefusal::NoQuorum`).
    NoQuorum,
}

/// A role an adversarial member plays besides being an ordinary member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Honest.
    Honest,
    /// Spends a token twice at one lender, at a lender it was not bound to, and re-bound at another lender.
    DoubleSpender,
    /// Presents tokens with random signature bytes.
    Forger,
    /// Replays other members' old attestations.
    AttestationReplayer,
    /// Sends attestations with a wrong tag.
    AttestationForger,
    /// Presents one token at several lenders at once, the spend re-bound to each.
    MultiSpender,
}

/// One member.
#[derive(Debug)]
pub struct Member {
    /// Its node key.
    pub key: SigningKey,
    /// Its PeerId.
    pub id: PeerId,
    /// Adversarial role, if any.
    pub role: Role,
    /// Its shared upstreams, in the order it tries them (at most `MAX_CAPABILITIES`).
    pub upstreams: Vec<Upstream>,
    /// The current window's index.
    pub window: u64,
    /// Tokens.
    pub wallet: Wallet,
    /// The pending refill batch, kept until its tokens are in the wallet or the issuer refused it (durable, as in
    /// the node's store: a lost answer or a crash resends the same request, which the issuer answers without
    /// charging again).
    pub refill: Option<PendingBatch>,
    /// The pending batch is on its way to the issuer or back (memory).
    pub refill_in_flight: bool,
    /// Which epoch to refill next and how many, and the backoff after failed refills (memory, as in the node: a
    /// restart begins with a fresh planner, see `Sim::on_crash`).
    pub planner: RefillPlanner,
    /// The epochs this member holds, adopted from the admin's announcements (durable).
    pub book: EpochBook,
    /// How many of the admin's announcements it has adopted (or refused), in publication order.
    pub adopted: usize,
    /// When the last of those reached it (announcements arrive in order).
    pub last_arrival: Ms,
    /// An announcement it could not adopt yet, and since when it has been trying.
    pub deferred: Option<(usize, Ms)>,
    /// Tokens of its expired since its last refill landed (statistics only: an empty wallet is then an epoch
    /// effect).
    pub expired_since_refill: bool,
    /// On constant-rate issuance: when a wake-up for the schedule's next step is queued.
    pub schedule_wake: Option<Ms>,
    /// Epochs retired from its book whose spent-set entries are not pruned yet (the spent set prunes "every epoch
    /// before", so an epoch retired while an older one is still in its grace waits for that one).
    pub unpruned: BTreeSet<u32>,
    /// Lender checks (follow the book's windows).
    pub redeemer: Redeemer,
    /// Spent tokens (durable: survives a crash).
    pub spent: MemorySpentSet,
    /// As a replica (docs/design.md §7): the first claim of each token it voted on, by epoch and token hash — the
    /// claim's id (`Claim::id`). Durable, as the node's `claims` table: survives a crash.
    pub claims: BTreeMap<(u32, TokenHash), [u8; 16]>,
    /// The lend ladder's idempotency cache (by request id) and concurrency bounds (memory, as in the node).
    pub ladder: LendLadder<Answer>,
    /// Served borrows.
    pub records: Vec<LenderRecord>,
    /// Attestation checks (memory: lost on crash).
    pub acceptor: AttestationAcceptor,
    /// Peer table, by member index (memory).
    pub table: Vec<Option<PeerView>>,
    /// Highest seq fed to the acceptor per peer (memory).
    pub fed_seq: Vec<u64>,
    /// Cooling-down-until (the member's clock) per peer (memory).
    pub cooling: Vec<Option<u64>>,
    /// Own attestation counter.
    pub seq: u64,
    /// Routing and spending randomness.
    pub rng: ChaCha8Rng,
}

impl Member {
    /// A fresh member, holding the first epoch's announcement (from its invite).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: SigningKey,
        role: Role,
        upstreams: Vec<Upstream>,
        n: usize,
        group: GroupId,
        att_key: AttestationKey,
        book: EpochBook,
        planner: RefillPlanner,
        rng: ChaCha8Rng,
    ) -> Self {
        let id = PeerId::from_public_key(&key.verifying_key());
        let mut redeemer = Redeemer::new(id);
        redeemer.accept_book(&book, &BTreeSet::new());
        Member {
            key,
            id,
            role,
            upstreams,
            window: 0,
            wallet: Wallet::new(),
            refill: None,
            refill_in_flight: false,
            planner,
            book,
            adopted: 1,
            last_arrival: 0,
            deferred: None,
            expired_since_refill: false,
            schedule_wake: None,
            unpruned: BTreeSet::new(),
            redeemer,
            spent: MemorySpentSet::new(),
            claims: BTreeMap::new(),
            ladder: LendLadder::new(LendConfig::default()),
            records: Vec::new(),
            acceptor: AttestationAcceptor::new(group, att_key, AcceptorConfig::default()),
            table: vec![None; n],
            fed_seq: vec![0; n],
            cooling: vec![None; n],
            seq: 0,
            rng,
        }
    }

    /// Moves to the window containing `t`.
    pub fn roll(&mut self, t: Ms, window_ms: Ms) {
        let w = t / window_ms.max(1);
        if w != self.window {
            self.window = w;
            self.upstreams.iter_mut().for_each(|u| u.used = 0);
        }
    }

    /// Capacity per window, all upstreams.
    pub fn capacity(&self) -> u32 {
        self.upstreams.iter().map(|u| u.capacity).sum()
    }

    /// Capacity left in the current window, all upstreams.
    pub fn remaining(&self) -> u32 {
        self.upstreams.iter().map(Upstream::remaining).sum()
    }

    /// Whether an own upstream serves `need` and has room now.
    pub fn can_serve_own(&self, need: &Need) -> bool {
        self.upstreams.iter().any(|u| u.remaining() > 0 && u.serves(need))
    }

    /// The share of capacity left on the best own upstream that serves `need` and has room (`None`: none has),
    /// as `protocol::exposure::Exposure::route` takes it.
    pub fn own_left(&self, need: &Need) -> Option<f64> {
        self.upstreams
            .iter()
            .filter(|u| u.remaining() > 0 && u.serves(need))
            .map(|u| f64::from(u.remaining()) / f64::from(u.capacity.max(1)))
            .max_by(f64::total_cmp)
    }

    /// Serves an own request from the first upstream that serves `need` and has room (the node's
    /// `acquire_own`); false if none can.
    pub fn serve_own(&mut self, need: &Need) -> bool {
        match self
            .upstreams
            .iter_mut()
            .find(|u| u.remaining() > 0 && u.serves(need))
        {
            Some(u) => {
                u.used += 1;
                u.own_total += 1;
                true
            }
            None => false,
        }
    }

    /// Each upstream's bucket now, in order (unused entries: `None`), and the best of them.
    pub fn buckets(&self) -> ([HeadroomBucket; MAX_CAPABILITIES], HeadroomBucket) {
        let mut out = [HeadroomBucket::None; MAX_CAPABILITIES];
        for (slot, u) in out.iter_mut().zip(&self.upstreams) {
            *slot = u.bucket();
        }
        let best = out.iter().copied().max().unwrap_or(HeadroomBucket::None);
        (out, best)
    }

    /// Forgets everything held in memory (a crash) but the refill planner (the simulator renews it with the
    /// scenario's settings); durable state (wallet, pending batch, spent set, book) stays.
    pub fn crash(&mut self, group: GroupId, att_key: AttestationKey) {
        self.acceptor = AttestationAcceptor::new(group, att_key, AcceptorConfig::default());
        self.table.iter_mut().for_each(|v| *v = None);
        self.fed_seq.iter_mut().for_each(|s| *s = 0);
        self.cooling.iter_mut().for_each(|c| *c = None);
        self.refill_in_flight = false;
        self.ladder = LendLadder::new(LendConfig::default());
    }
}

/// One attestation as published (what gossip carries), with the exact headroom kept aside for the
/// exact-headroom linkage variant.
#[derive(Clone, Copy, Debug)]
pub struct Publication {
    /// Virtual time.
    pub t: Ms,
    /// Seq.
    pub seq: u64,
    /// The sender's clock at publication.
    pub issued_at_ms: u64,
    /// Bucket: the best of its upstreams' (the attestation's summary).
    pub headroom: HeadroomBucket,
    /// Each upstream's bucket, in the member's order (the attestation's capabilities).
    pub buckets: [HeadroomBucket; MAX_CAPABILITIES],
    /// Exact remaining capacity, all upstreams (never sent; the exact variant's attacker sees it).
    pub exact: u32,
    /// Window reset time.
    pub resets_at_ms: u64,
}

/// Unserved-demand causes, kept in a map for the report.
pub type Causes = BTreeMap<String, u64>;
