"""Rotating the session key: a gateway given the key before the rotation as
its previous key still routes the sessions sealed under it, seals new ones
under the current key only, counts what the previous key opened, and once
the previous key is dropped those old ids get 404 (deploy/RUNBOOK.md)."""

import os
import subprocess

import httpx2

from conftest import BIN, Backend, Gateway, initialize, metric, rpc, sse_messages

OLD = "the-session-key-before-rotation-0123"
NEW = "the-session-key-after-rotation-45678"


def tool_names(r):
    assert r.status_code == 200, r.text
    msgs = sse_messages(r.text) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
    return {t["name"] for t in msgs[-1]["result"]["tools"]}


def test_sessions_sealed_under_the_previous_key_survive_a_key_rotation(tmp_path):
    backend = Backend(tmp_path / "k.db", "keys")
    gateways = []
    try:
        old = Gateway(tmp_path, "gw-old-key", [backend.addr], key=OLD)
        gateways.append(old)
        with httpx2.Client(timeout=10) as c:
            before, instance = initialize(c, f"{old.http}/mcp")
        old.proc.stop()

        rotated = Gateway(tmp_path, "gw-rotated", [backend.addr], key=NEW,
                          env={"MCP_GATEWAY_SESSION_KEY_PREVIOUS": OLD})
        gateways.append(rotated)
        with httpx2.Client(timeout=10) as c:
            assert "get_agent" in tool_names(rpc(c, f"{rotated.http}/mcp", before, "tools/list"))
            assert metric(rotated, "mcp_gateway_session_ids_opened_with_previous_key_total") == 1
            after, _ = initialize(c, f"{rotated.http}/mcp")
            # a new id opens under the current key: the previous-key count does not move
            assert metric(rotated, "mcp_gateway_session_ids_opened_with_previous_key_total") == 1
            assert "get_agent" in tool_names(rpc(c, f"{rotated.http}/mcp", after, "tools/list"))
            assert metric(rotated, "mcp_gateway_session_ids_opened_with_previous_key_total") == 1
        rotated.proc.stop()

        dropped = Gateway(tmp_path, "gw-new-key-only", [backend.addr], key=NEW)
        gateways.append(dropped)
        with httpx2.Client(timeout=10) as c:
            assert rpc(c, f"{dropped.http}/mcp", before, "tools/list").status_code == 404
            assert "get_agent" in tool_names(rpc(c, f"{dropped.http}/mcp", after, "tools/list"))
        assert instance == "keys"
    finally:
        for g in gateways:
            g.proc.stop()
        backend.proc.stop()


def test_a_previous_session_key_too_short_stops_the_gateway_with_a_clear_error():
    env = {**os.environ, "MCP_GATEWAY_SESSION_KEY": NEW, "MCP_GATEWAY_SESSION_KEY_PREVIOUS": "short"}
    r = subprocess.run([str(BIN / "mcp-gateway"), "--http", "127.0.0.1:0", "--backend", "127.0.0.1:9"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "MCP_GATEWAY_SESSION_KEY_PREVIOUS must be at least 16 characters" in r.stderr, r.stderr


def test_an_empty_previous_session_key_means_none(tmp_path):
    # how Compose passes an optional secret that is not set: an empty variable
    backend = Backend(tmp_path / "e.db", "keys-empty")
    gw = None
    try:
        gw = Gateway(tmp_path, "gw-empty-previous", [backend.addr], key=NEW,
                     env={"MCP_GATEWAY_SESSION_KEY_PREVIOUS": ""})
        with httpx2.Client(timeout=10) as c:
            sid, _ = initialize(c, f"{gw.http}/mcp")
            assert "get_agent" in tool_names(rpc(c, f"{gw.http}/mcp", sid, "tools/list"))
        assert metric(gw, "mcp_gateway_session_ids_opened_with_previous_key_total") == 0
    finally:
        if gw:
            gw.proc.stop()
        backend.proc.stop()
