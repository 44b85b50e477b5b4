"""`ar loop`'s flags and the workspace's config, resolved once into a `LoopSession`.

The CLI maps flags to `open_loop(...)`, prints the session's header, calls `run()` and
prints the report; everything that can be wrong with the flags, the workspace, the data
or the machine is found here, before anything runs, as one ArError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from autoresearch.errors import ArError
from autoresearch.experiment.lab import EventFn, LoopReport, LoopSettings


@dataclass
class LoopSession:
    folder: Path
    cfg: object  # workspace.config.WorkspaceConfig for the run's backend
    settings: LoopSettings
    workspace: object  # workspace.git.Workspace
    proposer: object  # proposers.base.Proposer
    runner: object  # run.script.ScriptRunner
    executor: Optional[object]  # executors.local.Executor with --workers or --executor ray
    workers: int

    @property
    def parallel(self) -> bool:
        return self.executor is not None

    def run(self, on_event: Optional[EventFn] = None) -> LoopReport:
        if self.executor is not None:
            from autoresearch.loop.parallel import run_parallel

            return run_parallel(self.workspace, self.proposer, self.executor, self.settings, workers=self.workers,
                                on_event=on_event)
        from autoresearch.loop.serial import run_loop

        return run_loop(self.workspace, self.proposer, self.runner, self.settings, on_event=on_event)


def hardware_line(backend: str) -> str:
    """One line about this machine for the proposer."""
    from autoresearch.backends import detect_hardware

    described = detect_hardware().describe()
    return ", ".join(f"{k} {v}" for k, v in described.items()) + f"; backend {backend}"


def open_loop(
    folder: Path,
    *,
    proposer: Optional[str] = None,
    model: Optional[str] = None,
    base_url: Optional[str] = None,
    backend: Optional[str] = None,
    keep_rule: str = "test",  # as the CLI: the one-sided test (experiment/keep.py)
    early_stop: bool = True,
    plateau: int = 8,  # as the CLI: loop/plateau.py's PLATEAU
    sandbox: bool = True,
    budget: Optional[float] = None,
    kill: Optional[float] = None,
    max_experiments: Optional[int] = None,
    max_hours: Optional[float] = None,
    max_cost: Optional[float] = None,
    workers: int = 1,
    force_workers: bool = False,
    executor: str = "local",
    ray_address: str = "auto",
) -> LoopSession:
    from autoresearch.data.profiles import get_profile
    from autoresearch.experiment.keep import check_rule
    from autoresearch.proposers import get_proposer
    from autoresearch.run.script import ScriptRunner
    from autoresearch.workspace.config import load_config, run_settings
    from autoresearch.workspace.git import Workspace

    folder = Path(folder).resolve()
    check_rule(keep_rule)
    cfg, run_budget, run_kill = run_settings(load_config(folder), budget=budget, kill=kill, backend=backend)
    if executor == "local":  # with Ray the nodes run everything; their data is checked on each
        cfg.run_context().check_prepared()
    ws = Workspace.open(folder)
    if ws.branch is None:
        raise ArError(f"{folder} is on a detached HEAD; check out the run's branch (autoresearch/{cfg.tag}) first")
    chosen = get_proposer(proposer, model=model, base_url=base_url)
    prof = get_profile(cfg.profile)
    settings = LoopSettings(
        editable=cfg.editable, budget=run_budget, full_budget=cfg.budget, backend=cfg.backend, keep_rule=keep_rule,
        early_stop=early_stop, plateau=plateau, max_experiments=max_experiments, max_hours=max_hours, max_cost=max_cost, hardware=hardware_line(cfg.backend),
        profile=f"{prof.name}: MAX_SEQ_LEN={prof.max_seq_len} TIME_BUDGET={run_budget:g} s "
        f"EVAL_TOKENS={prof.eval_tokens} VOCAB_SIZE={prof.vocab_size}, data {cfg.source}",
    )
    # With Ray the nodes make their own sandbox (a machine without one may still drive them)
    runner = ScriptRunner.for_workspace(folder, cfg, budget=run_budget, kill=run_kill, sandbox=sandbox and executor == "local")
    pool = None
    if workers > 1 or executor != "local":  # worktrees per worker; see loop/parallel.py
        from autoresearch.executors.local import make_executor

        pool = make_executor(folder, cfg, runner, workers=workers, executor=executor, ray_address=ray_address,
                             force=force_workers, sandbox=sandbox)
    else:
        from autoresearch.workspace.worktrees import prune_stale_worktrees

        prune_stale_worktrees(folder)  # left by a dead `ar loop --workers`
    return LoopSession(folder, cfg, settings, ws, chosen, runner, pool, workers)
