//! `lendmesh demo`: a whole group on loopback in one process, no configuration and no outside services.
//!
//! It creates N nodes in a temporary directory (the first is the admin), starts them with mock upstreams of small
//! capacity, sends a skewed workload to their gateways so the busiest members run out of their own capacity and
//! borrow, and prints what happened: a table per node and what each lender saw (tokens and requests, the relay's
//! id, never the borrower's). With `--keep-running` it stays up so a person can `curl` the gateways and APIs.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use lendmesh_protocol::blind_rsa::KeySize;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::group::admin::{create_group, invite_member};
use crate::group::state::GroupState;
use crate::node::{RunOptions, StartedNode, start};
use crate::store::init_home;

/// Demo settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Group members (nodes), at least 3 (a borrow needs a lender and a relay besides the borrower).
    #[arg(long, default_value_t = 5)]
    pub members: usize,
    /// Requests in the workload.
    #[arg(long, default_value_t = 60)]
    pub requests: usize,
    /// Seed of the workload (who sends which request).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Each member's mock capacity per minute.
    #[arg(long, default_value_t = 20)]
    pub capacity: u64,
    /// Stay up after the workload (ctrl-c to stop).
    #[arg(long)]
    pub keep_running: bool,
}

fn say(text: impl AsRef<str>) {
    let _ = writeln!(std::io::stdout(), "{}", text.as_ref());
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.members < 3 {
        anyhow::bail!(
            "--members must be at least 3: a borrow needs a lender and a relay besides the borrower"
        );
    }
    if args.members > 20 {
        anyhow::bail!("--members is at most 20 for the demo (each node is a full node in this process)");
    }
    let dir = tempfile::Builder::new().prefix("lendmesh-demo-").tempdir()?;
    say(format!(
        "lendmesh demo: {} members on loopback, {} requests (seed {})",
        args.members, args.requests, args.seed
    ));
    say(format!("homes in {}", dir.path().display()));

    let shutdown = CancellationToken::new();
    let capacity = args.capacity;
    // Each member draws its whole quota at once (constant-rate issuance, the default): enough for every request
    // of the workload, and no more than the admin signs in a moment.
    let quota = u32::try_from(args.requests).unwrap_or(u32::MAX).clamp(20, 1000);
    let nodes = start_group(dir.path(), args.members, quota, shutdown.clone(), |_, config| {
        config.upstream.mock_capacity = capacity;
        config.upstream.mock_window = Duration::from_secs(60);
        config.upstream.mock_latency = Duration::from_millis(5);
        config.wallet.low_water = 10;
        config.wallet.batch = 10;
    })
    .await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    say("waiting for the group to connect, fill wallets and exchange attestations…");
    wait_ready(&client, &nodes, 10).await?;

    // The workload: member i sends with weight 1/(i+1), so the first members run out and borrow.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(args.seed);
    let weights: Vec<f64> = (0..nodes.len()).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let total: f64 = weights.iter().sum();
    let mut failures = 0;
    let mut failure_codes: BTreeMap<String, usize> = BTreeMap::new();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for r in 0..args.requests {
        let mut x = lendmesh_protocol::routing::unit_f64(&mut rng) * total;
        let mut who = 0;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                who = i;
                break;
            }
            x -= w;
        }
        let url = format!("http://{}/v1/chat?request={r}", nodes[who].gateway_addr);
        let resp = client
            .post(&url)
            .body(format!("{{\"prompt\":\"hello {r}\"}}"))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                failures += 1;
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                *failure_codes
                    .entry(body["error"].as_str().unwrap_or("unknown").to_string())
                    .or_default() += 1;
            }
            Err(e) => {
                failures += 1;
                *failure_codes.entry(format!("http: {e}")).or_default() += 1;
            }
        }
        if tty {
            let _ = write!(
                std::io::stderr(),
                "\r  request {}/{}  ({failures} failed)",
                r + 1,
                args.requests
            );
        } else if (r + 1) % 10 == 0 || r + 1 == args.requests {
            let _ = writeln!(
                std::io::stderr(),
                "  request {}/{}  ({failures} failed)",
                r + 1,
                args.requests
            );
        }
    }
    if tty {
        let _ = writeln!(std::io::stderr());
    }

    report(&client, &nodes).await?;
    if failures > 0 {
        say(format!(
            "\n{failures} requests failed: {failure_codes:?} (the group's capacity ran out?); raise --capacity or lower --requests"
        ));
    }
    if args.keep_running {
        say("\nstill running; try: curl -X POST http://<gateway>/v1/chat -d '{}'   (ctrl-c to stop)");
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
    // All at once: a node that stopped first is not redialled by the others while they wait their turn.
    futures::future::join_all(nodes.into_iter().map(StartedNode::join)).await;
    Ok(())
}

/// Creates a group of `members` nodes under `dir` (node 0 is the admin), starts them all in this process on
/// loopback with ephemeral ports, and returns them. `tune` adjusts each node's config.
pub async fn start_group(
    dir: &std::path::Path,
    members: usize,
    quota: u32,
    shutdown: CancellationToken,
    tune: impl Fn(usize, &mut Config),
) -> anyhow::Result<Vec<StartedNode>> {
    let mut stores = Vec::new();
    for i in 0..members {
        let home = dir.join(format!("node{i}"));
        let (store, key) = init_home(&home)?;
        stores.push((home, store, key));
    }
    let (_, admin_store, admin_key) = &stores[0];
    let mut group: GroupState = create_group(
        admin_store,
        admin_key,
        "demo",
        KeySize::Rsa2048,
        lendmesh_protocol::epoch::DEFAULT_EPOCH_MS,
        lendmesh_protocol::epoch::DEFAULT_GRACE_MS,
        quota,
    )?;
    let mut members = Vec::new();
    for (_, _, key) in stores.iter().skip(1) {
        let member = lendmesh_protocol::PeerId::from_public_key(&key.verifying_key());
        invite_member(admin_key, &mut group, member, quota, 1, vec![])?;
        members.push(member);
    }
    // A new epoch with every founding member on its frozen roster: they are the replicas that claim its tokens
    // (docs/design.md §7), as `lendmesh group rotate` does for a real group once its members are invited.
    let secret = crate::group::admin::generate_epoch_key(&group)?;
    crate::group::admin::rotate_now(
        admin_store,
        admin_key,
        &mut group,
        &secret,
        crate::clock::now_ms(),
    )?;
    admin_store.put_group(&group)?;
    for ((_, store, _), member) in stores.iter().skip(1).zip(&members) {
        let invite = invite_member(admin_key, &mut group, *member, quota, 1, vec![])?;
        admin_store.put_group(&group)?;
        store.put_group(&GroupState::from_invite(&invite, member)?)?;
    }
    let homes: Vec<_> = stores.into_iter().map(|(home, _, _)| home).collect();
    let mut nodes: Vec<StartedNode> = Vec::new();
    for (i, home) in homes.iter().enumerate() {
        let mut config = Config::default();
        config.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        if let Some(admin) = nodes.first() {
            config.network.bootstrap = admin.p2p_addrs.iter().map(|a| a.to_string()).collect();
        }
        config.api.addr = "127.0.0.1:0".into();
        config.gateway.addr = "127.0.0.1:0".into();
        config.lender.attestation_period = Duration::from_secs(1);
        tune(i, &mut config);
        let node = start(
            RunOptions {
                home: home.clone(),
                config,
            },
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("starting node {i}"))?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Waits (bounded, 60 s) until every node is connected to all others, holds `min_tokens` and has an attestation
/// from every other node.
pub async fn wait_ready(
    client: &reqwest::Client,
    nodes: &[StartedNode],
    min_tokens: u64,
) -> anyhow::Result<()> {
    let others = nodes.len() - 1;
    for _ in 0..600 {
        let mut ready = true;
        for n in nodes {
            let node = get_json(client, &n.api_addr, "/v1/node").await;
            let peers = get_json(client, &n.api_addr, "/v1/peers").await;
            let attested = peers["peers"]
                .as_array()
                .map_or(0, |p| p.iter().filter(|p| !p["attestation"].is_null()).count());
            ready &= node["connected_peers"].as_u64().unwrap_or(0) as usize >= others
                && node["wallet_balance"].as_u64().unwrap_or(0) >= min_tokens
                && attested >= others;
        }
        if ready {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the group did not become ready within 60 s")
}

/// GET a JSON document from a node's API (Null on any failure).
pub async fn get_json(
    client: &reqwest::Client,
    addr: &std::net::SocketAddr,
    path: &str,
) -> serde_json::Value {
    match client.get(format!("http://{addr}{path}")).send().await {
        Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    }
}

async fn report(client: &reqwest::Client, nodes: &[StartedNode]) -> anyhow::Result<()> {
    say(
        "\n| node | role | served locally | borrowed | lent | relayed | lends refused | borrows failed | gateway | api |",
    );
    say(
        "|------|------|---------------:|---------:|-----:|--------:|--------------:|---------------:|---------|-----|",
    );
    let mut ids = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let v = get_json(client, &n.api_addr, "/v1/node").await;
        let c = &v["counters"];
        let short = n.peer_id.short();
        ids.insert(short.clone(), i);
        say(format!(
            "| {short} | {} | {} | {} | {} | {} | {} | {} | http://{} | http://{} |",
            if i == 0 { "admin" } else { "member" },
            c["served_locally"],
            c["borrows_ok"],
            c["lends_served"],
            c["relays_ok"],
            c["lends_refused"],
            c["borrows_failed"],
            n.gateway_addr,
            n.api_addr
        ));
    }
    say(
        "\nWhat each lender saw (its own records; a lender learns a valid token and the request, and the relay's id):",
    );
    for n in nodes {
        let lends = get_json(client, &n.api_addr, "/v1/lends?limit=1000").await;
        let records = lends["lends"].as_array().cloned().unwrap_or_default();
        let served: Vec<_> = records.iter().filter(|r| r["outcome"] == "served").collect();
        if served.is_empty() {
            continue;
        }
        let mut relays: Vec<String> = served
            .iter()
            .filter_map(|r| r["relay"].as_str().map(String::from))
            .collect();
        relays.sort();
        relays.dedup();
        let tokens: Vec<String> = served
            .iter()
            .take(3)
            .filter_map(|r| r["token_hash"].as_str().map(|h| format!("{}…", &h[..12])))
            .collect();
        let text = serde_json::Value::Array(records.clone()).to_string();
        let named: Vec<&String> = ids
            .keys()
            .filter(|id| text.contains(id.as_str()) && !relays.contains(id))
            .collect();
        say(format!(
            "- {} served {} borrows: tokens {} …; relays {:?}; borrower ids in its records: {}",
            n.peer_id.short(),
            served.len(),
            tokens.join(", "),
            relays,
            if named.is_empty() {
                "none".to_string()
            } else {
                format!("{named:?}")
            }
        ));
    }
    say(
        "\nRelays know who talks to whom (not the content or the token); lenders know the content and that a member",
    );
    say("sent it (not which). See the README's threat model for what this does not cover.");
    Ok(())
}
