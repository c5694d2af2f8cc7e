"""Health checks for servers we did not write: a plain MCP server (Python SDK)
has no health endpoint, so the default HTTP check never sees it ready; the
`mcp` check (initialize answered with a result) and the `tcp` check do, and
both notice when it goes away."""
import asyncio
import sys
from pathlib import Path

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import Gateway, Proc, free_port, listens_on, wait_until

HERE = Path(__file__).parent


def plain_server(port=None):
    port = port or free_port()
    proc = Proc([sys.executable, str(HERE / "plain_mcp_server.py"), str(port)], name="plain-mcp")
    wait_until(lambda: proc.p.poll() is not None or listens_on(proc.p.pid, port), 30, "the plain MCP server")
    assert proc.p.poll() is None, "the plain MCP server did not start"
    return proc, f"127.0.0.1:{port}"


def healthy(gw):
    return [b["healthy"] for b in gw.backends()]


def test_a_server_without_a_health_endpoint_is_checked_by_mcp_or_tcp(tmp_path):
    server, addr = plain_server()
    gws = []
    try:
        http = Gateway(tmp_path, "hc-http", [addr], expect_backends=0)
        gws.append(http)
        # the plain server answers GET /readyz with 404: the HTTP check marks it down
        assert healthy(http) == [False]
        mcp_gw = Gateway(tmp_path, "hc-mcp", [addr], pool_options='health = "mcp"\nhealth_interval = "300ms"')
        gws.append(mcp_gw)
        tcp_gw = Gateway(tmp_path, "hc-tcp", [addr], pool_options='health = "tcp"\nhealth_interval = "300ms"')
        gws.append(tcp_gw)
        # once the HTTP gateway has seen it fail again, the others have checked too
        wait_until(lambda: healthy(mcp_gw) == [True] and healthy(tcp_gw) == [True], 10, "mcp and tcp checks")

        async def call():
            async with httpx2.AsyncClient(timeout=10) as c:
                async with streamable_http_client(f"{mcp_gw.http}/mcp", http_client=c) as (r, w, *_):
                    async with ClientSession(r, w) as s:
                        await s.initialize()
                        tools = await s.list_tools()
                        out = await s.call_tool("echo", {"text": "through the gateway"})
                        return [t.name for t in tools.tools], out.content[0].text
        names, text = asyncio.run(call())
        assert names == ["echo"] and text == "echo: through the gateway"

        server.stop()
        wait_until(lambda: healthy(mcp_gw) == [False], 15, "the mcp check to see the server gone")
        wait_until(lambda: healthy(tcp_gw) == [False], 15, "the tcp check to see the server gone")
        # back on the same address: a passing MCP check brings it back
        server, _ = plain_server(int(addr.split(":")[1]))
        wait_until(lambda: healthy(mcp_gw) == [True], 15, "the mcp check to pass again")
        wait_until(lambda: healthy(tcp_gw) == [True], 15, "the tcp check to pass again")
        assert healthy(http) == [False]
    finally:
        for g in gws:
            g.proc.stop()
        server.stop()


def test_an_mcp_check_fails_for_a_server_that_answers_but_not_mcp(tmp_path, garbage_backend):
    gw = Gateway(tmp_path, "hc-garbage", [garbage_backend], expect_backends=0,
                 pool_options='health = "mcp"\nhealth_interval = "300ms"')
    try:
        assert healthy(gw) == [False]
    finally:
        gw.proc.stop()
