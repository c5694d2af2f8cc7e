"""The version bridge: a 2026-07-28 stateless client reaches a server that
speaks only sessions (@modelcontextprotocol/server-everything 2026.8.31,
which answers a sessionless request "Server not initialized") through the
gateway. The gateway learns each backend's revisions (shown in /backends),
answers `server/discover` from the server's `initialize`, carries each
request over a backend session it holds per principal and declared client
capabilities, and turns a server request mid-call (sampling) into the
call's `input_required` answer, resumed when the client retries."""
import asyncio
import hashlib

import httpx2
import mcp.types as t
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import Backend, Gateway, wait_until
from test_any_server import start_everything

STATELESS = "2026-07-28"


@pytest.fixture(scope="module")
def bridged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("revisions")
    servers = [start_everything() for _ in range(2)]
    addrs = ", ".join(f'"{addr}"' for _, addr in servers)
    pool = (f'[[pools]]\nname = "everything"\nroute = "/everything"\nhealth = "mcp"\nhealth_interval = "300ms"\n'
            f'discovery = {{ static = {{ backends = [{addrs}] }} }}\n')
    backend = Backend(tmp / "registry.db", "rev-0")
    keys = "".join(f'[[auth.keys]]\nprincipal = "{who}"\nsha256 = "{hashlib.sha256(f"k-{who}".encode()).hexdigest()}"\n'
                   for who in ("alice", "bob"))
    gw = Gateway(tmp, "rev", [backend.addr], extra_pools=pool, extra_config="[auth]\n" + keys)
    wait_until(lambda: all(b.get("revision") for b in everything_backends(gw)), 30,
               "the everything pool's revisions learned")
    yield gw, servers
    gw.proc.stop()
    backend.proc.stop()
    for s, _ in servers:
        s.stop()


def everything_backends(gw):
    pools = httpx2.get(f"{gw.admin}/backends", headers=getattr(gw, "admin_headers", {}), timeout=5).json()
    pool = next(p for p in pools["pools"] if p["name"] == "everything")
    return pool["backends"]


def client(gw, who="alice", mode=STATELESS, **kw):
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer k-{who}"}, timeout=30)
    return Client(streamable_http_client(f"{gw.http}/everything/mcp", http_client=http), mode=mode, **kw)


def opened(gw):
    """Backend sessions the gateway opened on the everything servers so far."""
    return sum(b["sessions_opened"] for b in everything_backends(gw))


async def sampling(context, params):
    asked = params.messages[0].content.text
    return t.CreateMessageResult(role="assistant", model="test-model",
                                 content=t.TextContent(type="text", text=f"sampled: {asked}"))


def test_backends_show_what_each_server_speaks(bridged):
    gw, _ = bridged
    for b in everything_backends(gw):
        rev = b["revision"]
        assert rev["stateless"] is False and rev["sessions"] is True, rev
        assert rev["versions"] and all(v < STATELESS for v in rev["versions"]), rev
    # and the server itself refuses what a stateless client sends it
    _, addr = bridged[1][0]
    direct = httpx2.post(f"http://{addr}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
                         headers={"accept": "application/json, text/event-stream", "mcp-protocol-version": STATELESS,
                                  "mcp-method": "tools/list"}, timeout=10)
    assert direct.status_code == 400, direct.text


def test_a_stateless_client_discovers_lists_calls_and_gets_progress_and_sampling(bridged):
    gw, _ = bridged

    async def main():
        progress = []

        async def on_progress(value, total, message):
            progress.append(value)

        async with client(gw, mode="auto", sampling_callback=sampling) as c:
            tools = {x.name for x in (await c.list_tools()).tools}
            assert {"echo", "trigger-sampling-request", "trigger-long-running-operation"} <= tools, tools
            echo = await c.call_tool("echo", {"message": "across revisions"})
            assert echo.content[0].text == "Echo: across revisions"
            long = await c.call_tool("trigger-long-running-operation", {"duration": 0.3, "steps": 3},
                                     progress_callback=on_progress)
            assert not long.is_error, long
            assert progress == [1, 2, 3], progress
            # the server asks for a sampling mid-call: the client gets input_required, answers, and the call ends
            sampled = await c.call_tool("trigger-sampling-request", {"prompt": "what is 2+2?", "maxTokens": 10})
            text = sampled.content[0].text
            assert "sampled: " in text and "what is 2+2?" in text and "test-model" in text, text

    asyncio.run(main())


def test_discover_is_answered_from_the_servers_initialize(bridged):
    gw, _ = bridged
    body = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": STATELESS,
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}}}}
    r = httpx2.post(f"{gw.http}/everything/mcp", json=body, timeout=10,
                    headers={"authorization": "Bearer k-alice", "accept": "application/json, text/event-stream",
                             "mcp-protocol-version": STATELESS, "mcp-method": "server/discover"})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["supportedVersions"][0] == STATELESS and len(result["supportedVersions"]) >= 2, result
    assert "tools" in result["capabilities"], result
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], result


def test_what_cannot_be_carried_is_refused_naming_both_revisions(bridged):
    gw, _ = bridged
    headers = {"authorization": "Bearer k-alice", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": STATELESS}
    listen = httpx2.post(f"{gw.http}/everything/mcp", timeout=10, headers={**headers, "mcp-method": "subscriptions/listen"},
                         json={"jsonrpc": "2.0", "id": 5, "method": "subscriptions/listen", "params": {}})
    error = listen.json()["error"]
    assert STATELESS in error["message"] and "2025-" in error["message"], error
    stale = httpx2.post(f"{gw.http}/everything/mcp", timeout=10,
                        headers={**headers, "mcp-method": "tools/call", "mcp-name": "echo"},
                        json={"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                              "params": {"name": "echo", "arguments": {"message": "x"}, "requestState": "forged",
                                         "inputResponses": {}}})
    assert stale.status_code == 400 and "requestState" in stale.json()["error"]["message"], stale.text


async def echoes(gw, who, n, tag=""):
    """`n` echo calls of one stateless client of `who`, each answered with its own text."""
    async with client(gw, who=who) as c:
        for i in range(n):
            r = await c.call_tool("echo", {"message": f"{who}{tag}-{i}"})
            assert r.content[0].text == f"Echo: {who}{tag}-{i}", r


def test_stateless_calls_share_few_backend_sessions_and_never_across_principals(bridged):
    gw, _ = bridged
    before = opened(gw)
    async def many():
        await asyncio.wait_for(asyncio.gather(*[echoes(gw, "alice", 3) for _ in range(12)]), 60)

    asyncio.run(many())
    alice = opened(gw) - before
    # 36 calls from 12 clients: at most one held session per backend (two backends)
    assert 1 <= alice <= 2, alice
    asyncio.run(echoes(gw, "bob", 3))
    assert opened(gw) - before > alice, "bob's calls must not ride alice's backend sessions"


def test_held_sessions_are_opened_again_after_their_backend_is_killed(bridged):
    gw, servers = bridged
    asyncio.run(echoes(gw, "alice", 4, "-before"))
    servers[0][0].stop()
    # every held session on the dead server moves on first use; no call fails
    for who in ("alice", "bob"):
        asyncio.run(echoes(gw, who, 8, "-after"))
