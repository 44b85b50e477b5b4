"""`ar loop --executor ray`: each run is a Ray task on whatever node Ray picks.

What travels to the node: the editable script as the worker committed it, the
workspace config (.autoresearch/config.toml), the run budget and seed, and the thread
variables. The task writes the files into a fresh git repository in a temporary folder
there and runs them with the workspace's ScriptRunner, as `ar run` would on that node
(guards, the trust policy, its own process group, the hard kill), using the node's
prepared data cache; it returns the result and the whole log text. This machine writes
the log into .autoresearch/runs/, the row into results.tsv and moves the branch: git
and the results never leave it.

Each task asks for one GPU (backend cuda; Ray sets CUDA_VISIBLE_DEVICES), one
`apple_gpu` custom resource (backend mps, or mlx on a Mac: start those nodes with
`ray start --resources='{"apple_gpu": 1}'`), or on CPUs an even share of the
cluster's CPUs (num_cpus, and OMP_NUM_THREADS / MKL_NUM_THREADS to match).

Every node that could run a task needs the same autoresearch version
(`pip install autoresearch`, plus torch or mlx) and the prepared data: `ar prepare` on
each node, or one cache on a shared filesystem named by AUTORESEARCH_CACHE in the
environment `ray start` runs in. At start a small task on each such node checks both
(`load_context().check_prepared()` with the workspace config, and the package version);
the first node that fails is named in one error line.

Stopping: Ctrl-C cancels the tasks (`ray.cancel` raises KeyboardInterrupt in the task,
and `run_script` stops the script's process group). Progress lines are not streamed
back; the log arrives with the result.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Optional

from autoresearch import __version__
from autoresearch.data.context import CONFIG_RELPATH
from autoresearch.errors import ArError
from autoresearch.workspace.config import RUNS_RELDIR
from autoresearch.run.script import ScriptRunner
from autoresearch.executors.devices import thread_env
from autoresearch.run.process import RunResult, allocate_log

CHECK_TIMEOUT_S = 120.0  # the node check: a node that does not answer by then is named
APPLE_GPU = "apple_gpu"  # the custom resource Mac nodes declare


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ArError("--executor ray needs Ray on this machine and on every node: pip install 'autoresearch[ray]'") from None
    return ray


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_task(editable: str, text: str, config_text: str, env: dict, budget: float, kill_after: float, grace: float,
             seed: Optional[int], sandbox: bool = True) -> dict:
    """The body of one Ray task (runs on the node): the files into a fresh git repository in a
    temporary folder, then the workspace's ScriptRunner there, exactly as `ar run` would
    (guards, trust policy with the node's cache, hard kill); the result and the log back."""
    import dataclasses
    import signal
    import socket
    import tempfile

    from autoresearch.workspace.config import load_config
    from autoresearch.run.script import ScriptRunner
    from autoresearch.workspace.editable import write_editable
    from autoresearch.workspace.git import Workspace

    with tempfile.TemporaryDirectory(prefix="autoresearch-run-") as tmp:
        folder = Path(tmp)
        (folder / CONFIG_RELPATH).parent.mkdir(parents=True)
        (folder / CONFIG_RELPATH).write_text(config_text, encoding="utf-8")
        (folder / ".gitignore").write_text("results.tsv\n.autoresearch/runs/\n", encoding="utf-8")
        write_editable(folder, editable, text)
        ws = Workspace.init(folder)
        ws.ensure_identity()
        commit = ws.commit([editable, ".gitignore", str(CONFIG_RELPATH)], "autoresearch: the run's files")
        cfg = load_config(folder)  # the run's backend and script, which `--backend` may have changed
        cfg = dataclasses.replace(cfg, backend=env.get("AUTORESEARCH_BACKEND", cfg.backend), editable=editable)
        # The node's own sandbox (the same mounts as on this machine); none there is an error on that node
        runner = ScriptRunner.for_workspace(folder, cfg, budget=budget, kill=kill_after, grace=grace, sandbox=sandbox)
        runner.env.update(env)
        # ray.cancel interrupts the task like Ctrl-C; a worker started from a shell that
        # ignores SIGINT (nohup, a background job) would ignore it: listen for this run.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            r = runner.run(commit, seed=seed)
        finally:
            signal.signal(signal.SIGINT, previous)
        log = r.log_path.read_text(encoding="utf-8", errors="replace")
    out = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "log_path"}
    return {**out, "log": log, "node": socket.gethostname()}


def node_check_fn():
    """The node check, made inside a function so Ray ships it by value: it must run (and
    say what is missing) on a node where autoresearch cannot even be imported."""

    def check(config_text: str, version: str) -> tuple[str, Optional[str]]:
        import socket
        import tempfile
        from pathlib import Path

        host = socket.gethostname()
        try:
            import autoresearch
            from autoresearch.data.context import load_context
        except ImportError:
            return host, f"lacks the autoresearch package: run `pip install autoresearch=={version}` there"
        if autoresearch.__version__ != version:
            return host, (f"has autoresearch {autoresearch.__version__} but this machine has {version}: "
                          f"install autoresearch=={version} on every node")
        with tempfile.TemporaryDirectory(prefix="autoresearch-check-") as tmp:
            path = Path(tmp) / ".autoresearch" / "config.toml"
            path.parent.mkdir(parents=True)
            path.write_text(config_text, encoding="utf-8")
            try:
                load_context(Path(tmp)).check_prepared()
            except Exception as e:  # ArError names the `ar prepare` command
                return host, (f"lacks the prepared data: {e} (or point AUTORESEARCH_CACHE at a shared cache "
                              "in the environment `ray start` runs in)")
        return host, None

    return check


class RayExecutor:
    """Runs each experiment as a Ray task (see the module doc)."""

    def __init__(self, folder: Path, cfg, base: ScriptRunner, *, workers: int, address: str = "auto", check: bool = True,
                 sandbox: bool = True):
        self.ray = ray = _import_ray()
        self.sandbox = sandbox  # each node runs its task in its own sandbox (refused on a node without one)
        self.folder = Path(folder)
        self.base = base
        self.editable = base.editable
        self.config_text = (self.folder / CONFIG_RELPATH).read_text(encoding="utf-8")
        self.address = address
        self.nodes: Optional[int] = None  # nodes that passed the check
        self.own = False  # we started (or connected) Ray, so we shut it down (disconnect) at the end
        if not ray.is_initialized():
            self._connect(address, workers)
        try:
            self.resources, self.env = self._resources(cfg.backend, workers)
            self.env = {**self.env, "AUTORESEARCH_BACKEND": cfg.backend}  # the run's backend (`--backend`)
            if check:
                self.check_nodes()
        except BaseException:
            self.close()
            raise
        self.task = ray.remote(run_task)

    def _connect(self, address: str, workers: int) -> None:
        ray = self.ray
        quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            if address == "local":  # a Ray instance inside this process, sized for this machine
                ray.init(num_cpus=max(workers, os.cpu_count() or 1), **quiet)
            else:
                ray.init(address=address, **quiet)
        except Exception as e:
            raise ArError(
                f"cannot connect to the Ray cluster at {address!r}: {_first_line(e)}; start it with `ray start --head` "
                "(and `ray start --address <head>:6379` on each node), or pass --ray-address local for one machine"
            ) from None
        self.own = True

    def _resources(self, backend: str, workers: int) -> tuple[dict, dict]:
        """What each task asks Ray for, and the thread variables of its runs."""
        total = self.ray.cluster_resources()
        if backend == "cuda":
            if total.get("GPU", 0) < 1:
                raise ArError("the workspace's backend is cuda but the Ray cluster has no GPU; start the GPU nodes with `ray start`")
            return {"num_gpus": 1, "num_cpus": 1}, {}
        if backend == "mps" or (backend == "mlx" and sys.platform == "darwin"):
            if total.get(APPLE_GPU, 0) < 1:
                raise ArError(
                    f"the workspace's backend is {backend} but no Ray node offers an Apple GPU; start each Mac with "
                    f"`ray start ... --resources='{{\"{APPLE_GPU}\": 1}}'`"
                )
            return {"resources": {APPLE_GPU: 1}, "num_cpus": 1}, {}
        biggest = max((n["Resources"].get("CPU", 0) for n in self.ray.nodes() if n.get("Alive")), default=0)
        threads = int(max(1, min(biggest, total.get("CPU", 1) // workers)))
        return {"num_cpus": threads}, thread_env(threads)

    def _fits(self, node: dict) -> bool:
        have = node.get("Resources", {})
        need = {"GPU": self.resources.get("num_gpus", 0), "CPU": self.resources.get("num_cpus", 0), **self.resources.get("resources", {})}
        return node.get("Alive", False) and all(have.get(k, 0) >= v for k, v in need.items() if v)

    def check_nodes(self) -> None:
        """A small task on every node that could run ours: package version and prepared data."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in ray.nodes() if self._fits(n)]
        if not nodes:
            raise ArError(f"no node of the Ray cluster has the resources one run needs ({self._need()})")
        check = ray.remote(node_check_fn())
        refs = {
            check.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                self.config_text, __version__
            ): n
            for n in nodes
        }
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=CHECK_TIMEOUT_S)
        problems = [(refs[r].get("NodeManagerAddress", "?"), f"did not answer the check within {CHECK_TIMEOUT_S:g} s") for r in pending]
        for r in ready:
            where = refs[r].get("NodeManagerAddress", "?")
            try:
                host, problem = ray.get(r)
            except Exception as e:
                host, problem = where, f"failed the check: {_first_line(e)}"
            if problem:
                problems.append((f"{host} ({where})" if host != where else where, problem))
        for r in pending:
            ray.cancel(r)
        if problems:
            (node, problem), more = problems[0], len(problems) - 1
            also = f" ({more} more node{'s' if more > 1 else ''} too)" if more else ""
            raise ArError(f"Ray node {node} {problem}{also}")
        self.nodes = len(nodes)

    def _need(self) -> str:
        r = self.resources
        parts = [f"{r['num_gpus']} GPU"] if r.get("num_gpus") else []
        parts += [f"{v} {k}" for k, v in r.get("resources", {}).items()]
        parts.append(f"{r.get('num_cpus', 1)} CPU")
        return ", ".join(parts)

    def describe(self) -> str:
        total = self.ray.cluster_resources()
        gpus = f", {total.get('GPU', 0):g} GPUs" if total.get("GPU") else ""
        return f"Ray tasks ({self.address}: {self.nodes or '?'} nodes checked, {total.get('CPU', 0):g} CPUs{gpus}); each asks for {self._need()}"

    def label(self, slot: int) -> str:
        return f"w{slot + 1}"

    def run(self, slot, tree, commit, *, seed, on_progress, stop: threading.Event):
        ray = self.ray
        text = (Path(tree) / self.editable).read_text(encoding="utf-8")
        ref = self.task.options(**self.resources).remote(
            self.editable, text, self.config_text, self.env, self.base.budget, self.base.kill, self.base.grace, seed,
            self.sandbox,
        )
        try:
            while not ray.wait([ref], timeout=0.2)[0]:
                if stop.is_set():
                    ray.cancel(ref)
                    break
        except BaseException:  # Ctrl-C in the main thread: stop the task, then let the loop abandon it
            ray.cancel(ref)
            self._collect(ref, commit, stop_hint=True)
            raise
        result, node = self._collect(ref, commit, stop_hint=stop.is_set())
        return result, f"{self.label(slot)}@{node}"

    def _collect(self, ref, commit: str, stop_hint: bool) -> tuple[RunResult, str]:
        """The task's result with its log written to .autoresearch/runs/, and the node it ran on."""
        ray = self.ray
        _, log_path = allocate_log(self.folder / RUNS_RELDIR, commit)
        try:
            if stop_hint and not ray.wait([ref], timeout=self.base.grace + 30)[0]:
                ray.cancel(ref, force=True)  # the task did not stop when asked: end its worker process
            out = ray.get(ref, timeout=None if not stop_hint else self.base.grace + 30)
        except Exception as e:
            why = f"the Ray task failed: {_first_line(e)}"
            log_path.write_text(f"{why}\n{e}\n", encoding="utf-8")
            status = "interrupted" if stop_hint else "crash"
            return RunResult(status, None, 0.0, 0.0, {}, why, log_path, [why]), "?"
        log_path.write_text(out.pop("log"), encoding="utf-8")
        node = out.pop("node")
        return RunResult(log_path=log_path, **out), node

    def close(self) -> None:
        if self.own and self.ray.is_initialized():
            self.ray.shutdown()
            self.own = False
