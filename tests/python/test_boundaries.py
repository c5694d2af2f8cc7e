"""Limits at their boundaries, each from a gateway configured with small
values: the per-address request rate and in-flight cap and the global
request rate (all checked before credentials), the buffered-body budget,
the body size to the byte, and a session id on another route's path.

Rates are checked by behaviour, not by the clock: a limiter refills while
requests go out, so with burst B and rate R between B and B + R*seconds + 1
requests pass before the first 429, however slow the machine."""

import socket
import time

import httpx2
import pytest

from conftest import ACCEPT, DISCOVER, STATELESS, Backend, Gateway, initialize, metric, wait_until


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = Backend(tmp_path_factory.mktemp("boundaries") / "b.db", "boundaries")
    yield b
    b.proc.stop()


def client_from(address):
    """An HTTP client whose connections come from `address` (any 127.x.y.z is this machine)."""
    return httpx2.Client(timeout=10, transport=httpx2.HTTPTransport(local_address=address))


def until_limited(go, most=500):
    started = time.monotonic()
    for passed in range(most):
        r = go()
        if r.status_code == 429:
            return passed, r, time.monotonic() - started
        assert r.status_code == 200, r.text
    raise AssertionError(f"{most} requests and none refused")


def assert_limited(r, what):
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == -32023 and err["data"]["limit"] == what, err
    assert int(r.headers["retry-after"]) >= 1


JSON_STATELESS = {**STATELESS, "content-type": "application/json"}


def discover(c, gw):
    return c.post(f"{gw.http}/mcp", headers=STATELESS, json=DISCOVER)


def test_the_per_address_request_rate_refuses_the_request_after_the_burst_and_only_that_address(tmp_path, backend):
    gw = Gateway(tmp_path, "per-ip-rate", [backend.addr], limits="[limits.global]\nper_ip_requests_per_second = 5\n")
    try:
        with client_from("127.0.0.1") as one, client_from("127.0.0.2") as two:
            passed, refused, took = until_limited(lambda: discover(one, gw))
            assert 5 <= passed <= 5 + 5 * took + 1, (passed, took)
            assert_limited(refused, "requests per client address")
            assert discover(two, gw).status_code == 200, "another address has its own budget"
    finally:
        gw.proc.stop()


def test_the_global_request_rate_refuses_every_address_after_the_burst(tmp_path, backend):
    gw = Gateway(tmp_path, "global-rate", [backend.addr], limits="[limits.global]\nrequests_per_second = 5\n")
    try:
        with client_from("127.0.0.1") as one, client_from("127.0.0.2") as two:
            passed, refused, took = until_limited(lambda: discover(one, gw))
            assert 5 <= passed <= 5 + 5 * took + 1, (passed, took)
            assert_limited(refused, "requests to the gateway")
            # the budget is everybody's: the other address is refused too (unless a cell came back meanwhile)
            others, _, took2 = until_limited(lambda: discover(two, gw))
            assert others <= 5 * took2 + 1, (others, took2)
    finally:
        gw.proc.stop()


def open_stream(gw, source="127.0.0.1"):
    s = socket.create_connection(("127.0.0.1", gw.http_port), source_address=(source, 0))
    s.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    s.settimeout(10)
    head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return s


def test_the_per_address_in_flight_cap_counts_open_streams_and_frees_a_place_when_one_ends(tmp_path, backend):
    gw = Gateway(tmp_path, "per-ip-inflight", [backend.addr], limits="[limits.global]\nper_ip_inflight = 2\n")
    streams = []
    try:
        streams = [open_stream(gw), open_stream(gw)]
        with client_from("127.0.0.1") as one, client_from("127.0.0.2") as two:
            assert_limited(discover(one, gw), "requests in flight per client address")
            assert discover(two, gw).status_code == 200, "another address has its own cap"
            streams.pop().close()
            wait_until(lambda: discover(one, gw).status_code == 200, 10, "the closed stream to free its place")
    finally:
        for s in streams:
            s.close()
        gw.proc.stop()


def post_head(gw, length):
    s = socket.create_connection(("127.0.0.1", gw.http_port))
    s.sendall(f"POST /mcp HTTP/1.1\r\nHost: x\r\nAccept: {ACCEPT}\r\nContent-Type: application/json\r\n"
              f"Mcp-Protocol-Version: 2026-07-28\r\nMcp-Method: server/discover\r\n"
              f"Content-Length: {length}\r\n\r\n".encode())
    return s


def padded_discover(size):
    """A server/discover message of exactly `size` bytes."""
    import json
    msg = dict(DISCOVER, params={**DISCOVER["params"], "pad": ""})
    bare = len(json.dumps(msg, separators=(",", ":")))
    msg["params"]["pad"] = "p" * (size - bare)
    body = json.dumps(msg, separators=(",", ":")).encode()
    assert len(body) == size
    return body


def read_response(s):
    s.settimeout(15)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, buf
        buf += chunk
    return buf


def test_bodies_held_at_once_past_the_buffer_budget_get_503_until_one_is_done(tmp_path, backend):
    budget = 64 * 1024
    # client_share = 1: the one client may hold the whole budget, so the
    # budget itself is what answers (a client's share is test_slow_clients.py's)
    gw = Gateway(tmp_path, "buffered", [backend.addr],
                 limits=f"max_body_bytes = {budget}\nmax_buffered_bytes = {budget}\nclient_share = 1.0\n")
    held = post_head(gw, 60_000)
    body = padded_discover(60_000)
    try:
        # one client holds 60,000 bytes of body, sent for real, all but its last byte
        held.sendall(body[:-1])
        wait_until(lambda: metric(gw, "mcp_gateway_buffered_body_bytes") >= 59_999, 10, "the body to be buffered")
        with httpx2.Client(timeout=10) as c:
            second = c.post(f"{gw.http}/mcp", headers=JSON_STATELESS, content=padded_discover(10_000))
            assert second.status_code == 503, second.text
            assert second.headers["retry-after"] == "1" and second.json()["error"]["code"] == -32000
            held.sendall(body[-1:])
            assert read_response(held).startswith(b"HTTP/1.1 200")
            wait_until(lambda: metric(gw, "mcp_gateway_buffered_body_bytes") == 0, 10, "the budget to come back")
            assert c.post(f"{gw.http}/mcp", headers=JSON_STATELESS, content=padded_discover(10_000)).status_code == 200
    finally:
        held.close()
        gw.proc.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_exactly_max_body_bytes_passes_and_one_byte_more_gets_413(tmp_path_factory, backend, chunked):
    limit = 64 * 1024
    gw = Gateway(tmp_path_factory.mktemp("size"), "size", [backend.addr], limits=f"max_body_bytes = {limit}\n")
    try:
        with httpx2.Client(timeout=10) as c:
            def post(body):
                content = iter([body[: len(body) // 2], body[len(body) // 2:]]) if chunked else body
                return c.post(f"{gw.http}/mcp", headers=JSON_STATELESS, content=content)
            exact = post(padded_discover(limit))
            assert exact.status_code == 200, exact.text[:200]
            over = post(padded_discover(limit + 1))
            assert over.status_code == 413, over.text[:200]
            assert over.json()["error"]["message"] == "request body too large"
    finally:
        gw.proc.stop()


def test_a_session_id_on_another_routes_path_is_unknown(stack):
    gw = stack.gw
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, f"{gw.http}/mcp")
        r = c.post(f"{gw.http}/garbage/mcp", json={"jsonrpc": "2.0", "id": 5, "method": "ping"},
                   headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"})
        assert r.status_code == 404, r.text
        err = r.json()
        assert err["id"] == 5 and err["error"]["code"] == -32001, err
        assert "another route" in err["error"]["message"], err
        # on its own route it is a session
        ok = c.post(f"{gw.http}/mcp", json={"jsonrpc": "2.0", "id": 6, "method": "ping"},
                    headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"})
        assert ok.status_code == 200, ok.text
