"""`ar show <n | commit>`: one experiment in full.

`experiment_details` gathers everything as one plain dict (what `--json` prints):
the row and its "finished" record, its runs ("run" records with the same id) with
their metrics, the git diff against its parent, the loss curve of its log and of the
best run's, the log tail and the LLM cost. `render_show` turns that dict into lines of
Rich Text; nothing here prints.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Optional, Sequence

from autoresearch.errors import ArError
from autoresearch.journal.files import read_run_records
from autoresearch.journal.queries import Entry, best_entry
from autoresearch.run.summary import parse_progress
from autoresearch.ui.view import workspace_view
from autoresearch.workspace.config import RUNS_RELDIR
from autoresearch.workspace.git import run_git

LOG_TAIL = 20
CHART_WIDTH = 60
_BARS = "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"
_HEX = re.compile(r"^[0-9a-fA-F]{7,40}$")
_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def find_entry(entries: Sequence[Entry], ref: str) -> Entry:
    """The entry `ref` names: a row number as `ar results` numbers them, or a commit (7+ hex)."""
    ref = str(ref).strip()
    # a short all-digit ref is a row number; 7+ digits read as a commit (a hash can be all digits)
    if ref.isdigit() and len(ref) < 7:
        n = int(ref)
        if 1 <= n <= len(entries):
            return entries[n - 1]
        have = f"rows 1-{len(entries)}" if entries else "no rows yet"
        raise ArError(f"no experiment {n}: results.tsv has {have}; `ar results` lists them")
    if not _HEX.match(ref):
        raise ArError(f"{ref!r} is neither a row number (as `ar results` numbers them) nor a commit of 7+ hex characters")
    ref = ref.lower()
    found = [e for e in entries if _same_commit(ref, e.row.commit) or _same_commit(ref, str(e.record.get("commit") or ""))]
    if not found:
        raise ArError(f"no experiment with commit {ref} in results.tsv; `ar results` lists them")
    return found[-1]  # a commit run twice (a smoke test, then the real run): its latest row


def _same_commit(a: str, b: str) -> bool:
    n = min(len(a), len(b))
    return n >= 7 and a[:n] == b[:n].lower()


def _metrics(summary: dict, progress: list[dict]) -> dict:
    """Steps, tokens, tok/s, peak memory and MFU of one run: its summary block first, the
    last progress line where the script printed no summary (a crash)."""
    last = progress[-1] if progress else {}

    def num(value) -> Optional[float]:
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    tokens_m, seconds = num(summary.get("total_tokens_M")), num(summary.get("training_seconds"))
    tok_s = tokens_m * 1e6 / seconds if tokens_m is not None and seconds else num(last.get("tok_per_s"))
    return {
        "steps": num(summary.get("num_steps")) if "num_steps" in summary else num(last.get("step")),
        "tokens_M": tokens_m,
        "tok_per_s": tok_s,
        "peak_memory_mb": num(summary.get("peak_vram_mb")),
        "mfu_percent": num(summary.get("mfu_percent")),
        "training_seconds": seconds,
    }


def _log_path(folder: Path, log: object) -> Optional[Path]:
    if not log:
        return None
    path = Path(str(log))
    return path if path.is_absolute() else folder / path


def _read_log(path: Optional[Path]) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines() if path else []
    except OSError:  # deleted or moved by hand: show the rest
        return []


def _curve(progress: list[dict]) -> list[list[float]]:
    """[x, loss] per progress line, x the percent of the budget (step when not printed), so
    runs of different speeds line up over the same budget."""
    out = []
    for p in progress:
        x, loss = p.get("pct", p.get("step")), p.get("loss")
        # a NaN or inf loss (a diverged run) has no place on the chart; the log tail shows it
        if isinstance(x, (int, float)) and isinstance(loss, (int, float)) and math.isfinite(loss):
            out.append([float(x), float(loss)])
    return out


def _runs_of(folder: Path, records: list[dict], entry: Entry) -> list[dict]:
    """Each run of the entry: its record's fields, metrics, loss curve and log lines."""
    xid = entry.record.get("id")
    out = []
    for r in records:
        if r.get("event") != "run" or not xid or r.get("id") != xid:
            continue
        path = _log_path(folder, r.get("log"))
        lines = _read_log(path)
        progress = [p for p in map(parse_progress, lines) if p is not None]
        summary = r.get("summary") if isinstance(r.get("summary"), dict) else {}
        out.append({
            "commit": r.get("commit"), "kind": r.get("kind"), "seed": r.get("seed"), "status": r.get("status"),
            "val_bpb": r.get("val_bpb"), "memory_gb": r.get("memory_gb"), "seconds": r.get("seconds"),
            "reason": r.get("reason") or None, "log": str(r.get("log") or "") or None,
            "metrics": _metrics(summary, progress), "_loss": _curve(progress), "_lines": lines,
        })
    return out


def _diff(folder: Path, commit: str, parent: Optional[str]) -> dict:
    """The experiment's change. `ar run` records the commit it ran as its own parent (nothing
    was committed for it), so then the diff is against the commit's git parent."""
    base = parent if parent and not _same_commit(parent.lower(), commit.lower()) else f"{commit}^"
    try:
        base = run_git(folder, "rev-parse", "--short=7", base)
        return {"base": base, "text": run_git(folder, "diff", base, commit, strip=False), "error": None}
    except ArError as e:  # the first commit, a commit gc'd after a reset, no git at all
        return {"base": None, "text": None, "error": _first_commit(folder, commit, base) or str(e)}


def _first_commit(folder: Path, commit: str, base: str) -> Optional[str]:
    """Say so plainly when `commit` exists but has no parent (a baseline on a fresh repository)."""
    if not base.endswith("^"):
        return None
    try:
        run_git(folder, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    except ArError:
        return None
    return f"{commit} is the first commit: there is nothing before it"


def experiment_details(folder: Path, ref: str) -> dict:
    """Everything about experiment `ref` (a row number or a commit) as one JSON-ready dict."""
    folder = Path(folder)
    view = workspace_view(folder)
    entry = find_entry(view.entries, ref)
    rec, row = entry.record, entry.row
    records = read_run_records(folder / RUNS_RELDIR / "runs.jsonl")
    runs = _runs_of(folder, records, entry)
    commit = str(rec.get("commit") or row.commit)

    best = best_entry(view.entries, entry.key, view.ancestry)
    best_loss = None
    if best is not None and best.number != entry.number:
        best_runs = [r for r in _runs_of(folder, records, best) if r["status"] == "ok"]
        if best_runs:
            best_loss = {"n": best.number, "commit": best.row.commit, "val_bpb": best.row.val_bpb,
                         "points": best_runs[0]["_loss"]}
    # the last run decided (a confirmation run follows the first); its log is the one to read
    tail, loss = (runs[-1]["_lines"][-LOG_TAIL:], runs[-1]["_loss"]) if runs else ([], [])
    for r in runs:
        del r["_lines"], r["_loss"]
    diff = _diff(folder, commit, rec.get("parent"))
    return {
        "n": entry.number, "commit": row.commit, "parent": diff["base"], "description": row.description,
        "status": row.status, "val_bpb": row.val_bpb, "memory_gb": row.memory_gb,
        "budget": float(entry.budget), "backend": entry.backend or None, "worker": entry.worker or None,
        "kind": rec.get("kind"), "recovered": entry.recovered,
        "decision": rec.get("decision"), "best_before": rec.get("best_before"), "noise_floor": rec.get("noise_floor"),
        "values": rec.get("values"), "keep_rule": rec.get("keep_rule"),
        "runs": runs,
        "usage": entry.usage,
        "diff": {"text": diff["text"], "error": diff["error"]},
        "is_best": best is not None and best.number == entry.number,
        "loss": {"this": loss, "best": best_loss},
        "log": runs[-1]["log"] if runs else None,
        "log_tail": tail,
    }


def show_json(details: dict) -> str:
    return json.dumps(details, indent=1)


# -- text ------------------------------------------------------------------------------


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _run_line(r: dict) -> str:
    m = r["metrics"]
    seed = f" (seed {r['seed']})" if r["seed"] is not None else ""
    head = f"{r['kind'] or 'run'}{seed}, {r['status']}, val_bpb {_fmt(r['val_bpb'], '.6f')}"
    facts = [
        f"{m['steps']:,.0f} steps" if m["steps"] is not None else "",
        f"{m['tokens_M']:.1f}M tokens" if m["tokens_M"] is not None else "",
        f"{m['tok_per_s']:,.0f} tok/s" if m["tok_per_s"] is not None else "",
        f"peak {m['peak_memory_mb']:,.0f} MB" if m["peak_memory_mb"] is not None else "",
        f"MFU {m['mfu_percent']:.1f}%" if m["mfu_percent"] is not None else "",
        f"{r['seconds']:.1f} s" if isinstance(r.get("seconds"), (int, float)) else "",
    ]
    line = head + "; " + ", ".join(f for f in facts if f)
    return line + (f"  ({r['reason']})" if r.get("reason") and r["status"] != "ok" else "")


def _columns(points: list[list[float]], lo: float, hi: float, width: int) -> list[Optional[float]]:
    """The mean loss of each of `width` columns spanning x in [lo, hi]; None before the
    first point, then an empty column repeats the one before (a sparse log)."""
    sums, counts = [0.0] * width, [0] * width
    for x, loss in points:
        k = 0 if hi <= lo else min(width - 1, max(0, int((x - lo) / (hi - lo) * (width - 1) + 0.5)))
        sums[k] += loss
        counts[k] += 1
    out: list[Optional[float]] = []
    for s, c in zip(sums, counts):
        out.append(s / c if c else (out[-1] if out else None))
    return out


def sparklines(curves: list[list[list[float]]], width: int = CHART_WIDTH) -> list[str]:
    """One sparkline per curve on a shared x and loss scale, so they compare column by column."""
    points = [p for c in curves for p in c]
    if not points:
        return ["" for _ in curves]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    width = max(2, min(width, max(len(c) for c in curves)))
    lo, hi = min(ys), max(ys)
    out = []
    for c in curves:
        cols = _columns(c, min(xs), max(xs), width)
        out.append("".join(" " if v is None else _BARS[0 if hi <= lo else round((v - lo) / (hi - lo) * 7)]
                           for v in cols))
    return out


def _cost_line(usage: Optional[dict]) -> str:
    if not usage or not any(usage.get(k) for k in (*_TOKENS, "cost_usd")):
        return "cost: none (no LLM proposal)"
    u = {k: int(usage.get(k) or 0) for k in _TOKENS}
    return (f"cost: ${float(usage.get('cost_usd') or 0.0):.4f} ({u['input_tokens']:,} input, {u['output_tokens']:,} output, "
            f"{u['cache_read_tokens']:,} cached, {u['cache_write_tokens']:,} cache-write tokens)")


def _loss_lines(d: dict) -> list[str]:
    this, best = d["loss"]["this"], d["loss"]["best"]
    if not this and not best:
        return ["loss: no progress lines in the log"]
    curves = [this] + ([best["points"]] if best else [])
    lines = sparklines(curves)

    def ends(points: list) -> str:
        return f"{points[0][1]:.4f} -> {points[-1][1]:.4f}" if points else "no progress lines"

    out = [f"loss  this  {lines[0]}  {ends(this)}"]
    if best:
        out.append(f"      best  {lines[1]}  {ends(best['points'])}  (#{best['n']} {best['commit']}, "
                   f"val_bpb {best['val_bpb']:.6f})")
    elif d["is_best"]:
        out.append("      (this is the best of its budget and backend)")
    else:
        out.append("      (no kept run of its budget and backend to compare with)")
    return out


def render_show(d: dict):
    """The details as Rich Text lines, in reading order: what it is, why it was kept or
    not, what it cost, how it trained, what it changed, how its log ended."""
    from rich.text import Text

    status_style = {"keep": "green", "discard": "bright_black", "crash": "red"}.get(d["status"])
    out = []
    head = Text(f"#{d['n']} {d['commit']}  ", style="bold")
    head.append(d["description"])
    out.append(head)
    line = Text("status ")
    line.append(d["status"], style=status_style)
    novalue = d["status"] == "crash" or not d["val_bpb"]  # a crash, or a run stopped early
    val = "-" if novalue else f"{d['val_bpb']:.6f}"
    mem = "-" if novalue else f"{d['memory_gb']:.1f} GB"
    line.append(f"   val_bpb {val}   memory {mem}   budget {d['budget']:g} s   backend {d['backend'] or '-'}")
    if d["worker"]:
        line.append(f"   worker {d['worker']}")
    out.append(line)
    out.append(Text(f"decision: {d['decision'] or '(no journal record for this row)'}"))
    floor = "not measured" if d["noise_floor"] is None else f"{d['noise_floor']:.6f}"
    out.append(Text(f"  best before {_fmt(d['best_before'], '.6f', 'none')}, noise floor {floor}"
                    + (f", keep rule {d['keep_rule']}" if d["keep_rule"] else "")))
    for k, r in enumerate(d["runs"], start=1):
        out.append(Text(f"  run {k}: " + _run_line(r)))
    out.append(Text(_cost_line(d["usage"])))
    out.append(Text(""))
    out.extend(Text(s) for s in _loss_lines(d))

    diff = d["diff"]
    out.append(Text(""))
    out.append(Text(f"diff {d['parent'] or '?'}..{d['commit']}", style="bold"))
    if diff["text"] is None:
        out.append(Text(f"  (no diff: {diff['error']})", style="yellow"))
    elif not diff["text"].strip():
        out.append(Text("  (no change)"))
    for s in (diff["text"] or "").splitlines():
        style = ("bold" if s.startswith(("+++", "---", "diff ")) else "green" if s.startswith("+")
                 else "red" if s.startswith("-") else "cyan" if s.startswith("@@") else None)
        out.append(Text(s, style=style))

    out.append(Text(""))
    out.append(Text(f"log tail ({d['log'] or 'no log recorded'})", style="bold"))
    out.extend(Text("  " + s, style="dim") for s in d["log_tail"])
    return out
