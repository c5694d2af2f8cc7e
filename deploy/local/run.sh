#!/usr/bin/env bash
# The README's run command: build once, then start the local stack.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
command -v cmake >/dev/null 2>&1 || {
  echo "installing cmake (needed to build the gateway's TLS)"; 
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq cmake >/dev/null; else sudo apt-get update -qq && sudo apt-get install -y -qq cmake >/dev/null; fi
}
cargo build --release --workspace --bins
mkdir -p "$ROOT/.run"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for port in 8091 8092; do
  "$ROOT/target/release/registry-backend" --listen "127.0.0.1:$port" --instance "registry-$port" \
    --db "$ROOT/.run/registry.db" &
  pids+=($!)
done
echo "registry backends: http://127.0.0.1:8091/mcp http://127.0.0.1:8092/mcp (embedded store .run/registry.db)"
echo "press Ctrl+C to stop"
wait
