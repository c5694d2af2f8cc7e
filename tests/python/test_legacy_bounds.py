"""Legacy sessions are bounded per route, and within it per client (issue
21, findings 12 and 13): a message goes only to a session of the route it
came in on; anonymous clients filling an optional pool's legacy sessions do
not lock authenticated clients out of another pool, nor out of their own."""

import hashlib
import threading

import httpx2

from conftest import Backend, Gateway, wait_until

KEY = "legacy-bounds-key-0123456789"
AUTH = f"""
[auth]
[[auth.keys]]
principal = "member"
sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"
"""


class Stream:
    """A held `GET /sse`: its endpoint, or its refusal status."""

    def __init__(self, url, headers=None):
        self.http = httpx2.Client(timeout=httpx2.Timeout(10.0, read=None), headers=headers or {})
        self.endpoint, self.status = None, None
        ready = threading.Event()

        def read():
            try:
                with self.http.stream("GET", url, headers={"accept": "text/event-stream"}) as r:
                    self.status = r.status_code
                    if r.status_code != 200:
                        ready.set()
                        return
                    for line in r.iter_lines():
                        if line.startswith("data:") and "sessionId=" in line:
                            self.endpoint = line[5:].strip()
                            ready.set()
            except httpx2.HTTPError:
                ready.set()
        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(10), "no answer to GET /sse"

    def close(self):
        self.http.close()


def test_legacy_sessions_are_capped_per_pool_and_per_client(tmp_path):
    backend = Backend(tmp_path / "r.db", "legacy-cap")
    pools = f"""
[[pools]]
name = "open"
route = "/open"
auth = "optional"
health_interval = "300ms"
discovery = {{ static = {{ backends = ["{backend.addr}"] }} }}
"""
    gw = Gateway(tmp_path, "legacy-cap", [backend.addr], extra_pools=pools, extra_config=AUTH,
                 sessions="max_legacy_sessions = 4", limits="client_share = 0.5")
    held = []
    try:
        # anonymous clients hold their share (half) of the open pool's sessions
        held += [Stream(f"{gw.http}/open/sse") for _ in range(2)]
        assert all(s.endpoint for s in held), [s.status for s in held]
        third = Stream(f"{gw.http}/open/sse")
        held.append(third)
        assert third.status in (429, 503), third.status
        # a member still opens sessions on the open pool and on the registry
        member = {"x-api-key": KEY}
        for route in ("/open", ""):
            s = Stream(f"{gw.http}{route}/sse", headers=member)
            held.append(s)
            assert s.endpoint, (route, s.status)
    finally:
        for s in held:
            s.close()
        gw.proc.stop()
        backend.proc.stop()


def test_a_legacy_message_goes_only_to_a_session_of_its_own_route(tmp_path):
    backend = Backend(tmp_path / "r.db", "legacy-route")
    pools = f"""
[[pools]]
name = "other"
route = "/other"
health_interval = "300ms"
discovery = {{ static = {{ backends = ["{backend.addr}"] }} }}
"""
    gw = Gateway(tmp_path, "legacy-route", [backend.addr], extra_pools=pools)
    s = None
    try:
        s = Stream(f"{gw.http}/sse")
        assert s.endpoint and s.endpoint.startswith("/messages?"), s.endpoint
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        elsewhere = httpx2.post(f"{gw.http}/other{s.endpoint}", json=ping, timeout=5)
        assert elsewhere.status_code == 404, elsewhere.text
        here = httpx2.post(f"{gw.http}{s.endpoint}", json=ping, timeout=5)
        assert here.status_code == 202, here.text
    finally:
        if s:
            s.close()
        gw.proc.stop()
        backend.proc.stop()
