"""What `ar loop` shows while it runs: a Rich live view on a terminal, plain lines otherwise.

Both subscribe to the loop's events (`autoresearch.loop.core.LoopEvent`); neither
changes anything. Progress events arrive from the runner's reader thread.
"""

from __future__ import annotations

import collections
import threading
from typing import Optional

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .core import LoopEvent

STATUS_STYLE = {"keep": "green", "discard": "bright_black", "crash": "red"}
_RUN_LABEL = {"baseline": "baseline", "experiment": "experiment", "confirm": "confirmation run", "noise": "noise-floor run"}


def _bpb(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.6f}"


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
        self._bucket = -1
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
            self._bucket = -1
            seed = f" ({e.note})" if e.note else ""
            if e.run_kind in ("baseline", "experiment"):
                self.line(f"[bold]#{e.number}[/] {escape(e.description)} [dim]({e.commit}){seed}[/]")
            else:
                self.line(f"  {_RUN_LABEL.get(e.run_kind, e.run_kind)} of {e.commit}{seed}")
        elif k == "progress" and e.progress:
            pct = e.progress.get("pct")
            if isinstance(pct, (int, float)) and int(pct // 25) > self._bucket:
                self._bucket = int(pct // 25)
                self.line(f"  {pct:5.1f}%  {_progress_info(e.progress)}")
        elif k == "run_finished" and e.result is not None:
            r = e.result
            if r.status == "ok":
                self.line(f"  val_bpb {r.val_bpb:.6f}  memory {r.memory_gb:.1f} GB  {r.seconds:.1f} s")
            else:
                self.line(f"  [red]{r.status}[/] after {r.seconds:.1f} s: {escape(r.reason)}")
        elif k == "finished":
            style = STATUS_STYLE.get(e.status, "")
            self.line(f"  [{style}]{e.status}[/] {_bpb(e.val_bpb)}  best {_bpb(e.best)}: {escape(e.note)}")
        elif k == "noise_floor":
            self.line(f"noise floor {_bpb(e.val_bpb)} (runs of {e.commit}: {e.note})")
        elif k == "no_proposal":
            self.line(f"[yellow]no proposal[/] ({e.description}): {escape(e.note)}")
        elif k == "abandoned":
            self.line(f"[yellow]abandoned[/] {e.commit or 'the proposal'}: {escape(e.note)}; nothing recorded in results.tsv")


class LiveDisplay(PlainDisplay):
    """The current experiment with a progress bar, the best so far and the last results.

    Lasting messages (finished experiments, recoveries, the noise floor) still print above the live area.
    """

    def __init__(self, console: Console, recent: int = 5):
        super().__init__(console)
        self.recent: collections.deque[LoopEvent] = collections.deque(maxlen=recent)
        self.current: Optional[LoopEvent] = None
        self.phase = "starting"
        self.pct: Optional[float] = None
        self.info = ""
        self.best: Optional[float] = None
        self.count = 0
        self.kept = 0
        self.cost = 0.0
        self.live = Live(console=console, get_renderable=self.render, refresh_per_second=4, transient=True)

    def __enter__(self) -> "LiveDisplay":
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()

    def line(self, text: str) -> None:
        self.live.console.print(text, highlight=False, soft_wrap=True)

    def __call__(self, e: LoopEvent) -> None:
        self.cost = e.cost_usd
        k = e.kind
        if k == "resumed":
            self.best, self.count = e.best, e.number or 0
        elif k == "proposing":
            self.current, self.phase, self.pct, self.info = e, "proposing", None, ""
        elif k == "run_started":
            if e.run_kind in ("baseline", "experiment") or self.current is None:
                self.current = e
            self.phase = _RUN_LABEL.get(e.run_kind, e.run_kind) + (f" ({e.note})" if e.note else "")
            self.pct, self.info = 0.0, "starting"
        elif k == "progress" and e.progress:
            pct = e.progress.get("pct")
            if isinstance(pct, (int, float)):
                self.pct = float(pct)
            self.info = _progress_info(e.progress)
        elif k == "run_finished":
            self.phase, self.pct = "judging", None
            if e.result is not None and e.result.status != "ok":
                super().__call__(e)  # why it failed belongs in the scrollback
        elif k == "finished":
            self.recent.append(e)
            self.count = e.number or self.count
            self.kept += e.status == "keep" and e.run_kind != "baseline"
            self.best = e.best
            self.current = None
            style = STATUS_STYLE.get(e.status, "")
            self.line(f"#{e.number} [{style}]{e.status}[/] {_bpb(e.val_bpb)}  {escape(e.description)}  [dim]{escape(e.note)}[/]")
        elif k in ("recovered", "noise_floor", "no_proposal", "abandoned"):
            super().__call__(e)

    def render(self):
        head = Text.assemble(
            ("ar loop", "bold"),
            f"  best {_bpb(self.best)}  |  {self.count} experiments in results.tsv, {self.kept} kept in this session"
            f"  |  proposals ${self.cost:.2f}",
        )
        parts = [head]
        cur = self.current
        if cur is not None:
            title = f"#{cur.number} " + (cur.description or "asking the proposer for the next experiment")
            parts.append(Text(title, style="bold", overflow="ellipsis", no_wrap=True))
            row = Table.grid(padding=(0, 1))
            bar = ProgressBar(total=100.0, completed=self.pct or 0.0, width=40, pulse=self.pct is None)
            row.add_row(Text(self.phase, style="cyan"), bar, Text(f"{self.pct:5.1f}%" if self.pct is not None else ""), Text(self.info))
            parts.append(row)
        if self.recent:
            table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
            for name, justify in (("#", "right"), ("val_bpb", "right"), ("status", "left"), ("description", "left")):
                table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")
            for r in self.recent:
                table.add_row(str(r.number), _bpb(r.val_bpb), Text(r.status, style=STATUS_STYLE.get(r.status, "")), r.description)
            parts.append(table)
        return Group(*parts)


def make_display(console: Console, live: Optional[bool] = None) -> PlainDisplay:
    """The live view on an interactive terminal, plain lines otherwise (pipes, logs, tests)."""
    if live is None:
        live = console.is_terminal and not console.is_dumb_terminal
    return LiveDisplay(console) if live else PlainDisplay(console)
