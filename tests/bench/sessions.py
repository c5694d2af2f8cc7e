#!/usr/bin/env python3
"""Session capacity and session setup rate, gateway vs direct, one run.

Capacity: opens LEGACY idle legacy SSE sessions (GET /sse, endpoint event
read) and STREAMABLE idle Streamable HTTP sessions (initialize +
notifications/initialized + an open GET /mcp stream) through the gateway
and reports the gateway's RSS growth per session. With --bare / --keepalive,
then BARE connections that send nothing and KEEPALIVE connections idle
after one answered request (GET /health), to split a session's memory into
the connection's and the open stream's (measured within the gateway's
idle_timeout, 60 s by default, which cuts such connections). Setup rate: sessions
(initialize + notifications/initialized) per second, gateway vs the backend
directly, same concurrency. Standard library only (asyncio, raw HTTP/1.1).
With --peer NAME=HOST:PORT --peer-pid PID, another proxy in front of the same
backend gets the same: its setup rate in the same alternating rounds, then its
idle sessions and connections (after the gateway's are closed).

  python3 tests/bench/sessions.py --gateway 127.0.0.1:8080 --gateway-pid PID \
      --direct 127.0.0.1:8091 [--legacy 2000 --streamable 2000 --setup 2000] [--bare 2000 --keepalive 2000] \
      [--peer agentgateway=127.0.0.1:3000 --peer-pid PID]
"""
import argparse
import asyncio
import json
import time

INIT = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}).encode()
INITIALIZED = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def connections_to(port):
    """Established TCP connections on this machine whose far end is `port`."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    return status, headers


async def read_body(reader, headers):
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readline()).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return body
        body += chunk[:-2]


async def post(reader, writer, host, body, sid=None):
    extra = f"Mcp-Session-Id: {sid}\r\nMcp-Protocol-Version: 2025-06-18\r\n" if sid else ""
    writer.write(f"POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Accept: application/json, text/event-stream\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
                 .encode() + body)
    await writer.drain()
    status, headers = await read_head(reader)
    if status != 202:
        await read_body(reader, headers)
    elif "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    return status, headers


async def new_session(host):
    """initialize + notifications/initialized on one keep-alive connection."""
    h, p = host.split(":")
    reader, writer = await asyncio.open_connection(h, int(p))
    status, headers = await post(reader, writer, host, INIT)
    assert status == 200, status
    sid = headers["mcp-session-id"]
    status, _ = await post(reader, writer, host, INITIALIZED, sid)
    assert status == 202, status
    return reader, writer, sid


async def streamable_idle(host, held):
    reader, writer, sid = await new_session(host)
    writer.write(f"GET /mcp HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
                 f"Mcp-Session-Id: {sid}\r\nMcp-Protocol-Version: 2025-06-18\r\n\r\n".encode())
    await writer.drain()
    status, _ = await read_head(reader)
    assert status == 200, status
    held.append(writer)


async def get(host, path, extra=""):
    """A GET on a new connection; its reader, writer and answer's headers (200 asserted)."""
    h, p = host.split(":")
    reader, writer = await asyncio.open_connection(h, int(p))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
    await writer.drain()
    status, headers = await read_head(reader)
    assert status == 200, status
    return reader, writer, headers


async def legacy_idle(host, held, handshake=False):
    reader, writer, _ = await get(host, "/sse", "Accept: text/event-stream\r\n")
    while b"endpoint" not in await reader.readline():
        pass
    if handshake:  # initialize, its answer on the stream, notifications/initialized
        line = await reader.readline()
        while not line.startswith(b"data: /"):
            line = await reader.readline()
        path = line[len(b"data: "):].strip().decode()
        h, p = host.split(":")
        r2, w2 = await asyncio.open_connection(h, int(p))
        for body in (INIT, INITIALIZED):
            w2.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await w2.drain()
            status, headers = await read_head(r2)
            assert status == 202, status
            await read_body(r2, headers)
            if body is INIT:
                while b'"result"' not in await reader.readline():
                    pass
        w2.close()
    held.append(writer)


async def bare_idle(host, held):
    h, p = host.split(":")
    _, writer = await asyncio.open_connection(h, int(p))
    held.append(writer)


async def keepalive_idle(host, held):
    reader, writer, headers = await get(host, "/health")
    await read_body(reader, headers)
    held.append(writer)


async def bounded(n, concurrency, make):
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            await make()
    await asyncio.gather(*(one() for _ in range(n)))


async def setup_rate(host, n, concurrency):
    async def one():
        _, writer, _ = await new_session(host)
        writer.close()
    t0 = time.perf_counter()
    await bounded(n, concurrency, one)
    return n / (time.perf_counter() - t0)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--gateway-pid", type=int, required=True)
    ap.add_argument("--direct", required=True)
    ap.add_argument("--legacy", type=int, default=2000)
    ap.add_argument("--streamable", type=int, default=2000)
    ap.add_argument("--setup", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--bare", type=int, default=0)
    ap.add_argument("--keepalive", type=int, default=0)
    ap.add_argument("--legacy-handshake", action="store_true",
                    help="each idle legacy session first does initialize and notifications/initialized")
    ap.add_argument("--backend-pid", type=int, help="also report the backend's RSS growth per Streamable session")
    ap.add_argument("--backend-port", type=int, help="also count connections to the backend while the sessions are held")
    ap.add_argument("--peer", help="NAME=HOST:PORT of another proxy in front of the same backend")
    ap.add_argument("--peer-pid", type=int)
    a = ap.parse_args()
    peer = None
    if a.peer:
        name, _, host = a.peer.partition("=")
        if not host or a.peer_pid is None:
            ap.error("--peer takes NAME=HOST:PORT, and needs --peer-pid")
        peer = (name, host)

    targets = [("direct", a.direct), ("gateway", a.gateway)] + ([peer] if peer else [])
    rates = {name: [] for name, _ in targets}
    for _ in range(2):  # alternate, two rounds
        for name, host in targets:
            rates[name].append(await setup_rate(host, a.setup, a.concurrency))
    d, g = (sum(rates[k]) / 2 for k in ("direct", "gateway"))
    print(f"session setup (initialize + initialized), {a.setup} sessions x 2 rounds, concurrency {a.concurrency}:")
    print(f"  direct {d:.0f}/s, gateway {g:.0f}/s, ratio gateway/direct {g / d:.2f}")
    if peer:
        p = sum(rates[peer[0]]) / 2
        print(f"  {peer[0]} {p:.0f}/s, ratio {peer[0]}/direct {p / d:.2f}, gateway/{peer[0]} {g / p:.2f}")

    await capacity(a, "the gateway", "gateway", a.gateway, a.gateway_pid, a.legacy_handshake)
    if peer:  # its legacy sessions as opened (the handshake is the gateway's measure only)
        await capacity(a, peer[0], peer[0], peer[1], a.peer_pid, False)


async def capacity(a, through, name, host, pid, handshake):
    """Idle sessions, then idle connections, held through one proxy; its RSS per each."""
    held = []
    base = rss_kib(pid)
    await bounded(a.legacy, 64, lambda: legacy_idle(host, held, handshake))
    after_legacy = rss_kib(pid)
    backend_pid = a.backend_pid if name == "gateway" else None
    backend_before = rss_kib(backend_pid) if backend_pid else 0
    await bounded(a.streamable, 64, lambda: streamable_idle(host, held))
    after_both = rss_kib(pid)
    backend_after = rss_kib(backend_pid) if backend_pid else 0
    to_backend = connections_to(a.backend_port) if a.backend_port else 0
    shake = " (after initialize)" if handshake else ""
    print(f"idle sessions held open through {through}: {a.legacy} legacy SSE{shake} + {a.streamable} Streamable HTTP with a GET stream")
    print(f"  {name} RSS {base / 1024:.1f} MiB before, {after_legacy / 1024:.1f} MiB with the legacy ones, "
          f"{after_both / 1024:.1f} MiB with all")
    if a.legacy:
        print(f"  per legacy session {(after_legacy - base) / a.legacy:.1f} KiB")
    if a.streamable:
        print(f"  per Streamable HTTP session {(after_both - after_legacy) / a.streamable:.1f} KiB")
        if backend_pid:
            print(f"  the backend's RSS per Streamable HTTP session {(backend_after - backend_before) / a.streamable:.1f} KiB")
        if a.backend_port:
            print(f"  connections to the backend while they are held: {to_backend}")
    print(f"  per session overall {(after_both - base) / max(1, a.legacy + a.streamable):.1f} KiB")
    if a.bare or a.keepalive:
        r0 = rss_kib(pid)
        await bounded(a.bare, 64, lambda: bare_idle(host, held))
        await asyncio.sleep(0.5)  # the proxy accepts and parks them
        r1 = rss_kib(pid)
        await bounded(a.keepalive, 64, lambda: keepalive_idle(host, held))
        r2 = rss_kib(pid)
        print(f"idle connections (the sessions still held): {a.bare} that sent nothing, {a.keepalive} after one answered request")
        if a.bare:
            print(f"  per connection that sent nothing {(r1 - r0) / a.bare:.1f} KiB")
        if a.keepalive:
            print(f"  per keep-alive connection after a request {(r2 - r1) / a.keepalive:.1f} KiB")
    for w in held:
        w.close()
    await asyncio.gather(*(w.wait_closed() for w in held), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
