"""A small A2A echo agent on the real a2a-sdk: replies "echo: <text>".
--card v1   serves an A2A 1.0 card (supportedInterfaces, SendMessage)
--card v0.3 serves a 0.3 card (url + protocolVersion, message/send)
Every text it receives is appended to --log, so tests can see it arrived;
every JSON-RPC request is recorded in --wire-log as "METHOD a2a-version=HEADER",
so tests can see which protocol version was spoken on the wire."""

import argparse

import uvicorn
from a2a.helpers.proto_helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes.agent_card_routes import create_agent_card_routes
from a2a.server.routes.jsonrpc_routes import create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--card", choices=["v1", "v0.3"], default="v1")
p.add_argument("--log", required=True)
p.add_argument("--wire-log", required=True)
args = p.parse_args()
url = f"http://127.0.0.1:{args.port}/a2a"


class Echo(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        with open(args.log, "a") as f:
            f.write(text + "\n")
        await event_queue.enqueue_event(new_text_message(f"echo: {text}", context_id=context.context_id))

    async def cancel(self, context, event_queue):
        raise Exception("cancel is not supported")


card = AgentCard(
    name=f"echo-{args.card}", description="Echoes what it is told", version="1.0.0",
    supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
    capabilities=AgentCapabilities(), default_input_modes=["text"], default_output_modes=["text"],
    skills=[AgentSkill(id="echo", name="echo", description="Echo text", tags=["echo"])])
handler = DefaultRequestHandler(agent_executor=Echo(), task_store=InMemoryTaskStore(), agent_card=card)
routes = create_jsonrpc_routes(handler, "/a2a", enable_v0_3_compat=True)
if args.card == "v1":
    routes += create_agent_card_routes(card)
else:
    v03 = {"name": "echo-v0.3", "description": "Echoes what it is told", "url": url, "version": "1.0.0",
           "protocolVersion": "0.3.0", "preferredTransport": "JSONRPC", "capabilities": {},
           "defaultInputModes": ["text"], "defaultOutputModes": ["text"],
           "skills": [{"id": "echo", "name": "echo", "description": "Echo text", "tags": ["echo"]}]}
    routes.append(Route("/.well-known/agent-card.json", lambda _req: JSONResponse(v03)))


def record_wire(app):
    """ASGI wrapper: notes each POST's JSON-RPC method and A2A-Version header."""
    import json as _json

    async def wrapped(scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        chunks = []

        async def recording():
            msg = await receive()
            if msg["type"] == "http.request":
                chunks.append(msg.get("body", b""))
                if not msg.get("more_body"):
                    try:
                        method = _json.loads(b"".join(chunks)).get("method")
                    except ValueError:
                        method = "?"
                    with open(args.wire_log, "a") as f:
                        f.write(f"{method} a2a-version={headers.get('a2a-version', '-')}\n")
            return msg
        return await app(scope, recording, send)
    return wrapped


uvicorn.run(record_wire(Starlette(routes=routes)), host="127.0.0.1", port=args.port, log_level="warning")
