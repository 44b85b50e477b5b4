"""The parts of the prompt that show how past experiments went, beyond their one line.

Agents that see what changed and how training went repeat themselves less and learn
more per experiment (issue #15). Each section is bounded, so a long night's history does
not crowd out the script:

- metrics columns for the history table (steps, tokens, tok/s, peak memory, MFU);
- why experiments crashed, were rejected or were stopped (the last FAILURES_SHOWN);
- the training loss at 25/50/75/100% of the budget against the best run's (the best, the
  kept ones and the last LOSSES_RECENT);
- diffs against the commit each was made from (every kept one and the last DIFFS_RECENT),
  each at most DIFF_LINES lines.
"""

from __future__ import annotations

import difflib
from typing import Optional, Sequence

from autoresearch.proposers.base import HistoryItem

FAILURES_SHOWN = 8
LOSSES_RECENT = 10
DIFFS_RECENT = 3
DIFF_LINES = 40
DIFFS_KEPT = 12  # the most recent kept diffs (the path to the best)
_METRICS = (("steps", "steps", "{:.0f}"), ("tokens_M", "tokens_M", "{:.2f}"), ("tok_per_s", "tok/s", "{:.0f}"),
            ("peak_mem_mb", "mem_MB", "{:.0f}"), ("mfu_pct", "mfu%", "{:.1f}"))


def metric_columns(items: Sequence[HistoryItem]) -> tuple[list[str], list[list[str]]]:
    """The metric column names any item has, and each item's cells ("-" when unknown)."""
    present = [(key, name, fmt) for key, name, fmt in _METRICS if any(key in dict(it.metrics) for it in items)]
    cells = []
    for it in items:
        m = dict(it.metrics)
        cells.append([fmt.format(m[key]) if key in m else "-" for key, _, fmt in present])
    return [name for _, name, _ in present], cells


def failures(history: Sequence[HistoryItem]) -> str:
    failed = [it for it in history if it.outcome and it.reason][-FAILURES_SHOWN:]
    if not failed:
        return ""
    lines = [f"#{it.number} {it.outcome}: {it.reason}" for it in failed]
    return "## Why these failed or were stopped (the most recent)\n" + "\n".join(lines)


def best_item(history: Sequence[HistoryItem], best_commit: str) -> Optional[HistoryItem]:
    """The loop's best (ProposalContext.best_commit), as a history item."""
    return next((it for it in history if best_commit and it.commit[:7] == best_commit[:7]), None)


def _losses(it: HistoryItem) -> str:
    return " ".join("-" if v is None else f"{v:.3f}" for v in it.losses)


def losses(history: Sequence[HistoryItem], best_commit: str) -> str:
    best = best_item(history, best_commit)
    recent = {it.number for it in history[-LOSSES_RECENT:]}
    shown = [it for it in history if it.losses and (it.status == "keep" or it.number in recent)]
    if not shown:
        return ""
    lines = []
    if best is not None and best.losses:
        lines.append(f"best #{best.number}: {_losses(best)}")
    for it in shown:
        if best is not None and it.number == best.number:
            continue
        delta = ""
        if best is not None and best.losses and it.losses[-1] is not None and best.losses[-1] is not None:
            delta = f"  (final {it.losses[-1] - best.losses[-1]:+.3f} vs best)"
        lines.append(f"#{it.number} {it.status}: {_losses(it)}{delta}")
    return "## Training loss at 25/50/75/100% of the budget (first run of each)\n" + "\n".join(lines)


def diff(old: str, new: str, name: str = "train.py", limit: int = DIFF_LINES) -> str:
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"a/{name}", f"b/{name}", n=2, lineterm=""))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more diff lines)"]
    return "\n".join(lines)


def changes(history: Sequence[HistoryItem], name: str = "train.py") -> str:
    texts = {it.commit[:7]: it.text for it in history if it.text is not None}
    kept = [it for it in history if it.status == "keep"][-DIFFS_KEPT:]
    recent = list(history[-DIFFS_RECENT:])
    shown = sorted({it.number: it for it in kept + recent}.values(), key=lambda it: it.number)
    blocks = []
    for it in shown:
        parent_text = texts.get(it.parent[:7]) if it.parent else None
        if it.text is None or parent_text is None or parent_text == it.text:
            continue
        blocks.append(f"### #{it.number} {it.status}: {it.description}\n```diff\n{diff(parent_text, it.text, name)}\n```")
    if not blocks:
        return ""
    return "## What changed (diffs against the commit each was made from: every keep, the last few)\n" + "\n".join(blocks)
