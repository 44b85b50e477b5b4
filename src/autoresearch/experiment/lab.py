"""The shared state of one `ar loop` (or `ar run`): the journal, the settings, the events.

`Lab` is what `experiment.step.run_experiment` needs from its scheduler, and what the
serial and parallel schedulers share: results.tsv and runs.jsonl (written under one lock,
so workers never interleave), the one definition of the best (journal.best_entry of this
budget and backend), the events a display subscribes to, the report, and the critical
section in which a row, its git update and its record are written together.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from autoresearch.experiment.step import StepSettings
from autoresearch.workspace.config import RESULTS_NAME, RUNS_RELDIR
from autoresearch.journal.queries import Entry, best_entry, budget_key, join, render_description
from autoresearch.experiment import early_stop
from autoresearch.experiment.keep import DEFAULT_KEEP_RULE, NOISE_RUNS, Noise, run_noise
from autoresearch.journal.files import ResultRow, append_result, append_run_record, create_results, read_results, read_run_records
from autoresearch.run.process import RunResult, allocate_log
from autoresearch.experiment.signals import Signals

RUNS_LOG = "runs.jsonl"
DIED = "interrupted: the previous ar process died"  # the note of a row written for a dead process
INTERRUPTED_NOTE = f"({DIED})"


@dataclass(frozen=True)
class LoopEvent:
    """What happened, for a display. `kind` is one of:

    resumed, recovered, proposing, no_proposal, mode (a plateau changed the search mode:
    loop/plateau.py), run_started, progress, run_finished, finished, noise_floor, abandoned,
    stopped.
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
    early_stop: bool = True  # stop a first run clearly worse than the best's (experiment/early_stop.py)
    plateau: int = 0  # experiments without a keep before the search changes mode (loop/plateau.py); 0: never


@dataclass
class LoopReport:
    experiments: int = 0  # run by this call, the baseline not counted (nor in kept and crashed)
    kept: int = 0
    crashed: int = 0
    baseline_run: bool = False
    recovered: int = 0  # experiments of a dead process cleaned up on start
    best: Optional[float] = None
    best_commit: Optional[str] = None
    noise_floor: Optional[float] = None  # the `noise` rule's floor
    noise_sd: Optional[float] = None  # the `test` rule's pooled run-to-run standard deviation
    cost_usd: float = 0.0
    stop_reason: str = ""
    interrupted: bool = False


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Lab:
    def __init__(self, workspace, settings: LoopSettings, *, proposer: Optional[str] = None,
                 on_event: Optional[EventFn] = None, signals: Optional[Signals] = None):
        self.ws = workspace
        self.s = settings
        self.settings = StepSettings(settings.editable, settings.budget, settings.full_budget, settings.backend,
                                     settings.keep_rule, settings.noise_runs, proposer)
        self.folder = Path(workspace.path)
        self.results_path = self.folder / RESULTS_NAME
        self.runs_path = self.folder / RUNS_RELDIR / RUNS_LOG
        self.key = (budget_key(settings.budget), settings.backend)  # the rows this loop is judged against
        self.on_event = on_event
        self.signals = signals or Signals()
        self.lock = threading.RLock()  # results.tsv, runs.jsonl, the branch, the counters
        self._emit_lock = threading.Lock()  # events come from several threads; displays are not thread-safe
        self._local = threading.local()
        self.report = LoopReport()
        self.floor: Optional[float] = None  # the `noise` rule's floor
        self.remeasure = False  # the `test` rule: re-run the single-run best before the next experiment

    # -- who is running (a worker label per thread, "" with one worker)

    @property
    def worker(self) -> str:
        return getattr(self._local, "worker", "")

    @worker.setter
    def worker(self, label: str) -> None:
        self._local.worker = label

    # -- the journal

    def record(self, event: str, **fields) -> None:
        if self.worker:
            fields.setdefault("worker", self.worker)
        if isinstance(fields.get("log"), (str, Path)):
            with contextlib.suppress(ValueError):
                fields["log"] = str(Path(fields["log"]).resolve().relative_to(self.folder.resolve()))
        with self.lock:
            append_run_record(self.runs_path, {"event": event, "time": _now(), **fields})

    def records(self) -> list[dict]:
        return read_run_records(self.runs_path)

    def rows(self) -> list[ResultRow]:
        create_results(self.results_path)
        return read_results(self.results_path)

    def entries(self, rows: Optional[list[ResultRow]] = None) -> list[Entry]:
        return join(self.rows() if rows is None else rows, self.records(), budget=self.s.full_budget, backend=self.s.backend)

    def mine(self, rows: Optional[list[ResultRow]] = None) -> list[Entry]:
        """The rows of this loop's budget and backend."""
        return [e for e in self.entries(rows) if e.key == self.key]

    def best_row(self, rows: Optional[list[ResultRow]] = None) -> Optional[ResultRow]:
        best = best_entry(self.entries(rows), self.key, self.ws.ancestry())
        return best.row if best else None

    def best(self) -> Optional[float]:
        row = self.best_row()
        return row.val_bpb if row else None

    def append_row(self, row: ResultRow) -> int:
        with self.lock:
            number = len(self.rows()) + 1
            append_result(self.results_path, row)
            return number

    def describe(self, message: str, *notes: str) -> str:
        return render_description(message, notes, budget=self.s.budget, full_budget=self.s.full_budget)

    def new_log(self, commit: str) -> Path:
        return allocate_log(self.folder / RUNS_RELDIR, commit)[1]

    def _my_runs(self) -> list[dict]:
        return [r for r in self.records() if r.get("event") == "run" and isinstance(r.get("budget"), (int, float))
                and budget_key(r["budget"]) == self.key[0] and str(r.get("backend") or "") == self.key[1]]

    def runs_of(self, commit: str) -> list[Optional[float]]:
        """val_bpb of every run of `commit` with this budget and backend (None: it failed)."""
        return [r.get("val_bpb") if r.get("status") == "ok" else None
                for r in self._my_runs() if str(r.get("commit", ""))[:7] == commit[:7]]

    def runs_with_load(self, commit: str) -> list[tuple[Optional[float], Optional[float]]]:
        """(val_bpb, foreign load) of every successful run of `commit` (this budget and backend)."""
        return [(r.get("val_bpb"), r.get("machine")) for r in self._my_runs()
                if str(r.get("commit", ""))[:7] == commit[:7] and r.get("status") == "ok"]

    def early_stopper(self, best_commit: Optional[str]) -> Optional[early_stop.Stopper]:
        """Stops a first run clearly worse than the mean curve of the best's runs, with the
        margin learned from every script's repeat runs (experiment/early_stop.py)."""
        if not self.s.early_stop or not best_commit:
            return None
        by_commit: dict[str, list] = {}
        for r in self._my_runs():
            if r.get("status") == "ok" and isinstance(r.get("curve"), list) and r["curve"]:
                by_commit.setdefault(str(r.get("commit", ""))[:7], []).append(r["curve"])
        ref = early_stop.reference(by_commit.get(best_commit[:7], []))
        if ref is None:
            return None
        return early_stop.Stopper(ref, early_stop.spread(by_commit.values()))

    def noise(self) -> Optional[Noise]:
        """The pooled run-to-run noise of every script run more than once (this budget and backend)."""
        return run_noise(self.records(), self.key)

    def recorded_floor(self) -> Optional[float]:
        """The noise floor measured earlier for this budget and backend, if any."""
        if self.s.keep_rule != "noise":
            return None
        for r in reversed(self.records()):
            if (r.get("event") == "noise_floor" and r.get("budget_key") == self.key[0] and r.get("backend", "") == self.key[1]
                    and isinstance(r.get("floor"), (int, float))):
                return float(r["floor"])
        return None

    # -- events and the critical section

    def emit(self, kind: str, **fields) -> None:
        if self.on_event is None:
            return
        fields.setdefault("worker", self.worker)
        with self._emit_lock:
            self.on_event(LoopEvent(kind, cost_usd=self.report.cost_usd, **fields))

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """Workers take turns; in the main thread a stop signal waits until the block is done."""
        with self.lock:
            if threading.current_thread() is threading.main_thread():
                with self.signals.critical():
                    yield
            else:
                yield
