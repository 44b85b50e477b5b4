"""Estimated USD cost of LLM usage, from a small table of list prices.

Prices are USD per million tokens: (input, output, cache write, cache read), where cache
write is the 5-minute prompt-cache write (the only kind the proposers use). Source:
Anthropic's pricing page and model pages, https://platform.claude.com/docs/en/about-claude/pricing
and .../docs/en/models/<model>/overview, as published in November 2026; the Sonnet 5.5
cache-read price is the reduced rate in effect since 2026-10-07. Haiku 5.5 has a
second, higher band for prompts over 100k tokens; the proposers' prompts stay far below,
so only the lower band is here.

A model id matches an entry when it is that entry, or that entry plus a date, `-latest`,
a region/context suffix (`claude-sonnet-5-5-20260928`, `claude-sonnet-5-5[1m]`), but not
another minor version (`claude-fable-5-2` is not `claude-fable-5`). A model not in the table (any OpenAI-compatible or local
model) costs 0 and `cost_usd` reports it as unpriced: the caller shows the cost as
unknown instead of $0.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

from autoresearch.proposers.base import Usage


class Price(NamedTuple):
    input: float
    output: float
    cache_write: float
    cache_read: float


PRICES: dict[str, Price] = {
    "claude-fable-5-1": Price(10.0, 50.0, 12.50, 0.25),
    "claude-mythos-5-1": Price(10.0, 50.0, 12.50, 0.25),
    "claude-fable-5": Price(10.0, 50.0, 12.50, 1.00),
    "claude-mythos-5": Price(10.0, 50.0, 12.50, 1.00),
    "claude-opus-5-5": Price(4.0, 20.0, 5.00, 0.20),
    "claude-opus-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-8": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-7": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-6": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-1": Price(15.0, 75.0, 18.75, 1.50),
    "claude-opus-4": Price(15.0, 75.0, 18.75, 1.50),
    "claude-sonnet-5-5": Price(2.0, 10.0, 2.50, 0.10),
    "claude-sonnet-5": Price(2.0, 10.0, 2.50, 0.20),
    "claude-sonnet-4-6": Price(3.0, 15.0, 3.75, 0.30),
    "claude-sonnet-4-5": Price(3.0, 15.0, 3.75, 0.30),
    "claude-sonnet-4": Price(3.0, 15.0, 3.75, 0.30),
    "claude-haiku-5-5": Price(0.10, 0.50, 0.125, 0.01),
    "claude-haiku-4-5": Price(1.0, 5.0, 1.25, 0.10),
}


_SUFFIX = re.compile(r"(-\d{6,}|-latest|@.*|\[.*\]|-v\d.*|:.*)*$")


def price_of(model: str) -> Optional[Price]:
    """The price of `model`, or None if it is not in the table."""
    m = model.strip().lower()
    for prefix in sorted(PRICES, key=len, reverse=True):
        if m.startswith(prefix) and _SUFFIX.fullmatch(m[len(prefix) :]):
            return PRICES[prefix]
    return None


def cost_usd(model: str, usage: Usage) -> tuple[float, bool]:
    """(estimated cost, whether the model is priced); 0.0 and False when it is not."""
    p = price_of(model)
    if p is None:
        return 0.0, False
    cost = (
        usage.input_tokens * p.input
        + usage.output_tokens * p.output
        + usage.cache_write_tokens * p.cache_write
        + usage.cache_read_tokens * p.cache_read
    ) / 1e6
    return cost, True
