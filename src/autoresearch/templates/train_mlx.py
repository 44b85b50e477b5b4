"""
Autoresearch pretraining script (MLX). Single device, single file.

This is the one file the research agent edits: model, optimizer, hyperparameters and
training loop are all fair game. The fixed harness (data, tokenizer, time budget and the
evaluation, `evaluate_bpb`) lives in the installed `autoresearch` package.

Usage:
    ar run                                             # the way the loop runs it
    python train_mlx.py                                # the same, by hand
    AUTORESEARCH_TIME_BUDGET=10 python train_mlx.py    # a quick smoke test

It trains for TIME_BUDGET seconds of training time (start-up, compilation and the first
warm-up step excluded), evaluates val_bpb and prints the summary block that `ar` reads.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from autoresearch.backends import detect_hardware, peak_flops
from autoresearch.backends.mlx_optim import MuonAdamW
from autoresearch.data import load_context
from autoresearch.data.mlx_io import evaluate_bpb, make_dataloader
from autoresearch.errors import ArError

t_start = time.time()

# ---------------------------------------------------------------------------
# Run context: the fixed constants every experiment is judged by (do not edit)
# ---------------------------------------------------------------------------

try:
    ctx = load_context()
    ctx.check_prepared()
    hw = detect_hardware()
except ArError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
BACKEND = "mlx"

MAX_SEQ_LEN = ctx.MAX_SEQ_LEN  # tokens per row
TIME_BUDGET = ctx.TIME_BUDGET  # seconds of training
VOCAB_SIZE = ctx.VOCAB_SIZE

# ---------------------------------------------------------------------------
# GPT model
# ---------------------------------------------------------------------------


@dataclass
class GPTConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int


def norm(x):
    # RMSNorm without learnable parameters
    return mx.fast.rms_norm(x, None, 1e-6)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def __call__(self, x):
        B, T, C = x.shape
        heads = (B, T, self.n_head, self.head_dim)
        q, k, v = (lin(x).reshape(heads).transpose(0, 2, 1, 3) for lin in (self.c_q, self.c_k, self.c_v))
        # rotary embeddings (rotating the two halves of each head), then QK-norm
        q = norm(mx.fast.rope(q, self.head_dim, traditional=False, base=10000, scale=1.0, offset=0))
        k = norm(mx.fast.rope(k, self.head_dim, traditional=False, base=10000, scale=1.0, offset=0))
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask="causal")
        return self.c_proj(y.transpose(0, 2, 1, 3).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def __call__(self, x):
        return self.c_proj(mx.square(nn.relu(self.c_fc(x))))  # ReLU^2


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)

    def __call__(self, x):
        x = x + self.attn(norm(x))
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = [Block(config) for _ in range(config.n_layer)]
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # untied

    def init_weights(self):
        s = 3**0.5 * self.config.n_embd**-0.5  # uniform bound with std 1/sqrt(n_embd)
        self.wte.weight = mx.random.normal(self.wte.weight.shape)
        self.lm_head.weight = 0.001 * mx.random.normal(self.lm_head.weight.shape)  # near-uniform predictions at step 0
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                lin.weight = mx.random.uniform(-s, s, lin.weight.shape)
            block.attn.c_proj.weight = mx.zeros_like(block.attn.c_proj.weight)  # every block starts as the identity
            block.mlp.c_proj.weight = mx.zeros_like(block.mlp.c_proj.weight)

    def num_params(self):
        return sum(p.size for _, p in tree_flatten(self.parameters()))

    def flops_per_token(self):
        # 6 FLOPs per parameter per token (forward + backward) for the matmul weights (the
        # embedding is a lookup), plus attention scores and values: 12 * layers * width * T.
        c = self.config
        matmul_params = self.num_params() - self.wte.weight.size
        return 6 * matmul_params + 12 * c.n_layer * c.n_embd * c.sequence_len

    def __call__(self, idx, targets=None):
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x)
        x = norm(x)
        logits = self.lm_head(x).astype(mx.float32)
        logits = 15.0 * mx.tanh(logits / 15.0)  # soft-cap the logits at +-15
        if targets is None:
            return logits  # the harness's evaluate_bpb computes its own loss
        valid = targets != -1
        ce = nn.losses.cross_entropy(logits, mx.where(valid, targets, 0), reduction="none")
        return (ce * valid).sum() / mx.maximum(valid.sum(), 1)


# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly, no CLI flags needed)
# ---------------------------------------------------------------------------

# Model size and batch: `ar init` writes the suggestion for this machine and profile here.
# Size: the tiny profile on a CPU
DEPTH = 2  # transformer blocks: the main size dial
DEVICE_BATCH_SIZE = 16  # rows per forward/backward pass
TOTAL_BATCH_SIZE = 2**12  # tokens per optimizer step (gradient accumulation)

# Model shape
ASPECT_RATIO = 64  # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 64  # attention head dimension; heads = model_dim // HEAD_DIM

# Optimization
EMBEDDING_LR = 0.6  # token embedding (AdamW)
UNEMBEDDING_LR = 0.004  # lm_head (AdamW)
MATRIX_LR = 0.04  # 2-D block matrices (Muon)
WEIGHT_DECAY = 0.2  # Muon weight decay, decayed linearly to 0 over the run
ADAM_BETAS = (0.8, 0.95)
WARMUP_RATIO = 0.0  # fraction of the time budget spent warming the LR up
WARMDOWN_RATIO = 0.5  # fraction of the time budget spent decaying the LR at the end
FINAL_LR_FRAC = 0.0  # final LR as a fraction of the initial LR

# Device settings
DTYPE = mx.bfloat16 if mx.metal.is_available() else mx.float32  # bf16 on Apple GPUs; it is not faster on CPUs
COMPILE = mx.metal.is_available()  # mx.compile the forward/backward pass (eager if that fails); no gain on CPUs
UNTIMED_STEPS = 1  # the first step (warm-up) is not timed
SEED = int(os.environ.get("AUTORESEARCH_SEED", "42"))  # the loop varies it to measure run-to-run noise

# ---------------------------------------------------------------------------
# Setup: model, optimizer, dataloader
# ---------------------------------------------------------------------------

mx.random.seed(SEED)

model_dim = ((DEPTH * ASPECT_RATIO + HEAD_DIM - 1) // HEAD_DIM) * HEAD_DIM
config = GPTConfig(
    sequence_len=MAX_SEQ_LEN, vocab_size=VOCAB_SIZE, n_layer=DEPTH, n_head=model_dim // HEAD_DIM, n_embd=model_dim
)
print(f"Backend: {BACKEND} on {mx.default_device()} ({hw.chip}); {'bf16' if DTYPE == mx.bfloat16 else 'fp32'}")
print(f"Model config: {asdict(config)}")

model = GPT(config)
model.init_weights()
model.set_dtype(DTYPE)
mx.eval(model.parameters())
num_params = model.num_params()
num_flops_per_token = model.flops_per_token()
print(f"Parameters: {num_params:,}  FLOPs/token: {num_flops_per_token:e}")

tokens_per_fwdbwd = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
assert TOTAL_BATCH_SIZE % tokens_per_fwdbwd == 0, "TOTAL_BATCH_SIZE: a multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN"
grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_fwdbwd
print(
    f"model: depth={DEPTH} dim={model_dim} heads={config.n_head} vocab={VOCAB_SIZE} seq_len={MAX_SEQ_LEN} "
    f"device_batch={DEVICE_BATCH_SIZE} total_batch={TOTAL_BATCH_SIZE} grad_accum={grad_accum_steps}"
)

# AdamW learning rates were tuned at width 768 (upstream); scale them as 1/sqrt(width).
dmodel_lr_scale = (model_dim / 768) ** -0.5
adam = dict(kind="adamw", betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
block_names = [name for name, _ in tree_flatten(model.parameters()) if name.startswith("blocks.")]
optimizer = MuonAdamW(
    [
        dict(adam, names=["wte.weight"], lr=EMBEDDING_LR * dmodel_lr_scale),
        dict(adam, names=["lm_head.weight"], lr=UNEMBEDDING_LR * dmodel_lr_scale),
        dict(kind="muon", names=block_names, lr=MATRIX_LR, momentum=0.95,
             ns_steps=5, weight_decay=WEIGHT_DECAY),
    ],
    model=model,  # checks that every parameter is in exactly one group
)

loss_and_grad = nn.value_and_grad(model, lambda model, x, y: model(x, y))


def eager_step(x, y):
    return loss_and_grad(model, x, y)


fwd_bwd = eager_step
if COMPILE:
    # The model's arrays are inputs and outputs of the compiled function, so it sees every
    # optimizer update instead of baking the weights in as constants.
    compiled_step = mx.compile(eager_step, inputs=model.state, outputs=model.state)
    weights = model.parameters()
    # Compile now, on random tokens (the gradients are dropped): compilation is start-up,
    # not training (the harness times training from the first training batch).
    warm_x, warm_y = mx.random.randint(0, VOCAB_SIZE, (2, DEVICE_BATCH_SIZE, MAX_SEQ_LEN))
    try:
        mx.eval(compiled_step(warm_x, warm_y))
        fwd_bwd = compiled_step
    except Exception as e:  # an op mx.compile cannot handle: train eagerly
        model.update(weights)  # a failed trace can leave placeholders in the model
        print(f"warning: mx.compile failed ({type(e).__name__}: {e}); training eagerly", file=sys.stderr)

train_loader = make_dataloader(ctx, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, split="train")
x, y, epoch = next(train_loader)  # prefetch the first batch

print(f"Time budget: {TIME_BUDGET}s  gradient accumulation steps: {grad_accum_steps}")


# Schedules, all driven by progress = training seconds / TIME_BUDGET
def get_lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


def get_muon_momentum(step):
    frac = min(step / 300, 1.0)
    return (1 - frac) * 0.85 + frac * 0.95


def peak_memory_mb():
    peak = mx.get_peak_memory()  # MLX's own allocations (Metal, or CPU on Linux)
    if peak:
        return peak / 1024**2
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # fallback: process peak RSS
    return rss / 1024**2 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------

smooth_train_loss = 0.0
total_training_time = 0.0
last_print = 0.0
step = 0

while True:
    t0 = time.time()
    grads = None
    for micro_step in range(grad_accum_steps):
        loss, micro_grads = fwd_bwd(x, y)
        grads = micro_grads if grads is None else tree_map(mx.add, grads, micro_grads)
        mx.eval(loss, grads)  # keep the lazy graph to one micro-step
        x, y, epoch = next(train_loader)
    if grad_accum_steps > 1:
        grads = tree_map(lambda g: g / grad_accum_steps, grads)

    progress = min(total_training_time / TIME_BUDGET, 1.0)
    lrm = get_lr_multiplier(progress)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            group["momentum"] = get_muon_momentum(step)
            group["weight_decay"] = WEIGHT_DECAY * (1.0 - progress)
    optimizer.update(model, grads)
    mx.eval(model.parameters(), optimizer.state)

    train_loss_f = loss.item()
    if not math.isfinite(train_loss_f) or train_loss_f > 100:
        print(f"FAIL: training diverged at step {step} (loss {train_loss_f}); lower the learning rates",
              file=sys.stderr)
        sys.exit(1)

    dt = time.time() - t0
    if step >= UNTIMED_STEPS:
        total_training_time += dt

    ema_beta = 0.9
    smooth_train_loss = ema_beta * smooth_train_loss + (1 - ema_beta) * train_loss_f
    debiased_loss = smooth_train_loss / (1 - ema_beta ** (step + 1))
    step += 1
    done = step > UNTIMED_STEPS and total_training_time >= TIME_BUDGET

    if done or time.time() - last_print >= 0.5:
        last_print = time.time()
        print(
            f"progress step={step} pct={100 * min(total_training_time / TIME_BUDGET, 1.0):.1f} "
            f"loss={debiased_loss:.4f} tok_per_s={int(TOTAL_BATCH_SIZE / dt)} lrm={lrm:.2f} epoch={epoch} "
            f"remaining_s={max(0.0, TIME_BUDGET - total_training_time):.1f}",
            flush=True,
        )

    # Python's garbage collector causes stalls; the training state is long-lived anyway.
    if step == 1:
        gc.collect()
        gc.freeze()
        gc.disable()
    if done:
        break

total_tokens = step * TOTAL_BATCH_SIZE

# ---------------------------------------------------------------------------
# Final evaluation and summary
# ---------------------------------------------------------------------------

val_bpb = evaluate_bpb(model, ctx, DEVICE_BATCH_SIZE)

t_end = time.time()
peak_flops_per_s, approximate = peak_flops(hw, BACKEND, dtype="bf16" if DTYPE == mx.bfloat16 else "fp32")
timed_tokens = (step - UNTIMED_STEPS) * TOTAL_BATCH_SIZE
mfu = 100 * num_flops_per_token * timed_tokens / total_training_time / peak_flops_per_s if peak_flops_per_s else 0.0
if approximate:
    print(f"note: mfu_percent uses an approximate peak of {peak_flops_per_s / 1e12:.1f} TFLOPS for {hw.chip}")

print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {total_training_time:.1f}")
print(f"total_seconds:    {t_end - t_start:.1f}")
print(f"peak_vram_mb:     {peak_memory_mb():.1f}")
print(f"mfu_percent:      {mfu:.2f}")
print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
print(f"backend:          {BACKEND}")
print(f"chip:             {hw.chip}")
