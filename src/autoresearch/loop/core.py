"""The autonomous loop: propose, commit, run, keep or reset, record; until stopped.

Pure core: the proposer, the runner and the git workspace are passed in (small
`typing.Protocol` seams; tests pass fakes), the display subscribes to `LoopEvent`s through
a callback, and nothing here imports Typer, Rich, an LLM SDK, torch or mlx.

One experiment, in the order of its writes, so that a kill -9 at any point loses nothing:

    runs.jsonl "proposing" (parent, description)   the intent
    write the editable file, git commit             (the message is the description)
    runs.jsonl "started" (commit, rows_before)
    run (+ a confirmation run under another seed)   each run: a runs.jsonl "run" record
    results.tsv row                                 (durable: write + fsync)
    keep the commit, or git reset --hard the parent
    runs.jsonl "finished"

On start, `recover` looks for an experiment with a "proposing"/"started" record and no
"finished"/"abandoned"/"recovered" one: the previous process died. If it had started and
its row is missing, a crash row "... (interrupted: the previous ar process died)" is
written; its commit is reset when HEAD is still at it (or the editable file is dirty).
Then the loop goes on from results.tsv and git: the best val_bpb of the branch, the
history, the experiment count.

Budgets and backends: every row's budget and backend are fields of its runs.jsonl record
(journal.py); a run budget other than the workspace's (`ar loop --budget`, a smoke test)
also shows as "(budget N s)" in the description, rendered, never parsed back. Rows are
judged only against rows of the same budget and backend on the branch (journal.best_entry):
a smoke loop, or a loop on another backend, has its own baseline, best and noise floor.

Stopping: Ctrl-C, SIGTERM or SIGHUP abandon the current experiment (the runner stops its
process group; the commit is reset; runs.jsonl gets an "abandoned" record and
results.tsv nothing) and stop the loop. Signals that arrive while a row is being written
and git is being updated are held until that short step is done, so a second Ctrl-C
never leaves a dirty tree. Limits (experiments, hours, cost) are checked before each
experiment: a running experiment is always finished.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Protocol

from ..errors import ArError
from .config import PROGRAM_NAME, RESULTS_NAME, RUNS_RELDIR
from .keep import DEFAULT_KEEP_RULE, NOISE_RUNS, Decision, check_rule, decide, noise_floor
from .proposal import HistoryItem, NoProposal, Proposal, ProposalContext, Proposer, Usage
from .journal import Entry, best_entry, budget_key, join, render_description
from .results import ResultRow, append_result, append_run_record, create_results, read_results, read_run_records
from .guards import WorkspaceGuard, check_editable, check_proposal, compile_harness, harness_state, write_editable
from .runner import DEFAULT_GRACE, RunResult, allocate_log, reject, rejected_run, rejection_note, run_script

DIED = "interrupted: the previous ar process died"  # the note of a row written for a dead process
INTERRUPTED_NOTE = f"({DIED})"
RUNS_LOG = "runs.jsonl"
_TERMINAL = ("finished", "abandoned", "recovered")


# -- the seams ------------------------------------------------------------------------


class LoopWorkspace(Protocol):
    """What the loop needs from git (autoresearch.loop.workspace.Workspace has it)."""

    path: Path

    def head_commit(self, short: bool = True) -> Optional[str]: ...

    def commit_subject(self, rev: str = "HEAD") -> str: ...

    def is_dirty(self, paths: Iterable[str] = (), untracked: bool = False) -> bool: ...

    def ancestry(self, rev: str = "HEAD") -> set[str]: ...

    def commit(self, paths: Iterable[str], message: str) -> Optional[str]: ...

    def reset_hard(self, commit: str) -> None: ...


class Runner(Protocol):
    """Runs the editable script as it is in the working tree (checked out at `commit`)."""

    def run(self, commit: str, *, seed: Optional[int] = None, on_progress: Optional[Callable[[dict], None]] = None) -> RunResult:
        """Status "interrupted" (or KeyboardInterrupt) when stopped by the user."""
        ...


@dataclass(frozen=True)
class LoopEvent:
    """What happened, for a display. `kind` is one of:

    resumed, recovered, proposing, no_proposal, run_started, progress, run_finished,
    finished, noise_floor, abandoned, stopped.
    """

    kind: str
    number: Optional[int] = None  # the experiment's row number in results.tsv
    description: str = ""
    commit: str = ""
    run_kind: str = ""  # baseline | experiment | confirm | noise
    status: str = ""  # finished: keep | discard | crash
    val_bpb: Optional[float] = None
    best: Optional[float] = None
    note: str = ""
    progress: Optional[dict] = None
    result: Optional[RunResult] = None
    cost_usd: float = 0.0  # spent by this loop so far
    worker: str = ""  # which worker (and node) with `ar loop --workers`; "" with one worker


EventFn = Callable[[LoopEvent], None]


@dataclass(frozen=True)
class LoopSettings:
    editable: str  # the one file proposals may change
    budget: float  # training seconds of each run
    full_budget: float  # the workspace's budget; another budget marks rows "(budget N s)"
    backend: str = ""  # the backend the runs use: rows of another backend are never compared
    keep_rule: str = DEFAULT_KEEP_RULE
    max_experiments: Optional[int] = None  # experiments this call runs (the baseline not counted)
    max_hours: Optional[float] = None  # no experiment starts after this much time
    max_cost: Optional[float] = None  # USD of proposer usage this call; none starts beyond it
    hardware: str = ""  # one line for the proposer
    profile: str = ""  # one line for the proposer
    noise_runs: int = NOISE_RUNS
    patience: int = 3  # consecutive NoProposals before waiting between attempts
    backoff: float = 10.0  # the first wait in seconds, doubled each further failure
    backoff_max: float = 300.0


@dataclass
class LoopReport:
    experiments: int = 0  # run by this call, the baseline not counted (nor in kept and crashed)
    kept: int = 0
    crashed: int = 0
    baseline_run: bool = False
    recovered: int = 0  # experiments of a dead process cleaned up on start
    best: Optional[float] = None
    best_commit: Optional[str] = None
    noise_floor: Optional[float] = None
    cost_usd: float = 0.0
    stop_reason: str = ""
    interrupted: bool = False


class StopRequested(BaseException):
    """SIGTERM or SIGHUP: stop like Ctrl-C does."""


class _Abandon(Exception):
    """The current run was interrupted: clean up and stop."""


class _Signals:
    """Ctrl-C -> KeyboardInterrupt, SIGTERM/SIGHUP -> StopRequested, except inside
    `critical()`, where they wait until the block is done. Main thread only."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: Optional[int] = None
        self.previous: dict[int, object] = {}

    def _raise(self, signum: int):
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise StopRequested(signal.Signals(signum).name)

    def _handler(self, signum, frame) -> None:
        if self.depth:
            self.pending = self.pending or signum
            return
        self._raise(signum)

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGINT", "SIGTERM", "SIGHUP"):
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)

    @contextlib.contextmanager
    def critical(self):
        self.depth += 1
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                if not failed:  # already on the way out: that is the stop
                    self._raise(signum)


# -- the real runner -------------------------------------------------------------------


class ScriptRunner:
    """Runs the workspace's editable script with run_script: a log per run in .autoresearch/runs/."""

    def __init__(self, folder: Path, *, editable: str, env: dict, budget: float, kill: float, grace: float = DEFAULT_GRACE,
                 policy=None):
        self.folder = Path(folder)
        self.editable = editable
        self.env = dict(env)
        self.budget = budget
        self.kill = kill
        self.grace = grace
        self.policy = policy  # trust.TrustPolicy: val_bpb from the harness, checked; None: the printout
        compile_harness()
        self.harness = harness_state()  # a run must not change the installed harness (guards.py)
        self.stop: Optional[threading.Event] = None  # set: the run ends as "interrupted" (parallel workers)

    @classmethod
    def for_workspace(cls, folder: Path, cfg, *, budget: float, kill: float, grace: float = DEFAULT_GRACE) -> "ScriptRunner":
        """The runner for a workspace config (autoresearch.loop.config.WorkspaceConfig), as `ar run` runs."""
        from .trust import TrustPolicy

        env = {"AUTORESEARCH_PROFILE": cfg.profile, "AUTORESEARCH_SOURCE": cfg.source, "AUTORESEARCH_BACKEND": cfg.backend}
        return cls(folder, editable=cfg.editable, env=env, budget=budget, kill=kill, grace=grace,
                   policy=TrustPolicy.for_config(cfg, budget))

    def run(self, commit: str, *, seed: Optional[int] = None, on_progress: Optional[Callable[[dict], None]] = None) -> RunResult:
        _, log_path = allocate_log(self.folder / RUNS_RELDIR, commit)
        env = {**self.env, "AUTORESEARCH_TIME_BUDGET": f"{self.budget:g}"}
        if seed is not None:
            env["AUTORESEARCH_SEED"] = str(seed)
        # The workspace must be the committed one; whatever the run changes is undone and rejects it.
        guard = WorkspaceGuard(self.folder, self.editable, log_path, harness_baseline=self.harness)
        guard.before()
        result = run_script(
            self.folder / self.editable,
            cwd=self.folder,
            log_path=log_path,
            env=env,
            kill_after=self.kill,
            grace=self.grace,
            on_progress=on_progress,
            policy=self.policy,
            stop=self.stop,
        )
        damage = guard.after()
        if damage and result.status != "interrupted":
            result = reject(result, "workspace modified", "; ".join(damage))
        return result


# -- the loop --------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _one_line(text: str) -> str:
    line = " ".join((text or "").split())
    return line or "(no description)"


def _tail_of(path: Path, lines: int = 50) -> Optional[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:]) or None


class Loop:
    """The loop over one workspace. `run()` goes until a limit or a stop signal."""

    def __init__(
        self,
        workspace: LoopWorkspace,
        proposer: Proposer,
        runner: Runner,
        settings: LoopSettings,
        *,
        on_event: Optional[EventFn] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        check_rule(settings.keep_rule)
        self.ws = workspace
        self.proposer = proposer
        self.runner = runner
        self.s = settings
        self.on_event = on_event
        self.clock = clock
        self.sleep = sleep
        self.folder = Path(workspace.path)
        self.results_path = self.folder / RESULTS_NAME
        self.runs_path = self.folder / RUNS_RELDIR / RUNS_LOG
        self.key = (budget_key(settings.budget), settings.backend)  # the rows this loop is judged against
        self.proposer_name = getattr(proposer, "name", type(proposer).__name__)
        self.report = LoopReport()
        self.floor: Optional[float] = None
        self.failures = 0  # consecutive NoProposals
        self.feedback: Optional[str] = None
        self.last_crash_tail: Optional[str] = None
        self.signals = _Signals()
        self._started = 0.0
        self._finished_id: Optional[str] = None  # the last experiment whose row and git update are done

    # -- small helpers

    def _emit(self, kind: str, **fields) -> None:
        if self.on_event is not None:
            self.on_event(LoopEvent(kind, cost_usd=self.report.cost_usd, **fields))

    def _record(self, event: str, **fields) -> None:
        append_run_record(self.runs_path, {"event": event, "time": _now(), **fields})

    def _rows(self) -> list[ResultRow]:
        create_results(self.results_path)
        return read_results(self.results_path)

    def _entries(self, rows: list[ResultRow]) -> list[Entry]:
        return join(rows, read_run_records(self.runs_path), budget=self.s.full_budget, backend=self.s.backend)

    def _mine(self, rows: list[ResultRow]) -> list[Entry]:
        """The rows of this loop's budget and backend."""
        return [e for e in self._entries(rows) if e.key == self.key]

    def _best(self, rows: list[ResultRow]) -> Optional[ResultRow]:
        best = best_entry(self._entries(rows), self.key, self.ws.ancestry())
        return best.row if best else None

    def _describe(self, message: str, *notes: str) -> str:
        return render_description(message, notes, budget=self.s.budget, full_budget=self.s.full_budget)

    def _row_fields(self, rows_before: int) -> dict:
        """What every row's record carries besides the row (journal.join reads it)."""
        return dict(row=rows_before + 1, budget=self.s.budget, backend=self.s.backend)

    def _editable_path(self) -> Path:
        return self.folder / self.s.editable

    def _read_editable(self) -> str:
        try:
            return check_editable(self.folder, self.s.editable).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ArError(
                f"the editable script {self.s.editable} is missing from {self.folder}; "
                f"restore it with `git checkout -- {self.s.editable}`"
            ) from None

    # -- start: recover from a process that died

    def recover(self) -> int:
        """Finish the records of experiments a dead process left open; the number cleaned up."""
        records: dict[str, dict[str, dict]] = {}
        for r in read_run_records(self.runs_path):
            xid = r.get("id")
            if xid and r.get("event") in ("proposing", "started") + _TERMINAL:
                records.setdefault(xid, {})[r["event"]] = r
        count = 0
        for xid, recs in records.items():
            if any(k in recs for k in _TERMINAL) or not ({"proposing", "started"} & recs.keys()):
                continue
            self._recover_one(xid, recs)
            count += 1
        return count

    def _recover_one(self, xid: str, recs: dict[str, dict]) -> None:
        started, proposing = recs.get("started"), recs.get("proposing")
        base = started or proposing
        parent = base.get("parent")
        head = self.ws.head_commit()
        dirty = self.ws.is_dirty([self.s.editable])
        commit = started.get("commit") if started else None
        row_status = row_number = None
        wrote_row = reset = False
        if started:
            rows = self._rows()
            written = [r for r in rows[int(started.get("rows_before", 0)) :] if r.commit == str(commit)[:7]]
            if written:
                row_status = written[0].status
            else:
                row_status, wrote_row = "crash", True
                row_number = len(rows) + 1
                append_result(self.results_path, ResultRow(str(commit), 0.0, 0.0, "crash", self._died_description(started)))
            if row_status != "keep" and head == commit and parent and parent != commit:
                self.ws.reset_hard(parent)
                reset = True
            elif dirty and head in (commit, parent):
                self.ws.reset_hard(head)
                reset = True
        elif parent:
            # It died before its run started: the commit (if made) never ran, so no row.
            message = proposing.get("message", "")
            ours = head != parent and self.ws.commit_subject() == message and parent in self.ws.ancestry()
            if ours or (head == parent and dirty):
                self.ws.reset_hard(parent)
                reset = True
        note = (
            f"the previous ar process died during experiment {commit or '(not yet committed)'}: "
            + ("recorded as a crash" if wrote_row else f"its row ({row_status}) was already written" if started else "it never ran")
            + ("; reset" if reset else "")
        )
        self._record("recovered", id=xid, commit=commit, parent=parent, status=row_status, reset=reset, note=note,
                     **(self._died_fields(started, row_number) if wrote_row else {}))
        self._emit("recovered", commit=commit or "", note=note, description=base.get("description", ""))

    def _died_description(self, started: dict) -> str:
        budget = started.get("budget", self.s.full_budget)
        return render_description(started.get("message") or "", [DIED], budget=budget, full_budget=self.s.full_budget)

    def _died_fields(self, started: dict, row_number: int) -> dict:
        """A crash row written on recovery is named by its "recovered" record (journal.join)."""
        return dict(row=row_number, budget=started.get("budget", self.s.full_budget),
                    backend=started.get("backend", self.s.backend), worker=started.get("worker"))

    def _last_crash_tail(self, rows: list[ResultRow]) -> Optional[str]:
        if not rows or rows[-1].status != "crash":
            return None
        for r in reversed(read_run_records(self.runs_path)):
            if r.get("commit") == rows[-1].commit and r.get("log"):
                return _tail_of(self.folder / r["log"])
        return None

    # -- the main loop

    def run(self) -> LoopReport:
        self._started = self.clock()
        with self.signals:
            try:
                self._run()
            except (KeyboardInterrupt, StopRequested, _Abandon):
                self.report.interrupted = True
                self.report.stop_reason = "interrupted"
        rows = self._rows()
        best = self._best(rows)
        self.report.best = best.val_bpb if best else None
        self.report.best_commit = best.commit if best else None
        self.report.noise_floor = self.floor
        self._record("loop_stopped", reason=self.report.stop_reason, experiments=self.report.experiments,
                     kept=self.report.kept, cost_usd=round(self.report.cost_usd, 6), head=self.ws.head_commit())
        self._emit("stopped", note=self.report.stop_reason, best=self.report.best)
        return self.report

    def _run(self) -> None:
        self._start()
        while (state := self._prepare()) is not None:
            self._one_experiment(*state)

    def _prepare(self) -> Optional[tuple[list, Optional[float]]]:
        """Run what must come before the next experiment (the baseline, the noise floor) and
        return (rows, best) for it; None when a limit stopped the loop."""
        while True:
            rows = self._rows()
            best = self._best(rows)
            if best is None and self._needs_baseline(rows):
                self._baseline(rows)
                continue
            reason = self._limit_reached()
            if reason:
                self.report.stop_reason = reason
                return None
            if best is not None and self.s.keep_rule == "noise" and self.floor is None:
                self._measure_noise(rows, best)
                continue
            return rows, best

    def _start(self, **details) -> None:
        """Recover, check the tree, load the state, record "loop_started" (with `details`)."""
        with self.signals.critical():
            self.report.recovered = self.recover()
        if self.ws.is_dirty():
            raise ArError(
                f"{self.folder} has uncommitted changes to tracked files; commit or discard them first "
                "(the loop resets experiments with git reset --hard)"
            )
        self._read_editable()
        rows = self._rows()
        best = self._best(rows)
        self.floor = self._recorded_floor()
        self.last_crash_tail = self._last_crash_tail(rows)
        self._record(
            "loop_started", proposer=self.proposer_name, keep_rule=self.s.keep_rule, budget=self.s.budget,
            max_experiments=self.s.max_experiments, max_hours=self.s.max_hours, max_cost=self.s.max_cost,
            rows=len(rows), head=self.ws.head_commit(), **details,
        )
        self._emit("resumed", number=len(rows), best=best.val_bpb if best else None, note=self.proposer_name)

    def _needs_baseline(self, rows: list[ResultRow]) -> bool:
        """No result of this budget on the branch, and HEAD has not crashed as it is."""
        head = self.ws.head_commit()
        return not any(e.row.commit == head and e.row.status == "crash" and not e.recovered for e in self._mine(rows))

    def _limit_reached(self) -> Optional[str]:
        s = self.s
        if s.max_experiments is not None and self.report.experiments >= s.max_experiments:
            return f"ran {self.report.experiments} experiments (--max-experiments {s.max_experiments})"
        if s.max_hours is not None and self.clock() - self._started >= s.max_hours * 3600:
            return f"ran for {s.max_hours:g} hours (--max-hours)"
        if s.max_cost is not None and self.report.cost_usd >= s.max_cost:
            return f"spent ${self.report.cost_usd:.2f} on proposals (--max-cost {s.max_cost:g})"
        return None

    # -- the noise floor

    def _recorded_floor(self) -> Optional[float]:
        if self.s.keep_rule != "noise":
            return None
        key = f"{self.s.budget:g}"
        for r in reversed(read_run_records(self.runs_path)):
            if r.get("event") == "noise_floor" and r.get("budget_key") == key and isinstance(r.get("floor"), (int, float)):
                return float(r["floor"])
        return None

    def _measure_noise(self, rows: list[ResultRow], best: ResultRow) -> None:
        """Run HEAD `noise_runs` more times under other seeds; the spread is the noise floor."""
        head = self.ws.head_commit()
        values: list[Optional[float]] = [e.row.val_bpb for e in self._mine(rows)
                                         if e.row.commit == head and e.row.status == "keep"][-1:]
        xid = uuid.uuid4().hex[:12]
        for seed in range(1, self.s.noise_runs + 1):
            result = self._run_once(xid, len(rows), head, "noise", seed, f"noise floor: run {seed} of {self.s.noise_runs}")
            values.append(result.val_bpb if result.status == "ok" else None)
        self.floor = noise_floor(values)
        self._record("noise_floor", id=xid, commit=head, budget=self.s.budget, budget_key=f"{self.s.budget:g}",
                     values=values, floor=self.floor)
        self._emit("noise_floor", commit=head or "", val_bpb=self.floor, best=best.val_bpb,
                   note=", ".join("crash" if v is None else f"{v:.6f}" for v in values))

    # -- one run

    def _run_once(self, xid: str, number: int, commit: str, kind: str, seed: Optional[int], description: str,
                  refused: Optional[str] = None) -> RunResult:
        """Run `commit` (or, when the static check `refused` it, record that it never ran)."""
        self._emit("run_started", number=number, description=description, commit=commit, run_kind=kind,
                   note=f"seed {seed}" if seed is not None else "")

        def progress(fields: dict) -> None:
            self._emit("progress", number=number, commit=commit, run_kind=kind, progress=fields)

        interrupted = False
        try:
            if refused:
                result = rejected_run(allocate_log(self.folder / RUNS_RELDIR, commit)[1], "static check", refused)
            else:
                result = self.runner.run(commit, seed=seed, on_progress=progress)
        except (KeyboardInterrupt, StopRequested):
            interrupted = True  # a runner that lets the interrupt through: the group is its business
            result = None
        if result is not None:
            log = result.log_path
            with contextlib.suppress(ValueError):
                log = Path(log).resolve().relative_to(self.folder.resolve())
            self._record(
                "run", id=xid, experiment=number, commit=commit, kind=kind, seed=seed, status=result.status,
                val_bpb=result.val_bpb, memory_gb=result.memory_gb, seconds=round(result.seconds, 3),
                reason=result.reason, returncode=result.returncode, budget=self.s.budget, backend=self.s.backend, log=str(log),
                summary=result.summary, rejection=result.rejection or None,
            )
            self._emit("run_finished", number=number, commit=commit, run_kind=kind, result=result, val_bpb=result.val_bpb)
        if interrupted or result.status == "interrupted":
            raise _Abandon(kind)
        return result

    # -- the baseline and an experiment

    def _baseline(self, rows: list[ResultRow]) -> None:
        head = self.ws.head_commit()
        if head is None:
            raise ArError(f"{self.folder} has no commit yet; run `ar init <tag>` first")
        xid = uuid.uuid4().hex[:12]
        self._record("started", id=xid, kind="baseline", commit=head, parent=head, message="baseline",
                     description=self._describe("baseline"), experiment=len(rows) + 1, rows_before=len(rows),
                     budget=self.s.budget, backend=self.s.backend, keep_rule=self.s.keep_rule, proposer=None)
        self.report.baseline_run = True
        try:
            self._judge(xid, len(rows) + 1, head, head, "baseline", "baseline", None, Usage())
        except BaseException as e:
            if self._finished_id != xid:
                self._abandon(xid, head, head, e)
            raise

    def _one_experiment(self, rows: list[ResultRow], best: Optional[ResultRow]) -> None:
        number = len(rows) + 1
        current = self._read_editable()
        ctx = self._context(rows, best, current)
        self._emit("proposing", number=number, best=ctx.best)
        proposal = self._propose(ctx)
        if proposal is None:
            return
        self.failures, self.feedback = 0, None
        self.report.cost_usd += proposal.usage.cost_usd
        self._experiment(rows, number, best, proposal)

    def _context(self, rows: list[ResultRow], best: Optional[ResultRow], current: str) -> ProposalContext:
        """What the proposer sees (shared with the parallel loop, which adds `in_flight`)."""
        return ProposalContext(
            program=self._program(),
            editable_name=self.s.editable,
            editable_text=current,
            history=tuple(HistoryItem(i, r.commit, r.val_bpb, r.status, r.description) for i, r in enumerate(rows, 1)),
            best=best.val_bpb if best else None,
            hardware=self.s.hardware,
            profile=self.s.profile,
            last_crash_tail=self.last_crash_tail,
            feedback=self.feedback,
        )

    def _propose(self, ctx: ProposalContext) -> Optional[Proposal]:
        """A usable proposal, or None after recording why not (`_no_proposal`). ArError stops the loop."""
        try:
            proposal = self.proposer.propose(ctx)
            if proposal.new_text == ctx.editable_text:
                raise NoProposal(f"the proposal leaves {self.s.editable} unchanged; change something", proposal.usage)
            if not proposal.new_text.strip():
                raise NoProposal(f"the proposal empties {self.s.editable}; send the whole file", proposal.usage)
        except NoProposal as e:
            self._no_proposal(e)
            return None
        except ArError:
            raise  # a user mistake (no API key, unknown model): say so and stop
        except Exception as e:  # a network hiccup or an SDK bug must not end an overnight run
            self._no_proposal(NoProposal(f"the {self.proposer_name} proposer failed: {type(e).__name__}: {e}"))
            return None
        return proposal

    def _program(self) -> str:
        # Read every time: the user may tune program.md while the loop runs.
        try:
            return (self.folder / PROGRAM_NAME).read_text(encoding="utf-8")
        except OSError:
            return ""

    def _no_proposal(self, e: NoProposal) -> None:
        self.report.cost_usd += e.usage.cost_usd
        self.failures += 1
        self.feedback = str(e)
        wait = 0.0
        if self.failures >= self.s.patience:
            wait = min(self.s.backoff_max, self.s.backoff * 2 ** (self.failures - self.s.patience))
            if self.s.max_hours is not None:  # never sleep past the time limit
                wait = max(0.0, min(wait, self._started + self.s.max_hours * 3600 - self.clock()))
        self._record("no_proposal", proposer=self.proposer_name, reason=str(e), usage=e.usage.as_dict(),
                     consecutive=self.failures, wait_s=wait)
        self._emit("no_proposal", note=str(e), val_bpb=None, description=f"{self.failures} in a row; waiting {wait:g} s" if wait else f"{self.failures} in a row")
        if wait:
            self.sleep(wait)

    def _experiment(self, rows: list[ResultRow], number: int, best: Optional[ResultRow], proposal: Proposal) -> None:
        parent = self.ws.head_commit()
        xid = uuid.uuid4().hex[:12]
        message = _one_line(proposal.description)
        usage = proposal.usage
        common = dict(id=xid, experiment=number, parent=parent, message=message, description=self._describe(message),
                      proposer=self.proposer_name, usage=usage.as_dict(), rows_before=len(rows))
        commit = None
        refused = check_proposal(self.s.editable, self._read_editable(), proposal.new_text)
        try:
            with self.signals.critical():
                self._record("proposing", **common)
                write_editable(self.folder, self.s.editable, proposal.new_text)
                commit = self.ws.commit([self.s.editable], message)
                if commit is None:  # the same bytes after all (line endings): nothing to run
                    self.ws.reset_hard(parent)
                    self._record("abandoned", id=xid, commit=None, parent=parent, reason="the proposal changed nothing")
                    self._finished_id = xid
                else:
                    self._record("started", kind="experiment", commit=commit, budget=self.s.budget,
                                 backend=self.s.backend, keep_rule=self.s.keep_rule, **common)
            if commit is None:
                self._no_proposal(NoProposal(f"the proposal leaves {self.s.editable} unchanged; change something"))
                return
            self._judge(xid, number, commit, parent, "experiment", message, best, usage, refused=refused)
        except BaseException as e:
            if self._finished_id != xid:
                self._abandon(xid, commit, parent, e)
            raise

    def _abandon(self, xid: str, commit: Optional[str], parent: Optional[str], error: BaseException) -> None:
        """Put git back at `parent` and say why in runs.jsonl; no row."""
        with self.signals.critical():
            if parent and (self.ws.head_commit() != parent or self.ws.is_dirty([self.s.editable])):
                self.ws.reset_hard(parent)
            why = "interrupted" if isinstance(error, (KeyboardInterrupt, StopRequested, _Abandon)) else f"error: {error}"
            self._record("abandoned", id=xid, commit=commit, parent=parent, reason=why)
        self._emit("abandoned", commit=commit or "", note=why)

    def _judge(
        self, xid: str, number: int, commit: str, parent: str, kind: str, message: str,
        best: Optional[ResultRow], usage: Usage, refused: Optional[str] = None,
    ) -> None:
        """Run, decide (with a confirmation run if the rule asks), write the row, keep or reset."""
        best_val = best.val_bpb if best else None
        desc = self._describe(message)
        results = [self._run_once(xid, number, commit, kind, None, desc, refused)]
        values = [results[0].val_bpb if results[0].status == "ok" else None]
        decision: Decision = decide(self.s.keep_rule, best_val, values, self.floor)
        if decision.action == "confirm":
            seed = self.s.noise_runs + 1  # a seed the noise runs did not use
            results.append(self._run_once(xid, number, commit, "confirm", seed, desc))
            values.append(results[-1].val_bpb if results[-1].status == "ok" else None)
            decision = decide(self.s.keep_rule, best_val, values, self.floor)
        status = decision.action
        ok = status != "crash"
        memory = max(r.memory_gb for r in results) if ok else 0.0
        value = decision.value if ok else 0.0
        rejected = next((r for r in results if r.status == "rejected"), None)
        if rejected is not None:  # the row says why: "... (rejected: non-causal)"
            desc = self._describe(message, rejection_note(rejected.rejection))
        with self.signals.critical():
            rows_before = len(self._rows())
            append_result(self.results_path, ResultRow(commit, value, memory, status, desc))
            if status != "keep" and parent != commit:
                self.ws.reset_hard(parent)
            self._record(
                "finished", id=xid, experiment=number, kind=kind, commit=commit, parent=parent, status=status,
                val_bpb=value if ok else None, memory_gb=memory, description=desc, decision=decision.reason,
                values=values, best_before=best_val, best_after=(value if status == "keep" else best_val),
                noise_floor=self.floor, keep_rule=self.s.keep_rule, proposer=None if kind == "baseline" else self.proposer_name,
                usage=usage.as_dict(), head=self.ws.head_commit(), **self._row_fields(rows_before),
            )
            self._finished_id = xid
        if kind != "baseline":  # the report counts experiments; the baseline is reported apart
            self.report.experiments += 1
            self.report.kept += status == "keep"
            self.report.crashed += status == "crash"
        failed = next((r for r in results if r.status != "ok"), None)
        self.last_crash_tail = "\n".join(failed.log_tail) if status == "crash" and failed else None
        self._emit("finished", number=number, description=desc, commit=commit, run_kind=kind, status=status,
                   val_bpb=value if ok else None, best=(value if status == "keep" else best_val), note=decision.reason)


def run_loop(
    workspace: LoopWorkspace,
    proposer: Proposer,
    runner: Runner,
    settings: LoopSettings,
    *,
    on_event: Optional[EventFn] = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LoopReport:
    """Run the loop until a limit or a stop signal; see the module doc."""
    return Loop(workspace, proposer, runner, settings, on_event=on_event, clock=clock, sleep=sleep).run()
