"""Do the templates train as fast as a plain GPT? Tokens/s and MFU, template vs reference.

    python benchmarks/templates.py [--seconds 20] [--only torch|mlx] [--backend cpu|cuda|mps]

For each template (train.py with PyTorch; train_mlx.py when mlx is installed), on the
tiny profile with the template's own default size for this machine:
  - runs the template the way `ar run` does (a copy in a temp folder, a subprocess, the
    time budget set to --seconds) and reads its steady-state tokens/s (median of the
    progress lines after warm-up) and its MFU (summary block)
  - then trains, in this process and for the same seconds, a minimal reference GPT of the
    same shape (depth, width, heads, vocabulary, sequence length, rows per pass) in the
    same framework and precision: learned positions, LayerNorm, GELU MLP, untied head,
    plain AdamW, one pass per step, no compilation, the same dataloader
  - prints both and the ratio template / reference (about 1.0 or more is what we want:
    the template's extras, Muon and gradient accumulation, cost little throughput)
MFU uses the same FLOPs formula for both (6 x matmul parameters + attention) and
autoresearch.backends.peak_flops. The data is a throw-away tiny-profile cache built from
the built-in corpus (or --cache).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from autoresearch.backends import choose_backend, detect_hardware, peak_flops
from autoresearch.data.context import RunContext
from autoresearch.data.prepare import prepare_data
from autoresearch.data.profiles import get_profile
from autoresearch.errors import ArError
from autoresearch.run.summary import parse_progress, parse_summary

TEMPLATES = Path(str(resources.files("autoresearch") / "templates"))
SHAPE_LINE = re.compile(r"^model: depth=(\d+) dim=(\d+) heads=(\d+) vocab=(\d+) seq_len=(\d+) device_batch=(\d+)", re.M)


def run_template(name: str, cache: Path, seconds: float, backend: str | None) -> dict:
    """Run one template; its shape, precision, tokens/s and MFU."""
    with tempfile.TemporaryDirectory() as work:
        script = Path(work) / name
        script.write_text((TEMPLATES / name).read_text(encoding="utf-8"), encoding="utf-8")
        env = dict(os.environ, AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_PROFILE="tiny",
                   AUTORESEARCH_TIME_BUDGET=str(seconds))
        env.pop("AUTORESEARCH_SOURCE", None)
        if backend:
            env["AUTORESEARCH_BACKEND"] = backend
        proc = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True)
    summary = parse_summary(proc.stdout)
    shape = SHAPE_LINE.search(proc.stdout)
    if proc.returncode != 0 or "val_bpb" not in summary or not shape:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    rates = [p["tok_per_s"] for p in map(parse_progress, proc.stdout.splitlines()) if p and p["pct"] > 0]
    depth, dim, heads, vocab, seq_len, batch = map(int, shape.groups())
    backend_line = next(line for line in proc.stdout.splitlines() if line.startswith("Backend:"))
    return dict(depth=depth, dim=dim, heads=heads, vocab=vocab, seq_len=seq_len, batch=batch,
                bf16="bf16" in backend_line, backend=summary["backend"],
                tok_per_s=statistics.median(rates) if rates else float("nan"),
                mfu=float(summary["mfu_percent"]), val_bpb=float(summary["val_bpb"]))


def flops_per_token(shape: dict, matmul_params: int) -> float:
    """The templates' formula: 6 x matmul parameters + attention (12 x layers x width x T)."""
    return 6 * matmul_params + 12 * shape["depth"] * shape["dim"] * shape["seq_len"]


# ---------------------------------------------------------------------------
# Reference GPTs: as plain as a GPT gets, one per framework
# ---------------------------------------------------------------------------


def torch_reference(ctx: RunContext, shape: dict, device: str, seconds: float) -> tuple[float, int]:
    """(tokens/s, matmul parameters) of a plain GPT trained with AdamW in PyTorch."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from autoresearch.data.torch_io import make_dataloader

    d, h, T, V = shape["dim"], shape["heads"], shape["seq_len"], shape["vocab"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            B = x.shape[0]
            q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, h, d // h).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, d), nn.Embedding(T, d)
            self.blocks = nn.Sequential(*[Block() for _ in range(shape["depth"])])
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, V, bias=False)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            logits = self.head(self.ln(self.blocks(x))).float()
            return F.cross_entropy(logits.view(-1, V), targets.view(-1))

    torch.manual_seed(0)
    model = GPT().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=shape["bf16"])
    loader = make_dataloader(ctx, shape["batch"], T, device=device)

    def step():
        x, y, _ = next(loader)
        with autocast:
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # wait for the device

    for _ in range(2):
        step()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        steps += 1
    rate = steps * shape["batch"] * T / (time.perf_counter() - t0)
    matmul_params = sum(p.numel() for p in model.parameters()) - model.wte.weight.numel() - model.wpe.weight.numel()
    return rate, matmul_params


def mlx_reference(ctx: RunContext, shape: dict, seconds: float) -> tuple[float, int]:
    """(tokens/s, matmul parameters) of a plain GPT trained with AdamW in MLX."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    from autoresearch.data.mlx_io import make_dataloader

    d, h, T, V = shape["dim"], shape["heads"], shape["seq_len"], shape["vocab"]
    dtype = mx.bfloat16 if shape["bf16"] else mx.float32

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def __call__(self, x):
            B = x.shape[0]
            q, k, v = self.qkv(self.ln1(x)).reshape(B, T, 3, h, d // h).transpose(2, 0, 3, 1, 4)
            a = mx.fast.scaled_dot_product_attention(q, k, v, scale=(d // h) ** -0.5, mask="causal")
            x = x + self.proj(a.transpose(0, 2, 1, 3).reshape(B, T, d))
            return x + self.out(nn.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, d), nn.Embedding(T, d)
            self.blocks = [Block() for _ in range(shape["depth"])]
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, V, bias=False)

        def __call__(self, idx, targets):
            x = self.wte(idx) + self.wpe(mx.arange(T))
            for block in self.blocks:
                x = block(x)
            logits = self.head(self.ln(x)).astype(mx.float32)
            return nn.losses.cross_entropy(logits, targets, reduction="mean")

    mx.random.seed(0)
    model = GPT()
    model.set_dtype(dtype)
    opt = optim.AdamW(learning_rate=1e-3)
    loss_and_grad = nn.value_and_grad(model, lambda m, x, y: m(x, y))
    loader = make_dataloader(ctx, shape["batch"], T)

    def step():
        x, y, _ = next(loader)
        loss, grads = loss_and_grad(model, x, y)
        opt.update(model, grads)
        mx.eval(loss, model.parameters(), opt.state)

    for _ in range(2):
        step()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        steps += 1
    rate = steps * shape["batch"] * T / (time.perf_counter() - t0)
    total = sum(p.size for _, p in tree_flatten(model.parameters()))
    return rate, total - model.wte.weight.size - model.wpe.weight.size


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="training seconds per run")
    ap.add_argument("--only", choices=("torch", "mlx"), help="benchmark one template only")
    ap.add_argument("--backend", choices=("cpu", "cuda", "mps"), help="PyTorch backend (default: the auto choice)")
    ap.add_argument("--cache", type=Path, help="a cache to prepare (or reuse) the tiny data in (default: a temp dir)")
    args = ap.parse_args()

    hw = detect_hardware()
    try:
        import importlib.util

        has_mlx = importlib.util.find_spec("mlx") is not None
        has_torch = importlib.util.find_spec("torch") is not None
        torch_backend = args.backend or choose_backend(None, hw)
        if torch_backend == "mlx":  # the auto choice on Apple Silicon; train.py uses MPS there
            torch_backend = "mps"
    except ArError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    which = [n for n, ok in (("torch", has_torch), ("mlx", has_mlx)) if ok and args.only in (None, n)]
    if not which:
        print("error: nothing to benchmark: install torch or mlx", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        cache = (args.cache or Path(tmp)).resolve()
        os.environ["AUTORESEARCH_CACHE"] = str(cache)  # prepare_data writes under the cache root
        prepare_data("builtin", get_profile("tiny"))
        ctx = RunContext(profile=get_profile("tiny"), source="builtin", time_budget=args.seconds, cache=cache)
        print(f"machine: {hw.chip}  profile: tiny  seconds per run: {args.seconds:g}")
        header = f"{'':28s} {'tokens/s':>12s} {'MFU %':>8s}"
        for name in which:
            script = "train.py" if name == "torch" else "train_mlx.py"
            t = run_template(script, cache, args.seconds, torch_backend if name == "torch" else None)
            if name == "torch":
                ref_rate, matmul_params = torch_reference(ctx, t, torch_backend, args.seconds)
                backend = torch_backend
            else:
                ref_rate, matmul_params = mlx_reference(ctx, t, args.seconds)
                backend = "mlx"
            peak, approximate = peak_flops(hw, backend, dtype="bf16" if t["bf16"] else "fp32")
            ref_mfu = 100 * flops_per_token(t, matmul_params) * ref_rate / peak
            print(f"\n{script} on {t['backend']} ({'bf16' if t['bf16'] else 'fp32'}): depth {t['depth']}, "
                  f"width {t['dim']}, {t['heads']} heads, {t['batch']} x {t['seq_len']} tokens per pass"
                  f"{'  (MFU against an approximate peak)' if approximate else ''}")
            print(header)
            print(f"{'template (Muon + AdamW)':28s} {t['tok_per_s']:12,.0f} {t['mfu']:8.2f}   "
                  f"val_bpb {t['val_bpb']:.4f}")
            print(f"{'reference (plain AdamW)':28s} {ref_rate:12,.0f} {ref_mfu:8.2f}")
            print(f"{'template / reference':28s} {t['tok_per_s'] / ref_rate:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
