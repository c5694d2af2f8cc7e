"""Peer: the seed's client flow on the 1.x Python MCP SDK, unchanged in
shape: sse_client(".../sse") + ClientSession, initialize, list_tools shows
the eight tools, each tool called, tools converted to Anthropic's format as
the seed did. Then the same over Streamable HTTP and over TLS.
Run with the mcp 1.x venv (tests/run.sh makes .venv-mcp1)."""

import asyncio
import json
import ssl
import sys
from pathlib import Path

import httpx
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamablehttp_client

sys.path.insert(0, str(Path(__file__).parent))
from stack import Checks, Stack  # noqa: E402

SEED_TOOLS = {"register_agent", "list_agents", "search_agents", "get_agent", "update_agent",
              "delete_agent", "get_agent_facts", "health_check"}


def text(result):
    return json.loads(result.content[0].text)


async def seed_flow(checks, session, label):
    await session.initialize()
    tools = (await session.list_tools()).tools
    print(f"✓ Available MCP tools: {len(tools)}")
    checks.check(f"{label}: list_tools shows the eight seed tools", {t.name for t in tools} == SEED_TOOLS)
    # the seed converted MCP tools to Anthropic tools like this
    anthropic_tools = [{"name": t.name, "description": t.description, "input_schema": t.inputSchema} for t in tools]
    checks.check(f"{label}: every tool has a description and an object schema",
                 len(anthropic_tools) == 8
                 and all(t["description"] and t["input_schema"].get("type") == "object" for t in anthropic_tools))
    agent = f"seed-{label}"
    r = await session.call_tool("register_agent", {"agent_id": agent, "agent_url": "http://localhost:6000/a2a"})
    checks.check(f"{label}: register_agent", not r.isError and text(r)["status"] == "success", r)
    r = await session.call_tool("list_agents", {})
    checks.check(f"{label}: list_agents", agent in [a["agent_id"] for a in text(r)["agents"]])
    r = await session.call_tool("search_agents", {"query": agent})
    checks.check(f"{label}: search_agents", text(r)["count"] == 1)
    r = await session.call_tool("get_agent", {"agent_id": agent})
    checks.check(f"{label}: get_agent", text(r)["agent_url"] == "http://localhost:6000/a2a")
    r = await session.call_tool("update_agent", {"agent_id": agent, "agent_url": "http://localhost:6001/a2a"})
    checks.check(f"{label}: update_agent", text(r)["agent"]["agent_url"] == "http://localhost:6001/a2a")
    r = await session.call_tool("get_agent_facts", {"username": agent.replace("-", "_")})
    checks.check(f"{label}: get_agent_facts", text(r)["agent_name"] == agent)
    r = await session.call_tool("health_check", {})
    checks.check(f"{label}: health_check", text(r)["status"] == "healthy")
    r = await session.call_tool("delete_agent", {"agent_id": agent})
    checks.check(f"{label}: delete_agent", not r.isError)
    r = await session.call_tool("get_agent", {"agent_id": agent})
    checks.check(f"{label}: error as the seed shaped it", r.isError and text(r) == {"status": "error", "message": "Agent not found"})
    res = await session.read_resource("health://check")
    line = res.contents[0].text
    checks.check(f"{label}: health://check resource", line.startswith("Registry is healthy (instance "), line)


async def main():
    checks = Checks("seed-client-mcp1")
    with Stack() as stack:
        # exactly the seed's call: sse_client(url) with nothing else
        async with sse_client(f"{stack.http}/sse") as (r, w):
            async with ClientSession(r, w) as s:
                await seed_flow(checks, s, "legacy-sse")
        async with streamablehttp_client(f"{stack.http}/mcp") as (r, w, _):
            async with ClientSession(r, w) as s:
                await seed_flow(checks, s, "streamable")
        ctx = ssl.create_default_context(cafile=stack.ca)

        def tls_factory(headers=None, timeout=None, auth=None):
            return httpx.AsyncClient(verify=ctx, headers=headers, timeout=timeout, auth=auth)
        async with sse_client(f"{stack.https}/sse", httpx_client_factory=tls_factory) as (r, w):
            async with ClientSession(r, w) as s:
                await seed_flow(checks, s, "legacy-sse-tls")
        async with streamablehttp_client(f"{stack.https}/mcp", httpx_client_factory=tls_factory) as (r, w, _):
            async with ClientSession(r, w) as s:
                await seed_flow(checks, s, "streamable-tls")
    checks.finish()


asyncio.run(main())
