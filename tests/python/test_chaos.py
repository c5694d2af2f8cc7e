"""Chaos, bounded in time: 3 managed backends, 50+ concurrent sessions
(Streamable HTTP and legacy SSE on the Python SDK 2.3, more legacy SSE on
the seed's 1.x SDK) calling read and write tools for 35 s while every
backend is restarted in turn by `mcp-gateway rollout` and one is killed
with SIGKILL. Nothing a client can see may go wrong: no failed read, no
session that saw an error or a new id, every acknowledged write stored,
every failed write answered "outcome unknown"."""

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError as McpError

from conftest import BIN, ROOT, Gateway, metric, wait_until

SECONDS = 35
STREAMABLE, LEGACY, SEED = 36, 10, 6
READS = ["health_check", "get_agent", "list_agents", "search_agents"]
OUTCOME_UNKNOWN = -32003
VENV1 = ROOT / ".venv-mcp1" / "bin" / "python"




def backend_children(parent):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = open(f"/proc/{p}/stat").read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"registry-backend" in open(f"/proc/{p}/cmdline", "rb").read():
                out.append(int(p))
        except (OSError, ValueError, IndexError):
            pass
    return out


def describe(e):
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"


class Tally:
    def __init__(self):
        self.reads = self.writes = 0
        self.read_failures = []
        self.write_failures = []      # anything but outcome-unknown
        self.outcome_unknown = 0
        self.acknowledged = []
        self.session_errors = []
        self.id_changes = []
        self.latency = {"moved": [], "direct": []}
        self.chaos_over = None      # when the rollout and the kill were done
        self.sessions_after_chaos = 0  # sessions that completed a read after that


async def session_loop(kind, n, url, deadline, tally):
    ids = set()
    started = {}

    async def on_request(request):
        started[id(request)] = time.monotonic()
        if "mcp-session-id" in request.headers:
            ids.add(request.headers["mcp-session-id"])

    async def on_response(response):
        t0 = started.pop(id(response.request), None)
        if t0 is not None and response.request.method == "POST":
            bucket = "moved" if response.headers.get("x-mcp-gateway-moved") else "direct"
            tally.latency[bucket].append(time.monotonic() - t0)

    hooks = {"request": [on_request], "response": [on_response]}
    rng = random.Random(n)

    async def work(session):
        await session.initialize()
        mine = f"chaos-{kind}-{n}"
        r = await session.call_tool("register_agent", {"agent_id": mine, "agent_url": "http://127.0.0.1:9/a2a"})
        if r.is_error:
            tally.session_errors.append(f"{kind} {n}: setup {r}")
            return
        tally.acknowledged.append(mine)
        i = 0
        counted = False
        # until the deadline, and in any case until this session has read once
        # after the chaos (bounded: a chaos that never ends fails the test)
        while time.monotonic() < deadline or (not counted and time.monotonic() < deadline + 60):
            i += 1
            if rng.random() < 0.7:
                name = rng.choice(READS)
                args = {"health_check": {}, "get_agent": {"agent_id": mine}, "list_agents": {"limit": 5},
                        "search_agents": {"query": "chaos", "limit": 5}}[name]
                tally.reads += 1
                try:
                    res = await session.call_tool(name, args)
                    if res.is_error:
                        tally.read_failures.append(f"{kind} {n} {name}: {res.content[0].text}")
                    elif not counted and tally.chaos_over is not None:
                        counted = True
                        tally.sessions_after_chaos += 1
                except Exception as e:  # noqa: BLE001 - every failure is a finding
                    tally.read_failures.append(f"{kind} {n} {name}: {type(e).__name__}: {e}")
            else:
                tally.writes += 1
                agent = f"{mine}-w{i}"
                try:
                    res = await session.call_tool("register_agent", {"agent_id": agent, "agent_url": "http://127.0.0.1:9/a2a"})
                    if res.is_error:
                        tally.write_failures.append(f"{kind} {n}: {res.content[0].text}")
                    else:
                        tally.acknowledged.append(agent)
                except McpError as e:
                    if e.error.code == OUTCOME_UNKNOWN:
                        tally.outcome_unknown += 1
                    else:
                        tally.write_failures.append(f"{kind} {n}: {e.error.code} {e.error.message}")
                except Exception as e:  # noqa: BLE001
                    tally.write_failures.append(f"{kind} {n}: {type(e).__name__}: {e}")
            await asyncio.sleep(0.15)

    try:
        if kind == "streamable":
            async with httpx2.AsyncClient(event_hooks=hooks, timeout=60) as http:
                async with streamable_http_client(f"{url}/mcp", http_client=http) as (r, w, *_):
                    async with ClientSession(r, w) as s:
                        await work(s)
        else:
            def factory(headers=None, timeout=None, auth=None):
                return httpx2.AsyncClient(headers=headers, timeout=60, auth=auth, event_hooks=hooks)
            async with sse_client(f"{url}/sse", httpx_client_factory=factory) as (r, w):
                async with ClientSession(r, w) as s:
                    await work(s)
    except Exception as e:  # noqa: BLE001
        import traceback
        if os.environ.get("CHAOS_DEBUG"):
            traceback.print_exception(e)
        tally.session_errors.append(f"{kind} {n}: {describe(e)}")
    if kind == "streamable" and len(ids) != 1:
        tally.id_changes.append(f"{kind} {n}: {ids}")


# GET streams on a connection each, and on shared HTTP/2 connections
@pytest.mark.parametrize("http2_streams", [False, True], ids=["http1-streams", "http2-streams"])
def test_sessions_survive_a_rollout_and_a_killed_backend_under_load(tmp_path, http2_streams):
    assert VENV1.exists(), "the mcp 1.x venv (made by tests/run.sh) is missing"
    pool = (f'{{ managed = {{ command = "{BIN / "registry-backend"}", count = 3, '
            f'args = ["--db={tmp_path / "chaos.db"}"] }} }}')
    gw = Gateway(tmp_path, "chaos", [], pool=pool, expect_backends=3,
                 pool_options=f'health_interval = "300ms"\nhttp2_streams = {str(http2_streams).lower()}')
    tally = Tally()
    events = {}
    seed = subprocess.Popen([str(VENV1), str(Path(__file__).parent / "mcp1_reader.py"), f"{gw.http}/sse",
                             str(SEED), str(SECONDS)], stdout=subprocess.PIPE, text=True)

    async def chaos(deadline):
        await asyncio.sleep(3)
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "mcp-gateway"), "rollout", "--admin", gw.admin.removeprefix("http://"), "--pool", "registry",
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        events["rollout"] = (proc.returncode, out.decode(), time.monotonic() - t0)
        await asyncio.sleep(2)
        victim = backend_children(gw.proc.p.pid)[0]
        os.kill(victim, signal.SIGKILL)
        events["killed"] = victim
        tally.chaos_over = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)

    async def main():
        deadline = time.monotonic() + SECONDS
        tasks = [session_loop("streamable", i, gw.http, deadline, tally) for i in range(STREAMABLE)]
        tasks += [session_loop("legacy", i, gw.http, deadline, tally) for i in range(LEGACY)]
        await asyncio.gather(chaos(deadline), *tasks)

    try:
        asyncio.run(main())
        seed_out, _ = seed.communicate(timeout=120)
        seed_result = json.loads(seed_out.strip().splitlines()[-1])
        code, lines, rollout_secs = events["rollout"]
        assert code == 0, lines
        assert "rollout of pool registry done" in lines, lines
        # the rollout's progress, as /metrics shows it to a dashboard
        rolled = {name: metric(gw, name, '{pool="registry"}') for name in
                  ("mcp_gateway_pool_backends", "mcp_gateway_rollout_replaced",
                   "mcp_gateway_rollout_in_progress", "mcp_gateway_rollout_succeeded")}
        assert rolled == {"mcp_gateway_pool_backends": 3, "mcp_gateway_rollout_replaced": 3,
                          "mcp_gateway_rollout_in_progress": 0, "mcp_gateway_rollout_succeeded": 1}, rolled
        # the killed one is replaced by the supervisor
        wait_until(lambda: len(gw.healthy_backends()) == 3, 60, "three healthy backends again")
        failovers = metric(gw, "mcp_gateway_failovers_total")
        summary = {
            "sessions": STREAMABLE + LEGACY + SEED, "reads": tally.reads, "writes": tally.writes,
            "seed_calls": seed_result["calls"], "outcome_unknown": tally.outcome_unknown,
            "failovers": failovers, "rollout_seconds": round(rollout_secs, 1),
            "latency_ms": {k: summarize(v) for k, v in tally.latency.items()},
        }
        print(json.dumps(summary))
        (ROOT / "target").mkdir(exist_ok=True)
        (ROOT / "target" / "chaos-summary.json").write_text(json.dumps(summary, indent=2))
        assert not tally.session_errors, tally.session_errors[:5]
        assert not tally.read_failures, tally.read_failures[:5]
        assert not tally.id_changes, tally.id_changes[:5]
        assert not tally.write_failures, tally.write_failures[:5]
        assert not seed_result["failures"], seed_result["failures"][:5]
        # every session kept working through the chaos: each one's calls went
        # on after the rollout and the kill (not a count that depends on the
        # machine's speed)
        assert tally.sessions_after_chaos == STREAMABLE + LEGACY, (tally.sessions_after_chaos, STREAMABLE + LEGACY)
        assert seed_result["failures"] == [] and seed_result["calls"] >= SEED, seed_result
        assert failovers > 0, "the chaos must have moved sessions"
    finally:
        if seed.poll() is None:
            seed.kill()
        gw.proc.stop()
    # every acknowledged write is in the store
    missing = []
    with httpx2.Client(timeout=30) as c:
        from conftest import Backend, initialize, rpc, sse_messages
        check = Backend(tmp_path / "chaos.db", "checker")
        try:
            url = f"http://{check.addr}/mcp"
            sid, _ = initialize(c, url)
            for agent in tally.acknowledged:
                r = rpc(c, url, sid, "tools/call", {"name": "get_agent", "arguments": {"agent_id": agent}})
                # stored means: the store answered with that very agent (an error
                # of any kind, or another answer, counts as missing)
                try:
                    msgs = sse_messages(r.text) if r.headers["content-type"].startswith("text/event-stream") \
                        else [r.json()]
                    result = msgs[-1]["result"]
                    found = not result.get("isError") and result["structuredContent"]["agent_id"] == agent
                except (KeyError, IndexError, ValueError):
                    found = False
                if r.status_code != 200 or not found:
                    missing.append(agent)
        finally:
            check.proc.stop()
    assert not missing, f"{len(missing)} acknowledged writes are not stored: {missing[:5]}"


def summarize(samples):
    if not samples:
        return {"n": 0}
    s = sorted(samples)
    pick = lambda q: round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)  # noqa: E731
    return {"n": len(s), "p50": pick(0.5), "p99": pick(0.99), "max": round(s[-1] * 1000, 2)}
