"""Metrics an SRE expects, on the gateway's admin /metrics and each
backend's own: request latency by transport and method, tool latency by
tool (only tools the servers listed get a series), upstream time to first
byte, open streams per backend, sessions open on each backend — moved by
real traffic over every transport; and the Grafana dashboard in
deploy/grafana queries only metric names that really exist."""
import json
import re
import threading

import httpx2

from conftest import (ACCEPT, DISCOVER, ROOT, STATELESS, Backend, Gateway, free_port, initialize, metric, rpc,
                      wait_until)
from test_protocol_paths import Legacy

DASHBOARD = ROOT / "deploy" / "grafana" / "mcp-gateway.json"


def families(text):
    """Metric family names in a Prometheus text exposition."""
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def series(text, name, labels):
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_metrics_follow_real_traffic_and_the_dashboard_names_only_real_metrics(tmp_path):
    metrics_port = free_port()
    backend = Backend(tmp_path / "r.db", "metrics-0", extra=["--metrics-listen", f"127.0.0.1:{metrics_port}"])
    gw = Gateway(tmp_path, "metered", [backend.addr])
    backend_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with httpx2.Client(timeout=10) as c:
            url = f"{gw.http}/mcp"
            sid, _ = initialize(c, url)  # initialize, initialized, and one health_check call
            assert rpc(c, url, sid, "tools/list", id_=3).status_code == 200
            assert rpc(c, url, sid, "tools/call", {"name": "list_agents", "arguments": {}}, id_=4).status_code == 200
            # a name no server listed: counted, but under "other"
            rpc(c, url, sid, "tools/call", {"name": "made_up_tool", "arguments": {}}, id_=5)
            assert c.post(url, headers=STATELESS, json=DISCOVER).status_code == 200
            # a server stream held open: one open stream on the backend
            opened = threading.Event()
            done = threading.Event()

            def hold():
                with c.stream("GET", url, headers={"accept": "text/event-stream", "mcp-session-id": sid,
                                                   "mcp-protocol-version": "2025-06-18"}) as r:
                    assert r.status_code == 200
                    opened.set()
                    done.wait(15)
            t = threading.Thread(target=hold, daemon=True)
            t.start()
            assert opened.wait(10)
            streams = f'{{pool="registry",backend="{backend.addr}"}}'
            wait_until(lambda: metric(gw, "mcp_gateway_backend_open_streams", streams) == 1, 10, "one open stream")
            done.set()
            t.join(10)
            wait_until(lambda: metric(gw, "mcp_gateway_backend_open_streams", streams) == 0, 10, "the stream closed")
        legacy = Legacy(f"{gw.http}")
        try:
            legacy.text_of(7, "health_check")
        finally:
            legacy.close()

        text = httpx2.get(f"{gw.admin}/metrics", timeout=5).text
        latency = "mcp_gateway_request_duration_seconds_count"
        assert series(text, latency, '{transport="streamable_http",method="tools/call"}') == 3, text
        assert series(text, latency, '{transport="streamable_http",method="tools/list"}') == 1
        assert series(text, latency, '{transport="streamable_http",method="initialize"}') == 1
        assert series(text, latency, '{transport="stateless",method="server/discover"}') == 1
        assert series(text, latency, '{transport="legacy_sse",method="tools/call"}') == 1
        tools = "mcp_gateway_tool_call_duration_seconds_count"
        assert series(text, tools, '{pool="registry",tool="list_agents"}') == 1
        # "other": the health_check before this replica saw a tools/list, and the made-up name
        assert series(text, tools, '{pool="registry",tool="other"}') == 2
        assert series(text, tools, '{pool="registry",tool="health_check"}') == 1  # the legacy call, after
        assert "made_up_tool" not in text, "a client invented a series"
        assert series(text, "mcp_gateway_upstream_duration_seconds_count", '{pool="registry"}') >= 8
        sessions = f'{{pool="registry",backend="{backend.addr}"}}'
        assert metric(gw, "mcp_gateway_backend_sessions_opened_total", sessions) >= 2

        btext = httpx2.get(backend_metrics, timeout=5).text
        assert series(btext, "registry_tool_call_duration_seconds_count", '{tool="list_agents"}') == 1
        assert series(btext, "registry_tool_call_duration_seconds_count", '{tool="health_check"}') == 2
        assert series(btext, "registry_sessions_open", "") >= 1
        # with --metrics-listen, the MCP listener does not serve /metrics
        assert httpx2.get(f"http://{backend.addr}/metrics", timeout=5).status_code == 404

        known = families(text) | families(btext)
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        assert len(exprs) >= 16
        queried = set()
        for e in exprs:
            for name in re.findall(r"\b((?:mcp_gateway|registry)_[a-z0-9_]+)\b", e):
                queried.add(re.sub(r"_(bucket|sum|count)$", "", name) if name.endswith(("_bucket", "_sum", "_count"))
                            and re.sub(r"_(bucket|sum|count)$", "", name) in known else name)
        missing = sorted(queried - known)
        assert not missing, f"the dashboard queries metrics nobody exports: {missing}"
        assert len(queried) >= 15, queried
    finally:
        gw.proc.stop()
        backend.proc.stop()
