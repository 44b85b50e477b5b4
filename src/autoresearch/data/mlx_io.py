"""MLX adapter of the fixed harness: the dataloader and evaluate_bpb.

    from autoresearch.data.mlx_io import make_dataloader, evaluate_bpb
    for x, y, epoch in make_dataloader(ctx, batch_size): ...   # int32 mx.arrays
    val_bpb = evaluate_bpb(model, ctx, batch_size)             # model(x) -> logits (B, T, V)

MLX arrays live in unified memory on the default device, so there is no device argument.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Union

import mlx.core as mx
import numpy as np

from ..errors import ArError
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


def evaluate_bpb(model, ctx: Union[RunContext, DataSpec], batch_size: int) -> float:
    """Validation bits per byte of `model` on the fixed validation rows.

    Only the forward pass comes from the model (logits = model(x)); the cross-entropy
    is computed here in float32 and summed over targets with a non-zero byte length,
    then divided by those targets' UTF-8 bytes and converted from nats to bits.
    No gradients are taken (MLX differentiates only under mx.grad)."""
    spec = data_spec(ctx)
    if batch_size < 1:
        raise ArError(f"evaluate_bpb: batch_size must be positive, got {batch_size}")
    rows = validation_rows(spec)
    seq_len = rows.shape[1] - 1
    vocab = spec.tokenizer.vocab_size
    token_bytes = mx.array(spec.tokenizer.token_bytes)
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
            nbytes = token_bytes[y]
            total_nats += _sum_nats(logits, y, nbytes)
            total_bytes += int(nbytes.sum().item())
    finally:
        if was_training is not None:
            model.train(was_training)
    return total_nats / (math.log(2) * total_bytes)
