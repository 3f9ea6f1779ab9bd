//! `lendmesh-nshttp METHOD URL TIMEOUT_S`: one HTTP/1.1 request, the body read from stdin, the raw response written
//! to stdout. The namespace tests run it with `ip netns exec` to reach a node's API and gateway, which listen on
//! the loopback of the node's own network namespace (the test process cannot enter a namespace itself: the
//! workspace forbids unsafe code, and `setns` needs it).
#![allow(clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn main() {
    if let Err(e) = run() {
        eprintln!("lendmesh-nshttp: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, method, url, timeout] = args.as_slice() else {
        return Err("usage: lendmesh-nshttp METHOD URL TIMEOUT_S (body on stdin)".into());
    };
    let timeout: u64 = timeout.parse().map_err(|_| format!("bad timeout '{timeout}'"))?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("'{url}' is not an http:// URL"))?;
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut body = Vec::new();
    std::io::stdin()
        .take(16 << 20)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    let mut s = TcpStream::connect(hostport).map_err(|e| format!("connect {hostport}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(timeout)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(&body).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.take(64 << 20)
        .read_to_end(&mut resp)
        .map_err(|e| format!("reading the answer: {e}"))?;
    std::io::stdout().write_all(&resp).map_err(|e| e.to_string())
}
