#!/usr/bin/env bash
# The README's test command: installs what the tests need (idempotently),
# builds the workspace once in release mode, and runs every test.
#   tests/run.sh            # everything
#   SKIP_LINT=1 tests/run.sh  # skip fmt/clippy (faster local loops)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { printf '\n==> %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- system packages -------------------------------------------------------
need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
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
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python packages"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  echo "$want" > "$stamp"
fi
export SECANTUSD="$VENV/bin/secantusd-py"

# --- Rust ---------------------------------------------------------------------
if [ -z "${SKIP_LINT:-}" ]; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy"
  cargo clippy --workspace --all-targets -- -D warnings
fi
log "cargo build --release"
cargo build --release --workspace --bins
export E2E_BIN_DIR="$ROOT/target/release"
log "cargo test --release"
set +e
cargo test --release --workspace 2>&1 | tee "$ROOT/target/cargo-test.log"
rust_status=${PIPESTATUS[0]}
set -e

# --- peers: real third-party clients against the real stack -------------------
log "pytest (Python MCP SDK against the gateway)"
set +e
(cd "$ROOT/tests/python" && "$VENV/bin/pytest" -q --timeout 300 -p no:cacheprovider) 2>&1 | tee "$ROOT/target/pytest.log"
py_status=${PIPESTATUS[0]}
set -e

# --- summary ------------------------------------------------------------------
count() { grep -Eo "[0-9]+ $2" "$1" | awk '{s+=$1} END {print s+0}'; }
echo
echo "summary:"
echo "  rust (cargo test):        $(count "$ROOT/target/cargo-test.log" passed) passed, $(count "$ROOT/target/cargo-test.log" failed) failed"
echo "  python mcp 2.3.0 (pytest): $(count "$ROOT/target/pytest.log" passed) passed, $(count "$ROOT/target/pytest.log" failed) failed"
total_passed=$(( $(count "$ROOT/target/cargo-test.log" passed) + $(count "$ROOT/target/pytest.log" passed) ))
total_failed=$(( $(count "$ROOT/target/cargo-test.log" failed) + $(count "$ROOT/target/pytest.log" failed) ))
echo "all: $total_passed passed, $total_failed failed"
[ "$rust_status" = 0 ] && [ "$py_status" = 0 ]
