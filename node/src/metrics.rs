//! The node's metrics: prometheus-client counters, gauges and a histogram, shared by the actors (each metric is an
//! atomic; no domain state lives here), registered next to libp2p-metrics and served on `/metrics` as OpenMetrics to a
//! client whose `Accept` asks for it, as the Prometheus text format 0.0.4 otherwise
//! ([`wants_openmetrics`], [`openmetrics_to_prometheus_text`]).
//!
//! Plain counters keep the `inc` / `add` / `get` helpers the actors use; labelled families (outcomes, reasons, status
//! classes) are bumped with [`Counters::outcome`]. Gauges that describe state other actors own (wallet balance,
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

/// A label set naming an HTTP status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// `2xx` … `5xx`, or `error`.
    pub class: String,
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
pub struct Counters {
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
    /// Claims answered as a replica.
    pub claims_answered: Counter,
    /// Upstream calls by status class.
    pub upstream_calls: Family<ClassLabel, Counter>,
    /// Tokens in the wallet (set at scrape).
    pub wallet_balance: Gauge,
    /// Spent token hashes per epoch (set at scrape).
    pub spent_set: Family<EpochLabel, Gauge>,
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
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
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
            claims_answered: Counter::default(),
            upstream_calls: Family::default(),
            wallet_balance: Gauge::default(),
            spent_set: Family::default(),
            peers_connected: Gauge::default(),
            fresh_attestations: Gauge::default(),
            headroom_bucket: Gauge::default(),
            peer_rtt: Family::default(),
            peer_attestation_age: Family::default(),
            tokens_expired: Counter::default(),
            group_rejections: Family::default(),
            key_alarms: Gauge::default(),
            key_alarms_raised: Counter::default(),
            epoch_current: Gauge::default(),
            epochs_pruned: Counter::default(),
        }
    }
}

impl Counters {
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
    }
}

/// `Content-Type` of the OpenMetrics text format, as prometheus-client encodes it.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of the Prometheus text exposition format 0.0.4.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request's `Accept` header values ask for OpenMetrics: a media range `application/openmetrics-text`
/// (any version) with a quality above 0 and at least the one `text/plain` gets (from `text/plain`, else `text/*`,
/// else `*/*`). Wildcards alone never select OpenMetrics, so a client that does not name it (curl, a browser)
/// gets the Prometheus text format. Prometheus's own scrape header
/// (`application/openmetrics-text;version=1.0.0,…,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`) selects OpenMetrics.
pub fn wants_openmetrics<'a>(accept: impl IntoIterator<Item = &'a str>) -> bool {
    let mut openmetrics: Option<f32> = None;
    // The quality `text/plain` gets, by specificity: `*/*`, `text/*`, `text/plain`.
    let mut text: [Option<f32>; 3] = [None; 3];
    for range in accept.into_iter().flat_map(|v| v.split(',')) {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        // A missing quality is 1; one that does not parse counts as 0 (not asked for).
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0))
            .clamp(0.0, 1.0);
        let slot = match media.as_str() {
            "application/openmetrics-text" => &mut openmetrics,
            "text/plain" => &mut text[2],
            "text/*" => &mut text[1],
            "*/*" => &mut text[0],
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
    }
    let text_q = text[2].or(text[1]).or(text[0]).unwrap_or(0.0);
    openmetrics.is_some_and(|q| q > 0.0 && q >= text_q)
}

/// Converts OpenMetrics text, the only format prometheus-client encodes, to the Prometheus text exposition format
/// 0.0.4, munging as the Python client does:
/// - `# EOF`, `# UNIT` and `_created` samples go: the format has none of them;
/// - `# HELP` and `# TYPE` name the samples: a counter family `foo` (samples `foo_total`) becomes `foo_total`, an
///   info family `foo` (samples `foo_info`) the gauge `foo_info`; `unknown` becomes `untyped`, `stateset` `gauge`,
///   `gaugehistogram` `histogram` (its `_gsum` and `_gcount` samples `_sum` and `_count`);
/// - help text is re-escaped (OpenMetrics escapes `\\`, `\n` and `\"`; Prometheus only `\\` and `\n`);
/// - exemplars go, and sample timestamps go from seconds to milliseconds.
///
/// Metric names, label sets and values pass unchanged: both formats write them alike.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    // Family name → OpenMetrics type (a family's `# HELP` may come before its `# TYPE`).
    let types: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name, kind.trim()))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    // The family whose samples follow: its name and OpenMetrics type.
    let mut family: (&str, &str) = ("", "unknown");
    for line in openmetrics.lines() {
        if line == "# EOF" {
            break;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = types.get(name).copied().unwrap_or("unknown");
            family = (name, kind);
            let _ = writeln!(
                out,
                "# HELP {} {}",
                prometheus_family_name(name, kind),
                reescape_help(help)
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .map_or((rest, "unknown"), |(n, k)| (n, k.trim()));
            family = (name, kind);
            let _ = writeln!(
                out,
                "# TYPE {} {}",
                prometheus_family_name(name, kind),
                prometheus_type(kind)
            );
        } else if line.starts_with('#') || line.trim().is_empty() {
            // `# UNIT` (and any other comment): not in the Prometheus text format.
        } else if let Some(sample) = prometheus_sample(line, family) {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

/// The name `# HELP` and `# TYPE` give a family in the Prometheus text format: the name of its samples.
fn prometheus_family_name<'a>(name: &'a str, kind: &str) -> Cow<'a, str> {
    match kind {
        "counter" => format!("{name}_total").into(),
        "info" => format!("{name}_info").into(),
        _ => name.into(),
    }
}

/// The Prometheus text format's type for an OpenMetrics type.
fn prometheus_type(kind: &str) -> &'static str {
    match kind {
        "counter" => "counter",
        "gauge" | "info" | "stateset" => "gauge",
        "histogram" | "gaugehistogram" => "histogram",
        "summary" => "summary",
        _ => "untyped",
    }
}

/// OpenMetrics help text (escapes `\\`, `\n`, `\"`) to Prometheus help text (escapes `\\`, `\n`); a backslash
/// that escapes nothing OpenMetrics knows is kept as a literal backslash.
fn reescape_help(help: &str) -> Cow<'_, str> {
    if !help.contains('\\') {
        return help.into();
    }
    let mut out = String::with_capacity(help.len() + 2);
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some('n') => out.push_str("\\n"),
            Some('\\') => out.push_str("\\\\"),
            Some(other) => {
                out.push_str("\\\\");
                out.push(other);
            }
            None => out.push_str("\\\\"),
        }
    }
    out.into()
}

/// One OpenMetrics sample line in the Prometheus text format, or `None` for a sample that format lacks
/// (`_created`). A line that does not parse passes unchanged, for the scraper to report.
fn prometheus_sample(line: &str, (family, kind): (&str, &str)) -> Option<String> {
    let Some((name, labels, rest)) = split_sample(line) else {
        return Some(line.to_string());
    };
    let suffix = name.strip_prefix(family);
    if matches!(kind, "counter" | "histogram" | "summary" | "gaugehistogram") && suffix == Some("_created") {
        return None;
    }
    let name: Cow<'_, str> = match (kind, suffix) {
        ("gaugehistogram", Some("_gsum")) => format!("{family}_sum").into(),
        ("gaugehistogram", Some("_gcount")) => format!("{family}_count").into(),
        _ => name.into(),
    };
    // `value [timestamp] [# {exemplar labels} value [timestamp]]`: the exemplar goes.
    let rest = rest.split_once(" # ").map_or(rest, |(r, _)| r);
    let mut fields = rest.split_whitespace();
    let Some(value) = fields.next() else {
        return Some(line.to_string());
    };
    let mut out = format!("{name}{labels} {value}");
    if let Some(seconds) = fields
        .next()
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite())
    {
        let _ = write!(out, " {}", (seconds * 1000.0).round() as i64);
    }
    Some(out)
}

/// A sample line's name, label set (with its braces, or empty) and the rest; label values may hold any of
/// `{`, `}`, `#`, spaces and escaped quotes.
fn split_sample(line: &str) -> Option<(&str, &str, &str)> {
    let name_end = line.find(['{', ' '])?;
    let (name, after) = line.split_at(name_end);
    if !after.starts_with('{') {
        return Some((name, "", after));
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in after.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some((name, &after[..=i], &after[i + 1..])),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::exemplar::CounterWithExemplar;
    use prometheus_client::metrics::info::Info;

    /// The registry a node serves (lendmesh's metrics and libp2p's), with some values moved.
    fn node_registry() -> String {
        let counters = Counters::default();
        let mut registry = Registry::default();
        counters.register(&mut registry);
        let _libp2p = libp2p::metrics::Metrics::new(&mut registry);
        counters.add(&counters.relays_ok, 2);
        Counters::outcome(&counters.borrows, "ok");
        Counters::outcome(&counters.borrows, "no_lender_available");
        counters.borrow_latency.observe(0.02);
        counters.headroom_bucket.set(3);
        counters.upstream_call(Some(200));
        counters
            .peer_rtt
            .get_or_create(&PeerLabel {
                peer: "12D3KooWabc".into(),
            })
            .set(0.0125);
        counters.spent_set.get_or_create(&EpochLabel { epoch: 7 }).set(4);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    /// Sample lines (not comments).
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    /// What `promtool check metrics` checks, in Rust: every sample's family has `# HELP` and `# TYPE` lines naming
    /// it; counters' samples end `_total`; no non-histogram `_bucket`, no `_created`, no `# EOF` or `# UNIT`.
    fn assert_prometheus_text(text: &str) {
        let mut help = HashMap::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, h) = rest.split_once(' ').unwrap();
                assert!(!h.is_empty(), "{line}");
                assert!(help.insert(name, h).is_none(), "second HELP: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(types.insert(name, kind).is_none(), "second TYPE: {line}");
            } else {
                assert!(!line.starts_with('#'), "{line}");
            }
        }
        for line in samples(text) {
            let (name, _, _) = split_sample(line).unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|f| match types.get(f) {
                    Some(&"histogram") => true,
                    Some(&"summary") => !name.ends_with("_bucket"),
                    _ => false,
                })
                .unwrap_or(name);
            let kind = types
                .get(family)
                .unwrap_or_else(|| panic!("no # TYPE for {name}"));
            assert!(help.contains_key(family), "no # HELP for {name}");
            assert_eq!(*kind == "counter", name.ends_with("_total"), "{line}");
            if *kind != "histogram" {
                assert!(!name.ends_with("_bucket"), "non-histogram {name}");
            }
            assert!(!name.ends_with("_created"), "{line}");
        }
    }

    /// Runs `promtool check metrics` on the text if promtool is installed; it must pass without a word.
    fn promtool_if_installed(text: &str) {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            return;
        };
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.is_empty(),
            "promtool: {said}\n{text}"
        );
    }

    #[test]
    fn the_node_registry_converts_to_lint_clean_prometheus_text() {
        let om = node_registry();
        assert!(om.ends_with("# EOF\n") && om.contains("# UNIT "));
        let prom = openmetrics_to_prometheus_text(&om);
        for block in [
            "# HELP lendmesh_relays_total Sealed requests relayed successfully.\n\
             # TYPE lendmesh_relays_total counter\n\
             lendmesh_relays_total 2\n",
            "# HELP lendmesh_headroom_level Own headroom bucket as attested (0 none, 1 low, 2 medium, 3 high).\n\
             # TYPE lendmesh_headroom_level gauge\n\
             lendmesh_headroom_level 3\n",
            "# HELP lendmesh_peer_rtt_seconds Ping round-trip time per peer.\n\
             # TYPE lendmesh_peer_rtt_seconds gauge\n\
             lendmesh_peer_rtt_seconds{peer=\"12D3KooWabc\"} 0.0125\n",
            "# HELP lendmesh_borrow_latency_seconds Borrow latency from the gateway to the answer.\n\
             # TYPE lendmesh_borrow_latency_seconds histogram\n\
             lendmesh_borrow_latency_seconds_sum 0.02\n\
             lendmesh_borrow_latency_seconds_count 1\n",
            "lendmesh_borrow_latency_seconds_bucket{le=\"+Inf\"} 1\n",
            "# TYPE lendmesh_borrows_total counter\n",
            "lendmesh_borrows_total{outcome=\"ok\"} 1\n",
            "# TYPE lendmesh_spent_set_size gauge\nlendmesh_spent_set_size{epoch=\"7\"} 4\n",
            "# HELP libp2p_swarm_dial_attempt_total Number of dial attempts.\n\
             # TYPE libp2p_swarm_dial_attempt_total counter\n",
        ] {
            assert!(prom.contains(block), "missing\n{block}\nin\n{prom}");
        }
        assert!(!prom.contains("headroom_bucket"));
        assert!(!prom.contains("# EOF") && !prom.contains("# UNIT"));
        // Only the descriptors change: every sample passes as it was.
        assert_eq!(samples(&prom), samples(&om));
        assert_eq!(
            prom.lines().filter(|l| l.starts_with("# TYPE ")).count(),
            om.lines().filter(|l| l.starts_with("# TYPE ")).count()
        );
        assert_prometheus_text(&prom);
        promtool_if_installed(&prom);
    }

    #[test]
    fn exemplars_info_and_escapes_from_the_real_encoder() {
        let mut registry = Registry::default();
        let with_exemplar = CounterWithExemplar::<Vec<(String, String)>>::default();
        with_exemplar.inc_by(3, Some(vec![("trace".into(), "a b # c".into())]), None);
        registry.register_with_unit(
            "work",
            r#"Work done, "quoted" and \ backslashed"#,
            Unit::Seconds,
            with_exemplar,
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version".to_string(), "1.2.3".to_string())]),
        );
        let odd: Family<ReasonLabel, Counter> = Family::default();
        odd.get_or_create(&ReasonLabel {
            reason: "a\"} 9\n# x\\".into(),
        })
        .inc();
        registry.register("odd", "Odd label values", odd);
        let mut om = String::new();
        encode(&mut om, &registry).unwrap();
        assert!(
            om.contains("work_seconds_total 3 # {trace=\"a b # c\"} 3"),
            "{om}"
        );
        let prom = openmetrics_to_prometheus_text(&om);
        assert_eq!(
            prom,
            "# HELP work_seconds_total Work done, \"quoted\" and \\\\ backslashed.\n\
             # TYPE work_seconds_total counter\n\
             work_seconds_total 3\n\
             # HELP build_info Build information.\n\
             # TYPE build_info gauge\n\
             build_info{version=\"1.2.3\"} 1\n\
             # HELP odd_total Odd label values.\n\
             # TYPE odd_total counter\n\
             odd_total{reason=\"a\\\"} 9\\n# x\\\\\"} 1\n"
        );
        assert_prometheus_text(&prom);
        promtool_if_installed(&prom);
    }

    #[test]
    fn openmetrics_types_the_encoder_does_not_write_yet() {
        let om = "# TYPE c counter\n\
                  # HELP c A \\\"c\\\" with a\\nnewline, a \\\\ and a \\q.\n\
                  c_total{a=\"1\"} 1 1700000000.5\n\
                  c_created{a=\"1\"} 1699999999\n\
                  # HELP u Unknown.\n\
                  # TYPE u unknown\n\
                  u 1\n\
                  # HELP s State set.\n\
                  # TYPE s stateset\n\
                  s{s=\"on\"} 1\n\
                  # HELP g Gauge histogram.\n\
                  # TYPE g gaugehistogram\n\
                  g_bucket{le=\"+Inf\"} 2\n\
                  g_gcount 2\n\
                  g_gsum 5\n\
                  # HELP q Summary.\n\
                  # TYPE q summary\n\
                  q{quantile=\"0.5\"} 0.25\n\
                  q_sum 1\n\
                  q_count 4\n\
                  q_created 1699999999\n\
                  # EOF\n";
        let prom = openmetrics_to_prometheus_text(om);
        assert_eq!(
            prom,
            "# TYPE c_total counter\n\
             # HELP c_total A \"c\" with a\\nnewline, a \\\\ and a \\\\q.\n\
             c_total{a=\"1\"} 1 1700000000500\n\
             # HELP u Unknown.\n\
             # TYPE u untyped\n\
             u 1\n\
             # HELP s State set.\n\
             # TYPE s gauge\n\
             s{s=\"on\"} 1\n\
             # HELP g Gauge histogram.\n\
             # TYPE g histogram\n\
             g_bucket{le=\"+Inf\"} 2\n\
             g_count 2\n\
             g_sum 5\n\
             # HELP q Summary.\n\
             # TYPE q summary\n\
             q{quantile=\"0.5\"} 0.25\n\
             q_sum 1\n\
             q_count 4\n"
        );
        assert_prometheus_text(&prom);
        promtool_if_installed(&prom);
    }

    #[test]
    fn openmetrics_only_when_the_client_asks_for_it() {
        let prometheus_scraper = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                                  version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, openmetrics) in [
            (&[][..], false),
            (&[""][..], false),
            (&["*/*"][..], false),
            (&["text/plain"][..], false),
            (&["text/plain; version=0.0.4"][..], false),
            (&["application/json, text/*;q=0.9"][..], false),
            (&["application/openmetrics-text"][..], true),
            (
                &["Application/OpenMetrics-Text; version=1.0.0; charset=utf-8"][..],
                true,
            ),
            (&[prometheus_scraper][..], true),
            (&["text/html", "application/openmetrics-text;q=0.2"][..], true),
            (&["application/openmetrics-text;q=0"][..], false),
            (&["application/openmetrics-text;q=nonsense"][..], false),
            (&["text/plain, application/openmetrics-text;q=0.5"][..], false),
            (&["*/*, application/openmetrics-text;q=0.5"][..], false),
            (
                &["text/plain;q=0.5, application/openmetrics-text;q=0.5"][..],
                true,
            ),
            (&["*/*;q=0.1, application/openmetrics-text;q=0.5"][..], true),
        ] {
            assert_eq!(
                wants_openmetrics(accept.iter().copied()),
                openmetrics,
                "{accept:?}"
            );
        }
    }
}
