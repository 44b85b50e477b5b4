"""Early stopping: a run whose training loss is clearly worse than the best's, at the
same point of its time budget, is stopped and discarded, so a doomed idea does not cost
a full budget.

The template prints a progress line about twice a second with `pct` (training seconds
as a percentage of the budget), `loss` (the smoothed training loss) and `lrm` (the
learning-rate multiplier). Each run's curve (pct, loss) is kept in its "run" record.
The reference is the mean curve of the best's runs; the spread is how far the curves of
one script's repeat runs lie apart (the baseline's repeats, confirmations, re-runs of
the best), pooled over every script run more than once.

A run is stopped when, for CONSECUTIVE progress lines in a row,

    loss > reference(pct) + margin,  margin = max(Z * spread, REL_FLOOR * reference(pct))

(REL_UNKNOWN * reference(pct) before any repeat run has shown the spread), and never:
- before MIN_PCT percent of the budget;
- while its learning rate is still warming up (`lrm` rising and below 1): a slow
  starter is judged once its schedule has reached full speed;
- on the baseline, a confirmation or a re-run of the best (only a first run of an idea).

What it costs: a harmful edit stops at MIN_PCT..100% of its budget instead of running it
all; a run that would have been kept is stopped only if its training loss was more than
`margin` above the best's for CONSECUTIVE reports after MIN_PCT yet ended better than
the best, which the margins make rare (benchmarks/research.py measures both).
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

MIN_PCT = 30.0  # never before this share of the budget
Z = 4.0  # standard deviations of the curves' run-to-run spread
REL_FLOOR = 0.02  # the margin is at least this share of the reference loss
REL_UNKNOWN = 0.05  # the margin while no repeat run has shown the spread
CONSECUTIVE = 3  # progress lines in a row beyond the margin
MAX_POINTS = 120  # points of a curve kept in a run record

Curve = list  # [[pct, loss], ...] with pct increasing


def curve_point(fields: dict) -> Optional[tuple[float, float]]:
    """(pct, loss) of a progress line, when it has both as finite numbers."""
    pct, loss = fields.get("pct"), fields.get("loss")
    if isinstance(pct, (int, float)) and isinstance(loss, (int, float)) and math.isfinite(pct) and math.isfinite(loss):
        return float(pct), float(loss)
    return None


def compact(points: Sequence[tuple[float, float]], limit: int = MAX_POINTS) -> Curve:
    """At most `limit` points, evenly spread over the run, the last one kept."""
    pts = [[round(p, 2), round(v, 5)] for p, v in points]
    if len(pts) <= limit:
        return pts
    step = len(pts) / (limit - 1)
    return [pts[int(i * step)] for i in range(limit - 1)] + [pts[-1]]


def loss_at(curve: Curve, pct: float) -> Optional[float]:
    """The curve's loss at `pct`, interpolated; None outside its range."""
    if not curve or pct < curve[0][0] or pct > curve[-1][0]:
        return None
    lo = 0
    hi = len(curve) - 1
    while hi - lo > 1:  # curves are sorted by pct
        mid = (lo + hi) // 2
        if curve[mid][0] <= pct:
            lo = mid
        else:
            hi = mid
    (p0, v0), (p1, v1) = curve[lo], curve[hi]
    if p1 <= p0:
        return v1 if pct >= p1 else v0
    return v0 + (v1 - v0) * (pct - p0) / (p1 - p0)


def _grid(curves: Sequence[Curve]) -> list[float]:
    """Whole percentages from MIN_PCT to 100 that every curve covers."""
    if not curves:
        return []
    lo = max(MIN_PCT, max(c[0][0] for c in curves))
    hi = min(c[-1][0] for c in curves)
    return [float(p) for p in range(math.ceil(lo), math.floor(hi) + 1)]


def reference(curves: Sequence[Curve]) -> Optional[Curve]:
    """The mean of the best's curves at whole percentages (a single run: its own curve)."""
    curves = [c for c in curves if c]
    if len(curves) == 1:
        return curves[0]
    grid = _grid(curves)
    if not grid:
        return None
    return [[p, sum(loss_at(c, p) for c in curves) / len(curves)] for p in grid]


def spread(groups: Iterable[Sequence[Curve]]) -> Optional[float]:
    """The pooled standard deviation of the loss between repeat runs of one script, at the
    same percentages (from MIN_PCT on); None without a script run twice."""
    squares, dof = 0.0, 0
    for curves in groups:
        curves = [c for c in curves if c]
        if len(curves) < 2:
            continue
        for p in _grid(curves):
            values = [loss_at(c, p) for c in curves]
            mean = sum(values) / len(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    return math.sqrt(squares / dof) if dof else None


class Stopper:
    """Called with each progress line of a running experiment; returns the reason to stop
    it (e.g. "stopped at 42%: loss 3.92 vs 3.41"), or None to let it go on."""

    def __init__(self, ref: Curve, spread_sd: Optional[float], *, min_pct: float = MIN_PCT):
        self.ref, self.spread, self.min_pct = ref, spread_sd, min_pct
        self.streak = 0
        self.peak = 0.0  # the highest learning-rate multiplier seen
        self.warmed = False  # the multiplier reached 1 or fell from its peak: warm-up is over

    def margin(self, ref_loss: float) -> float:
        if self.spread is None:
            return REL_UNKNOWN * abs(ref_loss)
        return max(Z * self.spread, REL_FLOOR * abs(ref_loss))

    def __call__(self, fields: dict) -> Optional[str]:
        lrm = fields.get("lrm")
        warming = False
        if isinstance(lrm, (int, float)) and not self.warmed:
            # Printed with 2 decimals, a slow warm-up shows the same value twice: only a
            # fall from the peak (or reaching 1) ends it.
            if lrm >= 1.0 or lrm < self.peak - 1e-9:
                self.warmed = True
            else:
                warming = True
            self.peak = max(self.peak, float(lrm))
        point = curve_point(fields)
        if point is None or warming or point[0] < self.min_pct:
            self.streak = 0
            return None
        pct, loss = point
        ref = loss_at(self.ref, pct)
        if ref is None:
            return None
        if loss > ref + self.margin(ref):
            self.streak += 1
        else:
            self.streak = 0
        if self.streak >= CONSECUTIVE:
            return f"stopped at {pct:.0f}%: loss {loss:.3f} vs {ref:.3f}"
        return None
