"""How `ar loop --workers N` shares this machine: one NVIDIA GPU per worker, an even share of
the CPU threads, or (only when forced) several runs on one Apple GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

from autoresearch.errors import ArError

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
