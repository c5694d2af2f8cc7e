"""Stdio MCP servers behind the gateway: one supervised process per session.

Real stdio servers from the registries — @modelcontextprotocol/server-
everything (its stdio mode), server-memory (through npx, as operators run
it), server-filesystem (pinned in tests/peers), a Python SDK server
(stdio_server.py) — each a stdio pool, driven through the gateway by the
Python SDK over Streamable HTTP (plain and TLS) and legacy SSE, and by the
TypeScript inspector CLI; then the bounds (max_processes, idle timeout,
DELETE, the gateway's stop), a process killed mid-call, misbehaving
processes (bad_stdio_server.py), and sessions across two replicas."""
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from conftest import ACCEPT, ROOT, Gateway, free_port, metric, sse_messages, wait_until
from test_any_server import exercise, session_kwargs

PY = sys.executable
HERE = Path(__file__).resolve().parent
PEERS = ROOT / "tests" / "peers"
MODULES = PEERS / "node_modules" / "@modelcontextprotocol"
NODE = shutil.which("node") or "node"
INSPECTOR = MODULES / "inspector-cli" / "build" / "index.js"
SECRET = "stdio-test-secret-value"


def stdio_pool(name, command, args=(), **options):
    """A [[pools]] entry for a stdio server (`options` go into its `stdio` table)."""
    table = {"command": command, "args": list(args), **options}

    def toml(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {toml(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)
    return (f'[[pools]]\nname = "{name}"\nroute = "/{name}"\nhealth_interval = "300ms"\n'
            f"discovery = {{ stdio = {toml(table)} }}\n")


def memory_pool(name="memory", **options):
    """server-memory through npx (npm exec → sh → node: a process group),
    each process with a memory file of its own."""
    return stdio_pool(name, "npx", ["--no", "mcp-server-memory"], cwd=str(PEERS),
                      env={"MEMORY_FILE_PATH": "{process_dir}/memory.jsonl"}, **options)


def py_pool(name, marks, **options):
    return stdio_pool(name, PY, [str(HERE / "stdio_server.py")], env={"MARK_DIR": str(marks)},
                      env_from={"TOKEN": "STDIO_TEST_TOKEN"}, **options)


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stdio")
    files = tmp / "files"
    files.mkdir()
    (files / "hello.txt").write_text("hello from a temporary directory\n")
    marks = tmp / "marks"
    marks.mkdir()
    pools = "".join([
        stdio_pool("everything", NODE, [str(MODULES / "server-everything" / "dist" / "index.js"), "stdio"], warm=1),
        memory_pool(),
        stdio_pool("filesystem", NODE, [str(MODULES / "server-filesystem" / "dist" / "index.js"), str(files)]),
        py_pool("py", marks, warm=1, max_processes=4),
        py_pool("capped", marks, warm=1, max_processes=2),
        py_pool("idle", marks, idle_timeout="1s"),
        py_pool("solo", marks),
        stdio_pool("bad", PY, [str(HERE / "bad_stdio_server.py")]),
        stdio_pool("noexec", "/nonexistent/mcp-server"),
        stdio_pool("quits", PY, ["-c", "import sys; sys.exit(3)"]),
        # a virtual server over two stdio pools
        '[[servers]]\nname = "both"\nroute = "/both"\n'
        '[[servers.members]]\npool = "memory"\nprefix = "mem_"\n'
        '[[servers.members]]\npool = "filesystem"\nprefix = "fs_"\n',
    ])
    log = open(tmp / "gateway.log", "w")
    # A silent process is given up on after 0.9 × upstream_idle_timeout; a
    # cold server (npx, the Python SDK) on a busy machine may need several
    # seconds to answer its first `initialize`. The silent case has a
    # gateway of its own (test_a_reload_…_silence_limit).
    g = Gateway(tmp, "stdio", [], expect_backends=0, extra_pools=pools, stderr=log,
                limits='max_body_bytes = 1048576\nupstream_idle_timeout = "30s"',
                env={"STDIO_TEST_TOKEN": SECRET})
    g.files, g.marks, g.log = files, marks, tmp / "gateway.log"
    for name in ["everything", "memory", "filesystem", "py", "capped", "idle", "solo", "bad"]:
        wait_until(lambda n=name: len(g.healthy_backends(n)) == 1, 30, f"the {name} pool")
    yield g
    g.proc.stop()
    log.close()


def run(coro):
    return asyncio.run(coro)


class Client:
    """A Python SDK client session through the gateway, over `transport`."""

    def __init__(self, gw, pool, transport="http", **kwargs):
        self.gw, self.pool, self.transport, self.kwargs = gw, pool, transport, kwargs

    async def __aenter__(self):
        from contextlib import AsyncExitStack
        self.stack = AsyncExitStack()
        await self.stack.__aenter__()
        if self.transport == "sse":
            r, w = await self.stack.enter_async_context(sse_client(f"{self.gw.http}/{self.pool}/sse"))
        else:
            base = self.gw.https if self.transport == "https" else self.gw.http
            verify = self.gw.ssl_context() if self.transport == "https" else True
            http = await self.stack.enter_async_context(httpx2.AsyncClient(timeout=30, verify=verify))
            r, w, *_ = await self.stack.enter_async_context(
                streamable_http_client(f"{base}/{self.pool}/mcp", http_client=http))
        s = await self.stack.enter_async_context(ClientSession(r, w, **self.kwargs))
        await s.initialize()
        return s

    async def __aexit__(self, *exc):
        return await self.stack.__aexit__(*exc)


def text(result):
    return result.content[0].text


def alive(pid):
    """Whether a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def log_lines(gw, pattern):
    """The gateway's log lines (colours taken out) that match `pattern`."""
    lines = (re.sub(r"\x1b\[[0-9;]*m", "", line) for line in gw.log.read_text().splitlines())
    return [line for line in lines if re.search(pattern, line)]


def processes(gw, pool):
    """A stdio pool's processes as `/backends` lists them."""
    data = httpx2.get(f"{gw.admin}/backends", timeout=5).json()
    return next(p for p in data["pools"] if p["name"] == pool)["stdio"]["processes"]


# --- real servers, every client transport ---------------------------------------------

@pytest.mark.parametrize("transport", ["http", "https"])
def test_server_everything_over_stdio_through_streamable_http(gw, transport):
    async def main():
        async with Client(gw, "everything", transport, **session_kwargs()) as s:
            await exercise(s)
    run(main())


def test_server_everything_over_stdio_through_the_legacy_sse_bridge(gw):
    async def main():
        async with Client(gw, "everything", "sse", **session_kwargs()) as s:
            await exercise(s)
    run(main())


def test_two_memory_clients_do_not_see_each_others_entities(gw):
    """server-memory keeps a knowledge graph; each session has a process and
    a memory file of its own, so one client's entities are not another's."""
    async def main():
        async with Client(gw, "memory", "http") as a, Client(gw, "memory", "sse") as b:
            await a.call_tool("create_entities", {"entities": [
                {"name": "alice-only", "entityType": "person", "observations": ["told only to a"]}]})
            await b.call_tool("create_entities", {"entities": [
                {"name": "bob-only", "entityType": "person", "observations": ["told only to b"]}]})
            return text(await a.call_tool("read_graph", {})), text(await b.call_tool("read_graph", {}))
    seen_by_a, seen_by_b = run(main())
    assert "alice-only" in seen_by_a and "bob-only" not in seen_by_a, seen_by_a
    assert "bob-only" in seen_by_b and "alice-only" not in seen_by_b, seen_by_b


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_filesystem_server_reads_and_writes_its_temporary_directory(gw, transport):
    async def main():
        async with Client(gw, "filesystem", transport) as s:
            listing = text(await s.call_tool("list_directory", {"path": str(gw.files)}))
            read = text(await s.call_tool("read_text_file", {"path": str(gw.files / "hello.txt")}))
            target = gw.files / f"written-{transport}.txt"
            await s.call_tool("write_file", {"path": str(target), "content": f"via {transport}"})
            return listing, read, target
    listing, read, target = run(main())
    assert "hello.txt" in listing, listing
    assert read.strip() == "hello from a temporary directory"
    assert target.read_text() == f"via {transport}"


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_a_python_sdk_stdio_server_gets_only_the_environment_its_pool_names(gw, transport):
    """The child's environment is PATH and HOME, what `env` writes and what
    `env_from` names — never the gateway's own (its session key, …)."""
    async def main():
        async with Client(gw, "py", transport) as s:
            return (text(await s.call_tool("env_names", {})).split(),
                    text(await s.call_tool("env", {"name": "TOKEN"})))
    names, token = run(main())
    assert token == SECRET
    assert {"PATH", "HOME", "MARK_DIR", "TOKEN"} <= set(names), names
    assert not {"MCP_GATEWAY_SESSION_KEY", "STDIO_TEST_TOKEN", "RUST_LOG"} & set(names), names


@pytest.mark.parametrize("transport,path", [("http", "/memory/mcp"), ("sse", "/memory/sse")])
def test_the_typescript_inspector_cli_lists_and_calls_tools_of_a_stdio_pool(gw, transport, path):
    def inspector(*args):
        out = subprocess.run([NODE, str(INSPECTOR), f"{gw.http}{path}", "--transport", transport, *args],
                             cwd=PEERS / "work", capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)
    tools = {t["name"] for t in inspector("--method", "tools/list")["tools"]}
    assert {"create_entities", "read_graph", "search_nodes"} <= tools, tools
    graph = inspector("--method", "tools/call", "--tool-name", "read_graph")
    assert not graph.get("isError") and "entities" in graph["content"][0]["text"], graph


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_stdio_pools_as_members_of_a_virtual_server_keep_a_process_per_session(gw, transport):
    """A virtual server over server-memory and server-filesystem: one client
    session sees both members' tools, calls reach the owner's process, and
    another session's memory process does not hold the first one's entities."""
    async def session(do):
        async with Client(gw, "both", transport) as s:
            return await do(s)

    async def first(s):
        tools = {x.name for x in (await s.list_tools()).tools}
        await s.call_tool("mem_create_entities", {"entities": [
            {"name": "federated-one", "entityType": "note", "observations": ["x"]}]})
        read = text(await s.call_tool("fs_read_text_file", {"path": str(gw.files / "hello.txt")}))
        return tools, text(await s.call_tool("mem_read_graph", {})), read

    async def second(s):
        return text(await s.call_tool("mem_read_graph", {}))
    tools, graph, read = run(session(first))
    assert {"mem_create_entities", "mem_read_graph", "fs_read_text_file", "fs_list_directory"} <= tools, tools
    assert "federated-one" in graph and read.strip() == "hello from a temporary directory", (graph, read)
    assert "federated-one" not in run(session(second)), "another session, another process"


# --- the README's worked example: a server from npm behind TLS with API keys -----------

KEYS = {"alice": "alice-stdio-key-0123456789", "reader": "reader-stdio-key-0123456789"}


def test_a_stdio_server_from_npm_behind_tls_takes_api_keys_and_tool_rules(tmp_path):
    """server-memory from npm over HTTPS with API keys required: no key gets
    401, alice may call every tool, reader sees and calls only the read-only
    ones (the rest get 403 before a process hears of them), and a session is
    its principal's alone."""
    auth = ["[auth]"]
    for who, key in KEYS.items():
        auth += ["[[auth.keys]]", f'principal = "{who}"', f'sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"']
    auth += ["[[auth.rules]]", 'principals = ["key:alice"]',
             "[[auth.rules]]", 'allow_tools = ["read_graph", "search_nodes", "open_nodes"]']
    g = Gateway(tmp_path, "npm-tls", [], expect_backends=0, extra_config="\n".join(auth) + "\n",
                extra_pools=memory_pool(warm=1))
    url = f"{g.https}/memory/mcp"
    try:
        wait_until(lambda: len(g.healthy_backends("memory")) == 1, 30, "the memory pool")
        with httpx2.Client(timeout=30, verify=g.ssl_context()) as c:
            anonymous, _ = open_session(c, url)
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == -32004, anonymous.text

        async def as_alice():
            bearer = {"authorization": f"Bearer {KEYS['alice']}"}
            async with httpx2.AsyncClient(timeout=30, verify=g.ssl_context(), headers=bearer) as http:
                async with streamable_http_client(url, http_client=http) as (r, w, *_):
                    async with ClientSession(r, w) as s:
                        await s.initialize()
                        await s.call_tool("create_entities", {"entities": [
                            {"name": "kept-by-alice", "entityType": "note", "observations": ["x"]}]})
                        return text(await s.call_tool("read_graph", {}))
        assert "kept-by-alice" in run(as_alice())

        with httpx2.Client(timeout=30, verify=g.ssl_context(), headers={"x-api-key": KEYS["reader"]}) as c:
            _, sid = open_session(c, url)
            listed = c.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid,
                                          "mcp-protocol-version": "2025-06-18"},
                            json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
            msgs = sse_messages(listed.text) if "event-stream" in listed.headers["content-type"] else [listed.json()]
            names = {t["name"] for t in msgs[-1]["result"]["tools"]}
            assert names == {"read_graph", "search_nodes", "open_nodes"}, names
            denied, answer = call(c, url, sid, "create_entities", {"entities": []})
            assert denied.status_code == 403 and answer["error"]["code"] == -32005, denied.text
            allowed, answer = call(c, url, sid, "read_graph")
            assert allowed.status_code == 200 and "entities" in answer["result"]["content"][0]["text"], allowed.text
            stolen = c.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid, "x-api-key": KEYS["alice"],
                                          "mcp-protocol-version": "2025-06-18"},
                            json={"jsonrpc": "2.0", "id": 4, "method": "tools/list"})
            assert stolen.status_code == 404, "a session is its principal's alone"
            c.delete(url, headers={"mcp-session-id": sid})
    finally:
        g.proc.stop()


# --- the host is the gateway's alone --------------------------------------------------

def test_the_stdio_host_refuses_anyone_but_the_gateway(gw):
    host = gw.backends("py")[0]["addr"]
    r = httpx2.post(f"http://{host}/mcp", headers={"accept": ACCEPT}, timeout=5, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}})
    assert r.status_code == 403, r.text
    forged = httpx2.post(f"{gw.http}/py/mcp", headers={"accept": ACCEPT, "x-mcp-gateway-host-key": "guess"},
                         json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                             "protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "x", "version": "1"}}}, timeout=30)
    assert forged.status_code == 200, "a client's own key header is dropped, the gateway's goes"
    httpx2.delete(f"{gw.http}/py/mcp", headers={"mcp-session-id": forged.headers["mcp-session-id"]}, timeout=10)


def test_a_sessionless_request_to_a_stdio_pool_is_told_to_initialize(gw):
    r = httpx2.post(f"{gw.http}/py/mcp", headers={"accept": ACCEPT}, timeout=10,
                    json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
    assert r.status_code == 400, r.text
    assert r.json()["id"] == 7 and "initialize" in r.json()["error"]["message"], r.text


# --- bounds ---------------------------------------------------------------------------

def open_session(client, url):
    """Opens a session by hand (no GET stream); returns (response, session id)."""
    r = client.post(url, headers={"accept": ACCEPT}, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    sid = r.headers.get("mcp-session-id")
    if sid:
        n = client.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"},
                        json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert n.status_code == 202, n.text
    return r, sid


def call(client, url, sid, tool, args=None, id_=2):
    r = client.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"},
                    json={"jsonrpc": "2.0", "id": id_, "method": "tools/call",
                          "params": {"name": tool, "arguments": args or {}}})
    msgs = sse_messages(r.text) if r.headers.get("content-type", "").startswith("text/event-stream") else [r.json()]
    return r, msgs[-1]


def pid_of(client, url, sid):
    r, msg = call(client, url, sid, "pid")
    assert r.status_code == 200, r.text
    return int(msg["result"]["content"][0]["text"])


def test_a_session_beyond_max_processes_gets_503_and_one_ended_makes_room(gw):
    url = f"{gw.http}/capped/mcp"
    with httpx2.Client(timeout=30) as c:
        first, a = open_session(c, url)
        second, b = open_session(c, url)
        assert first.status_code == second.status_code == 200 and a and b
        over, none = open_session(c, url)
        assert over.status_code == 503 and none is None, over.text
        assert over.headers["retry-after"] == "1"
        assert over.json()["error"]["code"] == -32000 and "at most 2" in over.json()["error"]["message"], over.text
        assert metric(gw, "mcp_gateway_stdio_refused_total", '{pool="capped"}') >= 1
        pid_a = pid_of(c, url, a)
        assert c.delete(url, headers={"mcp-session-id": a}).status_code == 200
        wait_until(lambda: not alive(pid_a), 10, "the ended session's process to exit")
        third, cid = None, None

        def room():
            nonlocal third, cid
            third, cid = open_session(c, url)
            return third.status_code == 200
        wait_until(room, 10, "room for a new session")
        c.delete(url, headers={"mcp-session-id": b})
        c.delete(url, headers={"mcp-session-id": cid})


def test_delete_ends_the_sessions_process(gw):
    url = f"{gw.http}/py/mcp"
    before = metric(gw, "mcp_gateway_stdio_exits_total", '{pool="py",cause="deleted"}')
    with httpx2.Client(timeout=30) as c:
        _, sid = open_session(c, url)
        pid = pid_of(c, url, sid)
        assert alive(pid)
        assert c.delete(url, headers={"mcp-session-id": sid}).status_code == 200
        wait_until(lambda: not alive(pid), 10, "the process to exit")
        r, _ = call(c, url, sid, "pid")
        assert r.status_code == 404, "an ended session stays ended"
    wait_until(lambda: metric(gw, "mcp_gateway_stdio_exits_total", '{pool="py",cause="deleted"}') == before + 1,
               5, "the exit counted")


def test_a_client_that_ends_its_session_leaves_no_process_running(gw):
    """The SDK client holds a GET stream open when it ends its session: the
    process goes, and no new one is started for the stream."""
    before = metric(gw, "mcp_gateway_stdio_starts_total", '{pool="solo"}')

    async def main():
        async with Client(gw, "solo", "http") as s:
            return int(text(await s.call_tool("pid", {})))
    pid = run(main())
    wait_until(lambda: not alive(pid) and processes(gw, "solo") == [], 10, "no process left in the pool")
    assert metric(gw, "mcp_gateway_stdio_starts_total", '{pool="solo"}') == before + 1


def test_an_idle_sessions_process_is_gone_after_the_idle_timeout_and_the_session_goes_on(gw):
    url = f"{gw.http}/idle/mcp"
    with httpx2.Client(timeout=30) as c:
        _, sid = open_session(c, url)
        pid = pid_of(c, url, sid)
        wait_until(lambda: not alive(pid), 10, "the idle process to be ended")
        assert metric(gw, "mcp_gateway_stdio_exits_total", '{pool="idle",cause="idle"}') >= 1
        # the client's id still works: its next request gets a fresh process
        again = pid_of(c, url, sid)
        assert again != pid
        c.delete(url, headers={"mcp-session-id": sid})


def test_a_process_killed_mid_call_replays_read_only_calls_and_the_session_goes_on(gw):
    """SIGKILL the session's process while a call runs: a read-only call is
    answered by the session's new process, any other gets -32003 (it may
    have run), and the session id keeps working."""
    def started(pid):
        return (gw.marks / f"{pid}.started").exists()

    async def main():
        async with Client(gw, "py", "http") as s:
            await s.list_tools()  # the gateway learns which tools are read-only
            pid = int(text(await s.call_tool("pid", {})))
            reading = asyncio.create_task(s.call_tool("slow_read", {"seconds": 2}))
            await asyncio.to_thread(wait_until, lambda: started(pid), 10, "the call to reach the process")
            os.kill(pid, signal.SIGKILL)
            read = text(await reading)
            pid2 = int(text(await s.call_tool("pid", {})))
            writing = asyncio.create_task(s.call_tool("slow_write", {"seconds": 2}))
            await asyncio.to_thread(wait_until, lambda: started(pid2), 10, "the call to reach the process")
            os.kill(pid2, signal.SIGKILL)
            with pytest.raises(Exception) as lost:
                await writing
            pid3 = int(text(await s.call_tool("pid", {})))
            return pid, read, pid2, lost.value, pid3
    pid, read, pid2, lost, pid3 = run(main())
    assert read == f"read by {pid2}" and pid2 != pid, (read, pid, pid2)
    assert getattr(lost, "code", None) == -32003, lost
    assert pid3 not in (pid, pid2)
    # one new process per loss, however many of the session's requests saw it
    wait_until(lambda: [p["state"] for p in processes(gw, "py")].count("running") == 0, 10,
               "no process left running once the client ended its session")
    assert metric(gw, "mcp_gateway_stdio_exits_total", '{pool="py",cause="crashed"}') >= 2


# --- processes that misbehave ---------------------------------------------------------

@pytest.mark.parametrize("tool,args,cause,says", [
    ("garbage", {}, "protocol", "not JSON-RPC"),
    ("huge", {"bytes": 2 * 1024 * 1024}, "oversize", "over the gateway's body limit"),
])
def test_a_misbehaving_process_gives_a_clear_error_a_metric_and_a_log_line(gw, tool, args, cause, says):
    url = f"{gw.http}/bad/mcp"
    before = metric(gw, "mcp_gateway_stdio_exits_total", f'{{pool="bad",cause="{cause}"}}')
    with httpx2.Client(timeout=30) as c:
        _, sid = open_session(c, url)
        _, ok = call(c, url, sid, "echo", {"text": "fine"})
        assert ok["result"]["content"][0]["text"] == "echo: fine"
        r, answer = call(c, url, sid, tool, args, id_=9)
        assert r.status_code == 200, r.text
        assert answer["id"] == 9 and answer["error"]["code"] == -32003, answer
        assert says in answer["error"]["message"] and "pool bad" in answer["error"]["message"], answer
        c.delete(url, headers={"mcp-session-id": sid})
    wait_until(lambda: metric(gw, "mcp_gateway_stdio_exits_total", f'{{pool="bad",cause="{cause}"}}') == before + 1,
               10, "the exit counted")
    wait_until(lambda: log_lines(gw, rf'WARN.*pool=bad slot=\d+ .*cause="{cause}"'), 5,
               "a warning naming the pool and slot")


def test_a_silent_process_after_a_reload_of_the_silence_limit_gets_a_clear_error_a_metric_and_a_log_line(
        tmp_path):
    """upstream_idle_timeout changed by a reload reaches the stdio host: a
    process silent past the new limit's nine tenths is ended (before, the
    old limit of 60 s held), with a clear error, a metric and a log line."""
    log = open(tmp_path / "gateway.log", "w")
    g = Gateway(tmp_path, "reload", [], expect_backends=0, limits='upstream_idle_timeout = "60s"', stderr=log,
                extra_pools=stdio_pool("bad", PY, [str(HERE / "bad_stdio_server.py")]))
    g.log = tmp_path / "gateway.log"
    url = f"{g.http}/bad/mcp"
    try:
        wait_until(lambda: len(g.healthy_backends("bad")) == 1, 30, "the bad pool")
        g.config_path.write_text(g.config_path.read_text().replace(
            'upstream_idle_timeout = "60s"', 'upstream_idle_timeout = "2s"'))
        reloaded = httpx2.post(f"{g.admin}/reload", timeout=10)
        assert reloaded.status_code == 200, reloaded.text
        with httpx2.Client(timeout=20) as c:
            _, sid = open_session(c, url)
            r, answer = call(c, url, sid, "hang", id_=5)
            assert answer["id"] == 5 and answer["error"]["code"] == -32003, answer
            assert "wrote nothing for too long" in answer["error"]["message"], answer
            assert "pool bad" in answer["error"]["message"], answer
        wait_until(lambda: metric(g, "mcp_gateway_stdio_exits_total", '{pool="bad",cause="silent"}') == 1, 10,
                   "the exit counted")
        wait_until(lambda: log_lines(g, r'WARN.*pool=bad slot=\d+ .*cause="silent"'), 5,
                   "a warning naming the pool and slot")
    finally:
        g.proc.stop()
        log.close()


@pytest.mark.parametrize("pool,says", [
    ("noexec", "could not be started"),
    ("quits", "exited before answering initialize (exit status: 3)"),
])
def test_a_command_that_cannot_start_gets_a_clear_error_a_metric_and_a_log_line(gw, pool, says):
    before = metric(gw, "mcp_gateway_stdio_exits_total", f'{{pool="{pool}",cause="start_failed"}}')
    with httpx2.Client(timeout=30) as c:
        r, sid = open_session(c, f"{gw.http}/{pool}/mcp")
    assert sid is None and r.status_code == 200, r.text
    assert r.json()["id"] == 1 and r.json()["error"]["code"] == -32000, r.text
    assert says in r.json()["error"]["message"] and f"pool {pool}" in r.json()["error"]["message"], r.text
    assert metric(gw, "mcp_gateway_stdio_exits_total", f'{{pool="{pool}",cause="start_failed"}}') == before + 1
    wait_until(lambda: log_lines(gw, rf"WARN.*pool={pool} slot=\d+"), 5, "a warning naming the pool and slot")


# --- the gateway's stop ---------------------------------------------------------------

def descendants(pid):
    """Every process below `pid` (children, their children, …)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_gateway_leaves_no_stdio_process_behind(tmp_path, how):
    """A session's process and two warm ones, each npx → sh → node: after
    SIGTERM (an orderly stop) or SIGKILL (the guardian's work) none is left."""
    g = Gateway(tmp_path, "stop", [], expect_backends=0, extra_pools=memory_pool(warm=2))
    try:
        wait_until(lambda: sum(p["state"] == "warm" for p in processes(g, "memory")) == 2, 30, "warm processes")

        def servers(procs):
            return [p for p in procs if alive(p) and b"node" in Path(f"/proc/{p}/cmdline").read_bytes()]

        async def main():
            async with Client(g, "memory", "http") as s:
                await s.list_tools()
                await asyncio.to_thread(wait_until, lambda: [p["state"] for p in processes(g, "memory")].count(
                    "warm") == 2, 30, "the taken warm process replaced")
                procs = descendants(g.proc.p.pid)
                nodes = servers(procs)
                os.kill(g.proc.p.pid, how)
                return procs, nodes
        procs, nodes = run(main())
        assert len(nodes) >= 3, "three node servers (a session's, two warm) ran below the gateway"
        wait_until(lambda: not any(alive(p) for p in procs), 20, "every process below the gateway to be gone")
    finally:
        g.proc.stop()


# --- replicas -------------------------------------------------------------------------

def test_a_stdio_session_is_served_by_the_replica_holding_its_process(tmp_path):
    """Two replicas with [cluster] advertise: a session opened on A and sent
    to B is relayed to A (the same process answers); once A is gone, B moves
    it to a process of its own and the session goes on."""
    marks = tmp_path / "marks"
    marks.mkdir()
    replicas = []
    for name in ["a", "b"]:
        port = free_port()
        replicas.append(Gateway(tmp_path, f"rep-{name}", [], expect_backends=0, http_port=port,
                                extra_pools=py_pool("py", marks), env={"STDIO_TEST_TOKEN": SECRET},
                                extra_config=f'[cluster]\nadvertise = "127.0.0.1:{port}"'))
    a, b = replicas
    try:
        with httpx2.Client(timeout=30) as c:
            _, sid = open_session(c, f"{a.http}/py/mcp")
            on_a = pid_of(c, f"{a.http}/py/mcp", sid)
            assert pid_of(c, f"{b.http}/py/mcp", sid) == on_a, "B relays to A's process"
            assert metric(b, "mcp_gateway_stdio_relayed_total") >= 1
            a.proc.p.kill()
            a.proc.p.wait(10)
            moved = pid_of(c, f"{b.http}/py/mcp", sid)
            assert moved != on_a and pid_of(c, f"{b.http}/py/mcp", sid) == moved
    finally:
        for g in replicas:
            g.proc.stop()
