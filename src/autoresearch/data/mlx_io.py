"""MLX adapter of the fixed harness: the dataloader and evaluate_bpb.

    from autoresearch.data.mlx_io import make_dataloader, evaluate_bpb
    for x, y, epoch in make_dataloader(ctx, batch_size): ...   # int32 mx.arrays
    val_bpb = evaluate_bpb(model, ctx, batch_size)             # model(x) -> logits (B, T, V)

MLX arrays live in unified memory on the default device, so there is no device argument.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Optional, Union

import mlx.core as mx
import numpy as np

from ..errors import ArError
from ..judge import client as _judge  # takes AUTORESEARCH_JUDGE_FD out of os.environ
from . import causality
from .context import RunContext
from .loader import DataSpec, check_logits, data_spec, iter_rows, split_rows, validation_rows

# Positions per float32 log-softmax chunk (evaluated chunk by chunk to bound memory).
_CE_CHUNK_ELEMENTS = 1 << 26


def make_dataloader(ctx: Union[RunContext, DataSpec], batch_size: int, seq_len: int | None = None,
                    split: str = "train") -> Iterator[tuple[mx.array, mx.array, int]]:
    """Forever: (inputs (B, T), targets (B, T), epoch) as int32 mx.arrays.
    T defaults to the profile's MAX_SEQ_LEN."""
    for rows, epoch in iter_rows(ctx, batch_size, seq_len, split):
        xy = split_rows(rows, np.int32)
        yield mx.array(xy[0]), mx.array(xy[1]), epoch


def _sum_nats(logits: mx.array, targets: mx.array, weight: mx.array) -> float:
    """Sum over positions of -log softmax(logits)[target], counted where weight > 0."""
    logits = logits.reshape(-1, logits.shape[-1])
    targets, weight = targets.reshape(-1), weight.reshape(-1)
    step = max(1, _CE_CHUNK_ELEMENTS // logits.shape[-1])
    total = 0.0
    for i in range(0, logits.shape[0], step):
        chunk = logits[i : i + step].astype(mx.float32)
        tgt = mx.take_along_axis(chunk, targets[i : i + step, None], axis=-1).squeeze(-1)
        nats = mx.logsumexp(chunk, axis=-1) - tgt
        # where(), not a product: a masked position with an infinite loss must not give NaN.
        nats = mx.where(weight[i : i + step] > 0, nats, mx.zeros_like(nats))
        # Summed in float64 by numpy (Metal has no float64): a float32 sum of many
        # positions would drift from the PyTorch number.
        total += float(np.array(nats).sum(dtype=np.float64))
    return total


def _probe_causality(model, logits: mx.array, x_np: np.ndarray, rows: np.ndarray, first_row: int,
                     vocab: int) -> Optional[causality.Verdict]:
    """The causality probe (causality.py): the logits up to each row's random cut must not
    move when the tokens after it change. None when the logits are not finite."""
    variant, cuts = causality.make_variant(x_np, rows, first_row, vocab)
    lv = model(mx.array(variant.astype(np.int32)))
    check_logits(lv, x_np.shape[0], x_np.shape[1], vocab)
    low = logits.dtype in (mx.bfloat16, mx.float16)
    per_row, where, scale = np.zeros(len(cuts)), np.zeros(len(cuts), dtype=np.int64), 0.0
    for i, cut in enumerate(cuts):  # row by row: no float32 copy of the whole batch's logits
        b0, b1 = logits[i, : int(cut) + 1].astype(mx.float32), lv[i, : int(cut) + 1].astype(mx.float32)
        if mx.any(mx.isnan(b0)).item():
            return None
        # Equal values differ by 0 (also two -inf of a masked vocabulary entry).
        d = mx.max(mx.where(b1 == b0, mx.zeros_like(b0), mx.abs(b1 - b0)), axis=-1)
        per_row[i], where[i] = mx.max(d).item(), mx.argmax(d).item()
        scale = max(scale, mx.max(mx.where(mx.isinf(b0), mx.zeros_like(b0), mx.abs(b0))).item())
    return causality.judge(per_row, where, scale, cuts, low)


def evaluate_bpb(model, ctx: Union[RunContext, DataSpec], batch_size: int) -> float:
    """Validation bits per byte of `model` on the fixed validation rows.

    Only the forward pass comes from the model (logits = model(x)); the cross-entropy
    is computed here in float32 and summed over targets with a non-zero byte length,
    then divided by those targets' UTF-8 bytes and converted from nats to bits.
    No gradients are taken (MLX differentiates only under mx.grad).

    Run by `ar`, the number comes from its judge, outside this process (judge/client.py,
    docs/judge.md). Run by hand (`python train.py`), it is computed here, and the model
    must pass the causality probe (one extra forward pass on a batch of the same shape)
    or ArError says why."""
    if _judge.active():  # started by `ar` with a judge: the number comes from outside this process
        return _judge.evaluate(_judge.MlxModel(model), batch_size)
    spec = data_spec(ctx)
    if batch_size < 1:
        raise ArError(f"evaluate_bpb: batch_size must be positive, got {batch_size}")
    rows = validation_rows(spec)
    seq_len = rows.shape[1] - 1
    vocab = spec.tokenizer.vocab_size
    token_bytes = mx.array(spec.tokenizer.token_bytes)
    probe_at = causality.pick_batch(-(-rows.shape[0] // batch_size)) * batch_size
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    total_nats = 0.0
    total_bytes = 0
    try:
        for i in range(0, rows.shape[0], batch_size):
            xy = split_rows(rows[i : i + batch_size], np.int32)
            x, y = mx.array(xy[0]), mx.array(xy[1])
            logits = model(x)
            check_logits(logits, x.shape[0], seq_len, vocab)
            if i == probe_at:
                verdict = _probe_causality(model, logits, xy[0], rows, i, vocab)
                if verdict is not None and not verdict.ok:
                    raise ArError(f"evaluate_bpb refused the result: the model is not causal: {verdict.detail}")
            nbytes = token_bytes[y]
            total_nats += _sum_nats(logits, y, nbytes)
            total_bytes += int(nbytes.sum().item())
    finally:
        if was_training is not None:
            model.train(was_training)
    return total_nats / (math.log(2) * total_bytes)
