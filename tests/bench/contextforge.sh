#!/usr/bin/env bash
# An MCP-aware peer beside the gateway, same load: IBM ContextForge
# (mcp-contextforge-gateway 1.0.7.post20260921, embedded SQLite) fronting the
# same kind of registry backend as a registered MCP server, versus
# mcp-gateway, versus the backend directly, two rounds alternating.
# ContextForge's own auth stays on; a token is minted with its CLI.
#   tests/bench/contextforge.sh          # installs ContextForge into .venv-contextforge once
# Needs: cargo build --release --workspace.
source "$(dirname "$0")/common.sh"
VENV="$ROOT/.venv-contextforge"
if [ ! -x "$VENV/bin/mcpgateway" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "mcp-contextforge-gateway==1.0.7.post20260921"
fi

BPORT=$(free_port); CPORT=$(free_port); GPORT=$(free_port); APORT=$(free_port)
"$BIN/registry-backend" --listen "127.0.0.1:$BPORT" --db "$TMP/bench.db" --instance bench \
  --allowed-host "127.0.0.1,localhost" > /dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$BPORT/health"

export JWT_SECRET_KEY="contextforge-bench-secret-0123456789abcdef-xyz"
export AUTH_ENCRYPTION_SECRET="contextforge-bench-encryption-0123456789abcdef"
export PLATFORM_ADMIN_EMAIL=admin@example.com PLATFORM_ADMIN_PASSWORD="Bench-Passw0rd-123456!"
export BASIC_AUTH_PASSWORD="Bench-Basic-Passw0rd-123!"
export DATABASE_URL="sqlite:///$TMP/contextforge.db" MCPGATEWAY_UI_ENABLED=false MCPGATEWAY_ADMIN_API_ENABLED=true
export SSRF_ALLOW_LOCALHOST=true SSRF_ALLOW_PRIVATE_NETWORKS=true LOG_LEVEL=ERROR ENVIRONMENT=development
# its rate limiter (100 MCP requests per minute, then a 15-minute lockout) is
# turned off: we measure the proxy path, as with ours (limits off by default)
export RATE_LIMITING_ENABLED=false TOOL_RATE_LIMIT=1000000 RATE_LIMIT_LOCKOUT_ENABLED=false
export CACHE_TYPE=memory HOST=127.0.0.1 PORT=$CPORT
(cd "$TMP" && exec "$VENV/bin/mcpgateway" --host 127.0.0.1 --port "$CPORT" > "$TMP/contextforge.log" 2>&1) &
CFPID=$!
pids+=($CFPID)
wait_http "http://127.0.0.1:$CPORT/health" 600 any || { tail -30 "$TMP/contextforge.log"; exit 1; }
TOKEN=$("$VENV/bin/python" -m mcpgateway.utils.create_jwt_token --username admin@example.com --exp 120 \
  --secret "$JWT_SECRET_KEY" --admin 2>/dev/null | tail -1)
auth=(-H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json")
curl -sf "${auth[@]}" -X POST "http://127.0.0.1:$CPORT/gateways" \
  -d "{\"name\":\"registry\",\"url\":\"http://127.0.0.1:$BPORT/mcp\",\"transport\":\"STREAMABLEHTTP\"}" > "$TMP/gw.json" \
  || { echo "registering the backend failed:"; curl -s "${auth[@]}" -X POST "http://127.0.0.1:$CPORT/gateways" \
       -d "{\"name\":\"registry2\",\"url\":\"http://127.0.0.1:$BPORT/mcp\",\"transport\":\"STREAMABLEHTTP\"}"; echo; tail -20 "$TMP/contextforge.log"; exit 1; }
TOOLS=$(curl -sf "${auth[@]}" "http://127.0.0.1:$CPORT/tools?limit=0" | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.get("items", d) if isinstance(d, dict) else d; print(json.dumps([t["id"] for t in d]))')
SERVER=$(curl -sf "${auth[@]}" -X POST "http://127.0.0.1:$CPORT/servers" \
  -d "{\"server\":{\"name\":\"registry\",\"associated_tools\":$TOOLS}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
CFURL="http://127.0.0.1:$CPORT/servers/$SERVER/mcp"
echo "ContextForge: $(echo "$TOOLS" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') tools behind $CFURL"

MCP_GATEWAY_SESSION_KEY=bench-session-key-0123456789abcdef "$BIN/mcp-gateway" --threads 2 --http "127.0.0.1:$GPORT" \
  --admin "127.0.0.1:$APORT" --backend "127.0.0.1:$BPORT" > /dev/null 2>&1 &
GPID=$!
pids+=($GPID)
wait_http "http://127.0.0.1:$GPORT/health"
sleep 1

cf_pids() { echo "$CFPID $(pgrep -P "$CFPID" | tr '\n' ' ')" | xargs | tr ' ' ','; }
run() { # label url round cpu [extra]
  local label=$1 url=$2 round=$3 cpu=$4; shift 4
  "$BIN/mcp-client" --url "$url" "$@" -o json load --sessions "$SESSIONS" --duration "$DURATION" --warmup "$WARMUP" \
    --mix "$MIX" --transports streamable --seed-agents 200 ${RATE:+--rate "$RATE"} ${cpu:+--cpu-pid "$cpu"} \
    > "$TMP/$label.$round.json" 2> "$TMP/$label.$round.err" || { echo "$label failed:"; tail -5 "$TMP/$label.$round.err"; }
}
for round in 1 2; do
  if [ $round = 1 ]; then order=(direct contextforge gateway); else order=(gateway contextforge direct); fi
  for t in "${order[@]}"; do
    case $t in
      direct) run direct "http://127.0.0.1:$BPORT/mcp" $round "" ;;
      gateway) run gateway "http://127.0.0.1:$GPORT/mcp" $round "$GPID" ;;
      contextforge) run contextforge "$CFURL" $round "$(cf_pids)" --token "$TOKEN" ;;
    esac
  done
done
python3 - "$TMP" <<'PY'
import glob, json, sys
tmp = sys.argv[1]
print(f"{'target':<14} {'calls/s':>8} {'errors':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/1k calls':>15}")
for label in ["direct", "contextforge", "gateway"]:
    runs = []
    for f in sorted(glob.glob(f"{tmp}/{label}.*.json")):
        try:
            runs.append(json.load(open(f)))
        except ValueError:
            pass
    if not runs:
        print(f"{label:<14} no result")
        continue
    n = len(runs)
    cps = sum(r["total"]["calls_per_sec"] for r in runs) / n
    err = sum(r["total"]["errors"] for r in runs)
    lat = [r["total"]["latency"] or {} for r in runs]
    p50 = sum(l.get("p50_ms", 0) for l in lat) / n
    p99 = sum(l.get("p99_ms", 0) for l in lat) / n
    cpus = [r["cpu"]["ms_per_1000_calls"] for r in runs if "cpu" in r]
    cpu = f"{sum(cpus) / len(cpus):.0f}" if cpus else "–"
    print(f"{label:<14} {cps:>8.0f} {err:>7} {p50:>7.2f} {p99:>7.2f} {cpu:>15}")
PY
