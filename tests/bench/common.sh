# Shared by the benchmark scripts (sourced): the workspace, the load's
# defaults, a temp dir, child processes stopped on exit, port and readiness helpers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$(pwd)
BIN=${BIN:-"$ROOT/target/release"}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
SESSIONS=${SESSIONS:-8}
# Read-only by default so the store does not grow between targets (a growing
# table would penalise whichever target runs last).
MIX=${MIX:-get_agent=80,list_agents=20}
TMP=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_http URL [tries of 0.1 s] [any]: until URL answers 2xx (or anything, with "any")
wait_http() {
  local f=-sfk; [ "${3:-}" = any ] && f=-sk
  for _ in $(seq "${2:-200}"); do curl $f -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "not up: $1" >&2; return 1
}
