//! The node's metrics: prometheus-client counters, gauges and a histogram, shared by the actors (each metric is an
//! atomic; no domain state lives here), registered next to libp2p-metrics and served on `/metrics` as OpenMetrics to a
//! client whose `Accept` asks for it, as the Prometheus text format 0.0.4 otherwise
//! ([`wants_openmetrics`], [`openmetrics_to_prometheus_text`]).
//!
//! Plain counters keep the `inc` / `add` / `get` helpers the actors use; labelled families (outcomes, reasons, status
//! classes) are bumped with [`NodeMetrics::outcome`]. Gauges that describe state other actors own (wallet balance,
//! connected peers, per-peer RTT and attestation age) are set by the API just before each scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

/// A label set with one label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The outcome (`ok`, `no_lender_available`, `served`, `no_headroom`, …).
    pub outcome: String,
}

/// A label set naming a rejection reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason (`bad_tag`, `too_old`, …).
    pub reason: String,
}

/// A label set naming an HTTP server and why it refused a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRefusalLabel {
    /// `gateway` or `api`.
    pub server: String,
    /// `unauthorized`, `too_many_connections`, `header_too_large`, `header_timeout`, `body_too_large`,
    /// `body_timeout` or `bad_request` (docs/design.md §11.3).
    pub reason: String,
}

/// Labels of `lendmesh_borrows_by_choice_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChoiceLabel {
    /// `cover` or `threshold` (`protocol::exposure::Route`).
    pub reason: String,
    /// `borrowed`, or `served_here` when the borrow failed and the member's own upstream served the request.
    pub outcome: String,
}

/// The reasons an HTTP server refuses a request, each with its status code (docs/design.md §11.3).
pub const HTTP_REFUSALS: [&str; 7] = [
    "unauthorized",
    "too_many_connections",
    "header_too_large",
    "header_timeout",
    "body_too_large",
    "body_timeout",
    "bad_request",
];

/// A label set naming a member and a request surface (`protocol::limits::Surface`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerSurfaceLabel {
    /// Short peer id.
    pub peer: String,
    /// `issue`, `claim`, `borrow`, `relay` or `gossip`.
    pub surface: String,
}

/// A label set naming an HTTP status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// `2xx` … `5xx`, or `error`.
    pub class: String,
}

/// A label set naming one of this member's upstreams.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    /// Its configured name.
    pub upstream: String,
}

/// A label set naming an epoch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EpochLabel {
    /// The epoch number.
    pub epoch: u32,
}

/// A label set naming a peer (short id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// Short peer id.
    pub peer: String,
}

/// A metric the helpers can bump and read.
pub trait Metric {
    /// Adds `n`.
    fn bump(&self, n: u64);
    /// The current value (gauges below zero read as 0).
    fn value(&self) -> u64;
}

impl Metric for Counter {
    fn bump(&self, n: u64) {
        self.inc_by(n);
    }
    fn value(&self) -> u64 {
        self.get()
    }
}

impl Metric for Gauge {
    fn bump(&self, n: u64) {
        self.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
    }
    fn value(&self) -> u64 {
        u64::try_from(self.get()).unwrap_or(0)
    }
}

/// A float gauge (seconds).
pub type SecondsGauge = Gauge<f64, AtomicU64>;

/// Every lendmesh metric.
#[derive(Debug)]
pub struct NodeMetrics {
    /// Connections closed because the peer is not an active roster member.
    pub connections_refused: Counter,
    /// Failed connection attempts (a wrong group key shows up here).
    pub connection_errors: Counter,
    /// Inbound request-response failures (oversized or malformed frames, timeouts).
    pub inbound_failures: Counter,
    /// Gossip messages that did not decode.
    pub gossip_malformed: Counter,
    /// Network events dropped because a consumer lagged.
    pub net_events_dropped: Counter,
    /// Attestations accepted.
    pub attestations_accepted: Counter,
    /// Attestations rejected (any reason; by reason in `attestation_rejections`).
    pub attestations_rejected: Counter,
    /// Attestations rejected, by reason.
    pub attestation_rejections: Family<ReasonLabel, Counter>,
    /// Attestations this node published.
    pub attestations_published: Counter,
    /// Tokens this issuer signed.
    pub tokens_issued: Counter,
    /// Issue requests refused.
    pub issue_refused: Counter,
    /// Tokens this member received (finalized and stored).
    pub tokens_received: Counter,
    /// Tokens taken from the wallet for borrows, net of those returned unspent.
    pub tokens_spent: Gauge,
    /// Requests served from this member's own upstream.
    pub served_locally: Counter,
    /// Borrows that got a response.
    pub borrows_ok: Counter,
    /// Borrows that failed (every cause).
    pub borrows_failed: Counter,
    /// Borrows by outcome (`ok` or the error code).
    pub borrows: Family<OutcomeLabel, Counter>,
    /// Borrow latency, gateway to answer.
    pub borrow_latency: Histogram,
    /// Borrows this lender served.
    pub lends_served: Counter,
    /// Borrows this lender refused (no headroom, bad token, stale key, upstream refusal).
    pub lends_refused: Counter,
    /// Lends by outcome.
    pub lends: Family<OutcomeLabel, Counter>,
    /// Borrows being served right now.
    pub lends_in_flight: Gauge,
    /// Sealed requests relayed.
    pub relays_ok: Counter,
    /// Relays that failed.
    pub relays_failed: Counter,
    /// Streamed answers given up because the tool went away: borrows (the borrower closed its stream), relays (the
    /// borrower left mid-answer) and lends (the upstream call was dropped).
    pub cancelled: Family<OutcomeLabel, Counter>,
    /// Borrowed answers that ended badly after their head, by kind (`cut_short`, `stalled`, `malformed`).
    pub stream_errors: Family<OutcomeLabel, Counter>,
    /// What the borrowed-request rules changed or could not read (`field`, `environment`, `not_json`).
    pub scrubbed: Family<OutcomeLabel, Counter>,
    /// Claims answered as a replica.
    pub claims_answered: Counter,
    /// Claims a replica refused to vote on, by reason (`unknown_epoch`, `wrong_roster`, `not_replica`,
    /// `wrong_lender`).
    pub claim_refusals: Family<OutcomeLabel, Counter>,
    /// A lender's quorum claims by verdict (`serve`, `spent_elsewhere`, `split_vote`, `unreachable_refused`,
    /// `unreachable_served`).
    pub claims: Family<OutcomeLabel, Counter>,
    /// Upstream calls by status class.
    pub upstream_calls: Family<ClassLabel, Counter>,
    /// Tokens in the wallet (set at scrape).
    pub wallet_balance: Gauge,
    /// Spent token hashes per epoch (set at scrape).
    pub spent_set: Family<EpochLabel, Gauge>,
    /// Rate-limit header values an upstream sent that were ignored (malformed or out of range), per upstream (set
    /// at scrape).
    pub upstream_ignored_values: Family<UpstreamLabel, Gauge>,
    /// Connected peers (set at scrape).
    pub peers_connected: Gauge,
    /// Peers with a fresh attestation (set at scrape).
    pub fresh_attestations: Gauge,
    /// Own headroom bucket: 0 none, 1 low, 2 medium, 3 high (set at scrape). Exposed as `lendmesh_headroom_level`:
    /// a name ending in `_bucket` is reserved for histogram buckets.
    pub headroom_bucket: Gauge,
    /// Per-peer ping RTT (set at scrape).
    pub peer_rtt: Family<PeerLabel, SecondsGauge>,
    /// Per-peer age of the last accepted attestation (set at scrape).
    pub peer_attestation_age: Family<PeerLabel, SecondsGauge>,
    /// Wallet tokens dropped because their epoch retired before they were spent.
    pub tokens_expired: Counter,
    /// Tokens taken to be spent and given up without a served answer (ambiguous, spent elsewhere, rejected,
    /// interrupted by a stop); per reason in the store's ledger.
    pub tokens_given_up: Counter,
    /// Epoch announcements and rosters refused, by reason.
    pub group_rejections: Family<ReasonLabel, Counter>,
    /// Epochs under a key-consistency alarm now (set at scrape).
    pub key_alarms: Gauge,
    /// Key-consistency alarms raised (a peer or an announcement named another key for an epoch held).
    pub key_alarms_raised: Counter,
    /// The current epoch number (set at scrape).
    pub epoch_current: Gauge,
    /// Retired epochs whose stored rows were pruned.
    pub epochs_pruned: Counter,
    /// HTTP connections refused with a 503 because the server was at its connection limit.
    pub connections_over_limit: Counter,
    /// Requests from a member refused for exceeding its rate, by member and surface.
    pub peer_throttled: Family<PeerSurfaceLabel, Counter>,
    /// Times a member was disconnected (and refused for a while) for exceeding its limits far too often.
    pub peer_bans: Family<PeerLabel, Counter>,
    /// Requests the gateway and the API refused, by server and reason.
    pub http_refusals: Family<HttpRefusalLabel, Counter>,
    /// Refill requests this member sent to the issuer, by outcome (one of [`REFILL_OUTCOMES`]).
    pub refill_requests: Family<OutcomeLabel, Counter>,
    /// Requests the member could serve itself that it borrowed by choice (`[exposure]`), by reason and outcome.
    pub borrows_by_choice: Family<ChoiceLabel, Counter>,
    /// Connections to members by path (one of [`CONNECTION_PATHS`]). A hole-punched connection is counted twice:
    /// as `direct` when it opens, and as `hole_punched` when DCUtR reports it (the relayed one it upgraded stays).
    pub member_connections: Family<OutcomeLabel, Counter>,
    /// Hole punches (DCUtR) by outcome: `ok`, `failed`.
    pub hole_punches: Family<OutcomeLabel, Counter>,
    /// This node's reservations on members' relays, by outcome (one of [`RESERVATION_OUTCOMES`]).
    pub relay_reservations: Family<OutcomeLabel, Counter>,
    /// What this node's relay did for others, by outcome (one of [`RELAY_SERVED`]).
    pub relay_served: Family<OutcomeLabel, Counter>,
}

/// How a connection to a member runs.
pub const CONNECTION_PATHS: [&str; 3] = ["direct", "relayed", "hole_punched"];
/// A reservation this node asked a relay for: `accepted`, `renewed`, `failed` (refused, or the relay went away).
pub const RESERVATION_OUTCOMES: [&str; 3] = ["accepted", "renewed", "failed"];
/// What this node's relay did: reservations and circuits accepted or denied (at its limits), circuits closed.
pub const RELAY_SERVED: [&str; 6] = [
    "reservation_accepted",
    "reservation_denied",
    "reservation_timed_out",
    "circuit_accepted",
    "circuit_denied",
    "circuit_closed",
];

/// The outcomes of a refill request: `granted` (tokens stored), `over_quota` (nothing or less left this epoch),
/// `busy` (the issuer's queue was full), `refused` (any other refusal), `unreachable` (no answer: not connected,
/// timed out), `failed` (an answer that cannot be used, or storing the tokens failed).
pub const REFILL_OUTCOMES: [&str; 6] = [
    "granted",
    "over_quota",
    "busy",
    "refused",
    "unreachable",
    "failed",
];

/// The roles a streamed answer can be given up in.
const CANCELLED_ROLES: [&str; 3] = ["borrow", "relay", "lend"];
/// How a borrowed answer can end badly after its head.
pub const STREAM_ERRORS: [&str; 3] = ["cut_short", "stalled", "malformed"];
/// Why a replica refuses to vote on a claim (`protocol::claims::ClaimRefusal`).
pub const CLAIM_REFUSALS: [&str; 4] = ["unknown_epoch", "wrong_roster", "not_replica", "wrong_lender"];
/// A lender's claim verdicts.
pub const CLAIM_VERDICTS: [&str; 5] = [
    "serve",
    "spent_elsewhere",
    "split_vote",
    "unreachable_refused",
    "unreachable_served",
];
/// What the borrowed-request rules (`protocol::scrub`) count: identifying fields replaced or removed, tool-written
/// texts with the environment withheld, and bodies that were not JSON (forwarded as they were).
pub const SCRUBBED: [&str; 3] = ["field", "environment", "not_json"];

/// The refill counter with every outcome at 0, so each series exists from the start.
fn refill_requests() -> Family<OutcomeLabel, Counter> {
    family_with(&REFILL_OUTCOMES)
}

/// A counter family with every one of `outcomes` at 0.
fn family_with(outcomes: &[&str]) -> Family<OutcomeLabel, Counter> {
    let family = Family::<OutcomeLabel, Counter>::default();
    for outcome in outcomes {
        let _ = family.get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        });
    }
    family
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            connections_refused: Counter::default(),
            connection_errors: Counter::default(),
            inbound_failures: Counter::default(),
            gossip_malformed: Counter::default(),
            net_events_dropped: Counter::default(),
            attestations_accepted: Counter::default(),
            attestations_rejected: Counter::default(),
            attestation_rejections: Family::default(),
            attestations_published: Counter::default(),
            tokens_issued: Counter::default(),
            issue_refused: Counter::default(),
            tokens_received: Counter::default(),
            tokens_spent: Gauge::default(),
            served_locally: Counter::default(),
            borrows_ok: Counter::default(),
            borrows_failed: Counter::default(),
            borrows: Family::default(),
            // 1 ms to ~16 s.
            borrow_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            lends_served: Counter::default(),
            lends_refused: Counter::default(),
            lends: Family::default(),
            lends_in_flight: Gauge::default(),
            relays_ok: Counter::default(),
            relays_failed: Counter::default(),
            cancelled: family_with(&CANCELLED_ROLES),
            stream_errors: family_with(&STREAM_ERRORS),
            scrubbed: family_with(&SCRUBBED),
            claims_answered: Counter::default(),
            claim_refusals: family_with(&CLAIM_REFUSALS),
            claims: family_with(&CLAIM_VERDICTS),
            upstream_calls: Family::default(),
            wallet_balance: Gauge::default(),
            spent_set: Family::default(),
            upstream_ignored_values: Family::default(),
            peers_connected: Gauge::default(),
            fresh_attestations: Gauge::default(),
            headroom_bucket: Gauge::default(),
            peer_rtt: Family::default(),
            peer_attestation_age: Family::default(),
            tokens_expired: Counter::default(),
            tokens_given_up: Counter::default(),
            group_rejections: Family::default(),
            key_alarms: Gauge::default(),
            key_alarms_raised: Counter::default(),
            epoch_current: Gauge::default(),
            epochs_pruned: Counter::default(),
            connections_over_limit: Counter::default(),
            peer_throttled: Family::default(),
            peer_bans: Family::default(),
            http_refusals: {
                let family = Family::<HttpRefusalLabel, Counter>::default();
                for server in ["gateway", "api"] {
                    for reason in HTTP_REFUSALS {
                        let _ = family.get_or_create(&HttpRefusalLabel {
                            server: server.into(),
                            reason: reason.into(),
                        });
                    }
                }
                family
            },
            refill_requests: refill_requests(),
            member_connections: family_with(&CONNECTION_PATHS),
            hole_punches: family_with(&["ok", "failed"]),
            relay_reservations: family_with(&RESERVATION_OUTCOMES),
            relay_served: family_with(&RELAY_SERVED),
            borrows_by_choice: {
                let family = Family::<ChoiceLabel, Counter>::default();
                for reason in ["cover", "threshold"] {
                    for outcome in ["borrowed", "served_here"] {
                        let _ = family.get_or_create(&ChoiceLabel {
                            reason: reason.into(),
                            outcome: outcome.into(),
                        });
                    }
                }
                family
            },
        }
    }
}

impl NodeMetrics {
    /// Adds one.
    pub fn inc(&self, m: &impl Metric) {
        m.bump(1);
    }

    /// Adds `n`.
    pub fn add(&self, m: &impl Metric, n: u64) {
        m.bump(n);
    }

    /// Subtracts one from a gauge.
    pub fn dec(&self, g: &Gauge) {
        g.dec();
    }

    /// Reads a metric.
    pub fn get(m: &impl Metric) -> u64 {
        m.value()
    }

    /// Bumps a labelled outcome counter.
    pub fn outcome(family: &Family<OutcomeLabel, Counter>, outcome: &str) {
        family
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts a request from member `peer` (short id) throttled on `surface`.
    pub fn peer_throttled(&self, peer: &str, surface: &str) {
        self.peer_throttled
            .get_or_create(&PeerSurfaceLabel {
                peer: peer.into(),
                surface: surface.into(),
            })
            .inc();
    }

    /// Counts member `peer` (short id) disconnected for exceeding its limits.
    pub fn peer_banned(&self, peer: &str) {
        self.peer_bans
            .get_or_create(&PeerLabel { peer: peer.into() })
            .inc();
    }

    /// Counts a borrow by choice that a lender served.
    pub fn chosen_borrow(&self, route: lendmesh_protocol::exposure::Route) {
        self.choice(route, "borrowed");
    }

    /// Counts a borrow by choice that failed, the request then served by the member's own upstream.
    pub fn chosen_borrow_failed(&self, route: lendmesh_protocol::exposure::Route) {
        self.choice(route, "served_here");
    }

    fn choice(&self, route: lendmesh_protocol::exposure::Route, outcome: &str) {
        let reason = match route {
            lendmesh_protocol::exposure::Route::Early => "threshold",
            _ => "cover",
        };
        self.borrows_by_choice
            .get_or_create(&ChoiceLabel {
                reason: reason.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts a request the gateway or the API refused (`server` in any case: `API` reads as `api`).
    pub fn http_refusal(&self, server: &str, reason: &str) {
        self.http_refusals
            .get_or_create(&HttpRefusalLabel {
                server: server.to_ascii_lowercase(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts an upstream call by its status (None for a transport error).
    pub fn upstream_call(&self, status: Option<u16>) {
        let class = match status {
            Some(s) => format!("{}xx", s / 100),
            None => "error".to_string(),
        };
        self.upstream_calls.get_or_create(&ClassLabel { class }).inc();
    }

    /// Registers every metric under `lendmesh_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("lendmesh");
        r.register(
            "borrows",
            "Borrows by outcome (ok or the error code the tool got)",
            self.borrows.clone(),
        );
        r.register_with_unit(
            "borrow_latency",
            "Borrow latency from the gateway to the answer",
            Unit::Seconds,
            self.borrow_latency.clone(),
        );
        r.register(
            "lends",
            "Borrows this lender handled, by outcome",
            self.lends.clone(),
        );
        r.register(
            "lends_in_flight",
            "Borrows this lender is serving now",
            self.lends_in_flight.clone(),
        );
        r.register(
            "relays",
            "Sealed requests relayed successfully",
            self.relays_ok.clone(),
        );
        r.register("relay_failures", "Relays that failed", self.relays_failed.clone());
        r.register(
            "stream_errors",
            "Borrowed answers that ended badly after their head, by kind (cut_short, stalled, malformed)",
            self.stream_errors.clone(),
        );
        r.register(
            "borrowed_scrubbed",
            "Borrowed requests' identifying fields replaced or removed (field), tool-written texts with the environment withheld (environment), bodies forwarded unread because they were not JSON (not_json)",
            self.scrubbed.clone(),
        );
        r.register(
            "cancelled",
            "Streamed answers given up because the tool went away, by role (borrow, relay, lend)",
            self.cancelled.clone(),
        );
        r.register(
            "tokens_issued",
            "Tokens this issuer signed",
            self.tokens_issued.clone(),
        );
        r.register(
            "issue_refusals",
            "Issue requests this issuer refused",
            self.issue_refused.clone(),
        );
        r.register(
            "tokens_received",
            "Tokens this member received from the issuer",
            self.tokens_received.clone(),
        );
        r.register(
            "tokens_spent",
            "Tokens taken for borrows, net of those returned unspent",
            self.tokens_spent.clone(),
        );
        r.register(
            "served_locally",
            "Gateway requests served from this member's own upstream",
            self.served_locally.clone(),
        );
        r.register(
            "wallet_balance",
            "Tokens in the wallet",
            self.wallet_balance.clone(),
        );
        r.register(
            "tokens_expired",
            "Wallet tokens dropped because their epoch retired before they were spent",
            self.tokens_expired.clone(),
        );
        r.register(
            "tokens_given_up",
            "Tokens taken to be spent and given up without a served answer",
            self.tokens_given_up.clone(),
        );
        r.register(
            "group_rejections",
            "Epoch announcements and rosters refused, by reason",
            self.group_rejections.clone(),
        );
        r.register(
            "key_consistency_alarms",
            "Epochs under a key-consistency alarm (their tokens are neither spent nor accepted)",
            self.key_alarms.clone(),
        );
        r.register(
            "key_consistency_alarms_raised",
            "Key-consistency alarms raised",
            self.key_alarms_raised.clone(),
        );
        r.register("epoch", "The current epoch number", self.epoch_current.clone());
        r.register(
            "http_connections_over_limit",
            "HTTP connections refused with a 503 because the gateway or API was at its connection limit",
            self.connections_over_limit.clone(),
        );
        r.register(
            "peer_throttled",
            "Requests from a member refused for exceeding its rate, by member and surface",
            self.peer_throttled.clone(),
        );
        r.register(
            "peer_bans",
            "Times a member was disconnected and refused for a while for exceeding its limits",
            self.peer_bans.clone(),
        );
        r.register(
            "borrows_by_choice",
            "Requests this member could serve itself that it borrowed by choice ([exposure]: cover borrows, the \
             borrow threshold), by reason and outcome (served_here: the borrow failed and the own upstream served it)",
            self.borrows_by_choice.clone(),
        );
        r.register(
            "member_connections",
            "Connections to members by path: direct, relayed (through a member's circuit relay), and hole_punched (a \
             relayed one upgraded to a direct one, which is also counted as direct when it opens)",
            self.member_connections.clone(),
        );
        r.register(
            "hole_punches",
            "Hole punches (DCUtR) on relayed connections, by outcome",
            self.hole_punches.clone(),
        );
        r.register(
            "relay_reservations",
            "Reservations this node asked members' circuit relays for, by outcome",
            self.relay_reservations.clone(),
        );
        r.register(
            "relay_served",
            "What this node's circuit relay did for members: reservations and circuits accepted, denied (at its \
             limits) or closed",
            self.relay_served.clone(),
        );
        r.register(
            "http_refusals",
            "Requests the gateway or the API refused, by server and reason (each with its status code)",
            self.http_refusals.clone(),
        );
        r.register(
            "epochs_pruned",
            "Retired epochs whose spent set, claims and quota records were pruned",
            self.epochs_pruned.clone(),
        );
        r.register(
            "spent_set_size",
            "Spent token hashes held, per epoch",
            self.spent_set.clone(),
        );
        r.register(
            "upstream_ignored_rate_limit_values",
            "Rate-limit header values an upstream sent that were ignored as malformed or out of range, per upstream",
            self.upstream_ignored_values.clone(),
        );
        r.register(
            "attestations_accepted",
            "Attestations accepted",
            self.attestations_accepted.clone(),
        );
        r.register(
            "attestations_rejected",
            "Attestations rejected, by reason",
            self.attestation_rejections.clone(),
        );
        r.register(
            "attestations_published",
            "Attestations this node published",
            self.attestations_published.clone(),
        );
        r.register(
            "peers_connected",
            "Roster members connected",
            self.peers_connected.clone(),
        );
        r.register(
            "fresh_attestations",
            "Peers with a fresh attestation",
            self.fresh_attestations.clone(),
        );
        r.register(
            "headroom_level",
            "Own headroom bucket as attested (0 none, 1 low, 2 medium, 3 high)",
            self.headroom_bucket.clone(),
        );
        r.register_with_unit(
            "peer_rtt",
            "Ping round-trip time per peer",
            Unit::Seconds,
            self.peer_rtt.clone(),
        );
        r.register_with_unit(
            "peer_attestation_age",
            "Age of each peer's last accepted attestation",
            Unit::Seconds,
            self.peer_attestation_age.clone(),
        );
        r.register(
            "upstream_calls",
            "Calls to this member's upstream, by status class",
            self.upstream_calls.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed: not an active roster member",
            self.connections_refused.clone(),
        );
        r.register(
            "connection_errors",
            "Failed connections (a wrong group key shows up here)",
            self.connection_errors.clone(),
        );
        r.register(
            "inbound_failures",
            "Refused inbound frames (oversized, malformed) and failed requests",
            self.inbound_failures.clone(),
        );
        r.register(
            "gossip_malformed",
            "Gossip messages that did not decode",
            self.gossip_malformed.clone(),
        );
        r.register(
            "net_events_dropped",
            "Network events dropped because a consumer lagged",
            self.net_events_dropped.clone(),
        );
        r.register(
            "claims_answered",
            "Claims answered as a replica",
            self.claims_answered.clone(),
        );
        r.register(
            "claim_refusals",
            "Claims this replica refused to vote on, by reason",
            self.claim_refusals.clone(),
        );
        r.register(
            "claims",
            "Quorum claims this lender made, by verdict",
            self.claims.clone(),
        );
        r.register(
            "refill_requests",
            "Refill requests this member sent to the issuer, by outcome",
            self.refill_requests.clone(),
        );
    }
}

mod text;
pub use text::{
    OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE, openmetrics_to_prometheus_text, wants_openmetrics,
};
