"""`ar loop --workers N`: up to N experiments in flight, one truth in results.tsv and git.

The orchestrator is this process. `ParallelLoop` is the one-worker `Loop` of core.py
with the experiment step run by N worker threads; it reuses the loop's recovery on
start, keep rule (`keep.decide`), records, baseline and noise-floor runs.

Where things run:

- Each worker owns a git worktree `.autoresearch/worktrees/w<i>` (worktrees.py) on a
  detached HEAD. It commits its proposal there on top of the best commit and runs the
  script there through an executor: `LocalExecutor` (a subprocess on this machine with
  the worker's device: one GPU each via CUDA_VISIBLE_DEVICES, or an even share of the
  CPU threads via OMP_NUM_THREADS / MKL_NUM_THREADS) or `RayExecutor` (ray_executor.py:
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

import copy
import dataclasses
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

from ..errors import ArError
from .config import RUNS_RELDIR
from .core import EventFn, Loop, LoopEvent, LoopReport, LoopSettings, ScriptRunner, StopRequested, _Abandon, _one_line
from .guards import check_proposal
from .keep import Decision, decide
from .proposal import NoProposal, Proposal, Proposer, Usage
from .proposers.offline import OfflineProposer
from .results import ResultRow, append_result
from .runner import ProgressCallback, RunResult, allocate_log, rejection_note
from .workspace import Workspace
from .worktrees import Worktree, WorktreePool

MAX_REAPPLY = 3  # re-applications of one experiment onto a moving best before it is discarded
# ast.parse is not thread-safe on CPython 3.11 (concurrent calls can fail with "SystemError:
# AST constructor recursion depth mismatch"; seen here on 3.11.7). The static check and
# the offline proposer parse the script, so they take turns; LLM proposals stay parallel.
_PARSE_LOCK = threading.Lock()
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# -- devices --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    envs: tuple[dict, ...]  # extra environment of each worker's runs
    note: str  # one line: how the workers share the machine


def thread_env(threads: int) -> dict:
    """The variables torch, MKL and OpenBLAS read for their thread pools."""
    return {name: str(threads) for name in _THREAD_VARS}


def plan_workers(backend: str, workers: int, hw, *, force: bool = False, environ=None) -> WorkerPlan:
    """Each worker's device on this machine: one NVIDIA GPU each, an even share of the CPU
    threads, or (only with `force`) several runs on one Apple GPU. `hw` is a
    backends.detect.Hardware."""
    environ = os.environ if environ is None else environ
    if workers < 1:
        raise ArError(f"--workers must be at least 1, got {workers}")
    if backend == "cuda":
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        ids = [x.strip() for x in visible.split(",") if x.strip()] if visible is not None else [str(i) for i in range(len(hw.gpus))]
        if not ids:
            raise ArError("the workspace's backend is cuda but no NVIDIA GPU is visible; check nvidia-smi and CUDA_VISIBLE_DEVICES")
        if workers > len(ids) and not force:
            raise ArError(
                f"--workers {workers} needs {workers} GPUs (one per worker) but {len(ids)} "
                f"{'is' if len(ids) == 1 else 'are'} visible; use --workers {len(ids)}, or --force-workers to share GPUs"
            )
        envs = tuple({"CUDA_VISIBLE_DEVICES": ids[i % len(ids)]} for i in range(workers))
        shared = " (shared: --force-workers)" if workers > len(ids) else ""
        return WorkerPlan(envs, f"one GPU each: CUDA_VISIBLE_DEVICES={', '.join(e['CUDA_VISIBLE_DEVICES'] for e in envs)}{shared}")
    if backend == "mps" or (backend == "mlx" and getattr(hw, "kind", "") == "apple"):
        if workers > 1 and not force:
            raise ArError(
                f"--workers {workers} would run {workers} experiments at once on this Mac's one GPU ({backend}): each "
                "gets a fraction of it and its val_bpb is not comparable with one run alone; use --workers 1 "
                "(or --force-workers if you insist)"
            )
        return WorkerPlan(tuple({} for _ in range(workers)), f"{workers} runs share the Apple GPU" if workers > 1 else "the Apple GPU")
    cores = max(1, int(getattr(hw, "cpu_cores", 0) or os.cpu_count() or 1))
    threads = cores // workers
    if threads < 1:
        if not force:
            raise ArError(
                f"--workers {workers} on {cores} CPU cores leaves less than one core per worker; "
                f"use --workers {cores} or fewer (or --force-workers)"
            )
        threads = 1
    return WorkerPlan(tuple(thread_env(threads) for _ in range(workers)), f"{threads} CPU thread{'s' if threads > 1 else ''} each ({cores} cores)")


# -- executors ------------------------------------------------------------------------


class Executor(Protocol):
    """Runs the editable script of a worker's worktree (checked out at `commit`)."""

    def describe(self) -> str: ...

    def label(self, slot: int) -> str: ...

    def run(
        self, slot: int, tree: Path, commit: str, *, seed: Optional[int], on_progress: Optional[ProgressCallback],
        stop: threading.Event,
    ) -> tuple[RunResult, str]:
        """The result and where it ran ("w1", "w2@node"); status "interrupted" once `stop` is set."""
        ...

    def close(self) -> None: ...


def keep_log(log_path: Path, folder: Path, commit: str) -> Path:
    """Move a run's log into the workspace's .autoresearch/runs/ (worktrees are removed)."""
    _, dest = allocate_log(Path(folder) / RUNS_RELDIR, commit)
    os.replace(log_path, dest)
    return dest


class LocalExecutor:
    """The workspace's ScriptRunner (guards, trust policy, hard kill) run in a worker's
    worktree with the worker's device share (plan_workers)."""

    def __init__(self, folder: Path, base: ScriptRunner, plan: WorkerPlan):
        self.folder = Path(folder)
        self.base = base  # the workspace's runner: editable, env, budget, kill, grace
        self.plan = plan

    def describe(self) -> str:
        return f"{len(self.plan.envs)} on this machine, {self.plan.note}"

    def label(self, slot: int) -> str:
        return f"w{slot + 1}"

    def run(self, slot, tree, commit, *, seed, on_progress, stop):
        runner = copy.copy(self.base)
        runner.folder = Path(tree)
        runner.env = {**self.base.env, **self.plan.envs[slot]}
        runner.stop = stop
        result = runner.run(commit, seed=seed, on_progress=on_progress)
        result.log_path = keep_log(result.log_path, self.folder, commit)
        return result, self.label(slot)

    def close(self) -> None:
        return None


def make_executor(
    folder: Path, cfg, base: ScriptRunner, *, workers: int, executor: str = "local", ray_address: str = "auto",
    force: bool = False, hardware=None,
) -> Executor:
    """The executor `ar loop --executor` names; Ray is imported only for "ray"."""
    if executor == "local":
        if hardware is None:
            from ..backends import detect_hardware

            hardware = detect_hardware()
        return LocalExecutor(folder, base, plan_workers(cfg.backend, workers, hardware, force=force))
    if executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(folder, cfg, base, workers=workers, address=ray_address)
    raise ArError(f"unknown executor {executor!r}; use local or ray")


# -- the loop -------------------------------------------------------------------------


def _check(editable: str, old: str, new: str) -> Optional[str]:
    with _PARSE_LOCK:
        return check_proposal(editable, old, new)


class _OneAtATime:
    """A proposer that parses (the offline one): its proposals take turns (see _PARSE_LOCK)."""

    def __init__(self, inner: Proposer):
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)

    def propose(self, ctx):
        with _PARSE_LOCK:
            return self.inner.propose(ctx)


@dataclass
class _Flight:
    message: str = ""  # "" while the proposal is being asked for
    text: Optional[str] = None
    worker: str = ""


@dataclass
class _Experiment:
    xid: str
    slot: int
    number: int
    message: str
    desc: str
    usage: Usage
    common: dict  # fields of its "proposing" and "started" records


class _SlotRunner:
    """core's Runner seam: runs on the calling thread's worker (worker 1 in the main thread)."""

    def __init__(self, loop: "ParallelLoop"):
        self.loop = loop

    def run(self, commit: str, *, seed: Optional[int] = None, on_progress=None) -> RunResult:
        return self.loop._run_on_slot(commit, seed, on_progress)


class ParallelLoop(Loop):
    """The loop with several workers (see the module doc); `run()` as in core."""

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
        self.executor = executor
        self.trees = list(trees)
        self.lock = threading.RLock()  # results.tsv, the branch, the shared counters
        self._emit_lock = threading.Lock()
        self._local = threading.local()  # slot, worker label, a wait asked for by _no_proposal
        self._stop = threading.Event()
        self._in_flight: dict[str, _Flight] = {}
        self._done: set[str] = set()  # experiments whose row is written
        self._error: Optional[BaseException] = None
        self._running = 0  # worker threads not yet finished
        self._all_done = threading.Event()
        if isinstance(proposer, OfflineProposer):
            proposer = _OneAtATime(proposer)
        super().__init__(workspace, proposer, _SlotRunner(self), settings, on_event=on_event, clock=clock, sleep=self._note_wait)
        self._pause = sleep or self._stop.wait  # waits between failed proposals end at a stop

    # -- shared plumbing

    def _note_wait(self, seconds: float) -> None:
        self._local.wait = seconds  # core's _no_proposal asks to wait; we wait outside the lock

    def _worker(self) -> str:
        return getattr(self._local, "worker", "")

    def _record(self, event: str, **fields) -> None:
        if self._worker():
            fields.setdefault("worker", self._worker())
        super()._record(event, **fields)

    def _emit(self, kind: str, **fields) -> None:
        fields.setdefault("worker", self._worker())
        with self._emit_lock:  # events come from several threads; displays are not thread-safe
            super()._emit(kind, **fields)

    def _no_proposal(self, e: NoProposal) -> None:
        with self.lock:
            self._local.wait = 0.0
            super()._no_proposal(e)
            wait = self._local.wait
        if wait:
            self._pause(wait)

    def _abandon(self, xid: str, commit: Optional[str], parent: Optional[str], error: BaseException) -> None:
        # The workspace's checkout is never at an unfinished experiment: nothing to reset.
        why = "interrupted" if isinstance(error, (KeyboardInterrupt, StopRequested, _Abandon)) else f"error: {type(error).__name__}: {error}"
        with self.lock:
            self._record("abandoned", id=xid, commit=commit, parent=parent, reason=why)
        self._emit("abandoned", commit=commit or "", note=why)

    def _run_on_slot(self, commit: str, seed: Optional[int], on_progress) -> RunResult:
        slot = getattr(self._local, "slot", 0)
        tree = self.trees[slot]
        tree.ensure_at(commit)
        label = self.executor.label(slot)
        self._local.worker = label

        def progress(fields: dict) -> None:
            self._local.worker = label  # progress arrives on the runner's reader thread
            if on_progress is not None:
                on_progress(fields)

        result, where = self.executor.run(slot, tree.path, commit, seed=seed, on_progress=progress, stop=self._stop)
        self._local.worker = where
        if self._stop.is_set() and result.status != "interrupted":  # it ended as the user stopped: abandoned, as with one worker
            result = dataclasses.replace(result, status="interrupted", reason="interrupted by the user (Ctrl-C or a stop signal)")
        return result

    # -- recovery of a dead parallel loop

    def _recover_one(self, xid: str, recs: dict) -> None:
        started, proposing = recs.get("started"), recs.get("proposing")
        base = started or proposing
        if not base.get("worktree"):
            return super()._recover_one(xid, recs)
        # Its commit lived in a worktree: the branch is untouched unless its row says keep.
        commit = started.get("commit") if started else None
        row, wrote, moved, extra = None, False, False, {}
        if started:
            written = [r for r in self._rows()[int(started.get("rows_before", 0)) :] if r.commit == str(commit)[:7]]
            if written:
                row = written[0].status
                if row == "keep" and self.ws.head_commit() == str(started.get("parent"))[:7]:
                    self.ws.reset_hard(commit)  # it died between the row and the branch move
                    moved = True
            else:
                row, wrote = "crash", True
                extra = self._died_fields(started, len(self._rows()) + 1)
                append_result(self.results_path, ResultRow(str(commit), 0.0, 0.0, "crash", self._died_description(started)))
        note = (
            f"the previous ar process died during experiment {commit or '(not yet committed)'} on {base.get('worker', '?')}: "
            + ("recorded as a crash" if wrote else f"its row ({row}) was already written" if started else "it never ran")
            + ("; the branch moved to it" if moved else "")
        )
        self._record("recovered", id=xid, commit=commit, parent=base.get("parent"), status=row, reset=False, moved=moved, note=note,
                     **extra)
        self._emit("recovered", commit=commit or "", note=note, description=base.get("description", ""))

    # -- the phases

    def _run(self) -> None:
        self._start(workers=len(self.trees), executor=self.executor.describe())
        if self._prepare() is not None:  # the baseline and noise floor, one at a time on worker 1
            self._local.worker = ""
            self._parallel()

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
            self._stop.set()
            with self.lock:
                self._running -= len(threads) - started  # those never started will not say they are done
                if not self._running:
                    self._all_done.set()
            with self.signals.critical():  # another Ctrl-C waits until every run has stopped
                self._all_done.wait()
            raise
        for t in threads:
            t.join()
        if self._error is not None:
            raise self._error
        if self._stop.is_set():
            raise _Abandon("a run was interrupted")

    def _limit(self) -> Optional[str]:
        s = self.s
        if s.max_experiments is not None and self.report.experiments + len(self._in_flight) >= s.max_experiments:
            return f"ran {s.max_experiments} experiments (--max-experiments {s.max_experiments})"
        return self._limit_reached()

    def _work(self, slot: int) -> None:
        try:
            self._work_on(slot)
        finally:
            with self.lock:
                self._running -= 1
                if not self._running:
                    self._all_done.set()

    def _work_on(self, slot: int) -> None:
        self._local.slot = slot
        self._local.worker = self.executor.label(slot)
        try:
            while not self._stop.is_set() and self._next(slot):
                pass
        except (_Abandon, KeyboardInterrupt, StopRequested):
            self._stop.set()  # stopped (the experiment is recorded as abandoned): so do the others
        except BaseException as e:  # a git failure, a user mistake from the proposer: stop all
            with self.lock:
                self._error = self._error or e
            self._stop.set()

    def _next(self, slot: int) -> bool:
        """Propose and run one experiment on `slot`; False when a limit says stop."""
        with self.lock:
            if self._stop.is_set():
                return False
            reason = self._limit()
            if reason:
                self.report.stop_reason = self.report.stop_reason or reason
                return False
            rows = self._rows()
            best = self._best(rows)
            parent = self.ws.head_commit()
            ctx = self._context(rows, best, self._read_editable())
            ctx = dataclasses.replace(ctx, in_flight=tuple(f.message for f in self._in_flight.values() if f.message))
            ticket = uuid.uuid4().hex
            self._in_flight[ticket] = _Flight()  # counts against --max-experiments while it is asked for
            number = len(rows) + len(self._in_flight)
        try:
            self._emit("proposing", number=number, best=ctx.best)
            for _ in range(3):  # two proposals asked for at once can be the same: ask again, once or twice
                proposal = self._propose(ctx)
                if proposal is None:
                    return True
                message = _one_line(proposal.description)
                with self.lock:
                    self.report.cost_usd += proposal.usage.cost_usd
                    clash = next((f for t, f in self._in_flight.items() if t != ticket and f.message
                                  and (f.message == message or f.text == proposal.new_text)), None)
                    if clash is None:
                        self.failures, self.feedback = 0, None
                        self._in_flight[ticket] = _Flight(message, proposal.new_text, self._worker())
                        break
                    why = f"that experiment is already running on {clash.worker} ({clash.message}); propose a different one"
                    ctx = dataclasses.replace(ctx, feedback=why, in_flight=tuple(f.message for f in self._in_flight.values() if f.message))
            else:
                self._no_proposal(NoProposal(why))
                return True
            refused = _check(self.s.editable, ctx.editable_text, proposal.new_text)
            self._experiment_on(slot, number, parent, best.val_bpb if best else None, proposal, message, len(rows), refused)
            return True
        finally:
            with self.lock:
                self._in_flight.pop(ticket, None)

    def _experiment_on(
        self, slot: int, number: int, parent: str, base_best: Optional[float], proposal: Proposal, message: str, rows_before: int,
        refused: Optional[str],
    ) -> None:
        xid = uuid.uuid4().hex[:12]
        desc = self._describe(message)
        common = dict(id=xid, experiment=number, message=message, description=desc,
                      proposer=self.proposer_name, usage=proposal.usage.as_dict(), rows_before=rows_before, worktree=True)
        x = _Experiment(xid, slot, number, message, desc, proposal.usage, common)
        commit = None
        try:
            self._record("proposing", parent=parent, **common)
            commit = self.trees[slot].commit_change(parent, self.s.editable, proposal.new_text, message)
            if commit is None:  # the same bytes after all (line endings)
                self._record("abandoned", id=xid, commit=None, parent=parent, reason="the proposal changed nothing")
                self._done.add(xid)
                self._no_proposal(NoProposal(f"the proposal leaves {self.s.editable} unchanged; change something"))
                return
            self._record("started", kind="experiment", commit=commit, parent=parent, budget=self.s.budget,
                         backend=self.s.backend, keep_rule=self.s.keep_rule, **common)
            self._judge_on(x, commit, parent, base_best, "experiment", attempt=0, refused=refused)
        except BaseException as e:
            if xid not in self._done:
                self._abandon(xid, commit, parent, e)
            raise

    def _moved(self, parent: str) -> bool:
        """The branch left `parent`: something was kept while this experiment ran."""
        return self.ws.head_commit() != parent[:7]

    def _judge_on(
        self, x: _Experiment, commit: str, parent: str, base_best: Optional[float], kind: str, attempt: int,
        refused: Optional[str] = None,
    ) -> None:
        """Run `commit` (built on `parent`, whose value was `base_best`), decide, and finish or re-apply.
        `refused`: why the static check refused it (it does not run)."""
        results = [self._run_once(x.xid, x.number, commit, kind, None, x.desc, refused)]
        values = [results[0].val_bpb if results[0].status == "ok" else None]
        decision = decide(self.s.keep_rule, base_best, values, self.floor)
        if decision.action == "confirm":
            with self.lock:
                moved = self._moved(parent)
            if not moved:  # a marginal gain on an unmoved best: confirm it here, as one worker does
                seed = self.s.noise_runs + 1
                results.append(self._run_once(x.xid, x.number, commit, "confirm", seed, x.desc))
                values.append(results[-1].val_bpb if results[-1].status == "ok" else None)
                decision = decide(self.s.keep_rule, base_best, values, self.floor)
        with self.lock:
            if decision.action not in ("keep", "confirm") or not self._moved(parent):
                self._finish(x, commit, parent, decision, values, results, base_best)
                return
            onto = self.ws.head_commit()
            best = self._best(self._rows())
        # A win against an older best: re-apply it on the new best and run it again.
        measured = f"{decision.value:.6f} on {parent[:7]}"
        if attempt >= MAX_REAPPLY:
            self._finish(x, commit, parent, Decision("discard", decision.value, f"{measured}; the best moved {attempt + 1} times while it ran"),
                         values, results, base_best)
            return
        new, why = self.trees[x.slot].reapply(commit, onto, self.s.editable, x.message)
        self._record("reapplied", id=x.xid, commit=commit, parent=parent, onto=onto, new_commit=new, reason=why,
                     measured=decision.value)
        if new is None:
            self._finish(x, commit, parent, Decision("discard", decision.value, f"{measured}; {why}"), values, results,
                         base_best, note=why)
            return
        self._record("started", kind="confirm", commit=new, parent=onto, reapplied_from=commit, budget=self.s.budget,
                     backend=self.s.backend, keep_rule=self.s.keep_rule, **x.common)
        tree = self.trees[x.slot]
        refused = _check(self.s.editable, tree.show(onto, self.s.editable), tree.show(new, self.s.editable))
        self._judge_on(x, new, onto, best.val_bpb if best else None, "confirm", attempt + 1, refused)

    def _finish(
        self, x: _Experiment, commit: str, parent: str, decision: Decision, values: list, results: list[RunResult],
        base_best: Optional[float], note: str = "",
    ) -> None:
        """The row, the branch (fast-forward to a keep) and the "finished" record, atomically for this process."""
        status = decision.action
        ok = status != "crash"
        memory = max(r.memory_gb for r in results) if ok else 0.0
        value = decision.value if ok else 0.0
        rejected = next((r for r in results if r.status == "rejected"), None)
        desc = self._describe(x.message, note, rejection_note(rejected.rejection) if rejected else "")
        with self.lock:
            rows_before = len(self._rows())
            number = rows_before + 1
            append_result(self.results_path, ResultRow(commit, value, memory, status, desc))
            if status == "keep":
                self.ws.reset_hard(commit)  # a fast-forward: its parent is the branch's HEAD
            self._record(
                "finished", id=x.xid, experiment=number, kind="experiment", commit=commit, parent=parent, status=status,
                val_bpb=value if ok else None, memory_gb=memory, description=desc, decision=decision.reason, values=values,
                best_before=base_best, best_after=(value if status == "keep" else base_best), noise_floor=self.floor,
                keep_rule=self.s.keep_rule, proposer=self.proposer_name, usage=x.usage.as_dict(), head=self.ws.head_commit(),
                **self._row_fields(rows_before),
            )
            self._done.add(x.xid)
            self.report.experiments += 1
            self.report.kept += status == "keep"
            self.report.crashed += status == "crash"
            failed = next((r for r in results if r.status != "ok"), None)
            self.last_crash_tail = "\n".join(failed.log_tail) if status == "crash" and failed else None
            best = self._best(self._rows())
            self._emit("finished", number=number, description=desc, commit=commit, run_kind="experiment", status=status,
                       val_bpb=value if ok else None, best=best.val_bpb if best else None, note=decision.reason)


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
            loop = ParallelLoop(workspace, proposer, executor, trees, settings, on_event=on_event, clock=clock, sleep=sleep)
            return loop.run()
    finally:
        executor.close()
