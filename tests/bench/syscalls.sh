#!/usr/bin/env bash
# Per-call kernel work, side by side in one run: context switches, CPU
# migrations and CPU time (perf stat) and syscalls (strace -c, on a separate
# shorter pass since strace slows the traced process) of the proxy in front —
# the gateway, nginx — and of the registry backend behind it, for the same
# fixed number of closed-loop calls (8 Streamable HTTP sessions, the
# registry's read-only mix). The direct row is the backend alone.
# Counts are less noise-sensitive than timings on a shared machine.
#   tests/bench/syscalls.sh
#   CALLS=40000 STRACE_CALLS=5000 tests/bench/syscalls.sh
#   GATEWAYS="base=/tmp/base/mcp-gateway new=target/release/mcp-gateway" tests/bench/syscalls.sh
#   RATE=1000 CALLS=10000 tests/bench/syscalls.sh   # open loop at 1,000 calls/s instead
#   STRACE_BACKEND=1 tests/bench/syscalls.sh   # the strace pass counts the backend's syscalls in every row
# Needs: perf (linux-perf), strace, nginx (nginx-light); perf_event_paranoid <= 2.
source "$(dirname "$0")/common.sh"
CALLS=${CALLS:-20000}               # measured calls per target (perf pass)
STRACE_CALLS=${STRACE_CALLS:-4000}  # calls per target under strace
THREADS=${THREADS:-2}               # gateway worker threads and nginx worker processes
GATEWAYS=${GATEWAYS:-"gateway=$BIN/mcp-gateway"}

BPORT=$(free_port); NPORT=$(free_port)
"$BIN/registry-backend" --listen "127.0.0.1:$BPORT" --db "$TMP/bench.db" --instance bench \
  --allowed-host "127.0.0.1,localhost" > /dev/null 2>&1 &
BPID=$!
pids+=($BPID)
wait_http "http://127.0.0.1:$BPORT/health"

start_nginx "$NPORT" "$BPORT"

# target rows: label|url|pids of the proxy (comma-separated; empty for direct)
rows=("direct|http://127.0.0.1:$BPORT|")
rows+=("nginx|http://127.0.0.1:$NPORT|NGINX")
export MCP_GATEWAY_SESSION_KEY=bench-session-key-0123456789abcdef
for g in $GATEWAYS; do
  label=${g%%=*} bin=${g#*=}
  G=$(free_port); ADM=$(free_port)
  RUST_LOG=error "$bin" --threads "$THREADS" --http "127.0.0.1:$G" --admin "127.0.0.1:$ADM" \
    --backend "127.0.0.1:$BPORT" > /dev/null 2>&1 &
  pids+=($!)
  rows+=("$label|http://127.0.0.1:$G|$!")
  wait_http "http://127.0.0.1:$ADM/health"
done
nginx_pids() { echo "$NPID $(pgrep -P "$NPID" | tr '\n' ' ')" | xargs | tr ' ' ','; }

# The registry's read-only mix over agents seeded once (no setup in the
# measured runs, so every call counted is a get_agent or list_agents).
cat > "$TMP/mix.toml" <<'TOML'
name = "registry-read"
[[steps]]
tool = "get_agent"
weight = 80
args = { agent_id = "load-seed-{{random(0, 199)}}" }
[[steps]]
tool = "list_agents"
weight = 20
args = { limit = 10 }
TOML
"$BIN/mcp-client" --url "http://127.0.0.1:$BPORT" -o json load --sessions 1 --calls 1 --warmup 0s \
  --seed-agents 200 --transports streamable > /dev/null

load() { # url calls out [perf output for the load generator's own CPU]
  ${4:+perf stat -x, -e task-clock -o "$4"} "$BIN/mcp-client" --url "$1" -o json load --scenario "$TMP/mix.toml" --sessions "$SESSIONS" --calls "$2" \
    --duration 300s --warmup 0s --transports streamable ${RATE:+--rate "$RATE"} > "$3"
}
# voluntary + nonvoluntary context switches of all threads of the pids
ctxsw() { local v=0 n=0; for p in ${1//,/ }; do for s in /proc/"$p"/task/*/status; do
  read -r a b < <(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v, n}' "$s" 2>/dev/null || echo "0 0")
  v=$((v + a)); n=$((n + b)); done; done; echo "$v $n"; }
perf_start() { perf stat -x, -e context-switches,cpu-migrations,task-clock -p "$1" -o "$2" > /dev/null 2>&1 & echo $!; }

for r in "${rows[@]}"; do
  IFS='|' read -r label url ppids <<< "$r"
  [ "$ppids" = NGINX ] && ppids=$(nginx_pids)
  load "$url" 2000 /dev/null   # warm the proxy's connections and allocator
  # perf pass: proxy and backend counted apart, the load's whole life
  read -r pv0 pn0 < <(ctxsw "${ppids:-$BPID}")
  pp=""; [ -n "$ppids" ] && pp=$(perf_start "$ppids" "$TMP/$label.perf.proxy")
  bp=$(perf_start "$BPID" "$TMP/$label.perf.backend")
  sleep 0.3   # perf attached
  load "$url" "$CALLS" "$TMP/$label.load.json" "$TMP/$label.perf.client"
  for p in $pp $bp; do kill -INT "$p"; wait "$p" 2>/dev/null || true; done
  read -r pv1 pn1 < <(ctxsw "${ppids:-$BPID}")
  echo "$((pv1 - pv0)) $((pn1 - pn0))" > "$TMP/$label.proc"
  # strace pass: syscalls per call (proxy, or the backend for direct)
  targs=(); for p in ${ppids//,/ }; do targs+=(-p "$p"); done
  if [ -z "$ppids" ] || [ "${STRACE_BACKEND:-0}" = 1 ]; then targs=(-p "$BPID"); fi
  strace -c -f -o "$TMP/$label.strace" "${targs[@]}" 2> /dev/null &
  sp=$!
  sleep 0.5
  load "$url" "$STRACE_CALLS" "$TMP/$label.sload.json"
  kill -INT "$sp"; wait "$sp" 2>/dev/null || true
done

python3 - "$TMP" "$SESSIONS" "${rows[@]}" <<'PY'
import json, os, sys
tmp, sessions, rows = sys.argv[1], int(sys.argv[2]), [r.split("|")[0] for r in sys.argv[3:]]

def perf(path):
    out = {}
    try:
        for line in open(path):
            f = line.strip().split(",")
            if len(f) > 2 and f[2] in ("context-switches", "cpu-migrations", "task-clock"):
                out[f[2]] = float(f[0]) if f[0] not in ("", "<not counted>", "<not supported>") else None
    except FileNotFoundError:
        pass
    return out

def strace(path):
    calls, top = 0, {}
    for line in open(path):
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            n = int(f[3]); calls += n; top[f[-1]] = n
    return calls, top

def requests(path):
    d = json.load(open(path))
    # each call is one POST; initialize + notifications/initialized per session
    return d["total"]["ok"] + d["total"]["errors"] + 2 * sessions, d["total"]["errors"]

mode = f"open loop at {os.environ['RATE']} calls/s" if os.environ.get("RATE") else "closed loop"
print(f"per call: {sessions} Streamable HTTP sessions, {mode}, get_agent=80,list_agents=20 (seeded, no setup)")
print(f"{'target':<10} {'calls':>6} {'err':>3} {'ctxsw':>6} {'vol':>5} {'invol':>5} {'migr':>5} {'CPU ms/1k':>9} "
      f"{'backend ctxsw':>13} {'backend CPU ms/1k':>17} {'client CPU ms/1k':>16} {'all CPU ms/1k':>13} {'syscalls':>8}  top syscalls per call (strace pass)")
for r in rows:
    n, err = requests(f"{tmp}/{r}.load.json")
    p, b = perf(f"{tmp}/{r}.perf.proxy"), perf(f"{tmp}/{r}.perf.backend")
    if r == "direct":
        p = b
    v, inv = map(int, open(f"{tmp}/{r}.proc").read().split())
    sn, _ = requests(f"{tmp}/{r}.sload.json")
    sc, top = strace(f"{tmp}/{r}.strace")
    tops = ", ".join(f"{k} {c / sn:.2f}" for k, c in sorted(top.items(), key=lambda kv: -kv[1])[:6])
    g = lambda d, k, s=1: f"{d[k] * s / n:.2f}" if d.get(k) is not None else "–"
    c = perf(f"{tmp}/{r}.perf.client")
    cpu = lambda d: d.get("task-clock") or 0
    machine = (cpu(b) + cpu(c) + (cpu(p) if r != "direct" else 0)) * 1000 / n
    print(f"{r:<10} {n:>6} {err:>3} {g(p, 'context-switches'):>6} {v / n:>5.2f} {inv / n:>5.2f} {g(p, 'cpu-migrations'):>5} "
          f"{g(p, 'task-clock', 1000):>9} {g(b, 'context-switches'):>13} {g(b, 'task-clock', 1000):>17} "
          f"{g(c, 'task-clock', 1000):>16} {machine:>13.1f} {sc / sn:>8.2f}  {tops}")
print("ctxsw/migr: perf stat per call; vol/invol: /proc voluntary/nonvoluntary_ctxt_switches per call (all threads);")
print("CPU: perf task-clock (ms per 1,000 calls); backend: the registry behind the proxy during the same run;")
print("client: the load generator; all: client + proxy + backend, what a closed loop on shared cores divides.")
PY
