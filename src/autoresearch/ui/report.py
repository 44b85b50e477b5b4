"""`ar report`: the whole research session as one self-contained HTML file.

The page holds the progress chart, the sortable table, the diff of every kept change, the
baseline's and the best's loss curves, the noise estimate, cost, hardware and per-worker
activity. It needs no network to open: the charts are inline SVG written by matplotlib,
the styles and the few lines of JavaScript (sorting, filtering) are inline, and nothing
refers to another file or URL. Its numbers come from `ar results --json`
(`table.results_json`), so the two never disagree.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

from autoresearch.errors import ArError
from autoresearch.experiment.keep import run_noise
from autoresearch.journal.files import read_run_records
from autoresearch.journal.queries import Entry, best_entry
from autoresearch.run.summary import parse_progress
from autoresearch.ui.plot import draw_progress
from autoresearch.ui.table import results_json
from autoresearch.ui.view import TABLE_COLUMNS, View, table_rows, workspace_view

MAX_DIFF_LINES = 400  # a kept change is a few lines; a rewrite of the script would drown the page
RUNS = Path(".autoresearch") / "runs" / "runs.jsonl"


@dataclass(frozen=True)
class Diff:
    entry: Entry
    lines: list[tuple[str, str]]  # (css class, text)
    note: str = ""  # why the diff is missing or cut short


def write_report(folder: Path, out: Optional[Path] = None) -> Path:
    """Write the report of the workspace at `folder` to `out` (default: report.html in it)."""
    folder = Path(folder)
    out = Path(out) if out else folder / "report.html"
    html = render_report(folder)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    except OSError as e:
        raise ArError(f"cannot write {out}: {e}") from None
    return out


def render_report(folder: Path, refresh: Optional[int] = None) -> str:
    """The report as one HTML string; `refresh` (seconds) makes the page reload itself."""
    from jinja2 import Environment

    folder = Path(folder)
    view = workspace_view(folder)
    if not view.entries:
        raise ArError(f"{folder / 'results.tsv'} has no experiments yet; run `ar run` or `ar loop` first")
    data = json.loads(results_json(view))  # the numbers of `ar results --json`, exactly
    summary = view.summary()
    runs = [r for r in read_run_records(folder / RUNS) if r.get("event") == "run"]
    key = summary.key
    baseline = next((e for e in view.entries if e.key == key and e.counts and _on_branch(view, e)), None)
    best = best_entry(view.entries, key, view.ancestry) if key else None

    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(resources.files("autoresearch.ui").joinpath("templates", "report.html.j2").read_text("utf-8"))
    return template.render(
        title=_title(folder),
        refresh=refresh,
        summary=data["summary"],
        columns=_columns(view),
        rows=_rows(view, data["rows"]),
        progress_svg=_progress_svg(view),
        loss_svg=_loss_svg(folder, runs, baseline, best),
        diffs=[_diff(folder, e) for e in view.entries if e.row.status == "keep"],
        facts=_facts(folder, view, runs),
        workers=_workers(view.entries),
    )


def _title(folder: Path) -> str:
    from autoresearch.workspace.config import load_config

    try:
        return f"autoresearch: {load_config(folder).tag}"
    except ArError:
        return f"autoresearch: {folder.resolve().name}"


def _on_branch(view: View, e: Entry) -> bool:
    return view.ancestry is None or e.row.commit[:7] in view.ancestry


def _columns(view: View) -> list[str]:
    """The columns of `ar results` before the description (the template adds it last)."""
    cols = list(TABLE_COLUMNS[:-1])
    if len(view.backends) > 1:  # rows of different backends are never compared: say which is which
        cols.append("backend")
    if any(e.worker for e in view.entries):
        cols.append("worker")
    if any(e.usage and e.usage.get("cost_usd") for e in view.entries):
        cols.append("cost")
    return cols


def _rows(view: View, json_rows: list[dict]) -> list[dict]:
    """Each row: its cells as `ar results` writes them, a sort key per cell, and its status."""
    cols = _columns(view)
    out = []
    for e, cells, j in zip(view.entries, table_rows(view.entries, view.best_before()), json_rows):
        crashed = j["status"] == "crash" or not j["val_bpb"]  # a crash, or a run stopped early
        # Sort keys: numbers sort as numbers; a crash has no value and sorts last.
        keys = [j["n"], j["commit"], "" if crashed else j["val_bpb"], "" if j["delta"] is None else j["delta"],
                "" if crashed else j["memory_gb"], j["status"]]
        cells = list(cells[:-1])
        cost = (j["usage"] or {}).get("cost_usd") or 0.0
        extra = {"backend": (e.backend, e.backend), "worker": (e.worker, e.worker),
                 "cost": (f"${cost:.4f}" if cost else "", cost)}
        for c in cols[len(cells):]:
            cells.append(extra[c][0])
            keys.append(extra[c][1])
        out.append({"n": j["n"], "status": j["status"], "cells": list(zip(cells, keys)),
                    "description": j["description"], "diff": j["status"] == "keep"})
    return out


def _svg(fig) -> str:
    """A figure as an <svg> element to inline in HTML: text stays text, no XML prolog,
    no namespace URLs (the HTML parser puts <svg> in the SVG namespace by itself)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    try:
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    finally:
        plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    return re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", svg)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # <text> elements: small, searchable, selectable
    return plt


def _progress_svg(view: View) -> str:
    """val_bpb over the experiments, as `ar plot` draws it (ui/plot.py: draw_progress)."""
    fig, ax = _pyplot().subplots(figsize=(12, 5.5))
    draw_progress(ax, view)
    fig.tight_layout()
    return _svg(fig)


def _curve(folder: Path, runs: list[dict], entry: Entry) -> list[dict]:
    """The progress lines of the entry's own run (the first ok "run" record of its
    experiment and commit); [] when its log is gone."""
    xid, commit = entry.record.get("id"), entry.row.commit[:7]
    for r in runs:
        if r.get("id") == xid and str(r.get("commit", ""))[:7] == commit and r.get("status") == "ok" and r.get("log"):
            try:
                text = (folder / r["log"]).read_text(encoding="utf-8", errors="replace")
            except OSError:
                return []
            points = [parse_progress(line) for line in text.splitlines()]
            return [p for p in points if p and isinstance(p.get("loss"), (int, float))]
    return []


def _loss_svg(folder: Path, runs: list[dict], baseline: Optional[Entry], best: Optional[Entry]) -> str:
    """The training loss of the baseline and of the best, overlaid ("" with no curve)."""
    curves = []
    for label, e, color in (("baseline", baseline, "#7f7f7f"), ("best", best, "#2ca02c")):
        if e is not None and (label == "baseline" or e is not baseline):
            pts = _curve(folder, runs, e)
            if pts:
                curves.append((f"{label} #{e.number} ({e.row.val_bpb:.6f})", pts, color))
    if not curves:
        return ""
    # Runs have a time budget, not a step count: the fraction of it is what lines up.
    by_pct = all(isinstance(p.get("pct"), (int, float)) for _, pts, _ in curves for p in pts)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for label, pts, color in curves:
        ax.plot([p["pct"] if by_pct else p.get("step", i) for i, p in enumerate(pts)], [p["loss"] for p in pts],
                color=color, lw=1.6, label=label)
    ax.set_xlabel("% of the training budget" if by_pct else "step")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.25)
    ax.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    return _svg(fig)


def _diff(folder: Path, e: Entry) -> Diff:
    from autoresearch.workspace.git import run_git

    parent, commit = e.record.get("parent"), e.record.get("commit") or e.row.commit
    if not parent:
        return Diff(e, [], "no parent recorded (a row written by hand or an older ar)")
    if str(parent)[:7] == str(commit)[:7]:
        return Diff(e, [], "the starting point: no change")
    try:
        text = run_git(folder, "diff", str(parent), str(commit), strip=False)
    except ArError as e_:
        return Diff(e, [], str(e_))
    lines = text.splitlines()
    note = f"{len(lines) - MAX_DIFF_LINES} more lines not shown" if len(lines) > MAX_DIFF_LINES else ""
    return Diff(e, [(_diff_class(ln), ln) for ln in lines[:MAX_DIFF_LINES]], note)


def _diff_class(line: str) -> str:
    if line.startswith(("+++", "---", "diff ", "index ")):
        return "meta"
    return {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "")


def _facts(folder: Path, view: View, runs: list[dict]) -> list[tuple[str, str]]:
    """The session at a glance: hardware, profile, noise floor, LLM cost."""
    from autoresearch.workspace.config import load_config

    facts = []
    try:
        cfg = load_config(folder)
        facts += [("profile", f"{cfg.profile} (data: {cfg.source})"), ("budget", f"{cfg.budget:g} s of training per run"),
                  ("backend", cfg.backend)]
    except ArError:
        pass
    chips = Counter(f"{s.get('chip')} ({s.get('backend') or '?'})" for r in runs
                    if isinstance(s := r.get("summary"), dict) and s.get("chip"))
    if chips:
        facts.append(("hardware", ", ".join(f"{c} \u00d7{n} runs" if len(chips) > 1 else c for c, n in chips.most_common())))
    floors = [e.record.get("noise_floor") for e in view.entries if isinstance(e.record.get("noise_floor"), (int, float))]
    if floors:  # the `noise` keep rule's: a gain must clear it
        facts.append(("noise floor", f"{floors[-1]:.6f} val_bpb (the gain a change must clear)"))
    noise = run_noise(runs, view.summary().key)  # whichever keep rule ran: from the "run" records
    facts.append(("run-to-run noise", f"sd {noise.sigma:.6f} val_bpb ({noise.dof + noise.scripts} repeated runs of "
                  f"{noise.scripts} scripts)" if noise else "not measured (no script was run twice)"))
    proposers = Counter(str(e.record.get("proposer")) for e in view.entries if e.record.get("proposer"))
    if proposers:
        facts.append(("proposer", ", ".join(proposers)))
    return facts


def _workers(entries: list[Entry]) -> list[dict]:
    """Per worker (`ar loop --workers N`): what it ran and what came of it."""
    out: dict[str, dict] = {}
    for e in entries:
        if not e.worker:
            continue
        w = out.setdefault(e.worker, {"name": e.worker, "experiments": 0, "keep": 0, "discard": 0, "crash": 0,
                                      "best": None, "rows": []})
        w["experiments"] += 1
        w[e.row.status] = w.get(e.row.status, 0) + 1
        w["rows"].append(e.number)
        if e.counts and (w["best"] is None or e.row.val_bpb < w["best"]):
            w["best"] = e.row.val_bpb
    return list(out.values())


def serve_report(folder: Path, port: int = 8000, refresh: int = 10):
    """A server on 127.0.0.1 that renders the report afresh for every request, the page
    reloading itself every `refresh` seconds: watch `ar loop` from a browser. Returns the
    server (call `serve_forever()`; `server_address[1]` is the port when `port` is 0)."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # every path is the report: there is nothing else to serve
            try:
                body, code = render_report(folder, refresh=refresh).encode("utf-8"), 200
            except ArError as e:  # no experiments yet: say so, and try again at the next refresh
                page = f'<!DOCTYPE html><meta http-equiv="refresh" content="{refresh}"><p>{_escape(str(e))}</p>'
                body, code = page.encode("utf-8"), 503
            self.send_response(code)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # library code never prints
            pass

    try:
        # Loopback only: the report shows the workspace's code and results to whoever connects.
        return HTTPServer(("127.0.0.1", port), Handler)  # one request at a time: pyplot is not thread-safe
    except OSError as e:
        raise ArError(f"cannot serve on 127.0.0.1:{port}: {e.strerror or e}") from None


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))
