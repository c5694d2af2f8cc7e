"""OpenTelemetry traces through both hops: the gateway and a registry
backend export spans over OTLP/HTTP (protobuf) to a real receiver started
here (decoding with the `opentelemetry-proto` package), and W3C
`traceparent` ties them into one trace: the backend's span is a child of the
gateway's, which continues the client's own trace."""
import gzip
import json
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

from conftest import ACCEPT, BIN, Backend, Gateway, sse_messages, wait_until


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf in, spans kept."""

    def __init__(self):
        self.spans = []
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf"
                if ok:
                    req = ExportTraceServiceRequest()
                    req.ParseFromString(body)
                    with lock:
                        for rs in req.resource_spans:
                            service = next(a.value.string_value for a in rs.resource.attributes
                                           if a.key == "service.name")
                            for ss in rs.scope_spans:
                                for s in ss.spans:
                                    receiver.spans.append(span_dict(service, s))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def find(self, service, name, **attrs):
        return [s for s in list(self.spans) if s["service"] == service and s["name"] == name
                and all(s["attrs"].get(k) == v for k, v in attrs.items())]


def span_dict(service, s):
    def value(v):
        kind = v.WhichOneof("value")
        return getattr(v, kind) if kind else None
    return {"service": service, "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
            "parent": s.parent_span_id.hex(), "kind": s.kind,
            "attrs": {a.key: value(a.value) for a in s.attributes}}


def traced_stack(tmp_path, name):
    """An OTLP receiver, and a backend and a gateway both exporting to it."""
    otlp = Receiver()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    backend = Backend(tmp_path / "r.db", f"{name}-0", extra=["--otlp-endpoint", otlp.url],
                      env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    return otlp, backend, Gateway(tmp_path, name, [backend.addr], env=env)


def test_one_trace_spans_the_gateway_and_the_backend(tmp_path):
    otlp, backend, gw = traced_stack(tmp_path, "traced")
    try:
        client_trace = secrets.token_hex(16)
        client_span = secrets.token_hex(8)
        traceparent = {"traceparent": f"00-{client_trace}-{client_span}-01"}
        with httpx2.Client(timeout=10) as c:
            url = f"{gw.http}/mcp"
            r = c.post(url, headers={"accept": ACCEPT}, json={
                "jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "traced", "version": "1"}}})
            sid = r.headers["mcp-session-id"]
            h = {"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
            assert c.post(url, headers=h, json={"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
            r = c.post(url, headers={**h, **traceparent}, json={
                "jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "list_agents", "arguments": {}}})
            assert r.status_code == 200, r.text
        def calls():
            return otlp.find("mcp-gateway", "mcp.request", **{"mcp.method": "tools/call"})
        wait_until(calls, 20, "the gateway's span")
        (gw_span,) = calls()
        # the gateway continues the client's trace
        assert gw_span["trace_id"] == client_trace and gw_span["parent"] == client_span, gw_span
        attrs = gw_span["attrs"]
        assert attrs["mcp.method"] == "tools/call" and attrs["mcp.name"] == "list_agents", attrs
        assert attrs["http.response.status_code"] == 200 and attrs["mcp.backend"] == backend.addr, attrs
        assert len(attrs["mcp.session.hash"]) == 16 and attrs["mcp.session.hash"] not in sid
        # never the session id itself, in any attribute of any span
        wait_until(lambda: any(s["trace_id"] == client_trace for s in otlp.find("registry-backend", "mcp.backend.request")),
                   20, "the backend's span")
        (be_span,) = [s for s in otlp.find("registry-backend", "mcp.backend.request") if s["trace_id"] == client_trace]
        # the backend's span is the gateway span's child: one trace, two hops
        assert be_span["parent"] == gw_span["span_id"], (be_span, gw_span)
        assert be_span["attrs"]["http.response.status_code"] == 200
        assert not any(sid in json.dumps(s["attrs"]) for s in otlp.spans)
        # a request without traceparent starts a trace of its own at the gateway
        init = otlp.find("mcp-gateway", "mcp.request", **{"mcp.method": "initialize"})
        assert init and init[0]["parent"] == "" and init[0]["trace_id"] != client_trace
    finally:
        gw.proc.stop()
        backend.proc.stop()
        otlp.server.shutdown()


def test_without_an_endpoint_nothing_is_exported_and_traceparent_passes_through(tmp_path):
    """Tracing off: the client's traceparent reaches the backend unchanged
    (the gateway is transparent), seen by a backend that echoes headers."""
    seen = {}

    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # the health check
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_POST(self):
            msg = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if msg.get("id") != "revision":  # not the gateway's probe of what it speaks
                seen["traceparent"] = self.headers.get("traceparent")
            body = b'{"jsonrpc":"2.0","id":1,"result":{}}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    echo = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    addr = f"127.0.0.1:{echo.server_address[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    gw = Gateway(tmp_path, "untraced", [addr], env=env)
    try:
        tp = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        r = httpx2.post(f"{gw.http}/mcp", headers={"accept": ACCEPT, "traceparent": tp},
                        json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10)
        assert r.status_code == 200, r.text
        assert seen["traceparent"] == tp
    finally:
        gw.proc.stop()
        echo.shutdown()


def test_a_legacy_sse_message_joins_the_trace_of_the_post_that_brought_it(tmp_path):
    from test_protocol_paths import Legacy
    otlp, backend, gw = traced_stack(tmp_path, "traced-legacy")
    s = None
    try:
        s = Legacy(gw.http)
        client_trace, client_span = secrets.token_hex(16), secrets.token_hex(8)
        r = s.http.post(s.endpoint, headers={"traceparent": f"00-{client_trace}-{client_span}-01"}, json={
            "jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "list_agents", "arguments": {}}})
        assert r.status_code == 202, r.text
        assert "result" in s.next(lambda m: m.get("id") == 9)

        def in_trace(service, name):
            return [x for x in otlp.find(service, name) if x["trace_id"] == client_trace]
        wait_until(lambda: in_trace("registry-backend", "mcp.backend.request"), 20, "the backend's span")
        wait_until(lambda: in_trace("mcp-gateway", "mcp.legacy.message"), 20, "the message's span")
        (post,) = in_trace("mcp-gateway", "mcp.request")
        (message,) = in_trace("mcp-gateway", "mcp.legacy.message")
        (be_span,) = in_trace("registry-backend", "mcp.backend.request")
        # client -> the POST's span -> the message's span -> the backend's span
        assert post["parent"] == client_span and post["attrs"]["http.response.status_code"] == 202, post
        assert message["parent"] == post["span_id"], (message, post)
        assert message["attrs"]["mcp.method"] == "tools/call" and message["attrs"]["mcp.name"] == "list_agents"
        assert be_span["parent"] == message["span_id"], (be_span, message)
    finally:
        if s:
            s.close()
        gw.proc.stop()
        backend.proc.stop()
        otlp.server.shutdown()
