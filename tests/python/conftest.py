"""Fixtures that start the real stack on 127.0.0.1: registry backends on a
shared embedded store, and mcp-gateway processes in front of them."""

import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("E2E_BIN_DIR", ROOT / "target" / "release"))
SESSION_KEY = "python-e2e-session-key-0123456789abcdef"
ACCEPT = "application/json, text/event-stream"


def free_port() -> int:
    """A port that was free a moment ago. Servers that cannot bind port 0 and
    say where they listen are started with retries (see `listens_on`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds a listening socket on 127.0.0.1:`port`
    (so a lost race for the port, where someone else answers, is not mistaken
    for our server)."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed between the listing and the read: a busy server does that
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and int(local.split(":")[1], 16) == port and inode in inodes:
                return True
    return False


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")

def metric(gw, name, labels=""):
    """One counter or gauge from a gateway's admin /metrics (with its admin token, if any)."""
    text = httpx2.get(f"{gw.admin}/metrics", headers=getattr(gw, "admin_headers", {}), timeout=5).text
    m = re.search(rf"^{re.escape(name + labels)} (\d+)$", text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return int(m.group(1))


# A stateless (2026-07-28) server/discover request and its headers.
DISCOVER = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {}}}}
STATELESS = {"accept": ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "server/discover"}



class Proc:
    def __init__(self, args, env=None, name="proc", stderr=None):
        self.name = name
        self.p = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, text=True,
        )

    def read_line_matching(self, pattern, timeout=30.0):
        result = {}

        def reader():
            for line in self.p.stdout:
                m = re.search(pattern, line)
                if m and "m" not in result:
                    result["m"] = m
                # keep draining so the child never blocks on a full pipe
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        wait_until(lambda: "m" in result or self.p.poll() is not None, timeout, f"{self.name} output")
        if "m" not in result:
            raise AssertionError(f"{self.name} exited with {self.p.returncode}")
        return result["m"]

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


class Backend:
    def __init__(self, db: Path, instance: str, listen="127.0.0.1:0", extra=(), env=None):
        self.instance = instance
        self.proc = Proc([str(BIN / "registry-backend"), "--listen", listen, "--db", str(db),
                          "--instance", instance, *extra], env={"RUST_LOG": "warn", **(env or {})}, name=instance)
        m = self.proc.read_line_matching(r"listening on http://([0-9.:]+)/mcp")
        self.addr = m.group(1)


class Gateway:
    def __init__(self, tmp: Path, name: str, backends, extra_pools="", limits="", key=SESSION_KEY,
                 pool=None, expect_backends=None, sessions="", pool_options='health_interval = "300ms"',
                 extra_config="", http_port=None, env=None, admin_token=None, tls="", stderr=None):
        self.tls_dir = tmp / "tls"
        self.admin_headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.config_path = tmp / f"{name}.toml"
        backend_list = ", ".join(f'"{b}"' for b in backends)
        for attempt in range(4):
            self.http_port, self.https_port, self.admin_port = http_port or free_port(), free_port(), free_port()
            # tests stop gateways often: no drain, a second for requests in flight,
            # unless the test asks for more
            stop = "" if "shutdown_grace_secs" in extra_config else "shutdown_grace_secs = 0\nshutdown_timeout_secs = 1\n"
            config = f"""{stop}{extra_config}
[listen]
http = "127.0.0.1:{self.http_port}"
https = "127.0.0.1:{self.https_port}"
admin = "127.0.0.1:{self.admin_port}"
[tls]
dev_dir = "{self.tls_dir}"
{tls}
[sessions]
{sessions}
[limits]
sse_keepalive = "1s"
write_timeout = "2s"
{limits}
[[pools]]
name = "registry"
{pool_options}
discovery = {pool or f"{{ static = {{ backends = [{backend_list}] }} }}"}
{extra_pools}
"""
            path = tmp / f"{name}.toml"
            path.write_text(config)
            self.proc = Proc([str(BIN / "mcp-gateway"), "--config", str(path)],
                             env={"MCP_GATEWAY_SESSION_KEY": key, "RUST_LOG": "warn", **(env or {})}, name=name,
                             stderr=stderr)
            self.proc.read_line_matching(r"mcp-gateway ready")
            ports = (self.http_port, self.https_port, self.admin_port)
            pid = self.proc.p.pid
            # pingora retries a busy port for a while, then exits: wait for either
            wait_until(lambda: self.proc.p.poll() is not None or all(listens_on(pid, p) for p in ports),
                       60, f"{name} to hold its ports")
            if self.proc.p.poll() is None:
                break
            self.proc.stop()
        else:
            raise AssertionError(f"{name} lost the race for its ports {attempt + 1} times")
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.https = f"https://127.0.0.1:{self.https_port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.ca = self.tls_dir / "ca.pem"
        want = len(backends) if expect_backends is None else expect_backends
        wait_until(lambda: len(self.healthy_backends("registry")) == want, 30, f"{name} health checks")

    def backends(self, pool="registry"):
        data = httpx2.get(f"{self.admin}/backends", headers=self.admin_headers, timeout=5).json()
        return next(p for p in data["pools"] if p["name"] == pool)["backends"]

    def healthy_backends(self, pool="registry"):
        return [b["addr"] for b in self.backends(pool) if b["healthy"]]

    def ssl_context(self):
        return ssl.create_default_context(cafile=str(self.ca))


class GarbageHandler(BaseHTTPRequestHandler):
    """A broken backend: healthy, but /mcp answers nonsense or dies mid-stream.
    The `x-garbage` request header picks the misbehaviour:
    - `echo-headers`: answers with the request headers it got;
    - `close`: starts an SSE answer, sends half an event, closes;
    - `cut-after-event`: sends one whole event (a progress notification), then
      half an event, then closes;
    - `flood`: an SSE answer of 64 KiB events until the reader stops reading;
    - none: a 200 whose body is not JSON at all."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b'{"status":"healthy"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        if self.headers.get("x-garbage") == "echo-headers":
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        mode = self.headers.get("x-garbage")
        if mode == "cut-after-event":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}\n\n')
            self.wfile.flush()
            # let the gateway relay that event before the rest arrives
            time.sleep(0.3)
            self.wfile.write(b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"res")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "flood":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            event = b"data: " + json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                                            "params": {"data": "x" * 65536}}).encode() + b"\n\n"
            try:
                while True:
                    self.wfile.write(event)
                    self.wfile.flush()
            except OSError:
                return
        if "close" in self.path or mode == "close":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("mcp-session-id", "garbage-session")
            self.end_headers()
            self.wfile.write(b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"res")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = b"\x00\xffthis is not json-rpc at all"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def send_json(handler, status, obj, headers=()):
    """Answers a request of a test backend with JSON (`None`: an empty body)."""
    body = json.dumps(obj).encode() if obj is not None else b""
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    for k, v in headers:
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(body)


class SlowHandler(BaseHTTPRequestHandler):
    """A backend that takes 0.5 s per request and reports the most requests
    it ever had at once (GET /stats): it measures a client's concurrency."""

    lock = threading.Lock()
    current = 0
    most = 0
    calls = 0

    def log_message(self, *args):
        pass

    def _json(self, status, obj, headers=()):
        send_json(self, status, obj, headers)

    def do_GET(self):
        if self.path == "/stats":
            return self._json(200, {"most": SlowHandler.most})
        if self.path == "/mcp":
            return self._json(405, {"error": "no server stream"})
        return self._json(200, {"status": "healthy"})

    def do_DELETE(self):
        self._json(200, {})

    def do_POST(self):
        msg = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        if msg.get("method") == "initialize":
            return self._json(200, {"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "slow", "version": "1"}}},
                headers=[("mcp-session-id", "slow-session")])
        if "id" not in msg:
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if msg.get("id") == "revision":
            # the gateway's probe of what it speaks: not a client's call, not counted
            return self._json(200, {"jsonrpc": "2.0", "id": msg["id"], "result": {}})
        cls = SlowHandler
        with cls.lock:
            cls.calls += 1
            cls.current += 1
            cls.most = max(cls.most, cls.current)
        time.sleep(0.5)
        with cls.lock:
            cls.current -= 1
        self._json(200, {"jsonrpc": "2.0", "id": msg["id"], "result": {}})


class FlakyHandler(BaseHTTPRequestHandler):
    """A backend whose readiness the test switches (`FlakyHandler.ready`);
    it answers every JSON-RPC request at once."""

    ready = True

    def log_message(self, *args):
        pass

    def _json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._json(200 if FlakyHandler.ready else 503, {"ready": FlakyHandler.ready})

    def do_POST(self):
        msg = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        self._json(200, {"jsonrpc": "2.0", "id": msg.get("id"), "result": {"from": "flaky"}})


def serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="session")
def flaky_backend():
    server = serve(FlakyHandler)
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def slow_backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def garbage_backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), GarbageHandler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, garbage_backend):
    tmp = tmp_path_factory.mktemp("stack")
    backends = [Backend(tmp / "registry.db", f"b{i}") for i in range(3)]
    extra = f"""
[[pools]]
name = "garbage"
route = "/garbage"
health_interval = "300ms"
discovery = {{ static = {{ backends = ["{garbage_backend}"] }} }}
"""
    gw = Gateway(tmp, "gateway-a", [b.addr for b in backends], extra_pools=extra,
                 limits="max_body_bytes = 1048576")
    gw2 = Gateway(tmp, "gateway-b", [b.addr for b in backends], limits="max_body_bytes = 1048576")
    stack = type("Stack", (), {})()
    stack.backends, stack.gw, stack.gw2, stack.tmp = backends, gw, gw2, tmp
    stack.addr_of = {b.instance: b.addr for b in backends}
    yield stack
    for p in [gw, gw2]:
        p.proc.stop()
    for b in backends:
        b.proc.stop()


def initialize(client: httpx2.Client, url: str, headers=None):
    """Opens a Streamable HTTP session by hand; returns (session id, instance)."""
    r = client.post(url, headers={"accept": ACCEPT, **(headers or {})}, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "pytest", "version": "1"}}})
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    n = client.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18",
                                  **(headers or {})},
                    json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert n.status_code == 202, n.text
    return sid, instance_of(client, url, sid, headers)


def instance_of(client: httpx2.Client, url: str, sid: str, headers=None) -> str:
    """Which registry instance serves a session (its health_check says; the
    gateway hides the backend's own header)."""
    r = rpc(client, url, sid, "tools/call", {"name": "health_check", "arguments": {}}, id_=77, headers=headers)
    assert r.status_code == 200, r.text
    msgs = sse_messages(r.text) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
    return json.loads(msgs[-1]["result"]["content"][0]["text"])["instance"]


def rpc(client: httpx2.Client, url: str, sid: str, method: str, params=None, id_=2, headers=None):
    r = client.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18",
                                  **(headers or {})},
                    json={"jsonrpc": "2.0", "id": id_, "method": method, "params": params or {}})
    return r


def sse_messages(text: str):
    """The JSON messages in an SSE body."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")]
        if data and "".join(data).strip():
            out.append(json.loads("\n".join(data)))
    return out
