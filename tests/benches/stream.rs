//! Streaming through a relay, with real `lendmesh` processes on loopback: admin A (the relay, no capacity),
//! borrower B (no capacity) and lender L, whose upstream is a scripted local server (`tests/src/stream.rs`).
//!
//! 1. Time to first byte of a streamed answer (a few server-sent events, the first a fixed delay after the head):
//!    from sending the request to reading the first event at the client, through B's gateway (B → A → L → upstream)
//!    and through L's own gateway (L → the same upstream), alternating, in the same run.
//! 2. Throughput of a large streamed body (16 KiB upstream chunks, as fast as the socket takes them), read and
//!    thrown away by the client, borrowed and direct.
//! 3. Peak memory (`VmHWM`) of B, A and L while small bodies stream and while large ones do, the peak reset
//!    (`/proc/<pid>/clear_refs`) before each: flat means it does not grow with the body.
//!
//! `cargo bench -p lendmesh-tests --bench stream` prints markdown tables. `LENDMESH_BENCH_N` (default 200) sets the
//! time-to-first-byte sample per path, `LENDMESH_BENCH_BYTES` the large body (default and most: the largest body a
//! gateway lets through, 8 MiB − 64 KiB; the small one is a sixteenth of it), `LENDMESH_BENCH_REPS` (default 10)
//! the bodies per size and path, `LENDMESH_BENCH_FIRST_EVENT_MS` (default 5) the upstream's delay before its first
//! event, `LENDMESH_BENCH_LOG` the nodes' `RUST_LOG` (default `info`).
//!
//! A body that does not end cleanly (cut short, or nothing for [`STALL`]) is counted in the table, not measured;
//! stderr then says where its bytes stopped (the upstream's record, the loopback sockets' queues, each node's memory,
//! the nodes' logs saved to files). A failed time-to-first-byte answer, or a mesh that does not come up, panics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::path::Path;
use std::time::{Duration, Instant};

use lendmesh_tests::stream::{BulkPattern, Pace, Script, ScriptedUpstream, StreamingResponse, bulk_path};
use lendmesh_tests::*;

/// The largest `[gateway] body_limit` a node accepts (node.rs refuses more: the wire's limit for an HTTP message
/// less 64 KiB). It caps every streamed body through a gateway, own upstream or borrowed.
const GATEWAY_CEILING: u64 = (lendmesh_protocol::wire::MAX_HTTP_MESSAGE - 64 * 1024) as u64;
/// Upstream chunk size for the bulk bodies.
const CHUNK: usize = 16 * 1024;
/// Events per time-to-first-byte answer.
const EVENTS: usize = 5;
/// Unmeasured answers per path before the time-to-first-byte samples.
const WARMUP: u64 = 5;
/// Unmeasured bodies per path and size before the throughput samples.
const BULK_WARMUP: u64 = 2;
/// Every wait on a node or a streamed answer.
const WAIT: Duration = Duration::from_secs(60);
/// A bulk body that sends nothing for this long has stalled (at 100 MB/s the largest takes a tenth of a second).
const STALL: Duration = Duration::from_secs(20);
const CHAT: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Appends `toml` to the node's `config.toml` (settings that have no command-line flag).
fn configure(home: &Path, toml: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("config.toml"))
        .expect("write config.toml");
    f.write_all(toml.as_bytes()).expect("write config.toml");
}

/// A `VmHWM:` or `VmRSS:` line of `/proc/<pid>/status`, in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User and system CPU time of a process so far, in seconds (`/proc/<pid>/stat`, at 100 ticks a second).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

/// Sets the peak RSS back to the current RSS (Linux ≥ 4.0); false when the kernel refuses.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Admin A (relay, no capacity), borrower B (no capacity, `tokens` tokens up front), lender L (HTTP upstream `url`,
/// a budget no run reaches); all connected, B holding its tokens and L's attestation.
struct Mesh {
    _g: TestGroup,
    upstream: ScriptedUpstream,
    pattern: BulkPattern,
    a: RunningNode,
    b: RunningNode,
    l: RunningNode,
}

fn mesh(upstream: ScriptedUpstream, tokens: u32) -> Mesh {
    let url = upstream.url.clone();
    // The quota is exactly the tokens the run spends and B refills up to it at start: the issuer's RSA signing is
    // done before anything is measured (a spent quota is not asked for again).
    let g = TestGroup::new("stream-bench", 2, tokens);
    let limit = format!("[gateway]\nbody_limit = {GATEWAY_CEILING}\n");
    configure(g.homes[0].path(), &limit);
    configure(
        g.homes[1].path(),
        &format!("{limit}[upstream]\nbudget_per_window = 1000000000\n"),
    );
    let fast = ["--attestation-period", "1s"];
    let none = [&fast[..], &["--mock-capacity", "0"]].concat();
    let log = std::env::var("LENDMESH_BENCH_LOG").unwrap_or_else(|_| "info".into());
    let start = |home: &Path, args: &[&str]| {
        RunningNode::start_with_env(home, "/ip4/127.0.0.1/tcp/0", args, &[("RUST_LOG", &log)])
    };
    let mut a = start(g.admin.path(), &none);
    let boot = ["--bootstrap".to_string(), a.p2p_addr.clone()];
    let refill = [
        "--low-water".to_string(),
        tokens.to_string(),
        "--batch".into(),
        "64".into(),
    ];
    let b_args = [strs(&boot), none.clone(), strs(&refill)].concat();
    let mut b = start(g.homes[0].path(), &b_args);
    let up = ["--upstream", "http", "--upstream-url", &url];
    let l_args = [strs(&boot), fast.to_vec(), up.to_vec()].concat();
    let mut l = start(g.homes[1].path(), &l_args);
    for n in [&mut a, &mut b, &mut l] {
        n.wait_until("2 connected peers", WAIT, |n| connected_peers(n) >= 2);
    }
    b.wait_until(
        &format!("{tokens} tokens and the lender's attestation"),
        WAIT,
        |n| {
            wallet_balance(n) >= u64::from(tokens)
                && n.get("/v1/peers").1["peers"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["attestation"]["bucket"] == "high"))
        },
    );
    Mesh {
        _g: g,
        upstream,
        pattern: BulkPattern::new(64 * 1024),
        a,
        b,
        l,
    }
}

/// Sends `path` to `gateway`; panics with the answer unless it is a 200.
fn send(gateway: &str, path: &str, body: &str) -> StreamingResponse {
    let mut resp = StreamingResponse::send(gateway, "POST", path, body, WAIT);
    if resp.status != 200 {
        let body = resp.text();
        panic!(
            "{gateway}{path} answered {}: {:?} {body}",
            resp.status, resp.headers
        );
    }
    resp
}

/// One streamed chat answer: seconds from sending the request to having its first event; the rest is read to a
/// clean end.
fn ttfb(gateway: &str) -> f64 {
    let started = Instant::now();
    let mut resp = send(gateway, "/v1/chat/completions", CHAT);
    let mut pending = String::new();
    let first = resp.next_events(&mut pending).expect("the first event");
    let took = started.elapsed().as_secs_f64();
    assert!(
        !first.is_empty(),
        "{gateway}: the stream ended before its first event"
    );
    let (_, end) = resp.drain();
    end.unwrap_or_else(|e| panic!("{gateway}: streamed answer cut short: {e}"));
    took
}

impl Mesh {
    /// One bulk body of `bytes`, borrowed (B's gateway) or direct (L's), read and thrown away: seconds from
    /// sending the request to its clean end, or why it did not end cleanly (the details, with where the bytes
    /// stopped, go to stderr).
    fn bulk(&self, borrowed: bool, bytes: u64) -> Result<f64, String> {
        let (path, gateway) = if borrowed {
            ("borrowed", &self.b.gateway)
        } else {
            ("direct", &self.l.gateway)
        };
        let started = Instant::now();
        let mut resp = StreamingResponse::send(gateway, "POST", &bulk_path(bytes, CHUNK), "{}", STALL);
        if resp.status != 200 {
            let body = resp.text();
            return Err(format!("{path}: {} {body}", resp.status));
        }
        // Every byte is checked against what the upstream sent (a memcmp per piece).
        let (got, end) = resp.drain_with(|offset, data| self.pattern.check(offset, data));
        let took = started.elapsed().as_secs_f64();
        match end {
            Ok(()) if got == bytes => Ok(took),
            _ => {
                let why = format!(
                    "{path} {}: {got} of {bytes} bytes in {took:.1} s, then {}",
                    mib(bytes),
                    end.err().unwrap_or_else(|| "a clean end".into())
                );
                eprintln!("FAILED {why}\n{}", self.where_the_bytes_are());
                drop(resp);
                // What the client's leaving does to the nodes (the stream is reset hop by hop).
                for (secs, wait) in [(1, 1), (5, 4)] {
                    std::thread::sleep(Duration::from_secs(wait));
                    eprintln!("{secs} s after the client left: {}", self.memory());
                }
                eprintln!("{}", self.logs());
                Err(why)
            }
        }
    }

    /// Each node's RSS, peak RSS and CPU time so far.
    fn memory(&self) -> String {
        [("B", &self.b), ("A", &self.a), ("L", &self.l)]
            .iter()
            .map(|(name, n)| {
                format!(
                    "{name} RSS {:.1} MiB (peak {:.1} MiB, CPU {:.2} s)",
                    proc_kib(n.pid(), "VmRSS:") as f64 / 1024.0,
                    proc_kib(n.pid(), "VmHWM:") as f64 / 1024.0,
                    cpu_seconds(n.pid())
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where the bytes of a failed body are: each node's memory, the upstream's last call, and the queues of the
    /// loopback sockets of the upstream, the nodes and this client.
    fn where_the_bytes_are(&self) -> String {
        let r = self.upstream.record();
        let call = r.calls.len().saturating_sub(1);
        let mut out = format!(
            "{}\nthe upstream's last call ({call}): {} chunks written, completed {}, dropped {}\n",
            self.memory(),
            r.sent.get(call).copied().unwrap_or(0),
            r.completed.contains(&call),
            r.dropped.contains(&call)
        );
        for (name, n) in [("B", &self.b), ("A", &self.a), ("L", &self.l)] {
            let metrics = http_get_raw(&n.api, "/metrics", None).1;
            let counts: Vec<&str> = metrics
                .lines()
                .filter(|l| !l.starts_with('#') && (l.contains("stream_errors") || l.contains("cancelled")))
                .filter(|l| l.split_whitespace().count() == 2)
                .collect();
            out.push_str(&format!("{name} metrics: {}\n", counts.join(", ")));
        }
        let port = self.upstream.url.rsplit(':').next().unwrap_or("").to_string();
        let pids = [self.b.pid(), self.a.pid(), self.l.pid(), std::process::id()];
        let names = ["B", "A", "L", "client"];
        if let Ok(o) = std::process::Command::new("ss").arg("-tnp").output() {
            out.push_str(&format!(
                "sockets (ss -tnp: state, receive queue, send queue, local, peer; the upstream is port {port}):\n"
            ));
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let owner = pids.iter().position(|p| line.contains(&format!("pid={p},")));
                if owner.is_some() || line.contains(&format!(":{port} ")) {
                    let who = owner.map_or("upstream", |i| names[i]);
                    let cols: Vec<&str> = line.split_whitespace().take(5).collect();
                    out.push_str(&format!("  {who}: {}\n", cols.join(" ")));
                }
            }
        }
        out
    }

    /// The nodes' logs saved to files, with their warnings, errors and panics.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, n) in [("B", &self.b), ("A", &self.a), ("L", &self.l)] {
            let log = n.plain_log();
            let file =
                std::env::temp_dir().join(format!("lendmesh-bench-stream-{}-{name}.log", std::process::id()));
            let saved = match std::fs::write(&file, &log) {
                Ok(()) => format!("log in {}", file.display()),
                Err(e) => format!("log not saved: {e}"),
            };
            out.push_str(&format!("{name} ({saved}):\n"));
            let mut lines = log.lines();
            while let Some(l) = lines.next() {
                if l.contains("WARN") || l.contains("ERROR") {
                    out.push_str(&format!("  {l}\n"));
                } else if l.contains("panicked at") {
                    // The panic's message is on the next line.
                    out.push_str(&format!("  {l} {}\n", lines.next().unwrap_or("")));
                }
            }
        }
        out
    }
}

/// Peak memory of each node (KiB) while `run` streams; the peaks are reset first.
fn peaks<T>(nodes: &[&RunningNode], run: impl FnOnce() -> T) -> (Vec<u64>, T) {
    for n in nodes {
        assert!(
            reset_peak(n.pid()),
            "cannot reset the peak RSS of pid {} (/proc/<pid>/clear_refs)",
            n.pid()
        );
    }
    let out = run();
    (nodes.iter().map(|n| proc_kib(n.pid(), "VmHWM:")).collect(), out)
}

/// Throughput samples of one path (MB/s, 10^6 bytes), the bodies tried (warm-ups too) and those that failed.
#[derive(Debug, Default)]
struct Samples {
    ok: Vec<f64>,
    tried: usize,
    failed: Vec<String>,
}

impl Samples {
    /// Counts a body; a measured one that ended cleanly is a sample.
    fn add(&mut self, bytes: u64, measured: bool, result: Result<f64, String>) {
        self.tried += 1;
        match result {
            Ok(secs) if measured => self.ok.push(bytes as f64 / secs / 1e6),
            Ok(_) => {}
            Err(why) => self.failed.push(why),
        }
    }

    /// The median, and how many of how many failed if any did.
    fn cell(&self) -> String {
        let mut v = self.ok.clone();
        v.sort_by(f64::total_cmp);
        let median = if v.is_empty() {
            "—".to_string()
        } else {
            format!("{:.0} MB/s", pct(&v, 0.5))
        };
        match self.failed.len() {
            0 => median,
            k => format!("{median} ({k} of {} bodies failed)", self.tried),
        }
    }

    fn median(&self) -> Option<f64> {
        let mut v = self.ok.clone();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| pct(&v, 0.5))
    }
}

/// `reps` bodies of `bytes` per path, borrowed and direct alternating, after two unmeasured ones each (their
/// failures count).
fn throughput(m: &Mesh, bytes: u64, reps: u64) -> (Samples, Samples) {
    let (mut borrowed, mut direct) = (Samples::default(), Samples::default());
    for i in 0..BULK_WARMUP + reps {
        let measured = i >= BULK_WARMUP;
        borrowed.add(bytes, measured, m.bulk(true, bytes));
        direct.add(bytes, measured, m.bulk(false, bytes));
    }
    (borrowed, direct)
}

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1024.0 * 1024.0);
    if m >= 1.0 {
        format!("{m:.2} MiB")
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

fn main() {
    let bin = Path::new(env!("CARGO_BIN_EXE_lendmesh-e2e"));
    assert!(
        bin.exists(),
        "{} is missing: run through `cargo bench -p lendmesh-tests --bench stream`",
        bin.display()
    );
    let run_started = Instant::now();
    let n = env("LENDMESH_BENCH_N", 200).max(1);
    let reps = env("LENDMESH_BENCH_REPS", 10).max(1);
    let first_event = Duration::from_millis(env("LENDMESH_BENCH_FIRST_EVENT_MS", 5));
    let asked = env("LENDMESH_BENCH_BYTES", GATEWAY_CEILING);
    if asked > GATEWAY_CEILING {
        eprintln!(
            "LENDMESH_BENCH_BYTES={asked} is over the largest body a gateway lets through ({GATEWAY_CEILING} bytes: \
             [gateway] body_limit is at most 8 MiB - 64 KiB); using {GATEWAY_CEILING}"
        );
    }
    let large = asked.clamp(16 * 1024, GATEWAY_CEILING);
    let small = (large / 16).max(CHUNK as u64);
    // Borrowed requests: warm-ups and samples of every phase, and one over the ceiling.
    let tokens = WARMUP + n + 2 * (BULK_WARMUP + reps) + 1;
    let tokens = u32::try_from(tokens).expect("LENDMESH_BENCH_N fits a quota");

    let upstream = ScriptedUpstream::start(Script {
        events: EVENTS,
        pace: Pace::FirstAfter(first_event),
        head_delay: Duration::ZERO,
        headers: vec![],
    });
    eprintln!("starting admin/relay A, borrower B ({tokens} tokens), lender L …");
    let m = mesh(upstream, tokens);
    let at = || run_started.elapsed().as_secs_f64();
    eprintln!("ready at {:.1} s", at());

    // 1. Time to first byte, alternating so both paths see the same noise.
    for _ in 0..WARMUP {
        ttfb(&m.b.gateway);
        ttfb(&m.l.gateway);
    }
    let (mut borrowed, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..n {
        borrowed.push(ttfb(&m.b.gateway) * 1e3);
        direct.push(ttfb(&m.l.gateway) * 1e3);
    }
    borrowed.sort_by(f64::total_cmp);
    direct.sort_by(f64::total_cmp);
    eprintln!("time to first byte measured ({n} each) at {:.1} s", at());

    // 2 and 3. Throughput and peak memory, small bodies then large ones.
    let nodes = [&m.b, &m.a, &m.l];
    let at_rest: Vec<u64> = nodes.iter().map(|n| proc_kib(n.pid(), "VmRSS:")).collect();
    let (small_peak, (small_b, small_d)) = peaks(&nodes, || throughput(&m, small, reps));
    eprintln!("{} bodies done at {:.1} s", mib(small), at());
    let (large_peak, (large_b, large_d)) = peaks(&nodes, || throughput(&m, large, reps));
    eprintln!("{} bodies done at {:.1} s", mib(large), at());

    // A body over the ceiling: how far it gets.
    let over = GATEWAY_CEILING + 1024 * 1024;
    let mut resp = StreamingResponse::send(&m.b.gateway, "POST", &bulk_path(over, CHUNK), "{}", STALL);
    let (over_got, over_end) = resp.drain();
    drop(resp);

    let elapsed = at();
    let (p50b, p50d) = (pct(&borrowed, 0.5), pct(&direct, 0.5));
    let (p99b, p99d) = (pct(&borrowed, 0.99), pct(&direct, 0.99));
    let ratio = |b: &Samples, d: &Samples| match (b.median(), d.median()) {
        (Some(b), Some(d)) => format!("{:.2}×", b / d),
        _ => "—".into(),
    };
    println!(
        "Streaming on loopback, real processes: borrower B → relay A → lender L → scripted upstream, against L's \
         own gateway → the same upstream, alternating in the same run. A shared 2-core VM: numbers drift by up to \
         2× between runs; treat them as indicative.\n"
    );
    println!("| measure | direct (L's own gateway) | borrowed (B → relay → L) | borrowed − direct |");
    println!("|---------|-------------------------:|-------------------------:|------------------:|");
    println!(
        "| time to first byte, p50 ({n} answers of {EVENTS} events, first after {} ms) | {p50d:.2} ms | \
         {p50b:.2} ms | {:.2} ms |",
        first_event.as_millis(),
        p50b - p50d
    );
    println!(
        "| time to first byte, p99 | {p99d:.2} ms | {p99b:.2} ms | {:.2} ms |",
        p99b - p99d
    );
    for (size, b, d) in [(large, &large_b, &large_d), (small, &small_b, &small_d)] {
        println!(
            "| throughput, {} body (median of {reps}) | {} | {} | {} of direct |",
            mib(size),
            d.cell(),
            b.cell(),
            ratio(b, d)
        );
    }
    println!();
    println!(
        "| node | RSS at rest | peak RSS, {} bodies | peak RSS, {} bodies | large / small |",
        mib(small),
        mib(large)
    );
    println!("|------|------------:|------------:|------------:|------:|");
    for (i, name) in ["borrower B", "relay A", "lender L (lends and serves direct)"]
        .iter()
        .enumerate()
    {
        println!(
            "| {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2}× |",
            at_rest[i] as f64 / 1024.0,
            small_peak[i] as f64 / 1024.0,
            large_peak[i] as f64 / 1024.0,
            large_peak[i] as f64 / small_peak[i] as f64
        );
    }
    println!();
    println!(
        "Throughput is body bytes (10^6 per MB) over the time from sending the request to the body's clean end, \
         upstream chunks of {} KiB, the client checking every byte as it reads into one 64 KiB buffer. Peak RSS is `VmHWM`, reset before \
         each size. A borrowed body of {} (over the gateway's most, {GATEWAY_CEILING} bytes) gave the client \
         {over_got} bytes, then {}.",
        CHUNK / 1024,
        mib(over),
        match over_end {
            Ok(()) => "a clean end".to_string(),
            Err(e) => format!("an error ({e})"),
        }
    );
    let failures: Vec<&String> = [&small_b, &small_d, &large_b, &large_d]
        .iter()
        .flat_map(|s| &s.failed)
        .collect();
    let clean = failures.is_empty();
    if !clean {
        println!("\nBodies that did not end cleanly (details on stderr):");
        for f in failures {
            println!("- {f}");
        }
    }
    println!("\nWhole run: {elapsed:.0} s.");
    // A stream left stuck by a failure may hold a node's shutdown: then the nodes are killed (on drop).
    if clean {
        for node in [m.b, m.l, m.a] {
            assert!(node.stop(), "a node did not stop cleanly");
        }
    }
}
