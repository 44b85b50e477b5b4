"""Progress bars for the one-shot commands: `ar prepare`'s downloads and `ar run`'s training."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def rich_progress(console: Console) -> Iterator:
    """A progress(label, done, total) callback drawn as Rich progress bars.

    The display starts with the first report, so work that turns out to be done already
    prints nothing."""
    tasks: dict[str, int] = {}
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                   TimeRemainingColumn(), console=console)

    def progress(label: str, done: int, total: Optional[int]) -> None:
        if not tasks:
            bar.start()
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        bar.update(tasks[label], completed=done, total=total)

    try:
        yield progress
    finally:
        if tasks:
            bar.stop()


class RunBar:
    """`ar run`'s bar, fed by the experiment's events (experiment.lab.LoopEvent)."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                            TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console)
        self.task = self.bar.add_task("training", total=100, info="starting")

    def on_event(self, event) -> None:
        if event.kind == "run_started":
            seed = f", {event.note}" if event.note else ""
            self.console.print(f"{event.run_kind} run of {event.commit}{seed}", highlight=False)
            self.bar.reset(self.task, total=100, info="starting")
            self.bar.start()
        elif event.kind == "progress" and event.progress:
            fields, info = event.progress, []
            for key, fmt in (("step", "step {}"), ("loss", "loss {:.4f}"), ("tok_per_s", "{:,.0f} tok/s"),
                             ("remaining_s", "{:.0f} s left")):
                if isinstance(fields.get(key), (int, float)):
                    info.append(fmt.format(fields[key]))
            pct = fields.get("pct")
            if isinstance(pct, (int, float)) and pct >= 100:  # training is over: the harness evaluates
                self.bar.update(self.task, completed=100, info="evaluating")
            else:
                self.bar.update(self.task, completed=pct if isinstance(pct, (int, float)) else None, info="  ".join(info))
        elif event.kind == "run_finished":
            self.bar.stop()

    def stop(self) -> None:
        self.bar.stop()
