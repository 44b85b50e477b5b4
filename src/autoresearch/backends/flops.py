"""Peak FLOPS per chip, the denominator of MFU (model FLOPS utilisation).

NVIDIA figures are dense (no structured sparsity) tensor-core BF16 and plain (non-tensor)
FP32 from NVIDIA's datasheets and architecture whitepapers; datasheets print BF16 "with
sparsity", which is twice the dense rate, so those are halved. GeForce cards accumulate
in FP32 at half their FP16-accumulate rate; the FP32-accumulate rate is the one training
uses, so that is the one listed.

Apple GPU figures are approximate: Apple published FP32 TFLOPS for M1 (2.6 for 8 GPU cores)
and M2 (3.6 for 10 cores); M3/M4/M5 are estimated the same way (128 FP32 ALUs per core x 2
FLOPs x clock). Apple GPUs run BF16 at about the FP32 rate, so both dtypes share the figure.

CPU figures are a rough estimate: cores x clock x FP32 FLOPs per cycle from the vector
units (AVX-512: 64, AVX2+FMA: 32, Apple NEON: 32, other ARM: 16, otherwise 8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .detect import APPLE_TIERS, Hardware

DTYPES = ("bf16", "fp32")


@dataclass(frozen=True)
class GpuPeak:
    pattern: str  # regex matched case-insensitively against the device name
    bf16_tflops: float  # dense tensor-core BF16 with FP32 accumulate
    fp32_tflops: float  # non-tensor FP32
    sm_count: int  # SMs of the full part, to scale MIG slices / partitions
    source: str


# Order matters: more specific names first ("H100 NVL" before "H100", "L40S" before "L40").
NVIDIA_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak(r"\bB200\b", 2250.0, 75.0, 148, "NVIDIA HGX B200 datasheet (4.5 PF BF16 sparse per GPU)"),
    GpuPeak(r"\bGH200\b", 989.5, 67.0, 132, "NVIDIA GH200 datasheet (1,979 TF BF16 sparse)"),
    GpuPeak(r"\bH200\b.*\bNVL\b", 835.5, 60.0, 132, "NVIDIA H200 datasheet, NVL (1,671 TF BF16 sparse)"),
    GpuPeak(r"\bH200\b", 989.5, 67.0, 132, "NVIDIA H200 datasheet, SXM (1,979 TF BF16 sparse)"),
    GpuPeak(r"\bH100\b.*\bNVL\b", 835.5, 60.0, 132, "NVIDIA H100 datasheet, NVL (1,671 TF BF16 sparse)"),
    GpuPeak(r"\bH100\b.*\bPCIe\b", 756.0, 51.0, 114, "NVIDIA H100 datasheet, PCIe (1,513 TF BF16 sparse)"),
    GpuPeak(r"\bH100\b", 989.5, 67.0, 132, "NVIDIA H100 datasheet, SXM (1,979 TF BF16 sparse)"),
    GpuPeak(r"\bH800\b", 989.5, 67.0, 132, "same silicon as H100 SXM"),
    GpuPeak(r"\bA100\b", 312.0, 19.5, 108, "NVIDIA A100 datasheet (312 TF BF16 dense)"),
    GpuPeak(r"\bA800\b", 312.0, 19.5, 108, "same silicon as A100"),
    GpuPeak(r"\bL40S\b", 362.05, 91.6, 142, "NVIDIA L40S datasheet (733 TF BF16 sparse)"),
    GpuPeak(r"\bL40\b", 181.05, 90.5, 142, "NVIDIA L40 datasheet (362.1 TF BF16 sparse)"),
    GpuPeak(r"\bL4\b", 121.0, 30.3, 58, "NVIDIA L4 datasheet (242 TF BF16 sparse)"),
    GpuPeak(r"\bA10\b", 125.0, 31.2, 72, "NVIDIA A10 datasheet (250 TF BF16 sparse)"),
    GpuPeak(r"RTX 6000 Ada", 364.25, 91.1, 142, "NVIDIA RTX 6000 Ada datasheet (1,457 TF FP8 sparse = 4x BF16 dense)"),
    GpuPeak(r"RTX A6000", 154.8, 38.7, 84, "NVIDIA RTX A6000 datasheet (309.7 TF tensor sparse)"),
    GpuPeak(r"RTX 5090", 209.5, 104.8, 170, "NVIDIA Blackwell (GB202) whitepaper, FP32 accumulate"),
    GpuPeak(r"RTX 4090", 165.2, 82.6, 128, "NVIDIA Ada Lovelace (AD102) whitepaper, FP32 accumulate"),
    GpuPeak(r"RTX 4080", 97.5, 48.7, 76, "NVIDIA Ada Lovelace whitepaper, FP32 accumulate"),
    GpuPeak(r"RTX 3090 Ti", 80.0, 40.0, 84, "NVIDIA Ampere (GA102) whitepaper scaled to the 3090 Ti clock"),
    GpuPeak(r"RTX 3090", 71.0, 35.6, 82, "NVIDIA Ampere (GA102) whitepaper, FP32 accumulate"),
)

# A GPU missing from the table: a placeholder so MFU is at least indicative.
UNKNOWN_GPU_BF16_TFLOPS = 100.0
UNKNOWN_GPU_FP32_TFLOPS = 20.0

# Apple GPU: FP32 TFLOPS per GPU core (128 ALUs x 2 FLOPs x clock).
APPLE_TFLOPS_PER_CORE = {
    "M1": 0.327,  # 1.278 GHz; Apple: 2.6 TFLOPS for 8 cores
    "M2": 0.358,  # 1.398 GHz; Apple: 3.6 TFLOPS for 10 cores
    "M3": 0.36,  # ~1.4 GHz (estimate)
    "M4": 0.43,  # ~1.6-1.8 GHz (estimate)
    "M5": 0.45,  # estimate; the GPU's matmul accelerators are not counted
}
# GPU cores of the largest configuration of each chip, when the OS did not tell us.
APPLE_DEFAULT_GPU_CORES = {
    "M1": (8, 16, 32, 64),
    "M2": (10, 19, 38, 76),
    "M3": (10, 18, 40, 80),
    "M4": (10, 20, 40, 80),
    "M5": (10, 20, 40, 80),
}


def nvidia_peak(name: str) -> Optional[GpuPeak]:
    """The table row for an NVIDIA device name, or None."""
    for row in NVIDIA_PEAKS:
        if re.search(row.pattern, name or "", re.IGNORECASE):
            return row
    return None


def _apple_gpu_flops(hw: Hardware) -> float:
    gen = hw.apple_generation if hw.apple_generation in APPLE_TFLOPS_PER_CORE else "M4"
    per_core = APPLE_TFLOPS_PER_CORE[gen]
    cores = hw.gpu_cores
    if not cores:
        tier = hw.apple_tier if hw.apple_tier in APPLE_TIERS else "base"
        cores = APPLE_DEFAULT_GPU_CORES[gen][APPLE_TIERS.index(tier)]
    return cores * per_core * 1e12


def cpu_flops_per_cycle(hw: Hardware) -> int:
    """FP32 FLOPs per cycle per core from the vector units (two FMA pipes assumed)."""
    flags = hw.cpu_flags
    if "avx512f" in flags:
        return 64
    if "avx2" in flags and "fma" in flags:
        return 32
    if hw.kind == "apple":
        return 32  # four 128-bit NEON FMA pipes per performance core
    if "asimd" in flags or hw.machine in ("arm64", "aarch64"):
        return 16
    return 8


def _cpu_flops(hw: Hardware) -> float:
    ghz = (hw.cpu_mhz / 1000) if hw.cpu_mhz else (3.2 if hw.kind == "apple" else 2.5)
    return max(1, hw.cpu_cores) * ghz * 1e9 * cpu_flops_per_cycle(hw)


def peak_flops(hw: Hardware, backend: str, dtype: str = "bf16") -> tuple[float, bool]:
    """(peak FLOP/s of the device `backend` trains on, whether the figure is approximate)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    if backend == "cuda" and hw.gpus:
        gpu = hw.gpus[0]
        row = nvidia_peak(gpu.name)
        if row is None:
            tflops = UNKNOWN_GPU_BF16_TFLOPS if dtype == "bf16" else UNKNOWN_GPU_FP32_TFLOPS
            return tflops * 1e12, True
        flops = (row.bf16_tflops if dtype == "bf16" else row.fp32_tflops) * 1e12
        if gpu.sm_count and gpu.sm_count < row.sm_count:
            # A MIG slice or partition: it gets a share of the SMs.
            return flops * gpu.sm_count / row.sm_count, True
        return flops, False
    if backend in ("mlx", "mps") and hw.kind == "apple":
        return _apple_gpu_flops(hw), True
    # PyTorch CPU, MLX's CPU build on Linux, or a mismatch: the CPU does the work.
    return _cpu_flops(hw), True
