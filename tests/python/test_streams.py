"""Streams the gateway serves itself: bodies checked whatever their framing,
backends that die mid-answer, clients that stop reading, keep-alives on
quiet proxied streams, and a legacy client that floods its session."""

import json
import socket
import time

import httpx2
import pytest

from conftest import ACCEPT, Backend, Gateway, SlowHandler, initialize, metric, wait_until

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "streams", "version": "1"}}}


@pytest.fixture(scope="module")
def gw(tmp_path_factory, garbage_backend, slow_backend):
    tmp = tmp_path_factory.mktemp("streams")
    backend = Backend(tmp / "streams.db", "streams-backend")
    extra = f"""
[[pools]]
name = "garbage"
route = "/garbage"
health_interval = "300ms"
discovery = {{ static = {{ backends = ["{garbage_backend}"] }} }}
[[pools]]
name = "slow"
route = "/slow"
health_interval = "300ms"
discovery = {{ static = {{ backends = ["{slow_backend}"] }} }}
"""
    limits = "max_body_bytes = 1048576\nlegacy_inbox_bytes = 1048576\nlegacy_session_concurrency = 4"
    g = Gateway(tmp, "gateway-streams", [backend.addr], extra_pools=extra, limits=limits)
    wait_until(lambda: len(g.healthy_backends("garbage")) == 1 and len(g.healthy_backends("slow")) == 1,
               30, "fixture pools healthy")
    yield g
    g.proc.stop()
    backend.proc.stop()




def read_all(sock, timeout=15.0, until=None):
    """Reads until the peer closes (or resets), or until the bytes end with
    `until`; returns the bytes."""
    sock.settimeout(timeout)
    buf = b""
    while not (until and buf.endswith(until)):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
    return buf


def raw_post(port, path, body: bytes, headers=()):
    s = socket.create_connection(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\n"
    for k, v in headers:
        head += f"{k}: {v}\r\n"
    s.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def test_a_chunked_initialize_with_a_wrong_mcp_method_header_gets_400(gw):
    body = json.dumps(INIT).encode()

    def chunks():
        yield body[:20]
        yield body[20:]
    r = httpx2.post(f"{gw.http}/mcp", content=chunks(), timeout=10,
                    headers={"accept": ACCEPT, "content-type": "application/json", "mcp-method": "tools/list"})
    assert "content-length" not in r.request.headers, "the body must go chunked"
    assert r.status_code == 400, r.text
    assert "does not match" in r.json()["error"]["message"]
    assert r.json()["id"] == 1, "the error echoes the request id"
    ok = httpx2.post(f"{gw.http}/mcp", content=chunks(), timeout=10,
                     headers={"accept": ACCEPT, "content-type": "application/json", "mcp-method": "initialize"})
    assert ok.status_code == 200 and ok.headers.get("mcp-session-id")


def test_bodies_between_64_kib_and_the_limit_are_checked_and_forwarded(gw):
    big_garbage = b"{" + b"x" * (200 * 1024)
    r = httpx2.post(f"{gw.http}/mcp", content=big_garbage, timeout=10,
                    headers={"accept": ACCEPT, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, f"{gw.http}/mcp")
        ping = {"jsonrpc": "2.0", "id": 9, "method": "ping", "params": {"_meta": {"pad": "p" * (200 * 1024)}}}
        r = c.post(f"{gw.http}/mcp", json=ping, headers={
            "accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"})
        assert r.status_code == 200, r.text
        assert '"id":9' in r.text.replace(" ", "")


def test_a_backend_cut_before_any_event_gets_a_complete_502_answer(gw):
    r = httpx2.post(f"{gw.http}/garbage/mcp", json=INIT, timeout=10,
                    headers={"accept": ACCEPT, "x-garbage": "close"})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == -32603
    assert r.json()["id"] == 1


def test_a_backend_cut_mid_stream_ends_the_clients_stream_with_an_outcome_unknown_event(gw):
    # A tools/call the gateway cannot know to be safe: after the cut it is not
    # sent again; the open stream gets the JSON-RPC error as a whole event.
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "unknown_tool", "arguments": {}}}
    s = raw_post(gw.http_port, "/garbage/mcp", json.dumps(call).encode(), [("x-garbage", "cut-after-event")])
    raw = read_all(s, until=b"0\r\n\r\n")
    s.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"notifications/progress" in body, "the whole event before the cut was relayed"
    assert b'"res' not in body, "half an event is never relayed"
    assert body.endswith(b"0\r\n\r\n"), "the stream ends cleanly after the error event"
    events = [l for l in body.split(b"\n") if l.startswith(b"data: ")]
    last = json.loads(events[-1][6:])
    assert last["id"] == 7 and last["error"]["code"] == -32003, last


def test_a_client_that_stops_reading_a_proxied_stream_is_dropped(gw):
    before = metric(gw, "mcp_gateway_inflight")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", gw.http_port))
    body = json.dumps(INIT).encode()
    s.sendall(f"POST /garbage/mcp HTTP/1.1\r\nHost: x\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\n"
              f"x-garbage: flood\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    wait_until(lambda: metric(gw, "mcp_gateway_inflight") > before, 10, "the stream to start")
    # never read: the gateway's writes block, and after write_timeout (2 s) it lets go
    wait_until(lambda: metric(gw, "mcp_gateway_inflight") <= before, 30, "the gateway to drop the stuck client")
    raw = read_all(s, timeout=10)
    s.close()
    assert raw.startswith(b"HTTP/1.1 200")
    assert not raw.endswith(b"0\r\n\r\n")


def test_sse_keepalive_comments_arrive_on_a_quiet_proxied_get_stream(gw):
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, f"{gw.http}/mcp")
    s = socket.create_connection(("127.0.0.1", gw.http_port))
    s.sendall(f"GET /mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n"
              "Mcp-Protocol-Version: 2025-06-18\r\n\r\n".encode())
    s.settimeout(10)
    buf = b""
    deadline = time.monotonic() + 10
    while buf.count(b": keepalive") < 2 and time.monotonic() < deadline:
        chunk = s.recv(4096)
        assert chunk, f"stream closed: {buf!r}"
        buf += chunk
    s.close()
    assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
    assert buf.count(b": keepalive") >= 2, buf


def test_a_legacy_client_flooding_messages_stays_within_the_caps(gw):
    s = socket.create_connection(("127.0.0.1", gw.http_port))
    s.sendall(b"GET /slow/sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    s.settimeout(10)
    buf = b""
    while b"sessionId=" not in buf or b"\n\n" not in buf.split(b"event: endpoint", 1)[-1]:
        chunk = s.recv(4096)
        assert chunk
        buf += chunk
    path = next(l for l in buf.decode().splitlines() if l.startswith("data: "))[6:].strip()
    url = f"{gw.http}{path}"
    with httpx2.Client(timeout=10) as c:
        assert c.post(url, json=INIT).status_code == 202
        while b'"id": 1' not in buf and b'"id":1' not in buf:
            buf += s.recv(4096)
        rss_before = gw.proc.rss_kib()
        # the backend's high-water mark of calls at once, from this flood only
        # (the class keeps it across tests: the fixture is the session's)
        with SlowHandler.lock:
            SlowHandler.most = 0
        answers = []
        pad = "p" * (100 * 1024)
        for i in range(60):  # fewer than the inbox's 64 messages: only its byte bound can refuse
            answers.append(c.post(url, json={"jsonrpc": "2.0", "id": 100 + i, "method": "tools/call",
                                             "params": {"name": "slow", "arguments": {"pad": pad}}}))
        statuses = [r.status_code for r in answers]
        assert set(statuses) <= {202, 503}, statuses
        assert 503 in statuses, "1 MiB of queued messages must fill the inbox"
        assert statuses[0] == 202
        busy = [r for r in answers if r.status_code == 503]
        assert all(r.headers.get("retry-after") == "1" and r.json()["id"] == 100 + answers.index(r) for r in busy)
        growth_mib = (gw.proc.rss_kib() - rss_before) / 1024
    most = httpx2.get(f"http://{gw.backends('slow')[0]['addr']}/stats", timeout=5).json()["most"]
    s.close()
    assert 1 <= most <= 4, f"the backend saw {most} calls at once from one legacy session"
    assert growth_mib < 64, f"gateway grew {growth_mib:.0f} MiB"
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, f"{gw.http}/mcp")
        assert sid
