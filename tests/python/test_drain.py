"""Stopping: after SIGTERM the gateway drains for `shutdown_grace_secs`
before its listeners close. Meanwhile the readiness probes say so, the
liveness probe does not, and every MCP answer closes its connection so the
client's next request opens one elsewhere."""

import signal

import httpx2

from conftest import DISCOVER, STATELESS, Backend, Gateway, wait_until


def test_while_draining_readiness_is_503_liveness_200_and_answers_close_their_connection(tmp_path):
    backend = Backend(tmp_path / "drain.db", "drain")
    gw = Gateway(tmp_path, "drain", [backend.addr], extra_config="shutdown_grace_secs = 4\nshutdown_timeout_secs = 2\n")
    try:
        with httpx2.Client(timeout=5) as c:
            before = c.post(f"{gw.http}/mcp", headers=STATELESS, json=DISCOVER)
            assert before.status_code == 200 and before.headers.get("connection", "") != "close", before.headers
            for probe in ("/health", "/readyz", "/livez"):
                assert c.get(f"{gw.admin}{probe}").status_code == 200, probe
        gw.proc.p.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx2.get(f"{gw.admin}/health", timeout=2).status_code == 503, 3, "draining to start")
        with httpx2.Client(timeout=5) as c:
            assert c.get(f"{gw.admin}/readyz").status_code == 503
            assert c.get(f"{gw.admin}/health").json() == {"status": "draining"}
            assert c.get(f"{gw.admin}/livez").status_code == 200, "draining is no reason to restart it"
            during = c.post(f"{gw.http}/mcp", headers=STATELESS, json=DISCOVER)
            assert during.status_code == 200, during.text
            assert during.headers.get("connection") == "close", during.headers
        assert gw.proc.p.wait(4 + 2 + 10) == 0
    finally:
        gw.proc.stop()
        backend.proc.stop()
