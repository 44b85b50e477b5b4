"""Muon for 2-D weight matrices + AdamW for everything else, for PyTorch (cuda, mps, cpu).

The recipe is the one karpathy/nanochat (nanochat/muon.py) and karpathy/autoresearch
(train.py) use, after Keller Jordan's Muon (https://kellerjordan.github.io/posts/muon/):
SGD with Nesterov momentum whose update is replaced by the nearest (semi-)orthogonal
matrix, found with five steps of a quintic Newton-Schulz iteration, and scaled by
sqrt(max(1, rows / cols)). Embeddings, the output head and scalars should use AdamW.
Written here from that description; weight decay is plain decoupled decay.

    opt = MuonAdamW([
        dict(kind="adamw", params=[...], lr=0.004, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0),
        dict(kind="muon", params=[...2-D tensors], lr=0.02, momentum=0.95, ns_steps=5, weight_decay=0.0),
    ])

Every group keeps "initial_lr", so a schedule sets group["lr"] = group["initial_lr"] * mult.
"""

from __future__ import annotations

import torch

# Quintic Newton-Schulz coefficients from Keller Jordan's Muon, chosen for a steep slope
# at zero: in five steps singular values within ~100x of the largest land in about
# [0.7, 1.2] rather than exactly at 1, which trains just as well and costs fewer steps.
NS_COEFFS = (3.4445, -4.7750, 2.0315)

DEFAULTS = {
    "adamw": {"betas": (0.8, 0.95), "eps": 1e-10, "weight_decay": 0.0},
    "muon": {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "weight_decay": 0.0},
}
COMMON_KEYS = {"kind", "params", "lr", "initial_lr"}


def orthogonalize(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T for G = U S V^T, over the last two dims (batched).

    Runs in bfloat16 on CUDA (fast and stable enough there), float32 elsewhere.
    """
    dtype = torch.bfloat16 if G.is_cuda else torch.float32
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        X = X.mT
    # Frobenius norm >= spectral norm, so this puts every singular value in [0, 1].
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer for a whole model: groups of kind "muon" (2-D matrices) and "adamw"."""

    def __init__(self, param_groups):
        groups = [self._complete(dict(g)) for g in param_groups]
        super().__init__(groups, defaults={})
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    @staticmethod
    def _complete(group: dict) -> dict:
        kind = group.get("kind")
        if kind not in DEFAULTS:
            raise ValueError(f"each group needs kind 'muon' or 'adamw', got {kind!r}")
        if "lr" not in group:
            raise ValueError(f"a {kind} group needs an lr")
        unknown = set(group) - COMMON_KEYS - set(DEFAULTS[kind])
        if unknown:
            raise ValueError(f"unknown {kind} settings {sorted(unknown)}; allowed: {sorted(COMMON_KEYS | set(DEFAULTS[kind]))}")
        params = group["params"] = list(group["params"])
        if kind == "muon":
            bad = [tuple(p.shape) for p in params if p.ndim != 2]
            if bad:
                raise ValueError(f"muon groups take only 2-D matrices, got shapes {bad}; put them in an adamw group")
        return {**DEFAULTS[kind], **group}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._adamw(group)
            else:
                self._muon(group)
        return loss

    def _adamw(self, group: dict) -> None:
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                # Moments in float32 even for bf16 weights: their squares underflow bf16.
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            state["step"] += 1
            t = state["step"]
            grad = p.grad.float()
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_sq"].lerp_(grad.square(), 1 - beta2)
            denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(eps)
            update = state["exp_avg"] / denom
            w = p.float() if p.dtype != torch.float32 else p
            w.mul_(1 - lr * wd).add_(update, alpha=-lr / (1 - beta1**t))
            if w is not p:
                p.copy_(w)

    def _muon(self, group: dict) -> None:
        momentum, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        by_shape: dict = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
            buf = state["momentum_buffer"]
            grad = p.grad.float()
            buf.lerp_(grad, 1 - momentum)
            update = torch.lerp(grad, buf, momentum) if group["nesterov"] else buf
            by_shape.setdefault(p.shape, []).append((p, update))
        # Orthogonalize same-shaped matrices together: one batched matmul chain each.
        for shape, items in by_shape.items():
            ortho = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"])
            scale = max(1.0, shape[0] / shape[1]) ** 0.5
            for (p, _), o in zip(items, ortho.unbind(0)):
                p.mul_(1 - lr * wd).add_(o.to(p.dtype), alpha=-lr * scale)
