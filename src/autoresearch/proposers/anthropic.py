"""The Anthropic proposer: Claude edits the file through Anthropic's text editor tool.

The tool is Anthropic-defined (schema built into the model); we execute its calls in an
EditSession confined to the editable file. Tool version and name, from the text editor
tool page (https://platform.claude.com/docs/en/agents-and-tools/tool-use/text-editor-tool):
`text_editor_20250728`, named `str_replace_based_edit_tool`, the newest version (also
the newest the anthropic SDK 2.13 knows). Default model: Claude Sonnet 5.5, the current
Sonnet ("the best combination of speed and intelligence", $2/$10 per MTok) per
https://platform.claude.com/docs/en/models/sonnet-5-5/overview; override with --model.

Prompt caching: the tool and the system prompt (instructions + program.md) carry
`cache_control` (they are the same for every experiment of a run); the last block of
the conversation carries one too, so the turns of one proposal reread the history and
the file from the cache.
"""

from __future__ import annotations

import copy
from dataclasses import replace
import os
from typing import Any, Optional

from autoresearch.errors import ArError
from autoresearch.proposers.edits import EditSession, ToolResult
from autoresearch.proposers.notes import NOTES_TOOL, NotesSession, anthropic_tool
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
from autoresearch.proposers.prompt import TOOL_NAME, system_prompt, user_prompt

DEFAULT_MODEL = "claude-sonnet-5-5"
TOOL_TYPE = "text_editor_20250728"
# Room for adaptive thinking plus a rewrite of the whole file; below the SDK's limit for
# non-streaming requests (about 21k tokens at its default timeout).
DEFAULT_MAX_TOKENS = 16000
EPHEMERAL = {"type": "ephemeral"}


def _sdk():
    try:
        import anthropic
    except ImportError:
        raise ArError(
            "the anthropic proposer needs the Anthropic SDK: pip install anthropic "
            "(or pip install 'autoresearch[llm]')"
        ) from None
    return anthropic


class AnthropicProposer:
    name = "anthropic"

    def __init__(
        self,
        model: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        max_turns: int = 8,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        retry: Optional[RetryPolicy] = None,
        client: Any = None,
    ):
        self.model = model or DEFAULT_MODEL
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.retry = retry or RetryPolicy()
        self.cost_known = price_of(self.model) is not None  # False: cost_usd stays 0
        if client is None:
            key = api_key or os.environ.get("ANTHROPIC_API_KEY")
            token = None if key else os.environ.get("ANTHROPIC_AUTH_TOKEN")
            if not key and not token:
                raise ArError("the anthropic proposer needs an API key: set ANTHROPIC_API_KEY (or use --proposer offline)")
            sdk = _sdk()
            # base_url None lets the SDK read ANTHROPIC_BASE_URL itself
            credential = {"api_key": key} if key else {"auth_token": token}
            client = sdk.Anthropic(**credential, base_url=base_url, max_retries=self.retry.sdk_max_retries)
        self.client = client

    def propose(self, ctx: ProposalContext) -> Proposal:
        session = EditSession(ctx.editable_name, ctx.editable_text)
        notes = NotesSession(ctx.notes)
        conv = _Conversation(self, system_prompt(ctx), user_prompt(ctx))
        description = run_turns(conv, session, self.max_turns, notes)
        return Proposal(new_text=session.text, description=description, usage=conv.usage,
                        notes=notes.text if notes.changed else None)


class _Conversation:
    def __init__(self, owner: AnthropicProposer, system: str, first_user: str):
        self.owner = owner
        self.system = [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
        self.tools = [anthropic_tool(), {"type": TOOL_TYPE, "name": TOOL_NAME, "cache_control": EPHEMERAL}]
        self.messages: list[dict] = [{"role": "user", "content": [{"type": "text", "text": first_user}]}]
        self.tokens = Usage()
        self.usage = Usage()

    def send(self) -> Reply:
        msg = call_with_retry(self._create, self.owner.retry)
        u = msg.usage
        self.tokens = self.tokens.add(
            Usage(
                input_tokens=u.input_tokens or 0,
                output_tokens=u.output_tokens or 0,
                cache_read_tokens=getattr(u, "cache_read_input_tokens", None) or 0,
                cache_write_tokens=getattr(u, "cache_creation_input_tokens", None) or 0,
            )
        )
        self.usage = replace(self.tokens, cost_usd=cost_usd(self.owner.model, self.tokens)[0])
        blocks = list(msg.content or [])
        if blocks:
            # sent back as they came (thinking blocks included: the API requires them)
            self.messages.append({"role": "assistant", "content": [b.to_dict() for b in blocks]})
        text = "\n".join(b.text for b in blocks if b.type == "text")
        calls = [
            ToolCall(b.id, b.input if isinstance(b.input, dict) else None, "the tool input must be an object", b.name)
            if b.name in (TOOL_NAME, NOTES_TOOL)
            else ToolCall(b.id, None, f"unknown tool {b.name!r}; the tools are {TOOL_NAME} and {NOTES_TOOL}")
            for b in blocks
            if b.type == "tool_use"
        ]
        return Reply(text=text, tool_calls=calls, truncated=msg.stop_reason == "max_tokens")

    def add_tool_results(self, results: list[tuple[str, ToolResult]]) -> None:
        blocks = [
            {"type": "tool_result", "tool_use_id": cid, "content": r.content, "is_error": r.is_error}
            for cid, r in results
        ]
        self.messages.append({"role": "user", "content": blocks})

    def add_user(self, text: str) -> None:
        if self.messages[-1]["role"] == "user":  # the model's turn was empty
            self.messages[-1]["content"].append({"type": "text", "text": text})
        else:
            self.messages.append({"role": "user", "content": [{"type": "text", "text": text}]})

    def _create(self):
        sdk = _sdk()
        messages = self.messages[:-1] + [copy.deepcopy(self.messages[-1])]
        messages[-1]["content"][-1]["cache_control"] = EPHEMERAL
        try:
            return self.owner.client.messages.create(
                model=self.owner.model,
                max_tokens=self.owner.max_tokens,
                system=self.system,
                tools=self.tools,
                messages=messages,
            )
        except (sdk.APITimeoutError, sdk.APIConnectionError) as e:
            raise TransientApiError(f"cannot reach the Anthropic API ({e.__class__.__name__})") from e
        except sdk.APIStatusError as e:
            message = api_error_message(e.body, e.message)
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise TransientApiError(
                    f"Anthropic API error {e.status_code}: {message}", retry_after_seconds(e.response.headers)
                ) from e
            hint = {
                401: "; check ANTHROPIC_API_KEY",
                403: "; check the API key's permissions",
                404: f"; check the model name ({self.owner.model})",
            }.get(e.status_code, "")
            raise ArError(f"the Anthropic API refused the request ({e.status_code}): {message}{hint}") from None
