//! The `lendmesh` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ed25519_dalek::SigningKey;
use lendmesh_protocol::PeerId;
use lendmesh_protocol::blind_rsa::KeySize;
use lendmesh_protocol::group::{Invite, MAX_INVITE_BYTES};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::{Config, LogFormat, UpstreamKind, parse_duration};
use crate::group::state::GroupState;
use crate::home;
use crate::store::Store;

const DAY_MS: u64 = 86_400_000;

/// lendmesh: pool rate-limited capacity in a small trust group, borrowing without revealing who borrows.
#[derive(Debug, Parser)]
#[command(name = "lendmesh", version, about, long_about = None)]
pub struct Cli {
    /// Node home directory [default: $LENDMESH_HOME, else $XDG_DATA_HOME/lendmesh]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Log format (RUST_LOG filters what is logged).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this node's identity (an ed25519 key) and print its peer id.
    #[command(after_help = "Example:\n  lendmesh init\n  lendmesh init --home /srv/lendmesh")]
    Init,
    /// Create or administer a group (admin).
    #[command(subcommand)]
    Group(GroupCommand),
    /// Join a group with an invite file from its admin.
    #[command(after_help = "Example:\n  lendmesh join invite-3kTq9x.txt")]
    Join {
        /// The invite file.
        invite: PathBuf,
    },
    /// Run the node until ctrl-c or SIGTERM.
    #[command(
        after_help = "Examples:\n  lendmesh run\n  lendmesh run --listen /ip4/0.0.0.0/tcp/4001 \\\n    \
                            --bootstrap /ip4/203.0.113.7/tcp/4001/p2p/12D3KooW...\n  \
                            LLM_KEY=sk-... lendmesh run --upstream http --upstream-url https://api.example.com \
                            --upstream-key-env LLM_KEY"
    )]
    Run(Box<RunArgs>),
    /// Show settings.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show the local node's state (reads its API).
    #[command(
        after_help = "Examples:\n  lendmesh status\n  lendmesh status --json\n  lendmesh status --api 127.0.0.1:9464"
    )]
    Status(ApiArgs),
    /// List the group's peers as the local node sees them (reads its API).
    #[command(after_help = "Examples:\n  lendmesh peers\n  lendmesh peers --json")]
    Peers(ApiArgs),
    /// Manage the keys tools present to this node's gateway (needed beyond loopback).
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Run a whole group on loopback with mock upstreams, send a workload, and show who served what.
    #[command(
        after_help = "Examples:\n  lendmesh demo\n  lendmesh demo --members 7 --requests 200 --seed 3 --keep-running"
    )]
    Demo(crate::demo::DemoArgs),
}

/// `lendmesh group …`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Make this node the admin and issuer of a new group.
    #[command(
        after_help = "Examples:\n  lendmesh group create --name friends\n  lendmesh group create --name friends --rsa-bits 3072 --epoch 7d --grace 24h\n  \
                      lendmesh group create --name test --rsa-bits 2048 --epoch 20s --grace 10s"
    )]
    Create {
        /// The group's name.
        #[arg(long)]
        name: String,
        /// Issuer key size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 3072)]
        rsa_bits: usize,
        /// Epoch length (5s to 366d, e.g. 20s, 12h, 7d, 2w); each epoch has its own issuer key and a fresh quota.
        #[arg(long, value_parser = parse_duration, conflicts_with = "epoch_days")]
        epoch: Option<Duration>,
        /// Epoch length in days (shorthand for --epoch Nd) [default: 7].
        #[arg(long)]
        epoch_days: Option<u64>,
        /// How long after an epoch ends its tokens are still accepted (at most the epoch length)
        /// [default: 24h, or the epoch length if shorter].
        #[arg(long, value_parser = parse_duration)]
        grace: Option<Duration>,
        /// The admin's own token quota per epoch.
        #[arg(long, default_value_t = 1000)]
        quota: u32,
    },
    /// Add (or renew) a member and write an invite file for them (mode 0600). Works on a running admin node too.
    #[command(
        after_help = "Example:\n  lendmesh group invite 12D3KooWAbc... --quota 200 --days 90 --out alice.invite \\\n    \
                            --bootstrap /ip4/203.0.113.7/tcp/4001"
    )]
    Invite {
        /// The member's peer id (they get it from `lendmesh init`).
        peer_id: String,
        /// Tokens per epoch.
        #[arg(long, default_value_t = 200)]
        quota: u32,
        /// Membership length in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Where to write the invite [default: invite-<short id>.txt].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Address(es) at which members reach this admin node (the node's peer id is appended).
        #[arg(long = "bootstrap", value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
    },
    /// Remove a member: no more tokens, and its connections are refused. Works on a running admin node too.
    #[command(
        after_help = "Examples:\n  lendmesh group remove 12D3KooWAbc...\n  lendmesh group remove 12D3KooWAbc... --rotate"
    )]
    Remove {
        /// The member's peer id.
        peer_id: String,
        /// Also start a new epoch now: every outstanding token (the removed member's too) is refused from now on;
        /// members refill under the new epoch's key.
        #[arg(long)]
        rotate: bool,
    },
    /// Start a new epoch now, with the roster as it is: its members become the replicas that claim its tokens
    /// (docs/design.md §7). Run it once the founding members are invited — a group's first epoch otherwise has only
    /// the admin as replica. Every older token is refused from now on. Stop the node first.
    #[command(after_help = "Example:
  lendmesh group rotate")]
    Rotate,
    /// Show the group: name, id, epochs, roster. Works on a running node too.
    #[command(after_help = "Example:\n  lendmesh group show")]
    Show,
}

/// `lendmesh gateway …`
#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Gateway keys, one per device (the keys file, mode 0600; a running node reads it again when it changes).
    #[command(subcommand)]
    Key(GatewayKeyCommand),
}

/// `lendmesh gateway key …`
#[derive(Debug, Subcommand)]
pub enum GatewayKeyCommand {
    /// Make a key for a device and print it once (give it to the tool as its API key).
    #[command(after_help = "Example:\n  lendmesh gateway key add laptop\n  \
                            OPENAI_BASE_URL=http://192.168.1.20:8640/v1 OPENAI_API_KEY=lmk_... my-tool")]
    Add {
        /// The device's name (letters, digits, '.', '_', '-').
        name: String,
    },
    /// List the keys' names (never the keys).
    List,
    /// Remove a device's key: requests with it get 401 from then on, also on a running node.
    #[command(after_help = "Example:\n  lendmesh gateway key remove laptop")]
    Remove {
        /// The device's name.
        name: String,
    },
}

/// `lendmesh config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (no secrets).
    #[command(after_help = "Example:\n  lendmesh config show")]
    Show,
}

/// How `status` and `peers` reach the node.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The node's API address [default: the config's, 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// Bearer token, if the API requires one.
    #[arg(long, env = "LENDMESH_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `lendmesh run` flags; each overrides `config.toml`.
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Listen multiaddr (repeatable).
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Dial this multiaddr at start (repeatable).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// API address (host:port; beyond loopback it needs --api-token).
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// Bearer token every API request must carry (required when the API is not on loopback).
    #[arg(long, env = "LENDMESH_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Gateway address (host:port) tools call; beyond loopback it needs a gateway key.
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<String>,
    /// A key tools must present to the gateway (as their API key), named `cli`; more keys, one per device, go in
    /// the keys file (`lendmesh gateway key add`).
    #[arg(long, env = "LENDMESH_GATEWAY_KEY", hide_env_values = true, value_name = "KEY",
          value_parser = parse_gateway_key)]
    pub gateway_key: Option<crate::http::keys::NamedKey>,
    /// Ask for a gateway key on loopback too.
    #[arg(long)]
    pub require_gateway_key: bool,
    /// Privacy mode: strict (never borrow without a relay) or best-effort.
    #[arg(long)]
    pub privacy: Option<crate::roles::borrower::PrivacyMode>,
    /// Lender choice: p2c, greedy, uniform or weighted.
    #[arg(long)]
    pub policy: Option<lendmesh_protocol::routing::Policy>,
    /// Send borrowed requests with the environment coding tools write into the prompt (working directory, home
    /// paths, platform, shell, OS version); by default it is withheld (`[borrow] redact_environment`).
    #[arg(long)]
    pub keep_environment: bool,
    /// Units of this member's capacity never lent.
    #[arg(long)]
    pub reserve: Option<u64>,
    /// Without a majority of a token's replicas answering: strict (refuse, the token stays unspent) or lenient
    /// (serve, count it for reconciliation) [default: strict].
    #[arg(long, value_enum)]
    pub claims: Option<crate::roles::claimer::ClaimMode>,
    /// Discover members on the LAN with mDNS.
    #[arg(long)]
    pub mdns: bool,
    /// Serve as a circuit relay for members behind NAT: auto (while this node has a confirmed external address),
    /// on or off [default: auto].
    #[arg(long, value_enum)]
    pub circuit_relay: Option<crate::net::nat::Switch>,
    /// Reserve a slot on a member's circuit relay, to be reachable from behind NAT: auto (when AutoNAT finds this
    /// node unreachable), on or off [default: auto].
    #[arg(long, value_enum)]
    pub reserve_circuit: Option<crate::net::nat::Switch>,
    /// Longest connection this node relays (1s to 7d, e.g. 12h) [default: 12h].
    #[arg(long, value_parser = crate::config::parse_circuit_duration)]
    pub circuit_max_duration: Option<Duration>,
    /// Most bytes one connection relayed by this node carries (0: no limit) [default: 1 GiB].
    #[arg(long)]
    pub circuit_max_bytes: Option<u64>,
    /// Which upstream to share.
    #[arg(long, value_enum)]
    pub upstream: Option<UpstreamKind>,
    /// Mock upstream: requests per window.
    #[arg(long)]
    pub mock_capacity: Option<u64>,
    /// Mock upstream: window (e.g. 60s).
    #[arg(long, value_parser = parse_duration)]
    pub mock_window: Option<Duration>,
    /// Mock upstream: latency per call (e.g. 20ms).
    #[arg(long, value_parser = parse_duration)]
    pub mock_latency: Option<Duration>,
    /// Mock upstream: answer as this many server-sent events, the way an LLM API streams (0: one JSON body).
    #[arg(long, value_name = "N")]
    pub mock_stream_chunks: Option<u32>,
    /// Mock upstream: time between two streamed events (e.g. 200ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub mock_chunk_interval: Option<Duration>,
    /// HTTP upstream: base URL.
    #[arg(long)]
    pub upstream_url: Option<String>,
    /// HTTP upstream: environment variable holding the API key.
    #[arg(long)]
    pub upstream_key_env: Option<String>,
    /// HTTP upstream: how the key is sent: bearer (Authorization: Bearer <key>), x-api-key (Anthropic) or
    /// header:<name> (e.g. header:api-key for Azure) [default: bearer].
    #[arg(long, value_name = "STYLE")]
    pub upstream_auth: Option<crate::upstream::AuthStyle>,
    /// HTTP upstream: a fixed header sent with every request, e.g. anthropic-version=2023-06-01 (repeatable; a
    /// caller's header of the same name is replaced).
    #[arg(long = "upstream-header", value_name = "NAME=VALUE", value_parser = crate::upstream::parse_header_flag)]
    pub upstream_headers: Vec<(String, String)>,
    /// The API the upstream speaks: openai-chat, openai-responses, anthropic-messages or any [default: any]; borrows
    /// of another API are not sent to this member.
    #[arg(long, value_name = "API")]
    pub upstream_api: Option<lendmesh_protocol::capability::Api>,
    /// A model the upstream serves (repeatable; a trailing * matches by prefix) [default: any model].
    #[arg(long = "upstream-model", value_name = "MODEL")]
    pub upstream_models: Vec<String>,
    /// Share of each window of the upstream never lent, 0 to 1 [default: 0.3 for http, 0 for mock].
    #[arg(long, value_name = "SHARE")]
    pub keep_share: Option<f64>,
    /// HTTP upstream: how long to wait for the response head (1s to 1h) [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_upstream_timeout)]
    pub upstream_first_byte_timeout: Option<Duration>,
    /// HTTP upstream: longest pause between two chunks of the response body (1s to 1h) [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_upstream_timeout)]
    pub upstream_idle_timeout: Option<Duration>,
    /// Refill the wallet below this many tokens.
    #[arg(long)]
    pub low_water: Option<u32>,
    /// Tokens per refill request.
    #[arg(long)]
    pub batch: Option<u32>,
    /// When to draw tokens: `schedule` (the whole quota of every epoch, at times that do not depend on spending) or
    /// `demand` (below --low-water, as tokens are spent) [default: schedule; `[exposure] issuance`].
    #[arg(long, value_name = "WHEN", value_parser = parse_issuance)]
    pub issuance: Option<lendmesh_protocol::refill::Issuance>,
    /// The lowest headroom bucket attested: `high` (attestations say nothing of headroom), `medium`, `low`, or
    /// `none` (the true bucket) [default: high; `[exposure] attest_floor`].
    #[arg(long, value_name = "BUCKET", value_parser = parse_floor)]
    pub attest_floor: Option<lendmesh_protocol::exposure::Floor>,
    /// Attestation period (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    pub attestation_period: Option<Duration>,
    /// Lend records kept at most (0 keeps none, at most 1000000) [default: 10000].
    #[arg(long, value_name = "N", value_parser = crate::config::parse_lend_records)]
    pub lend_records: Option<u64>,
    /// Lend records older than this are removed (e.g. 30d, 12h) [default: 30d].
    #[arg(long, value_name = "AGE", value_parser = crate::config::parse_lend_records_max_age)]
    pub lend_records_max_age: Option<Duration>,
    /// How long opening a stream to a relay or lender may take before the member is taken as not answering
    /// (100ms to 60s) [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_step_timeout)]
    pub stream_open_timeout: Option<Duration>,
    /// How long a relay may take to acknowledge a request before it is taken as never sent (100ms to 60s)
    /// [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_step_timeout)]
    pub relay_ack_timeout: Option<Duration>,
    /// How long a borrow waits for the lender's first byte (100ms to 1h) [default: 5m30s].
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_answer_timeout)]
    pub first_byte_timeout: Option<Duration>,
    /// How long a streamed answer may pause between pieces (100ms to 1h) [default: 90s].
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_answer_timeout)]
    pub idle_timeout: Option<Duration>,
}

impl RunArgs {
    /// Applies the flags over a config.
    pub fn apply(&self, mut c: Config) -> Config {
        if !self.listen.is_empty() {
            c.network.listen = self.listen.clone();
        }
        c.network.bootstrap.extend(self.bootstrap.iter().cloned());
        if let Some(a) = &self.api {
            c.api.addr = a.clone();
        }
        if let Some(t) = &self.api_token {
            c.api.token = Some(t.clone());
        }
        if let Some(a) = &self.gateway {
            c.gateway.addr = a.clone();
        }
        if let Some(k) = &self.gateway_key {
            c.gateway.keys.push(k.clone());
        }
        c.gateway.require_key |= self.require_gateway_key;
        if let Some(p) = self.privacy {
            c.borrow.privacy = p;
        }
        if let Some(p) = self.policy {
            c.borrow.policy = p;
        }
        if self.keep_environment {
            c.borrow.redact_environment = false;
        }
        if let Some(r) = self.reserve {
            c.lender.reserve = r;
        }
        if let Some(m) = self.claims {
            c.lender.claims = m;
        }
        c.network.mdns |= self.mdns;
        if let Some(v) = self.circuit_relay {
            c.network.circuit_relay = v;
        }
        if let Some(v) = self.reserve_circuit {
            c.network.reserve_circuit = v;
        }
        if let Some(v) = self.circuit_max_duration {
            c.network.circuit_max_duration = v;
        }
        if let Some(v) = self.circuit_max_bytes {
            c.network.circuit_max_bytes = v;
        }
        if let Some(u) = self.upstream {
            c.upstream.kind = u;
        }
        if let Some(v) = self.mock_capacity {
            c.upstream.mock_capacity = v;
        }
        if let Some(v) = self.mock_window {
            c.upstream.mock_window = v;
        }
        if let Some(v) = self.mock_latency {
            c.upstream.mock_latency = v;
        }
        if let Some(v) = self.mock_stream_chunks {
            c.upstream.mock_stream_chunks = v;
        }
        if let Some(v) = self.mock_chunk_interval {
            c.upstream.mock_chunk_interval = v;
        }
        if let Some(v) = &self.upstream_url {
            c.upstream.url = v.clone();
        }
        if let Some(v) = &self.upstream_key_env {
            c.upstream.key_env = v.clone();
        }
        if let Some(api) = self.upstream_api {
            c.upstream.api = api;
        }
        if !self.upstream_models.is_empty() {
            c.upstream.models = self.upstream_models.clone();
        }
        if let Some(k) = self.keep_share {
            c.upstream.keep_share = Some(k);
        }
        if let Some(v) = &self.upstream_auth {
            c.upstream.auth = v.clone();
        }
        for (name, value) in &self.upstream_headers {
            c.upstream.set_extra_header(name, value);
        }
        if let Some(v) = self.upstream_first_byte_timeout {
            c.upstream.first_byte_timeout = v;
        }
        if let Some(v) = self.upstream_idle_timeout {
            c.upstream.idle_timeout = v;
        }
        if let Some(v) = self.low_water {
            c.wallet.low_water = v;
        }
        if let Some(v) = self.batch {
            c.wallet.batch = v;
        }
        if let Some(v) = self.issuance {
            c.exposure.issuance = v;
        }
        if let Some(v) = self.attest_floor {
            c.exposure.attest_floor = v;
        }
        if let Some(v) = self.attestation_period {
            c.lender.attestation_period = v;
        }
        if let Some(v) = self.lend_records {
            c.lender.lend_records = v;
        }
        if let Some(v) = self.lend_records_max_age {
            c.lender.lend_records_max_age = v;
        }
        if let Some(v) = self.stream_open_timeout {
            c.network.stream_open_timeout = v;
        }
        if let Some(v) = self.relay_ack_timeout {
            c.network.relay_ack_timeout = v;
        }
        if let Some(v) = self.first_byte_timeout {
            c.network.first_byte_timeout = v;
        }
        if let Some(v) = self.idle_timeout {
            c.network.idle_timeout = v;
        }
        c
    }
}

fn parse_gateway_key(key: &str) -> Result<crate::http::keys::NamedKey, String> {
    crate::http::keys::NamedKey::new("cli", key.trim())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_cli(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_gateway_key(home: &Path, config: &Config, cmd: GatewayKeyCommand) -> anyhow::Result<()> {
    use crate::http::keys;
    home::ensure_dir(home)?;
    let path = home.join(&config.gateway.keys_file);
    match cmd {
        GatewayKeyCommand::Add { name } => {
            keys::check_name(&name).map_err(anyhow::Error::msg)?;
            let key = keys::add(&path, &name)?;
            out(format!(
                "gateway key {name:?} added to {} (shown once; give it to the tool as its API key):",
                path.display()
            ));
            out(key.secret());
        }
        GatewayKeyCommand::List => {
            let all = keys::load_file(&path)?;
            if all.is_empty() {
                out(format!("no gateway keys in {}", path.display()));
            }
            for k in all {
                out(k.name);
            }
        }
        GatewayKeyCommand::Remove { name } => {
            if !keys::remove(&path, &name)? {
                bail!("{} has no key named {name:?}", path.display());
            }
            out(format!(
                "gateway key {name:?} removed; requests with it get 401 from now on"
            ));
        }
    }
    Ok(())
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn out(text: impl AsRef<str>) {
    let _ = writeln!(std::io::stdout(), "{}", text.as_ref());
}

fn run_cli(cli: Cli) -> anyhow::Result<()> {
    let home = home::resolve(cli.home.as_deref())?;
    let config = Config::load(&home)?;
    let format = cli.log_format.unwrap_or(config.log.format);
    match cli.command {
        Command::Init => {
            init_logging(format, "warn");
            cmd_init(&home)
        }
        Command::Group(g) => {
            init_logging(format, "warn");
            cmd_group(&home, &config, g)
        }
        Command::Join { invite } => {
            init_logging(format, "warn");
            cmd_join(&home, &invite)
        }
        Command::Config(ConfigCommand::Show) => {
            out(format!("# effective configuration (home: {})", home.display()));
            out(config.to_toml());
            Ok(())
        }
        Command::Gateway(GatewayCommand::Key(k)) => cmd_gateway_key(&home, &config, k),
        Command::Status(args) => cmd_inspect(&config, &args, false),
        Command::Peers(args) => cmd_inspect(&config, &args, true),
        Command::Demo(args) => {
            init_logging(format, "warn");
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(crate::demo::run(args))
        }
        Command::Run(args) => {
            init_logging(format, "info,libp2p_gossipsub=warn,libp2p_kad=warn");
            let config = args.apply(config);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let shutdown = CancellationToken::new();
                let signal = shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    signal.cancel();
                });
                crate::node::run(crate::node::RunOptions { home, config }, shutdown).await
            })
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn open_store(home: &Path) -> anyhow::Result<(Store, SigningKey, PeerId)> {
    if !home.join(crate::store::STORE_FILE).exists() {
        bail!(
            "no lendmesh node in {}; run `lendmesh init --home {}` first",
            home.display(),
            home.display()
        );
    }
    let store = Store::open(home)?;
    let (key, me) = identity_of(&store, home)?;
    Ok((store, key, me))
}

/// The node's key and peer id from its store; an uninitialised home says to run `lendmesh init`.
fn identity_of(store: &Store, home: &Path) -> anyhow::Result<(SigningKey, PeerId)> {
    let key = store
        .identity()?
        .ok_or_else(|| crate::store::StoreError::NotInitialized {
            home: home.to_path_buf(),
        })?;
    let me = PeerId::from_public_key(&key.verifying_key());
    Ok((key, me))
}

fn cmd_init(home: &Path) -> anyhow::Result<()> {
    home::ensure_dir(home).with_context(|| format!("cannot create {}", home.display()))?;
    let store = Store::open(home)?;
    let existed = store.identity()?.is_some();
    let key = store.init_identity(&SigningKey::generate(&mut rand::rngs::OsRng))?;
    let me = PeerId::from_public_key(&key.verifying_key());
    if existed {
        out(format!("this node is already initialised in {}", home.display()));
    } else {
        out(format!("initialised a new node in {}", home.display()));
    }
    out(format!("peer id: {me}"));
    Ok(())
}

mod group;
mod inspect;

use group::{cmd_group, cmd_join};
use inspect::cmd_inspect;

/// `--issuance`: `schedule` or `demand`.
fn parse_issuance(s: &str) -> Result<lendmesh_protocol::refill::Issuance, String> {
    use lendmesh_protocol::refill::Issuance;
    match s {
        "schedule" => Ok(Issuance::Schedule),
        "demand" => Ok(Issuance::Demand),
        _ => Err(format!("`{s}`: expected schedule or demand")),
    }
}

/// `--attest-floor`: `none`, `low`, `medium` or `high`.
fn parse_floor(s: &str) -> Result<lendmesh_protocol::exposure::Floor, String> {
    use lendmesh_protocol::exposure::Floor;
    match s {
        "none" => Ok(Floor::None),
        "low" => Ok(Floor::Low),
        "medium" => Ok(Floor::Medium),
        "high" => Ok(Floor::High),
        _ => Err(format!("`{s}`: expected none, low, medium or high")),
    }
}
