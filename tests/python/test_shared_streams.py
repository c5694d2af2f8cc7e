"""A pool whose backends speak h2c (`http2_streams = true`): sessions'
GET streams share a few HTTP/2 connections per backend instead of one
connection each, and they still move when their backend dies."""

import threading
from pathlib import Path

import httpx2
import pytest

from conftest import Backend, Gateway, initialize, rpc, sse_messages, wait_until

STREAMS = 40


def connections_to(port: int) -> int:
    """Established TCP connections on this machine whose far end is `port`
    (the client side of each connection to a backend)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shared")
    backends = [Backend(tmp / "shared.db", f"h2-{i}") for i in range(2)]
    gw = Gateway(tmp, "gateway-h2", [b.addr for b in backends],
                 pool_options='health_interval = "300ms"\nhttp2_streams = true')
    yield gw, backends
    gw.proc.stop()
    for b in backends:
        b.proc.stop()


class Listener:
    """Holds one session's GET stream open and records what arrives."""

    def __init__(self, url: str, sid: str):
        self.url, self.sid = url, sid
        self.status = None
        self.chunks = 0
        self.closed = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        headers = {"accept": "text/event-stream", "mcp-session-id": self.sid,
                   "mcp-protocol-version": "2025-06-18"}
        try:
            with httpx2.Client(timeout=httpx2.Timeout(30, read=10)) as c, \
                    c.stream("GET", self.url, headers=headers) as r:
                self.status = r.status_code
                for _ in r.iter_raw():
                    self.chunks += 1
                    if self.stop.is_set():
                        break
        except httpx2.HTTPError:
            pass
        self.closed = True


def test_get_streams_to_an_h2c_pool_share_a_few_backend_connections(shared):
    gw, backends = shared
    url = f"{gw.http}/mcp"
    ports = [int(b.addr.rsplit(":", 1)[1]) for b in backends]
    with httpx2.Client(timeout=10) as c:
        sessions = [initialize(c, url)[0] for _ in range(STREAMS)]
    before = sum(connections_to(p) for p in ports)
    listeners = [Listener(url, sid) for sid in sessions]
    try:
        wait_until(lambda: all(l.status is not None for l in listeners), 20, "every GET stream answered")
        assert {l.status for l in listeners} == {200}
        # the gateway's keep-alives flow on every stream (sse_keepalive = 1s)
        wait_until(lambda: all(l.chunks >= 1 for l in listeners), 20, "a keep-alive on every stream")
        held = sum(connections_to(p) for p in ports)
        # One HTTP/2 connection per backend carries the streams (the
        # requests' own keep-alive connections were there before): over
        # HTTP/1.1 this would be STREAMS more.
        assert held - before <= len(backends), (before, held)
        assert not any(l.closed for l in listeners)
        # requests on those sessions still work while their streams are open
        with httpx2.Client(timeout=10) as c:
            for sid in sessions[:5]:
                r = rpc(c, url, sid, "tools/list")
                assert r.status_code == 200, r.text
                msgs = sse_messages(r.text) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
                assert any(t["name"] == "get_agent" for t in msgs[-1]["result"]["tools"])
    finally:
        for l in listeners:
            l.stop.set()
        for l in listeners:
            l.thread.join(15)


def test_streams_on_a_shared_connection_move_when_their_backend_dies(tmp_path):
    backends = [Backend(tmp_path / "move.db", f"mv-{i}") for i in range(2)]
    gw = Gateway(tmp_path, "gateway-h2-move", [b.addr for b in backends],
                 pool_options='health_interval = "300ms"\nhttp2_streams = true')
    listeners = []
    try:
        url = f"{gw.http}/mcp"
        with httpx2.Client(timeout=10) as c:
            opened = [initialize(c, url) for _ in range(12)]
        doomed = backends[0]
        on_doomed = [sid for sid, inst in opened if inst == doomed.instance]
        assert on_doomed, "no session landed on the first backend"
        listeners = [Listener(url, sid) for sid, _ in opened]
        wait_until(lambda: all(l.chunks >= 1 for l in listeners), 20, "a keep-alive on every stream")
        doomed.proc.p.kill()
        doomed.proc.p.wait()
        # every stream stays open and keeps flowing after its backend is gone
        counts = [l.chunks for l in listeners]
        wait_until(lambda: all(l.chunks > n + 1 for l, n in zip(listeners, counts)), 20,
                   "streams flowing after the kill")
        assert not any(l.closed for l in listeners)
        # and the sessions that lived there answer from the other backend
        with httpx2.Client(timeout=10) as c:
            for sid in on_doomed:
                r = rpc(c, url, sid, "tools/call", {"name": "health_check", "arguments": {}})
                assert r.status_code == 200, r.text
                msgs = sse_messages(r.text) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
                assert backends[1].instance in msgs[-1]["result"]["content"][0]["text"]
    finally:
        for l in listeners:
            l.stop.set()
        for l in listeners:
            l.thread.join(15)
        gw.proc.stop()
        for b in backends:
            b.proc.stop()
