"""Helpers the contrib scripts share: run the lendmesh CLI, read a node's API and its process's memory."""

import json
import subprocess
import sys
import urllib.request


def cli(binary, home, *args):
    """`lendmesh --home HOME ARGS...`; its stdout, or the script exits with the command's output."""
    out = subprocess.run([binary, "--home", home, *args], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        sys.exit(f"lendmesh {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def rss_kib(pid):
    """A process's resident memory (VmRSS), KiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def get(base, path):
    """GET a JSON endpoint of a node's API."""
    with urllib.request.urlopen(f"{base}{path}", timeout=5) as r:
        return json.loads(r.read())
