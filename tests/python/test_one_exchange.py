"""What the one backend exchange (session/exchange.rs) and the one loader
(Config::load at start and on reload) promise, beyond what the transport
suites check: a session moved to another backend still carries its
principal, over both transports; a reload applies every live setting and
refuses, naming it, one that needs a restart."""

import hashlib
import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2

from conftest import ACCEPT, Gateway, send_json, wait_until
from test_protocol_paths import Legacy

KEY = "alice-exchange-key-0123456789"
SHA = hashlib.sha256(KEY.encode()).hexdigest()
AUTH = f"""
[auth]
[[auth.keys]]
principal = "alice"
sha256 = "{SHA}"
"""


def recorder():
    """A minimal Streamable HTTP MCP server that records the headers of
    every `initialize` it gets (a backend that authorizes on the principal
    would read them). Returns (server, the list of recorded headers)."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: a connection per request, so a stopped server refuses at once.
        def log_message(self, *args):
            pass

        def _json(self, status, obj, headers=()):
            send_json(self, status, obj, headers)

        def do_GET(self):
            if self.path == "/mcp":
                return self._json(405, {"error": "no server stream"})
            self._json(200, {"status": "ok"})

        def do_DELETE(self):
            self._json(200, None)

        def do_POST(self):
            msg = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            if msg.get("method") == "initialize":
                if msg.get("id") != "revision":  # not the gateway's probe of what it speaks
                    seen.append({k.lower(): v for k, v in self.headers.items()})
                return self._json(200, {"jsonrpc": "2.0", "id": msg["id"], "result": {
                    "protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                    "serverInfo": {"name": "recorder", "version": "1"}}},
                    headers=[("mcp-session-id", f"rec-{len(seen)}")])
            if "id" not in msg:
                return self._json(202, None)
            self._json(200, {"jsonrpc": "2.0", "id": msg["id"], "result": {"content": [
                {"type": "text", "text": "ok"}]}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def call(client, url, sid, id_):
    return client.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18",
                                     "x-api-key": KEY},
                       json={"jsonrpc": "2.0", "id": id_, "method": "tools/call",
                             "params": {"name": "echo", "arguments": {}}})


def kill_the_one_that_has(backends, seen_lists):
    """Stops the backend that opened the session (its port then refuses)."""
    for (server, seen) in zip(backends, seen_lists):
        if seen:
            server.shutdown()
            server.server_close()
            return seen
    raise AssertionError("no backend opened the session")


def test_a_session_moved_to_another_backend_carries_its_principal(tmp_path):
    """Streamable HTTP: the initialize that re-creates the session on the
    second backend carries the principal header, as the first one did."""
    pairs = [recorder() for _ in range(2)]
    backends = [p[0] for p in pairs]
    seen = [p[1] for p in pairs]
    addrs = [f"127.0.0.1:{s.server_address[1]}" for s in backends]
    gw = Gateway(tmp_path, "principal", addrs, extra_config=AUTH, pool_options='health_interval = "300ms"\nhealth_path = "/health"')
    try:
        url = f"{gw.http}/mcp"
        with httpx2.Client(timeout=10) as c:
            r = c.post(url, headers={"accept": ACCEPT, "x-api-key": KEY}, json={
                "jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "1"}}})
            assert r.status_code == 200, r.text
            sid = r.headers["mcp-session-id"]
            assert call(c, url, sid, 2).status_code == 200
            first = kill_the_one_that_has(backends, seen)
            assert first[0].get("x-mcp-principal") == "key:alice", first[0]
            moved = call(c, url, sid, 3)
            assert moved.status_code == 200, moved.text
            assert moved.headers.get("x-mcp-gateway-moved") == "1"
        reopened = [s for s in seen if s and s is not first]
        assert reopened, "the session was not opened again on the other backend"
        assert reopened[0][-1].get("x-mcp-principal") == "key:alice", reopened[0][-1]
    finally:
        gw.proc.stop()
        for s in backends:
            s.shutdown()


def test_a_legacy_session_moved_to_another_backend_carries_its_principal(tmp_path):
    """The same through the legacy SSE bridge, which now moves sessions
    through the same exchange."""
    pairs = [recorder() for _ in range(2)]
    backends = [p[0] for p in pairs]
    seen = [p[1] for p in pairs]
    addrs = [f"127.0.0.1:{s.server_address[1]}" for s in backends]
    gw = Gateway(tmp_path, "principal-l", addrs, extra_config=AUTH,
                 pool_options='health_interval = "300ms"\nhealth_path = "/health"')
    s = None
    try:
        s = Legacy(gw.http, headers={"x-api-key": KEY})
        s.post({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {}}})
        assert s.next(lambda m: m.get("id") == 2).get("result"), "the first call"
        first = kill_the_one_that_has(backends, seen)
        assert first[0].get("x-mcp-principal") == "key:alice", first[0]
        s.post({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {}}})
        assert s.next(lambda m: m.get("id") == 3).get("result"), "the call after the move"
        reopened = [x for x in seen if x and x is not first]
        assert reopened and reopened[0][-1].get("x-mcp-principal") == "key:alice", reopened
    finally:
        if s:
            s.close()
        gw.proc.stop()
        for b in backends:
            b.shutdown()


def test_a_reload_applies_limits_and_refuses_a_restart_only_change_naming_it(tmp_path):
    pairs = [recorder()]
    addrs = [f"127.0.0.1:{pairs[0][0].server_address[1]}"]
    gw = Gateway(tmp_path, "reload-live", addrs, limits="max_body_bytes = 65536",
                 pool_options='health_interval = "300ms"\nhealth_path = "/health"')
    path = gw.config_path
    original = path.read_text()
    try:
        url = f"{gw.http}/mcp"
        padded = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 2000}}
        with httpx2.Client(timeout=10) as c:
            assert c.post(url, headers={"accept": ACCEPT}, json=padded).status_code == 200
            # a live setting: the body limit drops to 1 KiB
            path.write_text(original.replace("max_body_bytes = 65536", "max_body_bytes = 1024"))
            r = httpx2.post(f"{gw.admin}/reload", timeout=5)
            assert r.status_code == 200 and r.json()["reloaded"] is True, r.text
            assert c.post(url, headers={"accept": ACCEPT}, json=padded).status_code == 413
            # a setting only a restart can change: refused, named, and nothing of the file applied
            moved = original.replace(f'http = "127.0.0.1:{gw.http_port}"', 'http = "127.0.0.1:1"')
            path.write_text(moved.replace("max_body_bytes = 65536", "max_body_bytes = 4096"))
            r = httpx2.post(f"{gw.admin}/reload", timeout=5)
            assert r.status_code == 409, r.text
            assert r.json()["reloaded"] is False and "listen" in r.json()["error"], r.text
            assert c.post(url, headers={"accept": ACCEPT}, json=padded).status_code == 413, "the 1 KiB limit stays"
            # SIGHUP takes the same path
            path.write_text(original)
            gw.proc.p.send_signal(signal.SIGHUP)
            wait_until(lambda: c.post(url, headers={"accept": ACCEPT}, json=padded).status_code == 200, 10,
                       "the SIGHUP reload")
    finally:
        gw.proc.stop()
        pairs[0][0].shutdown()
