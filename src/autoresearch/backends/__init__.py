"""Hardware detection, backend choice, per-chip defaults, peak FLOPS, and the optimizers.

Importing this package never imports torch or mlx. The optimizers live in their own
modules and are imported by the training scripts that need them:

    from autoresearch.backends.torch_optim import MuonAdamW   # PyTorch (cuda, mps, cpu)
    from autoresearch.backends.mlx_optim import MuonAdamW     # MLX
"""

from __future__ import annotations

from .choose import BACKENDS, choose_backend, script_for_backend
from .detect import GpuDevice, Hardware, detect_hardware
from .flops import peak_flops
from .suggest import Suggestion, suggest_config

__all__ = [
    "BACKENDS",
    "GpuDevice",
    "Hardware",
    "Suggestion",
    "choose_backend",
    "detect_hardware",
    "peak_flops",
    "script_for_backend",
    "suggest_config",
]
