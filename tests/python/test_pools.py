"""Pools beyond a static list: supervised local processes, DNS discovery,
and the global capacity cap."""

import os
import signal
import socket
import threading
from pathlib import Path

import httpx2
import pytest

from conftest import BIN, Backend, Gateway, initialize, listens_on, rpc, wait_until


def test_managed_backends_are_started_and_restarted_after_a_crash(tmp_path):
    pool = (f'{{ managed = {{ command = "{BIN / "registry-backend"}", count = 2, '
            f'args = ["--db={tmp_path / "managed.db"}"] }} }}')
    gw = Gateway(tmp_path, "managed", [], pool=pool, expect_backends=2)
    try:
        before = set(gw.healthy_backends())
        with httpx2.Client(timeout=10) as c:
            sid, instance = initialize(c, f"{gw.http}/mcp")
            assert instance in ("registry-0", "registry-1")
        # kill one child the hard way
        victim_addr = sorted(before)[0]
        port = victim_addr.rsplit(":", 1)[1]
        pid = next(int(p) for p in os.listdir("/proc") if p.isdigit()
                   and _listens_on(int(p), int(port)))
        os.kill(pid, signal.SIGKILL)
        # the supervisor replaces it: two healthy members again, one of them new
        wait_until(lambda: len(gw.healthy_backends()) == 2 and set(gw.healthy_backends()) != before,
                   30, "a replacement backend")
        with httpx2.Client(timeout=10) as c:
            sid, _ = initialize(c, f"{gw.http}/mcp")
            assert rpc(c, f"{gw.http}/mcp", sid, "tools/list").status_code == 200
        # SIGTERM: the gateway stops its children (they drain and exit), then exits 0
        children = backend_children(gw.proc.p.pid)
        assert len(children) == 2, children
        gw.proc.p.send_signal(signal.SIGTERM)
        assert gw.proc.p.wait(30) == 0
        wait_until(lambda: all(gone(c) for c in children), 20, "managed backends to exit")
    finally:
        gw.proc.stop()


def test_managed_backends_exit_when_the_gateway_is_killed(tmp_path):
    pool = (f'{{ managed = {{ command = "{BIN / "registry-backend"}", count = 2, '
            f'args = ["--db={tmp_path / "orphans.db"}"] }} }}')
    gw = Gateway(tmp_path, "killed", [], pool=pool, expect_backends=2)
    children = backend_children(gw.proc.p.pid)
    assert len(children) == 2, children
    os.kill(gw.proc.p.pid, signal.SIGKILL)  # no chance to clean up: PDEATHSIG must do it
    gw.proc.p.wait(10)
    wait_until(lambda: all(gone(c) for c in children), 20, "orphaned backends to exit")


def test_gateway_sigterm_lets_the_request_in_flight_finish(tmp_path, slow_backend):
    from conftest import SlowHandler
    extra = f"""
[[pools]]
name = "slow"
route = "/slow"
health_interval = "300ms"
discovery = {{ static = {{ backends = ["{slow_backend}"] }} }}
"""
    backend = Backend(tmp_path / "term.db", "term-backend")
    gw = Gateway(tmp_path, "term", [backend.addr], extra_pools=extra)
    wait_until(lambda: len(gw.healthy_backends("slow")) == 1, 30, "slow pool")
    result = {}

    def call():
        result["r"] = httpx2.post(f"{gw.http}/slow/mcp", timeout=30, headers={"accept": "application/json"},
                                  json={"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                                        "params": {"name": "slow", "arguments": {}}})
    before = SlowHandler.calls
    t = threading.Thread(target=call)
    t.start()
    try:
        wait_until(lambda: SlowHandler.calls > before, 10, "the call to reach the backend")
        gw.proc.p.send_signal(signal.SIGTERM)
        t.join(30)
        assert result["r"].status_code == 200 and result["r"].json()["id"] == 5
        assert gw.proc.p.wait(30) == 0
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(f"{gw.http}/health", timeout=2)
    finally:
        gw.proc.stop()
        backend.proc.stop()


def _listens_on(pid: int, port: int) -> bool:
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False
    return b"registry-backend" in cmd and listens_on(pid, port)


def backend_children(parent: int):
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_backend_child(p, parent)]


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _is_backend_child(pid: str, parent: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        return ppid == parent and b"registry-backend" in open(f"/proc/{pid}/cmdline", "rb").read()
    except (OSError, ValueError, IndexError):
        return False


class HostsEntry:
    """A name in /etc/hosts that the test points at addresses of its choice
    (the gateway resolves it with the system resolver, as it would a
    Kubernetes headless Service); removed again afterwards."""

    NAME = "mcp-e2e-dns.test"

    def __init__(self):
        self.path = Path("/etc/hosts")
        self.original = self.path.read_text()

    def point_at(self, *ips):
        lines = [l for l in self.original.splitlines() if self.NAME not in l]
        lines += [f"{ip} {self.NAME}" for ip in ips]
        self.path.write_text("\n".join(lines) + "\n")

    def restore(self):
        self.path.write_text(self.original)


def test_dns_discovery_follows_membership_changes(tmp_path):
    # two backends on one port, two loopback addresses: the DNS answer decides who is a member
    a = Backend(tmp_path / "dns.db", "dns-a", listen="127.0.0.2:0", extra=["--allow-any-host"])
    port = a.addr.rsplit(":", 1)[1]
    b = Backend(tmp_path / "dns.db", "dns-b", listen=f"127.0.0.3:{port}", extra=["--allow-any-host"])
    hosts = HostsEntry()
    gw = None
    try:
        hosts.point_at("127.0.0.2")
        gw = Gateway(tmp_path, "dns", [], pool=f'{{ dns = {{ name = "{HostsEntry.NAME}", port = {port}, interval = "500ms" }} }}',
                     expect_backends=1)
        assert gw.healthy_backends() == [f"127.0.0.2:{port}"]
        with httpx2.Client(timeout=10) as c:
            assert initialize(c, f"{gw.http}/mcp")[1] == "dns-a"
        # the name now points elsewhere: routing follows
        hosts.point_at("127.0.0.3")
        wait_until(lambda: gw.healthy_backends() == [f"127.0.0.3:{port}"], 30, "discovery to follow DNS")
        with httpx2.Client(timeout=10) as c:
            for _ in range(3):
                assert initialize(c, f"{gw.http}/mcp")[1] == "dns-b"
        # and both
        hosts.point_at("127.0.0.2", "127.0.0.3")
        wait_until(lambda: sorted(gw.healthy_backends()) == [f"127.0.0.2:{port}", f"127.0.0.3:{port}"], 30,
                   "discovery to find both")
    finally:
        hosts.restore()
        if gw:
            gw.proc.stop()
        a.proc.stop()
        b.proc.stop()


def test_the_inflight_cap_answers_503_with_retry_after(tmp_path):
    backend = Backend(tmp_path / "cap.db", "cap-backend")
    # client_share = 1: this one address may take both slots, so the
    # gateway-wide cap is what answers
    gw = Gateway(tmp_path, "cap", [backend.addr], limits="max_inflight = 2\nclient_share = 1.0")
    streams = []
    try:
        # two legacy SSE streams hold the two slots
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", gw.http_port))
            s.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            buf = b""
            while b"endpoint" not in buf:
                chunk = s.recv(4096)
                assert chunk, "stream closed before the endpoint event"
                buf += chunk
            streams.append(s)
        r = httpx2.get(f"{gw.http}/health", timeout=10)
        assert r.status_code == 503
        assert r.headers.get("retry-after") == "1"
        for s in streams:
            s.close()
        wait_until(lambda: httpx2.get(f"{gw.http}/health", timeout=5).status_code == 200, 20, "slots to free up")
    finally:
        gw.proc.stop()
        backend.proc.stop()
