"""`ar loop --workers N`: up to N experiments in flight, one truth in results.tsv and git.

The orchestrator is this process. `ParallelLoop` is a scheduler: N worker threads each
propose and call the one experiment function (experiment/step.py: run_experiment) with
their own worktree (experiment/checkouts.py: InWorktree) and executor; the baseline, the
noise floor, recovery and the report are shared with the serial loop (loop/phases.py).

Where things run:

- Each worker owns a git worktree `.autoresearch/worktrees/w<i>` (worktrees.py) on a
  detached HEAD. It commits its proposal there on top of the best commit and runs the
  script there through an executor (executors/): `LocalExecutor` (a subprocess on this machine with
  the worker's device: one GPU each via CUDA_VISIBLE_DEVICES, or an even share of the
  CPU threads via OMP_NUM_THREADS / MKL_NUM_THREADS) or `RayExecutor` (executors/ray.py:
  a Ray task on some node).
- The workspace's own checkout holds the branch `autoresearch/<tag>`; it only ever
  fast-forwards to a kept commit, so it always points at the best confirmed commit.
- Every write to results.tsv, runs.jsonl's "finished" record and every move of the
  branch happen under one lock in this process: one row per experiment, never
  interleaved, and the decision and the branch move see the same best.
- The baseline and the noise-floor runs (when the keep rule needs them) run first, one at
  a time, on worker 1 with worker 1's device share, exactly as with one worker.

Proposals run in parallel; each request lists the experiments in flight
(`ProposalContext.in_flight`), and a proposal identical to one in flight (same
description or same file) is refused and asked again.

The stale best: an experiment is judged against the best it was built on (its parent).
When it wins (keep, or a marginal gain that asks for confirmation) but the branch moved
while it ran, it is not kept as it is: its change is re-applied on top of the new best
(a 3-way merge of its diff, worktrees.merge3) and the merged commit is run again - a
"confirm" run in runs.jsonl - and judged against the new best like any experiment. If it
conflicts, the row is a discard "(conflicts with the new best)" with the value it
measured; if the branch moves again during that run, it is re-applied again (at most
MAX_REAPPLY times). The row names the commit whose value it records.

Stopping: Ctrl-C, SIGTERM or SIGHUP stop every run (their process groups, or their Ray
tasks), record the running experiments as "abandoned" (no row), remove the worktrees
and stop. A second Ctrl-C while that happens is held until it is done.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from autoresearch.errors import ArError
from autoresearch.executors.local import Executor
from autoresearch.experiment.checkouts import InPlace, InWorktree
from autoresearch.experiment.keep import check_rule
from autoresearch.experiment.lab import EventFn, Lab, LoopEvent, LoopReport, LoopSettings
from autoresearch.experiment.step import INTERRUPTS, PARSE_LOCK, Abandoned, StopRequested, run_experiment
from autoresearch.loop import phases
from autoresearch.loop.proposing import Proposing
from autoresearch.proposers.base import NoProposal, Proposal, Proposer
from autoresearch.proposers.offline import OfflineProposer
from autoresearch.run.process import RunResult
from autoresearch.workspace.git import Workspace
from autoresearch.workspace.worktrees import Worktree, WorktreePool


# -- the loop -------------------------------------------------------------------------


class _OneAtATime:
    """A proposer that parses (the offline one): its proposals take turns (see PARSE_LOCK)."""

    def __init__(self, inner: Proposer):
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)

    def propose(self, ctx):
        with PARSE_LOCK:
            return self.inner.propose(ctx)


@dataclass
class _Flight:
    message: str = ""  # "" while the proposal is being asked for
    text: Optional[str] = None
    worker: str = ""


class _SlotRunner:
    """The Runner seam for one worker: its worktree at the commit, its device, its executor."""

    def __init__(self, loop: "ParallelLoop", slot: int):
        self.loop, self.slot = loop, slot

    def run(self, commit: str, *, seed: Optional[int] = None, on_progress=None) -> RunResult:
        lab, tree = self.loop.lab, self.loop.trees[self.slot]
        tree.ensure_at(commit)
        label = self.loop.executor.label(self.slot)
        lab.worker = label

        def progress(fields: dict) -> None:
            lab.worker = label  # progress arrives on the runner's reader thread
            if on_progress is not None:
                on_progress(fields)

        result, where = self.loop.executor.run(self.slot, tree.path, commit, seed=seed, on_progress=progress, stop=self.loop.stop)
        lab.worker = where
        if self.loop.stop.is_set() and result.status != "interrupted":  # it ended as the user stopped: abandoned
            result = dataclasses.replace(result, status="interrupted", reason="interrupted by the user (Ctrl-C or a stop signal)")
        return result


class ParallelLoop:
    """Up to N experiments in flight (see the module doc); `run()` goes until a limit or a stop."""

    def __init__(
        self,
        workspace,
        proposer: Proposer,
        executor: Executor,
        trees: Sequence[Worktree],
        settings: LoopSettings,
        *,
        on_event: Optional[EventFn] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Optional[Callable[[float], None]] = None,
    ):
        check_rule(settings.keep_rule)
        self.name = getattr(proposer, "name", type(proposer).__name__)
        if isinstance(proposer, OfflineProposer):
            proposer = _OneAtATime(proposer)
        self.ws = workspace
        self.lab = Lab(workspace, settings, proposer=self.name, on_event=on_event)
        self.clock = clock
        self.asking = Proposing(self.lab, proposer, clock=clock, started=clock())
        self.executor = executor
        self.trees = list(trees)
        self.stop = threading.Event()
        self._pause = sleep or self.stop.wait  # waits between failed proposals end at a stop
        self._in_flight: dict[str, _Flight] = {}
        self._error: Optional[BaseException] = None
        self._running = 0  # worker threads not yet finished
        self._all_done = threading.Event()

    def run(self) -> LoopReport:
        lab = self.lab
        self.asking.started = started = self.clock()
        with lab.signals:
            try:
                phases.start(lab, self.name, workers=len(self.trees), executor=self.executor.describe())
                self.asking.read_editable()
                self.asking.load_crash_tail(lab.rows())
                # The baseline and the noise floor: one run at a time, on worker 1's device.
                if phases.prepare(lab, InPlace(self.ws), _SlotRunner(self, 0), lambda: phases.limit_reached(lab, started, self.clock)):
                    lab.worker = ""
                    self._parallel()
            except INTERRUPTS:
                lab.report.interrupted = True
                lab.report.stop_reason = "interrupted"
        lab.worker = ""
        phases.stop(lab)
        return lab.report

    def _parallel(self) -> None:
        threads = [threading.Thread(target=self._work, args=(i,), name=f"ar-w{i + 1}", daemon=True) for i in range(len(self.trees))]
        self._running, started = len(threads), 0
        # Wait on an Event, never in Thread.join: on CPython 3.11 a Ctrl-C that interrupts
        # join() can mark a thread that is still running as stopped.
        try:
            for t in threads:
                t.start()
                started += 1
            while not self._all_done.wait(0.1):
                pass
        except (KeyboardInterrupt, StopRequested):
            self.stop.set()
            with self.lab.lock:
                self._running -= len(threads) - started  # those never started will not say they are done
                if not self._running:
                    self._all_done.set()
            with self.lab.signals.critical():  # another Ctrl-C waits until every run has stopped
                self._all_done.wait()
            raise
        for t in threads:
            t.join()
        if self._error is not None:
            raise self._error
        if self.stop.is_set():
            raise Abandoned("a run was interrupted")

    def _work(self, slot: int) -> None:
        self.lab.worker = self.executor.label(slot)
        try:
            while not self.stop.is_set() and self._next(slot):
                pass
        except INTERRUPTS:
            self.stop.set()  # stopped (the experiment is recorded as abandoned): so do the others
        except BaseException as e:  # a git failure, a user mistake from the proposer: stop all
            with self.lab.lock:
                self._error = self._error or e
            self.stop.set()
        finally:
            with self.lab.lock:
                self._running -= 1
                if not self._running:
                    self._all_done.set()

    def _next(self, slot: int) -> bool:
        """Propose and run one experiment on `slot`; False when a limit says stop."""
        lab = self.lab
        with lab.lock:
            if self.stop.is_set():
                return False
            reason = phases.limit_reached(lab, self.asking.started, self.clock, in_flight=len(self._in_flight))
            if reason:
                lab.report.stop_reason = lab.report.stop_reason or reason
                return False
            remeasure, lab.remeasure = lab.remeasure, False  # one worker re-runs the best (`test` rule)
        if remeasure:
            phases.remeasure_best(lab, _SlotRunner(self, slot), len(lab.rows()))
            return True
        with lab.lock:
            rows = lab.rows()
            best = lab.best_row(rows)
            parent = self.ws.head_commit()
            running = tuple(f.message for f in self._in_flight.values() if f.message)
            ctx = self.asking.context(rows, best, self.asking.read_editable(), in_flight=running)
            ticket = uuid.uuid4().hex
            self._in_flight[ticket] = _Flight()  # counts against --max-experiments while it is asked for
            number = len(rows) + len(self._in_flight)
        try:
            lab.emit("proposing", number=number, best=ctx.best)
            proposal = self._propose(ticket, ctx, slot)
            if proposal is None:
                return True
            outcome = run_experiment(lab, InWorktree(self.ws, self.trees[slot]), _SlotRunner(self, slot), proposal,
                                     number=number, rows_before=len(rows), floor=lab.floor,
                                     base=(parent, best.val_bpb if best else None))
            if outcome is None:  # the same bytes after all (line endings)
                self._pause(self.asking.no_proposal_unchanged())
                return True
            self.asking.after(outcome)
            phases.finished(lab, outcome, "experiment")
            return True
        finally:
            with lab.lock:
                self._in_flight.pop(ticket, None)

    def _propose(self, ticket: str, ctx, slot: int) -> Optional[Proposal]:
        """A proposal no other worker is running; two asked for at once can be the same: ask again, twice.
        On a plateau each worker takes another mode, or branches from another parent (`slot`)."""
        lab = self.lab
        for attempt in range(3):
            proposal, wait = self.asking.next(ctx, offset=slot + attempt)
            if proposal is None:
                self._pause(wait) if wait else None
                return None
            message = " ".join(proposal.description.split())
            with lab.lock:
                clash = next((f for t, f in self._in_flight.items() if t != ticket and f.message
                              and (f.message == message or f.text == proposal.new_text)), None)
                if clash is None:
                    self.asking.accepted()
                    self._in_flight[ticket] = _Flight(message, proposal.new_text, lab.worker)
                    return proposal
                why = f"that experiment is already running on {clash.worker} ({clash.message}); propose a different one"
                running = tuple(f.message for f in self._in_flight.values() if f.message)
                ctx = dataclasses.replace(ctx, feedback=why, in_flight=running)
        wait = self.asking.no_proposal(NoProposal(why))
        if wait:
            self._pause(wait)
        return None


def run_parallel(
    workspace: Workspace,
    proposer: Proposer,
    executor: Executor,
    settings: LoopSettings,
    *,
    workers: int,
    on_event: Optional[EventFn] = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Optional[Callable[[float], None]] = None,
) -> LoopReport:
    """Run the loop with `workers` worktrees and `executor`; the executor is closed and the
    worktrees removed at the end, whatever happens."""
    try:
        workspace.ensure_identity()  # once, before worktrees commit concurrently
        with WorktreePool(workspace.path) as pool:
            stale = pool.stale
            if stale and on_event is not None:
                on_event(LoopEvent("recovered", note=f"removed {len(stale)} worktrees a dead `ar loop` left behind: {', '.join(stale)}"))
            head = workspace.head_commit()
            if head is None:
                raise ArError(f"{workspace.path} has no commit yet; run `ar init <tag>` first")
            trees = pool.create(workers, head)
            return ParallelLoop(workspace, proposer, executor, trees, settings, on_event=on_event, clock=clock, sleep=sleep).run()
    finally:
        executor.close()
