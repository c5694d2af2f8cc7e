"""What is sent again when a backend cuts a `tools/call` mid-answer,
deterministically: two instances of a small MCP server that count every
call and cut the first call of each tool after half an event. A tool the
server marks `readOnlyHint` is sent again on the session moved to the
other instance (the answer says `X-MCP-Gateway-Moved: 1`); a tool with no
hint gets -32003 "outcome unknown" and ran exactly once."""

import json
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from conftest import ACCEPT, Gateway, sse_messages

TOOLS = [
    {"name": "read_thing", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
    {"name": "write_thing", "inputSchema": {"type": "object"}},
]


class Cutting(BaseHTTPRequestHandler):
    """Just enough MCP over Streamable HTTP. `calls` counts tools/call per
    tool over both instances; the first call of each is cut mid-answer."""

    lock = threading.Lock()
    calls = Counter()
    ran_on = []
    sessions = 0

    def log_message(self, *args):
        pass

    def _json(self, obj, headers=()):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/mcp":
            self.send_response(405)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self._json({"status": "ok"})

    def do_DELETE(self):
        self._json({})

    def do_POST(self):
        msg = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        port = self.server.server_address[1]
        if "id" not in msg:
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        method, rid = msg.get("method"), msg["id"]
        if method == "initialize":
            with Cutting.lock:
                Cutting.sessions += 1
                sid = f"s-{port}-{Cutting.sessions}"
            return self._json({"jsonrpc": "2.0", "id": rid, "result": {
                "protocolVersion": msg["params"].get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}}, "serverInfo": {"name": "cutting", "version": "1"}}},
                headers=[("mcp-session-id", sid)])
        if method == "tools/list":
            return self._json({"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}})
        if method == "tools/call":
            name = msg["params"]["name"]
            with Cutting.lock:
                Cutting.calls[name] += 1
                first = Cutting.calls[name] == 1
                Cutting.ran_on.append((name, port))
            if first:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                self.wfile.write(b'event: message\ndata: {"jsonrpc":"2.0","id":' + json.dumps(rid).encode() + b',"res')
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            return self._json({"jsonrpc": "2.0", "id": rid, "result": {
                "content": [{"type": "text", "text": f"{name} ran on {port}"}]}})
        self._json({"jsonrpc": "2.0", "id": rid, "result": {}})


@pytest.fixture
def cutting_pool(tmp_path):
    Cutting.calls.clear()
    Cutting.ran_on.clear()
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Cutting) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    addrs = [f"127.0.0.1:{s.server_address[1]}" for s in servers]
    gw = Gateway(tmp_path, "replay", addrs)
    yield gw
    gw.proc.stop()
    for s in servers:
        s.shutdown()


def post(c, gw, body, sid=None):
    headers = {"accept": ACCEPT, "mcp-protocol-version": "2025-06-18"}
    if sid:
        headers["mcp-session-id"] = sid
    return c.post(f"{gw.http}/mcp", json=body, headers=headers)


def last_message(r):
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        return sse_messages(r.text)[-1]
    return r.json()


def test_a_cut_read_only_call_is_sent_again_elsewhere_and_an_unhinted_one_is_outcome_unknown(cutting_pool):
    gw = cutting_pool
    with httpx2.Client(timeout=15) as c:
        init = post(c, gw, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        assert init.status_code == 200, init.text
        sid = init.headers["mcp-session-id"]
        assert post(c, gw, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid).status_code == 202
        listed = post(c, gw, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
        assert [t["name"] for t in last_message(listed)["result"]["tools"]] == ["read_thing", "write_thing"]

        read = post(c, gw, {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                            "params": {"name": "read_thing", "arguments": {}}}, sid)
        assert read.status_code == 200, read.text
        assert read.headers.get("x-mcp-gateway-moved") == "1", read.headers
        answer = last_message(read)
        assert answer["id"] == 3, answer
        first, second = [port for name, port in Cutting.ran_on if name == "read_thing"]
        assert Cutting.calls["read_thing"] == 2 and first != second, Cutting.ran_on
        assert answer["result"]["content"][0]["text"] == f"read_thing ran on {second}"

        write = post(c, gw, {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                             "params": {"name": "write_thing", "arguments": {}}}, sid)
        err = last_message(write)
        assert err["id"] == 4 and err["error"]["code"] == -32003, err
        assert Cutting.calls["write_thing"] == 1, "a call that may have run was run again"
        # the session goes on where it is
        again = post(c, gw, {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                             "params": {"name": "write_thing", "arguments": {}}}, sid)
        assert last_message(again)["result"]["content"][0]["text"] == f"write_thing ran on {second}"
        assert Cutting.calls["write_thing"] == 2
