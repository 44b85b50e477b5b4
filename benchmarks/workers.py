"""Experiments per hour with 1 and 2 workers (`ar loop --workers N`) on this machine.

    python benchmarks/workers.py [--budget 10] [--experiments 4] [--workers 1 2]

For each worker count: a fresh workspace (`ar init`, the real template train.py, tiny
profile, built-in data, CPU backend), the baseline, then N experiments of the offline
proposer under the strict keep rule (no noise-floor runs). One worker is plain
`ar loop` (torch uses every core); N workers split the cores (OMP_NUM_THREADS =
cores // N). Printed side by side:

  exp/hour     experiments / wall time of the experiment phase (from the end of the
               baseline to the end of the last experiment), x 3600
  run s        mean wall time of one run (start-up, training budget, evaluation)
  steps        mean training steps per run (what the thread split costs each run)
  overhead s   scheduling overhead per experiment: workers x phase wall time minus the
               runs' own wall time, divided by the experiments (worker time spent
               proposing, committing, judging, moving worktrees, or idle)

Uses AUTORESEARCH_CACHE when set, else a throw-away cache (the built-in corpus is
prepared into it: about a second).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def bench(root: Path, workers: int, budget: float, experiments: int) -> dict:
    from autoresearch.data.profiles import get_profile
    from autoresearch.workspace.config import RUNS_RELDIR, load_config
    from autoresearch.workspace.init import init_workspace
    from autoresearch.experiment.lab import LoopSettings
    from autoresearch.run.script import ScriptRunner
    from autoresearch.loop.serial import run_loop
    from autoresearch.executors.local import make_executor
    from autoresearch.loop.parallel import run_parallel
    from autoresearch.proposers.offline import OfflineProposer
    from autoresearch.journal.files import read_results, read_run_records
    from autoresearch.workspace.git import Workspace

    folder = root / f"workers{workers}"
    init_workspace(folder, f"bench{workers}", backend="cpu", profile="tiny", budget=budget, kill=budget * 10 + 120)
    cfg = load_config(folder)
    prof = get_profile(cfg.profile)
    settings = LoopSettings(editable=cfg.editable, budget=budget, full_budget=budget, keep_rule="strict",
                            max_experiments=experiments, hardware="cpu", profile=prof.name)
    ws = Workspace.open(folder)
    runner = ScriptRunner.for_workspace(folder, cfg, budget=budget, kill=cfg.kill)
    marks: dict[str, float] = {}

    def on_event(e) -> None:
        if e.kind == "finished" and e.run_kind == "baseline":
            marks["start"] = time.monotonic()
        elif e.kind == "finished":
            print(f"  [{workers} worker{'s' if workers > 1 else ''}] {e.worker or 'w1'} {e.status:7} "
                  f"{e.val_bpb or 0:.6f}  {e.description}", flush=True)

    if workers == 1:
        report = run_loop(ws, OfflineProposer(), runner, settings, on_event=on_event)
    else:
        executor = make_executor(folder, cfg, runner, workers=workers)
        report = run_parallel(ws, OfflineProposer(), executor, settings, workers=workers, on_event=on_event)
    phase = time.monotonic() - marks["start"]
    runs = [r for r in read_run_records(folder / RUNS_RELDIR / "runs.jsonl") if r.get("event") == "run"]
    base = next(r for r in runs if r["kind"] == "baseline")
    exp_runs = [r for r in runs if r["kind"] in ("experiment", "confirm")]
    steps = [r["summary"].get("num_steps") for r in exp_runs if isinstance(r.get("summary", {}).get("num_steps"), (int, float))]
    rows = read_results(folder / "results.tsv")
    return {
        "workers": workers,
        "experiments": report.experiments,
        "phase_s": phase,
        "per_hour": report.experiments / phase * 3600,
        "run_s": statistics.mean(r["seconds"] for r in exp_runs),
        "steps": statistics.mean(steps) if steps else float("nan"),
        "overhead_s": (workers * phase - sum(r["seconds"] for r in exp_runs)) / max(1, report.experiments),
        "baseline": base.get("val_bpb") or float("nan"),
        "best": min((r.val_bpb for r in rows if r.status == "keep"), default=float("nan")),
        "crashed": report.crashed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=10.0, help="training seconds per run (default 10)")
    ap.add_argument("--experiments", type=int, default=4, help="experiments per worker count (default 4)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare (default 1 2)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="ar-bench-workers-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("AUTORESEARCH_CACHE", str(root / "cache"))
        from autoresearch.data.prepare import prepare_data
        from autoresearch.data.profiles import get_profile

        prof = get_profile("tiny")
        prepare_data(prof.source, prof)
        print(f"cores {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}, "
              f"budget {args.budget:g} s, {args.experiments} experiments per worker count (tiny profile, template train.py)")
        results = [bench(root, n, args.budget, args.experiments) for n in args.workers]

    head = f"{'workers':>7} {'exp':>4} {'phase s':>8} {'exp/hour':>9} {'run s':>6} {'steps':>6} {'overhead s':>10} " \
           f"{'baseline':>9} {'best':>9} {'crashed':>7}"
    print()
    print(head)
    for r in results:
        print(f"{r['workers']:>7} {r['experiments']:>4} {r['phase_s']:>8.1f} {r['per_hour']:>9.0f} {r['run_s']:>6.1f} "
              f"{r['steps']:>6.1f} {r['overhead_s']:>10.2f} {r['baseline']:>9.6f} {r['best']:>9.6f} {r['crashed']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
