"""Slow and greedy clients cannot starve the gateway (issue 21, findings 2
and 3): a request header must arrive whole within `header_timeout` and stay
under `max_header_bytes`, a silent connection lasts `idle_timeout`, an
address holds at most `max_connections_per_ip` connections, a body must
arrive within `body_timeout` at `body_min_rate`, and reservations of the
body budget grow with the bytes that arrived, within a client's share.
Small limits keep each case to a few seconds."""

import hashlib
import signal
import socket
import threading
import time

import httpx2
import pytest

from conftest import ACCEPT, Gateway, metric, wait_until

KEYS = {"alice": "slow-alice-key-0123456789", "bob": "slow-bob-key-0123456789"}
AUTH = "[auth]\n" + "".join(
    f'[[auth.keys]]\nprincipal = "{p}"\nsha256 = "{hashlib.sha256(k.encode()).hexdigest()}"\n'
    for p, k in KEYS.items())


@pytest.fixture(scope="module")
def slow_gw(tmp_path_factory, slow_backend):
    tmp = tmp_path_factory.mktemp("slow")
    gw = Gateway(tmp, "slow", [slow_backend], limits="""
idle_timeout = "1500ms"
header_timeout = "1s"
max_header_bytes = 4096
max_connections_per_ip = 24
body_timeout = "2s"
body_min_rate = 100
max_buffered_bytes = 1048576
client_share = 0.25
max_body_bytes = 262144
""", extra_config=AUTH, pool_options='health_interval = "300ms"\nauth = "optional"\nhealth_path = "/health"')
    yield gw
    gw.proc.stop()


def connect(gw):
    s = socket.create_connection(("127.0.0.1", gw.http_port), timeout=10)
    s.settimeout(10)
    return s


def closed_within(sock, seconds):
    """Whether the gateway closes the connection within `seconds` (the
    client sends nothing more meanwhile)."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except socket.timeout:
        return False
    except OSError:
        return True


def test_a_header_that_trickles_in_is_cut_at_header_timeout(slow_gw):
    before = metric(slow_gw, "mcp_gateway_connections_cut_total", '{reason="header_timeout"}')
    s = connect(slow_gw)
    started = time.monotonic()
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    cut = False
    for i in range(20):  # a header line every 0.25 s: each read is quick, the header never ends
        try:
            s.sendall(f"X-Line-{i}: y\r\n".encode())
        except OSError:
            cut = True
            break
        time.sleep(0.25)
    took = time.monotonic() - started
    assert cut or closed_within(s, 1), "the trickling header was not cut"
    assert took < 4.5, f"cut only after {took:.1f} s"
    s.close()
    assert metric(slow_gw, "mcp_gateway_connections_cut_total", '{reason="header_timeout"}') == before + 1


def test_a_header_over_max_header_bytes_is_cut_before_it_ends(slow_gw):
    before = metric(slow_gw, "mcp_gateway_connections_cut_total", '{reason="header_size"}')
    s = connect(slow_gw)
    s.sendall(b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 8000)  # no end of line, no end of header
    assert closed_within(s, 3), "the oversized header was not cut"
    s.close()
    assert metric(slow_gw, "mcp_gateway_connections_cut_total", '{reason="header_size"}') == before + 1
    # a header just under the bound is served
    with httpx2.Client(timeout=5) as c:
        r = c.get(f"{slow_gw.http}/health", headers={"x-pad": "a" * 3000})
        assert r.status_code == 200, r.text


def test_a_silent_connection_is_closed_at_idle_timeout(slow_gw):
    before = metric(slow_gw, "mcp_gateway_connections_cut_total", '{reason="idle"}')
    s = connect(slow_gw)
    started = time.monotonic()
    assert closed_within(s, 5), "a silent connection stayed open"
    assert time.monotonic() - started < 4
    s.close()
    assert metric(slow_gw, "mcp_gateway_connections_cut_total", '{reason="idle"}') == before + 1


def test_an_address_holds_at_most_max_connections_per_ip(slow_gw):
    # wait for earlier tests' connections to be gone (they close within idle_timeout)
    wait_until(lambda: metric(slow_gw, "mcp_gateway_connections_open") == 0, 10, "no open connections")
    held = [connect(slow_gw) for _ in range(24)]
    try:
        wait_until(lambda: metric(slow_gw, "mcp_gateway_connections_open") == 24, 5, "24 open")
        before = metric(slow_gw, "mcp_gateway_connections_cut_total", '{reason="per_address_cap"}')
        extra = connect(slow_gw)
        assert closed_within(extra, 3), "the 25th connection was served"
        extra.close()
        assert metric(slow_gw, "mcp_gateway_connections_cut_total", '{reason="per_address_cap"}') == before + 1
    finally:
        for s in held:
            s.close()
    wait_until(lambda: httpx2.get(f"{slow_gw.http}/health", timeout=5).status_code == 200, 10,
               "a connection once the others closed")


def post_slowly(gw, declared, send, key=None, pace=0.0, chunk=1024, result=None):
    """A POST declaring `declared` body bytes that sends `send` of them
    (`chunk` at a time, `pace` seconds apart), then waits for the answer."""
    s = connect(gw)
    auth = f"X-API-Key: {KEYS[key]}\r\n" if key else ""
    s.sendall((f"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAccept: {ACCEPT}\r\n"
               f"{auth}Content-Length: {declared}\r\n\r\n").encode())
    sent = 0
    try:
        while sent < send:
            n = min(chunk, send - sent)
            s.sendall(b" " * n)
            sent += n
            if pace:
                time.sleep(pace)
    except OSError:
        pass
    if result is not None:
        result.append(s)
    return s


def status_of(sock, timeout=5):
    sock.settimeout(timeout)
    try:
        head = sock.recv(4096).decode(errors="replace")
    except OSError:
        return None
    return int(head.split(" ")[1]) if head.startswith("HTTP/1.1 ") else None


def test_a_body_that_trickles_in_is_refused_408(slow_gw):
    started = time.monotonic()
    s = post_slowly(slow_gw, 1000, 60, chunk=10, pace=0.3)  # 33 bytes/s: under body_min_rate
    status = status_of(s)
    s.close()
    assert status == 408, status
    assert time.monotonic() - started < 4


def test_declared_lengths_reserve_nothing_so_slow_bodies_do_not_starve_others(slow_gw):
    """8 connections declare 256 KiB each (2 MiB, twice the whole body
    budget) and send a byte: before, the first four reservations took the
    budget and every other POST got 503."""
    held = [post_slowly(slow_gw, 256 * 1024, 1) for _ in range(8)]
    try:
        with httpx2.Client(timeout=5) as c:
            r = c.post(f"{slow_gw.http}/mcp", headers={"accept": ACCEPT, "x-api-key": KEYS["bob"]},
                       json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert r.status_code == 200, r.text
    finally:
        for s in held:
            s.close()


def test_one_client_holds_at_most_its_share_of_the_body_budget(slow_gw):
    """alice sends 200 KiB of three bodies and holds them: her share (a
    quarter of 1 MiB) stops the second; bob's POST still passes."""
    held = []
    threads = [threading.Thread(target=post_slowly, args=(slow_gw, 240 * 1024, 200 * 1024, "alice"),
                                kwargs={"result": held}) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    try:
        statuses = [status_of(s, timeout=1) for s in held]
        assert statuses.count(429) >= 1, statuses
        with httpx2.Client(timeout=5) as c:
            r = c.post(f"{slow_gw.http}/mcp", headers={"accept": ACCEPT, "x-api-key": KEYS["bob"]},
                       json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert r.status_code == 200, r.text
    finally:
        for s in held:
            s.close()


def test_one_address_holds_at_most_its_share_of_max_inflight(tmp_path, slow_backend):
    """With max_inflight 8 and client_share 0.25, a third request in flight
    from one address is refused 429 (the slow backend holds each 0.5 s)."""
    gw = Gateway(tmp_path, "inflight-share", [slow_backend], limits="max_inflight = 8\nclient_share = 0.25",
                 pool_options='health_interval = "300ms"\nhealth_path = "/health"')
    try:
        results = []

        def ping(i):
            with httpx2.Client(timeout=10) as c:
                r = c.post(f"{gw.http}/mcp", headers={"accept": ACCEPT},
                           json={"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                 "params": {"name": "x", "arguments": {}}})
                results.append(r.status_code)
        threads = [threading.Thread(target=ping, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(results).count(200) == 2 and results.count(429) == 2, results
    finally:
        gw.proc.stop()


def test_sigterm_under_open_streams_and_slow_clients_exits_within_grace_and_timeout(tmp_path):
    """Issue 21, finding 14: a gateway holding legacy streams, trickling
    headers and slow bodies still exits within shutdown_grace_secs +
    shutdown_timeout_secs of SIGTERM (a second of slack for the process to
    end)."""
    from conftest import Backend
    backend = Backend(tmp_path / "stop.db", "stop")
    gw = Gateway(tmp_path, "stop", [backend.addr], extra_config="shutdown_grace_secs = 1\nshutdown_timeout_secs = 2")
    socks = []
    try:
        for _ in range(10):
            s = connect(gw)
            s.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            socks.append(s)
        for _ in range(10):
            s = connect(gw)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # a header that never ends
            socks.append(s)
        socks += [post_slowly(gw, 100_000, 10) for _ in range(10)]  # bodies that never end
        wait_until(lambda: metric(gw, "mcp_gateway_connections_open") >= 30, 10, "30 open connections")
        started = time.monotonic()
        gw.proc.p.send_signal(signal.SIGTERM)
        assert gw.proc.p.wait(30) == 0
        took = time.monotonic() - started
        assert took < 1 + 2 + 1, f"exited {took:.1f} s after SIGTERM"
    finally:
        for s in socks:
            s.close()
        gw.proc.stop()
        backend.proc.stop()
