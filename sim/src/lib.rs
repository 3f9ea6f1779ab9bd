//! # lendmesh-sim
//!
//! Runs whole lendmesh groups on `lendmesh-protocol`'s own state machines in virtual time (docs/design.md §12), so that a
//! group can decide whether pooling is worth it, an operator can tune routing, and every safety and privacy claim
//! is backed by a number.
//!
//! ## Design
//! - **Discrete events, deterministic.** One binary heap of events keyed by (virtual ms, sequence number); every
//!   random choice comes from a ChaCha stream derived from the run's seed (one per member, one for the network, the
//!   admin and the adversaries); nothing iterates a hash map where order matters. Same scenario and seed: the same
//!   `report.json`, byte for byte.
//! - **Real protocol, simulated world.** Members hold a real [`Wallet`](lendmesh_protocol::wallet::Wallet) refilled
//!   by a real [`Issuer`](lendmesh_protocol::issuer::Issuer) (RSA blind signatures; the fixed 2048-bit test key
//!   avoids key generation), spend tokens bound to the lender, and lenders check them with the real
//!   [`Redeemer`](lendmesh_protocol::redeemer::Redeemer) and a memory spent set. Headroom travels as real,
//!   tagged and signed [`Attestation`](lendmesh_protocol::attestation::Attestation)s checked by each member's
//!   own acceptor.
//! - **The node's rules, not a model of them.** Every borrow is driven through `protocol`'s
//!   [`BorrowRun`](lendmesh_protocol::borrow::BorrowRun) (lender and relay choice, failover, cooldowns with the
//!   capped `Retry-After`, what a refusal means for the token, the idempotent retry, the attempt budget), every
//!   lender goes down [`lend`](lendmesh_protocol::lend)'s ladder (idempotency by request id, headroom, redeem and
//!   claim, what the upstream's answer means for the claim), and every refill is the
//!   [`RefillPlanner`](lendmesh_protocol::refill::RefillPlanner)'s decision with its backoff — the very machines the
//!   node drives. The simulator only moves data between them and the simulated world, and measures.
//! - **Epochs** (scenarios with `[epochs]`): the admin announces each next epoch ahead with a new issuer key (a pool
//!   of four 2048-bit keys: the test key and three generated once per process from a fixed seed), rotates on
//!   demand, and signs only for the current and the announced next epoch with a fresh quota each; every member
//!   adopts the announcements into its own [`EpochBook`](lendmesh_protocol::epoch::EpochBook), refills with the
//!   [`RefillPlanner`](lendmesh_protocol::refill::RefillPlanner), spends only spendable tokens, lends within the
//!   book's windows and prunes retired epochs from its wallet and spent set. The report gives a row per epoch and
//!   served demand before and after each switch. Without `[epochs]` a run is one epoch longer than itself.
//! - **Mixed upstreams** (scenarios with `[[profiles]]`, [`upstream`]): members share one or more upstreams, each
//!   with an API, its models and its capacity, and ask for a mix of request kinds. Each lender attests one
//!   capability per upstream with its own bucket; a borrower routes only among the lenders
//!   `protocol::routing::candidates_for` finds capable, and refuses at once (no token) a request no fresh lender
//!   serves; a lender serves from the first upstream that serves the request and has room, or refuses `NotServed`.
//!   The report counts served demand per kind, misrouted attempts (must be 0) and each family's drain.
//! - **Group-wide single spend** (scenarios with `[claims]`, docs/design.md §7): a lender that redeemed a token
//!   claims it at the token's replicas over the simulated network before any work — replica sets, the replica's
//!   checks and the lender's tally are `protocol::claims`'s — and serves, refuses or (lenient) serves without a
//!   majority as the node does; replicas keep the first claim of each token through crashes. Tokens served by more
//!   than one lender anywhere in the group are counted in every mode (`off` included), a violation with `strict`.
//! - **Network** ([`net`]): per-link latency with jitter, loss, partitions, crashes (memory lost, durable state
//!   kept), members going down and coming back at a given uptime (`[faults.churn]`) and per-node clock skew. Gossip is evaluated lazily when a member routes, with per-message delay and
//!   loss derived from a keyed hash so that laziness cannot change results.
//! - **Workload** ([`workload`]): a demand trace fixed by the seed alone (Poisson with skew across members, bursts
//!   and quiet hours), so policies and baselines are compared on identical demand.
//! - **Checks**: safety invariants on every serve (capacity, one serve per token per lender — per group with strict
//!   claims —, only issued tokens, no borrower in a lender's records) and a liveness phase at the end; violations
//!   are reported with the seed.
//! - **Adversaries**: double spenders, multi-spenders (one token at several lenders at once), forgers, attestation
//!   replayers and forgers act through the network and meet the same protocol code; linkage attackers (lender with
//!   bucketed or exact headroom, relay, admin, and with claims the token's replica) name the borrower of each borrow
//!   from what their role observes, scored against chance.
//! - **Output** ([`report`], [`charts`]): `report.json`, `report.md` with 95 % confidence intervals across seeds,
//!   SVG charts.

pub mod baseline;
pub mod charts;
mod engine;
pub mod exposure;
pub mod member;
pub mod net;
pub mod outcome;
pub mod report;
pub mod scenario;
pub mod upstream;
pub mod workload;

pub use outcome::RunResult;
pub use scenario::Scenario;

/// Runs one seed of a scenario. `progress` is called with the fraction of virtual time done.
pub fn run_seed(scenario: &Scenario, seed: u64, progress: &mut dyn FnMut(f64)) -> RunResult {
    match engine::Sim::new(scenario, seed) {
        Ok(sim) => sim.run(progress),
        Err(e) => RunResult {
            seed,
            violations: vec![format!("seed {seed}: setup failed: {e}")],
            ..RunResult::default()
        },
    }
}
