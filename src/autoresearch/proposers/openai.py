"""The OpenAI-compatible proposer: any chat.completions server with function tools.

Works with OpenAI itself and with local servers that speak the same API (llama.cpp's
llama-server, vLLM, Ollama, LM Studio): point --base-url (or OPENAI_BASE_URL) at the
server's /v1 and name the model it serves with --model. The API key is optional for
local servers. The edit tool is the same as for Claude, declared as a function tool
whose JSON schema mirrors Anthropic's text editor tool.
"""

from __future__ import annotations

import json
from dataclasses import replace
import os
from typing import Any, Optional

from autoresearch.errors import ArError
from autoresearch.proposers.edits import EditSession, ToolResult
from autoresearch.proposers.pricing import cost_usd, price_of
from autoresearch.proposers.base import Proposal, ProposalContext, Usage
from autoresearch.proposers.common import (
    Reply,
    RetryPolicy,
    ToolCall,
    TransientApiError,
    api_error_message,
    call_with_retry,
    retry_after_seconds,
    run_turns,
)
from autoresearch.proposers.notes import NOTES_TOOL, NotesSession, openai_tool
from autoresearch.proposers.prompt import TOOL_NAME, system_prompt, user_prompt

NO_KEY = "not-needed"  # local servers ignore the key, but the SDK insists on one


def edit_tool(editable_name: str) -> dict:
    """The text editor tool as an OpenAI function tool."""
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": (
                f"View or edit {editable_name}, the only file you may change. Commands: "
                "view (optional view_range [start, end], 1-based, end -1 = to the end; lines "
                "come back numbered), str_replace (old_str must match the file exactly, once; "
                "new_str replaces it), insert (new_str goes after line insert_line, 0 = top), "
                "create (file_text replaces the whole file)."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "enum": ["view", "str_replace", "insert", "create"]},
                    "path": {"type": "string", "description": f"Always {editable_name!r}."},
                    "view_range": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 2,
                        "maxItems": 2,
                        "description": "view: [start, end] line numbers.",
                    },
                    "old_str": {"type": "string", "description": "str_replace: the exact text to replace."},
                    "new_str": {"type": "string", "description": "str_replace / insert: the new text."},
                    "insert_line": {"type": "integer", "description": "insert: the line to insert after."},
                    "file_text": {"type": "string", "description": "create: the whole new file."},
                },
                "required": ["command", "path"],
            },
        },
    }


def _sdk():
    try:
        import openai
    except ImportError:
        raise ArError(
            "the openai proposer needs the OpenAI SDK: pip install openai (or pip install 'autoresearch[llm]')"
        ) from None
    return openai


class OpenAIProposer:
    name = "openai"

    def __init__(
        self,
        model: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        max_turns: int = 8,
        max_tokens: Optional[int] = None,
        retry: Optional[RetryPolicy] = None,
        client: Any = None,
    ):
        if not model:
            raise ArError(
                "the openai proposer needs a model name: pass --model (the model your server serves, e.g. 'qwen3-coder')"
            )
        self.model = model
        self.max_turns = max_turns
        self.max_tokens = max_tokens  # None: the server's default (not every server takes the same field)
        self.retry = retry or RetryPolicy()
        self.cost_known = price_of(self.model) is not None
        if client is None:
            sdk = _sdk()
            base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
            key = api_key or os.environ.get("OPENAI_API_KEY")
            if not key and not base_url:
                raise ArError(
                    "the openai proposer needs OPENAI_API_KEY for api.openai.com, "
                    "or --base-url (OPENAI_BASE_URL) pointing at a local server"
                )
            client = sdk.OpenAI(api_key=key or NO_KEY, base_url=base_url, max_retries=self.retry.sdk_max_retries)
        self.client = client

    def propose(self, ctx: ProposalContext) -> Proposal:
        session = EditSession(ctx.editable_name, ctx.editable_text)
        notes = NotesSession(ctx.notes)
        conv = _Conversation(self, system_prompt(ctx), user_prompt(ctx), edit_tool(ctx.editable_name))
        description = run_turns(conv, session, self.max_turns, notes)
        return Proposal(new_text=session.text, description=description, usage=conv.usage,
                        notes=notes.text if notes.changed else None)


class _Conversation:
    def __init__(self, owner: OpenAIProposer, system: str, first_user: str, tool: dict):
        self.owner = owner
        self.tools = [tool, openai_tool()]
        self.messages: list[dict] = [
            {"role": "system", "content": system},
            {"role": "user", "content": first_user},
        ]
        self.tokens = Usage()
        self.usage = Usage()

    def send(self) -> Reply:
        resp = call_with_retry(self._create, self.owner.retry)
        u = getattr(resp, "usage", None)
        if u is not None:
            details = getattr(u, "prompt_tokens_details", None)
            cached = (getattr(details, "cached_tokens", None) or 0) if details is not None else 0
            prompt = u.prompt_tokens or 0
            # cached tokens are part of prompt_tokens; count them once, as cache reads
            self.tokens = self.tokens.add(
                Usage(input_tokens=prompt - cached, output_tokens=u.completion_tokens or 0, cache_read_tokens=cached)
            )
            self.usage = replace(self.tokens, cost_usd=cost_usd(self.owner.model, self.tokens)[0])
        choice = resp.choices[0] if resp.choices else None
        message = choice.message if choice is not None else None
        text = (message.content or "") if message is not None else ""
        raw_calls = list((message.tool_calls or []) if message is not None else [])
        entry: dict = {"role": "assistant", "content": text}
        if raw_calls:
            entry["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in raw_calls
            ]
        self.messages.append(entry)
        truncated = choice is not None and choice.finish_reason == "length"
        return Reply(text=text, tool_calls=[_parse_call(c) for c in raw_calls], truncated=truncated)

    def add_tool_results(self, results: list[tuple[str, ToolResult]]) -> None:
        # chat.completions has no error flag on tool messages: the text starts with "Error:"
        for cid, r in results:
            self.messages.append({"role": "tool", "tool_call_id": cid, "content": r.content})

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def _create(self):
        sdk = _sdk()
        extra = {"max_tokens": self.owner.max_tokens} if self.owner.max_tokens else {}
        try:
            return self.owner.client.chat.completions.create(
                model=self.owner.model, messages=self.messages, tools=self.tools, **extra
            )
        except (sdk.APITimeoutError, sdk.APIConnectionError) as e:
            raise TransientApiError(f"cannot reach the model server ({e.__class__.__name__})") from e
        except sdk.APIStatusError as e:
            message = api_error_message(e.body, e.message)
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise TransientApiError(
                    f"model server error {e.status_code}: {message}", retry_after_seconds(e.response.headers)
                ) from e
            hint = {
                401: "; check OPENAI_API_KEY",
                404: f"; check --model ({self.owner.model}) and --base-url",
            }.get(e.status_code, "")
            raise ArError(f"the model server refused the request ({e.status_code}): {message}{hint}") from None


def _parse_call(call) -> ToolCall:
    name = call.function.name
    if name not in (TOOL_NAME, NOTES_TOOL):
        return ToolCall(call.id, None, f"unknown tool {name!r}; the tools are {TOOL_NAME} and {NOTES_TOOL}")
    try:
        args = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError as e:
        return ToolCall(call.id, None, f"the arguments are not valid JSON ({e.msg} at position {e.pos})")
    if not isinstance(args, dict):
        return ToolCall(call.id, None, "the arguments must be a JSON object")
    return ToolCall(call.id, args, name=name)
