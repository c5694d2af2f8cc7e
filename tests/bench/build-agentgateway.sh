#!/usr/bin/env bash
# Builds agentgateway (github.com/agentgateway/agentgateway, the MCP-aware
# Rust gateway) from a checked-out source tree without its git forks, for
# compare.sh's optional `agentgateway` target. Prints the binary's path on
# stdout (cargo's output goes to stderr). A fat-LTO release build, ~35 min from clean on
# 2 cores: never in CI.
#   tests/bench/build-agentgateway.sh /work/agw/src
#   AGENTGATEWAY=$(tests/bench/build-agentgateway.sh /work/agw/src) tests/bench/compare.sh
#
# Its Cargo.toml patches four crates with git forks that cannot be fetched
# here. The script rewrites Cargo.toml and Cargo.lock from the originals
# (kept once as *.orig, so running it again changes nothing further):
#  - schemars: the crates.io release; the fork-only feature "arcstr1" is
#    dropped (schemars is compiled only with agentgateway's `schema` feature, off here);
#  - wiremock: compiled in (its test helpers are part of the library), and
#    they use the fork's TLS mock servers and `Request::version`. The fork's
#    commit is nowhere to be had, but both are upstream pull requests in
#    github.com/LukeMathWalker/wiremock-rs: 163 (TLS mock servers) and 164
#    (the fork owner's `Request::version`). The stand-in is 163's head (on
#    0.6.4; the fork says 0.6.5) with 164's commit applied, from a git copy
#    of that repository holding both: AGW_WIREMOCK_GIT (here: the `fetch`
#    tool's /work/.mirror/LukeMathWalker+wiremock-rs/repo; elsewhere: a clone
#    that fetched pull/163/head and pull/164/head), unpacked into
#    SRC_DIR.offline/wiremock;
#  - async-openai: no crates.io release compiles its LLM crate (agent-llm,
#    always compiled in, though not on the MCP or proxy path): 0.41.3 lacks
#    what the fork added, 0.42.3 and 0.43.0 add it with another API (31 and 32
#    errors). The fork's commit is in github.com/64bit/async-openai as the
#    head of pull request 572, so it is taken from a git copy of that
#    repository: AGW_ASYNC_OPENAI_GIT, a git dir holding that commit (here:
#    the `fetch` tool's /work/.mirror/64bit+async-openai/repo; elsewhere:
#    git clone https://github.com/64bit/async-openai && git -C async-openai
#    fetch origin pull/572/head). Unpacked into SRC_DIR.offline/async-openai.
#  - http-serde: the fork (on GitLab) adds `header_name` and `option::scheme`,
#    which agentgateway's config types use (an auth header's name, a CEL
#    request's scheme; neither on the path measured). The crates.io release
#    2.1.1, copied into SRC_DIR.offline/http-serde, gets those two (and
#    `scheme`), written here.
# Its rust-toolchain.toml pins a channel that may not be installed; then the
# default toolchain is used (AGW_TOOLCHAIN to choose one).
# Env: AGW_TARGET (cargo target dir, default /work/target-agw), AGW_JOBS (default 2).
set -euo pipefail
SRC=$(cd "${1:?usage: build-agentgateway.sh SRC_DIR}" && pwd)
cd "$SRC"
[ -f Cargo.toml ] && [ -d crates/agentgateway-app ] || { echo "not an agentgateway source tree: $SRC" >&2; exit 1; }
[ -f Cargo.toml.orig ] || cp Cargo.toml Cargo.toml.orig
[ -f Cargo.lock.orig ] || cp Cargo.lock Cargo.lock.orig
OFF="$SRC.offline"   # the forks' stand-ins, outside its workspace

if [ -n "${AGW_TOOLCHAIN:-}" ]; then
  export RUSTUP_TOOLCHAIN=$AGW_TOOLCHAIN
elif [ -f rust-toolchain.toml ] && command -v rustup > /dev/null; then
  pinned=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
  rustup toolchain list | grep -q "^$pinned" || export RUSTUP_TOOLCHAIN=stable
fi
echo "toolchain: $(rustc --version)" >&2

# async-openai: the fork's commit, from a git copy of the upstream repository
rev=$(sed -n 's/^async-openai = { git = "[^"]*", rev = "\([0-9a-f]*\)" }$/\1/p' Cargo.toml.orig)
[ -n "$rev" ] || { echo "no async-openai git patch in Cargo.toml.orig" >&2; exit 1; }
if [ "$(cat "$OFF/async-openai/.rev" 2>/dev/null)" != "$rev" ]; then
  AO=${AGW_ASYNC_OPENAI_GIT:-/work/.mirror/64bit+async-openai/repo}
  git --git-dir="$AO" cat-file -e "$rev^{commit}" 2>/dev/null \
    || { echo "async-openai $rev not in AGW_ASYNC_OPENAI_GIT=$AO (see this script's header)" >&2; exit 1; }
  rm -rf "$OFF/async-openai" && mkdir -p "$OFF/async-openai"
  # (a partial mirror may lack the examples' audio files: git then names them, harmlessly)
  git --git-dir="$AO" archive "$rev" Cargo.toml async-openai async-openai-macros | tar -x -C "$OFF/async-openai"
  [ -f "$OFF/async-openai/async-openai/src/lib.rs" ] || { echo "unpacking async-openai $rev failed" >&2; exit 1; }
  echo "$rev" > "$OFF/async-openai/.rev"
fi

# wiremock: upstream pull request 163's head with 164's commit applied
WM_TLS=1edfaeef4f5ed9d3003b836da844fd6c81d7ce7e
WM_VERSION=ae6ebd9afc6b927bd4d50d94ce6e0fedcef38644
if [ "$(cat "$OFF/wiremock/.rev" 2>/dev/null)" != "$WM_TLS+$WM_VERSION" ]; then
  WM=${AGW_WIREMOCK_GIT:-/work/.mirror/LukeMathWalker+wiremock-rs/repo}
  for c in $WM_TLS $WM_VERSION; do
    git --git-dir="$WM" cat-file -e "$c^{commit}" 2>/dev/null \
      || { echo "wiremock $c not in AGW_WIREMOCK_GIT=$WM (see this script's header)" >&2; exit 1; }
  done
  rm -rf "$OFF/wiremock" && mkdir -p "$OFF/wiremock"
  git --git-dir="$WM" archive "$WM_TLS" | tar -x -C "$OFF/wiremock"
  git --git-dir="$WM" diff "$WM_VERSION^" "$WM_VERSION" | (cd "$OFF/wiremock" && git apply)
  echo "$WM_TLS+$WM_VERSION" > "$OFF/wiremock/.rev"
fi

# http-serde: the crates.io release, plus what agentgateway uses of the fork
if [ ! -f "$OFF/http-serde/.done" ]; then
  probe=$(mktemp -d)
  mkdir -p "$probe/src" && touch "$probe/src/lib.rs"
  printf '[package]\nname = "probe"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nhttp-serde = "=2.1.1"\n' > "$probe/Cargo.toml"
  manifest=$(cd "$probe" && cargo metadata --format-version 1 \
    | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "http-serde"))')
  rm -rf "$probe" "$OFF/http-serde" && mkdir -p "$OFF"
  cp -r "$(dirname "$manifest")" "$OFF/http-serde"
  chmod -R u+w "$OFF/http-serde"
  python3 - "$OFF/http-serde/src/lib.rs" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
anchor = "    struct OptionVisitor<V>(V);\n"
assert s.count(anchor) == 1, "http-serde's lib.rs is not the 2.1.1 this expects"
s = s.replace(anchor, """    /// `Option<http::uri::Scheme>` (added for agentgateway's build)
    pub mod scheme {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::borrow::Cow;

        pub fn serialize<S: Serializer>(value: &Option<::http::uri::Scheme>, ser: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => ser.serialize_some(v.as_str()),
                None => ser.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<::http::uri::Scheme>, D::Error> {
            Option::<Cow<'de, str>>::deserialize(de)?
                .map(|s| ::http::uri::Scheme::try_from(s.as_ref()).map_err(serde::de::Error::custom))
                .transpose()
        }
    }

""" + anchor)
s += """
/// `http::uri::Scheme` (added for agentgateway's build)
pub mod scheme {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::borrow::Cow;

    pub fn serialize<S: Serializer>(value: &::http::uri::Scheme, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(value.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<::http::uri::Scheme, D::Error> {
        let s = Cow::<'de, str>::deserialize(de)?;
        ::http::uri::Scheme::try_from(s.as_ref()).map_err(serde::de::Error::custom)
    }
}

/// `http::HeaderName` (added for agentgateway's build)
pub mod header_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::borrow::Cow;

    pub fn serialize<S: Serializer>(value: &::http::HeaderName, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(value.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<::http::HeaderName, D::Error> {
        let s = Cow::<'de, str>::deserialize(de)?;
        ::http::HeaderName::from_bytes(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}
"""
open(p, "w").write(s)
PY
  touch "$OFF/http-serde/.done"
fi

python3 - "$OFF" <<'PY'
import re, sys
off = sys.argv[1]
s = open("Cargo.toml.orig").read()
patch = ('[patch.crates-io]\n'
         f'async-openai = {{ path = "{off}/async-openai/async-openai" }}\n'
         f'http-serde = {{ path = "{off}/http-serde" }}\n'
         f'wiremock = {{ path = "{off}/wiremock" }}\n\n')
t, n = re.subn(r"(?ms)^\[patch\.crates-io\]\n.*?(?=^\[)", patch, s)
assert n == 1, "no [patch.crates-io] section"
t = re.sub(r'(?m)^(schemars = \{ version = "[^"]*"), git = "[^"]*", rev = "[^"]*"', r"\1", t)
t = re.sub(r'(?m)^    "arcstr1",\n', "", t)
left = [l for l in t.splitlines() if "git = " in l]
assert not left, "Cargo.toml still has a git dependency: " + "; ".join(left)
try:
    old = open("Cargo.toml").read()
except FileNotFoundError:
    old = None
if t != old:
    open("Cargo.toml", "w").write(t)
    # resolve from the original lock: only the patched crates (and what
    # they alone need) move
    open("Cargo.lock", "w").write(open("Cargo.lock.orig").read())
PY

export CARGO_TARGET_DIR=${AGW_TARGET:-/work/target-agw}
nice -n 10 cargo build --release -j "${AGW_JOBS:-2}" -p agentgateway-app --bin agentgateway >&2
echo "$CARGO_TARGET_DIR/release/agentgateway"
