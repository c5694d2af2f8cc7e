#!/usr/bin/env bash
# Virtual servers (issue 22): one tool call through a 3-member virtual server
# (registry + server-everything + the conformance fixture) vs the same tool
# on its pool's own route, and tools/list on the virtual server warm (the
# catalog answers) vs cold (list_ttl 1 ms: every list asks all 3 members),
# beside the pool's own tools/list. Same gateway, same backends, rounds
# alternating; prints calls/s, the gateway's CPU ms per 1,000 calls, p50.
#   tests/bench/federation.sh [ROUNDS]
source "$(dirname "$0")/common.sh"
ROUNDS=${1:-2}
EVERYTHING="$ROOT/tests/peers/node_modules/.bin/mcp-server-everything"
BPORT=$(free_port); EPORT=$(free_port); G=$(free_port); ADM=$(free_port)
"$BIN/registry-backend" --listen "127.0.0.1:$BPORT" --db "$TMP/fed.db" --instance fed \
  --allowed-host "127.0.0.1,localhost" > /dev/null 2>&1 &
pids+=($!)
PORT=$EPORT node --require "$ROOT/tests/peers/loopback.cjs" "$EVERYTHING" streamableHttp > /dev/null 2>&1 &
pids+=($!)
"$BIN/conformance-fixture" > "$TMP/fixture.out" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$BPORT/health"
for _ in $(seq 100); do grep -q "listening on" "$TMP/fixture.out" && break; sleep 0.1; done
FIXTURE=$(grep -o 'http://[0-9.:]*' "$TMP/fixture.out" | head -1 | sed 's|http://||')
member() { printf '[[servers.members]]\npool = "%s"\nprefix = "%s"\n' "$1" "$2"; }
{
  cat <<TOML
shutdown_grace_secs = 0
[listen]
http = "127.0.0.1:$G"
admin = "127.0.0.1:$ADM"
[[pools]]
name = "registry"
discovery = { static = { backends = ["127.0.0.1:$BPORT"] } }
[[pools]]
name = "everything"
route = "/everything"
health = "mcp"
discovery = { static = { backends = ["127.0.0.1:$EPORT"] } }
[[pools]]
name = "fixture"
route = "/fixture"
health = "mcp"
discovery = { static = { backends = ["$FIXTURE"] } }
TOML
  for s in all:60s cold:1ms; do
    printf '[[servers]]\nname = "%s"\nroute = "/%s"\nlist_ttl = "%s"\n' "${s%%:*}" "${s%%:*}" "${s##*:}"
    member registry reg_; member everything ev_; member fixture ""
  done
} > "$TMP/gw.toml"
RUST_LOG=error "$BIN/mcp-gateway" --config "$TMP/gw.toml" --threads 2 > /dev/null 2>&1 &
gp=$!; pids+=($gp)
wait_http "http://127.0.0.1:$ADM/health"
for _ in $(seq 100); do
  curl -s "http://127.0.0.1:$ADM/backends" | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if all(b["healthy"] for p in d["pools"] for b in p["backends"]) else 1)' && break
  sleep 0.2
done
step() { printf '[[steps]]\n%s\n' "$1" > "$TMP/$2.toml"; }
step 'tool = "health_check"' own-call
step 'tool = "reg_health_check"' fed-call
step 'method = "tools/list"' list
run() { # label path scenario
  "$BIN/mcp-client" --url "http://127.0.0.1:$G$2" --transport streamable -o json load --scenario "$TMP/$3.toml" \
    --sessions "$SESSIONS" --duration "${DURATION}" --warmup "$WARMUP" --cpu-pid "$gp" > "$TMP/$1.$round.json"
}
for round in $(seq "$ROUNDS"); do
  run call-own-route /mcp own-call
  run call-virtual /all/mcp fed-call
  run list-own-route /mcp list
  run list-virtual-warm /all/mcp list
  run list-virtual-cold /cold/mcp list
done
python3 - "$TMP" <<'PY'
import glob, json, sys
tmp = sys.argv[1]
for label in ["call-own-route", "call-virtual", "list-own-route", "list-virtual-warm", "list-virtual-cold"]:
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{tmp}/{label}.*.json"))]
    rate = sum(r["total"]["calls_per_sec"] for r in runs) / len(runs)
    cpu = sum(r["cpu"]["ms_per_1000_calls"] for r in runs) / len(runs)
    p50 = sorted(r["total"]["latency"]["p50_ms"] for r in runs)[len(runs) // 2]
    errors = sum(r["total"].get("errors", 0) for r in runs)
    print(f"{label:20s} {rate:8.0f} calls/s  {cpu:6.1f} gateway CPU ms/1k calls  p50 {p50} ms  errors {errors}")
PY
