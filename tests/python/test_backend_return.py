"""Backends that come back are used at once, and backends that fail what
clients send are taken out for a while: an ejection for a failed connection
ends at the first passing health check or answer; a pool whose every backend
is down still tries them (panic routing) and reaches the first one back; 5xx
answers in a row eject a backend for a time that grows on repeat, never more
than the configured share of the pool at once; a backend that comes back
gets a growing share of new sessions (slow start)."""

import json
import time
from http.server import BaseHTTPRequestHandler

import httpx2

from conftest import (ACCEPT, DISCOVER, STATELESS, Backend, Gateway, free_port, initialize, instance_of, metric, rpc,
                      serve, wait_until)

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


def state_of(gw, addr):
    return next(b for b in gw.backends() if b["addr"] == addr)


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def test_a_backend_restarted_on_its_port_serves_old_and_new_sessions_within_one_health_interval(tmp_path):
    interval = 1.0
    a = Backend(tmp_path / "r.db", "before-restart")
    gw = Gateway(tmp_path, "restart", [a.addr], pool_options=f'health_interval = "{interval}s"')
    url = f"{gw.http}/mcp"
    b = None
    try:
        with httpx2.Client(timeout=10) as c:
            sid, _ = initialize(c, url)
            a.proc.p.kill()
            a.proc.p.wait(10)
            # while it is down a request fails (its connection is refused: the backend is ejected) …
            assert rpc(c, url, sid, "tools/list").status_code == 503
            assert state_of(gw, a.addr)["ejected"] is True
            # … and the health check sees it down
            wait_until(lambda: state_of(gw, a.addr)["healthy"] is False, 10, "the check to see it down")
            b = Backend(tmp_path / "r.db", "after-restart", listen=a.addr)
            listening = time.monotonic()

            def old_and_new_sessions_work():
                old = rpc(c, url, sid, "tools/list", id_=5)
                assert old.status_code == 200, old.text
                assert "mcp-session-id" not in old.headers, "the client's id never changes"
                initialize(c, url)
                return True
            wait_until(old_and_new_sessions_work, 15, "sessions to work again")
            took = time.monotonic() - listening
            assert took < interval * 2, f"sessions worked again {took:.1f} s after the backend listened"
            assert instance_of(c, url, sid) == "after-restart"
        wait_until(lambda: state_of(gw, a.addr)["healthy"], 10, "the check to pass")
        assert state_of(gw, a.addr)["ejected"] is False
    finally:
        gw.proc.stop()
        for x in (a, b):
            if x:
                x.proc.stop()


def test_a_passing_health_check_ends_an_ejection_for_a_refused_connection(tmp_path):
    interval = 1.0
    a, b = Backend(tmp_path / "e.db", "ejected-a"), Backend(tmp_path / "e.db", "steady-b")
    gw = Gateway(tmp_path, "eject-ends", [a.addr, b.addr], pool_options=f'health_interval = "{interval}s"')
    url = f"{gw.http}/mcp"
    a2 = None
    try:
        with httpx2.Client(timeout=10) as c:
            sid = None
            while sid is None:
                opened, instance = initialize(c, url)
                sid = opened if instance == "ejected-a" else None
            a.proc.p.kill()
            a.proc.p.wait(10)
            # the session's next request meets a refused connection: a is ejected, the session moves to b
            r = rpc(c, url, sid, "tools/list")
            assert r.status_code == 200 and r.headers.get("x-mcp-gateway-moved") == "1", r.text
        ejected = state_of(gw, a.addr)
        assert ejected["ejected"] is True
        a2 = Backend(tmp_path / "e.db", "ejected-a-again", listen=a.addr)
        listening = time.monotonic()
        # nothing is sent to an ejected backend: only the health check can see it back
        wait_until(lambda: state_of(gw, a.addr)["accepts_new_sessions"], 15, "a to take new sessions again")
        took = time.monotonic() - listening
        assert took < interval * 2, f"a took new sessions {took:.1f} s after it listened"
        assert ejected["ejection"]["reason"] == "connect_failed", ejected
        state = state_of(gw, a.addr)
        assert state["ejected"] is False and state["ejection"] is None, state
        # and new sessions do reach it (its share grows from a tenth: see slow start)
        before = state["sessions_opened"]
        with httpx2.Client(timeout=10) as c:
            def a_got_one():
                initialize(c, url)
                return state_of(gw, a.addr)["sessions_opened"] > before
            wait_until(a_got_one, 15, "a new session on a")
    finally:
        gw.proc.stop()
        for x in (a, b, a2):
            if x:
                x.proc.stop()


def test_when_every_backend_is_down_requests_still_try_them_and_reach_the_first_one_back(tmp_path):
    # Both backends are down when the gateway starts, so its first health
    # check marks both unhealthy; the next is 4 s later. Only panic routing
    # can reach a backend that comes back before then.
    a_addr, b_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    gw = Gateway(tmp_path, "panic", [a_addr, b_addr], expect_backends=0, pool_options='health_interval = "4s"')
    url = f"{gw.http}/mcp"
    a = None
    try:
        wait_until(lambda: [x["healthy"] for x in gw.backends()] == [False, False], 10, "both checked down")
        assert metric(gw, "mcp_gateway_pool_panic", '{pool="registry"}') == 1
        assert httpx2.get(f"{gw.admin}/backends", timeout=5).json()["pools"][0]["state"] == "panic"
        # both are tried, both refuse: then 503 + Retry-After
        r = httpx2.post(url, headers=STATELESS, json=DISCOVER, timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", (r.status_code, r.text)
        tried = {x["addr"]: x["requests"] for x in gw.backends()}
        assert tried == {a_addr: 1, b_addr: 1}, tried
        a = Backend(tmp_path / "p.db", "first-back", listen=a_addr)
        listening = time.monotonic()
        wait_until(lambda: httpx2.post(url, headers=STATELESS, json=DISCOVER, timeout=10).status_code == 200,
                   10, "a request to reach the backend that is back")
        took = time.monotonic() - listening
        assert state_of(gw, a_addr)["healthy"] is False, "the health check has not seen it yet: panic routing did"
        assert took < 2, f"a request reached it {took:.1f} s after it listened"
        assert metric(gw, "mcp_gateway_pool_panic_picks_total", '{pool="registry"}') >= 3
        # the dead one is not retried by every request
        before = {x["addr"]: x["requests"] for x in gw.backends()}
        with httpx2.Client(timeout=10) as c:
            sid, instance = initialize(c, url)
            assert instance == "first-back"
            for i in range(20):
                assert rpc(c, url, sid, "tools/list", id_=10 + i).status_code == 200
            for _ in range(10):
                assert c.post(url, headers=STATELESS, json=DISCOVER).status_code == 200
        after = {x["addr"]: x["requests"] for x in gw.backends()}
        assert after[b_addr] - before[b_addr] <= 1, (before, after)
        assert after[a_addr] - before[a_addr] >= 33, (before, after)
        # once the health check sees it, the pool is out of panic
        wait_until(lambda: metric(gw, "mcp_gateway_pool_panic", '{pool="registry"}') == 0, 10, "panic to end")
        assert httpx2.get(f"{gw.admin}/backends", timeout=5).json()["pools"][0]["state"] == "serving"
    finally:
        gw.proc.stop()
        if a:
            a.proc.stop()


def counting_backend(status):
    """A backend whose health path answers 200 and whose /mcp answers every
    POST with `status` (a JSON-RPC result for 200, an error otherwise); it
    counts the POSTs of clients it answered (not the gateway's own probe of
    what revisions it speaks, id "revision")."""
    class Handler(BaseHTTPRequestHandler):
        posts = 0

        def log_message(self, *args):
            pass

        def _json(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._json(200, {"status": "ready"})

        def do_POST(self):
            msg = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            if msg.get("id") != "revision":
                type(self).posts += 1
            if status == 200:
                self._json(200, {"jsonrpc": "2.0", "id": msg.get("id"), "result": {}})
            else:
                self._json(status, {"jsonrpc": "2.0", "id": msg.get("id"),
                                    "error": {"code": -32603, "message": "broken"}})
    server = serve(Handler)
    return server, Handler, f"127.0.0.1:{server.server_address[1]}"


def test_backends_answering_500_are_ejected_for_longer_each_time_never_more_than_the_share(tmp_path):
    bad = [counting_backend(500) for _ in range(2)]
    good = counting_backend(200)
    handler_of = {addr: handler for _, handler, addr in [*bad, good]}
    addrs = [addr for _, _, addr in [*bad, good]]
    # three backends, at most half out: one at a time
    gw = Gateway(tmp_path, "outliers", addrs, pool_options='health_interval = "300ms"\neject_after = 3\n'
                 'eject_base = "1s"\neject_for = "8s"\nmax_ejected = 0.5')
    lengths = {addr: [] for addr in addrs}
    try:
        assert httpx2.get(f"{gw.admin}/backends", timeout=5).json()["pools"][0]["max_ejected"] == 1
        deadline = time.monotonic() + 30
        with httpx2.Client(timeout=10) as c:
            while not any(len(v) >= 2 for v in lengths.values()):
                assert time.monotonic() < deadline, lengths
                r = c.post(f"{gw.http}/mcp", json=PING, headers={"accept": ACCEPT})
                assert r.status_code in (200, 500), r.text
                state = {b["addr"]: b for b in gw.backends()}
                out = [a for a, b in state.items() if b["ejected"]]
                assert len(out) <= 1, f"more than the share out at once: {out}"
                for addr, b in state.items():
                    if b["ejections"] > len(lengths[addr]):
                        ejection = b["ejection"]
                        assert ejection["reason"] == "5xx", ejection
                        if not any(lengths.values()):
                            # the pool's first ejection: nothing held it back
                            assert handler_of[addr].posts == 3, "ejected at the third 500 in a row"
                        lengths[addr].append(ejection["duration_ms"])
        twice = next(a for a, v in lengths.items() if len(v) >= 2)
        assert lengths[twice][:2] == [1000, 2000], lengths
        assert not lengths[good[2]], "the good backend is never ejected"
        assert state_of(gw, twice)["ejection"]["in_a_row"] == 2
    finally:
        gw.proc.stop()
        for server, _, _ in [*bad, good]:
            server.shutdown()


def test_a_returning_backend_gets_a_growing_share_of_new_sessions(tmp_path):
    window = 6.0
    a, b = Backend(tmp_path / "s.db", "steady"), Backend(tmp_path / "s.db", "returning")
    gw = Gateway(tmp_path, "slow-start", [a.addr, b.addr],
                 pool_options=f'health_interval = "300ms"\nslow_start = "{window:g}s"')
    b2 = None
    try:
        b.proc.p.kill()
        b.proc.p.wait(10)
        wait_until(lambda: state_of(gw, b.addr)["healthy"] is False, 10, "the check to see it down")
        b2 = Backend(tmp_path / "s.db", "returned", listen=b.addr)
        wait_until(lambda: state_of(gw, b.addr)["healthy"], 10, "the check to see it back")
        state = state_of(gw, b.addr)
        assert state["state"] == "slow_start", state
        started = time.monotonic() - (window - state["slow_start"]["remaining_ms"] / 1000)
        # sessions opened on each backend, read every half second: (seconds into the window, on b, on a)
        counts = []

        def count():
            opened = {x["addr"]: x["sessions_opened"] for x in gw.backends()}
            counts.append((time.monotonic() - started, opened[b.addr], opened[a.addr]))
        count()
        with httpx2.Client(timeout=10) as c:
            while (t := time.monotonic() - started) < window + 2:
                r = c.post(f"{gw.http}/mcp", headers={"accept": ACCEPT}, json={
                    "jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                               "clientInfo": {"name": "slow-start", "version": "1"}}})
                assert r.status_code == 200, r.text
                if t - counts[-1][0] >= 0.5:
                    count()
        count()

        def share(lo, hi):
            first = min(counts, key=lambda x: abs(x[0] - lo))
            last = min(counts, key=lambda x: abs(x[0] - hi))
            on_b, on_a = last[1] - first[1], last[2] - first[2]
            assert on_a + on_b >= 40, f"too few sessions between {lo} and {hi} s: {on_a + on_b}"
            return on_b / (on_a + on_b)
        early, late, after = share(0, window / 3), share(2 * window / 3, window), share(window, window + 2)
        print(f"slow start: share of new sessions {early:.2f} early, {late:.2f} late, {after:.2f} after "
              f"({counts[-1][1] + counts[-1][2] - counts[0][1] - counts[0][2]} sessions)")
        assert early < 0.3, (early, late, after)
        assert late > early + 0.1, (early, late, after)
        assert after > 0.3, (early, late, after)
        assert state_of(gw, b.addr)["state"] == "healthy"
    finally:
        gw.proc.stop()
        for x in (a, b2):
            if x:
                x.proc.stop()
