#!/usr/bin/env python3
"""What an idle member costs: RSS and CPU of every node of an N-member group on loopback, doing nothing but staying
a group (pings every 500 ms, attestations, gossip heartbeats, AutoNAT, Kademlia), sampled from /proc.

    cargo build --release -p lendmesh-node
    python3 contrib/idle-cost.py [--bin target/release/lendmesh] [--members 10] [--minutes 3] [--settle 30]

It makes the group with the CLI in a temporary directory (the admin plus members-1 joined members, 2048-bit issuer
key for a quick setup), starts every node at once, waits until each is connected to all the others and the
settle time has passed (the first refills are done), then samples each node's RSS and CPU time for the given
minutes and prints a markdown table: per node RSS at the start and the end of the window and CPU % over it, and
the median and the maximum. Linux only (/proc). Everything runs on 127.0.0.1 and is stopped at the end.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from lmnode import cli, get, rss_kib

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; after the ")" they are the 12th and 13th.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="target/release/lendmesh")
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--settle", type=float, default=30.0, help="seconds after all are connected")
    a = p.parse_args()
    binary = os.path.abspath(a.bin)
    if not os.path.exists(binary):
        sys.exit(f"{binary} is missing: cargo build --release -p lendmesh-node")

    root = tempfile.mkdtemp(prefix="lendmesh-idle-")
    homes = [os.path.join(root, f"n{i}") for i in range(a.members)]
    ids = []
    for h in homes:
        ids.append(re.search(r"peer id: (\S+)", cli(binary, h, "init")).group(1))
    cli(binary, homes[0], "group", "create", "--name", "idle", "--rsa-bits", "2048")
    port = 20000 + os.getpid() % 20000
    boot = f"/ip4/127.0.0.1/tcp/{port}"
    for h, peer in zip(homes[1:], ids[1:]):
        invite = os.path.join(h, "invite.txt")
        cli(binary, homes[0], "group", "invite", peer, "--quota", "200", "--bootstrap", boot, "--out", invite)
        cli(binary, h, "join", invite)
    cli(binary, homes[0], "group", "rotate")

    procs = []
    try:
        for i, h in enumerate(homes):
            listen = boot if i == 0 else "/ip4/127.0.0.1/tcp/0"
            log = open(os.path.join(h, "node.log"), "w")
            procs.append(
                subprocess.Popen(
                    [binary, "--home", h, "run", "--listen", listen, "--api", "127.0.0.1:0", "--gateway",
                     "127.0.0.1:0", "--mock-capacity", "1000"],
                    stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "warn"},
                )
            )
        apis = []
        for h in homes:
            deadline = time.time() + 60
            path = os.path.join(h, "api.addr")
            while not os.path.exists(path):
                if time.time() > deadline:
                    sys.exit(f"{h}: no api.addr within 60 s")
                time.sleep(0.2)
            time.sleep(0.2)
            apis.append("http://" + open(path).read().strip())
        deadline = time.time() + 120
        while True:
            try:
                if all(get(api, "/v1/node")["connected_peers"] >= a.members - 1 for api in apis):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("the group did not connect fully within 120 s")
            time.sleep(0.5)
        time.sleep(a.settle)
        start = [(rss_kib(p.pid), cpu_s(p.pid)) for p in procs]
        t0 = time.time()
        time.sleep(a.minutes * 60)
        elapsed = time.time() - t0
        end = [(rss_kib(p.pid), cpu_s(p.pid)) for p in procs]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    rows = []
    for i, ((r0, c0), (r1, c1)) in enumerate(zip(start, end)):
        rows.append((("admin" if i == 0 else f"member {i}"), r0 / 1024, r1 / 1024, 100 * (c1 - c0) / elapsed))
    members = [r for r in rows if r[0] != "admin"]
    print(f"{a.members} nodes on 127.0.0.1, all connected, then {a.settle:.0f} s of settling, then idle for "
          f"{elapsed:.0f} s\n")
    print("| node | RSS start (MiB) | RSS end (MiB) | CPU % |")
    print("|---|---|---|---|")
    for name, r0, r1, cpu in rows:
        print(f"| {name} | {r0:.1f} | {r1:.1f} | {cpu:.2f} |")
    rss = sorted(r[2] for r in members)
    cpu = sorted(r[3] for r in members)
    print(f"\nmembers: RSS median {rss[len(rss) // 2]:.1f} MiB, max {rss[-1]:.1f} MiB; "
          f"CPU median {cpu[len(cpu) // 2]:.2f} %, max {cpu[-1]:.2f} % of one core")


if __name__ == "__main__":
    main()
