"""The run's side of the judge protocol (docs/judge.md), used by evaluate_bpb.

`ar` starts the run with one end of a socketpair and AUTORESEARCH_JUDGE_FD naming it;
this module takes that variable out of os.environ at import (child processes do not
see it, nor inherit the descriptor). evaluate() then answers the judge: for each batch
of inputs it gets, it runs the model once, commits the per-position losses and the
last position's logits, and sends the full logit rows the judge asks for. The number
comes back from the judge; nothing here decides it.
"""

from __future__ import annotations

import contextlib

import socket
from typing import Any, Optional

import numpy as np

from ..errors import ArError
from . import protocol as P
from . import session

_CE_CHUNK_ELEMENTS = 1 << 26  # logits per float32 log-softmax chunk (bounds temporary memory)
WAIT_SECONDS = 3600.0  # for the judge's replies (its own work per batch is small)


_sock: Optional[socket.socket] = None


def active() -> bool:
    """Whether this process was started by `ar` with a judge to answer."""
    return session.fd is not None


def _connection() -> socket.socket:
    global _sock
    if _sock is None:
        if session.fd is None:
            raise ArError("no judge to evaluate with (AUTORESEARCH_JUDGE_FD was not set)")
        _sock = socket.socket(fileno=session.fd)
    return _sock


def evaluate(model: Any, batch_size: int, sock: Optional[socket.socket] = None) -> float:
    """val_bpb of `model` (a TorchModel / MlxModel below, or any object with their
    forward / nats / rows / low_precision / evaluating) as computed by the judge."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ArError(f"evaluate_bpb: batch_size must be a positive integer, got {batch_size!r}")
    sock = sock or _connection()
    _send(sock, {"type": P.HELLO, "version": P.VERSION, "batch_size": batch_size, "train_start": session.train_start})
    head = _recv(sock, {P.CONFIG: 0})
    seq, vocab = int(head["seq_len"]), int(head["vocab"])
    expect = {P.BATCH: lambda h: P.nbytes("int32", int(h["rows"]), seq), P.DONE: 0}
    with model.evaluating():
        while True:
            head, payload = _recv(sock, expect, with_payload=True)
            if head["type"] == P.DONE:
                return float(head["val_bpb"])
            x = P.array(payload, "int32", (int(head["rows"]), seq))
            try:
                logits = model.forward(x, vocab)
                nats = model.nats(logits, x)
                last = model.rows(logits, np.arange(len(x)), np.full(len(x), seq - 1))
            except BaseException as e:
                _abort(sock, e)
                raise
            commit = np.concatenate([np.asarray(nats, np.float32).ravel(), np.asarray(last, np.float32).ravel()])
            _send(sock, {"type": P.COMMIT, "index": head["index"], "low_precision": model.low_precision(logits)},
                   commit)
            head, payload = _recv(sock, {P.CHALLENGE: lambda h: P.nbytes("int32", int(h["count"]), 2)},
                                  with_payload=True)
            at = P.array(payload, "int32", (int(head["count"]), 2))
            rows = model.rows(logits, at[:, 0], at[:, 1])
            _send(sock, {"type": P.LOGITS, "index": head["index"]}, np.asarray(rows, np.float32))
            del logits


def _recv(sock: socket.socket, expect: dict, with_payload: bool = False):
    try:
        head, payload = P.recv(sock, {**expect, P.REJECT: 0}, WAIT_SECONDS, wait=WAIT_SECONDS)
    except P.ProtocolError as e:
        raise ArError(f"evaluate_bpb: lost the judge ({e})") from None
    if head["type"] == P.REJECT:
        raise ArError(f"evaluate_bpb: the judge refused the result ({head.get('category')}): {head.get('reason')}")
    return (head, payload) if with_payload else head


def _send(sock: socket.socket, header: dict, payload: Optional[np.ndarray] = None) -> None:
    try:
        P.send(sock, header, payload, timeout=WAIT_SECONDS)
    except P.ProtocolError as e:
        raise ArError(f"evaluate_bpb: lost the judge ({e})") from None


def _abort(sock: socket.socket, e: BaseException) -> None:
    try:
        P.send(sock, {"type": P.ABORT, "reason": f"{type(e).__name__}: {e}"[:1000]}, timeout=5.0)
    except P.ProtocolError:
        pass


@contextlib.contextmanager
def _eval_mode(model: Any, no_grad):
    """The model in eval mode (when it has one) and `no_grad` around the evaluation, then as it was."""
    was = getattr(model, "training", None)
    if was is not None:
        model.eval()
    try:
        with no_grad:
            yield
    finally:
        if was is not None:
            model.train(was)


class TorchModel:
    """A PyTorch model as the client sees it: logits stay on the model's device."""

    def __init__(self, model: Any, device: Any):
        import torch

        self.torch, self.model, self.device = torch, model, device

    def evaluating(self):
        return _eval_mode(self.model, self.torch.no_grad())

    def forward(self, x: np.ndarray, vocab: int):
        from ..data.loader import check_logits

        logits = self.model(self.torch.from_numpy(x.astype(np.int64)).to(self.device))
        check_logits(logits, x.shape[0], x.shape[1], vocab)
        return logits

    def low_precision(self, logits) -> bool:
        torch = self.torch
        if logits.dtype in (torch.bfloat16, torch.float16):
            return True
        try:
            return bool(torch.is_autocast_enabled(logits.device.type))
        except TypeError:
            return bool(torch.is_autocast_enabled())

    def nats(self, logits, x: np.ndarray) -> np.ndarray:
        """-log softmax(logits)[next token] at positions 0..T-2, float32 (B, T-1)."""
        torch = self.torch
        b, t, v = logits.shape
        targets = torch.from_numpy(x[:, 1:].astype(np.int64)).to(logits.device)
        out = torch.empty((b, t - 1), dtype=torch.float32, device=logits.device)
        step = max(1, _CE_CHUNK_ELEMENTS // max(1, t * v))
        for i in range(0, b, step):
            lp = torch.log_softmax(logits[i : i + step, : t - 1].float(), dim=-1)
            out[i : i + step] = -lp.gather(-1, targets[i : i + step, :, None]).squeeze(-1)
        return out.cpu().numpy()

    def rows(self, logits, bi: np.ndarray, ti: np.ndarray) -> np.ndarray:
        torch = self.torch
        idx = [torch.from_numpy(np.asarray(a, np.int64)).to(logits.device) for a in (bi, ti)]
        return logits[idx[0], idx[1]].float().cpu().numpy()


class MlxModel:
    """An MLX model as the client sees it."""

    def __init__(self, model: Any):
        import mlx.core as mx

        self.mx, self.model = mx, model

    def evaluating(self):
        return _eval_mode(self.model, contextlib.nullcontext())  # MLX differentiates only under mx.grad

    def forward(self, x: np.ndarray, vocab: int):
        from ..data.loader import check_logits

        logits = self.model(self.mx.array(x))
        check_logits(logits, x.shape[0], x.shape[1], vocab)
        return logits

    def low_precision(self, logits) -> bool:
        return logits.dtype in (self.mx.bfloat16, self.mx.float16)

    def nats(self, logits, x: np.ndarray) -> np.ndarray:
        mx = self.mx
        b, t, v = logits.shape
        targets = mx.array(x[:, 1:])
        out = []
        step = max(1, _CE_CHUNK_ELEMENTS // max(1, t * v))
        for i in range(0, b, step):
            chunk = logits[i : i + step, : t - 1].astype(mx.float32)
            tgt = mx.take_along_axis(chunk, targets[i : i + step, :, None], axis=-1).squeeze(-1)
            out.append(np.array(mx.logsumexp(chunk, axis=-1) - tgt))
        return np.concatenate(out).astype(np.float32)

    def rows(self, logits, bi: np.ndarray, ti: np.ndarray) -> np.ndarray:
        mx = self.mx
        return np.array(logits[mx.array(np.asarray(bi, np.int32)), mx.array(np.asarray(ti, np.int32))]
                        .astype(mx.float32))
