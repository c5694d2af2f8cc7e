"""Virtual servers (issue 22): one route, /all, whose sessions see the
registry (names prefixed `reg_`) and @modelcontextprotocol/server-everything
(prefixed `ev_`, its `echo` renamed `say`) at once, driven by the Python SDK:
merged lists, calls routed by name, sampling/elicitation/progress through the
federation, resources, completion, over Streamable HTTP, legacy HTTP+SSE and
stateless requests; a warm list reaches
no backend; a member that goes away leaves the lists with a `list_changed`,
is named in errors, and comes back."""
import asyncio
import json

import httpx2
import mcp.types as t
import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from conftest import ACCEPT, Backend, Gateway, metric, rpc, sse_messages, wait_until
from test_any_server import elicitation, sampling, start_everything

SERVERS = """
[[servers]]
name = "all"
route = "/all"
list_ttl = "60s"
[[servers.members]]
pool = "registry"
prefix = "reg_"
[[servers.members]]
pool = "everything"
prefix = "ev_"
rename = { echo = "say" }
describe = { echo = "Says it back, through the federation" }
"""


def everything_pool(addr):
    return (f'[[pools]]\nname = "everything"\nroute = "/everything"\nhealth = "mcp"\nhealth_interval = "300ms"\n'
            f'discovery = {{ static = {{ backends = ["{addr}"] }} }}\n')


class Stack:
    def __init__(self, tmp):
        self.tmp = tmp
        self.everything, self.ev_addr = start_everything()
        self.backend = Backend(tmp / "registry.db", "fed-0")
        self.gw = Gateway(tmp, "fed", [self.backend.addr], extra_pools=everything_pool(self.ev_addr) + SERVERS)
        wait_until(lambda: self.gw.healthy_backends("everything") == [self.ev_addr], 30, "the everything pool")
        self.url = f"{self.gw.http}/all/mcp"

    def requests(self):
        """Requests each pool's backends have had from the gateway."""
        return {pool: sum(b["requests"] for b in self.gw.backends(pool)) for pool in ("registry", "everything")}

    def stop(self):
        self.gw.proc.stop()
        self.backend.proc.stop()
        self.everything.stop()


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("federation"))
    yield s
    s.stop()


def initialize(c, url):
    """Opens a federated session by hand; returns its id."""
    r = c.post(url, headers={"accept": ACCEPT}, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pytest", "version": "1"}}})
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    n = c.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"},
               json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert n.status_code == 202, n.text
    return sid


def result_of(r):
    assert r.status_code == 200, r.text
    msgs = sse_messages(r.text) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
    return msgs[-1]


async def calls_reach_their_owners(s, message):
    """A renamed tool, a prefixed one, sampling and progress through the federation."""
    said = await s.call_tool("say", {"message": message})
    assert said.content[0].text == f"Echo: {message}"
    health = await s.call_tool("reg_health_check", {})
    assert json.loads(health.content[0].text)["instance"] == "fed-0"
    sampled = await s.call_tool("ev_trigger-sampling-request", {"prompt": "2+2?", "maxTokens": 5})
    assert "sampled: " in sampled.content[0].text, sampled.content
    progress = []

    async def on_progress(value, total, message):
        progress.append(value)
    done = await s.call_tool("ev_trigger-long-running-operation", {"duration": 1, "steps": 2},
                             progress_callback=on_progress)
    assert "completed" in done.content[0].text and progress == [1.0, 2.0], progress


def test_one_session_sees_both_members_and_calls_reach_the_owner_over_streamable_http(fed):
    async def main():
        async with httpx2.AsyncClient(timeout=30) as http:
            async with streamable_http_client(fed.url, http_client=http) as (r, w, *_):
                async with ClientSession(r, w, sampling_callback=sampling, elicitation_callback=elicitation) as s:
                    init = await s.initialize()
                    assert init.server_info.name == "all"
                    assert init.capabilities.tools and init.capabilities.prompts and init.capabilities.resources
                    tools = {x.name: x for x in (await s.list_tools()).tools}
                    assert {"reg_health_check", "reg_search_agents", "say", "ev_trigger-sampling-request"} <= set(tools), sorted(tools)
                    assert "ev_echo" not in tools and "echo" not in tools, "renamed: only the new name is shown"
                    assert tools["say"].description == "Says it back, through the federation"
                    await calls_reach_their_owners(s, "federated")
                    elicited = await s.call_tool("ev_trigger-elicitation-request", {})
                    assert "Ada Lovelace" in " ".join(c.text for c in elicited.content if hasattr(c, "text"))
                    resources = [str(x.uri) for x in (await s.list_resources()).resources]
                    assert "health://check" in resources, "the registry's resource is listed"
                    theirs = [u for u in resources if u != "health://check"]
                    assert theirs, "the everything member's resources are listed"
                    for uri in ("health://check", theirs[0]):
                        read = await s.read_resource(uri)
                        assert read.contents and str(read.contents[0].uri) == uri, read
                    await s.subscribe_resource(theirs[0])  # the registry would refuse it: it went to its owner
                    prompts = {p.name for p in (await s.list_prompts()).prompts}
                    assert {"ev_simple-prompt", "ev_completable-prompt"} <= prompts, prompts
                    got = await s.get_prompt("ev_simple-prompt")
                    assert got.messages
                    done = await s.complete(t.PromptReference(type="ref/prompt", name="ev_completable-prompt"),
                                            {"name": "department", "value": "Eng"})
                    assert done.completion.values == ["Engineering"], done.completion
                    await s.set_logging_level("info")
                    assert isinstance(await s.send_ping(), t.EmptyResult)
    asyncio.run(main())
    # per-tool latencies by the name clients see, labelled with the member
    said = metric(fed.gw, "mcp_gateway_tool_call_duration_seconds_count", '{pool="all",member="everything",tool="say"}')
    assert said >= 1, said


def test_a_legacy_sse_client_gets_the_same_federation(fed):
    async def main():
        async with sse_client(f"{fed.gw.http}/all/sse") as (r, w):
            async with ClientSession(r, w, sampling_callback=sampling, elicitation_callback=elicitation) as s:
                init = await s.initialize()
                assert init.server_info.name == "all"
                tools = {x.name for x in (await s.list_tools()).tools}
                assert {"reg_get_agent", "say", "ev_trigger-sampling-request"} <= tools, sorted(tools)
                await calls_reach_their_owners(s, "over legacy")
                got = await s.get_prompt("ev_simple-prompt")
                assert got.messages
    asyncio.run(main())


def test_a_warm_tools_list_reaches_no_backend(fed):
    with httpx2.Client(timeout=10) as c:
        sid = initialize(c, fed.url)
        first = result_of(rpc(c, fed.url, sid, "tools/list"))
        before = fed.requests()
        for _ in range(3):
            again = result_of(rpc(c, fed.url, sid, "tools/list"))
            assert again["result"] == first["result"]
        assert fed.requests() == before, "a warm list was answered from the catalog"


def test_unknown_names_cursors_and_methods_get_clear_errors(fed):
    with httpx2.Client(timeout=10) as c:
        sid = initialize(c, fed.url)
        nope = result_of(rpc(c, fed.url, sid, "tools/call", {"name": "reg_nothing_here", "arguments": {}}))
        assert nope["error"]["code"] == -32602 and "reg_nothing_here" in nope["error"]["message"], nope
        ghost = result_of(rpc(c, fed.url, sid, "tools/call", {"name": "nobody_owns_this", "arguments": {}}))
        assert ghost["error"]["code"] == -32602, ghost
        cursor = result_of(rpc(c, fed.url, sid, "tools/list", {"cursor": "not-ours"}))
        assert cursor["error"]["code"] == -32602 and "cursor" in cursor["error"]["message"], cursor
        batch = c.post(fed.url, headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-03-26"},
                       json=[{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
        assert batch.status_code == 400 and "batch" in batch.json()["error"]["message"], batch.text
        forged = rpc(c, fed.url, sid[:-4] + "AAAA", "tools/list")
        assert forged.status_code == 404, forged.text


def test_stateless_requests_reach_the_owning_member_by_prefixed_name(fed):
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}
    with httpx2.Client(timeout=10) as c:
        r = c.post(fed.url, headers={"accept": ACCEPT, "mcp-protocol-version": "2026-07-28",
                                     "mcp-method": "tools/call", "mcp-name": "reg_health_check"},
                   json={"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                         "params": {"name": "reg_health_check", "arguments": {}, "_meta": meta}})
        body = result_of(r)
        assert "mcp-session-id" not in r.headers
        assert json.loads(body["result"]["content"][0]["text"])["instance"] == "fed-0", body
        wrong = c.post(fed.url, headers={"accept": ACCEPT, "mcp-protocol-version": "2026-07-28",
                                         "mcp-method": "tools/call", "mcp-name": "reg_get_agent"},
                       json={"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                             "params": {"name": "reg_health_check", "arguments": {}, "_meta": meta}})
        assert wrong.status_code == 400, "Mcp-Name is checked against the body as on pool routes"


def listen(url, sid, seen, stop):
    """Reads the session's GET stream into `seen` until `stop` is set."""
    with httpx2.Client(timeout=httpx2.Timeout(30, read=60)) as c:
        with c.stream("GET", url, headers={"accept": "text/event-stream", "mcp-session-id": sid,
                                           "mcp-protocol-version": "2025-06-18"}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:]))
                if stop.is_set():
                    return


def test_a_member_that_goes_away_leaves_the_lists_is_named_in_errors_and_comes_back(fed):
    import threading
    with httpx2.Client(timeout=10) as c:
        sid = initialize(c, fed.url)
        seen, stop = [], threading.Event()
        reader = threading.Thread(target=listen, args=(fed.url, sid, seen, stop), daemon=True)
        reader.start()
        names = lambda: {x["name"] for x in result_of(rpc(c, fed.url, sid, "tools/list"))["result"]["tools"]}
        assert "say" in names()
        fed.everything.stop()
        wait_until(lambda: any(m.get("method") == "notifications/tools/list_changed" for m in seen), 20,
                   "a list_changed on the client's stream")
        left = names()
        assert "say" not in left and "reg_health_check" in left, left
        down = result_of(rpc(c, fed.url, sid, "tools/call", {"name": "say", "arguments": {"message": "x"}}))
        assert down["error"]["data"]["member"] == "everything", down
        assert down["error"]["data"]["mayHaveRun"] is False, down
        alive = result_of(rpc(c, fed.url, sid, "tools/call", {"name": "reg_health_check", "arguments": {}}))
        assert "result" in alive, alive
        late = initialize(c, fed.url)  # opened while the member is down: it joins on first use
        assert "say" not in {x["name"] for x in result_of(rpc(c, fed.url, late, "tools/list"))["result"]["tools"]}
        seen.clear()
        fed.everything, _ = start_everything(port=int(fed.ev_addr.split(":")[1]))
        wait_until(lambda: any(m.get("method") == "notifications/tools/list_changed" for m in seen), 30,
                   "a list_changed when the member returns")
        wait_until(lambda: "say" in names(), 10, "the member's tools back in the list")
        back = result_of(rpc(c, fed.url, sid, "tools/call", {"name": "say", "arguments": {"message": "back"}}))
        assert back["result"]["content"][0]["text"] == "Echo: back", back
        joined = result_of(rpc(c, fed.url, late, "tools/call", {"name": "say", "arguments": {"message": "joined"}}))
        assert joined["result"]["content"][0]["text"] == "Echo: joined", joined
        stop.set()


def test_a_denied_federated_tool_is_filtered_and_refused_by_the_name_clients_see(tmp_path):
    import hashlib
    key = "fed-reader-key"
    auth = f"""[auth]
[[auth.keys]]
principal = "reader"
sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"
scopes = ["fed:read"]
[[auth.rules]]
scopes = ["fed:read"]
deny_tools = ["reg_delete_agent", "say"]
"""
    everything, ev_addr = start_everything()
    backend = Backend(tmp_path / "registry.db", "fed-auth-0")
    gw = Gateway(tmp_path, "fed-auth", [backend.addr], extra_config=auth,
                 extra_pools=everything_pool(ev_addr) + SERVERS)
    try:
        wait_until(lambda: gw.healthy_backends("everything") == [ev_addr], 30, "the everything pool")
        url, me = f"{gw.http}/all/mcp", {"authorization": f"Bearer {key}"}
        with httpx2.Client(timeout=10, headers=me) as c:
            anonymous = httpx2.post(url, headers={"accept": ACCEPT}, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert anonymous.status_code == 401, "the virtual server's route asks for credentials as pools do"
            sid = initialize(c, url)
            tools = {x["name"] for x in result_of(rpc(c, url, sid, "tools/list"))["result"]["tools"]}
            assert "reg_get_agent" in tools and "ev_get-sum" in tools, tools
            assert not {"reg_delete_agent", "say"} & tools, "denied names are filtered from the merged list"
            for name in ("reg_delete_agent", "say"):
                r = rpc(c, url, sid, "tools/call", {"name": name, "arguments": {}})
                assert r.status_code == 403 and name in r.text, r.text
            stateless = c.post(url, headers={"accept": ACCEPT, "mcp-protocol-version": "2026-07-28",
                                             "mcp-method": "tools/call", "mcp-name": "say"},
                               json={"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                                     "params": {"name": "say", "arguments": {"message": "x"}}})
            assert stateless.status_code == 403, stateless.text
            allowed = result_of(rpc(c, url, sid, "tools/call", {"name": "ev_get-sum", "arguments": {"a": 2, "b": 3}}))
            assert "5" in allowed["result"]["content"][0]["text"], allowed
    finally:
        gw.proc.stop()
        backend.proc.stop()
        everything.stop()


def test_killing_a_member_backend_under_load_moves_its_sessions_and_breaks_no_call(tmp_path):
    import threading
    import time
    everything, ev_addr = start_everything()
    backends = [Backend(tmp_path / "registry.db", f"fed-k{i}") for i in range(2)]
    gw = Gateway(tmp_path, "fed-kill", [b.addr for b in backends], extra_pools=everything_pool(ev_addr) + SERVERS)
    try:
        wait_until(lambda: gw.healthy_backends("everything") == [ev_addr], 30, "the everything pool")
        url = f"{gw.http}/all/mcp"

        def instance(c, sid):
            body = result_of(rpc(c, url, sid, "tools/call", {"name": "reg_health_check", "arguments": {}}))
            return json.loads(body["result"]["content"][0]["text"])["instance"]

        clients = [httpx2.Client(timeout=20) for _ in range(6)]
        sids = [initialize(c, url) for c in clients]
        first = [instance(c, sid) for c, sid in zip(clients, sids)]
        victim = max({"fed-k0", "fed-k1"}, key=first.count)
        assert first.count(victim) >= 1
        failures, calls, stop = [], [0], threading.Event()

        def work(c, sid):
            while not stop.is_set():
                for name, args in (("reg_health_check", {}), ("ev_get-sum", {"a": 1, "b": 2})):
                    body = result_of(rpc(c, url, sid, "tools/call", {"name": name, "arguments": args}))
                    calls[0] += 1
                    if "result" not in body or body["result"].get("isError"):
                        failures.append((name, body))
        threads = [threading.Thread(target=work, args=(c, sid)) for c, sid in zip(clients, sids)]
        for th in threads:
            th.start()
        wait_until(lambda: calls[0] >= 30, 20, "calls under way")
        next(b for b in backends if b.instance == victim).proc.p.kill()
        at_kill = calls[0]
        wait_until(lambda: calls[0] >= at_kill + 60, 30, "calls after the kill")
        stop.set()
        for th in threads:
            th.join(30)
        assert not failures, failures[:3]
        after = [instance(c, sid) for c, sid in zip(clients, sids)]
        assert victim not in after and after.count(next(iter({"fed-k0", "fed-k1"} - {victim}))) == 6, after
        for c in clients:
            c.close()
    finally:
        gw.proc.stop()
        for b in backends:
            b.proc.stop()
        everything.stop()
