//! The node's settings: `config.toml` in the home directory, overridden by command-line flags.
//!
//! Every field has a default, so a node runs with no config file at all (mock upstream with a small capacity,
//! loopback API and gateway). `lendmesh config show` prints the effective settings; they hold no secrets (the
//! upstream API key itself is read from the environment variable named here).

use std::path::Path;
use std::time::Duration;

/// Default request and response body limit of the gateway, each way.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// Lend records kept by default: about a busy week of a lender serving a small group, a few MB in the store.
pub const DEFAULT_LEND_RECORDS: u64 = 10_000;
/// Most lend records a node may be told to keep (a few hundred MB in the store).
pub const MAX_LEND_RECORDS: u64 = 1_000_000;
/// How long lend records are kept by default.
pub const DEFAULT_LEND_RECORDS_MAX_AGE: Duration = Duration::from_secs(30 * 86_400);

use serde::{Deserialize, Serialize};

/// Largest config file accepted.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// The config file's name in the home directory.
pub const CONFIG_FILE: &str = "config.toml";

/// All settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// libp2p networking.
    pub network: NetworkConfig,
    /// The HTTP API (metrics, status).
    pub api: ApiConfig,
    /// The gateway tools call.
    pub gateway: GatewayConfig,
    /// Limits on HTTP requests to the gateway and the API (docs/design.md §11.3).
    pub http: HttpLimits,
    /// Per-member rate limits on issue, claim, borrow, relay and gossip, and the strikes that disconnect a member
    /// that floods (docs/design.md §9.3).
    pub limits: lendmesh_protocol::limits::Limits,
    /// The member's own upstream (the command-line flags set this one).
    pub upstream: UpstreamConfig,
    /// More upstreams the member shares, each with its own name, API, models, budget and reserve
    /// (docs/design.md §5.1); `[upstream]` comes first.
    pub upstreams: Vec<UpstreamConfig>,
    /// Token wallet.
    pub wallet: WalletConfig,
    /// Lending.
    pub lender: LenderConfig,
    /// Borrowing.
    pub borrow: BorrowConfig,
    /// What this member's borrowing, attestations and refills may tell the others and the admin about its
    /// exhaustion: cover borrows, the borrow threshold, the `none` bucket, constant-rate issuance (docs/design.md
    /// §9.4, `protocol::exposure`).
    pub exposure: lendmesh_protocol::exposure::Exposure,
    /// Logging.
    pub log: LogConfig,
}

/// libp2p settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Extra multiaddrs to dial at start (besides the invite's).
    pub bootstrap: Vec<String>,
    /// Addresses other members can reach this node at (written into invites).
    pub external: Vec<String>,
    /// Discover members on the LAN with mDNS.
    pub mdns: bool,
    /// How long opening a stream to a relay or lender may take (100ms to 60s): a member that does not negotiate in
    /// this time is taken as not answering, and the request goes elsewhere with its token unspent.
    #[serde(with = "duration_str")]
    pub stream_open_timeout: Duration,
    /// How long a relay may take to acknowledge a request before it is taken as never sent (100ms to 60s).
    #[serde(with = "duration_str")]
    pub relay_ack_timeout: Duration,
    /// How long a borrow waits for the lender's first byte (100ms to 1h): long enough for a thinking model; keep it
    /// above the lenders' `[upstream] first_byte_timeout`. Failover to another lender happens only before it.
    #[serde(with = "duration_str")]
    pub first_byte_timeout: Duration,
    /// How long a streamed answer may pause between two pieces before it is taken as cut short (100ms to 1h); keep
    /// it above the lenders' `[upstream] idle_timeout`.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Serve as a circuit relay for members behind NAT (docs/design.md §10.4): `auto` while this node has a
    /// confirmed external address (AutoNAT confirmed one, or `external` names one), `on`, or `off`.
    pub circuit_relay: crate::net::nat::Switch,
    /// Reserve a slot on a member's circuit relay so the others can reach this node through it: `auto` when
    /// AutoNAT finds this node unreachable from outside, `on` always, `off` never.
    pub reserve_circuit: crate::net::nat::Switch,
    /// How long one connection relayed by this node may last (1s to 7d): a relayed borrow is cut at this limit, so
    /// keep it above the longest answer.
    #[serde(with = "duration_str")]
    pub circuit_max_duration: Duration,
    /// How many bytes one connection relayed by this node may carry (0: no limit).
    pub circuit_max_bytes: u64,
}

/// Longest connection this node relays, by default: half a day, far above the longest answer.
pub const DEFAULT_CIRCUIT_MAX_DURATION: Duration = Duration::from_secs(12 * 3600);
/// Most bytes one relayed connection carries, by default: 1 GiB.
pub const DEFAULT_CIRCUIT_MAX_BYTES: u64 = 1 << 30;

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: vec!["/ip4/0.0.0.0/tcp/4001".into()],
            bootstrap: vec![],
            external: vec![],
            mdns: false,
            stream_open_timeout: crate::net::streams::DEFAULT_OPEN_TIMEOUT,
            relay_ack_timeout: crate::net::streams::DEFAULT_ACK_TIMEOUT,
            first_byte_timeout: crate::net::streams::DEFAULT_FIRST_BYTE_TIMEOUT,
            idle_timeout: crate::net::streams::DEFAULT_IDLE_TIMEOUT,
            circuit_relay: crate::net::nat::Switch::Auto,
            reserve_circuit: crate::net::nat::Switch::Auto,
            circuit_max_duration: DEFAULT_CIRCUIT_MAX_DURATION,
            circuit_max_bytes: DEFAULT_CIRCUIT_MAX_BYTES,
        }
    }
}

impl NetworkConfig {
    /// Refuses settings out of range, naming the setting and the range.
    pub fn check(&self) -> Result<(), String> {
        check_step_timeout("stream_open_timeout", self.stream_open_timeout)?;
        check_step_timeout("relay_ack_timeout", self.relay_ack_timeout)?;
        check_answer_timeout("first_byte_timeout", self.first_byte_timeout)?;
        check_answer_timeout("idle_timeout", self.idle_timeout)?;
        check_circuit_duration(self.circuit_max_duration)?;
        Ok(())
    }

    /// The streamed protocols' timeouts these settings give.
    pub fn stream_timeouts(&self) -> crate::net::streams::StreamTimeouts {
        crate::net::streams::StreamTimeouts {
            open: self.stream_open_timeout,
            ack: self.relay_ack_timeout,
            first_byte: self.first_byte_timeout,
            idle: self.idle_timeout,
            ..Default::default()
        }
    }
}

/// Parses `--circuit-max-duration`.
pub fn parse_circuit_duration(s: &str) -> Result<Duration, String> {
    check_circuit_duration(parse_duration(s)?)
}

/// A relayed connection's longest life must be from a second to a week.
fn check_circuit_duration(d: Duration) -> Result<Duration, String> {
    if d < Duration::from_secs(1) || d > Duration::from_secs(7 * 24 * 3600) {
        return Err(format!(
            "circuit_max_duration must be from 1s to 7d (got {})",
            format_duration(d)
        ));
    }
    Ok(d)
}

/// Parses `--first-byte-timeout` and `--idle-timeout`.
pub fn parse_answer_timeout(s: &str) -> Result<Duration, String> {
    check_answer_timeout("the timeout", parse_duration(s)?)
}

/// A streamed answer's limit must be from 100 ms to an hour.
fn check_answer_timeout(name: &str, d: Duration) -> Result<Duration, String> {
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!(
            "{name} must be from 100ms to 1h (got {})",
            format_duration(d)
        ));
    }
    Ok(d)
}

/// Parses `--stream-open-timeout` and `--relay-ack-timeout`.
pub fn parse_step_timeout(s: &str) -> Result<Duration, String> {
    check_step_timeout("the timeout", parse_duration(s)?)
}

/// A network step's timeout must be from 100 ms to 60 s: shorter fails healthy members on a busy machine, longer
/// keeps a borrow waiting on a member that is gone.
fn check_step_timeout(name: &str, d: Duration) -> Result<Duration, String> {
    if d < Duration::from_millis(100) || d > Duration::from_secs(60) {
        return Err(format!(
            "{name} must be from 100ms to 60s (got {})",
            format_duration(d)
        ));
    }
    Ok(d)
}

/// HTTP API settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Where the API listens.
    pub addr: String,
    /// Bearer token required on every request; mandatory when the API listens beyond loopback. A secret: never
    /// written by `config show` (set it with `--api-token` or `LENDMESH_API_TOKEN`).
    #[serde(skip)]
    pub token: Option<String>,
    /// Connections served at once; more get `503`.
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            addr: "127.0.0.1:9464".into(),
            token: None,
            max_connections: DEFAULT_API_CONNECTIONS,
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Gateway settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where the gateway listens.
    pub addr: String,
    /// Largest request and response body, in bytes (at most 8 MiB, the wire limit).
    pub body_limit: usize,
    /// Connections served at once; more get `503`.
    pub max_connections: usize,
    /// Ask for a gateway key on loopback too (beyond loopback a key is always needed).
    pub require_key: bool,
    /// The gateway keys file (`name key` per line, mode 0600; `lendmesh gateway key add`); relative to the home.
    pub keys_file: String,
    /// Keys given with `--gateway-key` or `LENDMESH_GATEWAY_KEY`. Secrets: never written by `config show`.
    #[serde(skip)]
    pub keys: Vec<crate::http::keys::NamedKey>,
}

/// Default [`GatewayConfig::max_connections`].
pub const DEFAULT_GATEWAY_CONNECTIONS: usize = 256;
/// Default [`ApiConfig::max_connections`].
pub const DEFAULT_API_CONNECTIONS: usize = 32;

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            addr: "127.0.0.1:8640".into(),
            body_limit: DEFAULT_BODY_LIMIT,
            max_connections: DEFAULT_GATEWAY_CONNECTIONS,
            require_key: false,
            keys_file: crate::http::keys::KEYS_FILE.into(),
            keys: Vec::new(),
        }
    }
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("addr", &self.addr)
            .field("body_limit", &self.body_limit)
            .field("max_connections", &self.max_connections)
            .field("require_key", &self.require_key)
            .field("keys_file", &self.keys_file)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Limits on HTTP requests to the gateway and the API, the `[http]` section (docs/design.md §11.3).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Largest request head (start line and headers), in bytes; more gets `431`.
    pub max_header_bytes: usize,
    /// Most headers in one request; more gets `431`.
    pub max_headers: usize,
    /// Time to receive a request head once it has begun (`408`), and the longest a keep-alive connection waits for
    /// its next request.
    #[serde(with = "duration_str")]
    pub header_timeout: Duration,
    /// Time to receive a whole request body (`408`).
    #[serde(with = "duration_str")]
    pub body_timeout: Duration,
}

/// Default [`HttpLimits::max_header_bytes`]: about ten times what Claude Code or the OpenAI SDK send.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default [`HttpLimits::max_headers`].
pub const DEFAULT_MAX_HEADERS: usize = 100;

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
        }
    }
}

impl HttpLimits {
    /// Checks the ranges: a head of 4 KiB to 1 MiB, 8 to 1000 headers, timeouts of 1 s to 10 min.
    pub fn check(&self) -> Result<(), String> {
        if !(4096..=1 << 20).contains(&self.max_header_bytes) {
            return Err(format!(
                "max_header_bytes must be from 4096 to 1048576 (got {})",
                self.max_header_bytes
            ));
        }
        if !(8..=1000).contains(&self.max_headers) {
            return Err(format!(
                "max_headers must be from 8 to 1000 (got {})",
                self.max_headers
            ));
        }
        for (name, d) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if d < Duration::from_secs(1) || d > Duration::from_secs(600) {
                return Err(format!(
                    "{name} must be from 1s to 10m (got {})",
                    format_duration(d)
                ));
            }
        }
        Ok(())
    }
}

/// Borrowing settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BorrowConfig {
    /// `strict` (never without a relay) or `best-effort`.
    pub privacy: lendmesh_protocol::borrow::PrivacyMode,
    /// Lender choice: `p2c` (default), `greedy`, `uniform`, `weighted`.
    pub policy: lendmesh_protocol::routing::Policy,
    /// Withhold the environment coding tools write into the prompt (working directory, paths under a home
    /// directory, platform, shell, OS version) from borrowed requests (default on; docs/design.md §9.1).
    pub redact_environment: bool,
}

impl Default for BorrowConfig {
    fn default() -> Self {
        BorrowConfig {
            privacy: Default::default(),
            policy: Default::default(),
            redact_environment: true,
        }
    }
}

/// Which upstream this member shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// A built-in mock with a fixed capacity per window.
    Mock,
    /// A real HTTP upstream.
    Http,
}

/// Upstream settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// mock or http.
    pub kind: UpstreamKind,
    /// Mock: requests per window.
    pub mock_capacity: u64,
    /// Mock: window length.
    #[serde(with = "duration_str")]
    pub mock_window: Duration,
    /// Mock: latency per call.
    #[serde(with = "duration_str")]
    pub mock_latency: Duration,
    /// Mock: answer as this many server-sent events (0: one JSON body).
    pub mock_stream_chunks: u32,
    /// Mock: time between two events.
    #[serde(with = "duration_str")]
    pub mock_chunk_interval: Duration,
    /// HTTP: base URL.
    pub url: String,
    /// HTTP: environment variable holding the API key (the key itself is never in the config).
    pub key_env: String,
    /// HTTP: how the key is sent: `bearer` (`Authorization: Bearer <key>`, OpenAI), `x-api-key` (Anthropic) or
    /// `header:<name>` (e.g. `header:api-key` for Azure).
    pub auth: crate::upstream::AuthStyle,
    /// HTTP: requests per window assumed when the upstream sends no rate-limit headers.
    pub budget_per_window: u64,
    /// HTTP: window for that budget.
    #[serde(with = "duration_str")]
    pub window: Duration,
    /// HTTP: how long to wait for the response head (1s to 1h): a thinking model may send nothing for minutes.
    #[serde(with = "duration_str")]
    pub first_byte_timeout: Duration,
    /// HTTP: longest pause between two chunks of the response body (1s to 1h); a whole answer has no limit.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// HTTP: fixed headers sent with every request, e.g. `anthropic-version = "2023-06-01"` (a table; a caller's
    /// header of the same name is replaced). Shown by `config show`: not for secrets.
    pub extra_headers: std::collections::BTreeMap<String, String>,
    /// Its name, unique among the node's upstreams (logs, `/v1/node`).
    pub name: String,
    /// The API it speaks: `openai-chat`, `openai-responses`, `anthropic-messages`, or `any` (every request).
    pub api: lendmesh_protocol::capability::Api,
    /// The models it serves (exact names, or prefixes ending in `*`); empty: any. At most 64, each at most 96
    /// visible ASCII characters.
    pub models: Vec<String>,
    /// Units of each window never lent; unset: `[lender] reserve`.
    pub reserve: Option<u64>,
    /// Share of each window never lent (0 to 1): lending stops once only this share is left, the member's own
    /// requests may use it. Unset: 0.3 for an HTTP upstream (lend only below 70 % utilization), 0 for the mock.
    pub keep_share: Option<f64>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            kind: UpstreamKind::Mock,
            mock_capacity: 10,
            mock_window: Duration::from_secs(60),
            mock_latency: Duration::from_millis(0),
            mock_stream_chunks: 0,
            mock_chunk_interval: Duration::from_millis(100),
            url: String::new(),
            key_env: String::new(),
            auth: crate::upstream::AuthStyle::Bearer,
            budget_per_window: 60,
            window: Duration::from_secs(60),
            first_byte_timeout: crate::upstream::DEFAULT_FIRST_BYTE_TIMEOUT,
            idle_timeout: crate::upstream::DEFAULT_IDLE_TIMEOUT,
            extra_headers: std::collections::BTreeMap::new(),
            name: "default".into(),
            api: lendmesh_protocol::capability::Api::Any,
            models: Vec::new(),
            reserve: None,
            keep_share: None,
        }
    }
}

/// What an HTTP upstream keeps for its member when `keep_share` is unset: lend only below 70 % utilization.
pub const DEFAULT_KEEP_SHARE: f64 = 0.3;

impl UpstreamConfig {
    /// Refuses settings out of range and headers that cannot be sent, naming the setting.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 64 || !self.name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "name {:?} must be 1 to 64 visible ASCII characters",
                self.name
            ));
        }
        lendmesh_protocol::capability::check_models(&self.models).map_err(|e| format!("models: {e}"))?;
        if let Some(k) = self.keep_share
            && !(0.0..=1.0).contains(&k)
        {
            return Err(format!("keep_share {k} must be from 0 to 1"));
        }
        check_upstream_timeout("first_byte_timeout", self.first_byte_timeout)?;
        check_upstream_timeout("idle_timeout", self.idle_timeout)?;
        crate::upstream::check_extra_headers(
            &self.auth,
            self.extra_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        )?;
        Ok(())
    }

    /// Sets an extra header, replacing one of the same name in any case (`--upstream-header`).
    pub fn set_extra_header(&mut self, name: &str, value: &str) {
        self.extra_headers.retain(|n, _| !n.eq_ignore_ascii_case(name));
        self.extra_headers.insert(name.to_owned(), value.to_owned());
    }
}

/// Parses `--upstream-first-byte-timeout` and `--upstream-idle-timeout`.
pub fn parse_upstream_timeout(s: &str) -> Result<Duration, String> {
    check_upstream_timeout("the timeout", parse_duration(s)?)
}

/// An upstream wait must be from 1 s to 1 h: shorter cuts a healthy model mid-thought on a busy provider,
/// longer holds a lend (and the borrower waiting on it) on an upstream that is gone.
fn check_upstream_timeout(name: &str, d: Duration) -> Result<Duration, String> {
    if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
        return Err(format!(
            "{name} must be from 1s to 1h (got {})",
            format_duration(d)
        ));
    }
    Ok(d)
}

/// Wallet settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalletConfig {
    /// Refill when the wallet holds fewer tokens than this.
    pub low_water: u32,
    /// Tokens asked for per refill request.
    pub batch: u32,
}

impl Default for WalletConfig {
    fn default() -> Self {
        WalletConfig {
            low_water: 8,
            batch: 16,
        }
    }
}

/// Lender settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LenderConfig {
    /// How often to publish a headroom attestation (also on change).
    #[serde(with = "duration_str")]
    pub attestation_period: Duration,
    /// Requests per window kept for this member's own use, never lent.
    pub reserve: u64,
    /// Lend records (what this member lent, shown by `/v1/lends`) kept in the store at most: 0 keeps none, at most
    /// 1 000 000. The oldest go first.
    pub lend_records: u64,
    /// Lend records older than this are removed (at least 1s, e.g. 30d).
    #[serde(with = "duration_str")]
    pub lend_records_max_age: Duration,
    /// Without a majority of a token's replicas answering: `strict` refuses before any work (the token stays
    /// unspent), `lenient` serves and counts it for reconciliation (docs/design.md §7).
    pub claims: crate::roles::claimer::ClaimMode,
    /// Replicas per token (odd, 1 to 15; capped at the roster size).
    pub claim_replicas: usize,
    /// How long each replica may take to answer a claim (100ms to 60s).
    #[serde(with = "duration_str")]
    pub claim_timeout: Duration,
}

impl Default for LenderConfig {
    fn default() -> Self {
        LenderConfig {
            attestation_period: Duration::from_secs(10),
            reserve: 1,
            lend_records: DEFAULT_LEND_RECORDS,
            lend_records_max_age: DEFAULT_LEND_RECORDS_MAX_AGE,
            claims: crate::roles::claimer::ClaimMode::Strict,
            claim_replicas: lendmesh_protocol::claims::DEFAULT_REPLICAS,
            claim_timeout: Duration::from_secs(5),
        }
    }
}

impl LenderConfig {
    /// Refuses settings out of range, naming the setting and the range.
    pub fn check(&self) -> Result<(), String> {
        check_lend_records(self.lend_records)?;
        check_lend_records_max_age(self.lend_records_max_age)?;
        if !(1..=15).contains(&self.claim_replicas) || self.claim_replicas.is_multiple_of(2) {
            return Err(format!(
                "claim_replicas {} must be odd, from 1 to 15",
                self.claim_replicas
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.claim_timeout) {
            return Err(format!(
                "claim_timeout {:?} must be from 100ms to 60s",
                self.claim_timeout
            ));
        }
        Ok(())
    }
}

/// Parses `--lend-records`.
pub fn parse_lend_records(s: &str) -> Result<u64, String> {
    let n = s
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("'{s}' is not a number of records"))?;
    check_lend_records(n)
}

/// Parses `--lend-records-max-age`.
pub fn parse_lend_records_max_age(s: &str) -> Result<Duration, String> {
    check_lend_records_max_age(parse_duration(s)?)
}

/// `lend_records` must be at most [`MAX_LEND_RECORDS`].
pub fn check_lend_records(n: u64) -> Result<u64, String> {
    if n > MAX_LEND_RECORDS {
        return Err(format!(
            "lend_records must be at most {MAX_LEND_RECORDS} (got {n}); 0 keeps none"
        ));
    }
    Ok(n)
}

/// `lend_records_max_age` must be at least a second.
pub fn check_lend_records_max_age(d: Duration) -> Result<Duration, String> {
    if d < Duration::from_secs(1) {
        return Err(format!(
            "lend_records_max_age must be at least 1s (got {}); set lend_records = 0 to keep none",
            format_duration(d)
        ));
    }
    Ok(d)
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Format.
    pub format: LogFormat,
}

impl Config {
    /// Loads `config.toml` from `home`, or the defaults when there is none.
    pub fn load(home: &Path) -> anyhow::Result<Config> {
        let path = home.join(CONFIG_FILE);
        if !path.exists() {
            return Ok(Config::default());
        }
        let bytes = crate::home::read_limited(&path, MAX_CONFIG_BYTES)?;
        let text =
            String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8", path.display()))?;
        Config::from_toml(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a valid lendmesh config: {e}", path.display()))
    }

    /// Parses a config file's text and checks its settings.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// Refuses settings out of range (the file's, and flags through their own parsers).
    pub fn check(&self) -> Result<(), String> {
        self.network.check().map_err(|e| format!("[network] {e}"))?;
        self.upstream.check().map_err(|e| format!("[upstream] {e}"))?;
        let mut names = std::collections::BTreeSet::from([self.upstream.name.as_str()]);
        for (i, u) in self.upstreams.iter().enumerate() {
            u.check()
                .map_err(|e| format!("[[upstreams]] number {} ({}): {e}", i + 1, u.name))?;
            if !names.insert(u.name.as_str()) {
                return Err(format!(
                    "[[upstreams]] number {}: the name {:?} is used twice; give each upstream its own",
                    i + 1,
                    u.name
                ));
            }
        }
        let count = 1 + self.upstreams.len();
        if count > lendmesh_protocol::capability::MAX_CAPABILITIES {
            return Err(format!(
                "{count} upstreams, over the limit of {}",
                lendmesh_protocol::capability::MAX_CAPABILITIES
            ));
        }
        self.http.check().map_err(|e| format!("[http] {e}"))?;
        self.exposure.check().map_err(|e| format!("[exposure] {e}"))?;
        self.limits.check().map_err(|e| format!("[limits] {e}"))?;
        for (section, n) in [
            ("gateway", self.gateway.max_connections),
            ("api", self.api.max_connections),
        ] {
            if !(1..=65_536).contains(&n) {
                return Err(format!(
                    "[{section}] max_connections must be from 1 to 65536 (got {n})"
                ));
            }
        }
        self.lender.check().map_err(|e| format!("[lender] {e}"))
    }

    /// The settings as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Parses durations like `250ms`, `10s`, `5m`, `1h`, `7d` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 250ms, 10s, 5m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        "w" => n * 7.0 * 86_400.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' in '{s}'; use ms, s, m, h, d or w"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration '{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(86_400_000) && ms > 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
        for d in ["250ms", "10s", "5m", "1h", "30d"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
    }

    #[test]
    fn config_round_trips_and_rejects_unknown_keys() {
        let c = Config::default();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let partial: Config = toml::from_str("[wallet]\nlow_water = 3\n").unwrap();
        assert_eq!(partial.wallet.low_water, 3);
        assert_eq!(partial.wallet.batch, WalletConfig::default().batch);
        let err = toml::from_str::<Config>("[wallet]\nlow_watr = 3\n").unwrap_err();
        assert!(err.to_string().contains("low_watr"));
    }

    #[test]
    fn lend_retention_is_configured_and_checked() {
        let c = Config::default();
        assert_eq!(c.lender.lend_records, 10_000);
        assert_eq!(c.lender.lend_records_max_age, Duration::from_secs(30 * 86_400));
        assert!(
            c.to_toml().contains("lend_records_max_age = \"30d\""),
            "{}",
            c.to_toml()
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(
            &file,
            "[lender]\nlend_records = 500\nlend_records_max_age = \"7d\"\n",
        )
        .unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.lender.lend_records, 500);
        assert_eq!(c.lender.lend_records_max_age, Duration::from_secs(7 * 86_400));
        std::fs::write(&file, "[lender]\nlend_records = 2000000\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("[lender] lend_records must be at most 1000000"),
            "{err}"
        );
        std::fs::write(&file, "[lender]\nlend_records_max_age = \"0s\"\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("lend_records_max_age must be at least 1s"), "{err}");
    }

    #[test]
    fn stream_timeouts_are_configured_and_checked() {
        let c = Config::default();
        assert_eq!(
            c.network.stream_timeouts(),
            crate::net::streams::StreamTimeouts::default()
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(
            &file,
            "[network]\nstream_open_timeout = \"750ms\"\nrelay_ack_timeout = \"3s\"\n",
        )
        .unwrap();
        let t = Config::load(dir.path()).unwrap().network.stream_timeouts();
        assert_eq!(
            (t.open, t.ack),
            (Duration::from_millis(750), Duration::from_secs(3))
        );
        std::fs::write(&file, "[network]\nrelay_ack_timeout = \"5m\"\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("[network] relay_ack_timeout must be from 100ms to 60s"),
            "{err}"
        );
        assert!(parse_step_timeout("10ms").is_err());
        std::fs::write(
            &file,
            "[network]\nfirst_byte_timeout = \"10m\"\nidle_timeout = \"2s\"\n",
        )
        .unwrap();
        let t = Config::load(dir.path()).unwrap().network.stream_timeouts();
        assert_eq!(
            (t.first_byte, t.idle),
            (Duration::from_secs(600), Duration::from_secs(2))
        );
        std::fs::write(&file, "[network]\nidle_timeout = \"2h\"\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("[network] idle_timeout must be from 100ms to 1h"),
            "{err}"
        );
        assert_eq!(parse_step_timeout("2s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn nat_settings_are_configured_and_checked() {
        let c = Config::default();
        assert_eq!(c.network.circuit_relay, crate::net::nat::Switch::Auto);
        assert_eq!(c.network.reserve_circuit, crate::net::nat::Switch::Auto);
        let shown = c.to_toml();
        assert!(
            shown.contains("circuit_relay = \"auto\"")
                && shown.contains("circuit_max_duration = \"12h\"")
                && shown.contains("circuit_max_bytes = 1073741824"),
            "{shown}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(
            &file,
            "[network]\ncircuit_relay = \"off\"\nreserve_circuit = \"on\"\ncircuit_max_duration = \"10m\"\n",
        )
        .unwrap();
        let n = Config::load(dir.path()).unwrap().network;
        assert_eq!(n.circuit_relay, crate::net::nat::Switch::Off);
        assert_eq!(n.reserve_circuit, crate::net::nat::Switch::On);
        assert_eq!(n.circuit_max_duration, Duration::from_secs(600));
        std::fs::write(&file, "[network]\ncircuit_max_duration = \"30d\"\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("[network] circuit_max_duration must be from 1s to 7d"),
            "{err}"
        );
        assert!(parse_circuit_duration("0s").is_err());
        assert_eq!(parse_circuit_duration("2h"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn upstream_timeouts_are_configured_and_checked() {
        let c = Config::default();
        assert_eq!(c.upstream.first_byte_timeout, Duration::from_secs(300));
        assert_eq!(c.upstream.idle_timeout, Duration::from_secs(60));
        let shown = c.to_toml();
        assert!(
            shown.contains("first_byte_timeout = \"5m\"") && shown.contains("idle_timeout = \"1m\""),
            "{shown}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(
            &file,
            "[upstream]\nfirst_byte_timeout = \"10m\"\nidle_timeout = \"90s\"\n",
        )
        .unwrap();
        let u = Config::load(dir.path()).unwrap().upstream;
        assert_eq!(
            (u.first_byte_timeout, u.idle_timeout),
            (Duration::from_secs(600), Duration::from_secs(90))
        );
        for (setting, value) in [
            ("first_byte_timeout", "500ms"),
            ("first_byte_timeout", "2h"),
            ("idle_timeout", "0s"),
        ] {
            std::fs::write(&file, format!("[upstream]\n{setting} = \"{value}\"\n")).unwrap();
            let err = Config::load(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "[upstream] {setting} must be from 1s to 1h (got {value})"
                )),
                "{err}"
            );
        }
        assert!(parse_upstream_timeout("100ms").is_err());
        assert_eq!(parse_upstream_timeout("15m"), Ok(Duration::from_secs(900)));
    }

    #[test]
    fn upstream_auth_and_extra_headers_are_configured_and_checked() {
        use crate::upstream::AuthStyle;
        let c = Config::default();
        assert_eq!(c.upstream.auth, AuthStyle::Bearer);
        assert!(c.to_toml().contains("auth = \"bearer\""), "{}", c.to_toml());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(
            &file,
            "[upstream]\nkind = \"http\"\nauth = \"x-api-key\"\n\
             [upstream.extra_headers]\nanthropic-version = \"2023-06-01\"\n",
        )
        .unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.upstream.auth, AuthStyle::XApiKey);
        assert_eq!(
            c.upstream
                .extra_headers
                .get("anthropic-version")
                .map(String::as_str),
            Some("2023-06-01")
        );
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c, "{}", c.to_toml());
        std::fs::write(&file, "[upstream]\nauth = \"header:Api-Key\"\n").unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.upstream.auth, AuthStyle::Header("api-key".into()));
        assert!(c.to_toml().contains("auth = \"header:api-key\""));

        let refused = [
            ("auth = \"basic\"", "auth \"basic\" is not known"),
            ("auth = \"header:bad name\"", "not a valid HTTP header name"),
            ("auth = \"header:\"", "not a valid HTTP header name"),
            ("auth = \"header:host\"", "sets that header itself"),
            (
                "extra_headers = { \"bad name\" = \"x\" }",
                "not a valid HTTP header name",
            ),
            (
                "extra_headers = { content-length = \"1\" }",
                "sets that header itself",
            ),
            (
                "extra_headers = { x-a = \"one\\ntwo\" }",
                "cannot be sent in an HTTP header",
            ),
            (
                "extra_headers = { X-A = \"1\", x-a = \"2\" }",
                "is set twice (names are case-insensitive)",
            ),
            (
                "auth = \"x-api-key\"\nextra_headers = { X-Api-Key = \"sk-in-config\" }",
                "is the auth header",
            ),
            (
                "extra_headers = { Authorization = \"Bearer x\" }",
                "is the auth header",
            ),
        ];
        for (setting, expected) in refused {
            std::fs::write(&file, format!("[upstream]\n{setting}\n")).unwrap();
            let err = Config::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(expected), "{setting}: {err}");
            assert!(!err.contains("sk-in-config"), "{err}");
        }

        let mut u = UpstreamConfig::default();
        u.set_extra_header("Anthropic-Version", "2023-01-01");
        u.set_extra_header("anthropic-version", "2023-06-01");
        assert_eq!(u.extra_headers.len(), 1);
        assert_eq!(
            u.extra_headers.get("anthropic-version").map(String::as_str),
            Some("2023-06-01")
        );
        assert_eq!(u.check(), Ok(()));
    }
}
