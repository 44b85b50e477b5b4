"""What `ar loop` shows while it runs: a Rich live view on a terminal, plain lines otherwise.

Both subscribe to the loop's events (`autoresearch.experiment.lab.LoopEvent`); neither
changes anything. Progress events arrive from the runner's reader thread. With
`ar loop --workers N` every event names its worker ("w2", or "w2@node" with Ray): plain
lines start with it and the live view shows one line per worker.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Optional

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from autoresearch.experiment.lab import LoopEvent

STATUS_STYLE = {"keep": "green", "discard": "bright_black", "crash": "red"}
_RUN_LABEL = {"baseline": "baseline", "experiment": "experiment", "confirm": "confirmation run", "noise": "noise-floor run",
              "remeasure": "re-run of the best", "run": "run"}


def _bpb(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.6f}"


def _who(e: LoopEvent) -> str:
    return f"[cyan]\\[{escape(e.worker)}][/] " if e.worker else ""


def _progress_info(fields: dict) -> str:
    info = []
    for key, fmt in (("step", "step {}"), ("loss", "loss {:.4f}"), ("tok_per_s", "{:,.0f} tok/s"), ("remaining_s", "{:.0f} s left")):
        if isinstance(fields.get(key), (int, float)):
            info.append(fmt.format(fields[key]))
    return "  ".join(info)


class PlainDisplay:
    """One line per step of the loop; training progress every 25%."""

    def __init__(self, console: Console):
        self.console = console
        self._buckets: dict[str, int] = {}  # per worker: the last 25% step printed
        self._lock = threading.Lock()

    def __enter__(self) -> "PlainDisplay":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def line(self, text: str) -> None:
        with self._lock:
            self.console.print(text, highlight=False, soft_wrap=True)

    def __call__(self, e: LoopEvent) -> None:
        k = e.kind
        if k == "resumed":
            if e.number:
                self.line(f"resuming: {e.number} experiments in results.tsv, best {_bpb(e.best)}")
            else:
                self.line("starting: no experiments in results.tsv yet")
        elif k == "recovered":
            self.line(f"[yellow]recovered:[/] {escape(e.note)}")
        elif k == "run_started":
            self._buckets[e.worker.split("@")[0]] = -1
            seed = f" ({e.note})" if e.note else ""
            if e.run_kind in ("baseline", "experiment"):
                number = "" if e.worker else f"[bold]#{e.number}[/] "  # with workers rows are numbered as they finish
                self.line(f"{_who(e)}{number}{escape(e.description)} [dim]({e.commit}){seed}[/]")
            else:
                self.line(f"  {_who(e)}{_RUN_LABEL.get(e.run_kind, e.run_kind)} of {e.commit}{seed}")
        elif k == "progress" and e.progress:
            pct = e.progress.get("pct")
            key = e.worker.split("@")[0]
            if isinstance(pct, (int, float)) and int(pct // 25) > self._buckets.get(key, -1):
                self._buckets[key] = int(pct // 25)
                self.line(f"  {_who(e)}{pct:5.1f}%  {_progress_info(e.progress)}")
        elif k == "run_finished" and e.result is not None:
            r = e.result
            if r.status == "ok":
                self.line(f"  {_who(e)}val_bpb {r.val_bpb:.6f}  memory {r.memory_gb:.1f} GB  {r.seconds:.1f} s")
            elif r.status == "stopped":
                self.line(f"  {_who(e)}[yellow]stopped early[/] after {r.seconds:.1f} s: {escape(r.reason)}")
            else:
                self.line(f"  {_who(e)}[red]{r.status}[/] after {r.seconds:.1f} s: {escape(r.reason)}")
        elif k == "finished":
            style = STATUS_STYLE.get(e.status, "")
            row = f"#{e.number} " if e.worker else ""  # with workers, rows are numbered as they finish
            self.line(f"  {_who(e)}{row}[{style}]{e.status}[/] {_bpb(e.val_bpb)}  best {_bpb(e.best)}: {escape(e.note)}")
        elif k == "noise_floor":
            self.line(f"noise floor {_bpb(e.val_bpb)} (runs of {e.commit}: {e.note})")
        elif k == "noise":
            self.line(escape(e.note))
        elif k == "no_proposal":
            self.line(f"{_who(e)}[yellow]no proposal[/] ({e.description}): {escape(e.note)}")
        elif k == "mode":
            self.line(f"{_who(e)}[magenta]{escape(e.description)}[/]: {escape(e.note)}")
        elif k == "abandoned":
            self.line(f"{_who(e)}[yellow]abandoned[/] {e.commit or 'the proposal'}: {escape(e.note)}; nothing recorded in results.tsv")


@dataclass
class _Slot:
    """What one worker is doing, for the live view."""

    event: Optional[LoopEvent] = None  # the experiment (its proposing or run_started event)
    phase: str = "starting"
    pct: Optional[float] = None
    info: str = ""


class LiveDisplay(PlainDisplay):
    """The current experiment (one per worker) with a progress bar, the best so far and the last results.

    Lasting messages (finished experiments, recoveries, the noise floor) still print above the live area.
    """

    def __init__(self, console: Console, recent: int = 5):
        super().__init__(console)
        self.recent: collections.deque[LoopEvent] = collections.deque(maxlen=recent)
        self.slots: dict[str, _Slot] = {}  # by worker ("" with one worker), in the order they started
        self.best: Optional[float] = None
        self.count = 0
        self.kept = 0
        self.cost = 0.0
        self.live = Live(console=console, get_renderable=self.render, refresh_per_second=4, transient=True)

    def __enter__(self) -> "LiveDisplay":
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()  # the live area (bars) goes; the last results stay on the screen
        if self.recent:
            self.live.console.print(self._recent_table())

    def line(self, text: str) -> None:
        self.live.console.print(text, highlight=False, soft_wrap=True)

    def __call__(self, e: LoopEvent) -> None:
        self.cost = e.cost_usd
        k = e.kind
        slot = self.slots.setdefault(e.worker.split("@")[0], _Slot()) if k in ("proposing", "run_started", "progress", "run_finished") else None
        if k == "resumed":
            self.best, self.count = e.best, e.number or 0
        elif k == "proposing":
            slot.event, slot.phase, slot.pct, slot.info = e, "proposing", None, ""
        elif k == "run_started":
            if e.run_kind in ("baseline", "experiment") or slot.event is None or slot.event.kind == "proposing":
                slot.event = e
            slot.phase = _RUN_LABEL.get(e.run_kind, e.run_kind) + (f" ({e.note})" if e.note else "")
            slot.pct, slot.info = 0.0, "starting"
        elif k == "progress" and e.progress:
            pct = e.progress.get("pct")
            if isinstance(pct, (int, float)):
                slot.pct = float(pct)
            slot.info = _progress_info(e.progress)
            if slot.pct is not None and slot.pct >= 100.0:  # training is over: the harness evaluates
                slot.phase, slot.pct, slot.info = "evaluating", None, "training done; computing val_bpb"
        elif k == "run_finished":
            slot.phase, slot.pct = "judging", None
            if e.result is not None and e.result.status != "ok":
                super().__call__(e)  # why it failed belongs in the scrollback
        elif k == "finished":
            self.recent.append(e)
            self.count = max(self.count, e.number or 0)
            self.kept += e.status == "keep" and e.run_kind != "baseline"
            self.best = e.best
            done = self.slots.get(e.worker.split("@")[0])
            if done is not None:
                done.event = None
            style = STATUS_STYLE.get(e.status, "")
            self.line(f"{_who(e)}#{e.number} [{style}]{e.status}[/] {_bpb(e.val_bpb)}  {escape(e.description)}  [dim]{escape(e.note)}[/]")
        elif k in ("recovered", "noise_floor", "noise", "no_proposal", "abandoned", "mode"):
            super().__call__(e)

    def render(self):
        # The header counts what the rows below show: results.tsv's rows, whose numbers the bars carry.
        head = Text.assemble(
            ("ar loop", "bold"),
            f"  best {_bpb(self.best)}  |  results.tsv: {self.count} rows, {self.kept} kept in this session"
            f"  |  proposals ${self.cost:.2f}",
            no_wrap=True, overflow="ellipsis",
        )
        parts = [head]
        for worker, slot in self.slots.items():
            cur = slot.event
            if cur is None:
                continue
            who = f"[{cur.worker}] " if worker else f"#{cur.number} "  # with workers rows are numbered as they finish
            title = who + (cur.description or "asking the proposer for the next experiment")
            parts.append(Text(title, style="bold", overflow="ellipsis", no_wrap=True))
            row = Table.grid(padding=(0, 1))
            bar = ProgressBar(total=100.0, completed=slot.pct or 0.0, width=30, pulse=slot.pct is None)
            row.add_row(Text(slot.phase, style="cyan", no_wrap=True), bar,
                        Text(f"{slot.pct:5.1f}%" if slot.pct is not None else "", no_wrap=True),
                        Text(slot.info, no_wrap=True, overflow="ellipsis"))
            parts.append(row)
        if self.recent:
            parts.append(self._recent_table())
        return Group(*parts)

    def _recent_table(self) -> Table:
        """The last results (kept on the screen when the loop ends)."""
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        columns = [("#", "right"), ("val_bpb", "right"), ("status", "left")]
        workers = any(r.worker for r in self.recent)
        if workers:
            columns.append(("worker", "left"))
        for name, justify in columns + [("description", "left")]:
            table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")
        for r in self.recent:
            cells = [str(r.number), _bpb(r.val_bpb), Text(r.status, style=STATUS_STYLE.get(r.status, ""))]
            table.add_row(*cells, *([r.worker] if workers else []), r.description)
        return table


def make_display(console: Console, live: Optional[bool] = None) -> PlainDisplay:
    """The live view on an interactive terminal, plain lines otherwise (pipes, logs, tests)."""
    if live is None:
        live = console.is_terminal and not console.is_dumb_terminal
    return LiveDisplay(console) if live else PlainDisplay(console)


_RULES = {
    "test": "test (one-sided, 5% false keeps; a promising result runs again, up to 3 runs; nothing up front)",
    "noise": "noise (the baseline runs twice more to measure the noise floor; a marginal gain runs once more)",
    "strict": "strict (any lower val_bpb is kept)",
}


def print_header(console: Console, session, *, offline_by_default: bool) -> None:
    """What `ar loop` is about to do (session.LoopSession)."""
    s, cfg = session.settings, session.cfg
    say = lambda text: console.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    say(f"ar loop on [bold]{session.workspace.branch}[/] in {session.folder}")
    say(f"  proposer:  {session.proposer.name}")
    if offline_by_default and session.proposer.name in ("optuna", "offline"):
        say(f"  [yellow]no ANTHROPIC_API_KEY set:[/] the {session.proposer.name} proposer needs no LLM; it tunes the "
            f"numeric constants in {cfg.editable}. Set ANTHROPIC_API_KEY or pass --proposer for an LLM.")
    say(f"  keep rule: {_RULES.get(s.keep_rule, s.keep_rule)}")
    say(f"  backend:   {cfg.backend}: trains and edits {cfg.editable}")
    smoke = f" (smoke test: judged only against runs of {s.budget:g} s)" if s.budget != s.full_budget else ""
    say(f"  budget:    {s.budget:g} s per run, killed after {session.runner.kill:g} s{smoke}")
    limits = [f"{s.max_experiments} experiment{'' if s.max_experiments == 1 else 's'}" if s.max_experiments is not None else "",
              f"{s.max_hours:g} hours" if s.max_hours is not None else "",
              f"${s.max_cost:g}" if s.max_cost is not None else ""]
    say(f"  limits:    {', '.join(x for x in limits if x) or 'none: Ctrl-C stops it'}")
    if session.parallel:
        say(f"  workers:   {session.executor.describe()}")


def print_report(console: Console, report, head: Optional[str]) -> None:
    """How `ar loop` ended (experiment.lab.LoopReport)."""
    line = f"{report.experiments} experiments, {report.kept} kept, {report.crashed} crashed"
    if report.baseline_run:
        line += " (and the baseline)"
    if report.best is not None:
        at_head = " (HEAD)" if head == report.best_commit else ""
        line += f"; best val_bpb {report.best:.6f} at {report.best_commit}{at_head}"
    if report.cost_usd:
        line += f"; proposals cost ${report.cost_usd:.2f}"
    console.print(line, highlight=False, soft_wrap=True)
    console.print(f"stopped: {report.stop_reason}. `ar results` shows every experiment; `ar loop` again resumes.",
                  highlight=False, soft_wrap=True)
