"""Which framework and device a workspace trains with.

Backends:
  mlx   MLX: the Metal GPU on Apple Silicon; on Linux the `mlx[cpu]` build (CPU, slow).
  mps   PyTorch on the Apple GPU (Metal Performance Shaders).
  cuda  PyTorch on an NVIDIA GPU.
  cpu   PyTorch on the CPU.

"auto" picks, in order: MLX on Apple Silicon when mlx is installed, else PyTorch MPS;
CUDA on an NVIDIA machine whose torch sees the GPU; else PyTorch CPU when torch is
installed, else MLX when only mlx is installed (its CPU build on Linux).

Installation is checked with importlib.util.find_spec, so nothing heavy is imported
unless a GPU must be confirmed (torch.cuda / torch.backends.mps).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

from ..errors import ArError
from .detect import Hardware

BACKENDS = ("mlx", "mps", "cuda", "cpu")
ENV_VAR = "AUTORESEARCH_BACKEND"

INSTALL_MLX = "pip install 'autoresearch[mlx]'"
INSTALL_TORCH = "pip install 'autoresearch[torch]'"
# Plain `pip install torch` on Linux pulls the multi-GB CUDA build.
INSTALL_TORCH_CPU = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
# The default Linux wheel from PyPI is a CUDA build; other choices: pytorch.org/get-started/locally
INSTALL_TORCH_CUDA = "pip install --force-reinstall torch (the default Linux wheel; elsewhere see pytorch.org/get-started/locally)"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _torch_cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _torch_has_cuda_build() -> bool:
    try:
        import torch

        return torch.version.cuda is not None
    except Exception:
        return False


def _torch_mps_available() -> bool:
    try:
        import torch

        return bool(torch.backends.mps.is_available())
    except Exception:
        return False


def _on_linux(hw: Hardware) -> bool:
    return (hw.os_name or sys.platform).lower().startswith("linux")


def _torch_hint(hw: Hardware) -> str:
    if _on_linux(hw) and hw.kind != "nvidia":
        return f"{INSTALL_TORCH} (on a CPU-only Linux machine first: {INSTALL_TORCH_CPU})"
    return INSTALL_TORCH


def _nothing_installed(hw: Hardware) -> ArError:
    if hw.kind == "apple":
        return ArError(f"neither MLX nor PyTorch is installed; install one: {INSTALL_MLX} (recommended here) or {INSTALL_TORCH}")
    return ArError(f"PyTorch is not installed, so nothing can train; install it: {_torch_hint(hw)}")


def _auto(hw: Hardware) -> str:
    has_torch, has_mlx = _installed("torch"), _installed("mlx")
    if hw.kind == "apple":
        if has_mlx:
            return "mlx"
        if has_torch and _torch_mps_available():
            return "mps"
    if hw.kind == "nvidia" and has_torch and _torch_cuda_available():
        return "cuda"
    if has_torch:
        return "cpu"
    if has_mlx:
        return "mlx"  # only mlx installed: its CPU build on Linux
    raise _nothing_installed(hw)


def _check_explicit(backend: str, hw: Hardware) -> None:
    """Raise ArError saying what to install or why the device is missing."""
    if backend == "mlx":
        if not _installed("mlx"):
            if hw.os_name == "Windows" or (hw.os_name == "Darwin" and hw.kind != "apple"):
                raise ArError("MLX runs only on Apple Silicon Macs and Linux; choose --backend cpu (PyTorch) here")
            raise ArError(f"backend mlx needs MLX, which is not installed: {INSTALL_MLX}")
        return
    if not _installed("torch"):
        hint = INSTALL_TORCH if backend == "cuda" else _torch_hint(hw)
        raise ArError(f"backend {backend} needs PyTorch, which is not installed: {hint}")
    if backend == "mps":
        if hw.kind != "apple":
            raise ArError("backend mps needs an Apple Silicon Mac (no Apple GPU here); use --backend cpu")
        if not _torch_mps_available():
            raise ArError("PyTorch cannot use the Apple GPU (MPS needs macOS 12.3+ and an arm64 Python); "
                          "upgrade with pip install -U torch, or use --backend mlx")
    elif backend == "cuda":
        if _torch_cuda_available():
            return
        if hw.kind != "nvidia":
            raise ArError("backend cuda: no CUDA device visible (no NVIDIA GPU found on this machine); use --backend cpu")
        if not _torch_has_cuda_build():
            raise ArError(f"backend cuda: the installed PyTorch is a CPU-only build; install a CUDA build: {INSTALL_TORCH_CUDA}")
        raise ArError("backend cuda: PyTorch sees no CUDA device although an NVIDIA GPU is present; "
                      "check the driver with nvidia-smi and CUDA_VISIBLE_DEVICES")


def choose_backend(requested: Optional[str], hw: Hardware) -> str:
    """The backend to train with: `requested`, else $AUTORESEARCH_BACKEND, else "auto".

    Returns one of BACKENDS; raises ArError for an unknown name or for a backend this
    machine cannot run (the message says what to install).
    """
    name = requested if requested is not None else os.environ.get(ENV_VAR, "")
    name = (name or "auto").strip().lower()
    if name == "auto":
        return _auto(hw)
    if name not in BACKENDS:
        raise ArError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    _check_explicit(name, hw)
    return name


def script_for_backend(backend: str) -> str:
    """The editable training script a workspace gets for `backend`."""
    if backend == "mlx":
        return "train_mlx.py"
    if backend in BACKENDS:
        return "train.py"
    raise ArError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
