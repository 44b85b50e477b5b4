"""Starting model size and batch for a machine: larger chips get larger models and batches.

Each hardware class has a depth, the tokens of one forward/backward pass (device batch
x sequence length) and the tokens of one optimizer step. They are given in tokens so one
table serves every profile: the device batch is those tokens divided by the profile's
sequence length.

Sources: NVIDIA >= 60 GB is the upstream karpathy/autoresearch H100 setting (DEPTH 8,
DEVICE_BATCH_SIZE 128, TOTAL_BATCH_SIZE 2**19 at T=2048); smaller GPUs halve the batch per
step down. Apple depths and per-pass batches follow the published Apple Silicon port's
per-tier suggestions at T=2048 (base 4 x 4 rows, Pro 6 x 8, Max 8 x 16, Ultra 10 x 32),
one pass per step. CPUs get a model that trains at all in a minute: depth 2, 4,096 tokens.
MLX's CPU build on Linux does matmuls ~15x slower than PyTorch on the same CPU (a
reference BLAS, single-threaded), so a 4,096-token step takes ~4 s there: it gets 1,024
tokens per step (measured on a 2-core CPU, tiny profile, 60 s: val_bpb 2.034 at 1,024
against 2.063 at 4,096).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .detect import APPLE_TIERS, Hardware


@dataclass(frozen=True)
class Suggestion:
    depth: int  # transformer layers
    device_batch_size: int  # rows per forward/backward pass
    total_batch_size: int  # tokens per optimizer step, a multiple of device_batch_size * max_seq_len


# (depth, tokens per pass, tokens per optimizer step)
NVIDIA_BY_MEMORY = (  # (minimum GPU memory in GB, setting), largest first
    (60, (8, 128 * 2048, 2**19)),
    (30, (8, 64 * 2048, 2**18)),
    (16, (6, 32 * 2048, 2**17)),
    (0, (4, 16 * 2048, 2**16)),
)
APPLE_BY_TIER = {
    "base": (4, 4 * 2048, 4 * 2048),
    "pro": (6, 8 * 2048, 8 * 2048),
    "max": (8, 16 * 2048, 16 * 2048),
    "ultra": (10, 32 * 2048, 32 * 2048),
}
# Unified memory that lifts a chip to the next tier's setting (the port's thresholds).
APPLE_TIER_BY_MEMORY = ((128, "ultra"), (48, "max"), (18, "pro"), (0, "base"))
CPU_SETTING = (2, 4096, 4096)
MLX_CPU_SETTING = (2, 1024, 1024)


def _apple_tier(hw: Hardware) -> str:
    tier = hw.apple_tier if hw.apple_tier in APPLE_TIERS else "base"
    if hw.memory_gb:
        by_memory = next(t for gb, t in APPLE_TIER_BY_MEMORY if hw.memory_gb >= gb)
        tier = max(tier, by_memory, key=APPLE_TIERS.index)
    return tier


def _setting(hw: Hardware, backend: str) -> tuple[int, int, int]:
    if backend == "cuda" and hw.kind == "nvidia":
        memory = hw.memory_gb or 0.0
        return next(s for gb, s in NVIDIA_BY_MEMORY if memory >= gb)
    if backend in ("mlx", "mps") and hw.kind == "apple":
        return APPLE_BY_TIER[_apple_tier(hw)]
    if backend == "mlx":
        return MLX_CPU_SETTING  # MLX's CPU build on Linux
    return CPU_SETTING  # PyTorch on a CPU


def suggest_config(hw: Hardware, backend: str, profile, max_seq_len: Optional[int] = None) -> Suggestion:
    """Depth and batch sizes for `backend` on `hw` at the profile's sequence length."""
    T = max_seq_len or profile.max_seq_len
    depth, pass_tokens, step_tokens = _setting(hw, backend)
    device_batch = max(1, pass_tokens // T)
    per_pass = device_batch * T
    passes = max(1, -(-step_tokens // per_pass))  # round up: never fewer tokens than the table's
    return Suggestion(depth=depth, device_batch_size=device_batch, total_batch_size=passes * per_pass)
