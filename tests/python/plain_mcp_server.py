"""A plain MCP server with no health endpoint, from the Python MCP SDK
(MCPServer, Streamable HTTP): a backend we did not write.
    python plain_mcp_server.py PORT"""
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("plain")


@server.tool()
def echo(text: str) -> str:
    """Says the text back."""
    return f"echo: {text}"


if __name__ == "__main__":
    server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
