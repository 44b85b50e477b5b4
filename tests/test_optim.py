"""Muon + AdamW for PyTorch and MLX: orthogonalisation, training, agreement, validation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from autoresearch.backends import torch_optim  # noqa: E402

try:  # MLX is optional (absent on CUDA machines): only its tests skip without it
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from autoresearch.backends import mlx_optim
except ImportError:
    mx = None
needs_mlx = pytest.mark.skipif(mx is None, reason="needs mlx")


def conditioned(shape, smallest=0.05, seed=0) -> np.ndarray:
    """A matrix whose singular values spread from 1 down to `smallest`."""
    rng = np.random.default_rng(seed)
    u, _, vt = np.linalg.svd(rng.standard_normal(shape), full_matrices=False)
    s = np.geomspace(1.0, smallest, min(shape))
    return (u * s) @ vt


SHAPES = [(64, 16), (16, 48), (32, 32)]


@pytest.mark.parametrize("shape", SHAPES)
def test_torch_newton_schulz_is_near_orthogonal(shape):
    G = torch.from_numpy(conditioned(shape)).float() * 7.0  # scale must not matter
    s = torch.linalg.svdvals(torch_optim.orthogonalize(G, 5))
    assert s.min() > 0.5 and s.max() < 1.5, s  # input spread 20x, output within [0.5, 1.5]


@pytest.mark.parametrize("shape", SHAPES)
@needs_mlx
def test_mlx_newton_schulz_is_near_orthogonal(shape):
    G = mx.array(conditioned(shape).astype(np.float32)) * 7.0
    s = np.linalg.svd(np.array(mlx_optim.orthogonalize(G, 5)), compute_uv=False)
    assert s.min() > 0.5 and s.max() < 1.5, s


def test_newton_schulz_batched_matches_one_by_one():
    G = torch.from_numpy(np.stack([conditioned((24, 8), seed=i) for i in range(3)])).float()
    batched = torch_optim.orthogonalize(G, 5)
    for i in range(3):
        torch.testing.assert_close(batched[i], torch_optim.orthogonalize(G[i], 5), atol=1e-5, rtol=1e-5)


@needs_mlx
def test_both_frameworks_share_coefficients_and_defaults():
    assert mlx_optim.NS_COEFFS == torch_optim.NS_COEFFS == (3.4445, -4.7750, 2.0315)
    assert mlx_optim.DEFAULTS == torch_optim.DEFAULTS


# --------------------------------------------------------------------------- a tiny regression

RNG = np.random.default_rng(1)
X = RNG.standard_normal((256, 16)).astype(np.float32)
Y = (np.tanh(X @ RNG.standard_normal((16, 32))) @ RNG.standard_normal((32, 1))).astype(np.float32)


def test_torch_muon_adamw_trains_a_small_mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = torch_optim.MuonAdamW([
        dict(kind="muon", params=[net[0].weight, net[2].weight], lr=0.02, momentum=0.95, ns_steps=5),
        dict(kind="adamw", params=[net[0].bias, net[2].bias, net[4].weight, net[4].bias], lr=0.01, betas=(0.8, 0.95)),
    ])
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def MLP():
    """16 -> 64 -> 64 -> 1 with tanh, as an MLX module."""

    class _MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 1)

        def __call__(self, x):
            return self.l3(mx.tanh(self.l2(mx.tanh(self.l1(x)))))

    return _MLP()


def mlx_groups(muon_lr=0.02, adam_lr=0.01):
    return [
        dict(kind="muon", names=["l1.weight", "l2.weight"], lr=muon_lr, momentum=0.95, ns_steps=5),
        dict(kind="adamw", names=["l1.bias", "l2.bias", "l3.weight", "l3.bias"], lr=adam_lr, betas=(0.8, 0.95)),
    ]


@needs_mlx
def test_mlx_muon_adamw_trains_a_small_mlp():
    mx.random.seed(0)
    net = MLP()
    opt = mlx_optim.MuonAdamW(mlx_groups(), model=net)
    step = nn.value_and_grad(net, lambda m, x, y: nn.losses.mse_loss(m(x), y))
    x, y = mx.array(X), mx.array(Y)
    losses = []
    for _ in range(50):
        loss, grads = step(net, x, y)
        opt.update(net, grads)
        mx.eval(net.parameters(), opt.state)
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    assert set(opt.state) == {name for name, _ in tree_flatten(net.parameters())}


# --------------------------------------------------------------------------- torch and MLX agree


@needs_mlx
def test_torch_and_mlx_give_the_same_updates():
    """Same weights, same gradients, three steps: Muon (tall and wide) and AdamW with decay agree."""
    rng = np.random.default_rng(2)
    shapes = {"tall": (24, 8), "wide": (8, 40), "bias": (8,), "emb": (10, 4)}
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(3)]

    tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in init.items()}
    topt = torch_optim.MuonAdamW([
        dict(kind="muon", params=[tp["tall"], tp["wide"]], lr=0.02, momentum=0.9, weight_decay=0.1),
        dict(kind="adamw", params=[tp["bias"], tp["emb"]], lr=0.01, betas=(0.8, 0.95), weight_decay=0.2),
    ])

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            for k, v in init.items():
                setattr(self, k, mx.array(v))

    holder = Holder()
    mopt = mlx_optim.MuonAdamW([
        dict(kind="muon", names=["tall", "wide"], lr=0.02, momentum=0.9, weight_decay=0.1),
        dict(kind="adamw", names=["bias", "emb"], lr=0.01, betas=(0.8, 0.95), weight_decay=0.2),
    ], model=holder)

    for g in grads:
        for k, p in tp.items():
            p.grad = torch.from_numpy(g[k])
        topt.step()
        mopt.update(holder, {k: mx.array(v) for k, v in g.items()})
        mx.eval(holder.parameters(), mopt.state)
        for k in shapes:
            moved = np.abs(tp[k].detach().numpy() - init[k]).max()
            assert moved > 1e-3  # something happened
            np.testing.assert_allclose(np.array(getattr(holder, k)), tp[k].detach().numpy(), atol=1e-4, rtol=1e-4)


def test_muon_step_size_follows_the_aspect_ratio():
    """First step from rest: the change is lr * sqrt(max(1, rows/cols)) times a near-orthogonal matrix."""
    for shape, scale in (((64, 16), 2.0), ((16, 64), 1.0)):
        p = torch.nn.Parameter(torch.zeros(shape))
        opt = torch_optim.MuonAdamW([dict(kind="muon", params=[p], lr=0.1)])
        p.grad = torch.from_numpy(conditioned(shape)).float()
        opt.step()
        s = torch.linalg.svdvals(p.detach()) / (0.1 * scale)
        assert s.min() > 0.5 and s.max() < 1.5, (shape, s)


# --------------------------------------------------------------------------- schedules and validation


def test_initial_lr_and_zero_lr_freezes_torch():
    p = torch.nn.Parameter(torch.randn(8, 4))
    b = torch.nn.Parameter(torch.randn(4))
    opt = torch_optim.MuonAdamW([dict(kind="muon", params=[p], lr=0.02), dict(kind="adamw", params=[b], lr=0.003)])
    assert [g["initial_lr"] for g in opt.param_groups] == [0.02, 0.003]
    before = (p.detach().clone(), b.detach().clone())
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] * 0.0  # the end of a warm-down
    p.grad, b.grad = torch.randn(8, 4), torch.randn(4)
    opt.step()
    assert torch.equal(p.detach(), before[0]) and torch.equal(b.detach(), before[1])
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"]
    opt.step()
    assert not torch.equal(p.detach(), before[0]) and not torch.equal(b.detach(), before[1])


@needs_mlx
def test_initial_lr_and_zero_lr_freezes_mlx():
    net = MLP()
    opt = mlx_optim.MuonAdamW(mlx_groups(0.02, 0.003), model=net)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.02, 0.003]
    before = {k: np.array(v) for k, v in tree_flatten(net.parameters())}
    step = nn.value_and_grad(net, lambda m, x, y: nn.losses.mse_loss(m(x), y))
    x, y = mx.array(X[:32]), mx.array(Y[:32])
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] * 0.0
    _, grads = step(net, x, y)
    opt.update(net, grads)
    mx.eval(net.parameters(), opt.state)
    assert all(np.array_equal(np.array(v), before[k]) for k, v in tree_flatten(net.parameters()))


def test_torch_rejects_bad_groups():
    w, b = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4))
    with pytest.raises(ValueError, match="2-D"):
        torch_optim.MuonAdamW([dict(kind="muon", params=[w, b], lr=0.02)])
    with pytest.raises(ValueError, match="kind"):
        torch_optim.MuonAdamW([dict(kind="sgd", params=[w], lr=0.02)])
    with pytest.raises(ValueError, match="beta2"):  # a setting this optimizer does not have is not silently ignored
        torch_optim.MuonAdamW([dict(kind="muon", params=[w], lr=0.02, beta2=0.95)])
    with pytest.raises(ValueError, match="lr"):
        torch_optim.MuonAdamW([dict(kind="adamw", params=[b])])


@needs_mlx
def test_mlx_rejects_bad_groups():
    net = MLP()
    groups = mlx_groups()
    groups[0]["names"].append("l1.bias")
    groups[1]["names"].remove("l1.bias")
    with pytest.raises(ValueError, match="2-D"):
        mlx_optim.MuonAdamW(groups, model=net)
    with pytest.raises(ValueError, match=r"in no optimizer group.*l3\.bias"):
        mlx_optim.MuonAdamW([mlx_groups()[0], dict(kind="adamw", names=["l1.bias", "l2.bias", "l3.weight"], lr=0.01)], model=net)
    with pytest.raises(ValueError, match="does not have.*l4.weight"):
        mlx_optim.MuonAdamW(mlx_groups() + [dict(kind="adamw", names=["l4.weight"], lr=0.01)], model=net)
    with pytest.raises(ValueError, match="more than one group"):
        mlx_optim.MuonAdamW(mlx_groups() + [dict(kind="adamw", names=["l3.bias"], lr=0.01)])
    with pytest.raises(ValueError, match="beta2"):
        mlx_optim.MuonAdamW([dict(kind="muon", names=["l1.weight"], lr=0.02, beta2=0.95)])


@needs_mlx
def test_mlx_without_model_checks_at_first_update():
    net = MLP()
    opt = mlx_optim.MuonAdamW([mlx_groups()[0]])  # the adamw parameters are missing
    _, grads = nn.value_and_grad(net, lambda m, x: m(x).sum())(net, mx.array(X[:4]))
    with pytest.raises(ValueError, match="in no optimizer group"):
        opt.update(net, grads)


# --------------------------------------------------------------------------- accelerators (skipped on CPU-only machines)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_newton_schulz_matches_cpu():
    G = torch.from_numpy(conditioned((256, 64))).float()
    on_gpu = torch_optim.orthogonalize(G.cuda(), 5).cpu()
    s = torch.linalg.svdvals(on_gpu)
    assert s.min() > 0.5 and s.max() < 1.5
    torch.testing.assert_close(on_gpu, torch_optim.orthogonalize(G, 5), atol=1e-2, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_matches_cpu_step():
    rng = np.random.default_rng(3)
    init, grad = rng.standard_normal((96, 32)).astype(np.float32), rng.standard_normal((96, 32)).astype(np.float32)
    results = []
    for device in ("cpu", "cuda"):
        p = torch.nn.Parameter(torch.tensor(init, device=device))
        opt = torch_optim.MuonAdamW([dict(kind="muon", params=[p], lr=0.05)])
        p.grad = torch.tensor(grad, device=device)
        opt.step()
        results.append(p.detach().cpu())
    torch.testing.assert_close(results[1], results[0], atol=1e-2, rtol=0)


@pytest.mark.skipif(not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()), reason="needs Apple MPS")
def test_mps_step_matches_cpu_step():
    rng = np.random.default_rng(3)
    init, grad = rng.standard_normal((96, 32)).astype(np.float32), rng.standard_normal((96, 32)).astype(np.float32)
    results = []
    for device in ("cpu", "mps"):
        p = torch.nn.Parameter(torch.tensor(init, device=device))
        b = torch.nn.Parameter(torch.zeros(32, device=device))
        opt = torch_optim.MuonAdamW([dict(kind="muon", params=[p], lr=0.05), dict(kind="adamw", params=[b], lr=0.01)])
        p.grad, b.grad = torch.tensor(grad, device=device), torch.ones(32, device=device)
        opt.step()
        results.append((p.detach().cpu(), b.detach().cpu()))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
