//! The chaos harness (issue 15): a real group of `lendmesh` processes on 127.0.0.1, a borrow storm from every
//! gateway, and a seeded schedule of faults — kill -9 and restart, SIGSTOP/SIGCONT, restarts with the clock skewed
//! within and beyond the replay window (libfaketime), and a member removal; the group's epoch switches mid-storm
//! (its epoch lasts as long as the storm, with as long a grace, so both epochs are still held when the run is
//! checked). Afterwards it checks, from the nodes' own stores and APIs:
//!
//! - no member was issued more than its quota in any epoch (the issuer's quota records);
//! - no token was spent twice anywhere in the group (every lender's lend records: served, or claimed and cut
//!   mid-answer);
//! - every token issued is accounted for: in a wallet, in flight, expired, served, or given up with a reason (each
//!   member's ledger, `store::ledger`), none left in flight once the storm is over and the nodes stopped, received ≤
//!   issued ≤ received + pending + dropped batches (which the issuer may have charged), and no lender served more
//!   tokens of an epoch than members sent;
//! - every request the storm sent got a response, every error response a clear error code (JSON `error`), never
//!   `no_capable_lender` (every lender serves the storm's model), and a streamed answer broke off only while a
//!   fault was being injected (one lender streams its answers in chunks, as an LLM does);
//! - every node but a removed one is healthy again (`/health` ok) within [`RECOVERY`] after the faults end.
//!
//! `cargo run -p lendmesh-tests --bin lendmesh-chaos -- --help` runs it by hand over many seeds; `tests/chaos.rs`
//! runs the short mode in `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lendmesh_node::roles::lender::LendOutcome;
use lendmesh_node::store::Store;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{RunningNode, TestGroup, cli};

/// How long every node has to be healthy again once the faults are over.
pub const RECOVERY: Duration = Duration::from_secs(90);
/// How long after a member removal began a stream cut counts as the removal's.
const REMOVAL_SPREAD: Duration = Duration::from_secs(5);
/// How long a storm request may wait for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// libfaketime, for restarts with a skewed clock: `LENDMESH_FAKETIME`, else where Debian's `faketime` package puts
/// it on x86-64.
pub fn faketime() -> PathBuf {
    std::env::var_os("LENDMESH_FAKETIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"))
}

/// One run's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seeds the fault schedule and the storm.
    pub seed: u64,
    /// Members besides the admin.
    pub members: usize,
    /// How long the storm runs.
    pub storm: Duration,
    /// Faults besides one of each kind.
    pub extra_faults: usize,
    /// Each member's quota per epoch.
    pub quota: u32,
    /// Pause between two requests of one storm client.
    pub pace: Duration,
}

impl Config {
    /// The short mode `cargo test` runs: 5 nodes, a 45 s storm, one fault of each kind and 3 more.
    pub fn short(seed: u64) -> Config {
        Config {
            seed,
            members: 4,
            storm: Duration::from_secs(45),
            extra_faults: 3,
            // Not a multiple of the 20-token batch: each epoch's last refill is a short one.
            quota: 290,
            pace: Duration::from_millis(150),
        }
    }
}

/// The kinds of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9, then a restart after a while.
    Kill,
    /// SIGSTOP, then SIGCONT after a while.
    Freeze,
    /// A restart with the clock skewed within the replay window (±60 s), back to the true clock later.
    SkewWithin,
    /// A restart with the clock 15 min ahead (beyond the 5 min window), back to the true clock later.
    SkewBeyond,
    /// `lendmesh group remove` of a member.
    Remove,
}

impl FaultKind {
    fn label(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill -9 + restart",
            FaultKind::Freeze => "SIGSTOP / SIGCONT",
            FaultKind::SkewWithin => "restart, clock skewed within the window",
            FaultKind::SkewBeyond => "restart, clock skewed beyond the window",
            FaultKind::Remove => "member removed",
        }
    }
}

#[derive(Clone, Debug)]
struct Fault {
    at: Duration,
    kind: FaultKind,
    node: usize,
    lasts: Duration,
}

/// What one run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Storm requests sent.
    pub requests: u64,
    /// Answered 2xx.
    pub served: u64,
    /// Error answers by status and code.
    pub failed: BTreeMap<String, u64>,
    /// Requests cut by a fault of the node they were sent to (connection reset by a kill, and the like).
    pub cut_by_fault: u64,
    /// Tokens issued (the issuer's quota records), received, in wallets, in flight, expired, served, given up by
    /// reason, pending (issued, answer not yet received), and lost.
    pub tokens: BTreeMap<String, u64>,
    /// Longest time a node took to be healthy after the faults.
    pub recovery: Duration,
    /// Broken invariants.
    pub violations: Vec<String>,
}

impl Report {
    /// A markdown table of the run.
    pub fn table(&self) -> String {
        let mut out = format!("seed {}\n\n| what | count |\n|---|---:|\n", self.seed);
        for (k, v) in &self.faults {
            out.push_str(&format!("| fault: {k} | {v} |\n"));
        }
        out.push_str(&format!(
            "| requests | {} |\n| served | {} |\n",
            self.requests, self.served
        ));
        for (k, v) in &self.failed {
            out.push_str(&format!("| failed: {k} | {v} |\n"));
        }
        out.push_str(&format!(
            "| cut by a fault of their node | {} |\n",
            self.cut_by_fault
        ));
        for (k, v) in &self.tokens {
            out.push_str(&format!("| tokens {k} | {v} |\n"));
        }
        out.push_str(&format!(
            "| slowest recovery | {:.1} s |\n| violations | {} |\n",
            self.recovery.as_secs_f64(),
            self.violations.len()
        ));
        for v in &self.violations {
            out.push_str(&format!("\nVIOLATION (seed {}): {v}", self.seed));
        }
        out
    }
}

/// A node of the run: its home, its process while it runs, and what the storm needs to reach it.
struct Slot {
    home: PathBuf,
    id: String,
    args: Vec<String>,
    listen: String,
    node: Option<RunningNode>,
    frozen: bool,
    /// Runs with a skewed clock until its fault ends.
    skewed: bool,
    removed: bool,
}

/// What the storm clients read: each node's gateway while it takes requests, and a counter bumped by every fault
/// of the node (a request that fails across a bump was cut by the fault).
struct Shared {
    gateways: Mutex<Vec<Option<String>>>,
    faults: Vec<AtomicU64>,
    /// When the last member removal began (ms since the epoch; 0: none yet).
    removal_ms: AtomicU64,
    stop: AtomicBool,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    served: u64,
    failed: BTreeMap<String, u64>,
    cut: u64,
    violations: Vec<String>,
}

/// Runs one seed. Needs the `lendmesh-e2e` binary (run through cargo) and, for the clock faults, libfaketime.
pub fn run(cfg: &Config) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut report = Report {
        seed: cfg.seed,
        ..Report::default()
    };
    let quota = cfg.quota.to_string();
    // Epoch 1 starts now and ends one storm later: after the nodes' start, within the storm.
    let epoch = format!("{}s", cfg.storm.as_secs().max(5));
    let g = TestGroup::with_args(
        "chaos",
        cfg.members,
        cfg.quota,
        &["--quota", &quota, "--epoch", &epoch, "--grace", &epoch],
        &[],
    );
    let created = lendmesh_node::now_ms();
    let admin_port = crate::free_port();
    let admin_listen = format!("/ip4/127.0.0.1/tcp/{admin_port}");
    let boot = format!("{admin_listen}/p2p/{}", g.admin_id);
    // The admin and the first member borrow everything; the others lend (and serve their own requests).
    let common = [
        "--low-water",
        "20",
        "--batch",
        "20",
        "--lend-records",
        "1000000",
        "--mock-window",
        "1s",
        "--mock-latency",
        "10ms",
    ];
    let mut homes: Vec<(PathBuf, String)> = vec![(g.admin.path().to_path_buf(), g.admin_id.clone())];
    homes.extend(
        g.homes
            .iter()
            .zip(&g.ids)
            .map(|(h, id)| (h.path().to_path_buf(), id.clone())),
    );
    let mut slots: Vec<Slot> = homes
        .into_iter()
        .enumerate()
        .map(|(i, (home, id))| {
            let capacity = if i < 2 { "0" } else { "40" };
            let mut args: Vec<String> = common.iter().map(|s| s.to_string()).collect();
            args.extend(["--mock-capacity".into(), capacity.into()]);
            if i == 2 {
                // One lender answers as a streaming LLM does, in chunks over time.
                args.extend(["--mock-stream-chunks", "8", "--mock-chunk-interval", "50ms"].map(String::from));
            }
            if i > 0 {
                args.extend(["--bootstrap".into(), boot.clone()]);
            }
            let listen = if i == 0 {
                admin_listen.clone()
            } else {
                format!("/ip4/127.0.0.1/tcp/{}", crate::free_port())
            };
            Slot {
                home,
                id,
                args,
                listen,
                node: None,
                frozen: false,
                skewed: false,
                removed: false,
            }
        })
        .collect();
    // Every node at once, the admin among them: the group must come together whatever the order.
    let started: Vec<RunningNode> = std::thread::scope(|s| {
        let handles: Vec<_> = slots.iter().map(|slot| s.spawn(|| start(slot, None))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (slot, node) in slots.iter_mut().zip(started) {
        slot.node = Some(node);
    }
    let n = slots.len();
    if std::env::var_os("LENDMESH_TEST_LOG_DIR").is_some() {
        for (i, slot) in slots.iter().enumerate() {
            eprintln!(
                "chaos seed {}: node {i} ({}) logs to {}.log",
                cfg.seed,
                short(&slot.id),
                slot.home.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
    for slot in &mut slots {
        let node = slot.node.as_mut().unwrap();
        crate::wait_ready(node, n - 1);
    }

    let mut schedule = schedule(cfg, n, &mut rng);
    let shared = Arc::new(Shared {
        gateways: Mutex::new(
            slots
                .iter()
                .map(|s| Some(s.node.as_ref().unwrap().gateway.clone()))
                .collect(),
        ),
        faults: (0..n).map(|_| AtomicU64::new(0)).collect(),
        removal_ms: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients: Vec<_> = (0..n)
        .flat_map(|i| (0..2).map(move |c| (i, c)))
        .map(|(i, c)| {
            let (shared, tally) = (shared.clone(), tally.clone());
            let pace = cfg.pace;
            let seed = cfg.seed ^ ((i as u64) << 8 | c);
            std::thread::spawn(move || storm_client(i, seed, pace, &shared, &tally))
        })
        .collect();

    // The faults, in time order; each one's end (restart, SIGCONT, true clock) is due `lasts` later.
    let began = Instant::now();
    let storm_began_ms = lendmesh_node::now_ms();
    let mut ends: Vec<(Instant, usize, FaultKind)> = Vec::new();
    while began.elapsed() < cfg.storm {
        let now = Instant::now();
        ends.sort_by_key(|e| e.0);
        while ends.first().is_some_and(|e| e.0 <= now) {
            let (_, i, kind) = ends.remove(0);
            end_fault(&mut slots, &shared, i, kind);
        }
        if schedule.first().is_some_and(|f| began + f.at <= now) {
            let mut f = schedule.remove(0);
            match inject(&mut slots, &shared, &f, &mut rng) {
                Injected::No => {
                    // Its node (or the admin, for a group change) is under another fault: a little later.
                    f.at += Duration::from_secs(2);
                    let at = schedule.partition_point(|g| g.at <= f.at);
                    schedule.insert(at, f);
                }
                Injected::Moot => {
                    *report
                        .faults
                        .entry(format!("{} (not injected: its node was removed)", f.kind.label()))
                        .or_default() += 1;
                }
                Injected::Yes(end) => {
                    *report.faults.entry(f.kind.label().to_string()).or_default() += 1;
                    if let Some(end) = end {
                        ends.push((Instant::now() + f.lasts, f.node, end));
                    }
                }
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for f in &schedule {
        *report
            .faults
            .entry(format!("{} (not injected: its node stayed busy)", f.kind.label()))
            .or_default() += 1;
    }
    for (_, i, kind) in ends.drain(..) {
        end_fault(&mut slots, &shared, i, kind);
    }
    shared.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let storm_ended_ms = lendmesh_node::now_ms();
    let switch_ms = created + cfg.storm.as_millis() as u64;
    if (storm_began_ms..storm_ended_ms).contains(&switch_ms) {
        *report
            .faults
            .entry("epoch switch (epoch 2 began)".into())
            .or_default() += 1;
    } else {
        report.violations.push(format!(
            "the epoch did not switch during the storm (the nodes took {} s to start)",
            (storm_began_ms - created) / 1000
        ));
    }

    // Recovery: every node that was not removed is healthy again.
    let since = Instant::now();
    for (i, slot) in slots.iter().enumerate() {
        if slot.removed {
            continue;
        }
        let node = slot.node.as_ref().unwrap();
        let deadline = since + RECOVERY;
        loop {
            let (status, body) = crate::http_get(&node.api, "/health");
            if status == 200 && body["status"] == "ok" {
                report.recovery = report.recovery.max(since.elapsed());
                break;
            }
            if Instant::now() > deadline {
                report.violations.push(format!(
                    "node {i} ({}) not healthy {RECOVERY:?} after the faults: {body}",
                    short(&slot.id)
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Let refills and borrows in flight settle, then stop every node cleanly and read the stores.
    for slot in &mut slots {
        if let Some(node) = slot.node.take()
            && !node.stop()
        {
            report
                .violations
                .push(format!("{} did not exit cleanly on SIGTERM", short(&slot.id)));
        }
    }
    let t = Arc::try_unwrap(tally)
        .map_err(|_| "storm clients still hold the tally")
        .unwrap()
        .into_inner()
        .unwrap();
    report.requests = t.requests;
    report.served = t.served;
    report.failed = t.failed;
    report.cut_by_fault = t.cut;
    report.violations.extend(t.violations);
    check_stores(&slots, cfg.quota, &mut report);
    drop(g);
    report
}

fn short(id: &str) -> String {
    id.chars()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

/// Starts a slot's node, with `skew` (libfaketime's offset, e.g. `+15m`) if given.
fn start(slot: &Slot, skew: Option<&str>) -> RunningNode {
    let args: Vec<&str> = slot.args.iter().map(String::as_str).collect();
    let preload = faketime();
    let envs: Vec<(&str, &str)> = match skew {
        Some(s) => vec![
            ("LD_PRELOAD", preload.to_str().expect("a UTF-8 path")),
            ("FAKETIME", s),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("FAKETIME_NO_CACHE", "1"),
        ],
        None => vec![],
    };
    RunningNode::start_with_env(&slot.home, &slot.listen, &args, &envs)
}

/// One of each kind, then `extra_faults` more, at seeded times in the first 80 % of the storm.
fn schedule(cfg: &Config, n: usize, rng: &mut ChaCha8Rng) -> Vec<Fault> {
    use FaultKind::*;
    let mut kinds = vec![Kill, Freeze, SkewWithin, SkewBeyond, Remove];
    let repeatable = [Kill, Freeze, SkewWithin, SkewBeyond];
    kinds.extend((0..cfg.extra_faults).map(|_| *repeatable.choose(rng).unwrap()));
    let storm = cfg.storm.as_millis() as u64;
    let mut faults: Vec<Fault> = kinds
        .into_iter()
        .map(|kind| Fault {
            at: Duration::from_millis(rng.gen_range(storm / 10..storm * 8 / 10)),
            kind,
            // The removed member is the last one (a lender); any other node takes the rest, the admin included but
            // for a clock beyond the window (an admin announces epochs by its clock: not a fault this harness plays).
            node: match kind {
                Remove => n - 1,
                SkewBeyond => rng.gen_range(1..n - 1),
                _ => rng.gen_range(0..n - 1),
            },
            lasts: Duration::from_millis(rng.gen_range(1_000..storm / 6)),
        })
        .collect();
    faults.sort_by_key(|f| f.at);
    faults
}

fn bump(shared: &Shared, i: usize, gateway: Option<String>) {
    shared.faults[i].fetch_add(1, Ordering::SeqCst);
    shared.gateways.lock().unwrap()[i] = gateway;
}

enum Injected {
    /// Not now: the node is under another fault.
    No,
    /// Never: the node was removed from the group.
    Moot,
    /// Injected; what ends it later, if anything.
    Yes(Option<FaultKind>),
}

/// Injects a fault, unless its node is under another one (down, frozen, skewed) or was removed.
fn inject(slots: &mut [Slot], shared: &Shared, f: &Fault, rng: &mut ChaCha8Rng) -> Injected {
    let i = f.node;
    let busy = |s: &Slot| s.frozen || s.node.is_none();
    if slots[i].removed {
        return Injected::Moot;
    }
    let group_change = f.kind == FaultKind::Remove;
    if (group_change && busy(&slots[0])) || (!group_change && (busy(&slots[i]) || slots[i].skewed)) {
        return Injected::No;
    }
    Injected::Yes(match f.kind {
        FaultKind::Kill => {
            bump(shared, i, None);
            slots[i].node.take().unwrap().kill9();
            Some(FaultKind::Kill)
        }
        FaultKind::Freeze => {
            bump(shared, i, None);
            signal(slots[i].node.as_ref().unwrap().pid(), "-STOP");
            slots[i].frozen = true;
            Some(FaultKind::Freeze)
        }
        FaultKind::SkewWithin | FaultKind::SkewBeyond => {
            let skew = if f.kind == FaultKind::SkewBeyond {
                "+15m".to_string()
            } else {
                format!("{:+}s", rng.gen_range(-60i64..=60))
            };
            bump(shared, i, None);
            slots[i].node.take().unwrap().kill9();
            let node = start(&slots[i], Some(&skew));
            bump(shared, i, Some(node.gateway.clone()));
            slots[i].node = Some(node);
            slots[i].skewed = true;
            Some(FaultKind::Kill)
        }
        FaultKind::Remove => {
            let id = slots[i].id.clone();
            // Under way from the moment the admin is asked: it closes its connections to the member at once.
            shared.removal_ms.store(lendmesh_node::now_ms(), Ordering::SeqCst);
            let (ok, out, err) = cli(&slots[0].home, &["group", "remove", &id]);
            if !ok {
                eprintln!("chaos: member removal refused by the admin's CLI, tried again later: {out}{err}");
                return Injected::No;
            }
            slots[i].removed = true;
            // Its gateway can no longer borrow, nor its tokens be spent: the storm leaves it.
            bump(shared, i, None);
            None
        }
    })
}

/// Ends a fault: restarts a killed (or skewed) node with the true clock, or resumes a frozen one.
fn end_fault(slots: &mut [Slot], shared: &Shared, i: usize, kind: FaultKind) {
    match kind {
        FaultKind::Freeze => {
            signal(slots[i].node.as_ref().unwrap().pid(), "-CONT");
            slots[i].frozen = false;
        }
        _ => {
            if let Some(node) = slots[i].node.take() {
                bump(shared, i, None);
                node.kill9();
            }
            let node = start(&slots[i], None);
            slots[i].node = Some(node);
            slots[i].skewed = false;
        }
    }
    if !slots[i].removed {
        bump(shared, i, Some(slots[i].node.as_ref().unwrap().gateway.clone()));
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status();
}

/// One storm client: requests to node `i`'s gateway, paced, while it takes requests.
fn storm_client(i: usize, seed: u64, pace: Duration, shared: &Shared, tally: &Mutex<Tally>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(pace.mul_f64(rng.gen_range(0.5..1.5)));
        let before = shared.faults[i].load(Ordering::SeqCst);
        let faults_before = all_faults(shared);
        let Some(gateway) = shared.gateways.lock().unwrap()[i].clone() else {
            continue;
        };
        let body = format!(
            "{{\"model\":\"mock\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
            rng.r#gen::<u32>()
        );
        let sent = clock();
        let answer = request(&gateway, "/v1/chat/completions", &body);
        let cut = shared.faults[i].load(Ordering::SeqCst) != before;
        // A removal reaches the other members by gossip: each cuts what runs through the removed member (its
        // relay hops, its lends) when the new roster arrives, shortly after the admin did.
        let removal = shared.removal_ms.load(Ordering::SeqCst);
        let any_fault = all_faults(shared) != faults_before
            || (removal > 0 && lendmesh_node::now_ms() < removal + REMOVAL_SPREAD.as_millis() as u64);
        let mut t = tally.lock().unwrap();
        t.requests += 1;
        match answer {
            Ok((status, _, true)) if (200..300).contains(&status) => t.served += 1,
            // Cut after the head by a fault somewhere (a lender or relay killed or frozen mid-stream): the client
            // sees the stream break, the only way to fail after a 200.
            Ok((status, _, false)) if (200..300).contains(&status) && any_fault => {
                *t.failed.entry(format!("{status} cut mid-stream")).or_default() += 1
            }
            Ok((status, _, false)) if (200..300).contains(&status) => t.violations.push(format!(
                "node {i}: HTTP {status} stream (sent at {sent} UTC) cut while no fault was injected"
            )),
            Ok((status, body, _)) => {
                match serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                {
                    // Every lender's upstream serves the storm's model: "nobody serves it" would tell the tool
                    // to stop retrying a request a lender back from a fault will serve.
                    Some(code) if code == "no_capable_lender" => t.violations.push(format!(
                        "node {i}: a request sent at {sent} UTC was answered {status} {code}, though every lender serves it"
                    )),
                    Some(code) => *t.failed.entry(format!("{status} {code}")).or_default() += 1,
                    None if cut => t.cut += 1,
                    None => t.violations.push(format!(
                        "node {i}: HTTP {status} without an error code: {}",
                        body.chars().take(200).collect::<String>()
                    )),
                }
            }
            Err(_) if cut => t.cut += 1,
            Err(e) => t.violations.push(format!(
                "node {i}: a request sent at {sent} UTC got no answer while the node ran: {e}"
            )),
        }
    }
}

/// The time of day (UTC) as the nodes' logs print it, to find a violation in them.
fn clock() -> String {
    let ms = lendmesh_node::now_ms() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Faults injected so far, over every node.
fn all_faults(shared: &Shared) -> u64 {
    shared.faults.iter().map(|f| f.load(Ordering::SeqCst)).sum()
}

/// A POST to a gateway; (status, body, whether a chunked body ended with its last chunk) or the I/O error
/// (refused, reset, timed out).
fn request(base: &str, path: &str, body: &str) -> std::io::Result<(u16, String, bool)> {
    let hostport = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\ncontent-type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    if resp.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "empty answer",
        ));
    }
    let (status, body) = crate::parse_response(&resp);
    // A streamed answer that fails after its head can only end without its last chunk.
    let head = resp
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let complete = !head.contains("transfer-encoding: chunked") || resp.ends_with("0\r\n\r\n");
    Ok((status, body, complete))
}

/// The checks on the stopped nodes' stores (module doc).
fn check_stores(slots: &[Slot], quota: u32, report: &mut Report) {
    let stores: Vec<Store> = slots.iter().map(|s| Store::open(&s.home).unwrap()).collect();
    let admin = &stores[0];
    let group = admin.group().unwrap().unwrap();
    let epochs: Vec<u32> = group.epochs.iter().map(|i| i.epoch()).collect();
    if epochs.first() != Some(&1) {
        report.violations.push(format!(
            "epoch 1 was retired before the stores were read (epochs held: {epochs:?}): the run took too long to check"
        ));
    }
    let mut tokens: BTreeMap<String, u64> = BTreeMap::new();
    let mut add = |k: &str, n: u64| *tokens.entry(k.to_string()).or_default() += n;
    let mut sent_per_epoch: HashMap<u32, u64> = HashMap::new();
    // Issued per (member, epoch), from the issuer.
    let mut issued: HashMap<(String, u32), u64> = HashMap::new();
    for &e in &epochs {
        for r in admin.quota_records(e).unwrap() {
            if r.used > quota {
                report.violations.push(format!(
                    "{} was issued {} tokens in epoch {e}, over its quota of {quota}",
                    r.peer.short(),
                    r.used
                ));
            }
            issued.insert((r.peer.to_string(), e), u64::from(r.used));
        }
    }
    for (slot, store) in slots.iter().zip(&stores) {
        let who = short(&slot.id);
        let ledger = store.ledger().unwrap();
        let in_flight = store.in_flight().unwrap();
        let mut wallet: HashMap<u32, u64> = HashMap::new();
        for t in store.wallet_tokens().unwrap() {
            *wallet.entry(t.token.input.epoch).or_default() += 1;
        }
        let mut pending: HashMap<u32, u64> = HashMap::new();
        for b in store.pending().unwrap() {
            *pending.entry(b.epoch).or_default() += b.tokens.len() as u64;
        }
        for &e in &epochs {
            let l = ledger.get(&e).cloned().unwrap_or_default();
            let get = |k: &str| l.get(k).copied().unwrap_or(0);
            let sum = |prefix: &str| -> u64 {
                l.iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(_, v)| *v)
                    .sum()
            };
            let (given_up, dropped) = (sum("given_up:"), sum("dropped:"));
            let (received, served, expired) = (get("received"), get("served"), get("expired"));
            let (w, f, p) = (
                wallet.get(&e).copied().unwrap_or(0),
                in_flight.get(&e).copied().unwrap_or(0),
                pending.get(&e).copied().unwrap_or(0),
            );
            let out = get("taken").saturating_sub(get("returned"));
            let iss = issued.get(&(slot.id.clone(), e)).copied().unwrap_or(0);
            add("issued", iss);
            add("received", received);
            add("in wallets", w);
            add("in flight", f);
            add("expired", expired);
            add("served", served);
            add("pending", iss.saturating_sub(received).min(p));
            for (k, v) in l.iter().filter(|(k, _)| k.starts_with("given_up:")) {
                add(&k.replace("given_up:", "given up: "), *v);
            }
            // A dropped batch may or may not have been charged: counted where it was (at most what is missing).
            let missing = iss.saturating_sub(received + p);
            for (k, v) in l.iter().filter(|(k, _)| k.starts_with("dropped:")) {
                add(&k.replace("dropped:", "batch dropped, maybe charged: "), *v);
            }
            *sent_per_epoch.entry(e).or_default() += out;
            let lost = missing.saturating_sub(dropped);
            add("lost", lost);
            if lost > 0 {
                report.violations.push(format!(
                    "{who} epoch {e}: issued {iss}, received {received}, {p} pending, {dropped} in dropped \
                     batches: {lost} lost in issuance"
                ));
            }
            if received > iss {
                report.violations.push(format!(
                    "{who} epoch {e}: received {received}, more than the {iss} issued"
                ));
            }
            // The storm was over and every node stopped cleanly: no borrow was running, so none holds a token.
            if f > 0 {
                report.violations.push(format!(
                    "{who} epoch {e}: {f} tokens still in flight after every borrow ended and the node stopped"
                ));
            }
            let balances = [
                (
                    received,
                    w + out + expired,
                    format!("received {received} ≠ wallet {w} + sent {out} + expired {expired}"),
                ),
                (
                    out,
                    f + served + given_up,
                    format!("sent {out} ≠ in flight {f} + served {served} + given up {given_up}"),
                ),
            ];
            for (have, parts, what) in balances {
                if have != parts {
                    report.violations.push(format!("{who} epoch {e}: {what}"));
                    add("lost", have.abs_diff(parts));
                }
            }
        }
    }
    // Spent at most once anywhere — served, or claimed and then cut (the tool went away, the upstream failed
    // mid-answer): the claim stays — and no lender spent more of an epoch's tokens than members sent.
    let mut spent_at: HashMap<String, usize> = HashMap::new();
    let mut served = 0u64;
    let mut lent_per_epoch: HashMap<u32, u64> = HashMap::new();
    for (i, store) in stores.iter().enumerate() {
        let mut before = None;
        loop {
            let page = store.lends_page(before, 1000).unwrap();
            for l in &page.lends {
                if !LendOutcome::CLAIM_KEPT.contains(&l.outcome.as_str()) {
                    continue;
                }
                served += u64::from(l.outcome == "served");
                *lent_per_epoch.entry(l.epoch).or_default() += 1;
                if let Some(j) = spent_at.insert(l.token_hash.clone(), i) {
                    report.violations.push(format!(
                        "token {} spent twice: by {} and by {}",
                        &l.token_hash[..16],
                        short(&slots[j].id),
                        short(&slots[i].id)
                    ));
                }
            }
            match page.next {
                Some(c) => before = Some(c),
                None => break,
            }
        }
    }
    add("lent (lenders' served records)", served);
    add(
        "lent, cut mid-answer (lenders' cancelled and upstream_failed records)",
        spent_at.len() as u64 - served,
    );
    for (e, lent) in lent_per_epoch {
        let sent = sent_per_epoch.get(&e).copied().unwrap_or(0);
        if lent > sent {
            report.violations.push(format!(
                "epoch {e}: lenders spent {lent} tokens, members sent only {sent}"
            ));
        }
    }
    report.tokens = tokens;
}
