"""Starts the real stack for a peer script, with the standard library only
(peer scripts run in venvs and Node environments that have nothing else):
three registry backends on one embedded store and mcp-gateway in front,
plain HTTP + HTTPS (development CA) + admin, all on 127.0.0.1."""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("E2E_BIN_DIR", ROOT / "target" / "release"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens_on(pid, port):
    """Whether process `pid` itself listens on 127.0.0.1:`port` (not someone
    who won the race for the port)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return False
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].split(":")[1], 16) == port and parts[9] in inodes:
                return True
    return False


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - poll until the deadline
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def _start(args, pattern, env=None):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                         env={**os.environ, "RUST_LOG": "warn", **(env or {})})
    found = {}

    def read():
        for line in p.stdout:
            m = re.search(pattern, line)
            if m and "m" not in found:
                found["m"] = m
    threading.Thread(target=read, daemon=True).start()
    wait_until(lambda: "m" in found or p.poll() is not None, 30, args[0])
    if "m" not in found:
        raise SystemExit(f"{args[0]} exited with {p.returncode}")
    return p, found["m"]


class Stack:
    def __init__(self, backends=3, fixture=False):
        """`fixture`: also start tests' conformance-fixture server as a second
        pool at /fixture (checked by the MCP health check), a virtual server at
        /both over the fixture (no prefix) and the registry (`reg_`), and the
        fixture speaking only 2026-07-28 as a pool at /modern."""
        self.backends = backends
        self.fixture = fixture
        self.procs = []

    def __enter__(self):
        try:
            return self._start_all()
        except BaseException:
            self.__exit__(None, None, None)  # no orphans holding the caller's pipes
            raise

    def _start_all(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="peer-stack-")
        tmp = Path(self.tmp.name)
        addrs = []
        for i in range(self.backends):
            p, m = _start([str(BIN / "registry-backend"), "--listen", "127.0.0.1:0", "--db", str(tmp / "r.db"),
                           "--instance", f"peer-{i}"], r"listening on http://([0-9.:]+)/mcp")
            self.procs.append(p)
            addrs.append(m.group(1))
        extra = ""
        if self.fixture:
            p, m = _start([str(BIN / "conformance-fixture")], r"listening on http://([0-9.:]+)/mcp")
            self.procs.append(p)
            q, modern = _start([str(BIN / "conformance-fixture"), "--stateless-only"],
                               r"listening on http://([0-9.:]+)/mcp")
            self.procs.append(q)
            extra = f"""# The fixture again, speaking only 2026-07-28: session clients reach it through the version bridge.
[[pools]]
name = "modern"
route = "/modern"
health = "mcp"
health_interval = "300ms"
discovery = {{ static = {{ backends = ["{modern.group(1)}"] }} }}
[[pools]]
name = "fixture"
route = "/fixture"
health = "mcp"
health_interval = "300ms"
discovery = {{ static = {{ backends = ["{m.group(1)}"] }} }}
# A virtual server over both: the fixture's names as they are, the registry's prefixed.
[[servers]]
name = "both"
route = "/both"
[[servers.members]]
pool = "fixture"
prefix = ""
[[servers.members]]
pool = "registry"
prefix = "reg_"
"""
        for _ in range(4):
            self.http_port, self.https_port, self.admin_port = free_port(), free_port(), free_port()
            conf = tmp / "gateway.toml"
            conf.write_text(f"""
shutdown_grace_secs = 0
shutdown_timeout_secs = 1
[listen]
http = "127.0.0.1:{self.http_port}"
https = "127.0.0.1:{self.https_port}"
admin = "127.0.0.1:{self.admin_port}"
[tls]
dev_dir = "{tmp / 'tls'}"
[[pools]]
name = "registry"
health_interval = "300ms"
discovery = {{ static = {{ backends = {json.dumps(addrs)} }} }}
{extra}""")
            p, _ = _start([str(BIN / "mcp-gateway"), "--config", str(conf)], r"mcp-gateway ready",
                          env={"MCP_GATEWAY_SESSION_KEY": "peer-stack-session-key-0123456789"})
            ports = (self.http_port, self.https_port, self.admin_port)
            wait_until(lambda: p.poll() is not None or all(listens_on(p.pid, q) for q in ports), 60,
                       "the gateway to hold its ports")
            if p.poll() is None:
                break
        else:
            raise SystemExit("the gateway lost the race for its ports 4 times")
        self.procs.append(p)
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.https = f"https://127.0.0.1:{self.https_port}"
        self.ca = str(tmp / "tls" / "ca.pem")

        def ready():
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/backends", timeout=2) as r:
                pools = json.load(r)["pools"]
            registry = next(p for p in pools if p["name"] == "registry")
            return (sum(b["healthy"] for b in registry["backends"]) == self.backends
                    and all(b["healthy"] for p in pools for b in p["backends"] if p["name"] != "registry"))
        wait_until(ready, 30, "gateway health checks")
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.tmp.cleanup()


class Checks:
    """Counts named checks and prints one line per peer at the end."""

    def __init__(self, peer):
        self.peer, self.passed, self.failed = peer, 0, []

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok   {name}")
        else:
            self.failed.append(name)
            print(f"  FAIL {name} {detail}")

    def finish(self):
        print(f"{self.peer}: {self.passed} passed, {len(self.failed)} failed")
        sys.exit(1 if self.failed else 0)
