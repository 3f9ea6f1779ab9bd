//! The `lendmesh` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ed25519_dalek::SigningKey;
use lendmesh_protocol::attestation::AttestationKey;
use lendmesh_protocol::blind_rsa::{KeySize, SecretKey};
use lendmesh_protocol::group::{
    EpochAnnouncement, Invite, MAX_INVITE_BYTES, PreSharedKey, Roster, RosterEntry, SignedRoster,
};
use lendmesh_protocol::{GroupId, PeerId};
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
    #[command(after_help = "Example:\n  lendmesh group create --name friends --rsa-bits 3072 --epoch-days 7")]
    Create {
        /// The group's name.
        #[arg(long)]
        name: String,
        /// Issuer key size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 3072)]
        rsa_bits: usize,
        /// Epoch length in days.
        #[arg(long, default_value_t = 7)]
        epoch_days: u64,
        /// The admin's own token quota per epoch.
        #[arg(long, default_value_t = 1000)]
        quota: u32,
    },
    /// Add (or renew) a member and write an invite file for them (mode 0600).
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
    /// Remove a member: no more tokens, and its connections are refused.
    #[command(after_help = "Example:\n  lendmesh group remove 12D3KooWAbc...")]
    Remove {
        /// The member's peer id.
        peer_id: String,
    },
    /// Show the group: name, id, epoch, roster.
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
    #[arg(long, value_enum)]
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

/// Re-signs the roster (version + 1) and the current epoch announcement around it.
fn publish_roster(group: &mut GroupState, key: &SigningKey, roster: Roster) -> anyhow::Result<()> {
    let signed: SignedRoster = roster.sign(key)?;
    let mut announcement = group.epoch.announcement.clone();
    announcement.roster = signed.clone();
    group.epoch = announcement.sign(key)?;
    group.roster = signed;
    Ok(())
}

fn cmd_group(home: &Path, config: &Config, cmd: GroupCommand) -> anyhow::Result<()> {
    let (store, key, me) = open_store(home)?;
    if let GroupCommand::Create {
        name,
        rsa_bits,
        epoch_days,
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
        if epoch_days == 0 || epoch_days > 365 {
            bail!("--epoch-days must be between 1 and 365");
        }
        out(format!("generating a {rsa_bits}-bit issuer key…"));
        let group = create_group(&store, &key, &name, size, epoch_days, quota)?;
        let group_id = group.group_id;
        out(format!("created group '{name}' ({})", group_id));
        out(format!("admin and issuer: {me}"));
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
    let require_admin = |g: &GroupState| -> anyhow::Result<()> {
        if g.admin != me {
            bail!("only the group admin ({}) can do this", g.admin.short());
        }
        Ok(())
    };
    match cmd {
        GroupCommand::Create { .. } => unreachable!("handled above"),
        GroupCommand::Invite {
            peer_id,
            quota,
            days,
            out: out_path,
            bootstrap,
        } => {
            require_admin(&group)?;
            let member = parse_peer(&peer_id)?;
            if days == 0 {
                bail!("--days must be at least 1");
            }
            let mut addrs: Vec<String> = bootstrap;
            addrs.extend(config.network.external.iter().cloned());
            let invite = invite_member(&store, &key, &mut group, member, quota, days, addrs)?;
            let addrs = invite.bootstrap.clone();
            let path = out_path.unwrap_or_else(|| PathBuf::from(format!("invite-{}.txt", member.short())));
            home::write_secret(&path, invite.to_file_text().as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            out(format!(
                "added {} (quota {quota}/epoch, {days} days); roster version {}",
                member.short(),
                group.roster().version
            ));
            out(format!(
                "wrote {} (mode 0600): it holds the group's secret keys — hand it over privately",
                path.display()
            ));
            if addrs.is_empty() {
                out(
                    "note: the invite has no bootstrap address; the member must pass --bootstrap to `lendmesh run`",
                );
            }
            out("a running admin node picks the change up at its next start and gossips it to members");
        }
        GroupCommand::Remove { peer_id } => {
            require_admin(&group)?;
            let member = parse_peer(&peer_id)?;
            if member == me {
                bail!("the admin cannot remove itself");
            }
            if group.roster().entry(&member).is_none() {
                bail!("{} is not a current member", member.short());
            }
            let mut roster = group.roster().clone();
            roster.version += 1;
            roster.removed.push(member);
            publish_roster(&mut group, &key, roster)?;
            store.put_group(&group)?;
            out(format!(
                "removed {}; roster version {}",
                member.short(),
                group.roster().version
            ));
        }
        GroupCommand::Show => {
            let a = &group.epoch.announcement;
            out(format!("group:        {} ({})", group.name, group.group_id));
            out(format!(
                "admin:        {}{}",
                group.admin,
                if group.admin == me { " (this node)" } else { "" }
            ));
            out(format!("this node:    {me}"));
            out(format!(
                "group key:    fingerprint {}",
                group.libp2p_psk().fingerprint()
            ));
            out(format!(
                "epoch:        {} (key id {})",
                a.epoch,
                hex::encode(&group.issuer_key()?.key_id()[..8])
            ));
            out(format!(
                "roster:       version {}, {} members",
                group.roster().version,
                group.roster().member_ids().count()
            ));
            let now = now_ms();
            for e in &group.roster().members {
                let status = if group.roster().is_removed(&e.peer) {
                    "removed"
                } else if now >= e.expires_at_ms {
                    "expired"
                } else {
                    "member"
                };
                let days = e.expires_at_ms.saturating_sub(now) / DAY_MS;
                out(format!(
                    "  {}  {status:<8} quota {:>5}/epoch  {days:>4} days left",
                    e.peer, e.quota_per_epoch
                ));
            }
        }
    }
    Ok(())
}

/// Creates a group with this node as admin and issuer; stores the issuer key and the group.
pub fn create_group(
    store: &Store,
    key: &SigningKey,
    name: &str,
    size: KeySize,
    epoch_days: u64,
    quota: u32,
) -> anyhow::Result<GroupState> {
    let me = PeerId::from_public_key(&key.verifying_key());
    let mut rng = rand::rngs::OsRng;
    let now = now_ms();
    let group_id = GroupId::random(&mut rng);
    let issuer_key = SecretKey::generate(size, &mut rng)?;
    let roster = Roster {
        group_id,
        version: 1,
        admin: me,
        members: vec![RosterEntry {
            peer: me,
            quota_per_epoch: quota,
            expires_at_ms: now + 3650 * DAY_MS,
        }],
        removed: vec![],
    };
    let signed_roster = roster.sign(key)?;
    let epoch = EpochAnnouncement {
        group_id,
        epoch: 1,
        starts_at_ms: now,
        ends_at_ms: now + epoch_days * DAY_MS,
        issuer_key_spki: issuer_key.public_key().spki_der().to_vec(),
        roster: signed_roster.clone(),
    }
    .sign(key)?;
    let group = GroupState {
        group_id,
        name: name.to_string(),
        admin: me,
        psk: PreSharedKey::random(&mut rng),
        attestation_key: AttestationKey::random(&mut rng),
        epoch,
        roster: signed_roster,
        bootstrap: vec![],
    };
    store.put_issuer_key(1, &issuer_key)?;
    store.put_group(&group)?;
    Ok(group)
}

/// Adds (or renews) `member` in a new signed roster version and returns its invite; stores the group.
pub fn invite_member(
    store: &Store,
    key: &SigningKey,
    group: &mut GroupState,
    member: PeerId,
    quota: u32,
    days: u64,
    bootstrap: Vec<String>,
) -> anyhow::Result<Invite> {
    let me = PeerId::from_public_key(&key.verifying_key());
    let mut roster = group.roster().clone();
    roster.version += 1;
    roster.removed.retain(|p| p != &member);
    roster.members.retain(|e| e.peer != member);
    roster.members.push(RosterEntry {
        peer: member,
        quota_per_epoch: quota,
        expires_at_ms: now_ms() + days * DAY_MS,
    });
    publish_roster(group, key, roster)?;
    let bootstrap = bootstrap
        .into_iter()
        .map(|a| with_peer_suffix(&a, &me))
        .collect::<anyhow::Result<Vec<_>>>()?;
    store.put_group(group)?;
    Ok(Invite {
        group_id: group.group_id,
        group_name: group.name.clone(),
        admin: me,
        member,
        psk: group.psk.clone(),
        attestation_key: group.attestation_key.clone(),
        epoch: group.epoch.clone(),
        bootstrap,
    })
}

/// Creates a node identity in `home` (or keeps the existing one); returns the store and key.
pub fn init_home(home: &Path) -> anyhow::Result<(Store, SigningKey)> {
    home::ensure_dir(home).with_context(|| format!("cannot create {}", home.display()))?;
    let store = Store::open(home)?;
    let key = store.init_identity(&SigningKey::generate(&mut rand::rngs::OsRng))?;
    Ok((store, key))
}

fn with_peer_suffix(addr: &str, me: &PeerId) -> anyhow::Result<String> {
    let parsed: libp2p::Multiaddr = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("bootstrap address '{addr}' is not a multiaddr: {e}"))?;
    if parsed
        .iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
    {
        Ok(addr.to_string())
    } else {
        Ok(format!("{addr}/p2p/{me}"))
    }
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
        group.epoch_number()
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
