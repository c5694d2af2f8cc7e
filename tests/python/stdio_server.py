"""A stdio MCP server from the Python MCP SDK (MCPServer over stdio), as a
stdio pool runs it: one process per client session.
    python stdio_server.py
Its tools say which process answered (`pid`), what the process was given
(`env`, `cwd`), and take their time (`slow_read` is read-only, so the
gateway may send it again after a lost process; `slow_write` is not). Each
slow call first leaves `<MARK_DIR>/<pid>.started`, so a test knows the call
is in the process before it kills it."""
import asyncio
import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("stdio-py")
READ_ONLY = ToolAnnotations(readOnlyHint=True)


def mark():
    where = os.environ.get("MARK_DIR")
    if where:
        Path(where, f"{os.getpid()}.started").write_text("1")


@server.tool(annotations=READ_ONLY)
def pid() -> str:
    """This process's id."""
    return str(os.getpid())


@server.tool(annotations=READ_ONLY)
def env(name: str) -> str:
    """One variable of this process's environment ("" if unset)."""
    return os.environ.get(name, "")


@server.tool(annotations=READ_ONLY)
def env_names() -> str:
    """The names of every variable of this process's environment."""
    return " ".join(sorted(os.environ))


@server.tool(annotations=READ_ONLY)
async def slow_read(seconds: float) -> str:
    """Waits, then says which process answered (safe to run twice)."""
    mark()
    await asyncio.sleep(seconds)
    return f"read by {os.getpid()}"


@server.tool()
async def slow_write(seconds: float) -> str:
    """Waits, then says which process answered (not safe to run twice)."""
    mark()
    await asyncio.sleep(seconds)
    return f"written by {os.getpid()}"


if __name__ == "__main__":
    server.run(transport="stdio")
