"""What the LLM sees, built from a ProposalContext, and how its answer is read.

The system prompt (how this conversation works + program.md) is the same for every
experiment of a run, so the proposers cache it; everything that changes (history, best,
the current file, feedback) goes into the first user message.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Optional

from autoresearch.proposers.base import HistoryItem, ProposalContext
from autoresearch.proposers.notes import NOTES_TOOL
from autoresearch.proposers.context import changes, failures, losses, metric_columns

TOOL_NAME = "str_replace_based_edit_tool"
HISTORY_LIMIT = 60  # beyond this many rows, the history is summarised
HISTORY_TAIL = 30  # ... keeping the kept experiments and the last this many
DESCRIPTION_MAX = 160

SYSTEM = """\
You are the research agent of an autoresearch run. You work inside `ar loop`: the \
harness does everything program.md below tells you to do with git and `ar run` \
(committing, training for the fixed budget, recording results.tsv, keeping or \
resetting), so you do not run commands. This conversation is one experiment:

1. Pick one idea that you expect to lower val_bpb. Learn from the experiments so far \
(the next message lists them): do not repeat one that was already tried unless you \
change it meaningfully, and do not duplicate an experiment that is running right now.
2. Make the change in {name} with the {tool} tool. {name} is the only file you can \
view or edit; always use the path "{name}". Prefer `str_replace` with an `old_str` \
copied exactly from the file (whitespace included) that occurs once; `create` rewrites \
the whole file. If a call fails, read the error and fix the call.
3. Keep your research notes with the {notes_tool} tool: what you learned from the \
results and what you plan next. They are shown to you at the start of every experiment \
and survive restarts; update them when a result teaches you something.
4. When the edit is complete, reply with text only. Its first line is a short \
description of the experiment, like a commit message (for example: "increase matrix \
LR to 0.05"); a few lines on why may follow.

The standing instructions of this research run (program.md) follow.

<program>
{program}
</program>
"""


def system_prompt(ctx: ProposalContext) -> str:
    return SYSTEM.format(name=ctx.editable_name, tool=TOOL_NAME, notes_tool=NOTES_TOOL, program=ctx.program.strip())


def user_prompt(ctx: ProposalContext) -> str:
    name = ctx.editable_name
    parts = [f"Hardware: {ctx.hardware}", f"Profile: {ctx.profile}"]
    if ctx.best is None:
        parts.append("Best val_bpb so far: none yet (lower is better).")
    else:
        parts.append(f"Best val_bpb so far: {ctx.best:.6f} (lower is better).")

    notes = ctx.notes.strip()
    parts.append(f"## Your research notes\n{notes}" if notes else
                 f"## Your research notes\nEmpty so far: write them with the {NOTES_TOOL} tool.")

    if ctx.history:
        parts.append(f"## Experiments so far ({len(ctx.history)})\n" + format_history(ctx.history))
        for section in (failures(ctx.history), losses(ctx.history, ctx.best_commit), changes(ctx.history, name)):
            if section:
                parts.append(section)
    else:
        parts.append("## Experiments so far\nNone yet.")

    if ctx.in_flight:
        running = "\n".join(f"- {d}" for d in ctx.in_flight)
        parts.append(f"## Running right now (do not propose these again)\n{running}")

    if ctx.last_crash_tail:
        last = ctx.history[-1] if ctx.history else None
        which = f" (#{last.number}: {last.description})" if last and last.status == "crash" else ""
        parts.append(
            f"## The last experiment{which} crashed\nIts change has been reverted. The tail "
            f"of its log:\n```\n{ctx.last_crash_tail.strip()}\n```\nIf the idea was sound "
            "and the crash a simple bug, you may try it again with the bug fixed."
        )

    if ctx.feedback:
        parts.append(f"## Your previous proposal was rejected before it ran\n{ctx.feedback.strip()}")

    if ctx.mode_note:
        parts.append(f"## This experiment: {ctx.mode}\n{ctx.mode_note.strip()}")

    lang = "python" if PurePosixPath(name).suffix == ".py" else ""
    n_lines = len(ctx.editable_text.splitlines())
    which = "the version you branch from" if ctx.mode == "branch" else "the best version so far"
    parts.append(
        f"## Current {name} ({which}, {n_lines} lines)\n"
        f"```{lang}\n{ctx.editable_text.rstrip()}\n```"
    )
    parts.append(f"Make one experiment now: edit {name} with the tool, then reply with the one-line description.")
    return "\n\n".join(parts)


def format_history(history: tuple[HistoryItem, ...]) -> str:
    """One row per experiment; beyond HISTORY_LIMIT rows, the kept ones and the last
    HISTORY_TAIL, with counts of the rest (the kept ones are the path to the best)."""
    items = list(history)
    note = ""
    if len(items) > HISTORY_LIMIT:
        tail_start = len(items) - HISTORY_TAIL
        shown = [it for i, it in enumerate(items) if it.status == "keep" or i >= tail_start]
        hidden = [it for i, it in enumerate(items) if it.status != "keep" and i < tail_start]
        counts: dict[str, int] = {}
        for it in hidden:
            counts[it.status] = counts.get(it.status, 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        note = f"({len(hidden)} older experiments not shown: {summary}. Shown: every keep and the last {HISTORY_TAIL}.)\n"
        items = shown
    names, cells = metric_columns(items)
    rows = ["\t".join(["#", "commit", "val_bpb", "status", *names, "description"])]
    for it, metric_cells in zip(items, cells):
        bpb = "-" if it.status == "crash" or (it.outcome == "stopped" and not it.val_bpb) else f"{it.val_bpb:.6f}"
        status = it.outcome if it.outcome in ("stopped", "rejected", "timeout") else it.status
        rows.append("\t".join([str(it.number), it.commit[:7], bpb, status, *metric_cells, _one_line(it.description)]))
    return note + "\n".join(rows)


_LABEL = re.compile(r"^(description|experiment|commit message|summary)\s*:\s*", re.IGNORECASE)
_BULLET = re.compile(r"^(?:[-*+>]|\d+[.)])\s+")


def parse_description(text: Optional[str]) -> Optional[str]:
    """The first non-empty line of the model's final text, without markdown, quotes or a
    'Description:' label, on one line and at most DESCRIPTION_MAX characters."""
    for line in (text or "").splitlines():
        s = line.strip()
        s = s.lstrip("#").strip()
        s = _BULLET.sub("", s)
        s = s.replace("**", "").replace("__", "").replace("`", "")
        s = _LABEL.sub("", s.strip())
        s = s.strip().strip("\"'“”").strip()
        s = _one_line(s)
        if s:
            if len(s) > DESCRIPTION_MAX:
                s = s[: DESCRIPTION_MAX - 3].rstrip() + "..."
            return s
    return None


def _one_line(s: str) -> str:
    return " ".join(s.split())
