"""`ar run`: the one experiment function with no proposal, on the commit checked out.

The run is judged exactly as the loop judges it (`run_experiment`: the keep rule, a
confirmation run when it asks for one, the best of the same budget and backend on the
branch) and recorded in the same runs.jsonl records. As in upstream's manual loop nothing
is reset: a person (or agent) who committed the experiment resets a discard.

A script with uncommitted changes runs but gets no row (the row would name the wrong
commit): only a "run" record with `dirty`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from autoresearch.errors import ArError
from autoresearch.workspace.config import load_config, run_settings
from autoresearch.experiment.keep import DEFAULT_KEEP_RULE, check_rule
from autoresearch.experiment.lab import EventFn, Lab, LoopSettings
from autoresearch.experiment.recovery import recover
from autoresearch.run.process import RunResult
from autoresearch.run.script import ScriptRunner
from autoresearch.workspace.git import Workspace
from autoresearch.experiment.checkouts import InPlace
from autoresearch.experiment.step import INTERRUPTS, Abandoned, run_experiment


@dataclass
class RunOutcome:
    commit: str  # the short hash that ran
    result: RunResult  # its (last) run
    recorded: Optional[str]  # keep | discard | crash as written to results.tsv; None if not written
    note: str  # why it was recorded that way, or why not at all
    best_before: Optional[float]  # the best of this budget and backend on the branch before it
    description: str
    budget: float
    backend: str


def run_once(
    folder: Path,
    *,
    budget: Optional[float] = None,
    kill: Optional[float] = None,
    description: Optional[str] = None,
    backend: Optional[str] = None,
    keep_rule: str = DEFAULT_KEEP_RULE,
    early_stop: bool = True,
    sandbox: bool = True,
    on_event: Optional[EventFn] = None,
    grace: Optional[float] = None,
) -> RunOutcome:
    """Run the checked-out commit's script once (and once more if the keep rule asks) and record it."""
    folder = Path(folder).resolve()
    check_rule(keep_rule)
    cfg, run_budget, run_kill = run_settings(load_config(folder), budget=budget, kill=kill, backend=backend)
    cfg.run_context().check_prepared()
    ws = Workspace.open(folder)
    if not (folder / cfg.editable).is_file():
        raise ArError(f"the script of backend {cfg.backend}, {cfg.editable}, is missing from {folder}; "
                      f"restore it with `git checkout -- {cfg.editable}`")
    commit = ws.head_commit()
    if commit is None:
        raise ArError(f"{folder} has no commit yet; run `ar init <tag>` first")
    settings = LoopSettings(editable=cfg.editable, budget=run_budget, full_budget=cfg.budget, backend=cfg.backend,
                            keep_rule=keep_rule, early_stop=early_stop)
    lab = Lab(ws, settings, on_event=on_event)
    extra = {} if grace is None else {"grace": grace}
    runner = ScriptRunner.for_workspace(folder, cfg, budget=run_budget, kill=run_kill, sandbox=sandbox, **extra)
    runner.strict = False  # a person may have other uncommitted files; the script itself must be committed
    with lab.signals:
        with lab.critical():
            recover(lab)  # a dead `ar loop` may have left an experiment open
        rows = lab.rows()
        best = lab.best()
        if ws.is_dirty([cfg.editable]):
            return _dirty_run(lab, runner, cfg.editable, commit, best, description or ws.commit_subject())
        message = description or ("baseline" if best is None else ws.commit_subject())
        try:
            outcome = run_experiment(lab, InPlace(ws, reset_discards=False), runner, None, number=len(rows) + 1,
                                     rows_before=len(rows), floor=lab.recorded_floor(), kind="run", message=message)
        except INTERRUPTS as e:
            result = e.result if isinstance(e, Abandoned) and e.result else _nothing(lab, commit)
            return RunOutcome(commit, result, None, "interrupted", best, lab.describe(message), run_budget, cfg.backend)
    note = outcome.decision.reason
    if outcome.status == "crash":
        failed = next((r for r in outcome.results if r.status != "ok"), outcome.results[-1])
        note = {"timeout": f"killed at the hard limit ({run_kill:g} s)", "rejected": failed.reason}.get(
            failed.status, "the script ended without a val_bpb")
    return RunOutcome(commit, outcome.results[-1], outcome.status, note, best, outcome.description, run_budget, cfg.backend)


def _nothing(lab: Lab, commit: str) -> RunResult:
    return RunResult("interrupted", None, 0.0, 0.0, {}, "interrupted by the user", lab.new_log(commit))


def _dirty_run(lab: Lab, runner: ScriptRunner, editable: str, commit: str, best: Optional[float], message: str) -> RunOutcome:
    """Run a script with uncommitted changes (the runner is not strict: what the run itself
    changes is still undone); a "run" record with `dirty`, no row."""
    def progress(fields: dict) -> None:
        lab.emit("progress", commit=commit, run_kind="run", progress=fields)

    lab.emit("run_started", commit=commit, run_kind="run", description=message)
    result = runner.run(commit, on_progress=progress)
    lab.record("run", kind="run", commit=commit, dirty=True, status=result.status, val_bpb=result.val_bpb,
               memory_gb=result.memory_gb, seconds=round(result.seconds, 3), reason=result.reason, budget=lab.s.budget,
               backend=lab.s.backend, log=str(result.log_path), summary=result.summary, rejection=result.rejection or None,
               machine=result.machine)
    note = "interrupted" if result.status == "interrupted" else f"{editable} has uncommitted changes (commit, then run again)"
    return RunOutcome(commit, result, None, note, best, lab.describe(message), lab.s.budget, lab.s.backend)
