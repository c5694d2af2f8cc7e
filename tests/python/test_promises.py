"""What the README promises and nothing else tested: retries and ejection,
health checks taking a backend out and back (a pool with none left in
panic, still trying it), the legacy session cap, the
idle timeout, every remaining bad-input case, the README's own run command,
and weighted / least-loaded backend choice under load."""

import json
import os
import signal
import socket
import subprocess
import time

import httpx2

from conftest import (ACCEPT, BIN, DISCOVER, ROOT, STATELESS, Backend, FlakyHandler, Gateway, free_port, listens_on,
                      metric, wait_until)



def test_a_sessionless_request_refused_by_one_backend_goes_to_another_which_is_ejected(tmp_path):
    a, b = Backend(tmp_path / "r.db", "retry-a"), Backend(tmp_path / "r.db", "retry-b")
    # health checks an hour apart: only the request path can notice b is gone
    gw = Gateway(tmp_path, "retry", [a.addr, b.addr],
                 pool_options='health_interval = "1h"\neject_base = "1h"\neject_for = "1h"')
    try:
        b.proc.p.kill()
        b.proc.p.wait(10)
        with httpx2.Client(timeout=10) as c:
            for _ in range(20):
                r = c.post(f"{gw.http}/mcp", headers=STATELESS, json=DISCOVER)
                assert r.status_code == 200, r.text
        state = {x["addr"]: x for x in gw.backends()}
        assert state[b.addr]["ejected"] is True and state[a.addr]["ejected"] is False
        assert state[b.addr]["healthy"] is True, "pingora has not checked yet: the ejection was the request path's"
    finally:
        gw.proc.stop()
        a.proc.stop()


def test_health_checks_take_a_backend_out_and_back_and_a_pool_left_with_none_tries_it_anyway(tmp_path, flaky_backend):
    extra = f"""
[[pools]]
name = "flaky"
route = "/flaky"
health_interval = "200ms"
discovery = {{ static = {{ backends = ["{flaky_backend}"] }} }}
"""
    backend = Backend(tmp_path / "f.db", "flaky-neighbour")
    gw = Gateway(tmp_path, "flaky", [backend.addr], extra_pools=extra)
    url = f"{gw.http}/flaky/mcp"
    ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
    try:
        wait_until(lambda: gw.healthy_backends("flaky") == [flaky_backend], 30, "flaky healthy")
        assert httpx2.post(url, json=ping, headers={"accept": ACCEPT}, timeout=5).json()["result"] == {"from": "flaky"}
        assert metric(gw, "mcp_gateway_pool_panic", '{pool="flaky"}') == 0
        FlakyHandler.ready = False
        wait_until(lambda: gw.healthy_backends("flaky") == [], 30, "the failing check to take it out")
        # its only backend is out: the pool is in panic and tries it anyway (it still answers)
        assert metric(gw, "mcp_gateway_pool_panic", '{pool="flaky"}') == 1
        assert metric(gw, "mcp_gateway_pool_panic", '{pool="registry"}') == 0
        r = httpx2.post(url, json=ping, headers={"accept": ACCEPT}, timeout=5)
        assert r.status_code == 200 and r.json()["result"] == {"from": "flaky"}
        assert metric(gw, "mcp_gateway_pool_panic_picks_total", '{pool="flaky"}') == 1
        FlakyHandler.ready = True
        wait_until(lambda: gw.healthy_backends("flaky") == [flaky_backend], 30, "the passing check to bring it back")
        assert metric(gw, "mcp_gateway_pool_panic", '{pool="flaky"}') == 0
        assert httpx2.post(url, json=ping, headers={"accept": ACCEPT}, timeout=5).status_code == 200
        assert metric(gw, "mcp_gateway_pool_panic_picks_total", '{pool="flaky"}') == 1
    finally:
        FlakyHandler.ready = True
        gw.proc.stop()
        backend.proc.stop()


def open_sse(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    s.settimeout(10)
    buf = b""
    while b"sessionId=" not in buf or b"\n\n" not in buf.split(b"event: endpoint", 1)[-1]:
        chunk = s.recv(4096)
        assert chunk, buf
        buf += chunk
    return s, next(l for l in buf.decode().splitlines() if l.startswith("data: "))[6:].strip()


def test_the_legacy_session_cap_answers_503(tmp_path):
    backend = Backend(tmp_path / "cap.db", "cap-backend")
    # client_share = 1: this one client may hold both, so the pool's cap answers
    gw = Gateway(tmp_path, "legacy-cap", [backend.addr], sessions="max_legacy_sessions = 2",
                 limits="client_share = 1.0")
    held = []
    try:
        held = [open_sse(gw.http_port)[0], open_sse(gw.http_port)[0]]
        r = httpx2.get(f"{gw.http}/sse", headers={"accept": "text/event-stream"}, timeout=5)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert "too many legacy SSE sessions" in r.json()["error"]["message"]
        held.pop().close()
        wait_until(lambda: httpx2.get(f"{gw.admin}/metrics", timeout=5).text.count("mcp_gateway_legacy_sessions 1") == 1,
                   10, "the closed session to leave the table")
        with httpx2.stream("GET", f"{gw.http}/sse", headers={"accept": "text/event-stream"}, timeout=5) as ok:
            assert ok.status_code == 200
    finally:
        for s in held:
            s.close()
        gw.proc.stop()
        backend.proc.stop()


def test_a_client_that_stalls_mid_body_is_cut_off_after_idle_timeout(tmp_path):
    backend = Backend(tmp_path / "idle.db", "idle-backend")
    # body_min_rate = 1: the body's own rate rule (test_slow_clients.py) does
    # not come first, so the idle timeout is what cuts it
    gw = Gateway(tmp_path, "idle", [backend.addr], limits='idle_timeout = "1s"\nbody_min_rate = 1')
    try:
        s = socket.create_connection(("127.0.0.1", gw.http_port))
        started = time.monotonic()  # before the gateway can have started its clock
        s.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"")
        s.settimeout(15)  # a gateway that never cuts it fails here
        answer = s.recv(4096)
        waited = time.monotonic() - started
        s.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer
        # not cut before its idle_timeout (a slow machine only makes this longer)
        assert waited >= 1.0, waited
    finally:
        gw.proc.stop()
        backend.proc.stop()


def test_remaining_bad_input_gets_clear_errors(stack):
    gw = stack.gw
    put = httpx2.put(f"{gw.http}/mcp", json={}, timeout=5)
    assert put.status_code == 405 and put.headers["allow"] == "GET, POST, DELETE"
    assert put.json()["error"]["code"] == -32600
    get = httpx2.get(f"{gw.http}/mcp", headers={"accept": "text/event-stream"}, timeout=5)
    assert get.status_code == 400 and "Mcp-Session-Id" in get.json()["error"]["message"]
    delete = httpx2.delete(f"{gw.http}/mcp", timeout=5)
    assert delete.status_code == 400 and "Mcp-Session-Id" in delete.json()["error"]["message"]
    assert httpx2.post(f"{gw.http}/sse", json={}, timeout=5).status_code == 405
    assert httpx2.get(f"{gw.http}/messages?sessionId=x", timeout=5).status_code == 405
    # a malformed message on a live legacy session: 400, and the session lives on
    s, path = open_sse(gw.http_port)
    try:
        bad = httpx2.post(f"{gw.http}{path}", content=b"{nope", headers={"content-type": "application/json"}, timeout=5)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == -32700
        ok = httpx2.post(f"{gw.http}{path}", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}}, timeout=5)
        assert ok.status_code == 202
    finally:
        s.close()
    assert httpx2.get(f"{gw.http}/nothing-here", timeout=5).status_code == 404


def test_the_readme_run_command_serves_the_seed_flow_at_localhost(tmp_path):
    """deploy/local/run.sh as the README gives it, on free ports, reached the way
    the seed's client reaches it: sse_client("http://localhost:PORT/sse")."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.sse import sse_client
    for _ in range(4):
        http, https, admin = free_port(), free_port(), free_port()
        proc = subprocess.Popen(["bash", str(ROOT / "deploy" / "local" / "run.sh")], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "HTTP_ADDR": f"127.0.0.1:{http}", "HTTPS_ADDR": f"127.0.0.1:{https}",
                                     "ADMIN_ADDR": f"127.0.0.1:{admin}", "RUN_DIR": str(tmp_path / "run"),
                                     "RUST_LOG": "warn"})
        lines = []
        try:
            wait_until(lambda: proc.poll() is not None or (
                all(listens_on(proc.pid, p) for p in (http, https, admin))
                and len([b for b in httpx2.get(f"http://127.0.0.1:{admin}/backends", timeout=2).json()["pools"][0]["backends"]
                         if b["healthy"]]) == 2), 300, "the local stack")
            if proc.poll() is None:
                break
        except AssertionError:
            proc.kill()
            raise
    try:
        async def seed():
            async with sse_client(f"http://localhost:{http}/sse") as (r, w):
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    tools = (await s.list_tools()).tools
                    res = await s.call_tool("health_check", {})
                    return len(tools), json.loads(res.content[0].text)["status"]
        assert asyncio.run(seed()) == (8, "healthy")
        assert (tmp_path / "run" / "registry.db").exists()
        assert (tmp_path / "run" / "tls" / "ca.pem").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        lines = out.splitlines()
    assert any(f"http://127.0.0.1:{http}/sse" in l for l in lines), lines[-10:]


def requests_per_backend(gw, pool="registry"):
    return {b["addr"]: b["requests"] for b in gw.backends(pool)}


def test_backend_choice_follows_weights_and_load(tmp_path, slow_backend):
    a, b = Backend(tmp_path / "w.db", "heavy"), Backend(tmp_path / "w.db", "light")
    extra = f"""
[[pools]]
name = "mixed"
route = "/mixed"
health_interval = "300ms"
discovery = {{ static = {{ backends = ["{slow_backend}", "{a.addr}"] }} }}
"""
    gw = Gateway(tmp_path, "weights", [f"{a.addr}#3", f"{b.addr}#1"], extra_pools=extra)
    try:
        wait_until(lambda: len(gw.healthy_backends("mixed")) == 2, 30, "mixed pool")
        # weighted: 16 concurrent stateless clients for 3 s
        before = requests_per_backend(gw)
        out = subprocess.run([str(BIN / "mcp-client"), "--url", gw.http, "-o", "json", "load", "--sessions", "16",
                              "--duration", "3s", "--warmup", "0s", "--transports", "stateless", "--mix",
                              "get_agent=1", "--seed-agents", "0"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        after = requests_per_backend(gw)
        heavy, light = after[a.addr] - before[a.addr], after[b.addr] - before[b.addr]
        assert heavy > 1.4 * light > 0, f"weight 3 got {heavy}, weight 1 got {light}"
        # least loaded: a backend that takes 0.5 s per call gets few of them
        mixed_before = requests_per_backend(gw, "mixed")
        import concurrent.futures

        def call(i):
            return httpx2.post(f"{gw.http}/mixed/mcp", headers=STATELESS, json={**DISCOVER, "id": i}, timeout=10).status_code
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(call, range(200)))
        assert set(codes) == {200}
        mixed = requests_per_backend(gw, "mixed")
        slow, fast = mixed[slow_backend] - mixed_before[slow_backend], mixed[a.addr] - mixed_before[a.addr]
        assert slow + fast == 200
        assert fast > 5 * slow, f"the slow backend got {slow} of 200"
    finally:
        gw.proc.stop()
        a.proc.stop()
        b.proc.stop()
