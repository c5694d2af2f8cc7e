"""Runs under the 1.x MCP SDK (.venv-mcp1): the seed's client flow
(sse_client + ClientSession) doing read-only calls in a loop.

  python mcp1_reader.py URL SESSIONS SECONDS

Prints one JSON line: {"sessions": N, "calls": N, "failures": [...]}."""

import asyncio
import json
import sys
import time

from mcp import ClientSession
from mcp.client.sse import sse_client

URL, SESSIONS, SECONDS = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
calls = 0
failures = []


async def one(i):
    global calls
    end = time.monotonic() + SECONDS
    try:
        async with sse_client(URL) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                while time.monotonic() < end:
                    try:
                        res = await s.call_tool("health_check", {})
                        if res.isError or json.loads(res.content[0].text)["status"] != "healthy":
                            failures.append(f"session {i}: {res}")
                        calls += 1
                    except Exception as e:  # noqa: BLE001 - every failure is reported
                        failures.append(f"session {i}: {type(e).__name__}: {e}")
                    await asyncio.sleep(0.2)
    except Exception as e:  # noqa: BLE001
        failures.append(f"session {i} ended: {type(e).__name__}: {e}")


async def main():
    await asyncio.gather(*(one(i) for i in range(SESSIONS)))
    print(json.dumps({"sessions": SESSIONS, "calls": calls, "failures": failures}))


asyncio.run(main())
