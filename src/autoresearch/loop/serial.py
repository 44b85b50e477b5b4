"""`ar loop`: propose, then run one experiment (`run_experiment`), until a limit or a stop.

A scheduler, nothing more: the experiment itself (commit, run, judge, row, keep or reset,
record) is experiment/step.py, the recovery of a dead process experiment/recovery.py, the
baseline and the noise floor loop/phases.py. Collaborators are passed in (small Protocol
seams; tests pass fakes), the display subscribes to `LoopEvent`s, and nothing here imports
Typer, Rich, an LLM SDK, torch or mlx.

Stopping: Ctrl-C, SIGTERM or SIGHUP abandon the current experiment (the runner stops its
process group; the commit is reset; runs.jsonl gets an "abandoned" record and results.tsv
nothing) and stop the loop. Limits (experiments, hours, cost) are checked before each
experiment: a running experiment is always finished.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from autoresearch.experiment.checkouts import InPlace
from autoresearch.experiment.step import INTERRUPTS, Runner, run_experiment
from autoresearch.loop import phases
from autoresearch.experiment.keep import check_rule
from autoresearch.experiment.lab import EventFn, Lab, LoopReport, LoopSettings
from autoresearch.proposers.base import Proposer
from autoresearch.loop.proposing import Proposing


def run_loop(
    workspace,
    proposer: Proposer,
    runner: Runner,
    settings: LoopSettings,
    *,
    on_event: Optional[EventFn] = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LoopReport:
    """Run the loop until a limit or a stop signal; see the module doc."""
    check_rule(settings.keep_rule)
    name = getattr(proposer, "name", type(proposer).__name__)
    lab = Lab(workspace, settings, proposer=name, on_event=on_event)
    started = clock()
    asking = Proposing(lab, proposer, clock=clock, started=started)
    checkout = InPlace(workspace)
    with lab.signals:
        try:
            phases.start(lab, name)
            asking.read_editable()
            asking.load_crash_tail(lab.rows())
            limit = lambda: phases.limit_reached(lab, started, clock)  # noqa: E731
            while phases.prepare(lab, checkout, runner, limit):
                _one(lab, asking, checkout, runner, sleep)
        except INTERRUPTS:
            lab.report.interrupted = True
            lab.report.stop_reason = "interrupted"
    phases.stop(lab)
    return lab.report


def _one(lab: Lab, asking: Proposing, checkout: InPlace, runner: Runner, sleep: Callable[[float], None]) -> None:
    rows = lab.rows()
    best = lab.best_row(rows)
    ctx = asking.context(rows, best, asking.read_editable())
    lab.emit("proposing", number=len(rows) + 1, best=ctx.best)
    proposal, wait = asking.next(ctx)
    if proposal is None:
        if wait:
            sleep(wait)
        return
    asking.accepted()
    outcome = run_experiment(lab, checkout, runner, proposal, number=len(rows) + 1, rows_before=len(rows), floor=lab.floor)
    if outcome is None:  # the same bytes after all (line endings)
        wait = asking.no_proposal_unchanged()
        if wait:
            sleep(wait)
        return
    asking.after(outcome)
    phases.finished(lab, outcome, "experiment")
