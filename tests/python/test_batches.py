"""JSON-RPC batches (2025-03-26 allowed them; 2025-06-18 removed them) go
through every policy step, element by element (issue 21, finding 1): a
reader's batch holding a denied tool call is refused whole before any of it
reaches a backend, a batched `tools/list` answer is filtered like a single
one, and a batch from a client speaking a revision without batches is
refused with a clear error. The backend is a small server that accepts
batches and records what it ran."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from conftest import ACCEPT, Gateway, send_json

READER = "batch-reader-key-0123456789"
WRITER = "batch-writer-key-0123456789"
AUTH = f"""
[auth]
[[auth.keys]]
principal = "reader"
sha256 = "{hashlib.sha256(READER.encode()).hexdigest()}"
[[auth.keys]]
principal = "writer"
sha256 = "{hashlib.sha256(WRITER.encode()).hexdigest()}"
scopes = ["write"]
[[auth.rules]]
scopes = ["write"]
[[auth.rules]]
deny_tools = ["delete_agent"]
"""
TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in ("get_agent", "delete_agent")]


def batch_server():
    """Answers single messages and batches; records every tool call it ran."""
    ran = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            send_json(self, 200 if self.path != "/mcp" else 405, {"status": "ok"})

        def answer(self, msg):
            method = msg.get("method")
            if method == "tools/call":
                ran.append(msg["params"]["name"])
                return {"jsonrpc": "2.0", "id": msg["id"], "result": {"content": [{"type": "text", "text": "ok"}]}}
            if method == "tools/list":
                return {"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": TOOLS}}
            return {"jsonrpc": "2.0", "id": msg.get("id"), "result": {}}

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            if isinstance(body, list):
                return send_json(self, 200, [self.answer(m) for m in body if "id" in m])
            send_json(self, 200, self.answer(body))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, ran


@pytest.fixture(scope="module")
def batch_gw(tmp_path_factory):
    server, ran = batch_server()
    tmp = tmp_path_factory.mktemp("batches")
    gw = Gateway(tmp, "batches", [f"127.0.0.1:{server.server_address[1]}"], extra_config=AUTH,
                 pool_options='health_interval = "300ms"\nhealth_path = "/health"')
    yield gw, ran
    gw.proc.stop()
    server.shutdown()


def call(i, tool):
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool, "arguments": {}}}


def post(gw, body, key, version="2025-03-26"):
    headers = {"accept": ACCEPT, "x-api-key": key}
    if version:
        headers["mcp-protocol-version"] = version
    return httpx2.post(f"{gw.http}/mcp", headers=headers, json=body, timeout=10)


def test_a_batch_holding_a_denied_tool_call_is_refused_whole(batch_gw):
    gw, ran = batch_gw
    ran.clear()
    r = post(gw, [call(1, "get_agent"), call(2, "delete_agent")], READER)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["data"]["tool"] == "delete_agent"
    assert ran == [], f"the backend ran {ran}"
    # the writer's same batch runs, every element of it
    r = post(gw, [call(1, "get_agent"), call(2, "delete_agent")], WRITER)
    assert r.status_code == 200, r.text
    assert sorted(ran) == ["delete_agent", "get_agent"]


def test_a_batched_tools_list_is_filtered_like_a_single_one(batch_gw):
    gw, _ = batch_gw
    r = post(gw, [{"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, {"jsonrpc": "2.0", "id": 8, "method": "ping"}],
             READER)
    assert r.status_code == 200, r.text
    listed = next(m for m in r.json() if m["id"] == 7)
    assert [t["name"] for t in listed["result"]["tools"]] == ["get_agent"]
    single = post(gw, {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, READER)
    assert [t["name"] for t in single.json()["result"]["tools"]] == ["get_agent"]


def test_a_batch_in_a_revision_without_batches_is_refused_clearly(batch_gw):
    gw, ran = batch_gw
    ran.clear()
    r = post(gw, [call(1, "get_agent")], WRITER, version="2025-06-18")
    assert r.status_code == 400, r.text
    assert "batch" in r.json()["error"]["message"] and "2025-06-18" in r.json()["error"]["message"]
    assert ran == []


def test_initialize_in_a_batch_is_refused(batch_gw):
    gw, _ = batch_gw
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    r = post(gw, [init, call(2, "get_agent")], WRITER, version=None)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == -32600
