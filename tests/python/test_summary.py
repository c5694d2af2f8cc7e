"""The test command's verdict (`tests/summary.py`): a suite that hung and was
killed by its time budget, ran no test, or skipped every one fails the run
and says so; lint shows in the summary; a clean run passes."""

import subprocess
import sys

from conftest import ROOT

SUMMARY = ROOT / "tests" / "summary.py"
CARGO_OK = "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s\n"


def summary(tmp_path, *suites):
    """Runs summary.py over `suites`: (name, kind, file content or None, exit status)."""
    args = []
    for i, (name, kind, content, code) in enumerate(suites):
        path = tmp_path / f"suite-{i}"
        if content is not None:
            path.write_text(content)
        args.append(f"{name}={kind}:{path}:{code}")
    out = subprocess.run([sys.executable, str(SUMMARY), *args], capture_output=True, text=True, timeout=30)
    return out.returncode, out.stdout


def junit(tests, skipped=0, failures=0):
    return (f'<testsuites><testsuite name="pytest" tests="{tests}" failures="{failures}" errors="0" '
            f'skipped="{skipped}"></testsuite></testsuites>')


def test_a_clean_run_passes_and_shows_lint(tmp_path):
    code, out = summary(tmp_path, ("lint: cargo fmt", "lint", "", 0), ("rust", "cargo", CARGO_OK, 0),
                        ("python", "junit", junit(3), 0), ("peer", "peer", "peer: 2 passed, 0 failed\n", 0))
    assert code == 0, out
    assert "lint: cargo fmt" in out and "clean" in out, out
    assert "all: 10 passed, 0 failed" in out, out


def test_a_failed_lint_fails_the_run_and_says_where(tmp_path):
    code, out = summary(tmp_path, ("lint: cargo clippy", "lint", "error: unused variable\n", 101),
                        ("rust", "cargo", CARGO_OK, 0))
    assert code == 1, out
    assert "FAILED (exit 101)" in out, out


def test_a_suite_killed_by_its_time_budget_did_not_finish(tmp_path):
    # it had passed some tests (and even failed one) before it hung
    code, out = summary(tmp_path, ("rust", "cargo", CARGO_OK + "test result: FAILED. 1 passed; 1 failed; 0 ignored\n", 124),
                        ("peer", "peer", "starting…\n", 137))
    assert code == 1, out
    assert out.count("did not finish (timed out") == 2, out


def test_a_suite_that_ran_nothing_or_skipped_everything_fails(tmp_path):
    for suite, says in [(("python", "junit", junit(4, skipped=4), 0), "skipped all 4 tests"),
                        (("python", "junit", junit(0), 0), "ran no tests"),
                        (("peer", "peer", "peer: 0 passed, 0 failed, 3 skipped\n", 0), "skipped all 3 tests"),
                        (("rust", "cargo", "test result: ok. 0 passed; 0 failed; 0 ignored\n", 0), "ran no tests")]:
        code, out = summary(tmp_path, ("rust", "cargo", CARGO_OK, 0), suite)
        assert code == 1 and says in out, (suite, out)


def test_a_step_left_out_on_purpose_is_shown_and_does_not_fail(tmp_path):
    code, out = summary(tmp_path, ("lint", "skipped", None, 0), ("rust", "cargo", CARGO_OK, 0))
    assert code == 0 and "skipped" in out, out
