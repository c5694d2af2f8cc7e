"""Backends come and go, clients notice nothing: a session whose backend is
killed moves to another one on its next request (same session id, no error);
writes that may have run are answered "outcome unknown", never run twice."""

import asyncio
import json
import time

import httpx2
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from conftest import Backend, Gateway, initialize, instance_of, metric, rpc


def data(result):
    assert not result.is_error, result
    return json.loads(result.content[0].text)




def test_a_session_moves_when_its_backend_dies_and_keeps_its_id(tmp_path):
    backends = [Backend(tmp_path / "f.db", f"move-{i}") for i in range(3)]
    by_instance = {b.instance: b for b in backends}
    gw = Gateway(tmp_path, "move", [b.addr for b in backends])
    try:
        with httpx2.Client(timeout=10) as c:
            url = f"{gw.http}/mcp"
            sid, instance = initialize(c, url)
            before = metric(gw, "mcp_gateway_failovers_total")
            victim = by_instance[instance]
            victim.proc.p.kill()
            victim.proc.p.wait(10)
            # a write that never reached the dead backend: safe, so it runs once, elsewhere
            r = rpc(c, url, sid, "tools/call", {"name": "register_agent", "arguments": {
                "agent_id": "moved-writer", "agent_url": "http://127.0.0.1:9/a2a"}}, id_=41)
            assert r.status_code == 200, r.text
            assert "mcp-session-id" not in r.headers, "the client's id never changes"
            assert r.headers.get("x-mcp-gateway-moved") == "1"
            assert '"isError":false' in r.text.replace(" ", "")
            now = instance_of(c, url, sid)
            assert now != instance and now in by_instance
            assert metric(gw, "mcp_gateway_failovers_total") == before + 1
            # and it stays where it moved (no second move)
            for i in range(5):
                assert rpc(c, url, sid, "tools/list", id_=50 + i).status_code == 200
            assert metric(gw, "mcp_gateway_failovers_total") == before + 1
            got = rpc(c, url, sid, "tools/call", {"name": "get_agent", "arguments": {"agent_id": "moved-writer"}}, id_=60)
            assert '"agent_id":"moved-writer"' in got.text.replace(" ", "").replace("\\\\", "")
    finally:
        gw.proc.stop()
        for b in backends:
            b.proc.stop()


def test_sdk_sessions_of_both_transports_survive_their_backend(tmp_path):
    backends = [Backend(tmp_path / "s.db", f"sdk-{i}") for i in range(3)]
    gw = Gateway(tmp_path, "sdk-move", [b.addr for b in backends])
    sent_ids = set()

    async def note(request):
        if "mcp-session-id" in request.headers:
            sent_ids.add(request.headers["mcp-session-id"])

    def kill(instance):
        b = next(b for b in backends if b.instance == instance)
        b.proc.p.kill()
        b.proc.p.wait(10)

    async def survive(session):
        await session.initialize()
        first = data(await session.call_tool("health_check", {}))["instance"]
        kill(first)
        for _ in range(5):
            assert len((await session.list_tools()).tools) == 8
        then = data(await session.call_tool("health_check", {}))["instance"]
        assert then != first
        return then

    async def main():
        async with httpx2.AsyncClient(event_hooks={"request": [note]}, timeout=30) as http:
            async with streamable_http_client(f"{gw.http}/mcp", http_client=http) as (r, w, *_):
                async with ClientSession(r, w) as s:
                    await survive(s)
        async with sse_client(f"{gw.http}/sse") as (r, w):
            async with ClientSession(r, w) as s:
                await survive(s)

    try:
        asyncio.run(main())
        assert len(sent_ids) == 1, f"the Streamable HTTP session changed its id: {sent_ids}"
        assert metric(gw, "mcp_gateway_failovers_total") >= 2
    finally:
        gw.proc.stop()
        for b in backends:
            b.proc.stop()


def test_a_server_stream_stays_open_while_its_backend_is_replaced(tmp_path):
    import socket
    backends = [Backend(tmp_path / "g.db", f"get-{i}") for i in range(2)]
    gw = Gateway(tmp_path, "get-move", [b.addr for b in backends])
    try:
        with httpx2.Client(timeout=10) as c:
            sid, instance = initialize(c, f"{gw.http}/mcp")
        s = socket.create_connection(("127.0.0.1", gw.http_port))
        s.sendall(f"GET /mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n"
                  "Mcp-Protocol-Version: 2025-06-18\r\n\r\n".encode())
        s.settimeout(10)
        buf = s.recv(4096)
        assert buf.startswith(b"HTTP/1.1 200"), buf
        next(b for b in backends if b.instance == instance).proc.p.kill()
        # the client's stream lives on: keep-alives keep coming, it never ends
        seen = buf.count(b": keepalive")
        deadline = time.monotonic() + 10
        while buf.count(b": keepalive") < seen + 3 and time.monotonic() < deadline:
            chunk = s.recv(4096)
            assert chunk, "the gateway closed the client's stream"
            buf += chunk
        assert buf.count(b": keepalive") >= seen + 3
        assert b"\r\n0\r\n\r\n" not in buf, "the stream must not end"
        s.close()
        # and the session moved, for the next request too
        with httpx2.Client(timeout=10) as c:
            assert instance_of(c, f"{gw.http}/mcp", sid) != instance
    finally:
        gw.proc.stop()
        for b in backends:
            b.proc.stop()
