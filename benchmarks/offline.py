"""Does the default offline proposer (optuna) improve val_bpb beyond the noise within 20
experiments from a fresh workspace on the tiny profile?

    python benchmarks/offline.py [--budget 60] [--experiments 20] [--proposer optuna] [--threads N] [--plateau N]
                                 [--json] [--dir DIR]
    python benchmarks/offline.py --synthetic [--reps 40]

Real (the issue's done-when): a fresh workspace (init_workspace, as `ar init`: tiny profile,
built-in data, CPU, the template train.py, `--budget` s of training), the loop as `ar loop
-n 20` builds it (session.open_loop: the real ScriptRunner, keep rule `test`, early stopping)
with the named proposer; then the baseline commit and the final best commit re-run to the end
under AUTORESEARCH_SEED 101-103, interleaved (so a change of load hits both alike), with the
discarded experiment of the lowest val_bpb (a gain the keep rule may have missed). Printed:
baseline and best mean +- sd, the loop's pooled noise estimate, the foreign load, the
improvement and whether it exceeds 2 x the pooled sd of the re-measures, the same for the
lowest discard, experiments, wall time. About 40 minutes at 60 s here (2 cores); on a shared
machine --threads 1 keeps the runs steadier (benchmarks/research.py). Exit code 0 whatever
the figures.

Synthetic (--synthetic, a minute or two): the sampler choices of proposers/tuner.py compared on a
noisy objective over the template's constants with a known better region (smaller batch,
DEPTH 1, a higher UNEMBEDDING_LR; crashes where the script's batch assert fails; Gaussian
noise, sd 0.008), each played for 20 experiments after a baseline under the loop's own `test`
rule (experiment/keep.py: decide_test, with the noise pooled from the runs so far, confirmation
runs, re-runs of the best). Printed per choice: the true improvement of the final best (mean over --reps seeded repetitions), how
often it exceeds 2 x the noise sd, false keeps and crashes.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

SEEDS = (101, 102, 103)
WARMUP_ALLOWANCE = 60.0  # as benchmarks/research.py: a loaded machine's untimed first steps are slow
NOISE = 0.008  # synthetic run-to-run sd of val_bpb

# -- synthetic ----------------------------------------------------------------------------


def true_bpb(v: dict[str, float]) -> Optional[float]:
    """The synthetic objective (None: the run crashes as the script's batch assert would)."""
    rows, total = v["DEVICE_BATCH_SIZE"], v["TOTAL_BATCH_SIZE"]
    if rows * 256 > total or total % (rows * 256):
        return None
    lg = math.log2
    return (1.60 + 0.04 * (v["DEPTH"] - 1.2) ** 2 + 0.05 * (lg(total) - 10.8) ** 2 + 0.03 * lg(total / (rows * 256))
            + 0.035 * (lg(v["UNEMBEDDING_LR"] / 0.004) - 1) ** 2 + 0.005 * (lg(v["MATRIX_LR"] / 0.04) - 0.5) ** 2
            + 0.002 * (lg(v["EMBEDDING_LR"] / 0.6) + 0.5) ** 2 + 0.07 * lg(v["ASPECT_RATIO"] / 64) ** 2
            + 0.01 * lg(v["HEAD_DIM"] / 64) ** 2 + 0.003 * lg(v["WEIGHT_DECAY"] / 0.2) ** 2
            + 0.1 * v["WARMUP_RATIO"] + 0.1 * (v["WARMDOWN_RATIO"] - 0.6) ** 2 + 0.05 * v["FINAL_LR_FRAC"])


def simulate(make, template: str, rng: random.Random, n: int = 20) -> dict:
    """One loop of n experiments after the baseline; the true value of each keep."""
    from autoresearch.proposers.base import HistoryItem, NoProposal, ProposalContext
    from autoresearch.experiment.keep import Noise, decide_test
    from autoresearch.proposers.offline import find_constants

    def truth(text: str):
        return true_bpb({c.name: float(c.value) for c in find_constants(text)})

    proposer = make()
    best_text, f0 = template, truth(template)
    best_runs = [f0 + rng.gauss(0, NOISE)]
    history = [HistoryItem(1, "c1", best_runs[0], "keep", "baseline", text=template)]
    false_keeps = crashes = 0
    scripts: list[list[float]] = []  # the runs of every script that is not the best
    for i in range(n):
        ctx = ProposalContext("", "train.py", best_text, tuple(history), statistics.mean(best_runs), "", "")
        try:
            p = proposer.propose(ctx)
        except NoProposal:
            break
        f = truth(p.new_text)
        if f is None:
            crashes += 1
            history.append(HistoryItem(i + 2, f"c{i + 2}", 0.0, "crash", p.description, text=p.new_text, outcome="crashed"))
            continue
        runs = [f + rng.gauss(0, NOISE)]
        groups = scripts + [best_runs, runs]  # the journal's runs, one group per script, as run_noise pools them
        while True:  # the loop's own `test` rule: a promising result runs again, up to 3 times
            d = decide_test(best_runs, runs, Noise.pooled(groups))
            if d.action != "confirm":
                break
            runs.append(f + rng.gauss(0, NOISE))
        if d.remeasure:  # the loop runs the best once more
            best_runs.append(truth(best_text) + rng.gauss(0, NOISE))
        keep = d.action == "keep"
        if not keep:
            scripts.append(runs)
        history.append(HistoryItem(i + 2, f"c{i + 2}", statistics.mean(runs), "keep" if keep else "discard",
                                   p.description, text=p.new_text, runs=tuple(runs)))
        if keep:
            false_keeps += f >= truth(best_text)
            scripts.append(best_runs)
            best_text, best_runs = p.new_text, runs
    return {"gain": f0 - truth(best_text), "false_keeps": false_keeps, "crashes": crashes}


def choices() -> dict:
    from autoresearch.proposers.offline import OfflineProposer
    from autoresearch.proposers.tuner import OptunaProposer as O

    R = 10**6  # start-up trials never over: the sampler stays random
    return {
        "offline coordinate search": lambda s: OfflineProposer(seed=s),
        "random, all constants": lambda s: O(s, n_startup_trials=R, subspace=None),
        "TPE defaults (10 random, independent)": lambda s: O(s, n_startup_trials=10, subspace=None, multivariate=False),
        "TPE multivariate, anchor, all constants": lambda s: O(s, subspace=None),
        "TPE multivariate, anchor, all, ranges x/2 +-1": lambda s: O(s, subspace=None, spread=2.0),
        "random, 1-3 least varied": lambda s: O(s, n_startup_trials=R, subspace=3),
        "random, 1 least varied": lambda s: O(s, n_startup_trials=R, subspace=1),
        "TPE, 1-3 random constants": lambda s: O(s, subspace=3, order="random"),
        "TPE, 1-3 least varied": lambda s: O(s, subspace=3),
        "TPE, 1-3 least varied, ranges x/2 +-1": lambda s: O(s, subspace=3, spread=2.0),
        "TPE, 1-2 least varied (the default)": lambda s: O(s),
        "TPE, 1-2 least varied, ranges x/2 +-1": lambda s: O(s, spread=2.0),
        "TPE, 1 least varied": lambda s: O(s, subspace=1),
    }


def synthetic(reps: int, only: Optional[list[str]] = None) -> dict:
    template = (Path(__file__).resolve().parents[1] / "src/autoresearch/templates/train.py").read_text()
    chosen = {k: v for k, v in choices().items() if not only or any(o in k for o in only)}
    out = {}
    for name, make in chosen.items():
        t0 = time.monotonic()
        res = [simulate(lambda: make(r), template, random.Random(1000 + r)) for r in range(reps)]
        gains = [r["gain"] for r in res]
        out[name] = {"gain_mean": statistics.mean(gains), "gain_sd": statistics.stdev(gains),
                     "beyond_noise": sum(g > 2 * NOISE for g in gains) / reps,
                     "false_keeps": statistics.mean(r["false_keeps"] for r in res),
                     "crashes": statistics.mean(r["crashes"] for r in res), "seconds": time.monotonic() - t0}
        o = out[name]
        print(f"  {name:42} gain {o['gain_mean']:.4f} +- {o['gain_sd']:.4f}  > 2 sd: {o['beyond_noise']:4.0%}  "
              f"false keeps {o['false_keeps']:.2f}  crashes {o['crashes']:.2f}  ({o['seconds']:.0f} s)", flush=True)
    return out


# -- real ---------------------------------------------------------------------------------


def run_loop(root: Path, proposer: str, budget: float, experiments: int, plateau: Optional[int] = None):
    from autoresearch.data.context import CONFIG_RELPATH
    from autoresearch.session import open_loop
    from autoresearch.workspace.config import load_config, write_config
    from autoresearch.workspace.git import Workspace
    from autoresearch.workspace.init import init_workspace
    import dataclasses

    folder = root / "ws"
    init_workspace(folder, "bench-offline", backend="cpu", profile="tiny", budget=budget)
    write_config(folder, dataclasses.replace(load_config(folder), warmup_allowance=WARMUP_ALLOWANCE))
    Workspace.open(folder).commit([str(CONFIG_RELPATH)], "benchmark: warm-up allowance")
    # As `ar loop --proposer P -n N` builds it: keep rule `test`, early stopping.
    extra = {} if plateau is None else {"plateau": plateau}  # loop/plateau.py's modes (combine, ablate, branch)
    session = open_loop(folder, proposer=proposer, max_experiments=experiments, **extra)

    def show(e) -> None:
        if e.kind == "finished":
            study = getattr(session.proposer, "last_study", None)  # what the proposal was sampled from
            states = "" if study is None or e.run_kind == "baseline" else " [study: " + ", ".join(
                f"{n} {k.name.lower()}" for k, n in collections.Counter(t.state for t in study.trials).items()) + "]"
            print(f"  {e.number:>2} {e.status:7} {e.val_bpb or 0:.6f} best {e.best or 0:.6f}  {e.description[:90]}"
                  f"{states}  | {e.note[:80]}", flush=True)
        elif e.kind in ("noise", "no_proposal"):
            print(f"     {e.kind}: {e.note[:120]}", flush=True)

    t0 = time.monotonic()
    report = session.run(on_event=show)
    if report.interrupted:
        raise KeyboardInterrupt
    return session, report, time.monotonic() - t0


def run_commit(session, commit: str, seed: int):
    """One run of `commit` to the end (no early stop, nothing journalled), checked out detached."""
    ws = session.workspace
    branch = ws.branch
    ws.checkout(commit)
    try:
        return session.runner.run(commit, seed=seed)
    finally:
        ws.checkout(branch)


def real(args) -> dict:
    from autoresearch.data.prepare import prepare_data
    from autoresearch.data.profiles import get_profile
    from autoresearch.experiment.keep import run_noise
    from autoresearch.journal.files import read_run_records
    from autoresearch.journal.queries import budget_key
    from autoresearch.workspace.config import RUNS_RELDIR

    with tempfile.TemporaryDirectory(prefix="ar-bench-offline-") as tmp:
        root = args.dir.resolve() if args.dir else Path(tmp)
        os.environ.setdefault("AUTORESEARCH_CACHE", str(root / "cache"))
        prepare_data(get_profile("tiny").source, get_profile("tiny"))
        session, report, wall = run_loop(root, args.proposer, args.budget, args.experiments, args.plateau)
        records = read_run_records(session.folder / RUNS_RELDIR / "runs.jsonl")
        finished = [r for r in records if r.get("event") == "finished" and r.get("kind") == "experiment"]
        runs = [r for r in records if r.get("event") == "run"]
        baseline = next(r["commit"] for r in records if r.get("event") == "finished" and r.get("kind") == "baseline")
        best = report.best_commit or baseline
        s = session.settings
        noise = run_noise(records, (budget_key(s.budget), s.backend))
        # The lowest val_bpb the loop saw and did not keep: did the proposer find a gain the keep rule missed?
        seen = [f for f in finished if f["status"] == "discard" and (f.get("val_bpb") or 0) > 0]
        top = min(seen, key=lambda f: f["val_bpb"], default=None)
        values: dict[str, list] = {"baseline": [], "best": [], "top": []}
        t1 = time.monotonic()
        targets = [("baseline", baseline)] + [("best", best)] * (best != baseline) + [("top", top["commit"])] * bool(top)
        for seed in SEEDS:  # interleaved: a change of load hits both alike
            for name, commit in targets:
                r = run_commit(session, commit, seed)
                values[name].append(r.val_bpb if r.status == "ok" else None)
                print(f"  [remeasure] seed {seed} {name:8} {commit[:7]} {values[name][-1]}", flush=True)
        if best == baseline:  # nothing kept
            values["best"] = values["baseline"]
        remeasure_s = time.monotonic() - t1
    loads = [r["machine"] for r in runs if isinstance(r.get("machine"), (int, float))]
    ok = {k: [x for x in v if x is not None] for k, v in values.items()}
    mean = {k: statistics.mean(v) if v else float("nan") for k, v in ok.items()}
    sd = {k: statistics.stdev(v) if len(v) > 1 else float("nan") for k, v in ok.items()}
    pooled = math.sqrt((sd["baseline"] ** 2 + sd["best"] ** 2) / 2)
    improvement = mean["baseline"] - mean["best"]
    top_pooled = math.sqrt((sd["baseline"] ** 2 + sd["top"] ** 2) / 2) if ok["top"] else float("nan")
    return {
        "proposer": args.proposer, "budget": args.budget, "plateau": args.plateau, "experiments": len(finished),
        "kept": sum(f["status"] == "keep" for f in finished), "crashes": sum(f["status"] == "crash" for f in finished),
        "stopped": sum(r.get("status") == "stopped" for r in runs), "runs": len(runs),
        "loop_wall_s": round(wall, 1), "remeasure_wall_s": round(remeasure_s, 1),
        "baseline_commit": baseline, "best_commit": best, "best_recorded": report.best,
        "best_description": next((f["message"] for f in finished if str(f.get("commit", ""))[:7] == best[:7]), "baseline"),
        "kept_descriptions": [f["message"] for f in finished if f["status"] == "keep"],
        "loop_noise_sd": noise.sigma if noise else None, "loop_noise_dof": noise.dof if noise else None,
        "remeasure": values, "baseline_mean": mean["baseline"], "baseline_sd": sd["baseline"],
        "best_mean": mean["best"], "best_sd": sd["best"], "pooled_sd": pooled, "improvement": improvement,
        "beyond_noise": bool(improvement > 2 * pooled) if best != baseline else False,
        "top_commit": top["commit"] if top else None, "top_description": top["message"] if top else None,
        "top_recorded": top["val_bpb"] if top else None, "top_mean": mean["top"], "top_sd": sd["top"],
        "top_improvement": mean["baseline"] - mean["top"],
        "top_beyond_noise": bool(mean["baseline"] - mean["top"] > 2 * top_pooled) if top else False,
        "load_avg_end": round(os.getloadavg()[0], 2),
        "foreign_load_mean": round(statistics.mean(loads), 3) if loads else None,  # run/probe.py: other jobs' share
    }


def show(f: dict) -> None:
    noise = "-" if f["loop_noise_sd"] is None else f"{f['loop_noise_sd']:.4f} ({f['loop_noise_dof']} dof)"
    print(f"\nproposer {f['proposer']}, budget {f['budget']:g} s: {f['experiments']} experiments ({f['runs']} runs), "
          f"{f['kept']} kept, {f['crashes']} crashed, {f['stopped']} stopped early; loop {f['loop_wall_s'] / 60:.1f} min")
    for d in f["kept_descriptions"]:
        print(f"  kept: {d}")
    print(f"baseline (3 seeds)   {f['baseline_mean']:.6f} +- {f['baseline_sd']:.6f}  {f['baseline_commit'][:7]}")
    print(f"best (3 seeds)       {f['best_mean']:.6f} +- {f['best_sd']:.6f}  {f['best_commit'][:7]}  "
          f"(the loop recorded {f['best_recorded'] or 0:.6f})")
    print(f"loop's noise sd      {noise}; mean foreign load during the loop's runs {f['foreign_load_mean']}, "
          f"load average at the end {f['load_avg_end']}")
    print(f"improvement          {f['improvement']:+.6f}  ({f['improvement'] / f['pooled_sd']:.1f} x the pooled sd "
          f"{f['pooled_sd']:.6f} of the re-measures)" if f["pooled_sd"] > 0 else f"improvement {f['improvement']:+.6f}")
    print(f"beyond the noise (> 2 x pooled sd): {'yes' if f['beyond_noise'] else 'NO'}")
    if f["top_commit"]:
        print(f"not kept, lowest the loop saw: {f['top_description']} ({f['top_recorded']:.6f})\n"
              f"  re-measured (3 seeds) {f['top_mean']:.6f} +- {f['top_sd']:.6f}: {f['top_improvement']:+.6f} vs the "
              f"baseline, beyond 2 x pooled sd: {'yes' if f['top_beyond_noise'] else 'no'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", action="store_true", help="compare the sampler choices on a synthetic objective")
    ap.add_argument("--reps", type=int, default=40, help="--synthetic: repetitions per choice (default 40)")
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per run (default 60: the tiny profile)")
    ap.add_argument("--experiments", type=int, default=20, help="experiments after the baseline (default 20)")
    ap.add_argument("--proposer", default="optuna", help="the proposer (default optuna)")
    ap.add_argument("--plateau", type=int, default=None, help="as ar loop --plateau (0: the plain chain, every "
                    "experiment the proposer's own; default: ar loop's)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of every run (default: torch's own)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    ap.add_argument("--dir", type=Path, help="keep the workspace here (default: a temporary folder, removed)")
    args = ap.parse_args()
    if args.dir and args.dir.exists() and any(args.dir.iterdir()):
        ap.error(f"--dir {args.dir} is not empty")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # passed to every run by containment.clean_env
            os.environ[var] = str(args.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{command}\ncores {cores}, load average {os.getloadavg()[0]:.2f}", flush=True)
    started = time.monotonic()
    try:
        figures = {"synthetic": synthetic(args.reps)} if args.synthetic else real(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if not args.synthetic:
        show(figures)
    print(f"total wall {(time.monotonic() - started) / 60:.1f} min")
    if args.json:
        print(json.dumps({"command": command, "cores": cores, **figures}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
