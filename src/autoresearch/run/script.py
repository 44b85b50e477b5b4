"""The real runner: the workspace's editable script as a subprocess, guarded."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Optional

from autoresearch.errors import ArError
from autoresearch.workspace.config import RUNS_RELDIR
from autoresearch.integrity.workspace_guard import WorkspaceGuard, compile_harness, harness_state
from autoresearch.run.probe import ForeignLoad
from autoresearch.run.process import DEFAULT_GRACE, RunResult, allocate_log, reject, run_script


class ScriptRunner:
    """Runs the workspace's editable script with run_script: a log per run in .autoresearch/runs/."""

    def __init__(self, folder: Path, *, editable: str, env: dict, budget: float, kill: float, grace: float = DEFAULT_GRACE,
                 policy=None, ctx=None, sandbox=None):
        self.folder = Path(folder)
        self.editable = editable
        self.env = dict(env)
        self.budget = budget
        self.kill = kill
        self.grace = grace
        self.policy = policy  # trust.TrustPolicy: val_bpb from the harness, checked; None: the printout
        self.ctx = ctx  # data.context.RunContext: its prepared cache is checked before and after each run
        self.sandbox = sandbox  # autoresearch.sandbox.Sandbox the script runs in; None: none
        self.network = False  # a sandboxed run reaches no network (workspace config: network = true)
        # The cache's digests when first checked (a rewritten digests.json is caught too); a
        # dict so that the copies a parallel loop makes per run share it.
        self.pins: dict = {}
        compile_harness()
        self.harness = harness_state()  # a run must not change the installed harness (integrity/workspace_guard.py)
        self.stop: Optional[threading.Event] = None  # set: the run ends as "interrupted" (parallel workers)
        # The loop runs the committed workspace only; `ar run` lets a person keep other
        # uncommitted files (what the run itself changes is undone either way).
        self.strict = True

    @classmethod
    def for_workspace(cls, folder: Path, cfg, *, budget: float, kill: float, grace: float = DEFAULT_GRACE,
                      sandbox: bool = True) -> "ScriptRunner":
        """The runner for a workspace config (autoresearch.workspace.config.WorkspaceConfig), as `ar run` runs;
        ArError when `sandbox` is asked for and this machine cannot make one."""
        from autoresearch.integrity.trust import TrustPolicy

        env = {"AUTORESEARCH_PROFILE": cfg.profile, "AUTORESEARCH_SOURCE": cfg.source, "AUTORESEARCH_BACKEND": cfg.backend}
        runner = cls(folder, editable=cfg.editable, env=env, budget=budget, kill=kill, grace=grace,
                     policy=TrustPolicy.for_config(cfg, budget), ctx=cfg.run_context(),
                     sandbox=choose_sandbox() if sandbox else None)
        runner.network = cfg.network
        return runner

    def check_cache(self) -> None:
        """ArError, with the `ar prepare` command that repairs it, when a file of the prepared
        cache is not what `ar prepare` wrote (data/digests.py)."""
        if self.ctx is None:
            return
        from autoresearch.data.digests import verify_cache

        pins = verify_cache(self.ctx, pinned=self.pins.get("digests"))
        self.pins.setdefault("digests", pins)

    def mounts(self):
        """What a sandboxed run sees: its workspace (or worktree) writable except the journal
        and git, the Python environment and the prepared data and tokenizer read-only."""
        from autoresearch.sandbox import Mounts, python_paths

        data, hidden = [], []
        if self.ctx is not None:
            data = [self.ctx.data_dir, self.ctx.tokenizer_dir]
            hidden = self.ctx.shards()[-1:]  # the judge holds the validation rows: the run never sees them
        # Bound read-only on top of the writable workspace: the run cannot touch the journal or git.
        journal = [self.folder / name for name in (".git", ".autoresearch", "results.tsv")]
        return Mounts(writable=[self.folder], readonly=[*python_paths(), *data, *journal], hidden=hidden,
                      network=self.network)

    def run(self, commit: str, *, seed: Optional[int] = None, on_progress: Optional[Callable[[dict], None]] = None) -> RunResult:
        self.check_cache()  # a changed cache would move every later number: stop before running on it
        _, log_path = allocate_log(self.folder / RUNS_RELDIR, commit)
        env = {**self.env, "AUTORESEARCH_TIME_BUDGET": f"{self.budget:g}"}
        if seed is not None:
            env["AUTORESEARCH_SEED"] = str(seed)
        # The workspace must be the committed one; whatever the run changes is undone and rejects it.
        guard = WorkspaceGuard(self.folder, self.editable, log_path, strict=self.strict, harness_baseline=self.harness)
        guard.before()
        load = ForeignLoad().start()
        result = run_script(
            self.folder / self.editable,
            sandbox=self.sandbox,
            mounts=self.mounts() if self.sandbox is not None else None,
            cwd=self.folder,
            log_path=log_path,
            env=env,
            kill_after=self.kill,
            grace=self.grace,
            on_progress=on_progress,
            policy=self.policy,
            stop=self.stop,
        )
        # How busy the machine was with other work meanwhile (run/probe.py): the keep rule compares like with like.
        result.machine = load.stop()
        damage = guard.after()
        if damage and result.status != "interrupted":
            result = reject(result, "workspace modified", "; ".join(damage))
        elif result.status != "interrupted":
            try:
                self.check_cache()
            except ArError as e:  # the run changed the cache: its number is void, and the next run refuses to start
                result = reject(result, "cache modified", str(e))
        return result


def choose_sandbox(found=None):
    """This machine's sandbox (`found`, default autoresearch.sandbox.available()), or ArError
    saying why there is none, how to enable one, and how to go without."""
    from autoresearch.sandbox import Unavailable, available

    sandbox = found if found is not None else available()
    if isinstance(sandbox, Unavailable):
        raise ArError(f"cannot sandbox the training runs: {sandbox.reason}; or run without a sandbox: --no-sandbox")
    return sandbox

