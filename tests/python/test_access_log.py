"""The access log: with `--log-format json` and `--access-log`, one JSON
object per request on stderr (target "access"), saying what was asked and
how it went — and never a credential or a whole session id."""
import hashlib
import json

import httpx2

from conftest import ACCEPT, Backend, Gateway, initialize, rpc, wait_until

KEY = "access-log-test-key-0123456789"


def test_json_access_log_has_one_line_per_request_and_no_secrets(tmp_path):
    backend = Backend(tmp_path / "r.db", "log-0")
    log = open(tmp_path / "gateway.log", "w")
    auth = ("[auth]\n[[auth.keys]]\nprincipal = \"logger\"\n"
            f"sha256 = \"{hashlib.sha256(KEY.encode()).hexdigest()}\"\n")
    gw = Gateway(tmp_path, "logged", [backend.addr], extra_config=auth, stderr=log,
                 env={"MCP_GATEWAY_LOG_FORMAT": "json", "MCP_GATEWAY_ACCESS_LOG": "true", "RUST_LOG": "info"})
    try:
        headers = {"authorization": f"Bearer {KEY}"}
        with httpx2.Client(timeout=10) as c:
            url = f"{gw.http}/mcp"
            sid, _ = initialize(c, url, headers=headers)
            r = rpc(c, url, sid, "tools/call", {"name": "list_agents", "arguments": {}}, id_=7, headers=headers)
            assert r.status_code == 200
            refused = c.post(url, headers={"accept": ACCEPT, "authorization": "Bearer wrong-key-0123456789"},
                             json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert refused.status_code == 401

        def lines():
            text = (tmp_path / "gateway.log").read_text()
            return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

        def access():
            return [x for x in lines() if x.get("target") == "access"]
        # initialize, initialized, health_check (initialize's helper), tools/call, the refused ping
        wait_until(lambda: len(access()) >= 5, 10, "the access lines")
        call = next(x for x in access() if x.get("rpc") == "tools/call" and x.get("id") == "7")
        assert call["status"] == 200 and call["name"] == "list_agents" and call["principal"] == "key:logger", call
        assert call["session"] == sid[:8] and call["backend"] != "-" and call["ms"] >= 0, call
        assert call["http_method"] == "POST" and call["path"] == "/mcp" and call["client"] == "127.0.0.1"
        denied = next(x for x in access() if x["status"] == 401)
        assert denied["principal"] == "-", denied
        everything = (tmp_path / "gateway.log").read_text()
        assert sid not in everything, "a whole session id was logged"
        assert KEY not in everything and "wrong-key-0123456789" not in everything, "a credential was logged"
        # every line is JSON (log collectors parse them all)
        text_lines = [line for line in everything.splitlines() if line.strip() and not line.startswith("{")]
        assert not text_lines, text_lines[:3]
    finally:
        gw.proc.stop()
        backend.proc.stop()
        log.close()


def test_client_supplied_fields_are_cut_short_and_escaped_in_the_access_log(tmp_path):
    """A ping with a 1 MB id and a method name full of control characters
    gives an access line of a bounded size, with nothing unescaped."""
    backend = Backend(tmp_path / "r.db", "log-1")
    log = open(tmp_path / "gateway.log", "w")
    gw = Gateway(tmp_path, "logged-long", [backend.addr], stderr=log,
                 env={"MCP_GATEWAY_ACCESS_LOG": "true", "RUST_LOG": "info"})
    try:
        with httpx2.Client(timeout=10) as c:
            url = f"{gw.http}/mcp"
            c.post(url, headers={"accept": ACCEPT}, json={"jsonrpc": "2.0", "id": "x" * 1_000_000, "method": "ping"})
            c.post(url, headers={"accept": ACCEPT},
                   json={"jsonrpc": "2.0", "id": 2, "method": "evil\n\u001b[31mforged line"})

        def access_lines():
            return [line for line in (tmp_path / "gateway.log").read_text().splitlines() if "access" in line]
        wait_until(lambda: len(access_lines()) >= 2, 10, "the access lines")
        longest = max(len(line) for line in access_lines())
        assert longest < 2048, f"an access line of {longest} bytes"
        text = (tmp_path / "gateway.log").read_text()
        assert "\u001b[31mforged" not in text, "the client's control character reached the log"
        assert not any(line.startswith("forged line") for line in text.splitlines()), "a client forged a log line"
    finally:
        gw.proc.stop()
        backend.proc.stop()
        log.close()
