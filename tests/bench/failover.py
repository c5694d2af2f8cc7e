#!/usr/bin/env python3
"""Failover under load, one run: a gateway with 3 managed backends, SESSIONS
Streamable HTTP sessions calling get_agent in a closed loop; meanwhile a
rolling restart of all 3 backends (timed) and then a SIGKILL of one backend.
Reports the latency (p50/p99/max) of calls whose session moved on the way
(answer header X-MCP-Gateway-Moved) against calls that did not, errors, and
how long the rollout took under that load. Needs httpx (the test venv).

  .venv/bin/python tests/bench/failover.py [--sessions 8] [--after 5]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release"
ACCEPT = "application/json, text/event-stream"


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def answer(resp):
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        for line in resp.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                return json.loads(line[5:])
        return None
    return resp.json()


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--after", type=float, default=5.0, help="seconds of load after the SIGKILL")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp())
    port, admin = free_port(), free_port()
    env = {**os.environ, "MCP_GATEWAY_SESSION_KEY": "failover-bench-key-0123456789", "RUST_LOG": "warn"}
    gw = subprocess.Popen([str(BIN / "mcp-gateway"), "--http", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
                           "--managed", "3", f"--backend-arg=--db={tmp}/r.db"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, adm = f"http://127.0.0.1:{port}/mcp", f"http://127.0.0.1:{admin}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                pools = httpx.get(f"{adm}/backends", timeout=2).json()["pools"]
                if sum(b["healthy"] for b in pools[0]["backends"]) == 3:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if time.time() > deadline:
                sys.exit("the managed backends never became healthy")
            time.sleep(0.1)

        def session(c):
            init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "failover", "version": "1"}}}
            r = c.post(url, json=init, headers={"accept": ACCEPT})
            sid = r.headers["mcp-session-id"]
            h = {"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
            c.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
            return h

        with httpx.Client(timeout=30) as c:
            h = session(c)
            for i in range(20):
                c.post(url, headers=h, json={"jsonrpc": "2.0", "id": i + 1, "method": "tools/call", "params": {
                    "name": "register_agent", "arguments": {"agent_id": f"fo-{i}", "agent_url": "http://127.0.0.1:9/a2a"}}})

        stop = threading.Event()
        plain, moved, errors, ids_changed = [], [], [], []
        lock = threading.Lock()

        def worker(n):
            with httpx.Client(timeout=30) as c:
                h = session(c)
                i = 0
                while not stop.is_set():
                    i += 1
                    t0 = time.perf_counter()
                    try:
                        r = c.post(url, headers=h, json={"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
                            "name": "get_agent", "arguments": {"agent_id": f"fo-{i % 20}"}}})
                        ms = (time.perf_counter() - t0) * 1000
                        body = answer(r)
                        ok = r.status_code == 200 and body and "result" in body and not body["result"].get("isError")
                    except httpx.HTTPError as e:
                        ok, ms, r = False, 0.0, None
                        with lock:
                            errors.append(repr(e))
                        continue
                    with lock:
                        if not ok:
                            errors.append(f"{r.status_code} {r.text[:200]}")
                        elif r.headers.get("x-mcp-gateway-moved") == "1":
                            moved.append(ms)
                        else:
                            plain.append(ms)
                        if r.headers.get("mcp-session-id", h["mcp-session-id"]) != h["mcp-session-id"]:
                            ids_changed.append(n)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(a.sessions)]
        for t in threads:
            t.start()
        time.sleep(3)

        t0 = time.time()
        r = httpx.post(f"{adm}/pools/default/rollout", timeout=10)
        assert r.status_code == 202, r.text
        while True:
            status = httpx.get(f"{adm}/pools/default/rollout", timeout=10).json()
            if status.get("done"):
                break
            time.sleep(0.1)
        rollout_s = time.time() - t0
        rollout_ok = status.get("ok")
        time.sleep(2)

        children = subprocess.run(["pgrep", "-P", str(gw.pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(children[0]), signal.SIGKILL)
        time.sleep(a.after)
        stop.set()
        for t in threads:
            t.join()
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(60)
        except subprocess.TimeoutExpired:
            gw.kill()

    total = len(plain) + len(moved) + len(errors)
    print(f"failover under load: {a.sessions} Streamable HTTP sessions calling get_agent, 3 managed backends,")
    print(f"  a rollout of all 3 backends, then SIGKILL of one; {total} calls")
    print(f"  rollout of 3 backends under load: {rollout_s:.1f} s ({'ok' if rollout_ok else 'FAILED'})")
    print(f"  {'calls':<28} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, v in (("not moved", plain), ("moved (hit a failover)", moved)):
        print(f"  {label:<28} {len(v):>7} {pct(v, .5):>8.2f} {pct(v, .99):>8.2f} {max(v, default=float('nan')):>8.2f}")
    print(f"  errors seen by clients: {len(errors)}; session ids changed: {len(ids_changed)}")
    for e in errors[:5]:
        print(f"    {e}")


if __name__ == "__main__":
    main()
