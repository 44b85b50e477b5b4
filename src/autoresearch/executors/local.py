"""Executors: where a worker's run executes. `LocalExecutor` runs the workspace's ScriptRunner
in the worker's worktree with its device share; `--executor ray` is executors/ray.py."""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path
from typing import Optional, Protocol

from autoresearch.errors import ArError
from autoresearch.executors.devices import WorkerPlan, plan_workers
from autoresearch.run.process import ProgressCallback, RunResult, allocate_log
from autoresearch.run.script import ScriptRunner
from autoresearch.workspace.config import RUNS_RELDIR

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
    force: bool = False, hardware=None, sandbox: bool = True,
) -> Executor:
    """The executor `ar loop --executor` names; Ray is imported only for "ray"."""
    if executor == "local":
        if hardware is None:
            from autoresearch.backends import detect_hardware

            hardware = detect_hardware()
        return LocalExecutor(folder, base, plan_workers(cfg.backend, workers, hardware, force=force))
    if executor == "ray":
        from autoresearch.executors.ray import RayExecutor

        return RayExecutor(folder, cfg, base, workers=workers, address=ray_address, sandbox=sandbox)
    raise ArError(f"unknown executor {executor!r}; use local or ray")
