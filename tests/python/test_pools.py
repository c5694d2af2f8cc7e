"""Pools beyond a static list: supervised local processes, DNS discovery,
and the global capacity cap."""

import os
import signal
import socket

import httpx2

from conftest import BIN, Backend, Gateway, initialize, rpc, wait_until


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
    finally:
        gw.proc.stop()
    # children go away with the gateway
    wait_until(lambda: not any(_is_backend_child(p, gw.proc.p.pid) for p in os.listdir("/proc") if p.isdigit()),
               20, "managed backends to exit")


def _listens_on(pid: int, port: int) -> bool:
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False
    if b"registry-backend" not in cmd:
        return False
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return False
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and int(local.split(":")[1], 16) == port and inode in inodes:
                return True
    return False


def _is_backend_child(pid: str, parent: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        return ppid == parent and b"registry-backend" in open(f"/proc/{pid}/cmdline", "rb").read()
    except (OSError, ValueError, IndexError):
        return False


def test_dns_discovery_finds_backends_by_name(tmp_path):
    backend = Backend(tmp_path / "dns.db", "dns-backend")
    port = backend.addr.rsplit(":", 1)[1]
    try:
        gw = Gateway(tmp_path, "dns", [], pool=f'{{ dns = {{ name = "localhost", port = {port}, interval = "1s" }} }}',
                     expect_backends=1)
        try:
            assert gw.healthy_backends() == [f"127.0.0.1:{port}"]
            with httpx2.Client(timeout=10) as c:
                _, instance = initialize(c, f"{gw.http}/mcp")
                assert instance == "dns-backend"
        finally:
            gw.proc.stop()
    finally:
        backend.proc.stop()


def test_the_inflight_cap_answers_503_with_retry_after(tmp_path):
    backend = Backend(tmp_path / "cap.db", "cap-backend")
    gw = Gateway(tmp_path, "cap", [backend.addr], limits="max_inflight = 2")
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
