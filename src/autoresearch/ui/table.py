"""`ar results`: the table (as one Rich Text with fixed-width columns: the same look as a
Rich Table, and 10,000 rows render in a fraction of a second) and the JSON for scripts."""

from __future__ import annotations

import json
from typing import Optional

from autoresearch.ui.view import TABLE_COLUMNS, View, table_rows

_RIGHT = {0, 2, 3, 4}
_STATUS_STYLE = {"keep": "green", "discard": "bright_black", "crash": "red"}
_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens")


def _spent(view: View) -> dict[int, dict]:
    """Row number -> the LLM usage of its proposal, for proposals that cost something."""
    return {e.number: e.usage for e in view.entries if e.usage and any(e.usage.values())}


def results_json(view: View) -> str:
    entries, before, spent = view.entries, view.best_before(), _spent(view)
    workers = any(e.worker for e in entries)
    rows = [
        {"n": e.number, **e.row.as_dict(), "best_before": b,
         "delta": (e.row.val_bpb - b) if b is not None and e.row.status != "crash" else None,
         "budget": float(e.budget), "backend": e.backend or None,
         **({"worker": e.worker or None} if workers else {}),
         "usage": spent.get(e.number)}
        for e, b in zip(entries, before)
    ]
    llm = {k: sum(u.get(k, 0) for u in spent.values()) for k in _TOKENS}
    llm["cost_usd"] = round(sum(u.get("cost_usd", 0.0) for u in spent.values()), 6)
    return json.dumps({"rows": rows, "summary": {**view.summary().as_dict(), "llm": llm}}, indent=1)


def results_text(view: View, last: Optional[int] = None):
    """The table (a rich.text.Text) and the summary lines under it."""
    from rich.text import Text

    entries, spent = view.entries, _spent(view)
    several = len(view.backends) > 1  # rows of different backends are never compared: say which is which
    cells = table_rows(entries, view.best_before())
    columns = TABLE_COLUMNS
    extra = [("backend", lambda e: e.backend)] if several else []
    if any(e.worker for e in entries):  # `ar loop --workers`: who ran what
        extra.append(("worker", lambda e: e.worker))
    if spent:
        extra.append(("cost", lambda e: f"${spent[e.number].get('cost_usd', 0.0):.4f}" if e.number in spent else ""))
    for name, cell in extra:  # before the description
        columns = columns[:-1] + (name,) + columns[-1:]
        cells = [c[:-1] + (cell(e),) + c[-1:] for c, e in zip(cells, entries)]
    cells = cells[-last:] if last else cells
    widths = [max([len(name)] + [len(c[k]) for c in cells]) for k, name in enumerate(columns[:-1])]
    text = Text(no_wrap=True, overflow="ellipsis")
    for k, name in enumerate(columns[:-1]):
        text.append((name.rjust if k in _RIGHT else name.ljust)(widths[k]) + "  ", style="bold")
    text.append(columns[-1] + "\n", style="bold")
    for c in cells:
        for k in range(len(columns) - 1):
            style = _STATUS_STYLE[c[5]] if k == 5 else None
            if k == 3 and c[3].strip("+-0."):  # a nonzero change: green is better
                style = "green" if c[3].startswith("-") else "red"
            text.append((c[k].rjust if k in _RIGHT else c[k].ljust)(widths[k]), style=style)
            text.append("  ")
        text.append(c[-1] + "\n")
    text.rstrip()
    s = view.summary()
    line = f"{s.experiments} experiments, {s.kept} kept, {s.discarded} discarded, {s.crashed} crashed"
    if s.baseline is not None:
        group = f" ({s.key[1]}, {s.key[0]} s)" if several and s.key else ""
        line += f"; baseline {s.baseline:.6f} -> best {s.best:.6f}{group}"
        line += f" ({-s.improvement:+.6f}, {-s.improvement_pct:+.2f}%)"
    lines = [line]
    if spent:
        tokens = {k: sum(u.get(k, 0) for u in spent.values()) for k in _TOKENS}
        cost = sum(u.get("cost_usd", 0.0) for u in spent.values())
        lines.append(f"LLM: {tokens['input_tokens']:,} input, {tokens['output_tokens']:,} output, "
                     f"{tokens['cache_read_tokens']:,} cached tokens; ${cost:.2f} in total")
    return text, lines
