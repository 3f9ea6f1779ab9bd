//! Issue-11 acceptance: streamed answers, own and borrowed. A scripted upstream sends server-sent events only when
//! the test lets it (`Pace::Gated`), so "the first event reaches the client while the upstream is still sending" is
//! an ordering, not a timing: the test reads event i through the gateway before it lets event i+1 go — a gateway that
//! buffered would never show event 0, and the test would time out. Also: an answer cut short by the relay is an
//! error for the client, a client that goes away stops the lender's upstream call, and a call longer than every
//! limit but never idle for long completes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::Duration;

use lendmesh_tests::stream::{Pace, Script, ScriptedUpstream, StreamingResponse, event_json};
use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);
const CHAT: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn upstream_args(url: &str) -> Vec<String> {
    ["--upstream", "http", "--upstream-url", url]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Reads `events` gated events through `resp`, releasing each next one only after the previous arrived, then the
/// `[DONE]` event and the clean end.
fn read_in_order(resp: &mut StreamingResponse, upstream: &ScriptedUpstream, events: usize) {
    let mut pending = String::new();
    let mut got = Vec::new();
    upstream.release();
    while got.len() < events {
        let batch = resp.next_events(&mut pending).expect("events arrive");
        assert!(!batch.is_empty(), "the stream ended after {} events", got.len());
        for e in batch {
            got.push(e);
            if got.len() < events {
                // Event i is at the client; only now may the upstream send event i+1.
                upstream.release();
            }
        }
    }
    for (i, e) in got.iter().enumerate() {
        assert_eq!(
            e,
            &format!("data: {}\n\n", event_json(i)),
            "event {i} intact, in order"
        );
    }
    let done = resp.next_events(&mut pending).expect("[DONE]");
    assert_eq!(done, vec!["data: [DONE]\n\n".to_string()]);
    assert_eq!(resp.next_piece(), Ok(None), "a clean end");
}

fn assert_streaming_headers(resp: &StreamingResponse) {
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert_eq!(resp.header("cache-control"), Some("no-cache"));
    assert_eq!(resp.header("x-accel-buffering"), Some("no"));
    assert_eq!(resp.header("content-length"), None);
}

#[test]
fn the_own_gateway_passes_events_on_as_they_arrive() {
    let g = TestGroup::new("own-stream", 0, 10);
    let upstream = ScriptedUpstream::start(Script {
        events: 5,
        pace: Pace::Gated,
        head_delay: Duration::ZERO,
        headers: vec![],
    });
    let node = RunningNode::start(g.admin.path(), &strs(&upstream_args(&upstream.url)));
    let mut resp = StreamingResponse::send(&node.gateway, "POST", "/v1/chat/completions", CHAT, WAIT);
    assert_streaming_headers(&resp);
    read_in_order(&mut resp, &upstream, 5);
    upstream.wait_for("the call to end", WAIT, |r| r.completed == vec![0]);
    assert!(node.stop());
}

/// Admin A (relay, no capacity), borrower B (no capacity), lender L whose upstream is `url`; all connected, B with
/// tokens and L's attestation.
struct Borrowed {
    _g: TestGroup,
    a: RunningNode,
    b: RunningNode,
    l: RunningNode,
}

fn borrowed(name: &str, url: &str, extra: &[&str]) -> Borrowed {
    let g = TestGroup::new(name, 2, 100);
    let fast = ["--attestation-period", "1s"];
    let none = [&fast[..], &["--mock-capacity", "0"], extra].concat();
    let mut a = RunningNode::start(g.admin.path(), &none);
    let boot = ["--bootstrap".to_string(), a.p2p_addr.clone()];
    let b_args = [strs(&boot), none.clone()].concat();
    let mut b = RunningNode::start(g.homes[0].path(), &b_args);
    let up = upstream_args(url);
    let l_args = [strs(&boot), fast.to_vec(), strs(&up), extra.to_vec()].concat();
    let mut l = RunningNode::start(g.homes[1].path(), &l_args);
    for n in [&mut a, &mut b, &mut l] {
        n.wait_until("2 connected peers", WAIT, |n| connected_peers(n) >= 2);
    }
    b.wait_until("tokens and the lender's attestation", WAIT, |n| {
        wallet_balance(n) >= 1
            && n.get("/v1/peers").1["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["attestation"]["bucket"] == "high"))
    });
    Borrowed { _g: g, a, b, l }
}

fn cancelled(n: &RunningNode, role: &str) -> u64 {
    let metrics = http_get_raw(&n.api, "/metrics", None).1;
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("lendmesh_cancelled_total{{outcome=\"{role}\"}} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_borrowed_answer_streams_end_to_end() {
    let upstream = ScriptedUpstream::start(Script {
        events: 5,
        pace: Pace::Gated,
        head_delay: Duration::ZERO,
        headers: vec![],
    });
    let Borrowed { _g, a, b, l } = borrowed("borrowed-stream", &upstream.url, &[]);
    let mut resp = StreamingResponse::send(&b.gateway, "POST", "/v1/chat/completions", CHAT, WAIT);
    assert_streaming_headers(&resp);
    read_in_order(&mut resp, &upstream, 5);
    upstream.wait_for("one upstream call, run to its end", WAIT, |r| {
        r.completed == vec![0] && r.calls.len() == 1
    });
    assert_eq!(node_info(&l)["counters"]["lends_served"], 1);
    for n in [b, l, a] {
        assert!(n.stop());
    }
}

#[test]
fn an_answer_cut_short_by_the_relay_is_an_error_for_the_client() {
    let upstream = ScriptedUpstream::start(Script {
        events: 5,
        pace: Pace::Gated,
        head_delay: Duration::ZERO,
        headers: vec![],
    });
    let Borrowed { _g, a, b, l } = borrowed("cut-stream", &upstream.url, &[]);
    let mut resp = StreamingResponse::send(&b.gateway, "POST", "/v1/chat/completions", CHAT, WAIT);
    assert_eq!(resp.status, 200);
    let mut pending = String::new();
    upstream.release();
    let first = resp.next_events(&mut pending).expect("the first event");
    assert_eq!(first.len(), 1);
    // The relay (the admin, the only other member) dies mid-answer.
    a.kill9();
    let mut outcome = Ok(Some(vec![]));
    while let Ok(Some(_)) = outcome {
        outcome = resp.next_piece();
    }
    assert!(
        outcome.is_err(),
        "cut short must not look like a clean end: {outcome:?}"
    );
    eprintln!("the client saw: {outcome:?}");
    for n in [b, l] {
        assert!(n.stop());
    }
}

#[test]
fn a_stream_whose_lender_is_removed_mid_answer_ends_at_once() {
    // The admin relays; when it removes the lender from the group it closes its own connection to it. With yamux
    // as released (rust-yamux#216), the relay's read of the lender's stream, pending on a connection this side
    // closed, was never woken: the tool waited out the borrower's idle limit (90 s) for an answer that could no
    // longer come. Each read here may take 30 s: a wait that long fails the test.
    let upstream = ScriptedUpstream::start(Script {
        events: 5,
        pace: Pace::Gated,
        head_delay: Duration::ZERO,
        headers: vec![],
    });
    let Borrowed { _g: g, a, b, l } = borrowed("removed-mid-stream", &upstream.url, &[]);
    let mut resp = StreamingResponse::send(
        &b.gateway,
        "POST",
        "/v1/chat/completions",
        CHAT,
        Duration::from_secs(30),
    );
    assert_eq!(resp.status, 200);
    let mut pending = String::new();
    upstream.release();
    let first = resp.next_events(&mut pending).expect("the first event");
    assert_eq!(first.len(), 1);
    let out = cli_ok(g.admin.path(), &["group", "remove", &g.ids[1]]);
    assert!(out.contains("removed"), "{out}");
    let since = std::time::Instant::now();
    let mut outcome = Ok(Some(vec![]));
    while let Ok(Some(_)) = outcome {
        outcome = resp.next_piece();
    }
    assert!(
        outcome.as_ref().is_err_and(|e| e.starts_with("cut short")),
        "the answer ends as cut short, not by waiting out a limit: {outcome:?} after {:?}",
        since.elapsed()
    );
    eprintln!("the client saw the cut {:?} after the removal", since.elapsed());
    for n in [b, a] {
        assert!(n.stop());
    }
    drop(l);
}

#[test]
fn a_client_that_goes_away_stops_the_lenders_upstream_call() {
    let upstream = ScriptedUpstream::start(Script {
        events: 400,
        pace: Pace::Every(Duration::from_millis(50)),
        head_delay: Duration::ZERO,
        headers: vec![],
    });
    let Borrowed { _g, a, b, mut l } = borrowed("cancel-stream", &upstream.url, &[]);
    let mut resp = StreamingResponse::send(&b.gateway, "POST", "/v1/chat/completions", CHAT, WAIT);
    let mut pending = String::new();
    let mut seen = 0;
    while seen < 3 {
        seen += resp.next_events(&mut pending).expect("events").len();
    }
    // The tool disconnects.
    drop(resp);
    let record = upstream.wait_for("the upstream call to be dropped", WAIT, |r| !r.dropped.is_empty());
    assert!(
        record.completed.is_empty() && record.sent[0] < 400,
        "the upstream stopped early: {record:?}"
    );
    eprintln!("the upstream call stopped after {} of 400 events", record.sent[0]);
    l.wait_until("the lend counted as cancelled", WAIT, |n| {
        cancelled(n, "lend") >= 1
    });
    assert!(cancelled(&a, "relay") >= 1, "the relay counted it");
    assert!(cancelled(&b, "borrow") >= 1, "the borrower counted it");
    for n in [b, l, a] {
        assert!(n.stop());
    }
}

/// Whether this run is CI's (`CI` set), where the SDK test is required.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The Python with the OpenAI SDK: `.ci/run` installs it into `target/sdk-venv`; else `python3` if it has it.
fn sdk_python() -> Option<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = root.join("target/sdk-venv/bin/python");
    let candidates = [venv, std::path::PathBuf::from("python3")];
    candidates.into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import openai"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[test]
fn the_openai_sdk_sees_a_borrowed_stream_chunk_by_chunk() {
    use std::io::BufRead;
    let Some(python) = sdk_python() else {
        assert!(
            !in_ci(),
            "CI requires the OpenAI SDK: .ci/run installs tests/sdk/requirements.txt into target/sdk-venv"
        );
        eprintln!("SKIPPED: no Python with the `openai` package (pip install -r tests/sdk/requirements.txt)");
        return;
    };
    let upstream = ScriptedUpstream::start(Script {
        events: 5,
        pace: Pace::Gated,
        head_delay: Duration::ZERO,
        headers: vec![],
    });
    let Borrowed { _g, a, b, l } = borrowed("sdk-stream", &upstream.url, &[]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/openai_stream.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .arg(&b.gateway)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || lines.recv_timeout(WAIT).expect("the SDK prints within the wait");
    upstream.release();
    for i in 0..5 {
        assert_eq!(
            next(),
            format!("CHUNK word{i} "),
            "chunk {i} reached the SDK before the next was sent"
        );
        if i < 4 {
            upstream.release();
        }
    }
    assert_eq!(next(), "END");
    assert!(child.wait().unwrap().success());
    for n in [b, l, a] {
        assert!(n.stop());
    }
}

#[test]
fn a_call_longer_than_every_limit_completes_while_it_keeps_streaming() {
    // Every limit is small (the first byte within 4 s, then never 3 s without a piece; the lender's own upstream
    // limits 3 s and 2 s), and the call takes about 9 s: a second to its head, then an event a second.
    let upstream = ScriptedUpstream::start(Script {
        events: 8,
        pace: Pace::Every(Duration::from_secs(1)),
        head_delay: Duration::from_secs(1),
        headers: vec![],
    });
    let limits = [
        "--first-byte-timeout",
        "4s",
        "--idle-timeout",
        "3s",
        "--upstream-first-byte-timeout",
        "3s",
        "--upstream-idle-timeout",
        "2s",
    ];
    let Borrowed { _g, a, b, l } = borrowed("long-stream", &upstream.url, &limits);
    let started = std::time::Instant::now();
    let mut resp = StreamingResponse::send(&b.gateway, "POST", "/v1/chat/completions", CHAT, WAIT);
    assert_eq!(resp.status, 200);
    let mut pending = String::new();
    let mut events = Vec::new();
    loop {
        let batch = resp.next_events(&mut pending).expect("events keep coming");
        if batch.is_empty() {
            break;
        }
        events.extend(batch);
    }
    let took = started.elapsed();
    assert_eq!(events.len(), 9, "eight events and [DONE]");
    assert!(took > Duration::from_secs(4), "longer than every limit: {took:?}");
    eprintln!("a {took:?} call completed under limits of at most 4 s");
    for n in [b, l, a] {
        assert!(n.stop());
    }
}
