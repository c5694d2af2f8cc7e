"""Who may come in, and how fast: API keys and JWTs at the gateway, the MCP
authorization spec's resource-server side (RFC 9728 metadata, the 401
challenge), per-principal tool rules, sessions bound to their principal,
governor rate limits at their boundaries, the admin token, and reloads."""

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from conftest import (ACCEPT, BIN, DISCOVER, STATELESS, Backend, Gateway, free_port, initialize, metric, rpc,
                      sse_messages, wait_until)

CLIENT = str(BIN / "mcp-client")
SECRET = "an-hs256-secret-of-at-least-32-bytes!!"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
AUDIENCE = "https://gateway.test/mcp"
ISSUER = "https://issuer.test"
KEYS = {  # key → (principal, tier, scopes, revoked)
    "alice-key": ("alice", "gold", ["registry:read", "registry:write"], False),
    "reader-key": ("reader", "gold", ["registry:read"], False),
    "revoked-key": ("mallory", "gold", [], True),
    "team-key": ("teamonly", "gold", [], False),
    "req-key": ("req", "req", [], False),
    "tool-key": ("tooly", "tool", [], False),
    "legacy-tool-key": ("leggy", "tool", [], False),
    "sess-key": ("sessy", "sess", [], False),
    "stream-key": ("streamy", "stream", [], False),
    "load-key": ("loady", "load", [], False),
    "twin-key": ("twin", "req", [], False),
    "invent-key": ("inventor", "invent", [], False),
}
WRITE_TOOLS = {"register_agent", "update_agent", "delete_agent"}


def bearer(key):
    return {"authorization": f"Bearer {key}"}


def auth_config(keys=KEYS, jwks: Path | None = None, extra_rules=""):
    lines = ['[auth]', 'authorization_servers = ["https://issuer.test"]']
    for key, (who, tier, scopes, revoked) in keys.items():
        lines += ["[[auth.keys]]", f'principal = "{who}"',
                  f'sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"',
                  f'tier = "{tier}"', f"scopes = {json.dumps(scopes)}",
                  f"revoked = {'true' if revoked else 'false'}"]
    lines += ["[auth.jwt]", f'audience = "{AUDIENCE}"', f'issuer = "{ISSUER}"',
              'hs256_secret_env = "TEST_JWT_SECRET"', 'tier_claim = "tier"']
    if jwks:
        lines.append(f'jwks_file = "{jwks}"')
    lines += [
        # writers: everything
        "[[auth.rules]]", 'scopes = ["registry:write"]',
        # readers: no write tools
        "[[auth.rules]]", 'scopes = ["registry:read"]', f"deny_tools = {json.dumps(sorted(WRITE_TOOLS))}",
        'required_scope = "registry:write"',
        # one principal kept to the team pool
        "[[auth.rules]]", 'principals = ["key:teamonly"]', 'pools = ["team"]',
        extra_rules,
        "[admin]", 'token_env = "TEST_ADMIN_TOKEN"',
    ]
    return "\n".join(lines) + "\n"


TIERS = """
[limits.tiers.default]
requests_per_second = 10000
[limits.tiers.gold]
requests_per_second = 10000
[limits.tiers.req]
requests_per_second = 2
burst = 8
[limits.tiers.load]
requests_per_second = 5
burst = 30
[limits.tiers.tool]
requests_per_second = 10000
tool_limits = { get_agent = 20 }
[limits.tiers.invent]
requests_per_second = 10000
tool_calls_per_minute = 3
[limits.tiers.sess]
requests_per_second = 10000
sessions_per_minute = 20
[limits.tiers.stream]
requests_per_second = 10000
max_streams = 2
"""


def rsa_jwks(tmp: Path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "rsa-1", "alg": "RS256", "use": "sig"})
    path = tmp / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return key, path


def token(sub="jwt-user", key=SECRET, alg="HS256", kid=None, **claims):
    now = int(time.time())
    body = {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300, **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


class AuthStack:
    pass


@pytest.fixture(scope="module")
def authstack(tmp_path_factory, garbage_backend):
    tmp = tmp_path_factory.mktemp("auth")
    rsa_key, jwks = rsa_jwks(tmp)
    backends = [Backend(tmp / "auth.db", f"auth-{i}") for i in range(2)]
    extra = f"""
[[pools]]
name = "team"
route = "/team"
discovery = {{ static = {{ backends = ["{backends[0].addr}"] }} }}

[[pools]]
name = "garbage"
route = "/garbage"
discovery = {{ static = {{ backends = ["{garbage_backend}"] }} }}

[[pools]]
name = "open"
route = "/open"
auth = "optional"
discovery = {{ static = {{ backends = ["{backends[1].addr}"] }} }}
"""
    gw = Gateway(tmp, "authgw", [b.addr for b in backends], extra_pools=extra, limits=TIERS,
                 extra_config=auth_config(jwks=jwks),
                 env={"TEST_JWT_SECRET": SECRET, "TEST_ADMIN_TOKEN": ADMIN_TOKEN}, admin_token=ADMIN_TOKEN)
    s = AuthStack()
    s.gw, s.rsa_key, s.jwks, s.backends, s.tmp = gw, rsa_key, jwks, backends, tmp
    yield s
    gw.proc.stop()
    for b in backends:
        b.proc.stop()




def backend_requests(gw, pool="registry"):
    return sum(b["requests"] for b in gw.backends(pool))


def answer(r):
    """The last JSON-RPC message of a response, JSON or SSE."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        return sse_messages(r.text)[-1]
    return r.json()


def discover(gw, headers, path="/mcp"):
    return httpx2.post(f"{gw.http}{path}", headers={**STATELESS, **headers}, json=DISCOVER, timeout=10)


# --- credentials ---------------------------------------------------------------


def bad_credentials(s):
    now = int(time.time())
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "missing": {},
        "malformed header": {"authorization": "Bearer"},
        "unknown key": bearer("no-such-key"),
        "revoked key": bearer("revoked-key"),
        "revoked key as x-api-key": {"x-api-key": "revoked-key"},
        "malformed jwt": bearer("aaa.bbb.ccc"),
        "expired jwt": bearer(token(exp=now - 120)),
        "jwt not yet valid": bearer(token(nbf=now + 600)),
        "jwt for another audience": bearer(token(aud="https://elsewhere.test/mcp")),
        "jwt from another issuer": bearer(token(iss="https://evil.test")),
        "jwt signed with another secret": bearer(token(key="some-other-secret-that-is-long-enough!")),
        "jwt signed by an unknown rsa key": bearer(token(key=other_rsa, alg="RS256", kid="rsa-1")),
        "jwt without exp": bearer(jwt.encode({"sub": "x", "aud": AUDIENCE, "iss": ISSUER}, SECRET, "HS256")),
        "jwt without iss": bearer(jwt.encode({"sub": "x", "aud": AUDIENCE, "exp": now + 300}, SECRET, "HS256")),
    }


@pytest.mark.parametrize("case", [
    "missing", "malformed header", "unknown key", "revoked key", "revoked key as x-api-key", "malformed jwt",
    "expired jwt", "jwt not yet valid", "jwt for another audience", "jwt from another issuer",
    "jwt signed with another secret", "jwt signed by an unknown rsa key", "jwt without exp", "jwt without iss"])
def test_bad_credentials_get_401_with_the_resource_metadata_challenge(authstack, case):
    gw = authstack.gw
    before = backend_requests(gw)
    r = httpx2.post(f"{gw.http}/mcp", headers={"accept": ACCEPT, **bad_credentials(authstack)[case]},
                    json={"jsonrpc": "2.0", "id": 41, "method": "initialize", "params": {}}, timeout=10)
    assert r.status_code == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer "), challenge
    assert f'resource_metadata="{gw.http}/.well-known/oauth-protected-resource"' in challenge, challenge
    err = r.json()
    # decided before the body is read (an unauthenticated body is never parsed): id null
    assert err["id"] is None and err["error"]["code"] == -32004, err
    assert err["error"]["message"].startswith("unauthorized"), err
    assert backend_requests(gw) == before, "a refused request reached a backend"


@pytest.mark.parametrize("how", ["api key bearer", "api key header", "hs256 jwt", "rs256 jwt from the jwks"])
def test_good_credentials_are_let_in(authstack, how):
    headers = {
        "api key bearer": bearer("alice-key"),
        "api key header": {"x-api-key": "alice-key"},
        "hs256 jwt": bearer(token(scope="registry:read registry:write")),
        "rs256 jwt from the jwks": bearer(token(key=authstack.rsa_key, alg="RS256", kid="rsa-1")),
    }[how]
    r = discover(authstack.gw, headers)
    assert r.status_code == 200, r.text
    assert "result" in answer(r), r.text


def test_protected_resource_metadata_is_served_at_the_root_and_path_suffixed(authstack):
    gw = authstack.gw
    root = httpx2.get(f"{gw.http}/.well-known/oauth-protected-resource", timeout=5)
    assert root.status_code == 200 and root.headers["content-type"] == "application/json"
    doc = root.json()
    assert doc["resource"] == f"{gw.http}/mcp"
    assert doc["authorization_servers"] == ["https://issuer.test"]
    assert doc["bearer_methods_supported"] == ["header"]
    team = httpx2.get(f"{gw.http}/.well-known/oauth-protected-resource/team", timeout=5).json()
    assert team["resource"] == f"{gw.http}/team/mcp"
    # the 401 for a pool's endpoint names that pool's document
    r = httpx2.post(f"{gw.http}/team/mcp", headers={"accept": ACCEPT}, json=DISCOVER, timeout=5)
    assert r.status_code == 401
    assert f'resource_metadata="{gw.http}/.well-known/oauth-protected-resource/team"' in r.headers["www-authenticate"]


def test_a_principal_outside_its_pools_gets_403(authstack):
    gw = authstack.gw
    assert discover(gw, bearer("team-key"), "/team/mcp").status_code == 200
    r = discover(gw, bearer("team-key"))
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == -32005
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]


def test_an_optional_pool_takes_anonymous_callers_but_not_bad_credentials(authstack):
    gw = authstack.gw
    assert discover(gw, {}, "/open/mcp").status_code == 200
    assert discover(gw, bearer("alice-key"), "/open/mcp").status_code == 200
    assert discover(gw, bearer("no-such-key"), "/open/mcp").status_code == 401


# --- authorization: tools ---------------------------------------------------------


def test_a_read_only_key_sees_no_write_tools_and_cannot_delete(authstack):
    gw = authstack.gw

    async def session(key):
        async with httpx2.AsyncClient(headers=bearer(key), timeout=15) as http:
            async with streamable_http_client(f"{gw.http}/mcp", http_client=http) as (r, w, *_):
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    return {t.name for t in (await s.list_tools()).tools}

    async def main():
        writer_tools = await session("alice-key")
        reader_tools = await session("reader-key")
        return writer_tools, reader_tools

    writer_tools, reader_tools = asyncio.run(main())
    assert WRITE_TOOLS <= writer_tools
    assert reader_tools == writer_tools - WRITE_TOOLS, reader_tools

    with httpx2.Client(timeout=10) as c:
        url = f"{gw.http}/mcp"
        alice, _ = initialize(c, url, bearer("alice-key"))
        reg = c.post(url, headers={"accept": ACCEPT, "mcp-session-id": alice, "mcp-protocol-version": "2025-06-18",
                                   **bearer("alice-key")},
                     json={"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
                         "name": "register_agent", "arguments": {"agent_id": "keep-me", "agent_url": "http://127.0.0.1:9/a"}}})
        assert reg.status_code == 200, reg.text
        reader, _ = initialize(c, url, bearer("reader-key"))
        before = backend_requests(gw)
        denied = c.post(url, headers={"accept": ACCEPT, "mcp-session-id": reader, "mcp-protocol-version": "2025-06-18",
                                      **bearer("reader-key")},
                        json={"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {
                            "name": "delete_agent", "arguments": {"agent_id": "keep-me"}}})
        assert denied.status_code == 403, denied.text
        err = denied.json()
        assert err["id"] == 6 and err["error"]["code"] == -32005
        assert "delete_agent" in err["error"]["message"]
        assert 'error="insufficient_scope", scope="registry:write"' in denied.headers["www-authenticate"]
        assert backend_requests(gw) == before, "the denied call reached a backend"
        got = c.post(url, headers={"accept": ACCEPT, "mcp-session-id": alice, "mcp-protocol-version": "2025-06-18",
                                   **bearer("alice-key")},
                     json={"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
                         "name": "get_agent", "arguments": {"agent_id": "keep-me"}}})
        msgs = sse_messages(got.text) if got.headers["content-type"].startswith("text/event-stream") else [got.json()]
        assert json.loads(msgs[-1]["result"]["content"][0]["text"])["agent_id"] == "keep-me"


def test_a_legacy_reader_is_denied_on_its_stream_too(authstack):
    gw = authstack.gw

    async def main():
        factory = lambda headers=None, timeout=None, auth=None: httpx2.AsyncClient(
            headers={**(headers or {}), **bearer("reader-key")}, timeout=timeout, auth=auth)
        async with sse_client(f"{gw.http}/sse", httpx_client_factory=factory) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                names = {t.name for t in (await s.list_tools()).tools}
                with pytest.raises(Exception) as denied:
                    await s.call_tool("delete_agent", {"agent_id": "keep-me"})
                return names, str(denied.value)

    names, denied = asyncio.run(main())
    assert not names & WRITE_TOOLS and "get_agent" in names, names
    assert "delete_agent" in denied, denied


# --- sessions belong to their principal ------------------------------------------------


def test_a_session_id_with_another_principals_credentials_is_unknown(authstack):
    gw = authstack.gw
    with httpx2.Client(timeout=10) as c:
        url = f"{gw.http}/mcp"
        sid, _ = initialize(c, url, bearer("alice-key"))
        ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
        hdr = {"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
        assert c.post(url, headers={**hdr, **bearer("alice-key")}, json=ping).status_code == 200
        as_jwt = c.post(url, headers={**hdr, **bearer(token(sub="alice", scope="registry:write"))}, json=ping)
        assert as_jwt.status_code == 404, "a token whose sub is 'alice' is not the API key of principal alice"
        other = c.post(url, headers={**hdr, **bearer("reader-key")}, json=ping)
        assert other.status_code == 404, other.text
        assert other.json()["error"]["code"] == -32001
        assert c.post(url, headers=hdr, json=ping).status_code == 401
        # an anonymous session on the optional pool is not alice's either
        open_url = f"{gw.http}/open/mcp"
        anon, _ = initialize(c, open_url)
        stolen = c.post(open_url, headers={**hdr, "mcp-session-id": anon, **bearer("alice-key")}, json=ping)
        assert stolen.status_code == 404, stolen.text
        assert c.post(open_url, headers={**hdr, "mcp-session-id": anon}, json=ping).status_code == 200


def legacy_stream(gw, key):
    """Opens GET /sse with `key`; returns (socket, the /messages path, bytes read so far)."""
    s = socket.create_connection(("127.0.0.1", gw.http_port))
    s.sendall(f"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    s.settimeout(10)
    buf = b""
    while b"sessionId=" not in buf or b"\n\n" not in buf.split(b"event: endpoint", 1)[-1]:
        chunk = s.recv(4096)
        assert chunk, buf
        buf += chunk
    path = next(line for line in buf.decode().splitlines() if line.startswith("data: "))[6:].strip()
    return s, path, buf


def test_a_legacy_session_used_with_another_principals_credentials_is_unknown(authstack):
    gw = authstack.gw
    s, path, buf = legacy_stream(gw, "alice-key")
    try:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        with httpx2.Client(timeout=10) as c:
            post = lambda msg, creds: c.post(f"{gw.http}{path}", json=msg, headers=creds)
            assert post(init, bearer("alice-key")).status_code == 202
            while b'"id":1,' not in buf.replace(b" ", b""):  # its answer on the stream: relayed and done
                chunk = s.recv(4096)
                assert chunk, buf
                buf += chunk
            before = backend_requests(gw)
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
            for creds in (bearer("reader-key"), bearer(token(sub="alice"))):
                other = post(ping, creds)
                assert other.status_code == 404, other.text
                assert other.json()["error"]["code"] == -32001
            assert post(ping, {}).status_code == 401
            assert backend_requests(gw) == before, "another principal's message reached the backend"
            assert post(ping, bearer("alice-key")).status_code == 202
    finally:
        s.close()


def test_a_jwt_whose_subject_is_a_keys_principal_has_its_own_budget(authstack):
    gw = authstack.gw
    with httpx2.Client(timeout=10) as c:
        go = lambda creds: c.post(f"{gw.http}/mcp", headers={**STATELESS, **creds}, json=DISCOVER)
        # the key of principal "twin" (tier req: burst 8) spends its budget …
        passed, refused, _ = until_limited(lambda: go(bearer("twin-key")), most=200)
        assert passed >= 8 and refused.status_code == 429
        # … a token whose sub is "twin", same tier, still has its own
        assert go(bearer(token(sub="twin", tier="req"))).status_code == 200, "the token shared the key's budget"


def test_backends_see_the_principal_never_the_token(authstack):
    gw = authstack.gw
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    r = httpx2.post(f"{gw.http}/garbage/mcp", json=body, timeout=10, headers={
        "accept": ACCEPT, "x-garbage": "echo-headers", "x-mcp-principal": "forged-admin", **bearer("alice-key")})
    seen = r.json()
    assert seen.get("x-mcp-principal") == "key:alice", seen
    assert "authorization" not in seen and "x-api-key" not in seen, seen
    r = httpx2.post(f"{gw.http}/garbage/mcp", json=body, timeout=10, headers={
        "accept": ACCEPT, "x-garbage": "echo-headers", "x-api-key": "alice-key"})
    assert "x-api-key" not in r.json() and r.json()["x-mcp-principal"] == "key:alice"
    r = httpx2.post(f"{gw.http}/garbage/mcp", json=body, timeout=10, headers={
        "accept": ACCEPT, "x-garbage": "echo-headers", **bearer(token(sub="bob"))})
    assert r.json()["x-mcp-principal"] == f"jwt:{ISSUER.replace(':', '%3A')}:bob", r.json()


def test_backends_never_see_a_clients_forged_principal_or_address_headers(authstack):
    gw = authstack.gw
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    forged = {"x_mcp_principal": "forged-admin", "x-mcp_principal": "forged-admin",
              "forwarded": "for=10.6.6.6;host=evil.example;proto=https", "x-real-ip": "10.6.6.6",
              "x_real_ip": "10.6.6.6", "x-forwarded-host": "evil.example", "x_forwarded_for": "10.6.6.6"}
    r = httpx2.post(f"{gw.http}/garbage/mcp", json=body, timeout=10,
                    headers={"accept": ACCEPT, "x-garbage": "echo-headers", **forged, **bearer("alice-key")})
    seen = r.json()
    assert seen.get("x-mcp-principal") == "key:alice", seen
    for name in forged:
        assert name not in seen, (name, seen)
    assert "10.6.6.6" not in json.dumps(seen) and "evil.example" not in json.dumps(seen), seen


# --- bodies whose routing fields could be read two ways ---------------------------------------


def raw_call(c, url, sid, key, params_json: str, id_=1):
    """A tools/call with `params` as raw JSON text (duplicate keys survive)."""
    body = f'{{"jsonrpc":"2.0","id":{id_},"method":"tools/call","params":{params_json}}}'
    return c.post(url, content=body.encode(), headers={
        "accept": ACCEPT, "content-type": "application/json", "mcp-session-id": sid,
        "mcp-protocol-version": "2025-06-18", **bearer(key)})


@pytest.mark.parametrize("params", [
    '{"name":"get_agent","name":"delete_agent","arguments":{"agent_id":"keep-me"}}',
    '{"name":null,"name":"delete_agent","arguments":{"agent_id":"keep-me"}}',
    '{"name":"get_agent","n\\u0061me":"delete_agent","arguments":{"agent_id":"keep-me"}}',
    '{"name":["delete_agent"],"arguments":{"agent_id":"keep-me"}}',
    '{"arguments":{"agent_id":"keep-me"}}',
])
def test_a_tool_call_whose_name_reads_two_ways_is_refused_before_any_backend(authstack, params):
    gw = authstack.gw
    url = f"{gw.http}/mcp"
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, url, bearer("reader-key"))
        before = backend_requests(gw)
        r = raw_call(c, url, sid, "reader-key", params, id_=31)
        assert r.status_code == 400, r.text
        err = r.json()
        # refused as an invalid request, as JSON-RPC has it (id null: the message was not read)
        assert err["id"] is None and err["error"]["code"] == -32600, err
        assert "params" in err["error"]["message"], err
        assert backend_requests(gw) == before, "an ambiguous call reached a backend"


def test_tool_names_longer_than_the_spec_allows_are_refused(authstack):
    gw = authstack.gw
    url = f"{gw.http}/mcp"
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, url, bearer("alice-key"))
        before = backend_requests(gw)
        r = raw_call(c, url, sid, "alice-key", json.dumps({"name": "t" * 129, "arguments": {}}), id_=32)
        assert r.status_code == 400 and r.json()["error"]["code"] == -32600, r.text
        assert "1 to 128 characters" in r.json()["error"]["message"]
        assert backend_requests(gw) == before
        # 128 characters is a name (the server says it does not know it)
        ok = raw_call(c, url, sid, "alice-key", json.dumps({"name": "t" * 128, "arguments": {}}), id_=33)
        assert ok.status_code == 200, ok.text


def test_invented_tool_names_share_one_limit_and_add_no_keys(authstack):
    gw = authstack.gw
    url = f"{gw.http}/mcp"
    with httpx2.Client(timeout=10) as c:
        init = c.post(url, headers={"accept": ACCEPT, **bearer("invent-key")}, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        sid = init.headers["mcp-session-id"]  # (no tool called yet: conftest's initialize calls one)
        listed = rpc(c, url, sid, "tools/list", headers=bearer("invent-key"))
        assert listed.status_code == 200 and "get_agent" in listed.text
        keys_before = metric(gw, "mcp_gateway_rate_limit_keys")
        # tier invent: 3 calls a minute per tool; names no server listed share one budget
        for i in range(3):
            r = call_tool(c, url, sid, "invent-key", f"invented-{i}", {}, 40 + i)
            assert r.status_code == 200, (i, r.text)
        assert metric(gw, "mcp_gateway_rate_limit_keys") <= keys_before + 1
        assert_limited(call_tool(c, url, sid, "invent-key", "invented-99", {}, 49))
        # a tool the pool's servers listed keeps a budget of its own
        assert call_tool(c, url, sid, "invent-key", "get_agent", {"agent_id": "x"}, 50).status_code == 200


# --- limits at their boundaries --------------------------------------------------------


def until_limited(go, most):
    """Sends `go()` until the first 429: (requests that passed, the refused
    response, seconds it took). A limiter refills while the requests go out,
    so with burst B and rate R per second between B and B + R*seconds + 1
    pass; a slow machine moves the count within those bounds, never out."""
    started = time.monotonic()
    passed = 0
    for _ in range(most):
        r = go()
        if r.status_code == 429:
            return passed, r, time.monotonic() - started
        assert r.status_code == 200, r.text
        passed += 1
    raise AssertionError(f"{most} requests and none refused")


def assert_limited(r, code=-32023):
    assert r.status_code == 429, r.text
    wait = int(r.headers["retry-after"])
    assert wait >= 1
    err = r.json()["error"]
    assert err["code"] == code and err["data"]["retryAfterSeconds"] == wait, err
    return wait


def test_requests_per_principal_allow_the_burst_then_429_then_again_after_the_wait(authstack):
    gw = authstack.gw
    with httpx2.Client(timeout=10) as c:
        go = lambda: c.post(f"{gw.http}/mcp", headers={**STATELESS, **bearer("req-key")}, json=DISCOVER)
        passed, refused, took = until_limited(go, most=200)
        # tier req: burst 8, then 2 a second
        assert 8 <= passed <= 8 + 2 * took + 1, (passed, took)
        wait = assert_limited(refused)
        assert metric(gw, "mcp_gateway_rejected_total", '{reason="limit"}') >= 1
        # another principal is not affected
        assert c.post(f"{gw.http}/mcp", headers={**STATELESS, **bearer("alice-key")}, json=DISCOVER).status_code == 200
        time.sleep(wait)  # what Retry-After asks for
        assert go().status_code == 200


def call_tool(c, url, sid, key, name, args, id_):
    return c.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18",
                                **bearer(key)},
                  json={"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": name, "arguments": args}})


def test_tool_calls_are_limited_per_tool(authstack):
    gw = authstack.gw
    url = f"{gw.http}/mcp"
    with httpx2.Client(timeout=10) as c:
        sid, _ = initialize(c, url, bearer("tool-key"))
        ids = iter(range(100, 10_000))
        passed, r, took = until_limited(
            lambda: call_tool(c, url, sid, "tool-key", "get_agent", {"agent_id": "nobody"}, next(ids)), most=200)
        # tool_limits: get_agent 20 a minute (one every 3 s)
        assert 20 <= passed <= 20 + took / 3 + 1, (passed, took)
        wait = assert_limited(r)
        assert r.json()["id"] == 100 + passed
        # other tools are not limited by get_agent's budget
        assert call_tool(c, url, sid, "tool-key", "health_check", {}, 201).status_code == 200
        time.sleep(wait)
        assert call_tool(c, url, sid, "tool-key", "get_agent", {"agent_id": "nobody"}, 202).status_code == 200


def test_a_legacy_session_over_its_tool_limit_gets_429_and_the_error_on_its_stream(authstack):
    gw = authstack.gw
    s, path, buf = legacy_stream(gw, "legacy-tool-key")
    try:
        with httpx2.Client(timeout=10, headers=bearer("legacy-tool-key")) as c:
            post = lambda msg: c.post(f"{gw.http}{path}", json=msg)
            assert post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}).status_code == 202
            assert post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
            for i in range(20):
                assert post({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                             "params": {"name": "get_agent", "arguments": {"agent_id": "x"}}}).status_code == 202
            refused = post({"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                            "params": {"name": "get_agent", "arguments": {"agent_id": "x"}}})
            assert_limited(refused)
        # the stream answers every id: 20 results and, for 99, the rate-limit error
        # (in any order: the session's calls run side by side)
        deadline = time.monotonic() + 15
        answers = {}
        expected = {99, *range(10, 30)}
        while time.monotonic() < deadline and not expected <= answers.keys():
            chunk = s.recv(65536)
            assert chunk, "stream ended"
            buf += chunk
            for block in buf.decode(errors="replace").replace("\r\n", "\n").split("\n\n"):
                for line in block.split("\n"):
                    if line.startswith("data: {"):
                        try:
                            msg = json.loads(line[6:])
                        except ValueError:
                            continue
                        if "id" in msg:
                            answers[msg["id"]] = msg
        assert answers[99]["error"]["code"] == -32023, answers.get(99)
        assert answers[99]["error"]["data"]["retryAfterSeconds"] >= 1
        assert all("result" in answers[10 + i] for i in range(20)), sorted(answers)
    finally:
        s.close()


def test_new_sessions_are_limited_per_principal(authstack):
    gw = authstack.gw
    url = f"{gw.http}/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    with httpx2.Client(timeout=10) as c:
        def opens():
            r = c.post(url, headers={"accept": ACCEPT, **bearer("sess-key")}, json=init)
            assert r.status_code == 429 or r.headers.get("mcp-session-id"), r.text
            return r
        passed, r, took = until_limited(opens, most=200)
        # sessions_per_minute 20 (one every 3 s)
        assert 20 <= passed <= 20 + took / 3 + 1, (passed, took)
        wait = assert_limited(r)
        assert "new sessions" in r.json()["error"]["message"]
        time.sleep(wait)
        assert c.post(url, headers={"accept": ACCEPT, **bearer("sess-key")}, json=init).status_code == 200


def test_open_streams_are_capped_per_principal(authstack):
    gw = authstack.gw
    url = f"{gw.http}/sse"
    hdr = {"accept": "text/event-stream", **bearer("stream-key")}
    with httpx2.Client(timeout=10) as c:
        first = c.stream("GET", url, headers=hdr).__enter__()
        second = c.stream("GET", url, headers=hdr).__enter__()
        try:
            assert first.status_code == 200 and second.status_code == 200
            r = c.get(url, headers=hdr)
            assert_limited(r)
            assert "open streams" in r.json()["error"]["message"]
            # someone else still gets a stream
            with c.stream("GET", url, headers={"accept": "text/event-stream", **bearer("alice-key")}) as other:
                assert other.status_code == 200
            first.close()

            def third_opens():
                with c.stream("GET", url, headers=hdr) as again:
                    return again.status_code == 200
            wait_until(third_opens, 10, "a closed stream to free its place")
        finally:
            first.close()
            second.close()


def test_a_spray_of_distinct_principals_keeps_the_limiter_within_its_cap(tmp_path):
    backend = Backend(tmp_path / "spray.db", "spray")
    cap = 1000
    gw = Gateway(tmp_path, "spray", [backend.addr],
                 limits=f"[limits.tiers.default]\nrequests_per_second = 5\n[limits.global]\nmax_keys = {cap}\n",
                 extra_config=auth_config(keys={}), env={"TEST_JWT_SECRET": SECRET, "TEST_ADMIN_TOKEN": ADMIN_TOKEN},
                 admin_token=ADMIN_TOKEN)
    n = 100_000
    try:
        tokens = [token(sub=f"spray-{i}") for i in range(n)]

        def send(chunk):
            # raw keep-alive HTTP/1.1: 100,000 requests in seconds, not minutes
            statuses = []
            sock = socket.create_connection(("127.0.0.1", gw.http_port), timeout=10)
            reader = sock.makefile("rb")
            for t in chunk:
                sock.sendall((f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {ACCEPT}\r\n"
                              f"Content-Type: application/json\r\nAuthorization: Bearer {t}\r\n"
                              "Content-Length: 1\r\n\r\n{").encode())
                status = int(reader.readline().split()[1])
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                reader.read(length)
                statuses.append(status)
            sock.close()
            return statuses

        with ThreadPoolExecutor(4) as pool:
            statuses = [s for part in pool.map(send, [tokens[i::4] for i in range(4)]) for s in part]
        assert statuses.count(400) == n, {s: statuses.count(s) for s in set(statuses)}
        keys = metric(gw, "mcp_gateway_rate_limit_keys")
        assert 0 < keys <= cap, keys
        rss_mib = gw.proc.rss_kib() / 1024
        assert rss_mib < 200, rss_mib
    finally:
        gw.proc.stop()
        backend.proc.stop()


def test_a_flood_of_new_principals_does_not_reset_a_busy_principals_limit(tmp_path):
    backend = Backend(tmp_path / "lru.db", "lru")
    keys = {"busy-key": ("busy", "slow", [], False)}
    tiers = ("[limits.tiers.default]\nrequests_per_second = 10000\n"
             "[limits.tiers.slow]\nrequests_per_second = 1\nburst = 20\n"
             "[limits.global]\nmax_keys = 16\n")
    gw = Gateway(tmp_path, "lru", [backend.addr], limits=tiers, extra_config=auth_config(keys=keys),
                 env={"TEST_JWT_SECRET": SECRET, "TEST_ADMIN_TOKEN": ADMIN_TOKEN}, admin_token=ADMIN_TOKEN)
    try:
        with httpx2.Client(timeout=10) as c:
            go = lambda creds: c.post(f"{gw.http}/mcp", headers={**STATELESS, **creds}, json=DISCOVER)
            passed, _, _ = until_limited(lambda: go(bearer("busy-key")), most=200)
            assert passed >= 20
            started = time.monotonic()
            again = 0
            # 200 new principals of the same tier (so the same tables), 12 times
            # the key cap, while the busy one keeps asking
            for i in range(200):
                assert go(bearer(token(sub=f"new-{i}", tier="slow"))).status_code == 200
                again += go(bearer("busy-key")).status_code == 200
            took = time.monotonic() - started
            # one a second comes back by the rate; a table started over would give all 20 back
            assert again <= took + 1, (again, took)
            assert metric(gw, "mcp_gateway_rate_limit_keys") <= 16 + 2
    finally:
        gw.proc.stop()
        backend.proc.stop()


def test_a_rule_naming_a_bare_principal_is_refused_when_keys_and_jwts_are_both_configured(tmp_path):
    config = tmp_path / "ambiguous.toml"
    config.write_text('[listen]\nhttp = "127.0.0.1:0"\n' +
                      auth_config(keys={"alice-key": KEYS["alice-key"]}, extra_rules=(
                          '[[auth.rules]]\nprincipals = ["alice"]\ndeny_tools = ["delete_agent"]')) +
                      '[[pools]]\nname = "r"\ndiscovery = { static = { backends = ["127.0.0.1:9"] } }\n')
    env = {**os.environ, "TEST_JWT_SECRET": SECRET, "TEST_ADMIN_TOKEN": ADMIN_TOKEN}
    out = subprocess.run([str(BIN / "mcp-gateway"), "--config", str(config), "--check-config"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode != 0, out.stdout
    assert '"key:alice" or "jwt:alice"' in out.stderr, out.stderr
    config.write_text(config.read_text().replace('principals = ["alice"]', 'principals = ["key:alice"]'))
    ok = subprocess.run([str(BIN / "mcp-gateway"), "--config", str(config), "--check-config"],
                        capture_output=True, text=True, timeout=30, env=env)
    assert ok.returncode == 0, ok.stderr


def test_connections_over_the_per_address_rate_are_closed_at_accept(tmp_path):
    backend = Backend(tmp_path / "conn.db", "conn")
    gw = Gateway(tmp_path, "conn", [backend.addr],
                 limits="[limits.global]\nper_ip_connections_per_second = 1\nper_ip_connection_burst = 40\n")
    try:
        held = []
        refused = 0
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", gw.http_port), timeout=5)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            if data.startswith(b"HTTP/1.1 200"):
                held.append(s)
            else:
                refused += 1
                s.close()
        assert 40 <= len(held) <= 45, len(held)
        assert refused == 60 - len(held)
        assert metric(gw, "mcp_gateway_connections_refused_total") == refused
        for s in held:
            s.close()
    finally:
        gw.proc.stop()
        backend.proc.stop()


# --- the admin API ----------------------------------------------------------------------


def test_the_admin_api_needs_its_token(authstack):
    gw = authstack.gw
    assert httpx2.get(f"{gw.admin}/backends", timeout=5).status_code == 401
    wrong = httpx2.get(f"{gw.admin}/backends", headers=bearer("not-the-token"), timeout=5)
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert httpx2.post(f"{gw.admin}/reload", headers=bearer("alice-key"), timeout=5).status_code == 401
    assert httpx2.get(f"{gw.admin}/backends", headers=gw.admin_headers, timeout=5).status_code == 200
    assert httpx2.get(f"{gw.admin}/metrics", timeout=5).status_code == 401
    # the probe path alone is open, and says nothing but up/draining
    health = httpx2.get(f"{gw.admin}/health", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert httpx2.post(f"{gw.admin}/health", timeout=5).status_code == 401


def test_without_a_token_the_admin_api_refuses_browser_writes(tmp_path):
    backend = Backend(tmp_path / "csrf.db", "csrf")
    gw = Gateway(tmp_path, "csrf", [backend.addr])
    try:
        addr = backend.addr
        forged = httpx2.post(f"{gw.admin}/backends/disable?addr={addr}", timeout=5,
                             headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"})
        assert forged.status_code == 403, forged.text
        assert gw.healthy_backends() == [addr] and not gw.backends()[0].get("disabled")
        assert httpx2.get(f"{gw.admin}/backends", headers={"origin": "https://x.example"}, timeout=5).status_code == 200
        assert httpx2.post(f"{gw.admin}/backends/disable?addr={addr}", timeout=5).status_code == 200
    finally:
        gw.proc.stop()
        backend.proc.stop()


def test_an_admin_listener_beyond_loopback_needs_a_token(tmp_path):
    config = tmp_path / "exposed.toml"
    config.write_text('[listen]\nhttp = "127.0.0.1:0"\nadmin = "0.0.0.0:0"\n'
                      '[[pools]]\nname = "r"\ndiscovery = { static = { backends = ["127.0.0.1:9"] } }\n')
    env = {k: v for k, v in os.environ.items() if k != "MCP_GATEWAY_ADMIN_TOKEN"}
    out = subprocess.run([str(BIN / "mcp-gateway"), "--config", str(config)], capture_output=True, text=True,
                         timeout=30, env=env)
    assert out.returncode != 0
    assert "not on loopback" in out.stderr and "MCP_GATEWAY_ADMIN_TOKEN" in out.stderr, out.stderr
    short = subprocess.run([str(BIN / "mcp-gateway"), "--config", str(config)], capture_output=True, text=True,
                           timeout=30, env={**env, "MCP_GATEWAY_ADMIN_TOKEN": "too-short"})
    assert short.returncode != 0 and "16+ characters" in short.stderr, short.stderr


# --- reloads --------------------------------------------------------------------------------


def test_reload_takes_new_keys_keeps_sessions_and_refuses_an_invalid_file(tmp_path):
    backend = Backend(tmp_path / "reload.db", "reload")
    env = {"TEST_JWT_SECRET": SECRET, "TEST_ADMIN_TOKEN": ADMIN_TOKEN}
    first = {"alice-key": KEYS["alice-key"]}
    gw = Gateway(tmp_path, "reload", [backend.addr], extra_config=auth_config(keys=first), env=env,
                 admin_token=ADMIN_TOKEN)
    path = gw.config_path
    original = path.read_text()
    try:
        with httpx2.Client(timeout=10) as c:
            url = f"{gw.http}/mcp"
            sid, _ = initialize(c, url, bearer("alice-key"))
            assert discover(gw, bearer("reader-key")).status_code == 401
            # a new key, by POST /reload
            path.write_text(original.replace(auth_config(keys=first), auth_config(
                keys={**first, "reader-key": KEYS["reader-key"]})))
            r = httpx2.post(f"{gw.admin}/reload", headers=gw.admin_headers, timeout=5)
            assert r.status_code == 200 and r.json()["reloaded"] is True, r.text
            assert discover(gw, bearer("reader-key")).status_code == 200
            assert rpc(c, url, sid, "ping", id_=3).status_code == 401  # rpc() sends no credentials
            ok = c.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18",
                                      **bearer("alice-key")}, json={"jsonrpc": "2.0", "id": 4, "method": "ping"})
            assert ok.status_code == 200, "the session survived the reload"
            # an invalid file: refused, the running configuration stays
            path.write_text(original + "\n[auth.jwt]\naudience = 7\n")
            bad = httpx2.post(f"{gw.admin}/reload", headers=gw.admin_headers, timeout=5)
            assert bad.status_code == 400 and bad.json()["reloaded"] is False
            assert "parsing" in bad.json()["error"], bad.text
            assert discover(gw, bearer("reader-key")).status_code == 200
            # SIGHUP: the reader's key leaves
            path.write_text(original)
            gw.proc.p.send_signal(signal.SIGHUP)
            wait_until(lambda: discover(gw, bearer("reader-key")).status_code == 401, 10, "SIGHUP reload")
            assert discover(gw, bearer("alice-key")).status_code == 200
    finally:
        gw.proc.stop()
        backend.proc.stop()


# --- logs -------------------------------------------------------------------------------------


def test_logs_never_carry_keys_tokens_or_whole_session_ids(tmp_path):
    backend = Backend(tmp_path / "logs.db", "logs")
    log = tmp_path / "gateway.log"
    config = tmp_path / "logs.toml"
    jwt_token = token(sub="log-user")
    port, admin = free_port(), free_port()
    config.write_text(f'shutdown_grace_secs = 0\nshutdown_timeout_secs = 1\n[listen]\nhttp = "127.0.0.1:{port}"\n'
                      f'admin = "127.0.0.1:{admin}"\n' + auth_config(keys={"alice-key": KEYS["alice-key"]}) +
                      f'[[pools]]\nname = "r"\nhealth_interval = "300ms"\n'
                      f'discovery = {{ static = {{ backends = ["{backend.addr}"] }} }}\n')
    with open(log, "w") as f:
        p = subprocess.Popen([str(BIN / "mcp-gateway"), "--config", str(config)], stdout=f, stderr=subprocess.STDOUT,
                             env={**os.environ, "RUST_LOG": "debug", "TEST_JWT_SECRET": SECRET,
                                  "TEST_ADMIN_TOKEN": ADMIN_TOKEN, "MCP_GATEWAY_SESSION_KEY": "k" * 40})
    try:
        wait_until(lambda: "mcp-gateway ready" in log.read_text(), 30, "gateway start")
        wait_until(lambda: httpx2.get(f"http://127.0.0.1:{admin}/backends", headers=bearer(ADMIN_TOKEN),
                                      timeout=5).json()["pools"][0]["backends"][0]["healthy"], 30, "backend healthy")
        with httpx2.Client(timeout=10) as c:
            url = f"http://127.0.0.1:{port}/mcp"
            sid, _ = initialize(c, url, bearer("alice-key"))
            c.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18",
                                 **bearer(jwt_token)}, json={"jsonrpc": "2.0", "id": 4, "method": "ping"})
            c.post(url, headers={"accept": ACCEPT, **bearer("wrong-key-xyz")}, json=DISCOVER)
            c.post(url, headers={"accept": ACCEPT, "mcp-session-id": sid[:-4] + "AAAA", **bearer("alice-key")},
                   json={"jsonrpc": "2.0", "id": 5, "method": "ping"})
    finally:
        p.terminate()
        p.wait(10)
        backend.proc.stop()
    text = log.read_text()
    assert "DEBUG" in text or "debug" in text, "debug logging was on"
    for secret in ("alice-key", "wrong-key-xyz", jwt_token, jwt_token.split(".")[2], sid, SECRET, ADMIN_TOKEN):
        assert secret not in text, f"the log carries {secret[:12]}…"
    # each request's span carries the session's tag (its first 8 characters), enough to follow it
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    tagged = [line for line in plain.splitlines() if f"session={sid[:8]}" in line and "request{" in line]
    assert tagged, "no span with the session tag"


# --- mcp-client ---------------------------------------------------------------------------------


def client(*args, env=None, timeout=60):
    return subprocess.run([CLIENT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_mcp_client_speaks_api_keys_and_tokens(authstack):
    gw = authstack.gw
    ok = client("--url", gw.http, "--api-key", "reader-key", "tools")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("5 tools") and "delete_agent" not in ok.stdout, ok.stdout
    jwt_ok = client("--url", gw.http, "--token", token(scope="registry:write"), "call", "health_check")
    assert jwt_ok.returncode == 0, jwt_ok.stderr
    via_env = client("--url", gw.http, "call", "health_check", env={"MCP_API_KEY": "alice-key"})
    assert via_env.returncode == 0, via_env.stderr
    for args in ((), ("--api-key", "no-such-key"), ("--token", token(exp=int(time.time()) - 100))):
        bad = client("--url", gw.http, *args, "tools")
        assert bad.returncode != 0
        assert "refused the credentials (HTTP 401)" in bad.stderr, bad.stderr
    denied = client("--url", gw.http, "--api-key", "reader-key", "call", "delete_agent", "agent_id=x")
    assert denied.returncode != 0
    assert "may not call 'delete_agent' (HTTP 403) (it needs scope registry:write)" in denied.stderr, denied.stderr


def test_the_load_generator_counts_429s_and_can_honour_retry_after(authstack, tmp_path):
    gw = authstack.gw
    common = ["--url", gw.http, "--api-key", "load-key", "--output", "json", "load", "--sessions", "2",
              "--duration", "3s", "--warmup", "0s", "--seed-agents", "0", "--mix", "health_check=1"]
    greedy = client(*common, timeout=120)
    assert greedy.returncode == 0, greedy.stderr
    report = json.loads(greedy.stdout)
    limited = report["errors_by_kind"].get("rate_limited", 0)
    assert limited > 0 and set(report["errors_by_kind"]) == {"rate_limited"}, report["errors_by_kind"]
    # 2 requests/s: a polite client is refused at most once per wait
    polite = client(*common, "--honour-retry-after", timeout=120)
    assert polite.returncode == 0, polite.stderr
    report2 = json.loads(polite.stdout)
    assert report2["errors_by_kind"].get("rate_limited", 0) < limited / 10, (report2["errors_by_kind"], limited)
    assert report2["total"]["ok"] >= 2
