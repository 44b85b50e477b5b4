"""Keep rules: when does a lower val_bpb count as an improvement?

Re-running the same script moves val_bpb: the training schedule is driven by wall-clock
time, so the number of steps and the warm-down differ a little between identical runs
(8 identical runs of a tiny MLX port differ by up to 0.0065, stdev 0.002; an MLX port's
author reports up to ~0.03). A rule that keeps anything strictly lower keeps noise.

Three rules:

- ``test`` (default): a one-sided test at a stated false-keep rate (5%). The noise is the
  pooled standard deviation of every script run more than once (the best's re-runs,
  confirmations), updated as the loop goes; the best to beat is the mean of its runs. A
  first run that is no better than the best is discarded at once; a promising one is run
  again under another seed (up to ``MAX_RUNS`` runs in all) until the gain clears
  t(0.975, dof) x sigma x sqrt(1/n + 1/n_best) (each look at half the rate, so all looks
  together stay under 5%), or until even ``MAX_RUNS`` runs with the same
  mean could not clear it. Nothing is measured up front: the first idea runs right after
  the baseline, and the first promising one measures the noise (its own second run). A
  best kept on a single run is run again under another seed before the next experiment
  when a decision was limited by it (``Decision.remeasure``). Cost: one extra run per
  promising result (two at most), one per re-measure of a single-run best; none for a
  result no better than the best.
- ``strict`` (upstream): keep when val_bpb is strictly lower than the best. No extra runs.
- ``noise`` (the earlier default): the baseline is run ``NOISE_RUNS`` more times under other seeds; the
  spread of those runs (max - min) is the noise floor. A gain (best - val_bpb) must clear
  the floor. A gain above ``CONFIRM_ABOVE`` x floor is kept at once; a marginal one
  (between 1x and 2x the floor) is run once more under another seed and kept only if the
  mean of both runs still clears the floor. Cost: +2 runs once per workspace and budget,
  +1 run per marginal gain. With a floor of 0 (a deterministic script) it keeps exactly
  what ``strict`` keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from autoresearch.errors import ArError

KEEP_RULES = ("test", "noise", "strict")
DEFAULT_KEEP_RULE = "test"
FALSE_KEEP = 0.05  # the stated false-keep rate of the whole sequential decision (one-sided)
MAX_RUNS = 3  # runs of one candidate at most under `test`
ABLATION_RUNS = 2  # runs of an ablation before it can be kept (decide_ablation)
# Each look at the data (after run 1, 2, 3) tests at half the stated rate, so the looks
# together stay under it: simulated, 3.4% of 6,000 candidates identical in effect to the
# best were kept (tests/test_keep.py). One-sided 97.5% quantiles of Student's t by degrees
# of freedom (standard tables); between entries the smaller dof's (larger) value is used.
_T_LOOK = ((1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (6, 2.447), (7, 2.365), (8, 2.306),
           (9, 2.262), (10, 2.228), (12, 2.179), (15, 2.131), (20, 2.086), (30, 2.042), (60, 2.000), (120, 1.980))
NOISE_RUNS = 2  # extra runs of the baseline that measure the noise floor
CONFIRM_ABOVE = 2.0  # gains above this many floors are kept without a confirmation run


@dataclass(frozen=True)
class Decision:
    action: str  # keep | discard | crash | confirm (run once more, then decide again)
    value: Optional[float]  # the val_bpb the decision used (mean of the runs); None for a crash
    reason: str  # one line, for runs.jsonl and the display
    remeasure: bool = False  # `test`: the best has one run and that limited the decision: re-run it


@dataclass(frozen=True)
class Noise:
    """The pooled run-to-run standard deviation of val_bpb, and its degrees of freedom."""

    sigma: float
    dof: int
    scripts: int = 0  # how many scripts (groups) were run more than once

    @staticmethod
    def pooled(groups: Iterable[Sequence[Optional[float]]]) -> Optional["Noise"]:
        """From groups of runs of one script each; None until some script ran twice."""
        ss, dof, scripts = 0.0, 0, 0
        for group in groups:
            ok = [v for v in group if v is not None]
            if len(ok) >= 2:
                mean = sum(ok) / len(ok)
                ss += sum((v - mean) ** 2 for v in ok)
                dof += len(ok) - 1
                scripts += 1
        return Noise(math.sqrt(ss / dof), dof, scripts) if dof else None


def t_look(dof: int) -> float:
    """The quantile of Student's t one look of the test uses (97.5%, one-sided; conservative
    between table entries)."""
    if dof < 1:
        raise ValueError("t_look needs at least one degree of freedom")
    for d, t in reversed(_T_LOOK):
        if dof >= d:
            return t
    return _T_LOOK[0][1]


MIN_DOF = 4  # below this the noise estimate is too thin to discard a gain on one run


def decide_test(best: Optional[Sequence[float]], values: Sequence[Optional[float]], noise: Optional[Noise],
                max_runs: int = MAX_RUNS) -> Decision:
    """The `test` rule (see the module doc): `best` is the best's runs (None before a result)."""
    first = _crash_or_baseline(values, bool(best))
    if first is not None:
        return first
    mean = sum(values) / len(values)
    runs = f"mean of {len(values)} runs " if len(values) > 1 else ""
    best_mean = sum(best) / len(best)
    gain = round(best_mean - mean, 9)
    against = f"the best {best_mean:.6f}" + (f" (mean of {len(best)} runs)" if len(best) > 1 else "")
    if gain <= 0:
        return Decision("discard", mean, f"{runs}{mean:.6f} is no better than {against}")
    if noise is None:  # nothing has run twice yet: this promising result measures the noise
        if len(values) < max_runs:
            return Decision("confirm", mean, f"gain {gain:+.6f} and no noise estimate yet: running it again to measure it")
        return Decision("discard", mean, f"{runs}gain {gain:+.6f} but no noise estimate", remeasure=len(best) < 2)

    def need(n: int, n_best: int) -> float:
        return round(t_look(noise.dof) * noise.sigma * math.sqrt(1 / n + 1 / n_best), 9)

    bar = need(len(values), len(best))
    test = f"needs > {bar:.6f}: one-sided test at {FALSE_KEEP:.0%} false keeps, noise sd {noise.sigma:.6f} ({noise.dof} dof)"
    if gain > bar:
        return Decision("keep", mean, f"{runs}gain {gain:+.6f} vs {against}; {test}")
    best_limits = len(best) < 2 and gain > need(max_runs, 2)  # one more run of the best could make it pass
    if len(values) < max_runs and gain > need(max_runs, len(best)):
        return Decision("confirm", mean, f"gain {gain:+.6f} is promising ({test}): running it again")
    if len(values) == 1 and noise.dof < MIN_DOF:
        # A bar set by a noise estimate of 1-3 dof can be 13x its sd, and one run made in a burst
        # of load can set it: while the estimate is that thin, a gain gets a second run, which
        # is both another chance for it and one more repeat that sharpens the estimate.
        return Decision("confirm", mean, f"gain {gain:+.6f}; the noise estimate rests on {noise.dof} dof ({test}): "
                                         "running it again")
    return Decision("discard", mean, f"{runs}gain {gain:+.6f} vs {against} is within the noise ({test})",
                    remeasure=best_limits)


def decide_ablation(best: Optional[Sequence[float]], values: Sequence[Optional[float]], noise: Optional[Noise]) -> Decision:
    """An ablation (loop/plateau.py) drops a kept change: simpler code at equal val_bpb is a
    win. It is kept when ABLATION_RUNS runs average no worse than the best's runs; a first
    run clearly worse (beyond the `test` rule's bar) is discarded at once."""
    first = _crash_or_baseline(values, bool(best))
    if first is not None:
        return first
    mean = sum(values) / len(values)
    best_mean = sum(best) / len(best)
    loss = round(mean - best_mean, 9)
    if len(values) < ABLATION_RUNS:
        if noise is not None and loss > t_look(noise.dof) * noise.sigma * math.sqrt(1 / len(values) + 1 / len(best)):
            return Decision("discard", mean, f"without it {mean:.6f} vs the best {best_mean:.6f}: the dropped change matters")
        return Decision("confirm", mean, f"without it {mean:.6f} vs the best {best_mean:.6f}: running it again")
    runs = f"mean of {len(values)} runs {mean:.6f}"
    if loss <= 0:
        return Decision("keep", mean, f"{runs} is no worse than the best {best_mean:.6f}: the dropped change did nothing "
                                      "measurable, and the code is simpler")
    return Decision("discard", mean, f"{runs} is worse than the best {best_mean:.6f} by {loss:.6f}: the dropped change helps")


def _crash_or_baseline(values: Sequence[Optional[float]], has_best: bool) -> Optional[Decision]:
    """What every rule decides alike: a crash, and the first result (the baseline)."""
    if not values:
        raise ValueError("a decision needs the result of at least one run")
    if any(v is None for v in values):
        which = "the confirmation run" if values[0] is not None else "the run"
        return Decision("crash", None, f"{which} ended without a val_bpb")
    if not has_best:
        return Decision("keep", sum(values) / len(values), "the first result of this budget and backend on the branch: the baseline")
    return None


def check_rule(rule: str) -> str:
    if rule not in KEEP_RULES:
        raise ArError(f"unknown keep rule {rule!r}; use one of {', '.join(KEEP_RULES)}")
    return rule


def noise_floor(values: Sequence[Optional[float]]) -> float:
    """The spread (max - min) of repeated runs of one script; 0.0 with fewer than two results."""
    ok = [v for v in values if v is not None]
    return max(ok) - min(ok) if len(ok) >= 2 else 0.0


def decide(rule: str, best: Optional[float], values: Sequence[Optional[float]], floor: Optional[float] = None) -> Decision:
    """What to do with an experiment whose runs gave `values` (None = crashed).

    `best` is the val_bpb to beat (None before the first result: anything that runs is
    kept). `floor` is the noise floor (None or 0: no noise measured). A confirmation is
    asked for only while there is a single run.
    """
    check_rule(rule)
    first = _crash_or_baseline(values, best is not None)
    if first is not None:
        return first
    mean = sum(values) / len(values)
    runs = f"mean of {len(values)} runs " if len(values) > 1 else ""
    # val_bpb is printed with 6 decimals: compare at 1e-9 so 1.0 - 0.994 is exactly 0.006.
    gain = round(best - mean, 9)
    floor = round(floor, 9) if floor else 0.0
    if rule == "strict" or not floor:
        if gain > 0:
            return Decision("keep", mean, f"{runs}{mean:.6f} beats the best {best:.6f}")
        return Decision("discard", mean, f"{runs}{mean:.6f} does not beat the best {best:.6f}")
    if gain <= floor:
        return Decision(
            "discard", mean, f"{runs}gain {gain:+.6f} does not clear the noise floor {floor:.6f} (best {best:.6f})"
        )
    if len(values) == 1 and gain <= round(CONFIRM_ABOVE * floor, 9):
        return Decision("confirm", mean, f"gain {gain:+.6f} is within {CONFIRM_ABOVE:g}x the noise floor {floor:.6f}: confirming")
    return Decision("keep", mean, f"{runs}gain {gain:+.6f} clears the noise floor {floor:.6f} (best {best:.6f})")


MOOD_GAP = 0.25  # runs whose foreign load (run/probe.py) differs by more than this share of the machine differ


def same_machine(best: Sequence[tuple[Optional[float], Optional[float]]], load: Optional[float]):
    """The best's runs (value, foreign load from run/probe.py) made under a load like `load`.

    Returns (values, gap): the comparable values, and how far the load was from the nearest
    best run's when none is comparable (|gap| > MOOD_GAP; 0.0 otherwise). Runs without a
    measurement are taken as comparable."""
    if load is None:
        return [v for v, _ in best], 0.0
    measured = [(v, m) for v, m in best if m is not None]
    if not measured:
        return [v for v, _ in best], 0.0
    near = [v for v, m in measured if abs(m - load) <= MOOD_GAP]
    if near:
        return near, 0.0
    closest = min(measured, key=lambda vm: abs(vm[1] - load))[1]
    return [], load - closest


def run_noise(runs: Iterable[dict], key: Optional[tuple[str, str]]) -> Optional[Noise]:
    """The pooled noise of runs.jsonl's "run" records of the group `key` (budget, backend;
    None: all): runs of one commit are one script, and runs of it under foreign loads more
    than MOOD_GAP apart differ by the machine, not by chance, so they are pooled apart."""
    from autoresearch.journal.queries import budget_key

    by_commit: dict[str, list[tuple[float, Optional[float]]]] = {}
    unmeasured: dict[str, list[Optional[float]]] = {}
    for r in runs:
        if r.get("event") != "run" or not isinstance(r.get("budget"), (int, float)):
            continue
        if key is not None and (budget_key(r["budget"]), str(r.get("backend") or "")) != key:
            continue
        commit, value = str(r.get("commit", ""))[:7], r.get("val_bpb") if r.get("status") == "ok" else None
        load = r.get("machine")
        if isinstance(load, (int, float)):
            by_commit.setdefault(commit, []).append((float(load), value))
        else:
            unmeasured.setdefault(commit, []).append(value)
    groups = list(unmeasured.values())
    for measured in by_commit.values():  # runs of one script, split where the load jumps by more than MOOD_GAP
        measured.sort(key=lambda lv: lv[0])
        start = 0
        for i in range(1, len(measured) + 1):
            if i == len(measured) or measured[i][0] - measured[start][0] > MOOD_GAP:
                groups.append([v for _, v in measured[start:i]])
                start = i
    return Noise.pooled(groups)
