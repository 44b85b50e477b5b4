"""PyTorch adapter of the fixed harness: the dataloader and evaluate_bpb.

    from autoresearch.data.torch_io import make_dataloader, evaluate_bpb
    for x, y, epoch in make_dataloader(ctx, batch_size): ...   # LongTensors on device
    val_bpb = evaluate_bpb(model, ctx, batch_size)             # model(x) -> logits (B, T, V)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Union

import numpy as np
import torch

from ..errors import ArError
from .context import RunContext
from .loader import DataSpec, check_logits, data_spec, iter_rows, split_rows, validation_rows

# Positions per float32 log-softmax chunk: bounds the temporary copy to ~256 MB
# whatever the vocabulary and batch (the model's own logits are already in memory).
_CE_CHUNK_ELEMENTS = 1 << 26


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _to_device(xy: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(xy)
    if device.type == "cuda":
        # Pinned memory comes from torch's caching host allocator, which keeps the
        # block alive until the asynchronous copy has finished.
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def make_dataloader(ctx: Union[RunContext, DataSpec], batch_size: int, seq_len: int | None = None,
                    split: str = "train", device: Union[str, torch.device, None] = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Forever: (inputs (B, T), targets (B, T), epoch), contiguous LongTensors on `device`
    (default: cuda, else mps, else cpu). T defaults to the profile's MAX_SEQ_LEN."""
    device = torch.device(device) if device is not None else default_device()
    for rows, epoch in iter_rows(ctx, batch_size, seq_len, split):
        xy = _to_device(split_rows(rows, np.int64), device)
        yield xy[0], xy[1], epoch


def _model_device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return default_device()


def _sum_nats(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sum over positions of -log softmax(logits)[target], counted where weight > 0."""
    logits = logits.reshape(-1, logits.shape[-1])
    targets, weight = targets.reshape(-1), weight.reshape(-1)
    step = max(1, _CE_CHUNK_ELEMENTS // logits.shape[-1])
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for i in range(0, logits.shape[0], step):
        lp = torch.log_softmax(logits[i : i + step].float(), dim=-1)
        nats = -lp.gather(1, targets[i : i + step, None]).squeeze(1)
        # where(), not a product: a masked position with an infinite loss must not give NaN.
        total += torch.where(weight[i : i + step] > 0, nats, torch.zeros_like(nats)).sum(dtype=torch.float64)
    return total


def evaluate_bpb(model, ctx: Union[RunContext, DataSpec], batch_size: int,
                 device: Union[str, torch.device, None] = None) -> float:
    """Validation bits per byte of `model` on the fixed validation rows.

    Only the forward pass comes from the model (logits = model(x)); the cross-entropy
    is computed here in float32 and summed over targets with a non-zero byte length,
    then divided by those targets' UTF-8 bytes and converted from nats to bits."""
    spec = data_spec(ctx)
    if batch_size < 1:
        raise ArError(f"evaluate_bpb: batch_size must be positive, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    rows = validation_rows(spec)
    seq_len = rows.shape[1] - 1
    vocab = spec.tokenizer.vocab_size
    token_bytes = torch.from_numpy(spec.tokenizer.token_bytes.astype(np.int64)).to(device)
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    total_nats = 0.0
    total_bytes = 0
    try:
        with torch.no_grad():
            for i in range(0, rows.shape[0], batch_size):
                xy = _to_device(split_rows(rows[i : i + batch_size], np.int64), device)
                x, y = xy[0], xy[1]
                logits = model(x)
                check_logits(logits, x.shape[0], seq_len, vocab)
                nbytes = token_bytes[y]
                total_nats += _sum_nats(logits, y, nbytes).item()
                total_bytes += int(nbytes.sum().item())
    finally:
        if was_training is not None:
            model.train(was_training)
    return total_nats / (math.log(2) * total_bytes)
