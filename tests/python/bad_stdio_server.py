"""A stdio MCP server that misbehaves on request, written by hand (no SDK)
so it can break the protocol: its tools `garbage` (a stdout line that is
not JSON-RPC), `huge N` (an answer line of N bytes), `hang` (never
answers, writes nothing) and `echo` (behaves).
    python bad_stdio_server.py"""
import json
import sys

TOOLS = [{"name": n, "description": d, "inputSchema": {"type": "object"}} for n, d in [
    ("echo", "says its text back"), ("garbage", "writes a line that is not JSON-RPC"),
    ("huge", "answers with a line of `bytes` bytes"), ("hang", "never answers")]]


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def answer(req):
    method, rid = req.get("method"), req.get("id")
    if method == "initialize":
        return {"protocolVersion": req["params"]["protocolVersion"], "capabilities": {"tools": {}},
                "serverInfo": {"name": "bad", "version": "1"}}
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        name, args = req["params"]["name"], req["params"].get("arguments") or {}
        if name == "garbage":
            sys.stdout.write("this is not json-rpc\n")
            sys.stdout.flush()
            return None
        if name == "huge":
            return {"content": [{"type": "text", "text": "x" * int(args.get("bytes", 1 << 21))}]}
        if name == "hang":
            return None
        return {"content": [{"type": "text", "text": f"echo: {args.get('text', '')}"}]}
    return None if rid is None else {}


for line in sys.stdin:
    req = json.loads(line)
    if "id" not in req or "method" not in req:
        continue
    result = answer(req)
    if result is not None:
        send({"jsonrpc": "2.0", "id": req["id"], "result": result})
