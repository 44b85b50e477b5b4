"""
Autoresearch pretraining script (PyTorch). Single device, single file.

This is the one file the research agent edits: model, optimizer, hyperparameters and
training loop are all fair game. The fixed harness (data, tokenizer, time budget and the
evaluation, `evaluate_bpb`) lives in the installed `autoresearch` package.

Usage:
    ar run                                         # the way the loop runs it
    python train.py                                # the same, by hand
    AUTORESEARCH_TIME_BUDGET=10 python train.py    # a quick smoke test

It trains for TIME_BUDGET seconds of training time (start-up, compilation and the first
warm-up steps excluded), evaluates val_bpb and prints the summary block that `ar` reads.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoresearch.backends import choose_backend, detect_hardware, peak_flops
from autoresearch.backends.torch_optim import MuonAdamW
from autoresearch.data import load_context
from autoresearch.data.context import read_workspace_config
from autoresearch.data.torch_io import evaluate_bpb, make_dataloader
from autoresearch.errors import ArError

t_start = time.time()

# ---------------------------------------------------------------------------
# Run context: the fixed constants every experiment is judged by (do not edit)
# ---------------------------------------------------------------------------

try:
    ctx = load_context()
    ctx.check_prepared()
    hw = detect_hardware()
    # AUTORESEARCH_BACKEND (set by `ar run`), else the workspace's backend, else the best here
    BACKEND = choose_backend(os.environ.get("AUTORESEARCH_BACKEND") or read_workspace_config().get("backend"), hw)
except ArError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
if BACKEND == "mlx":  # MLX has its own script (train_mlx.py); here use the best PyTorch device
    BACKEND = "mps" if torch.backends.mps.is_available() else "cpu"

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
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x, cos, sin):
    # x: (B, T, H, D); rotate the two halves of each head by position-dependent angles
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        q = norm(apply_rotary_emb(q, cos, sin))  # QK-norm keeps attention logits in range
        k = norm(apply_rotary_emb(k, cos, sin))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # untied
        cos, sin = self._rotary_tables(config.sequence_len, config.n_embd // config.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @staticmethod
    def _rotary_tables(seq_len, head_dim, base=10000):
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
        return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    @torch.no_grad()
    def init_weights(self):
        s = 3**0.5 * self.config.n_embd**-0.5  # uniform bound with std 1/sqrt(n_embd)
        nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)  # near-uniform predictions at step 0
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        # 6 FLOPs per parameter per token (forward + backward) for the matmul weights (the
        # embedding is a lookup), plus attention scores and values: 12 * layers * width * T.
        c = self.config
        matmul_params = self.num_params() - self.wte.weight.numel()
        return 6 * matmul_params + 12 * c.n_layer * c.n_embd * c.sequence_len

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        x = norm(x)
        logits = self.lm_head(x).float()
        logits = 15.0 * torch.tanh(logits / 15.0)  # soft-cap at +-15 (free when compiled; ~20% of a CPU step)
        if targets is None:
            return logits  # the harness's evaluate_bpb computes its own loss
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def cpu_has_fast_bf16():
    # bf16 matmuls run about twice as fast as fp32 on CPUs with AVX512-BF16 or AMX, and far
    # slower on CPUs without them.
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
COMPILE = BACKEND == "cuda"  # torch.compile on CUDA only; MPS and CPU run eager
AUTOCAST = BACKEND in ("cuda", "mps") or cpu_has_fast_bf16()  # bf16 autocast (matmuls in bf16)
UNTIMED_STEPS = 2  # the first steps (warm-up) are not timed
SEED = int(os.environ.get("AUTORESEARCH_SEED", "42"))  # the loop varies it to measure run-to-run noise

# ---------------------------------------------------------------------------
# Setup: device, model, optimizer, dataloader
# ---------------------------------------------------------------------------

torch.manual_seed(SEED)
torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA
device = torch.device(BACKEND)
autocast_ctx = torch.autocast(device_type=BACKEND, dtype=torch.bfloat16, enabled=AUTOCAST)

model_dim = ((DEPTH * ASPECT_RATIO + HEAD_DIM - 1) // HEAD_DIM) * HEAD_DIM
config = GPTConfig(
    sequence_len=MAX_SEQ_LEN, vocab_size=VOCAB_SIZE, n_layer=DEPTH, n_head=model_dim // HEAD_DIM, n_embd=model_dim
)
print(f"Backend: {BACKEND} ({hw.chip}); {'bf16 autocast' if AUTOCAST else 'fp32'}; "
      f"{'compiled' if COMPILE else 'eager'}")
print(f"Model config: {asdict(config)}")

model = GPT(config).to(device)
model.init_weights()
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
optimizer = MuonAdamW(
    [
        dict(adam, params=[model.wte.weight], lr=EMBEDDING_LR * dmodel_lr_scale),
        dict(adam, params=[model.lm_head.weight], lr=UNEMBEDDING_LR * dmodel_lr_scale),
        dict(kind="muon", params=list(model.blocks.parameters()), lr=MATRIX_LR, momentum=0.95, ns_steps=5,
             weight_decay=WEIGHT_DECAY),
    ]
)

train_model = torch.compile(model, dynamic=False) if COMPILE else model
if COMPILE:
    # Compile now, on random tokens and without an optimizer step: compilation is start-up,
    # not training (the harness times training from the first training batch).
    warm_x, warm_y = torch.randint(0, VOCAB_SIZE, (2, DEVICE_BATCH_SIZE, MAX_SEQ_LEN), device=device)
    with autocast_ctx:
        train_model(warm_x, warm_y).backward()
    model.zero_grad(set_to_none=True)
train_loader = make_dataloader(ctx, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, split="train", device=device)
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


def sync():
    if BACKEND == "cuda":
        torch.cuda.synchronize()
    elif BACKEND == "mps":
        torch.mps.synchronize()


def peak_memory_mb(current_peak):
    if BACKEND == "cuda":
        return torch.cuda.max_memory_allocated() / 1024**2
    if BACKEND == "mps":  # the Metal driver's allocation (cache included), sampled every step
        return max(current_peak, torch.mps.driver_allocated_memory() / 1024**2)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # process peak RSS
    return rss / 1024**2 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------

smooth_train_loss = 0.0
total_training_time = 0.0
peak_mem_mb = 0.0
last_print = 0.0
step = 0

while True:
    sync()
    t0 = time.time()
    for micro_step in range(grad_accum_steps):
        with autocast_ctx:
            loss = train_model(x, y)
        train_loss = loss.detach()
        (loss / grad_accum_steps).backward()
        x, y, epoch = next(train_loader)

    progress = min(total_training_time / TIME_BUDGET, 1.0)
    lrm = get_lr_multiplier(progress)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            group["momentum"] = get_muon_momentum(step)
            group["weight_decay"] = WEIGHT_DECAY * (1.0 - progress)
    optimizer.step()
    model.zero_grad(set_to_none=True)

    train_loss_f = train_loss.item()  # also waits for the step to finish
    if not math.isfinite(train_loss_f) or train_loss_f > 100:
        print(f"FAIL: training diverged at step {step} (loss {train_loss_f}); lower the learning rates",
              file=sys.stderr)
        sys.exit(1)

    sync()
    dt = time.time() - t0
    if step >= UNTIMED_STEPS:
        total_training_time += dt
    if BACKEND == "mps":
        peak_mem_mb = peak_memory_mb(peak_mem_mb)

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

with autocast_ctx:  # the eager model: compiling the evaluation graph would take longer than it saves
    val_bpb = evaluate_bpb(model, ctx, DEVICE_BATCH_SIZE, device=device)

t_end = time.time()
peak_flops_per_s, approximate = peak_flops(hw, BACKEND, dtype="bf16" if AUTOCAST else "fp32")
timed_tokens = (step - UNTIMED_STEPS) * TOTAL_BATCH_SIZE
mfu = 100 * num_flops_per_token * timed_tokens / total_training_time / peak_flops_per_s if peak_flops_per_s else 0.0
if approximate:
    print(f"note: mfu_percent uses an approximate peak of {peak_flops_per_s / 1e12:.1f} TFLOPS for {hw.chip}")
peak_mem_mb = peak_memory_mb(peak_mem_mb)

print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {total_training_time:.1f}")
print(f"total_seconds:    {t_end - t_start:.1f}")
print(f"peak_vram_mb:     {peak_mem_mb:.1f}")
print(f"mfu_percent:      {mfu:.2f}")
print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
print(f"backend:          {BACKEND}")
print(f"chip:             {hw.chip}")
