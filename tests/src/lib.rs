//! lendmesh-tests: helpers to drive real `lendmesh` processes on loopback, only through the CLI.
//!
//! Every wait is bounded: helpers poll a log line or an HTTP endpoint until a deadline and fail with the
//! process's log when it passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

pub mod chaos;
pub mod fuzz;
pub mod linker;
pub mod netns;
pub mod rogue;
pub mod spend;
pub mod stream;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The CLI under test: the `lendmesh-e2e` binary cargo builds next to this package's test executables
/// (`target/<profile>/lendmesh-e2e`, the tests being in `target/<profile>/deps/`).
pub fn bin() -> PathBuf {
    sibling_bin("lendmesh-e2e")
}

/// A binary of this package, built by cargo next to the test executables (`target/<profile>/`, the tests being in
/// its `deps/`), or next to the running binary (a binary of this package, such as `lendmesh-chaos`).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let beside = exe.parent().map(|d| d.join(&file));
    let above = exe.parent().and_then(Path::parent).map(|d| d.join(&file));
    let bin = [beside, above].into_iter().flatten().find(|b| b.exists());
    bin.unwrap_or_else(|| {
        panic!(
            "{file} is missing beside {}: build it through cargo",
            exe.display()
        )
    })
}

/// Runs a CLI command to completion (30 s at most); returns (success, stdout, stderr).
pub fn cli(home: &Path, args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("LENDMESH_HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lendmesh");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.success(), out, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`lendmesh {}` did not finish within 60 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With `LENDMESH_TEST_LOG_DIR` set, every node's log is also appended to `<dir>/<name of its home>.log`, across
/// restarts: a test that fails on a long run leaves the logs behind it to read.
fn log_copy(home: &Path) -> Option<std::fs::File> {
    let dir = PathBuf::from(std::env::var_os("LENDMESH_TEST_LOG_DIR")?);
    std::fs::create_dir_all(&dir).ok()?;
    let name = home.file_name()?.to_string_lossy().into_owned();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .ok()
}

/// Runs a CLI command that must succeed; returns stdout.
pub fn cli_ok(home: &Path, args: &[&str]) -> String {
    let (ok, out, err) = cli(home, args);
    assert!(ok, "`lendmesh {}` failed:\n{out}\n{err}", args.join(" "));
    out
}

/// `lendmesh init`; returns the peer id.
pub fn init(home: &Path) -> String {
    let out = cli_ok(home, &["init"]);
    out.lines()
        .find_map(|l| l.strip_prefix("peer id: "))
        .expect("peer id line")
        .trim()
        .to_string()
}

/// A running `lendmesh run` process.
#[derive(Debug)]
pub struct RunningNode {
    /// Its home.
    pub home: PathBuf,
    child: Child,
    log: Arc<Mutex<String>>,
    /// Its p2p address (`/ip4/127.0.0.1/tcp/N/p2p/ID`).
    pub p2p_addr: String,
    /// Its API base URL.
    pub api: String,
    /// Its gateway base URL.
    pub gateway: String,
    /// The network namespace it runs in (its API and gateway are on that namespace's loopback), if not the test's.
    pub netns: Option<String>,
}

impl RunningNode {
    /// Starts `lendmesh run` on ephemeral loopback ports with `extra` flags and waits until it listens.
    pub fn start(home: &Path, extra: &[&str]) -> RunningNode {
        Self::start_on(home, "/ip4/127.0.0.1/tcp/0", extra)
    }

    /// Like [`RunningNode::start`] with a given listen address. The API and (unless `extra` names one) the
    /// gateway get ephemeral ports, so tests never collide with each other or with a real node.
    pub fn start_on(home: &Path, listen: &str, extra: &[&str]) -> RunningNode {
        Self::start_with_env(home, listen, extra, &[])
    }

    /// Like [`RunningNode::start_on`] with extra environment variables for the process. Nodes log at `info`, or
    /// with the filter in `LENDMESH_TEST_LOG` (e.g. `info,lendmesh_node::roles::claimer=debug`) when it is set.
    pub fn start_with_env(home: &Path, listen: &str, extra: &[&str], envs: &[(&str, &str)]) -> RunningNode {
        Self::spawn(None, home, listen, extra, envs)
    }

    /// Like [`RunningNode::start_on`], inside network namespace `ns` (`ip netns exec`).
    pub fn start_in(ns: &str, home: &Path, listen: &str, extra: &[&str]) -> RunningNode {
        Self::spawn(Some(ns), home, listen, extra, &[])
    }

    fn spawn(
        ns: Option<&str>,
        home: &Path,
        listen: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> RunningNode {
        let gateway: &[&str] = if extra.contains(&"--gateway") {
            &[]
        } else {
            &["--gateway", "127.0.0.1:0"]
        };
        let mut command = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let mut child = command
            .arg("--home")
            .arg(home)
            .args(["run", "--listen", listen, "--api", "127.0.0.1:0"])
            .args(gateway)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("LENDMESH_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(envs.iter().copied())
            .env_remove("LENDMESH_HOME")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lendmesh run");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let mut copy = log_copy(home);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = copy.as_mut() {
                    let _ = writeln!(f, "{}", strip_ansi(&line));
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut node = RunningNode {
            home: home.to_path_buf(),
            child,
            log,
            p2p_addr: String::new(),
            api: String::new(),
            gateway: String::new(),
            netns: ns.map(str::to_string),
        };
        let line = node.wait_for_log("listening on /ip4/127.0.0.1/", Duration::from_secs(30));
        node.p2p_addr = line.split("listening on ").nth(1).unwrap().trim().to_string();
        let line = node.wait_for_log("api listening on http://", Duration::from_secs(30));
        node.api = line.split("api listening on ").nth(1).unwrap().trim().to_string();
        let line = node.wait_for_log("gateway listening on http://", Duration::from_secs(30));
        node.gateway = line
            .split("gateway listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_string();
        node
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log so far without terminal colour codes (fields read `key=value`).
    pub fn plain_log(&self) -> String {
        self.log().lines().map(strip_ansi).collect::<Vec<_>>().join("\n")
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing `needle`; returns that line.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return strip_ansi(line);
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "node exited ({status}) before logging '{needle}':\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!("no '{needle}' within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// GET a JSON endpoint of the node's API.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        match &self.netns {
            Some(ns) => {
                let (status, body) = netns::request(
                    ns,
                    "GET",
                    &format!("{}{path}", self.api),
                    "",
                    Duration::from_secs(10),
                );
                (
                    status,
                    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
                )
            }
            None => http_get(&self.api, path),
        }
    }

    /// Polls `check` on `/v1/…` JSON until it holds (bounded).
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut check: impl FnMut(&RunningNode) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("node exited ({status}) while waiting for {what}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("{what} did not happen within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and wait for a clean exit (bounded); returns the exit success.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("node did not stop within 20 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM and wait for a clean exit (bounded); returns the exit success and the whole log.
    pub fn stop_with_log(self) -> (bool, String) {
        let log = self.log.clone();
        let ok = self.stop();
        let text = log
            .lock()
            .unwrap()
            .lines()
            .map(strip_ansi)
            .collect::<Vec<_>>()
            .join("\n");
        (ok, text)
    }

    /// How the process ended, once it has (within `within`; `None` if it is still running then, and it is then
    /// killed).
    pub fn exit_status(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// kill -9.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A minimal HTTP/1.1 GET (loopback, 5 s timeout) returning the status and JSON body.
pub fn http_get(base: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get_raw(base, path, None);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// A minimal HTTP/1.1 GET with an optional bearer token; returns the status and the raw body.
pub fn http_get_raw(base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).expect("connect to API");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let body = if resp.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

/// A raw HTTP/1.1 response's status and body (de-chunked).
pub fn parse_response(resp: &str) -> (u16, String) {
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, rest) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// A temporary home directory.
pub fn temp_home() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lendmesh-test-")
        .tempdir()
        .unwrap()
}

/// A group made through the CLI: an admin (issuer) and `members` joined members.
#[derive(Debug)]
pub struct TestGroup {
    /// The admin's home.
    pub admin: tempfile::TempDir,
    /// The admin's peer id.
    pub admin_id: String,
    /// The members' homes.
    pub homes: Vec<tempfile::TempDir>,
    /// The members' peer ids.
    pub ids: Vec<String>,
}

impl TestGroup {
    /// `init`, `group create` (2048-bit key for speed), then `group invite` + `join` for each member.
    pub fn new(name: &str, members: usize, quota: u32) -> TestGroup {
        Self::with_args(name, members, quota, &[], &[])
    }

    /// Like [`TestGroup::new`] with extra `group create` and `group invite` flags (e.g. `--epoch 20s`,
    /// `--bootstrap ADDR`).
    pub fn with_args(
        name: &str,
        members: usize,
        quota: u32,
        create: &[&str],
        invite_args: &[&str],
    ) -> TestGroup {
        let admin = temp_home();
        let admin_id = init(admin.path());
        let mut args = vec!["group", "create", "--name", name, "--rsa-bits", "2048"];
        args.extend_from_slice(create);
        cli_ok(admin.path(), &args);
        let mut homes = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..members {
            let home = temp_home();
            let id = init(home.path());
            let invite = home.path().join("invite.txt");
            let quota = quota.to_string();
            let mut args = vec![
                "group",
                "invite",
                &id,
                "--quota",
                &quota,
                "--out",
                invite.to_str().unwrap(),
            ];
            args.extend_from_slice(invite_args);
            cli_ok(admin.path(), &args);
            cli_ok(home.path(), &["join", invite.to_str().unwrap()]);
            homes.push(home);
            ids.push(id);
        }
        TestGroup {
            admin,
            admin_id,
            homes,
            ids,
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a node that must listen on a port known in advance).
/// Chosen below the kernel's ephemeral range where there is room: a port from that range can be handed to any
/// other socket (a node's dial, another test's listener on port 0) before the node binds it.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(0);
    if low > 20_000 {
        for _ in 0..64 {
            let port = 10_000 + rand::random::<u16>() % (low - 10_000);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The node's `/v1/node` JSON.
pub fn node_info(n: &RunningNode) -> serde_json::Value {
    n.get("/v1/node").1
}

/// Connected peers, per `/v1/node`.
pub fn connected_peers(n: &RunningNode) -> u64 {
    node_info(n)["connected_peers"].as_u64().unwrap_or(0)
}

/// Wallet balance, per `/v1/node`.
pub fn wallet_balance(n: &RunningNode) -> u64 {
    node_info(n)["wallet_balance"].as_u64().unwrap_or(0)
}

/// The current epoch, per `/v1/node`.
pub fn current_epoch(n: &RunningNode) -> u64 {
    node_info(n)["epoch"].as_u64().unwrap_or(0)
}

/// An HTTP/1.1 request to a gateway (60 s read timeout); returns (status, body).
pub fn gateway_request(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    gateway_request_with(base, method, path, body, "")
}

/// Like [`gateway_request`], with extra header lines (each ending in `\r\n`).
pub fn gateway_request_with(
    base: &str,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, String) {
    let hostport = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    parse_response(&resp)
}

/// A gateway's answer with its headers.
#[derive(Clone, Debug)]
pub struct GatewayAnswer {
    /// The HTTP status.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl GatewayAnswer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Retry-After` in seconds, if present and a number.
    pub fn retry_after_s(&self) -> Option<u64> {
        self.header("retry-after").and_then(|v| v.trim().parse().ok())
    }

    /// The body as JSON (Null if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Like [`gateway_request`], keeping the headers.
pub fn gateway_answer(base: &str, method: &str, path: &str, body: &str) -> GatewayAnswer {
    let hostport = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, rest) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_string() };
    GatewayAnswer {
        status,
        headers,
        body,
    }
}

/// The value of the `/metrics` sample whose line starts with `line_prefix` (name and labels, then a space), or 0.
pub fn metric_value(n: &RunningNode, line_prefix: &str) -> u64 {
    http_get_raw(&n.api, "/metrics", None)
        .1
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Refill requests the member sent to its issuer, by outcome (`refill_requests` in `/v1/node`).
pub fn refill_requests(n: &RunningNode) -> std::collections::BTreeMap<String, u64> {
    node_info(n)["refill_requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// All refill requests the member sent, whatever their outcome.
pub fn refill_requests_total(n: &RunningNode) -> u64 {
    refill_requests(n).values().sum()
}

/// Waits (bounded) until `n` is connected to `peers` peers and holds a fresh attestation from each.
pub fn wait_ready(n: &mut RunningNode, peers: usize) {
    let wait = Duration::from_secs(60);
    n.wait_until("connections", wait, |n| connected_peers(n) >= peers as u64);
    n.wait_until("fresh attestations", wait, |n| {
        let (_, p) = n.get("/v1/peers");
        p["peers"]
            .as_array()
            .map_or(0, |ps| ps.iter().filter(|p| !p["attestation"].is_null()).count())
            >= peers
    });
}

/// The group's admin with no capacity of its own (so it borrows everything, refilling 20 tokens at a time) and
/// every other member a lender with `capacity` (each a relay for the others); all started with `common` flags,
/// connected, and holding each other's attestations.
pub fn borrower_and_lenders(
    admin: &Path,
    homes: &[tempfile::TempDir],
    common: &[&str],
    capacity: u64,
) -> (RunningNode, Vec<RunningNode>) {
    let mut a = RunningNode::start(
        admin,
        &[
            common,
            &["--mock-capacity", "0", "--low-water", "20", "--batch", "20"],
        ]
        .concat(),
    );
    let boot = a.p2p_addr.clone();
    let cap = capacity.to_string();
    let mut lenders: Vec<RunningNode> = homes
        .iter()
        .map(|h| {
            RunningNode::start(
                h.path(),
                &[common, &["--mock-capacity", &cap, "--bootstrap", &boot]].concat(),
            )
        })
        .collect();
    let peers = homes.len();
    wait_ready(&mut a, peers);
    for l in lenders.iter_mut() {
        wait_ready(l, peers);
    }
    (a, lenders)
}
