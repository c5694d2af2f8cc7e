#!/usr/bin/env bash
# The README's run command: builds once, then starts the whole local stack —
# the gateway on 127.0.0.1:8080 (HTTP) and :8443 (HTTPS, development CA)
# with two supervised registry backends sharing the embedded store in .run/.
#   BACKENDS=3 deploy/local/run.sh     # more backends
#   HTTP_ADDR, HTTPS_ADDR, ADMIN_ADDR move the listeners; RUN_DIR moves .run/
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v cmake >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  echo "installing cmake and make (needed to build the TLS library and jemalloc)"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake make >/dev/null
fi
cargo build --release --workspace --bins
RUN=${RUN_DIR:-$ROOT/.run}
mkdir -p "$RUN"
# A stable session key, so sessions survive a gateway restart.
if [ ! -s "$RUN/session.key" ]; then
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$RUN/session.key"
  chmod 600 "$RUN/session.key"
fi
export MCP_GATEWAY_SESSION_KEY="$(cat "$RUN/session.key")"
echo "starting mcp-gateway with ${BACKENDS:-2} registry backends (data: $RUN/registry.db)"
exec "$ROOT/target/release/mcp-gateway" \
  --http "${HTTP_ADDR:-127.0.0.1:8080}" \
  --https "${HTTPS_ADDR:-127.0.0.1:8443}" \
  --admin "${ADMIN_ADDR:-127.0.0.1:9090}" \
  --dev-tls-dir "$RUN/tls" \
  --managed "${BACKENDS:-2}" \
  --backend-arg="--db=$RUN/registry.db"
