"""Any MCP server behind the gateway: the reference server
@modelcontextprotocol/server-everything (npm 2026.8.31, pinned in
tests/peers) as a second pool at /everything, checked by the `mcp` health
check (it has no health endpoint), driven by the Python SDK through the
gateway over Streamable HTTP, TLS and legacy SSE — including its
server→client requests (sampling, elicitation) answered by the client's
callbacks, progress notifications, resources and prompts."""
import asyncio
import os
import shutil

import httpx2
import mcp.types as t
import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from conftest import ROOT, Backend, Gateway, Proc, free_port, listens_on, metric, wait_until

EVERYTHING = ROOT / "tests" / "peers" / "node_modules" / ".bin" / "mcp-server-everything"
LOOPBACK = ROOT / "tests" / "peers" / "loopback.cjs"  # it would bind every interface


def start_everything(port=None):
    """One server-everything process on 127.0.0.1; returns (proc, "host:port")."""
    assert EVERYTHING.exists(), "tests/run.sh installs server-everything (tests/peers)"
    port = port or free_port()
    server = Proc([shutil.which("node") or "node", "--require", str(LOOPBACK), str(EVERYTHING), "streamableHttp"],
                  env={**os.environ, "PORT": str(port)}, name="server-everything")
    return started(server, port), f"127.0.0.1:{port}"


def started(server, port):
    """`server` once it listens on `port` (it must not have exited)."""
    wait_until(lambda: server.p.poll() is not None or listens_on(server.p.pid, port), 30, server.name)
    assert server.p.poll() is None, f"{server.name} did not start"
    return server


@pytest.fixture(scope="module")
def everything(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("everything")
    server, addr = start_everything()
    port = int(addr.split(":")[1])
    backend = Backend(tmp / "registry.db", "any-0")
    pool = (f'[[pools]]\nname = "everything"\nroute = "/everything"\nhealth = "mcp"\nhealth_interval = "300ms"\n'
            f'discovery = {{ static = {{ backends = ["127.0.0.1:{port}"] }} }}\n')
    gw = Gateway(tmp, "any", [backend.addr], extra_pools=pool)
    wait_until(lambda: gw.healthy_backends("everything") == [f"127.0.0.1:{port}"], 30, "the everything pool")
    yield gw
    gw.proc.stop()
    backend.proc.stop()
    server.stop()


async def sampling(context, params):
    asked = params.messages[0].content.text
    return t.CreateMessageResult(role="assistant", model="test-model",
                                 content=t.TextContent(type="text", text=f"sampled: {asked}"))


async def elicitation(context, params):
    return t.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True, "email": "ada@example.com",
                                                    "integer": 3, "number": 1.5, "favoriteColor": "red"})


async def exercise(s: ClientSession):
    await s.initialize()
    tools = {x.name for x in (await s.list_tools()).tools}
    assert {"echo", "trigger-sampling-request", "trigger-elicitation-request",
            "trigger-long-running-operation"} <= tools, tools
    echo = await s.call_tool("echo", {"message": "through the gateway"})
    assert echo.content[0].text == "Echo: through the gateway"
    # server→client request on the POST's stream, the client's answer routed back to the same backend session
    sampled = await s.call_tool("trigger-sampling-request", {"prompt": "what is 2+2?", "maxTokens": 10})
    # the server wraps the prompt; what comes back is our callback's answer to it
    text = sampled.content[0].text
    assert '"text": "sampled: ' in text and "what is 2+2?" in text and "test-model" in text, text
    elicited = await s.call_tool("trigger-elicitation-request", {})
    assert "Ada Lovelace" in " ".join(c.text for c in elicited.content if hasattr(c, "text")), elicited.content
    progress = []

    async def on_progress(value, total, message):
        progress.append(value)
    done = await s.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 3},
                             progress_callback=on_progress)
    assert "completed" in done.content[0].text and progress == [1.0, 2.0, 3.0], (done.content, progress)
    resources = (await s.list_resources()).resources
    assert resources, "server-everything lists resources"
    read = await s.read_resource(resources[0].uri)
    assert read.contents, read
    prompts = {p.name for p in (await s.list_prompts()).prompts}
    assert "simple-prompt" in prompts, prompts
    prompt = await s.get_prompt("simple-prompt")
    assert prompt.messages, prompt


def session_kwargs():
    return {"sampling_callback": sampling, "elicitation_callback": elicitation}


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_server_everything_through_streamable_http(everything, scheme):
    gw = everything
    base = gw.http if scheme == "http" else gw.https
    verify = True if scheme == "http" else gw.ssl_context()

    async def main():
        async with httpx2.AsyncClient(timeout=30, verify=verify) as http:
            async with streamable_http_client(f"{base}/everything/mcp", http_client=http) as (r, w, *_):
                async with ClientSession(r, w, **session_kwargs()) as s:
                    await exercise(s)
    asyncio.run(main())


def test_server_everything_through_the_legacy_sse_bridge(everything):
    gw = everything

    async def main():
        async with sse_client(f"{gw.http}/everything/sse") as (r, w):
            async with ClientSession(r, w, **session_kwargs()) as s:
                await exercise(s)
    asyncio.run(main())


def test_the_registry_pool_still_answers_beside_it(everything):
    gw = everything

    async def main():
        async with httpx2.AsyncClient(timeout=30) as http:
            async with streamable_http_client(f"{gw.http}/mcp", http_client=http) as (r, w, *_):
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    return sorted(x.name for x in (await s.list_tools()).tools)
    names = asyncio.run(main())
    assert "register_agent" in names and "echo" not in names


def test_an_answer_to_a_lost_server_request_goes_to_no_other_backend(tmp_path):
    """A sampling request is pending when its backend dies: the tool call gets
    a clear error (-32003, outcome unknown), the client's answer is refused
    with 502 instead of being handed to the session's new backend, and the
    session carries on there."""
    servers = {addr: proc for proc, addr in (start_everything() for _ in range(2))}
    backend = Backend(tmp_path / "registry.db", "lost-0")
    addrs = ", ".join(f'"{a}"' for a in servers)
    pool = (f'[[pools]]\nname = "everything"\nroute = "/everything"\nhealth = "mcp"\nhealth_interval = "300ms"\n'
            f'discovery = {{ static = {{ backends = [{addrs}] }} }}\n')
    gw = Gateway(tmp_path, "lost", [backend.addr], extra_pools=pool)
    wait_until(lambda: len(gw.healthy_backends("everything")) == 2, 30, "the everything pool")
    killed = []
    try:
        async def sampling_then_kill(context, params):
            # the backend running the tool call is the one with a request in flight
            busy = [b["addr"] for b in gw.backends("everything") if b["inflight"] > 0]
            assert len(busy) == 1, busy
            servers[busy[0]].p.kill()
            servers[busy[0]].p.wait(10)
            killed.append(busy[0])
            return t.CreateMessageResult(role="assistant", model="test-model",
                                         content=t.TextContent(type="text", text="too late"))

        async def main():
            async with httpx2.AsyncClient(timeout=30) as http:
                async with streamable_http_client(f"{gw.http}/everything/mcp", http_client=http) as (r, w, *_):
                    async with ClientSession(r, w, sampling_callback=sampling_then_kill) as s:
                        await s.initialize()
                        with pytest.raises(Exception) as lost:
                            await s.call_tool("trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
                        # the same session goes on, on the other backend
                        echo = await s.call_tool("echo", {"message": "still here"})
                        return str(lost.value), echo.content[0].text
        lost, echo = asyncio.run(main())
        assert killed, "the sampling callback never ran"
        assert "may or may not have run" in lost, lost
        assert echo == "Echo: still here"
        assert metric(gw, "mcp_gateway_rejected_total", '{reason="upstream"}') == 2
    finally:
        gw.proc.stop()
        backend.proc.stop()
        for p in servers.values():
            p.stop()
