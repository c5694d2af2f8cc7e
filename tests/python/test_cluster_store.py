"""Several gateway replicas sharing one Redis (`[cluster] store`): a real
`redis-server` on a free port, three replicas with one session key behind
the round-robin balancer of test_replicas.py. One principal spread over all
replicas is held to the global limit (and, as a control, three replicas
without the store let three times as much through); a session DELETEd on
one replica (a pool's, or a virtual server's federated one) is unknown on
the others; a killed or frozen store costs no
request more than the store timeout, fail_open serves under the local
limits divided by the replica count and counts it, fail_closed answers 503;
when the store is back the limits are global again."""

import hashlib
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from conftest import (ACCEPT, BIN, DISCOVER, STATELESS, Backend, Gateway, free_port, initialize, metric, rpc,
                      wait_until)
from test_replicas import RoundRobin

# Limits of the tiers: requests (burst 5, then 5 a second), sessions and
# tool calls (6 a minute each: no refill within a test).
TIERS = """
[limits.tiers.default]
requests_per_second = 10000
[limits.tiers.rps]
requests_per_second = 5
burst = 5
[limits.tiers.sess]
requests_per_second = 10000
sessions_per_minute = 6
[limits.tiers.tool]
requests_per_second = 10000
tool_limits = { get_agent = 6 }
"""
BURST = 5
RATE = 5
PER_MINUTE = 6
# One principal per phase of a test, so no phase spends another's budget.
KEYS = {f"{tier}-{i}": tier for tier in ("rps", "sess", "tool") for i in range(8)}


def auth():
    lines = ["[auth]"]
    for key, tier in KEYS.items():
        lines += ["[[auth.keys]]", f'principal = "{key}"',
                  f'sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"', f'tier = "{tier}"']
    return "\n".join(lines) + "\n"


def bearer(key):
    return {"authorization": f"Bearer {key}"}


class RedisServer:
    """redis-server on a free port of 127.0.0.1, no persistence; killed,
    frozen and started again on the same port by the tests."""

    def __init__(self, tmp):
        self.tmp = tmp
        for _ in range(4):
            self.port = free_port()
            if self.start(wait=10):
                return
        raise AssertionError("redis-server did not start (is it installed? tests/run.sh installs it)")

    def start(self, wait=30):
        self.p = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(self.tmp)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.p.poll() is None:
            if self.cli("PING") == "PONG":
                return True
            time.sleep(0.05)
        self.kill()
        return False

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                              timeout=30).stdout.strip()

    def keys_without_ttl(self):
        script = ("local n = 0 for _, k in ipairs(redis.call('KEYS', '*')) do "
                  "if redis.call('PTTL', k) < 0 then n = n + 1 end end return n")
        return int(self.cli("EVAL", script, "0"))

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


def store_config(redis, mode="fail_open"):
    return (f'[cluster]\nstore = "{redis.url}"\nreplicas = 3\non_store_down = "{mode}"\n'
            'store_recheck = "200ms"\n'
            # wide enough that a loaded CI machine does not time out a healthy
            # store (the limits would then be the local fallback's)
            'store_timeout = "200ms"\n')


# A virtual server over the registry pool (its sessions are federated ids).
VIRTUAL = """
[[servers]]
name = "all"
route = "/all"
[[servers.members]]
pool = "registry"
prefix = "reg_"
"""


def start_replicas(tmp, prefix, backend, cluster):
    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(lambda i: Gateway(tmp, f"{prefix}-{i}", [backend.addr], limits=TIERS,
                                               extra_config=cluster + auth(), extra_pools=VIRTUAL), range(3)))


class Cluster:
    pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    redis = RedisServer(tmp)
    backend = Backend(tmp / "store.db", "store")
    c = Cluster()
    c.redis, c.backend = redis, backend
    c.shared = start_replicas(tmp, "shared", backend, store_config(redis))
    c.plain = start_replicas(tmp, "plain", backend, "")
    c.lb_shared, c.lb_plain = RoundRobin(c.shared), RoundRobin(c.plain)
    for g in c.shared:
        wait_until(lambda: metric(g, "mcp_gateway_store_up") == 1, 10, "the store to be up")
    yield c
    for lb in (c.lb_shared, c.lb_plain):
        lb.close()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda g: g.proc.stop(), c.shared + c.plain))
    backend.proc.stop()
    redis.kill()


def spread(lb, n, go):
    """`go(url)` n times, each on a new connection through the balancer
    (so the replicas take turns): (statuses, seconds, slowest)."""
    url = f"http://127.0.0.1:{lb.port}/mcp"
    statuses, slowest = [], 0.0
    started = time.monotonic()
    for _ in range(n):
        t = time.monotonic()
        r = go(url)
        slowest = max(slowest, time.monotonic() - t)
        assert r.status_code in (200, 429), r.text
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            err = r.json()["error"]
            assert err["code"] == -32023 and err["data"]["retryAfterSeconds"] >= 1, err
        statuses.append(r.status_code)
    return statuses, time.monotonic() - started, slowest


# A client that opens a new connection for each request (the balancer
# spreads connections, not requests).
FRESH = httpx2.Client(timeout=10, limits=httpx2.Limits(max_keepalive_connections=0))


def discover(key):
    return lambda url: FRESH.post(url, headers={**STATELESS, **bearer(key)}, json=DISCOVER)


def opens(key):
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    return lambda url: FRESH.post(url, headers={"accept": ACCEPT, **bearer(key)}, json=init)


def calls_get_agent(key, sid):
    return lambda url: rpc(FRESH, url, sid, "tools/call", {"name": "get_agent", "arguments": {"agent_id": "x"}},
                           headers=bearer(key))


def store_failures(gateways):
    return sum(metric(g, "mcp_gateway_store_failures_total", f'{{kind="{k}"}}')
               for g in gateways for k in ("timeout", "error"))


def requests_served(gateways):
    return [metric(g, "mcp_gateway_requests_total") for g in gateways]


def test_one_principal_over_three_replicas_is_held_to_the_global_request_limit(cluster):
    for gws, lb, key in ((cluster.shared, cluster.lb_shared, "rps-0"), (cluster.plain, cluster.lb_plain, "rps-1")):
        before = requests_served(gws)
        statuses, took, _ = spread(lb, 45, discover(key))
        after = requests_served(gws)
        assert all(a - b >= 15 for a, b in zip(after, before)), ("every replica took a third", before, after)
        passed = statuses.count(200)
        if gws is cluster.shared:
            # GCRA in the store: the burst, plus what refilled while the requests went out
            assert BURST <= passed <= BURST + RATE * took + 1, (passed, took, store_failures(gws))
        else:
            # today's loosening without the store: each replica its own budget
            assert passed >= 3 * BURST, (passed, took)
    assert cluster.redis.keys_without_ttl() == 0


def test_new_sessions_and_tool_calls_are_held_to_their_global_limits(cluster):
    for gws, lb, n in ((cluster.shared, cluster.lb_shared, 2), (cluster.plain, cluster.lb_plain, 3)):
        statuses, _, _ = spread(lb, 30, opens(f"sess-{n}"))
        passed = statuses.count(200)
        assert passed == (PER_MINUTE if gws is cluster.shared else 3 * PER_MINUTE), (passed, store_failures(gws))
        key = f"tool-{n}"
        with httpx2.Client(timeout=10) as c:
            sid, _ = initialize(c, f"{gws[0].http}/mcp", bearer(key))
        statuses, _, _ = spread(lb, 30, calls_get_agent(key, sid))
        passed = statuses.count(200)
        assert passed == (PER_MINUTE if gws is cluster.shared else 3 * PER_MINUTE), (passed, store_failures(gws))
    assert cluster.redis.keys_without_ttl() == 0


def deleted_on_one_is_unknown_on_the_others(cluster, url, key):
    """A session opened at `url` on replica A serves on B and C until A
    ends it; then B and C answer 404 (JSON-RPC -32001)."""
    a, b, c_ = cluster.shared
    headers = {"accept": ACCEPT, "mcp-protocol-version": "2025-06-18", **key}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    with httpx2.Client(timeout=10) as c:
        r = c.post(f"{a.http}{url}", headers={"accept": ACCEPT, **key}, json=init)
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        for other in (b, c_):
            assert rpc(c, f"{other.http}{url}", sid, "tools/list", headers=key).status_code == 200
        r = c.delete(f"{a.http}{url}", headers={**headers, "mcp-session-id": sid})
        assert r.status_code == 200, r.text
        for other in (b, c_):
            r = rpc(c, f"{other.http}{url}", sid, "tools/list", headers=key)
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == -32001


def test_a_session_deleted_on_one_replica_is_unknown_on_the_others(cluster):
    deleted_on_one_is_unknown_on_the_others(cluster, "/mcp", bearer("sess-7"))  # requests unlimited
    key = next(k for k in cluster.redis.cli("--scan").splitlines() if ":end:" in k)
    ttl = int(cluster.redis.cli("TTL", key))
    # the id's remaining life (24 h by default), not forever
    assert 86_000 < ttl <= 86_400, ttl


def test_a_virtual_server_session_deleted_on_one_replica_is_unknown_on_the_others(cluster):
    deleted_on_one_is_unknown_on_the_others(cluster, "/all/mcp", bearer("sess-6"))


def test_a_killed_store_leaves_replicas_serving_local_limits_divided_then_global_again(cluster):
    redis, gws, lb = cluster.redis, cluster.shared, cluster.lb_shared
    redis.kill()
    try:
        for g in gws:
            wait_until(lambda: metric(g, "mcp_gateway_store_up") == 0, 10, "the store to be seen down")
        before = sum(metric(g, "mcp_gateway_store_fallbacks_total", '{mode="fail_open"}') for g in gws)
        statuses, took, slowest = spread(lb, 45, discover("rps-3"))
        after = sum(metric(g, "mcp_gateway_store_fallbacks_total", '{mode="fail_open"}') for g in gws)
        assert slowest < 1.0, slowest
        passed = statuses.count(200)
        # each replica alone: burst 5/3 → 2, rate 5/3 → 2 a second
        assert 3 <= passed <= 3 * 2 + 3 * 2 * took + 3, (passed, took)
        assert after - before >= passed, (before, after)
    finally:
        assert redis.start(), "redis-server did not start again"
    for g in gws:
        wait_until(lambda: metric(g, "mcp_gateway_store_up") == 1, 10, "the store to be seen back")
        assert metric(g, "mcp_gateway_store_state_changes_total") >= 3
    statuses, took, _ = spread(lb, 45, discover("rps-4"))
    passed = statuses.count(200)
    assert BURST <= passed <= BURST + RATE * took + 1, (passed, took)


def test_a_frozen_store_delays_no_request_beyond_its_timeout(cluster):
    redis, gws, lb = cluster.redis, cluster.shared, cluster.lb_shared
    changes = [metric(g, "mcp_gateway_store_state_changes_total") for g in gws]
    redis.p.send_signal(signal.SIGSTOP)
    try:
        statuses, _, slowest = spread(lb, 30, discover("rps-5"))
        # 200 ms store timeout; the backend and Python take the rest
        assert slowest < 0.7, slowest
        assert statuses.count(200) >= 3
        # every replica saw it go down (a request's call or the watcher's ping timed out)
        after = [metric(g, "mcp_gateway_store_state_changes_total") for g in gws]
        assert all(a > b for a, b in zip(after, changes)), (changes, after)
    finally:
        redis.p.send_signal(signal.SIGCONT)
    for g in gws:
        wait_until(lambda: metric(g, "mcp_gateway_store_up") == 1, 10, "the store to be seen back")


def test_fail_closed_answers_503_while_the_store_is_down_and_health_says_so(tmp_path):
    redis = RedisServer(tmp_path)
    backend = Backend(tmp_path / "closed.db", "closed")
    gw = Gateway(tmp_path, "closed", [backend.addr], limits=TIERS,
                 extra_config=store_config(redis, "fail_closed") + auth())
    try:
        wait_until(lambda: metric(gw, "mcp_gateway_store_up") == 1, 10, "the store to be up")
        assert discover("rps-6")(f"{gw.http}/mcp").status_code == 200
        redis.kill()
        wait_until(lambda: httpx2.get(f"{gw.admin}/health", timeout=2).status_code == 503, 10, "/health 503")
        assert httpx2.get(f"{gw.admin}/livez", timeout=2).status_code == 200
        started = time.monotonic()
        r = discover("rps-6")(f"{gw.http}/mcp")
        assert time.monotonic() - started < 1.0
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["code"] == -32000, r.text
        assert metric(gw, "mcp_gateway_store_fallbacks_total", '{mode="fail_closed"}') >= 1
        assert metric(gw, "mcp_gateway_rejected_total", '{reason="store_unavailable"}') >= 1
        assert redis.start()
        wait_until(lambda: httpx2.get(f"{gw.admin}/health", timeout=2).status_code == 200, 10, "/health 200")
        assert discover("rps-6")(f"{gw.http}/mcp").status_code == 200
        assert metric(gw, "mcp_gateway_store_duration_seconds_count") >= 2
    finally:
        gw.proc.stop()
        backend.proc.stop()
        redis.kill()


def test_check_config_checks_the_store_url(tmp_path):
    def check(store):
        conf = tmp_path / "c.toml"
        conf.write_text(f'[listen]\nhttp = "127.0.0.1:1"\n[cluster]\nstore = "{store}"\n'
                        '[[pools]]\nname = "r"\ndiscovery = { static = { backends = ["127.0.0.1:2"] } }\n')
        return subprocess.run([str(BIN / "mcp-gateway"), "--config", str(conf), "--check-config"],
                              capture_output=True, text=True, timeout=30,
                              env={"MCP_GATEWAY_STORE_PASSWORD": "s3cret-password", "PATH": "/usr/bin:/bin"})
    ok = check("rediss://cache.internal:6380/2")
    assert ok.returncode == 0, ok.stderr
    assert "store: rediss://cache.internal:6380/2, password from MCP_GATEWAY_STORE_PASSWORD" in ok.stdout, ok.stdout
    assert "s3cret" not in ok.stdout
    for bad in ("http://cache.internal:6379", "redis://", "cache.internal:6379"):
        r = check(bad)
        assert r.returncode != 0 and "[cluster] store" in r.stderr, (bad, r.stderr)
