"""Peer: the TypeScript MCP SDK, through @modelcontextprotocol/inspector-cli
on the machine's Node (its version is printed): tools/list and tools/call
over Streamable HTTP and legacy SSE, against the gateway."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from stack import Checks, Stack  # noqa: E402

CLI = HERE / "node_modules" / "@modelcontextprotocol" / "inspector-cli" / "build" / "index.js"


def inspector(url, transport, *args):
    node = shutil.which("node") or "node"
    cmd = [node, str(CLI), url, "--transport", transport, *args]
    # run from a directory whose parent has a package.json (the CLI looks for one)
    out = subprocess.run(cmd, cwd=HERE / "work", capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return None, out.stderr[-2000:]
    return json.loads(out.stdout), ""


SEED_TOOLS = ["delete_agent", "get_agent", "get_agent_facts", "health_check", "list_agents",
              "register_agent", "search_agents", "update_agent"]


def main():
    node = shutil.which("node") or "node"
    print("node", subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip())
    checks = Checks("inspector-cli")
    with Stack() as stack:
        for transport, path in [("http", "/mcp"), ("sse", "/sse")]:
            url = f"{stack.http}{path}"
            tools, err = inspector(url, transport, "--method", "tools/list")
            names = sorted(t["name"] for t in (tools or {}).get("tools", []))
            checks.check(f"{transport}: tools/list shows the eight seed tools", names == SEED_TOOLS, err or names)
            agent = f"ts-{transport}"
            reg, err = inspector(url, transport, "--method", "tools/call", "--tool-name", "register_agent",
                                 "--tool-arg", f"agent_id={agent}", "agent_url=http://127.0.0.1:7/a2a")
            checks.check(f"{transport}: tools/call register_agent", reg is not None and not reg.get("isError"), err or reg)
            got, err = inspector(url, transport, "--method", "tools/call", "--tool-name", "get_agent",
                                 "--tool-arg", f"agent_id={agent}")
            body = json.loads(got["content"][0]["text"]) if got else {}
            checks.check(f"{transport}: tools/call get_agent", body.get("agent_id") == agent, err or got)
            missing, err = inspector(url, transport, "--method", "tools/call", "--tool-name", "get_agent",
                                     "--tool-arg", "agent_id=nobody-here")
            checks.check(f"{transport}: tool error is isError", bool(missing and missing.get("isError")), err or missing)
    checks.finish()


main()
