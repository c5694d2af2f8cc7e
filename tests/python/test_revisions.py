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
import json
import subprocess

import httpx2
import mcp.types as t
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

import sys

from conftest import ROOT, Backend, Gateway, Proc, free_port, metric, wait_until
from test_any_server import start_everything, started

STATELESS = "2026-07-28"


@pytest.fixture(scope="module")
def bridged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("revisions")
    servers = [start_everything() for _ in range(2)]
    pool = pool_config("everything", servers)
    backend = Backend(tmp / "registry.db", "rev-0")
    keys = "".join(f'[[auth.keys]]\nprincipal = "{who}"\nsha256 = "{hashlib.sha256(f"k-{who}".encode()).hexdigest()}"\n'
                   for who in ("alice", "bob", "carol", "dave"))
    gw = Gateway(tmp, "rev", [backend.addr], extra_pools=pool, extra_config="[auth]\n" + keys)
    wait_until(lambda: all(b.get("revision") for b in everything_backends(gw)), 30,
               "the everything pool's revisions learned")
    yield gw, servers
    gw.proc.stop()
    backend.proc.stop()
    for s, _ in servers:
        s.stop()


def pool_config(name, servers):
    """A pool at /NAME of these servers, checked by the `mcp` health check."""
    addrs = ", ".join(f'"{addr}"' for _, addr in servers)
    return (f'[[pools]]\nname = "{name}"\nroute = "/{name}"\nhealth = "mcp"\nhealth_interval = "300ms"\n'
            f'discovery = {{ static = {{ backends = [{addrs}] }} }}\n')


def pool_backends(gw, name):
    pools = httpx2.get(f"{gw.admin}/backends", timeout=5).json()
    return next(p for p in pools["pools"] if p["name"] == name)["backends"]


def everything_backends(gw):
    return pool_backends(gw, "everything")


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

        paused = metric(gw, "mcp_gateway_bridge_paused_calls")
        async with client(gw, sampling_callback=sampling) as c:
            assert c.protocol_version == STATELESS, c.protocol_version
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
        assert metric(gw, "mcp_gateway_bridge_paused_calls") == paused, "the paused call was resumed, not left"
        # auto mode: discover is answered (by the gateway), so the client stays stateless
        async with client(gw, mode="auto") as c:
            assert (await c.call_tool("echo", {"message": "auto"})).content[0].text == "Echo: auto"
            assert c.protocol_version == STATELESS, c.protocol_version

    asyncio.run(main())


def stateless_call(gw, who, rid, name, arguments, extra=None, timeout=30):
    """One raw stateless tools/call of `who`; returns the JSON-RPC message answering it."""
    params = {"name": name, "arguments": arguments, **(extra or {}), "_meta": {
        "io.modelcontextprotocol/protocolVersion": STATELESS,
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}}
    r = httpx2.post(f"{gw.http}/everything/mcp", timeout=timeout,
                    json={"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params},
                    headers={"authorization": f"Bearer k-{who}", "accept": "application/json, text/event-stream",
                             "mcp-protocol-version": STATELESS, "mcp-method": "tools/call", "mcp-name": name})
    assert r.status_code in (200, 400), r.text
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [json.loads(l[5:]) for l in r.text.splitlines() if l.startswith("data:") and l[5:].strip()]
        return next(m for m in messages if m.get("id") == rid)
    return r.json()


def test_clients_with_the_same_request_id_on_one_held_session_get_their_own_answers(bridged):
    gw, _ = bridged
    import concurrent.futures
    durations = [1, 1.5, 2, 2.5]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda d: stateless_call(gw, "alice", 7, "trigger-long-running-operation",
                                                         {"duration": d, "steps": 2}), durations))
    for d, a in zip(durations, answers):
        assert a["id"] == 7 and f"Duration: {d:g} seconds" in a["result"]["content"][0]["text"], (d, a)


def test_a_paused_call_waits_for_its_own_principal_and_resumes(bridged):
    gw, _ = bridged
    first = stateless_call(gw, "alice", 1, "trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
    result = first["result"]
    assert result["resultType"] == "input_required", first
    (key, ask), = result["inputRequests"].items()
    assert ask["method"] == "sampling/createMessage", ask
    state = result["requestState"]
    answer = {"role": "assistant", "model": "m", "content": {"type": "text", "text": "sampled: hi"}}
    retry = {"requestState": state, "inputResponses": {key: answer}}
    # bob cannot take alice's paused call, and trying does not end it
    theirs = stateless_call(gw, "bob", 2, "trigger-sampling-request", {"prompt": "hi", "maxTokens": 5}, retry)
    assert "requestState" in theirs["error"]["message"], theirs
    mine = stateless_call(gw, "alice", 3, "trigger-sampling-request", {"prompt": "hi", "maxTokens": 5}, retry)
    assert mine["id"] == 3 and "sampled: hi" in mine["result"]["content"][0]["text"], mine
    # a state serves one retry
    again = stateless_call(gw, "alice", 4, "trigger-sampling-request", {"prompt": "hi", "maxTokens": 5}, retry)
    assert "requestState" in again["error"]["message"], again


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
    gw, _ = bridged  # carol and dave call nothing anywhere else
    before = opened(gw)

    async def many():
        await asyncio.wait_for(asyncio.gather(*[echoes(gw, "carol", 3) for _ in range(12)]), 60)

    asyncio.run(many())
    carol = opened(gw) - before
    # 36 calls from 12 clients: at most one held session per slot (two backends: two slots)
    assert 1 <= carol <= 2, carol
    assert metric(gw, "mcp_gateway_bridge_held_sessions") >= carol
    asyncio.run(echoes(gw, "dave", 3))
    assert opened(gw) - before > carol, "dave's calls must not ride carol's backend sessions"


def test_held_sessions_are_opened_again_after_their_backend_is_killed(bridged):
    gw, servers = bridged
    asyncio.run(echoes(gw, "alice", 4, "-before"))
    servers[0][0].stop()
    # every held session on the dead server moves on first use; no call fails
    for who in ("alice", "bob"):
        asyncio.run(echoes(gw, who, 8, "-after"))


# ---- a session client to a server that speaks only 2026-07-28 ----

SERVER = ROOT / "tests" / "python" / "stateless_only_server.py"


def start_stateless_only():
    port = free_port()
    server = Proc([sys.executable, str(SERVER), str(port)], name="stateless-only")
    return started(server, port), f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def modern(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modern")
    servers = [start_stateless_only() for _ in range(2)]
    pool = pool_config("modern", servers)
    backend = Backend(tmp / "registry.db", "mod-0")
    gw = Gateway(tmp, "modern", [backend.addr], extra_pools=pool)
    wait_until(lambda: len(pool_backends(gw, "modern")) == 2
               and all(b.get("revision") and b["healthy"] for b in pool_backends(gw, "modern")), 30,
               "the modern pool healthy and its revisions learned")
    yield gw, servers
    gw.proc.stop()
    backend.proc.stop()
    for s, _ in servers:
        s.stop()


def refused(servers):
    return sum(httpx2.get(f"http://{addr}/refused", timeout=5).json()["count"] for _, addr in servers)


def test_a_session_client_reaches_a_server_that_speaks_only_the_stateless_revision(modern):
    gw, servers = modern
    for b in pool_backends(gw, "modern"):
        assert b["revision"]["stateless"] is True and b["revision"]["sessions"] is False, b["revision"]
    # the server itself refuses a session client
    _, addr = servers[0]
    direct = httpx2.post(f"http://{addr}/mcp", timeout=10, headers={"accept": "application/json, text/event-stream"},
                         json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                             "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert direct.status_code == 400, direct.text
    before = refused(servers)

    async def main():
        async with Client(streamable_http_client(f"{gw.http}/modern/mcp"), mode="legacy") as c:
            tools = {x.name for x in (await c.list_tools()).tools}
            assert {"echo", "add"} <= tools, tools
            assert (await c.call_tool("add", {"a": 2, "b": 40})).structured_content == {"result": 42}
            assert (await c.call_tool("echo", {"text": "old meets new"})).content[0].text == "echo: old meets new"
            read = await c.read_resource("note://hello")
            assert read.contents[0].text == "hello from 2026", read
            prompt = await c.get_prompt("greet", {"name": "Ada"})
            assert "Ada" in prompt.messages[0].content.text, prompt

    asyncio.run(main())
    assert refused(servers) == before, "the gateway sent the server a session-era message"


def test_a_carried_session_has_no_stream_refuses_subscriptions_and_ends_with_delete(modern):
    gw, _ = modern
    accept = {"accept": "application/json, text/event-stream"}
    init = httpx2.post(f"{gw.http}/modern/mcp", timeout=10, headers=accept, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
    assert init.status_code == 200, init.text
    assert init.json()["result"]["protocolVersion"] == "2025-03-26"
    assert "listChanged" not in init.json()["result"]["capabilities"].get("tools", {})
    sid = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-03-26", **accept}
    get = httpx2.get(f"{gw.http}/modern/mcp", headers=sid, timeout=10)
    assert get.status_code == 405, get.text
    sub = httpx2.post(f"{gw.http}/modern/mcp", headers=sid, timeout=10,
                      json={"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": "note://hello"}})
    message = sub.json()["error"]["message"]
    assert STATELESS in message and "resources/subscribe" in message, message
    assert httpx2.delete(f"{gw.http}/modern/mcp", headers=sid, timeout=10).status_code == 200
    after = httpx2.post(f"{gw.http}/modern/mcp", headers=sid, timeout=10,
                        json={"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}})
    assert after.status_code == 404, after.text


SEED_FLOW = """
import asyncio, json, sys
from mcp import ClientSession
from mcp.client.sse import sse_client

async def main():
    async with sse_client(sys.argv[1]) as (r, w):
        async with ClientSession(r, w) as s:
            init = await s.initialize()
            tools = sorted(t.name for t in (await s.list_tools()).tools)
            added = await s.call_tool("add", {"a": 20, "b": 22})
            read = await s.read_resource("note://hello")
            print(json.dumps({"version": init.protocolVersion, "tools": tools, "added": added.content[0].text,
                              "read": read.contents[0].text}))

asyncio.run(main())
"""


def test_the_seeds_legacy_sse_client_reaches_a_stateless_only_server(modern):
    gw, servers = modern
    before = refused(servers)
    venv1 = ROOT / ".venv-mcp1" / "bin" / "python"
    out = subprocess.run([str(venv1), "-c", SEED_FLOW, f"{gw.http}/modern/sse"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["version"] < STATELESS, got  # the revision the client asked, a session one
    assert {"add", "echo"} <= set(got["tools"]), got
    assert got["added"] == "42" and got["read"] == "hello from 2026", got
    assert refused(servers) == before, "the gateway sent the server a session-era message"


def test_a_stateless_client_reaches_a_stateless_only_server_as_it_is(modern):
    gw, servers = modern
    before = refused(servers)

    async def main():
        http = httpx2.AsyncClient(timeout=30)
        async with Client(streamable_http_client(f"{gw.http}/modern/mcp", http_client=http), mode="auto") as c:
            assert (await c.call_tool("add", {"a": 1, "b": 2})).structured_content == {"result": 3}
            assert {"echo", "add"} <= {x.name for x in (await c.list_tools()).tools}

    asyncio.run(main())
    assert refused(servers) == before, "a stateless request reached the server in the session era"
