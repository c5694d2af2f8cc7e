"""The test command's summary: one line per suite, counted from each
harness's own result lines (never guessed), and a verdict.

  python3 tests/summary.py SUITE=KIND:LOG:EXIT ...

KIND is `cargo` (sums libtest's "test result:" lines), `junit` (a pytest
--junitxml file), `peer` (the script's last "NAME: N passed, M failed[, K skipped]" line),
`lint` (a lint command: its exit status; LOG is its output) or `skipped` (a
step the caller left out on purpose, e.g. SKIP_LINT=1).

The run fails when any suite failed a test, when a suite's harness printed no
result or exited non-zero with no failure counted, or was killed by its
time budget (`timeout` exits 124, or 137 after SIGKILL) — each reported as
"did not finish" —, when a suite ran no test at all or skipped every one, and
when a lint step failed."""

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def cargo(log: str):
    passed = failed = ignored = 0
    found = False
    for m in re.finditer(r"^test result: (?:ok|FAILED)\. (\d+) passed; (\d+) failed; (\d+) ignored", log, re.M):
        found = True
        passed += int(m.group(1))
        failed += int(m.group(2))
        ignored += int(m.group(3))
    return found, passed, failed, 0, ignored


def junit(path: Path):
    if not path.exists() or path.stat().st_size == 0:
        return False, 0, 0, 0, 0
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failures = sum(int(s.get("failures", 0)) for s in suites)
    errors = sum(int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return True, tests - failures - errors - skipped, failures, errors, skipped


def peer(log: str):
    lines = re.findall(r"^[\w.-]+: (\d+) passed, (\d+) failed(?:, (\d+) skipped)?$", log, re.M)
    if not lines:
        return False, 0, 0, 0, 0
    p, f, s = lines[-1]
    return True, int(p), int(f), 0, int(s or 0)


# What `timeout` exits with when it stopped the command (SIGTERM; SIGKILL after --kill-after).
TIMED_OUT = {124, 137}


def main():
    total_p = total_f = 0
    ok = True
    print("summary:")
    for arg in sys.argv[1:]:
        name, spec = arg.split("=", 1)
        kind, path, code = spec.rsplit(":", 2)
        code = int(code)
        p = Path(path)
        if kind == "skipped":
            print(f"  {name:<28} skipped")
            continue
        if kind == "lint":
            if code == 0:
                line = "clean"
            else:
                why = "timed out" if code in TIMED_OUT else "FAILED"
                line = f"{why} (exit {code}); see {path}"
                ok = False
                total_f += 1
            print(f"  {name:<28} {line}")
            continue
        if kind == "junit":
            found, passed, failed, errors, skipped = junit(p)
        else:
            text = p.read_text(errors="replace") if p.exists() else ""
            found, passed, failed, errors, skipped = (cargo if kind == "cargo" else peer)(text)
        bad = failed + errors
        if code in TIMED_OUT:
            line = f"did not finish (timed out, exit {code}); {passed} passed, {bad} failed before that"
            ok = False
            bad = max(bad, 1)
        elif not found or (code != 0 and bad == 0):
            line = f"did not finish (exit {code}); {passed} passed, {bad} failed before that"
            ok = False
            bad = max(bad, 1)
        elif passed == 0 and bad == 0:
            line = f"skipped all {skipped} tests (exit {code})" if skipped else f"ran no tests (exit {code})"
            ok = False
            bad = 1
        else:
            line = f"{passed} passed, {failed} failed"
            if errors:
                line += f", {errors} errors"
            if skipped:
                line += f", {skipped} skipped"
            line += f" (exit {code})"
            ok = ok and code == 0 and bad == 0
        print(f"  {name:<28} {line}")
        total_p += passed
        total_f += bad
    print(f"all: {total_p} passed, {total_f} failed")
    sys.exit(0 if ok else 1)


main()
