"""The loop's verdicts on one fixed pool of edits: the upstream strict greedy chain against
the new engine (keep rule `test` with early stopping), on the real loop and template.

    python benchmarks/research.py [--quick] [--budget 8] [--threads 1] [--order-seed 0] [--json] [--dir DIR]

For each engine: a fresh workspace (init_workspace, as `ar init`: tiny profile, built-in
data, CPU, the template train.py, `--budget` s of training), the loop as `ar loop` builds it
(session.open_loop: the real ScriptRunner and run_loop) with a scripted proposer in place of
the LLM. It plays the same pool in the same order (shuffled once by --order-seed), each edit
applied to the current best script (ctx.editable_text), as a chain would:

  helpful    2 edits that lowered val_bpb at this budget (below), also one after the other
  harmful    5 edits that raised it
  identical  20 edits that change the text, not what runs (0.04 -> 0.040, 2**12 -> 4096,
             64 -> 32 * 2, a comment): only run-to-run noise differs
  crash      a failing import, a batch size the script asserts against, an odd head
             dimension (a shape error in the first forward pass)

Engines: strict = keep_rule "strict", early_stop False (upstream); new = keep_rule "test",
early_stop True; plateau = new with the plateau modes (loop/plateau.py, docs/search.md)
after --plateau experiments without a keep (default 8, as `ar loop`; 0: not run). The same
OMP_NUM_THREADS for all, in that order. The plateau engine plays the same pool in the same
order (its branch mode applies the next edit to an earlier kept commit) plus what its
combine and ablate modes build, and ends when the pool is played out. From the journals
(runs.jsonl): experiments per hour (whole loop, baseline included); false keeps (identical
edits kept); missed gains (helpful edits not kept); time saved on harmful edits, as 1 - their
seconds in new / in strict (the issue's measure; the phases may differ in load) and within
the new engine's phase (its stopped runs against the same commits re-run to the end just
after); each stopped run so re-run is also judged by keep.decide_test against the best's runs
and the noise the journal held then; the baseline and each final best re-run under
AUTORESEARCH_SEED 101-103 (interleaved, so a change of load hits all alike): improvement =
baseline mean - best mean, per hour of the loop. Targets (the issue): new/strict improvement
per hour >= 1.5; at most 1 of 20 identical edits kept by new; >= 30% of the harmful edits'
time saved; no stopped run that would keep. Exit code 0 whatever the figures. 15-16 minutes
here (2 cores, other jobs running), --quick about 5; --dir keeps the workspaces.

The workspaces get warmup_allowance = 60 s (a config key): with another job on this machine
the two untimed first steps took 11 s and the harness rejected runs as over budget.

The pool, chosen by measurement before any engine ran and not changed after (the template
as `ar init` writes it here: DEPTH 2, width 128, batch 2**12; 8 s budget, one thread, seeds
1-3, each variant in turn in each round; val_bpb):
  baseline                 1.896-1.907 quiet, 1.936-1.953 under another job's load
  all 20 identical at once 1.898 1.897 1.890 (baselines of those rounds 1.897 1.903 1.896)
  batch /2 (DEVICE_BATCH_SIZE and TOTAL_BATCH_SIZE: twice the steps)  1.799-1.889, below
                           the baseline of its round 9 times of 9
  DEPTH /2                 1.871 1.872 1.881 quiet; 1.879 1.925 1.969 loaded: 5 rounds of 6
  both                     1.741-1.780 (batch /2 alone 1.804-1.889 in the same rounds)
  harmful                  UNEMBEDDING_LR x0.1 2.52-2.58, DEPTH x3 2.22-2.30, ASPECT_RATIO x4
                           2.18 2.20, EMBEDDING_LR x0.01 1.94-2.05, MATRIX_LR x10 1.95 1.95
  left out                 MATRIX_LR x2, EMBEDDING_LR x2, UNEMBEDDING_LR x4, WARMDOWN_RATIO
                           0.2, MATRIX_LR x0.1: within the noise; ASPECT_RATIO /2 helps, but
                           after DEPTH /2 the width rounds up to HEAD_DIM: the same model
One thread (--threads 1): on this shared 2-core machine, with another job running, two
threads trained 5-10 steps in 8 s (val_bpb 2.12-2.43), one thread 17-20 (1.94-1.98), in
interleaved runs. A wall-clock budget measures the machine too: compare figures of one
invocation only, as ratios.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import re
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

SEEDS = (101, 102, 103)  # the final re-measure (the loop itself uses the script's seed, then 1, 2, 3, ...)
TARGET_RATIO, TARGET_SAVED = 1.5, 0.30
PLATEAU = 8  # the plateau engine's --plateau, as `ar loop`'s default
WARMUP_ALLOWANCE = 60.0  # seconds of training beyond the budget the harness accepts (config key)

# -- the pool: edits as transformations of the current script's text -------------------------


def _find(text: str, name: str):
    """The `NAME = <expr>  # comment` line and the expression's value."""
    m = re.search(rf"^({name} = )([^#\n]*?)([ \t]*#.*)?$", text, re.M)
    if m is None:
        raise ValueError(f"{name} is not a plain constant of the script")
    return m, eval(m.group(2), {"__builtins__": {}})  # our own literal arithmetic: 2**12, 0.02 * 2


def _put(text: str, m, expr: str) -> str:  # the expression replaced, the comment kept
    return text[:m.start(2)] + expr + text[m.end(2):]


def scale(name: str, factor: float) -> Callable[[str], str]:
    def edit(text: str) -> str:
        m, v = _find(text, name)
        return _put(text, m, repr(int(v * factor)) if isinstance(v, int) else repr(round(v * factor, 10)))
    return edit


def same(name: str, style: str) -> Callable[[str], str]:
    """The same value written another way; the text always changes (brackets when a style
    has nothing to change), so the loop sees a new commit every time."""
    def edit(text: str) -> str:
        m, v = _find(text, name)
        old = m.group(2)
        new = old
        if style == "pad":  # 0.04 -> 0.040, (0.8, 0.95) -> (0.80, 0.950)
            new = re.sub(r"(\d\.\d*)", r"\g<1>0", old)
        elif style == "half" and (isinstance(v, float) or (isinstance(v, int) and v % 2 == 0)):
            new = f"{v // 2} * 2" if isinstance(v, int) else f"{v / 2!r} * 2"  # halving and doubling are exact
        elif style == "pow" and isinstance(v, int) and v > 0 and v & (v - 1) == 0:
            new = str(v) if "**" in old else f"2**{v.bit_length() - 1}"
        elif style == "note":  # the constant's comment reworded
            return text[:m.end()] + (" (unchanged)" if m.group(3) else "  # unchanged") + text[m.end():]
        return _put(text, m, new if new != old else f"({old})")
    return edit


def note(n: int) -> Callable[[str], str]:
    return lambda text: text.rstrip("\n") + f"\n# note {n}: a comment, no code\n"


@dataclass(frozen=True)
class Edit:
    name: str
    kind: str  # helpful | harmful | identical | crash
    apply: Callable[[str], str]


HELPFUL = [Edit("batch /2", "helpful", lambda t: scale("DEVICE_BATCH_SIZE", 0.5)(scale("TOTAL_BATCH_SIZE", 0.5)(t))),
           Edit("DEPTH /2", "helpful", scale("DEPTH", 0.5))]
HARMFUL = [Edit("UNEMBEDDING_LR x0.1", "harmful", scale("UNEMBEDDING_LR", 0.1)),
           Edit("DEPTH x3", "harmful", scale("DEPTH", 3)),
           Edit("EMBEDDING_LR x0.01", "harmful", scale("EMBEDDING_LR", 0.01)),
           Edit("ASPECT_RATIO x4", "harmful", scale("ASPECT_RATIO", 4)),
           Edit("MATRIX_LR x10", "harmful", scale("MATRIX_LR", 10))]
IDENTICAL = [Edit(f"same: {n} {s}", "identical", same(n, s)) for n, s in (
    ("MATRIX_LR", "pad"), ("TOTAL_BATCH_SIZE", "pow"), ("ASPECT_RATIO", "half"), ("EMBEDDING_LR", "pad"),
    ("UNEMBEDDING_LR", "half"), ("WEIGHT_DECAY", "pad"), ("WARMDOWN_RATIO", "half"), ("HEAD_DIM", "pow"),
    ("DEPTH", "paren"), ("ADAM_BETAS", "pad"), ("FINAL_LR_FRAC", "half"), ("WARMUP_RATIO", "pad"),
    ("DEVICE_BATCH_SIZE", "half"), ("DEPTH", "note"), ("MATRIX_LR", "half"), ("EMBEDDING_LR", "paren"),
    ("HEAD_DIM", "note"), ("WEIGHT_DECAY", "half"))] + [Edit(f"same: comment {n}", "identical", note(n)) for n in (1, 2)]
CRASH = [Edit("import flash_attn", "crash", lambda t: t.replace("import torch\n", "import torch\nimport flash_attn\n", 1)),
         Edit("TOTAL_BATCH_SIZE 1.5x", "crash",  # not a multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN: the assert
              lambda t: _put(t, _find(t, "TOTAL_BATCH_SIZE")[0], "3 * DEVICE_BATCH_SIZE * MAX_SEQ_LEN // 2")),
         Edit("HEAD_DIM odd", "crash", lambda t: _put(t, _find(t, "HEAD_DIM")[0], "63"))]  # the rotary halves differ


def make_pool(quick: bool, order_seed: int) -> list[Edit]:
    pool = HELPFUL[:2] + HARMFUL[:2] + IDENTICAL[:5] + CRASH[:1] if quick else HELPFUL + HARMFUL + IDENTICAL + CRASH
    random.Random(order_seed).shuffle(pool)  # one fixed interleaving, the same for both engines
    return pool


def label(i: int, edit: Edit) -> str:
    return f"e{i + 1:02d} {edit.name}"  # the commit message; the journal names the edit by it


class PoolDone(Exception):
    """Asked for an edit after the whole pool was played: the plateau engine ends here."""


class Scripted:
    """The proposer seam (proposers/base.py) playing the pool in order on the text it is
    given: the current best, or in the plateau engine's branch mode an earlier kept commit."""

    name = "scripted"

    def __init__(self, pool: list[Edit]):
        self.pool, self.next = pool, 0

    def propose(self, ctx):
        from autoresearch.proposers.base import NoProposal, Proposal

        if self.next >= len(self.pool):
            if self.done is not None:
                raise self.done  # an ArError: the loop stops at once, the journal complete
            raise NoProposal("the pool is played out")
        i, self.next = self.next, self.next + 1
        return Proposal(self.pool[i].apply(ctx.editable_text), label(i, self.pool[i]))

    done = None  # set by run_engine: ArError("the pool is played out")


def kind_of(message: str, kinds: dict[str, str]) -> str:
    """The kind of an experiment by its message: a pool edit's, or the plateau mode that built it."""
    for mode in ("combine", "ablate"):
        if message.startswith(mode + " #"):
            return mode
    if message.startswith("branch from #"):
        return kinds.get(message.split(": ", 1)[-1], "branch")
    return kinds.get(message, "?")


# -- one engine: a workspace, the real loop, then its journal --------------------------------


@dataclass
class Engine:
    name: str
    rule: str
    folder: Path
    session: object = None  # session.LoopSession: workspace, runner, settings
    wall: float = 0.0
    load: tuple = ()  # the load average at the start and the end
    records: list = field(default_factory=list)  # runs.jsonl
    finished: list = field(default_factory=list)  # its "finished" records of experiments, in order
    runs: list = field(default_factory=list)  # its "run" records
    baseline: str = ""
    best: str = ""
    best_value: Optional[float] = None  # as the loop recorded it (a mean of runs under `test`)


def run_engine(root: Path, name: str, rule: str, early: bool, pool: list[Edit], budget: float,
               plateau: int = 0) -> Engine:
    from autoresearch.journal.files import read_run_records
    from autoresearch.session import open_loop
    from autoresearch.data.context import CONFIG_RELPATH
    from autoresearch.workspace.config import RUNS_RELDIR, load_config, write_config
    from autoresearch.workspace.git import Workspace
    from autoresearch.workspace.init import init_workspace

    eng = Engine(name, rule, root / name)
    init_workspace(eng.folder, f"bench-{name}", backend="cpu", profile="tiny", budget=budget)
    # Both engines alike: over budget + 10 s a run is rejected (trust.py); see the doc.
    write_config(eng.folder, dataclasses.replace(load_config(eng.folder), warmup_allowance=WARMUP_ALLOWANCE))
    Workspace.open(eng.folder).commit([str(CONFIG_RELPATH)], "benchmark: warm-up allowance")
    # As `ar loop --keep-rule R --[no-]early-stop -n N` builds it; only the proposer is swapped.
    # No count limit: an engine stops when the proposer is asked for an edit after the last
    # one (the plateau engine runs what its modes build besides; an edit that repeats an
    # earlier experiment's program, e.g. a comment, is refused and never runs).
    from autoresearch.errors import ArError

    eng.session = open_loop(eng.folder, proposer="offline", keep_rule=rule, early_stop=early, plateau=plateau)
    eng.session.proposer = Scripted(pool)
    eng.session.proposer.done = ArError("the pool is played out")

    def show(e) -> None:
        if e.kind == "finished":
            print(f"  [{name}] {e.number:>2} {e.status:7} {e.val_bpb or 0:.6f} best {e.best or 0:.6f}  "
                  f"{e.description[:60]}  | {e.note[:70]}", flush=True)
        elif e.kind == "noise":
            print(f"  [{name}]    {e.note[:110]}", flush=True)

    load0, t0 = os.getloadavg()[0], time.monotonic()
    from autoresearch.experiment.lab import LoopReport

    try:
        report = eng.session.run(on_event=show)
    except ArError as e:
        if e is not eng.session.proposer.done:
            raise
        # stopped between experiments: the best as the journal defines it
        from autoresearch.journal.queries import best_entry, budget_key, history

        s = eng.session.settings
        entries = history(eng.folder, budget=s.full_budget, backend=s.backend)
        best = best_entry(entries, (budget_key(s.budget), s.backend), eng.session.workspace.ancestry())
        report = LoopReport(best_commit=best.row.commit if best else None, best=best.row.val_bpb if best else None)
    if report.interrupted:  # Ctrl-C or SIGTERM: the loop stopped cleanly; so does the benchmark
        raise KeyboardInterrupt
    eng.wall, eng.load = time.monotonic() - t0, (load0, os.getloadavg()[0])
    eng.records = read_run_records(eng.folder / RUNS_RELDIR / "runs.jsonl")
    eng.finished = [r for r in eng.records if r.get("event") == "finished" and r.get("kind") == "experiment"]
    eng.runs = [r for r in eng.records if r.get("event") == "run"]
    eng.baseline = next(r["commit"] for r in eng.records if r.get("event") == "finished" and r.get("kind") == "baseline")
    eng.best, eng.best_value = report.best_commit or eng.baseline, report.best
    return eng


def run_commit(eng: Engine, commit: str, seed: Optional[int]):
    """One run of `commit` to the end (no early stop, nothing journalled), in the engine's
    workspace: checked out detached, since the runner runs the committed tree only."""
    ws = eng.session.workspace
    branch = ws.branch
    ws.checkout(commit)
    try:
        return eng.session.runner.run(commit, seed=seed)
    finally:
        ws.checkout(branch)


def classify(eng: Engine, kinds: dict[str, str]) -> dict:
    """Every decision of the engine's journal by the kind of its edit."""
    out = {"experiments": len(eng.finished), "runs": len(eng.runs), "wall_s": round(eng.wall, 1),
           "per_hour": len(eng.finished) / eng.wall * 3600, "load_avg": [round(x, 2) for x in eng.load]}
    out["kept"] = dict(collections.Counter(kind_of(f["message"], kinds) for f in eng.finished if f["status"] == "keep"))
    out["false_keeps"] = out["kept"].get("identical", 0)
    out["missed_gains"] = sum(1 for f in eng.finished if kind_of(f["message"], kinds) == "helpful" and f["status"] != "keep")
    out["crashes"] = sum(1 for f in eng.finished if f["status"] == "crash")
    out["rejected"] = sum(1 for r in eng.runs if r.get("status") == "rejected")  # e.g. over budget (trust.py)
    out["not_credited"] = sum(1 for f in eng.finished if str(f.get("decision", "")).startswith("not credited"))
    message = {f["id"]: f["message"] for f in eng.finished}
    stopped = [r for r in eng.runs if r.get("status") == "stopped"]
    out["stopped"] = {k: sum(1 for r in stopped if kind_of(message.get(r["id"], ""), kinds) == k)
                      for k in ("helpful", "harmful", "identical")}
    out["runs_by_kind"] = dict(collections.Counter(r["kind"] for r in eng.runs))
    loads = [r["machine"] for r in eng.runs if isinstance(r.get("machine"), (int, float))]
    out["foreign_load"] = round(statistics.mean(loads), 3) if loads else None
    from autoresearch.experiment.keep import run_noise
    from autoresearch.journal.queries import budget_key

    noise = run_noise(eng.records, (budget_key(eng.session.settings.budget), eng.session.settings.backend))
    out["noise"] = f"{noise.sigma:.4f} ({noise.dof} dof)" if noise else "-"
    out["missed"] = [f"{f['message']}: {f['decision']}" for f in eng.finished
                     if kind_of(f["message"], kinds) == "helpful" and f["status"] != "keep"]
    out["harmful_s"] = {f["message"].split(": ", 1)[-1].split(" ", 1)[1]: f["seconds"] for f in eng.finished
                        if kind_of(f["message"], kinds) == "harmful"}
    out["modes"] = [f"{f['message'][:70]}: {f['status']} {f.get('val_bpb') or 0:.4f} ({len(f.get('values') or [])} runs)"
                    for f in eng.finished if f.get("mode")]
    return out


def verify_stopped(eng: Engine) -> list[dict]:
    """Each stopped run re-run to the end once, judged by the engine's rule against what the
    journal held when it was stopped: the best's runs and the pooled noise."""
    from autoresearch.experiment.keep import decide, decide_test, run_noise
    from autoresearch.journal.queries import budget_key

    s = eng.session.settings
    out = []
    for at, r in enumerate(eng.records):
        if r.get("event") != "run" or r.get("status") != "stopped":
            continue
        before = eng.records[:at]
        parent = next(x["parent"] for x in before if x.get("event") == "started" and x.get("id") == r["id"])
        best_runs = [x["val_bpb"] for x in before if x.get("event") == "run" and x.get("status") == "ok"
                     and str(x.get("commit", ""))[:7] == parent[:7]]
        result = run_commit(eng, r["commit"], None)  # the stopped run's own seed (the script's)
        value = result.val_bpb if result.status == "ok" else None
        if eng.rule == "test":
            d = decide_test(best_runs, [value], run_noise(before, (budget_key(s.budget), s.backend)))
        else:
            d = decide(eng.rule, min(best_runs), [value])
        edit = next((f["message"] for f in eng.finished if f["id"] == r["id"]), "")
        out.append({"edit": edit, "commit": r["commit"], "experiment": r.get("experiment"), "stopped_s": r["seconds"],
                    "full_s": round(result.seconds, 3), "value": value, "best": statistics.mean(best_runs),
                    "verdict": d.action, "reason": d.reason})
    return out


def remeasure(engines: list[Engine]) -> dict:
    """The baseline and each engine's final best, seeds 101-103, interleaved by seed."""
    targets = [("baseline", engines[0], engines[0].baseline)] + [(e.name, e, e.best) for e in engines if e.best != e.baseline]
    values: dict[str, list] = {t[0]: [] for t in targets}
    for seed in SEEDS:
        for name, eng, commit in targets:
            r = run_commit(eng, commit, seed)
            values[name].append(r.val_bpb if r.status == "ok" else None)
            print(f"  [remeasure] seed {seed} {name:8} {commit} {values[name][-1]}", flush=True)
    return {**{e.name: values["baseline"] for e in engines}, **values}  # nothing kept: the best is the baseline


def _mean(xs) -> float:
    return statistics.mean([x for x in xs if x is not None] or [float("nan")])


def figures(engines: list[Engine], stats: dict, checks: list[dict], finals: dict, kinds: dict) -> dict:
    base = _mean(finals["baseline"])
    for e in engines:
        st = stats[e.name]
        st["best_commit"], st["best_recorded"], st["best_mean"] = e.best, e.best_value, _mean(finals[e.name])
        st["improvement"] = base - st["best_mean"]
        st["improvement_per_hour"] = st["improvement"] / (e.wall / 3600)
    s, n = stats["strict"], stats["new"]
    common = [k for k in n["harmful_s"] if k in s["harmful_s"]]
    full, short = sum(s["harmful_s"][k] for k in common), sum(n["harmful_s"][k] for k in common)
    sip, nip = s["improvement_per_hour"], n["improvement_per_hour"]
    # The same, inside the new engine's own phase (the load differs between phases): what its
    # stopped harmful runs took against the same commits re-run to the end just after it.
    cut = sum(c["full_s"] - c["stopped_s"] for c in checks if kinds.get(c["edit"]) == "harmful")
    return {"baseline_mean": base, "harmful_s": [full, short], "saved": 1 - short / full if full else None,
            "saved_within": cut / (short + cut) if short + cut else None,
            "saved_stopped": 1 - sum(c["stopped_s"] for c in checks) / sum(c["full_s"] for c in checks) if checks else None,
            "would_keep": sum(c["verdict"] == "keep" for c in checks) + n["stopped"]["helpful"],
            "promising": sum(c["verdict"] == "confirm" for c in checks),  # the rule would have run it again
            "ratio": nip / sip if sip > 0 else (None if nip <= 0 else float("inf"))}


def show(pool: list[Edit], engines: list[Engine], stats: dict, checks: list[dict], f: dict) -> None:
    print("\nper edit: status, val_bpb the decision used, runs (S: stopped early)")
    for i, e in enumerate(pool):
        cells = []
        for eng in engines:
            rec = next((r for r in eng.finished if r["message"] == label(i, e)), None)
            stop = rec is not None and any(r["status"] == "stopped" for r in eng.runs if r["id"] == rec["id"])
            cells.append("-" if rec is None else f"{rec['status']:7} {rec.get('val_bpb') or 0:.4f} "
                         f"{len(rec.get('values') or [])}{'S' if stop else ' '}")
        print(f"  {label(i, e):34} {e.kind:9} | " + " | ".join(f"{c:17}" for c in cells))
    s, n = stats["strict"], stats["new"]
    pct = lambda x: "n/a" if x is None else f"{x:.0%}"  # noqa: E731
    print(f"\n{'':40} " + " ".join(f"{e.name:>13}" for e in engines))

    def line(name: str, key: Callable[[dict], object]) -> None:
        print(f"{name:40} " + " ".join(f"{key(stats[e.name])!s:>13}" for e in engines))
    k3 = ("helpful", "harmful", "identical")
    line("loop wall (min)", lambda x: f"{x['wall_s'] / 60:.1f}")
    line("experiments / runs", lambda x: f"{x['experiments']} / {x['runs']}")
    line("runs: experiment/confirm/remeasure", lambda x: "/".join(str(x["runs_by_kind"].get(k, 0))
                                                                  for k in ("experiment", "confirm", "remeasure")))
    line("experiments per hour", lambda x: f"{x['per_hour']:.0f}")
    line("kept: helpful/harmful/identical", lambda x: "/".join(str(x["kept"].get(k, 0)) for k in k3))
    line(f"false keeps (of {sum(e.kind == 'identical' for e in pool)} identical)", lambda x: x["false_keeps"])
    line(f"missed gains (of {sum(e.kind == 'helpful' for e in pool)} helpful)", lambda x: x["missed_gains"])
    line("crashes (runs rejected by the harness)", lambda x: f"{x['crashes']} ({x['rejected']})")
    line("stopped early: helpful/harmful/identical", lambda x: "/".join(str(x["stopped"][k]) for k in k3))
    line("not credited (the load changed)", lambda x: x["not_credited"])
    line("pooled run-to-run noise sd at the end", lambda x: x["noise"])
    line("harmful edits' seconds", lambda x: f"{sum(x['harmful_s'].values()):.0f}")
    line("mean foreign load during the runs", lambda x: x["foreign_load"])
    line("load average start -> end", lambda x: "->".join(map(str, x["load_avg"])))
    line("baseline (re-measured, 3 seeds)", lambda x: f"{f['baseline_mean']:.6f}")
    line("final best as the loop recorded it", lambda x: f"{x['best_recorded']:.6f}")
    line("final best (re-measured, 3 seeds)", lambda x: f"{x['best_mean']:.6f}")
    line("improvement", lambda x: f"{x['improvement']:+.6f}")
    line("improvement per hour", lambda x: f"{x['improvement_per_hour']:+.4f}")
    for eng in engines:
        for m in stats[eng.name]["missed"]:
            print(f"  {eng.name} missed {m}")
    for eng in engines:
        for m in stats[eng.name]["modes"]:
            print(f"  {eng.name} mode: {m}")
    if checks:
        print(f"  stopped runs: {pct(f['saved_stopped'])} of their time to the end saved")
    for c in checks:
        print(f"  stopped {c['edit']} (row {c['experiment']}): {c['stopped_s']:.1f} s, to the end {c['full_s']:.1f} s: "
              f"{c['value'] or 0:.6f} vs best {c['best']:.6f}: {c['verdict']}")
    same = sum(e.kind == "identical" for e in pool)
    cap = max(1, same // 20)
    met = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    ratio = f["ratio"]
    print(f"\ntargets\n  improvement per hour, new/strict  {'n/a' if ratio is None else f'{ratio:.2f}x'}  "
          f"(>= {TARGET_RATIO}x)  {met(ratio is not None and ratio >= TARGET_RATIO)}")
    print(f"  identical edits kept by new       {n['false_keeps']} of {same}  (<= {cap})  {met(n['false_keeps'] <= cap)}")
    for key, how in (("saved", "new vs strict"), ("saved_within", "new vs re-runs to the end")):
        print(f"  time saved on harmful edits       {pct(f[key])}  (>= {TARGET_SAVED:.0%}; {how})  "
              f"{met(f[key] is not None and f[key] >= TARGET_SAVED)}")
    print(f"  stopped runs that would keep      {f['would_keep']}  (0; {len(checks)} re-run to the end, "
          f"{f['promising']} of them promising)  {met(f['would_keep'] == 0)}")
    if "plateau" in stats:
        p = stats["plateau"]
        kept = [m for m in p["modes"] if ": keep " in m]
        print(f"\nplateau modes (--plateau {PLATEAU}): {len(p['modes'])} experiments built or branched, {len(kept)} kept; "
              f"improvement per hour {p['improvement_per_hour']:+.4f} ({p['improvement_per_hour'] / s['improvement_per_hour']:.2f}x "
              f"strict, {p['improvement_per_hour'] / n['improvement_per_hour']:.2f}x new)" if s["improvement_per_hour"] > 0
              and n["improvement_per_hour"] > 0 else f"\nplateau modes: {len(p['modes'])} experiments, {len(kept)} kept")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 10-edit pool (5 identical) and a 5 s budget: a smoke test")
    ap.add_argument("--budget", type=float, default=None, help="training seconds per run (default 8; 5 with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run (default 1: see the doc)")
    ap.add_argument("--order-seed", type=int, default=0, help="the shuffle of the pool (default 0)")
    ap.add_argument("--plateau", type=int, default=PLATEAU,
                    help=f"a third engine: `new` with the plateau modes after N experiments without a keep "
                         f"(default {PLATEAU}, as ar loop; 0: no third engine)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too (for the README)")
    ap.add_argument("--dir", type=Path, help="keep the two workspaces here (default: a temporary folder, removed)")
    args = ap.parse_args()
    if args.dir and args.dir.exists() and any(args.dir.iterdir()):
        ap.error(f"--dir {args.dir} is not empty")
    budget = args.budget or (5.0 if args.quick else 8.0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # passed to every run by containment.clean_env
        os.environ[var] = str(args.threads)
    pool = make_pool(args.quick, args.order_seed)
    kinds = {label(i, e): e.kind for i, e in enumerate(pool)}
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    started = time.monotonic()
    counts = ", ".join(f"{k} {sum(e.kind == k for e in pool)}" for k in ("helpful", "harmful", "identical", "crash"))
    print(f"{command}\ncores {cores}, OMP_NUM_THREADS {args.threads}, load average {os.getloadavg()[0]:.2f}, "
          f"budget {budget:g} s, pool of {len(pool)} ({counts}), order seed {args.order_seed}", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="ar-bench-research-") as tmp:
            root = args.dir.resolve() if args.dir else Path(tmp)
            os.environ.setdefault("AUTORESEARCH_CACHE", str(root / "cache"))
            from autoresearch.data.prepare import prepare_data
            from autoresearch.data.profiles import get_profile

            prepare_data(get_profile("tiny").source, get_profile("tiny"))
            engines = [run_engine(root, "strict", "strict", False, pool, budget),
                       run_engine(root, "new", "test", True, pool, budget)]
            if args.plateau:
                engines.append(run_engine(root, "plateau", "test", True, pool, budget, plateau=args.plateau))
            stats = {e.name: classify(e, kinds) for e in engines}
            checks = verify_stopped(engines[1])
            finals = remeasure(engines)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    f = figures(engines, stats, checks, finals, kinds)
    show(pool, engines, stats, checks, f)
    wall = time.monotonic() - started
    print(f"total wall {wall / 60:.1f} min, load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        res = {"command": command, "cores": cores, "threads": args.threads, "budget": budget, "order_seed": args.order_seed,
               "pool": [f"{label(i, e)} [{e.kind}]" for i, e in enumerate(pool)], "engines": stats,
               "stopped_checks": checks, "remeasure": finals, "total_wall_s": round(wall, 1), **f}
        print(json.dumps(res, indent=1, default=str).replace("Infinity", '"inf"'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
