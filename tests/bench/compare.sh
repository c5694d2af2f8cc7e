#!/usr/bin/env bash
# Side-by-side benchmark in one run: the same MCP load (mcp-client load)
# against (1) a registry backend directly, (2) nginx in front of it,
# (3) mcp-gateway in front of it — over HTTP, over TLS, through the legacy
# SSE bridge, with stateless requests, and with authentication + rate limits
# on. All front the same single backend, so the differences are the proxies'.
# Prints one table (calls/s, latency percentiles, proxy CPU per 1,000 calls,
# downstream connections accepted per 1,000 requests) and the ratios.
#   tests/bench/compare.sh        # closed loop, session benchmarks, then open loop at 1,000 calls/s (~9 min)
#   DURATION=20s SESSIONS=16 RATE=500 SESSION_BENCH=0 tests/bench/compare.sh   # one open-loop pass only
# The session benchmarks (tests/bench/sessions.py) run unless SESSION_BENCH=0,
# the open-loop pass unless RATE is given or OPEN_LOOP=0.
# Needs: cargo build --release --workspace; nginx (apt-get install nginx-light).
# Optional: AGENTGATEWAY=/path/to/agentgateway adds agentgateway (the MCP-aware
# Rust gateway; tests/bench/build-agentgateway.sh builds it, ~35 min from clean) in front of
# the same backend as one more target, in every pass, with ratio lines
# gateway/agentgateway.
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}   # gateway worker threads and nginx worker processes

BPORT=$(free_port); NPORT=$(free_port); NSTAT=$(free_port)
GPORT=$(free_port); GTLS=$(free_port); APORT=$(free_port)
XPORT=$(free_port); XADMIN=$(free_port)
"$BIN/registry-backend" --listen "127.0.0.1:$BPORT" --db "$TMP/bench.db" --instance bench \
  --allowed-host "127.0.0.1,localhost" > /dev/null 2>&1 &
BPID=$!
pids+=($BPID)
wait_http "http://127.0.0.1:$BPORT/health"

start_nginx "$NPORT" "$BPORT" "$NSTAT"

export MCP_GATEWAY_SESSION_KEY=bench-session-key-0123456789abcdef
# The session benchmark holds thousands of connections from one address:
# above the default per-address caps (1,024 connections, a quarter of the
# requests in flight), which are checked all the same.
# The registry speaks h2c: sessions' GET streams share HTTP/2 connections to
# it, as in deploy/ (H2_STREAMS=0: one connection each, as before).
cat > "$TMP/gateway.toml" <<TOML
[limits]
max_connections_per_ip = 100000
client_share = 1.0
[[pools]]
name = "registry"
http2_streams = $([ "${H2_STREAMS:-1}" = 1 ] && echo true || echo false)
discovery = { static = { backends = ["127.0.0.1:$BPORT"] } }
TOML
"$BIN/mcp-gateway" --config "$TMP/gateway.toml" --threads "$THREADS" --http "127.0.0.1:$GPORT" --https "127.0.0.1:$GTLS" --dev-tls-dir "$TMP/tls" \
  --admin "127.0.0.1:$APORT" > /dev/null 2>&1 &
GPID=$!
pids+=($GPID)
wait_http "http://127.0.0.1:$GPORT/health"

# The same gateway with authentication (an API key) and rate limits on,
# limits high enough that none is hit: the cost of checking them.
KEY=bench-api-key-0123456789
cat > "$TMP/auth.toml" <<TOML
[listen]
http = "127.0.0.1:$XPORT"
admin = "127.0.0.1:$XADMIN"
[[auth.keys]]
principal = "bench"
sha256 = "$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
[[auth.rules]]
deny_tools = ["delete_agent"]
[limits.tiers.default]
requests_per_second = 1000000
tool_calls_per_minute = 100000000
sessions_per_minute = 100000
max_streams = 1000
[limits.global]
per_ip_requests_per_second = 1000000
per_ip_connections_per_second = 10000
[[pools]]
name = "registry"
discovery = { static = { backends = ["127.0.0.1:$BPORT"] } }
TOML
"$BIN/mcp-gateway" --threads "$THREADS" --config "$TMP/auth.toml" > /dev/null 2>&1 &
XPID=$!
pids+=($XPID)
wait_http "http://127.0.0.1:$XPORT/health"
for a in $APORT $XADMIN; do
  for _ in $(seq 100); do curl -s "http://127.0.0.1:$a/backends" | grep -q '"healthy": true' && break; sleep 0.05; done
done

# agentgateway, if given: the backend as its one MCP target (Streamable HTTP,
# stateful sessions), no auth, THREADS worker threads, request logging off
# (as nginx's access_log). It has no listen-address setting: a bind is on the
# wildcard address (IPv4 only here), and the load reaches it on 127.0.0.1.
# /health answers 200 (sessions.py's keep-alive connections ask it; ours
# answers it itself, nginx asks the backend). Its sessions offer 2025-11-25 in
# `initialize` (--initialize-version): it refuses the load generator's default
# offer, 2026-07-28, a version without `initialize` (400 without an
# MCP-Protocol-Version header, 404 with one). sessions.py offers 2025-06-18.
WPID=
if [ -n "${AGENTGATEWAY:-}" ]; then
  WPORT=$(free_port); WADMIN=$(free_port); WSTATS=$(free_port); WREADY=$(free_port)
  cat > "$TMP/agentgateway.yaml" <<YAML
config:
  workerThreads: $THREADS
  enableIpv6: false
  adminAddr: 127.0.0.1:$WADMIN
  statsAddr: 127.0.0.1:$WSTATS
  readinessAddr: 127.0.0.1:$WREADY
  logging:
    level: warn
binds:
- port: $WPORT
  listeners:
  - routes:
    - name: health
      matches:
      - path:
          exact: /health
      policies:
        directResponse:
          body: ok
          status: 200
    - name: registry
      backends:
      - mcp:
          statefulMode: stateful
          targets:
          - name: registry
            mcp:
              host: 127.0.0.1
              port: $BPORT
              path: /mcp
YAML
  "$AGENTGATEWAY" -f "$TMP/agentgateway.yaml" > "$TMP/agentgateway.log" 2>&1 &
  WPID=$!
  pids+=($WPID)
  wait_http "http://127.0.0.1:$WPORT/health" || { tail -20 "$TMP/agentgateway.log"; exit 1; }
fi

nginx_pids() { echo "$NPID $(pgrep -P "$NPID" | tr '\n' ' ')" | xargs | tr ' ' ','; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
# a counter summed over its labels
sum_metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d\n", s}'; }
# counters: "accepted requests" for the proxy in front, before and after a run
counters() { # target
  case $1 in
    nginx) curl -s "http://127.0.0.1:$NSTAT/" | awk 'NR==3 {print $1, $3}' ;;
    gateway-auth) echo "$(metric "$XADMIN" mcp_gateway_connections_accepted_total) $(metric "$XADMIN" mcp_gateway_requests_total)" ;;
    agentgateway) echo "$(sum_metric "$WSTATS" agentgateway_downstream_connections_total) $(sum_metric "$WSTATS" agentgateway_requests_total)" ;;
    gateway*) echo "$(metric "$APORT" mcp_gateway_connections_accepted_total) $(metric "$APORT" mcp_gateway_requests_total)" ;;
    *) echo "0 0" ;;
  esac
}
run() { # label url transport round cpu-pids [extra args]
  local label=$1 url=$2 transport=$3 round=$4 cpu=$5; shift 5
  read -r a0 r0 < <(counters "$label")
  "$BIN/mcp-client" --url "$url" "$@" -o json load --sessions "$SESSIONS" --duration "$DURATION" --warmup "$WARMUP" \
    --mix "$MIX" --transports "$transport" --seed-agents 200 ${RATE:+--rate "$RATE"} ${cpu:+--cpu-pid "$cpu"} \
    > "$TMP/$label.$round.json"
  read -r a1 r1 < <(counters "$label")
  echo "$((a1 - a0)) $((r1 - r0))" > "$TMP/$label.$round.conns"
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
gw_rss_before=$(rss $GPID)
targets=("direct|http://127.0.0.1:$BPORT|streamable|"
         "nginx|http://127.0.0.1:$NPORT|streamable|NGINX"
         "gateway|http://127.0.0.1:$GPORT|streamable|$GPID"
         "gateway-tls|https://127.0.0.1:$GTLS|streamable|$GPID|--ca|$TMP/tls/ca.pem"
         "gateway-legacy-sse|http://127.0.0.1:$GPORT|sse|$GPID"
         "gateway-stateless|http://127.0.0.1:$GPORT|stateless|$GPID"
         "gateway-auth|http://127.0.0.1:$XPORT|streamable|$XPID|--api-key|$KEY")
if [ -n "$WPID" ]; then
  targets+=("agentgateway|http://127.0.0.1:$WPORT|streamable|$WPID|--initialize-version|2025-11-25")
  agw_rss_before=$(rss $WPID)
fi
# Rounds alternate the order (A B C … then … C B A) so drift over time evens out.
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order=("${targets[@]}"); else order=(); for ((i=${#targets[@]}-1; i>=0; i--)); do order+=("${targets[$i]}"); done; fi
  for t in "${order[@]}"; do
    IFS='|' read -r -a f <<< "$t"
    cpu=${f[3]:-}; [ "$cpu" = NGINX ] && cpu=$(nginx_pids)
    run "${f[0]}" "${f[1]}" "${f[2]}" "$round" "$cpu" "${f[@]:4}"
  done
done
gw_rss_after=$(rss $GPID)
agw_rss=""
if [ -n "$WPID" ]; then agw_rss="$agw_rss_before $(rss $WPID)"; fi

python3 - "$TMP" "$gw_rss_before" "$gw_rss_after" "$ROUNDS" "$THREADS" $agw_rss <<'PY'
import glob, json, sys
tmp, rss0, rss1, rounds, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
agw_rss = [int(x) for x in sys.argv[6:8]]
rows = ["direct", "nginx", "gateway", "gateway-tls", "gateway-legacy-sse", "gateway-stateless", "gateway-auth"]
if agw_rss:
    rows.append("agentgateway")

def mean_report(label):
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{tmp}/{label}.*.json"))]
    conns = [list(map(int, open(f).read().split())) for f in sorted(glob.glob(f"{tmp}/{label}.*.conns"))]
    out = json.loads(json.dumps(runs[0]))
    t = out["total"]
    t["calls_per_sec"] = sum(r["total"]["calls_per_sec"] for r in runs) / len(runs)
    t["errors"] = sum(r["total"]["errors"] for r in runs)
    for k in t["latency"]:
        t["latency"][k] = sum(r["total"]["latency"][k] for r in runs) / len(runs)
    cpus = [r["cpu"]["ms_per_1000_calls"] for r in runs if "cpu" in r]
    t["cpu"] = sum(cpus) / len(cpus) if cpus else None
    accepted, requests = sum(c[0] for c in conns), sum(c[1] for c in conns)
    t["conns"] = 1000 * accepted / requests if requests else None
    return out

data = {r: mean_report(r) for r in rows}
cfg = data["direct"]["config"]
print(f"mode {cfg['mode']}, {cfg['sessions']} sessions, {cfg['duration_s']}s measured x {rounds} rounds (means), mix {cfg['mix']}")
print(f"gateway worker threads {threads}, nginx worker processes {threads}")
print(f"{'target':<20} {'calls/s':>8} {'errors':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'CPU ms/1k calls':>15} {'conns/1k req':>12}")
for r in rows:
    t = data[r]["total"]; l = t["latency"] or {}
    cpu = f"{t['cpu']:.0f}" if t["cpu"] is not None else "–"
    conns = f"{t['conns']:.2f}" if t["conns"] is not None else "–"
    print(f"{r:<20} {t['calls_per_sec']:>8.0f} {t['errors']:>6} {l.get('p50_ms',0):>7.2f} {l.get('p90_ms',0):>7.2f} {l.get('p99_ms',0):>7.2f} {l.get('p999_ms',0):>8.2f} {cpu:>15} {conns:>12}")
d, n, g, a = (data[r]["total"] for r in ["direct", "nginx", "gateway", "gateway-auth"])
print(f"throughput ratio gateway/direct {g['calls_per_sec']/d['calls_per_sec']:.2f}, gateway/nginx {g['calls_per_sec']/n['calls_per_sec']:.2f}, auth+limits on/off {a['calls_per_sec']/g['calls_per_sec']:.2f}")
print(f"p99 ratio gateway/direct {g['latency']['p99_ms']/d['latency']['p99_ms']:.2f}, gateway/nginx {g['latency']['p99_ms']/n['latency']['p99_ms']:.2f}, auth+limits on/off {a['latency']['p99_ms']/g['latency']['p99_ms']:.2f}")
print(f"proxy CPU per call gateway/nginx {g['cpu']/n['cpu']:.2f}, auth+limits on/off {a['cpu']/g['cpu']:.2f}")
print(f"gateway RSS {rss0/1024:.1f} MiB before, {rss1/1024:.1f} MiB after the runs")
if agw_rss:
    w = data["agentgateway"]["total"]
    print(f"throughput ratio gateway/agentgateway {g['calls_per_sec']/w['calls_per_sec']:.2f}, "
          f"p99 ratio gateway/agentgateway {g['latency']['p99_ms']/w['latency']['p99_ms']:.2f}, "
          f"p50 ratio gateway/agentgateway {g['latency']['p50_ms']/w['latency']['p50_ms']:.2f}")
    print(f"proxy CPU per call gateway/agentgateway {g['cpu']/w['cpu']:.2f}")
    print(f"agentgateway RSS {agw_rss[0]/1024:.1f} MiB before, {agw_rss[1]/1024:.1f} MiB after the runs")
PY

# Session setup rate (gateway vs direct) and idle-session capacity
# (IDLE_LEGACY + IDLE_STREAMABLE sessions held open through the gateway, then
# IDLE_BARE connections that sent nothing and IDLE_KEEPALIVE idle keep-alive ones).
if [ "${SESSION_BENCH:-1}" = 1 ]; then
  # idle legacy sessions have done initialize, as a real client's have
  python3 tests/bench/sessions.py --gateway "127.0.0.1:$GPORT" --gateway-pid "$GPID" --direct "127.0.0.1:$BPORT" \
    --legacy-handshake --backend-pid "$BPID" --backend-port "$BPORT" \
    --legacy "${IDLE_LEGACY:-2000}" --streamable "${IDLE_STREAMABLE:-2000}" --setup "${SETUP:-2000}" \
    --bare "${IDLE_BARE:-2000}" --keepalive "${IDLE_KEEPALIVE:-2000}" \
    ${WPID:+--peer "agentgateway=127.0.0.1:$WPORT" --peer-pid "$WPID"}
fi

# Then the same targets at a moderate fixed rate (open loop), unless asked not to.
if [ -z "${RATE:-}" ] && [ "${OPEN_LOOP:-1}" = 1 ]; then
  echo
  RATE=1000 SESSION_BENCH=0 OPEN_LOOP=0 bash "$ROOT/tests/bench/compare.sh"
fi
