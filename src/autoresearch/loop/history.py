"""What the proposer sees of each past experiment, built from the journal and git.

For every results.tsv row: the script as it ran (git, cached per commit: commits never
change), the commit it was made from, the summary metrics and the training loss at
25/50/75/100% of its first run (from the "run" records' summary and curve), why it
crashed, was rejected or was stopped, and the search mode that made it. Nothing here is
parsed back out of a description.
"""

from __future__ import annotations

import ast
import io
import tokenize
from typing import Callable, Iterable, Optional, Sequence

from autoresearch.experiment.early_stop import loss_at
from autoresearch.journal.queries import Entry
from autoresearch.proposers.base import HistoryItem

QUARTERS = (25.0, 50.0, 75.0, 100.0)
# summary-block keys shown to the proposer, in this order, with the name it sees
METRICS = (("num_steps", "steps"), ("total_tokens_M", "tokens_M"), ("tok_per_s", "tok_per_s"),
           ("peak_vram_mb", "peak_mem_mb"), ("mfu_percent", "mfu_pct"), ("num_params_M", "params_M"))
REASON_MAX = 240  # characters of a failure reason


def _num(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def metrics_of(run: dict) -> tuple[tuple[str, float], ...]:
    summary = run.get("summary") if isinstance(run.get("summary"), dict) else {}
    values = dict(summary)
    tokens, seconds = _num(summary.get("total_tokens_M")), _num(summary.get("training_seconds"))
    if tokens is not None and seconds:
        values["tok_per_s"] = tokens * 1e6 / seconds
    out = []
    for key, name in METRICS:
        v = _num(values.get(key))
        if v is not None:
            out.append((name, v))
    return tuple(out)


def losses_of(run: dict) -> tuple[Optional[float], ...]:
    """Training loss at 25/50/75/100% (the last point for 100% when the curve ends past 90%)."""
    curve = run.get("curve") if isinstance(run.get("curve"), list) else []
    if not curve:
        return ()
    out: list[Optional[float]] = [loss_at(curve, q) for q in QUARTERS[:-1]]
    last_pct, last_loss = curve[-1]
    out.append(float(last_loss) if last_pct >= 90 else None)
    return tuple(None if v is None else round(float(v), 4) for v in out)


def _one_line(text: object) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= REASON_MAX else s[: REASON_MAX - 3] + "..."


def outcome_of(runs: Sequence[dict]) -> tuple[str, str]:
    """("stopped" | "rejected" | "crashed" | "timeout" | "", the reason) of an experiment's runs."""
    for r in runs:
        status = r.get("status")
        if status in ("stopped", "rejected", "timeout", "crash"):
            return ("crashed" if status == "crash" else str(status)), _one_line(r.get("reason") or r.get("rejection"))
    return "", ""


def build(entries: Iterable[Entry], records: Iterable[dict], script_of: Callable[[str], Optional[str]]) -> tuple[HistoryItem, ...]:
    """One HistoryItem per row, oldest first."""
    runs_by_id: dict[str, list[dict]] = {}
    for r in records:
        if r.get("event") == "run" and r.get("id"):
            runs_by_id.setdefault(str(r["id"]), []).append(r)
    items = []
    for e in entries:
        rec, row = e.record, e.row
        runs = runs_by_id.get(str(rec.get("id") or ""), [])
        first = runs[0] if runs else {}
        outcome, reason = outcome_of(runs)
        if not reason and row.status == "crash":
            reason = _one_line(rec.get("decision"))
        items.append(HistoryItem(
            number=e.number, commit=row.commit, val_bpb=row.val_bpb, status=row.status, description=row.description,
            # a branch's diff is against where it started, not the commit it was made on
            parent=str(rec.get("base") or rec.get("parent") or ""),
            text=script_of(row.commit), outcome=outcome, reason=reason,
            metrics=metrics_of(first), losses=losses_of(first),
            runs=tuple(float(r["val_bpb"]) for r in runs if r.get("status") == "ok" and _num(r.get("val_bpb")) is not None),
            mode=str(rec.get("mode") or ""),
        ))
    return tuple(items)


def normalise(text: str) -> str:
    """A script with comments and formatting gone, for finding repeats: the same program
    written differently (whitespace, comments, line breaks inside brackets) normalises the
    same. Python: re-printed from its syntax tree; anything else: words joined by spaces."""
    try:
        return ast.unparse(ast.parse(text))
    except (SyntaxError, ValueError):
        pass
    try:  # not valid Python: drop comments token by token, then whitespace
        tokens = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline)
                  if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)]
        return " ".join(tokens)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return " ".join(text.split())

