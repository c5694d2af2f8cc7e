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
# start_nginx PORT BACKEND_PORT [STATUS_PORT]: nginx (THREADS worker processes)
# in front of the backend, as fairly as we can: keep-alive upstream, buffering
# off, sticky on Mcp-Session-Id (a no-op with one backend, but it is the work
# nginx would do); stub_status on STATUS_PORT if given. Sets NPID.
start_nginx() {
  local status=""
  [ -n "${3:-}" ] && status="server { listen 127.0.0.1:$3; location / { stub_status; } }"
  cat > "$TMP/nginx.conf" <<NGINX
worker_processes ${THREADS:-2};
error_log $TMP/nginx-error.log warn;
pid $TMP/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/body; proxy_temp_path $TMP/proxy;
  fastcgi_temp_path $TMP/fcgi; uwsgi_temp_path $TMP/uwsgi; scgi_temp_path $TMP/scgi;
  upstream registry { hash \$http_mcp_session_id consistent; server 127.0.0.1:$2; keepalive 64; }
  server {
    listen 127.0.0.1:$1;
    location / {
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:$2;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 3600s;
    }
  }
  $status
}
NGINX
  nginx -c "$TMP/nginx.conf" -g 'daemon off;' &
  NPID=$!
  pids+=($NPID)
  wait_http "http://127.0.0.1:$1/health"
}
