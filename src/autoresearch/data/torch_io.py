"""PyTorch adapter of the fixed harness: the dataloader and evaluate_bpb.

    from autoresearch.data.torch_io import make_dataloader, evaluate_bpb
    for x, y, epoch in make_dataloader(ctx, batch_size): ...   # LongTensors on device
    val_bpb = evaluate_bpb(model, ctx, batch_size)             # model(x) -> logits (B, T, V)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Optional, Union

import numpy as np
import torch

from ..errors import ArError
from ..judge import client as _judge  # takes AUTORESEARCH_JUDGE_FD out of os.environ
from . import causality
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


def _low_precision(logits: torch.Tensor, device: torch.device) -> bool:
    if logits.dtype in (torch.bfloat16, torch.float16):
        return True
    try:
        return bool(torch.is_autocast_enabled(device.type))
    except TypeError:  # torch < 2.4: no device argument
        return bool(torch.is_autocast_enabled())


def _probe_causality(model, logits: torch.Tensor, x_np: np.ndarray, rows: np.ndarray, first_row: int,
                     vocab: int, device: torch.device) -> Optional[causality.Verdict]:
    """Run the model on a copy of this batch with every row's tail replaced after a random
    cut; the logits up to the cut must not move (see causality.py). None when the
    logits are not finite (the evaluation fails on its own then)."""
    variant, cuts = causality.make_variant(x_np, rows, first_row, vocab)
    lv = model(_to_device(variant.astype(np.int64), device))
    check_logits(lv, x_np.shape[0], x_np.shape[1], vocab)
    per_row, where, scale = np.zeros(len(cuts)), np.zeros(len(cuts), dtype=np.int64), 0.0
    for i, cut in enumerate(cuts):  # row by row: no float32 copy of the whole batch's logits
        b0, b1 = logits[i, : cut + 1].float(), lv[i, : cut + 1].float()
        if torch.isnan(b0).any():
            return None
        # Equal values differ by 0 (also two -inf of a masked vocabulary entry).
        d = torch.where(b1 == b0, torch.zeros_like(b0), (b1 - b0).abs()).amax(-1)
        m, pos = d.max(0)
        per_row[i], where[i] = m.item(), pos.item()
        scale = max(scale, torch.where(torch.isfinite(b0), b0.abs(), torch.zeros_like(b0)).max().item())
    return causality.judge(per_row, where, scale, cuts, _low_precision(logits, device))


def evaluate_bpb(model, ctx: Union[RunContext, DataSpec], batch_size: int,
                 device: Union[str, torch.device, None] = None) -> float:
    """Validation bits per byte of `model` on the fixed validation rows.

    Only the forward pass comes from the model (logits = model(x)); the cross-entropy
    is computed here in float32 and summed over targets with a non-zero byte length,
    then divided by those targets' UTF-8 bytes and converted from nats to bits.

    Run by `ar`, the number comes from its judge, outside this process (judge/client.py,
    docs/judge.md). Run by hand (`python train.py`), it is computed here, and the model
    must pass the causality probe (one extra forward pass on a batch of the same shape)
    or ArError says why."""
    if _judge.active():  # started by `ar` with a judge: the number comes from outside this process
        dev = torch.device(device) if device is not None else _model_device(model)
        return _judge.evaluate(_judge.TorchModel(model, dev), batch_size)
    spec = data_spec(ctx)
    if batch_size < 1:
        raise ArError(f"evaluate_bpb: batch_size must be positive, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    rows = validation_rows(spec)
    seq_len = rows.shape[1] - 1
    vocab = spec.tokenizer.vocab_size
    token_bytes = torch.from_numpy(spec.tokenizer.token_bytes.astype(np.int64)).to(device)
    probe_at = causality.pick_batch(-(-rows.shape[0] // batch_size)) * batch_size
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    total_nats = 0.0
    total_bytes = 0
    try:
        with torch.no_grad():
            for i in range(0, rows.shape[0], batch_size):
                xy_np = split_rows(rows[i : i + batch_size], np.int64)
                xy = _to_device(xy_np, device)
                x, y = xy[0], xy[1]
                logits = model(x)
                check_logits(logits, x.shape[0], seq_len, vocab)
                if i == probe_at:
                    verdict = _probe_causality(model, logits, xy_np[0], rows, i, vocab, device)
                    if verdict is not None and not verdict.ok:
                        raise ArError(f"evaluate_bpb refused the result: the model is not causal: {verdict.detail}")
                nbytes = token_bytes[y]
                total_nats += _sum_nats(logits, y, nbytes).item()
                total_bytes += int(nbytes.sum().item())
    finally:
        if was_training is not None:
            model.train(was_training)
    return total_nats / (math.log(2) * total_bytes)
