"""An MCP server that speaks only the stateless revision 2026-07-28: the
Python MCP SDK's MCPServer (its Streamable HTTP app serves both eras), with
everything of the session era refused at the door — `initialize` and any
request without `MCP-Protocol-Version: 2026-07-28` get 400, a `GET` stream
405 — as a server that never had sessions answers. It counts what it
refused of clients (`GET /refused`; the gateway's own health and revision
probes, ids "health" and "revision", are not counted), so a test can see
the gateway never sent a client's message in the session era.
    python stateless_only_server.py PORT"""
import json
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("stateless-only", instructions="A server of the 2026-07-28 revision only.")
refused = {"count": 0}


@server.tool()
def echo(text: str) -> str:
    """Says the text back."""
    return f"echo: {text}"


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two numbers."""
    return a + b


@server.resource("note://hello")
def hello() -> str:
    """A fixed note."""
    return "hello from 2026"


@server.prompt()
def greet(name: str) -> str:
    """A greeting."""
    return f"Say hello to {name}."


inner = server.streamable_http_app(stateless_http=True, json_response=False)


async def send_json(send, status, body):
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return await inner(scope, receive, send)
    if scope["path"] == "/refused":
        return await send_json(send, 200, refused)
    headers = dict(scope["headers"])
    version = headers.get(b"mcp-protocol-version", b"").decode()
    if scope["method"] == "GET":
        refused["count"] += 1
        return await send_json(send, 405, {"error": "no server stream in 2026-07-28"})
    if scope["method"] == "POST" and version != "2026-07-28":
        body = b""
        while True:
            part = await receive()
            body += part.get("body", b"")
            if not part.get("more_body"):
                break
        try:
            probe = json.loads(body).get("id") in ("health", "revision")  # the gateway's own probes
        except (ValueError, AttributeError):
            probe = False
        if not probe:
            refused["count"] += 1
        return await send_json(send, 400, {"jsonrpc": "2.0", "id": None, "error": {
            "code": -32600, "message": f"this server speaks only 2026-07-28 (got {version or 'no version'})"}})
    return await inner(scope, receive, send)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
