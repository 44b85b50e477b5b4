"""One experiment, one code path: commit -> run (and any repeat run the keep rule asks
for) -> judge -> row -> keep or reset -> record.

`run_experiment` is the only code that does this. `ar run` calls it with no proposal
(the commit is HEAD), the serial loop calls it once at a time, and each worker of the
parallel loop calls it from its own thread and worktree. What differs between them is
passed in, never overridden:

- a `Checkout`: where the commit is made and what keep and discard mean (the workspace's
  own checkout: discard resets the branch; a worker's worktree: keep fast-forwards the
  branch; `ar run`: nothing moves, as in upstream's manual loop);
- a `Runner`: how the script runs (a subprocess here, a worker's device, a Ray task);
- the `Lab`: the journal (results.tsv and runs.jsonl), the settings, the events, and the
  critical section in which a row, its git update and its record are written together.

The order of writes, so that a kill -9 at any point loses nothing (experiment/recovery.py):

    runs.jsonl "proposing"   the intent (only with a proposal)
    git commit               (the message is the one-line description)
    runs.jsonl "started"     commit, parent, budget, backend, rows before it
    run(s)                   each a runs.jsonl "run" record
    results.tsv row          one durable append
    keep or reset            (git)
    runs.jsonl "finished"    names the row: row number, commit, budget, backend, notes, usage
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

from autoresearch.integrity.static_check import check_proposal
from autoresearch.experiment.keep import MAX_RUNS, Decision, decide, decide_ablation, decide_test, same_machine
from autoresearch.proposers.base import Proposal, Usage
from autoresearch.journal.files import ResultRow
from autoresearch.experiment.early_stop import compact, curve_point
from autoresearch.run.process import RunResult, StopRun, advise, rejection_note

MAX_REAPPLY = 3  # re-applications of one experiment onto a moving best before it is discarded
# ast.parse is not thread-safe on CPython 3.11 (concurrent calls can fail with "SystemError:
# AST constructor recursion depth mismatch"; seen here on 3.11.7): the static check and the
# offline proposer parse the script, so they take turns.
PARSE_LOCK = threading.Lock()


class Abandoned(Exception):
    """The run was interrupted (Ctrl-C, a stop signal): no row; the scheduler stops."""

    def __init__(self, kind: str, result: Optional[RunResult] = None):
        super().__init__(kind)
        self.result = result  # the interrupted run, when it returned one


class StopRequested(BaseException):
    """SIGTERM or SIGHUP: stop as Ctrl-C does (experiment/signals.py raises it)."""


INTERRUPTS = (KeyboardInterrupt, StopRequested, Abandoned)


class Runner(Protocol):
    """Runs the editable script as committed at `commit`."""

    def run(self, commit: str, *, seed: Optional[int] = None, on_progress: Optional[Callable[[dict], None]] = None) -> RunResult:
        """Status "interrupted" (or KeyboardInterrupt) when stopped by the user."""
        ...


class Checkout(Protocol):
    """Where an experiment's commit lives and what keep and discard do to the branch."""

    in_worktree: bool  # a worker's worktree: the branch only ever fast-forwards to a keep

    def head(self) -> Optional[str]:
        """The commit a new experiment starts from (the branch's best)."""
        ...

    def commit(self, parent: str, editable: str, text: str, message: str) -> Optional[str]:
        """Commit `text` as `editable` on top of `parent`; None when it changes nothing."""
        ...

    def moved(self, parent: str) -> bool:
        """The branch left `parent` while the experiment ran (another worker kept one)."""
        ...

    def keep(self, commit: str, parent: str) -> None: ...

    def discard(self, commit: str, parent: str) -> None: ...

    def abandon(self, commit: Optional[str], parent: str) -> None:
        """Undo a commit whose experiment never finished."""
        ...

    def reapply(self, commit: str, onto: str, editable: str, message: str) -> tuple[Optional[str], str]:
        """Re-apply `commit`'s change on `onto`: (new commit, "") or (None, why not)."""
        ...

    def show(self, rev: str, editable: str) -> str: ...


class Lab(Protocol):
    """What one experiment needs from its scheduler (experiment/lab.py has it)."""

    settings: "StepSettings"
    lock: "threading.RLock"

    def record(self, event: str, **fields) -> None: ...

    def emit(self, kind: str, **fields) -> None: ...

    def critical(self) -> "contextlib.AbstractContextManager": ...

    def append_row(self, row: ResultRow) -> int:
        """Append a row durably; its 1-based number."""
        ...

    def best(self) -> Optional[float]:
        """The best to beat now (journal.best_entry of this budget and backend)."""
        ...

    def describe(self, message: str, *notes: str) -> str: ...

    def new_log(self, commit: str) -> Path:
        """A fresh log file for a run of `commit` (for one refused before it runs)."""
        ...

    def early_stopper(self, best_commit: Optional[str]) -> Optional[Callable[[dict], Optional[str]]]:
        """What stops a first run that is clearly worse than the best's runs (early_stop.py);
        None when it is off or the best has no curve yet."""
        ...


@dataclass(frozen=True)
class StepSettings:
    editable: str  # the script that runs and is edited
    budget: float
    full_budget: float
    backend: str
    keep_rule: str
    noise_runs: int  # seeds 1..noise_runs measure the noise floor; a confirmation uses the next one
    proposer: Optional[str] = None


@dataclass
class Outcome:
    """What an experiment came to; `status` is its row's: keep | discard | crash."""

    status: str
    value: Optional[float]
    values: list
    results: list[RunResult]
    decision: Decision
    commit: str  # the commit the row names (a re-applied one with several workers)
    row: int
    description: str
    best_before: Optional[float]


@dataclass
class Plan:
    xid: str
    number: int
    kind: str
    message: str
    usage: Usage
    floor: Optional[float]
    common: dict = field(default_factory=dict)  # fields of every record of this experiment
    best_commit: Optional[str] = None  # whose runs the `test` rule compares with
    finished: bool = False
    seeds: list = field(default_factory=list)  # AUTORESEARCH_SEED of each run (None: the script's own)
    mode: str = ""  # the search mode that proposed it (loop/plateau.py); "ablate" changes the keep rule


def run_experiment(
    lab: Lab,
    checkout: Checkout,
    runner: Runner,
    proposal: Optional[Proposal] = None,
    *,
    number: int,
    rows_before: int,
    floor: Optional[float] = None,
    kind: Optional[str] = None,
    message: Optional[str] = None,
    base: Optional[tuple[str, Optional[float]]] = None,
) -> Optional[Outcome]:
    """Run one experiment; None when the proposal turned out to change nothing.

    With no `proposal` the commit is the checkout's HEAD (the baseline, `ar run`). `base`:
    the parent and its best when the proposal was asked for (workers: the branch may have
    moved since). An interrupt abandons it (its commit undone, an "abandoned" record, no row) and raises
    Abandoned (or the interrupt itself) to the scheduler.
    """
    s = lab.settings
    parent, best = base if base is not None else (checkout.head(), lab.best())
    if parent is None:
        from autoresearch.errors import ArError

        raise ArError("the workspace has no commit yet; run `ar init <tag>` first")
    kind = kind or ("experiment" if proposal is not None else "baseline")
    usage = proposal.usage if proposal is not None else Usage()
    message = " ".join((message or (proposal.description if proposal else kind)).split()) or "(no description)"
    plan = Plan(uuid.uuid4().hex[:12], number, kind, message, usage, floor, dict(
        experiment=number, message=message, description=lab.describe(message), proposer=s.proposer if proposal else None,
        usage=usage.as_dict(), rows_before=rows_before, budget=s.budget, backend=s.backend, keep_rule=s.keep_rule,
        worktree=checkout.in_worktree,  # recovery: a worktree's commit was never on the branch unless kept
        **({"mode": proposal.mode} if proposal is not None and proposal.mode else {}),
        **({"base": proposal.base} if proposal is not None and proposal.base else {}),
    ), mode=proposal.mode if proposal is not None else "")
    commit: Optional[str] = None
    try:
        refused = None
        if proposal is None:
            commit = parent
        else:
            with PARSE_LOCK:
                refused = check_proposal(s.editable, checkout.show(parent, s.editable), proposal.new_text)
            with lab.critical():
                lab.record("proposing", id=plan.xid, parent=parent, **plan.common)
                commit = checkout.commit(parent, s.editable, proposal.new_text, message)
                if commit is None:  # the same bytes after all (line endings): nothing to run
                    lab.record("abandoned", id=plan.xid, commit=None, parent=parent, reason="the proposal changed nothing")
                    plan.finished = True
                    return None
        lab.record("started", id=plan.xid, kind=kind, commit=commit, parent=parent, **plan.common)
        plan.best_commit = base[2] if base is not None and len(base) > 2 else _best_commit(lab)
        return _judge(lab, checkout, runner, plan, commit, parent, best, refused, attempt=0)
    except BaseException as e:
        if not plan.finished:
            with lab.critical():
                checkout.abandon(commit, parent)
                why = "interrupted" if isinstance(e, INTERRUPTS) else f"error: {type(e).__name__}: {e}"
                lab.record("abandoned", id=plan.xid, commit=commit, parent=parent, reason=why)
            lab.emit("abandoned", commit=commit or "", note=why)
        raise


def run_once(lab: Lab, runner: Runner, plan: Plan, commit: str, kind: str, seed: Optional[int],
             refused: Optional[str] = None) -> RunResult:
    """One run of `commit` with its events and "run" record (a refused one never runs)."""
    s = lab.settings
    lab.emit("run_started", number=plan.number, description=lab.describe(plan.message), commit=commit, run_kind=kind,
             note=f"seed {seed}" if seed is not None else "")
    # Only an idea's first run can be stopped early: the baseline, confirmations and
    # re-runs of the best are what the others are measured against.
    first = kind in ("experiment", "run") and (plan.best_commit or "")[:7] != commit[:7]
    stopper = lab.early_stopper(plan.best_commit) if first else None
    points: list = []

    def progress(fields: dict) -> None:
        lab.emit("progress", number=plan.number, commit=commit, run_kind=kind, progress=fields)
        point = curve_point(fields)
        if point is not None:
            points.append(point)
        why = stopper(fields) if stopper is not None else None
        if why:
            raise StopRun(why)

    plan.seeds.append(seed)
    try:
        result = runner.run(commit, seed=seed, on_progress=progress)
    except (KeyboardInterrupt, StopRequested):  # a runner that lets the interrupt through: still journalled
        lab.record("run", id=plan.xid, experiment=plan.number, commit=commit, kind=kind, seed=seed, status="interrupted",
                   val_bpb=None, reason="interrupted by the user (Ctrl-C or a stop signal)", budget=s.budget,
                   backend=s.backend)
        raise Abandoned(kind) from None
    if refused:  # advice, not a boundary (the sandbox and the judge are): the run went ahead; the model is told
        result.advice = refused
        advise(result, f"[ar] the static check flagged this edit ({refused}); it ran anyway and ar's judge "
                       "computed its val_bpb")
    lab.record("run", id=plan.xid, experiment=plan.number, commit=commit, kind=kind, seed=seed, status=result.status,
               val_bpb=result.val_bpb, memory_gb=result.memory_gb, seconds=round(result.seconds, 3), reason=result.reason,
               returncode=result.returncode, budget=s.budget, backend=s.backend, log=str(result.log_path),
               summary=result.summary, rejection=result.rejection or None, machine=result.machine,
               curve=compact(points) or None, sandbox=result.sandbox or None, judge=result.harness,
               advice=result.advice or None)
    lab.emit("run_finished", number=plan.number, commit=commit, run_kind=kind, result=result, val_bpb=result.val_bpb)
    if result.status == "interrupted":
        raise Abandoned(kind, result)
    return result


def _sandbox(results: list[RunResult]) -> Optional[str]:
    """The sandbox the experiment's runs had: its name, "none" if any ran without one, None if unknown."""
    names = {r.sandbox for r in results if r.sandbox}
    if not names:
        return None
    return "none" if "none" in names else ", ".join(sorted(names))


def _value(result: RunResult) -> Optional[float]:
    return result.val_bpb if result.status == "ok" else None


def _best_commit(lab: Lab) -> Optional[str]:
    row = lab.best_row()
    return row.commit if row else None


def _decide(lab: Lab, plan: Plan, best: Optional[float], values: list, results: list[RunResult]) -> Decision:
    s = lab.settings
    stopped = next((r for r in results if r.status == "stopped"), None)
    if stopped is not None:  # clearly worse than the best while it trained (early_stop.py)
        return Decision("discard", None, stopped.reason)
    if s.keep_rule != "test":
        return decide(s.keep_rule, best, values, plan.floor)
    loads = [r.machine for r in results if r.machine is not None]
    load = sum(loads) / len(loads) if loads else None
    best_runs, gap = same_machine(lab.runs_with_load(plan.best_commit) if plan.best_commit else [], load)
    if best is not None and not best_runs and gap == 0.0:
        best_runs = [best]  # a best written by hand, without runs in the journal
    if gap != 0.0 and not any(v is None for v in values):
        # The machine's load changed since the best was measured: never credit the edit with it.
        lab.remeasure = True
        mean = sum(values) / len(values)
        how = "less" if gap < 0 else "more"
        return Decision("discard", mean, f"not credited: other work used {abs(gap):.0%} {how} of the machine than during "
                        f"the best's runs (run/probe.py); the best is re-run under this load first", remeasure=True)
    if plan.mode == "ablate":  # equal val_bpb with less code is a win (loop/plateau.py)
        return decide_ablation(best_runs or None, values, lab.noise())
    decision = decide_test(best_runs or None, values, lab.noise())
    if decision.remeasure:
        lab.remeasure = True
    return decision


def _judge(lab: Lab, checkout: Checkout, runner: Runner, plan: Plan, commit: str, parent: str, best: Optional[float],
           refused: Optional[str], attempt: int) -> Outcome:
    """Run `commit` (built on `parent`, whose best was `best`), decide, and finish; a win over
    a best that moved meanwhile is re-applied on the new best and judged again."""
    s = lab.settings
    kind = plan.kind if attempt == 0 else "confirm"
    results = [run_once(lab, runner, plan, commit, kind, None, refused)]
    values = [_value(results[0])]
    decision = _decide(lab, plan, best, values, results)
    while decision.action == "confirm" and not checkout.moved(parent) and len(values) < MAX_RUNS:
        # seeds the noise runs did not use: noise_runs + 1, + 2, ...
        results.append(run_once(lab, runner, plan, commit, "confirm", s.noise_runs + len(values)))
        values.append(_value(results[-1]))
        decision = _decide(lab, plan, best, values, results)
    with lab.lock:
        moved = decision.action in ("keep", "confirm") and checkout.moved(parent)
        if not moved:
            return _finish(lab, checkout, plan, commit, parent, decision, values, results, best)
        onto, new_best = checkout.head(), lab.best()
        plan.best_commit = _best_commit(lab)
    # A win against an older best: re-apply it on the new best and run it again.
    measured = f"{decision.value:.6f} on {parent[:7]}"
    if attempt >= MAX_REAPPLY:
        why = f"{measured}; the best moved {attempt + 1} times while it ran"
        return _finish(lab, checkout, plan, commit, parent, Decision("discard", decision.value, why), values, results, best)
    new, why = checkout.reapply(commit, onto, s.editable, plan.message)
    lab.record("reapplied", id=plan.xid, commit=commit, parent=parent, onto=onto, new_commit=new, reason=why,
               measured=decision.value)
    if new is None:
        return _finish(lab, checkout, plan, commit, parent, Decision("discard", decision.value, f"{measured}; {why}"), values,
                       results, best, note=why)
    lab.record("started", id=plan.xid, kind="confirm", commit=new, parent=onto, reapplied_from=commit, **plan.common)
    with PARSE_LOCK:
        refused = check_proposal(s.editable, checkout.show(onto, s.editable), checkout.show(new, s.editable))
    return _judge(lab, checkout, runner, plan, new, onto, new_best, refused, attempt + 1)


def _finish(lab: Lab, checkout: Checkout, plan: Plan, commit: str, parent: str, decision: Decision, values: list,
            results: list[RunResult], best: Optional[float], note: str = "") -> Outcome:
    """The row, the branch and the "finished" record, together (a signal waits; workers take turns)."""
    status = decision.action
    ok = status != "crash"
    memory = max(r.memory_gb for r in results) if ok else 0.0
    value = decision.value if ok and decision.value is not None else 0.0  # no value: 0.000000, as a crash
    rejected = next((r for r in results if r.status == "rejected"), None)
    stopped = next((r for r in results if r.status == "stopped"), None)
    notes = [n for n in (note, rejection_note(rejected.rejection) if rejected else "", stopped.reason if stopped else "")
             if n]
    desc = lab.describe(plan.message, *notes)
    with lab.critical():
        row = lab.append_row(ResultRow(commit, value, memory, status, desc))
        if status == "keep":
            checkout.keep(commit, parent)
        else:
            checkout.discard(commit, parent)
        lab.record(
            "finished", id=plan.xid, kind=plan.kind, commit=commit, parent=parent, status=status, row=row,
            val_bpb=value if ok and decision.value is not None else None, memory_gb=memory, decision=decision.reason, values=values, notes=notes,
            seeds=plan.seeds, seconds=round(sum(r.seconds for r in results), 3),
            best_before=best, best_after=(value if status == "keep" else best), noise_floor=plan.floor,
            sandbox=_sandbox(results),
            head=checkout.head(), **{**plan.common, "description": desc},
        )
        plan.finished = True
    return Outcome(status, value if ok and decision.value is not None else None, values, results, decision, commit, row, desc, best)
