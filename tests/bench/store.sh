#!/usr/bin/env bash
# The shared store ([cluster] store = Redis), one run, two questions:
#  cost     — the same MCP load (mcp-client load, one API key, limits on but
#             never hit) through a gateway with local limits only and through
#             one whose limits go through Redis: calls/s, p50/p99, the
#             gateway's CPU per 1,000 calls, Redis's CPU per 1,000 calls, store
#             calls per request; closed loop, then open loop at RATE calls/s;
#             rounds alternate the order;
#  accuracy — one principal (limit LIMIT/s, burst LIMIT) spread over three
#             replicas, each offered 2 x LIMIT calls/s (open loop), with and
#             without the store: what the three admitted together, per second.
#   tests/bench/store.sh                      # ~3 minutes
#   DURATION=20s ROUNDS=3 RATE=1000 LIMIT=100 tests/bench/store.sh
# Needs: cargo build --release --workspace; redis-server (apt-get install redis-server).
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-2}
RATE=${RATE:-1000}
LIMIT=${LIMIT:-100}
THREADS=${THREADS:-2}

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no > /dev/null 2>&1 &
RPID=$!
pids+=($RPID)
for _ in $(seq 100); do redis-cli -p "$RPORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
BPORT=$(free_port)
"$BIN/registry-backend" --listen "127.0.0.1:$BPORT" --db "$TMP/bench.db" --instance bench \
  --allowed-host "127.0.0.1,localhost" > /dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$BPORT/health"

export MCP_GATEWAY_SESSION_KEY=bench-session-key-0123456789abcdef
KEY=bench-api-key-0123456789
gateway() { # name store(0|1) tier-limits → sets PORT_name, ADMIN_name, PID_name
  local name=$1 http admin store=""
  http=$(free_port); admin=$(free_port)
  [ "$2" = 1 ] && store="[cluster]
store = \"redis://127.0.0.1:$RPORT/0\"
replicas = 3"
  cat > "$TMP/$name.toml" <<TOML
[listen]
http = "127.0.0.1:$http"
admin = "127.0.0.1:$admin"
$store
[[auth.keys]]
principal = "bench"
sha256 = "$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
[limits.tiers.default]
$3
[[pools]]
name = "registry"
discovery = { static = { backends = ["127.0.0.1:$BPORT"] } }
TOML
  RUST_LOG=error "$BIN/mcp-gateway" --threads "$THREADS" --config "$TMP/$name.toml" > /dev/null 2>&1 &
  pids+=($!)
  printf -v "PID_$name" %s "$!"; printf -v "PORT_$name" %s "$http"; printf -v "ADMIN_$name" %s "$admin"
  wait_http "http://127.0.0.1:$admin/health"
  for _ in $(seq 100); do curl -s "http://127.0.0.1:$admin/backends" | grep -q '"healthy": true' && break; sleep 0.05; done
}
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# --- cost ------------------------------------------------------------------------
HIGH='requests_per_second = 1000000
tool_calls_per_minute = 100000000
sessions_per_minute = 100000'
gateway local 0 "$HIGH"
gateway store 1 "$HIGH"
cost_run() { # name round [--rate N]
  local name=$1 round=$2; shift 2
  local port admin pid r0 q0 s0 s1
  port=PORT_$name; admin=ADMIN_$name; pid=PID_$name
  r0=$(ticks "$RPID"); q0=$(metric "${!admin}" mcp_gateway_requests_total); s0=$(metric "${!admin}" mcp_gateway_store_calls_total)
  "$BIN/mcp-client" --url "http://127.0.0.1:${!port}" --api-key "$KEY" -o json load --sessions "$SESSIONS" \
    --duration "$DURATION" --warmup "$WARMUP" --mix "$MIX" --transports streamable --seed-agents 200 \
    --cpu-pid "${!pid}" "$@" > "$TMP/cost.$name.$round.json"
  s1=$(metric "${!admin}" mcp_gateway_store_calls_total)
  echo "$(( $(ticks "$RPID") - r0 )) $(( $(metric "${!admin}" mcp_gateway_requests_total) - q0 )) $(( ${s1:-0} - ${s0:-0} ))" \
    > "$TMP/cost.$name.$round.extra"
}
cost_table() { # title
  python3 - "$TMP" "$1" <<'PY'
import glob, json, sys
tmp, title = sys.argv[1], sys.argv[2]
print(title)
print(f"{'gateway':<8} {'calls/s':>8} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'gw CPU ms/1k':>12} {'redis CPU ms/1k':>15} {'store calls/req':>15}")
rows = {}
for name in ("local", "store"):
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{tmp}/cost.{name}.*.json"))]
    extra = [list(map(int, open(f).read().split())) for f in sorted(glob.glob(f"{tmp}/cost.{name}.*.extra"))]
    calls = sum(r["total"]["ok"] + r["total"]["errors"] for r in runs)
    mean = lambda f: sum(f(r) for r in runs) / len(runs)
    redis_ms = 10 * sum(e[0] for e in extra)  # 100 ticks a second
    row = dict(cps=mean(lambda r: r["total"]["calls_per_sec"]), err=sum(r["total"]["errors"] for r in runs),
               p50=mean(lambda r: r["total"]["latency"]["p50_ms"]), p99=mean(lambda r: r["total"]["latency"]["p99_ms"]),
               cpu=mean(lambda r: r["cpu"]["ms_per_1000_calls"]), redis=1000 * redis_ms / calls,
               per_req=sum(e[2] for e in extra) / max(1, sum(e[1] for e in extra)))
    rows[name] = row
    print(f"{name:<8} {row['cps']:>8.0f} {row['err']:>6} {row['p50']:>7.2f} {row['p99']:>7.2f} {row['cpu']:>12.0f} {row['redis']:>15.0f} {row['per_req']:>15.2f}")
l, s = rows["local"], rows["store"]
print(f"store on/off: throughput {s['cps']/l['cps']:.2f}, p50 {1000*(s['p50']-l['p50']):+.0f} µs, p99 {1000*(s['p99']-l['p99']):+.0f} µs, gateway CPU per call {s['cpu']/l['cpu']:.2f}")
PY
  rm -f "$TMP"/cost.*
}
for mode in closed open; do
  for round in $(seq "$ROUNDS"); do
    order=(local store); [ $((round % 2)) = 0 ] && order=(store local)
    for name in "${order[@]}"; do
      if [ "$mode" = open ]; then cost_run "$name" "$round" --rate "$RATE"; else cost_run "$name" "$round"; fi
    done
  done
  if [ "$mode" = open ]; then title="open loop at $RATE calls/s"; else title="closed loop"; fi
  cost_table "$title, $SESSIONS sessions, $DURATION x $ROUNDS rounds (means), mix $MIX"
  echo
done

# --- accuracy ------------------------------------------------------------------------
LIMITED="requests_per_second = $LIMIT
burst = $LIMIT"
for i in 1 2 3; do gateway "plain$i" 0 "$LIMITED"; gateway "shared$i" 1 "$LIMITED"; done
echo "accuracy: one principal, limit $LIMIT/s burst $LIMIT, 3 replicas each offered $((2 * LIMIT)) calls/s for $DURATION (open loop)"
for kind in plain shared; do
  clients=()
  for i in 1 2 3; do
    port=PORT_$kind$i
    "$BIN/mcp-client" --url "http://127.0.0.1:${!port}" --api-key "$KEY" -o json load --sessions 4 \
      --duration "$DURATION" --warmup "$WARMUP" --mix get_agent=100 --transports streamable --seed-agents 0 \
      --rate $((2 * LIMIT)) > "$TMP/acc.$kind.$i.json" 2> /dev/null &
    clients+=($!)
  done
  wait "${clients[@]}"
  python3 - "$TMP" "$kind" "$LIMIT" <<'PY'
import glob, json, sys
tmp, kind, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = [json.load(open(f)) for f in sorted(glob.glob(f"{tmp}/acc.{kind}.*.json"))]
admitted = sum(r["total"]["calls_per_sec"] for r in runs)
refused = sum(r["errors_by_kind"].get("rate_limited", 0) for r in runs)
each = ", ".join(f"{r['total']['calls_per_sec']:.0f}" for r in runs)
label = "with the store" if kind == "shared" else "local limits only"
print(f"  {label:<18} admitted {admitted:6.1f}/s ({each}), {admitted / limit:.2f}x the limit; {refused} refused (429)")
PY
done
