"""evaluate_bpb, the fixed metric: the same number on PyTorch and MLX for the same
weights, the exact value for a uniform model, no dependence on the batch size, and
clear errors for a model that does not return (B, T, vocab) logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
mnn = pytest.importorskip("mlx.nn")

from autoresearch.data import mlx_io, torch_io  # noqa: E402
from autoresearch.data.loader import data_spec, validation_rows  # noqa: E402
from autoresearch.errors import ArError  # noqa: E402

D = 32  # model width: tiny, MLX on a CPU is slow


def random_weights(vocab, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"emb": (vocab, D), "wq": (D, D), "wk": (D, D), "wv": (D, D), "wo": (D, D),
              "w1": (D, 4 * D), "w2": (4 * D, D), "head": (D, vocab)}
    return {k: (rng.standard_normal(s) / math.sqrt(s[0]) * (3.0 if k == "head" else 1.0)).astype(np.float32)
            for k, s in shapes.items()}


class TorchGPT(torch.nn.Module):
    """Embedding, one causal single-head attention block, an MLP and an lm_head."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in w.items()})
        self.calls = []  # (training, grad enabled) seen by each forward

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        w = self.w
        h = w["emb"][x]
        q, k, v = h @ w["wq"], h @ w["wk"], h @ w["wv"]
        t = x.shape[1]
        scores = (q @ k.transpose(1, 2)) / math.sqrt(D)
        scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), -1e9)
        h = h + (torch.softmax(scores, dim=-1) @ v) @ w["wo"]
        h = h + torch.relu(h @ w["w1"]) @ w["w2"]
        return h @ w["head"]


class MlxGPT(mnn.Module):
    def __init__(self, w):
        super().__init__()
        for k, v in w.items():
            setattr(self, k, mx.array(v))
        self.calls = []

    def __call__(self, x):
        self.calls.append(self.training)
        h = self.emb[x]
        q, k, v = h @ self.wq, h @ self.wk, h @ self.wv
        t = x.shape[1]
        scores = (q @ k.transpose(0, 2, 1)) / math.sqrt(D)
        scores = scores + mx.triu(mx.full((t, t), -1e9), k=1)
        h = h + (mx.softmax(scores, axis=-1) @ v) @ self.wo
        h = h + mx.maximum(h @ self.w1, 0) @ self.w2
        return h @ self.head


def reference_bpb(ctx, logits_fn):
    """An independent float64 numpy computation of val bpb from the model's logits."""
    spec = data_spec(ctx)
    rows = validation_rows(ctx)
    x, y = rows[:, :-1], rows[:, 1:]
    logits = np.asarray(logits_fn(x), dtype=np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    nats = -np.take_along_axis(logp, y[..., None].astype(np.int64), -1)[..., 0]
    nb = spec.tokenizer.token_bytes[y]
    return nats[nb > 0].sum() / nb.sum() / math.log(2)


@pytest.fixture(scope="module")
def weights(tiny_data_ctx):
    return random_weights(tiny_data_ctx.VOCAB_SIZE)


def test_torch_and_mlx_give_the_same_bpb(tiny_data_ctx, weights):
    tm, mm = TorchGPT(weights), MlxGPT(weights)
    bpb_t = torch_io.evaluate_bpb(tm, tiny_data_ctx, batch_size=8)
    bpb_m = mlx_io.evaluate_bpb(mm, tiny_data_ctx, batch_size=8)
    with torch.no_grad():
        ref = reference_bpb(tiny_data_ctx, lambda x: tm(torch.from_numpy(x.astype(np.int64))).numpy())
    uniform = math.log2(tiny_data_ctx.VOCAB_SIZE)
    assert abs(bpb_t - bpb_m) < 1e-3
    assert abs(bpb_t - ref) < 1e-4
    # The random model is far from uniform, so agreement is not a coincidence of equal logits.
    assert not math.isclose(bpb_t, uniform * 0.3, rel_tol=0.2)


def _uniform_expected(ctx):
    nb = data_spec(ctx).tokenizer.token_bytes[validation_rows(ctx)[:, 1:]]
    assert (nb == 0).any(), "the validation rows hold BOS targets, which must be excluded"
    return math.log2(ctx.VOCAB_SIZE) * int((nb > 0).sum()) / int(nb.sum())


def test_untrained_model_scores_log2_vocab_per_token(tiny_data_ctx, weights):
    zero_head = dict(weights, head=np.zeros_like(weights["head"]))
    expected = _uniform_expected(tiny_data_ctx)
    assert torch_io.evaluate_bpb(TorchGPT(zero_head), tiny_data_ctx, 16) == pytest.approx(expected, rel=1e-6)
    assert mlx_io.evaluate_bpb(MlxGPT(zero_head), tiny_data_ctx, 16) == pytest.approx(expected, rel=1e-6)


def test_bpb_does_not_depend_on_batch_size(tiny_data_ctx, weights):
    tm, mm = TorchGPT(weights), MlxGPT(weights)
    n_rows = validation_rows(tiny_data_ctx).shape[0]
    t = [torch_io.evaluate_bpb(tm, tiny_data_ctx, bs) for bs in (3, 5, n_rows, 4 * n_rows)]
    m = [mlx_io.evaluate_bpb(mm, tiny_data_ctx, bs) for bs in (3, n_rows)]
    assert max(t) - min(t) < 1e-6 and max(m) - min(m) < 1e-6
    # One forward per batch, the last one partial: every row is evaluated exactly once;
    # plus one causality-probe forward per evaluate_bpb call (4 calls).
    assert len(tm.calls) == math.ceil(n_rows / 3) + math.ceil(n_rows / 5) + 1 + 1 + 4


def test_torch_eval_mode_and_no_grad_then_restored(tiny_data_ctx, weights):
    tm = TorchGPT(weights)
    tm.train()
    torch_io.evaluate_bpb(tm, tiny_data_ctx, 32)
    assert tm.calls and all(call == (False, False) for call in tm.calls)
    assert tm.training
    tm.eval()
    torch_io.evaluate_bpb(tm, tiny_data_ctx, 32)
    assert not tm.training
    assert all(p.grad is None for p in tm.parameters())


def test_mlx_eval_mode_then_restored(tiny_data_ctx, weights):
    mm = MlxGPT(weights)
    mm.train()
    mlx_io.evaluate_bpb(mm, tiny_data_ctx, 32)
    assert mm.calls == [False, False]  # the batch and the causality probe
    assert mm.training


@pytest.mark.parametrize(
    "bad",
    [
        lambda x, v: torch.zeros(x.shape[0], x.shape[1], v + 64),  # padded vocabulary
        lambda x, v: torch.zeros(x.shape[0] * x.shape[1], v),  # flattened
        lambda x, v: (torch.zeros(x.shape[0], x.shape[1], v), None),  # a tuple
    ],
)
def test_wrong_logits_are_a_clear_error(tiny_data_ctx, bad):
    v = tiny_data_ctx.VOCAB_SIZE
    with pytest.raises(ArError, match=r"must return logits of shape \(batch, seq_len, vocab\) = \(4, 64, 512\)"):
        torch_io.evaluate_bpb(lambda x: bad(x, v), tiny_data_ctx, 4)
    with pytest.raises(ArError, match="must return logits of shape"):
        mlx_io.evaluate_bpb(lambda x: mx.zeros((x.shape[0], x.shape[1], v + 1)), tiny_data_ctx, 4)


def test_dataloaders_yield_framework_arrays(tiny_data_ctx):
    x, y, epoch = next(torch_io.make_dataloader(tiny_data_ctx, 4, device="cpu"))
    assert x.dtype == torch.long and x.shape == (4, 64) and x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1]) and epoch == 1
    xm, ym, _ = next(mlx_io.make_dataloader(tiny_data_ctx, 4, seq_len=32))
    assert xm.dtype == mx.int32 and xm.shape == (4, 32)
    assert np.array_equal(np.array(xm)[:, 1:], np.array(ym)[:, :-1])
    # Both backends serve the same token stream.
    xt, _, _ = next(torch_io.make_dataloader(tiny_data_ctx, 4, seq_len=32, device="cpu"))
    assert np.array_equal(xt.numpy(), np.array(xm))
