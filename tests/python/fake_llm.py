"""A local stand-in for the paid LLM APIs: speaks the Anthropic Messages API
(/v1/messages) and the OpenAI chat-completions API (/chat/completions) and
plays a script: search the registry for an echo agent, message it over A2A
using the URL the search returned, then answer with the agent's reply.
It records every request so tests can check what the client really sent."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _last_tool_output(messages, style):
    """The newest tool result in the conversation, as text."""
    for m in reversed(messages):
        if style == "anthropic" and m["role"] == "user" and isinstance(m["content"], list):
            for block in m["content"]:
                if block.get("type") == "tool_result":
                    return block["content"] if isinstance(block["content"], str) else json.dumps(block["content"])
        if style == "openai" and m["role"] == "tool":
            return m["content"]
    return None


def plan(messages, style, greeting, agent_query):
    """The script: returns ("tool", name, args) or ("text", words)."""
    tool_turns = sum(1 for m in messages if m["role"] == "assistant")
    out = _last_tool_output(messages, style)
    if tool_turns == 0:
        return ("tool", "search_agents", {"query": agent_query})
    if tool_turns == 1:
        agents = json.loads(out)["agents"]
        if not agents:
            return ("text", "no agent found")
        return ("tool", "send_a2a_message", {"agent_url": agents[0]["agent_url"], "message": greeting})
    reply = json.loads(out)
    return ("text", f"The agent said: {reply.get('response', reply)}")


class FakeLLM:
    def __init__(self, greeting="greetings from chat", agent_query="echo-v1"):
        self.requests = []
        self.greeting, self.agent_query = greeting, agent_query
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                if self.path.endswith("/v1/messages"):
                    resp = outer.anthropic(body)
                elif self.path.endswith("/chat/completions"):
                    resp = outer.openai(body)
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(resp).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def anthropic(self, body):
        step = plan(body["messages"], "anthropic", self.greeting, self.agent_query)
        n = len(self.requests)
        if step[0] == "tool":
            content = [{"type": "text", "text": f"Calling {step[1]}."},
                       {"type": "tool_use", "id": f"toolu_{n}", "name": step[1], "input": step[2]}]
            stop = "tool_use"
        else:
            content, stop = [{"type": "text", "text": step[1]}], "end_turn"
        return {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": body["model"],
                "content": content, "stop_reason": stop, "usage": {"input_tokens": 1, "output_tokens": 1}}

    def openai(self, body):
        step = plan([m for m in body["messages"] if m["role"] != "system"], "openai", self.greeting, self.agent_query)
        n = len(self.requests)
        if step[0] == "tool":
            msg = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{n}", "type": "function", "function": {"name": step[1], "arguments": json.dumps(step[2])}}]}
            finish = "tool_calls"
        else:
            msg, finish = {"role": "assistant", "content": step[1]}, "stop"
        return {"id": f"chatcmpl-{n}", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": msg, "finish_reason": finish}]}

    def close(self):
        self.server.shutdown()
