#!/usr/bin/env bash
# The README's test command: installs what the tests need (idempotently),
# builds the workspace once in release mode, and runs every test.
#   tests/run.sh            # everything
#   SKIP_LINT=1 tests/run.sh  # skip fmt/clippy (faster local loops)
#   CARGO_TEST_TIMEOUT, PYTEST_TIMEOUT, PEER_TIMEOUT, LINT_TIMEOUT: each suite's
#   budget in seconds (a suite over it is killed and reported "did not finish")
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { printf '\n==> %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- system packages -------------------------------------------------------
need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# headless Chromium renders mcp-client's HTML load report (test_load_scenarios.py)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# the shared store of the multi-replica tests (started by the tests on a free port)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing system packages: ${need_apt[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- Python venv (SecantusDB, MCP SDKs) --------------------------------------
VENV="$ROOT/.venv"
REQ="$ROOT/tests/requirements.txt"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
# Packages taken for their data alone (the Compose file schema), without
# their dependencies, which do not install on this Python.
REQ_DATA="$ROOT/tests/requirements-data.txt"
stamp="$VENV/.requirements.sha256"
want=$(cat "$REQ" "$REQ_DATA" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python packages"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$REQ_DATA"
  echo "$want" > "$stamp"
fi
export SECANTUSD="$VENV/bin/secantusd-py"

# --- suites ---------------------------------------------------------------------
# Each suite runs under `timeout` (its whole process group: a test binary or a
# server a test started goes too), so a hang ends as "did not finish" in the
# summary instead of blocking CI. Budgets in seconds, overridable.
CARGO_TEST_TIMEOUT=${CARGO_TEST_TIMEOUT:-1800}
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-2700}
PEER_TIMEOUT=${PEER_TIMEOUT:-900}
LINT_TIMEOUT=${LINT_TIMEOUT:-1800}
suites=()
run_suite() { # name, kind, result file, log, seconds, command...
  local name=$1 kind=$2 result=$3 logf=$4 secs=$5; shift 5
  log "$name"
  set +e
  timeout --kill-after=30 "$secs" "$@" 2>&1 | tee "$logf"
  local status=${PIPESTATUS[0]}
  set -e
  suites+=("$name=$kind:$result:$status")
}

# --- Rust ---------------------------------------------------------------------
mkdir -p "$ROOT/target"
if [ -z "${SKIP_LINT:-}" ]; then
  # A lint failure is reported in the summary with everything else.
  run_suite "lint: cargo fmt" lint "$ROOT/target/lint-fmt.log" "$ROOT/target/lint-fmt.log" "$LINT_TIMEOUT" \
    cargo fmt --all -- --check
  run_suite "lint: cargo clippy" lint "$ROOT/target/lint-clippy.log" "$ROOT/target/lint-clippy.log" "$LINT_TIMEOUT" \
    cargo clippy --workspace --all-targets -- -D warnings
else
  suites+=("lint=skipped:-:0")
fi
log "cargo build --release"
cargo build --release --workspace --bins
export E2E_BIN_DIR="$ROOT/target/release"
run_suite "rust (cargo test)" cargo "$ROOT/target/cargo-test.log" "$ROOT/target/cargo-test.log" "$CARGO_TEST_TIMEOUT" \
  cargo test --release --workspace --no-fail-fast

# --- peers: real third-party clients against the real stack -------------------
# Python mcp 1.x (the seed's API) in its own venv.
VENV1="$ROOT/.venv-mcp1"
REQ1="$ROOT/tests/peers/requirements-mcp1.txt"
[ -x "$VENV1/bin/python" ] || python3 -m venv "$VENV1"
want1=$(sha256sum "$REQ1" | cut -d' ' -f1)
if [ "$(cat "$VENV1/.requirements.sha256" 2>/dev/null)" != "$want1" ]; then
  log "installing the mcp 1.x venv"
  "$VENV1/bin/pip" install -q --disable-pip-version-check -r "$REQ1"
  echo "$want1" > "$VENV1/.requirements.sha256"
fi
# Node peers (inspector-cli on Node 20, the conformance suite on Node 22), pinned by package-lock.json.
PEERS="$ROOT/tests/peers"
wantn=$(sha256sum "$PEERS/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$PEERS/node_modules/.lock.sha256" 2>/dev/null)" != "$wantn" ]; then
  log "installing Node peers (npm ci)"
  (cd "$PEERS" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$wantn" > "$PEERS/node_modules/.lock.sha256"
fi

rm -f "$ROOT/target/pytest.xml"
run_suite "python-mcp-2.3.0" junit "$ROOT/target/pytest.xml" "$ROOT/target/pytest.log" "$PYTEST_TIMEOUT" \
  bash -c "cd '$ROOT/tests/python' && '$VENV/bin/pytest' -q --timeout 300 -p no:cacheprovider --junitxml='$ROOT/target/pytest.xml'"
run_suite "seed-client-mcp1" peer "$ROOT/target/peer-mcp1.log" "$ROOT/target/peer-mcp1.log" "$PEER_TIMEOUT" \
  "$VENV1/bin/python" "$PEERS/seed_client_mcp1.py"
run_suite "inspector-cli" peer "$ROOT/target/peer-inspector.log" "$ROOT/target/peer-inspector.log" "$PEER_TIMEOUT" \
  "$VENV/bin/python" "$PEERS/inspector.py"
run_suite "conformance" peer "$ROOT/target/peer-conformance.log" "$ROOT/target/peer-conformance.log" "$PEER_TIMEOUT" \
  "$VENV/bin/python" "$PEERS/conformance.py"

# --- summary: counted from each harness's own result lines --------------------
echo
exec python3 "$ROOT/tests/summary.py" "${suites[@]}"
