//! `lendmesh-sim`: run a scenario (several seeds) or compare routing policies, writing report.md, report.json and
//! SVG charts.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lendmesh_protocol::routing::Policy;
use lendmesh_sim::report::{Report, compare_markdown};
use lendmesh_sim::scenario::{Churn, Claims, ClaimsMode};
use lendmesh_sim::{RunResult, Scenario, charts, run_seed};

#[derive(Parser, Debug)]
#[command(version, about = "Simulate whole lendmesh groups in virtual time")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags that override scenario fields.
#[derive(clap::Args, Debug)]
struct Overrides {
    /// First seed (default: the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of seeds (seed, seed+1, …).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Output directory.
    #[arg(long, default_value = "sim-out")]
    out: PathBuf,
    /// Virtual duration in hours.
    #[arg(long)]
    hours: Option<f64>,
    /// Group size.
    #[arg(long)]
    members: Option<usize>,
    /// Seconds between attestations.
    #[arg(long)]
    attestation_period_s: Option<f64>,
    /// Group-wide claims: off, strict or lenient (adds a `[claims]` table with the node's defaults if the scenario
    /// has none).
    #[arg(long)]
    claims: Option<ClaimsMode>,
    /// Every member goes down and comes back, up this share of the time (sets `[faults.churn] uptime`).
    #[arg(long)]
    uptime: Option<f64>,
    /// Multi-spenders also lie as replicas of their own tokens (sets `[adversaries] multi_spend_as_replica`).
    #[arg(long)]
    multi_spend_as_replica: bool,
    /// Seeds run in parallel (results are identical for any value).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one scenario.
    Run {
        /// Scenario TOML file.
        scenario: PathBuf,
        /// Routing policy (p2c, greedy, uniform, weighted).
        #[arg(long)]
        policy: Option<Policy>,
        #[command(flatten)]
        o: Overrides,
    },
    /// Run one scenario under several exposure policies (issue 13) on the same seeds: linkage against cost, as a
    /// table (report.md) and a chart (frontier.svg).
    Exposure {
        /// Scenario TOML file (its own `[exposure]` table is replaced by each policy's).
        scenario: PathBuf,
        /// Comma-separated policies: levers joined by `+` — exposed, hide, coverN, reserveN, schedule (default: each
        /// lever alone and the combinations that matter). The first is the baseline costs are measured against.
        #[arg(long, value_delimiter = ',')]
        policies: Vec<String>,
        #[command(flatten)]
        o: Overrides,
    },
    /// Redraw frontier.svg from the report.json of an `exposure` run (the rows it holds), next to it.
    Frontier {
        /// An `exposure` run's report.json.
        report: PathBuf,
    },
    /// Run one scenario under several routing policies on the same seeds.
    Compare {
        /// Scenario TOML file.
        scenario: PathBuf,
        /// Comma-separated policies.
        #[arg(long, value_delimiter = ',', default_value = "p2c,greedy,uniform,weighted")]
        policies: Vec<Policy>,
        #[command(flatten)]
        o: Overrides,
    },
}

fn load(path: &Path, o: &Overrides) -> anyhow::Result<Scenario> {
    let mut s = Scenario::from_file(path).with_context(|| format!("loading {}", path.display()))?;
    if let Some(h) = o.hours {
        s.duration_hours = h;
    }
    if let Some(m) = o.members {
        s.members = m;
    }
    if let Some(p) = o.attestation_period_s {
        s.attestation_period_s = p;
    }
    if let Some(mode) = o.claims {
        match &mut s.claims {
            Some(c) => c.mode = mode,
            None => s.claims = Some(Claims::with_mode(mode)),
        }
    }
    if o.multi_spend_as_replica {
        s.adversaries.multi_spend_as_replica = true;
    }
    if let Some(u) = o.uptime {
        match &mut s.faults.churn {
            Some(c) => c.uptime = u,
            None => s.faults.churn = Some(Churn::with_uptime(u)),
        }
    }
    s.validate().context("after applying command-line overrides")?;
    if o.seeds == 0 || o.seeds > 1000 {
        bail!("--seeds must be between 1 and 1000");
    }
    Ok(s)
}

/// Runs the seeds on up to `--jobs` threads (each seed is deterministic on its own, so results do not depend on
/// the thread count), with one progress line over all seeds.
fn run_all(s: &Scenario, o: &Overrides, label: &str) -> Report {
    let first = o.seed.unwrap_or(s.seed);
    let seeds: Vec<u64> = (0..o.seeds).map(|k| first + k).collect();
    let jobs = o.jobs.clamp(1, seeds.len().max(1));
    let done: Vec<AtomicU64> = seeds.iter().map(|_| AtomicU64::new(0)).collect();
    let printed = AtomicU64::new(u64::MAX);
    let next = AtomicUsize::new(0);
    let mut runs: Vec<Option<RunResult>> = Vec::new();
    runs.resize_with(seeds.len(), || None);
    let results = Mutex::new(runs);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(k) else { break };
                    let mut progress = |f: f64| {
                        done[k].store((f * 1000.0) as u64, Ordering::Relaxed);
                        let total: u64 = done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
                        let pct = total / (10 * done.len() as u64);
                        if !o.quiet && printed.swap(pct, Ordering::Relaxed) != pct {
                            let bar = "#".repeat((pct / 5) as usize);
                            let mut err = std::io::stderr();
                            let _ = write!(err, "\r{label}: {} seed(s) [{bar:<20}] {pct:>3}%", done.len());
                            let _ = err.flush();
                        }
                    };
                    let r = run_seed(s, seed, &mut progress);
                    let mut guard = results.lock().unwrap_or_else(|p| p.into_inner());
                    guard[k] = Some(r);
                }
            });
        }
    });
    if !o.quiet {
        let _ = writeln!(std::io::stderr());
    }
    let runs: Vec<RunResult> = results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect();
    Report::build(s, &runs)
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Writes a comparison's report.json and report.md, prints the markdown, and fails if any run broke an invariant.
fn write_comparison(out: &Path, json: &str, md: &str, reports: &[Report]) -> anyhow::Result<()> {
    std::fs::write(out.join("report.json"), json)?;
    std::fs::write(out.join("report.md"), md)?;
    writeln!(std::io::stdout(), "{md}")?;
    let violations: usize = reports.iter().map(|r| r.violations.len()).sum();
    if violations > 0 {
        bail!(
            "{violations} invariant violations; see {}",
            out.join("report.md").display()
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout();
    match cli.command {
        Command::Run { scenario, policy, o } => {
            let mut s = load(&scenario, &o)?;
            if let Some(p) = policy {
                s.routing.policy = p;
            }
            let started = Instant::now();
            let report = run_all(&s, &o, s.routing.policy.name());
            let wall = started.elapsed();
            std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
            let files = charts::write_all(&o.out, std::slice::from_ref(&report))?;
            let titles: Vec<(&str, &str)> = files.iter().map(|(t, f)| (t.as_str(), f.as_str())).collect();
            let wall_s = format!("{:.1} s for {} seed(s)", wall.as_secs_f64(), o.seeds);
            std::fs::write(o.out.join("report.json"), report.to_json()?)?;
            std::fs::write(
                o.out.join("report.md"),
                report.to_markdown(&commit(), &wall_s, &titles),
            )?;
            writeln!(
                stdout,
                "{}: served {:.2} % (no sharing {:.2} %, oracle {:.2} %), violations {}, wall {wall_s}; wrote {}",
                s.name,
                report.mean("served") * 100.0,
                report.mean("no_sharing") * 100.0,
                report.mean("oracle") * 100.0,
                report.violations.len(),
                o.out.display()
            )?;
            if let Some(m) = &report.mixed {
                writeln!(
                    stdout,
                    "{}: mixed upstreams: served {:.2} % of the demand some upstream serves, misrouted {}, refused at \
                     once (nobody serves it) {:.1} per run; drain per family in report.md, chart drain.svg",
                    s.name,
                    m.mean("served_servable") * 100.0,
                    m.mean("misrouted"),
                    m.mean("nobody_serves"),
                )?;
            }
            if let Some(c) = &report.claims {
                writeln!(
                    stdout,
                    "{}: {}; borrow latency p50 {:.0} ms, p99 {:.0} ms",
                    s.name,
                    c.summary_line(),
                    report.mean("latency_p50_ms"),
                    report.mean("latency_p99_ms"),
                )?;
            }
            if let Some(v) = report.violations.first() {
                bail!("invariant violated ({} in all): {v}", report.violations.len());
            }
        }
        Command::Exposure {
            scenario,
            policies,
            o,
        } => {
            let base = load(&scenario, &o)?;
            let names: Vec<String> = if policies.is_empty() {
                lendmesh_sim::exposure::DEFAULT_POLICIES
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect()
            } else {
                policies
            };
            let mut variants = Vec::new();
            for name in &names {
                let mut s = base.clone();
                s.exposure = lendmesh_sim::exposure::parse_policy(name).map_err(anyhow::Error::msg)?;
                s.validate().with_context(|| format!("policy `{name}`"))?;
                variants.push(s);
            }
            let started = Instant::now();
            let reports: Vec<Report> = variants
                .iter()
                .zip(&names)
                .map(|(s, name)| run_all(s, &o, name))
                .collect();
            let rows: Vec<lendmesh_sim::exposure::Row> = names
                .iter()
                .zip(&reports)
                .map(|(name, r)| lendmesh_sim::exposure::Row::of(name, r, &reports[0]))
                .collect();
            std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
            let svg = charts::frontier(&base.name, &rows).map_err(anyhow::Error::msg)?;
            std::fs::write(o.out.join("frontier.svg"), svg)?;
            let mut md = lendmesh_sim::exposure::markdown(&base.name, &reports[0].seeds, &rows);
            md.push_str(&format!(
                "\n![Linkage against relay traffic](frontier.svg)\n\nWall time: {:.1} s; commit `{}`.\n",
                started.elapsed().as_secs_f64(),
                commit()
            ));
            let json = serde_json::to_string_pretty(&(&rows, &reports))?;
            write_comparison(&o.out, &json, &md, &reports)?;
        }
        Command::Frontier { report } => {
            let bytes = std::fs::read(&report).with_context(|| format!("reading {}", report.display()))?;
            let (rows, reports): (Vec<lendmesh_sim::exposure::Row>, serde_json::Value) =
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not an exposure run's report.json", report.display()))?;
            let name = reports[0]["scenario"]["name"].as_str().unwrap_or("scenario");
            let svg = charts::frontier(name, &rows).map_err(anyhow::Error::msg)?;
            let out = report.with_file_name("frontier.svg");
            std::fs::write(&out, svg)?;
            writeln!(stdout, "wrote {}", out.display())?;
        }
        Command::Compare {
            scenario,
            policies,
            o,
        } => {
            let base = load(&scenario, &o)?;
            if policies.is_empty() {
                bail!("--policies needs at least one of p2c, greedy, uniform, weighted");
            }
            let started = Instant::now();
            let reports: Vec<Report> = policies
                .iter()
                .map(|&p| {
                    let mut s = base.clone();
                    s.routing.policy = p;
                    run_all(&s, &o, p.name())
                })
                .collect();
            std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
            let files = charts::write_all(&o.out, &reports)?;
            let mut md = compare_markdown(&reports);
            md.push_str(&format!(
                "\nWall time: {:.1} s; commit `{}`.\n\n",
                started.elapsed().as_secs_f64(),
                commit()
            ));
            for (t, f) in &files {
                md.push_str(&format!("### {t}\n\n![{t}]({f})\n\n"));
            }
            let json = serde_json::to_string_pretty(&reports)?;
            write_comparison(&o.out, &json, &md, &reports)?;
        }
    }
    Ok(())
}
