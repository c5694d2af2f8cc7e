#!/usr/bin/env python3
"""Stdio pools, measured: one run, never in CI.

Starts its own stack from the release binaries: one gateway with three pools
of @modelcontextprotocol/server-everything (tests/peers) — `cold` (stdio,
no warm process), `warm` (stdio, WARM processes started ahead) and `http`
(the same server in its Streamable HTTP mode, one process) — and reports:

- session setup through the gateway (initialize answered), cold vs warm:
  SETUPS sessions one after another, each ended with DELETE; before each
  warm one the pool is given time to have its warm processes ready again;
- calls/s and CPU per 1,000 calls, stdio pool vs HTTP pool: SESSIONS
  sessions calling `echo` in a closed loop for SECONDS; CPU is the
  gateway's (for the stdio pool: its host too) and the server's (the stdio
  pool: every child; HTTP: the one server process), from /proc;
- RSS per idle stdio session: IDLE sessions opened (no GET stream), the
  growth of the gateway's RSS and the children's RSS, per session.

  .venv/bin/python tests/bench/stdio.py [--setups 20] [--sessions 8] [--seconds 10] [--idle 20] [--warm 4]
"""
import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("E2E_BIN_DIR", ROOT / "target" / "release"))
EVERYTHING = ROOT / "tests" / "peers" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
LOOPBACK = ROOT / "tests" / "peers" / "loopback.cjs"
NODE = shutil.which("node") or "node"
ACCEPT = "application/json, text/event-stream"
TICKS = os.sysconf("SC_CLK_TCK")
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_secs(pid):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def stdio_pids(admin, pool):
    data = httpx2.get(f"{admin}/backends", timeout=5).json()
    procs = next(p for p in data["pools"] if p["name"] == pool)["stdio"]["processes"]
    return {p["pid"]: p["state"] for p in procs}


def start(args, tmp):
    http_port = free_port()
    server = subprocess.Popen([NODE, "--require", str(LOOPBACK), str(EVERYTHING), "streamableHttp"],
                              env={**os.environ, "PORT": str(http_port)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw_port, admin_port = free_port(), free_port()
    cmd = [NODE, str(EVERYTHING), "stdio"]

    def pool(name, warm):
        table = json.dumps(cmd[0]), json.dumps(cmd[1:])
        return (f'[[pools]]\nname = "{name}"\nroute = "/{name}"\n'
                f'discovery = {{ stdio = {{ command = {table[0]}, args = {table[1]}, warm = {warm}, max_processes = 64 }} }}\n')
    config = tmp / "bench.toml"
    config.write_text(f"""shutdown_grace_secs = 0
shutdown_timeout_secs = 1
[listen]
http = "127.0.0.1:{gw_port}"
admin = "127.0.0.1:{admin_port}"
[limits.global]
per_ip_inflight = 100000
{pool("cold", 0)}{pool("warm", args.warm)}
[[pools]]
name = "http"
route = "/http"
health = "mcp"
health_interval = "1s"
discovery = {{ static = {{ backends = ["127.0.0.1:{http_port}"] }} }}
""")
    gw = subprocess.Popen([str(BIN / "mcp-gateway"), "--config", str(config)],
                          env={**os.environ, "RUST_LOG": "warn"}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True)
    for line in gw.stdout:
        if "mcp-gateway ready" in line:
            break
    else:
        sys.exit(f"the gateway did not start (exit {gw.wait()}); try: {BIN / 'mcp-gateway'} --config {config} --check-config")
    base, admin = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{admin_port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            pools = httpx2.get(f"{admin}/backends", timeout=2).json()["pools"]
            if all(b["healthy"] for p in pools for b in p["backends"]):
                break
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    return gw, server, base, admin


async def open_session(client, url):
    t0 = time.perf_counter()
    r = await client.post(url, headers={"accept": ACCEPT}, json=INIT)
    took = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    await client.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"},
                      json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return sid, took


async def setups(base, admin, pool, n, warm):
    times = []
    async with httpx2.AsyncClient(timeout=60) as c:
        for _ in range(n):
            if warm:  # the warm processes are back and answered their warm-up ping
                while list(stdio_pids(admin, pool).values()).count("warm") < warm:
                    await asyncio.sleep(0.05)
            sid, took = await open_session(c, f"{base}/{pool}/mcp")
            times.append(took * 1000)
            await c.delete(f"{base}/{pool}/mcp", headers={"mcp-session-id": sid})
    return times


async def load(url, sessions, seconds):
    done = 0
    stop = time.monotonic() + seconds

    async def one():
        nonlocal done
        async with httpx2.AsyncClient(timeout=60) as c:
            sid, _ = await open_session(c, url)
            headers = {"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
            i = 0
            while time.monotonic() < stop:
                i += 1
                r = await c.post(url, headers=headers, json={"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                                            "params": {"name": "echo", "arguments": {"message": "x"}}})
                assert r.status_code == 200, r.text
                done += 1
            await c.delete(url, headers={"mcp-session-id": sid})
    await asyncio.gather(*(one() for _ in range(sessions)))
    return done


def measure_load(base, admin, pool, server_pid, args):
    before_gw = cpu_secs(GW_PID)
    before_srv = cpu_secs(server_pid) if server_pid else 0.0
    pids_cpu = {}

    async def run():
        task = asyncio.create_task(load(f"{base}/{pool}/mcp", args.sessions, args.seconds))
        while not task.done():  # children come and go: sample their CPU while they live
            if not server_pid:
                for pid in stdio_pids(admin, pool):
                    pids_cpu[pid] = cpu_secs(pid)
            await asyncio.sleep(0.2)
        return await task
    t0 = time.perf_counter()
    calls = asyncio.run(run())
    wall = time.perf_counter() - t0
    gw = cpu_secs(GW_PID) - before_gw
    srv = (cpu_secs(server_pid) - before_srv) if server_pid else sum(pids_cpu.values())
    return calls / wall, gw / calls * 1000, srv / calls * 1000


async def idle_sessions(base, admin, pool, n):
    gw_before = rss_kib(GW_PID)
    clients = [httpx2.AsyncClient(timeout=60) for _ in range(n)]
    sids = [(await open_session(c, f"{base}/{pool}/mcp"))[0] for c in clients]
    await asyncio.sleep(1)
    pids = [p for p, s in stdio_pids(admin, pool).items() if s == "running"]
    children = sum(rss_kib(p) + sum(rss_kib(int(c)) for c in child_pids(p)) for p in pids)
    gw_growth = rss_kib(GW_PID) - gw_before
    for c, sid in zip(clients, sids):
        await c.delete(f"{base}/{pool}/mcp", headers={"mcp-session-id": sid})
        await c.aclose()
    return gw_growth / n, children / max(len(pids), 1), len(pids)


def child_pids(pid):
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


GW_PID = 0


def main():
    global GW_PID
    p = argparse.ArgumentParser()
    p.add_argument("--setups", type=int, default=20)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--idle", type=int, default=20)
    p.add_argument("--warm", type=int, default=4)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gw, server, base, admin = start(args, Path(tmp))
        GW_PID = gw.pid
        try:
            for pool, warm in [("cold", 0), ("warm", args.warm)]:
                t = sorted(asyncio.run(setups(base, admin, pool, args.setups, warm)))
                print(f"setup {pool:4}: median {statistics.median(t):7.1f} ms  p90 {t[int(len(t) * 0.9) - 1]:7.1f} ms"
                      f"  min {t[0]:6.1f} ms  ({len(t)} sessions)")
            for pool, server_pid in [("http", server.pid), ("cold", None)]:
                rate, gw_cpu, srv_cpu = measure_load(base, admin, pool, server_pid, args)
                print(f"calls {pool:4}: {rate:7.0f} calls/s  CPU per 1,000 calls: gateway {gw_cpu * 1000:6.1f} ms,"
                      f" server {srv_cpu * 1000:6.1f} ms  ({args.sessions} sessions, {args.seconds:.0f} s)")
            gw_kib, child_kib, n = asyncio.run(idle_sessions(base, admin, "cold", args.idle))
            print(f"idle stdio session: gateway +{gw_kib:.0f} KiB, its process (with children) {child_kib / 1024:.1f} MiB"
                  f"  ({n} sessions)")
        finally:
            gw.terminate()
            gw.wait(10)
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
