"""The proposers, chosen by name: `anthropic` (Claude), `openai` (any OpenAI-compatible
server, local ones included), `optuna` (no LLM: Optuna's TPE over the script's numeric
constants, warm-started from the history) and `offline` (no LLM, no library: a coordinate
search over the same constants).

Each is imported only when chosen, so the SDKs (the optional `[llm]` extra) are needed
only by the proposer that uses them, and `ar --help` imports none of them.

Default (no --proposer): `anthropic` when ANTHROPIC_API_KEY is set, else `optuna`.
The openai proposer is never picked implicitly: it needs at least a model name.
"""

from __future__ import annotations

import os
from typing import Optional

from autoresearch.errors import ArError
from autoresearch.proposers.base import Proposer

PROPOSER_NAMES = ("anthropic", "openai", "optuna", "offline")


def default_proposer_name() -> str:
    return "anthropic" if os.environ.get("ANTHROPIC_API_KEY") else "optuna"


def get_proposer(
    name: Optional[str] = None,
    *,
    model: Optional[str] = None,
    base_url: Optional[str] = None,
    max_turns: int = 8,
) -> Proposer:
    """The proposer called `name` (None: default_proposer_name()). Raises ArError for an
    unknown name, a missing API key or a missing SDK."""
    chosen = (name or default_proposer_name()).strip().lower()
    if max_turns < 1:
        raise ArError(f"max_turns must be at least 1, got {max_turns}")
    if chosen == "anthropic":
        from autoresearch.proposers.anthropic import AnthropicProposer

        return AnthropicProposer(model, base_url=base_url, max_turns=max_turns)
    if chosen == "openai":
        from autoresearch.proposers.openai import OpenAIProposer

        return OpenAIProposer(model, base_url=base_url, max_turns=max_turns)
    if chosen == "optuna":
        from autoresearch.proposers.tuner import OptunaProposer

        return OptunaProposer()
    if chosen == "offline":
        from autoresearch.proposers.offline import OfflineProposer

        return OfflineProposer()
    raise ArError(f"unknown proposer {name!r}: choose one of {', '.join(PROPOSER_NAMES)}")
