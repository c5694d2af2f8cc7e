"""The gateway end to end: three transports through real MCP SDK clients
over plain HTTP and TLS, session routing across backends and gateway
replicas, and bad input that must get a clear error and harm nobody."""

import asyncio
import base64
import json
import socket
import time

import httpx2
import pytest
from mcp import Client, ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from conftest import ACCEPT, initialize, instance_of, rpc, sse_messages

SEED_TOOLS = {"register_agent", "list_agents", "search_agents", "get_agent", "update_agent",
              "delete_agent", "get_agent_facts", "health_check"}


def data(result):
    assert result.content, result
    return json.loads(result.content[0].text)


async def exercise_registry(call, list_tools, prefix):
    """Runs every registry tool through one client session."""
    tools = await list_tools()
    assert {t.name for t in tools.tools} == SEED_TOOLS
    agent = f"{prefix}-agent"
    reg = await call("register_agent", {"agent_id": agent, "agent_url": "http://127.0.0.1:9/a2a",
                                        "capabilities": ["chat", prefix]})
    assert not reg.is_error, reg
    dup = await call("register_agent", {"agent_id": agent, "agent_url": "http://127.0.0.1:9/a2a"})
    assert dup.is_error and data(dup)["message"] == "Agent ID already exists"
    assert data(await call("get_agent", {"agent_id": agent}))["agent_id"] == agent
    found = data(await call("search_agents", {"capabilities": prefix}))
    assert [a["agent_id"] for a in found["agents"]] == [agent]
    listed = data(await call("list_agents", {"limit": 1000}))
    assert agent in [a["agent_id"] for a in listed["agents"]]
    upd = data(await call("update_agent", {"agent_id": agent, "status": "inactive"}))
    assert upd["agent"]["status"] == "inactive"
    facts = data(await call("get_agent_facts", {"username": agent.replace("-", "_")}))
    assert facts["agent_name"] == agent
    assert data(await call("health_check", {}))["status"] == "healthy"
    assert not (await call("delete_agent", {"agent_id": agent})).is_error
    missing = await call("get_agent", {"agent_id": agent})
    assert missing.is_error and data(missing)["message"] == "Agent not found"


def clients(gw, scheme):
    """(base url, httpx client factory) for plain HTTP or TLS with the dev CA."""
    if scheme == "http":
        return gw.http, lambda headers=None, timeout=None, auth=None: httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth)
    ctx = gw.ssl_context()
    return gw.https, lambda headers=None, timeout=None, auth=None: httpx2.AsyncClient(verify=ctx, headers=headers, timeout=timeout, auth=auth)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_legacy_sse_client_runs_every_tool(stack, scheme):
    base, factory = clients(stack.gw, scheme)

    async def main():
        async with sse_client(f"{base}/sse", httpx_client_factory=factory) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                await exercise_registry(s.call_tool, s.list_tools, f"legacy-{scheme}")
    asyncio.run(main())


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_streamable_http_client_runs_every_tool(stack, scheme):
    base, factory = clients(stack.gw, scheme)

    async def main():
        async with factory() as http:
            async with streamable_http_client(f"{base}/mcp", http_client=http) as (r, w, *_):
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    await exercise_registry(s.call_tool, s.list_tools, f"streamable-{scheme}")
    asyncio.run(main())


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_client_auto_mode_runs_every_tool(stack, scheme):
    base, factory = clients(stack.gw, scheme)

    async def main():
        async with factory() as http:
            async with Client(streamable_http_client(f"{base}/mcp", http_client=http)) as c:
                await exercise_registry(c.call_tool, c.list_tools, f"auto-{scheme}")
    asyncio.run(main())


def test_backends_get_forwarding_headers_and_their_own_host(stack, garbage_backend):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    r = post_raw(f"{stack.gw.http}/garbage/mcp", body, {"x-garbage": "echo-headers", "x-forwarded-for": "10.9.8.7"})
    seen = r.json()
    assert seen["x-forwarded-for"] == "10.9.8.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["host"] == garbage_backend
    with httpx2.Client(verify=stack.gw.ssl_context()) as c:
        tls = c.post(f"{stack.gw.https}/garbage/mcp", content=body, headers={
            "accept": ACCEPT, "content-type": "application/json", "x-garbage": "echo-headers"}).json()
    assert tls["x-forwarded-proto"] == "https"
    assert tls["x-forwarded-for"] == "127.0.0.1"


def test_backend_identity_stays_in_the_gateway_logs_and_admin_api(stack):
    with httpx2.Client(timeout=10) as c:
        r = c.post(f"{stack.gw.http}/mcp", headers={"accept": ACCEPT}, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        assert r.status_code == 200
        for h in ("x-registry-instance", "server", "x-powered-by"):
            assert h not in r.headers, h
    seen = {b["instance"] for b in stack.gw.backends() if b.get("instance")}
    assert seen and seen <= set(stack.addr_of), seen


def test_https_needs_the_dev_ca(stack):
    with httpx2.Client(verify=stack.gw.ssl_context()) as c:
        assert c.get(f"{stack.gw.https}/health").status_code == 200
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{stack.gw.https}/health")  # not trusted without the CA


def test_mcp_sessions_run_over_http2_with_tls(stack):
    """The Python SDK over HTTP/2 (ALPN h2): a Streamable HTTP session whose
    answers are SSE streams, and the legacy SSE transport, every tool."""
    versions = set()

    async def note(response):
        versions.add(response.http_version)
    ctx = stack.gw.ssl_context()

    def factory(headers=None, timeout=None, auth=None):
        return httpx2.AsyncClient(verify=ctx, http2=True, headers=headers, timeout=timeout, auth=auth,
                                  event_hooks={"response": [note]})

    async def main():
        async with factory() as http:
            async with streamable_http_client(f"{stack.gw.https}/mcp", http_client=http) as (r, w, *_):
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    await exercise_registry(s.call_tool, s.list_tools, "h2-streamable")
        async with sse_client(f"{stack.gw.https}/sse", httpx_client_factory=factory) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                await exercise_registry(s.call_tool, s.list_tools, "h2-legacy")
    asyncio.run(main())
    assert versions == {"HTTP/2"}, versions


def test_sessions_spread_and_stick_to_their_backend(stack):
    url = f"{stack.gw.http}/mcp"
    seen = set()
    before = {b["addr"]: b["sessions_opened"] for b in stack.gw.backends()}
    with httpx2.Client(timeout=10) as c:
        for _ in range(12):
            sid, instance = initialize(c, url)
            assert instance in stack.addr_of
            seen.add(instance)
            # the id the client sees is the gateway's sealed token, not the backend's
            assert len(sid) > 60 and base64.urlsafe_b64decode(sid + "=" * (-len(sid) % 4))
            for i in range(3):
                r = rpc(c, url, sid, "tools/list", id_=10 + i)
                assert r.status_code == 200
                assert "x-registry-instance" not in r.headers, "backend identity stays inside"
                assert not any(addr in str(r.headers) for addr in stack.addr_of.values())
                assert instance_of(c, url, sid) == instance
    assert len(seen) >= 2, f"all 12 sessions went to {seen}"
    after = {b["addr"]: b["sessions_opened"] for b in stack.gw.backends()}
    grew = [a for a in after if after[a] > before.get(a, 0)]
    assert len(grew) >= 2, f"the 12 new sessions were opened on {grew} only"
    assert sum(after[a] - before.get(a, 0) for a in after) == 12


def test_a_session_routes_through_a_second_gateway_sharing_the_key(stack):
    with httpx2.Client(timeout=10) as c:
        sid, instance = initialize(c, f"{stack.gw.http}/mcp")
        r = rpc(c, f"{stack.gw2.http}/mcp", sid, "tools/call",
                {"name": "health_check", "arguments": {}})
        assert r.status_code == 200, r.text
        msgs = sse_messages(r.text) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
        assert json.loads(msgs[-1]["result"]["content"][0]["text"])["instance"] == instance


def test_a_disabled_backend_gets_no_new_sessions_but_keeps_its_own(stack):
    url = f"{stack.gw.http}/mcp"
    with httpx2.Client(timeout=10) as c:
        # find a session on some backend, then take that backend out
        sid, instance = initialize(c, url)
        addr = stack.addr_of[instance]
        r = httpx2.post(f"{stack.gw.admin}/backends/disable", params={"addr": addr, "pool": "registry"})
        assert r.status_code == 200 and r.json()["disabled"] is True
        try:
            for _ in range(15):
                _, other = initialize(c, url)
                assert other != instance, "a disabled backend got a new session"
            assert rpc(c, url, sid, "tools/list").status_code == 200
        finally:
            httpx2.post(f"{stack.gw.admin}/backends/enable", params={"addr": addr})


def test_stateless_requests_reach_a_backend_without_a_session(stack):
    with httpx2.Client(timeout=10) as c:
        r = c.post(f"{stack.gw.http}/mcp", headers={
            "accept": ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "server/discover"},
            json={"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}}}})
        assert r.status_code == 200, r.text
        assert "mcp-session-id" not in r.headers
        body = sse_messages(r.text)[0] if r.headers["content-type"].startswith("text/event-stream") else r.json()
        assert "2026-07-28" in body["result"]["supportedVersions"]


def test_delete_ends_the_session(stack):
    url = f"{stack.gw.http}/mcp"
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, url)
        d = c.delete(url, headers={"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"})
        assert d.status_code in (200, 204)
        assert rpc(c, url, sid, "tools/list").status_code == 404


# ---- bad input -------------------------------------------------------------

def post_raw(url, body: bytes, headers=None):
    return httpx2.post(url, content=body, headers={"accept": ACCEPT, "content-type": "application/json", **(headers or {})}, timeout=10)


def test_malformed_json_is_a_parse_error(stack):
    r = post_raw(f"{stack.gw.http}/mcp", b"{not json")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32700


@pytest.mark.parametrize("body", [
    {"id": 1, "method": "ping"},
    {"jsonrpc": "2.0", "id": 1},
    {"jsonrpc": "2.0", "id": 1, "method": 7},
    [],
])
def test_json_that_is_not_json_rpc_is_an_invalid_request(stack, body):
    r = post_raw(f"{stack.gw.http}/mcp", json.dumps(body).encode())
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32600


def test_oversized_bodies_get_413(stack):
    big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * (2 * 1024 * 1024) + b'"}}'
    assert post_raw(f"{stack.gw.http}/mcp", big).status_code == 413

    def chunks():
        yield big[: len(big) // 2]
        yield big[len(big) // 2:]
    r = httpx2.post(f"{stack.gw.http}/mcp", content=chunks(), headers={"accept": ACCEPT, "content-type": "application/json"}, timeout=10)
    assert r.status_code == 413


def test_forged_truncated_and_unknown_session_ids_get_404(stack):
    url = f"{stack.gw.http}/mcp"
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, url)
        tampered = sid[:-2] + ("AA" if sid[-2:] != "AA" else "BB")
        for bad in ["not-a-session", sid[:20], tampered, base64.urlsafe_b64encode(b"\x01" + b"\0" * 60).decode()]:
            r = rpc(c, url, bad, "tools/list")
            assert r.status_code == 404, (bad, r.status_code)
            assert r.json()["error"]["code"] == -32001
        assert rpc(c, url, sid, "tools/list").status_code == 200


def test_legacy_messages_for_unknown_or_missing_sessions(stack):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    assert post_raw(f"{stack.gw.http}/messages?sessionId=deadbeef", body).status_code == 404
    assert post_raw(f"{stack.gw.http}/messages/?session_id=deadbeef", body).status_code == 404
    assert post_raw(f"{stack.gw.http}/messages", body).status_code == 400


def test_get_mcp_needs_an_event_stream_accept(stack):
    url = f"{stack.gw.http}/mcp"
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, url)
        r = c.get(url, headers={"accept": "application/json", "mcp-session-id": sid})
        assert r.status_code == 406


def test_foreign_origins_are_refused(stack):
    for path in ["/mcp", "/sse"]:
        r = httpx2.post(f"{stack.gw.http}{path}", headers={"origin": "https://evil.example", "accept": ACCEPT},
                        json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10)
        assert r.status_code == 403
    ok = post_raw(f"{stack.gw.http}/mcp", b"{bad", {"origin": "http://localhost:3000"})
    assert ok.status_code == 400  # allowed origin: reaches the JSON check


def test_mcp_method_header_must_match_the_body(stack):
    r = post_raw(f"{stack.gw.http}/mcp", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode(),
                 {"mcp-method": "tools/call"})
    assert r.status_code == 400
    assert "does not match" in r.json()["error"]["message"]
    r = post_raw(f"{stack.gw.http}/mcp", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                     "params": {"name": "get_agent"}}).encode(),
                 {"mcp-method": "tools/call", "mcp-name": "delete_agent"})
    assert r.status_code == 400


def open_raw_sse(port, path="/sse"):
    """A legacy SSE client on a raw socket: returns (socket, bytes read, session path)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    buf = b""
    while b"sessionId=" not in buf or b"\n\n" not in buf.split(b"event: endpoint", 1)[-1]:
        chunk = s.recv(4096)
        assert chunk, "stream closed early"
        buf += chunk
    line = next(l for l in buf.decode().splitlines() if l.startswith("data: "))
    return s, buf, line[6:].strip()


def test_idle_legacy_streams_get_keepalive_comments(stack):
    s, buf, _ = open_raw_sse(stack.gw.http_port)
    s.settimeout(10)
    deadline = time.monotonic() + 10
    while b": keepalive" not in buf and time.monotonic() < deadline:
        buf += s.recv(4096)
    s.close()
    assert b": keepalive" in buf


def test_a_client_that_stops_reading_is_dropped_and_memory_stays_bounded(stack):
    gw = stack.gw
    # big responses: 200 agents with 4 KiB descriptions
    with httpx2.Client(timeout=30) as c:
        sid, _ = initialize(c, f"{gw.http}/mcp")
        for i in range(200):
            r = rpc(c, f"{gw.http}/mcp", sid, "tools/call", {"name": "register_agent", "arguments": {
                "agent_id": f"bulk-slow-{i}", "agent_url": "http://a.test", "description": "d" * 4000}}, id_=100 + i)
            assert r.status_code == 200
    s, _, path = open_raw_sse(gw.http_port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    url = f"{gw.http}{path}"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "slow", "version": "1"}}}
    assert post_raw(url, json.dumps(init).encode()).status_code == 202
    rss_before = gw.proc.rss_kib()
    dropped = False
    deadline = time.monotonic() + 60
    i = 0
    while time.monotonic() < deadline:
        i += 1
        r = post_raw(url, json.dumps({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                                      "params": {"name": "list_agents", "arguments": {"limit": 1000}}}).encode())
        if r.status_code == 404:
            dropped = True
            break
        assert r.status_code in (202, 503), r.status_code
    s.close()
    assert dropped, "the gateway kept a session whose client never reads"
    growth_mib = (gw.proc.rss_kib() - rss_before) / 1024
    # bounded by design: 2 MiB of queued events, 8 calls in flight holding one ~1 MiB
    # event each (and its copies while it is parsed and framed), plus what the
    # allocator keeps. Measured growth: 10-36 MiB over 9 runs with the system
    # allocator, 36.6-40.0 MiB over 3 runs with jemalloc (it keeps freed pages for
    # a few seconds); unbounded growth over 60 s of ~1 MiB answers would be GiBs.
    assert growth_mib < 64, f"gateway grew {growth_mib:.0f} MiB for one stuck client"
    # and everyone else is fine
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, f"{gw.http}/mcp")
        assert rpc(c, f"{gw.http}/mcp", sid, "tools/list").status_code == 200


def test_a_garbage_backend_harms_nobody_else(stack):
    gw = stack.gw
    url = f"{gw.http}/garbage/mcp"
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "g", "version": "1"}}}).encode()
    r = post_raw(url, init)  # a non-SSE body passes through untouched as the backend's answer
    assert r.status_code == 200
    assert r.content == b"\x00\xffthis is not json-rpc at all"
    r = httpx2.post(url, content=init, headers={"accept": ACCEPT, "content-type": "application/json", "x-garbage": "close"}, timeout=10)
    assert r.status_code == 502  # cut before a whole event: a complete JSON-RPC error, not a hang
    assert r.json()["error"]["code"] == -32603
    # the legacy bridge over the garbage pool: the client gets an error event, not a hang
    s, buf, path = open_raw_sse(gw.http_port, "/garbage/sse")
    assert path.startswith("/garbage/messages?sessionId=")
    legacy_init = init.replace(b'"id": 1', b'"id": 41')
    assert post_raw(f"{gw.http}{path}", legacy_init).status_code == 202
    s.settimeout(10)
    deadline = time.monotonic() + 10
    while b'"id":41' not in buf.replace(b" ", b"") and time.monotonic() < deadline:
        buf += s.recv(4096)
    s.close()
    assert b'"error"' in buf.split(b"event: message", 1)[-1]
    assert post_raw(f"{gw.http}/garbage/messages?sessionId=nope", init).status_code == 404
    # the gateway and its other sessions are unaffected
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, f"{gw.http}/mcp")
        assert rpc(c, f"{gw.http}/mcp", sid, "tools/list").status_code == 200
    assert len(gw.healthy_backends()) == 3, "the registry pool is untouched"
