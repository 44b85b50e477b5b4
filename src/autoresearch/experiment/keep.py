"""Keep rules: when does a lower val_bpb count as an improvement?

Re-running the same script moves val_bpb: the training schedule is driven by wall-clock
time, so the number of steps and the warm-down differ a little between identical runs
(8 identical runs of a tiny MLX port differ by up to 0.0065, stdev 0.002; an MLX port's
author reports up to ~0.03). A rule that keeps anything strictly lower keeps noise.

Two rules:

- ``strict`` (upstream): keep when val_bpb is strictly lower than the best. No extra runs.
- ``noise`` (default): the baseline is run ``NOISE_RUNS`` more times under other seeds; the
  spread of those runs (max - min) is the noise floor. A gain (best - val_bpb) must clear
  the floor. A gain above ``CONFIRM_ABOVE`` x floor is kept at once; a marginal one
  (between 1x and 2x the floor) is run once more under another seed and kept only if the
  mean of both runs still clears the floor. Cost: +2 runs once per workspace and budget,
  +1 run per marginal gain. With a floor of 0 (a deterministic script) it keeps exactly
  what ``strict`` keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from autoresearch.errors import ArError

KEEP_RULES = ("noise", "strict")
DEFAULT_KEEP_RULE = "noise"
NOISE_RUNS = 2  # extra runs of the baseline that measure the noise floor
CONFIRM_ABOVE = 2.0  # gains above this many floors are kept without a confirmation run


@dataclass(frozen=True)
class Decision:
    action: str  # keep | discard | crash | confirm (run once more, then decide again)
    value: Optional[float]  # the val_bpb the decision used (mean of the runs); None for a crash
    reason: str  # one line, for runs.jsonl and the display


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
    if not values:
        raise ValueError("decide() needs the result of at least one run")
    if any(v is None for v in values):
        which = "the confirmation run" if values[0] is not None else "the run"
        return Decision("crash", None, f"{which} ended without a val_bpb")
    mean = sum(values) / len(values)
    runs = f"mean of {len(values)} runs " if len(values) > 1 else ""
    if best is None:
        return Decision("keep", mean, "the first result on this branch: the baseline")
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
