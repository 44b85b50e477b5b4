"""The judge's causality probe: chains of spliced copies of validation rows, their layout
over the batches, and the rank test on the spliced tokens (docs/judge.md, "The causality
probe").

A probed row O comes as a chain V1, V2, ..., VL, O: each variant is O up to its cut, then
natural text from elsewhere, the cuts increase along the chain, and O comes last. After
each variant the next member is O with probability P_ORIGINAL, decided when that member
is placed, so no sighting of a chain is known to be its last (except where that is worth
nothing to a peeking script: see plan()).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

MIN_PROBES, PROBE_DIVISOR = 48, 8  # variant rows, on average: max(48, n/8)
P_ORIGINAL = 0.5  # after a variant, the chain's next member is its original with this probability
MAX_VARIANTS = 8  # a chain's cap (reached with probability 2^-7)
ALTERNATIVES = 255  # tokens the spliced token is ranked against
ALPHA = 1e-6  # false-rejection bound of the statistical causality test (two tests, ALPHA/2 each)


@dataclass
class Slot:
    row: int  # the validation row it comes from
    tokens: np.ndarray  # (T+1,) what is sent: tokens[:T]; tokens[1:] are its targets
    family: int = -1
    cut: int = -1  # variants: tokens[:cut+1] are the original's, the rest come from another row
    alts: Optional[np.ndarray] = None  # variants: the other candidate tokens at cut+1
    cuts: tuple[int, ...] = ()  # a probed original: its variants' cuts

    @property
    def variant(self) -> bool:
        return self.cut >= 0


def plan(rows: np.ndarray, batch_size: int, rng: np.random.Generator,
         min_probes: int = MIN_PROBES) -> tuple[int, list[list[Slot]]]:
    """(batch size used, batches of slots): every row once as itself, in random order, and
    F probed rows each preceded by a chain of variants in earlier batches (docs/judge.md).

    Batches are filled one after another from the chains waiting for their next member
    (each joins with a fixed probability) and the rows not yet sent (in random order; a
    probed one is sent as its first variant). When a chain's member is placed, a fair coin
    (P_ORIGINAL) says whether it is the original or one more variant; nothing placed so far
    depends on it, so a member is the original with that probability whatever the run has
    seen. Exceptions, all worth nothing to a script that peeks at sure originals:
    - a chain whose last cut is T-2 ends: its original differs from that variant only in
      the last input, and the target after it is never sent;
    - the last batch holds only the originals of the chains still open (and no row seen
      for the first time): there the chains' last cuts are moved to T-2;
    - MAX_VARIANTS: that variant is cut at T-2.
    Every batch has b rows but the last."""
    n, t1 = rows.shape
    b, fam = sizes(n, batch_size, min_probes)
    for attempt in range(400):
        if attempt and attempt % 50 == 0:
            b = max(1, b - 1)  # (never needed on the profiles' shapes)
        laid = layout(n, fam, b, t1 - 1, rng)
        if laid is not None:
            return b, _slots(rows, *laid, rng)
    raise RuntimeError("could not lay out the probe chains")


def sizes(n: int, batch_size: int, min_probes: int = MIN_PROBES) -> tuple[int, int]:
    """(batch size, F): F/n is the chance that a row is probed."""
    want = max(min_probes, n // PROBE_DIVISOR)
    f0 = max(1, -(-want // 2))  # chains have two variants on average
    b = max(1, min(batch_size, -(-(n + 2 * min(n, f0)) // 4), f0))
    # The last batch closes up to b chains early, each losing one variant on average.
    return b, min(n, f0 + -(-b // 2))


def layout(n: int, fam: int, b: int, seq: int, rng: np.random.Generator):
    """(batches of (row, member): member -1 the row itself, j >= 0 its variant j; cuts per
    probed row), or None at a dead end (the rows left cannot fill a batch)."""
    last = max(0, seq - 2)  # the latest cut: the spliced token is the last input
    # A waiting chain's next member goes into each batch with this probability: about b
    # chains then wait at any time, enough to fill the batches where the first sightings end.
    hazard = min(1.0, 2 * fam / (n + 2 * fam))
    queue = [int(r) for r in rng.permutation(n)]
    # Each row is probed on its own coin, so a first sighting is a first variant with the same
    # probability whatever came before (a fixed count would tell how many are left).
    probed = set(int(r) for r in np.flatnonzero(rng.random(n) < fam / n))
    cuts: dict[int, list[int]] = {}
    open_: list[int] = []  # chains waiting for their next member, all placed before this batch
    batches: list[list[tuple[int, int]]] = []
    while True:
        q, r_open = len(queue), len(open_)
        if q == 0 and r_open <= b:
            if not r_open:
                return None  # the batch before would be the last, with rows seen for the first time
            for r in open_:
                cuts[r][-1] = last
            batches.append([(r, -1) for r in open_])
            return batches, cuts
        if q == 0:
            k = b
        elif q <= b:  # the last batch of first sightings; a chain must stay open after it
            k = b - q
            if r_open < k or r_open - k + sum(r in probed for r in queue) < 1:
                return None
        elif q < 2 * b:
            k = min(r_open, 2 * b - q)  # leave b first sightings for the next batch
        else:
            k = min(b, int(rng.binomial(r_open, hazard)))
        picked = set(int(i) for i in rng.choice(r_open, k, replace=False)) if k else set()
        batch: list[tuple[int, int]] = []
        still = []
        for i, r in enumerate(open_):
            if i not in picked:
                still.append(r)
                continue
            c = cuts[r]
            if c[-1] >= last or rng.random() < P_ORIGINAL:
                batch.append((r, -1))
                continue
            c.append(last if len(c) + 1 >= MAX_VARIANTS else int(rng.integers(c[-1] + 1, last + 1)))
            batch.append((r, len(c) - 1))
            still.append(r)
        for r in queue[: b - k]:
            if r in probed:
                cuts[r] = [int(rng.integers(0, last + 1))]
                batch.append((r, 0))
                still.append(r)
            else:
                batch.append((r, -1))
        queue = queue[b - k:]
        open_ = still
        batches.append(batch)


def _slots(rows: np.ndarray, batches: list, cuts: dict, rng: np.random.Generator) -> list[list[Slot]]:
    out: list[list[Slot]] = []
    for batch in batches:
        slots = [_variant(rows, r, cuts[r][j], r, rng) if j >= 0
                 else Slot(r, rows[r], r, cuts=tuple(cuts[r])) if r in cuts else Slot(r, rows[r])
                 for r, j in batch]
        rng.shuffle(slots)  # type: ignore[arg-type]
        out.append(slots)
    return out


def _variant(rows: np.ndarray, r: int, cut: int, family: int, rng: np.random.Generator) -> Slot:
    """Row r up to `cut`, then a stretch of the validation text (the rows end to end)
    from a random place, picked among ALTERNATIVES + 1 random places: under causality the
    spliced token is exchangeable with the first tokens of the places not picked."""
    flat = rows.reshape(-1)
    tail = rows.shape[1] - cut - 1
    starts = _places(flat[: len(flat) - tail + 1], ALTERNATIVES + 1, rng)
    pick = int(rng.integers(0, ALTERNATIVES + 1))
    tokens = np.concatenate([rows[r, : cut + 1], flat[starts[pick] : starts[pick] + tail]])
    return Slot(int(r), tokens, family, cut, np.delete(flat[starts], pick))


def _places(first: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k random places whose tokens (first[place]) differ, as far as random draws find them.
    In natural text a few tokens are frequent, and a spliced token tied with copies of itself
    would rank first only by the tie's coin, which thins out the rank test. The places are the
    first distinct tokens met in random draws (topped up with random places if the text has
    too few): any rule that does not look at the model keeps the spliced token exchangeable
    with the others."""
    got = np.zeros(0, dtype=np.int64)
    for _ in range(8):
        drawn = np.concatenate([got, rng.integers(0, len(first), 4 * k)])
        _, at = np.unique(first[drawn], return_index=True)
        got = drawn[np.sort(at)][:k]
        if len(got) == k:
            return got
    return np.concatenate([got, rng.integers(0, len(first), k - len(got))])


def binomial_tail(x: int, m: int, p: float) -> float:
    """P(Binomial(m, p) >= x)."""
    if x <= 0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(m + 1) - math.lgamma(j + 1) - math.lgamma(m - j + 1) + j * lp + (m - j) * lq
             for j in range(x, min(m, x + 400) + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def causality_test(u: list[float], tops: int, k: int = ALTERNATIVES) -> dict:
    """The two exact tests on the spliced tokens' ranks (docs/judge.md): the sum of the
    uniform ranks (Chernoff bound for sums of uniforms, exp(-6 t^2 / m)) and the count of
    spliced tokens ranked first (binomial with p = 1/(k+1)). Rejects below ALPHA/2 each.
    m, the number of variants, is random but fixed before the run answers: the bounds hold
    given it."""
    m = len(u)
    excess = max(0.0, sum(u) - m / 2)
    p_sum = math.exp(-6 * excess * excess / m) if m else 1.0
    p_top = binomial_tail(tops, m, 1 / (k + 1)) if m else 1.0
    return {"probes": m, "mean_rank": (sum(u) / m) if m else None, "first": tops, "p_rank": p_sum,
            "p_first": p_top, "ok": p_sum >= ALPHA / 2 and p_top >= ALPHA / 2}
