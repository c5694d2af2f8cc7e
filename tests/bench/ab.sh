#!/usr/bin/env bash
# A/B of two gateway binaries: the same backend and load, alternating rounds,
# so drift evens out. Prints calls/s and the gateway's CPU ms per 1,000 calls.
#   tests/bench/ab.sh /path/to/mcp-gateway-A /path/to/mcp-gateway-B [ROUNDS]
# e.g. build the old commit in a worktree and copy its binary aside first.
source "$(dirname "$0")/common.sh"
A_BIN=$1 B_BIN=$2 ROUNDS=${3:-3}
BPORT=$(free_port)
"$BIN/registry-backend" --listen "127.0.0.1:$BPORT" --db "$TMP/ab.db" --instance ab \
  --allowed-host "127.0.0.1,localhost" > /dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$BPORT/health"
for round in $(seq "$ROUNDS"); do
  for v in A B; do
    bin=$A_BIN; [ "$v" = B ] && bin=$B_BIN
    G=$(free_port); ADM=$(free_port)
    RUST_LOG=error "$bin" --http "127.0.0.1:$G" --admin "127.0.0.1:$ADM" --backend "127.0.0.1:$BPORT" \
      --threads 2 > /dev/null 2>&1 &
    gp=$!
    wait_http "http://127.0.0.1:$ADM/health"
    "$BIN/mcp-client" --url "http://127.0.0.1:$G" -o json load --sessions 8 --duration 10s --warmup 2s \
      --mix get_agent=80,list_agents=20 --transports streamable --seed-agents 200 --cpu-pid "$gp" \
      > "$TMP/$v.$round.json"
    kill "$gp"; wait "$gp" 2>/dev/null || true
    python3 - "$round" "$v" "$TMP/$v.$round.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[3]))
print(f"round {sys.argv[1]} {sys.argv[2]}: {d['total']['calls_per_sec']:.0f} calls/s, "
      f"{d['cpu']['ms_per_1000_calls']:.1f} CPU ms/1k calls, p50 {d['total']['latency']['p50_ms']} ms")
PY
  done
done
