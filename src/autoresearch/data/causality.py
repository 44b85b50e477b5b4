"""The causality probe of evaluate_bpb, framework-neutral part (numpy only).

A language model may use tokens 0..t to predict token t+1, never later ones. A model
that looks ahead (attention without the causal mask, a convolution centred on the
position, a norm over the whole sequence, expert-choice routing) gets a val_bpb that
means nothing, however low.

The probe: for one evaluation batch (picked at random), the adapter runs the model
again on a copy in which every row's tokens after a random cut position t were replaced
by the tokens of another validation row (natural text, so the copy does not look like a
probe), and compares the logits at positions <= t with those of the original batch. The
copy has the batch's exact shape, so a compiled model is not recompiled and runs the
same kernels, and a causal model gives the same logits up to float noise.

Tolerance: RTOL_FP32 (1e-4) of the largest |logit| at the compared positions for float32
logits, RTOL_LOW (1e-2) when the logits or the autocast context are bf16/fp16. A
leak that moves no logit by more than the tolerance goes unnoticed; it can lower the
loss by at most about 2 x tolerance nats per token.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

RTOL_FP32 = 1e-4
RTOL_LOW = 1e-2


def pick_batch(n_batches: int) -> int:
    """Which evaluation batch is probed: unpredictable to the model."""
    return secrets.randbelow(max(1, n_batches))


def make_variant(x: np.ndarray, rows: np.ndarray, first_row: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(variant inputs, cut per row) for the inputs `x` (B, T) of the batch that starts at
    validation row `first_row`: row i keeps its tokens 0..cut[i] and takes the rest from
    another validation row (shifted by one token id where that row happens to agree)."""
    b, t = x.shape
    n = rows.shape[0]
    cuts = np.array([secrets.randbelow(max(1, t - 1)) for _ in range(b)], dtype=np.int64)
    shift = 1 + secrets.randbelow(n - 1) if n > 1 else 0
    variant = np.array(x, copy=True)
    for i in range(b):
        donor = rows[(first_row + i + shift) % n, :-1] if shift else (x[i] + 1) % vocab
        c = int(cuts[i])
        tail = np.array(donor[c + 1 :], dtype=variant.dtype)
        same = tail == variant[i, c + 1 :]
        tail[same] = (tail[same] + 1) % vocab  # every later token differs: a stronger probe
        variant[i, c + 1 :] = tail
    return variant, cuts


def tolerance(scale: float, low_precision: bool) -> float:
    return (RTOL_LOW if low_precision else RTOL_FP32) * max(float(scale), 1.0)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    max_diff: float  # the largest |logit change| at a position <= its row's cut
    scale: float  # the largest |logit| there
    tolerance: float
    position: int  # where max_diff was found
    cut: int  # that row's cut
    positions: int  # how many positions were compared

    def as_dict(self) -> dict:
        return {"ok": self.ok, "max_diff": self.max_diff, "scale": self.scale, "tolerance": self.tolerance,
                "position": self.position, "cut": self.cut, "positions": self.positions}

    @property
    def detail(self) -> str:
        return (f"changing the tokens after position {self.cut} changed the logits at position {self.position} "
                f"by {self.max_diff:.4g} (tolerance {self.tolerance:.3g}); the model looks at later tokens "
                "(use a causal attention mask), or its forward pass is not deterministic")


def judge(max_diff_per_row: np.ndarray, argmax_per_row: np.ndarray, scale: float, cuts: np.ndarray,
          low_precision: bool) -> Verdict:
    """The verdict from the adapter's per-row numbers (largest change at positions <= cut,
    and where)."""
    tol = tolerance(scale, low_precision)
    diffs = np.nan_to_num(np.asarray(max_diff_per_row, dtype=np.float64), nan=np.inf)
    worst = int(np.argmax(diffs))
    max_diff = float(diffs[worst])
    return Verdict(ok=bool(max_diff <= tol), max_diff=max_diff, scale=float(scale), tolerance=tol,
                   position=int(argmax_per_row[worst]), cut=int(cuts[worst]), positions=int((cuts + 1).sum()))
