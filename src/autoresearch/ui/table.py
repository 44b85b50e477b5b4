"""`ar results`: the table and the JSON for scripts.

Piped or redirected (`| less`, `| grep`, `> file`), the table is plain text, streamed a
line at a time (`results_plain`): every row, no escape codes, 10,000 rows in a few
hundredths of a second. On a terminal it is one Rich Text with fixed-width columns and
colours (`results_text`), cut to the latest rows that fit the window (`rows_that_fit`)
with a line saying how many are hidden and how to see them: 10,000 rows through Rich
would take seconds, only to scroll off the screen.
"""

from __future__ import annotations

import json
from typing import Iterator, Optional

from autoresearch.journal.queries import spends
from autoresearch.ui.view import TABLE_COLUMNS, View, table_rows

_RIGHT = {0, 2, 3, 4}
_STATUS_STYLE = {"keep": "green", "discard": "bright_black", "crash": "red"}
MIN_ROWS = 5  # rows shown on however small a terminal


def results_json(view: View) -> str:
    entries, before, t = view.entries, view.best_before(), view.tally
    rows = [
        {"n": e.number, **e.row.as_dict(), "best_before": b,
         "delta": (e.row.val_bpb - b) if b is not None and e.row.val_bpb > 0 else None,  # none for a crash or a stop
         "budget": float(e.budget), "backend": e.backend or None,
         **({"worker": e.worker or None} if t.workers else {}),
         "usage": e.usage if spends(e) else None, "sandbox": e.sandbox}
        for e, b in zip(entries, before)
    ]
    llm = {**t.tokens, "cost_usd": round(t.cost_usd, 6)}
    return json.dumps({"rows": rows, "summary": {**view.summary().as_dict(), "llm": llm}}, indent=1)


def _cells(view: View, last: Optional[int]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The column names and the cells of the last `last` rows (None: all of them)."""
    t = view.tally
    columns = TABLE_COLUMNS
    extra = []  # decided on every row (the tally), so --last shows the same columns as the whole table
    if len(t.backends) > 1:  # rows of different backends are never compared: say which is which
        extra.append(("backend", lambda e: e.backend))
    if t.workers:  # `ar loop --workers`: who ran what
        extra.append(("worker", lambda e: e.worker))
    if t.unsandboxed and t.sandboxes:  # some ran with --no-sandbox, some not: which
        extra.append(("sandbox", lambda e: str(e.sandbox or "")))
    if t.spent:
        extra.append(("cost", lambda e: f"${e.usage.get('cost_usd', 0.0):.4f}" if spends(e) else ""))
    # only the rows shown are formatted, each compared with all the rows before it
    entries = view.tail(last)
    cells = table_rows(entries, view.best_before(view.total - len(entries)))
    for name, cell in extra:  # before the description
        columns = columns[:-1] + (name,) + columns[-1:]
        cells = [c[:-1] + (cell(e),) + c[-1:] for c, e in zip(cells, entries)]
    return columns, cells


def _widths(columns: tuple[str, ...], cells: list[tuple[str, ...]]) -> list[int]:
    return [max([len(name)] + [len(c[k]) for c in cells]) for k, name in enumerate(columns[:-1])]


def _progress(s) -> str:
    """baseline -> best and the change, signed as val_bpb moves (lower is better)."""
    if s.baseline is None or s.best is None:
        return "no result yet"
    change = round(s.best - s.baseline, 9) + 0.0  # + 0.0: never "-0.000000"
    pct = 100.0 * change / s.baseline if s.baseline else 0.0
    return f"baseline {s.baseline:.6f} -> best {s.best:.6f} ({change:+.6f}, {pct + 0.0:+.2f}%)"


def _summary_lines(view: View) -> list[str]:
    s, t = view.summary(), view.tally
    line = f"{s.experiments} experiments, {s.kept} kept, {s.discarded} discarded, {s.crashed} crashed"
    if len(t.groups) > 1:  # never compared with each other: a baseline and a best for each
        lines = [line] + [f"  {_progress(view.summarize(k))} ({k[1] or '?'}, {k[0]} s)" for k in t.groups]
    else:
        lines = [line + (f"; {_progress(s)}" if s.baseline is not None else "")]
    sandboxed = _sandbox_line(view)
    if sandboxed:
        lines.append(sandboxed)
    if t.spent:
        lines.append(f"LLM: {t.tokens['input_tokens']:,} input, {t.tokens['output_tokens']:,} output, "
                     f"{t.tokens['cache_read_tokens']:,} cached tokens; ${t.cost_usd:.2f} in total")
    return lines


def _sandbox_line(view: View) -> Optional[str]:
    """Whether the experiments' runs were sandboxed (rows from before ar recorded it: not counted)."""
    t = view.tally
    if not t.sandboxed:
        return None
    kinds = ", ".join(t.sandboxes)
    unknown = t.rows - t.sandboxed
    later = f" ({unknown} earlier not recorded)" if unknown else ""
    if not t.unsandboxed:
        return f"sandbox: every run of {t.sandboxed} experiments ran in it ({kinds}){later}"
    return f"sandbox: {t.unsandboxed} of {t.sandboxed} experiments ran WITHOUT it (--no-sandbox){later}"


def results_plain(view: View, last: Optional[int] = None) -> Iterator[str]:
    """The table and the summary as plain lines (each ending in a newline), for a pipe."""
    columns, cells = _cells(view, last)
    widths = _widths(columns, cells)
    pads = [str.rjust if k in _RIGHT else str.ljust for k in range(len(widths))]

    def line(c: tuple[str, ...]) -> str:
        return "  ".join([pad(c[k], w) for k, (pad, w) in enumerate(zip(pads, widths))] + [c[-1]]).rstrip() + "\n"

    yield line(columns)
    for c in cells:
        yield line(c)
    for summary in _summary_lines(view):
        yield summary + "\n"


def rows_that_fit(rows: int, height: int, other_lines: int) -> int:
    """How many of `rows` table rows a terminal of `height` lines shows at once, with
    `other_lines` lines besides them (header, summary, the prompt after) and, when not
    all fit, one more saying what is hidden."""
    if rows + other_lines <= height:
        return rows
    return min(rows, max(MIN_ROWS, height - other_lines - 1))


def results_text(view: View, last: Optional[int] = None, height: Optional[int] = None, width: int = 80):
    """The table (a rich.text.Text) and the lines under it, for a terminal.

    With `height` (the terminal's lines; `width` its columns) and no `last`, only the
    latest rows that fit are in the table, and the first line under it says how many
    earlier ones are hidden and how to see them; an explicit `last` is shown whole."""
    from rich.text import Text

    lines = _summary_lines(view)
    hidden = 0
    if height is not None and last is None:
        total = view.total
        wrapped = sum(-(-len(line) // max(width, 1)) for line in lines)  # the summary wraps, rows do not
        last = rows_that_fit(total, height, other_lines=1 + wrapped + 1)
        hidden = total - last
    columns, cells = _cells(view, last)
    widths = _widths(columns, cells)
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
    if hidden:
        lines.insert(0, f"({hidden:,} earlier rows hidden; see them all with `ar results | less`)")
    return text, lines
