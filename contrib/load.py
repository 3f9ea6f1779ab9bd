#!/usr/bin/env python3
"""Load and abuse (issue 15): how fast a node's gateway serves, from its own upstream and borrowed through a relay,
and what the gateway and the API do with clients that try to exhaust them — measured on a 3-member group on
loopback.

    apt-get install -y wrk                     # the load generator (Debian's package)
    cargo build --release -p lendmesh-node
    python3 contrib/load.py [--bin target/release/lendmesh] [--duration 15] [--local-conns 1,16]
        [--borrowed-conns 1,4,16] [--one-conversation-conns 4] [--attackers 300] [--tiny 50] [--idle 1500]

It makes the group with the CLI in a temporary directory (the admin plus two joined members, 2048-bit issuer key) and
starts the three nodes with their defaults but for these. The admin and member 1 each have a mock upstream of 10^9
requests a minute, which never runs out; member 2 has `--mock-capacity 0`, so every request to its gateway is
borrowed from one of the other two with the third as relay. Member 2 has a quota of 100 000 tokens a week and draws
them on demand (`--issuance demand --low-water 3000 --batch 64`): the default schedule draws 64 tokens a second at
most, fewer than borrowing spends here. Every request is `POST /v1/chat/completions` with a small chat body, which
the mock answers with 200 after its latency, a sleep of 0 ms that tokio's timer rounds up to the next millisecond.

1. Load: wrk runs `--duration` seconds per row, one thread, against member 1's gateway (served locally) and member
   2's (borrowed) with each connection count given. The `--one-conversation-conns` rows send the same
   conversation every time, which stickiness keeps on one lender and so on its one relay; the `--borrowed-conns`
   rows give each request a conversation of its own (`Lendmesh-Conversation`), as independent tool sessions would,
   so routing spreads them over both lenders. A row reports 2xx responses a second, wrk's p50 and p99 (over every
   response), non-2xx responses and socket errors, what the node counted (`served_locally`, or
   `lendmesh_borrows_total` by outcome, and the wallet) and its RSS before and after. Before a borrowed row the
   wallet is back at the low-water mark and a request is served; after it, the script says how long the gateway
   kept refusing, if it did.
2. Abuse, against member 1's gateway and API, each with a bystander that makes one normal request (a new
   connection each) every 0.2 s: what the attacker got and when, what the node counted
   (`lendmesh_http_refusals_total`), how many of the bystander's requests got a 200 and what the others got, the
   longest it went without a 200, its slowest request, and the node's RSS before, at the peak and after. Cases:
   slowloris (`--attackers` connections sending a request head a header line a second), a 64 KiB header (and a
   60 KiB one that must pass), 150 headers, a 100 MB body announced by Content-Length and streamed, a chunked
   body without end sent as fast as the node takes it, a chunked body without end trickled a byte a second from
   `--attackers` connections, 1-byte chunks every 10 ms from `--tiny` connections closed after 15 s (what a slow
   body costs in memory), and `--idle` connections opened and left silent. The cases that wait for the node's
   timeouts (slowloris, the trickled body, idle connections) attack the gateway and the API at once, each with its
   own bystander; the RSS is the node's, so both rows show the same figures.

Prints markdown tables; takes about 5 minutes. Linux only (/proc); raises the soft file descriptor limit to
2 x max(`--idle`, `--attackers`) + 256 if it is lower. Everything runs on 127.0.0.1 and is stopped at the end, also
on an error or Ctrl-C (and the nodes get SIGTERM if the script is killed). The temporary directory, with every
node's log, is removed unless the script fails or `--keep` is given.
"""

import argparse
import collections
import ctypes
import http.client
import json
import os
import re
import resource
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from lmnode import cli, get, rss_kib

ANSI = re.compile(r"\x1b\[[0-9;]*m")
CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}'
LOW_WATER = 3000
MOCK_CAPACITY = "1000000000"
# The limits node/src/http/serve.rs and limit.rs claim, checked against what is measured.
CLAIMED = ("connections at once: gateway 256, API 32 (503 beyond); head: 64 KiB, 100 headers (431), 30 s once begun "
           "(408; an idle connection is closed after 30 s without an answer); body: gateway 1 MiB, API 64 KiB (413), "
           "60 s (408)")
WRK_LUA = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(99)))
end
""" % CHAT.decode()
# Each request a conversation of its own (wrk runs one thread, so a counter is unique).
WRK_LUA_CONVERSATIONS = """
local n = 0
request = function()
  n = n + 1
  wrk.headers["Lendmesh-Conversation"] = "%s-" .. n
  return wrk.format()
end
"""


def die_with_parent():
    """In a child: SIGTERM when the script dies, however it dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def rss_mib_of(pid):
    return rss_kib(pid) / 1024


def metrics(base, prefix):
    """The series of `/metrics` whose name starts with `prefix`: {series: value}."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def delta(before, after, label):
    """{label value: increase} over the series of two `metrics` snapshots."""
    out = collections.Counter()
    for series, value in after.items():
        m = re.search(label + r'="([^"]*)"', series)
        if m and value > before.get(series, 0.0):
            out[m.group(1)] += int(value - before.get(series, 0.0))
    return out


def chat(host, port, timeout=5.0):
    """One gateway request on a new connection: (status or error name, seconds, body)."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", CHAT, {"Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        return r.status, time.monotonic() - t0, body
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__, time.monotonic() - t0, b""
    finally:
        conn.close()


class Node:
    def __init__(self, binary, home, name, listen, flags):
        self.name, self.home = name, home
        self.log_path = os.path.join(home, "node.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [binary, "--home", home, "run", "--listen", listen, "--api", "127.0.0.1:0", "--gateway",
                 "127.0.0.1:0", *flags],
                stdout=subprocess.DEVNULL, stderr=log, preexec_fn=die_with_parent,
                env={**os.environ, "RUST_LOG": "warn,lendmesh_node::node=info", "NO_COLOR": "1"},
            )
        self.pid = self.proc.pid
        deadline = time.time() + 60
        while True:
            with open(self.log_path) as f:
                m = re.search(r"gateway listening on http://(\S+):(\d+)", ANSI.sub("", f.read()))
            api_file = os.path.join(home, "api.addr")
            if m and os.path.exists(api_file):
                time.sleep(0.2)
                break
            if self.proc.poll() is not None or time.time() > deadline:
                sys.exit(f"{name} did not start; its log is {self.log_path}")
            time.sleep(0.2)
        self.gw = (m.group(1), int(m.group(2)))
        with open(api_file) as f:
            host, port = f.read().strip().rsplit(":", 1)
        self.api_addr = (host, int(port))
        self.api = f"http://{host}:{port}"
        self.gateway = f"http://{self.gw[0]}:{self.gw[1]}"

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait(self):
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def make_group(binary, root):
    """Admin, member 1 and member 2 (the borrower, quota 100 000); returns the homes and the admin's p2p address."""
    homes = [os.path.join(root, n) for n in ("admin", "member1", "member2")]
    ids = [re.search(r"peer id: (\S+)", cli(binary, h, "init")).group(1) for h in homes]
    cli(binary, homes[0], "group", "create", "--name", "load", "--rsa-bits", "2048")
    with socket.socket() as s:  # a free port for the admin, which the invites name
        s.bind(("127.0.0.1", 0))
        boot = f"/ip4/127.0.0.1/tcp/{s.getsockname()[1]}"
    for h, peer, quota in zip(homes[1:], ids[1:], ("1000", "100000")):
        invite = os.path.join(h, "invite.txt")
        cli(binary, homes[0], "group", "invite", peer, "--quota", quota, "--bootstrap", boot, "--out", invite)
        cli(binary, h, "join", invite)
        os.remove(invite)
    cli(binary, homes[0], "group", "rotate")
    return homes, boot


def wait_for(what, check, timeout):
    deadline = time.time() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit(f"no {what} within {timeout} s")
        time.sleep(0.5)


def ready(node):
    """Connected to both other nodes and holding both their attestations."""
    attested = sum(p["attestation"] is not None for p in get(node.api, "/v1/peers")["peers"])
    return get(node.api, "/v1/node")["connected_peers"] >= 2 and attested >= 2


def wrk(url, conns, seconds, lua):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-s", lua, f"{url}/v1/chat/completions"],
        capture_output=True, text=True, timeout=seconds + 60, preexec_fn=die_with_parent,
    )
    m = re.search(r"^RESULT (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        sys.exit(f"wrk failed:\n{out.stdout}\n{out.stderr}")
    n, us, status, connect, read, write, timeout, p50, p99 = map(int, m.group(1).split())
    return {"requests": n, "seconds": us / 1e6, "non2xx": status, "socket_errors": connect + read + write + timeout,
            "p50_ms": p50 / 1000, "p99_ms": p99 / 1000}


def load(nodes, a, root):
    local, borrower = nodes[1], nodes[2]
    one = os.path.join(root, "one-conversation.lua")
    with open(one, "w") as f:
        f.write(WRK_LUA)
    rows = []
    for conns in a.local_conns:
        c0, r0 = get(local.api, "/v1/node")["counters"], rss_mib_of(local.pid)
        w = wrk(local.gateway, conns, a.duration, one)
        r1, c1 = rss_mib_of(local.pid), get(local.api, "/v1/node")["counters"]
        said = f"served_locally +{c1['served_locally'] - c0['served_locally']}"
        rows.append(("member 1, served locally", conns, w, said, r0, r1))
    # The one-conversation rows spend few tokens and the heaviest row comes last: no wait for a refill after it.
    borrowed = [(c, False) for c in a.one_conversation_conns] + [(c, True) for c in a.borrowed_conns]
    for i, (conns, many) in enumerate(borrowed):
        lua = one
        if many:
            lua = os.path.join(root, f"conversations-{i}.lua")
            with open(lua, "w") as f:
                f.write(WRK_LUA + WRK_LUA_CONVERSATIONS % f"row{i}")
        wait_for("refilled wallet", lambda: get(borrower.api, "/v1/node")["wallet_balance"] >= LOW_WATER, 90)
        wait_for("borrow served", lambda: chat(*borrower.gw)[0] == 200, 90)
        tokens0 = get(borrower.api, "/v1/node")["wallet_balance"]
        m0, r0 = metrics(borrower.api, "lendmesh_borrows_total"), rss_mib_of(borrower.pid)
        w = wrk(borrower.gateway, conns, a.duration, lua)
        r1, m1 = rss_mib_of(borrower.pid), metrics(borrower.api, "lendmesh_borrows_total")
        tokens1 = get(borrower.api, "/v1/node")["wallet_balance"]
        t0, first = time.monotonic(), None
        while time.monotonic() - t0 < 90:
            status, _, body = chat(*borrower.gw)
            first = first or (status, body)
            if status == 200:
                break
            time.sleep(0.2)
        waited = time.monotonic() - t0
        outcomes = ", ".join(f"{k} +{v}" for k, v in sorted(delta(m0, m1, "outcome").items()))
        said = f"borrows: {outcomes}; wallet {tokens0} → {tokens1}"
        if first[0] != 200:
            code = re.search(rb'"error":"(\w+)"', first[1])
            said += (f"; afterwards {first[0]} {code.group(1).decode() if code else ''} for {waited:.1f} s"
                     if status == 200 else f"; not served again within {waited:.0f} s")
        rows.append((f"member 2, borrowed, {'a conversation per request' if many else 'one conversation'}", conns,
                     w, said, r0, r1))
    print(f"\n### Load: wrk, {a.duration} s a row, one thread, POST /v1/chat/completions\n")
    print("Percentiles are wrk's, over every response (refusals included).\n")
    print("| gateway | connections | 2xx/s | p50 ms | p99 ms | non-2xx | socket errors | the node counted "
          "| RSS before → after (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for what, conns, w, said, r0, r1 in rows:
        ok = (w["requests"] - w["non2xx"]) / w["seconds"]
        print(f"| {what} | {conns} | {ok:.0f} | {w['p50_ms']:.2f} | {w['p99_ms']:.2f} | {w['non2xx']} "
              f"| {w['socket_errors']} | {said} | {r0:.1f} → {r1:.1f} |")


class Bystander(threading.Thread):
    """A normal client: one request on a new connection every `every` s until stopped."""

    def __init__(self, addr, request, every=0.2):
        super().__init__(daemon=True)
        self.addr, self.request, self.every = addr, request, every
        self.halt = threading.Event()
        self.statuses = collections.Counter()
        self.slowest = 0.0
        self.longest_gap = 0.0

    def once(self):
        t0 = time.monotonic()
        try:
            with socket.create_connection(self.addr, timeout=5) as s:
                s.settimeout(5)
                s.sendall(self.request)
                got = b""
                while b"\r\n\r\n" not in got:
                    data = s.recv(4096)
                    if not data:
                        break
                    got += data
            m = re.match(rb"HTTP/1\.[01] (\d{3})", got)
            status = int(m.group(1)) if m else "closed"
            if status == 503 and b"too_many_connections" in got:
                status = "503 too_many_connections"
        except OSError as e:
            status = type(e).__name__
        return status, time.monotonic() - t0

    def run(self):
        last_ok = time.monotonic()
        while not self.halt.is_set():
            status, took = self.once()
            now = time.monotonic()
            self.statuses[status] += 1
            self.slowest = max(self.slowest, took)
            if status == 200:
                self.longest_gap = max(self.longest_gap, now - last_ok)
                last_ok = now
            self.halt.wait(max(0.0, self.every - took))
        self.longest_gap = max(self.longest_gap, time.monotonic() - last_ok)

    def stop(self):
        self.halt.set()
        self.join()
        others = ", ".join(f"{v} × {k}" for k, v in sorted(self.statuses.items(), key=str) if k != 200)
        return f"{self.statuses[200]} / {others or 'none'}"


class RssPeak(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.halt, self.peak = pid, threading.Event(), rss_mib_of(pid)

    def run(self):
        while not self.halt.wait(0.25):
            self.peak = max(self.peak, rss_mib_of(self.pid))


def summarize(outcomes):
    """[(what, seconds)] → "256 × 408 header_timeout after 30.0–30.2 s; 44 × 503 … at once"."""
    groups = collections.defaultdict(list)
    for what, t in outcomes:
        groups[what].append(t)
    parts = []
    for what, ts in sorted(groups.items(), key=lambda g: -len(g[1])):
        lo, hi = min(ts), max(ts)
        when = "at once" if hi < 0.5 else f"after {lo:.1f} s" if hi - lo < 0.1 else f"after {lo:.1f}–{hi:.1f} s"
        parts.append(f"{len(ts)} × {what} {when}")
    return "; ".join(parts)


def answer_of(got):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", got)
    if not m:
        return "closed, no answer" if not got else "garbage"
    code = re.search(rb'"error":"(\w+)"', got)
    return m.group(1).decode() + (" " + code.group(1).decode() if code else "")


def hold(addr, n, first, trickle=None, every=1.0, limit=45.0):
    """Opens `n` connections, sends `first` on each, then `trickle` on each still open every `every` s; returns the
    summary of what each got and how long after it was opened (the answer, or the close)."""
    sel = selectors.DefaultSelector()
    open_ = {}
    outcomes = []
    for _ in range(n):
        try:
            s = socket.create_connection(addr, timeout=5)
        except OSError as e:
            outcomes.append((f"connect: {type(e).__name__}", 0.0))
            continue
        try:
            s.sendall(first)
        except OSError:
            pass  # the read side sees why
        s.setblocking(False)
        open_[s] = [time.monotonic(), b"", None]
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + limit
    next_send = time.monotonic() + every
    while open_ and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=min(0.05, every / 2)):
            s = key.fileobj
            state = open_[s]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = None
            now = time.monotonic()
            if data:
                state[1] += data
                state[2] = state[2] or now
                continue
            what = answer_of(state[1]) if data is not None or state[1] else "reset"
            outcomes.append((what, (state[2] or now) - state[0]))
            sel.unregister(s)
            s.close()
            del open_[s]
        if trickle and time.monotonic() >= next_send:
            next_send += every
            for s in open_:
                try:
                    s.send(trickle)
                except OSError:
                    pass  # the read side sees why
    for s, state in open_.items():
        outcomes.append((f"still open ({answer_of(state[1])})" if state[1] else "still open",
                         time.monotonic() - state[0]))
        s.close()
    sel.close()
    return summarize(outcomes)


def blast(addr, head, body=None, limit=10.0):
    """Sends `head`, then the pieces of `body` as fast as the node takes them, for at most `limit` s; returns what
    it got, when, and how much of the body went out before the node stopped it."""
    s = socket.create_connection(addr, timeout=5)
    t0 = time.monotonic()
    got, answered, ended, sent, pending, streamed = b"", None, None, 0, b"", body is not None
    try:
        s.sendall(head)
    except OSError:
        body = None
    s.setblocking(False)
    poller = select.poll()
    poller.register(s, select.POLLIN)
    while time.monotonic() - t0 < limit:
        poller.modify(s, select.POLLIN | (select.POLLOUT if body else 0))
        events = dict(poller.poll(50)).get(s.fileno(), 0)
        readable, writable = events & (select.POLLIN | select.POLLHUP | select.POLLERR), events & select.POLLOUT
        if readable:
            try:
                data = s.recv(65536)
            except OSError:
                data, ended = b"", "reset"
            if not data:
                ended = ended or "closed"
                break
            got += data
            answered = answered or time.monotonic() - t0
        if writable:
            if not pending:
                pending = next(body, b"")
                if not pending:
                    body = None
                    continue
            try:
                n = s.send(pending)
                sent, pending = sent + n, pending[n:]
            except BlockingIOError:
                pass
            except OSError:
                body = None  # the node stopped reading; the read side says how it ended
    s.close()
    what = answer_of(got)
    when = f"after {answered:.2f} s" if answered is not None else ""
    how = f"{ended} after {time.monotonic() - t0:.1f} s" if ended else f"still open at {limit:.0f} s"
    sent = f"; body sent before the node stopped it: {sent / 2**20:.1f} MiB" if streamed else ""
    return f"{what} {when}{sent}; connection {how}".replace("  ", " ")


def content_length_body(total, piece=64 * 1024):
    chunk = b"x" * piece
    while total > 0:
        yield chunk[:total]
        total -= piece


def endless_chunks(piece=64 * 1024):
    chunk = f"{piece:x}\r\n".encode() + b"x" * piece + b"\r\n"
    while True:
        yield chunk


def abuse(node, a):
    gw_req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(CHAT), CHAT))
    api_req = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    servers = {
        "gateway": (node.gw, gw_req, "GET /v1/models", "POST /v1/chat/completions"),
        "API": (node.api_addr, api_req, "GET /health", "POST /v1/group/invite"),
    }

    def head(server, extra=b"", body_headers=b""):
        start = servers[server][3] if body_headers else servers[server][2]
        return (f"{start} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode() + extra + body_headers
                + b"\r\n")

    big = b"X-Big: " + b"a" * 65536 + b"\r\n"
    fits = b"X-Big: " + b"a" * 61440 + b"\r\n"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    chunked = b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    cases = [
        # (case, both servers at once, attack(server) -> what the attacker got)
        (f"slowloris: {a.attackers} connections, a header line a second", True,
         lambda sv: hold(servers[sv][0], a.attackers, head(sv)[:-2], b"X-Slow: 1\r\n", limit=45)),
        ("one 64 KiB header", False, lambda sv: blast(servers[sv][0], head(sv, big))),
        ("one 60 KiB header (under the limit)", False, lambda sv: blast(servers[sv][0], head(sv, fits))),
        ("150 headers", False, lambda sv: blast(servers[sv][0], head(sv, many))),
        ("Content-Length 100 MB, body streamed", False,
         lambda sv: blast(servers[sv][0], head(sv, body_headers=b"Content-Length: 104857600\r\n"),
                          content_length_body(100 * 2**20))),
        ("chunked body without end, as fast as taken", False,
         lambda sv: blast(servers[sv][0], head(sv, body_headers=chunked), endless_chunks())),
        (f"chunked body without end, a byte a second, {a.attackers} connections", True,
         lambda sv: hold(servers[sv][0], a.attackers, head(sv, body_headers=chunked), b"1\r\nx\r\n", limit=75)),
        (f"chunked body, a 1-byte chunk every 10 ms, {a.tiny} connections, closed after 15 s", False,
         lambda sv: hold(servers[sv][0], a.tiny, head(sv, body_headers=chunked), b"1\r\nx\r\n", every=0.01,
                         limit=15)),
        (f"{a.idle} idle connections", True, lambda sv: hold(servers[sv][0], a.idle, b"", limit=45)),
    ]
    rows = []
    for case, together, attack in cases:
        groups = [list(servers)] if together else [[sv] for sv in servers]
        for group in groups:
            refusals0 = metrics(node.api, "lendmesh_http_refusals_total")
            rss0 = rss_mib_of(node.pid)
            peak = RssPeak(node.pid)
            peak.start()
            bystanders = {sv: Bystander(servers[sv][0], servers[sv][1]) for sv in group}
            for b in bystanders.values():
                b.start()
            time.sleep(0.5)
            results = {}
            threads = [threading.Thread(target=lambda sv=sv: results.__setitem__(sv, attack(sv))) for sv in group]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(max(0.5, 2.0 - (time.monotonic() - t0)))
            seen = {sv: b.stop() for sv, b in bystanders.items()}
            peak.halt.set()
            peak.join()
            rss1 = rss_mib_of(node.pid)
            refusals1 = metrics(node.api, "lendmesh_http_refusals_total")
            if not node.alive():
                sys.exit(f"member 1 exited during '{case}'; its log is {node.log_path}")
            for sv in group:
                counted = delta({k: v for k, v in refusals0.items() if f'server="{sv.lower()}"' in k},
                                {k: v for k, v in refusals1.items() if f'server="{sv.lower()}"' in k}, "reason")
                b = bystanders[sv]
                rows.append((case, sv, results[sv], ", ".join(f"{k} {v}" for k, v in counted.items()) or "–",
                             seen[sv], b.longest_gap, b.slowest, rss0, peak.peak, rss1))
    print("\n### Abuse: member 1's gateway and API, a bystander each (one request every 0.2 s)\n")
    print(f"Claimed: {CLAIMED}.\n")
    print("| case | server | the attacker got | the node counted | bystander: 200 / other | longest without a 200 (s) "
          "| slowest request (s) | RSS before / peak / after (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for case, sv, got, counted, seen, gap, slowest, r0, rp, r1 in rows:
        print(f"| {case} | {sv} | {got} | {counted} | {seen} | {gap:.1f} | {slowest:.2f} "
              f"| {r0:.1f} / {rp:.1f} / {r1:.1f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="target/release/lendmesh")
    p.add_argument("--duration", type=int, default=15, help="seconds per wrk row")
    p.add_argument("--local-conns", default="1,16")
    p.add_argument("--borrowed-conns", default="1,4,16", help="a conversation per request")
    p.add_argument("--one-conversation-conns", default="4", help="every request the same conversation")
    p.add_argument("--attackers", type=int, default=300, help="slowloris and trickled-body connections")
    p.add_argument("--tiny", type=int, default=50, help="connections sending 1-byte chunks every 10 ms")
    p.add_argument("--idle", type=int, default=1500, help="idle connections")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = p.parse_args()
    a.local_conns = [int(c) for c in a.local_conns.split(",") if c]
    a.borrowed_conns = [int(c) for c in a.borrowed_conns.split(",") if c]
    a.one_conversation_conns = [int(c) for c in a.one_conversation_conns.split(",") if c]
    binary = os.path.abspath(a.bin)
    if not os.path.exists(binary):
        sys.exit(f"{binary} is missing: cargo build --release -p lendmesh-node")
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install -y wrk")
    need = 2 * max(a.idle, a.attackers) + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            sys.exit(f"the file descriptor limit is {hard}; {need} are needed (ulimit -n)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))

    root = tempfile.mkdtemp(prefix="lendmesh-load-")
    nodes, ok = [], False
    try:
        homes, boot = make_group(binary, root)
        lender = ["--mock-capacity", MOCK_CAPACITY]
        nodes.append(Node(binary, homes[0], "admin", boot, lender))
        nodes.append(Node(binary, homes[1], "member 1", "/ip4/127.0.0.1/tcp/0", lender))
        nodes.append(Node(binary, homes[2], "member 2", "/ip4/127.0.0.1/tcp/0",
                          ["--mock-capacity", "0", "--issuance", "demand", "--low-water", str(LOW_WATER),
                           "--batch", "64"]))
        t0 = time.time()
        for n in nodes:
            wait_for(f"{n.name} connected with attestations", lambda n=n: ready(n), 120)
        wait_for("member 2's tokens", lambda: get(nodes[2].api, "/v1/node")["wallet_balance"] >= LOW_WATER, 120)
        status, _, body = chat(*nodes[2].gw)
        served_by = json.loads(body).get("served_by") if status == 200 else None
        if served_by not in {get(n.api, "/v1/node")["short_id"] for n in nodes[:2]}:
            sys.exit(f"member 2's request was not borrowed: {status} {body[:300]!r}")
        print(f"3 nodes on 127.0.0.1 (lendmesh {get(nodes[0].api, '/v1/node')['version']}, "
              f"{subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split(' Copyright')[0]}), "
              f"connected and member 2 holding {LOW_WATER} tokens after {time.time() - t0:.0f} s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        load(nodes, a, root)
        abuse(nodes[1], a)
        print(f"\n{time.time() - t0:.0f} s in all; load average at the end {os.getloadavg()[0]:.2f}")
        ok = True
    finally:
        for n in nodes:
            n.stop()
        for n in nodes:
            n.wait()
        if ok and not a.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"\nthe group and the node logs are in {root}", file=sys.stderr)


if __name__ == "__main__":
    main()
