"""The parts of the protocol the registry never uses, through the gateway,
spoken by hand so each message can be checked: cancellation both ways
(`notifications/cancelled` from the client to the backend, and from the
backend to the client naming the request it gave up on), `Last-Event-ID`
resumption of a broken stream, and server→client request ids — marked by
the gateway with the backend session that asked, so an answer is never
handed to a backend session that did not ask.

Backends: tests' conformance-fixture (rmcp; its `gw_*` tools are test
hooks) and @modelcontextprotocol/server-everything (resumable streams)."""
import json
import queue
import threading
import time
from urllib.parse import urljoin

import httpx2
import pytest

from conftest import ACCEPT, BIN, Backend, Gateway, Proc, metric, sse_messages, wait_until
from test_any_server import start_everything

VERSION = "2025-06-18"


def pool(name, addrs):
    listed = ", ".join(f'"{a}"' for a in addrs)
    return (f'[[pools]]\nname = "{name}"\nroute = "/{name}"\nhealth = "mcp"\nhealth_interval = "300ms"\n'
            f'discovery = {{ static = {{ backends = [{listed}] }} }}\n')


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paths")
    fixture = Proc([str(BIN / "conformance-fixture")], name="conformance-fixture")
    fixture_addr = fixture.read_line_matching(r"listening on http://([0-9.:]+)/mcp").group(1)
    everything, everything_addr = start_everything()
    backend = Backend(tmp / "registry.db", "paths-0")
    gw = Gateway(tmp, "paths", [backend.addr],
                 extra_pools=pool("fixture", [fixture_addr]) + pool("everything", [everything_addr]))
    wait_until(lambda: gw.healthy_backends("fixture") and gw.healthy_backends("everything"), 30, "both pools")
    yield gw
    for p in (gw.proc, backend.proc, fixture, everything):
        p.stop()


class Streamable:
    """One Streamable HTTP session, by hand."""

    def __init__(self, url, capabilities=None):
        self.url = url
        self.http = httpx2.Client(timeout=httpx2.Timeout(30.0))
        r = self.http.post(url, headers={"accept": ACCEPT}, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": VERSION, "capabilities": capabilities or {},
                       "clientInfo": {"name": "paths", "version": "1"}}})
        assert r.status_code == 200, r.text
        self.sid = r.headers["mcp-session-id"]
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202

    def headers(self, extra=None):
        return {"accept": ACCEPT, "mcp-session-id": self.sid, "mcp-protocol-version": VERSION, **(extra or {})}

    def post(self, msg):
        return self.http.post(self.url, headers=self.headers(), json=msg)

    def call(self, id_, name, arguments=None, meta=None):
        params = {"name": name, "arguments": arguments or {}}
        if meta:
            params["_meta"] = meta
        r = self.post({"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": params})
        assert r.status_code == 200, r.text
        msgs = sse_messages(r.text) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
        answer = [m for m in msgs if m.get("id") == id_ and "method" not in m]
        assert len(answer) == 1, msgs
        return answer[0]

    def text_of(self, id_, name, arguments=None):
        return self.call(id_, name, arguments)["result"]["content"][0]["text"]

    def stream(self, method, msg=None, extra=None):
        """An open streaming request (POST with `msg`, or GET)."""
        return self.http.stream(method, self.url, headers=self.headers(extra),
                                **({"json": msg} if msg is not None else {}))


def events(lines, deadline=None):
    """(event id, message) for each SSE event with data, until the lines end
    (or a line arrives past `deadline`)."""
    ev_id, data = None, []
    for line in lines:
        if deadline and time.monotonic() > deadline:
            return
        if line == "":
            if data and "".join(data).strip():
                yield ev_id, json.loads("\n".join(data))
            ev_id, data = None, []
        elif line.startswith("id:"):
            ev_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


class Legacy:
    """One legacy HTTP+SSE session, by hand: the stream's messages land in a queue."""

    def __init__(self, base, capabilities=None, headers=None):
        self.base = base
        self.http = httpx2.Client(timeout=httpx2.Timeout(30.0, read=None), headers=headers or {})
        self.messages = queue.Queue()
        self.endpoint = None
        ready = threading.Event()

        def read():
            with self.http.stream("GET", f"{base}/sse", headers={"accept": "text/event-stream"}) as r:
                self.response = r
                event, data = None, []
                try:
                    for line in r.iter_lines():
                        if line == "":
                            if event == "endpoint":
                                self.endpoint = urljoin(base + "/", "".join(data))
                                ready.set()
                            elif data:
                                self.messages.put(json.loads("\n".join(data)))
                            event, data = None, []
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].lstrip())
                except httpx2.HTTPError:
                    pass  # closed by the test
        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(15), "no endpoint event"
        self.post({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                   "params": {"protocolVersion": "2024-11-05", "capabilities": capabilities or {},
                              "clientInfo": {"name": "paths-legacy", "version": "1"}}})
        self.next(lambda m: m.get("id") == 1)
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def post(self, msg):
        r = self.http.post(self.endpoint, json=msg)
        assert r.status_code == 202, r.text

    def next(self, wanted, timeout=20.0):
        """The next message on the stream that `wanted` accepts (others skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "the awaited message never came"
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if wanted(m):
                return m

    def text_of(self, id_, name):
        self.post({"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": name, "arguments": {}}})
        return self.next(lambda m: m.get("id") == id_)["result"]["content"][0]["text"]

    def close(self):
        self.http.close()


def cancellations(session, id_):
    return int(session.text_of(id_, "gw_cancellations"))


def test_a_client_cancel_reaches_the_backend_over_streamable_http(gw):
    s = Streamable(f"{gw.http}/fixture/mcp")
    before = cancellations(s, 2)
    done = {}

    def long_call():
        with s.stream("POST", {"jsonrpc": "2.0", "id": 10, "method": "tools/call",
                               "params": {"name": "gw_wait_for_cancel", "arguments": {}}}) as r:
            done["status"] = r.status_code
            done["messages"] = [m for _, m in events(r.iter_lines())]
    t = threading.Thread(target=long_call, daemon=True)
    t.start()
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 10, "reason": "user"}}
    seen = []

    def cancelled():
        # sent again until the backend has the call running and sees it cancelled
        r = s.post(cancel)
        assert r.status_code == 202, r.text
        seen.append(cancellations(s, 100 + len(seen)))
        return seen[-1] == before + 1
    wait_until(cancelled, 20, "the backend to see the cancellation")
    t.join(20)
    assert not t.is_alive(), "the cancelled call's stream never ended"
    # the call never ran its 30 s: whatever the stream held, it was not "never cancelled"
    assert done["status"] == 200
    assert not any("never cancelled" in json.dumps(m) for m in done["messages"]), done


def test_a_client_cancel_reaches_the_backend_over_legacy_sse(gw):
    s = Legacy(f"{gw.http}/fixture")
    try:
        before = int(s.text_of(2, "gw_cancellations"))
        s.post({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
                "params": {"name": "gw_wait_for_cancel", "arguments": {}}})
        seen = []

        def cancelled():
            s.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 10}})
            seen.append(int(s.text_of(100 + len(seen), "gw_cancellations")))
            return seen[-1] == before + 1
        wait_until(cancelled, 20, "the backend to see the cancellation")
    finally:
        s.close()


def test_a_legacy_notification_reaches_the_backend_before_the_request_after_it(gw):
    """server-everything registers its sampling tool when it receives
    `notifications/initialized`; a legacy client posts that notification and
    its first call back to back, so a bridge that let the call overtake the
    notification got "tool not found" (seen once in CI). Twelve sessions,
    each must get the tool's sampling request, never an error."""
    for n in range(12):
        s = Legacy(f"{gw.http}/everything", capabilities={"sampling": {}})
        try:
            s.post({"jsonrpc": "2.0", "id": 40, "method": "tools/call",
                    "params": {"name": "trigger-sampling-request", "arguments": {"prompt": "hi", "maxTokens": 5}}})
            first = s.next(lambda m: m.get("method") == "sampling/createMessage" or m.get("id") == 40)
            assert first.get("method") == "sampling/createMessage", (n, first)
            s.post({"jsonrpc": "2.0", "id": first["id"],
                    "result": {"role": "assistant", "model": "m", "content": {"type": "text", "text": "ok"}}})
            done = s.next(lambda m: m.get("id") == 40)
            assert "result" in done, (n, done)
        finally:
            s.close()


def sampling_then_cancel(messages, cancel):
    """Checks the server's sampling request came before the call's result,
    and the server's cancellation names the request's id as the client saw it."""
    ask = next(m for m in messages if m.get("method") == "sampling/createMessage")
    result = next(m for m in messages if m.get("id") == 20 and "result" in m)
    assert messages.index(ask) < messages.index(result), messages
    # the gateway marks the server's request id with the backend session that asked
    assert isinstance(ask["id"], str) and ask["id"].startswith("mcpgw:"), ask
    assert cancel["params"]["requestId"] == ask["id"], (ask, cancel)
    assert result["result"]["content"][0]["text"] == "sampling timed out", result


def is_cancel(m):
    return m.get("method") == "notifications/cancelled"


def test_a_server_cancel_names_the_request_the_client_was_asked_over_streamable_http(gw):
    s = Streamable(f"{gw.http}/fixture/mcp", capabilities={"sampling": {}})
    # rmcp sends the cancellation on the session's GET stream (it is not a
    # message of the call's own stream)
    unrelated, listening = queue.Queue(), threading.Event()

    def listen():
        with s.stream("GET", extra={"accept": "text/event-stream"}) as r:
            assert r.status_code == 200
            listening.set()
            for _, m in events(r.iter_lines()):
                unrelated.put(m)
                if is_cancel(m):
                    return
    threading.Thread(target=listen, daemon=True).start()
    assert listening.wait(15), "no GET stream"
    with s.stream("POST", {"jsonrpc": "2.0", "id": 20, "method": "tools/call",
                           "params": {"name": "gw_sampling_times_out", "arguments": {}}}) as r:
        assert r.status_code == 200
        messages = []
        for _, m in events(r.iter_lines()):
            messages.append(m)  # the sampling request is never answered
            if m.get("id") == 20 and "method" not in m:
                break
    cancel = unrelated.get(timeout=15)
    sampling_then_cancel(messages + [m for m in [cancel] if not is_cancel(m)], cancel)


def test_a_server_cancel_names_the_request_the_client_was_asked_over_legacy_sse(gw):
    s = Legacy(f"{gw.http}/fixture", capabilities={"sampling": {}})
    try:
        s.post({"jsonrpc": "2.0", "id": 20, "method": "tools/call",
                "params": {"name": "gw_sampling_times_out", "arguments": {}}})
        messages = []
        s.next(lambda m: messages.append(m) or (m.get("id") == 20 and "method" not in m))
        cancels = [m for m in messages if is_cancel(m)]
        cancel = cancels[0] if cancels else s.next(is_cancel)
        sampling_then_cancel(messages, cancel)
    finally:
        s.close()


def test_last_event_id_resumes_a_broken_stream_through_the_gateway(gw):
    """The client drops a POST's stream after the first progress event, then
    resumes with Last-Event-ID (GET): every later progress event and the
    result arrive, none twice."""
    s = Streamable(f"{gw.http}/everything/mcp")
    steps = 4
    progress, result, last_id = [], None, None
    with s.stream("POST", {"jsonrpc": "2.0", "id": 30, "method": "tools/call",
                           "params": {"name": "trigger-long-running-operation",
                                      "arguments": {"duration": 1.2, "steps": steps},
                                      "_meta": {"progressToken": "p30"}}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for ev_id, m in events(r.iter_lines()):
            if m.get("method") == "notifications/progress":
                assert ev_id, "server-everything gives its events ids"
                progress.append(m["params"]["progress"])
                last_id = ev_id
                break  # the connection drops here
    assert progress == [1]
    deadline = time.monotonic() + 30
    while result is None:
        assert time.monotonic() < deadline, f"never resumed to the end: {progress}"
        with s.stream("GET", extra={"last-event-id": last_id, "accept": "text/event-stream"}) as r:
            assert r.status_code == 200, r.read()
            # replayed events come at once; a quiet stream is read again from the new last id
            for ev_id, m in events(r.iter_lines(), deadline=time.monotonic() + 1.5):
                if ev_id:
                    last_id = ev_id
                if m.get("method") == "notifications/progress" and m["params"]["progressToken"] == "p30":
                    progress.append(m["params"]["progress"])
                elif m.get("id") == 30:
                    result = m
                    break
    assert progress == list(range(1, steps + 1)), progress
    assert "completed" in result["result"]["content"][0]["text"], result


def test_a_resumed_call_stream_relays_the_rest_of_the_call_once_then_ends(gw):
    """rmcp replays a call's stream from Last-Event-ID, runs it to the call's
    end, then ends it; through the gateway the client gets the rest of the
    call once, then the end of the stream (the gateway does not open a
    resumption again when the backend ends it)."""
    s = Streamable(f"{gw.http}/fixture/mcp")
    with s.stream("POST", {"jsonrpc": "2.0", "id": 31, "method": "tools/call",
                           "params": {"name": "test_tool_with_progress", "arguments": {},
                                      "_meta": {"progressToken": "p31"}}}) as r:
        assert r.status_code == 200
        first_id, first = next((i, m) for i, m in events(r.iter_lines()) if m.get("method") == "notifications/progress")
        assert first_id, "rmcp gives a session's events ids"
        assert first["params"]["progress"] == 0  # the connection drops here
    with s.stream("GET", extra={"last-event-id": first_id, "accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        # the stream ends by itself (iteration stops); the test's timeout fails it otherwise
        replayed = [m for _, m in events(r.iter_lines())]
    progress = [m["params"]["progress"] for m in replayed if m.get("method") == "notifications/progress"]
    answers = [m for m in replayed if m.get("id") == 31]
    # rmcp replays from the last event it is told of, that one included
    assert progress[-2:] == [50, 100] and len(answers) == 1, replayed
    assert "result" in answers[0] and replayed[-1] is answers[0], replayed


def test_an_answer_for_a_backend_session_the_session_moved_from_is_refused(tmp_path):
    """A sampling request is pending on backend A; A dies and another request
    moves the session to B. The client's late answer names A's session (its
    id was marked), so the gateway refuses it instead of handing B an answer
    to a request B never made — which B could mistake for its own request
    with the same number."""
    servers = {addr: proc for proc, addr in (start_everything() for _ in range(2))}
    backend = Backend(tmp_path / "registry.db", "moved-0")
    gw = Gateway(tmp_path, "moved", [backend.addr], extra_pools=pool("everything", list(servers)))
    wait_until(lambda: len(gw.healthy_backends("everything")) == 2, 30, "the everything pool")
    try:
        s = Streamable(f"{gw.http}/everything/mcp", capabilities={"sampling": {}})
        with s.stream("POST", {"jsonrpc": "2.0", "id": 40, "method": "tools/call",
                               "params": {"name": "trigger-sampling-request",
                                          "arguments": {"prompt": "hi", "maxTokens": 5}}}) as r:
            stream = events(r.iter_lines())
            asked = next(m for _, m in stream if m.get("method") == "sampling/createMessage")
            busy = [b["addr"] for b in gw.backends("everything") if b["inflight"] > 0]
            assert len(busy) == 1, busy
            servers[busy[0]].p.kill()
            servers[busy[0]].p.wait(10)
            # the tool call's stream ends with a clear error, not silence
            rest = [m for _, m in stream]
        assert any(m.get("id") == 40 and m.get("error", {}).get("code") == -32003 for m in rest), rest
        ping = s.post({"jsonrpc": "2.0", "id": 41, "method": "ping"})
        assert ping.status_code == 200 and ping.headers.get("x-mcp-gateway-moved") == "1", (ping.status_code, ping.headers)
        before = metric(gw, "mcp_gateway_rejected_total", '{reason="upstream"}')
        late = s.post({"jsonrpc": "2.0", "id": asked["id"],
                       "result": {"role": "assistant", "model": "m", "content": {"type": "text", "text": "late"}}})
        assert late.status_code == 502, late.text
        assert late.json()["error"]["code"] == -32000, late.text
        assert metric(gw, "mcp_gateway_rejected_total", '{reason="upstream"}') == before + 1
        # the session itself carries on where it moved
        echo = s.call(42, "echo", {"message": "still here"})
        assert echo["result"]["content"][0]["text"] == "Echo: still here"
    finally:
        gw.proc.stop()
        backend.proc.stop()
        for p in servers.values():
            p.stop()


def test_a_legacy_answer_for_a_backend_session_the_session_moved_from_is_not_delivered(tmp_path):
    """The same over the legacy SSE bridge: the late answer's POST was
    accepted (legacy POSTs are answered 202 before they are relayed), so the
    bridge drops it, logs and counts it, and never sends it to the session's
    new backend; the tool call that asked got its error on the stream."""
    servers = {addr: proc for proc, addr in (start_everything() for _ in range(2))}
    backend = Backend(tmp_path / "registry.db", "moved-l")
    gw = Gateway(tmp_path, "moved-l", [backend.addr], extra_pools=pool("everything", list(servers)))
    wait_until(lambda: len(gw.healthy_backends("everything")) == 2, 30, "the everything pool")
    s = None
    try:
        s = Legacy(f"{gw.http}/everything", capabilities={"sampling": {}})
        s.post({"jsonrpc": "2.0", "id": 40, "method": "tools/call",
                "params": {"name": "trigger-sampling-request", "arguments": {"prompt": "hi", "maxTokens": 5}}})
        asked = s.next(lambda m: m.get("method") == "sampling/createMessage")
        assert isinstance(asked["id"], str) and asked["id"].startswith("mcpgw:"), asked
        busy = [b["addr"] for b in gw.backends("everything") if b["inflight"] > 0]
        assert len(busy) == 1, busy
        servers[busy[0]].p.kill()
        servers[busy[0]].p.wait(10)
        failed = s.next(lambda m: m.get("id") == 40)
        assert failed.get("error", {}).get("code") == -32003, failed
        s.post({"jsonrpc": "2.0", "id": 41, "method": "ping"})
        assert s.next(lambda m: m.get("id") == 41).get("result") == {}
        before = metric(gw, "mcp_gateway_rejected_total", '{reason="upstream"}')
        s.post({"jsonrpc": "2.0", "id": asked["id"],
                "result": {"role": "assistant", "model": "m", "content": {"type": "text", "text": "late"}}})
        wait_until(lambda: metric(gw, "mcp_gateway_rejected_total", '{reason="upstream"}') == before + 1, 15,
                   "the late answer to be refused")
        s.post({"jsonrpc": "2.0", "id": 42, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": "still here"}}})
        echo = s.next(lambda m: m.get("id") == 42)
        assert echo["result"]["content"][0]["text"] == "Echo: still here"
    finally:
        if s:
            s.close()
        gw.proc.stop()
        backend.proc.stop()
        for p in servers.values():
            p.stop()


def test_an_unmarked_or_forged_answer_id_passes_to_the_backend_to_judge(gw):
    """Ids the gateway did not mark (or marks it cannot read) are the
    backend's business: sent on unchanged, answered 202 by the backend."""
    s = Streamable(f"{gw.http}/fixture/mcp")
    for id_ in (99, "mcpgw:nothex:1", "mcpgw:0000000a:{oops"):
        r = s.post({"jsonrpc": "2.0", "id": id_, "result": {}})
        assert r.status_code == 202, (id_, r.status_code, r.text)

