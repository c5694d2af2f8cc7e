"""mcp-client's A2A and chat commands against real peers: echo agents on the
a2a-sdk speaking A2A 1.0 and 0.3, and a local stand-in for the LLM APIs
(Anthropic and OpenAI formats) whose scripted turns make the client's real
HTTP code call registry tools through the gateway and message an agent."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from conftest import BIN, free_port, wait_until
from fake_llm import FakeLLM

HERE = Path(__file__).parent
CLIENT = str(BIN / "mcp-client")


@pytest.fixture(scope="module")
def agents(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agents")
    out = {}
    procs = []
    for version in ["v1", "v0.3"]:
        port, log, wire = free_port(), tmp / f"{version}.log", tmp / f"{version}.wire"
        log.write_text("")
        wire.write_text("")
        procs.append(subprocess.Popen([sys.executable, str(HERE / "a2a_echo_agent.py"), "--port", str(port),
                                       "--card", version, "--log", str(log), "--wire-log", str(wire)]))
        wait_until(lambda: httpx2.get(f"http://127.0.0.1:{port}/.well-known/agent-card.json", timeout=2).status_code == 200,
                   30, f"echo agent {version}")
        agent_id = f"echo-{version.replace('.', '')}"
        r = subprocess.run([CLIENT, "--url", stack.gw.http, "call", "register_agent", f"agent_id={agent_id}",
                            f"agent_url=http://127.0.0.1:{port}", "capabilities=[\"echo\"]",
                            f"description=echo agent speaking A2A {version}"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out[version] = (agent_id, log, wire)
    yield out
    for p in procs:
        p.terminate()
        p.wait(10)


@pytest.mark.parametrize("version", ["v1", "v0.3"])
def test_a2a_send_reaches_the_agent_in_its_protocol_version(stack, agents, version):
    agent_id, log, wire = agents[version]
    r = subprocess.run([CLIENT, "--url", stack.gw.http, "-o", "json", "a2a", "send", agent_id, f"hello {version}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["response"] == f"echo: hello {version}"
    assert reply["agent_name"] == f"echo-{version}"
    assert f"hello {version}" in log.read_text().splitlines()
    # a second turn in the same context
    again = subprocess.run([CLIENT, "--url", stack.gw.http, "-o", "json", "a2a", "send", agent_id, "again",
                            "--context-id", reply["context_id"]], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    spoken = wire.read_text().splitlines()
    want = "SendMessage a2a-version=1.0" if version == "v1" else "message/send a2a-version=-"
    assert spoken and all(line == want for line in spoken), spoken
    assert json.loads(again.stdout)["context_id"] == reply["context_id"]


def test_a2a_send_to_an_unknown_agent_fails_clearly(stack):
    r = subprocess.run([CLIENT, "--url", stack.gw.http, "a2a", "send", "no-such-agent", "hi"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "Agent not found" in r.stderr


def tool_calls(gw):
    text = httpx2.get(f"{gw.admin}/metrics", timeout=5).text
    return int(re.search(r"^mcp_gateway_tool_calls_total (\d+)$", text, re.M).group(1))


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_chat_uses_registry_tools_and_talks_to_an_agent(stack, agents, provider):
    agent_id, log, _ = agents["v1"]
    greeting = f"greetings from {provider} chat"
    llm = FakeLLM(greeting=greeting, agent_query=agent_id)
    before = tool_calls(stack.gw)
    env = {**os.environ, "ANTHROPIC_API_KEY": "test-key", "OPENAI_API_KEY": "test-key"}
    try:
        r = subprocess.run([CLIENT, "--url", stack.gw.http, "chat", "--provider", provider, "--base-url",
                            llm.url if provider == "anthropic" else f"{llm.url}/v1", "--model", "test-model"],
                           input="please greet the echo agent\nquit\n", capture_output=True, text=True, env=env, timeout=120)
    finally:
        llm.close()
    assert r.returncode == 0, r.stderr
    assert "✓ Available MCP tools: 8" in r.stdout
    assert f"The agent said: echo: {greeting}" in r.stdout
    assert greeting in log.read_text().splitlines(), "the A2A message never reached the agent"
    assert tool_calls(stack.gw) - before == 1, "search_agents should have gone through the gateway once"
    assert len(llm.requests) == 3
    first = llm.requests[0]["body"]
    names = {t["name"] if provider == "anthropic" else t["function"]["name"] for t in first["tools"]}
    assert "send_a2a_message" in names and "search_agents" in names and len(names) == 9
    if provider == "anthropic":
        assert llm.requests[0]["headers"]["x-api-key"] == "test-key"
        assert llm.requests[0]["headers"]["anthropic-version"] == "2023-06-01"
    else:
        assert llm.requests[0]["headers"]["authorization"] == "Bearer test-key"
    # the conversation grows: the last request carries both tool results
    assert len(llm.requests[2]["body"]["messages"]) > len(llm.requests[0]["body"]["messages"]) + 3
