"""Muon for 2-D weight matrices + AdamW for everything else, for MLX.

The same recipe as torch_optim (karpathy/nanochat muon.py, after Keller Jordan's Muon):
Nesterov momentum, quintic Newton-Schulz orthogonalisation, the sqrt(max(1, rows/cols))
scale; AdamW with bias correction and decoupled weight decay. Parameters are named by
their flattened paths, as `mlx.utils.tree_flatten(model.parameters())` spells them:

    opt = MuonAdamW([
        dict(kind="adamw", names=["wte.weight", "lm_head.weight"], lr=0.004, betas=(0.8, 0.95), eps=1e-10),
        dict(kind="muon", names=["blocks.0.attn.c_q.weight", ...], lr=0.02, momentum=0.95, ns_steps=5),
    ], model=model)
    loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
    opt.update(model, grads)
    mx.eval(model.parameters(), opt.state)

Every trainable parameter must be in exactly one group: with `model=` that is checked at
construction, otherwise at the first update (ValueError either way, so nothing is left
silently untrained). Every group keeps "initial_lr" for schedules.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

# The same coefficients and defaults as torch_optim, repeated so MLX users need no torch
# (a test checks the two agree).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
DEFAULTS = {
    "adamw": {"betas": (0.8, 0.95), "eps": 1e-10, "weight_decay": 0.0},
    "muon": {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "weight_decay": 0.0},
}

COMMON_KEYS = {"kind", "names", "lr", "initial_lr"}


def orthogonalize(G: mx.array, steps: int = 5) -> mx.array:
    """Approximately U V^T for G = U S V^T over the last two axes, in float32."""
    X = G.astype(mx.float32)
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = mx.swapaxes(X, -1, -2)
    X = X / (mx.sqrt(mx.sum(X * X, axis=(-2, -1), keepdims=True)) + 1e-7)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        A = X @ mx.swapaxes(X, -1, -2)
        X = a * X + (b * A + c * (A @ A)) @ X
    if tall:
        X = mx.swapaxes(X, -1, -2)
    return X.astype(G.dtype)


def _flat(tree_or_model) -> dict:
    tree = tree_or_model.trainable_parameters() if hasattr(tree_or_model, "trainable_parameters") else tree_or_model
    return dict(tree_flatten(tree))


class MuonAdamW:
    """Groups of kind "muon" (2-D matrices) and "adamw" over named MLX parameters."""

    def __init__(self, groups, model=None):
        self.groups: list[dict] = []
        self._group_of: dict[str, dict] = {}
        for g in groups:
            group = self._complete(dict(g))
            for name in group["names"]:
                if name in self._group_of:
                    raise ValueError(f"parameter {name!r} is in more than one group")
                self._group_of[name] = group
            self.groups.append(group)
        self._moments: dict[str, dict] = {}  # name -> arrays (momentum buffer, or Adam moments)
        self._steps: dict[str, int] = {}
        self._checked = False
        if model is not None:
            self._check(_flat(model))

    @property
    def param_groups(self) -> list[dict]:
        """The groups, as in torch (so one schedule loop serves both frameworks)."""
        return self.groups

    @property
    def state(self) -> dict:
        """The optimizer's arrays as a tree, to pass to mx.eval with the parameters."""
        return self._moments

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
        if isinstance(group.get("names"), str):
            raise ValueError("names must be a list of parameter paths, not one string")
        group["names"] = list(group.get("names", []))
        group = {**DEFAULTS[kind], **group}
        group.setdefault("initial_lr", group["lr"])
        return group

    def _check(self, params: dict) -> None:
        """Every parameter named once; names exist; muon names are 2-D."""
        missing = [n for n in params if n not in self._group_of]
        if missing:
            raise ValueError(f"parameters in no optimizer group (they would never train): {missing}")
        unknown = [n for n in self._group_of if n not in params]
        if unknown:
            raise ValueError(f"optimizer groups name parameters the model does not have: {unknown}")
        bad = [(n, tuple(params[n].shape)) for n, g in self._group_of.items() if g["kind"] == "muon" and params[n].ndim != 2]
        if bad:
            raise ValueError(f"muon groups take only 2-D matrices, got {bad}; put them in an adamw group")
        self._checked = True

    def update(self, model, grads) -> None:
        """One optimizer step: new parameters into `model` (lazily; mx.eval them with self.state)."""
        flat_grads = dict(tree_flatten(grads))
        params = _flat(model)
        if not self._checked:
            self._check(params)
        stray = [n for n in flat_grads if n not in self._group_of]
        if stray:
            raise ValueError(f"gradients for parameters in no optimizer group: {stray}")
        new = []
        for name, grad in flat_grads.items():
            group = self._group_of[name]
            step = self._adamw if group["kind"] == "adamw" else self._muon
            new.append((name, step(name, params[name], grad, group)))
        model.update(tree_unflatten(new))

    def _adamw(self, name: str, p: mx.array, grad: mx.array, group: dict) -> mx.array:
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        g = grad.astype(mx.float32)
        state = self._moments.get(name)
        if state is None:
            # Moments in float32 even for bf16 weights: their squares underflow bf16.
            state = self._moments[name] = {"exp_avg": mx.zeros_like(g), "exp_avg_sq": mx.zeros_like(g)}
        t = self._steps[name] = self._steps.get(name, 0) + 1
        state["exp_avg"] = beta1 * state["exp_avg"] + (1 - beta1) * g
        state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1 - beta2) * (g * g)
        denom = mx.sqrt(state["exp_avg_sq"] / (1 - beta2**t)) + eps
        w = p.astype(mx.float32) * (1 - lr * wd)
        w = w - (lr / (1 - beta1**t)) * (state["exp_avg"] / denom)
        return w.astype(p.dtype)

    def _muon(self, name: str, p: mx.array, grad: mx.array, group: dict) -> mx.array:
        momentum, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        g = grad.astype(mx.float32)
        state = self._moments.get(name)
        if state is None:
            state = self._moments[name] = {"momentum_buffer": mx.zeros_like(g)}
        buf = state["momentum_buffer"] = momentum * state["momentum_buffer"] + (1 - momentum) * g
        update = (1 - momentum) * g + momentum * buf if group["nesterov"] else buf
        ortho = orthogonalize(update, group["ns_steps"])
        scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
        w = p.astype(mx.float32) * (1 - lr * wd) - (lr * scale) * ortho
        return w.astype(p.dtype)
