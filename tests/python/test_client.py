"""mcp-client (the Rust CLI) against the real stack: tools, call (success
and tool error, every transport), the REPL driven through stdin, and a
bounded load run whose report must match what the stack really served."""

import json
import re
import subprocess

import pytest

from conftest import BIN, metric

CLIENT = str(BIN / "mcp-client")


def run(*args, stdin=None, timeout=60):
    return subprocess.run([CLIENT, *args], input=stdin, capture_output=True, text=True, timeout=timeout)




def test_tools_lists_every_tool_with_parameters(stack):
    out = run("--url", stack.gw.http, "tools")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("8 tools")
    assert "register_agent" in out.stdout and "- agent_url: string (required)" in out.stdout
    js = run("--url", stack.gw.http, "tools", "-o", "json")
    assert {t["name"] for t in json.loads(js.stdout)} >= {"get_agent", "search_agents"}


@pytest.mark.parametrize("transport", ["auto", "stateless", "streamable", "sse"])
def test_call_succeeds_and_tool_errors_exit_nonzero(stack, transport):
    base = ["--url", stack.gw.http, "--transport", transport]
    agent = f"cli-{transport}"
    ok = run(*base, "call", "register_agent", f"agent_id={agent}", "agent_url=http://127.0.0.1:9/a2a",
             'capabilities=["cli","x"]')
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["agent"]["capabilities"] == ["cli", "x"]
    got = run(*base, "-o", "json", "call", "get_agent", "--json", json.dumps({"agent_id": agent}))
    assert got.returncode == 0
    assert json.loads(got.stdout)["structuredContent"]["agent_id"] == agent
    err = run(*base, "call", "get_agent", "agent_id=does-not-exist")
    assert err.returncode != 0
    assert "Agent not found" in err.stderr


def test_call_over_tls_with_the_dev_ca(stack):
    out = run("--url", stack.gw.https, "--ca", str(stack.gw.ca), "call", "health_check")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "healthy"
    untrusted = run("--url", stack.gw.https, "call", "health_check")
    assert untrusted.returncode != 0
    assert "not trusted" in untrusted.stderr and "--ca .run/tls/ca.pem" in untrusted.stderr, untrusted.stderr
    assert "deploy/local/run.sh" not in untrusted.stderr, "the stack is running: do not say to start it"
    assert " ERROR " not in untrusted.stderr, "no raw log lines"


def test_a_gateway_without_a_healthy_backend_gets_its_own_message(tmp_path):
    from conftest import Gateway
    gw = Gateway(tmp_path, "no-backend", ["127.0.0.1:9"], expect_backends=0)
    try:
        out = run("--url", gw.http, "--transport", "streamable", "tools")
        assert out.returncode != 0
        assert "HTTP 503" in out.stderr and "Retry after 1 s" in out.stderr, out.stderr
        assert "cannot reach" not in out.stderr
    finally:
        gw.proc.stop()


def test_a_closed_pipe_ends_the_client_quietly(stack):
    # like `mcp-client tools | head`, with a reader that is gone before the first write
    out = subprocess.run(["bash", "-c", f"'{CLIENT}' --url {stack.gw.http} tools -o json | true; "
                                        "echo \"status=${PIPESTATUS[0]}\" >&2"],
                         capture_output=True, text=True, timeout=60)
    assert "panicked" not in out.stderr and "Broken pipe" not in out.stderr, out.stderr
    status = int(re.search(r"status=(\d+)", out.stderr).group(1))
    assert status == 141, f"a closed pipe ends the client by SIGPIPE (status 141), got {status}"


def test_unreachable_gateway_says_how_to_start_the_stack():
    out = run("--url", "http://127.0.0.1:9", "tools")
    assert out.returncode != 0
    assert "deploy/local/run.sh" in out.stderr


def test_repl_runs_commands_from_stdin(stack):
    script = "help\ntools\nregister_agent agent_id=repl-agent agent_url=http://127.0.0.1:9/a2a\nget_agent agent_id=repl-agent\nget_agent agent_id=nope\nquit\n"
    out = run("--url", stack.gw.http, "repl", stdin=script)
    assert out.returncode == 0, out.stderr
    assert "call a tool" in out.stdout
    assert '"agent_id": "repl-agent"' in out.stdout
    assert "Agent not found" in out.stdout


def test_load_report_matches_what_the_stack_served(stack, tmp_path):
    gw = stack.gw
    before = metric(gw, "mcp_gateway_tool_calls_total")
    html = tmp_path / "report.html"
    out = run("--url", gw.http, "-o", "json", "load", "--sessions", "3", "--duration", "2s", "--warmup", "0s",
              "--seed-agents", "0", "--rate", "150", "--transports", "streamable,sse,stateless",
              "--mix", "get_agent=50,register_agent=30,search_agents=20", "--html", str(html), timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    total = report["total"]["ok"] + report["total"]["errors"]
    assert total > 200, report["total"]
    served = metric(gw, "mcp_gateway_tool_calls_total") - before
    assert served == total, (served, total)
    # every register_agent the report counts as ok really exists in the registry
    run_id = report["config"]["run_id"]
    registered = next(t for t in report["steps"] if t["step"] == "register_agent")["ok"]
    found = run("--url", gw.http, "-o", "json", "call", "search_agents", f"query=load-{run_id}-", "limit=1000")
    assert json.loads(found.stdout)["structuredContent"]["count"] == registered
    # get_agent on ids nobody registered: tool errors, counted by kind
    get_agent = next(t for t in report["steps"] if t["step"] == "get_agent")
    assert report["errors_by_kind"].get("tool_error", 0) == get_agent["errors"]
    assert "Agent not found" in get_agent["error_examples"]["tool_error"], get_agent["error_examples"]
    # the percentiles come from the calls made: ordered, and no call took no time
    latency = report["total"]["latency"]
    ordered = [latency[k] for k in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]]
    assert 0 < ordered[0] and ordered == sorted(ordered), latency
    page = html.read_text()
    assert "<svg" in page and "polyline" in page and "<script" not in page
