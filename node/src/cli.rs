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

use crate::config::{Config, LogFormat, UpstreamKind, parse_duration};
use crate::group_state::GroupState;
use crate::store::Store;
use crate::{home, now_ms};

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
    Run(RunArgs),
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
    /// Show the group: name, id, epochs, roster. Works on a running node too.
    #[command(after_help = "Example:\n  lendmesh group show")]
    Show,
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
    /// Gateway address (host:port) tools call.
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<String>,
    /// Privacy mode: strict (never borrow without a relay) or best-effort.
    #[arg(long)]
    pub privacy: Option<crate::borrow::PrivacyMode>,
    /// Lender choice: p2c, greedy, uniform or weighted.
    #[arg(long)]
    pub policy: Option<lendmesh_protocol::routing::Policy>,
    /// Units of this member's capacity never lent.
    #[arg(long)]
    pub reserve: Option<u64>,
    /// Discover members on the LAN with mDNS.
    #[arg(long)]
    pub mdns: bool,
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
    /// HTTP upstream: base URL.
    #[arg(long)]
    pub upstream_url: Option<String>,
    /// HTTP upstream: environment variable holding the API key.
    #[arg(long)]
    pub upstream_key_env: Option<String>,
    /// Refill the wallet below this many tokens.
    #[arg(long)]
    pub low_water: Option<u32>,
    /// Tokens per refill request.
    #[arg(long)]
    pub batch: Option<u32>,
    /// Attestation period (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    pub attestation_period: Option<Duration>,
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
        if let Some(p) = self.privacy {
            c.borrow.privacy = p;
        }
        if let Some(p) = self.policy {
            c.borrow.policy = p;
        }
        if let Some(r) = self.reserve {
            c.lender.reserve = r;
        }
        c.network.mdns |= self.mdns;
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
        if let Some(v) = &self.upstream_url {
            c.upstream.url = v.clone();
        }
        if let Some(v) = &self.upstream_key_env {
            c.upstream.key_env = v.clone();
        }
        if let Some(v) = self.low_water {
            c.wallet.low_water = v;
        }
        if let Some(v) = self.batch {
            c.wallet.batch = v;
        }
        if let Some(v) = self.attestation_period {
            c.lender.attestation_period = v;
        }
        c
    }
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
    let key = store
        .identity()?
        .ok_or_else(|| crate::store::StoreError::NotInitialized {
            home: home.to_path_buf(),
        })?;
    let me = PeerId::from_public_key(&key.verifying_key());
    Ok((store, key, me))
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

fn parse_peer(s: &str) -> anyhow::Result<PeerId> {
    s.parse::<PeerId>()
        .map_err(|e| anyhow::anyhow!("'{s}' is not a lendmesh peer id: {e}"))
}

fn cmd_group(home: &Path, config: &Config, cmd: GroupCommand) -> anyhow::Result<()> {
    if !home.join(crate::store::STORE_FILE).exists() {
        bail!(
            "no lendmesh node in {}; run `lendmesh init --home {}` first",
            home.display(),
            home.display()
        );
    }
    match Store::open(home) {
        Ok(store) => cmd_group_offline(store, home, config, cmd),
        // The node is running: administer it through its API (loopback, with its local admin token).
        Err(crate::store::StoreError::InUse { .. }) if !matches!(cmd, GroupCommand::Create { .. }) => {
            cmd_group_live(home, config, cmd)
        }
        Err(e) => Err(e.into()),
    }
}

fn cmd_group_offline(store: Store, home: &Path, config: &Config, cmd: GroupCommand) -> anyhow::Result<()> {
    let key = store
        .identity()?
        .ok_or_else(|| crate::store::StoreError::NotInitialized {
            home: home.to_path_buf(),
        })?;
    let me = PeerId::from_public_key(&key.verifying_key());
    if let GroupCommand::Create {
        name,
        rsa_bits,
        epoch,
        epoch_days,
        grace,
        quota,
    } = cmd
    {
        if let Some(g) = store.group()? {
            bail!(
                "this node already belongs to group '{}' ({}); use another --home for a new group",
                g.name,
                g.group_id.short()
            );
        }
        if name.is_empty() || name.len() > lendmesh_protocol::group::MAX_GROUP_NAME {
            bail!(
                "the group name must be 1 to {} bytes",
                lendmesh_protocol::group::MAX_GROUP_NAME
            );
        }
        let size = KeySize::from_bits(rsa_bits)?;
        let length_ms = match (epoch, epoch_days) {
            (Some(d), _) => d.as_millis() as u64,
            (None, Some(days)) => days.saturating_mul(DAY_MS),
            (None, None) => lendmesh_protocol::epoch::DEFAULT_EPOCH_MS,
        };
        let grace_ms = grace.map_or(lendmesh_protocol::epoch::DEFAULT_GRACE_MS.min(length_ms), |g| {
            g.as_millis() as u64
        });
        crate::admin::check_epoch_settings(length_ms, grace_ms)?;
        out(format!("generating a {rsa_bits}-bit issuer key…"));
        let group = crate::admin::create_group(&store, &key, &name, size, length_ms, grace_ms, quota)?;
        out(format!("created group '{name}' ({})", group.group_id));
        out(format!("admin and issuer: {me}"));
        out(format!(
            "epochs: {} long, tokens accepted for {} after an epoch ends; the next epoch is announced {} ahead",
            human(length_ms),
            human(grace_ms),
            human(lendmesh_protocol::epoch::announce_lead_ms(length_ms))
        ));
        out(format!(
            "group key fingerprint: {}",
            group.libp2p_psk().fingerprint()
        ));
        out("next: `lendmesh group invite PEER_ID --bootstrap /ip4/<this host>/tcp/4001` for each member");
        return Ok(());
    }
    let mut group = store.group()?.ok_or_else(|| {
        anyhow::anyhow!(
            "this node is not in a group: `lendmesh group create --name NAME` or `lendmesh join INVITE`"
        )
    })?;
    match cmd {
        GroupCommand::Create { .. } => unreachable!("handled above"),
        GroupCommand::Invite {
            peer_id,
            quota,
            days,
            out: out_path,
            bootstrap,
        } => {
            let member = parse_peer(&peer_id)?;
            let mut addrs: Vec<String> = bootstrap;
            addrs.extend(config.network.external.iter().cloned());
            let invite = crate::admin::invite_member(&key, &mut group, member, quota, days, addrs)?;
            store.put_group(&group)?;
            write_invite(
                &invite.to_file_text(),
                out_path,
                &member,
                quota,
                days,
                group.roster().version,
                invite.bootstrap.is_empty(),
            )?;
            out("the admin node gossips the new roster to members when it runs");
        }
        GroupCommand::Remove { peer_id, rotate } => {
            let member = parse_peer(&peer_id)?;
            crate::admin::remove_member(&key, &mut group, member)?;
            let rotated = if rotate {
                out("generating the new epoch's issuer key…");
                let secret = crate::admin::generate_epoch_key(&group)?;
                Some(crate::admin::rotate_now(
                    &store,
                    &key,
                    &mut group,
                    &secret,
                    now_ms(),
                )?)
            } else {
                None
            };
            store.put_group(&group)?;
            let _ = store.drop_peer_addrs(&member);
            out(format!(
                "removed {}; roster version {}",
                member.short(),
                group.roster().version
            ));
            if let Some(e) = rotated {
                out(format!(
                    "rotated: epoch {e} starts now; every older token is refused"
                ));
            }
        }
        GroupCommand::Show => {
            let now = now_ms();
            for line in crate::admin::GroupSummary::of(&group, &me, now).render(now) {
                out(line);
            }
        }
    }
    Ok(())
}

/// `lendmesh group invite|remove|show` against the running node.
fn cmd_group_live(home: &Path, config: &Config, cmd: GroupCommand) -> anyhow::Result<()> {
    let (addr, token) = home::read_admin_access(home).map_err(|e| {
        anyhow::anyhow!(
            "the node in {} is running, but its admin access files are unreadable ({e}); run this as the node's user",
            home.display()
        )
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let url = format!("http://{addr}{path}");
        let (token, api_token) = (token.clone(), config.api.token.clone());
        async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?;
            let mut req = client
                .request(method, url)
                .header("x-lendmesh-admin-token", token);
            if let Some(t) = api_token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.map_err(|_| {
                anyhow::anyhow!(
                    "the node's store is in use, but no node answers at http://{addr}; is another lendmesh process using this home?"
                )
            })?;
            let status = resp.status();
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            if !status.is_success() {
                bail!(
                    "{}",
                    v["message"]
                        .as_str()
                        .unwrap_or("the running node refused the request")
                );
            }
            Ok::<serde_json::Value, anyhow::Error>(v)
        }
    };
    match cmd {
        GroupCommand::Create { .. } => unreachable!("create needs a stopped node"),
        GroupCommand::Invite {
            peer_id,
            quota,
            days,
            out: out_path,
            bootstrap,
        } => {
            let member = parse_peer(&peer_id)?;
            let mut addrs: Vec<String> = bootstrap;
            addrs.extend(config.network.external.iter().cloned());
            let body =
                serde_json::json!({"peer_id": peer_id, "quota": quota, "days": days, "bootstrap": addrs});
            let v = rt.block_on(call(reqwest::Method::POST, "/v1/group/invite", Some(body)))?;
            let text = v["invite"].as_str().unwrap_or_default();
            let version = v["roster_version"].as_u64().unwrap_or(0);
            let no_bootstrap = Invite::from_file_text(text)
                .map(|i| i.bootstrap.is_empty())
                .unwrap_or(true);
            write_invite(text, out_path, &member, quota, days, version, no_bootstrap)?;
            out("the running admin node has gossiped the new roster to the group");
        }
        GroupCommand::Remove { peer_id, rotate } => {
            if rotate {
                out("generating the new epoch's issuer key…");
            }
            let body = serde_json::json!({"peer_id": peer_id, "rotate": rotate});
            let v = rt.block_on(call(reqwest::Method::POST, "/v1/group/remove", Some(body)))?;
            out(format!(
                "removed {}; roster version {} (gossiped; its connections are refused)",
                parse_peer(&peer_id)?.short(),
                v["roster_version"]
            ));
            if let Some(e) = v["rotated_to"].as_u64() {
                out(format!(
                    "rotated: epoch {e} starts now; every older token is refused"
                ));
            }
        }
        GroupCommand::Show => {
            let v = rt.block_on(call(reqwest::Method::GET, "/v1/group", None))?;
            let summary: crate::admin::GroupSummary = serde_json::from_value(v)?;
            for line in summary.render(now_ms()) {
                out(line);
            }
        }
    }
    Ok(())
}

fn write_invite(
    text: &str,
    out_path: Option<PathBuf>,
    member: &PeerId,
    quota: u32,
    days: u64,
    roster_version: u64,
    no_bootstrap: bool,
) -> anyhow::Result<()> {
    let path = out_path.unwrap_or_else(|| PathBuf::from(format!("invite-{}.txt", member.short())));
    home::write_secret(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    out(format!(
        "added {} (quota {quota}/epoch, {days} days); roster version {roster_version}",
        member.short()
    ));
    out(format!(
        "wrote {} (mode 0600): it holds the group's secret keys — hand it over privately",
        path.display()
    ));
    if no_bootstrap {
        out("note: the invite has no bootstrap address; the member must pass --bootstrap to `lendmesh run`");
    }
    Ok(())
}

/// `7d`, `20s`, `1h 30m`.
fn human(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Creates a node identity in `home` (or keeps the existing one); returns the store and key.
pub fn init_home(home: &Path) -> anyhow::Result<(Store, SigningKey)> {
    home::ensure_dir(home).with_context(|| format!("cannot create {}", home.display()))?;
    let store = Store::open(home)?;
    let key = store.init_identity(&SigningKey::generate(&mut rand::rngs::OsRng))?;
    Ok((store, key))
}

fn cmd_join(home: &Path, invite_path: &Path) -> anyhow::Result<()> {
    let (store, _key, me) = open_store(home)?;
    let bytes = home::read_limited(invite_path, MAX_INVITE_BYTES as u64)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a text invite file", invite_path.display()))?;
    let invite = Invite::from_file_text(&text)?;
    let group = GroupState::from_invite(&invite, &me)?;
    if let Some(existing) = store.group()? {
        if existing.group_id != group.group_id {
            bail!(
                "this node already belongs to group '{}' ({}); the invite is for '{}' ({}); use another --home",
                existing.name,
                existing.group_id.short(),
                group.name,
                group.group_id.short()
            );
        }
        if existing.admin == me {
            bail!(
                "this node is the admin of '{}'; it does not join its own group",
                existing.name
            );
        }
    }
    store.put_group(&group)?;
    out(format!("joined group '{}' ({})", group.name, group.group_id));
    out(format!("admin: {}", group.admin));
    out(format!(
        "roster version {}, {} members; epoch {}",
        group.roster().version,
        group.roster().member_ids().count(),
        group.epoch_number(now_ms())
    ));
    out(format!(
        "group key fingerprint: {}",
        group.libp2p_psk().fingerprint()
    ));
    out("you can delete the invite file now; run `lendmesh run` to start the node");
    Ok(())
}

fn cmd_inspect(config: &Config, args: &ApiArgs, peers: bool) -> anyhow::Result<()> {
    let addr = args.api.clone().unwrap_or_else(|| config.api.addr.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let get = |path: &'static str| {
        let (addr, token) = (addr.clone(), args.api_token.clone());
        async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?;
            let mut req = client.get(format!("http://{addr}{path}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|_| {
                anyhow::anyhow!(
                    "no lendmesh node is answering at http://{addr} (start one with `lendmesh run`, or pass --api ADDR)"
                )
            })?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                bail!("the node's API needs a token: pass --api-token or set LENDMESH_API_TOKEN");
            }
            Ok::<serde_json::Value, anyhow::Error>(resp.json().await?)
        }
    };
    if peers {
        let v = rt.block_on(get("/v1/peers"))?;
        if args.json {
            out(serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        out(format!(
            "{:<10} {:<8} {:<5} {:<9} {:>8} {:<7} {:>8} {:>6}  {}",
            "PEER", "ROSTER", "CONN", "DIR", "RTT", "BUCKET", "ATT AGE", "SEQ", "AGENT"
        ));
        for p in v["peers"].as_array().cloned().unwrap_or_default() {
            let att = &p["attestation"];
            out(format!(
                "{:<10} {:<8} {:<5} {:<9} {:>8} {:<7} {:>8} {:>6}  {}",
                p["short_id"].as_str().unwrap_or("?"),
                p["roster_status"].as_str().unwrap_or("?"),
                if p["connected"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                },
                p["direction"].as_str().unwrap_or("-"),
                p["rtt_ms"].as_f64().map_or("-".into(), |r| format!("{r:.1}ms")),
                att["bucket"].as_str().unwrap_or("-"),
                att["age_ms"]
                    .as_u64()
                    .map_or("-".into(), |a| format!("{:.1}s", a as f64 / 1000.0)),
                att["seq"].as_u64().map_or("-".into(), |s| s.to_string()),
                p["agent_version"].as_str().unwrap_or("-"),
            ));
        }
    } else {
        let v = rt.block_on(get("/v1/node"))?;
        if args.json {
            out(serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let c = &v["counters"];
        out(format!(
            "node      {} ({})",
            v["short_id"].as_str().unwrap_or("?"),
            v["peer_id"].as_str().unwrap_or("?")
        ));
        out(format!(
            "group     {} ({})",
            v["group"]["name"].as_str().unwrap_or("?"),
            v["group"]["id"].as_str().unwrap_or("?")
        ));
        out(format!(
            "roles     {}",
            v["roles"].as_array().map_or(String::new(), |r| r
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", "))
        ));
        out(format!(
            "epoch     {} (roster version {})",
            v["epoch"], v["roster_version"]
        ));
        out(format!(
            "uptime    {} s, version {}",
            v["uptime_s"],
            v["version"].as_str().unwrap_or("?")
        ));
        out(format!("wallet    {} tokens", v["wallet_balance"]));
        out(format!(
            "headroom  {} ({} upstream)",
            v["headroom_bucket"].as_str().unwrap_or("?"),
            v["upstream"].as_str().unwrap_or("?")
        ));
        out(format!(
            "peers     {} connected; privacy mode {}",
            v["connected_peers"],
            v["privacy_mode"].as_str().unwrap_or("?")
        ));
        out(format!(
            "traffic   served locally {}, borrowed {} (failed {}), lent {} (refused {}), relayed {}",
            c["served_locally"],
            c["borrows_ok"],
            c["borrows_failed"],
            c["lends_served"],
            c["lends_refused"],
            c["relays_ok"]
        ));
        for a in v["listen_addrs"].as_array().cloned().unwrap_or_default() {
            out(format!("listen    {}", a.as_str().unwrap_or("?")));
        }
    }
    Ok(())
}
