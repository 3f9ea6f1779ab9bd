//! Network namespaces for the tests that need a real network between nodes: members behind NAT (veth pairs and
//! an nftables masquerade, made and removed by the test itself, as root). Everything stays inside the namespaces
//! the test makes; [`Lab`] removes them (and kills what runs in them) when dropped.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Why namespace tests cannot run here (not root, no `ip` or `nft`, namespaces not permitted), or `None`.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some("not root: network namespaces need CAP_SYS_ADMIN".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "`{tool}` is not installed (Debian: apt-get install iproute2 nftables; .ci/run installs them)"
            ));
        }
    }
    let probe = format!("lmprobe{}", std::process::id());
    let made = run(&["ip", "netns", "add", &probe]);
    let _ = run(&["ip", "netns", "del", &probe]);
    if let Err(e) = made {
        return Some(format!("network namespaces are not permitted here: {e}"));
    }
    let nat = run(&["ip", "netns", "add", &probe]).and_then(|()| {
        nft(
            &probe,
            "table ip nat {\n chain post {\n type nat hook postrouting priority 100;\n masquerade\n }\n}\n",
        )
    });
    let _ = run(&["ip", "netns", "del", &probe]);
    nat.err().map(|e| format!("nftables NAT does not work here: {e}"))
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn nft(ns: &str, ruleset: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("nft: no stdin")?
        .write_all(ruleset.as_bytes())
        .map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// How a NAT router maps its members' connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// A home router: masquerade keeping the source port where it can (one outside port per inside port, whoever
    /// the peer), unsolicited connections from outside dropped. TCP hole punching can work through it.
    Cone,
    /// A symmetric NAT (carrier-grade, some mobile networks): a fresh random outside port per connection, so the
    /// port a peer learns is useless to anyone else and hole punching fails.
    Symmetric,
}

/// Namespaces made for one test, removed when dropped.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    made: Vec<String>,
}

impl Lab {
    /// An empty lab whose namespaces are named after this process (so parallel tests do not collide).
    pub fn new(tag: &str) -> Lab {
        Lab {
            prefix: format!("lm{}{tag}", std::process::id() % 100_000),
            made: Vec::new(),
        }
    }

    /// The full name of namespace `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// Makes namespace `short` with its loopback up.
    pub fn add(&mut self, short: &str) -> String {
        let ns = self.ns(short);
        let _ = run(&["ip", "netns", "del", &ns]);
        run(&["ip", "netns", "add", &ns]).unwrap();
        self.made.push(ns.clone());
        self.exec(&ns, &["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside `ns`; panics with its error output if it fails.
    pub fn exec(&self, ns: &str, cmd: &[&str]) {
        let mut args = vec!["ip", "netns", "exec", ns];
        args.extend_from_slice(cmd);
        run(&args).unwrap();
    }

    /// A veth pair between two namespaces, each end named and addressed (CIDR), and up.
    pub fn link(&self, (a, a_if, a_ip): (&str, &str, &str), (b, b_if, b_ip): (&str, &str, &str)) {
        run(&[
            "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ])
        .unwrap();
        for (ns, ifname, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
            self.exec(ns, &["ip", "addr", "add", ip, "dev", ifname]);
            self.exec(ns, &["ip", "link", "set", ifname, "up"]);
        }
    }

    /// Loads an nftables ruleset into `ns`.
    pub fn nft(&self, ns: &str, ruleset: &str) {
        nft(ns, ruleset).unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.made.drain(..).rev() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = run(&["ip", "netns", "del", &ns]);
        }
    }
}

/// "The internet" — one namespace, `public`, that routes between the NAT routers and hosts the reachable members —
/// and one host behind its own NAT router per entry of `nats`.
#[derive(Debug)]
pub struct NatLab {
    /// The namespaces.
    pub lab: Lab,
    /// The public namespace (reachable members run here).
    pub public: String,
    /// The public namespace's address every NAT router reaches it at.
    pub public_ip: String,
    /// Each NATed host's namespace, in the order of `nats`.
    pub hosts: Vec<String>,
    /// Each NAT router's outside address.
    pub outside_ips: Vec<String>,
}

impl NatLab {
    /// Builds the topology: `public` has 10.91.K.1/24 towards router K (10.91.K.2/24 outside, 192.168.K.1/24
    /// inside), whose host is 192.168.K.2/24. `public` forwards between the routers; each router masquerades its
    /// host and drops connections from outside that no inside connection asked for.
    pub fn new(tag: &str, nats: &[NatKind]) -> NatLab {
        let mut lab = Lab::new(tag);
        let public = lab.add("pub");
        lab.exec(&public, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut hosts = Vec::new();
        let mut outside_ips = Vec::new();
        for (i, kind) in nats.iter().enumerate() {
            let k = i + 1;
            let router = lab.add(&format!("r{k}"));
            let host = lab.add(&format!("h{k}"));
            lab.link(
                (&public, &format!("to{k}"), &format!("10.91.{k}.1/24")),
                (&router, "wan", &format!("10.91.{k}.2/24")),
            );
            lab.link(
                (&router, "lan", &format!("192.168.{k}.1/24")),
                (&host, "eth0", &format!("192.168.{k}.2/24")),
            );
            lab.exec(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            lab.exec(
                &router,
                &["ip", "route", "add", "default", "via", &format!("10.91.{k}.1")],
            );
            lab.exec(
                &host,
                &["ip", "route", "add", "default", "via", &format!("192.168.{k}.1")],
            );
            let masquerade = match kind {
                NatKind::Cone => "masquerade",
                NatKind::Symmetric => "masquerade random,fully-random",
            };
            lab.nft(
                &router,
                &format!(
                    "table ip nat {{
                       chain post {{
                         type nat hook postrouting priority 100;
                         oifname \"wan\" {masquerade}
                       }}
                     }}
                     table inet filter {{
                       chain input {{
                         type filter hook input priority 0;
                         iifname \"wan\" ct state new drop
                       }}
                       chain forward {{
                         type filter hook forward priority 0;
                         iifname \"wan\" ct state new drop
                       }}
                     }}
                     "
                ),
            );
            hosts.push(host);
            outside_ips.push(format!("10.91.{k}.2"));
        }
        NatLab {
            lab,
            public,
            public_ip: "10.91.1.1".into(),
            hosts,
            outside_ips,
        }
    }
}

/// One HTTP request from inside namespace `ns` (through `lendmesh-nshttp`); returns the status and the body
/// (de-chunked). `timeout` bounds the wait for the answer.
pub fn request(ns: &str, method: &str, url: &str, body: &str, timeout: Duration) -> (u16, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(super::sibling_bin("lendmesh-nshttp"))
        .args([method, url, &timeout.as_secs().max(1).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lendmesh-nshttp");
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return (0, String::from_utf8_lossy(&out.stderr).into_owned());
    }
    super::parse_response(&String::from_utf8_lossy(&out.stdout))
}
