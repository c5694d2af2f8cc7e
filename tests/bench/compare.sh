#!/usr/bin/env bash
# Side-by-side benchmark in one run: the same MCP load (mcp-client load)
# against (1) a registry backend directly, (2) nginx in front of it,
# (3) mcp-gateway in front of it. All three front the same single backend,
# so the differences are the proxies'. Prints one table and the ratios.
#   tests/bench/compare.sh                     # defaults below
#   DURATION=20s SESSIONS=16 RATE= tests/bench/compare.sh
# Needs: cargo build --release --workspace; nginx (apt-get install nginx).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BIN="$ROOT/target/release"
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
SESSIONS=${SESSIONS:-8}
# Read-only by default so the store does not grow between targets (a growing
# table would penalise whichever target runs last).
MIX=${MIX:-get_agent=80,list_agents=20}
ROUNDS=${ROUNDS:-2}
TMP=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "not up: $1" >&2; return 1; }

BPORT=$(free_port); NPORT=$(free_port); GPORT=$(free_port); APORT=$(free_port)
"$BIN/registry-backend" --listen "127.0.0.1:$BPORT" --db "$TMP/bench.db" --instance bench \
  --allowed-host "127.0.0.1,localhost" > /dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$BPORT/health"

cat > "$TMP/nginx.conf" <<NGINX
worker_processes 2;
error_log $TMP/nginx-error.log warn;
pid $TMP/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/body; proxy_temp_path $TMP/proxy;
  fastcgi_temp_path $TMP/fcgi; uwsgi_temp_path $TMP/uwsgi; scgi_temp_path $TMP/scgi;
  upstream registry { server 127.0.0.1:$BPORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NPORT;
    location / {
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:$BPORT;
      proxy_buffering off;
      proxy_read_timeout 3600s;
    }
  }
}
NGINX
nginx -c "$TMP/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_http "http://127.0.0.1:$NPORT/health"

MCP_GATEWAY_SESSION_KEY=bench-session-key-0123456789abcdef "$BIN/mcp-gateway" \
  --http "127.0.0.1:$GPORT" --admin "127.0.0.1:$APORT" --backend "127.0.0.1:$BPORT" > /dev/null 2>&1 &
GPID=$!
pids+=($GPID)
wait_http "http://127.0.0.1:$GPORT/health"
for _ in $(seq 100); do curl -s "http://127.0.0.1:$APORT/backends" | grep -q '"healthy": true' && break; sleep 0.05; done

run() { # label url transport round
  "$BIN/mcp-client" --url "$2" -o json load --sessions "$SESSIONS" --duration "$DURATION" --warmup "$WARMUP" \
    --mix "$MIX" --transports "$3" --seed-agents 200 ${RATE:+--rate "$RATE"} > "$TMP/$1.$4.json"
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
gw_rss_before=$(rss $GPID)
targets=("direct http://127.0.0.1:$BPORT streamable" "nginx http://127.0.0.1:$NPORT streamable"
         "gateway http://127.0.0.1:$GPORT streamable" "gateway-legacy-sse http://127.0.0.1:$GPORT sse"
         "gateway-stateless http://127.0.0.1:$GPORT stateless")
# Rounds alternate the order (A B C … then … C B A) so drift over time evens out.
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order=("${targets[@]}"); else order=(); for ((i=${#targets[@]}-1; i>=0; i--)); do order+=("${targets[$i]}"); done; fi
  for t in "${order[@]}"; do set -- $t; run "$1" "$2" "$3" "$round"; done
done
gw_rss_after=$(rss $GPID)

python3 - "$TMP" "$gw_rss_before" "$gw_rss_after" "$ROUNDS" <<'PY'
import glob, json, sys
tmp, rss0, rss1, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = ["direct", "nginx", "gateway", "gateway-legacy-sse", "gateway-stateless"]

def mean_report(label):
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{tmp}/{label}.*.json"))]
    out = json.loads(json.dumps(runs[0]))
    t = out["total"]
    t["calls_per_sec"] = sum(r["total"]["calls_per_sec"] for r in runs) / len(runs)
    t["errors"] = sum(r["total"]["errors"] for r in runs)
    for k in t["latency"]:
        t["latency"][k] = sum(r["total"]["latency"][k] for r in runs) / len(runs)
    return out

data = {r: mean_report(r) for r in rows}
cfg = data["direct"]["config"]
print(f"mode {cfg['mode']}, {cfg['sessions']} sessions, {cfg['duration_s']}s measured x {rounds} rounds (means), mix {cfg['mix']}")
print(f"{'target':<20} {'calls/s':>9} {'errors':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}")
for r in rows:
    t = data[r]["total"]; l = t["latency"] or {}
    print(f"{r:<20} {t['calls_per_sec']:>9.0f} {t['errors']:>7} {l.get('p50_ms',0):>8.2f} {l.get('p90_ms',0):>8.2f} {l.get('p99_ms',0):>8.2f} {l.get('p999_ms',0):>9.2f}")
d, n, g = (data[r]["total"] for r in ["direct", "nginx", "gateway"])
print(f"throughput ratio gateway/direct {g['calls_per_sec']/d['calls_per_sec']:.2f}, gateway/nginx {g['calls_per_sec']/n['calls_per_sec']:.2f}")
print(f"p99 ratio gateway/direct {g['latency']['p99_ms']/d['latency']['p99_ms']:.2f}, gateway/nginx {g['latency']['p99_ms']/n['latency']['p99_ms']:.2f}")
print(f"gateway RSS {rss0/1024:.1f} MiB before, {rss1/1024:.1f} MiB after the runs")
PY
