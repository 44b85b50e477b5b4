"""A scripted stand-in for the Anthropic and OpenAI HTTP APIs, for tests.

The real SDKs talk to it over 127.0.0.1: it answers POSTs to /v1/messages and
/v1/chat/completions with the next scripted response (status, JSON body, headers) and
records every request so tests can assert on what the SDK sent.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


@dataclass
class Recorded:
    path: str
    headers: dict
    body: dict


@dataclass
class Scripted:
    body: dict
    status: int = 200
    headers: dict = field(default_factory=dict)


class FakeLLMServer:
    def __init__(self):
        self.script: deque[Scripted] = deque()
        self.requests: list[Recorded] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def push(self, body: dict, status: int = 200, headers: Optional[dict] = None) -> None:
        self.script.append(Scripted(body, status, headers or {}))

    def __enter__(self) -> "FakeLLMServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw or b"{}")))
                if self.path not in ("/v1/messages", "/v1/chat/completions"):
                    return self._send(Scripted({"error": {"message": f"no route {self.path}"}}, 404))
                if not fake.script:
                    return self._send(Scripted({"error": {"message": "the test scripted no more responses"}}, 418))
                self._send(fake.script.popleft())

            def _send(self, s: Scripted):
                data = json.dumps(s.body).encode()
                self.send_response(s.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in s.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        return Handler


# -- Anthropic Messages API bodies ------------------------------------------------------


def anthropic_message(content: list, stop_reason: str = "end_turn", usage: Optional[dict] = None) -> dict:
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage
        or {"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }


def anthropic_tool_use(tool_id: str, tool_input: dict, name: str = "str_replace_based_edit_tool", usage=None) -> dict:
    return anthropic_message(
        [{"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}], "tool_use", usage
    )


def anthropic_text(text: str, usage=None) -> dict:
    return anthropic_message([{"type": "text", "text": text}], "end_turn", usage)


def anthropic_error(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


# -- OpenAI chat.completions bodies -----------------------------------------------------


def openai_completion(message: dict, usage: Optional[dict] = None, finish_reason: str = "stop") -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "local-test",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
        "usage": usage or {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }


def openai_tool_call(call_id: str, arguments, name: str = "str_replace_based_edit_tool", usage=None) -> dict:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
    return openai_completion({"content": None, "tool_calls": [call]}, usage, "tool_calls")


def openai_text(text: str, usage=None) -> dict:
    return openai_completion({"content": text}, usage)


def openai_error(message: str, kind: str = "server_error") -> dict:
    return {"error": {"message": message, "type": kind, "code": None}}
