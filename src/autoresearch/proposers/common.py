"""What the two LLM proposers share: the retry policy and the turn loop.

Each proposer adapts its SDK to a small `Conversation` (send a turn, add tool results,
add a user message); `run_turns` holds the rules once: execute the edit tool calls,
insist on an edit and on a one-line description, stop after `max_turns` model turns.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, TypeVar

from autoresearch.proposers.edits import EditSession, ToolResult
from autoresearch.proposers.base import NoProposal, Usage
from autoresearch.proposers.notes import NOTES_TOOL, NotesSession
from autoresearch.proposers.prompt import TOOL_NAME, parse_description

T = TypeVar("T")


# -- retries ----------------------------------------------------------------------------


class TransientApiError(Exception):
    """An API failure that may fix itself (rate limit, overload, 5xx, timeout, network)."""

    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class RetryPolicy:
    """The SDK retries a few times quickly (honouring retry-after); past that we wait with
    exponential backoff and jitter, capped at `max_delay`, and keep trying: an overnight
    run must outlive an API outage. `on_wait(message)` is told about each wait."""

    sdk_max_retries: int = 2
    base_delay: float = 5.0
    max_delay: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    on_wait: Optional[Callable[[str], None]] = None
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        d = min(self.max_delay, self.base_delay * 2.0 ** min(attempt, 30))
        d *= self.rng.uniform(0.5, 1.0)  # jitter: parallel workers do not retry in lockstep
        if retry_after:
            d = max(d, min(retry_after, self.max_delay))
        return d


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy) -> T:
    attempt = 0
    while True:
        try:
            return fn()
        except TransientApiError as e:
            wait = policy.delay(attempt, e.retry_after)
            attempt += 1
            if policy.on_wait:
                policy.on_wait(f"{e}; retrying in {wait:.0f} s (attempt {attempt + 1})")
            policy.sleep(wait)


def retry_after_seconds(headers) -> Optional[float]:
    """The server's retry-after (seconds) from response headers, if any."""
    if headers is None:
        return None
    for key, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(key)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue  # an HTTP date: rare, use our own backoff
    return None


def api_error_message(body, fallback: str) -> str:
    """The human message inside an API error body (Anthropic and OpenAI shapes)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return fallback


# -- the turn loop ----------------------------------------------------------------------


@dataclass
class ToolCall:
    id: str
    args: Optional[dict]  # None when the arguments could not be parsed
    error: Optional[str] = None  # why they could not
    name: str = TOOL_NAME  # the edit tool, or the notes tool


@dataclass
class Reply:
    text: str
    tool_calls: list[ToolCall]
    truncated: bool = False  # the reply hit the output token limit


class Conversation(Protocol):
    usage: Usage

    def send(self) -> Reply: ...

    def add_tool_results(self, results: list[tuple[str, ToolResult]]) -> None: ...

    def add_user(self, text: str) -> None: ...


NO_EDIT = (
    "You have not changed {name} yet. Make the experiment's change with the "
    "str_replace_based_edit_tool (path {name!r}), then reply with the one-line description."
)
TRUNCATED = (
    "Your reply was cut off at the output token limit. Make the change with smaller "
    "str_replace edits instead of rewriting the whole file, and keep the reply short."
)
ASK_DESCRIPTION = (
    "Now reply with text only: one line describing the experiment, like a commit message "
    "(for example: increase matrix LR to 0.05)."
)


def run_turns(conv: Conversation, session: EditSession, max_turns: int, notes: Optional[NotesSession] = None) -> str:
    """Drive the conversation until the model has edited the file and described the
    experiment; returns the description. Raises NoProposal (with the usage so far, and
    the notes when the model rewrote them)."""
    try:
        return _turns(conv, session, max_turns, notes)
    except NoProposal as e:
        if notes is not None and notes.changed:
            e.notes = notes.text
        raise


def _turns(conv: Conversation, session: EditSession, max_turns: int, notes: Optional[NotesSession]) -> str:
    asked_description = False
    for _ in range(max_turns):
        reply = conv.send()
        if reply.tool_calls:
            results = []
            for call in reply.tool_calls:
                if call.args is None:
                    session.errors += 1
                    results.append((call.id, ToolResult("Error: " + (call.error or "unreadable arguments"), True)))
                elif call.name == NOTES_TOOL and notes is not None:
                    results.append((call.id, notes.execute(call.args)))
                else:
                    results.append((call.id, session.execute(call.args)))
            conv.add_tool_results(results)
            continue
        if not session.changed:
            conv.add_user(TRUNCATED if reply.truncated else NO_EDIT.format(name=session.editable_name))
            continue
        broken = session.syntax_error()
        if broken:
            conv.add_user(f"{broken} Fix it with the tool, then reply with the one-line description.")
            continue
        description = parse_description(reply.text)
        if description:
            return description
        if asked_description:
            raise NoProposal("the model edited the file but gave no description of the experiment", conv.usage)
        asked_description = True
        conv.add_user(ASK_DESCRIPTION)
    if session.changed:
        raise NoProposal(f"the model did not finish its edit within {max_turns} turns", conv.usage)
    raise NoProposal(f"the model made no edit within {max_turns} turns", conv.usage)
