"""Several gateway replicas, one session key: the seed's own 1.x client
behind a round-robin balancer (its GET /sse and POST /messages land on
different replicas), Streamable HTTP sessions that lose their replica, and a
graceful upgrade of a gateway under load."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import BIN, ROOT, SESSION_KEY, Backend, Gateway, free_port, listens_on, metric, wait_until

VENV1 = ROOT / ".venv-mcp1" / "bin" / "python"


class RoundRobin:
    """A TCP balancer: each new connection goes to the next replica that is
    ready (its admin /health answers 200, checked every 100 ms) and accepts
    it — what an L4 balancer or a Kubernetes Service does, in a few lines."""

    def __init__(self, gateways):
        self.ports = [g.http_port for g in gateways]
        self.health = [f"{g.admin}/health" for g in gateways]
        self.ready = [True] * len(gateways)
        self.next = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.refused = 0
        self.running = True
        threading.Thread(target=self.serve, daemon=True).start()
        threading.Thread(target=self.check, daemon=True).start()

    def check(self):
        while self.running:
            for i, url in enumerate(self.health):
                try:
                    self.ready[i] = httpx2.get(url, timeout=1).status_code == 200
                except httpx2.HTTPError:
                    self.ready[i] = False
            time.sleep(0.1)

    def serve(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(client,), daemon=True).start()

    def handle(self, client):
        upstream = None
        for _ in range(len(self.ports)):
            i = self.next % len(self.ports)
            self.next += 1
            if not self.ready[i]:
                continue
            port = self.ports[i]
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
                upstream.settimeout(None)
                break
            except OSError:
                continue
        if upstream is None:
            self.refused += 1
            client.close()
            return

        def pipe(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        pipe(upstream, client)

    def close(self):
        self.running = False
        self.server.close()


def replica(tmp, name, backends, http_port):
    """A gateway replica that advertises its own listener to the others; when
    told to stop it keeps serving for 2 s, closing each connection after its
    answer, so clients move before its listener closes."""
    return Gateway(tmp, name, backends,
                   extra_config=f'shutdown_grace_secs = 2\nshutdown_timeout_secs = 3\n[cluster]\nadvertise = "127.0.0.1:{http_port}"',
                   http_port=http_port)


def test_the_seed_client_works_through_a_balancer_over_two_replicas(tmp_path):
    assert VENV1.exists(), "the mcp 1.x venv (made by tests/run.sh) is missing"
    backends = [Backend(tmp_path / "r.db", f"rep-{i}") for i in range(2)]
    a = replica(tmp_path, "rep-a", [b.addr for b in backends], free_port())
    b = replica(tmp_path, "rep-b", [b.addr for b in backends], free_port())
    lb = RoundRobin([a, b])
    try:
        out = subprocess.run([str(VENV1), str(Path(__file__).parent / "mcp1_reader.py"),
                              f"http://127.0.0.1:{lb.port}/sse", "3", "5"], capture_output=True, text=True, timeout=120)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["failures"] == [], result["failures"][:5]
        assert result["calls"] >= result["sessions"], result
        # the seed's POSTs really crossed replicas: both served legacy streams or relays
        relayed = [metric(g, "mcp_gateway_legacy_relayed_total") for g in (a, b)]
        assert sum(relayed) > 0, relayed
    finally:
        lb.close()
        for g in (a, b):
            g.proc.stop()
        for be in backends:
            be.proc.stop()


class NotingTransport(httpx2.AsyncHTTPTransport):
    errors = []

    async def handle_async_request(self, request):
        try:
            return await super().handle_async_request(request)
        except Exception as e:
            NotingTransport.errors.append((time.monotonic(), request.method, request.content[:60], repr(e)))
            raise


async def read_loop(url, deadline, failures, after, event):
    """Calls health_check in a loop until `deadline`, and in any case until one
    call that started after `event["at"]` succeeded (then it appends to
    `after`; bounded at 30 s past the deadline)."""
    async with httpx2.AsyncClient(timeout=30, transport=NotingTransport()) as http:
        async with streamable_http_client(url, http_client=http) as (r, w, *_):
            async with ClientSession(r, w) as s:
                await s.initialize()
                done = False
                while time.monotonic() < deadline or (not done and time.monotonic() < deadline + 30):
                    started = time.monotonic()
                    try:
                        res = await s.call_tool("health_check", {})
                        if res.is_error:
                            failures.append(str(res))
                        elif not done and started > event.get("at", float("inf")):
                            done = True
                            after.append(started)
                    except Exception as e:  # noqa: BLE001 - every failure is a finding
                        failures.append(f"{type(e).__name__}: {e}")
                    await asyncio.sleep(0.05)


def test_streamable_sessions_move_to_the_other_replica_when_one_stops(tmp_path):
    backends = [Backend(tmp_path / "m.db", f"stop-{i}") for i in range(2)]
    a = replica(tmp_path, "stop-a", [b.addr for b in backends], free_port())
    b = replica(tmp_path, "stop-b", [b.addr for b in backends], free_port())
    lb = RoundRobin([a, b])
    failures, after, stopped, event = [], [], [], {}

    async def main():
        deadline = time.monotonic() + 8
        loops = [read_loop(f"http://127.0.0.1:{lb.port}/mcp", deadline, failures, after, event) for _ in range(6)]

        async def stop_a():
            await asyncio.sleep(3)
            stopped.append(time.monotonic())
            a.proc.p.send_signal(signal.SIGTERM)
            while a.proc.p.poll() is None:
                await asyncio.sleep(0.05)
            event["at"] = time.monotonic()  # a is gone: every session now lives on b
        results = await asyncio.gather(stop_a(), *loops, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                failures.append(f"session ended {time.monotonic() - stopped[0]:.2f}s after SIGTERM: "
                                + str([(round(t - stopped[0], 3), m, c, e) for t, m, c, e in NotingTransport.errors]))

    try:
        asyncio.run(main())
        assert a.proc.p.wait(30) == 0
        assert failures == [], failures[:5]
        assert len(after) == 6, f"{len(after)} of 6 sessions made a call after the replica stopped"
    finally:
        lb.close()
        for g in (a, b):
            g.proc.stop()
        for be in backends:
            be.proc.stop()


def test_a_graceful_upgrade_under_load_refuses_nothing(tmp_path):
    backends = [Backend(tmp_path / "u.db", f"up-{i}") for i in range(2)]
    sock = tmp_path / "upgrade.sock"
    old = Gateway(tmp_path, "up-old", [b.addr for b in backends], extra_config=f'upgrade_sock = "{sock}"\nshutdown_grace_secs = 1\nshutdown_timeout_secs = 3')
    failures, after = [], []
    state = {}

    async def upgrade():
        await asyncio.sleep(2)
        # the new binary waits for the sockets, then the old one hands them over
        state["new"] = subprocess.Popen([str(BIN / "mcp-gateway"), "--config", str(tmp_path / "up-old.toml"), "--upgrade"],
                                        env={**os.environ, "MCP_GATEWAY_SESSION_KEY": SESSION_KEY, "RUST_LOG": "warn"},
                                        stdout=subprocess.DEVNULL)
        # the new one binds the upgrade socket when it is ready to take them
        for _ in range(300):
            if sock.exists():
                break
            await asyncio.sleep(0.1)
        old.proc.p.send_signal(signal.SIGQUIT)
        while old.proc.p.poll() is None:
            await asyncio.sleep(0.1)
        state["at"] = time.monotonic()

    async def main():
        deadline = time.monotonic() + 10
        await asyncio.gather(upgrade(), *[read_loop(f"{old.http}/mcp", deadline, failures, after, state)
                                          for _ in range(6)])

    try:
        asyncio.run(main())
        new = state["new"]
        assert old.proc.p.returncode == 0
        assert new.poll() is None, "the new gateway serves"
        wait_until(lambda: all(listens_on(new.pid, p) for p in (old.http_port, old.admin_port)), 10,
                   "the new gateway holds the handed-over listeners")
        assert failures == [], failures[:5]
        assert len(after) == 6, f"{len(after)} of 6 sessions made a call after the handover"
        with httpx2.Client(timeout=10) as c:
            assert c.get(f"{old.http}/health").status_code == 200
    finally:
        if "new" in state:
            state["new"].send_signal(signal.SIGTERM)
            state["new"].wait(30)
        old.proc.stop()
        for be in backends:
            be.proc.stop()
